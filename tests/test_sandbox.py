"""The sandbox against Loops' API reference (https://loops.so/docs/api-reference), over real HTTP: each Loops rule
the target relies on, and its faults.

Most tests share two module-scoped sandboxes (strict and lenient, reset before each test) because starting one
per parametrized case would dominate the runtime; tests that change config or count requests make their own.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from target_loops.sandbox import Sandbox, SandboxConfig
from target_loops.sandbox.page import EMPTY
from target_loops.sandbox.server import build_parser, config_from_args

KEY = "sandbox-key"
LIST_ID = "cm06f5v0e45nf0ml5754o9cix"
TEAM: dict[str, Any] = {
    "properties": [
        {"key": "plan", "type": "string"},
        {"key": "seats", "type": "number"},
        {"key": "trial", "type": "boolean"},
        {"key": "renewsAt", "type": "date", "label": "Renews"},
    ],
    "lists": [{"id": LIST_ID, "name": "Newsletter", "description": None, "isPublic": True}],
}
_ABSENT = object()


def call(
    sb: Sandbox,
    method: str,
    path: str,
    body: Any = _ABSENT,
    *,
    key: str | None = KEY,
    headers: dict[str, str] | None = None,
    **kwargs: Any,
) -> requests.Response:
    """One request to the sandbox's Loops API (``path`` after ``/api``, e.g. ``/v1/lists``)."""
    all_headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    all_headers.update(headers or {})
    if body is not _ABSENT:
        kwargs["json"] = body
    return requests.request(method, sb.url + path, headers=all_headers, timeout=5, **kwargs)


def upsert(sb: Sandbox, **body: Any) -> requests.Response:
    return call(sb, "PUT", "/v1/contacts/update", body)


def send_event(sb: Sandbox, body: dict[str, Any], key: str | None = None) -> requests.Response:
    headers = {"Idempotency-Key": key} if key is not None else {}
    return call(sb, "POST", "/v1/events/send", body, headers=headers)


def assert_error(response: requests.Response, status: int, *fragments: str) -> None:
    """Loops' error shape, with a message naming what was wrong."""
    assert response.status_code == status, response.text
    payload = response.json()
    assert payload["success"] is False
    for fragment in fragments:
        assert fragment in payload["message"], payload["message"]


@pytest.fixture(scope="module")
def _shared() -> Iterator[dict[str, Sandbox]]:
    strict = Sandbox(SandboxConfig(rate_limit=0, **TEAM)).start()
    lenient = Sandbox(SandboxConfig(rate_limit=0, lenient=True, **TEAM)).start()
    yield {"strict": strict, "lenient": lenient}
    strict.stop()
    lenient.stop()


def _fresh(sb: Sandbox) -> Sandbox:
    """Empty store, no fault left queued by an earlier test."""
    sb.store.reset()
    sb.app.clear_injected()
    return sb


@pytest.fixture
def team(_shared: dict[str, Sandbox]) -> Sandbox:
    """A strict sandbox with custom properties plan/seats/trial/renewsAt and one list, freshly reset."""
    return _fresh(_shared["strict"])


@pytest.fixture
def lenient_team(_shared: dict[str, Sandbox]) -> Sandbox:
    """The same team in lenient mode (unknown properties and wrong types accepted)."""
    return _fresh(_shared["lenient"])


# ----- auth ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("authorization", "status"),
    [(f"Bearer {KEY}", 200), (f"bearer {KEY}", 200), ("Bearer wrong", 401), (KEY, 401), (None, 401)],
)
def test_api_key_checks_the_bearer_key(sandbox: Sandbox, authorization: str | None, status: int) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    response = requests.get(sandbox.url + "/v1/api-key", headers=headers, timeout=5)
    assert response.status_code == status
    if status == 200:
        assert response.json() == {"success": True, "teamName": "Sandbox team"}
    else:
        assert response.json() == {"success": False, "message": "Invalid API key"}


def test_bad_key_is_refused_everywhere_and_does_nothing(team: Sandbox) -> None:
    assert_error(call(team, "PUT", "/v1/contacts/update", {"email": "a@x.io"}, key="nope"), 401)
    assert team.store.contacts() == []


# ----- contacts/update: matching rules ------------------------------------------------------------------

MATCHING = [
    # (case, existing contacts, body, status, (email, userId) of the answered contact, contacts after)
    ("email only creates", [], {"email": "a@x.io"}, 200, ("a@x.io", None), 1),
    (
        "email only matches",
        [{"email": "a@x.io", "userId": "u1"}],
        {"email": "a@x.io"},
        200,
        ("a@x.io", "u1"),
        1,
    ),
    (
        "userId only matches",
        [{"email": "a@x.io", "userId": "u1"}],
        {"userId": "u1"},
        200,
        ("a@x.io", "u1"),
        1,
    ),
    ("userId only unknown: 400", [], {"userId": "u1"}, 400, None, 0),
    (
        "both, email matches",
        [{"email": "a@x.io"}],
        {"email": "a@x.io", "userId": "u1"},
        200,
        ("a@x.io", "u1"),
        1,
    ),
    (
        "both, userId matches: email changes",
        [{"email": "a@x.io", "userId": "u1"}],
        {"email": "b@x.io", "userId": "u1"},
        200,
        ("b@x.io", "u1"),
        1,
    ),
    (
        "both, none matches",
        [{"email": "a@x.io"}],
        {"email": "b@x.io", "userId": "u2"},
        200,
        ("b@x.io", "u2"),
        2,
    ),
    (
        "both match two different contacts: 400",
        [{"email": "a@x.io", "userId": "u1"}, {"email": "b@x.io", "userId": "u2"}],
        {"email": "a@x.io", "userId": "u2"},
        400,
        None,
        2,
    ),
    ("no identifier: 400", [], {"firstName": "Al"}, 400, None, 0),
]


