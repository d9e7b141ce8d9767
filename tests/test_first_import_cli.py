"""The first real run, through the CLI against the sandbox (real HTTP): no value wiped, nobody created by accident.

Every figure is counted from the sandbox's state and request log (contacts, events, contacts created through the
API), never from the target's word.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest
from runner import record, run_target, sandbox_config, schema, singer, state

from target_loops.sandbox import Sandbox

PROPERTIES = [
    {"key": "plan", "type": "string"},
    {"key": "logins", "type": "number"},
    {"key": "vip", "type": "boolean"},
    {"key": "renewsAt", "type": "date"},
]
COLUMNS = {"id": "string", "user_id": "string", "email": "string", "first_name": "string", "plan": "string",
           "logins": "string", "vip": "string", "renews_at": "string", "timestamp": "string"}  # fmt: skip
TRACK_COLUMNS = {"id": "string", "user_id": "string", "event_text": "string", "timestamp": "string",
                 "context_traits_email": "string", "total": "string", "currency": "string"}  # fmt: skip


@pytest.fixture
def team(make_sandbox: Any) -> Sandbox:
    return make_sandbox(properties=PROPERTIES)


def identifies(*rows: dict[str, Any]) -> list[dict[str, Any]]:
    return [schema("identifies", COLUMNS, ["id"]), *(record("identifies", r) for r in rows)]


def tracks(*rows: dict[str, Any]) -> list[dict[str, Any]]:
    return [schema("tracks", TRACK_COLUMNS, ["id"]), *(record("tracks", r) for r in rows)]


def row(n: int, user: str, at: str, **values: Any) -> dict[str, Any]:
    return {"id": f"i{n}", "user_id": user, "email": f"{user}@example.com", "timestamp": at, **values}


def writes(team: Sandbox) -> list[dict[str, Any]]:
    return [r for r in team.store.requests() if r["method"] != "GET"]


FULL = {"plan": "pro", "logins": "5", "vip": "true", "renews_at": "2027-01-01"}
EMPTY = {"plan": "", "logins": "", "vip": " ", "renews_at": ""}


def test_empty_strings_leave_loops_values_as_they_were(team: Sandbox, tmp_path: Path) -> None:
    config = sandbox_config(team, tmp_path)
    first = run_target(config, singer(*identifies(row(1, "u1", "2026-11-01T10:00:00Z", **FULL))), tmp_path=tmp_path)
    assert first.returncode == 0, first.stderr
    before = team.store.find(user_id="u1")
    assert (before["plan"], before["logins"], before["vip"]) == ("pro", 5, True)

    event = {"id": "t1", "user_id": "u1", "event_text": "Paid", "timestamp": "2026-11-01T12:00:00Z",
             "context_traits_email": "u1@example.com", "total": "", "currency": "EUR"}  # fmt: skip
    text = singer(*identifies(row(2, "u1", "2026-11-01T11:00:00Z", **EMPTY)), *tracks(event), state({"at": 2}))
    second = run_target(config, text, tmp_path=tmp_path)
    assert second.returncode == 0, second.stderr
    after = team.store.find(user_id="u1")
    for key in ("plan", "logins", "vip", "renewsAt"):
        assert after[key] == before[key], key
    assert all(None not in r["body"].values() for r in writes(team) if isinstance(r.get("body"), dict))
    sent = [e for e in team.store.events() if e["eventName"] == "Paid"]
    assert len(sent) == 1 and sent[0]["eventProperties"] == {"currency": "EUR"}

    # The ledger took none of the blanks for a value: the first row again is unchanged, nothing is sent.
    count = len(writes(team))
    third = run_target(config, singer(*identifies(row(3, "u1", "2026-11-01T13:00:00Z", **FULL))), tmp_path=tmp_path)
    assert third.returncode == 0, third.stderr
    assert len(writes(team)) == count


def mixed_input() -> str:
    """Ada (in Loops already), Bob (new), each with an event; Ada's row has blanks that must not wipe anything."""
    return singer(
        *identifies(
            row(1, "ada", "2026-11-01T10:00:00Z", first_name="Ada", plan="pro", logins="3"),
            row(2, "bob", "2026-11-01T10:00:01Z", first_name="Bob", plan="free", logins="1", vip="false"),
            row(3, "bob", "2026-11-01T10:00:02Z", plan="team", logins=""),
        ),
        *tracks(
            {
                "id": "t1",
                "user_id": "ada",
                "event_text": "Paid",
                "timestamp": "2026-11-01T10:01:00Z",
                "context_traits_email": "ada@example.com",
                "total": "10",
            },
            {
                "id": "t2",
                "user_id": "bob",
                "event_text": "Signed Up",
                "timestamp": "2026-11-01T10:01:00Z",
                "context_traits_email": "bob@example.com",
            },
        ),
        state({"at": 1}),
    )


