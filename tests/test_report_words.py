"""The end-of-run table reads right: it says which columns count records and which count HTTP requests, shows
what became of every record of a stream (sent on its own, coalesced, folded into an event, unchanged...) so the
columns visibly add up to ``read``, and lists event properties only for events Loops accepted."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from runner import SANDBOX_KEY, record, run_target, schema, singer, state

from target_loops.report import record_fates, render_table

PEOPLE = {"userId": {"type": "string"}, "email": {"type": "string"}, "traits": {"type": "object"}}
EVENTS = {
    "userId": {"type": "string"},
    "event": {"type": "string"},
    "messageId": {"type": "string"},
    "timestamp": {"type": "string", "format": "date-time"},
    "properties": {"type": "object"},
}


def segment_input() -> str:
    """Three people, eight identifies (coalesced per person), one track each (the update folds into it)."""
    identifies = [
        record("identify", {"userId": f"u{i % 3}", "email": f"u{i % 3}@example.com", "traits": {"n": i}})
        for i in range(8)
    ]
    tracks = [
        record(
            "track",
            {
                "userId": f"u{i}",
                "event": "Order Completed",
                "messageId": f"m{i}",
                "timestamp": "2026-12-01T10:00:00Z",
                "properties": {"orderId": f"o{i}"},
            },
        )
        for i in range(3)
    ]
    return singer(schema("identify", PEOPLE), schema("track", EVENTS), *identifies, *tracks, state({"at": 1}))


def test_the_table_says_what_became_of_every_record_and_what_each_column_counts(
    make_sandbox: Any, tmp_path: Path
) -> None:
    loops = make_sandbox(properties=[{"key": "n", "type": "number"}])
    report_path = tmp_path / "report.json"
    config = {
        "api_key": SANDBOX_KEY,
        "base_url": loops.url,
        "ledger_url": f"sqlite:///{tmp_path / 'l.sqlite'}",
        "report_path": str(report_path),
    }
    run = run_target(config, segment_input(), tmp_path=tmp_path)
    assert run.returncode == 0, run.stderr
    identify = run.stream("identify")
    fates = dict(record_fates(identify, dry=False))
    assert sum(fates.values()) == identify["read"] == 8
    # Counted from the sandbox: 3 events carried the 3 contacts' updates, nothing else was written.
    writes = [r for r in loops.store.requests() if r["method"] != "GET" and "properties" not in r["path"]]
    assert len(writes) == 3 and all(r["path"].endswith("/events/send") for r in writes)
    assert fates == {"folded into an event": 3, "coalesced into those": 5}
    assert "identify: 8 read = 3 folded into an event + 5 coalesced into those" in run.stderr
    assert "track: 3 read = 3 sent" in run.stderr
    assert "rate_limited and retries count HTTP requests" in run.stderr

    # Again with a new ledger: Loops answers 409 to every event (it has them all), so no event property was sent.
    report_path.unlink()
    again = run_target(
        {**config, "ledger_url": f"sqlite:///{tmp_path / 'l2.sqlite'}"}, segment_input(), tmp_path=tmp_path
    )
    assert again.returncode == 0, again.stderr
    assert again.stream("track")["duplicates"] == 3
    assert json.loads(report_path.read_text())["event_properties"] == {}
    assert "event properties sent" not in again.stderr
    assert sum(n for _, n in record_fates(again.stream("identify"), dry=False)) == 8


def test_one_function_gives_every_row_of_the_table() -> None:
    """The HTML report reuses the table's rows: the fates line of a stream comes from ``record_fates`` alone."""
    row = {
        "stream": "identifies",
        "action": "upsert_contact",
        "read": 200,
        "sent": 2,
        "planned": 0,
        "unchanged": 40,
        "coalesced": 100,
        "folded": 50,
        "duplicates": 0,
        "rejected": 8,
        "skipped": 0,
        "rate_limited": 0,
        "retries": 0,
        "requests": 2,
        "rejected_by_reason": {"invalid_email": 8},
        "left_out": {},
        "skipped_calls": {},
    }
    assert record_fates(row, dry=False) == [
        ("sent on their own", 2),
        ("folded into an event", 50),
        ("coalesced into those", 100),
        ("unchanged", 40),
        ("rejected", 8),
    ]
    report = {
        "streams": [row],
        "dry_run": False,
        "completed": True,
        "elapsed_seconds": 1.0,
        "run_id": "r",
        "totals": {
            **{k: v for k, v in row.items() if isinstance(v, int)},
            "sending_seconds": 1.0,
            "requests_per_second": 2.0,
        },
        "http": {},
    }
    lines = render_table(report)
    assert "identifies: 200 read = 2 sent on their own + 50 folded into an event + 100 coalesced into those + " \
        "40 unchanged + 8 rejected" in lines  # fmt: skip


def test_an_empty_input_says_a_tap_may_have_failed(make_sandbox: Any, tmp_path: Path) -> None:
    """``tap | target-loops`` with a tap that failed: the target sees an input that ends at once. It cannot know
    why, so it says what to check (the README's recipes run under ``set -o pipefail``)."""
    loops = make_sandbox()
    config = {"api_key": SANDBOX_KEY, "base_url": loops.url, "ledger_url": f"sqlite:///{tmp_path / 'l.sqlite'}"}
    run = run_target(config, "", tmp_path=tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.states == []
    assert "the input was empty (not one line)" in run.stderr and "set -o pipefail" in run.stderr
    ran = run_target(config, singer(state({"at": 1})), tmp_path=tmp_path)
    assert "the input was empty" not in ran.stderr
