"""``target-loops-demo``: the bundled sample streams → the real CLI → the bundled sandbox, with no account.

It starts the sandbox on a free local port (seeded with ``sample_streams/sandbox_team.json``), runs
``target-loops`` on every sample file, then ``tap-segment-archive | target-loops`` on the sample Segment archive
(``sample_streams/segment_archive/``, Segment's own S3 layout), then prints what the sandbox holds: what Loops would
hold after the sync.
The samples ship inside the package (``target_loops/sample_streams`` in a wheel, copied from the repository's
``sample_streams/`` at build time); an editable install reads the repository's folder.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

from target_loops.sandbox import CONTACT_OWN_KEYS, Sandbox, SandboxConfig


def samples_folder() -> Path:
    """The sample streams: the package's copy in an installed wheel, else the repository's (editable install)."""
    packaged = resources.files("target_loops").joinpath("sample_streams")
    if isinstance(packaged, Path) and packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "sample_streams"


SAMPLES = samples_folder()
SAMPLE_FILES = ("segment_export.singer", "warehouse_rows.singer", "custom_table.singer")
DEMO_KEY = "sandbox-demo-key"


def main(argv: list[str] | None = None) -> int:
    """Run the demo; returns the exit status (non-zero when a sync failed)."""
    parser = argparse.ArgumentParser(prog="target-loops-demo", description=(__doc__ or "").replace("``", ""))
    parser.add_argument("--samples", type=Path, default=SAMPLES, help="folder with the sample streams")
    parser.add_argument("--out", type=Path, default=Path("demo-output"), help="where config, rejects and STATE go")
    parser.add_argument("--port", type=int, default=0, help="sandbox port (default: a free one)")
    parser.add_argument("--keep-running", action="store_true", help="leave the sandbox up to look at it")
    args = parser.parse_args(argv)
    if not (args.samples / "sandbox_team.json").is_file():
        parser.error(f"no sample streams in {args.samples} (sandbox_team.json is missing); pass --samples")

    team = json.loads((args.samples / "sandbox_team.json").read_text())
    rules = json.loads((args.samples / "rules.json").read_text())
    args.out.mkdir(parents=True, exist_ok=True)
    config_path = args.out / "config.json"

    with Sandbox(
        SandboxConfig(
            api_key=DEMO_KEY,
            team_name=team.get("teamName", "Sample team"),
            properties=team.get("properties", []),
            lists=team.get("lists", []),
            events=team.get("events", []),
        ),
        port=args.port,
    ) as sandbox:
        print(f"Loops sandbox at {sandbox.url}")
        config = {
            "api_key": DEMO_KEY,
            "base_url": sandbox.url,
            "rejects_path": str(args.out / "loops_rejects.jsonl"),
            # A fresh ledger: this sandbox starts empty, so nothing may be skipped as already delivered.
            "ledger_url": f"sqlite:///{(args.out / 'ledger.sqlite').resolve()}",
            **rules,
        }
        config_path.write_text(json.dumps(config, indent=2))
        for stale in ("loops_rejects.jsonl", "ledger.sqlite", "ledger.sqlite-wal", "ledger.sqlite-shm"):
            (args.out / stale).unlink(missing_ok=True)
        status = 0
        for name in SAMPLE_FILES:
            print(f"\n=== target-loops --config {config_path} --input {args.samples / name}")
            state_path = args.out / f"{Path(name).stem}.state.jsonl"
            with state_path.open("w") as state_out:
                run = subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "target_loops.target",
                        "--config",
                        str(config_path),
                        "--input",
                        str(args.samples / name),
                    ],
                    stdout=state_out,
                    check=False,
                )
            lines = state_path.read_text().splitlines()
            print(f"exit status {run.returncode}; last STATE: {lines[-1] if lines else '(none)'}")
            status = status or run.returncode
        status = status or run_archive(args.samples / "segment_archive", config_path, args.out)
        print_sandbox(sandbox, args.out / "loops_rejects.jsonl")
        if args.keep_running:
            page = sandbox.url.removesuffix("/api") + "/"
            print(f"\nSandbox still running: open {page} in a browser (JSON: {page}_sandbox/state); Ctrl-C to stop")
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
    return status


def run_archive(archive: Path, config_path: Path, out: Path) -> int:
    """``tap-segment-archive | target-loops`` over the sample archive: the backfill a user runs on their bucket."""
    tap_config = out / "tap_config.json"
    tap_config.write_text(json.dumps({"paths": [str(archive.resolve())]}, indent=2))
    print(f"\n=== tap-segment-archive --config {tap_config} | target-loops --config {config_path}")
    state_path = out / "segment_archive.state.jsonl"
    with state_path.open("w") as state_out:
        tap = subprocess.Popen(
            [sys.executable, "-m", "tap_segment_archive", "--config", str(tap_config)], stdout=subprocess.PIPE
        )
        target = subprocess.run(
            [sys.executable, "-m", "target_loops.target", "--config", str(config_path)],
            stdin=tap.stdout,
            stdout=state_out,
            check=False,
        )
        assert tap.stdout is not None
        tap.stdout.close()
        tap_status = tap.wait()
    lines = state_path.read_text().splitlines()
    print(f"exit status {tap_status} (tap), {target.returncode} (target); last STATE: {lines[-1] if lines else '-'}")
    return tap_status or target.returncode


def print_sandbox(sandbox: Sandbox, rejects: Path) -> None:
    """What Loops would now hold, in a form a person can check at a glance."""
    contacts = sandbox.store.contacts()
    print(f"\n--- {len(contacts)} contacts in the sandbox")
    for c in contacts:
        props = {k: v for k, v in c.items() if k not in CONTACT_OWN_KEYS and v is not None}
        lists = sorted(k for k, v in (c.get("mailingLists") or {}).items() if v)
        name = " ".join(x for x in (c.get("firstName"), c.get("lastName")) if x)
        print(f"  {c.get('email') or '-':32} userId={c.get('userId') or '-':8} {name:20} {props} lists={lists}")
    events = sandbox.store.events()
    print(f"\n--- {len(events)} events in the sandbox")
    for e in events:
        who = e.get("userId") or e.get("email")
        print(f"  {e['eventName']:18} {who:26} key={e.get('idempotencyKey')} {e.get('eventProperties') or {}}")
    items = [json.loads(line) for line in rejects.read_text().splitlines()] if rejects.exists() else []
    partial = sum(1 for item in items if item.get("partial"))
    print(
        f"\n--- {len(items)} lines in {rejects}: {len(items) - partial} rejected records, "
        f"{partial} sent without one value"
    )
    for item in items:
        print(f"  [{item['stream']}] {item['reason']}: {item['message']}")


if __name__ == "__main__":
    sys.exit(main())
