"""Fault injection: SIGTERM at the worst moments, then a resumed run; Loops (the sandbox) must end with nothing lost,
nothing twice and no contact stale, and the stopped run must end promptly.

The target runs in-process (``target.listen``) so that the signal lands exactly where a test wants it: the test
wraps one of the target's own steps and raises SIGTERM from inside it, which is where a real signal's handler runs
(between two bytecodes of the main thread). The points: inside a sink's hand-over to the outbox, inside the thread
pool's ``submit`` (holding its lock: 0.2.0 deadlocked there), inside a flush (between requests), and while reading.
After the stop, the run is resumed as a tap would resume it: from the last STATE the stopped run emitted.
"""

from __future__ import annotations

import io
import json
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from runner import parse_states, record, sandbox_config, schema, singer, start_target, state

from target_loops.outbox import Outbox
from target_loops.sandbox import Sandbox
from target_loops.target import StoppedBySignal, TargetLoops

pytestmark = pytest.mark.e2e

USERS = 40
TIME = {"type": "string", "format": "date-time"}
TRACK = {"id": "string", "user_id": "string", "event_text": "string"}
IDENTIFY = {"id": "string", "user_id": "string", "email": "string", "plan": "string"}
PLAN = [{"key": "plan", "type": "string"}]


def messages() -> list[dict[str, Any]]:
    """A warehouse tap's output: the tracks table (userId only) before the identifies table, STATE after every ten
    rows with the position reached; each person's plan changes once."""
    out: list[dict[str, Any]] = [
        schema(
            "tracks",
            {
                "id": "string",
                "user_id": "string",
                "event_text": "string",
                "timestamp": {"type": "string", "format": "date-time"},
            },
            ["id"],
        ),
        schema(
            "identifies",
            {
                "id": "string",
                "user_id": "string",
                "email": "string",
                "plan": "string",
                "timestamp": {"type": "string", "format": "date-time"},
            },
            ["id"],
        ),
    ]
    rows: list[dict[str, Any]] = []
    for n in range(USERS):
        rows.append(record("tracks", {"id": f"t{n}", "user_id": f"u{n}", "event_text": "Logged In",
                                      "timestamp": "2026-11-01T10:00:00Z"}))  # fmt: skip
    for n in range(USERS):
        for k, plan in enumerate(("free", "pro")):
            rows.append(record("identifies", {"id": f"i{n}-{k}", "user_id": f"u{n}", "email": f"u{n}@x.io",
                                              "plan": plan, "timestamp": f"2026-11-01T1{k}:00:00Z"}))  # fmt: skip
    for position, row in enumerate(rows, start=1):
        out.append(row)
        if position % 10 == 0:
            out.append(state({"position": position}))
    return out


def input_after(state_value: dict[str, Any] | None) -> str:
    """The input a tap would send when resumed from ``state_value`` (the SCHEMAs, then the rows after it)."""
    all_messages = messages()
    start = (state_value or {}).get("position", 0)
    rows_seen = 0
    resumed = []
    for message in all_messages:
        if message["type"] == "SCHEMA":
            resumed.append(message)
        elif message["type"] == "RECORD":
            rows_seen += 1
            if rows_seen > start:
                resumed.append(message)
        elif message["value"]["position"] > start:
            resumed.append(message)
    return singer(*resumed)


def config(sandbox: Sandbox, tmp_path: Path) -> dict[str, Any]:
    return sandbox_config(
        sandbox,
        tmp_path,
        batch_size_rows=7,  # many hand-overs
        coalesce_rows=25,  # many flushes
        checkpoint_seconds=0,  # a checkpoint at every STATE
        rejects_path=str(tmp_path / "rejects.jsonl"),
        retry_backoff_seconds=0.01,
    )


@pytest.fixture
def restore_signals() -> Iterator[None]:
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    yield
    for number, handler in handlers.items():
        signal.signal(number, handler)


def run(cfg: dict[str, Any], text: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[dict[str, Any]]]:
    """One in-process run: its exit code (0, or 128 + the signal) and the STATEs it emitted."""
    capsys.readouterr()
    target = TargetLoops(config=cfg)
    code = 0
    try:
        target.listen(io.StringIO(text))
    except StoppedBySignal as exc:
        code = exc.exit_code
    return code, parse_states(capsys.readouterr().out)


