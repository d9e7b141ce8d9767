"""Exactly-once effects across runs: the ledger, unchanged-row skipping, checkpoints, crashes and replays.

Every count of what reached Loops is taken from the sandbox's own log, never from the target's word.
"""

from __future__ import annotations

import datetime as dt
import json
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from runner import SANDBOX_KEY, parse_states, record, run_target, schema, singer, start_target, state

from target_loops.ledger import (
    ContactRow,
    Ledger,
    LedgerWriter,
    TeamIdentityError,
    fingerprint,
    keyed_hash,
    value_hashes,
)
from target_loops.sandbox import Sandbox
from target_loops.serialization import stable_hash

PLAN = [{"key": "plan", "type": "string"}]
USERS = 12


def messages(users: int = USERS, *, plan_of: dict[int, str] | None = None, email_of: dict[int, str] | None = None):
    """Identifies then one event per user, a STATE (with its position) after every 4 records."""
    plan_of, email_of = plan_of or {}, email_of or {}
    out: list[dict[str, Any]] = [
        schema("identifies", {"id": "string", "user_id": "string", "email": "string", "plan": "string"}, ["id"]),
        schema("tracks", {"id": "string", "user_id": "string", "event_text": "string", "timestamp": "string"}, ["id"]),
    ]
    rows: list[dict[str, Any]] = []
    for i in range(users):
        email = email_of.get(i, f"u{i}@example.com")
        rows.append(
            record("identifies", {"id": f"i{i}", "user_id": f"u{i}", "email": email, "plan": plan_of.get(i, "free")})
        )
    for i in range(users):
        rows.append(record("tracks", {"id": f"t{i}", "user_id": f"u{i}", "event_text": "Logged In"}))
    for n, row in enumerate(rows, start=1):
        out.append(row)
        if n % 4 == 0:
            out.append(state({"bookmarks": {"position": len(out)}}))
    return out


def config_for(sandbox: Sandbox, tmp_path: Path, **extra: Any) -> dict[str, Any]:
    return {
        "api_key": SANDBOX_KEY,
        "base_url": sandbox.url,
        "ledger_url": f"sqlite:///{tmp_path / 'ledger.sqlite'}",
        **extra,
    }


def writes_since(sandbox: Sandbox, start: int) -> list[tuple[str, str]]:
    return [(r["method"], r["path"]) for r in sandbox.store.requests()[start:] if r["method"] != "GET"]


def assert_final(sandbox: Sandbox, users: int = USERS, plan_of: dict[int, str] | None = None) -> None:
    plan_of = plan_of or {}
    contacts = {c["userId"]: c for c in sandbox.store.contacts()}
    assert sorted(contacts) == sorted(f"u{i}" for i in range(users))
    assert all(contacts[f"u{i}"]["plan"] == plan_of.get(i, "free") for i in range(users))
    accepted = [
        r["idempotencyKey"]
        for r in sandbox.store.requests()
        if r["path"] == "/api/v1/events/send" and r["status"] == 200
    ]
    expected = ["tl-" + stable_hash("event", "Logged In", f"t{i}")[:64] for i in range(users)]
    assert sorted(accepted) == sorted(expected), "every event accepted exactly once"


@pytest.fixture
def loops(make_sandbox: Any) -> Sandbox:
    return make_sandbox(properties=PLAN)


def test_second_run_of_the_same_input_sends_nothing(loops: Sandbox, tmp_path: Path) -> None:
    text = singer(*messages())
    first = run_target(config_for(loops, tmp_path), text, tmp_path=tmp_path)
    assert first.returncode == 0, first.stderr
    mark = len(loops.store.requests())
    second = run_target(config_for(loops, tmp_path), text, tmp_path=tmp_path)
    assert second.returncode == 0, second.stderr
    assert writes_since(loops, mark) == []
    reads = [r["path"] for r in loops.store.requests()[mark:]]
    # The preflight only: the team's schema, and the definition of the one event name (read once per run).
    assert reads == [
        "/api/v1/api-key",
        "/api/v1/contacts/properties",
        "/api/v1/lists",
        "/api/v1/event-patterns/by-name/Logged In",
    ]
    identifies, tracks = second.stream("identifies"), second.stream("tracks")
    assert (identifies["read"], identifies["requests"], identifies["sent"], identifies["unchanged"]) == (
        USERS,
        0,
        0,
        USERS,
    )
    assert tracks["duplicates"] == USERS and tracks["requests"] == 0
    assert second.final_state == first.final_state
    assert_final(loops)