@pytest.mark.parametrize(
    ("existing", "body", "status", "identity", "count"),
    [case[1:] for case in MATCHING],
    ids=[c[0] for c in MATCHING],
)
def test_update_matching_rules(
    team: Sandbox,
    existing: list[dict[str, Any]],
    body: dict[str, Any],
    status: int,
    identity: tuple[str, str | None] | None,
    count: int,
) -> None:
    existing_ids = [upsert(team, **contact).json()["id"] for contact in existing]
    response = upsert(team, **body)
    assert response.status_code == status, response.text
    contacts = team.store.contacts()
    assert len(contacts) == count
    if identity is None:
        assert_error(response, 400)
        assert [contact["id"] for contact in contacts] == existing_ids
        return
    answered = next(contact for contact in contacts if contact["id"] == response.json()["id"])
    assert (answered["email"], answered["userId"]) == identity
    assert response.json() == {"success": True, "id": answered["id"]}


def test_update_conflict_answers_loops_own_message(team: Sandbox) -> None:
    upsert(team, email="a@x.io", userId="u1")
    upsert(team, email="b@x.io", userId="u2")
    # Loops' live message, word for word.
    assert_error(upsert(team, email="a@x.io", userId="u2"), 400, "Multiple contacts found for the given criteria")


def test_update_changes_only_present_keys_and_null_clears(team: Sandbox) -> None:
    upsert(team, email="a@x.io", firstName="Ada", lastName="L", plan="pro", seats=3, source="Segment")
    upsert(team, email="a@x.io", firstName=None, plan=None, userGroup="admins")
    contact = team.store.find(email="a@x.io")
    assert contact is not None
    assert contact["firstName"] is None  # default field cleared: present as None
    assert "plan" not in contact  # custom property cleared: absent
    assert contact["lastName"] == "L" and contact["seats"] == 3 and contact["source"] == "Segment"
    assert contact["userGroup"] == "admins"


def test_new_contact_defaults(team: Sandbox) -> None:
    contact_id = upsert(team, email="a@x.io").json()["id"]
    contact = team.store.find(email="a@x.io")
    assert contact == {
        "id": contact_id,
        "email": "a@x.io",
        "firstName": None,
        "lastName": None,
        "source": "API",
        "subscribed": True,
        "userGroup": None,
        "userId": None,
        "mailingLists": {},
        "optInStatus": None,
        "createdAt": contact["createdAt"],
    }
    assert contact["createdAt"].endswith("Z")


def test_subscribed_false_unsubscribes_and_true_resubscribes(team: Sandbox) -> None:
    upsert(team, email="a@x.io", subscribed=False)
    assert team.store.find(email="a@x.io")["subscribed"] is False  # type: ignore[index]
    upsert(team, email="a@x.io", firstName="Ada")
    assert team.store.find(email="a@x.io")["subscribed"] is False  # type: ignore[index]
    upsert(team, email="a@x.io", subscribed=True)
    assert team.store.find(email="a@x.io")["subscribed"] is True  # type: ignore[index]


def test_mailing_lists_true_joins_and_false_leaves(team: Sandbox) -> None:
    upsert(team, email="a@x.io", mailingLists={LIST_ID: True})
    assert team.store.find(email="a@x.io")["mailingLists"] == {LIST_ID: True}  # type: ignore[index]
    upsert(team, email="a@x.io", mailingLists={LIST_ID: False})
    contact = team.store.find(email="a@x.io")
    assert contact is not None and contact["mailingLists"] == {} and contact["subscribed"] is True


# ----- validation (update, create, events/send; strict and lenient) --------------------------------------

VALIDATION = [
    # (case, extra body keys, fragment of the message, accepted in lenient mode)
    ("string over 500 with its quotes", {"firstName": "x" * 499}, "firstName", False),
    ("escapes count", {"firstName": '"' * 250}, "firstName", False),
    ("bad email", {"email": "not-an-email"}, "not-an-email", False),
    ("list value not boolean", {"mailingLists": {LIST_ID: "yes"}}, LIST_ID, False),
    ("mailingLists not an object", {"mailingLists": [LIST_ID]}, "mailingLists", False),
    ("subscribed not boolean", {"subscribed": "true"}, "subscribed", False),
    ("unknown list id", {"mailingLists": {"nolist": True}}, "nolist", True),
    ("unknown property", {"favouriteColour": "blue"}, "favouriteColour", True),
    ("number into string", {"plan": 5}, "plan", True),
    ("boolean into number", {"seats": True}, "seats", True),
    ("string into number", {"seats": "5"}, "seats", True),
    ("string into boolean", {"trial": "yes"}, "trial", True),
    ("bad date string", {"renewsAt": "next week"}, "renewsAt", True),
    ("impossible date", {"renewsAt": "2024-02-30"}, "renewsAt", True),
    ("nested value", {"plan": {"name": "pro"}}, "plan", True),
    ("userId not a string", {"userId": 42}, "userId", True),
] + [
    (f"reserved {name}", {name: "x"}, name, False)
    for name in sorted({"id", "listId", "softDeleteAt", "teamId", "updatedAt", "notes"})
]

ENDPOINTS = {
    "update": ("PUT", "/v1/contacts/update", {}),
    "create": ("POST", "/v1/contacts/create", {}),
    "event": ("POST", "/v1/events/send", {"eventName": "signup"}),
}


@pytest.mark.parametrize("endpoint", sorted(ENDPOINTS))
@pytest.mark.parametrize(
    ("extra", "fragment", "lenient_ok"), [c[1:] for c in VALIDATION], ids=[c[0] for c in VALIDATION]
)
def test_validation_strict_and_lenient(
    team: Sandbox,
    lenient_team: Sandbox,
    endpoint: str,
    extra: dict[str, Any],
    fragment: str,
    lenient_ok: bool,
) -> None:
    method, path, base = ENDPOINTS[endpoint]
    body = {**base, "email": "a@x.io", **extra}
    assert_error(call(team, method, path, body), 400, fragment)
    assert team.store.contacts() == [] and team.store.events() == []
    lenient = call(lenient_team, method, path, body)
    assert lenient.status_code == (200 if lenient_ok else 400), lenient.text


@pytest.mark.parametrize(
    "extra",
    [
        {"renewsAt": "2024-01-02"},
        {"renewsAt": "2024-01-02T10:30"},
        {"renewsAt": "2024-01-02T10:30:00.123Z"},
        {"renewsAt": "2024-01-02T10:30:00+02:00"},
        {"renewsAt": 1704067200000},
        {"seats": 3.5},
        {"trial": False},
        {"plan": None, "seats": None},
        {"source": "x" * 498},
        {"source": '"' * 249},
        {"createdAt": "2020-01-01"},
    ],
    ids=repr,
)
def test_valid_values_are_accepted_in_strict_mode(team: Sandbox, extra: dict[str, Any]) -> None:
    assert upsert(team, email="a@x.io", **extra).status_code == 200


