"""Issue 12: ``tap-segment-archive`` alone versus the target's dry run on the same calls.

The tap must never be the bottleneck of a backfill: its records/s on a 200,000-call archive must be at least the
target's ``dry_run`` records/s on the tap's own output (the target's fastest local path; a real sync is bounded by
Loops' 10 requests/s, far below both).

The archive is generated in Segment's layout (``segment-logs/<source>/<received-day ms>/<ts>.<hash>.gz``):
the calls of ``bench/gen.py``'s Segment export (half ``identify`` over 20,000 users, half ``track``, the shapes of
``bench/local_path.py``, so the dry-run figure is comparable with that script's) plus Segment's envelope
(``context``, ``integrations``, ``sentAt``, ``originalTimestamp``...), spread over 5 received-days of 4 gzipped
copies each. Both programs run as CLI subprocesses, alternately, ``--runs`` times (medians):

- the tap: ``tap-segment-archive --config c.json`` with its stdout to a file (spawn to exit; also net of its
  start-up, measured on a one-file archive in the same run);
- the baseline: ``target-loops --config dry.json --input <the tap's output>``, ``dry_run: true`` with a new ledger
  each run (``unmapped_streams: skip``: the tap also declares page/screen/group/alias streams).

    .venv/bin/python bench/tap_archive.py [--quick] [--runs 3] [--records 200000] [--days 5] [--files-per-day 4]
"""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path
from typing import Any

import common as c
import gen

SOURCE = "bEnChSrC01"
DAY_MS = 86_400_000
FIRST_DAY_MS = 1_793_491_200_000  # 2026-11-01, gen.BASE


def tap_argv(config: Path) -> list[str]:
    return [c.PY, "-m", "tap_segment_archive", "--config", str(config)]


def envelope(call: dict[str, Any], i: int) -> dict[str, Any]:
    """A gen.py call as Segment's archive holds it: the full envelope around the same traits/properties."""
    ts = call["timestamp"]
    call = {**call}
    call.setdefault("sentAt", ts)
    call.update(
        originalTimestamp=ts,
        integrations={},
        channel="client",
        projectId=SOURCE,
        version=2,
        context={**call["context"], "userAgent": "Mozilla/5.0 (X11; Linux x86_64)", "locale": "en-GB"},
    )
    return call


