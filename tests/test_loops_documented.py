"""Loops as documented (issue 24): what Loops' own pages say, and how the sandbox and the target follow it.

- "Custom event names can not contain colon characters (:)" (https://loops.so/docs/events): refused by the target
  before anything is sent, and by the sandbox in strict and lenient mode alike.
- "By default lists are private" (https://loops.so/docs/contacts/mailing-lists).
- ``GET /v1/event-patterns/by-name/{eventName}`` (https://loops.so/docs/api-reference/get-event-pattern-by-name):
  ``{id, eventName, eventProperties: [{name, type}], incomingWebhookPlatform}``, served from the team file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests
from runner import SANDBOX_KEY, record, run_target, sandbox_config, schema, singer

from target_loops.sandbox import Sandbox
from target_loops.sandbox.server import build_parser, config_from_args

SIGNED_UP = {
    "eventName": "Signed Up",
    "eventProperties": [{"name": "plan", "type": "string"}, {"name": "trialDays", "type": "number"}],
}


def api(sb: Sandbox, method: str, path: str, body: Any = None, **headers: str) -> requests.Response:
    return requests.request(
        method,
        sb.url + path,
        json=body,
        headers={"Authorization": f"Bearer {SANDBOX_KEY}", **headers},
        timeout=5,
    )


# --- the sandbox


@pytest.mark.parametrize("lenient", [False, True])
def test_the_sandbox_refuses_a_colon_in_an_event_name_strict_or_lenient(make_sandbox: Any, lenient: bool) -> None:
    sb = make_sandbox(lenient=lenient)
    answer = api(sb, "POST", "/v1/events/send", {"email": "a@x.io", "eventName": "Plan: Upgraded"})
    assert answer.status_code == 400 and answer.json()["success"] is False
    assert sb.store.events() == [] and sb.store.contacts() == []


def test_lists_are_private_unless_the_team_file_says_public(make_sandbox: Any) -> None:
    sb = make_sandbox(lists=[{"id": "l1", "name": "Beta"}, {"id": "l2", "name": "News", "isPublic": True}])
    assert [(x["id"], x["isPublic"]) for x in api(sb, "GET", "/v1/lists").json()] == [("l1", False), ("l2", True)]


def test_event_patterns_are_served_from_the_team_definition(make_sandbox: Any) -> None:
    sb = make_sandbox(events=[SIGNED_UP, {"eventName": "a/b & c?"}])
    answer = api(sb, "GET", "/v1/event-patterns/by-name/" + quote("Signed Up"))
    assert answer.status_code == 200
    body = answer.json()
    assert set(body) == {"id", "eventName", "eventProperties", "incomingWebhookPlatform"}
    assert body["eventName"] == "Signed Up" and body["incomingWebhookPlatform"] is None
    assert body["eventProperties"] == SIGNED_UP["eventProperties"]
    odd = api(sb, "GET", "/v1/event-patterns/by-name/" + quote("a/b & c?", safe=""))
    assert odd.status_code == 200 and odd.json()["eventProperties"] == []
    # Names are case-sensitive; an event the team has not got is a 404 in Loops' error shape.
    missing = api(sb, "GET", "/v1/event-patterns/by-name/signed%20up")
    assert missing.status_code == 404 and missing.json()["success"] is False
    assert api(sb, "POST", "/v1/event-patterns/by-name/x").status_code == 405


def test_sending_a_new_event_name_defines_it_with_its_properties(make_sandbox: Any) -> None:
    """ "You can create an event by sending an event with a new event name" (https://loops.so/docs/events); an
    existing definition is left as it is (Loops does not add to it)."""
    sb = make_sandbox(events=[SIGNED_UP])
    body = {"email": "a@x.io", "eventName": "Invite Sent", "eventProperties": {"to": "b@x.io", "n": 2, "ok": True}}
    assert api(sb, "POST", "/v1/events/send", body).status_code == 200
    created = api(sb, "GET", "/v1/event-patterns/by-name/Invite%20Sent").json()["eventProperties"]
    assert created == [
        {"name": "to", "type": "string"},
        {"name": "n", "type": "number"},
        {"name": "ok", "type": "boolean"},
    ]
    extra = {"email": "a@x.io", "eventName": "Signed Up", "eventProperties": {"plan": "pro", "coupon": "X"}}
    assert api(sb, "POST", "/v1/events/send", extra).status_code == 200
    kept = api(sb, "GET", "/v1/event-patterns/by-name/Signed%20Up").json()["eventProperties"]
    assert kept == SIGNED_UP["eventProperties"]
    sb.store.reset()
    assert api(sb, "GET", "/v1/event-patterns/by-name/Invite%20Sent").status_code == 404


@pytest.mark.parametrize(
    "events",
    [
        [{"eventName": "a:b"}],
        [{"eventName": "X", "eventProperties": [{"name": "p", "type": "text"}]}],
        [{"eventName": "X", "eventProperties": [{"name": "p"}, {"name": "p"}]}],
        [{"eventName": "X"}, {"eventName": "X"}],
    ],
)
def test_a_bad_team_event_definition_fails_at_start(tmp_path: Path, events: list[dict[str, Any]]) -> None:
    team_file = tmp_path / "team.json"
    team_file.write_text(json.dumps({"events": events}))
    args = build_parser().parse_args(["--team-file", str(team_file)])
    with pytest.raises(ValueError):
        Sandbox(config_from_args(args))


# --- the target


def test_an_event_name_with_a_colon_is_refused_locally_and_the_next_event_is_delivered(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    text = singer(
        schema("tracks", {"user_id": "string", "email": "string", "event_text": "string", "id": "string"}),
        record("tracks", {"email": "a@x.io", "event_text": "Plan: Upgraded", "id": "e1"}),
        record("tracks", {"email": "a@x.io", "event_text": "Plan Upgraded", "id": "e2"}),
    )
    run = run_target(sandbox_config(sandbox, tmp_path), text, tmp_path=tmp_path)
    assert run.returncode == 0, run.stderr
    (line,) = run.rejects
    assert line["reason"] == "invalid_event_name" and line["record"]["id"] == "e1"
    assert "https://loops.so/docs/events" in line["message"] and line["request"] is None
    assert all("Plan: Upgraded" not in json.dumps(entry) for entry in sandbox.store.requests())
    assert [e["eventName"] for e in sandbox.store.events()] == ["Plan Upgraded"]


# --- event properties against Loops' definitions

TRACK_SCHEMA = schema(
    "tracks",
    {
        "type": "string",
        "messageId": "string",
        "userId": "string",
        "event": "string",
        "timestamp": "string",
        "context": {"type": ["object", "null"]},
        "properties": {"type": ["object", "null"]},
    },
)


def track(message_id: str, name: str, props: dict[str, Any], email: str = "a@x.io") -> dict[str, Any]:
    return record(
        "tracks",
        {
            "type": "track",
            "messageId": message_id,
            "event": name,
            "timestamp": "2026-11-01T10:00:00Z",
            "context": {"traits": {"email": email}},
            "properties": props,
        },
    )


EVENTS_INPUT = singer(
    TRACK_SCHEMA,
    # m2 first: a type that disagrees is noticed on any record, not only on a property's first value.
    track("m2", "Signed Up", {"plan": "free", "trialDays": 7}, email="b@x.io"),
    track("m1", "Signed Up", {"plan": "pro", "trialDays": "14", "coupon": "X"}),
    track("m3", "Order Completed", {"orderId": "o-1", "revenue": 9.5}),
)


def pattern_reads(sb: Sandbox) -> list[str]:
    return [r["path"] for r in sb.store.requests() if "/event-patterns/" in r["path"]]


def test_the_plan_names_per_event_what_loops_defines_lacks_and_types_that_disagree(
    make_sandbox: Any, tmp_path: Path
) -> None:
    sb = make_sandbox(events=[SIGNED_UP])
    plan = tmp_path / "plan.jsonl"
    config = sandbox_config(sb, tmp_path, dry_run=True, dry_run_path=str(plan))
    run = run_target(config, EVENTS_INPUT, tmp_path=tmp_path)
    assert run.returncode == 0, run.stderr
    # Read only, once per event name, whatever the number of records.
    assert sorted(pattern_reads(sb)) == [
        "/api/v1/event-patterns/by-name/Order Completed",
        "/api/v1/event-patterns/by-name/Signed Up",
    ]
    assert all(r["method"] == "GET" for r in sb.store.requests())
    signed_up = run.report["event_definitions"]["Signed Up"]
    assert signed_up["loops"] == "defined"
    assert signed_up["defined"] == {"plan": "string", "trialDays": "number"}
    assert signed_up["missing"] == {"coupon": "string"}
    assert signed_up["type_mismatches"] == {"trialDays": {"loops": "number", "sent": "string"}}
    assert run.report["event_definitions"]["Order Completed"]["loops"] == "not_defined"
    assert "Signed Up: Loops defines plan (string), trialDays (number)" in run.stderr
    assert "sent but not defined in Loops (create with these types): coupon (string)" in run.stderr
    assert "types that disagree: trialDays (Loops number, sent string)" in run.stderr
    assert "Order Completed: sends orderId (string), revenue (number) (Loops has no definition" in run.stderr
    # The log says it at once, too; warn (the default) still plans the property.
    assert "property coupon (string) is not defined on this event in Loops" in run.stderr
    bodies = [json.loads(line)["body"] for line in plan.read_text().splitlines()]
    assert any(b.get("eventProperties", {}).get("coupon") == "X" for b in bodies)


def test_drop_leaves_undefined_event_properties_out_and_says_so(make_sandbox: Any, tmp_path: Path) -> None:
    sb = make_sandbox(events=[SIGNED_UP])
    run = run_target(sandbox_config(sb, tmp_path, unknown_event_properties="drop"), EVENTS_INPUT, tmp_path=tmp_path)
    assert run.returncode == 0, run.stderr
    sent = {e["email"]: e["eventProperties"] for e in sb.store.events() if e["eventName"] == "Signed Up"}
    assert sent == {"a@x.io": {"plan": "pro", "trialDays": "14"}, "b@x.io": {"plan": "free", "trialDays": 7}}
    # No definition for "Order Completed": nothing is dropped there (its first send defines it).
    (order,) = [e for e in sb.store.events() if e["eventName"] == "Order Completed"]
    assert order["eventProperties"] == {"orderId": "o-1", "revenue": 9.5}
    assert run.report["event_definitions"]["Signed Up"]["dropped"] == {"coupon": 1}
    assert "left out (unknown_event_properties: drop): coupon from 1 event" in run.stderr
    assert run.rejects == []


def test_error_rejects_records_with_undefined_event_properties(make_sandbox: Any, tmp_path: Path) -> None:
    sb = make_sandbox(events=[SIGNED_UP])
    run = run_target(sandbox_config(sb, tmp_path, unknown_event_properties="error"), EVENTS_INPUT, tmp_path=tmp_path)
    assert run.returncode == 0, run.stderr
    (line,) = run.rejects
    assert line["reason"] == "unknown_event_property" and line["record"]["messageId"] == "m1"
    assert "'Signed Up'" in line["message"] and "coupon (string)" in line["message"]
    assert sorted(e["email"] for e in sb.store.events()) == ["a@x.io", "b@x.io"]  # m2, and m3 (no definition)
    assert run.report["event_definitions"]["Signed Up"]["rejected"] == 1