# ----- contacts/create, find, delete ---------------------------------------------------------------------


def test_create_is_create_only(team: Sandbox) -> None:
    created = call(team, "POST", "/v1/contacts/create", {"email": "a@x.io", "userId": "u1"})
    assert created.status_code == 200 and created.json()["success"] is True
    assert_error(call(team, "POST", "/v1/contacts/create", {"email": "a@x.io"}), 409, "a@x.io")
    assert_error(call(team, "POST", "/v1/contacts/create", {"email": "b@x.io", "userId": "u1"}), 409, "u1")
    assert_error(call(team, "POST", "/v1/contacts/create", {"userId": "u2"}), 400, "email")
    assert len(team.store.contacts()) == 1


@pytest.mark.parametrize(
    ("params", "status", "found"),
    [
        ({"email": "a@x.io"}, 200, 1),
        ({"userId": "u1"}, 200, 1),
        ({"email": "nobody@x.io"}, 200, 0),
        ({"userId": "nobody"}, 200, 0),
        ({"email": "a@x.io", "userId": "u1"}, 400, 0),
        ({}, 400, 0),
    ],
)
def test_find(team: Sandbox, params: dict[str, str], status: int, found: int) -> None:
    upsert(team, email="a@x.io", userId="u1", plan="pro")
    response = call(team, "GET", "/v1/contacts/find", params=params)
    assert response.status_code == status
    if status == 200:
        assert isinstance(response.json(), list) and len(response.json()) == found
        if found:
            assert response.json()[0] == team.store.find(email="a@x.io")
    else:
        assert_error(response, 400, "exactly one")


def test_find_url_encodes_plus_addresses(team: Sandbox) -> None:
    upsert(team, email="a+tag@x.io")
    assert len(call(team, "GET", "/v1/contacts/find", params={"email": "a+tag@x.io"}).json()) == 1


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"email": "a@x.io"}, 200),
        ({"userId": "u1"}, 200),
        ({"email": "nobody@x.io"}, 404),
        ({"email": "a@x.io", "userId": "u1"}, 400),
        ({}, 400),
        ({"userId": ["u1"]}, 400),
    ],
)
def test_delete(team: Sandbox, body: dict[str, Any], status: int) -> None:
    upsert(team, email="a@x.io", userId="u1")
    response = call(team, "POST", "/v1/contacts/delete", body)
    assert response.status_code == status, response.text
    if status == 200:
        assert response.json() == {"success": True, "message": "Contact deleted."}
        assert team.store.contacts() == []
    else:
        assert_error(response, status)
        assert len(team.store.contacts()) == 1


# ----- properties and lists ------------------------------------------------------------------------------


def test_properties_lists_defaults_then_custom(team: Sandbox) -> None:
    everything = call(team, "GET", "/v1/contacts/properties").json()
    types = {prop["key"]: prop["type"] for prop in everything}
    assert [prop["key"] for prop in everything[:9]] == [
        "email", "firstName", "lastName", "notes", "source", "subscribed", "userGroup", "userId", "createdAt",
    ]  # fmt: skip
    assert types["subscribed"] == "boolean" and types["createdAt"] == "date" and types["email"] == "string"
    custom = call(team, "GET", "/v1/contacts/properties", params={"list": "custom"}).json()
    assert custom == everything[9:]
    assert {"key": "renewsAt", "label": "Renews", "type": "date"} in custom
    assert {"key": "plan", "label": "Plan", "type": "string"} in custom
    assert call(team, "GET", "/v1/contacts/properties", params={"list": "all"}).json() == everything
    assert_error(call(team, "GET", "/v1/contacts/properties", params={"list": "some"}), 400, "some")


def test_property_create_then_usable(team: Sandbox) -> None:
    assert upsert(team, email="a@x.io", planName="pro").status_code == 400
    created = call(team, "POST", "/v1/contacts/properties", {"name": "planName", "type": "string"})
    assert created.status_code == 200 and created.json()["success"] is True
    custom = call(team, "GET", "/v1/contacts/properties", params={"list": "custom"}).json()
    assert {"key": "planName", "label": "Plan Name", "type": "string"} in custom
    assert upsert(team, email="a@x.io", planName="pro").status_code == 200


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"name": "plan", "type": "string"}, "already exists"),
        ({"name": "email", "type": "string"}, "already exists"),
        ({"name": "id", "type": "string"}, "reserved"),
        ({"name": "mailingLists", "type": "string"}, "reserved"),
        ({"name": "favouriteColour", "type": "text"}, "text"),
        ({"name": "plan_name", "type": "string"}, "plan_name"),
        ({"name": "PlanName", "type": "string"}, "PlanName"),
        ({"name": "", "type": "string"}, "camelCase"),
        ({"type": "string"}, "camelCase"),
    ],
)
def test_property_create_refusals(team: Sandbox, body: dict[str, Any], fragment: str) -> None:
    assert_error(call(team, "POST", "/v1/contacts/properties", body), 400, fragment)


def test_lists(team: Sandbox, sandbox: Sandbox) -> None:
    assert call(team, "GET", "/v1/lists").json() == TEAM["lists"]
    assert call(sandbox, "GET", "/v1/lists").json() == []


# ----- events/send ---------------------------------------------------------------------------------------


def test_event_creates_contact_updates_it_and_is_recorded(team: Sandbox) -> None:
    body = {
        "eventName": "signup",
        "email": "a@x.io",
        "eventProperties": {"plan": "pro", "seats": 3, "trial": True, "at": "2024-01-02"},
        "mailingLists": {LIST_ID: True},
        "plan": "pro",
    }
    response = send_event(team, body, key="msg-1")
    assert response.status_code == 200 and response.json() == {"success": True}
    contact = team.store.find(email="a@x.io")
    assert contact is not None
    assert contact["subscribed"] is True and contact["plan"] == "pro" and contact["mailingLists"] == {LIST_ID: True}
    (event,) = team.store.events()
    assert event == {
        "eventName": "signup",
        "email": "a@x.io",
        "userId": None,
        "contactId": contact["id"],
        "eventProperties": body["eventProperties"],
        "mailingLists": {LIST_ID: True},
        "contactProperties": {"plan": "pro"},
        "idempotencyKey": "msg-1",
        "at": event["at"],
    }


