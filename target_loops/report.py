"""What a run tells a person: counters per stream, progress lines while sending, the end-of-run table, the report.

One vocabulary everywhere (progress lines, the table, the dry-run plan and the JSON report use the same words):

- ``read``: records read; ``sent``: requests Loops accepted (200, or 404 for a delete: nothing left to delete);
- ``unchanged``: contact updates the ledger shows Loops already holds (not sent); ``coalesced``: records merged into
  another record's request; ``folded``: contact updates that rode on an event's request;
- ``duplicates``: events Loops already had (a 409, the ledger, or a replay in the same run): delivered earlier;
- ``rejected``: records refused, locally or by Loops, each with a reason in the rejects file;
- ``left_out``: values dropped from a record that was sent (a property that is an object or a list, a mailing list
  flag that is not a boolean), each with a line in the rejects file marked ``"partial": true``;
- ``skipped``: records of an unmapped stream (``unmapped_streams: skip``) or Segment calls Loops has no place for;
- ``requests``: HTTP calls made (retries included); ``retries``: transient failures retried; ``rate_limited``: 429s.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from target_loops.operations import Outcome, OutcomeKind

#: The end-of-run table's columns: report keys (per stream), in order.
TABLE_COLUMNS = (
    "read",
    "sent",
    "unchanged",
    "coalesced",
    "folded",
    "duplicates",
    "rejected",
    "skipped",
    "rate_limited",
    "retries",
)
#: Columns the table adds when the run has an audience (a rule with on_leave/on_join).
AUDIENCE_COLUMNS = ("joined", "left")


@dataclass
class StreamStats:
    """What happened to one stream's records (updated under the outbox's settle lock or by the stream's sink)."""

    stream: str
    action: str | None = None
    read: int = 0
    skipped: int = 0  # unmapped stream with unmapped_streams=skip
    requests: int = 0  # HTTP calls made, retries included
    delivered: int = 0  # requests Loops accepted: reported as "sent"
    duplicates: int = 0  # events Loops (409), the ledger or this run had already seen
    coalesced: int = 0  # records merged into another record's request
    folded: int = 0  # contact updates that rode on an event request instead of a request of their own
    rejected: int = 0  # records refused, locally or by Loops
    retried: int = 0
    rate_limited: int = 0  # 429 answers
    planned: int = 0  # dry run: requests that would be sent
    unchanged: int = 0  # records whose contact payload Loops already has (ledger)
    resubscribe_blocked: int = 0  # subscribed: true dropped (the rule does not allow re-subscribing)
    exported: int = 0  # new_contacts: csv: records written to the CSV for Loops' upload instead of sent
    reasons: collections.Counter[str] = field(default_factory=collections.Counter)
    left_out: collections.Counter[str] = field(default_factory=collections.Counter)  # partial rejections by reason
    reserved_skipped: collections.Counter[str] = field(default_factory=collections.Counter)  # source key → records
    skipped_calls: collections.Counter[str] = field(default_factory=collections.Counter)  # Segment call type → records
    audience: bool = False  # the stream's rule has on_leave/on_join
    joined: int = 0  # people who entered the audience since its last closing
    left: int = 0  # people who left it at this run's closing (their leave requests are counted as requests)


