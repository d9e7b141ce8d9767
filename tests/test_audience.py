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
