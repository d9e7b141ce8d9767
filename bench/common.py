"""Shared pieces of the benchmark scripts: running a target as a CLI subprocess, measuring it, reporting.

Every measurement runs the target in a fresh Python process, the way a user (or Meltano) runs it, and reads its
peak RSS with GNU time (``/usr/bin/time -f %M``), so runs never pollute each other's figures (see ``GNU_TIME``).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
SAMPLES = REPO / "sample_streams"
PY = sys.executable
SANDBOX_KEY = "sandbox-key"

if str(REPO) not in sys.path:  # `python bench/x.py` puts bench/ first on sys.path, not the repo
    sys.path.insert(0, str(REPO))


# --- command line and output


def parser(description: str) -> argparse.ArgumentParser:
    """The options every script shares: ``--quick`` (smoke test, < 1 minute) and ``--keep`` (keep the inputs)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke test that takes under a minute")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (inputs, configs, logs)")
    p.add_argument("--workdir", type=Path, help="put inputs and logs here instead of a new temporary directory")
    return p


def machine() -> str:
    """One line naming the machine the figures come from."""
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 1024 / 1024:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    import singer_sdk

    version = getattr(singer_sdk, "__version__", None)
    if version is None:
        from importlib.metadata import version as dist_version

        version = dist_version("singer-sdk")
    return f"{os.cpu_count()} cores ({cpu}){mem}, Python {sys.version.split()[0]}, singer-sdk {version}"


def header(title: str, args: argparse.Namespace) -> None:
    print(f"== {title} ({'quick' if args.quick else 'full'}) ==", flush=True)
    print(f"machine: {machine()}; load average at start {load()}", flush=True)


def load() -> str:
    """The 1-minute load average: other work on the machine skews timings (hence medians of interleaved runs)."""
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "unknown"


def say(*parts: Any) -> None:
    print(*parts, flush=True)


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    """A plain aligned text table (also valid as the body of a Markdown table when pasted)."""
    text = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in text) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in text]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def mib(kb: float) -> str:
    return f"{kb / 1024:.0f} MiB"


# --- working directory


class Workdir:
    """A temporary directory for inputs, configs and logs; removed at exit unless ``--keep``/``--workdir``."""

    def __init__(self, args: argparse.Namespace, prefix: str) -> None:
        self.keep = bool(args.keep or args.workdir)
        if args.workdir:
            args.workdir.mkdir(parents=True, exist_ok=True)
            self.path = args.workdir.resolve()
        else:
            self.path = Path(tempfile.mkdtemp(prefix=f"target-loops-bench-{prefix}-"))

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def sub(self, name: str) -> Path:
        path = self.path / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def __enter__(self) -> Workdir:
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.keep:
            say(f"(inputs and logs kept in {self.path})")
        else:
            shutil.rmtree(self.path, ignore_errors=True)


# --- running targets


@dataclass
class Proc:
    """One finished target process."""

    argv: list[str]
    returncode: int
    wall: float  # seconds, spawn to exit
    maxrss_kb: int  # peak resident set size of this process alone (GNU time)
    stdout_path: Path
    stderr_path: Path
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def check(self) -> Proc:
        if self.returncode != 0:
            tail = "\n".join(self.stderr.splitlines()[-25:])
            raise SystemExit(f"command failed (exit {self.returncode}): {' '.join(self.argv)}\n{tail}")
        return self