class RunStats:
    """Every stream's counters for the run; sinks are created on any thread, so creation is locked."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.streams: dict[str, StreamStats] = {}

    def for_stream(self, stream: str, action: str | None) -> StreamStats:
        """The counters of ``stream``, created on first use (the action is filled in when it becomes known)."""
        with self._lock:
            stats = self.streams.get(stream)
            if stats is None:
                stats = self.streams[stream] = StreamStats(stream=stream, action=action)
            elif stats.action is None and action is not None:
                stats.action = action
            return stats


def stream_report(stats: StreamStats) -> dict[str, Any]:
    """One stream's figures for the run report, in the run's vocabulary."""
    return {
        "stream": stats.stream,
        "action": stats.action,
        "read": stats.read,
        "sent": stats.delivered,
        "planned": stats.planned,
        "unchanged": stats.unchanged,
        "coalesced": stats.coalesced,
        "folded": stats.folded,
        "duplicates": stats.duplicates,
        "rejected": stats.rejected,
        "rejected_by_reason": dict(sorted(stats.reasons.items())),
        "left_out": dict(sorted(stats.left_out.items())),
        "skipped": stats.skipped + sum(stats.skipped_calls.values()),
        "skipped_calls": dict(sorted(stats.skipped_calls.items())),
        "resubscribe_blocked": stats.resubscribe_blocked,
        "exported": stats.exported,
        "reserved_not_sent": dict(sorted(stats.reserved_skipped.items())),
        "requests": stats.requests,
        "retries": stats.retried,
        "rate_limited": stats.rate_limited,
        "joined": stats.joined,
        "left": stats.left,
    }


def run_totals(streams: Iterable[Mapping[str, Any]], sending_seconds: float) -> dict[str, Any]:
    """The run's totals; the rate is over the time spent sending (per-stream rates mislead: streams share one
    client, and a tiny batch looks fast)."""
    rows = list(streams)
    keys = (*TABLE_COLUMNS, *AUDIENCE_COLUMNS, "requests", "planned")
    totals: dict[str, Any] = {key: sum(r.get(key, 0) for r in rows) for key in keys}
    totals["sending_seconds"] = round(sending_seconds, 3)
    totals["requests_per_second"] = round(totals["requests"] / sending_seconds, 2) if sending_seconds > 0 else 0.0
    return totals


def table_rows(report: Mapping[str, Any]) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    """The end-of-run table as text cells: the header, one row per stream, the total row. The printed table and
    the HTML report (``html_report``) both show these cells, so they cannot disagree."""
    streams = report["streams"]
    dry = report["dry_run"]
    columns = tuple("planned" if dry and c == "sent" else c for c in TABLE_COLUMNS)
    if report.get("audiences"):
        columns += AUDIENCE_COLUMNS
    header = ("stream", "action", *columns)
    body = [(s["stream"], s["action"] or "unmapped", *(f"{s[c]:,}" for c in columns)) for s in streams]
    totals = report["totals"]
    body.append(("total", "", *(f"{totals[c]:,}" for c in columns)))
    return header, body


#: Said under the table: which columns count records and which count HTTP requests.
COLUMNS_NOTE = (
    "records: read = sent + coalesced + folded + unchanged + duplicates + rejected + skipped "
    "(sent: requests Loops accepted, one per contact or event); rate_limited and retries count HTTP requests"
)


def record_fates(stream: Mapping[str, Any], *, dry: bool) -> list[tuple[str, int]]:
    """What became of a stream's records, as (words, count), the non-zero ones, in the table's order; they add up to
    ``read`` once every record is settled. Contact updates coalesce into one request per person, which goes on its
    own or rides on (is folded into) that person's next event: ``sent 2`` of 200 identifies is no failure."""
    upserts = stream.get("action") == "upsert_contact"
    sent = stream["planned"] if dry else stream["sent"]
    fates = [
        ("planned on their own" if dry else "sent on their own") if upserts else ("planned" if dry else "sent"),
        "folded into an event",
        "coalesced into those" if upserts else "coalesced",
        "unchanged",
        "duplicates",
        "rejected",
        "skipped",
    ]
    counts = [sent, stream["folded"], stream["coalesced"], stream["unchanged"], stream["duplicates"]]
    counts += [stream["rejected"], stream["skipped"]]
    return [(words, count) for words, count in zip(fates, counts, strict=True) if count]


def fates_line(stream: Mapping[str, Any], *, dry: bool) -> str | None:
    """``identifies: 200 read = 2 sent on their own + 150 folded into an event + ...``, or None for a stream
    whose records were all skipped (said by its own line)."""
    fates = record_fates(stream, dry=dry)
    if not stream["read"] or [words for words, _ in fates] == ["skipped"]:
        return None
    parts = [f"{count:,} {words}" for words, count in fates]
    rest = stream["read"] - sum(count for _, count in fates)
    if rest > 0:
        parts.append(f"{rest:,} not settled")
    return f"{stream['stream']}: {stream['read']:,} read = " + (" + ".join(parts) or "nothing yet")


