"""Input generators: Singer files shaped like the bundled samples, deterministic for a given seed.

- Segment's JSON export (``identify``/``track`` with nested ``traits``/``properties``/``context``), as in
  ``sample_streams/segment_export.singer``;
- Segment's warehouse rows (``identifies``, ``tracks``, ``users``, ``order_completed``), as in
  ``sample_streams/warehouse_rows.singer``.

Every property and list the data uses exists in ``sample_streams/sandbox_team.json``, so a strict sandbox seeded
with that team accepts every request. Run it alone to write a file:

    python bench/gen.py segment 200000 /tmp/segment.singer
    python bench/gen.py identifies 1000000 /tmp/identifies.singer [--changed-every 100]
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

try:
    import msgspec

    _encode: Callable[[Any], bytes] = msgspec.json.Encoder().encode
except ImportError:  # msgspec ships with singer-sdk[msgspec]; plain json is the fallback
    import json

    def _encode(obj: Any) -> bytes:
        return json.dumps(obj, separators=(",", ":")).encode()


NEWSLETTER = "cm06f5v0e45nf0ml5754o9cix"
UPDATES = "cm06f5v0e45nf0ml5754o9ciy"
PLANS = ("free", "starter", "pro", "team")
FIRST = ("Ada", "Grace", "Linus", "Margaret", "Alan", "Barbara", "Dennis", "Frances", "Ken", "Radia")
LAST = ("Lovelace", "Hopper", "Torvalds", "Hamilton", "Turing", "Liskov", "Ritchie", "Allen", "Thompson", "Perlman")
EVENTS = ("Signed Up", "Logged In", "Order Completed", "Trial Started", "Invited Teammate", "Upgraded Plan")
BASE = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)

_S = {"type": ["string", "null"]}
_DT = {"type": ["string", "null"], "format": "date-time"}
_OBJ = {"type": ["object", "null"]}

# The schemas of sample_streams/segment_export.singer.
SEGMENT_SCHEMAS: dict[str, dict[str, Any]] = {
    "identify": {
        "properties": {
            "type": _S,
            "messageId": _S,
            "userId": _S,
            "anonymousId": _S,
            "email": _S,
            "timestamp": _DT,
            "receivedAt": _DT,
            "sentAt": _DT,
            "context": _OBJ,
            "traits": _OBJ,
        },
        "key_properties": ["messageId"],
    },
    "track": {
        "properties": {
            "type": _S,
            "messageId": _S,
            "userId": _S,
            "anonymousId": _S,
            "event": _S,
            "timestamp": _DT,
            "receivedAt": _DT,
            "context": _OBJ,
            "properties": _OBJ,
        },
        "key_properties": ["messageId"],
    },
}

_WAREHOUSE_COMMON = {
    "id": _S,
    "user_id": _S,
    "anonymous_id": _S,
    "received_at": _DT,
    "sent_at": _DT,
    "timestamp": _DT,
    "original_timestamp": _DT,
    "uuid": {"type": ["integer", "null"]},
    "uuid_ts": _DT,
    "context_ip": _S,
    "context_library_name": _S,
}

# The schemas of sample_streams/warehouse_rows.singer.
WAREHOUSE_SCHEMAS: dict[str, dict[str, Any]] = {
    "identifies": {
        "properties": {
            **_WAREHOUSE_COMMON,
            "email": _S,
            "first_name": _S,
            "last_name": _S,
            "plan": _S,
            "seats": {"type": ["integer", "null"]},
            "is_admin": {"type": ["boolean", "null"]},
            "trial_ends_at": _DT,
            f"mailing_lists_{NEWSLETTER}": {"type": ["boolean", "null"]},
        },
        "key_properties": ["id"],
    },
    "users": {
        "properties": {
            "id": _S,
            "received_at": _DT,
            "email": _S,
            "first_name": _S,
            "last_name": _S,
            "plan": _S,
            "seats": {"type": ["integer", "null"]},
        },
        "key_properties": ["id"],
    },
    "tracks": {
        "properties": {**_WAREHOUSE_COMMON, "event": _S, "event_text": _S, "context_traits_email": _S},
        "key_properties": ["id"],
    },
    "order_completed": {
        "properties": {
            **_WAREHOUSE_COMMON,
            "event": _S,
            "event_text": _S,
            "context_traits_email": _S,
            "order_id": _S,
            "revenue": {"type": ["number", "null"]},
            "currency": _S,
        },
        "key_properties": ["id"],
    },
}


def iso(second: int, millis: bool = False) -> str:
    """``BASE`` + ``second`` seconds, as Segment writes it (``Z``; with ``.000`` in the JSON export)."""
    moment = BASE + dt.timedelta(seconds=second)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.000Z" if millis else "%Y-%m-%dT%H:%M:%SZ")


def email(user: int) -> str:
    return f"user{user}@example.com"


# --- Segment JSON export


def segment_identify(i: int, user: int, rng: random.Random) -> dict[str, Any]:
    ts = iso(i, millis=True)
    traits: dict[str, Any] = {
        "email": email(user),
        "firstName": FIRST[user % 10],
        "lastName": LAST[(user // 10) % 10],
        "plan": rng.choice(PLANS),
        "seats": rng.randint(1, 50),
    }
    if rng.random() < 0.3:
        traits["companyName"] = f"Company {user % 997}"
    if rng.random() < 0.2:
        traits["mailingLists"] = {rng.choice((NEWSLETTER, UPDATES)): rng.random() < 0.8}
    record = {
        "type": "identify",
        "messageId": f"ajs-msg-{i}",
        "userId": f"u_{user}",
        "anonymousId": f"anon-{i}",
        "timestamp": ts,
        "receivedAt": ts,
        "sentAt": ts,
        "context": {"ip": "203.0.113.7", "library": {"name": "analytics.js", "version": "2.11.1"}},
        "traits": traits,
    }
    if rng.random() < 0.5:
        record["email"] = email(user)
    return record


def segment_track(i: int, user: int, rng: random.Random) -> dict[str, Any]:
    ts = iso(i, millis=True)
    properties: dict[str, Any] = {"plan": rng.choice(PLANS), "referrer": "newsletter"}
    if rng.random() < 0.4:
        properties.update(orderId=f"o-{i}", revenue=round(rng.uniform(5, 500), 2), currency="USD")
    if rng.random() < 0.3:
        properties["email"] = email(user)
    return {
        "type": "track",
        "messageId": f"ajs-trk-{i}",
        "userId": f"u_{user}",
        "anonymousId": f"anon-{i}",
        "event": rng.choice(EVENTS),
        "timestamp": ts,
        "receivedAt": ts,
        "context": {"ip": "203.0.113.7", "library": {"name": "analytics.js", "version": "2.11.1"}},
        "properties": properties,
    }


def segment_export(path: Path, n: int, *, users: int = 20_000, seed: int = 1, state_every: int = 5_000) -> dict:
    """``n`` records: half ``identify`` over ``users`` users, half ``track``, shuffled; STATE every ``state_every``."""
    rng = random.Random(seed)
    kinds = [True] * (n // 2) + [False] * (n - n // 2)
    rng.shuffle(kinds)

    def records() -> Iterator[tuple[str, dict[str, Any]]]:
        for i, is_identify in enumerate(kinds):
            user = rng.randrange(users)
            if is_identify:
                yield "identify", segment_identify(i, user, rng)
            else:
                yield "track", segment_track(i, user, rng)

    write(path, SEGMENT_SCHEMAS, records(), state_every=state_every)
    return {"records": n, "identify": n // 2, "track": n - n // 2, "users": users}


def small_export(path: Path, n: int, *, users: int = 20_000, seed: int = 2, state_every: int = 5_000) -> dict:
    """``n`` small Segment calls: half ``identify`` with two traits, half ``track`` with one property, over
    ``users`` users, shuffled, in the ``identify`` and ``track`` streams (their default rules). The shape where a
    target's fixed cost per record shows most (the no-op target's validation has little to do)."""
    rng = random.Random(seed)
    kinds = [True] * (n // 2) + [False] * (n - n // 2)
    rng.shuffle(kinds)

    def records() -> Iterator[tuple[str, dict[str, Any]]]:
        for i, is_identify in enumerate(kinds):
            user = rng.randrange(users)
            call: dict[str, Any] = {"messageId": f"m-{i}", "userId": f"u_{user}", "timestamp": iso(i, millis=True)}
            if is_identify:
                call.update(type="identify", traits={"email": email(user), "plan": rng.choice(PLANS)})
                yield "identify", call
            else:
                call.update(type="track", event=rng.choice(EVENTS), properties={"plan": rng.choice(PLANS)})
                yield "track", call

    write(path, SMALL_SCHEMAS, records(), state_every=state_every)
    return {"records": n, "identify": n // 2, "track": n - n // 2, "users": users}


_SMALL_COMMON = {"type": _S, "messageId": _S, "userId": _S, "timestamp": _DT}
SMALL_SCHEMAS: dict[str, dict[str, Any]] = {
    "identify": {"properties": {**_SMALL_COMMON, "traits": _OBJ}, "key_properties": ["messageId"]},
    "track": {"properties": {**_SMALL_COMMON, "event": _S, "properties": _OBJ}, "key_properties": ["messageId"]},
}


# --- warehouse rows


def warehouse_identify(row: int, user: int, *, second: int | None = None, plan: str | None = None) -> dict[str, Any]:
    """One ``identifies`` row; its traits are a function of ``user`` (so re-sent tables are identical)."""
    ts = iso(row if second is None else second)
    return {
        "id": f"wh-id-{row}",
        "user_id": f"w_{user}",
        "anonymous_id": None,
        "received_at": ts,
        "sent_at": ts,
        "timestamp": ts,
        "original_timestamp": ts,
        "uuid": row,
        "uuid_ts": ts,
        "context_ip": "198.51.100.4",
        "context_library_name": "analytics-python",
        "email": email(user),
        "first_name": FIRST[user % 10],
        "last_name": LAST[(user // 10) % 10],
        "plan": plan or PLANS[user % 4],
        "seats": user % 50 + 1,
        "is_admin": True if user % 7 == 0 else None,
        "trial_ends_at": iso(86_400 * 30 + user % 1000) if user % 5 == 0 else None,
        f"mailing_lists_{NEWSLETTER}": True if user % 3 == 0 else None,
    }


def warehouse_user(user: int, *, second: int = 0, plan: str | None = None) -> dict[str, Any]:
    """One row of Segment's ``users`` table (latest traits per user, keyed by ``id``)."""
    return {
        "id": f"wu_{user}",
        "received_at": iso(second),
        "email": f"wu{user}@example.com",
        "first_name": FIRST[user % 10],
        "last_name": LAST[(user // 10) % 10],
        "plan": plan or PLANS[user % 4],
        "seats": user % 20 + 1,
    }


def warehouse_track(event_id: str, user: int, *, second: int, name: str, stream: str = "tracks") -> dict[str, Any]:
    """One ``tracks`` row (or a per-event table's row when ``stream`` is ``order_completed``)."""
    ts = iso(second)
    row: dict[str, Any] = {
        "id": event_id,
        "user_id": f"w_{user}",
        "anonymous_id": None,
        "received_at": ts,
        "sent_at": ts,
        "timestamp": ts,
        "original_timestamp": ts,
        "uuid": second,
        "uuid_ts": ts,
        "context_ip": "198.51.100.4",
        "context_library_name": "analytics-python",
        "event": name.lower().replace(" ", "_"),
        "event_text": name,
        "context_traits_email": email(user),
    }
    if stream == "order_completed":
        row.update(order_id=f"o-{event_id}", revenue=round(10 + (second % 9000) / 100, 2), currency="USD")
    return row


def identifies_versions(path: Path, rows: int, *, changed_every: int = 0, state_every: int = 10_000) -> set[int]:
    """A warehouse ``identifies`` table, one row per user (``rows`` users), as re-sent every night.

    With ``changed_every`` N > 0, every Nth user's ``plan`` differs from version 1 (``"enterprise"``): the
    second version of the table, with ``rows / N`` changed rows. Returns the changed users.
    """
    changed = set(range(0, rows, changed_every)) if changed_every else set()

    def records() -> Iterator[tuple[str, dict[str, Any]]]:
        for user in range(rows):
            yield "identifies", warehouse_identify(user, user, plan="enterprise" if user in changed else None)

    write(path, {"identifies": WAREHOUSE_SCHEMAS["identifies"]}, records(), state_every=state_every)
    return changed


# --- writing


def schema_message(stream: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "SCHEMA",
        "stream": stream,
        "schema": {"type": "object", "properties": spec["properties"]},
        "key_properties": spec["key_properties"],
    }


def write(
    path: Path,
    schemas: dict[str, dict[str, Any]],
    records: Iterable[tuple[str, dict[str, Any]]],
    *,
    state_every: int = 0,
) -> int:
    """SCHEMA messages, then RECORDs (with a STATE after every ``state_every``, and one at the end)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with path.open("wb", buffering=1 << 20) as out:
        for stream, spec in schemas.items():
            out.write(_encode(schema_message(stream, spec)) + b"\n")
        for stream, record in records:
            out.write(_encode({"type": "RECORD", "stream": stream, "record": record}) + b"\n")
            count += 1
            if state_every and count % state_every == 0:
                out.write(_encode({"type": "STATE", "value": {"bookmarks": {"position": count}}}) + b"\n")
        out.write(_encode({"type": "STATE", "value": {"bookmarks": {"position": count, "done": True}}}) + b"\n")
    return count


def as_batch(source: Path, dest: Path, folder: Path, *, rows_per_file: int = 5_000) -> Path:
    """The same records as BATCH messages, as a singer-sdk tap with ``batch_config`` writes them: SCHEMA messages as
    they are, then per chunk of ``rows_per_file`` input records, one gzipped JSONL file per stream and a BATCH
    message naming it (``file://``), with the input's STATE messages after the chunk they follow."""
    import gzip
    import json

    folder.mkdir(parents=True, exist_ok=True)
    files = 0

    with source.open("rb") as lines, dest.open("wb") as out:
        chunk: dict[str, list[bytes]] = {}
        states: list[bytes] = []
        count = 0

        def flush() -> None:
            nonlocal files
            for stream, rows in chunk.items():
                files += 1
                path = folder / f"{stream}-{files:05d}.jsonl.gz"
                path.write_bytes(gzip.compress(b"".join(rows), compresslevel=1))
                message = {"type": "BATCH", "stream": stream, "encoding": {"format": "jsonl", "compression": "gzip"},
                           "manifest": [path.as_uri()]}  # fmt: skip
                out.write(_encode(message) + b"\n")
            out.writelines(states)
            chunk.clear()
            states.clear()

        for line in lines:
            message = json.loads(line)
            if message["type"] == "RECORD":
                chunk.setdefault(message["stream"], []).append(_encode(message["record"]) + b"\n")
                count += 1
                if count % rows_per_file == 0:
                    flush()
            elif message["type"] == "STATE":
                states.append(line if line.endswith(b"\n") else line + b"\n")
            else:
                flush()
                out.write(line if line.endswith(b"\n") else line + b"\n")
        flush()
    return dest


def head(source: Path, dest: Path, records: int) -> Path:
    """The SCHEMA messages of ``source`` and its first ``records`` RECORDs (a startup-cost baseline input)."""
    with source.open("rb") as src, dest.open("wb") as out:
        seen = 0
        for line in src:
            if line.startswith(b'{"type":"RECORD"'):
                if seen >= records:
                    break
                seen += 1
            out.write(line)
    return dest


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("kind", choices=["segment", "small", "identifies"])
    p.add_argument("records", type=int)
    p.add_argument("path", type=Path)
    p.add_argument("--users", type=int, default=20_000, help="segment: distinct users")
    p.add_argument("--changed-every", type=int, default=0, help="identifies: every Nth row changed (version 2)")
    args = p.parse_args()
    if args.kind == "segment":
        print(segment_export(args.path, args.records, users=args.users))
    elif args.kind == "small":
        print(small_export(args.path, args.records, users=args.users))
    else:
        print(f"{len(identifies_versions(args.path, args.records, changed_every=args.changed_every))} changed rows")


if __name__ == "__main__":
    main()
