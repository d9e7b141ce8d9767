"""One record must not stop every run (issue 21, item 7).

A number no JavaScript reader can hold (``1e5000``, ``1e100000000``, an integer of thousands of digits) or objects
nested deeper than ``limits.MAX_DEPTH`` is valid JSON, and anyone with a Segment write key can plant one in an
archive. Each such record is rejected alone (``invalid_number`` / ``too_deep``, in the rejects file, cut where it is
too deep or too big), the other records of the run are delivered, and the run ends with exit 0 in seconds: nothing
about one record may take more than a moment. Through the real CLI against the sandbox, one place at a time.
"""

from __future__ import annotations

import decimal
import json
from pathlib import Path
from typing import Any

import pytest
from runner import Run, run_target, sandbox_config

from target_loops import limits
from target_loops.rejects import RejectsWriter
from target_loops.sandbox import Sandbox

SCHEMAS = [
    {
        "type": "SCHEMA",
        "stream": "identify",
        "schema": {
            "type": "object",
            "properties": {
                "type": {"type": "string"},
                "messageId": {"type": ["string", "number"]},
                "userId": {"type": ["string", "number", "null"]},
                "timestamp": {"type": ["string", "null"], "format": "date-time"},
                "traits": {"type": ["object", "null"]},
            },
        },
        "key_properties": [],
    },
    {
        "type": "SCHEMA",
        "stream": "track",
        "schema": {
            "type": "object",
            "properties": {
                "type": {"type": "string"},
                "messageId": {"type": ["string", "number"]},
                "userId": {"type": ["string", "number", "null"]},
                "event": {"type": ["string", "null"]},
                "timestamp": {"type": ["string", "null"], "format": "date-time"},
                "properties": {"type": ["object", "null"]},
                "context": {"type": ["object", "null"]},
            },
        },
        "key_properties": [],
    },
]

WHEN = '"2026-11-01T10:00:00Z"'


def identify(message_id: str, user_id: str, traits: str, *, timestamp: str = WHEN) -> str:
    """An identify RECORD line with its JSON fragments written as given (json.dumps cannot write 1e5000)."""
    envelope = f'"type": "identify", "messageId": {message_id}, "userId": {user_id}, "timestamp": {timestamp}'
    return '{"type": "RECORD", "stream": "identify", "record": {' + envelope + ', "traits": ' + traits + "}}"


def track(message_id: str, user_id: str, properties: str) -> str:
    envelope = (
        f'"type": "track", "messageId": {message_id}, "userId": {user_id}, "event": "Signed Up", "timestamp": {WHEN}'
    )
    context = '"context": {"traits": {"email": "t@x.io"}}'
    return (
        '{"type": "RECORD", "stream": "track", "record": {'
        + envelope
        + ', "properties": '
        + properties
        + ", "
        + context
        + "}}"
    )


def nested(levels: int, inner: str = "1") -> str:
    return '{"a": ' * levels + inner + "}" * levels


GOOD_BEFORE = identify('"m1"', '"u1"', '{"email": "u1@example.com", "plan": "pro"}')
GOOD_AFTER = identify('"m3"', '"u3"', '{"email": "u3@example.com", "plan": "team"}')
GOOD_EVENT = track('"m4"', '"u1"', '{"amount": 12.5}')