def write_archive(root: Path, records: int, *, days: int, files_per_day: int, users: int, seed: int = 1) -> dict:
    """``records`` calls (half identify, half track, shuffled) into days x files_per_day gzipped copies."""
    rng = random.Random(seed)
    kinds = [True] * (records // 2) + [False] * (records - records // 2)
    rng.shuffle(kinds)
    copies = days * files_per_day
    per_copy = -(-records // copies)
    written = 0
    for copy in range(copies):
        day = FIRST_DAY_MS + (copy // files_per_day) * DAY_MS
        stamp = day + (copy % files_per_day + 1) * 6 * 3_600_000
        folder = root / "segment-logs" / SOURCE / str(day)
        folder.mkdir(parents=True, exist_ok=True)
        lines = []
        for i in range(written, min(written + per_copy, records)):
            user = rng.randrange(users)
            call = gen.segment_identify(i, user, rng) if kinds[i] else gen.segment_track(i, user, rng)
            lines.append(json.dumps(envelope(call, i), separators=(",", ":")))
        written += len(lines)
        (folder / f"{stamp}.{copy:08x}.gz").write_bytes(gzip.compress(("\n".join(lines) + "\n").encode(), 6))
    size = sum(p.stat().st_size for p in root.rglob("*.gz"))
    return {"records": written, "files": copies, "gz_bytes": size}


def main() -> None:
    p = c.parser(__doc__.split("\n\n")[0])
    p.add_argument("--records", type=int, help="calls in the archive (default 200,000; --quick: 20,000)")
    p.add_argument("--users", type=int, default=20_000, help="distinct users of the identify half")
    p.add_argument("--days", type=int, default=5, help="received-day folders")
    p.add_argument("--files-per-day", type=int, default=4, help="gzipped copies per day")
    p.add_argument("--runs", type=int, default=3, help="runs of each program (median reported)")
    args = p.parse_args()
    records = args.records or (20_000 if args.quick else 200_000)
    c.header("tap-segment-archive alone vs target-loops dry run on the tap's output", args)

    with c.Workdir(args, "tap-archive") as wd:
        archive = wd.sub("archive")
        info = write_archive(archive, records, days=args.days, files_per_day=args.files_per_day, users=args.users)
        small = wd.sub("small")
        write_archive(small, 2, days=1, files_per_day=1, users=1)
        c.say(
            f"input: {info['records']:,} calls (half identify over {args.users:,} users, half track) in "
            f"{info['files']} gzipped files over {args.days} received-days, {info['gz_bytes'] / 1e6:.1f} MB gzipped; "
            f"{args.runs} runs each"
        )
        tap_config = c.write_config(wd / "tap.json", {"paths": [str(archive)]})
        small_config = c.write_config(wd / "tap-small.json", {"paths": [str(small)]})

        tap_walls: list[float] = []
        tap_startup: list[float] = []
        target_walls: list[float] = []
        tap_rss: list[int] = []
        target_rss: list[int] = []
        emitted = 0
        for run in range(args.runs):
            base = c.run(tap_argv(small_config), cwd=wd.path, log_name=f"tap-startup-{run}").check()
            tap_startup.append(base.wall)
            tap = c.run(tap_argv(tap_config), cwd=wd.path, log_name=f"tap-{run}").check()
            tap_walls.append(tap.wall)
            tap_rss.append(tap.maxrss_kb)
            emitted = sum(1 for line in tap.stdout_path.open("rb") if line.startswith(b'{"type":"RECORD"'))
            if emitted != info["records"]:
                raise SystemExit(f"the tap emitted {emitted:,} records, not {info['records']:,}")
            dry = {
                "dry_run": True,
                "unmapped_streams": "skip",
                "ledger_url": f"sqlite:///{wd.path / f'ledger-{run}.sqlite'}",
                "rejects_path": str(wd.path / f"rejects-{run}.jsonl"),
            }
            target = c.run(
                c.loops_argv(c.write_config(wd / f"dry-{run}.json", dry), tap.stdout_path),
                cwd=wd.path,
                log_name=f"target-{run}",
            ).check()
            target_walls.append(target.wall)
            target_rss.append(target.maxrss_kb)
            c.say(
                f"  run {run + 1}: tap {tap.wall:.2f}s (start-up {base.wall:.2f}s, "
                f"output {tap.stdout_path.stat().st_size / 1e6:.0f} MB), target dry run {target.wall:.2f}s"
            )

        tap_med, target_med = c.median(tap_walls), c.median(target_walls)
        tap_net = max(tap_med - c.median(tap_startup), 1e-9)
        tap_rate, target_rate = records / tap_med, records / target_med
        c.say("")
        c.say(
            c.table(
                [
                    (
                        "tap-segment-archive",
                        " ".join(f"{w:.2f}" for w in tap_walls),
                        f"{tap_med:.2f}",
                        f"{tap_rate:,.0f}",
                        f"{records / tap_net:,.0f}",
                        c.mib(max(tap_rss)),
                    ),
                    (
                        "target-loops dry run (baseline)",
                        " ".join(f"{w:.2f}" for w in target_walls),
                        f"{target_med:.2f}",
                        f"{target_rate:,.0f}",
                        "",
                        c.mib(max(target_rss)),
                    ),
                ],
                ["program", "wall s (runs)", "median s", "records/s", "records/s net of start-up", "peak RSS"],
            )
        )
        c.say("")
        c.say(
            f"RESULT tap archive: tap-segment-archive {tap_rate:,.0f} records/s = {tap_rate / target_rate:.2f}x "
            f"the target's dry run ({target_rate:,.0f} records/s) on the same {records:,} calls; "
            f"goal >= 1x: {'met' if tap_rate >= target_rate else 'NOT met'}"
        )


if __name__ == "__main__":
    main()
