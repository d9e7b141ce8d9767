"""Raw Segment calls: every call type routed by its own ``type``, the calls Loops has no place for counted.

The rule engine part runs in memory; the end-to-end part feeds one stream of mixed calls (what a file tap reading
Segment's archive as one stream, or a raw-events table, gives) to the CLI and checks the sandbox.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from runner import SANDBOX_KEY, record, run_target, schema, singer

from target_loops.operations import Action, Operation, Rejection, Skipped
from target_loops.rules import StreamMapper, match_rule, parse_rules
from target_loops.sandbox import Sandbox

IDENTIFY = {"type": "identify", "messageId": "m1", "userId": "u1", "timestamp": "2026-11-01T10:00:00Z",
            "traits": {"email": "ada@example.com", "plan": "pro"}}  # fmt: skip
TRACK = {"type": "track", "messageId": "m2", "userId": "u1", "event": "Signed Up", "timestamp": "2026-11-01T10:01:00Z",
         "properties": {"referrer": "newsletter"}}  # fmt: skip
PAGE = {"type": "page", "messageId": "m3", "userId": "u1", "name": "Pricing", "properties": {"path": "/pricing"}}
GROUP = {"type": "group", "messageId": "m4", "userId": "u1", "groupId": "acme", "traits": {"name": "Acme Inc"}}
ALIAS = {"type": "alias", "messageId": "m5", "userId": "u1", "previousId": "anon-1"}
SCREEN = {"type": "screen", "messageId": "m6", "userId": "u1", "name": "Home"}


def segment_mapper(**rule: Any) -> StreamMapper:
    (parsed,) = parse_rules([{"stream": "calls", "action": "segment", **rule}], use_defaults=False)
    return StreamMapper(parsed, "calls")


def test_a_segment_rule_routes_each_call_by_its_type() -> None:
    mapper = segment_mapper()
    upsert, event = mapper.map(IDENTIFY), mapper.map(TRACK)
    assert isinstance(upsert, Operation) and upsert.action is Action.UPSERT_CONTACT
    assert upsert.request.body == {"plan": "pro", "email": "ada@example.com", "userId": "u1"}
    assert isinstance(event, Operation) and event.action is Action.SEND_EVENT
    assert event.request.body["eventName"] == "Signed Up"
    assert event.request.body["eventProperties"] == {"referrer": "newsletter"}
    assert [mapper.map(r) for r in (PAGE, SCREEN, GROUP, ALIAS)] == [
        Skipped("page"),
        Skipped("screen"),
        Skipped("group"),
        Skipped("alias"),
    ]
    unknown = mapper.map({"type": "bogus", "userId": "u1"})
    assert isinstance(unknown, Rejection) and unknown.reason == "unknown_call_type"


def test_a_segment_rules_overrides_reach_the_calls_they_fit() -> None:
    mapper = segment_mapper(exclude=["plan"], event_name="properties.name", source={"value": "Segment"})
    upsert = mapper.map(IDENTIFY)
    assert isinstance(upsert, Operation)
    assert upsert.request.body == {"email": "ada@example.com", "userId": "u1", "source": "Segment"}
    event = mapper.map({**TRACK, "properties": {"name": "Custom Name"}})
    assert isinstance(event, Operation) and event.request.body["eventName"] == "Custom Name"


@pytest.mark.parametrize(
    ("action", "call"),
    [("upsert_contact", TRACK), ("upsert_contact", PAGE), ("send_event", IDENTIFY), ("send_event", ALIAS)],
)
def test_a_call_of_the_wrong_type_is_refused_not_merged(action: str, call: dict[str, Any]) -> None:
    """A stream of mixed calls under an upsert rule used to merge track and page calls into the contact update."""
    (rule,) = parse_rules([{"stream": "calls", "action": action}], use_defaults=False)
    result = StreamMapper(rule, "calls").map(call)
    assert isinstance(result, Rejection) and result.reason == "wrong_call_type"
    assert '"action": "segment"' in result.message


def test_builtin_rules_skip_the_calls_loops_has_no_place_for() -> None:
    rules = parse_rules([], use_defaults=True)
    for stream in ("page", "screen", "group", "alias", "pages", "screens", "groups", "aliases", "web-pages"):
        rule = match_rule(rules, stream)
        assert rule is not None and rule.action is Action.SKIP, stream


def test_the_readme_rules_for_page_views_and_groups_work() -> None:
    rules = parse_rules(
        [
            {"stream": "page", "action": "send_event", "event_name": {"value": "Page Viewed"}},
            {"stream": "group", "action": "upsert_contact", "user_group": "traits.name", "include": []},
        ],
        use_defaults=False,
    )
    page = StreamMapper(rules[0], "page").map(PAGE)
    assert isinstance(page, Operation)
    assert page.request.body["eventName"] == "Page Viewed"
    assert page.request.body["eventProperties"] == {"path": "/pricing"}
    group = StreamMapper(rules[1], "group").map({**GROUP, "traits": {"name": "Acme Inc", "email": None}})
    assert isinstance(group, Operation)
    assert group.request.body == {"userId": "u1", "userGroup": "Acme Inc"}


def test_one_stream_of_mixed_calls_end_to_end(make_sandbox: Any, tmp_path: Path) -> None:
    loops: Sandbox = make_sandbox(properties=[{"key": "plan", "type": "string"}])
    calls = [IDENTIFY, TRACK, PAGE, GROUP, ALIAS, SCREEN, {**TRACK}]  # the last: at-least-once, the same messageId
    text = singer(
        schema("segment_logs", {"type": "string", "messageId": "string"}, ["messageId"]),
        *(record("segment_logs", c) for c in calls),
    )
    report = tmp_path / "report.json"
    config = {"api_key": SANDBOX_KEY, "base_url": loops.url, "report_path": str(report),
              "mappings": [{"stream": "segment_logs", "action": "segment"}]}  # fmt: skip
    run = run_target(config, text, tmp_path=tmp_path)
    assert run.returncode == 0, run.stderr
    contact = loops.store.find(user_id="u1")
    assert contact is not None and contact["plan"] == "pro" and contact["email"] == "ada@example.com"
    assert [e["eventName"] for e in loops.store.events()] == ["Signed Up"]
    (stream,) = json.loads(report.read_text())["streams"]
    assert stream["skipped_calls"] == {"alias": 1, "group": 1, "page": 1, "screen": 1}
    assert stream["duplicates"] == 1
    assert run.rejects == []
