"""The built-in knowledge of Segment's shapes, as data: which columns and keys are never user data, which names
Loops reserves, which Segment calls have no Loops equivalent, and the built-in rules.

Segment's spec: https://segment.com/docs/connections/spec/; its warehouse schema:
https://segment.com/docs/connections/storage/warehouses/schema/. The default source of each rule key, for Segment's
nested JSON and for its warehouse rows, is declared with the key in ``fields.FIELDS``. A rule names only what differs
from these defaults, so ``{"stream": "order_completed", "action": "send_event"}`` is a complete rule for a per-event
warehouse table.
"""

from __future__ import annotations

from typing import Any

NESTED = "nested"
FLAT = "flat"

#: Columns Segment's warehouse loader, SQL taps and Singer add that are never user data.
SYSTEM_COLUMNS = frozenset(
    {
        "id",
        "uuid",
        "uuid_ts",
        "loaded_at",
        "received_at",
        "sent_at",
        "original_timestamp",
        "timestamp",
        "anonymous_id",
        "user_id",
        "event",
        "event_text",
    }
)
SYSTEM_PREFIXES = ("context_", "_sdc_")

#: Envelope keys of a Segment message (nested JSON) that are never user data.
NESTED_SYSTEM_KEYS = frozenset(
    {
        "type",
        "messageId",
        "anonymousId",
        "userId",
        "timestamp",
        "originalTimestamp",
        "receivedAt",
        "sentAt",
        "context",
        "integrations",
        "channel",
        "version",
        "event",
        "_metadata",
        "writeKey",
    }
)

#: Names that are never sent as contact properties: the names Loops reserves
#: (https://loops.so/docs/contacts/properties#reserved-names), ``notes`` (a default property that the API does not
#: list as writable: https://loops.so/docs/api-reference/update-contact) and the keys of an event body
#: (https://loops.so/docs/api-reference/send-event). ``createdAt`` is not among them, by this project's choice:
#: it is a default date property (https://loops.so/docs/contacts/properties#default-contact-properties) whose
#: writability no Loops page states, but Loops' own Segment action sends it, and a backfill should carry the real
#: sign-up date. If Loops refused it, its 400 and message would go to the rejects file.
RESERVED_NAMES = frozenset(
    {"id", "listId", "softDeleteAt", "teamId", "updatedAt", "notes", "eventName", "eventProperties"}
)

#: Where an event rule that does not map ``email`` finds an email when the record has no user id and no context email
#: (Segment's own destination reads ``properties.email`` first: an "Invite Sent" event whose ``properties.email`` is
#: the invitee would then write the invitee's address onto the inviter's contact, found by userId). This project's
#: choice: the event's properties address the event only when nothing else says who it is for. Nested records only:
#: a flat row's ``email`` column is the person's in a table of one's own (``orders`` with ``user_id`` and ``email``),
#: so it stays in the flat default, after ``context_traits_email``.
EVENT_EMAIL_WITHOUT_USER_ID = {NESTED: "properties.email"}

#: Segment call types with no Loops equivalent, and the warehouse table of each.
SKIPPED_CALLS = ("page", "screen", "group", "alias")
SKIPPED_TABLES = {"page": "pages", "screen": "screens", "group": "groups", "alias": "aliases"}
#: The Segment call types an upsert rule and an event rule each refuse: a track or page call merged into a contact
#: update (or an identify sent as an event) is a mapping mistake; the ``segment`` action routes mixed calls.
WRONG_CALLS = {
    "upsert_contact": frozenset({"track", "page", "screen", "alias"}),
    "send_event": frozenset({"identify", "group", "alias"}),
}

#: The rules used when ``default_mappings`` is on (after the user's own rules): Segment's standard streams.
DEFAULT_RULES: list[dict[str, Any]] = [
    {"stream": "identifies", "action": "upsert_contact"},
    {"stream": "identify", "action": "upsert_contact"},
    # Segment's `users` table: the latest traits per user, keyed by `id` (there is no user_id column).
    {"stream": "users", "action": "upsert_contact", "user_id": ["id", "userId", "user_id"]},
    {"stream": "tracks", "action": "send_event"},
    {"stream": "track", "action": "send_event"},
    # SQL taps name streams <schema>-<table> (tap-postgres: web_app-identifies).
    {"stream": "*-identifies", "action": "upsert_contact"},
    {"stream": "*-users", "action": "upsert_contact", "user_id": ["id", "userId", "user_id"]},
    {"stream": "*-tracks", "action": "send_event"},
    # Segment calls with no Loops equivalent: read and counted, never an "unmapped stream" error. (The README shows
    # rules that send page views as events or set userGroup from group calls.) Raw calls (tap-segment-archive's
    # streams) and Segment's warehouse tables of the same calls.
    *(
        {"stream": name, "action": "skip"}
        for call in SKIPPED_CALLS
        for name in (call, SKIPPED_TABLES[call], f"*-{SKIPPED_TABLES[call]}")
    ),
]


def is_system_column(name: str) -> bool:
    """True for a warehouse/loader column that never becomes a Loops property."""
    return name in SYSTEM_COLUMNS or name.startswith(SYSTEM_PREFIXES)


def looks_nested(record: dict[str, Any]) -> bool:
    """True for a Segment message (nested JSON) rather than a warehouse row: the check that picks the defaults."""
    return (
        "messageId" in record
        or isinstance(record.get("traits"), dict)
        or isinstance(record.get("properties"), dict)
        or isinstance(record.get("context"), dict)
    )