def test_one_changed_trait_is_one_request(loops: Sandbox, tmp_path: Path) -> None:
    assert run_target(config_for(loops, tmp_path), singer(*messages()), tmp_path=tmp_path).returncode == 0
    mark = len(loops.store.requests())
    run = run_target(config_for(loops, tmp_path), singer(*messages(plan_of={5: "pro"})), tmp_path=tmp_path)
    assert run.returncode == 0, run.stderr
    assert writes_since(loops, mark) == [("PUT", "/api/v1/contacts/update")]
    assert loops.store.requests()[-1]["body"] == {"email": "u5@example.com", "userId": "u5", "plan": "pro"}
    assert_final(loops, plan_of={5: "pro"})


def test_a_known_user_with_a_new_email_is_sent(loops: Sandbox, tmp_path: Path) -> None:
    assert run_target(config_for(loops, tmp_path), singer(*messages()), tmp_path=tmp_path).returncode == 0
    mark = len(loops.store.requests())
    run = run_target(
        config_for(loops, tmp_path), singer(*messages(email_of={3: "new3@example.com"})), tmp_path=tmp_path
    )
    assert run.returncode == 0, run.stderr
    assert writes_since(loops, mark) == [("PUT", "/api/v1/contacts/update")]
    assert loops.store.find(user_id="u3")["email"] == "new3@example.com"


def test_full_resync_resends_contacts_but_never_events(loops: Sandbox, tmp_path: Path) -> None:
    text = singer(*messages())
    assert run_target(config_for(loops, tmp_path), text, tmp_path=tmp_path).returncode == 0
    mark = len(loops.store.requests())
    run = run_target(config_for(loops, tmp_path, full_resync=True), text, tmp_path=tmp_path)
    assert run.returncode == 0, run.stderr
    assert writes_since(loops, mark) == [("PUT", "/api/v1/contacts/update")] * USERS
    # And it recorded fingerprints: a normal run afterwards sends nothing.
    mark = len(loops.store.requests())
    assert run_target(config_for(loops, tmp_path), text, tmp_path=tmp_path).returncode == 0
    assert writes_since(loops, mark) == []


def test_event_replayed_after_25_hours_is_not_sent(loops: Sandbox, tmp_path: Path) -> None:
    """Loops forgets idempotency keys after 24 h; the ledger does not."""
    text = singer(*messages())
    assert run_target(config_for(loops, tmp_path), text, tmp_path=tmp_path).returncode == 0
    loops.store.advance_clock(25 * 3600)
    mark = len(loops.store.requests())
    run = run_target(config_for(loops, tmp_path), text, tmp_path=tmp_path)
    assert run.returncode == 0, run.stderr
    assert writes_since(loops, mark) == []
    assert len(loops.store.events()) == USERS
    # Without the ledger, the same replay would have fired every workflow a second time.
    other = tmp_path / "other"
    other.mkdir()
    run = run_target(config_for(loops, other), text, tmp_path=other)
    assert len(loops.store.events()) == 2 * USERS


def test_stale_events_are_rejected_not_sent(loops: Sandbox, tmp_path: Path) -> None:
    now = dt.datetime.now(dt.timezone.utc)
    old, fresh = (now - dt.timedelta(hours=30)).isoformat(), (now - dt.timedelta(hours=1)).isoformat()
    text = singer(
        schema("tracks", {"id": "string", "email": "string", "event_text": "string", "timestamp": "string"}, ["id"]),
        record("tracks", {"id": "old", "email": "a@example.com", "event_text": "Trial Ended", "timestamp": old}),
        record("tracks", {"id": "new", "email": "a@example.com", "event_text": "Trial Ended", "timestamp": fresh}),
        record("tracks", {"id": "undated", "email": "a@example.com", "event_text": "Trial Ended"}),
    )
    run = run_target(config_for(loops, tmp_path, max_event_age_hours=24), text, tmp_path=tmp_path)
    assert run.returncode == 0, run.stderr
    keys = {"tl-" + stable_hash("event", "Trial Ended", i)[:64]: i for i in ("old", "new", "undated")}
    assert sorted(keys[e["idempotencyKey"]] for e in loops.store.events()) == ["new", "undated"]
    assert [(r["reason"], r["record"]["id"]) for r in run.rejects] == [("stale", "old")]
    assert "max_event_age_hours" in run.rejects[0]["message"]