def render_table(report: Mapping[str, Any]) -> list[str]:
    """The end-of-run block: one aligned row per stream, a total row, rejections by reason, where things are."""
    streams = report["streams"]
    dry = report["dry_run"]
    header, body = table_rows(report)
    totals = report["totals"]
    widths = [max(len(str(row[i])) for row in (header, *body)) for i in range(len(header))]

    def line(row: tuple[str, ...]) -> str:
        cells = [str(v).ljust(widths[i]) if i < 2 else str(v).rjust(widths[i]) for i, v in enumerate(row)]
        return "  ".join(cells).rstrip()

    title = "Dry run: what a real run would send" if dry else "Run summary"
    status = "completed" if report["completed"] else "NOT completed"
    lines = [f"{title} ({status}, {human_duration(report['elapsed_seconds'])}, run {report['run_id']})"]
    lines += [line(header), *(line(row) for row in body)]
    lines.append(COLUMNS_NOTE)
    lines += [text for text in (fates_line(s, dry=dry) for s in streams) if text is not None]
    for s in streams:
        if s["rejected_by_reason"]:
            reasons = ", ".join(f"{k} {v:,}" for k, v in s["rejected_by_reason"].items())
            lines.append(f"rejected in {s['stream']}: {reasons}")
        if s["left_out"]:
            parts = ", ".join(f"{k} {v:,}" for k, v in s["left_out"].items())
            lines.append(f"left out in {s['stream']}: {parts} (one value dropped, the rest of the record sent)")
        if s["skipped_calls"]:
            calls = ", ".join(f"{k} {v:,}" for k, v in s["skipped_calls"].items())
            lines.append(f"skipped in {s['stream']}: {calls} (Segment calls with no Loops equivalent)")
    if not dry and totals["requests"]:
        http = report["http"]
        answers = ""
        if http.get("answer_ms_p50") is not None:
            answers = f"; answers in {http['answer_ms_p50']:,.0f} ms (p95 {http['answer_ms_p95']:,.0f} ms)"
        lines.append(
            f"requests: {plural(totals['requests'], 'request')} in {totals['sending_seconds']:.1f} s of sending = "
            f"{totals['requests_per_second']:.1f} requests/s overall{answers}"
        )
    return lines


def render_plan(report: Mapping[str, Any], rate: float) -> list[str]:
    """The dry run's plan, after the table: what it would create, which event properties Loops must know, how long."""
    lines = []
    created = report["properties"].get("would_create") or {}
    if created:
        lines.append(
            f"{plural(len(created), 'contact property', 'contact properties')} to create: "
            + ", ".join(f"{k} ({v})" for k, v in created.items())
        )
    lines += event_property_lines(report["event_properties"], report.get("event_definitions"))
    total = report["totals"]["planned"]
    lines.append(f"{plural(total, 'request')} at {rate:g}/s: about {human_duration(total / rate if rate else 0)}")
    return lines


def audience_lines(audiences: Iterable[Mapping[str, Any]], *, dry: bool) -> list[str]:
    """Per audience: how many joined and left and what leaving does, or why it was not closed (the guard's line)."""
    lines = []
    for a in audiences:
        head = f"audience {a['stream']}: {a['members']:,} member(s)"
        if a["closed"] and not a["first_sync"]:
            verb = ("would join", "would leave") if dry else ("joined", "left")
            lines.append(f"{head}, {a['joined']:,} {verb[0]}, {a['left']:,} {verb[1]} (leaving: {a['on_leave']})")
        else:
            lines.append(f"{head}; {a['note']}")
    return lines


