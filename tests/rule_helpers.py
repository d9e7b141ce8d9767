"""Helpers and sample records shared by the rule engine's tests (test_rules, test_rule_fields, test_rule_values).

Records follow Segment's shapes: its spec (https://segment.com/docs/connections/spec/) for nested JSON and its
warehouse schema (https://segment.com/docs/connections/storage/warehouses/schema/) for flat rows.
"""

from __future__ import annotations

import copy
import decimal
from typing import Any

from target_loops import defaults
from target_loops.fields import CONTACT_BODY_KEYS, match_rule, parse_rules
from target_loops.operations import Operation, Rejection
from target_loops.rules import StreamMapper
from target_loops.serialization import stable_hash

D = decimal.Decimal
UPSERT = ("PUT", "/v1/contacts/update")
EVENT = ("POST", "/v1/events/send")
DELETE = ("POST", "/v1/contacts/delete")
#: Names a property spread never sends: the reserved names and the contact fields with their own field spec.
RESERVED_TARGETS = sorted(defaults.RESERVED_NAMES | CONTACT_BODY_KEYS)


# --------------------------------------------------------------------------------------------------- helpers


def mapper(
    stream: str,
    rules: list[dict[str, Any]] | None = None,
    *,
    use_defaults: bool = True,
    key_properties: tuple[str, ...] = (),
) -> StreamMapper:
    rule = match_rule(parse_rules(rules, use_defaults=use_defaults), stream)
    assert rule is not None, f"no rule for {stream!r}"
    return StreamMapper(rule, stream, key_properties)


def run(stream: str, record: dict[str, Any], rules: list[dict[str, Any]] | None = None, **kw: Any) -> Operation:
    result = mapper(stream, rules, **kw).map(copy.deepcopy(record))
    assert isinstance(result, Operation), f"expected an Operation, got {result!r}"
    return result


def reject(stream: str, record: dict[str, Any], rules: list[dict[str, Any]] | None = None, **kw: Any) -> Rejection:
    result = mapper(stream, rules, **kw).map(copy.deepcopy(record))
    assert isinstance(result, Rejection), f"expected a Rejection, got {result!r}"
    return result


def body(stream: str, record: dict[str, Any], rules: list[dict[str, Any]] | None = None, **kw: Any) -> dict:
    return run(stream, record, rules, **kw).request.body


def default_key(event_name: str, event_id: str) -> str:
    """The default Idempotency-Key of an event: a hash of its name and its id (messageId, or a row's id)."""
    return "tl-" + stable_hash("event", event_name, event_id)[:64]


def contact_rule(stream: str = "accounts", **options: Any) -> list[dict[str, Any]]:
    return [{"stream": stream, "action": "upsert_contact", **options}]


def event_rule(stream: str = "signed_up", **options: Any) -> list[dict[str, Any]]:
    return [{"stream": stream, "action": "send_event", **options}]


# --------------------------------------------------------------------------------------------------- records

NESTED_IDENTIFY: dict[str, Any] = {
    "type": "identify",
    "messageId": "ajs-msg-001",
    "userId": "u_1001",
    "anonymousId": "anon-001",
    "timestamp": "2026-11-01T09:00:00.000Z",
    "receivedAt": "2026-11-01T09:00:01.000Z",
    "sentAt": "2026-11-01T09:00:00.500Z",
    "context": {"ip": "203.0.113.7", "library": {"name": "analytics.js", "version": "2.11.1"}},
    "email": "top-level@example.com",
    "traits": {
        "email": "ada@example.com",
        "firstName": "Ada",
        "lastName": "Lovelace",
        "userGroup": "admins",
        "source": "signup-form",
        "plan": "pro",
        "seats": 3,
        "company_size": None,
        "mailingLists": {"list_news": True, "list_promo": False},
    },
}
NESTED_IDENTIFY_BODY = {
    "email": "ada@example.com",
    "userId": "u_1001",
    "firstName": "Ada",
    "lastName": "Lovelace",
    "userGroup": "admins",
    "source": "signup-form",
    "plan": "pro",
    "seats": 3,  # company_size (NULL) is left out by default
    "mailingLists": {"list_news": True, "list_promo": False},
}