def clean_env() -> dict[str, str]:
    """The environment without any ``TARGET_LOOPS_*``/``LOOPS_*`` variable: a real key can never leak in."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("TARGET_LOOPS_", "LOOPS_"))}


#: GNU time reports the peak RSS of the process it runs, measured from a tiny parent. ``os.wait4`` from this
#: script would not do: on Linux a child's ``ru_maxrss`` starts at its parent's RSS at spawn (exec keeps the
#: high-water mark of the forked address space), so a script holding a sandbox's request log would inflate it.
GNU_TIME = "/usr/bin/time" if Path("/usr/bin/time").exists() else None


def run(
    argv: Sequence[str],
    *,
    cwd: Path,
    log_name: str,
    timeout: float | None = None,
    watchdog: Any = None,
) -> Proc:
    """Run ``argv`` to its end; wall time and peak RSS of that process alone, output to files.

    ``watchdog(elapsed) -> str | None`` is polled every second; a string kills the run (the reason is kept in
    ``extra["killed"]``).
    """
    out, err, rss = cwd / f"{log_name}.stdout", cwd / f"{log_name}.stderr", cwd / f"{log_name}.rss"
    full = [GNU_TIME, "-f", "%M", "-o", str(rss), *argv] if GNU_TIME else list(argv)
    with out.open("wb") as fout, err.open("wb") as ferr:
        started = time.perf_counter()
        # Its own process group, so that a watchdog kill reaches the target under ``time`` (and nothing else).
        proc = subprocess.Popen(full, cwd=cwd, stdout=fout, stderr=ferr, env=clean_env(), start_new_session=True)
        killed: dict[str, str] = {}
        done = threading.Event()

        def guard() -> None:
            while not done.wait(1.0):
                elapsed = time.perf_counter() - started
                reason = None
                if timeout is not None and elapsed > timeout:
                    reason = f"timeout after {timeout:.0f}s"
                elif watchdog is not None:
                    reason = watchdog(elapsed)
                if reason:
                    killed["reason"] = reason
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)  # the group of the child started above
                    return

        thread = threading.Thread(target=guard, daemon=True)
        thread.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        done.set()
        proc.returncode = os.waitstatus_to_exitcode(status)
    maxrss = int(usage.ru_maxrss)  # an upper bound (see GNU_TIME) when GNU time is missing
    if GNU_TIME:
        with contextlib.suppress(OSError, ValueError, IndexError):
            maxrss = int(rss.read_text().split()[-1])
    result = Proc(list(argv), proc.returncode, wall, maxrss, out, err)
    # CPU seconds of the process and what it waited for (GNU time waits for the target): on a shared machine,
    # a rate per CPU second compares two runs that met different loads.
    result.extra["cpu"] = usage.ru_utime + usage.ru_stime
    if killed:
        result.extra["killed"] = killed["reason"]
    return result


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(json.dumps(config, indent=1))
    return path


def loops_argv(config: Path, input_path: Path) -> list[str]:
    """The target-loops CLI, as the tests run it."""
    return [PY, "-m", "target_loops.target", "--config", str(config), "--input", str(input_path)]


def noop_argv(config: Path, input_path: Path) -> list[str]:
    """The no-op singer-sdk target (the SDK's floor: default reader, default validator, nothing done)."""
    return [PY, str(BENCH / "noop_target.py"), "--config", str(config), "--input", str(input_path)]


def profile_argv(argv: Sequence[str], out: Path) -> list[str]:
    """The same command under cProfile (``python -m cProfile -o out -m module ...`` or ``... script.py``)."""
    argv = list(argv)
    assert argv[0] == PY
    return [PY, "-m", "cProfile", "-o", str(out), *argv[1:]]


# --- sandbox request log


def parse_at(text: str) -> float:
    """The sandbox log's ``at`` (ISO, milliseconds, Z) as epoch seconds."""
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def writes(log: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The request log's entries that are not GET (the writes that use Loops' budget for work)."""
    return [r for r in log if r["method"] != "GET"]


def sandbox_team() -> dict[str, Any]:
    """The sample team (custom properties and lists) the generated data is shaped for."""
    return json.loads((SAMPLES / "sandbox_team.json").read_text())


# --- profiles


#: (label, path fragment, function name or None): where self time goes, first match wins.
CATEGORIES: list[tuple[str, str, str | None]] = [
    ("SDK validation (jsonschema)", "/jsonschema/", None),
    ("SDK validation (jsonschema)", "/referencing/", None),
    ("SDK validation (jsonschema)", "/jsonschema_specifications/", None),
    ("SDK validation (jsonschema)", "singer_sdk/helpers/_validation", None),
    ("SDK validation (jsonschema)", "singer_sdk/helpers/_typing", "is_"),
    ("validation (compiled: fastjsonschema)", "<string>", "validate"),
    ("validation (compiled: fastjsonschema)", "/fastjsonschema/", None),
    ("validation (compiled: fastjsonschema)", "target_loops/validation.py", None),
    ("SDK timestamp parsing", "singer_sdk/sinks/core.py", "_parse_timestamps_in_record"),
    ("SDK timestamp parsing", "singer_sdk/helpers/_typing", None),
    ("SDK timestamp parsing", "singer_sdk/helpers/_compat", None),
    ("SDK timestamp parsing", "", "<built-in method fromisoformat>"),
    ("reader (JSON decode)", "/json/decoder.py", None),
    ("reader (JSON decode)", "/json/__init__.py", "loads"),
    ("reader (JSON decode)", "singer_sdk/singerlib/", None),
    ("reader (JSON decode)", "singer_sdk/contrib/msgspec", None),
    ("reader (JSON decode)", "", "<method 'decode' of 'msgspec"),
    ("target-loops coalescing", "target_loops/sinks.py", "coalesce_upserts"),
    ("target-loops coalescing", "target_loops/sinks.py", "dedupe_events"),
    ("target-loops fingerprints", "target_loops/ledger.py", "fingerprint"),
    ("target-loops fingerprints", "target_loops/ledger.py", "value_hashes"),
    ("target-loops fingerprints", "target_loops/ledger.py", "_short_hash"),
    ("target-loops fingerprints", "target_loops/serialization.py", "canonical_json"),
    ("target-loops fingerprints", "", "<built-in method _hashlib"),
    ("target-loops fingerprints", "", "<method 'hexdigest'"),
    ("JSON encode (fingerprints, plan, rejects)", "/json/encoder.py", None),
    ("JSON encode (fingerprints, plan, rejects)", "/json/__init__.py", "dumps"),
    ("JSON encode (fingerprints, plan, rejects)", "", "<method 'encode' of 'msgspec"),
    ("target-loops ledger (SQL)", "target_loops/ledger.py", None),
    ("target-loops ledger (SQL)", "/sqlalchemy/", None),
    ("target-loops ledger (SQL)", "", "<method 'execute' of 'sqlite3"),
    ("target-loops ledger (SQL)", "", "<method 'fetch"),
    ("target-loops rule mapping", "target_loops/rules.py", None),
    ("target-loops rule mapping", "target_loops/defaults.py", None),
    ("target-loops rule mapping", "target_loops/coercion.py", None),
    ("target-loops rule mapping", "target_loops/preflight.py", None),
    ("target-loops rule mapping", "target_loops/serialization.py", None),
    ("target-loops other (sinks, target, report)", "target_loops/", None),
    ("SDK record loop (target_base, sinks, mapper)", "singer_sdk/", None),
    ("record copies (copy.copy)", "/copy.py", None),
    ("logging and metrics", "/logging/", None),
    ("startup (imports)", "<frozen importlib", None),
]

#: Inclusive (cumulative) figures worth reading: (label, path fragment, function name).
KEY_FUNCTIONS: list[tuple[str, str, str]] = [
    ("reader: read + dispatch every line", "singer_sdk/singerlib/encoding/base.py", "_process_lines"),
    ("reader: JSON decode of a line", "singer_sdk/singerlib/encoding/simple.py", "deserialize_json"),
    ("reader: JSON decode of a line (msgspec)", "singer_sdk/contrib/msgspec.py", "deserialize_json"),
    ("SDK: RECORD handling (incl. drains)", "singer_sdk/target_base.py", "_process_record_message"),
    ("target: RECORD handling (its override, incl. drains)", "target_loops/target.py", "_process_record_message"),
    ("SDK: stream map transform", "singer_sdk/mapper.py", "transform"),
    ("SDK: copy of the record", "/copy.py", "copy"),
    ("SDK: validate + parse", "singer_sdk/sinks/core.py", "_validate_and_parse"),
    ("SDK: jsonschema validate", "singer_sdk/helpers/_validation.py", "validate"),
    ("SDK: jsonschema validate", "singer_sdk/sinks/core.py", "validate"),
    ("target: validate + parse (its override)", "target_loops/sinks.py", "_validate_and_parse"),
    ("target: compiled validator", "target_loops/validation.py", "validate"),
    ("SDK: timestamp parsing", "singer_sdk/sinks/core.py", "_parse_timestamps_in_record"),
    ("target: process_record (map each record)", "target_loops/sinks.py", "process_record"),
    ("target: StreamMapper.map (rules)", "target_loops/rules.py", "map"),
    ("target: drain (process_batch)", "target_loops/sinks.py", "process_batch"),
    ("target: coalesce_upserts", "target_loops/sinks.py", "coalesce_upserts"),
    ("target: dedupe_events", "target_loops/sinks.py", "dedupe_events"),
    ("target: preflight enforce (coercion)", "target_loops/preflight.py", "enforce"),
    ("target: _skip_known (fingerprints + ledger)", "target_loops/sinks.py", "_skip_known"),
    ("target: fingerprint()", "target_loops/ledger.py", "fingerprint"),
    ("target: Ledger.unchanged", "target_loops/ledger.py", "unchanged"),
    ("target: value_hashes() (per-property hashes)", "target_loops/ledger.py", "value_hashes"),
    ("target: Ledger.contact_states (lookups)", "target_loops/ledger.py", "contact_states"),
    ("target: Ledger.record_contacts", "target_loops/ledger.py", "record_contacts"),
    ("target: Ledger.delivered_events", "target_loops/ledger.py", "delivered_events"),
    ("target: send (dry run: plan)", "target_loops/target.py", "send"),
    ("target: _settle (count, reject, remember)", "target_loops/sinks.py", "_settle"),
    ("target: _remember (ledger writes)", "target_loops/sinks.py", "_remember"),
    ("SDK: drain_all / drain_one", "singer_sdk/target_base.py", "drain_one"),
]


def _category(filename: str, funcname: str) -> str:
    for label, fragment, name in CATEGORIES:
        if fragment and fragment not in filename:
            continue
        if name is not None and not funcname.startswith(name):
            continue
        if not fragment and name is None:
            continue
        return label
    return "other (stdlib, builtins called from everywhere)"


def profile_report(prof: Path, top: int = 25) -> str:
    """Self time by category, inclusive time of the key functions, and the top functions by self time."""
    import pstats

    stats = pstats.Stats(str(prof))
    raw = stats.stats  # type: ignore[attr-defined]
    total = sum(tt for (_, _, tt, _, _) in raw.values())
    by_cat: dict[str, float] = {}
    for (filename, _line, funcname), (_cc, _nc, tt, _ct, _callers) in raw.items():
        label = _category(filename, funcname)
        by_cat[label] = by_cat.get(label, 0.0) + tt
    out = [f"total profiled time {total:.1f}s (cProfile inflates pure-Python code more than C code)", ""]
    out.append("self time by category:")
    rows = [(label, f"{t:.2f}", f"{100 * t / total:.1f}%") for label, t in sorted(by_cat.items(), key=lambda x: -x[1])]
    out.append(table(rows, ["category", "seconds", "share"]))
    out.append("")
    out.append("inclusive time of key functions:")
    rows = []
    seen: set[tuple[str, int, str]] = set()
    for label, fragment, name in KEY_FUNCTIONS:
        for key, (_cc, nc, _tt, ct, _callers) in raw.items():
            if key in seen or fragment not in key[0] or key[2] != name:
                continue
            seen.add(key)
            rows.append(
                (
                    label,
                    f"{key[0].split('site-packages/')[-1].split('/work/main/')[-1]}:{key[2]}",
                    nc,
                    f"{ct:.2f}",
                    f"{100 * ct / total:.1f}%",
                )
            )
    out.append(table(rows, ["what", "function", "calls", "cum s", "share"]))
    out.append("")
    out.append(f"top {top} functions by self time:")
    items = sorted(raw.items(), key=lambda kv: -kv[1][2])[:top]
    rows = []
    for (filename, line, funcname), (_cc, nc, tt, ct, _callers) in items:
        where = filename.split("site-packages/")[-1].split("/work/main/")[-1]
        rows.append((f"{where}:{line}({funcname})"[:110], nc, f"{tt:.2f}", f"{ct:.2f}"))
    out.append(table(rows, ["function", "calls", "self s", "cum s"]))
    return "\n".join(out)
