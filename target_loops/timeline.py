"""What the HTTP client did over time, second by second, in bounded memory: the run report's charts.

Each bucket counts the requests started, the 429 answers, the retries (transient failures sent again) and the
answer times (log-spaced bins, enough for a p50 and a p95 within a few percent). A run has at most
:data:`MAX_BUCKETS` buckets: when a run outlives them, neighbours merge and a bucket covers twice the seconds, so a
day-long run keeps the same few hundred buckets as a one-minute run (the charts stay per second: counts are
divided by the bucket's width when drawn).
"""

from __future__ import annotations

import collections
import datetime as dt
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any

#: Buckets kept at most; past this, a bucket covers twice the seconds (a run of a day: ~5 min per bucket).
MAX_BUCKETS = 300

#: Answer-time bins per factor of ten (bin edges 10**(i/BINS_PER_DECADE) ms): about 6 % wide.
BINS_PER_DECADE = 40

#: The names the client counts, in the run report's vocabulary (see ``target_loops.report``).
COUNTED = ("requests", "rate_limited", "retries")


@dataclass
class _Bucket:
    requests: int = 0
    rate_limited: int = 0
    retries: int = 0
    answers: collections.Counter[int] = field(default_factory=collections.Counter)

    def merge(self, other: _Bucket) -> None:
        self.requests += other.requests
        self.rate_limited += other.rate_limited
        self.retries += other.retries
        self.answers.update(other.answers)


def _bin(seconds: float) -> int:
    return round(math.log10(max(seconds * 1000, 0.1)) * BINS_PER_DECADE)


def _ms(index: int) -> float:
    return 10 ** (index / BINS_PER_DECADE)


def _percentile(answers: collections.Counter[int], fraction: float) -> float | None:
    total = sum(answers.values())
    if not total:
        return None
    rank = max(1, math.ceil(fraction * total))
    seen = 0
    for index in sorted(answers):
        seen += answers[index]
        if seen >= rank:
            return round(_ms(index), 1)
    return None  # pragma: no cover - the loop reaches the rank


class Timeline:
    """Per-second counters of one client, safe to update from its sending threads."""

    def __init__(self, clock: Any = time.monotonic, wall: Any = None) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._start = clock()
        self._started_at = wall or dt.datetime.now(dt.timezone.utc)
        self._width = 1  # seconds per bucket
        self._buckets: list[_Bucket] = []

    def count(self, name: str) -> None:
        """One more of ``name`` (one of :data:`COUNTED`) in the current second."""
        if name in COUNTED:
            with self._lock:
                bucket = self._current()
                setattr(bucket, name, getattr(bucket, name) + 1)

    def answer(self, seconds: float) -> None:
        """An answer came back after ``seconds``."""
        with self._lock:
            self._current().answers[_bin(seconds)] += 1

    def _current(self) -> _Bucket:
        index = int((self._clock() - self._start) // self._width)
        while index >= MAX_BUCKETS:
            self._halve()
            index = int((self._clock() - self._start) // self._width)
        while len(self._buckets) <= index:
            self._buckets.append(_Bucket())
        return self._buckets[index]

    def _halve(self) -> None:
        merged = []
        for i in range(0, len(self._buckets), 2):
            pair = self._buckets[i]
            if i + 1 < len(self._buckets):
                pair.merge(self._buckets[i + 1])
            merged.append(pair)
        self._buckets = merged
        self._width *= 2

    def snapshot(self) -> dict[str, Any]:
        """The buckets as plain data: ``bucket_seconds``, ``start`` (UTC, ISO) and one dict per bucket, from the
        client's start to its last activity (idle seconds in between are zeros, so the x axis is time)."""
        with self._lock:
            buckets = [
                {
                    "offset_seconds": index * self._width,
                    "requests": b.requests,
                    "rate_limited": b.rate_limited,
                    "retries": b.retries,
                    "answer_ms_p50": _percentile(b.answers, 0.5),
                    "answer_ms_p95": _percentile(b.answers, 0.95),
                }
                for index, b in enumerate(self._buckets)
            ]
            width = self._width
        first = next((i for i, b in enumerate(buckets) if b["requests"]), len(buckets))
        return {
            "bucket_seconds": width,
            "start": self._started_at.isoformat(timespec="seconds"),
            "buckets": buckets[first:],
        }