def test_event_by_user_id_needs_an_existing_contact(team: Sandbox) -> None:
    assert_error(send_event(team, {"eventName": "login", "userId": "u1"}), 400, "u1")
    upsert(team, email="a@x.io", userId="u1")
    assert send_event(team, {"eventName": "login", "userId": "u1"}).status_code == 200
    assert team.store.events()[0]["contactId"] == team.store.find(user_id="u1")["id"]  # type: ignore[index]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"email": "a@x.io"}, "eventName"),
        ({"eventName": "", "email": "a@x.io"}, "eventName"),
        ({"eventName": "app:signup", "email": "a@x.io"}, ":"),
        ({"eventName": "signup"}, "email or a userId"),
        ({"eventName": "signup", "email": "a@x.io", "eventProperties": ["x"]}, "eventProperties"),
        ({"eventName": "signup", "email": "a@x.io", "eventProperties": {"plan": None}}, "plan"),
        ({"eventName": "signup", "email": "a@x.io", "eventProperties": {"plan": {"a": 1}}}, "plan"),
        ({"eventName": "signup", "email": "a@x.io", "eventProperties": {"note": "x" * 499}}, "note"),
        ({"eventName": "x" * 499, "email": "a@x.io"}, "eventName"),
    ],
)
def test_event_refusals(team: Sandbox, body: dict[str, Any], fragment: str) -> None:
    assert_error(send_event(team, body), 400, fragment)
    assert team.store.events() == [] and team.store.contacts() == []


def test_event_properties_nulls_accepted_when_lenient(lenient_team: Sandbox) -> None:
    body = {"eventName": "signup", "email": "a@x.io", "eventProperties": {"plan": None}, "colour": "blue"}
    assert send_event(lenient_team, body).status_code == 200
    assert lenient_team.store.find(email="a@x.io")["colour"] == "blue"  # type: ignore[index]


# ----- Idempotency-Key -----------------------------------------------------------------------------------


def test_idempotency_key_reuse_is_409_and_records_nothing(team: Sandbox) -> None:
    body = {"eventName": "signup", "email": "a@x.io", "plan": "pro"}
    assert send_event(team, body, key="msg-1").status_code == 200
    assert_error(send_event(team, {**body, "plan": "team"}, key="msg-1"), 409, "msg-1")
    assert len(team.store.events()) == 1
    assert team.store.find(email="a@x.io")["plan"] == "pro"  # type: ignore[index]
    assert send_event(team, body, key="msg-2").status_code == 200
    assert send_event(team, body).status_code == 200  # no key: no protection
    assert len(team.store.events()) == 3


def test_idempotency_holds_under_concurrent_retries(team: Sandbox) -> None:
    body = {"eventName": "signup", "email": "a@x.io"}
    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = sorted(pool.map(lambda _: send_event(team, body, key="msg-1").status_code, range(8)))
    assert statuses == [200] + [409] * 7
    assert len(team.store.events()) == 1 and len(team.store.contacts()) == 1


def test_idempotency_key_length_limit(team: Sandbox) -> None:
    body = {"eventName": "signup", "email": "a@x.io"}
    assert_error(send_event(team, body, key="k" * 101), 400, "100")
    assert send_event(team, body, key="k" * 100).status_code == 200


def test_idempotency_key_is_remembered_only_on_success(team: Sandbox) -> None:
    assert send_event(team, {"eventName": "bad:name", "email": "a@x.io"}, key="msg-1").status_code == 400
    team.inject("500")
    assert send_event(team, {"eventName": "signup", "email": "a@x.io"}, key="msg-1").status_code == 500
    assert send_event(team, {"eventName": "signup", "email": "a@x.io"}, key="msg-1").status_code == 200


def test_idempotency_key_expires_after_24_hours(team: Sandbox) -> None:
    body = {"eventName": "signup", "email": "a@x.io"}
    assert send_event(team, body, key="msg-1").status_code == 200
    team.store.advance_clock(24 * 3600 - 5)
    assert send_event(team, body, key="msg-1").status_code == 409
    team.store.advance_clock(10)
    assert send_event(team, body, key="msg-1").status_code == 200
    assert len(team.store.events()) == 2


# ----- Loops as documented (https://loops.so/docs/api-reference) ---------------------------------------------


@pytest.mark.parametrize(
    ("text", "ok"),
    [("x" * 498, True), ("x" * 499, False), ('"' * 249, True), ('"' * 250, False), ("\n" * 249, True),
     ("é" * 498, True), ("😀" * 249, True), ("😀" * 250, False)],
    ids=["498", "499", "249-quotes", "250-quotes", "249-newlines", "accents", "emoji-500", "emoji-502"],
)  # fmt: skip
@pytest.mark.parametrize("where", ["contact", "event-property", "event-contact"])
def test_string_limit_is_500_with_the_json_quotes(team: Sandbox, where: str, text: str, ok: bool) -> None:
    """At most 500 characters *including the opening and closing quotes*, measured JSON-encoded (intro, Debugging)."""
    if where == "contact":
        response = upsert(team, email="a@x.io", plan=text)
    elif where == "event-property":
        response = send_event(team, {"eventName": "signup", "email": "a@x.io", "eventProperties": {"note": text}})
    else:
        response = send_event(team, {"eventName": "signup", "email": "a@x.io", "plan": text})
    if ok:
        assert response.status_code == 200, response.text
    else:
        assert_error(response, 400, "500")


def test_created_at_is_a_writable_default_date(team: Sandbox) -> None:
    assert upsert(team, email="a@x.io", createdAt="2020-01-01T00:00:00.000Z").status_code == 200
    assert team.store.find(email="a@x.io")["createdAt"] == "2020-01-01T00:00:00.000Z"  # type: ignore[index]
    event = {"eventName": "signup", "email": "b@x.io", "createdAt": 1577836800000}
    assert send_event(team, event).status_code == 200
    assert team.store.find(email="b@x.io")["createdAt"] == 1577836800000  # type: ignore[index]
    assert_error(upsert(team, email="a@x.io", createdAt="last year"), 400, "createdAt")
    types = {p["key"]: p["type"] for p in call(team, "GET", "/v1/contacts/properties").json()}
    assert types["createdAt"] == "date"


