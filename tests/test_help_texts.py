"""What a newcomer reads first: ``--help`` and ``--about`` of the target, the demo's ``--help``, and the rule the
target suggests for a stream no rule matches."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from target_loops.fields import suggest_rule


def output(*command: str, columns: int = 80) -> str:
    env = {"COLUMNS": str(columns), "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, *command], capture_output=True, text=True, check=True, env=env).stdout


@pytest.mark.e2e  # the CLI in a subprocess
@pytest.mark.parametrize("columns", [60, 80, 120])
def test_target_help_never_wraps_inside_a_command(columns: int) -> None:
    text = output("-m", "target_loops.target", "--help", columns=columns)
    assert "target-\n" not in text and "--\n" not in text, text
    for command in (
        "target-loops --about --format=markdown",
        "target-loops --config=ENV",
        "tap-postgres --config tap.json | target-loops --config config.json",
    ):
        assert command in text, (command, text)


@pytest.mark.e2e  # the CLI in a subprocess
def test_about_markdown_names_every_action_in_the_mappings_description() -> None:
    text = output("-m", "target_loops.target", "--about", "--format", "markdown")
    (row,) = [line for line in text.splitlines() if line.startswith("| mappings |")]
    for action in ("upsert_contact", "send_event", "delete_contact", "segment", "skip"):
        assert action in row, (action, row)
    about = json.loads(output("-m", "target_loops.target", "--about", "--format", "json"))
    assert "skip" in about["settings"]["properties"]["mappings"]["description"]


@pytest.mark.e2e  # the CLI in a subprocess
def test_the_demo_help_has_no_raw_markup() -> None:
    text = output("-m", "target_loops.demo", "--help")
    assert "``" not in text, text
    assert "target-loops-demo" in text and "tap-segment-archive | target-loops" in text


@pytest.mark.parametrize(
    ("stream", "columns", "action"),
    [
        ("orders", ["order_id", "event", "email"], "send_event"),
        ("orders", ["order_id", "email", "total"], "send_event"),  # a table of orders: one event per row
        ("public-orders", ["id", "order_id", "user_id", "amount"], "send_event"),
        ("web_app-order_completed", ["id", "user_id", "revenue"], "send_event"),
        ("signed_up", ["id", "user_id"], "send_event"),
        ("users", ["id", "email", "first_name"], "upsert_contact"),
        ("public-customers", ["customer_id", "email"], "upsert_contact"),
        ("crm_contacts", ["email", "plan"], "upsert_contact"),
        ("my_stream", [], "upsert_contact"),
    ],
)
def test_the_suggested_rule_fits_the_stream_name_and_its_columns(stream: str, columns: list[str], action: str) -> None:
    assert suggest_rule(stream, columns) == json.dumps({"action": action, "stream": stream}, separators=(",", ":"))
