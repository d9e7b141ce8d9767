"""Counters per stream and the summary printed at the end of a run."""

from __future__ import annotations

import collections
import threading
from dataclasses import dataclass, field

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
    rejected: int = 0  # records refused, locally or by Loops
    retried: int = 0
    rate_limited: int = 0  # 429 answers
    planned: int = 0  # dry run: requests that would be sent
    unchanged: int = 0  # records whose contact payload Loops already has (ledger)
    resubscribe_blocked: int = 0  # subscribed: true dropped (the rule does not allow re-subscribing)
    elapsed: float = 0.0  # seconds spent sending this stream's batches
    reasons: collections.Counter[str] = field(default_factory=collections.Counter)

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
            f"duplicates {self.duplicates}, resubscribe_blocked {self.resubscribe_blocked}, "
            f"rejected {self.rejected}, retried {self.retried}, 429s {self.rate_limited}, "
            f"elapsed {self.elapsed:.1f}s, {rate:.1f} requests/s"
        )
        if self.planned:
            line += f", planned {self.planned} (dry run)"
        if self.skipped:
            line += f", skipped {self.skipped} (unmapped)"
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