def test_skip_updates_known_people_creates_nobody_and_holds_back_the_rest(team: Sandbox, tmp_path: Path) -> None:
    team.store.upload_csv("email,userId,plan\nada@example.com,ada,free\n")
    run = run_target(sandbox_config(team, tmp_path, new_contacts="skip"), mixed_input(), tmp_path=tmp_path)
    assert run.returncode == 0, run.stderr
    assert team.store.created_through_api() == []
    assert team.store.find(user_id="ada")["plan"] == "pro"
    assert [e["eventName"] for e in team.store.events()] == ["Paid"]
    assert team.store.find(email="bob@example.com") is None
    held = sorted((r["stream"], r["record"]["id"], r["reason"]) for r in run.rejects)
    assert held == [("identifies", "i2", "not_in_loops"), ("identifies", "i3", "not_in_loops"),
                    ("tracks", "t2", "not_in_loops")]  # fmt: skip
    assert run.final_state == {"at": 1}
    figures = run.report["new_contacts"]
    assert figures["policy"] == "skip" and figures["unknown_to_ledger"] == 2 and figures["not_in_loops"] == 1
    assert figures["held_back_records"] == 3 and run.report["rejects"]["this_run"] == 0


def test_csv_exports_new_people_then_the_run_after_the_upload_sends_nothing_for_them(
    team: Sandbox, tmp_path: Path
) -> None:
    path = tmp_path / "out" / "new_contacts.csv"
    config = sandbox_config(team, tmp_path, new_contacts="csv", new_contacts_path=str(path))
    first = run_target(config, mixed_input(), tmp_path=tmp_path)
    assert first.returncode == 0, first.stderr
    assert writes(team) == [] and team.store.contacts() == []
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    assert list(rows[0]) == ["email", "firstName", "userId", "logins", "plan", "vip"]
    assert rows == [
        {"email": "ada@example.com", "firstName": "Ada", "userId": "ada", "logins": "3", "plan": "pro", "vip": ""},
        {"email": "bob@example.com", "firstName": "Bob", "userId": "bob", "logins": "1", "plan": "team",
         "vip": "false"},
    ]  # fmt: skip
    assert sorted((r["record"]["id"], r["reason"]) for r in first.rejects) == [("t1", "pending_import"),
                                                                                 ("t2", "pending_import")]  # fmt: skip
    assert first.final_state == {"at": 1}  # emitted once the CSV was in place
    assert first.report["new_contacts"]["csv_path"] == str(path.resolve())
    assert "sandbox-key" not in path.read_text()

    assert team.store.upload_csv(path.read_text())["created"] == 2  # the user's upload in Loops' web app
    # The next nightly run re-reads the people (the events were held back; they are replayed below).
    people = mixed_input().split(json.dumps(tracks()[0]))[0] + json.dumps(state({"at": 2})) + "\n"
    again = run_target(config, people, tmp_path=tmp_path)
    assert again.returncode == 0, again.stderr
    assert writes(team) == [] and team.store.created_through_api() == []
    finds = [r for r in team.store.requests() if "/contacts/find" in r["path"]]
    assert len(finds) == 2  # the sample (both exported people appear again)
    assert path.read_text().count("\n") == 3  # no second file, nothing new to export

    # The events held back are replayed from the rejects file after the upload: they reach the existing contacts.
    replay = singer(*tracks(*(r["record"] for r in first.rejects)), state({"at": 3}))
    replayed = run_target(sandbox_config(team, tmp_path / "r"), replay, tmp_path=tmp_path)
    assert replayed.returncode == 0, replayed.stderr
    assert sorted(e["eventName"] for e in team.store.events()) == ["Paid", "Signed Up"]
    assert team.store.created_through_api() == []


def test_a_run_before_the_upload_says_so_in_one_line_and_sends_nothing_for_them(team: Sandbox, tmp_path: Path) -> None:
    path = tmp_path / "new_contacts.csv"
    config = sandbox_config(team, tmp_path, new_contacts="csv", new_contacts_path=str(path))
    assert run_target(config, mixed_input(), tmp_path=tmp_path).returncode == 0
    normal = {**config, "new_contacts": "create"}
    run = run_target(normal, mixed_input(), tmp_path=tmp_path)
    assert run.returncode == 3, run.stderr
    assert f"upload {path.resolve()} in Loops first" in run.stderr.splitlines()[-1]
    assert writes(team) == [] and team.store.contacts() == []
    assert run.report["new_contacts"]["upload_pending"] == {str(path.resolve()): 2}
    assert run.final_state == {"at": 1}  # their records are in the rejects file: nothing is lost


def test_the_dry_run_and_the_report_warn_about_contact_added_loops(team: Sandbox, tmp_path: Path) -> None:
    dry = run_target(sandbox_config(team, tmp_path, dry_run=True), mixed_input(), tmp_path=tmp_path)
    assert dry.returncode == 0, dry.stderr
    assert '2 people unknown to the ledger: each one Loops does not have is created through the API, which starts ' \
           'the team\'s "Contact added" loops (new_contacts: create' in dry.stderr  # fmt: skip
    assert dry.report["new_contacts"]["unknown_to_ledger"] == 2
    real = run_target(sandbox_config(team, tmp_path), mixed_input(), tmp_path=tmp_path)
    assert real.returncode == 0
    assert "new_contacts: create" in real.stderr and "Contact added" in real.stderr
    assert real.report["new_contacts"]["unknown_to_ledger"] == 2
    assert len(team.store.created_through_api()) == 2


def test_csv_needs_a_path(team: Sandbox, tmp_path: Path) -> None:
    run = run_target(sandbox_config(team, tmp_path, new_contacts="csv"), mixed_input(), tmp_path=tmp_path)
    assert run.returncode == 1
    assert "new_contacts: csv needs new_contacts_path" in run.stderr
    assert team.store.requests() == []
