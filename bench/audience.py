"""Issue 19's benchmark: closing an audience of 1,000,000 members of whom 1% left.

A ``beta_users`` table (one row per person, every row on the Beta list) in two versions: version 2 lacks every
100th row. The ledger is warmed with version 1 by ``bench/warm_target.py`` (the real target, its HTTP writes
answered 200 locally) under a ``full_table`` rule with ``on_leave: remove_from_lists``: the first sync of the
audience, which records its members. Then version 2 is synced against an unlimited sandbox, each run from a copy of
the warm ledger, alternately:

- with the same rule: the closing computes the leavers in the ledger and sends their leaves;
- with the rule minus ``on_leave``/``full_table``: today's behaviour, the baseline (nothing to send).

Reported: wall time and peak RSS of both (GNU time), the closing's own time (the run report's ``audiences[].seconds``:
the set difference and the leave operations built), and the requests the sandbox received vs the leavers.

    .venv/bin/python bench/audience.py [--quick] [--rows 1000000] [--runs 2]
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import common as c

LIST = "cm06f5v0e45nf0ml5754o9cix"
STREAM = "beta_users"
RULE = {"stream": STREAM, "action": "upsert_contact", "on_leave": "remove_from_lists", "full_table": True}
BASELINE = {"stream": STREAM, "action": "upsert_contact"}


def table(path: Path, rows: int, *, leave_every: int = 0) -> int:
    """The table as Singer messages (STATE every 10,000 rows); returns the rows written."""
    schema = {
        "type": "SCHEMA",
        "stream": STREAM,
        "schema": {
            "type": "object",
            "properties": {
                "user_id": {"type": ["string", "null"]},
                "email": {"type": ["string", "null"]},
                "plan": {"type": ["string", "null"]},
                f"mailing_lists_{LIST}": {"type": ["boolean", "null"]},
            },
        },
        "key_properties": ["user_id"],
    }
    written = 0
    with path.open("w", buffering=1 << 20) as out:
        out.write(json.dumps(schema) + "\n")
        for n in range(rows):
            if leave_every and n % leave_every == 0:
                continue
            row = {"user_id": f"b_{n}", "email": f"beta{n}@example.com", "plan": "beta", f"mailing_lists_{LIST}": True}
            out.write(json.dumps({"type": "RECORD", "stream": STREAM, "record": row}, separators=(",", ":")) + "\n")
            written += 1
            if written % 10_000 == 0:
                out.write(json.dumps({"type": "STATE", "value": {"rows": written}}) + "\n")
        out.write(json.dumps({"type": "STATE", "value": {"rows": written, "done": True}}) + "\n")
    return written


def main() -> None:
    p = c.parser(__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, help="members of the audience (default 1,000,000; --quick 20,000)")
    p.add_argument("--leave-every", type=int, default=100, help="every Nth member is gone in version 2 (1%%)")
    p.add_argument("--runs", type=int, help="measured runs of each variant (default 2; --quick 2); medians")
    args = p.parse_args()
    rows = args.rows or (20_000 if args.quick else 1_000_000)
    runs = args.runs or 2
    c.header("audience: closing an audience with 1% of its members gone", args)
    from target_loops.sandbox import Sandbox, SandboxConfig

    team = c.sandbox_team()
    with c.Workdir(args, "audience") as wd:
        v1, v2 = wd / "beta-v1.singer", wd / "beta-v2.singer"
        t0 = time.perf_counter()
        table(v1, rows)
        kept = table(v2, rows, leave_every=args.leave_every)
        leavers = rows - kept
        c.say(f"input: {STREAM}, {rows:,} rows, version 2 without {leavers:,} of them; generated in "
              f"{time.perf_counter() - t0:.0f}s")  # fmt: skip
        sb = Sandbox(SandboxConfig(rate_limit=0, properties=team["properties"], lists=team["lists"])).start()
        try:
            folder = wd.sub("run")
            ledger, warm_copy = folder / "ledger.sqlite", folder / "ledger.warm.sqlite"

            def config(name: str, rule: dict[str, Any]) -> Path:
                return c.write_config(
                    folder / f"{name}.json",
                    {
                        "api_key": c.SANDBOX_KEY,
                        "base_url": sb.url,
                        "ledger_url": f"sqlite:///{ledger}",
                        "rejects_path": str(folder / "rejects.jsonl"),
                        "report_path": str(folder / f"{name}.report.json"),
                        "requests_per_second": 100_000,
                        "mappings": [rule],
                    },
                )

            on_leave, baseline = config("on_leave", RULE), config("baseline", BASELINE)
            warm_argv = [c.PY, str(c.BENCH / "warm_target.py"), "--config", str(on_leave), "--input", str(v1)]
            warm = c.run(warm_argv, cwd=folder, log_name="warm").check()
            c.say(f"warm (first sync of the audience, writes answered locally): {warm.wall:.0f}s, peak RSS "
                  f"{c.mib(warm.maxrss_kb)}; ledger {ledger.stat().st_size / 1e6:.0f} MB")  # fmt: skip
            copy_sqlite(ledger, warm_copy)
            # The warm run's writes were answered locally: the sandbox gets the leavers' contacts, as Loops has them.
            for n in range(0, rows, args.leave_every):
                sb.store.upsert_contact({"userId": f"b_{n}", "email": f"beta{n}@example.com", "plan": "beta",
                                         "mailingLists": {LIST: True}})  # fmt: skip
            walls: dict[str, list[float]] = {"on_leave": [], "baseline": []}
            peaks: dict[str, list[int]] = {"on_leave": [], "baseline": []}
            closings: list[float] = []
            sent: list[int] = []
            for run in range(runs):
                for name, cfg in (("on_leave", on_leave), ("baseline", baseline)):
                    copy_sqlite(warm_copy, ledger)
                    start = len(sb.store.requests())
                    proc = c.run(c.loops_argv(cfg, v2), cwd=folder, log_name=f"{name}-{run}").check()
                    log = c.writes(sb.store.requests()[start:])
                    walls[name].append(proc.wall)
                    peaks[name].append(proc.maxrss_kb)
                    extra = ""
                    if name == "on_leave":
                        report = json.loads((folder / f"{name}.report.json").read_text())
                        closings.append(report["audiences"][0]["seconds"])
                        sent.append(len(log))
                        wrong = [r for r in log if r["body"].get("mailingLists") != {LIST: False}]
                        if wrong:
                            raise SystemExit(f"{len(wrong)} request(s) are not leaves, e.g. {wrong[0]}")
                        extra = f", closing {closings[-1]:.1f}s"
                    c.say(f"  run {run + 1} {name}: {proc.wall:.1f}s, peak RSS {c.mib(proc.maxrss_kb)}, "
                          f"{len(log):,} requests{extra}")  # fmt: skip
        finally:
            sb.stop()
        med = {k: c.median(v) for k, v in walls.items()}
        extra_mib = (max(peaks["on_leave"]) - max(peaks["baseline"])) / 1024
        c.say("")
        c.say(
            c.table(
                [
                    (name, " ".join(f"{w:.1f}" for w in walls[name]), f"{med[name]:.1f}", c.mib(max(peaks[name])))
                    for name in walls
                ],
                ["variant", "wall s (runs)", "median s", "peak RSS"],
            )
        )
        c.say("")
        c.say(
            f"RESULT audience: {rows:,} members, {leavers:,} gone: the closing took {c.median(closings):.1f}s "
            f"(goal <= 20 s); the run {med['on_leave']:.1f}s vs {med['baseline']:.1f}s without on_leave "
            f"(+{med['on_leave'] - med['baseline']:.1f}s); peak RSS {c.mib(max(peaks['on_leave']))} vs "
            f"{c.mib(max(peaks['baseline']))} ({extra_mib:+.0f} MiB, goal <= 300 MiB); requests "
            f"{c.median(sent):,.0f}, expected {leavers:,} ({'exact' if set(sent) == {leavers} else 'DIFFERENT'})"
        )


def copy_sqlite(source: Path, dest: Path) -> None:
    """A ledger file with its WAL folded in (the copy is complete on its own)."""
    import sqlite3

    with sqlite3.connect(source) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    for suffix in ("", "-wal", "-shm"):
        Path(f"{dest}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(source, dest)


if __name__ == "__main__":
    main()