def test_event_carries_default_and_custom_contact_properties(team: Sandbox) -> None:
    body = {"eventName": "upgraded", "email": "a@x.io", "firstName": "Bob", "lastName": "B", "userGroup": "ops",
            "source": "billing", "plan": "pro", "eventProperties": {"from": "basic"}}  # fmt: skip
    assert send_event(team, body, key="k1").status_code == 200
    contact = team.store.find(email="a@x.io")
    assert contact is not None
    expected = {"firstName": "Bob", "lastName": "B", "userGroup": "ops", "source": "billing", "plan": "pro"}
    assert {k: contact[k] for k in expected} == expected
    (event,) = team.store.events()
    assert event["contactProperties"] == expected and event["eventProperties"] == {"from": "basic"}


@pytest.mark.parametrize(
    "value",
    [1704067200000, 1704067200000.5, "1704067200000", "-1000", "2024", "2024-01", "2024-01-02", "2024-01-02 10:30",
     "2024-01-02T10:30", "2024-01-02T10:30:00", "2024-01-02T10:30:00.123", "2024-01-02T10:30:00Z",
     "2024-01-02T10:30:00.123+05:30", "+002024-01-02T00:00:00Z", "2024-02-29", "2024-01-02T24:00",
     8_640_000_000_000_000],
    ids=repr,
)  # fmt: skip
def test_dates_as_documented_are_accepted(team: Sandbox, value: Any) -> None:
    """Epoch milliseconds as a number or a string, ECMA-262 date time strings and "YYYY-MM-DD HH:MM"."""
    assert upsert(team, email="a@x.io", renewsAt=value).status_code == 200


@pytest.mark.parametrize(
    "value",
    ["next week", "2024-02-30", "2023-02-29", "2024-13-01", "2024-01-02T25:00", "2024-01-02T10:60", "2024-1-2",
     "2024-01-02T10:30:00.1234", "2024-01-02T10", "2024-01-02T10:30+0530", "2024 10:30", "-000000-01-01",
     "2024-01-02T24:00:01", 8_640_000_000_000_001, "8640000000000001", float("nan"), True, ""],
    ids=repr,
)  # fmt: skip
def test_dates_outside_the_documents_are_refused_when_strict(team: Sandbox, value: Any) -> None:
    if isinstance(value, float):
        response = call(team, "PUT", "/v1/contacts/update", data=b'{"email": "a@x.io", "renewsAt": NaN}')
        assert_error(response, 400)
        return
    assert_error(upsert(team, email="a@x.io", renewsAt=value), 400, "renewsAt")


def test_a_mailing_list_without_description_has_null(make_sandbox: Any) -> None:
    lists = [{"id": "l1", "name": "A"}, {"id": "l2", "name": "B", "description": ""}, {"id": "l3", "description": "W"}]
    sb = make_sandbox(lists=lists)
    assert [x["description"] for x in call(sb, "GET", "/v1/lists").json()] == [None, None, "W"]


@pytest.mark.parametrize(
    ("method", "path", "body", "expected_keys"),
    [
        ("GET", "/v1/api-key", _ABSENT, {"success", "teamName"}),
        ("PUT", "/v1/contacts/update", {"email": "a@x.io"}, {"success", "id"}),
        ("POST", "/v1/contacts/create", {"email": "b@x.io"}, {"success", "id"}),
        ("POST", "/v1/events/send", {"eventName": "signup", "email": "a@x.io"}, {"success"}),
        ("POST", "/v1/contacts/properties", {"name": "planName", "type": "string"}, {"success"}),
        ("POST", "/v1/contacts/delete", {"email": "a@x.io"}, {"success", "message"}),
    ],
)
def test_every_success_carries_loops_json_body(
    team: Sandbox, method: str, path: str, body: Any, expected_keys: set[str]
) -> None:
    """A 200 is always Loops' JSON: ``{"success": true, ...}`` (the client treats anything else as not Loops)."""
    upsert(team, email="a@x.io")
    response = call(team, method, path, body)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "application/json"
    payload = response.json()
    assert payload["success"] is True and set(payload) == expected_keys
    if path.endswith("/delete"):
        assert payload["message"] == "Contact deleted."


# ----- HTTP protocol -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status"),
    [
        ("GET", "/v1/contacts/update", {}, 405),
        ("DELETE", "/v1/lists", {}, 405),
        ("GET", "/v1/contacts/nope", {}, 404),
        ("GET", "/v2/lists", {}, 404),
        ("PUT", "/v1/contacts/update", {"data": b"email=a@x.io"}, 400),
        ("PUT", "/v1/contacts/update", {"data": b""}, 400),
        (
            "PUT",
            "/v1/contacts/update",
            {"data": b"NaN", "headers": {"Content-Type": "application/json"}},
            400,
        ),
        ("PUT", "/v1/contacts/update", {"json": ["a@x.io"]}, 400),
    ],
)
def test_protocol_errors(team: Sandbox, method: str, path: str, kwargs: dict[str, Any], status: int) -> None:
    assert_error(call(team, method, path, **kwargs), status)


def test_answers_are_json_and_unknown_paths_outside_api_are_404(team: Sandbox) -> None:
    response = call(team, "GET", "/v1/lists")
    assert response.headers["Content-Type"] == "application/json"
    assert requests.get(team.url.removesuffix("/api") + "/nope", timeout=5).status_code == 404


# ----- rate limit ----------------------------------------------------------------------------------------


def _start_fresh_window(sb: Sandbox) -> None:
    """Jump the store clock to the start of a 1-second window, leaving a full real second for the test."""
    now = sb.store.now()
    sb.store.advance_clock(math.floor(now) + 1 - now + 0.001)


def test_rate_limit_headers_and_429(make_sandbox: Any) -> None:
    sb = make_sandbox(rate_limit=3)
    _start_fresh_window(sb)
    responses = [call(sb, "PUT", "/v1/contacts/update", {"email": f"{i}@x.io"}) for i in range(5)]
    assert [r.status_code for r in responses] == [200, 200, 200, 429, 429]
    assert [r.headers["x-ratelimit-remaining"] for r in responses] == ["2", "1", "0", "0", "0"]
    assert {r.headers["x-ratelimit-limit"] for r in responses} == {"3"}
    assert_error(responses[3], 429, "Rate limit exceeded")
    assert len(sb.store.contacts()) == 3  # over the limit: no work done
    assert [entry["fault"] for entry in sb.store.requests()][-2:] == ["rate_limited", "rate_limited"]
    sb.store.advance_clock(1)
    assert call(sb, "GET", "/v1/api-key").status_code == 200


