"""Upgrades that must lose nothing and email nobody twice: a 0.1 ledger read by 0.2, a 0.2 ledger (schema 2) read by
this version (schema 3), and ``ledger_namespace`` added to a ledger that has been in use.

What reached Loops is counted from the sandbox's own log. A sandbox that has never seen a key stands for Loops 24
hours later (it has forgotten every idempotency key): any ``events/send`` it logs is an event sent again.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from runner import record, run_target, sandbox_config, schema, singer

from target_loops.ledger import Ledger, keyed_hash
from target_loops.sandbox import Sandbox

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "ledger_0_1"
EVENTS = "/api/v1/events/send"
URL = "https://app.loops.so/api"


def sent_events(sandbox: Sandbox, since: int = 0) -> list[dict[str, Any]]:
    return [r for r in sandbox.store.requests()[since:] if r["path"] == EVENTS]


def writes(sandbox: Sandbox, since: int = 0) -> list[tuple[str, str]]:
    return [(r["method"], r["path"]) for r in sandbox.store.requests()[since:] if r["method"] != "GET"]


# --- 0.1 → 0.2


def load_0_1_ledger(path: Path, base_url: str) -> None:
    """The ledger target-loops 0.1.0 itself left after delivering ``input.singer`` (see make.py there)."""
    with sqlite3.connect(path) as conn:
        conn.executescript((FIXTURE / "ledger.sql").read_text(encoding="utf-8"))
        # The 0.1 run's sandbox listened on another port; a user upgrades against the same Loops as before.
        conn.execute("UPDATE target_loops_teams SET base_url = ?", (base_url,))
    conn.close()


def test_every_event_a_real_0_1_ledger_delivered_stays_delivered(make_sandbox: Any, tmp_path: Path) -> None:
    """Ids with accents, numbers with a fraction (``1234.00``), exponents, big integers, a boolean, an object, mapped
    keys and default ids, dates: 0.2 sends none of the events 0.1 recorded, past Loops' 24 hours."""
    loops = make_sandbox(team_name="Fixture team")
    load_0_1_ledger(tmp_path / "ledger.sqlite", loops.url)
    config = sandbox_config(loops, tmp_path, mappings=json.loads((FIXTURE / "mappings.json").read_text()))
    run = run_target(config, input_path=FIXTURE / "input.singer", tmp_path=tmp_path)
    assert run.returncode == 0, run.stderr
    again = [(r["body"].get("email") or r["body"].get("userId"), r["idempotencyKey"]) for r in sent_events(loops)]
    assert again == [], f"{len(again)} events 0.1 delivered were sent again: {again}"
    # Not vacuous: every record was read and none was refused, so each one was found in the upgraded ledger.
    lines = (FIXTURE / "input.singer").read_text(encoding="utf-8").splitlines()
    records = sum(1 for line in lines if '"type": "RECORD"' in line)
    assert sum(s["read"] for s in run.report["streams"]) == records == 72
    assert sum(s["duplicates"] for s in run.report["streams"]) == records
    assert run.rejects == []


# --- 0.2 (schema 2) → schema 3

FIXTURE_0_2 = Path(__file__).resolve().parent / "fixtures" / "ledger_0_2"
SAMPLES = Path(__file__).resolve().parents[1] / "sample_streams"


def load_0_2_ledger(path: Path, base_url: str) -> dict[str, Any]:
    """The ledger 0.2 itself left after delivering the sample streams (see make.py there), and what it holds."""
    with sqlite3.connect(path) as conn:
        conn.executescript((FIXTURE_0_2 / "ledger.sql").read_text(encoding="utf-8"))
        conn.execute("UPDATE target_loops_teams SET base_url = ?", (base_url,))
        held = {
            "contacts": {
                identity: (email, json.loads(state), seen_at, print_)
                for identity, email, state, print_, seen_at in conn.execute(
                    "SELECT identity, email, state, fingerprint, seen_at FROM target_loops_contacts_v2"
                )
            },
            "events": {key for (key,) in conn.execute("SELECT key FROM target_loops_events_v2")},
            "team": conn.execute("SELECT DISTINCT team FROM target_loops_contacts_v2").fetchone()[0],
        }
    conn.close()
    return held


def sample_sandbox(make_sandbox: Any) -> Any:
    team = json.loads((SAMPLES / "sandbox_team.json").read_text())
    return make_sandbox(team_name="Fixture team", properties=team["properties"], lists=team["lists"])