@pytest.mark.parametrize(
    ("allow", "value", "sent"),
    [(False, True, None), (False, False, False), (True, True, True)],
    ids=["true-blocked", "false-passes", "true-allowed"],
)
def test_subscribed_true_needs_allow_resubscribe(
    loops: Sandbox, tmp_path: Path, allow: bool, value: bool, sent: bool | None
) -> None:
    rule = {"stream": "people", "action": "upsert_contact", "subscribed": "opted_in", "allow_resubscribe": allow}
    text = singer(
        schema("people", {"email": "string", "opted_in": {"type": ["boolean", "null"]}}, ["email"]),
        record("people", {"email": "a@example.com", "opted_in": value}),
    )
    run = run_target(config_for(loops, tmp_path, mappings=[rule]), text, tmp_path=tmp_path)
    assert run.returncode == 0, run.stderr
    body = next(r["body"] for r in loops.store.requests() if r["method"] == "PUT")
    assert body.get("subscribed") == sent
    assert run.report["streams"][0]["resubscribe_blocked"] == (1 if sent is None else 0)


def test_delete_contact_prefers_user_id_counts_404_as_done_and_forgets(loops: Sandbox, tmp_path: Path) -> None:
    text = singer(*messages(3))
    assert run_target(config_for(loops, tmp_path), text, tmp_path=tmp_path).returncode == 0
    deletes = singer(
        schema("deleted_users", {"user_id": "string", "email": "string"}, ["user_id"]),
        record("deleted_users", {"user_id": "u1", "email": "u1@example.com"}),
        record("deleted_users", {"user_id": "ghost", "email": "ghost@example.com"}),
    )
    rules = [{"stream": "deleted_users", "action": "delete_contact"}]
    run = run_target(config_for(loops, tmp_path, mappings=rules), deletes, tmp_path=tmp_path)
    assert run.returncode == 0, run.stderr
    sent = [r for r in loops.store.requests() if r["path"] == "/api/v1/contacts/delete"]
    # A userId Loops does not know is looked up by email before the delete counts as done: nobody has that email,
    # so nothing is deleted by email (only a contact without a userId, or with this one, would be).
    assert sorted((json.dumps(r["body"]), r["status"]) for r in sent) == [
        ('{"userId": "ghost"}', 404),
        ('{"userId": "u1"}', 200),
    ]
    finds = [r for r in loops.store.requests() if r["path"] == "/api/v1/contacts/find"]
    assert [(r["query"], r["status"]) for r in finds] == [({"email": "ghost@example.com"}, 200)]
    assert run.rejects == []
    assert loops.store.find(user_id="u1") is None
    # The ledger forgot u1: the same identify is sent again, the others stay unchanged.
    mark = len(loops.store.requests())
    assert run_target(config_for(loops, tmp_path), text, tmp_path=tmp_path).returncode == 0
    assert [r["body"].get("userId") for r in loops.store.requests()[mark:] if r["method"] == "PUT"] == ["u1"]


def test_checkpoints_follow_the_input(loops: Sandbox, tmp_path: Path) -> None:
    """With checkpoint_seconds 0 every STATE is emitted, each after the records before it were sent."""
    run = run_target(config_for(loops, tmp_path, checkpoint_seconds=0), singer(*messages()), tmp_path=tmp_path)
    assert run.returncode == 0, run.stderr
    expected = [m["value"] for m in messages() if m["type"] == "STATE"]
    assert run.states == expected


def _resume_input(all_messages: list[dict[str, Any]], last_state: dict[str, Any] | None) -> str:
    """What a tap resumed from ``last_state`` would send: the schemas, then everything after that position."""
    position = last_state["bookmarks"]["position"] if last_state else 0
    schemas = [m for m in all_messages if m["type"] == "SCHEMA"]
    rest = [m for m in all_messages[position:] if m["type"] != "SCHEMA"]
    return singer(*schemas, *rest)


