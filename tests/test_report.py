"""What a person sees of a run: the end-of-run table, the dry-run plan, progress lines and the JSON report.

Counts are read from the ``report_path`` JSON and checked against the sandbox's own log; the printed table is
checked for its shape and its agreement with the report, never used as the source of a count.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from runner import SAMPLES, SANDBOX_KEY, record, run_target, schema, singer, state

from target_loops.report import TABLE_COLUMNS, Progress, human_duration, plural, render_table
from target_loops.sandbox import Sandbox

LIST = {"id": "cm06f5v0e45nf0ml5754o9cix", "name": "Newsletter", "description": "", "isPublic": True}
COLUMNS = {"id": "string", "user_id": "string", "email": "string", "plan": "string", "seats": "integer"}


def identifies(rows: list[dict[str, Any]]) -> str:
    return singer(schema("identifies", COLUMNS, ["id"]), *(record("identifies", r) for r in rows), state({"at": 1}))


def config_for(sandbox: Sandbox, tmp_path: Path, **extra: Any) -> dict[str, Any]:
    return {
        "api_key": SANDBOX_KEY,
        "base_url": sandbox.url,
        "ledger_url": f"sqlite:///{tmp_path / 'l.sqlite'}",
        **extra,
    }


def table_of(stderr: str, title: str) -> list[list[str]]:
    """The rows of the end-of-run table (header first), split on runs of spaces."""
    lines = stderr.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title))
    rows = []
    for line in lines[start + 1 :]:
        if not line or line.startswith(("rejected in", "skipped in", "requests:", "20")) or "|" in line:
            break
        rows.append(line.split())
    return rows


def test_the_end_of_run_table_agrees_with_the_report_and_the_sandbox(make_sandbox: Any, tmp_path: Path) -> None:
    loops = make_sandbox(properties=[{"key": "plan", "type": "string"}, {"key": "seats", "type": "number"}])
    report_path = tmp_path / "report.json"
    run = run_target(
        config_for(loops, tmp_path, report_path=str(report_path)),
        input_path=SAMPLES / "segment_export.singer",
        tmp_path=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    report = json.loads(report_path.read_text())
    rows = table_of(run.stderr, "Run summary")
    assert rows[0] == ["stream", "action", *TABLE_COLUMNS]
    printed = {row[0]: row for row in rows[1:]}
    for stream in report["streams"]:
        values = printed[stream["stream"]][2:]
        assert values == [f"{stream[c]:,}" for c in TABLE_COLUMNS], stream["stream"]
    # One vocabulary: every column is a report key, and the totals add up.
    assert printed["total"][1:] == [f"{report['totals'][c]:,}" for c in TABLE_COLUMNS]
    writes = [r for r in loops.store.requests() if r["method"] != "GET" and "properties" not in r["path"]]
    assert report["totals"]["requests"] == len(writes)
    assert report["totals"]["sent"] == sum(1 for r in writes if r["status"] == 200)
    assert report["totals"]["duplicates"] == 1  # the replayed Signed Up: a duplicate, neither sent nor rejected
    # The overall rate is over the sending time, and said once.
    assert f"{report['totals']['requests_per_second']:.1f} requests/s overall" in run.stderr
    # The JSON goes to report_path; the log only points to it.
    assert "Run report written to" in run.stderr and '"streams"' not in run.stderr
    assert report["run_id"] and all(line["run_id"] == report["run_id"] for line in run.rejects)
    # The event properties each event name sends, which Loops wants created in its Events settings first.
    assert report["event_properties"]["Order Completed"] == {
        "currency": "string",
        "orderId": "string",
        "revenue": "number",
    }
    assert "Order Completed: sends currency (string), orderId (string), revenue (number)" in run.stderr
    # Plain lines: the table has no log prefix.
    assert not any("| INFO" in line for line in run.stderr.splitlines() if line.startswith(("identify ", "track ")))


def test_the_dry_run_plan_is_a_plain_block_that_matches_the_real_run(make_sandbox: Any, tmp_path: Path) -> None:
    team = make_sandbox(lists=[LIST])
    rows = [{"id": f"i{i}", "user_id": f"u{i % 7}", "email": f"u{i % 7}@example.com", "plan": "pro", "seats": i}
            for i in range(20)]  # fmt: skip
    rows.append({"id": "bad", "email": None, "user_id": None})
    text = identifies(rows)
    dry_report, real_report, plan = tmp_path / "dry.json", tmp_path / "real.json", tmp_path / "plan.jsonl"
    dry = run_target(
        config_for(
            team, tmp_path, dry_run=True, dry_run_path=str(plan), report_path=str(dry_report), requests_per_second=10
        ),
        text,
        tmp_path=tmp_path,
    )
    assert dry.returncode == 0, dry.stderr
    assert [r for r in team.store.requests() if r["method"] != "GET"] == []  # a read-only preflight
    assert "Dry run: what a real run would send" in dry.stderr
    assert "7 requests at 10/s: about 0.7 s" in dry.stderr
    assert "2 contact properties to create: plan (string), seats (number)" in dry.stderr
    assert "event properties per event name" not in dry.stderr  # identifies only: no event, nothing to add in Loops
    assert len(plan.read_text().splitlines()) == 7
    real = run_target(config_for(team, tmp_path, report_path=str(real_report)), text, tmp_path=tmp_path)
    assert real.returncode == 0, real.stderr
    planned, done = json.loads(dry_report.read_text()), json.loads(real_report.read_text())
    (p,), (d,) = planned["streams"], done["streams"]
    assert p["planned"] == d["requests"] == d["sent"] == 7
    for key in ("read", "unchanged", "coalesced", "folded", "rejected", "rejected_by_reason", "duplicates"):
        assert p[key] == d[key], key
    assert planned["properties"]["would_create"] == done["properties"]["created"]


def test_plurals_and_durations_read_as_english() -> None:
    assert (plural(1, "request"), plural(2, "request"), plural(1_000, "request")) == (
        "1 request",
        "2 requests",
        "1,000 requests",
    )
    assert plural(1, "contact property", "contact properties") == "1 contact property"
    assert (human_duration(0.4), human_duration(75), human_duration(4120)) == ("0.4 s", "1 min 15 s", "1 h 9 min")


def test_the_run_report_schema(make_sandbox: Any, tmp_path: Path) -> None:
    team = make_sandbox(lists=[LIST])
    report = tmp_path / "out" / "report.json"
    rows = [{"id": "i1", "user_id": "u1", "email": "a@example.com", "plan": "pro", "seats": 3}]
    run = run_target(config_for(team, tmp_path, report_path=str(report)), identifies(rows), tmp_path=tmp_path)
    assert run.returncode == 0, run.stderr
    data = json.loads(report.read_text())
    assert set(data) == {"run_id", "started_at", "finished_at", "elapsed_seconds", "completed", "dry_run", "streams",
                         "totals", "http", "event_properties", "event_definitions", "properties", "rejects",
                         "max_rejects", "audiences", "new_contacts"}  # fmt: skip
    (stream,) = data["streams"]
    assert set(stream) == {
        "stream", "action", "read", "sent", "planned", "unchanged", "coalesced", "folded", "duplicates", "rejected",
        "rejected_by_reason", "left_out", "skipped", "skipped_calls", "resubscribe_blocked", "reserved_not_sent",
        "requests", "retries", "rate_limited", "joined", "left", "exported",
    }  # fmt: skip
    assert set(data["new_contacts"]) == {
        "policy", "unknown_to_ledger", "looked_up", "found_in_loops", "not_in_loops", "exported", "csv_path",
        "held_back", "upload_pending", "confirmed_uploaded", "held_back_records",
    }  # fmt: skip
    assert (data["new_contacts"]["policy"], data["new_contacts"]["unknown_to_ledger"]) == ("create", 1)
    assert set(TABLE_COLUMNS) <= set(stream)
    assert {"answer_ms_p50", "answer_ms_p95", "in_flight_level"} <= set(data["http"])
    assert (stream["stream"], stream["action"], stream["read"], stream["sent"]) == (
        "identifies",
        "upsert_contact",
        1,
        1,
    )


def test_progress_lines_keep_the_whole_run_in_view(make_sandbox: Any, tmp_path: Path) -> None:
    sandbox = make_sandbox(lenient=True, latency_ms=20)
    rows = [{"id": f"i{i}", "user_id": f"u{i}", "email": f"u{i}@example.com", "plan": "p"} for i in range(40)]
    run = run_target(
        config_for(sandbox, tmp_path, progress_seconds=1, requests_per_second=20, unknown_properties="drop"),
        identifies(rows),
        tmp_path=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    lines = [line for line in run.stderr.splitlines() if "Progress:" in line]
    assert lines, run.stderr
    assert "/40 requests (" in lines[0]
    for words in ("requests/s, ETA", "rate_limited 0", "retries 0", "rejected 0", "answers", "in flight up to"):
        assert words in lines[0], words


def test_progress_lines_count_retries_when_they_happen_not_when_their_request_ends(
    make_sandbox: Any, tmp_path: Path
) -> None:
    """A progress line printed while a request waits to be sent again already counts that retry: never fewer
    retries than the "Retrying ..." lines logged before it (0.x counted a retry only once its request ended, so a
    line printed during a long backoff said ``retries 0`` under the retry's own log line)."""
    sandbox = make_sandbox(lenient=True)
    sandbox.inject("500", count=2, path="/v1/contacts/update")  # the first two requests: back off 2 to 4 s
    rows = [{"id": f"i{i}", "user_id": f"u{i}", "email": f"u{i}@example.com", "plan": "p"} for i in range(40)]
    run = run_target(
        config_for(
            sandbox,
            tmp_path,
            progress_seconds=1,
            requests_per_second=10,
            retry_backoff_seconds=4,
            unknown_properties="drop",
        ),
        identifies(rows),
        tmp_path=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    assert sum(1 for r in sandbox.store.requests() if r["status"] == 500) == 2
    retried, seen = 0, []
    for line in run.stderr.splitlines():
        if "Retrying " in line:
            retried += 1
        elif "Progress:" in line:
            seen.append((retried, int(line.split("retries ")[1].split(",")[0])))
    assert retried == 2 and run.report["totals"]["retries"] == 2, run.stderr
    assert any(logged for logged, _ in seen), f"no progress line during the backoff: {run.stderr}"
    assert all(shown >= logged for logged, shown in seen), seen


def test_progress_line_in_memory() -> None:
    import logging

    progress = Progress(logging.getLogger("test"), interval=60, http_stats=lambda: {})
    progress.begin_batch(1)
    assert progress.line().startswith("Progress: 0/1 requests (0%)")
    table = render_table(
        {
            "streams": [],
            "dry_run": False,
            "completed": False,
            "elapsed_seconds": 1.0,
            "run_id": "r",
            "totals": {**dict.fromkeys(TABLE_COLUMNS, 0), "requests": 0},
            "http": {},
        }
    )
    assert table[0].startswith("Run summary (NOT completed")


@pytest.mark.parametrize("asked", [False, True])
def test_the_sdks_noise_is_off_unless_asked(make_sandbox: Any, tmp_path: Path, asked: bool) -> None:
    sandbox = make_sandbox(lenient=True)
    rows = [{"id": "i1", "user_id": "u1", "email": "a@example.com"}]
    env = os.environ.copy()
    if asked:
        os.environ["LOGLEVEL"] = "INFO"  # the SDK's own switch (TARGET_LOOPS_LOGLEVEL works too)
    try:
        run = run_target(config_for(sandbox, tmp_path), identifies(rows), tmp_path=tmp_path)
    finally:
        os.environ.clear()
        os.environ.update(env)
    assert run.returncode == 0, run.stderr
    assert ("METRIC:" in run.stderr) is asked
    assert ("Skipping parse of env var settings" in run.stderr) is asked


def test_help_shows_two_invocations_and_points_to_about() -> None:
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "target_loops.target", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "Execute the Singer target." not in out
    assert "tap-postgres --config tap.json | target-loops --config config.json" in out
    assert "target-loops --config config.json --input sample_streams/segment_export.singer" in out
    assert "--about" in out and "TARGET_LOOPS_API_KEY" in out
    assert "``" not in out and ":class:" not in out  # no reStructuredText markup


def test_about_shows_the_real_batch_size_and_no_setting_that_does_nothing() -> None:
    import subprocess
    import sys

    about = subprocess.run(
        [sys.executable, "-m", "target_loops.target", "--about", "--format=json"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    settings = json.loads(about)["settings"]["properties"]
    assert settings["batch_size_rows"]["default"] == 500
    assert "load_method" not in settings and "faker_config" not in settings


def test_settings_from_the_environment_outside_meltano(make_sandbox: Any, tmp_path: Path) -> None:
    """``--config=ENV`` with ``TARGET_LOOPS_*`` variables, as the README's "Configuration from the environment"
    says; the key-required message names that way too."""
    import subprocess
    import sys

    sandbox = make_sandbox(lenient=True)
    text = identifies([{"id": "i1", "user_id": "u1", "email": "a@example.com"}])
    env = {k: v for k, v in os.environ.items() if not k.startswith("TARGET_LOOPS_")}
    env.update(
        TARGET_LOOPS_API_KEY=SANDBOX_KEY,
        TARGET_LOOPS_BASE_URL=sandbox.url,
        TARGET_LOOPS_LEDGER_URL=f"sqlite:///{tmp_path / 'l.sqlite'}",
        TARGET_LOOPS_REJECTS_PATH=str(tmp_path / "r.jsonl"),
    )
    command = [sys.executable, "-m", "target_loops.target", "--config=ENV"]
    run = subprocess.run(command, input=text, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert sandbox.store.find(user_id="u1") is not None
    del env["TARGET_LOOPS_API_KEY"]
    missing = subprocess.run(command, input=text, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert missing.returncode != 0
    assert "TARGET_LOOPS_API_KEY" in missing.stderr and "--config=ENV" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_a_flush_cut_short_leaves_its_unsent_requests_out_of_the_plan() -> None:
    import logging

    from target_loops.operations import Outcome, OutcomeKind

    progress = Progress(logging.getLogger("test"), interval=3600)
    progress.begin_batch(10)
    for _ in range(4):
        progress.note(Outcome(OutcomeKind.DELIVERED))
    progress.end_batch(10)  # the run stopped after 4 of 10
    assert (progress.done, progress.planned) == (4, 4)
    progress.begin_batch(3)
    for _ in range(3):
        progress.note(Outcome(OutcomeKind.DELIVERED))
    progress.end_batch(3)
    assert (progress.done, progress.planned) == (7, 7)
