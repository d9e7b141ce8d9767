"""Issue 3's benchmark: the second nightly sync of a 1,000,000-row table with the ledger warm.

A warehouse ``identifies`` table (one row per user, the shape of ``sample_streams/warehouse_rows.singer``) in two
versions: version 2 has 1% of the rows changed (a new ``plan``). The ledger is warmed with version 1, then
target-loops syncs version 2 against a sandbox with no rate limit (so the 1% changed rows are really sent and
counted by the sandbox), beside the no-op singer-sdk target on the same file in the same run.
Reported: rows/s of both and their ratio, peak RSS of both, requests the sandbox received vs the changed rows.

Warming the ledger. A real first run sends 1,000,000 requests; the script measures how fast that goes against an
unlimited sandbox (a first run on a slice, ``requests_per_second`` 100,000) and prints the projection for the
whole table. Unless ``--warm http`` is given, the ledger is then warmed by ``bench/warm_target.py`` instead: the
real target-loops run over version 1 (reader, validation, rules, coalescing, fingerprints, ledger writes), with
only its HTTP writes answered 200 locally instead of being sent. The measured run then proves the ledger is warm:
the sandbox must receive exactly the changed rows (a watchdog kills the run if it sends far more).

Each measured run starts from a copy of the warmed ledger (a run records the changed rows it delivers).

The whole measurement runs once per ledger backend: SQLite (the default ledger) and PostgreSQL (a throwaway
server started with ``tests/warehouse/pg.sh``, when Debian's ``postgresql`` is installed). Reported for each: the
second run's rows/s beside the no-op target's, and the ledger's size per contact (SQLite: the file; PostgreSQL:
``pg_total_relation_size`` of the contacts table).

    .venv/bin/python bench/ledger.py [--quick] [--rows 1000000] [--runs 2] [--warm stub|http]
        [--ledger sqlite|postgres|both]
"""

from __future__ import annotations

import shutil
import sqlite3
import time
from pathlib import Path
from typing import Any

import common as c
import gen

UPSERT = "/api/v1/contacts/update"


def main() -> None:
    p = c.parser(__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, help="rows (= users) in the table (default 1,000,000; --quick 20,000)")
    p.add_argument("--changed-every", type=int, default=100, help="every Nth row changes in version 2 (1%%)")
    p.add_argument("--runs", type=int, help="measured runs of each target (default 2; --quick 3); medians")
    p.add_argument("--warm", choices=["stub", "http"], default="stub", help="how to warm the ledger (see above)")
    p.add_argument("--probe-rows", type=int, help="rows of the first-run speed probe (default 5,000; quick 1,000)")
    p.add_argument("--concurrency", type=int, default=32, help="target max_concurrency (the setting's default)")
    p.add_argument("--ledger", choices=["sqlite", "postgres", "both"], default="both", help="ledger backends")
    args = p.parse_args()
    backends = ["sqlite", "postgres"] if args.ledger == "both" else [args.ledger]
    pg = PgServer() if "postgres" in backends else None
    try:
        results = [measure(args, backend, pg) for backend in backends]
    finally:
        if pg is not None:
            pg.stop()
    c.say("")
    c.say(c.table(results, ["ledger", "target-loops rows/s", "no-op rows/s", "ratio", "bytes per contact"]))