@pytest.mark.parametrize("kill_after_writes", [2, 9, 17, 23])
def test_kill_minus_9_then_resume_loses_nothing_and_sends_no_event_twice(
    make_sandbox: Any, tmp_path: Path, kill_after_writes: int
) -> None:
    loops = make_sandbox(properties=PLAN, latency_ms=20)
    all_messages = messages()
    config = config_for(loops, tmp_path, checkpoint_seconds=0, batch_size_rows=4, requests_per_second=50)
    proc = start_target(config, singer(*all_messages), tmp_path=tmp_path)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if sum(1 for r in loops.store.requests() if r["method"] != "GET") >= kill_after_writes:
            break
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    stdout, _ = proc.communicate(timeout=30)
    states = parse_states(stdout)
    writes = [r for r in loops.store.requests() if r["method"] != "GET"]
    assert len(writes) < 2 * USERS, "the kill came too late to test anything"

    rerun = run_target(config, _resume_input(all_messages, states[-1] if states else None), tmp_path=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    assert_final(loops)


def test_ledger_unit(tmp_path: Path) -> None:
    ledger = Ledger(f"sqlite:///{tmp_path / 'sub' / 'l.sqlite'}")
    team = ledger.resolve_team(base_url="https://app.loops.so/api", team_name="Acme", api_key="sk_1", list_ids=["L1"])
    assert "sk_1" not in team
    hashes = value_hashes({"b": 1, "a": "x", "mailingLists": {"L1": True}})
    assert set(hashes) == {"a", "b", "mailingLists.L1"}
    assert hashes["b"] == value_hashes({"b": 1})["b"] != value_hashes({"b": 2})["b"]
    assert "x" not in json.dumps(hashes)  # hashes, never the values themselves
    body = {"b": 1, "a": "x"}
    assert fingerprint(body) == fingerprint({"a": "x", "b": 1}) != fingerprint({"a": "x", "b": 2})
    who, mail = keyed_hash(team, "u:1"), keyed_hash(team, "a@example.com")
    assert who != keyed_hash("other-team", "u:1")  # keyed: the same person hashes differently per team
    ledger.record_contacts(team, [ContactRow(who, mail, hashes, "2026-01-01T00:00:00+00:00", fingerprint(body))])
    (identity, state), *rest = ledger.contact_states(team, [who, keyed_hash(team, "u:9")]).items()
    assert (identity, rest) == (who, [])
    assert (state.hashes, state.seen_at, state.fingerprint) == (hashes, "2026-01-01T00:00:00+00:00", fingerprint(body))
    assert ledger.contact_states("other-team", [who]) == {}
    assert ledger.identities_by_email(team, [mail]) == {mail: {who}}
    k1, k2, k3 = (keyed_hash(team, k) for k in ("k1", "k2", "k3"))
    ledger.record_events(team, [k1, k2, k1])
    assert ledger.delivered_events(team, [k1, k3]) == {k1}
    ledger.forget_contacts(team, [], [mail])
    assert ledger.contact_states(team, [who]) == {}
    many = [ContactRow(f"{i:032x}", None, {"p": f"{i:016x}"}, None, "f" * 32) for i in range(1200)]
    ledger.record_contacts(team, many)
    states = ledger.contact_states(team, [row.identity for row in many])
    expected = {r.identity: (r.state, r.fingerprint) for r in many}
    assert {i: (s.hashes, s.fingerprint) for i, s in states.items()} == expected
    assert ledger.size()["contacts"] == 1200
    ledger.close()
    missing = tmp_path / "none.sqlite"
    read_only = Ledger(f"sqlite:///{missing}", read_only=True)
    assert not read_only.available and not missing.exists()
    assert read_only.contact_states(team, [who]) == {}


def test_ledger_writer_lands_writes_within_its_interval_and_sync_does_not_wait_it_out(tmp_path: Path) -> None:
    """The write-behind bounds what kill -9 can lose (a write lands within the interval without anyone asking), and
    a checkpoint's sync() writes at once: a flush must not idle out the interval before its STATE."""
    ledger = Ledger(f"sqlite:///{tmp_path / 'l.sqlite'}")
    team = ledger.resolve_team(base_url="https://app.loops.so/api", team_name="Acme", api_key="sk_1", list_ids=[])
    e1, e2, e3 = (keyed_hash(team, k) for k in ("e1", "e2", "e3"))
    writer = LedgerWriter(ledger, team, interval=0.2)
    writer.events([e1])
    deadline = time.monotonic() + 5
    while not ledger.delivered_events(team, [e1]) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert ledger.delivered_events(team, [e1]) == {e1}, "a write did not land within the write-behind interval"
    writer.close()

    slow = LedgerWriter(ledger, team, interval=30)
    slow.events([e2])
    started = time.monotonic()
    slow.sync()
    assert time.monotonic() - started < 10, "sync() waited out the write-behind interval instead of writing now"
    assert ledger.delivered_events(team, [e2]) == {e2}
    slow.events([e3])
    started = time.monotonic()
    slow.close()
    assert time.monotonic() - started < 10
    assert ledger.delivered_events(team, [e3]) == {e3}
    ledger.close()


def test_team_identity_keys_lists_and_rotation(tmp_path: Path) -> None:
    """Two teams never share a namespace; a rotated key of the same team keeps it; an unverifiable key stops."""
    ledger = Ledger(f"sqlite:///{tmp_path / 'l.sqlite'}")
    url = "https://app.loops.so/api"
    staging = ledger.resolve_team(base_url=url, team_name="Acme", api_key="k-staging", list_ids=["cmStaging1"])
    production = ledger.resolve_team(base_url=url, team_name="Acme", api_key="k-prod", list_ids=["cmProd1"])
    assert staging != production
    rotated = ledger.resolve_team(base_url=url, team_name="Acme", api_key="k-prod-2", list_ids=["cmProd1", "cmNew"])
    assert rotated == production
    assert ledger.resolve_team(base_url=url, team_name="Acme", api_key="k-staging", list_ids=[]) == staging
    with pytest.raises(TeamIdentityError, match="ledger_namespace"):
        ledger.resolve_team(base_url=url, team_name="Acme", api_key="k-unknown", list_ids=[])
    explicit = ledger.resolve_team(base_url=url, team_name="Acme", api_key="k-unknown", list_ids=[], explicit="prod")
    assert explicit == "prod"
    assert ledger.resolve_team(base_url=url, team_name="Acme", api_key="k-unknown", list_ids=[]) == "prod"
    dump = json.dumps([dict(r) for r in ledger._team_rows(url)])
    assert "k-prod" not in dump and "cmProd1" not in dump


def test_a_ledger_of_schema_1_is_upgraded_without_resending_events(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as conn:
        conn.executescript(
            """
            CREATE TABLE target_loops_teams (team VARCHAR(64) PRIMARY KEY, base_url VARCHAR(500) NOT NULL,
                team_name VARCHAR(500), last_seen FLOAT NOT NULL);
            CREATE TABLE target_loops_contacts (team VARCHAR(64), stream VARCHAR(255), identity VARCHAR(600),
                email VARCHAR(500), state TEXT, fingerprint VARCHAR(32), seen_at VARCHAR(40), delivered_at FLOAT,
                PRIMARY KEY (team, stream, identity));
            CREATE TABLE target_loops_events (team VARCHAR(64), idempotency_key VARCHAR(100), delivered_at FLOAT,
                PRIMARY KEY (team, idempotency_key));
            INSERT INTO target_loops_teams VALUES ('oldteam', 'https://app.loops.so/api', 'Acme', 0);
            INSERT INTO target_loops_contacts VALUES ('oldteam', 's', 'u:1', 'a@example.com', '{}', 'f', NULL, 0);
            INSERT INTO target_loops_events VALUES ('oldteam', 'ajs-1', 0);
            """
        )
    ledger = Ledger(f"sqlite:///{path}")
    team = ledger.resolve_team(base_url="https://app.loops.so/api", team_name="Acme", api_key="k", list_ids=[])
    assert team == "oldteam"  # the one team of the old ledger is adopted once
    assert ledger.delivered_events(team, [keyed_hash(team, "ajs-1")]) == {keyed_hash(team, "ajs-1")}
    ledger.close()
    dump = "\n".join(sqlite3.connect(path).iterdump())
    assert "a@example.com" not in dump and "ajs-1" not in dump and "schema_version" in dump


def test_a_row_repeating_part_of_a_delivered_merge_is_not_resent(loops: Sandbox, tmp_path: Path) -> None:
    """Three identifies of one user are merged and sent once; an incremental tap reads the last one again."""
    loops.configure(properties=[*PLAN, {"key": "isAdmin", "type": "boolean"}])
    columns = {"id": "string", "user_id": "string", "email": "string", "plan": "string", "is_admin": "boolean",
               "timestamp": {"type": ["string", "null"], "format": "date-time"}}  # fmt: skip
    rows = [
        {"id": "1", "user_id": "u1", "email": "old@example.com", "plan": "free", "timestamp": "2026-01-01T09:00:00Z"},
        {"id": "2", "user_id": "u1", "email": "new@example.com", "plan": "pro", "timestamp": "2026-01-01T10:00:00Z"},
        {"id": "3", "user_id": "u1", "email": "new@example.com", "is_admin": True, "timestamp": "2026-01-01T11:00:00Z"},
    ]
    first = singer(schema("identifies", columns, ["id"]), *(record("identifies", r) for r in rows))
    assert run_target(config_for(loops, tmp_path), first, tmp_path=tmp_path).returncode == 0
    mark = len(loops.store.requests())
    again = singer(schema("identifies", columns, ["id"]), record("identifies", rows[2]))
    run = run_target(config_for(loops, tmp_path), again, tmp_path=tmp_path)
    assert run.returncode == 0, run.stderr
    assert writes_since(loops, mark) == []
    assert run.stream("identifies")["unchanged"] == 1


def test_an_older_replay_adds_what_is_missing_but_never_takes_a_value_back(loops: Sandbox, tmp_path: Path) -> None:
    loops.configure(properties=[*PLAN, {"key": "favoriteColor", "type": "string"}])
    columns = {"id": "string", "user_id": "string", "email": "string", "plan": "string", "favorite_color": "string",
               "timestamp": {"type": ["string", "null"], "format": "date-time"}}  # fmt: skip
    newer = {"id": "2", "user_id": "u1", "email": "a@example.com", "plan": "team", "timestamp": "2026-01-01T10:00:00Z"}
    older = {"id": "1", "user_id": "u1", "email": "a@example.com", "plan": "free", "favorite_color": "green",
             "timestamp": "2026-01-01T08:00:00Z"}  # fmt: skip

    def one(row: dict[str, Any]) -> str:
        return singer(schema("identifies", columns, ["id"]), record("identifies", row))

    assert run_target(config_for(loops, tmp_path), one(newer), tmp_path=tmp_path).returncode == 0
    mark = len(loops.store.requests())
    run = run_target(config_for(loops, tmp_path), one(older), tmp_path=tmp_path)
    assert run.returncode == 0, run.stderr
    (sent,) = [r["body"] for r in loops.store.requests()[mark:] if r["method"] == "PUT"]
    assert sent == {"email": "a@example.com", "userId": "u1", "favoriteColor": "green"}
    contact = loops.store.find(user_id="u1")
    assert (contact["plan"], contact["favoriteColor"]) == ("team", "green")


def test_an_event_a_0_1_ledger_delivered_is_not_sent_again_after_the_upgrade(loops: Sandbox, tmp_path: Path) -> None:
    """0.1 keyed events by their bare id; the derivation changed (event name + id). The upgraded ledger still knows
    them, so a replay after the upgrade sends nothing, inside Loops' 24 hours or past them."""
    path = tmp_path / "ledger.sqlite"
    first = run_target(config_for(loops, tmp_path), singer(*messages(2)), tmp_path=tmp_path)
    assert first.returncode == 0, first.stderr
    # Rewrite the ledger as 0.1 left it: the teams table, the events by their bare ids.
    with sqlite3.connect(path) as conn:
        (team,) = conn.execute("SELECT team FROM target_loops_teams").fetchone()
        conn.executescript(
            """
            DROP TABLE target_loops_meta; DROP TABLE target_loops_events_v3; DROP TABLE target_loops_contacts_v3;
            DROP TABLE target_loops_namespaces; DROP TABLE target_loops_properties;
            CREATE TABLE target_loops_events (team VARCHAR(64), idempotency_key VARCHAR(100), delivered_at FLOAT,
                PRIMARY KEY (team, idempotency_key));
            """
        )
        conn.executemany("INSERT INTO target_loops_events VALUES (?, ?, 0)", [(team, "t0"), (team, "t1")])
    loops.store.advance_clock(25 * 3600)  # past Loops' memory of the keys: only the ledger can stop a replay
    mark = len(loops.store.requests())
    rerun = run_target(config_for(loops, tmp_path), singer(*messages(2)), tmp_path=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    assert [r for r in loops.store.requests()[mark:] if r["path"] == "/api/v1/events/send"] == []


def test_the_default_ledger_does_not_depend_on_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from target_loops.ledger import default_ledger_path

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MELTANO_PROJECT_ROOT", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    path, why = default_ledger_path()
    assert path == tmp_path / "data" / "target-loops" / "ledger.sqlite" and "data folder" in why
    monkeypatch.chdir(tmp_path / "..")
    assert default_ledger_path()[0] == path  # another shell, another folder: the same ledger
    monkeypatch.setenv("MELTANO_PROJECT_ROOT", str(tmp_path / "project"))
    assert default_ledger_path()[0] == tmp_path / "project" / ".meltano" / "target-loops" / "ledger.sqlite"
    # A 0.1 ledger in the working directory is kept (an upgrade never starts from an empty ledger).
    legacy = tmp_path / "old" / ".target-loops" / "ledger.sqlite"
    legacy.parent.mkdir(parents=True)
    legacy.write_bytes(b"")
    monkeypatch.chdir(tmp_path / "old")
    assert default_ledger_path()[0] == legacy
