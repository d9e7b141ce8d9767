"""The README's shell blocks, as a newcomer pastes them from a fresh clone, so that they cannot drift.

Every ``bash`` block is checked for what makes a pasted recipe safe: the programs it calls exist where it says
(``.venv/bin/…`` or a PATH it sets), a sandbox started in the background is stopped at the end of its block (the next
block starts its own on the same port), a tap piped into the target runs under ``set -o pipefail``, and a STATE is
saved through a temporary file moved into place. The files the README asks you to create are ignored by git.

Two blocks are run for real in a copy of the repository's files (its ``.venv`` linked, no network): "The Loops
sandbox" on a free port, and the Segment backfill against the bundled sample archive and a sandbox, including a
failed tap in the middle of ``tap | target``, which must leave the saved STATE as it was. The others are run by their
own tests: the demo (``test_packaging.py``, from a built wheel), the Meltano blocks (``test_tap_segment_archive.py``,
``test_meltano_project.py``) and the warehouse recipe (``test_warehouse.py``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from runner import FAST_PACE, REPO, SAMPLES, SANDBOX_KEY

README = REPO / "README.md"


def bash_blocks() -> list[tuple[str, str]]:
    """(the heading above it, the block's text) of every ``bash`` block, indented ones included."""
    blocks = []
    heading = ""
    lines = README.read_text().splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
        if line.strip() == "```bash":
            indent = line.index("`")
            body = []
            i += 1
            while lines[i].strip() != "```":
                body.append(lines[i][indent:])
                i += 1
            blocks.append((heading, "\n".join(body) + "\n"))
        i += 1
    return blocks


def block(heading: str) -> str:
    (found,) = [text for title, text in bash_blocks() if title == heading]
    return found


def commands(text: str) -> list[str]:
    """The block's command lines (continuations joined, comments and blank lines left out)."""
    joined = re.sub(r"\\\n\s*", " ", text)
    return [line.split(" #")[0].strip() for line in joined.splitlines() if line.strip() and not line.startswith("#")]


# --- what every block must do


def test_every_program_is_called_where_the_block_installs_it() -> None:
    """``tap-segment-archive: command not found``: the clone's programs are in .venv/bin, not on PATH."""
    ours = {"target-loops", "tap-segment-archive", "target-loops-sandbox", "target-loops-demo"}
    for heading, text in bash_blocks():
        for line in commands(text):
            for segment in re.split(r"\|\|?|&&|;|\$\(", line):
                words = [w for w in segment.split() if not re.match(r"^[A-Z_]+=", w)]
                if words and words[0].rpartition("/")[2] in ours:
                    assert words[0].startswith(".venv/bin/"), (heading, line)


def test_a_sandbox_started_in_a_block_is_stopped_at_its_end() -> None:
    """Two blocks on the same port: the second sandbox would fail with "Address already in use" while the sync
    quietly went to the first."""
    for heading, text in bash_blocks():
        lines = commands(text)
        if any("target-loops-sandbox" in line and line.endswith("&") for line in lines):
            assert lines[-1].startswith("kill %1"), (heading, lines[-1])


def test_a_tap_piped_into_the_target_runs_under_pipefail_and_saves_state_through_a_temporary_file() -> None:
    """Without pipefail a failed tap is an empty input and a success; ``> state.json`` would truncate the state."""
    for heading, text in bash_blocks():
        lines = commands(text)
        for index, line in enumerate(lines):
            if re.search(r"tap-\S+ .*\| *\S*target-loops", line):
                assert "set -o pipefail" in lines[:index], (heading, line)
            assert not re.search(r">\s*state\.json\b(?!\.)", line), (heading, line)
            if "state.json.new" in line and ">" in line:
                assert "&& mv state.json.new state.json" in line and "test -s state.json.new" in line, line


def test_files_the_readme_asks_you_to_create_are_ignored_by_git() -> None:
    created = set()
    for _, text in bash_blocks():
        created.update(re.findall(r">\s*([\w.-]+\.(?:json|jsonl|new|env))\b", text))
        created.update(re.findall(r"mv \S+ ([\w.-]+)", text))
    created.update({"loops.json", ".env", "config.json"})  # named in the text: your key goes there
    assert {"loops.json", "tap.json", "dry.json", "state.json", "states.jsonl"} <= created
    proc = subprocess.run(
        ["git", "check-ignore", "--no-index", *sorted(created)], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert set(proc.stdout.split()) == created, f"not ignored: {created - set(proc.stdout.split())}"


# --- running blocks


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    """The repository's files as a fresh clone has them, with this checkout's .venv (nothing is installed)."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    target = tmp_path / "target-loops"
    for name in listed.decode().split("\0"):
        if name and (REPO / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, target / name)
    (target / ".venv").symlink_to(REPO / ".venv")
    return target


def run_block(clone: Path, text: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("TARGET_LOOPS_", "LOOPS_", "AWS_"))}
    full.update(XDG_DATA_HOME=str(clone.parent / "data"), **env)  # the default ledger: not the user's
    return subprocess.run(
        ["bash", "-e", "-c", text], cwd=clone, env=full, capture_output=True, text=True, timeout=300, check=False
    )


@pytest.mark.e2e  # runs a README block: a sandbox and the target in subprocesses
def test_the_sandbox_block_runs_as_written_and_stops_its_sandbox(clone: Path) -> None:
    port = free_port()
    text = block("The Loops sandbox").replace("8787", str(port))
    config = clone / "sample_streams" / "sandbox_config.json"
    config.write_text(config.read_text().replace("8787", str(port)))
    proc = run_block(clone, text)
    assert proc.returncode == 0, proc.stderr[-3000:]
    contacts = json.loads(proc.stdout.splitlines()[-1])  # curl's answer, after the target's STATE lines
    assert contacts, "the sync reached the block's sandbox"
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/_sandbox/state", timeout=5)


def backfill_block(archive: Path, base_url: str) -> str:
    """The backfill recipe with what only a user has replaced: their bucket (the sample archive), their key (the
    sandbox's, through LOOPS_API_KEY as the block reads it) and Loops' URL (the sandbox's, which has no rate limit:
    paced at ``FAST_PACE``); no pip, no AWS profile."""
    text = block("Backfill from a Segment export")
    lines = [line for line in text.splitlines() if not line.startswith((".venv/bin/pip install", "export AWS_PROFILE"))]
    text = "\n".join(lines) + "\n"
    assert "s3://acme-segment/segment-logs/<source-id>" in text
    text = text.replace("s3://acme-segment/segment-logs/<source-id>", str(archive))
    assert '"max_event_age_hours": 24}\\n\' "$LOOPS_API_KEY" > loops.json' in text
    return text.replace(
        '"max_event_age_hours": 24}\\n\' "$LOOPS_API_KEY" > loops.json',
        f'"max_event_age_hours": 24, "base_url": "{base_url}", "requests_per_second": {FAST_PACE}}}\\n\' '
        '"$LOOPS_API_KEY" > loops.json',
    )


@pytest.mark.e2e  # runs a README block: the tap and the target in subprocesses, against a sandbox
def test_the_backfill_block_saves_state_only_when_tap_and_target_both_succeeded(clone: Path, make_sandbox: Any) -> None:
    team = json.loads((SAMPLES / "sandbox_team.json").read_text())
    sandbox = make_sandbox(properties=team["properties"], lists=team["lists"])
    text = backfill_block(clone / "sample_streams" / "segment_archive", sandbox.url)
    proc = run_block(clone, text, LOOPS_API_KEY=SANDBOX_KEY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = json.loads((clone / "state.json").read_text())
    assert state["bookmarks"]["segment_archive"]["folders"], state
    assert sandbox.store.contacts(), "the real run reached Loops (the sandbox)"
    saved = (clone / "state.json").read_bytes()

    # The tap fails in step 3 (its bucket is gone): the pipeline fails and state.json is left as it was.
    step3 = text[text.index("# 3.") :]
    (clone / "tap.json").write_text(json.dumps({"paths": [str(clone / "gone")]}))
    proc = run_block(clone, "set -o pipefail\n" + step3, LOOPS_API_KEY=SANDBOX_KEY)
    assert proc.returncode != 0
    assert "gone does not exist" in proc.stderr
    assert (clone / "state.json").read_bytes() == saved