def test_a_0_2_ledger_is_upgraded_in_place_keeping_every_contact_and_event(make_sandbox: Any, tmp_path: Path) -> None:
    """Schema 3 stores the same hashes in fewer bytes: the upgrade rewrites every row, and every contact's state,
    time and fingerprint and every delivered event key read back exactly as 0.2 wrote them."""
    path = tmp_path / "ledger.sqlite"
    held = load_0_2_ledger(path, URL)
    assert len(held["contacts"]) >= 8 and len(held["events"]) >= 5  # not vacuous
    ledger = Ledger(f"sqlite:///{path}")
    team = held["team"]
    states = ledger.contact_states(team, list(held["contacts"]))
    assert {i: (s.hashes, s.seen_at, s.fingerprint) for i, s in states.items()} == {
        i: (state, seen_at, print_) for i, (_, state, seen_at, print_) in held["contacts"].items()
    }
    emails = {email for email, *_ in held["contacts"].values() if email}
    linked = ledger.identities_by_email(team, list(emails))
    assert {e: ids for e, ids in linked.items()} == {
        e: {i for i, (mail, *_) in held["contacts"].items() if mail == e} for e in emails
    }
    assert ledger.delivered_events(team, list(held["events"])) == held["events"]
    ledger.close()
    with sqlite3.connect(path) as conn:
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        version = conn.execute("SELECT value FROM target_loops_meta WHERE key = 'schema_version'").fetchone()[0]
    conn.close()
    assert not tables & {"target_loops_contacts_v2", "target_loops_events_v2"} and version == "3"


def test_after_the_upgrade_the_sample_streams_send_nothing_again(make_sandbox: Any, tmp_path: Path) -> None:
    """A sandbox that never saw the 0.2 run stands for Loops a day later: a dry run on the 0.2 ledger as it is (not
    yet upgraded) plans nothing, and the first real run upgrades it and sends nothing either."""
    loops = sample_sandbox(make_sandbox)
    load_0_2_ledger(tmp_path / "ledger.sqlite", loops.url)
    rules = json.loads((SAMPLES / "rules.json").read_text())
    before = "\n".join(sqlite3.connect(tmp_path / "ledger.sqlite").iterdump())
    plan = tmp_path / "plan.jsonl"
    dry = run_target(
        sandbox_config(loops, tmp_path, dry_run=True, dry_run_path=str(plan), **rules),
        input_path=FIXTURE_0_2 / "input.singer",
        tmp_path=tmp_path,
    )
    assert dry.returncode == 0, dry.stderr
    # Only what Loops refused to 0.2 (a colon in an event name, people by userId alone it did not have) is planned.
    refused = json.loads((FIXTURE_0_2 / "refused.json").read_text())
    planned = [json.loads(line) for line in plan.read_text().splitlines()]
    # Some of those are refused locally now (a ":" in an event name is never sent); some were tried twice by 0.2.
    again = {json.dumps({"path": p["path"], "body": p["body"]}, sort_keys=True) for p in planned}
    assert again <= {json.dumps(r, sort_keys=True) for r in refused}, "planned again what 0.2 delivered"
    assert planned, "not vacuous: the records 0.2 could not deliver are planned again"
    assert "\n".join(sqlite3.connect(tmp_path / "ledger.sqlite").iterdump()) == before, "the dry run wrote"
    run = run_target(
        sandbox_config(loops, tmp_path, **rules), input_path=FIXTURE_0_2 / "input.singer", tmp_path=tmp_path
    )
    assert run.returncode == 0, run.stderr
    sent = [{"path": r["path"].removeprefix("/api"), "body": r["body"]} for r in loops.store.requests()]
    again = [r for r in sent if r["body"] is not None and r not in refused]  # reads (GET) carry no body
    assert again == [], "the upgraded ledger sent again what 0.2 delivered"
    assert sum(s["read"] for s in run.report["streams"]) > 20


# --- ledger_namespace added to a ledger in use

PLAN = [{"key": "plan", "type": "string"}]
USERS = 5


def people() -> str:
    """Five people and one event each (by email: a re-sent event would be accepted, not refused)."""
    columns = {"id": "string", "user_id": "string", "email": "string", "plan": "string"}
    return singer(
        schema("identifies", columns, ["id"]),
        *(record("identifies", {"id": f"i{i}", "user_id": f"u{i}", "email": f"u{i}@example.com", "plan": "pro"})
          for i in range(USERS)),
        schema("tracks", {"id": "string", "email": "string", "event_text": "string"}, ["id"]),
        *(record("tracks", {"id": f"t{i}", "email": f"u{i}@example.com", "event_text": "Signed Up"})
          for i in range(USERS)),
    )  # fmt: skip


