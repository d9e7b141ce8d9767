"""Empty is not a value: an empty (or blank) string in the data is treated like a null, for every property type.

Loops reads ``null`` as "empty or reset the value" (https://loops.so/docs/contacts/properties), and warehouses write
empty strings where they mean "nothing known": an empty cell must never wipe what Loops holds. By default it is left
out of the request, for contacts and events alike; ``send_nulls: true`` turns NULL columns into clears, never empty
strings. In memory: the rule engine and the preflight's coercion (tests/test_first_import_cli.py checks the same
against the sandbox).
"""

from __future__ import annotations

from typing import Any

import pytest
from rule_helpers import body, run

from target_loops.preflight import Preflight

TYPES = {"plan": "string", "logins": "number", "vip": "boolean", "renewsAt": "date"}
FULL = {"plan": "pro", "logins": "5", "vip": "true", "renews_at": "2027-01-01"}


def preflight() -> Preflight:
    """A preflight that knows the team's properties (as ``load`` would after reading them)."""
    check = Preflight(None)
    check.properties = {"email": "string", "userId": "string", "firstName": "string", **TYPES}
    check.loaded = True
    return check


def fitted(stream: str, record: dict[str, Any], rules: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The body the sink hands on: mapped by the rule, then fitted to the team by the preflight."""
    out = dict(body(stream, record, rules))
    preflight().enforce(out, stream)
    return out


@pytest.mark.parametrize("empty", ["", " ", "\t\n"], ids=["empty", "space", "blank"])
@pytest.mark.parametrize("column", ["plan", "logins", "vip", "renews_at"])
def test_an_empty_cell_of_any_type_is_left_out_of_a_contact_update(column: str, empty: str) -> None:
    record = {"id": "m1", "user_id": "u1", "email": "a@example.com", **FULL, column: empty}
    out = fitted("identifies", record)
    loops_key = "renewsAt" if column == "renews_at" else column
    assert loops_key not in out
    assert {k for k in TYPES if k != loops_key} <= out.keys()  # the other values still go


@pytest.mark.parametrize("column", ["plan", "logins", "vip", "renews_at"])
def test_send_nulls_clears_a_null_column_but_never_an_empty_one(column: str) -> None:
    rules = [{"stream": "accounts", "action": "upsert_contact", "send_nulls": True}]
    loops_key = "renewsAt" if column == "renews_at" else column
    empty = fitted("accounts", {"user_id": "u1", "email": "a@example.com", **FULL, column: ""}, rules)
    assert loops_key not in empty
    null = fitted("accounts", {"user_id": "u1", "email": "a@example.com", **FULL, column: None}, rules)
    assert null[loops_key] is None


@pytest.mark.parametrize("field", ["first_name", "last_name", "user_group", "source"])
def test_an_empty_contact_field_is_left_out_even_with_send_nulls(field: str) -> None:
    rules = [{"stream": "accounts", "action": "upsert_contact", "send_nulls": True}]
    out = body("accounts", {"user_id": "u1", "email": "a@example.com", field: "  "}, rules)
    assert out == {"userId": "u1", "email": "a@example.com"}


def test_nested_traits_that_are_empty_are_left_out() -> None:
    record = {"type": "identify", "messageId": "m1", "userId": "u1",
              "traits": {"email": "a@example.com", "logins": "", "plan": " ", "firstName": ""}}  # fmt: skip
    assert fitted("identify", record) == {"userId": "u1", "email": "a@example.com"}


def test_an_event_leaves_empty_event_properties_and_empty_contact_properties_out() -> None:
    record = {"type": "track", "messageId": "m1", "userId": "u1", "event": "Order Completed",
              "context": {"traits": {"email": "a@example.com"}},
              "properties": {"total": "", "currency": "EUR", "coupon": "  "}}  # fmt: skip
    op = run("track", record)
    assert op.request.body["eventProperties"] == {"currency": "EUR"}
    flat = {"id": "e1", "user_id": "u1", "email": "a@example.com", "event_text": "Signed Up", "logins": "", "plan": ""}
    rules = [{"stream": "signups", "action": "send_event", "properties": "*"}]
    out = fitted("signups", flat, rules)
    assert "logins" not in out and "plan" not in out


def test_the_preflight_never_turns_a_value_into_a_clear() -> None:
    """A body built elsewhere (a rule key mapped to a blank column) still never sends a null for a blank value."""
    out = {"userId": "u1", "logins": " ", "vip": "", "renewsAt": "", "plan": "pro"}
    preflight().enforce(out, "s")
    assert out == {"userId": "u1", "plan": "pro"}


def test_an_empty_mailing_list_cell_says_nothing_about_the_list() -> None:
    op = run("identifies", {"id": "m1", "user_id": "u1", "email": "a@example.com", "mailing_lists_news": "",
                            "mailing_lists_promo": "true"})  # fmt: skip
    assert op.request.body["mailingLists"] == {"promo": True}
    assert op.partial == ()  # not a "not true or false" line in the rejects file
