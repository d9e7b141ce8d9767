"""Goal 4 of issue 5: bounded memory. Peak RSS of the dry run on a small and a 10x larger input.

The same Segment-shaped input as ``local_path.py`` (half ``identify`` over 20,000 users, half ``track``) at two
sizes, ``dry_run: true``, validation on, each run in a fresh process whose peak RSS is read from its own rusage
(``os.wait4``). The no-op singer-sdk target runs on the same files as the baseline: its growth is the SDK's.
The goal: the two peaks of target-loops differ by less than 25%.

    .venv/bin/python bench/memory.py [--quick] [--sizes 100000 1000000]
"""

from __future__ import annotations

import common as c
import gen


def main() -> None:
    p = c.parser(__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs=2, help="small and large record counts (default 100,000 1,000,000)")
    p.add_argument("--users", type=int, default=20_000)
    p.add_argument("--runs", type=int, default=1, help="runs per size (the largest peak is kept)")
    args = p.parse_args()
    small, large = args.sizes or ((10_000, 100_000) if args.quick else (100_000, 1_000_000))
    c.header("memory: peak RSS of the dry run, small vs large input", args)

    with c.Workdir(args, "memory") as wd:
        noop_config = c.write_config(wd / "noop.json", {})
        peaks: dict[tuple[str, int], int] = {}
        walls: dict[tuple[str, int], float] = {}
        for size in (small, large):
            data = wd / f"segment-{size}.singer"
            gen.segment_export(data, size, users=args.users)
            c.say(f"input: {size:,} records, {data.stat().st_size / 1e6:.0f} MB")
            dry_config = c.write_config(
                wd / f"dry-{size}.json",
                {
                    "dry_run": True,
                    "ledger_url": f"sqlite:///{wd.path / f'ledger-{size}.sqlite'}",
                    "rejects_path": str(wd.path / f"rejects-{size}.jsonl"),
                },
            )
            for name, argv, config in (
                ("target-loops dry run", c.loops_argv, dry_config),
                ("no-op SDK target", c.noop_argv, noop_config),
            ):
                for run in range(args.runs):
                    proc = c.run(argv(config, data), cwd=wd.path, log_name=f"{name.split()[0]}-{size}-{run}").check()
                    peaks[name, size] = max(peaks.get((name, size), 0), proc.maxrss_kb)
                    walls[name, size] = proc.wall
                    c.say(f"  {name}, {size:,} records: peak RSS {c.mib(proc.maxrss_kb)}, {proc.wall:.1f}s")
            data.unlink()  # the large file is ~450 MB

        rows = []
        for name in ("target-loops dry run", "no-op SDK target"):
            a, b = peaks[name, small], peaks[name, large]
            rows.append(
                (
                    name,
                    c.mib(a),
                    c.mib(b),
                    f"{100 * (b - a) / a:+.1f}%",
                    f"{small / walls[name, small]:,.0f}",
                    f"{large / walls[name, large]:,.0f}",
                )
            )
        c.say("")
        c.say(
            c.table(
                rows,
                [
                    "target",
                    f"peak RSS {small:,}",
                    f"peak RSS {large:,}",
                    "difference",
                    f"records/s {small:,}",
                    f"records/s {large:,}",
                ],
            )
        )
        a, b = peaks["target-loops dry run", small], peaks["target-loops dry run", large]
        diff = 100 * (b - a) / a
        c.say("")
        c.say(
            f"RESULT memory: dry run peak RSS {c.mib(a)} on {small:,} records, {c.mib(b)} on {large:,} "
            f"({diff:+.1f}%); goal < 25%: {'met' if abs(diff) < 25 else 'NOT met'}"
        )


if __name__ == "__main__":
    main()