def assert_loops_as_the_input_says(sandbox: Sandbox) -> None:
    contacts = {c["userId"]: c for c in sandbox.store.contacts()}
    assert len(contacts) == USERS, "no contact lost, none twice"
    assert {c["plan"] for c in contacts.values()} == {"pro"}, "no contact stale"
    keys = [e["idempotencyKey"] for e in sandbox.store.events()]
    assert len(keys) == USERS and len(set(keys)) == USERS, "every event accepted exactly once"


def delivered_rows(sandbox: Sandbox) -> set[str]:
    """The tracks rows whose event Loops holds (the identifies are checked through the contacts)."""
    users = {e["userId"] for e in sandbox.store.events()}
    return {f"t{u[1:]}" for u in users}


def stop_at(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str, *, after: int) -> dict[str, float]:
    """Wrap ``owner.name`` so that its ``after``-th call raises SIGTERM from inside it; returns when it did."""
    original = getattr(owner, name)
    calls = {"n": 0}
    when: dict[str, float] = {}

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == after:
            when["signal"] = time.monotonic()
            signal.raise_signal(signal.SIGTERM)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapped)
    return when


def resume_and_check(sandbox: Sandbox, cfg: dict[str, Any], states: list[dict[str, Any]], capsys: Any) -> None:
    """The last STATE the stopped run emitted must be true, and resuming from it completes the work once."""
    last = states[-1] if states else None
    position = (last or {}).get("position", 0)
    # True: every tracks row before the STATE's position is delivered (the tracks table comes first).
    expected = {f"t{n}" for n in range(min(position, USERS))}
    assert expected <= delivered_rows(sandbox), "a STATE covered rows Loops never accepted"
    code, resumed_states = run(cfg, input_after(last), capsys)
    assert code == 0
    assert resumed_states[-1] == {"position": 3 * USERS}
    assert_loops_as_the_input_says(sandbox)


@pytest.mark.parametrize("after", [2, 9])
def test_sigterm_inside_a_hand_over_to_the_outbox_loses_nothing(
    sandbox: Sandbox, tmp_path: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch, restore_signals: None, after: int
) -> None:
    sandbox.store.configure_team(properties=PLAN)
    cfg = config(sandbox, tmp_path)
    stop_at(monkeypatch, Outbox, "add", after=after)
    code, states = run(cfg, singer(*messages()), capsys)
    assert code == 143
    monkeypatch.undo()
    resume_and_check(sandbox, cfg, states, capsys)


@pytest.mark.parametrize("after", [2, 50])
def test_sigterm_inside_a_flush_loses_nothing_and_sends_nothing_new(
    sandbox: Sandbox, tmp_path: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch, restore_signals: None, after: int
) -> None:
    from target_loops.client import LoopsClient

    sandbox.store.configure_team(properties=PLAN)
    cfg = config(sandbox, tmp_path)
    when = stop_at(monkeypatch, LoopsClient, "send", after=after)
    code, states = run(cfg, singer(*messages()), capsys)
    stopped = time.monotonic()
    assert code == 143
    assert stopped - when["signal"] < 10, "the stop took too long"
    sent_after = [r for r in sandbox.store.requests() if r["method"] == "POST" or r["method"] == "PUT"]
    monkeypatch.undo()
    resume_and_check(sandbox, cfg, states, capsys)
    assert len(sent_after) < 3 * USERS  # the stopped run did not go on sending everything


