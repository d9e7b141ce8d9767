"""Goal 2 of issue 5: minimum requests. Requests sent = distinct contacts whose payload changed + new events.

Two runs of the target-loops CLI against one sandbox (unlimited rate, strict, the sample team) and one ledger:

- run 1: a warehouse ``identifies`` stream in which every user appears several times (rows in random order,
  ``plan`` differing from row to row, so only a contact's latest row holds its final payload), interleaved with
  ``tracks`` events. Ideal: one upsert per distinct contact + one request per event.
- run 2: the same ``identifies`` rows, except that a few users' latest row has a new ``plan``; every event of run 1
  replayed, plus new events. Ideal: one upsert per changed contact + one request per new event.

"Requests sent" is counted by the sandbox (its request log, GET excluded), never by the target. The ideal is
computed from the generated data alone, independently of target-loops' code.

Two configurations: the target's defaults (``batch_size_rows`` 500), and one batch for the whole input (to show
what batch boundaries cost when a contact's rows fall into several batches). Both with ``fold_updates: false``: the
ideal here counts an update and an event as two requests; ``bench/fold.py`` measures what folding saves on top.

    .venv/bin/python bench/min_requests.py [--quick]
"""

from __future__ import annotations

import collections
import random
from pathlib import Path
from typing import Any

import common as c
import gen

UPSERT = "/api/v1/contacts/update"
EVENT = "/api/v1/events/send"


