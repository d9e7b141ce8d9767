"""Fill a PostgreSQL database with one Segment source ("web_app"), the way Segment's warehouse loader does.

    python tests/warehouse/seed.py "$WAREHOUSE_PG_URL"               # (re)create the schema, load the first day
    python tests/warehouse/seed.py "$WAREHOUSE_PG_URL" --increment   # load the second day on top of it

The calls below are written as an app sends them to Segment (camelCase traits and properties, nested objects);
``load`` does what the loader does with them: snake_case keys, nested objects flattened with ``_``, arrays
stringified, each identify into ``identifies`` and upserted into ``users`` (latest non-null trait wins), each track
into ``tracks`` and into the table named after its event, with the loader's ``uuid``/``uuid_ts`` and Segment's
``received_at``. The schema itself is ``schema.sql`` beside this file.

The data is small but has what real warehouses have: repeat identifies with NULL traits, a changed email, events of
users first identified in the same load, per-event tables next to ``tracks``, mailing list columns, and a few bad
rows (an anonymous identify and track, an invalid email, an event name with ``:``, an event for a user id that
Loops has never seen).
"""

from __future__ import annotations

import datetime as dt
import json
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

SCHEMA = "web_app"
SCHEMA_SQL = Path(__file__).with_name("schema.sql")
NEWSLETTER = "cm06f5v0e45nf0ml5754o9cix"
PRODUCT_UPDATES = "cm06f5v0e45nf0ml5754o9ciy"

USER_TRAITS = (
    "email",
    "first_name",
    "last_name",
    "company_name",
    "plan",
    "seats",
    "is_admin",
    "trial_ends_at",
    "lifetime_value",
    "favorite_color",
    f"mailing_lists_{NEWSLETTER}",
    f"mailing_lists_{PRODUCT_UPDATES}",
)


def at(day: int, clock: str) -> dt.datetime:
    """2026-11-0<day> <clock> UTC."""
    hours, minutes = (int(part) for part in clock.split(":"))
    return dt.datetime(2026, 11, day, hours, minutes, tzinfo=dt.timezone.utc)


@dataclass(frozen=True)
class Identify:
    message_id: str
    timestamp: dt.datetime
    user_id: str | None
    traits: Mapping[str, Any]
    anonymous_id: str | None = None
    library: str = "analytics-node"


@dataclass(frozen=True)
class Track:
    message_id: str
    timestamp: dt.datetime
    user_id: str | None
    event: str
    properties: Mapping[str, Any] = field(default_factory=dict)
    anonymous_id: str | None = None
    email: str | None = None  # context.traits.email, sent by some clients with every call
    page_path: str | None = None
    library: str = "analytics.js"


# --- the data: day 1 (the first sync) and day 2 (the increment)