def test_sigterm_inside_the_thread_pools_submit_does_not_deadlock(
    sandbox: Sandbox, tmp_path: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch, restore_signals: None
) -> None:
    """``ThreadPoolExecutor.submit`` holds the pool's lock while it calls ``_adjust_thread_count``: the signal lands
    there. 0.2.0's handler shut the pool down from inside, on the same lock, and hung until SIGKILL."""
    sandbox.store.configure_team(properties=PLAN)
    cfg = config(sandbox, tmp_path)
    original = ThreadPoolExecutor._adjust_thread_count
    fired: dict[str, float] = {}

    def adjust(pool: ThreadPoolExecutor) -> None:
        if pool._thread_name_prefix.startswith("loops-contact") and not fired:  # type: ignore[attr-defined]
            fired["at"] = time.monotonic()
            signal.raise_signal(signal.SIGTERM)
        original(pool)

    monkeypatch.setattr(ThreadPoolExecutor, "_adjust_thread_count", adjust)
    outcome: dict[str, Any] = {}

    def target_run() -> None:
        outcome["result"] = run(cfg, singer(*messages()), capsys)

    # The run is in-process on the main thread (signals need it); a watchdog fails the test instead of hanging.
    timer = threading.Timer(60, lambda: pytest.fail("the run hung after SIGTERM inside submit"))
    timer.start()
    try:
        target_run()
    finally:
        timer.cancel()
    code, states = outcome["result"]
    assert fired and code == 143
    assert time.monotonic() - fired["at"] < 10
    monkeypatch.undo()
    resume_and_check(sandbox, cfg, states, capsys)


def test_sigterm_while_reading_stops_at_once_and_the_rerun_completes(sandbox: Sandbox, tmp_path: Path) -> None:
    """Input still open, the target blocked on it: SIGTERM ends the run within seconds (exit 143), with a STATE only
    if everything read was settled, and a report saying completed: false."""
    sandbox.store.configure_team(properties=PLAN)
    cfg = config(sandbox, tmp_path)
    cfg["report_path"] = str(tmp_path / "report.json")
    proc = start_target(cfg, tmp_path=tmp_path, stdin=True)
    assert proc.stdin is not None
    text = singer(*messages())
    half = text.splitlines(keepends=True)[: len(text.splitlines()) // 2]
    proc.stdin.write("".join(half))
    proc.stdin.flush()
    deadline = time.monotonic() + 60
    while len(sandbox.store.events()) < 10 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=30)
    assert time.monotonic() - started < 10
    assert proc.returncode == 143, stderr
    assert "Traceback" not in stderr
    assert "stopped by SIGTERM" in stderr
    assert json.loads((tmp_path / "report.json").read_text())["completed"] is False
    states = parse_states(stdout)
    last = states[-1] if states else None
    expected = {f"t{n}" for n in range(min((last or {}).get("position", 0), USERS))}
    assert expected <= delivered_rows(sandbox)
    rerun = start_target(cfg, input_after(last), tmp_path=tmp_path)
    out, err = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, err
    assert parse_states(out)[-1] == {"position": 3 * USERS}
    assert_loops_as_the_input_says(sandbox)


def test_after_a_stop_the_summary_counts_the_time_spent_sending(
    sandbox: Sandbox, tmp_path: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch, restore_signals: None
) -> None:
    from target_loops.client import LoopsClient

    sandbox.store.configure_team(properties=PLAN)
    cfg = {**config(sandbox, tmp_path), "report_path": str(tmp_path / "report.json")}
    stop_at(monkeypatch, LoopsClient, "send", after=30)
    code, _ = run(cfg, singer(*messages()), capsys)
    assert code == 143
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["completed"] is False
    assert report["totals"]["sending_seconds"] > 0


def test_sigterm_during_the_start_of_run_reads_does_not_wait_out_their_retries(
    make_sandbox: Any, tmp_path: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch, restore_signals: None
) -> None:
    """Loops answers 500 to everything and each retry waits 20 s: the key check alone would take a minute. A signal
    during it stops the run within seconds, before anything is read or sent."""
    from target_loops.client import LoopsClient

    sandbox = make_sandbox(fail_500=1.0, seed=1)
    cfg = {**config(sandbox, tmp_path), "retry_backoff_seconds": 20, "max_retries": 3}
    when = stop_at(monkeypatch, LoopsClient, "get_json", after=1)
    code, states = run(cfg, singer(*messages()), capsys)
    assert code == 143 and states == []
    assert time.monotonic() - when["signal"] < 5
    assert len(sandbox.store.requests()) <= 1
