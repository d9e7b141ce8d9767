"""Goal 3 of issue 5: the local path of target-loops against the SDK's own floor.

``dry_run: true`` (nothing sent) on Segment-shaped records (half ``identify`` over 20,000 users, half ``track``,
nested JSON as in ``sample_streams/segment_export.singer``), record validation on, versus the no-op singer-sdk
target (``bench/noop_target.py``) on the same file in the same run. Both run as CLI subprocesses with ``--input``,
alternately, several times; the figures are medians.

Records/s are given two ways: over the whole process (what a user waits for) and net of the process's fixed
cost (start-up, imports, connecting), measured in the same run on a one-record file of the same shape.
The goal is a ratio (target-loops records/s ÷ no-op records/s) of at least 2.

Variants:
- ``dry run``: the goal's case (a dry run with no ledger yet: nothing to compare fingerprints with);
- ``dry run, ledger known``: the dry run of a team already synced (its ledger knows the team, so each batch is
  fingerprinted and looked up in the ledger, read only). The ledger holds none of these contacts;
- ``dry run, BATCH files``: the same records as BATCH messages (gzipped JSONL files, as a tap's ``batch_config``
  writes them), compared with the RECORD run: issue 25 asks for BATCH input at least as fast per row;
- ``small records``: half as many small Segment calls (identify with two traits, track with one property) against
  the no-op target on the same file: where a target's own cost per record shows most (issue 25's second case).

    .venv/bin/python bench/local_path.py [--quick] [--runs 3] [--records 200000] [--small-records N] [--profile]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import common as c
import gen


def main() -> None:
    p = c.parser(__doc__.split("\n\n")[0])
    p.add_argument("--records", type=int, help="records in the input (default 200,000; --quick: 20,000)")
    p.add_argument("--users", type=int, default=20_000, help="distinct users of the identify half")
    p.add_argument("--small-records", type=int, help="small mixed records (default: half of --records)")
    p.add_argument("--runs", type=int, default=3, help="runs of each variant (median reported)")
    p.add_argument("--no-known", action="store_true", help="skip the 'ledger known' variant")
    p.add_argument("--profile", action="store_true", help="also profile one run of each target-loops variant")
    p.add_argument("--profile-records", type=int, default=50_000, help="records in the profiled runs")
    args = p.parse_args()
    records = args.records or (20_000 if args.quick else 200_000)
    c.header("local path: dry run vs the no-op SDK target", args)

    with c.Workdir(args, "local") as wd:
        data = wd / "segment.singer"
        info = gen.segment_export(data, records, users=args.users)
        small = wd / "small.singer"
        small_records = args.small_records or records // 2
        gen.small_export(small, small_records, users=args.users)
        batch = gen.as_batch(data, wd / "segment.batch.singer", wd.sub("batch-files"))
        c.say(
            f"input: {records:,} records ({info['identify']:,} identify over {info['users']:,} users, "
            f"{info['track']:,} track), {data.stat().st_size / 1e6:.0f} MB; the same records as BATCH files "
            f"(gzipped JSONL, 5,000 rows a file); {small_records:,} small mixed records (identify with 2 traits, "
            f"track with 1 property), {small.stat().st_size / 1e6:.0f} MB; validation on; {args.runs} runs each"
        )
        inputs = {
            "segment": (data, records, gen.head(data, wd / "startup.singer", 1)),
            "batch": (batch, records, gen.head(data, wd / "startup.singer", 1)),
            "small": (small, small_records, gen.head(small, wd / "startup-small.singer", 1)),
        }
        noop = c.write_config(wd / "noop.json", {})
        dry = c.write_config(wd / "dry.json", dry_config(wd, "cold"))
        variants: dict[str, tuple[Any, Path, str]] = {
            NOOP: (c.noop_argv, noop, "segment"),
            DRY: (c.loops_argv, dry, "segment"),
        }
        if not args.no_known:
            known = dry_config(wd, "known")
            seed_known_team(known["ledger_url"])
            variants[KNOWN] = (c.loops_argv, c.write_config(wd / "known.json", known), "segment")
        variants[BATCH] = (c.loops_argv, dry, "batch")
        variants[NOOP_SMALL] = (c.noop_argv, noop, "small")
        variants[DRY_SMALL] = (c.loops_argv, dry, "small")

        startup: dict[str, list[float]] = {name: [] for name in variants}
        walls: dict[str, list[float]] = {name: [] for name in variants}
        rss: dict[str, list[int]] = {name: [] for name in variants}
        for run in range(args.runs):
            for index, (name, (argv, config, key)) in enumerate(variants.items()):
                path, _, first = inputs[key]
                base = c.run(argv(config, first), cwd=wd.path, log_name=f"v{index}-startup-{run}").check()
                startup[name].append(base.wall)
                proc = c.run(argv(config, path), cwd=wd.path, log_name=f"v{index}-{run}").check()
                walls[name].append(proc.wall)
                rss[name].append(proc.maxrss_kb)
                c.say(
                    f"  run {run + 1}: {name}: {proc.wall:.2f}s (start-up {base.wall:.2f}s), "
                    f"peak RSS {c.mib(proc.maxrss_kb)}"
                )

        med = {n: c.median(w) for n, w in walls.items()}
        net = {n: max(c.median(walls[n]) - c.median(startup[n]), 1e-9) for n in variants}
        #: Each variant against the baseline read from the same input (the BATCH run against the RECORD run).
        baseline = {NOOP: NOOP, DRY: NOOP, KNOWN: NOOP, BATCH: DRY, NOOP_SMALL: NOOP_SMALL, DRY_SMALL: NOOP_SMALL}
        rows = []
        for name, (_, _, key) in variants.items():
            n = inputs[key][1]
            floor = baseline[name]
            rows.append(
                (
                    name,
                    " ".join(f"{w:.2f}" for w in walls[name]),
                    f"{med[name]:.2f}",
                    f"{c.median(startup[name]):.2f}",
                    f"{n / med[name]:,.0f}",
                    f"{n / net[name]:,.0f}",
                    f"{med[floor] / med[name]:.2f} ({floor})",
                    f"{net[floor] / net[name]:.2f}",
                    c.mib(max(rss[name])),
                )
            )
        c.say("")
        c.say(
            c.table(
                rows,
                [
                    "variant",
                    "wall s (runs)",
                    "median s",
                    "start-up s",
                    "records/s",
                    "records/s net",
                    "ratio vs baseline",
                    "ratio net",
                    "peak RSS",
                ],
            )
        )
        c.say("")
        for goal, floor, what in (
            (DRY, NOOP, "Segment records"),
            (DRY_SMALL, NOOP_SMALL, "small mixed records"),
        ):
            ratio, ratio_net = med[floor] / med[goal], net[floor] / net[goal]
            c.say(
                f"RESULT local path, {what}: target-loops dry run = {ratio:.2f}x the no-op SDK target's records/s "
                f"({ratio_net:.2f}x net of start-up); goal >= 2x: {'met' if ratio >= 2 else 'NOT met'}"
            )
        per_row = med[DRY] / med[BATCH]
        c.say(
            f"RESULT BATCH input: {per_row:.2f}x the rows/s of the same records as RECORD lines "
            f"({net[DRY] / net[BATCH]:.2f}x net); goal >= 1x: {'met' if per_row >= 1 else 'NOT met'}"
        )

        if args.profile:
            profile(wd, {n: v[:2] for n, v in variants.items() if v[2] == "segment"}, args.profile_records, args.users)


NOOP = "no-op SDK target"
DRY = "target-loops dry run"
KNOWN = "target-loops dry run, ledger known"
BATCH = "target-loops dry run, BATCH files"
NOOP_SMALL = "no-op SDK target, small records"
DRY_SMALL = "target-loops dry run, small records"


def dry_config(wd: c.Workdir, name: str) -> dict:
    return {
        "dry_run": True,
        "ledger_url": f"sqlite:///{wd.path / f'ledger-{name}.sqlite'}",
        "rejects_path": str(wd.path / f"rejects-{name}.jsonl"),
    }


def seed_known_team(ledger_url: str) -> None:
    """A ledger that knows one team at the default base_url (as after a first real sync), and no contacts."""
    from target_loops.ledger import Ledger
    from target_loops.target import DEFAULT_BASE_URL

    ledger = Ledger(ledger_url)
    ledger.resolve_team(base_url=DEFAULT_BASE_URL, team_name="Bench team", api_key="bench-key", list_ids=[])
    ledger.close()


def profile(wd: c.Workdir, variants: dict, records: int, users: int) -> None:
    data = wd / "profile.singer"
    gen.segment_export(data, records, users=users)
    for name, (argv, config) in variants.items():
        if not name.startswith("target-loops"):
            continue
        prof = wd / f"{'known' if 'known' in name else 'cold'}.prof"
        c.run(c.profile_argv(argv(config, data), prof), cwd=wd.path, log_name=f"profile-{prof.stem}").check()
        c.say("")
        c.say(f"--- cProfile of '{name}' on {records:,} records ---")
        c.say(c.profile_report(prof))
    prof = wd / "noop.prof"
    argv, config = variants["no-op SDK target"]
    c.run(c.profile_argv(argv(config, data), prof), cwd=wd.path, log_name="profile-noop").check()
    c.say("")
    c.say(f"--- cProfile of the no-op SDK target on {records:,} records ---")
    c.say(c.profile_report(prof, top=12))


if __name__ == "__main__":
    main()
