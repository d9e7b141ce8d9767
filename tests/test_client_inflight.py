"""Issue 15: requests in flight follow Little's law (rate x recent answer time), between 1 and max_concurrency."""

from __future__ import annotations

import math
import threading
import time
from typing import Any

from target_loops.client import ClientSettings, LoopsClient
from target_loops.operations import LoopsRequest, Outcome, OutcomeKind
from target_loops.sandbox import Sandbox

KEY = "sandbox-key"
RATE = 40


def upsert(i: int) -> LoopsRequest:
    return LoopsRequest("PUT", "/v1/contacts/update", {"email": f"p{i}@example.com"})


def drive(client: LoopsClient, requests: list[LoopsRequest], threads: int) -> list[Outcome]:
    """What the outbox does: up to ``threads`` callers, each calling ``send`` for the next request."""
    outcomes: list[Outcome | None] = [None] * len(requests)
    lock = threading.Lock()
    queue = iter(range(len(requests)))

    def worker() -> None:
        while True:
            with lock:
                index = next(queue, None)
            if index is None:
                return
            outcomes[index] = client.send(requests[index])

    workers = [threading.Thread(target=worker) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return [o for o in outcomes if o is not None]


def achieved_rate(sandbox: Sandbox, since: int) -> float:
    times = sorted(_epoch(r["at"]) for r in sandbox.store.requests()[since:] if r["method"] != "GET")
    return (len(times) - 1) / (times[-1] - times[0])


def _epoch(at: str) -> float:
    import datetime as dt

    return dt.datetime.fromisoformat(at.replace("Z", "+00:00")).timestamp()


def test_default_ceiling_is_32() -> None:
    assert ClientSettings(base_url="https://app.loops.so/api", api_key="k").max_concurrency == 32


def test_in_flight_rises_with_slow_answers_and_falls_with_fast_ones(make_sandbox: Any) -> None:
    sandbox = make_sandbox(rate_limit=RATE, latency_ms=400, latency_jitter_ms=20)
    client = LoopsClient(ClientSettings(base_url=sandbox.url, api_key=KEY, requests_per_second=RATE, timeout_seconds=5))
    try:
        client.check_api_key()
        slow = drive(client, [upsert(i) for i in range(120)], threads=32)
        slow_stats = client.stats()
        slow_rate = achieved_rate(sandbox, 1)
        sandbox.configure(latency_ms=0, latency_jitter_ms=0)
        before = len(sandbox.store.requests())
        started = time.monotonic()
        fast = drive(client, [upsert(1000 + i) for i in range(80)], threads=32)
        fast_seconds = time.monotonic() - started
        fast_stats = client.stats()
    finally:
        client.close()
    assert all(o.kind is OutcomeKind.DELIVERED for o in slow + fast)
    # Little's law: 40/s x ~0.43 s ≈ 17 in flight are needed; the old fixed 4 gave at most 4 / 0.43 ≈ 9/s.
    assert slow_stats["in_flight_level"] >= math.ceil(RATE * 0.4)
    assert slow_rate >= 0.9 * RATE
    assert 400 <= slow_stats["answer_ms_p50"] <= 500
    assert fast_stats["in_flight_level"] <= 4
    assert fast_stats["answer_ms_p50"] < slow_stats["answer_ms_p50"]
    assert fast_seconds < 80 / RATE + 1.5
    assert sandbox.store.requests()[before:]  # the fast phase really ran against the same sandbox
    assert sum(o.rate_limited for o in slow + fast) <= 2  # no 429 storm
    assert fast_stats["rate_limited"] <= 2
    assert fast_stats["requests"] == 1 + 120 + 80 + fast_stats["retries"] + fast_stats["rate_limited"]