#: case → (the poison line, its stream, the reason, what the rejects file shows for it)
POISON: dict[str, tuple[str, str, str]] = {
    "property 1e5000": (
        identify('"m2"', '"u2"', '{"email": "u2@example.com", "plan": 1e5000}'),
        "identify",
        "invalid_number",
    ),
    "property 1e100000000": (
        identify('"m2"', '"u2"', '{"email": "u2@example.com", "plan": 1e100000000}'),
        "identify",
        "invalid_number",
    ),
    "property -1.8e308": (
        identify('"m2"', '"u2"', '{"email": "u2@example.com", "score": -1.8e308}'),
        "identify",
        "invalid_number",
    ),
    "property, an integer of 5,000 digits": (
        identify('"m2"', '"u2"', '{"email": "u2@example.com", "score": ' + ("7" * 5000) + "}"),
        "identify",
        "invalid_number",
    ),
    "property, an integer of 400 digits": (
        identify('"m2"', '"u2"', '{"email": "u2@example.com", "score": ' + ("7" * 400) + "}"),
        "identify",
        "invalid_number",
    ),
    "userId 1e5000": (identify('"m2"', "1e5000", '{"email": "u2@example.com"}'), "identify", "invalid_number"),
    "messageId (the idempotency key) 1e5000": (track("1e5000", '"u1"', '{"amount": 1}'), "track", "invalid_number"),
    "event property 1e5000": (track('"m2"', '"u1"', '{"amount": 1e5000}'), "track", "invalid_number"),
    "date property 1e5000": (
        identify('"m2"', '"u2"', '{"email": "u2@example.com", "signedUpAt": 1e5000}'),
        "identify",
        "invalid_number",
    ),
    "timestamp 1e100000000": (
        identify('"m2"', '"u2"', '{"email": "u2@example.com"}', timestamp="1e100000000"),
        "identify",
        "invalid_number",
    ),
    "property nested 40 deep": (
        identify('"m2"', '"u2"', '{"email": "u2@example.com", "plan": ' + nested(40) + "}"),
        "identify",
        "too_deep",
    ),
    "property nested 900 deep": (
        identify('"m2"', '"u2"', '{"email": "u2@example.com", "plan": ' + nested(900) + "}"),
        "identify",
        "too_deep",
    ),
    "event property nested 990 deep": (track('"m2"', '"u1"', '{"x": ' + nested(990) + "}"), "track", "too_deep"),
    "property nested 100,000 deep": (
        identify('"m2"', '"u2"', '{"email": "u2@example.com", "plan": ' + ("[" * 100_000 + "]" * 100_000) + "}"),
        "identify",
        "too_deep",
    ),
}


@pytest.fixture
def loops(make_sandbox: Any) -> Sandbox:
    return make_sandbox(
        properties=[
            {"key": "plan", "type": "string"},
            {"key": "score", "type": "number"},
            {"key": "signedUpAt", "type": "date"},
        ]
    )


def run_lines(sandbox: Sandbox, tmp_path: Path, *lines: str) -> Run:
    text = "".join(json.dumps(s) + "\n" for s in SCHEMAS) + "".join(x + "\n" for x in lines)
    text += '{"type": "STATE", "value": {"at": 1}}\n'
    # Generous: a run takes a few seconds; before the fix 1e100000000 ran for minutes.
    return run_target(sandbox_config(sandbox, tmp_path), text, tmp_path=tmp_path, timeout=90)


@pytest.mark.parametrize("case", list(POISON), ids=list(POISON))
def test_a_poison_record_is_rejected_alone_and_the_run_goes_on(loops: Sandbox, tmp_path: Path, case: str) -> None:
    poison, stream, reason = POISON[case]
    run = run_lines(loops, tmp_path, GOOD_BEFORE, poison, GOOD_AFTER, GOOD_EVENT)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Traceback" not in run.stderr
    assert {c["userId"] for c in loops.store.contacts()} == {"u1", "u3"}
    assert [e["eventName"] for e in loops.store.events()] == ["Signed Up"]
    assert run.final_state == {"at": 1}
    [rejected] = run.rejects
    assert (rejected["stream"], rejected["reason"]) == (stream, reason), rejected["message"]
    assert run.stream(stream)["rejected"] == 1
    text = json.dumps(rejected["record"])
    if reason == "too_deep":
        assert limits.CUT_MARK in text
        assert f"more than {limits.MAX_DEPTH} levels" in rejected["message"]
    else:
        assert "[number out of range" in text, text[:500]
    assert len(text) < 20_000, "the rejects file holds the record cut, not 100,000 brackets or 5,000 digits"


