"""The rejects file: one JSON line per record that was not delivered and never will be without a fix.

Appended to (never truncated) and flushed line by line, so that no run's rejects are lost to the next run or to
a crash. Every line carries the run's id and the time, so that lines of repeated runs can be told apart. The API key
is never part of a line: requests are written as method, path, body and idempotency key.

A dry run leaves the rejects file alone: the records it would reject are counted, and written (each line marked
``"would_reject": true``) to a file named after the plan, ``plan.would_reject.jsonl`` beside ``plan.jsonl``, when
there is a plan (``dry_run_path``). The plan itself stays one planned request per line.
"""

from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path
from typing import IO, Any

from target_loops import limits
from target_loops.operations import LoopsRequest
from target_loops.serialization import dumps

#: Rejected records kept per reason for the HTML run report.
SAMPLES_PER_REASON = 3

#: A sample's strings are cut to this many characters, its objects and lists to this many items.
SAMPLE_TEXT = 60
SAMPLE_ITEMS = 8
#: The reason's message (the target's own words, or Loops') is cut at this many characters.
SAMPLE_MESSAGE = 300


def sample_value(value: Any, depth: int = 0, limit: int = SAMPLE_TEXT, secrets: tuple[str, ...] = ()) -> Any:
    """``value`` cut short for a sample: long strings end in ``…``, objects and lists keep their first items, and
    nesting stops at three levels, so that a sample shows the shape of a record without all of its data. Each of
    ``secrets`` becomes ``***`` first (cut afterwards, a secret could leave a prefix of itself)."""
    if isinstance(value, str):
        for secret in secrets:
            value = value.replace(secret, "***")
        return value if len(value) <= limit else value[: limit - 1] + "…"
    if depth >= 3 and isinstance(value, (dict, list)):
        return "…"
    if isinstance(value, dict):
        items = list(value.items())
        cut = {
            sample_value(str(k), secrets=secrets): sample_value(v, depth + 1, secrets=secrets)
            for k, v in items[:SAMPLE_ITEMS]
        }
        if len(items) > SAMPLE_ITEMS:
            cut["…"] = f"{len(items) - SAMPLE_ITEMS} more"
        return cut
    if isinstance(value, list):
        cut_list = [sample_value(v, depth + 1, secrets=secrets) for v in value[:SAMPLE_ITEMS]]
        return [*cut_list, f"… {len(value) - SAMPLE_ITEMS} more"] if len(value) > SAMPLE_ITEMS else cut_list
    return value


class RejectsWriter:
    """Thread-safe JSONL writer, opened on the first reject so that a clean run leaves no empty file."""

    def __init__(self, path: str | Path, run_id: str = "", *, dry_run: bool = False, writes: bool = True) -> None:
        #: The file the lines go to: the rejects file, or in a dry run the would-reject file beside the plan.
        self.path = Path(path)
        self.run_id = run_id
        #: True in a dry run: lines are would-be rejects (marked so), and the file is this run's alone (truncated).
        self.dry_run = dry_run
        #: False in a dry run without a plan file: would-be rejects are counted, written nowhere.
        self.writes = writes
        self.count = 0
        #: A few lines per reason (values cut short: :func:`sample_value`) for the HTML run report; bounded.
        self.samples: dict[str, list[dict[str, Any]]] = {}
        #: Texts a sample must never show (the API key): replaced by ``***`` before a value is cut short.
        self.secrets: tuple[str, ...] = ()
        self.held = 0  # records held back by new_contacts (not refused)
        self._lock = threading.Lock()
        self._file: IO[str] | None = None

    def write(
        self,
        *,
        stream: str,
        record: Any,
        reason: str,
        message: str | None,
        request: LoopsRequest | None = None,
        status: int | None = None,
        partial: bool = False,
        held: bool = False,
    ) -> None:
        """Append one line: which run, where the record came from, what was tried, and why it was refused.

        ``record`` is the record as read (not always an object: a RECORD whose ``record`` is a list is rejected
        too), cut to what can be written (``limits.clipped``: nesting beyond ``limits.MAX_DEPTH`` and numbers JSON
        cannot carry become markers), so that writing any record is quick and cannot fail. A ``partial`` line is a
        record that was sent without one bad entry (a mailing list flag): the line says what was dropped; the
        record itself is not counted as rejected. A ``held`` line is a record the ``new_contacts`` policy held back
        (``not_in_loops``, ``pending_import``): same format, replayable, counted in ``held`` and not against
        ``max_rejects`` (Loops refused nothing).
        """
        if limits.problem(record) is not None:
            record = limits.clipped(record)
        entry: dict[str, Any] = {
            "at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "run_id": self.run_id,
            "stream": stream,
            "reason": reason,
            "message": message,
            "status": status,
            "request": request.as_dict() if request is not None else None,
            "record": record,
        }
        if partial:
            entry["partial"] = True
        if self.dry_run:
            entry["would_reject"] = True
        line = dumps(entry)
        with self._lock:
            if held:
                self.held += 1
            elif not partial:
                self.count += 1
            kept = self.samples.setdefault(reason, [])
            if len(kept) < SAMPLES_PER_REASON:
                kept.append(
                    {
                        "stream": stream,
                        "message": sample_value(message, limit=SAMPLE_MESSAGE, secrets=self.secrets),
                        "record": sample_value(record, secrets=self.secrets),
                    }
                )
            if not self.writes:
                return
            if self._file is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._file = self.path.open("w" if self.dry_run else "a", encoding="utf-8")
            self._file.write(line + "\n")
            self._file.flush()

    def close(self) -> None:
        """Close the file if a reject was written."""
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None