def test_rate_limit_ignores_unauthenticated_requests_and_changes_at_runtime(make_sandbox: Any) -> None:
    sb = make_sandbox(rate_limit=2)
    _start_fresh_window(sb)
    bad = call(sb, "GET", "/v1/api-key", key="nope")
    assert bad.status_code == 401 and bad.headers["x-ratelimit-remaining"] == "2"
    assert [call(sb, "GET", "/v1/api-key").status_code for _ in range(3)] == [200, 200, 429]
    sb.configure(rate_limit=0)
    response = call(sb, "GET", "/v1/api-key")
    assert response.status_code == 200 and "x-ratelimit-limit" not in response.headers


# ----- faults and latency --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "status", "work_done"),
    [
        ("500", 500, False),
        ("429", 429, False),
        ("502", 502, False),
        ("drop", None, False),
        ("lost", None, True),
    ],
)
def test_injected_faults(team: Sandbox, fault: str, status: int | None, work_done: bool) -> None:
    team.inject(fault, path="/api/v1/events/send")
    assert upsert(team, email="other@x.io").status_code == 200  # another path: not affected
    body = {"eventName": "signup", "email": "a@x.io"}
    if status is None:
        with pytest.raises(requests.ConnectionError):
            send_event(team, body, key="msg-1")
    else:
        response = send_event(team, body, key="msg-1")
        assert response.status_code == status
        if fault == "502":
            assert response.headers["Content-Type"].startswith("text/html")  # a proxy page, not JSON
        else:
            assert_error(response, status)
    assert len(team.store.events()) == (1 if work_done else 0)
    assert (team.store.find(email="a@x.io") is not None) == work_done
    assert team.store.requests()[-1]["fault"] == fault
    retry = send_event(team, body, key="msg-1")  # the queued fault is used up
    assert retry.status_code == (409 if work_done else 200)


def test_injected_faults_queue_in_order_for_any_path(team: Sandbox) -> None:
    team.inject("500", count=2)
    team.inject("429")
    statuses = [call(team, "GET", "/v1/lists").status_code for _ in range(4)]
    assert statuses == [500, 500, 429, 200]


def test_fault_fractions_are_reproducible_with_a_seed(make_sandbox: Any) -> None:
    runs = []
    for _ in range(2):
        sb = make_sandbox(fail_500=0.3, fail_429=0.2, seed=7)
        runs.append([call(sb, "GET", "/v1/lists").status_code for _ in range(30)])
    assert runs[0] == runs[1]
    assert {200, 429, 500} <= set(runs[0])
    sb = make_sandbox(fail_drop=1.0)
    with pytest.raises(requests.ConnectionError):
        call(sb, "GET", "/v1/lists")
    sb.configure(fail_drop=0.0)
    assert call(sb, "GET", "/v1/lists").status_code == 200


def test_latency_is_applied_per_request_concurrently(make_sandbox: Any) -> None:
    sb = make_sandbox(latency_ms=200)
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=6) as pool:
        statuses = list(pool.map(lambda _: call(sb, "GET", "/v1/lists").status_code, range(6)))
    elapsed = time.monotonic() - started
    assert statuses == [200] * 6
    assert 0.2 <= elapsed < 0.8  # six 200 ms requests overlapped instead of taking 1.2 s


# ----- request log, views, reset -------------------------------------------------------------------------


def test_request_log(team: Sandbox) -> None:
    send_event(team, {"eventName": "signup", "email": "a@x.io"}, key="msg-1")
    call(team, "GET", "/v1/contacts/find", params={"email": "a@x.io"})
    call(team, "GET", "/v1/lists", key="nope")
    first, second, third = team.store.requests()
    assert first["method"] == "POST" and first["path"] == "/api/v1/events/send" and first["status"] == 200
    assert first["idempotencyKey"] == "msg-1" and first["body"]["eventName"] == "signup" and first["fault"] is None
    assert second["query"] == {"email": "a@x.io"} and second["body"] is None
    assert third["status"] == 401


def test_views_need_no_auth_and_are_not_logged(team: Sandbox) -> None:
    send_event(team, {"eventName": "signup", "email": "a@x.io"})
    base = team.url.removesuffix("/api") + "/_sandbox"
    contacts = requests.get(f"{base}/contacts", timeout=5).json()
    events = requests.get(f"{base}/events", timeout=5).json()
    log = requests.get(f"{base}/requests", timeout=5).json()
    state = requests.get(f"{base}/state", timeout=5).json()
    assert contacts == team.store.contacts() and events == team.store.events() and len(log) == 1
    assert set(state) == {"teamName", "contacts", "events", "requests", "properties", "lists", "eventPatterns"}
    assert state["lists"] == TEAM["lists"] and len(state["requests"]) == 1
    assert requests.post(f"{base}/contacts", timeout=5).status_code == 405
    assert len(team.store.requests()) == 1


def test_reset_keeps_the_team_schema(team: Sandbox) -> None:
    call(team, "POST", "/v1/contacts/properties", {"name": "planName", "type": "string"})
    send_event(team, {"eventName": "signup", "email": "a@x.io"}, key="msg-1")
    team.store.reset()
    assert team.store.contacts() == [] and team.store.events() == [] and team.store.requests() == []
    assert [prop["key"] for prop in team.store.properties("custom")] == ["plan", "seats", "trial", "renewsAt"]
    assert team.store.lists() == TEAM["lists"]
    assert send_event(team, {"eventName": "signup", "email": "a@x.io"}, key="msg-1").status_code == 200


def test_configure_rejects_bad_values(sandbox: Sandbox) -> None:
    with pytest.raises(ValueError):
        sandbox.configure(fail_500=0.8, fail_429=0.5)
    with pytest.raises(TypeError):
        sandbox.configure(nonsense=1)
    with pytest.raises(ValueError):
        sandbox.inject("teapot")


