"""Issue 9 C: a contact's update rides on its event. Requests per workload, without and with the fold.

Workloads (Segment's nested JSON, one stream of identifies and one of tracks, as a sync reads them):

- "identify + 2 tracks": each user has one identify and two later tracks (the issue's case: 40 users → 120
  requests without the fold, 80 with it);
- "identify only": no events (nothing to fold into: the same count either way);
- "2 identifies + 1 track": two identifies per user (coalesced into one update) and a later track.

Each workload runs twice against a fresh sandbox (unlimited rate, strict team schema): ``fold_updates: false`` (the
baseline, what 0.1 sent) and the default. "Requests" are counted by the sandbox's log (GETs excluded), and every run
is checked for the same end state: each contact's final traits, each event once.

    .venv/bin/python bench/fold.py [--quick] [--users 40]
"""

from __future__ import annotations

import json
from typing import Any

import common as c


def workload(kind: str, users: int) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = [
        {"type": "SCHEMA", "stream": "identify", "schema": {"type": "object", "properties": {}}, "key_properties": []},
        {"type": "SCHEMA", "stream": "track", "schema": {"type": "object", "properties": {}}, "key_properties": []},
    ]
    identifies = 2 if kind == "2 identifies + 1 track" else 1
    tracks = {"identify + 2 tracks": 2, "identify only": 0, "2 identifies + 1 track": 1}[kind]
    for n in range(users):
        for i in range(identifies):
            traits = {"email": f"user{n}@example.com", "plan": ["free", "pro"][i], "seats": n + i}
            call = {"type": "identify", "messageId": f"i{n}-{i}", "userId": f"u{n}", "traits": traits,
                    "timestamp": f"2026-11-01T10:0{i}:00Z"}  # fmt: skip
            messages.append({"type": "RECORD", "stream": "identify", "record": call})
    for n in range(users):
        for k in range(tracks):
            call = {"type": "track", "messageId": f"t{n}-{k}", "userId": f"u{n}", "event": "Viewed Pricing",
                    "timestamp": f"2026-11-01T10:1{k}:00Z", "properties": {"step": k}}  # fmt: skip
            messages.append({"type": "RECORD", "stream": "track", "record": call})
    messages.append({"type": "STATE", "value": {"done": True}})
    return messages


def main() -> None:
    p = c.parser(__doc__.split("\n\n")[0])
    p.add_argument("--users", type=int, help="users per workload (default 40; --quick 10)")
    args = p.parse_args()
    users = args.users or (10 if args.quick else 40)
    c.header("fold: requests per workload, without and with the fold", args)
    from target_loops.sandbox import Sandbox, SandboxConfig

    properties = [{"key": "plan", "type": "string"}, {"key": "seats", "type": "number"}]
    rows = []
    with c.Workdir(args, "fold") as wd:
        for kind in ("identify + 2 tracks", "identify only", "2 identifies + 1 track"):
            data = wd / (kind.replace(" ", "_").replace("+", "and") + ".singer")
            data.write_text("".join(json.dumps(m) + "\n" for m in workload(kind, users)))
            counts = {}
            for fold in (False, True):
                folder = wd.sub(f"{data.stem}-{fold}")
                sandbox = Sandbox(SandboxConfig(rate_limit=0, properties=properties)).start()
                try:
                    config = c.write_config(
                        folder / "config.json",
                        {
                            "api_key": c.SANDBOX_KEY,
                            "base_url": sandbox.url,
                            "ledger_url": f"sqlite:///{folder / 'ledger.sqlite'}",
                            "rejects_path": str(folder / "rejects.jsonl"),
                            "requests_per_second": 1000,
                            "fold_updates": fold,
                        },
                    )
                    c.run(c.loops_argv(config, data), cwd=folder, log_name=f"run-{fold}").check()
                    counts[fold] = len(c.writes(sandbox.store.requests()))
                    check(sandbox, kind, users)
                finally:
                    sandbox.stop()
            rows.append((kind, users, counts[False], counts[True], f"{counts[True] / counts[False]:.2f}"))
    c.say(c.table(rows, ["workload", "users", "requests, no fold (0.1)", "requests, folded", "ratio"]))
    c.say("")
    for kind, n, before, after, _ in rows:
        c.say(f"RESULT fold, {kind}, {n} users: {before} requests without the fold, {after} with it")


def check(sandbox: Any, kind: str, users: int) -> None:
    """The same end state either way: each contact's final traits, each event exactly once."""
    contacts = {x["userId"]: x for x in sandbox.store.contacts()}
    final_plan = "pro" if kind == "2 identifies + 1 track" else "free"
    wrong = [u for u in range(users) if contacts.get(f"u{u}", {}).get("plan") != final_plan]
    if wrong:
        raise SystemExit(f"{kind}: {len(wrong)} contacts with the wrong plan (e.g. u{wrong[0]})")
    keys = [e["idempotencyKey"] for e in sandbox.store.events()]
    tracks = {"identify + 2 tracks": 2, "identify only": 0, "2 identifies + 1 track": 1}[kind]
    if len(keys) != len(set(keys)) or len(keys) != users * tracks:
        raise SystemExit(f"{kind}: {len(keys)} events in the sandbox, {len(set(keys))} distinct; want {users * tracks}")


if __name__ == "__main__":
    main()