FLAT_IDENTIFY: dict[str, Any] = {
    "id": "wh-id-001",
    "user_id": "w_2001",
    "anonymous_id": None,
    "received_at": "2026-11-02T08:00:05Z",
    "sent_at": "2026-11-02T08:00:01Z",
    "timestamp": "2026-11-02T08:00:00Z",
    "original_timestamp": "2026-11-02T08:00:00Z",
    "uuid": 101,
    "uuid_ts": "2026-11-02T08:00:06Z",
    "loaded_at": "2026-11-02T08:00:07Z",
    "context_ip": "198.51.100.4",
    "context_library_name": "analytics-python",
    "_sdc_batched_at": "2026-11-02T09:00:00Z",
    "_sdc_received_at": "2026-11-02T09:00:00Z",
    "email": "linus@example.com",
    "first_name": "Linus",
    "last_name": "Torvalds",
    "user_group": "kernel",
    "source": "warehouse",
    "plan": "team",
    "seats": D("5"),
    "is_admin": None,
    "favorite_color": "teal",
    "trial_ends_at": "2026-12-01T00:00:00Z",
    "mailing_lists_list_news": True,
    "mailing_lists_list_promo": None,
}
FLAT_IDENTIFY_BODY = {
    "email": "linus@example.com",
    "userId": "w_2001",
    "firstName": "Linus",
    "lastName": "Torvalds",
    "userGroup": "kernel",
    "source": "warehouse",
    "plan": "team",
    "seats": 5,
    "favoriteColor": "teal",
    "trialEndsAt": "2026-12-01T00:00:00Z",
    "mailingLists": {"list_news": True},
}

FLAT_USER: dict[str, Any] = {
    "id": "w_3001",
    "received_at": "2026-11-02T08:00:05Z",
    "uuid_ts": "2026-11-02T08:00:06Z",
    "_sdc_extracted_at": "2026-11-02T09:00:00Z",
    "email": "grace@example.com",
    "first_name": "Grace",
    "last_name": None,
    "plan_name": "enterprise",
    "mailing_lists_list_news": "false",
}
FLAT_USER_BODY = {
    "email": "grace@example.com",
    "userId": "w_3001",
    "firstName": "Grace",
    "planName": "enterprise",
    "mailingLists": {"list_news": False},
}

NESTED_TRACK: dict[str, Any] = {
    "type": "track",
    "messageId": "ajs-msg-101",
    "userId": "u_1001",
    "anonymousId": "anon-001",
    "event": "Order Completed",
    "timestamp": "2026-11-01T10:00:00.250Z",
    "receivedAt": "2026-11-01T10:00:01.000Z",
    "properties": {
        "email": "buyer@example.com",
        "total": D("49.90"),
        "items": D("2"),
        "currency": "EUR",
        "coupon": None,
    },
    "context": {"traits": {"email": "ctx@example.com"}, "ip": "203.0.113.7"},
}
NESTED_TRACK_BODY = {
    "email": "ctx@example.com",  # the context's email: properties.email is read only without a userId
    "userId": "u_1001",
    "eventName": "Order Completed",
    "eventProperties": {"total": 49.9, "items": 2, "currency": "EUR"},
}

FLAT_TRACK: dict[str, Any] = {
    "id": "wh-tr-001",
    "user_id": "w_2001",
    "anonymous_id": None,
    "event": "order_completed",
    "event_text": "Order Completed",
    "context_traits_email": "linus@example.com",
    "context_ip": "198.51.100.4",
    "timestamp": "2026-11-02T10:00:00+02:00",
    "original_timestamp": "2026-11-02T10:00:00+02:00",
    "received_at": "2026-11-02T08:00:05Z",
    "sent_at": "2026-11-02T08:00:01Z",
    "uuid": 201,
    "uuid_ts": "2026-11-02T08:00:06Z",
    "loaded_at": "2026-11-02T08:00:07Z",
    "_sdc_table_version": 3,
}
FLAT_TRACK_BODY = {"email": "linus@example.com", "userId": "w_2001", "eventName": "Order Completed"}

# a per-event warehouse table: the tracks columns plus one column per event property
FLAT_ORDER_ROW: dict[str, Any] = {
    **FLAT_TRACK,
    "order_total": D("120.50"),
    "coupon_code": "WELCOME",
    "item_count": D("3"),
    "gift_note": None,
}