# ----- HTML page at / -----------------------------------------------------------------------------------


def page(sb: Sandbox, method: str = "GET", **params: Any) -> requests.Response:
    """The read-only HTML page (no key: it needs none)."""
    return requests.request(method, sb.url.removesuffix("/api") + "/", params=params, timeout=5)


def page_counts(text: str) -> dict[str, int]:
    return {name: int(value.replace(",", "")) for name, value in re.findall(r'id="count-([\w-]+)">([\d,]+)<', text)}


def cells(text: str, css: str) -> list[str]:
    """The inner HTML of every ``<td class="{css}">`` in page order."""
    return re.findall(rf'<td class="{css}(?: [^"]*)?"[^>]*>(.*?)</td>', text, flags=re.S)


def test_page_is_html_for_get_and_head(team: Sandbox) -> None:
    response = page(team)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/html; charset=utf-8"
    assert "script-src" not in response.headers["Content-Security-Policy"]  # default-src 'none': no script at all
    assert response.headers["Cache-Control"] == "no-store"
    text = response.text
    assert text.startswith("<!doctype html>") and text.rstrip().endswith("</html>")
    assert '<span class="team" id="team-name">Sandbox team</span>' in text
    assert '<b id="rate-limit">unlimited</b>' in text
    for view in ("contacts", "events", "requests", "state"):
        assert f'href="/_sandbox/{view}"' in text
    assert 'id="reload"' in text and "No contacts yet." in text and "No events yet." in text
    assert "http-equiv" not in text  # no auto-reload unless asked
    assert "<script" not in text and "http://" not in text.replace(team.url, "")  # no external asset
    head = page(team, "HEAD")
    assert head.status_code == 200 and head.content == b""
    assert head.headers["Content-Type"] == "text/html; charset=utf-8"


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
def test_page_refuses_other_methods(team: Sandbox, method: str) -> None:
    response = page(team, method)
    assert_error(response, 405)
    assert response.headers["Allow"] == "GET, HEAD"


def test_page_does_not_shadow_the_api_or_other_paths(team: Sandbox) -> None:
    root = team.url.removesuffix("/api")
    assert_error(requests.get(root + "/api/v1/api-key", timeout=5), 401)  # still the API, still needs the key
    assert call(team, "GET", "/v1/api-key").json()["success"] is True
    assert requests.get(root + "/index.html", timeout=5).status_code == 404
    assert requests.get(root + "/api/", timeout=5).headers["Content-Type"] == "application/json"


def test_page_escapes_every_user_value(lenient_team: Sandbox) -> None:
    script = "<script>alert(1)</script>"
    upsert(
        lenient_team,
        email="a@x.io",
        userId='"><img src=x onerror=alert(1)>',
        firstName="<b>Ada</b>",
        plan=script,
        **{"<i>key</i>": "&amp;"},
    )
    body = {"eventName": "<em>signup</em>", "email": "a@x.io", "eventProperties": {"note": script}}
    assert send_event(lenient_team, body, key="<u>k1</u>").status_code == 200
    text = page(lenient_team).text
    assert "<script" not in text and "<img" not in text and "<b>Ada" not in text and "<em>" not in text
    assert "<i>key" not in text and "<u>k1" not in text
    assert text.count("&lt;script&gt;alert(1)&lt;/script&gt;") == 2  # the contact property and the event one
    assert "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;" in text
    assert "&lt;b&gt;Ada&lt;/b&gt;" in text and "&lt;em&gt;signup&lt;/em&gt;" in text
    assert "&lt;i&gt;key&lt;/i&gt;" in text and "&amp;amp;" in text and "&lt;u&gt;k1&lt;/u&gt;" in text
    assert 'class="unknown"' in text  # "<i>key</i>" is not a property of the team: flagged


def test_page_contacts_table(team: Sandbox) -> None:
    upsert(team, email="b@x.io", subscribed=False)
    upsert(
        team,
        email="a@x.io",
        userId="u1",
        firstName="Ada",
        lastName="Lovelace",
        source="Segment",
        userGroup="admins",
        plan="pro",
        seats=3,
        trial=True,
        mailingLists={LIST_ID: True},
    )
    text = page(team).text
    assert cells(text, "email") == ["a@x.io", "b@x.io"]  # newest first
    (row,) = re.findall(r'<tr class="contact"[^>]*>.*?a@x\.io.*?</tr>', text, flags=re.S)
    for fragment in ("u1", "Ada Lovelace", "pill yes", "Segment", "admins", ">Newsletter<"):
        assert fragment in row, fragment
    for key, value in (("plan", "pro"), ("seats", "3"), ("trial", "true")):
        assert f'<span class="k">{key}</span> {value}</li>' in row
    (other,) = re.findall(r'<tr class="contact"[^>]*>.*?b@x\.io.*?</tr>', text, flags=re.S)
    assert "pill no" in other
    limited = page(team, contacts=1).text
    assert cells(limited, "email") == ["a@x.io"]
    assert "Contacts 1-1 of 2, newest first" in limited and 'href="/?contacts=1&amp;cpage=2#contacts"' in limited


def test_page_shows_mailing_lists_by_name(team: Sandbox, lenient_team: Sandbox) -> None:
    upsert(team, email="a@x.io", mailingLists={LIST_ID: True})
    upsert(team, email="b@x.io")
    send_event(team, {"eventName": "left", "email": "a@x.io", "mailingLists": {LIST_ID: False}})
    text = page(team).text
    assert cells(text, "lists") == [EMPTY, EMPTY]  # a@x.io left the list with the event
    upsert(team, email="b@x.io", mailingLists={LIST_ID: True})
    (joined, left) = cells(page(team).text, "lists")
    assert joined == f'<span class="pill" title="list id {LIST_ID}">Newsletter</span>'
    assert left == EMPTY
    assert 'class="pill left"' in text and ">Newsletter</span>" in text  # the event's list change, by name
    assert '<h3>Mailing lists</h3><ul class="kv"><li>Newsletter' in text  # the team schema section
    upsert(lenient_team, email="a@x.io", mailingLists={"nolist": True, LIST_ID: True})
    (lists,) = cells(page(lenient_team).text, "lists")
    assert ">Newsletter</span>" in lists and 'class="pill unknown"' in lists and ">nolist</span>" in lists