def main() -> None:
    p = c.parser(__doc__.split("\n\n")[0])
    p.add_argument("--users", type=int, help="distinct contacts (default 2,000; --quick 200)")
    p.add_argument("--rows-per-user", type=float, default=5.0, help="identifies rows per contact on average")
    args = p.parse_args()
    users = args.users or (200 if args.quick else 2_000)
    rows = int(users * args.rows_per_user)
    events1, events2 = int(users * 1.5), users // 2
    changed = max(1, users // 50)
    c.header("minimum requests: sent vs ideal", args)
    from target_loops.sandbox import Sandbox, SandboxConfig

    team = c.sandbox_team()
    with c.Workdir(args, "minreq") as wd:
        plans = build(users, rows, events1, events2, changed)
        run1, run2 = wd / "run1.singer", wd / "run2.singer"
        write_run(run1, plans["rows"], plans["events1"])
        write_run(run2, plans["rows2"], plans["events1"] + plans["events2"])
        ideal1 = {"upserts": users, "events": events1}
        ideal2 = {"upserts": plans["changed_payloads"], "events": events2}
        c.say(f"run 1: {rows:,} identifies rows over {users:,} contacts (in random order), {events1:,} events")
        c.say(
            f"run 2: the same rows with {changed} contacts' latest plan changed, the {events1:,} events replayed, "
            f"{events2:,} new events"
        )

        results = []
        for label, extra in (
            ("defaults (batch_size_rows 500)", {}),
            ("one batch for the whole input", {"batch_size_rows": rows + events1 + events2}),
        ):
            folder = wd.sub(label.split()[0])
            sandbox = Sandbox(SandboxConfig(rate_limit=0, properties=team["properties"], lists=team["lists"])).start()
            try:
                config = c.write_config(
                    folder / "config.json",
                    {
                        "api_key": c.SANDBOX_KEY,
                        "base_url": sandbox.url,
                        "ledger_url": f"sqlite:///{folder / 'ledger.sqlite'}",
                        "rejects_path": str(folder / "rejects.jsonl"),
                        "requests_per_second": 1000,
                        "fold_updates": False,
                        **extra,
                    },
                )
                counts = []
                for n, data in ((1, run1), (2, run2)):
                    start = len(sandbox.store.requests())
                    proc = c.run(c.loops_argv(config, data), cwd=folder, log_name=f"run{n}", timeout=900).check()
                    log = c.writes(sandbox.store.requests()[start:])
                    by = collections.Counter(r["path"] for r in log)
                    statuses = collections.Counter(r["status"] for r in log)
                    counts.append(
                        {
                            "upserts": by[UPSERT],
                            "events": by[EVENT],
                            "total": len(log),
                            "statuses": dict(statuses),
                            "wall": proc.wall,
                        }
                    )
                final = {x["userId"]: x.get("plan") for x in sandbox.store.contacts()}
            finally:
                sandbox.stop()
            wrong = sum(1 for u, plan in plans["final_plan"].items() if final.get(f"w_{u}") != plan)
            results.append((label, counts, wrong))

        table_rows = []
        for label, counts, wrong in results:
            for n, (got, ideal) in enumerate(zip(counts, (ideal1, ideal2), strict=True), start=1):
                total_ideal = ideal["upserts"] + ideal["events"]
                table_rows.append(
                    (
                        label,
                        f"run {n}",
                        got["upserts"],
                        ideal["upserts"],
                        got["events"],
                        ideal["events"],
                        got["total"],
                        total_ideal,
                        f"{got['total'] / total_ideal:.3f}" if total_ideal else "-",
                        " ".join(f"{k}:{v}" for k, v in sorted(got["statuses"].items(), key=str)),
                    )
                )
            c.say(f"{label}: final contacts in the sandbox with the wrong plan: {wrong}")
        c.say("")
        c.say(
            c.table(
                table_rows,
                [
                    "configuration",
                    "run",
                    "upserts sent",
                    "ideal",
                    "events sent",
                    "ideal",
                    "requests sent",
                    "ideal",
                    "sent / ideal",
                    "statuses",
                ],
            )
        )
        c.say("")
        for row in table_rows:
            c.say(
                f"RESULT min requests, {row[0]}, {row[1]}: sent {row[6]}, ideal {row[7]} "
                f"({'met' if row[6] == row[7] else 'NOT met'})"
            )


def build(users: int, rows: int, events1: int, events2: int, changed: int) -> dict[str, Any]:
    """The rows and events of both runs, and what an ideal sync must send (from the data alone)."""
    rng = random.Random(11)
    owners = list(range(users)) + [rng.randrange(users) for _ in range(rows - users)]
    rng.shuffle(owners)
    identifies = []
    last_row: dict[int, int] = {}
    for row, user in enumerate(owners):
        identifies.append(gen.warehouse_identify(row, user, plan=rng.choice(gen.PLANS)))
        last_row[user] = row
    changed_users = rng.sample(range(users), changed)
    rows2 = [dict(r) for r in identifies]
    for user in changed_users:
        rows2[last_row[user]]["plan"] = "enterprise"  # no row of run 1 has this plan: the payload changes
    final1 = {u: identifies[r]["plan"] for u, r in last_row.items()}
    final2 = {u: rows2[r]["plan"] for u, r in last_row.items()}
    return {
        "rows": identifies,
        "rows2": rows2,
        "events1": [(f"ev-{i}", rng.randrange(users)) for i in range(events1)],
        "events2": [(f"ev-{events1 + i}", rng.randrange(users)) for i in range(events2)],
        "changed_payloads": sum(1 for u in final1 if final1[u] != final2[u]),
        "final_plan": final2,
    }


def write_run(path: Path, identifies: list[dict[str, Any]], events: list[tuple[str, int]]) -> None:
    """Identifies rows and events interleaved in a fixed pseudo-random order; rows keep their own order."""
    rng = random.Random(5)
    tracks = [
        gen.warehouse_track(event_id, user, second=int(event_id.split("-")[1]), name="Logged In")
        for event_id, user in events
    ]
    slots = ["identifies"] * len(identifies) + ["tracks"] * len(tracks)
    rng.shuffle(slots)
    streams = {"identifies": iter(identifies), "tracks": iter(tracks)}
    records = ((s, next(streams[s])) for s in slots)
    schemas = {k: gen.WAREHOUSE_SCHEMAS[k] for k in ("identifies", "tracks")}
    gen.write(path, schemas, records, state_every=1_000)


if __name__ == "__main__":
    main()
