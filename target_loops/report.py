"""Counters per stream and the summary printed at the end of a run."""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from target_loops.operations import Outcome, OutcomeKind


@dataclass
class StreamStats:
    """What happened to one stream's records. Updated only by that stream's sink (one thread at a time)."""

    stream: str
    action: str | None = None
    read: int = 0
    skipped: int = 0  # unmapped stream with unmapped_streams=skip
    requests: int = 0  # HTTP calls made, retries included
    delivered: int = 0  # requests Loops accepted (200)
    duplicates: int = 0  # events Loops (409) or this batch had already seen
    coalesced: int = 0  # records merged into another record's request
    folded: int = 0  # contact updates that rode on an event request instead of a request of their own
    rejected: int = 0  # records refused, locally or by Loops
    retried: int = 0
    rate_limited: int = 0  # 429 answers
    planned: int = 0  # dry run: requests that would be sent
    unchanged: int = 0  # records whose contact payload Loops already has (ledger)
    resubscribe_blocked: int = 0  # subscribed: true dropped (the rule does not allow re-subscribing)
    elapsed: float = 0.0  # seconds spent sending this stream's batches
    reasons: collections.Counter[str] = field(default_factory=collections.Counter)
    reserved_skipped: collections.Counter[str] = field(default_factory=collections.Counter)  # source key → records
    skipped_calls: collections.Counter[str] = field(default_factory=collections.Counter)  # Segment call type → records

    def add_outcome(self, outcome: Outcome) -> None:
        """Fold one request's outcome into the counters (rejections are counted per record by the sink)."""
        self.requests += outcome.attempts
        self.retried += outcome.retries
        self.rate_limited += outcome.rate_limited
        if outcome.kind is OutcomeKind.DELIVERED or outcome.kind is OutcomeKind.ALREADY_DONE:
            self.delivered += 1
        elif outcome.kind is OutcomeKind.DUPLICATE:
            self.duplicates += 1
        elif outcome.kind is OutcomeKind.PLANNED:
            self.planned += 1

    def summary_line(self) -> str:
        """One line for the log: the figures a user checks after a sync."""
        rate = self.requests / self.elapsed if self.elapsed > 0 else 0.0
        line = (
            f"stream {self.stream} ({self.action or 'unmapped'}): read {self.read}, requests {self.requests}, "
            f"delivered {self.delivered}, unchanged {self.unchanged}, coalesced {self.coalesced}, "
            f"folded {self.folded}, "
            f"duplicates {self.duplicates}, resubscribe_blocked {self.resubscribe_blocked}, "
            f"rejected {self.rejected}, retried {self.retried}, 429s {self.rate_limited}, "
            f"elapsed {self.elapsed:.1f}s, {rate:.1f} requests/s"
        )
        if self.planned:
            line += f", planned {self.planned} (dry run)"
        if self.skipped:
            line += f", skipped {self.skipped} (unmapped)"
        if self.skipped_calls:
            calls = ", ".join(f"{k} {v}" for k, v in sorted(self.skipped_calls.items()))
            line += f", skipped {sum(self.skipped_calls.values())} ({calls}: no Loops equivalent)"
        if self.reasons:
            line += " | rejects: " + ", ".join(f"{k} {v}" for k, v in sorted(self.reasons.items()))
        return line


class RunStats:
    """Every stream's counters for the run; sinks are created on any thread, so creation is locked."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.streams: dict[str, StreamStats] = {}

    def for_stream(self, stream: str, action: str | None) -> StreamStats:
        """The counters of ``stream``, created on first use."""
        with self._lock:
            stats = self.streams.get(stream)
            if stats is None:
                stats = self.streams[stream] = StreamStats(stream=stream, action=action)
            return stats


class Progress:
    """A progress line at most every ``interval`` seconds while requests are being sent.

    Sinks announce each batch's planned requests; the client reports each finished request (from its worker
    threads). The line shows the batches in flight and the run so far, the current rate and an ETA.
    """

    def __init__(self, logger: logging.Logger, interval: float = 10.0) -> None:
        self.logger = logger
        self.interval = interval
        self._lock = threading.Lock()
        self._last = time.monotonic()
        self._recent: collections.deque[float] = collections.deque()
        self.batch_planned = self.batch_done = 0
        self.total_planned = self.total_done = 0
        self.rate_limited = self.retries = self.rejected = 0

    def begin_batch(self, planned: int) -> None:
        with self._lock:
            self.batch_planned += planned
            self.total_planned += planned

    def end_batch(self, planned: int) -> None:
        with self._lock:
            self.batch_planned = self.batch_done = 0

    def note(self, outcome: Outcome) -> None:
        """One request finished: count it, and print the line if the interval has passed."""
        now = time.monotonic()
        with self._lock:
            self.batch_done += 1
            self.total_done += 1
            self.rate_limited += outcome.rate_limited
            self.retries += outcome.retries
            self.rejected += outcome.kind is OutcomeKind.REJECTED
            self._recent.append(now)
            while self._recent and self._recent[0] < now - self.interval:
                self._recent.popleft()
            if now - self._last < self.interval:
                return
            self._last = now
            line = self._line(now)
        self.logger.info("%s", line)

    def _line(self, now: float) -> str:
        window = min(self.interval, max(now - self._recent[0], 1e-6)) if self._recent else self.interval
        rate = len(self._recent) / window
        left = self.batch_planned - self.batch_done
        eta = f"{left / rate:.0f}s" if rate > 0 else "?"
        return (
            f"Progress: batch {self.batch_done}/{self.batch_planned} requests, run {self.total_done}/"
            f"{self.total_planned}, {rate:.1f} requests/s, 429s {self.rate_limited}, retries {self.retries}, "
            f"rejects {self.rejected}, batch ETA {eta}"
        )


def human_duration(seconds: float) -> str:
    """``4120`` → ``1 h 9 min``; ``75`` → ``1 min 15 s``."""
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes} min"
    if minutes:
        return f"{minutes} min {secs} s" if secs else f"{minutes} min"
    return f"{secs} s"


def stream_report(stats: StreamStats) -> dict[str, Any]:
    """One stream's figures for the run report (JSON)."""
    rate = stats.requests / stats.elapsed if stats.elapsed > 0 else 0.0
    return {
        "stream": stats.stream,
        "action": stats.action,
        "read": stats.read,
        "requests": stats.requests,
        "sent": stats.delivered,
        "planned": stats.planned,
        "unchanged": stats.unchanged,
        "coalesced": stats.coalesced,
        "folded": stats.folded,
        "duplicate_events": stats.duplicates,
        "rejected": stats.rejected,
        "reject_reasons": dict(sorted(stats.reasons.items())),
        "resubscribe_blocked": stats.resubscribe_blocked,
        "stale": stats.reasons.get("stale", 0),
        "skipped_unmapped": stats.skipped,
        "skipped_calls": dict(sorted(stats.skipped_calls.items())),
        "reserved_not_sent": dict(sorted(stats.reserved_skipped.items())),
        "retries": stats.retried,
        "rate_limited": stats.rate_limited,
        "elapsed_seconds": round(stats.elapsed, 3),
        "requests_per_second": round(rate, 2),
    }
