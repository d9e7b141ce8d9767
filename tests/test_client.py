"""The HTTP client against the sandbox's fault modes: classification of every answer, retries, pacing, abort."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from target_loops.client import (
    BaseUrlError,
    ClientSettings,
    LoopsAuthError,
    LoopsClient,
    LoopsUnavailableError,
    RateLimiter,
    check_base_url,
)
from target_loops.operations import LoopsRequest, OutcomeKind
from target_loops.sandbox import Sandbox

KEY = "sandbox-key"


def client_for(sandbox: Sandbox, **overrides: Any) -> LoopsClient:
    fields: dict[str, Any] = {
        "base_url": sandbox.url,
        "api_key": KEY,
        "requests_per_second": 200,
        "max_concurrency": 4,
        "timeout_seconds": 5,
        "max_retries": 3,
        "backoff_seconds": 0.01,
    }
    fields.update(overrides)
    return LoopsClient(ClientSettings(**fields))


def upsert(i: int) -> LoopsRequest:
    return LoopsRequest("PUT", "/v1/contacts/update", {"email": f"p{i}@example.com", "userId": f"u{i}"})


def event(key: str, email: str = "p0@example.com") -> LoopsRequest:
    return LoopsRequest("POST", "/v1/events/send", {"email": email, "eventName": "Logged In"}, key)


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://app.loops.so/api", True),
        ("https://app.loops.so/api/", True),
        ("http://127.0.0.1:8787/api", True),
        ("http://localhost:8787/api", True),
        ("http://[::1]:8787/api", True),
        ("http://127.8.0.1/api", True),
        ("http://app.loops.so/api", False),
        ("http://192.168.1.4/api", False),
        ("ftp://app.loops.so/api", False),
        ("app.loops.so/api", False),
    ],
)
def test_base_url_policy(url: str, ok: bool) -> None:
    if ok:
        assert check_base_url(url) == url.rstrip("/")
    else:
        with pytest.raises(BaseUrlError, match="base_url"):
            check_base_url(url)


def test_each_answer_is_classified(sandbox: Sandbox) -> None:
    client = client_for(sandbox)
    try:
        assert client.check_api_key() == "Sandbox team"
        first, duplicate, no_contact, bad_email = client.send_many(
            [
                event("k-1"),
                event("k-1"),
                LoopsRequest("POST", "/v1/events/send", {"userId": "nobody", "eventName": "X"}, "k-2"),
                LoopsRequest("PUT", "/v1/contacts/update", {"email": "not-an-email"}),
            ]
        )
        kinds = {first.kind, duplicate.kind}
        assert kinds == {OutcomeKind.DELIVERED, OutcomeKind.DUPLICATE}  # concurrent: either may land first
        assert (no_contact.kind, no_contact.status) == (OutcomeKind.REJECTED, 400)
        assert "nobody" in (no_contact.message or "")
        assert (bad_email.kind, bad_email.status) == (OutcomeKind.REJECTED, 400)
        gone = client.send_many([LoopsRequest("POST", "/v1/contacts/delete", {"email": "ghost@example.com"})])[0]
        assert gone.kind is OutcomeKind.ALREADY_DONE and gone.done
        wrong_method = client.send_many([LoopsRequest("GET", "/v1/events/send", {})])[0]
        assert (wrong_method.kind, wrong_method.status) == (OutcomeKind.REJECTED, 405)
    finally:
        client.close()


def test_non_json_proxy_page_is_retried(sandbox: Sandbox) -> None:
    sandbox.inject("502", count=2, path="/api/v1/contacts/update")
    client = client_for(sandbox)
    try:
        outcome = client.send_many([upsert(1)])[0]
    finally:
        client.close()
    assert outcome.kind is OutcomeKind.DELIVERED
    assert (outcome.attempts, outcome.retries) == (3, 2)


def test_lost_answer_on_an_event_counts_as_delivered_once(sandbox: Sandbox) -> None:
    sandbox.inject("lost", count=1, path="/api/v1/events/send")
    client = client_for(sandbox)
    try:
        outcome = client.send_many([event("once")])[0]
    finally:
        client.close()
    assert outcome.kind is OutcomeKind.DUPLICATE  # the retry met 409: Loops already had it
    assert [e["idempotencyKey"] for e in sandbox.store.events()] == ["once"]


def test_timeouts_are_transient_and_bounded(make_sandbox: Any) -> None:
    sandbox = make_sandbox(latency_ms=400)
    client = client_for(sandbox, timeout_seconds=0.1, max_retries=2)
    try:
        outcome = client.send([upsert(1)][0])
    finally:
        client.close()
    assert outcome.kind is OutcomeKind.FAILED
    assert outcome.attempts == 3
    assert "ReadTimeout" in (outcome.message or "")


def test_failure_beyond_retries_aborts_the_rest(sandbox: Sandbox) -> None:
    sandbox.inject("500", count=1000)
    client = client_for(sandbox, max_retries=1, max_concurrency=1)
    try:
        outcomes = client.send_many([upsert(i) for i in range(5)])
    finally:
        client.close()
    assert outcomes[0].kind is OutcomeKind.FAILED
    assert {o.kind for o in outcomes[1:]} == {OutcomeKind.ABORTED}
    assert len(sandbox.store.requests()) == 2  # no retries burnt on requests that could not succeed


def test_key_revoked_mid_run_raises_and_aborts(sandbox: Sandbox) -> None:
    client = client_for(sandbox, max_concurrency=1)
    try:
        client.check_api_key()
        sandbox.configure(api_key="rotated")
        with pytest.raises(LoopsAuthError, match="Loops rejected the API key") as info:
            client.send_many([upsert(i) for i in range(4)])
        assert KEY not in str(info.value)
        assert sandbox.store.contacts() == []
    finally:
        client.close()


def test_check_api_key_reports_an_unreachable_server() -> None:
    client = LoopsClient(
        ClientSettings(base_url="http://127.0.0.1:9/api", api_key=KEY, max_retries=1, backoff_seconds=0.01)
    )
    try:
        with pytest.raises(LoopsUnavailableError, match="cannot reach Loops"):
            client.check_api_key()
    finally:
        client.close()


def test_pacing_under_the_real_limit_gets_no_429(make_sandbox: Any) -> None:
    """Even spacing at 8/s under a 10/s fixed window: Loops never has to say 429."""
    sandbox = make_sandbox(rate_limit=10)
    client = client_for(sandbox, requests_per_second=8, max_concurrency=4)
    try:
        outcomes = client.send_many([upsert(i) for i in range(20)])
    finally:
        client.close()
    assert all(o.kind is OutcomeKind.DELIVERED for o in outcomes)
    assert sum(o.rate_limited for o in outcomes) == 0


def test_rate_limiter_spaces_slots_and_pauses() -> None:
    limiter = RateLimiter(10)
    waits = [limiter.reserve() for _ in range(5)]
    assert waits[0] == pytest.approx(0, abs=0.01)
    assert [b - a for a, b in itertools.pairwise(waits)] == pytest.approx([0.1] * 4, abs=0.02)
    limiter.pause(1.0)
    assert limiter.reserve() >= 0.99
    assert limiter.lower_rate(5) and limiter.rate == 5
    assert not limiter.lower_rate(20)