DAY1: list[Identify | Track] = [
    Identify(
        "id-0001",
        at(2, "08:00"),
        "u_1001",
        {
            "email": "ada@example.com",
            "firstName": "Ada",
            "lastName": "Lovelace",
            "plan": "free",
            "seats": 1,
            "mailingLists": {NEWSLETTER: True},
        },
    ),
    Track(
        "tr-0001",
        at(2, "08:01"),
        "u_1001",
        "Signed Up",
        {"plan": "free", "referrer": "google", "trialDays": 14},
        page_path="/signup",
    ),
    Identify(
        "id-0002",
        at(2, "08:30"),
        "u_1002",
        {
            "email": "grace@navy.example",
            "firstName": "Grace",
            "lastName": "Hopper",
            "companyName": "US Navy",
            "plan": "team",
            "seats": 12,
            "isAdmin": True,
        },
    ),
    Track(
        "tr-0002",
        at(2, "08:31"),
        "u_1002",
        "Signed Up",
        {"plan": "team", "referrer": None, "trialDays": 30},
        page_path="/signup",
    ),
    # A repeat identify: only what changed; NULL columns clear nothing.
    Identify("id-0003", at(2, "09:00"), "u_1001", {"plan": "pro", "seats": 3, "companyName": "Analytical Engines"}),
    Track(
        "tr-0003",
        at(2, "09:05"),
        "u_1001",
        "Order Completed",
        {
            "orderId": "o-1001",
            "revenue": Decimal("120.50"),
            "currency": "EUR",
            "coupon": None,
            "products": [{"sku": "AE-1", "quantity": 1, "price": Decimal("120.50")}],
        },
        page_path="/checkout",
    ),
    # Bad: an identify of an anonymous visitor (no user id, no email).
    Identify(
        "id-0004", at(2, "09:10"), None, {"firstName": "Visitor"}, anonymous_id="anon-7f3a", library="analytics.js"
    ),
    # Bad: an anonymous track.
    Track(
        "tr-0004",
        at(2, "09:15"),
        None,
        "Viewed Pricing",
        {"planShown": "pro"},
        anonymous_id="anon-7f3a",
        page_path="/pricing",
    ),
    Identify(
        "id-0005",
        at(2, "09:20"),
        "u_1003",
        {
            "email": "alan@example.com",
            "firstName": "Alan",
            "lastName": "Turing",
            "plan": "free",
            "trialEndsAt": dt.datetime(2026, 12, 1, tzinfo=dt.timezone.utc),
            "favoriteColor": "green",
            "lifetimeValue": Decimal("1234.5"),
            "mailingLists": {NEWSLETTER: True, PRODUCT_UPDATES: True},
        },
    ),
    Track(
        "tr-0005",
        at(2, "09:40"),
        "u_1003",
        "Logged In",
        {"method": "password"},
        email="alan@example.com",
        library="analytics-ios",
    ),
    # The same user with a new email (and a new plan): the later identify wins.
    Identify("id-0006", at(2, "10:00"), "u_1002", {"email": "grace@example.com", "plan": "enterprise"}),
    Track(
        "tr-0006",
        at(2, "10:05"),
        "u_1002",
        "Order Completed",
        {
            "orderId": "o-1002",
            "revenue": Decimal("18"),
            "currency": "USD",
            "coupon": "WELCOME10",
            "products": [{"sku": "NV-7", "quantity": 2, "price": Decimal("9")}],
        },
        page_path="/checkout",
    ),
    Identify(
        "id-0007",
        at(2, "10:10"),
        "u_1004",
        {
            "email": "katherine@example.com",
            "firstName": "Katherine",
            "lastName": "Johnson",
            "mailingLists": {NEWSLETTER: False, PRODUCT_UPDATES: True},
        },
    ),
    # Bad: Loops refuses ':' in event names.
    Track("tr-0007", at(2, "10:12"), "u_1004", "Clicked: Upgrade", {"button": "header"}, page_path="/app"),
    # Bad: an invalid email (in identifies and, through the upsert, in users).
    Identify("id-0008", at(2, "10:20"), "u_1005", {"email": "dorothy at example.com", "firstName": "Dorothy"}),
    # Bad for Loops: a user id it has never seen and no email, so it cannot create the contact (HTTP 400).
    Track("tr-0008", at(2, "10:30"), "u_9999", "Logged In", {"method": "sso"}, library="analytics-ios"),
    Track("tr-0009", at(2, "10:45"), "u_1002", "Logged In", {"method": "sso"}, library="analytics-ios"),
    # The last identify of the day: a second identify of u_1002 that sends traits it already has.
    Identify("id-0009", at(2, "10:50"), "u_1002", {"email": "grace@example.com", "isAdmin": True}),
]

DAY2: list[Identify | Track] = [
    # A new user and their first event in the same load; the event carries no email, only the user id.
    Identify(
        "id-0101",
        at(3, "08:00"),
        "u_1006",
        {
            "email": "hedy@example.com",
            "firstName": "Hedy",
            "lastName": "Lamarr",
            "plan": "pro",
            "seats": 2,
            "mailingLists": {NEWSLETTER: True},
        },
    ),
    Track(
        "tr-0101",
        at(3, "08:02"),
        "u_1006",
        "Signed Up",
        {"plan": "pro", "referrer": "newsletter", "trialDays": 14},
        page_path="/signup",
    ),
    # Changed traits.
    Identify("id-0102", at(3, "08:10"), "u_1001", {"plan": "team", "seats": 5}),
    # A changed email.
    Identify(
        "id-0103", at(3, "08:30"), "u_1003", {"email": "alan.turing@example.com", "lifetimeValue": Decimal("1500")}
    ),
    # Joins the newsletter.
    Identify("id-0104", at(3, "08:35"), "u_1004", {"mailingLists": {NEWSLETTER: True}}),
    Track(
        "tr-0102",
        at(3, "08:40"),
        "u_1004",
        "Order Completed",
        {
            "orderId": "o-1004",
            "revenue": Decimal("42.00"),
            "currency": "USD",
            "coupon": None,
            "products": [{"sku": "KJ-3", "quantity": 1, "price": Decimal("42")}],
        },
        page_path="/checkout",
    ),
    Track(
        "tr-0103",
        at(3, "08:45"),
        "u_1003",
        "Logged In",
        {"method": "password"},
        email="alan.turing@example.com",
        library="analytics-ios",
    ),
    # Bad again: anonymous.
    Track(
        "tr-0104",
        at(3, "08:50"),
        None,
        "Viewed Pricing",
        {"planShown": "team"},
        anonymous_id="anon-99c1",
        page_path="/pricing",
    ),
]


# --- what the loader does


