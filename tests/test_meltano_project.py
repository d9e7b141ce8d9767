"""Meltano as a user meets it: this repository's ``meltano.yml`` declares everything the plugins can do, and the
README's "Add target-loops to your own Meltano project" works in a scratch project (``meltano install``,
``meltano config list``, ``meltano invoke target-loops --about``, with a setting from an environment variable).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from runner import REPO
from test_tap_segment_archive import meltano_bin  # noqa: F401  # the cached Meltano install, shared

from tap_segment_archive.tap import TapSegmentArchive
from target_loops.settings import numbers_from_text
from target_loops.target import TargetLoops


def project_plugins() -> dict[str, dict[str, Any]]:
    project = yaml.safe_load((REPO / "meltano.yml").read_text())
    return {p["name"]: p for kind in ("extractors", "loaders") for p in project["plugins"][kind]}


def readme_section(title: str) -> str:
    text = (REPO / "README.md").read_text()
    start = text.index(f"### {title}\n")
    end = text.find("\n## ", start)
    return text[start:end]


def test_meltano_yml_declares_every_capability_of_both_plugins() -> None:
    plugins = project_plugins()
    assert set(plugins["target-loops"]["capabilities"]) == {str(c) for c in TargetLoops.capabilities}
    assert set(plugins["tap-segment-archive"]["capabilities"]) == {str(c) for c in TapSegmentArchive.capabilities}


def test_no_decimal_kind_in_meltano_yml() -> None:
    """Meltano 4.4.1 turns a ``decimal`` setting from an environment variable into a ``Decimal`` it cannot write."""
    for name, plugin in project_plugins().items():
        for setting in plugin.get("settings", []):
            assert setting.get("kind") != "decimal", (name, setting["name"])


def test_a_number_setting_given_as_text_is_read_as_the_number() -> None:
    config: dict[str, Any] = {"retry_backoff_seconds": "2", "max_retries": "3", "base_url": "5"}
    numbers_from_text(config)
    assert config == {"retry_backoff_seconds": 2.0, "max_retries": "3", "base_url": "5"}  # integers: Meltano's kind
    config = {"retry_backoff_seconds": "soon"}
    numbers_from_text(config)
    assert config == {"retry_backoff_seconds": "soon"}  # left for the schema check to name


def test_the_readme_loader_block_declares_only_settings_the_target_accepts() -> None:
    block = re.search(r"```yaml\n(.*?)```", readme_section("Add target-loops to your own Meltano project"), re.S)
    assert block is not None
    loader = yaml.safe_load(block.group(1))["plugins"]["loaders"][0]
    assert {s["name"] for s in loader["settings"]} <= TargetLoops.accepted_settings()
    assert set(loader["capabilities"]) == {str(c) for c in TargetLoops.capabilities}
    assert not any(s.get("kind") == "decimal" for s in loader["settings"])


@pytest.mark.e2e  # meltano in subprocesses; pip installs the clone into the scratch project
def test_the_readme_recipe_in_a_scratch_project(tmp_path: Path, meltano_bin: Path) -> None:  # noqa: F811
    section = readme_section("Add target-loops to your own Meltano project")
    block = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert block is not None
    plugins = yaml.safe_load(block.group(1))["plugins"]
    plugins["loaders"][0]["pip_url"] = str(REPO)  # "or a clone: /path/to/target-loops"
    project = tmp_path / "my-project"
    project.mkdir()
    (project / "meltano.yml").write_text(
        yaml.safe_dump(
            {"version": 1, "default_environment": "dev", "environments": [{"name": "dev"}], "plugins": plugins}
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TARGET_LOOPS_", "LOOPS_", "MELTANO_"))}
    env.update(MELTANO_SEND_ANONYMOUS_USAGE_STATS="false", PYTHONUNBUFFERED="1", LOOPS_API_KEY="sandbox-key")

    def meltano(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [str(meltano_bin), *args],
            cwd=project,
            env={**env, **extra},
            capture_output=True,
            stdin=subprocess.DEVNULL,
            text=True,
            timeout=900,
            check=False,
        )
        assert proc.returncode == 0, f"meltano {' '.join(args)}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        return proc

    commands = re.search(r"```bash\n(.*?)```", section, re.S)
    assert commands is not None
    lines = [line.split("#")[0].strip() for line in commands.group(1).splitlines()]
    assert lines[0] == "meltano install --plugin-type loader target-loops"
    meltano("install", "--plugin-type", "loader", "target-loops")
    assert lines[1] == 'meltano config set target-loops api_key "$LOOPS_API_KEY"'
    meltano("config", "set", "target-loops", "api_key", env["LOOPS_API_KEY"])
    assert "sandbox-key" not in (project / "meltano.yml").read_text(), "a secret goes to .env, not meltano.yml"
    assert lines[2] == "meltano config list target-loops"
    listed = meltano("config", "list", "target-loops")
    assert "api_key" in listed.stdout and "(redacted)" in listed.stdout and "rejects_path" in listed.stdout
    assert lines[3] == "meltano invoke target-loops --about"
    about = meltano("invoke", "target-loops", "--about", "--format", "json")
    assert json.loads(about.stdout[about.stdout.index("{") :])["name"] == "target-loops"
    assert lines[4] == "TARGET_LOOPS_RETRY_BACKOFF_SECONDS=2 meltano invoke target-loops --about"
    meltano("invoke", "target-loops", "--about", TARGET_LOOPS_RETRY_BACKOFF_SECONDS="2")
    # The value reaches the target as the text "2" and is read as the number 2 (a dry run of empty input).
    dry = meltano(
        "invoke",
        "target-loops",
        TARGET_LOOPS_RETRY_BACKOFF_SECONDS="2",
        TARGET_LOOPS_DRY_RUN="true",
        TARGET_LOOPS_REJECTS_PATH=str(tmp_path / "rejects.jsonl"),
        TARGET_LOOPS_LEDGER_URL=f"sqlite:///{tmp_path / 'ledger.sqlite'}",
    )
    assert "Config validation failed" not in dry.stderr
