"""tap-segment-archive refuses what it cannot do the way target-loops does: before any output, one line per problem,
each naming the setting or file and the fix, exit status 1, never a traceback.

A typo the tap ignored would replay the whole archive into Loops (``start_dat``), so an unknown key stops the run;
a missing path, an unreachable bucket or a state file that a failed pipeline left empty is one line a person can act
on. Every test runs the console module in a subprocess, as a user or Meltano does.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from runner import SAMPLES

SAMPLE = SAMPLES / "segment_archive"

pytestmark = pytest.mark.e2e  # the tap's CLI in a subprocess


def run(
    tmp_path: Path, config: dict[str, Any], *extra: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "tap-config.json"
    path.write_text(json.dumps(config))
    command = [sys.executable, "-m", "tap_segment_archive", "--config", str(path), *extra]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path, check=False)


def errors(proc: subprocess.CompletedProcess[str]) -> list[str]:
    """The ERROR lines, without the log prefix, minus the SDK's closing "Config validation failed"."""
    found = []
    for line in proc.stderr.splitlines():
        if "| ERROR" in line:
            text = line.rsplit("| ", 1)[1]
            if text != "Config validation failed":
                found.append(text)
    return found


def assert_refused(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout == "", "nothing may be emitted before the config is known to be right"
    assert "Traceback" not in proc.stderr, proc.stderr


def test_a_misspelled_setting_is_refused_naming_the_one_meant(tmp_path: Path) -> None:
    proc = run(tmp_path, {"paths": [str(SAMPLE)], "start_dat": "2026-11-02"})
    assert_refused(proc)
    assert errors(proc) == ['unknown setting "start_dat": did you mean "start_date"?']


def test_every_problem_of_a_config_at_once_one_line_each(tmp_path: Path) -> None:
    proc = run(
        tmp_path,
        {
            "paths": [str(SAMPLE), ""],
            "start_date": "last tuesday",
            "types": [],
            "state_interval_lines": 0,
            "settle_days": 100_000,
            "s3_endpoint_url": "localhost:9000",
            "storage_options": {"s3": "profile=segment"},
            "setle_days": 3,
            "_vars": {},
        },
    )
    assert_refused(proc)
    found = errors(proc)
    assert len(found) == 9, found
    text = "\n".join(found)
    for piece in (
        "paths",
        "start_date",
        "types",
        "state_interval_lines",
        "settle_days",
        "s3_endpoint_url",
        "storage_options",
        'did you mean "settle_days"',
        '"_vars"',
    ):
        assert piece in text, (piece, found)


def test_a_missing_path_is_one_line_naming_the_setting_and_the_fix(tmp_path: Path) -> None:
    proc = run(tmp_path, {"paths": [str(tmp_path / "nowhere")]})
    assert_refused(proc)
    (line,) = errors(proc)
    assert f"paths: {tmp_path / 'nowhere'} does not exist" in line
    assert "fix paths" in line


@pytest.mark.parametrize(
    ("content", "what"),
    [
        ("", "is empty"),
        ("\n", "is empty"),
        ('{"bookmarks": ', "is not valid JSON"),
        ("[1, 2]", "must hold a JSON object"),
        ('{"bookmarks": {"segment_archive": ["x"]}}', "bookmarks.segment_archive"),
    ],
)
def test_an_empty_or_invalid_state_file_is_one_line_naming_the_file(tmp_path: Path, content: str, what: str) -> None:
    state = tmp_path / "state.json"
    state.write_text(content)
    proc = run(tmp_path, {"paths": [str(SAMPLE)]}, "--state", str(state))
    assert_refused(proc)
    (line,) = errors(proc)
    assert str(state) in line and what in line, line
    assert "leave out --state" in line


def test_a_missing_config_file_is_one_line(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "tap_segment_archive", "--config", str(tmp_path / "nope.json")]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert_refused(proc)
    assert errors(proc) == [f"tap-segment-archive: config file {str(tmp_path / 'nope.json')!r} was not found"]


def test_files_that_are_not_archive_files_are_counted_in_one_line(tmp_path: Path) -> None:
    import shutil

    archive = tmp_path / "archive"
    shutil.copytree(SAMPLE, archive)
    for name in ("README.txt", "manifest.csv", ".DS_Store"):
        (archive / name).write_text("not an archive file\n")
    others = [p for p in archive.rglob("*") if p.is_file() and not p.name.endswith((".gz", ".json", ".jsonl"))]
    assert len(others) == 4  # with the sample's own README.md
    for config in ({"paths": [str(archive)]}, {"paths": [f"{tmp_path}/arch*"]}):  # a folder, or a glob naming it
        proc = run(tmp_path, config)
        assert proc.returncode == 0, proc.stderr
        said = [line for line in proc.stderr.splitlines() if "not *.gz" in line]
        assert len(said) == 1, proc.stderr
        assert "4 files" in said[0] and "left out" in said[0], said
        assert "WARNING" not in proc.stderr.replace("| WARNING  | tap-segment-archive            | /", ""), proc.stderr


# --- cloud storage


@pytest.fixture
def s3_server() -> Iterator[str]:
    """moto's S3-compatible server on 127.0.0.1 (a real HTTP server, in a thread); its endpoint URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def aws_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "TARGET_LOOPS_", "LOOPS_"))}
    env.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_EC2_METADATA_DISABLED="true",
        AWS_MAX_ATTEMPTS="1",
    )
    return env


def test_a_bucket_that_does_not_exist_is_one_line(tmp_path: Path, s3_server: str) -> None:
    proc = run(tmp_path, {"paths": ["s3://no-such-bucket/segment-logs"], "s3_endpoint_url": s3_server}, env=aws_env())
    assert_refused(proc)
    (line,) = errors(proc)
    assert "paths: s3://no-such-bucket/segment-logs cannot be listed" in line, line
    assert "bucket" in line and "credentials" in line, line


def test_an_unreachable_storage_endpoint_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed once the block ends: nothing listens there
    config = {"paths": ["s3://acme-segment/segment-logs"], "s3_endpoint_url": f"http://127.0.0.1:{port}"}
    proc = run(tmp_path, config, env=aws_env())
    assert_refused(proc)
    (line,) = errors(proc)
    assert "paths: s3://acme-segment/segment-logs cannot be listed" in line, line
    assert "s3_endpoint_url" in line, line
