"""The HTTP client against the sandbox's fault modes: classification of every answer, retries, pacing, abort."""

from __future__ import annotations

import datetime as dt
import itertools
import random
from typing import Any

import pytest
import requests

from target_loops.client import (
    BaseUrlError,
    ClientSettings,
    Decision,
    LoopsAuthError,
    LoopsClient,
    LoopsUnavailableError,
    NotLoopsError,
    RateLimiter,
    Verdict,
    backoff_seconds,
    check_base_url,
    classify,
    rate_limit_pause,
    should_retry,
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


#: What the rules attach to their requests (``LoopsRequest.also_done``): the client knows no endpoint.
EVENT_ALSO_DONE = ((409, OutcomeKind.DUPLICATE),)
DELETE_ALSO_DONE = ((404, OutcomeKind.ALREADY_DONE),)


def event(key: str, email: str = "p0@example.com") -> LoopsRequest:
    return LoopsRequest(
        "POST", "/v1/events/send", {"email": email, "eventName": "Logged In"}, key, also_done=EVENT_ALSO_DONE
    )


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
                LoopsRequest("POST", "/v1/events/send", {"userId": "nobody", "eventName": "X"}, "k-2", EVENT_ALSO_DONE),
                LoopsRequest("PUT", "/v1/contacts/update", {"email": "not-an-email"}),
            ]
        )
        kinds = {first.kind, duplicate.kind}
        assert kinds == {OutcomeKind.DELIVERED, OutcomeKind.DUPLICATE}  # concurrent: either may land first
        assert (no_contact.kind, no_contact.status) == (OutcomeKind.REJECTED, 400)
        assert "nobody" in (no_contact.message or "")
        assert (bad_email.kind, bad_email.status) == (OutcomeKind.REJECTED, 400)
        delete = LoopsRequest("POST", "/v1/contacts/delete", {"email": "ghost@example.com"}, also_done=DELETE_ALSO_DONE)
        gone = client.send_many([delete])[0]
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
    # A silent server and a trickling one are the same failure to a user (tests/test_client_deadline.py).
    assert outcome.message == "no complete answer within 0.1 s (gave up after 2 retries)"


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


# --- classify(): the pure decision, one row per rule of Loops' status table


PUT = LoopsRequest("PUT", "/v1/contacts/update", {"email": "a@example.com"})
EVENT = LoopsRequest("POST", "/v1/events/send", {"email": "a@example.com", "eventName": "X"}, "k", EVENT_ALSO_DONE)
DELETE = LoopsRequest("POST", "/v1/contacts/delete", {"email": "a@example.com"}, also_done=DELETE_ALSO_DONE)
GET = LoopsRequest("GET", "/v1/lists", {})
JSON = "application/json; charset=utf-8"


@pytest.mark.parametrize(
    ("request_", "status", "body", "content_type", "decision", "kind", "text"),
    [
        (PUT, 200, {"success": True, "id": "c1"}, JSON, Decision.DONE, OutcomeKind.DELIVERED, None),
        (GET, 200, [{"id": "l1"}], JSON, Decision.DONE, OutcomeKind.DELIVERED, None),
        (
            PUT,
            200,
            None,
            "text/html; charset=utf-8",
            Decision.FATAL,
            None,
            "got text/html from PUT /v1/contacts/update",
        ),
        (PUT, 200, {"ok": True}, JSON, Decision.FATAL, None, 'JSON without "success": true'),
        (PUT, 200, {"success": False, "message": "no"}, JSON, Decision.FATAL, None, "success"),
        (GET, 200, None, "text/html", Decision.FATAL, None, "got text/html from GET /v1/lists"),
        (PUT, 204, None, None, Decision.FATAL, None, "HTTP 204"),
        (PUT, 302, None, "text/html", Decision.FATAL, None, "redirect (HTTP 302"),
        (GET, 301, None, None, Decision.FATAL, None, "redirect (HTTP 301"),
        (
            EVENT,
            409,
            {"success": False, "message": "Idempotency key used"},
            JSON,
            Decision.DONE,
            OutcomeKind.DUPLICATE,
            None,
        ),
        (
            PUT,
            409,
            {"success": False, "message": "Conflict"},
            JSON,
            Decision.REJECTED,
            OutcomeKind.REJECTED,
            "Conflict",
        ),
        (
            DELETE,
            404,
            {"success": False, "message": "Contact not found."},
            JSON,
            Decision.DONE,
            OutcomeKind.ALREADY_DONE,
            None,
        ),
        (DELETE, 404, None, "text/html", Decision.FATAL, None, "got text/html (HTTP 404)"),
        (
            PUT,
            400,
            {"success": False, "message": "Invalid email"},
            JSON,
            Decision.REJECTED,
            OutcomeKind.REJECTED,
            "Invalid email",
        ),
        (
            PUT,
            400,
            {"success": False, "error": "Old style"},
            JSON,
            Decision.REJECTED,
            OutcomeKind.REJECTED,
            "Old style",
        ),
        (PUT, 413, None, "text/html", Decision.REJECTED, OutcomeKind.REJECTED, "HTTP 413 (text/html)"),
        (
            PUT,
            401,
            {"success": False, "message": "Invalid API key"},
            JSON,
            Decision.FATAL,
            None,
            "rejected the API key",
        ),
        (PUT, 403, None, "text/html", Decision.FATAL, None, "rejected the API key"),
        (PUT, 429, {"success": False, "message": "Rate limit exceeded"}, JSON, Decision.RATE_LIMITED, None, None),
        (PUT, 500, {"success": False, "message": "boom"}, JSON, Decision.RETRY, None, "HTTP 500: boom"),
        (PUT, 502, None, "text/html", Decision.RETRY, None, "HTTP 502"),
        (PUT, 408, None, None, Decision.RETRY, None, "HTTP 408"),
    ],
)
def test_classify(
    request_: LoopsRequest,
    status: int,
    body: Any,
    content_type: str | None,
    decision: Decision,
    kind: OutcomeKind | None,
    text: str | None,
) -> None:
    verdict = classify(request_, status, body, content_type, None, location="/elsewhere")
    assert verdict.decision is decision
    if kind is not None:
        assert verdict.kind is kind
    if decision is Decision.FATAL:
        assert verdict.error is not None
        if status in (401, 403):
            assert isinstance(verdict.error, LoopsAuthError)
        else:
            assert isinstance(verdict.error, NotLoopsError)
    if text is not None:
        assert text in f"{verdict.message} {verdict.error}"