def event_property_lines(
    event_properties: Mapping[str, Mapping[str, str]],
    definitions: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[str]:
    """Per event name, the event properties sent and their types, against Loops' definition of the event where
    Loops gave one (``event_patterns.py``): which it defines, which the data sends that it lacks (with the type to
    create), which types disagree. Loops wants them added in its Events settings before they are used
    (https://loops.so/docs/events/properties); no API creates them."""
    definitions = definitions or {}
    names = sorted(set(event_properties) | {n for n, d in definitions.items() if d.get("sent")})
    if not names:
        return []
    lines = ["event properties per event name (add missing ones in Loops → Settings → Events):"]
    for name in names:
        found = definitions.get(name)
        sent = dict(event_properties.get(name) or {})
        if found is None or found.get("defined") is None:
            sent.update((found or {}).get("sent") or {})
            listing = ", ".join(f"{k} ({v})" for k, v in sorted(sent.items())) or "none"
            why = ""
            if found is not None and found.get("loops") == "not_defined":
                why = " (Loops has no definition of this event yet: its first send creates it with these)"
            lines.append(f"  {name}: sends {listing}{why}")
            continue
        defined = ", ".join(f"{k} ({v})" for k, v in found["defined"].items()) or "no properties"
        lines.append(f"  {name}: Loops defines {defined}")
        if found.get("missing"):
            missing = ", ".join(f"{k} ({v})" for k, v in found["missing"].items())
            lines.append(f"    sent but not defined in Loops (create with these types): {missing}")
        if found.get("type_mismatches"):
            wrong = ", ".join(
                f"{k} (Loops {v['loops']}, sent {v['sent']})" for k, v in found["type_mismatches"].items()
            )
            lines.append(f"    types that disagree: {wrong}")
        if found.get("dropped"):
            dropped = ", ".join(f"{k} from {plural(v, 'event')}" for k, v in found["dropped"].items())
            lines.append(f"    left out (unknown_event_properties: drop): {dropped}")
        if found.get("rejected"):
            lines.append(f"    rejected (unknown_event_properties: error): {plural(found['rejected'], 'record')}")
    return lines


class Progress:
    """A progress line at most every ``interval`` seconds while requests are being sent.

    The outbox announces each flush's planned requests; the client reports each finished request (from its worker
    threads). The line shows the run as a whole: requests done of those planned so far, the current rate, an ETA for
    what is planned, 429s, retries, rejections, and why the rate is what it is (answer time, requests in flight).
    """

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = 10.0,
        http_stats: Callable[[], Mapping[str, Any]] | None = None,
    ) -> None:
        self.logger = logger
        self.interval = interval
        self.http_stats = http_stats
        self._lock = threading.Lock()
        self._last = time.monotonic()
        self._recent: collections.deque[float] = collections.deque()
        self.planned = self.done = 0
        self._done_at_begin = 0
        self.rate_limited = self.retries = self.rejected = 0

    def begin_batch(self, planned: int) -> None:
        """A flush starts: its requests join the run's plan."""
        with self._lock:
            self.planned += planned
            self._done_at_begin = self.done

    def end_batch(self, planned: int) -> None:
        """A flush ended; requests it planned but never sent (the run is stopping) leave the plan."""
        with self._lock:
            unsent = planned - (self.done - self._done_at_begin)
            self.planned -= max(unsent, 0)

    def note(self, outcome: Outcome) -> None:
        """One request finished: count it, and print the line if the interval has passed."""
        now = time.monotonic()
        with self._lock:
            self.done += 1
            self.rate_limited += outcome.rate_limited
            self.retries += outcome.retries
            self.rejected += outcome.kind is OutcomeKind.REJECTED
            self._recent.append(now)
            while self._recent and self._recent[0] < now - self.interval:
                self._recent.popleft()
            if now - self._last < self.interval:
                return
            self._last = now
            line = self.line(now)
        self.logger.info("%s", line)

    def line(self, now: float | None = None) -> str:
        now = time.monotonic() if now is None else now
        window = min(self.interval, max(now - self._recent[0], 1e-6)) if self._recent else self.interval
        rate = len(self._recent) / window
        left = max(self.planned - self.done, 0)
        eta = human_duration(left / rate) if rate > 0 else "?"
        percent = f" ({100 * self.done / self.planned:.0f}%)" if self.planned else ""
        stats = self.http_stats() if self.http_stats is not None else {}
        # The client counts a 429 or a retry when it happens, just before its "Retrying" line; an outcome carries
        # them only once its request ends, which lags by a whole backoff. The client's counts win when there are.
        rate_limited = stats.get("rate_limited", self.rate_limited)
        retries = stats.get("retries", self.retries)
        text = (
            f"Progress: {self.done:,}/{self.planned:,} requests{percent}, {rate:.1f} requests/s, ETA {eta}; "
            f"rate_limited {rate_limited:,}, retries {retries:,}, rejected {self.rejected:,}"
        )
        if stats.get("answer_ms_p50") is not None:
            text += (
                f"; answers {stats['answer_ms_p50']:,.0f} ms (p95 {stats['answer_ms_p95']:,.0f} ms), "
                f"in flight up to {stats.get('in_flight_level', '?')}"
            )
        return text


def plural(count: int, singular: str, many: str | None = None) -> str:
    """``1 request``, ``2 requests``, ``1,000 requests``."""
    return f"{count:,} {singular if count == 1 else (many or singular + 's')}"


def human_duration(seconds: float) -> str:
    """``4120`` → ``1 h 9 min``; ``75`` → ``1 min 15 s``; ``0.4`` → ``0.4 s``."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds >= 3600:
        hours, minutes = divmod(round(seconds / 60), 60)
        return f"{hours} h {minutes} min"
    seconds = round(seconds)
    minutes, secs = divmod(seconds, 60)
    if minutes:
        return f"{minutes} min {secs} s" if secs else f"{minutes} min"
    return f"{secs} s"
