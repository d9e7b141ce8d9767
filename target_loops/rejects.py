"""The rejects file: one JSON line per record that was not delivered and never will be without a fix.

Appended to (never truncated) and flushed line by line, so that no run's rejects are lost to the next run or to
a crash. The API key is never part of a line: requests are written as method, path, body and idempotency key.
"""

from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path
from typing import IO, Any

from target_loops.operations import LoopsRequest
from target_loops.serialization import dumps


class RejectsWriter:
    """Thread-safe JSONL writer, opened on the first reject so that a clean run leaves no empty file."""

    def __init__(self, path: str | Path, run_id: str = "") -> None:
        self.path = Path(path)
        self.run_id = run_id
        self.count = 0
        self._lock = threading.Lock()
        self._file: IO[str] | None = None

    def write(
        self,
        *,
        stream: str,
        record: dict[str, Any],
        reason: str,
        message: str | None,
        request: LoopsRequest | None = None,
        status: int | None = None,
        partial: bool = False,
    ) -> None:
        """Append one line: which run, where the record came from, what was tried, and why it was refused.

        A ``partial`` line is a record that was sent without one bad entry (a mailing list flag): the line says
        what was dropped; the record itself is not counted as rejected.
        """
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
        line = dumps(entry)
        with self._lock:
            if self._file is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._file = self.path.open("a", encoding="utf-8")
            self._file.write(line + "\n")
            self._file.flush()
            if not partial:
                self.count += 1

    def close(self) -> None:
        """Close the file if a reject was written."""
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None