@pytest.mark.parametrize(
    ("exception", "decision"),
    [
        (requests.ConnectionError("connection refused"), Decision.RETRY),
        (requests.exceptions.ReadTimeout("read timed out"), Decision.RETRY),
        (requests.exceptions.ChunkedEncodingError("broken"), Decision.RETRY),
        (requests.exceptions.InvalidHeader("Invalid header value b'Bearer secret-key\\n'"), Decision.FATAL),
        (ValueError("something with secret-key"), Decision.FATAL),
    ],
)
def test_classify_exceptions(exception: BaseException, decision: Decision) -> None:
    verdict = classify(PUT, None, None, None, exception)
    assert verdict.decision is decision
    assert "secret-key" not in f"{verdict.message} {verdict.error}"  # a header's text never reaches a message


def test_retry_decision_and_backoff_are_pure() -> None:
    retry = Verdict(Decision.RETRY, "HTTP 500")
    assert should_retry(retry, 0, 2, 0) and should_retry(retry, 1, 2, 0) and not should_retry(retry, 2, 2, 0)
    assert not should_retry(Verdict(Decision.REJECTED), 0, 8, 0)
    assert not should_retry(Verdict(Decision.FATAL), 0, 8, 0)
    rng = random.Random(1)
    waits = [backoff_seconds(n, 1.0, 8.0, rng) for n in range(6)]
    assert all(0.5 * min(8, 2**n) <= w <= min(8, 2**n) for n, w in enumerate(waits))
    assert rate_limit_pause("3", 10, 0, 60, rng) == 3.0  # Retry-After, if Loops ever sends one
    assert 0.1 <= rate_limit_pause(None, 10, 0, 60, rng) <= 0.15  # a lone 429: about one slot
    assert 1.0 <= rate_limit_pause(None, 10, 5, 60, rng) <= 1.5  # 429s in a row: a whole window


def test_stats_for_progress_and_report(sandbox: Sandbox) -> None:
    sandbox.inject("500", count=1, path="/api/v1/contacts/update")
    client = client_for(sandbox)
    try:
        client.check_api_key()
        assert all(o.kind is OutcomeKind.DELIVERED for o in client.send_many([upsert(i) for i in range(5)]))
        stats = client.stats()
    finally:
        client.close()
    assert stats["requests"] == 7 and stats["retries"] == 1 and stats["rate_limited"] == 0
    assert stats["answer_ms_p50"] is not None and stats["answer_ms_p95"] >= stats["answer_ms_p50"]
    assert 1 <= stats["in_flight_level"] <= 4


def test_a_429_pauses_everyone_and_slows_the_pace(sandbox: Sandbox) -> None:
    sandbox.inject("429", count=1, path="/api/v1/contacts/update")
    client = client_for(sandbox, requests_per_second=50, max_concurrency=1)
    try:
        outcome = client.send(upsert(1))
        assert (outcome.kind, outcome.rate_limited, outcome.retries) == (OutcomeKind.DELIVERED, 1, 0)
        assert client.limiter.rate < client.limiter.limit == 50
        assert client.stats()["rate_limited"] == 1
    finally:
        client.close()
    first, second = (_epoch(r["at"]) for r in sandbox.store.requests())
    assert second - first >= 0.015  # the pause after the 429: at least one slot of 1/50 s


def _epoch(at: str) -> float:
    return dt.datetime.fromisoformat(at.replace("Z", "+00:00")).timestamp()
