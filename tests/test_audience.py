"""Audiences end to end through the CLI: a table decides who is on a list, and who leaves it (issue 19).

Each test syncs a ``beta_users`` table into the sandbox, changes the table, syncs again, and counts what the sandbox
received and holds: the requests it logged and the contacts it keeps, never the target's own word.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from runner import SANDBOX_KEY, Run, record, run_target, schema, singer, state

from target_loops.sandbox import Sandbox

BETA, OTHER = "cm06f5v0e45nf0ml5754o9cix", "cm06f5v0e45nf0ml5754o9ciy"
TEAM = {
    "properties": [{"key": "plan", "type": "string"}],
    "lists": [
        {"id": BETA, "name": "Beta", "description": "", "isPublic": False},
        {"id": OTHER, "name": "Other", "description": "", "isPublic": False},
    ],
}
STREAM = "beta_users"
RULE = {"stream": STREAM, "action": "upsert_contact", "on_leave": "remove_from_lists", "full_table": True}


@pytest.fixture
def loops(make_sandbox: Any) -> Sandbox:
    return make_sandbox(properties=TEAM["properties"], lists=TEAM["lists"])


def people(n: int) -> list[dict[str, Any]]:
    return [
        {"user_id": f"u{i}", "email": f"person{i}@example.com", "plan": "beta", f"mailing_lists_{BETA}": True}
        for i in range(n)
    ]


def table(rows: list[dict[str, Any]], *, version: int | None = None, activate: bool = False) -> str:
    """The Singer messages of one full sync of the table (an SDK tap's shape: ACTIVATE_VERSION first)."""
    props = {"user_id": "string", "email": "string", "plan": "string", f"mailing_lists_{BETA}": "boolean"}
    messages: list[dict[str, Any]] = [schema(STREAM, props, ["user_id"])]
    if activate:
        messages.append({"type": "ACTIVATE_VERSION", "stream": STREAM, "version": version})
    for row in rows:
        message = record(STREAM, row)
        if version is not None:
            message["version"] = version
        messages.append(message)
    messages.append(state({"bookmarks": {STREAM: {"done": True}}}))
    return singer(*messages)


def sync(loops: Sandbox, tmp_path: Path, text: str, name: str, rule: dict[str, Any] = RULE, **extra: Any) -> Run:
    folder = tmp_path / name
    folder.mkdir()
    config = {
        "api_key": SANDBOX_KEY,
        "base_url": loops.url,
        "ledger_url": f"sqlite:///{tmp_path / 'ledger.sqlite'}",
        "mappings": [rule],
        **extra,
    }
    return run_target(config, text, tmp_path=folder)


def writes(loops: Sandbox) -> list[dict[str, Any]]:
    return [r for r in loops.store.requests() if r["method"] != "GET"]


def on_beta(loops: Sandbox) -> set[str]:
    return {c["userId"] for c in loops.store.contacts() if (c.get("mailingLists") or {}).get(BETA)}


def test_a_row_gone_from_a_full_table_takes_that_person_off_the_list_and_nobody_else(
    loops: Sandbox, tmp_path: Path
) -> None:
    first = sync(loops, tmp_path, table(people(20)), "first")
    assert first.returncode == 0, first.stderr
    assert on_beta(loops) == {f"u{i}" for i in range(20)}
    before = {c["userId"]: c for c in loops.store.contacts()}
    sent = len(writes(loops))

    rows = people(20)
    del rows[7]
    second = sync(loops, tmp_path, table(rows), "second")
    assert second.returncode == 0, second.stderr
    new = writes(loops)[sent:]
    assert [(r["path"], r["body"]) for r in new] == [
        ("/api/v1/contacts/update", {"userId": "u7", "mailingLists": {BETA: False}})
    ]
    after = {c["userId"]: c for c in loops.store.contacts()}
    assert on_beta(loops) == {f"u{i}" for i in range(20)} - {"u7"}
    assert {k: v for k, v in after["u7"].items() if k != "mailingLists"} == {
        k: v for k, v in before["u7"].items() if k != "mailingLists"
    }  # their other data untouched
    assert {k: v for k, v in after.items() if k != "u7"} == {k: v for k, v in before.items() if k != "u7"}
    assert (second.stream(STREAM)["left"], second.stream(STREAM)["joined"]) == (1, 0)
    assert second.final_state == {"bookmarks": {STREAM: {"done": True}}}


def test_a_table_cut_to_3_of_20_rows_removes_nobody_exits_non_zero_and_the_next_complete_sync_works(
    loops: Sandbox, tmp_path: Path
) -> None:
    assert sync(loops, tmp_path, table(people(20)), "first").returncode == 0
    sent = len(writes(loops))

    cut = sync(loops, tmp_path, table(people(3)), "cut")
    assert cut.returncode == 1
    assert writes(loops)[sent:] == []  # nobody removed
    assert on_beta(loops) == {f"u{i}" for i in range(20)}
    guard = [line for line in cut.stderr.splitlines() if "max_leave_fraction" in line]
    assert len(guard) >= 1 and "beta_users" in guard[-1] and "17 of 20" in guard[-1], cut.stderr
    assert cut.final_state == {"bookmarks": {STREAM: {"done": True}}}  # everything else delivered and checkpointed
    assert cut.report["audiences"][0]["stopped_by_guard"] is True

    rows = people(20)
    del rows[0]
    again = sync(loops, tmp_path, table(rows), "again")
    assert again.returncode == 0, again.stderr
    assert [r["body"] for r in writes(loops)[sent:]] == [{"userId": "u0", "mailingLists": {BETA: False}}]
    assert on_beta(loops) == {f"u{i}" for i in range(1, 20)}


def test_activate_version_closes_the_stream_s_version_without_full_table(loops: Sandbox, tmp_path: Path) -> None:
    rule = {k: v for k, v in RULE.items() if k != "full_table"}
    first = sync(loops, tmp_path, table(people(10), version=1_700_000_000, activate=True), "first", rule)
    assert first.returncode == 0, first.stderr
    assert "ACTIVATE_VERSION message received but not implemented" not in first.stderr
    assert "_sdc_deleted_at" not in first.stderr
    sent = len(writes(loops))
    rows = people(10)[1:]
    second = sync(loops, tmp_path, table(rows, version=1_700_000_100, activate=True), "second", rule)
    assert second.returncode == 0, second.stderr
    assert [r["body"] for r in writes(loops)[sent:]] == [{"userId": "u0", "mailingLists": {BETA: False}}]
    # Without ACTIVATE_VERSION and without full_table, a run cannot know the table is whole: nobody leaves.
    third = sync(loops, tmp_path, table(people(10)[2:]), "third", rule)
    assert third.returncode == 0, third.stderr
    assert len(writes(loops)) == sent + 1
    assert "not closed" in third.stderr


def test_an_input_cut_short_removes_nobody(loops: Sandbox, tmp_path: Path) -> None:
    assert sync(loops, tmp_path, table(people(10)), "first").returncode == 0
    sent = len(writes(loops))
    text = table(people(10)[:9])
    cut_short = text[: text.rindex('{"type": "STATE"')] + '{"type": "RECORD", "stream": "beta_us'  # a torn last line
    run = sync(loops, tmp_path, cut_short, "cut")
    assert run.returncode != 0
    assert writes(loops)[sent:] == []
    assert on_beta(loops) == {f"u{i}" for i in range(10)}


def test_the_first_sync_of_an_audience_makes_nobody_leave_or_join(loops: Sandbox, tmp_path: Path) -> None:
    rule = {**RULE, "on_join": {"event": "Joined beta"}}
    first = sync(loops, tmp_path, table(people(6)), "first", rule)
    assert first.returncode == 0, first.stderr
    assert [r for r in writes(loops) if r["path"].endswith("events/send")] == []
    assert first.report["audiences"][0]["first_sync"] is True
    assert "first sync" in first.stderr


def test_join_and_leave_events_and_delete(loops: Sandbox, tmp_path: Path) -> None:
    rule = {**RULE, "on_leave": [{"event": "Left beta"}, "delete"], "on_join": {"event": "Joined beta"}}
    assert sync(loops, tmp_path, table(people(6)), "first", rule).returncode == 0
    sent = len(writes(loops))
    rows = people(7)[1:]  # u0 leaves, u6 joins
    second = sync(loops, tmp_path, table(rows), "second", rule)
    assert second.returncode == 0, second.stderr
    new = [(r["path"].rsplit("/", 2)[-2:], r["body"]) for r in writes(loops)[sent:]]
    assert sorted(new, key=str) == sorted(
        [
            (["contacts", "update"], {"userId": "u6", "email": "person6@example.com", "plan": "beta",
                                      "mailingLists": {BETA: True}}),
            (["events", "send"], {"userId": "u6", "eventName": "Joined beta"}),
            (["events", "send"], {"userId": "u0", "eventName": "Left beta"}),
            (["contacts", "delete"], {"userId": "u0"}),
        ],
        key=str,
    )  # fmt: skip
    assert "u0" not in {c["userId"] for c in loops.store.contacts()}
    assert [e["eventName"] for e in loops.store.events()].count("Left beta") == 1
    # The left person's event came before their delete (a loop can react to it).
    order = [r["path"].rsplit("/", 1)[-1] for r in writes(loops)[sent:] if r["body"].get("userId") == "u0"]
    assert order == ["send", "delete"]
    assert (second.stream(STREAM)["joined"], second.stream(STREAM)["left"]) == (1, 1)
    # Run again with the same table: nobody joins or leaves twice.
    sent = len(writes(loops))
    third = sync(loops, tmp_path, table(rows), "third", rule)
    assert third.returncode == 0, third.stderr
    assert [r["body"] for r in writes(loops)[sent:]] == []


def test_a_list_another_audience_still_holds_stays(loops: Sandbox, tmp_path: Path) -> None:
    """Two audience tables put the same person on the Beta list: leaving one keeps the list."""
    rules = [RULE, {**RULE, "stream": "vip_users"}]

    def both(beta: list[dict[str, Any]], vip: list[dict[str, Any]]) -> str:
        return table(beta) + table(vip).replace(f'"{STREAM}"', '"vip_users"')

    folder_runs = iter(range(10))

    def run(beta: list[dict[str, Any]], vip: list[dict[str, Any]]) -> Run:
        folder = tmp_path / f"run{next(folder_runs)}"
        folder.mkdir()
        config = {
            "api_key": SANDBOX_KEY,
            "base_url": loops.url,
            "ledger_url": f"sqlite:///{tmp_path / 'ledger.sqlite'}",
            "mappings": rules,
            "leave_guard_min_members": 100,
        }
        return run_target(config, both(beta, vip), tmp_path=folder)

    assert run(people(3), people(2)).returncode == 0
    sent = len(writes(loops))
    second = run(people(3)[2:], people(2))  # u0 and u1 leave beta_users; both are still in vip_users
    assert second.returncode == 0, second.stderr
    assert writes(loops)[sent:] == []  # nothing to undo: the other audience still holds the list
    assert on_beta(loops) == {"u0", "u1", "u2"}
    third = run(people(3)[2:], [])  # and now they leave vip_users too
    assert third.returncode == 0, third.stderr
    assert sorted(r["body"]["userId"] for r in writes(loops)[sent:]) == ["u0", "u1"]
    assert on_beta(loops) == {"u2"}


def test_clear_properties_clears_only_what_loops_still_holds_from_the_rule(loops: Sandbox, tmp_path: Path) -> None:
    rule = {**RULE, "on_leave": ["clear_properties", "remove_from_lists"], "stream": STREAM}
    assert sync(loops, tmp_path, table(people(6)), "first", rule, leave_guard_min_members=100).returncode == 0
    other = {"user_id": "u1", "email": "person1@example.com", "plan": "pro"}
    changed = singer(
        schema("plans", {"user_id": "string", "email": "string", "plan": "string"}), record("plans", other)
    )
    folder = tmp_path / "plans"
    folder.mkdir()
    config = {
        "api_key": SANDBOX_KEY,
        "base_url": loops.url,
        "ledger_url": f"sqlite:///{tmp_path / 'ledger.sqlite'}",
        "mappings": [{"stream": "plans", "action": "upsert_contact"}],
    }
    assert run_target(config, changed, tmp_path=folder).returncode == 0
    sent = len(writes(loops))
    second = sync(loops, tmp_path, table(people(6)[2:]), "second", rule, leave_guard_min_members=100)
    assert second.returncode == 0, second.stderr
    bodies = sorted((r["body"] for r in writes(loops)[sent:]), key=lambda b: b["userId"])
    assert bodies == [
        {"userId": "u0", "plan": None, "mailingLists": {BETA: False}},
        {"userId": "u1", "mailingLists": {BETA: False}},  # "pro" came from elsewhere: it stays
    ]
    plans = {c["userId"]: c.get("plan") for c in loops.store.contacts()}
    assert (plans["u0"], plans["u1"], plans["u2"]) == (None, "pro", "beta")


def test_the_dry_run_plans_the_leaves_and_the_guard_without_sending(loops: Sandbox, tmp_path: Path) -> None:
    assert sync(loops, tmp_path, table(people(20)), "first").returncode == 0
    sent = len(writes(loops))
    plan = tmp_path / "plan.jsonl"
    dry = sync(loops, tmp_path, table(people(20)[:18]), "dry", dry_run=True, dry_run_path=str(plan))
    assert dry.returncode == 0, dry.stderr
    assert writes(loops)[sent:] == []
    assert sorted(json.loads(line)["body"]["userId"] for line in plan.read_text().splitlines()) == ["u18", "u19"]
    assert "audience beta_users: 20 member(s), 0 would join, 2 would leave (leaving: remove_from_lists)" in dry.stderr
    stopped = sync(loops, tmp_path, table(people(3)), "dry-cut", dry_run=True)
    assert "would stop: 17 of 20 (85%) > max_leave_fraction 0.25" in stopped.stderr, stopped.stderr
    # The dry runs changed nothing: a real run still sees 20 members and 2 leavers.
    real = sync(loops, tmp_path, table(people(20)[:18]), "real")
    assert real.returncode == 0, real.stderr
    assert sorted(r["body"]["userId"] for r in writes(loops)[sent:]) == ["u18", "u19"]


def test_activate_version_on_a_stream_without_an_audience_is_quiet(loops: Sandbox, tmp_path: Path) -> None:
    plain = {"stream": STREAM, "action": "upsert_contact"}
    run = sync(loops, tmp_path, table(people(3), version=1_700_000_000, activate=True), "plain", plain)
    assert run.returncode == 0, run.stderr
    assert "ACTIVATE_VERSION" not in run.stderr and "_sdc_deleted_at" not in run.stderr
    assert len(writes(loops)) == 3
    bad = singer(schema(STREAM, {"user_id": "string"}), {"type": "ACTIVATE_VERSION", "stream": STREAM, "version": "x"})
    refused = sync(loops, tmp_path, bad, "bad", plain)
    assert refused.returncode == 1
    assert 'input line 2: an ACTIVATE_VERSION needs "stream" (a string) and "version" (an integer)' in refused.stderr