def test_the_message_names_where_the_number_is(loops: Sandbox, tmp_path: Path) -> None:
    poison = identify('"m2"', '"u2"', '{"email": "u2@example.com", "plan": 1e5000}')
    run = run_lines(loops, tmp_path, poison, GOOD_AFTER)
    [rejected] = run.rejects
    assert "'traits.plan' is 1E+5000" in rejected["message"]
    assert rejected["record"]["traits"] == {"email": "u2@example.com", "plan": "[number out of range: 1E+5000]"}
    assert rejected["record"]["userId"] == "u2"


def test_numbers_at_the_edge_of_a_double_are_delivered(loops: Sandbox, tmp_path: Path) -> None:
    """The largest double, a 300-digit integer and the smallest subnormal are numbers JavaScript reads: sent."""
    lines = [
        identify('"m1"', '"u1"', '{"email": "u1@example.com", "score": 1.7976931348623157e308}'),
        identify('"m2"', '"u2"', '{"email": "u2@example.com", "score": ' + ("9" * 300) + "}"),
        identify('"m3"', '"u3"', '{"email": "u3@example.com", "score": 5e-324}'),
        identify('"m4"', '"u4"', '{"email": "u4@example.com", "plan": ' + nested(limits.MAX_DEPTH - 2) + "}"),
    ]
    run = run_lines(loops, tmp_path, *lines)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.rejects == [] or {r["reason"] for r in run.rejects} == {"nested_value"}
    assert {c["userId"] for c in loops.store.contacts()} == {"u1", "u2", "u3", "u4"}


# --- the pieces, in memory


def deep_list(levels: int) -> list[Any]:
    root: list[Any] = []
    item = root
    for _ in range(levels - 1):
        child: list[Any] = []
        item.append(child)
        item = child
    return root


def test_the_rejects_writer_writes_any_record_cut_to_size(tmp_path: Path) -> None:
    """No recursion error, no minutes of work: too deep is cut at MAX_DEPTH, too big is a marker."""
    writer = RejectsWriter(tmp_path / "rejects.jsonl", "run1")
    record = {
        "deep": deep_list(5000),
        "huge": decimal.Decimal("1e100000000"),
        "long": 10**4000,
        "nan": decimal.Decimal("NaN"),
        "tiny": decimal.Decimal("1e-100000000"),
    }
    writer.write(stream="s", record=record, reason="too_deep", message="m")
    writer.close()
    [line] = (tmp_path / "rejects.jsonl").read_text().splitlines()
    written = json.loads(line)["record"]
    assert written["huge"] == "[number out of range: 1E+100000000]"
    assert written["long"] == "[number out of range: an integer of 4,001 digits]"
    assert written["nan"] == "[not a JSON number: NaN]"
    assert written["tiny"] == 0
    depth, item = 2, written["deep"]  # the record is level 1, its "deep" list level 2
    while isinstance(item, list):
        item, depth = item[0], depth + 1
    assert (item, depth) == (limits.CUT_MARK, limits.MAX_DEPTH + 1)


def test_the_check_names_the_first_problem_and_its_place() -> None:
    problem = limits.problem({"a": [1, {"b": decimal.Decimal("-2e400")}]})
    assert problem is not None and problem.reason == "invalid_number"
    assert "'a[1].b' is -2E+400" in problem.message
    problem = limits.problem({"traits": deep_list(limits.MAX_DEPTH)})
    assert problem is not None and problem.reason == "too_deep" and "'traits[0][0]" in problem.message
    assert limits.problem({"traits": deep_list(limits.MAX_DEPTH - 1), "n": 10**308, "f": 1e308}) is None
    assert limits.problem({"n": float("inf")}) is not None
    assert limits.problem({"n": 2**1024}) is not None
