"""Malformed input through the real CLI (issue 10, items 11 and 13; item 10's unreadable numbers at the reader).

Every problem is one line naming the input line, never a traceback. A line that cannot be read stops the run after
delivering and checkpointing what came before it (exit 1, the run report says ``completed: false``); a byte order
mark and blank lines are ignored; a RECORD of a known stream whose record JSON cannot carry (NaN, an integer too long
to read, nesting too deep to read, bytes that are not UTF-8) or that is not an object is a counted rejection of that
record alone (issue 21, item 7: one record must not stop every run).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from runner import Run, record, run_target, sandbox_config, schema, singer, state

from target_loops.sandbox import Sandbox

COLUMNS = {"id": "string", "user_id": "string", "email": "string", "plan": "string"}


@pytest.fixture
def loops(make_sandbox: Any) -> Sandbox:
    return make_sandbox(properties=[{"key": "plan", "type": "string"}])


def contact(n: int) -> dict[str, Any]:
    return record("identifies", {"id": f"i{n}", "user_id": f"u{n}", "email": f"u{n}@example.com", "plan": "pro"})


def line(message: dict[str, Any]) -> bytes:
    return json.dumps(message).encode() + b"\n"


HEAD = line(schema("identifies", COLUMNS, ["id"])) + line(contact(1)) + line(state({"at": 1}))
TAIL = line(contact(2)) + line(state({"at": 2}))


def run_bytes(sandbox: Sandbox, tmp_path: Path, data: bytes, **extra: Any) -> Run:
    path = tmp_path / "input.singer"
    path.write_bytes(data)
    return run_target(sandbox_config(sandbox, tmp_path, **extra), input_path=path, tmp_path=tmp_path)


def report(tmp_path: Path) -> dict[str, Any]:
    return json.loads((tmp_path / "report.json").read_text())


def user_ids(sandbox: Sandbox) -> set[str]:
    return {c["userId"] for c in sandbox.store.contacts()}


STOPPING = {
    "invalid JSON": (b'{"type": "RECORD", "stream": "identifies", "record": {"id": \n', "is not valid JSON"),
    "not UTF-8, not a record": (b'{"type": "STATE", "value": {"a": "\xff"}}\n', "byte 35 (b'\\xff') is not UTF-8"),
    "a STATE nested 5,000 deep": (
        b'{"type": "STATE", "value": {"at": ' + b"[" * 5000 + b"]" * 5000 + b"}}\n",
        "nests objects or lists too deep",
    ),
    "unknown message type": (b'{"type": "RECORDS", "stream": "identifies"}\n', "unknown message type 'RECORDS'"),
    "no type": (b'{"stream": "identifies", "record": {}}\n', 'has no "type"'),
    "a JSON list": (b"[1, 2]\n", "is JSON but not a Singer message (a list, not an object)"),
    "RECORD before its SCHEMA": (line(record("orders", {"id": "o1"})), "'orders' was encountered before"),
    "NaN outside a record": (b'{"type": "STATE", "value": {"a": NaN}}\n', "is not valid JSON"),
    "NaN in a record of an unknown stream": (
        b'{"type": "RECORD", "stream": "orders", "record": {"a": NaN}}\n',
        "'orders' was encountered before",
    ),
}


@pytest.mark.parametrize("case", list(STOPPING), ids=list(STOPPING))
def test_a_line_that_cannot_be_read_stops_the_run_naming_its_line(loops: Sandbox, tmp_path: Path, case: str) -> None:
    """Line 4 is bad: the contact of line 2 is delivered and its STATE (line 3) emitted, line 5 is never read;
    exit 1, one line naming line 4, no traceback, and the run report says completed: false (a stale report from an
    earlier run is gone)."""
    bad, words = STOPPING[case]
    (tmp_path / "report.json").write_text(json.dumps({"completed": True, "stale": True}))
    run = run_bytes(loops, tmp_path, HEAD + bad + TAIL)
    assert run.returncode == 1, run.stderr
    assert "Traceback" not in run.stderr
    errors = [text for text in run.stderr.splitlines() if "target-loops: input line 4" in text]
    assert len(errors) == 1 and words in errors[0], run.stderr
    assert user_ids(loops) == {"u1"}
    assert run.states == [{"at": 1}]
    assert report(tmp_path)["completed"] is False and "stale" not in report(tmp_path)


def test_a_byte_order_mark_and_blank_lines_are_ignored(loops: Sandbox, tmp_path: Path) -> None:
    data = b"\xef\xbb\xbf" + HEAD + b"\n  \r\n" + TAIL + b"\n"
    run = run_bytes(loops, tmp_path, data)
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr
    assert "Input line 1 starts with a byte order mark" in run.stderr
    assert "Input line 4 is blank" in run.stderr
    assert user_ids(loops) == {"u1", "u2"}
    assert run.final_state == {"at": 2}
    assert report(tmp_path)["completed"] is True


UNREADABLE_RECORDS = {
    "NaN": (b'{"type": "RECORD", "stream": "identifies", "record": {"id": "i9", "plan": NaN}}\n', "invalid_number"),
    "-Infinity": (
        b'{"type": "RECORD", "stream": "identifies", "record": {"id": "i9", "n": [-Infinity]}}\n',
        "invalid_number",
    ),
    "not UTF-8": (
        b'{"type": "RECORD", "stream": "identifies", "record": {"id": "i9", "plan": "caf\xe9"}}\n',
        "invalid_encoding",
    ),
    "nested 5,000 deep": (
        b'{"type": "RECORD", "stream": "identifies", "record": {"id": ' + b"[" * 5000 + b"]" * 5000 + b"}}\n",
        "too_deep",
    ),
    "an integer of 5,000 digits": (
        b'{"type": "RECORD", "stream": "identifies", "record": {"id": "i9", "n": ' + b"7" * 5000 + b"}}\n",
        "invalid_number",
    ),
    "record is a list": (b'{"type": "RECORD", "stream": "identifies", "record": [1, 2]}\n', "invalid_record"),
    "record is null": (b'{"type": "RECORD", "stream": "identifies", "record": null}\n', "invalid_record"),
}


@pytest.mark.parametrize("case", list(UNREADABLE_RECORDS), ids=list(UNREADABLE_RECORDS))
def test_a_record_json_cannot_carry_is_rejected_alone(loops: Sandbox, tmp_path: Path, case: str) -> None:
    """A RECORD of a known stream that cannot be read as an object: that record is a counted rejection (with the
    line number), the rest of the input is delivered and checkpointed, exit 0."""
    bad, reason = UNREADABLE_RECORDS[case]
    run = run_bytes(loops, tmp_path, HEAD + bad + TAIL)
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr
    assert user_ids(loops) == {"u1", "u2"}
    assert run.final_state == {"at": 2}
    [rejected] = run.rejects
    assert rejected["reason"] == reason and rejected["stream"] == "identifies"
    assert rejected["message"].startswith("input line 4:")
    assert rejected["run_id"] and rejected["at"]
    [stream] = report(tmp_path)["streams"]
    assert stream["rejected"] == 1
    assert stream["read"] == 3


def test_a_dry_run_leaves_the_rejects_file_alone(loops: Sandbox, tmp_path: Path) -> None:
    """Would-be rejects go to a file named after the plan (marked would_reject, with run id and time), and the
    report counts them; the real rejects file keeps exactly what it had."""
    rejects = tmp_path / "rejects.jsonl"
    rejects.write_text('{"earlier": "run"}\n')
    bad = line(record("identifies", {"id": "i9", "user_id": "u9", "email": "not-an-email", "plan": "pro"}))
    run = run_bytes(loops, tmp_path, HEAD + bad + TAIL, dry_run=True, dry_run_path=str(tmp_path / "plan.jsonl"))
    assert run.returncode == 0, run.stderr
    assert rejects.read_text() == '{"earlier": "run"}\n'
    [would] = [json.loads(x) for x in (tmp_path / "plan.would_reject.jsonl").read_text().splitlines()]
    assert would["would_reject"] is True and would["reason"] == "invalid_email"
    assert would["run_id"] and would["at"]
    plan = [json.loads(x) for x in (tmp_path / "plan.jsonl").read_text().splitlines()]
    assert plan and all("body" in request for request in plan)
    result = report(tmp_path)
    assert result["dry_run"] is True and result["streams"][0]["rejected"] == 1
    assert not [r for r in loops.store.requests() if r["method"] != "GET"]


def test_a_real_run_writes_its_rejects_with_run_id_and_time(loops: Sandbox, tmp_path: Path) -> None:
    bad = line(record("identifies", {"id": "i9", "user_id": "u9", "email": "not-an-email", "plan": "pro"}))
    first = run_bytes(loops, tmp_path, HEAD + bad + TAIL)
    second = run_bytes(loops, tmp_path, HEAD + bad + TAIL)
    assert first.returncode == second.returncode == 0, second.stderr
    lines = second.rejects
    assert len(lines) == 2 and all(x["at"] for x in lines)
    assert lines[0]["run_id"] != lines[1]["run_id"]


def test_text_input_without_bytes_is_read_the_same_way(loops: Sandbox, tmp_path: Path) -> None:
    """``target.listen(io.StringIO(...))`` (in-process use, the SDK's test suite) has no bytes underneath: the
    reader takes the text lines, with the same decisions."""
    import io

    from target_loops.target import InputError, TargetLoops

    text = (HEAD + b"\n" + TAIL).decode()
    target = TargetLoops(config=sandbox_config(loops, tmp_path, rejects_path=str(tmp_path / "r.jsonl")))
    target.listen(io.StringIO(text))
    assert user_ids(loops) == {"u1", "u2"}
    target = TargetLoops(config=sandbox_config(loops, tmp_path, rejects_path=str(tmp_path / "r.jsonl")))
    with pytest.raises(InputError, match="input line 2 is not valid JSON"):
        target.listen(io.StringIO(singer(schema("identifies", COLUMNS)) + "{oops\n"))


def test_the_fast_path_stays_the_sdk_reader(tmp_path: Path) -> None:
    """The reader is the SDK's msgspec reader with line numbers: same types for the same line."""
    from singer_sdk.contrib.msgspec import MsgSpecReader

    from target_loops.target import LineReader, TargetLoops

    assert issubclass(LineReader, MsgSpecReader) and TargetLoops.message_reader_class is LineReader
    seen: list[dict[str, Any]] = []
    reader = LineReader()
    path = tmp_path / "in.singer"
    path.write_bytes(line(record("s", {"n": 1.5, "m": 2})) + b"\xef\xbb\xbf" + line(state({"a": 1})))
    with path.open() as handle:
        counts = reader.process_lines(handle, {"RECORD": seen.append, "STATE": seen.append})
    assert counts == {"RECORD": 1, "STATE": 1} and reader.line_number == 2
    assert repr(seen[0]["record"]) == "{'n': Decimal('1.5'), 'm': 2}"