def test_adding_ledger_namespace_keeps_the_ledger_in_use(make_sandbox: Any, tmp_path: Path) -> None:
    """A ledger resolved automatically for weeks; then ``ledger_namespace: production`` is set. Nothing is sent
    again, the change is said once, and the name keeps meaning that ledger (with the setting removed too)."""
    loops = make_sandbox(team_name="Acme", properties=PLAN)
    first = run_target(sandbox_config(loops, tmp_path), people(), tmp_path=tmp_path)
    assert first.returncode == 0, first.stderr
    assert len(sent_events(loops)) == USERS
    loops.store.advance_clock(25 * 3600)  # Loops has forgotten the idempotency keys: only the ledger knows

    # A dry run first, as a careful user does: it plans nothing and records nothing.
    mark = len(loops.store.requests())
    plan = tmp_path / "plan.jsonl"
    dry = run_target(
        sandbox_config(loops, tmp_path, ledger_namespace="production", dry_run=True, dry_run_path=str(plan)),
        people(),
        tmp_path=tmp_path,
    )
    assert dry.returncode == 0, dry.stderr
    assert plan.read_text() == "" and writes(loops, mark) == []

    named = "ledger_namespace 'production' now names the ledger this key has used so far (5 contacts, 5 events)"
    for n in range(2):
        mark = len(loops.store.requests())
        run = run_target(sandbox_config(loops, tmp_path, ledger_namespace="production"), people(), tmp_path=tmp_path)
        assert run.returncode == 0, run.stderr
        assert writes(loops, mark) == [], f"run {n + 2} sent again what the ledger holds"
        assert (named in run.stderr) is (n == 0), run.stderr  # said once, when it happens
    mark = len(loops.store.requests())
    unset = run_target(sandbox_config(loops, tmp_path), people(), tmp_path=tmp_path)
    assert unset.returncode == 0, unset.stderr
    assert writes(loops, mark) == []


def resolve(ledger: Ledger, api_key: str, explicit: str | None = None, team_name: str = "Acme") -> str:
    """The namespace a run with this key (no mailing lists) and this ``ledger_namespace`` setting works in."""
    return ledger.resolve_team(base_url=URL, team_name=team_name, api_key=api_key, list_ids=[], explicit=explicit)


def _deliver(ledger: Ledger, team: str, *keys: str) -> None:
    ledger.record_events(team, [keyed_hash(team, k) for k in keys])


def test_an_explicit_name_new_to_the_ledger_names_the_namespace_of_the_key(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ledger = Ledger(f"sqlite:///{tmp_path / 'l.sqlite'}")
    auto = resolve(ledger, "k1")
    _deliver(ledger, auto, "e1", "e2")
    with caplog.at_level(logging.INFO, logger="target_loops.ledger"):
        named = resolve(ledger, "k1", "production")
    assert named == auto  # the keyed hashes stay valid: same namespace, a second name
    assert "ledger_namespace 'production' now names the ledger this key has used so far (0 contacts, 2 events)" in (
        caplog.text
    )
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="target_loops.ledger"):
        assert resolve(ledger, "k1", "production") == auto
        # A rotated key that keeps the setting keeps the ledger: the name is the ledger's now.
        assert resolve(ledger, "k2", "production") == auto
    assert "now names" not in caplog.text
    assert ledger.known_team(URL, explicit="production") == auto  # a dry run without a key


def test_explicit_names_keep_two_teams_apart(tmp_path: Path) -> None:
    """Two teams named Acme behind one URL, no mailing lists: the reason ``ledger_namespace`` exists."""
    ledger = Ledger(f"sqlite:///{tmp_path / 'l.sqlite'}")
    one = resolve(ledger, "k1")
    _deliver(ledger, one, "e1")
    # The second team's key was never seen: its explicit name starts fresh, it never names the first team's ledger.
    two = resolve(ledger, "k2", "acme-2")
    assert two == "acme-2"
    _deliver(ledger, two, "e9")
    # Naming the first team too afterwards keeps each ledger with its team.
    assert resolve(ledger, "k1", "acme-1") == one
    assert resolve(ledger, "k2", "acme-2") == two
    assert ledger.delivered_events(two, [keyed_hash(two, "e1")]) == set()
    # A name that already exists keeps its own data, whichever key uses it.
    assert resolve(ledger, "k1", "acme-2") == two


def test_an_explicit_name_starts_fresh_when_there_is_nothing_to_keep(tmp_path: Path) -> None:
    ledger = Ledger(f"sqlite:///{tmp_path / 'l.sqlite'}")
    fresh = resolve(ledger, "k1", "production")
    assert fresh == "production"  # a key never seen
    resolve(ledger, "k3", team_name="Beta")  # known, but holds nothing
    assert resolve(ledger, "k3", "beta", team_name="Beta") == "beta"


def test_a_dry_run_reads_the_name_it_would_give_and_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite"
    ledger = Ledger(f"sqlite:///{path}")
    auto = resolve(ledger, "k1")
    _deliver(ledger, auto, "e1")
    ledger.close()
    before = "\n".join(sqlite3.connect(path).iterdump())
    read_only = Ledger(f"sqlite:///{path}", read_only=True)
    assert resolve(read_only, "k1", "prod") == auto
    read_only.close()
    assert "\n".join(sqlite3.connect(path).iterdump()) == before
