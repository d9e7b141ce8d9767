"""Delivery you can trust, end to end over HTTP: nothing counted as done that Loops did not do, per-contact truth.

Each test runs the real CLI against the sandbox (or a stdlib server that answers like something that is not Loops)
and counts effects from the sandbox's own store and log, never from the target's word.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import signal
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from runner import SANDBOX_KEY, record, run_target, schema, singer, start_target, state

from target_loops.sandbox import Sandbox

IDENTIFY_COLUMNS = {
    "id": "string",
    "user_id": "string",
    "email": "string",
    "plan": "string",
    "timestamp": {"type": ["string", "null"], "format": "date-time"},
}
TRACK_COLUMNS = {**IDENTIFY_COLUMNS, "event_text": "string"}
PLAN = [{"key": "plan", "type": "string"}]


def config_for(sandbox: Sandbox | str, tmp_path: Path, **extra: Any) -> dict[str, Any]:
    url = sandbox.url if isinstance(sandbox, Sandbox) else sandbox
    return {"api_key": SANDBOX_KEY, "base_url": url, "ledger_url": f"sqlite:///{tmp_path / 'ledger.sqlite'}", **extra}


def identifies(*rows: dict[str, Any], stream: str = "identifies") -> list[dict[str, Any]]:
    return [schema(stream, IDENTIFY_COLUMNS, ["id"]), *(record(stream, r) for r in rows)]


def writes(sandbox: Sandbox) -> list[dict[str, Any]]:
    return [r for r in sandbox.store.requests() if r["method"] != "GET"]


# --- A. Never call something delivered that Loops did not accept


class _NotLoops(http.server.BaseHTTPRequestHandler):
    """Answers every request like a proxy's login page (200 text/html), or with a redirect."""

    mode = "html"
    hits: list[str] = []

    def _answer(self) -> None:
        type(self).hits.append(f"{self.command} {self.path}")
        if self.mode == "redirect":
            self.send_response(302)
            self.send_header("Location", "/login")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        page = b"<html><body>Please sign in</body></html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(page)))
        self.end_headers()
        self.wfile.write(page)

    do_GET = do_PUT = do_POST = _answer

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(params=["html", "redirect"])
def not_loops(request: pytest.FixtureRequest) -> Iterator[tuple[str, type[_NotLoops]]]:
    handler = type("Handler", (_NotLoops,), {"mode": request.param, "hits": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/api", handler
    server.shutdown()


def test_a_server_that_is_not_loops_stops_the_run_before_any_record(
    not_loops: tuple[str, type[_NotLoops]], tmp_path: Path
) -> None:
    url, handler = not_loops
    text = singer(*identifies({"id": "1", "user_id": "u1", "email": "a@example.com"}), state({"pos": 1}))
    run = run_target(config_for(url, tmp_path), text, tmp_path=tmp_path)
    assert run.returncode != 0
    assert "does not look like the Loops API" in run.stderr or "redirect" in run.stderr.lower()
    assert "Traceback" not in run.stderr
    assert run.states == []
    assert handler.hits == ["GET /api/v1/api-key"]  # nothing but the key check reached it


def test_a_dry_run_emits_no_state(make_sandbox: Any, tmp_path: Path) -> None:
    loops = make_sandbox(properties=PLAN)
    text = singer(*identifies({"id": "1", "user_id": "u1", "email": "a@example.com"}), state({"pos": 1}))
    run = run_target(config_for(loops, tmp_path, dry_run=True), text, tmp_path=tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.states == []
    assert writes(loops) == []
    # The real run afterwards still gets (and checkpoints) the row the rehearsal read.
    real = run_target(config_for(loops, tmp_path), text, tmp_path=tmp_path)
    assert real.returncode == 0, real.stderr
    assert real.states == [{"pos": 1}]
    assert loops.store.find(user_id="u1") is not None


def _team(make_sandbox: Any, key: str, lists: list[dict[str, Any]]) -> Sandbox:
    return make_sandbox(api_key=key, team_name="Acme", properties=PLAN, lists=lists)


def test_two_teams_with_the_same_name_never_share_a_ledger(make_sandbox: Any, tmp_path: Path) -> None:
    staging = _team(make_sandbox, "k-staging", [{"id": "cmstaging0000000000000001", "name": "News"}])
    production = _team(make_sandbox, "k-prod", [{"id": "cmprod000000000000000001", "name": "News"}])
    rows = [{"id": str(n), "user_id": f"u{n}", "email": f"u{n}@example.com", "plan": "pro"} for n in range(3)]
    text = singer(*identifies(*rows))
    for loops, key in ((staging, "k-staging"), (production, "k-prod")):
        # The same base URL for both, as a proxy or a rotated DNS name would give.
        run = run_target({**config_for(loops, tmp_path), "api_key": key}, text, tmp_path=tmp_path)
        assert run.returncode == 0, run.stderr
    assert len(staging.store.contacts()) == 3
    assert len(production.store.contacts()) == 3, "production got nothing: the ledger mixed two teams"


def test_a_rotated_key_keeps_its_ledger(make_sandbox: Any, tmp_path: Path) -> None:
    loops = _team(make_sandbox, "k-1", [{"id": "cmacme000000000000000001", "name": "News"}])
    text = singer(*identifies({"id": "1", "user_id": "u1", "email": "a@example.com", "plan": "pro"}))
    assert run_target({**config_for(loops, tmp_path), "api_key": "k-1"}, text, tmp_path=tmp_path).returncode == 0
    loops.configure(api_key="k-2")
    mark = len(writes(loops))
    rotated = run_target({**config_for(loops, tmp_path), "api_key": "k-2"}, text, tmp_path=tmp_path)
    assert rotated.returncode == 0, rotated.stderr
    assert writes(loops)[mark:] == [], "the rotated key of the same team re-sent what Loops has"


def test_a_restarted_sandbox_is_a_new_team_for_the_ledger(make_sandbox: Any, tmp_path: Path) -> None:
    """The same key under a new team name (a sandbox restarted empty gets a new name; a renamed team) starts a new
    ledger namespace, with a warning: a fresh team never gets "unchanged" for data it never received."""
    lists = [{"id": "cmacme000000000000000001", "name": "News"}]
    text = singer(*identifies({"id": "1", "user_id": "u1", "email": "a@example.com", "plan": "pro"}))
    first = make_sandbox(team_name="Sandbox team 1a2b", properties=PLAN, lists=lists)
    proxy = _Forward(first.url)  # one address, as a sandbox restarted on its port has
    try:
        assert run_target(config_for(proxy.url, tmp_path), text, tmp_path=tmp_path).returncode == 0
        restarted = make_sandbox(team_name="Sandbox team 9f8e", properties=PLAN, lists=lists)
        proxy.target = restarted.url
        run = run_target(config_for(proxy.url, tmp_path), text, tmp_path=tmp_path)
    finally:
        proxy.stop()
    assert run.returncode == 0, run.stderr
    assert restarted.store.find(user_id="u1") is not None
    assert "last seen with the team named 'Sandbox team 1a2b'" in run.stderr


def test_a_same_named_team_that_cannot_be_told_apart_stops_and_names_the_setting(
    make_sandbox: Any, tmp_path: Path
) -> None:
    """Two teams named Acme behind one URL, neither with a mailing list: the second run sends nothing and says
    how to go on; with ``ledger_namespace`` it sends everything."""
    first = make_sandbox(api_key="k-1", team_name="Acme", properties=PLAN)
    second = make_sandbox(api_key="k-2", team_name="Acme", properties=PLAN)
    proxy = _Forward(first.url)
    text = singer(*identifies({"id": "1", "user_id": "u1", "email": "a@example.com", "plan": "pro"}))
    config = {**config_for(proxy.url, tmp_path), "api_key": "k-1"}
    try:
        assert run_target(config, text, tmp_path=tmp_path).returncode == 0
        proxy.target = second.url
        stopped = run_target({**config, "api_key": "k-2"}, text, tmp_path=tmp_path)
        assert stopped.returncode == 1
        assert "ledger_namespace" in stopped.stderr and "Traceback" not in stopped.stderr
        assert writes(second) == []
        named = run_target({**config, "api_key": "k-2", "ledger_namespace": "acme-2"}, text, tmp_path=tmp_path)
        assert named.returncode == 0, named.stderr
        assert second.store.find(user_id="u1") is not None
    finally:
        proxy.stop()


class _Forward:
    """One base URL in front of a sandbox that can be switched: two teams behind one address, as a user with a
    proxy, or with one sandbox URL reused, has."""

    def __init__(self, target: str) -> None:
        import requests

        self.target = target
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                url = outer.target + self.path[len("/api") :]
                answer = requests.request(self.command, url, data=body, headers=headers, timeout=10)
                self.send_response(answer.status_code)
                for key in ("Content-Type", "x-ratelimit-limit", "x-ratelimit-remaining"):
                    if key in answer.headers:
                        self.send_header(key, answer.headers[key])
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            do_GET = do_PUT = do_POST = _forward

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/api"

    def stop(self) -> None:
        self.server.shutdown()


def test_two_event_tables_with_overlapping_ids_both_reach_loops(make_sandbox: Any, tmp_path: Path) -> None:
    loops = make_sandbox()
    messages: list[dict[str, Any]] = []
    for table, name in (("orders", "Order Completed"), ("refunds", "Order Refunded")):
        messages.append(schema(table, {**TRACK_COLUMNS}, ["id"]))
        messages += [record(table, {"id": str(n), "user_id": "u1", "email": "a@example.com", "event_text": name})
                     for n in (1, 2, 3)]  # fmt: skip
    rules = [{"stream": "orders", "action": "send_event"}, {"stream": "refunds", "action": "send_event"}]
    run = run_target(config_for(loops, tmp_path, mappings=rules), singer(*messages), tmp_path=tmp_path)
    assert run.returncode == 0, run.stderr
    assert sorted(e["eventName"] for e in loops.store.events()) == ["Order Completed"] * 3 + ["Order Refunded"] * 3


def test_a_delete_whose_user_id_loops_does_not_know_deletes_by_email(make_sandbox: Any, tmp_path: Path) -> None:
    loops = make_sandbox()
    created = run_target(
        config_for(loops, tmp_path),
        singer(*identifies({"id": "1", "email": "a@example.com"})),  # a contact with an email and no userId
        tmp_path=tmp_path,
    )
    assert created.returncode == 0, created.stderr
    deletes = singer(
        schema("gone", {"user_id": "string", "email": "string"}, []),
        record("gone", {"user_id": "u-unknown", "email": "a@example.com"}),
    )
    rules = [{"stream": "gone", "action": "delete_contact"}]
    run = run_target(config_for(loops, tmp_path, mappings=rules), deletes, tmp_path=tmp_path)
    assert run.returncode == 0, run.stderr
    assert loops.store.find(email="a@example.com") is None


# --- B. Per-contact truth


def test_the_last_change_wins_across_streams(make_sandbox: Any, tmp_path: Path) -> None:
    loops = make_sandbox(properties=PLAN)
    rules = [{"stream": "crm", "action": "upsert_contact"}, {"stream": "billing", "action": "upsert_contact"}]
    steps = [("crm", "pro", "10"), ("billing", "free", "11"), ("crm", "pro", "12")]
    for n, (stream, plan, hour) in enumerate(steps):
        row = {"id": str(n), "user_id": "u1", "email": "a@example.com", "plan": plan,
               "timestamp": f"2026-11-01T{hour}:00:00Z"}  # fmt: skip
        run = run_target(config_for(loops, tmp_path, mappings=rules), singer(*identifies(row, stream=stream)),
                         tmp_path=tmp_path)  # fmt: skip
        assert run.returncode == 0, run.stderr
    assert loops.store.find(user_id="u1")["plan"] == "pro"


def test_identify_delete_identify_leaves_the_last_identify(make_sandbox: Any, tmp_path: Path) -> None:
    loops = make_sandbox(properties=PLAN)
    rules = [{"stream": "gone", "action": "delete_contact"}]
    messages = [
        *identifies(
            {"id": "1", "user_id": "u1", "email": "a@example.com", "plan": "A", "timestamp": "2026-11-01T10:00:00Z"}
        ),
        schema("gone", {"user_id": "string", "timestamp": {"type": "string", "format": "date-time"}}, []),
        record("gone", {"user_id": "u1", "timestamp": "2026-11-01T11:00:00Z"}),
        record(
            "identifies",
            {"id": "3", "user_id": "u1", "email": "a@example.com", "plan": "B", "timestamp": "2026-11-01T12:00:00Z"},
        ),
    ]
    run = run_target(config_for(loops, tmp_path, mappings=rules), singer(*messages), tmp_path=tmp_path)
    assert run.returncode == 0, run.stderr
    contact = loops.store.find(user_id="u1")
    assert contact is not None and contact["plan"] == "B"


def test_a_row_from_the_year_2999_does_not_freeze_the_contact(make_sandbox: Any, tmp_path: Path) -> None:
    loops = make_sandbox(properties=PLAN)
    future = {"id": "1", "user_id": "u1", "email": "a@example.com", "plan": "old", "timestamp": "2999-01-01T00:00:00Z"}
    run = run_target(config_for(loops, tmp_path), singer(*identifies(future)), tmp_path=tmp_path)
    assert run.returncode == 0 and "in the future" in run.stderr
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    real = {"id": "2", "user_id": "u1", "email": "a@example.com", "plan": "new", "timestamp": now}
    assert run_target(config_for(loops, tmp_path), singer(*identifies(real)), tmp_path=tmp_path).returncode == 0
    assert loops.store.find(user_id="u1")["plan"] == "new"


def test_one_person_with_and_without_user_id_gets_the_newest_value(make_sandbox: Any, tmp_path: Path) -> None:
    loops = make_sandbox(properties=PLAN)
    rows = [
        {"id": "1", "email": "a@example.com", "plan": "new", "timestamp": "2026-11-01T12:00:00Z"},
        {"id": "2", "user_id": "u1", "email": "a@example.com", "plan": "old", "timestamp": "2026-11-01T10:00:00Z"},
    ]
    run = run_target(config_for(loops, tmp_path), singer(*identifies(*rows)), tmp_path=tmp_path)
    assert run.returncode == 0, run.stderr
    assert [c["plan"] for c in loops.store.contacts()] == ["new"]
    # And across runs, through the ledger: an older email-only row never takes the value back.
    older = {"id": "3", "email": "a@example.com", "plan": "older", "timestamp": "2026-11-01T09:00:00Z"}
    assert run_target(config_for(loops, tmp_path), singer(*identifies(older)), tmp_path=tmp_path).returncode == 0
    assert [c["plan"] for c in loops.store.contacts()] == ["new"]


def test_the_ledger_file_is_not_a_copy_of_the_customer_list(make_sandbox: Any, tmp_path: Path) -> None:
    loops = make_sandbox(properties=PLAN)
    text = singer(
        *identifies({"id": "1", "user_id": "user-4711", "email": "ada@example.com", "plan": "pro"}),
        schema("tracks", TRACK_COLUMNS, ["id"]),
        record("tracks", {"id": "msg-0815", "user_id": "user-4711", "event_text": "Signed Up"}),
    )
    assert run_target(config_for(loops, tmp_path), text, tmp_path=tmp_path).returncode == 0
    dump = "\n".join(sqlite3.connect(tmp_path / "ledger.sqlite").iterdump())
    for secret in ("user-4711", "ada@example.com", "msg-0815", SANDBOX_KEY):
        assert secret not in dump


def test_kill_minus_9_loses_at_most_a_second_of_accepted_events(make_sandbox: Any, tmp_path: Path) -> None:
    """Past Loops' 24 hours only the ledger stops a replayed event; after kill -9 it must know nearly all."""
    loops = make_sandbox(rate_limit=20)
    events = 120
    text = singer(
        schema("tracks", TRACK_COLUMNS, ["id"]),
        *(
            record(
                "tracks", {"id": f"e{n}", "user_id": f"u{n}", "email": f"u{n}@example.com", "event_text": "Logged In"}
            )
            for n in range(events)
        ),
    )
    config = config_for(loops, tmp_path, requests_per_second=20)
    proc = start_target(config, text, tmp_path=tmp_path)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(loops.store.events()) < events // 2:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    accepted = len(loops.store.events())
    assert accepted < events, "the kill came too late to test anything"
    loops.store.advance_clock(25 * 3600)  # Loops has forgotten every idempotency key
    rerun = run_target(config, text, tmp_path=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    per_key = [e["idempotencyKey"] for e in loops.store.events()]
    twice = len(per_key) - len(set(per_key))
    assert len(set(per_key)) == events
    assert twice <= 20 + 2, f"{twice} events sent twice: more than ~1 s at 20 requests/s"


# --- C. A contact's update rides on its event


def test_an_update_rides_on_its_event(make_sandbox: Any, tmp_path: Path) -> None:
    loops = make_sandbox(properties=PLAN)
    messages = [*identifies(*({"id": f"i{n}", "user_id": f"u{n}", "email": f"u{n}@example.com", "plan": "pro",
                               "timestamp": "2026-11-01T10:00:00Z"} for n in range(3)))]  # fmt: skip
    messages.append(schema("tracks", TRACK_COLUMNS, ["id"]))
    for n in range(3):
        for k in range(2):
            messages.append(record("tracks", {"id": f"t{n}-{k}", "user_id": f"u{n}", "event_text": "Viewed",
                                              "timestamp": f"2026-11-01T10:0{k + 1}:00Z"}))  # fmt: skip
    run = run_target(config_for(loops, tmp_path), singer(*messages), tmp_path=tmp_path)
    assert run.returncode == 0, run.stderr
    assert len(writes(loops)) == 6  # 3 events carrying the update + 3 plain events (9 without the fold)
    assert all(c["plan"] == "pro" for c in loops.store.contacts()) and len(loops.store.contacts()) == 3
    assert len(loops.store.events()) == 6


# --- D. The SDK methods we override are the ones we read


#: Private singer-sdk methods that target-loops overrides (no public hook does the job), with a hash of the SDK
#: source each override was written against. Why each one: the fast record path (profiling: the SDK's per-record
#: bookkeeping cost as much as the mapping); starting the run at the first SCHEMA (the key check before any record);
#: a checkpoint per STATE; the outbox flush between draining the sinks and writing STATE; no STATE in a dry run and
#: none repeated; a termination signal during a flush must not write STATE; rejecting a record that breaks its
#: SCHEMA instead of stopping the run; date-time keys found once per stream.
PINNED_SDK_METHODS = {
    "Target._validate_config": "0584b9e347e3",  # numbers_from_text first (meltano.yml has no decimal kind)
    "Target._process_record_message": "08aaf4096e2d",
    "Target._process_schema_message": "ed6e8449bc8f",
    "Target._process_state_message": "e27158e2b1e7",
    "Target._process_batch_message": "f26fbe519745",
    "Target._drain_all": "8160903b0918",
    "Target._write_state_message": "bf40aa5e36eb",
    "Target._handle_termination": "0d610b822293",
    "Target._process_activate_version_message": "377950028ca9",  # issue 19: to the sink, without its warnings
    "Sink._validate_and_parse": "970aadabcc4d",
    "Sink._parse_timestamps_in_record": "b99dc17613b2",
}


def test_every_private_sdk_override_still_matches_the_sdk_method_it_replaces() -> None:
    """A changed SDK method (singer-sdk 0.55 rewrote ``_handle_termination``) fails here, so its override is
    reviewed before an upgrade instead of misbehaving silently."""
    import inspect

    from singer_sdk.sinks.core import Sink
    from singer_sdk.target_base import Target

    from target_loops.sinks import LoopsSink
    from target_loops.target import TargetLoops

    owners = {"Target": (Target, TargetLoops), "Sink": (Sink, LoopsSink)}
    found = {}
    for qualified in PINNED_SDK_METHODS:
        owner_name, name = qualified.split(".")
        sdk, ours = owners[owner_name]
        assert name in vars(ours), f"{qualified} is pinned but no longer overridden: drop the pin"
        source = inspect.getsource(getattr(sdk, name))
        found[qualified] = hashlib.sha256(source.encode()).hexdigest()[:12]
    overridden = {
        f"{label}.{name}"
        for label, (sdk, ours) in owners.items()
        for name in vars(ours)
        if name.startswith("_") and not name.startswith(("__", "_abc")) and hasattr(sdk, name)
    }
    assert overridden <= set(PINNED_SDK_METHODS), f"unpinned private overrides: {overridden - set(found)}"
    assert found == PINNED_SDK_METHODS, "the SDK changed these methods; review the overrides:\n" + json.dumps(found)


def test_the_fast_record_path_and_the_sdks_own_path_send_the_same_requests(make_sandbox: Any, tmp_path: Path) -> None:
    from target_loops.target import TargetLoops

    text = singer(
        *identifies(
            *(
                {
                    "id": str(n),
                    "user_id": f"u{n}",
                    "email": f"u{n}@example.com",
                    "plan": "pro",
                    "timestamp": f"2026-11-01T10:0{n}:00Z",
                }
                for n in range(5)
            )
        ),
        schema("tracks", TRACK_COLUMNS, ["id"]),
        *(record("tracks", {"id": f"t{n}", "user_id": f"u{n}", "event_text": "Viewed"}) for n in range(5)),
        state({"pos": 1}),
    )
    sent = []
    for fast in (True, False):
        loops = make_sandbox(properties=PLAN)
        folder = tmp_path / str(fast)
        folder.mkdir()
        cls = type("T", (TargetLoops,), {"fast_record_path": fast})
        target = cls(config={**config_for(loops, folder), "rejects_path": str(folder / "r.jsonl")})
        target.listen(io.StringIO(text))
        sent.append(sorted(json.dumps([r["method"], r["path"], r["body"]], sort_keys=True) for r in writes(loops)))
    assert sent[0] == sent[1] and len(sent[0]) == 5