def test_page_events_newest_first_with_a_limit(team: Sandbox) -> None:
    for number in range(5):
        body = {"eventName": f"e{number}", "email": "a@x.io", "eventProperties": {"n": number}}
        assert send_event(team, body, key=f"msg-{number}").status_code == 200
    text = page(team).text
    assert cells(text, "event-name") == ["e4", "e3", "e2", "e1", "e0"]
    assert cells(text, "mono key") == ["msg-4", "msg-3", "msg-2", "msg-1", "msg-0"]
    assert '<span class="k">n</span> 4' in text and "Events 1-5 of 5, newest first" in text and "epage" not in text
    limited = page(team, limit=2).text
    assert cells(limited, "event-name") == ["e4", "e3"]
    assert "Events 1-2 of 5, newest first" in limited and 'href="/?limit=2&amp;epage=2#events"' in limited
    assert 'href="/?limit=2"' in limited  # the reload link keeps the limit
    assert cells(page(team, limit=0).text, "event-name") == []
    assert page_counts(limited)["events"] == 5


@pytest.mark.parametrize(
    ("params", "fragment"),
    [({"limit": "ten"}, "limit"), ({"limit": "-1"}, "limit"), ({"contacts": "1.5"}, "contacts"),
     ({"refresh": "-5"}, "refresh"), ({"refresh": "99999"}, "refresh")],
)  # fmt: skip
def test_page_refuses_bad_parameters(team: Sandbox, params: dict[str, str], fragment: str) -> None:
    assert_error(page(team, **params), 400, fragment)


def test_page_auto_reload_is_opt_in(team: Sandbox) -> None:
    text = page(team, refresh=5, limit=3).text
    assert '<meta http-equiv="refresh" content="5">' in text
    assert 'href="/?limit=3"' in text  # "stop" keeps the other parameters
    assert 'href="/?refresh=5"' in page(team).text


def test_page_counts(team: Sandbox) -> None:
    upsert(team, email="a@x.io")
    upsert(team, email="b@x.io")
    send_event(team, {"eventName": "signup", "email": "a@x.io"})
    call(team, "GET", "/v1/lists", key="nope")  # 401
    upsert(team, email="c@x.io", colour="blue")  # 400
    for fault in ("500", "502", "429", "drop"):
        team.inject(fault)
        with contextlib.suppress(requests.ConnectionError):
            call(team, "GET", "/v1/lists")
    assert page_counts(page(team).text) == {
        "contacts": 2,
        "events": 1,
        "requests": 9,
        "429": 1,
        "retries": 2,  # the target's word: the same GET again after the 500 and the 502 (not after the 429)
        "4xx": 2,
        "5xx": 2,
        "no-answer": 1,
    }


def test_page_is_not_rate_limited_nor_logged(make_sandbox: Any) -> None:
    sb = make_sandbox(rate_limit=2, team_name="Acme")
    _start_fresh_window(sb)
    assert call(sb, "GET", "/v1/api-key").headers["x-ratelimit-remaining"] == "1"
    responses = [page(sb) for _ in range(5)] + [page(sb, "HEAD")]
    assert [response.status_code for response in responses] == [200] * 6
    assert "x-ratelimit-limit" not in responses[0].headers
    assert '<b id="rate-limit">2 requests/s</b>' in responses[0].text and ">Acme</span>" in responses[0].text
    assert call(sb, "GET", "/v1/api-key").headers["x-ratelimit-remaining"] == "0"  # the pages took no slot
    assert len(sb.store.requests()) == 2 and page_counts(page(sb).text)["requests"] == 2


# ----- CLI -----------------------------------------------------------------------------------------------


def test_cli_config_merges_team_file_and_flags(tmp_path: Path) -> None:
    team_file = tmp_path / "team.json"
    team_file.write_text(json.dumps({"teamName": "Acme", **TEAM}))
    args = build_parser().parse_args(
        ["--team-file", str(team_file), "--property", "score:number", "--list", "l2:Beta", "--lenient"]
    )
    config = config_from_args(args)
    assert config.team_name.startswith("Acme #") and config.lenient is True and config.api_key == KEY
    assert config.properties[-1] == {"key": "score", "type": "number"}
    assert config.lists[-1] == {"id": "l2", "name": "Beta"}


_LAUNCH_WITH_SIGINT = (
    "import os, signal, sys; "
    "signal.signal(signal.SIGINT, signal.SIG_IGN if sys.argv[1] == 'ignored' else signal.SIG_DFL); "
    "os.execv(sys.executable, [sys.executable, '-m', 'target_loops.sandbox', *sys.argv[2:]])"
)
"""Start the CLI with SIGINT ignored or at its default, whatever pytest's own disposition is (exec keeps SIG_IGN)."""


@pytest.mark.parametrize(
    ("sigint", "stop_signal"),
    [("default", signal.SIGINT), ("ignored", signal.SIGINT), ("ignored", signal.SIGTERM)],
    ids=["ctrl-c", "ctrl-c-when-started-with-sigint-ignored", "sigterm"],
)
def test_cli_starts_prints_its_url_and_stops_on_ctrl_c(sigint: str, stop_signal: signal.Signals) -> None:
    """Ctrl-C and SIGTERM stop the CLI cleanly, also when it was started with SIGINT ignored.

    A process started under ``nohup``, ``&`` in a script or some CI runners inherits SIGINT ignored, and Python
    keeps it ignored unless the program installs a handler; the sandbox does, so the "ignored" case stops too.
    The child's SIGINT disposition is set explicitly, so this test does not depend on how pytest was started,
    and a child that does not stop is killed after 5 s (a failure, not a hang).
    """
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen(
        [sys.executable, "-c", _LAUNCH_WITH_SIGINT, sigint, "--port", "0", "--rate-limit", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("Loops sandbox listening on http://127.0.0.1:") and "key: sandbox-key" in line
        url = line.split()[4]
        assert requests.get(url + "/v1/api-key", headers={"Authorization": f"Bearer {KEY}"}, timeout=5).ok
        process.send_signal(stop_signal)
        try:
            _, stderr = process.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the sandbox did not stop on {stop_signal.name} (SIGINT {sigint} at start)")
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0
    assert "Loops sandbox stopped." in stderr
    assert "Traceback" not in stderr and "GET /api" not in stderr  # quiet by default