def measure(args: Any, backend: str, pg: PgServer | None) -> tuple[str, str, str, str, str]:
    rows = args.rows or (20_000 if args.quick else 1_000_000)
    runs = args.runs or (3 if args.quick else 2)
    probe_rows = min(rows, args.probe_rows or (1_000 if args.quick else 5_000))
    c.header(f"ledger ({backend}): second run of a table with 1% changed rows, ledger warm", args)
    from target_loops.sandbox import Sandbox, SandboxConfig

    team = c.sandbox_team()

    def sandbox() -> Any:
        return Sandbox(SandboxConfig(rate_limit=0, properties=team["properties"], lists=team["lists"])).start()

    def config(path: Path, sb: Any, ledger: Path) -> Path:
        return c.write_config(
            path,
            {
                "api_key": c.SANDBOX_KEY,
                "base_url": sb.url,
                "ledger_url": pg.url if pg is not None and backend == "postgres" else f"sqlite:///{ledger}",
                "rejects_path": str(path.parent / "rejects.jsonl"),
                "requests_per_second": 100_000,
                "max_concurrency": args.concurrency,
            },
        )

    with c.Workdir(args, "ledger") as wd:
        v1, v2 = wd / "identifies-v1.singer", wd / "identifies-v2.singer"
        t0 = time.perf_counter()
        gen.identifies_versions(v1, rows)
        changed = gen.identifies_versions(v2, rows, changed_every=args.changed_every)
        c.say(
            f"input: identifies, {rows:,} rows (one per user), version 2 with {len(changed):,} changed rows; "
            f"{v2.stat().st_size / 1e6:.0f} MB each, generated in {time.perf_counter() - t0:.0f}s"
        )

        # 1. How long would a real first run take against an unlimited sandbox?
        probe = gen.head(v1, wd / "probe.singer", probe_rows)
        empty = gen.head(v1, wd / "empty.singer", 1)
        sb0 = sandbox()
        try:
            folder = wd.sub("probe")
            cfg = config(folder / "config.json", sb0, folder / "ledger.sqlite")
            base = c.run(c.loops_argv(cfg, empty), cwd=folder, log_name="startup").check()
            proc = c.run(c.loops_argv(cfg, probe), cwd=folder, log_name="probe").check()
            sent = len([r for r in c.writes(sb0.store.requests()) if r["path"] == UPSERT])
        finally:
            sb0.stop()
        per_s = (sent - 1) / max(proc.wall - base.wall, 1e-9)
        c.say(
            f"first-run probe: {probe_rows:,} rows -> {sent:,} requests in {proc.wall:.1f}s "
            f"(start-up {base.wall:.1f}s): {per_s:,.0f} requests/s against the unlimited sandbox; "
            f"a real first run of {rows:,} rows would take about {duration(rows / per_s)}"
        )

        # 2. Warm the ledger with version 1.
        sb = sandbox()
        try:
            folder = wd.sub("run")
            ledger = folder / "ledger.sqlite"
            cfg = config(folder / "config.json", sb, ledger)
            argv = (
                c.loops_argv(cfg, v1)
                if args.warm == "http"
                else [c.PY, str(c.BENCH / "warm_target.py"), "--config", str(cfg), "--input", str(v1)]
            )
            store = PgStore(pg.url) if pg is not None and backend == "postgres" else SqliteStore(ledger)
            store.reset()
            warm = c.run(argv, cwd=folder, log_name="warm").check()
            entries, ledger_bytes = store.figures()
            per_contact = ledger_bytes / max(entries, 1)
            c.say(
                f"warm ({args.warm}): {warm.wall:.0f}s ({rows / warm.wall:,.0f} rows/s), peak RSS "
                f"{c.mib(warm.maxrss_kb)}; ledger: {entries:,} contacts, {ledger_bytes / 1e6:.0f} MB "
                f"({per_contact:,.0f} bytes per contact); the sandbox got {len(c.writes(sb.store.requests())):,} writes"
            )
            if entries < rows * 0.99:
                raise SystemExit(f"the ledger holds {entries:,} contacts after warming, expected {rows:,}")
            store.save()

            # 3. The measured runs: target-loops (ledger restored each time) and the no-op target, alternately.
            noop_cfg = c.write_config(folder / "noop.json", {})
            walls: dict[str, list[float]] = {"target-loops": [], "no-op SDK target": []}
            peaks: dict[str, list[int]] = {"target-loops": [], "no-op SDK target": []}
            sent_counts: list[int] = []
            send_spans: list[float] = []
            for run in range(runs):
                store.restore()
                start = len(sb.store.requests())

                def watchdog(_elapsed: float, start: int = start) -> str | None:
                    got = len(sb.store.requests()) - start
                    if got > 3 * len(changed) + 100:
                        return (
                            f"the sandbox received {got:,} requests, expected {len(changed):,}: the ledger is not warm"
                        )
                    return None

                proc = c.run(c.loops_argv(cfg, v2), cwd=folder, log_name=f"second-{run}", watchdog=watchdog)
                if "killed" in proc.extra:
                    raise SystemExit(proc.extra["killed"])
                proc.check()
                log = c.writes(sb.store.requests()[start:])
                sent_counts.append(len(log))
                times = [c.parse_at(r["at"]) for r in log]
                send_spans.append(max(times) - min(times) if times else 0.0)
                walls["target-loops"].append(proc.wall)
                peaks["target-loops"].append(proc.maxrss_kb)
                c.say(
                    f"  run {run + 1}: target-loops {proc.wall:.1f}s, peak RSS {c.mib(proc.maxrss_kb)}, "
                    f"{len(log):,} requests sent (over {send_spans[-1]:.1f}s)"
                )
                noop = c.run(c.noop_argv(noop_cfg, v2), cwd=folder, log_name=f"noop-{run}").check()
                walls["no-op SDK target"].append(noop.wall)
                peaks["no-op SDK target"].append(noop.maxrss_kb)
                c.say(f"  run {run + 1}: no-op SDK target {noop.wall:.1f}s, peak RSS {c.mib(noop.maxrss_kb)}")
        finally:
            sb.stop()

        med = {k: c.median(v) for k, v in walls.items()}
        out = []
        for name in walls:
            out.append(
                (
                    name,
                    " ".join(f"{w:.1f}" for w in walls[name]),
                    f"{med[name]:.1f}",
                    f"{rows / med[name]:,.0f}",
                    c.mib(max(peaks[name])),
                    f"{c.median(sent_counts):,.0f} (expected {len(changed):,})" if name == "target-loops" else "-",
                )
            )
        c.say("")
        c.say(c.table(out, ["target", "wall s (runs)", "median s", "rows/s", "peak RSS", "requests sent"]))
        ratio = med["no-op SDK target"] / med["target-loops"]
        c.say("")
        c.say(
            f"RESULT ledger ({backend}): second run of {rows:,} rows ({len(changed):,} changed) with the ledger warm: "
            f"{rows / med['target-loops']:,.0f} rows/s = {ratio:.2f}x the no-op SDK target's "
            f"{rows / med['no-op SDK target']:,.0f} rows/s; peak RSS {c.mib(max(peaks['target-loops']))} "
            f"(no-op {c.mib(max(peaks['no-op SDK target']))}); requests sent {c.median(sent_counts):,.0f}, "
            f"expected {len(changed):,} ({'exact' if set(sent_counts) == {len(changed)} else 'DIFFERENT'}); "
            f"ledger {per_contact:,.0f} bytes per contact"
        )
        return (
            backend,
            f"{rows / med['target-loops']:,.0f}",
            f"{rows / med['no-op SDK target']:,.0f}",
            f"{ratio:.2f}x",
            f"{per_contact:,.0f}",
        )


def duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


CONTACTS = "target_loops_contacts_v3"


class SqliteStore:
    """The SQLite ledger file: its figures, a saved copy of the warm state, and restoring it before each run."""

    def __init__(self, path: Path) -> None:
        self.path, self.saved = path, path.with_name("ledger-warm.sqlite")

    def reset(self) -> None:
        for stale in self.path.parent.glob(self.path.name + "*"):
            stale.unlink()

    def figures(self) -> tuple[int, int]:
        with sqlite3.connect(self.path) as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            count = int(conn.execute(f"SELECT count(*) FROM {CONTACTS}").fetchone()[0])
        return count, sum(p.stat().st_size for p in self.path.parent.glob(self.path.name + "*"))

    def save(self) -> None:
        copy_sqlite(self.path, self.saved)

    def restore(self) -> None:
        copy_sqlite(self.saved, self.path)


class PgStore:
    """The PostgreSQL ledger: the same, with the warm contacts kept in a table of their own."""

    def __init__(self, url: str) -> None:
        import sqlalchemy as sa

        from target_loops.ledger import normalize_url

        self.engine = sa.create_engine(normalize_url(url))
        self.sa = sa

    def _sql(self, *statements: str) -> Any:
        with self.engine.begin() as conn:
            result = None
            for statement in statements:
                result = conn.execute(self.sa.text(statement))
            return result

    def reset(self) -> None:
        self._sql(*(f"DROP TABLE IF EXISTS {t}" for t in (CONTACTS, "target_loops_events_v3", "target_loops_teams",
                                                         "target_loops_namespaces", "target_loops_properties",
                                                         "target_loops_names", "target_loops_meta",
                                                         "bench_saved_contacts")))  # fmt: skip

    def figures(self) -> tuple[int, int]:
        count = int(self._sql(f"SELECT count(*) FROM {CONTACTS}").scalar_one())
        size = int(self._sql(f"SELECT pg_total_relation_size('{CONTACTS}')").scalar_one())
        return count, size

    def save(self) -> None:
        self._sql(f"CREATE TABLE bench_saved_contacts AS SELECT * FROM {CONTACTS}")

    def restore(self) -> None:
        self._sql(f"TRUNCATE {CONTACTS}", f"INSERT INTO {CONTACTS} SELECT * FROM bench_saved_contacts")


class PgServer:
    """A throwaway PostgreSQL server (tests/warehouse/pg.sh) for the PostgreSQL ledger."""

    def __init__(self) -> None:
        import os
        import subprocess
        import tempfile

        self.env = {**os.environ, "WAREHOUSE_PG_DIR": tempfile.mkdtemp(prefix="bench-ledger-pg.")}
        script = str(c.REPO / "tests" / "warehouse" / "pg.sh")
        self.script, self.subprocess = script, subprocess
        out = subprocess.run([script, "start"], env=self.env, check=True, capture_output=True, text=True).stdout
        self.url = out.strip().split("=", 1)[1].strip("'\"")

    def stop(self) -> None:
        self.subprocess.run([self.script, "destroy"], env=self.env, check=False, capture_output=True)


def copy_sqlite(source: Path, dest: Path) -> None:
    """A consistent copy of a SQLite database (WAL folded in), replacing ``dest``."""
    for stale in dest.parent.glob(dest.name + "*"):
        stale.unlink()
    with sqlite3.connect(source) as src, sqlite3.connect(dest) as dst:
        src.backup(dst)
    shutil.copymode(source, dest)


if __name__ == "__main__":
    main()
