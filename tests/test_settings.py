"""Settings through the real CLI (issue 10 items 1-4 and 12, issue 13 item 9): what a config may hold, checked in
full before anything is read or sent, every problem listed at once, never a traceback."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from runner import SANDBOX_KEY, Run, record, run_target, sandbox_config, schema, singer, state

from target_loops.sandbox import Sandbox
from target_loops.settings import OWN_FIELDS, SETTINGS, Settings, load_settings, unknown_settings
from target_loops.target import TargetLoops

COLUMNS = {"id": "string", "user_id": "string", "email": "string", "plan": "string"}
INPUT = singer(
    schema("identifies", COLUMNS, ["id"]),
    record("identifies", {"id": "i1", "user_id": "u1", "email": "u1@example.com", "plan": "pro"}),
    state({"at": 1}),
)


@pytest.fixture
def loops(make_sandbox: Any) -> Sandbox:
    return make_sandbox(properties=[{"key": "plan", "type": "string"}])


def refused(run: Run, sandbox: Sandbox | None = None) -> list[str]:
    """The error lines of a run that was refused before anything was read or sent."""
    assert run.returncode == 1, run.stderr
    assert "Traceback" not in run.stderr
    if sandbox is not None:
        assert sandbox.store.requests() == [], "nothing may reach Loops"
    return [text.split("| ", 3)[-1] for text in run.stderr.splitlines() if "ERROR" in text]


# --- item 1: unknown settings


def test_an_unknown_setting_is_refused_with_the_nearest_name_before_anything_is_sent(
    loops: Sandbox, tmp_path: Path
) -> None:
    """``"dryrun": true`` used to run a real sync."""
    run = run_target(sandbox_config(loops, tmp_path, dryrun=True), INPUT, tmp_path=tmp_path)
    errors = refused(run, loops)
    assert 'unknown setting "dryrun": did you mean "dry_run"?' in errors
    assert loops.store.contacts() == []


def test_every_problem_is_listed_at_once(loops: Sandbox, tmp_path: Path) -> None:
    (tmp_path / "folder").mkdir()
    config = sandbox_config(
        loops,
        tmp_path,
        dryrun=True,
        _comment="x",
        Report_Path="y",
        max_event_age_hours=100_000_000,
        max_concurrency=0,
        unmapped_streams="eror",
        report_path=str(tmp_path / "folder"),
        base_url="http://user:secret@127.0.0.1:1/api",
        mappings=[{"stream": "x", "action": "upsert"}],
    )
    errors = "\n".join(refused(run_target(config, INPUT, tmp_path=tmp_path), loops))
    assert 'unknown setting "dryrun": did you mean "dry_run"?' in errors
    assert 'unknown setting "_comment"' in errors
    assert 'unknown setting "Report_Path": did you mean "report_path"?' in errors
    assert "100000000 is greater than the maximum of 876000 in config['max_event_age_hours']" in errors
    assert "0 is less than the minimum of 1 in config['max_concurrency']" in errors
    assert "'eror' is not one of ['error', 'skip'] in config['unmapped_streams']" in errors
    assert "is a folder; name a file in it" in errors and "report_path" in errors
    assert "user-info" in errors and "secret" not in errors
    assert "mappings[0]" in errors
    assert "OverflowError" not in errors


def test_the_sdks_settings_are_accepted(loops: Sandbox, tmp_path: Path) -> None:
    config = sandbox_config(
        loops,
        tmp_path,
        stream_maps={"identifies": {"plan": "plan.upper()"}},
        stream_map_config={"k": 1},
        flattening_enabled=False,
        flattening_max_depth=1,
        flattening_separator="__",
        flattening_max_key_length=255,
        validate_records=True,
        add_record_metadata=False,
        batch_size_rows=100,
    )
    run = run_target(config, INPUT, tmp_path=tmp_path)
    assert run.returncode == 0, run.stderr
    assert [c["plan"] for c in loops.store.contacts()] == ["PRO"]


def test_accepted_settings_are_exactly_the_targets_and_the_sdks() -> None:
    """The SDK's own are those it merges for this target's capabilities (not hard_delete, batch_config or
    activate_version, which need capabilities target-loops does not declare). Meltano passes a loader only the
    settings it was given: its "_" extras never reach the config file."""
    sdk = {
        "stream_maps",
        "stream_map_config",
        "flattening_enabled",
        "flattening_max_depth",
        "flattening_max_key_length",
        "flattening_separator",
        "validate_records",
        "add_record_metadata",
        "batch_size_rows",
    }
    assert TargetLoops.accepted_settings() == {f.name for f in OWN_FIELDS} | sdk
    # load_method (a database table's append/upsert/overwrite) and faker_config (the SDK's faker extra, not
    # installed) do nothing for Loops: they are not offered, so a config naming them is refused like a typo.
    assert {"load_method", "faker_config"}.isdisjoint(TargetLoops.accepted_settings())
    assert unknown_settings({"hard_delete": True}, TargetLoops.accepted_settings()) == [
        'unknown setting "hard_delete": not a target-loops or Singer SDK setting (`target-loops --about` lists them '
        "all); remove it"
    ]


# --- item 2: ranges in the schema, shown by --about


def test_about_shows_the_ranges(tmp_path: Path) -> None:
    about = subprocess.run(
        [sys.executable, "-m", "target_loops.target", "--about", "--format=json"], capture_output=True, text=True
    )
    settings = json.loads(about.stdout)["settings"]["properties"]
    assert settings["max_event_age_hours"]["maximum"] == 876_000
    assert settings["requests_per_second"]["minimum"] == 1
    assert settings["unknown_properties"]["enum"] == ["create", "drop", "error"]
    markdown = subprocess.run(
        [sys.executable, "-m", "target_loops.target", "--about", "--format=markdown"], capture_output=True, text=True
    ).stdout
    assert "From 1 to 876,000." in markdown


def test_the_schema_is_derived_from_the_settings_object() -> None:
    """Issue 13.9: one frozen object, every default stated once (the schema's defaults are the object's)."""
    properties = SETTINGS.to_dict()["properties"]
    assert list(properties) == [f.name for f in OWN_FIELDS]
    for f in OWN_FIELDS:
        expected = list(f.default) if isinstance(f.default, tuple) else f.default
        assert properties[f.name].get("default") == expected, f.name
    assert properties["max_concurrency"]["default"] == 32
    settings = Settings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.dry_run = True  # type: ignore[misc]
    assert "api_key" not in repr(Settings(api_key="k"))


def test_settings_from_a_config_take_the_types_the_run_needs(tmp_path: Path) -> None:
    from decimal import Decimal

    accepted = TargetLoops.accepted_settings()
    settings, problems = load_settings(
        {"api_key": " key\r\n", "retry_backoff_seconds": Decimal("0.5"), "rejects_path": str(tmp_path / "r")},
        accepted,
    )
    assert problems == []
    assert settings.api_key == "key" and settings.retry_backoff_seconds == 0.5
    client = settings.client_settings()
    assert client.api_key == "key" and client.max_concurrency == 32 and client.base_url == "https://app.loops.so/api"


# --- item 3: the config file itself


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (None, "was not found"),
        ('{"api_key": "k",\n  "dry_run": tru}\n', "is not valid JSON: Expecting value at line 2, column 14"),
        ("", "is not valid JSON: Expecting value at line 1, column 1"),
        ("[1, 2]", "must hold a JSON object of settings, not list"),
    ],
    ids=["missing", "invalid", "empty", "a list"],
)
def test_a_config_file_that_cannot_be_read_is_one_line(tmp_path: Path, content: str | None, words: str) -> None:
    path = tmp_path / "config.json"
    if content is not None:
        path.write_text(content)
    run = subprocess.run(
        [sys.executable, "-m", "target_loops.target", "--config", str(path)],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        cwd=tmp_path,
    )
    assert run.returncode == 1
    assert "Traceback" not in run.stderr
    [error] = [text for text in run.stderr.splitlines() if "ERROR" in text]
    assert f"target-loops: config file {str(path)!r} {words}" in error


# --- item 4 (the target's side): the key as it is pasted


def test_surrounding_whitespace_of_the_key_is_stripped(loops: Sandbox, tmp_path: Path) -> None:
    run = run_target(sandbox_config(loops, tmp_path, api_key=f" {SANDBOX_KEY}\r\n"), INPUT, tmp_path=tmp_path)
    assert run.returncode == 0, run.stderr
    assert len(loops.store.contacts()) == 1


@pytest.mark.parametrize("key", ["…your key…", "two words", "tab\tinside"])
def test_a_key_that_cannot_be_a_loops_key_is_a_config_error(loops: Sandbox, tmp_path: Path, key: str) -> None:
    run = run_target(sandbox_config(loops, tmp_path, api_key=key), INPUT, tmp_path=tmp_path)
    errors = refused(run, loops)
    assert any(e.startswith("api_key contains") for e in errors), errors
    assert key not in run.stderr


SECRET = "sk_live_9fQ2xLr7Tq"


@pytest.mark.parametrize(
    ("setting", "value", "kind"),
    [
        ("api_key", [SECRET], "a list"),
        ("api_key", {"key": SECRET}, "an object"),
        ("api_key", [[SECRET, 3]], "a list"),
        ("api_key", 918273645546372819, "a number"),
        ("ledger_url", [f"postgresql://loader:{SECRET}@db/ledger"], "a list"),
    ],
    ids=["list", "object", "nested list", "number", "ledger_url list"],
)
def test_a_secret_of_the_wrong_type_is_refused_without_showing_it(
    loops: Sandbox, tmp_path: Path, setting: str, value: Any, kind: str
) -> None:
    """The SDK's schema message echoed the value (``['sk_live_…'] is not of type 'string'``). Through the CLI: the
    error names the setting and the type, and no output of the run holds the secret."""
    run = run_target(sandbox_config(loops, tmp_path, **{setting: value}), INPUT, tmp_path=tmp_path)
    errors = refused(run, loops)
    assert any(e.startswith(f"{setting} must be a string, not {kind}") for e in errors), errors
    for text in (SECRET, str(value), json.dumps(value)):
        assert text not in run.stderr and text not in run.stdout


# --- item 12: the files a run writes


def test_files_the_run_cannot_write_are_refused_at_start(loops: Sandbox, tmp_path: Path) -> None:
    """A bad report_path used to fail the run after everything was delivered, with a traceback."""
    (tmp_path / "folder").mkdir()
    (tmp_path / "a-file").write_text("")
    config = sandbox_config(
        loops,
        tmp_path,
        report_path=str(tmp_path / "folder"),
        rejects_path=str(tmp_path / "a-file" / "rejects.jsonl"),
        ledger_url=f"sqlite:///{tmp_path / 'folder'}",
    )
    errors = "\n".join(refused(run_target(config, INPUT, tmp_path=tmp_path), loops))
    assert f"report_path {str(tmp_path / 'folder')!r} is a folder; name a file in it" in errors
    assert f"rejects_path {str(tmp_path / 'a-file' / 'rejects.jsonl')!r} cannot be created" in errors
    assert "ledger_url" in errors and "is a folder" in errors
    assert loops.store.contacts() == []


def test_a_dry_run_checks_its_plan_file(tmp_path: Path) -> None:
    (tmp_path / "plan").mkdir()
    config = {"dry_run": True, "dry_run_path": str(tmp_path / "plan"), "report_path": str(tmp_path / "plan")}
    errors = "\n".join(refused(run_target(config, INPUT, tmp_path=tmp_path)))
    assert "dry_run_path" in errors and "report_path" in errors


def test_two_settings_naming_one_file_are_refused(loops: Sandbox, tmp_path: Path) -> None:
    same = str(tmp_path / "out.json")
    errors = refused(
        run_target(sandbox_config(loops, tmp_path, report_path=same, rejects_path=same), INPUT, tmp_path=tmp_path)
    )
    assert any("name the same file" in e for e in errors), errors


def test_a_bad_ledger_url_is_one_line(loops: Sandbox, tmp_path: Path) -> None:
    errors = refused(
        run_target(sandbox_config(loops, tmp_path, ledger_url="not a url"), INPUT, tmp_path=tmp_path), loops
    )
    assert any("is not a database URL" in e for e in errors), errors


def test_a_corrupt_sqlite_ledger_is_one_line_and_nothing_is_written(loops: Sandbox, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.sqlite"
    ledger.write_bytes(b"SQLite format 3\x00" + b"\xff" * 4096)
    with pytest.raises(sqlite3.DatabaseError):
        sqlite3.connect(ledger).execute("select * from sqlite_master").fetchall()
    report = tmp_path / "report.json"
    run = run_target(sandbox_config(loops, tmp_path, report_path=str(report)), INPUT, tmp_path=tmp_path)
    assert run.returncode == 1, run.stderr
    assert "Traceback" not in run.stderr
    [error] = [text for text in run.stderr.splitlines() if "ERROR" in text]
    assert "cannot open the ledger" in error and "corrupt" in error
    assert [r for r in loops.store.requests() if r["method"] != "GET"] == []
    assert json.loads(report.read_text())["completed"] is False


def test_max_new_properties_reaches_the_preflight(make_sandbox: Any, tmp_path: Path) -> None:
    """The setting bounds what a run creates: a SCHEMA declaring more stops the run before any write."""
    sandbox = make_sandbox()
    columns = {"id": "string", "email": "string", **{f"trait_{n}": "string" for n in range(4)}}
    text = singer(schema("identifies", columns, ["id"]), record("identifies", {"id": "1", "email": "a@example.com"}))
    run = run_target(sandbox_config(sandbox, tmp_path, max_new_properties=3), text, tmp_path=tmp_path)
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert [r for r in sandbox.store.requests() if r["method"] != "GET"] == []
    ok = run_target(sandbox_config(sandbox, tmp_path, max_new_properties=4), text, tmp_path=tmp_path)
    assert ok.returncode == 0, ok.stderr


def test_meltano_yml_declares_exactly_the_settings_the_target_accepts() -> None:
    """meltano.yml's loader lists every setting (so `meltano config set` knows them) and none the target refuses."""
    import yaml

    project = yaml.safe_load((Path(__file__).resolve().parent.parent / "meltano.yml").read_text())
    (loader,) = [p for p in project["plugins"]["loaders"] if p["name"] == "target-loops"]
    declared = {s["name"] for s in loader["settings"]}
    accepted = TargetLoops.accepted_settings()
    assert declared - accepted == set(), "declared in meltano.yml but refused by the target"
    assert {f.name for f in OWN_FIELDS} - declared == set(), "target settings missing from meltano.yml"