def snake_case(name: str) -> str:
    """``firstName`` → ``first_name``, ``Order Completed`` → ``order_completed``, ``Clicked: Upgrade`` →
    ``clicked_upgrade`` (list ids such as ``cm06f5v0e45nf0ml5754o9cix`` are left as they are)."""
    name = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name)
    return re.sub(r"[^a-zA-Z0-9]+", "_", name).strip("_").lower()


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested objects flattened with ``_``, keys snake_cased, arrays stringified as JSON."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        column = prefix + (key if prefix.startswith("mailing_lists_") else snake_case(key))
        if isinstance(value, Mapping):
            out.update(flatten(value, column + "_"))
        elif isinstance(value, list | tuple):
            out[column] = json.dumps(value, default=str, separators=(",", ":"))
        else:
            out[column] = value
    return out


def _insert(cur: Any, table: str, row: Mapping[str, Any]) -> None:
    columns = ", ".join(f'"{c}"' for c in row)
    marks = ", ".join(["%s"] * len(row))
    cur.execute(f"INSERT INTO {SCHEMA}.{table} ({columns}) VALUES ({marks})", list(row.values()))


def _upsert_user(cur: Any, user_id: str, traits: Mapping[str, Any], envelope: Mapping[str, Any]) -> None:
    """``users``: one row per user id; a trait the call did not send keeps its value."""
    row = {"id": user_id, **{k: envelope[k] for k in ("received_at", "uuid", "uuid_ts")}, **traits}
    columns = ", ".join(f'"{c}"' for c in row)
    marks = ", ".join(["%s"] * len(row))
    updates = ", ".join(
        f'"{c}" = EXCLUDED."{c}"'
        if c in ("received_at", "uuid", "uuid_ts")
        else f'"{c}" = COALESCE(EXCLUDED."{c}", users."{c}")'
        for c in row
        if c != "id"
    )
    cur.execute(
        f"INSERT INTO {SCHEMA}.users ({columns}) VALUES ({marks}) ON CONFLICT (id) DO UPDATE SET {updates}",
        list(row.values()),
    )


def load(conn: Any, calls: Iterable[Identify | Track]) -> None:
    """Load calls as Segment's warehouse loader would (one transaction)."""
    with conn.cursor() as cur:
        cur.execute(
            f"SELECT COALESCE(MAX(uuid), 0) FROM {SCHEMA}.identifies UNION ALL "
            f"SELECT COALESCE(MAX(uuid), 0) FROM {SCHEMA}.tracks"
        )
        uuid = max(row[0] for row in cur.fetchall())
        for call in calls:
            uuid += 1
            received = call.timestamp + dt.timedelta(seconds=2)
            envelope = {
                "id": call.message_id,
                "received_at": received,
                "sent_at": call.timestamp + dt.timedelta(seconds=1),
                "timestamp": call.timestamp,
                "original_timestamp": call.timestamp,
                "uuid": uuid,
                "uuid_ts": received + dt.timedelta(minutes=7),  # loaded a few minutes later
            }
            context = {
                "context_ip": "198.51.100.23",
                "context_library_name": call.library,
                "context_library_version": "6.2.0",
            }
            if isinstance(call, Identify):
                traits = flatten(call.traits)
                unknown = set(traits) - set(USER_TRAITS)
                assert not unknown, f"add {unknown} to schema.sql and USER_TRAITS"
                _insert(
                    cur,
                    "identifies",
                    {
                        **envelope,
                        **context,
                        "anonymous_id": call.anonymous_id,
                        "user_id": call.user_id,
                        "context_locale": "en-US",
                        "context_user_agent": "Mozilla/5.0",
                        **traits,
                    },
                )
                if call.user_id is not None:
                    _upsert_user(cur, call.user_id, traits, envelope)
            else:
                common = {
                    **envelope,
                    **context,
                    "anonymous_id": call.anonymous_id,
                    "user_id": call.user_id,
                    "context_page_path": call.page_path,
                    "context_traits_email": call.email,
                    "event": snake_case(call.event),
                    "event_text": call.event,
                }
                _insert(cur, "tracks", common)
                _insert(cur, snake_case(call.event), {**common, **flatten(call.properties)})
    conn.commit()


def create_schema(conn: Any) -> None:
    with conn.cursor() as cur:
        cur.execute(SCHEMA_SQL.read_text())
    conn.commit()


def main(argv: Sequence[str]) -> int:
    import psycopg

    args = [a for a in argv if not a.startswith("--")]
    if len(args) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    with psycopg.connect(args[0]) as conn:
        if "--increment" in argv:
            load(conn, DAY2)
            print(f"loaded {len(DAY2)} calls of day 2 into {SCHEMA}")
        else:
            create_schema(conn)
            load(conn, DAY1)
            print(f"created schema {SCHEMA} and loaded {len(DAY1)} calls of day 1")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
