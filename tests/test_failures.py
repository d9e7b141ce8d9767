"""Failure paths over real HTTP: 429 storms, 500s, lost answers and dropped connections, retries running out.

The sandbox counts what reached it, so "nothing lost, no event twice" is checked on its side, not the target's.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

from runner import SANDBOX_KEY, parse_states, record, run_target, schema, singer, start_target, state

from target_loops.sandbox import Sandbox
from target_loops.serialization import stable_hash

USERS = 25


def workload(users: int = USERS) -> str:
    """``users`` identifies and one event each, warehouse-shaped, with a STATE at the end."""
    messages = [
        schema("identifies", {"id": "string", "user_id": "string", "email": "string", "plan": "string"}, ["id"]),
        schema("tracks", {"id": "string", "user_id": "string", "event_text": "string"}, ["id"]),
    ]
    messages += [
        record("identifies", {"id": f"i{i}", "user_id": f"u{i}", "email": f"u{i}@example.com", "plan": f"p{i % 3}"})
        for i in range(users)
    ]
    messages += [record("tracks", {"id": f"t{i}", "user_id": f"u{i}", "event_text": "Logged In"}) for i in range(users)]
    messages.append(state({"bookmarks": {"tracks": f"t{users - 1}"}}))
    return singer(*messages)


def config_for(sandbox: Sandbox, **extra: Any) -> dict[str, Any]:
    return {"api_key": SANDBOX_KEY, "base_url": sandbox.url, **extra}


def assert_everything_delivered_once(sandbox: Sandbox, users: int = USERS) -> None:
    contacts = {c["userId"]: c for c in sandbox.store.contacts()}
    assert len(contacts) == users
    assert all(contacts[f"u{i}"]["plan"] == f"p{i % 3}" for i in range(users))
    keys = [e["idempotencyKey"] for e in sandbox.store.events()]
    expected = ["tl-" + stable_hash("event", "Logged In", f"t{i}")[:64] for i in range(users)]
    assert sorted(keys) == sorted(expected), "every event accepted exactly once"


def test_429_storm_is_waited_out_without_using_retries(make_sandbox: Any, tmp_path: Path) -> None:
    sandbox = make_sandbox(rate_limit=0, fail_429=0.4, seed=11, properties=[{"key": "plan", "type": "string"}])
    report = tmp_path / "report.json"
    config = config_for(sandbox, max_retries=0, requests_per_second=100, report_path=str(report))
    run = run_target(config, workload(), tmp_path=tmp_path)
    assert run.returncode == 0, run.stderr
    assert_everything_delivered_once(sandbox)
    answered_429 = sum(1 for r in sandbox.store.requests() if r["status"] == 429)
    assert answered_429 > 5
    # Every 429 the sandbox gave is counted in the report (and used no retry).
    streams = json.loads(report.read_text())["streams"]
    assert sum(s["rate_limited"] for s in streams) == answered_429
    assert run.final_state == {"bookmarks": {"tracks": f"t{USERS - 1}"}}


def test_real_rate_limit_is_followed(make_sandbox: Any, tmp_path: Path) -> None:
    """The target is told 100/s, the sandbox allows 20/s and says so in x-ratelimit-limit: the target adapts."""
    sandbox = make_sandbox(rate_limit=20, properties=[{"key": "plan", "type": "string"}])
    run = run_target(config_for(sandbox, requests_per_second=100), workload(), tmp_path=tmp_path)
    assert run.returncode == 0, run.stderr
    assert_everything_delivered_once(sandbox)
    assert "Loops announces a limit of 20 requests/s" in run.stderr
    limited = sum(1 for r in sandbox.store.requests() if r["status"] == 429)
    assert limited <= 5, f"{limited} requests answered 429"


def test_500s_lost_answers_and_dropped_connections_lose_nothing(make_sandbox: Any, tmp_path: Path) -> None:
    sandbox = make_sandbox(
        fail_500=0.1, fail_lost=0.1, fail_drop=0.1, seed=5, properties=[{"key": "plan", "type": "string"}]
    )
    run = run_target(config_for(sandbox, max_retries=10), workload(), tmp_path=tmp_path)
    assert run.returncode == 0, run.stderr
    assert_everything_delivered_once(sandbox)
    faults = {r["fault"] for r in sandbox.store.requests()}
    assert {"500", "lost", "drop"} <= faults
    # A lost answer to events/send was retried and met 409: delivered once, counted as a duplicate.
    assert any(r["status"] == 409 for r in sandbox.store.requests())
    assert run.rejects == []
    assert run.final_state == {"bookmarks": {"tracks": f"t{USERS - 1}"}}


def test_transient_failure_beyond_max_retries_fails_the_run_without_state(make_sandbox: Any, tmp_path: Path) -> None:
    sandbox = make_sandbox(properties=[{"key": "plan", "type": "string"}])
    sandbox.inject("500", count=1000, path="/api/v1/events/send")
    run = run_target(config_for(sandbox, max_retries=2), workload(), tmp_path=tmp_path)
    assert run.returncode != 0
    assert run.states == []
    assert "could not be delivered" in run.stderr
    assert "re-run to replay" in run.stderr
    assert sandbox.store.events() == []
    # Each contact's update rode on its event, so nothing was applied; the rerun sends it all.
    assert len(sandbox.store.contacts()) == 0

    sandbox.app.clear_injected()
    rerun = run_target(config_for(sandbox), workload(), tmp_path=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    assert_everything_delivered_once(sandbox)


def test_unreachable_loops_fails_fast_with_a_clear_message(tmp_path: Path) -> None:
    run = run_target(
        {"api_key": SANDBOX_KEY, "base_url": "http://127.0.0.1:9/api", "max_retries": 1}, workload(2), tmp_path=tmp_path
    )
    assert run.returncode != 0
    assert "cannot reach Loops at http://127.0.0.1:9/api" in run.stderr
    assert run.states == []


def test_rotated_key_stops_the_next_run_before_any_write(make_sandbox: Any, tmp_path: Path) -> None:
    sandbox = make_sandbox(properties=[{"key": "plan", "type": "string"}])
    assert run_target(config_for(sandbox), workload(2), tmp_path=tmp_path).returncode == 0
    writes_before = len(sandbox.store.requests())
    sandbox.configure(api_key="rotated-key")
    run = run_target(config_for(sandbox), workload(2), tmp_path=tmp_path)
    assert run.returncode != 0
    assert "Loops rejected the API key" in run.stderr
    assert SANDBOX_KEY not in run.stderr
    assert [r["path"] for r in sandbox.store.requests()[writes_before:]] == ["/api/v1/api-key"]


def test_sigterm_while_sending_writes_no_untrue_state(make_sandbox: Any, tmp_path: Path) -> None:
    """SIGTERM mid-batch: no STATE may cover requests not yet accepted; the rerun completes the work."""
    sandbox = make_sandbox(latency_ms=50, properties=[{"key": "plan", "type": "string"}])
    proc = start_target(config_for(sandbox, requests_per_second=20), workload(), tmp_path=tmp_path)
    deadline = time.monotonic() + 30
    while len(sandbox.store.contacts()) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr
    assert "stopped by SIGTERM" in stderr and "no STATE was written" in stderr
    assert stdout.strip() == ""
    assert len(sandbox.store.contacts()) < USERS

    rerun = run_target(config_for(sandbox), workload(), tmp_path=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    assert_everything_delivered_once(sandbox)


def test_sigterm_between_batches_stops_at_once_and_checkpoints_only_what_is_settled(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """Input still open, nothing in flight: SIGTERM ends the run at once (exit 143: the input was not finished, so an
    orchestrator must not record a success), the held records are not sent (sending them could take longer than an
    orchestrator waits) and no STATE covers them; the report says completed: false; the rerun delivers all once."""
    report = tmp_path / "report.json"
    config = config_for(sandbox, unknown_properties="drop", report_path=str(report))
    proc = start_target(config, tmp_path=tmp_path, stdin=True)
    assert proc.stdin is not None
    proc.stdin.write(workload(3))
    proc.stdin.flush()
    deadline = time.monotonic() + 30
    while not any(r["path"] == "/api/v1/lists" for r in sandbox.store.requests()) and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)  # the records are read and buffered; nothing has been sent
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=30)
    assert time.monotonic() - started < 5
    assert proc.returncode == 143, stderr
    assert "Traceback" not in stderr
    assert "stopped by SIGTERM before the end of the input" in stderr
    assert parse_states(stdout) == []
    assert json.loads(report.read_text())["completed"] is False
    rerun = run_target(config, workload(3), tmp_path=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    assert len(sandbox.store.contacts()) == 3 and len(sandbox.store.events()) == 3
