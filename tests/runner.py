"""Run the real ``target-loops`` CLI in a subprocess, as a user or Meltano would, and read what it left behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "sample_streams"
SANDBOX_KEY = "sandbox-key"
#: ``requests_per_second`` of a test's run unless it says otherwise. The sandbox (``rate_limit=0``) has no limit, and
#: Loops' 10/s (the setting's default) would make a 40-request test wait 4 s; a test about pacing or about Loops'
#: real limit sets ``requests_per_second`` (and the sandbox's ``rate_limit``) itself.
FAST_PACE = 1000


def sandbox_config(sandbox: Any, tmp_path: Path, **extra: Any) -> dict[str, Any]:
    """The usual config of a run against ``sandbox`` (a ``Sandbox``): its URL and key, a ledger in ``tmp_path``,
    paced at ``FAST_PACE``."""
    return {
        "api_key": SANDBOX_KEY,
        "base_url": sandbox.url,
        "ledger_url": f"sqlite:///{tmp_path / 'ledger.sqlite'}",
        "requests_per_second": FAST_PACE,
        **extra,
    }


@dataclass
class Run:
    """What one CLI run printed and wrote."""

    returncode: int
    stdout: str
    stderr: str
    rejects_path: Path
    states: list[dict[str, Any]] = field(default_factory=list)
    report_path: Path | None = None

    @property
    def report(self) -> dict[str, Any]:
        """The run report (``report_path``): where a count is meant, tests read it here, not from stderr."""
        assert self.report_path is not None and self.report_path.exists(), "the run wrote no report"
        return json.loads(self.report_path.read_text())

    def stream(self, name: str) -> dict[str, Any]:
        """One stream's figures from the run report."""
        return next(s for s in self.report["streams"] if s["stream"] == name)

    @property
    def rejects(self) -> list[dict[str, Any]]:
        """The rejects file's lines, parsed (empty when none was written)."""
        if not self.rejects_path.exists():
            return []
        return [json.loads(line) for line in self.rejects_path.read_text().splitlines()]

    @property
    def final_state(self) -> dict[str, Any] | None:
        return self.states[-1] if self.states else None


def start_target(
    config: dict[str, Any],
    input_text: str | None = None,
    *,
    input_path: Path | None = None,
    tmp_path: Path,
    stdin: bool = False,
) -> subprocess.Popen[str]:
    """Start ``target-loops --config <tmp>/config.json --input <file>`` (stdout and stderr piped).

    With ``stdin=True`` the target reads its standard input instead, left open for the test to write to.

    The rejects file goes to ``tmp_path``, retries back off in hundredths of a second and requests are paced at
    ``FAST_PACE``, unless the config says otherwise; no ``TARGET_LOOPS_*`` variable of the developer's reaches the
    process.
    """
    config = {
        "rejects_path": str(tmp_path / "rejects.jsonl"),
        "report_path": str(tmp_path / "report.json"),
        "retry_backoff_seconds": 0.01,
        "requests_per_second": FAST_PACE,
        **config,
    }
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(config))
    command = [sys.executable, "-m", "target_loops.target", "--config", str(config_path)]
    if not stdin:
        if input_path is None:
            input_path = tmp_path / "input.singer"
            input_path.write_text(input_text or "")
        command += ["--input", str(input_path)]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TARGET_LOOPS_", "LOOPS_", "MELTANO_"))}
    # The default ledger lives in the user's data folder: each test gets its own, never the developer's.
    env["XDG_DATA_HOME"] = str(tmp_path / "xdg-data")
    return subprocess.Popen(
        command,
        stdin=subprocess.PIPE if stdin else None,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )


def parse_states(stdout: str) -> list[dict[str, Any]]:
    """The STATE values a target printed."""
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def run_target(
    config: dict[str, Any],
    input_text: str | None = None,
    *,
    input_path: Path | None = None,
    tmp_path: Path,
    timeout: float = 120,
) -> Run:
    """Run the CLI to its end; STATE lines are parsed from stdout."""
    proc = start_target(config, input_text, input_path=input_path, tmp_path=tmp_path)
    stdout, stderr = proc.communicate(timeout=timeout)
    # Whatever went wrong, a user is told in words, never with a traceback (every failure-path test checks it here).
    assert "Traceback (most recent call last)" not in stderr, stderr
    rejects = Path(config.get("rejects_path") or tmp_path / "rejects.jsonl")
    report = Path(config.get("report_path") or tmp_path / "report.json")
    return Run(proc.returncode, stdout, stderr, rejects, parse_states(stdout), report)


def singer(*messages: dict[str, Any]) -> str:
    """Singer messages as the text of a ``.singer`` file."""
    return "".join(json.dumps(m) + "\n" for m in messages)


def schema(stream: str, properties: dict[str, Any], keys: list[str] | None = None) -> dict[str, Any]:
    """A SCHEMA message whose properties are all nullable strings unless given a type."""
    props = {k: (v if isinstance(v, dict) else {"type": [v, "null"]}) for k, v in properties.items()}
    return {
        "type": "SCHEMA",
        "stream": stream,
        "schema": {"type": "object", "properties": props},
        "key_properties": keys or [],
    }


def record(stream: str, rec: dict[str, Any]) -> dict[str, Any]:
    return {"type": "RECORD", "stream": stream, "record": rec}


def state(value: dict[str, Any]) -> dict[str, Any]:
    return {"type": "STATE", "value": value}
