"""Issue 20's benchmark: a first import of 1,000,000 warehouse rows (200,000 people) with ``new_contacts: csv``.

The same input goes through target-loops twice, alternately, against one sandbox that has the team's properties:
the dry run (``dry_run: true``, the default ``new_contacts: create``: the plan of an import through the API) and
the real run with ``new_contacts: csv``, which writes every person unknown to the ledger to one CSV for Loops' upload
instead of sending a request. Each run starts from an empty ledger. Reported: rows/s of both, by the wall clock and
per CPU second of the process (the CSV run must be no slower than the dry run; per CPU second, because the machine is
shared and two runs minutes apart meet different loads), the write requests the sandbox received during the CSV
run (must be 0), its peak RSS (must be under 500 MB), the CSV's rows (must be 200,000), and what the same import
would take through the API at 10 requests/s (one request per person: 200,000 people, about 5.6 hours; 1,000,000
people, about 28 hours).

The rows are Segment ``identifies`` rows (``bench/gen.py``), five per person, spread through the input as a
warehouse returns them, without the ``mailing_lists_*`` column: a CSV upload sets lists for a whole file in Loops'
upload screen, so rows that carry list flags are held back for a replay after the upload (``pending_import``), which
is not what this measures.

    .venv/bin/python bench/first_import.py [--quick] [--rows 1000000] [--people 200000] [--runs 1]
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from typing import Any

import common as c
import gen

LIMIT_MB = 500


def rows(n: int, people: int) -> Iterator[tuple[str, dict[str, Any]]]:
    """``n`` identifies rows over ``people`` people: row r is person r mod ``people`` (each person's rows apart)."""
    for row in range(n):
        record = gen.warehouse_identify(row, row % people)
        del record[f"mailing_lists_{gen.NEWSLETTER}"]
        yield "identifies", record


def main() -> None:
    p = c.parser(__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, help="warehouse rows (default 1,000,000; --quick 50,000)")
    p.add_argument("--people", type=int, help="people among them (default 200,000; --quick 10,000)")
    p.add_argument("--runs", type=int, default=1, help="runs of each (alternating; medians)")
    args = p.parse_args()
    n = args.rows or (50_000 if args.quick else 1_000_000)
    people = args.people or (10_000 if args.quick else 200_000)
    c.header(f"first import: {n:,} rows, {people:,} people, dry run vs new_contacts: csv", args)
    from target_loops.sandbox import Sandbox, SandboxConfig

    team = c.sandbox_team()
    schema = {k: v for k, v in gen.WAREHOUSE_SCHEMAS["identifies"].items()}
    schema["properties"] = {
        k: v for k, v in schema["properties"].items() if not k.startswith("mailing_lists_")
    }  # the rows' shape
    sandbox = Sandbox(SandboxConfig(rate_limit=0, properties=team["properties"], lists=team["lists"])).start()
    try:
        with c.Workdir(args, "first-import") as wd:
            data = wd / "identifies.singer"
            gen.write(data, {"identifies": schema}, rows(n, people), state_every=10_000)
            c.say(f"input: {n:,} rows, {data.stat().st_size / 1e6:.0f} MB")
            walls: dict[str, list[float]] = {"dry run": [], "csv": []}
            cpus: dict[str, list[float]] = {"dry run": [], "csv": []}
            peaks: dict[str, int] = {"dry run": 0, "csv": 0}
            csv_writes: list[int] = []
            csv_rows = 0
            for run in range(args.runs):
                for name in ("dry run", "csv"):
                    ledger = wd / f"ledger-{name.replace(' ', '-')}-{run}.sqlite"
                    out = wd / f"new_contacts-{run}.csv"
                    settings: dict[str, Any] = {
                        "api_key": c.SANDBOX_KEY,
                        "base_url": sandbox.url,
                        "ledger_url": f"sqlite:///{ledger}",
                        "rejects_path": str(wd / f"rejects-{run}.jsonl"),
                        "unknown_properties": "drop",
                    }
                    if name == "dry run":
                        settings["dry_run"] = True
                    else:
                        settings.update(new_contacts="csv", new_contacts_path=str(out))
                    config = c.write_config(wd / f"{name.replace(' ', '-')}-{run}.json", settings)
                    before = len(c.writes(sandbox.store.requests()))
                    proc = c.run(c.loops_argv(config, data), cwd=wd.path, log_name=f"{name[:3]}-{run}").check()
                    walls[name].append(proc.wall)
                    cpus[name].append(proc.extra["cpu"])
                    peaks[name] = max(peaks[name], proc.maxrss_kb)
                    c.say(
                        f"  {name}: {proc.wall:.1f}s, {n / proc.wall:,.0f} rows/s; {proc.extra['cpu']:.1f} CPU s, "
                        f"{n / proc.extra['cpu']:,.0f} rows per CPU s; peak RSS {c.mib(proc.maxrss_kb)}"
                    )
                    if name == "csv":
                        csv_writes.append(len(c.writes(sandbox.store.requests())) - before)
                        with out.open(newline="", encoding="utf-8") as handle:
                            csv_rows = sum(1 for _ in csv.reader(handle)) - 1
                        out.unlink()
            data.unlink()
    finally:
        sandbox.stop()

    dry, wrote = n / c.median(walls["dry run"]), n / c.median(walls["csv"])
    dry_cpu, wrote_cpu = n / c.median(cpus["dry run"]), n / c.median(cpus["csv"])
    through_api = people / 10
    table = [
        ("dry run (new_contacts: create)", f"{dry:,.0f}", f"{dry_cpu:,.0f}", c.mib(peaks["dry run"]), "-", "-"),
        ("new_contacts: csv", f"{wrote:,.0f}", f"{wrote_cpu:,.0f}", c.mib(peaks["csv"]), str(max(csv_writes)),
         f"{csv_rows:,}"),
    ]  # fmt: skip
    c.say("")
    c.say(c.table(table, ["run", "rows/s", "rows per CPU s", "peak RSS", "write requests", "CSV rows"]))
    # The rate compared is per CPU second: on this shared machine the two runs meet different loads.
    ok = max(csv_writes) == 0 and peaks["csv"] < LIMIT_MB * 1024 and csv_rows == people
    c.say("")
    c.say(
        f"RESULT first import: CSV of {csv_rows:,} people in {c.median(walls['csv']):.0f} s ({wrote:,.0f} rows/s, "
        f"{wrote_cpu:,.0f} per CPU s: {wrote_cpu / dry_cpu:.2f}x the dry run's {dry_cpu:,.0f}; wall "
        f"{wrote / dry:.2f}x); {max(csv_writes)} write requests; peak RSS "
        f"{c.mib(peaks['csv'])}; through the API at 10/s: {through_api / 3600:.1f} h for these {people:,} people. "
        f"Goals: 0 writes, < {LIMIT_MB} MB, one row per person: {'met' if ok else 'NOT met'}; no slower than the dry "
        f"run: {'met' if wrote >= dry else 'NOT met'} by the wall clock, {'met' if wrote_cpu >= dry_cpu else 'NOT met'}"
        " per CPU second"
    )


if __name__ == "__main__":
    main()
