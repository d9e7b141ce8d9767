"""The sandbox's state and Loops' rules: contacts, events, properties, lists, idempotency keys.

Pure Python with no HTTP, so the rules of Loops' API reference (https://loops.so/docs/api-reference) can be read
(and tested) in one place. Where Loops' documents say nothing, the sandbox picks the stricter behaviour and says so
(``strict``; the README's sandbox section lists each such choice and ``--lenient`` turns most of them off). Every
public method takes the store's single lock: the threaded server calls in from many threads at once, and one
lock makes each request's validate-then-mutate step atomic (e.g. an Idempotency-Key check and the event it
guards).

Rule violations raise :class:`LoopsError` carrying the HTTP status and message Loops would answer; the WSGI
app turns it into ``{"success": false, "message": ...}``.
"""

from __future__ import annotations

import copy
import json
import math
import re
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

PROPERTY_TYPES: frozenset[str] = frozenset({"string", "number", "boolean", "date"})
"""The four contact property types Loops knows."""

DEFAULT_PROPERTIES: tuple[tuple[str, str, str], ...] = (
    ("email", "Email", "string"),
    ("firstName", "First Name", "string"),
    ("lastName", "Last Name", "string"),
    ("notes", "Notes", "string"),
    ("source", "Source", "string"),
    ("subscribed", "Subscribed", "boolean"),
    ("userGroup", "User Group", "string"),
    ("userId", "User ID", "string"),
    ("createdAt", "Created At", "date"),
)
"""Loops' built-in contact properties, as ``GET /v1/contacts/properties`` lists them: (key, label, type)."""

CONTACT_OWN_KEYS: frozenset[str] = frozenset(
    {"id", "mailingLists", "optInStatus", *(key for key, _label, _type in DEFAULT_PROPERTIES)}
)
"""Keys every contact has as Loops' own fields; anything else on a contact is a custom property."""

RESERVED_BODY_KEYS: frozenset[str] = frozenset({"id", "listId", "softDeleteAt", "teamId", "updatedAt", "notes"})
"""Never valid as body keys: the names Loops reserves (https://loops.so/docs/contacts/properties#reserved-names) and
``notes``, which the API reference does not list as writable (a sandbox choice: Loops' answer is undocumented).
``createdAt`` is not among them: a default date property whose writability Loops does not document; the sandbox
accepts it (a sandbox choice, listed in the README: Loops' own Segment action sends it)."""

DEFAULT_STRING_FIELDS: tuple[str, ...] = ("firstName", "lastName", "source", "userGroup")
"""Built-in string fields settable through the API (besides the identifiers)."""

DEFAULT_DATE_FIELDS: tuple[str, ...] = ("createdAt",)
"""Built-in date fields settable through the API."""

EVENT_BODY_KEYS: frozenset[str] = frozenset({"eventName", "eventProperties"})
"""Keys of an events/send body that are about the event, not the contact."""

BODY_ONLY_KEYS: frozenset[str] = frozenset({"mailingLists", "optInStatus", "eventName", "eventProperties"})
"""Body keys with a meaning of their own: never valid names for a new custom property."""

MAX_ENCODED_STRING = 500
"""Longest string value, measured JSON-encoded *with* its quotes (so 498 characters of plain text; escapes count):
https://loops.so/docs/api-reference/intro ("Debugging")."""
MAX_IDEMPOTENCY_KEY = 100
"""https://loops.so/docs/api-reference/send-event: an Idempotency-Key has at most 100 characters."""
IDEMPOTENCY_WINDOW_S = 24 * 3600
MAX_TIME_VALUE_MS = 8_640_000_000_000_000
"""The largest epoch-millisecond value a date can hold (ECMA-262's time range:
https://tc39.es/ecma262/#sec-time-values-and-time-range)."""

_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_PROPERTY_NAME_RE = re.compile(r"^[a-z][a-zA-Z0-9]*$")
_EPOCH_MS_RE = re.compile(r"^-?\d{1,16}$")
#: ECMA-262's date time string format (https://tc39.es/ecma262/#sec-date-time-string-format): YYYY, YYYY-MM or
#: YYYY-MM-DD (years may be expanded to ±YYYYYY), optionally followed by THH:mm, THH:mm:ss or THH:mm:ss.sss and an
#: offset (Z or ±HH:mm); plus the "YYYY-MM-DD HH:MM" form Loops lists (https://loops.so/docs/contacts/properties#dates).
_ECMA_DATE_RE = re.compile(
    r"^(?P<year>\d{4}|[+-]\d{6})(?:-(?P<month>\d{2})(?:-(?P<day>\d{2}))?)?"
    r"(?:(?P<sep>[T ])(?P<hour>\d{2}):(?P<minute>\d{2})(?::(?P<second>\d{2})(?:\.(?P<ms>\d{3}))?)?"
    r"(?P<offset>Z|[+-]\d{2}:\d{2})?)?$"
)


MULTIPLE_CONTACTS = "Multiple contacts found for the given criteria"
"""Loops' message (a 400) when a body's email and userId match two different contacts."""


class LoopsError(Exception):
    """A request Loops would refuse: carries the HTTP status and the message of the error body."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def bad_request(message: str) -> LoopsError:
    """Shorthand for the most common refusal, so rule code reads as a list of rules."""
    return LoopsError(400, message)


def iso_timestamp(epoch_s: float) -> str:
    """Format a store-clock instant the way Loops does (UTC, milliseconds, ``Z``)."""
    moment = datetime.fromtimestamp(epoch_s, tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def label_for(key: str) -> str:
    """Derive a display label from a camelCase key (``planName`` → ``Plan Name``), as Loops' UI does."""
    words = re.sub(r"(?<!^)(?=[A-Z])", " ", key)
    return words[:1].upper() + words[1:]


def is_number(value: Any) -> bool:
    """True for JSON numbers; ``bool`` is an ``int`` subclass in Python but a different type in JSON."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def encoded_length(text: str) -> int:
    """A string's length as Loops measures it: JSON-encoded, quotes and escapes included, in UTF-16 code units
    (JavaScript's ``JSON.stringify(text).length``)."""
    encoded = json.dumps(text, ensure_ascii=False)
    return len(encoded) + sum(1 for ch in encoded if ord(ch) > 0xFFFF)


def check_length(where: str, value: Any) -> None:
    """Refuse a string longer than Loops allows, naming it and its length."""
    if isinstance(value, str) and len(value) > 82:  # 82 characters fit even if each took a 6-character escape
        length = encoded_length(value)
        if length > MAX_ENCODED_STRING:
            raise bad_request(
                f"{where} is longer than {MAX_ENCODED_STRING} characters ({length} as JSON, quotes included)."
            )


def is_date(value: Any) -> bool:
    """A Loops date (https://loops.so/docs/contacts/properties#dates): epoch *milliseconds* as a number or as a
    string of digits, or an ECMA-262 date time string (or "YYYY-MM-DD HH:MM"); no offset means UTC."""
    if is_number(value):
        return math.isfinite(value) and abs(value) <= MAX_TIME_VALUE_MS
    if not isinstance(value, str):
        return False
    if _EPOCH_MS_RE.match(value):
        return abs(int(value)) <= MAX_TIME_VALUE_MS
    match = _ECMA_DATE_RE.match(value)
    if match is None or match["year"] == "-000000":
        return False
    if match["sep"] == " " and match["day"] is None:
        return False  # Loops' space form is "YYYY-MM-DD HH:MM"
    year, month, day = int(match["year"]), int(match["month"] or 1), int(match["day"] or 1)
    hour, minute, second = int(match["hour"] or 0), int(match["minute"] or 0), int(match["second"] or 0)
    if not (1 <= month <= 12 and 1 <= day <= _days_in_month(year, month)):
        return False
    if hour > 24 or minute > 59 or second > 59 or (hour == 24 and (minute or second or int(match["ms"] or 0))):
        return False
    offset_minutes = 0
    if match["offset"] not in (None, "Z"):
        off_hours, off_minutes = int(match["offset"][1:3]), int(match["offset"][4:6])
        if off_hours > 23 or off_minutes > 59:
            return False
        offset_minutes = (off_hours * 60 + off_minutes) * (1 if match["offset"][0] == "+" else -1)
    minutes = (_days_from_civil(year, month, day) * 24 + hour) * 60 + minute - offset_minutes
    return abs((minutes * 60 + second) * 1000) <= MAX_TIME_VALUE_MS


def _days_in_month(year: int, month: int) -> int:
    if month == 2:
        return 29 if year % 4 == 0 and (year % 100 != 0 or year % 400 == 0) else 28
    return 30 if month in (4, 6, 9, 11) else 31


def _days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date, any year (H. Hinnant's ``days_from_civil``)."""
    year -= month <= 2
    era = year // 400
    year_of_era = year - era * 400
    day_of_year = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    day_of_era = year_of_era * 365 + year_of_era // 4 - year_of_era // 100 + day_of_year
    return era * 146097 + day_of_era - 719468


_TYPE_CHECKS = {
    "string": lambda value: isinstance(value, str),
    "number": lambda value: is_number(value) and math.isfinite(value),
    "boolean": lambda value: isinstance(value, bool),
    "date": is_date,
}


def matches_type(value: Any, type_name: str) -> bool:
    """Whether a non-null JSON value is acceptable for a property of ``type_name``."""
    return _TYPE_CHECKS[type_name](value)


def new_contact_id() -> str:
    """A cuid-looking id (``c`` + 24 base-36 characters) like the ids Loops hands out."""
    number = uuid.uuid4().int
    chars = []
    for _ in range(24):
        number, digit = divmod(number, 36)
        chars.append("0123456789abcdefghijklmnopqrstuvwxyz"[digit])
    return "c" + "".join(chars)


@dataclass
class ContactChange:
    """A validated contact write: identifiers, property values (``None`` = clear) and list memberships."""

    email: str | None = None
    user_id: str | None = None
    values: dict[str, Any] = field(default_factory=dict)
    mailing_lists: dict[str, bool] = field(default_factory=dict)


def normalize_property(spec: Mapping[str, Any]) -> dict[str, str]:
    """Validate a configured custom property, so a typo in a test or team file fails at start, not mid-run."""
    key = spec.get("key") or spec.get("name")
    type_name = spec.get("type", "string")
    if not isinstance(key, str) or not key:
        raise ValueError(f"custom property needs a non-empty 'key': {dict(spec)!r}")
    if type_name not in PROPERTY_TYPES:
        raise ValueError(f"custom property {key!r}: type must be one of {sorted(PROPERTY_TYPES)}, not {type_name!r}")
    if key in RESERVED_BODY_KEYS | BODY_ONLY_KEYS or any(key == default[0] for default in DEFAULT_PROPERTIES):
        raise ValueError(f"custom property {key!r} clashes with a default or reserved Loops name")
    return {"key": key, "label": str(spec.get("label") or label_for(key)), "type": type_name}


def normalize_list(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Validate one configured mailing list and fill Loops' fields (description, isPublic)."""
    list_id = spec.get("id")
    if not isinstance(list_id, str) or not list_id:
        raise ValueError(f"mailing list needs a non-empty 'id': {dict(spec)!r}")
    return {
        "id": list_id,
        "name": str(spec.get("name") or list_id),
        # Loops answers null for a list without a description (https://loops.so/docs/api-reference/list-mailing-lists)
        "description": str(spec["description"]) if spec.get("description") else None,
        # "By default lists are private" (https://loops.so/docs/contacts/mailing-lists, "List types").
        "isPublic": bool(spec.get("isPublic", False)),
    }


def normalize_event_pattern(spec: Mapping[str, Any]) -> dict[str, Any]:
    """One configured event definition, in the shape ``GET /v1/event-patterns/by-name/{eventName}`` answers
    (https://loops.so/docs/api-reference/get-event-pattern-by-name): ``{"eventName": "Signed Up",
    "eventProperties": [{"name": "plan", "type": "string"}]}`` in a team file; ``id`` is filled in."""
    name = spec.get("eventName")
    if not isinstance(name, str) or not name.strip() or ":" in name:
        raise ValueError(f"event pattern needs an 'eventName' without ':': {dict(spec)!r}")
    properties = spec.get("eventProperties", [])
    if not isinstance(properties, list):
        raise ValueError(f"event {name!r}: 'eventProperties' must be a list of {{name, type}}")
    seen: list[dict[str, str]] = []
    for item in properties:
        prop = item.get("name") if isinstance(item, Mapping) else None
        type_name = item.get("type", "string") if isinstance(item, Mapping) else None
        if not isinstance(prop, str) or not prop or type_name not in PROPERTY_TYPES:
            raise ValueError(
                f"event {name!r}: each event property is {{'name': ..., 'type': one of {sorted(PROPERTY_TYPES)}}}, "
                f"not {item!r}"
            )
        if any(p["name"] == prop for p in seen):  # "unique names within the same event" (docs/events/properties)
            raise ValueError(f"event {name!r}: event property {prop!r} is declared twice")
        seen.append({"name": prop, "type": type_name})
    return {"id": new_contact_id(), "eventName": name, "eventProperties": seen, "incomingWebhookPlatform": None}


def _event_property_type(value: Any) -> str:
    """The type Loops gives an event property it creates from a sent value (a sandbox choice: Loops does not say)."""
    if isinstance(value, bool):
        return "boolean"
    if is_number(value):
        return "number"
    return "string"


class Store:
    """All sandbox state behind one lock, plus a clock that tests can move forward without sleeping."""

    def __init__(
        self,
        properties: Iterable[Mapping[str, Any]] = (),
        lists: Iterable[Mapping[str, Any]] = (),
        events: Iterable[Mapping[str, Any]] = (),
    ) -> None:
        self._lock = threading.RLock()
        self._clock_offset = 0.0
        self._seed_properties: list[dict[str, str]] = []
        self._properties: list[dict[str, str]] = []
        self._lists: list[dict[str, Any]] = []
        self._contacts: dict[str, dict[str, Any]] = {}
        self._by_email: dict[str, str] = {}
        self._by_user_id: dict[str, str] = {}
        self._events: list[dict[str, Any]] = []
        self._requests: list[dict[str, Any]] = []
        self._idempotency: dict[str, float] = {}
        self._seed_patterns: dict[str, dict[str, Any]] = {}
        self._patterns: dict[str, dict[str, Any]] = {}
        self.configure_team(properties, lists, events)
        #: Ids of the contacts created through the API: each one would start the team's "Contact added" loops
        #: (https://loops.so/docs/loop-builder/loop-triggers); a CSV upload (``upload_csv``) adds none here.
        self._created_through_api: list[str] = []

    # ----- configuration, clock, inspection -------------------------------------------------------------

    def configure_team(
        self,
        properties: Iterable[Mapping[str, Any]] | None = None,
        lists: Iterable[Mapping[str, Any]] | None = None,
        events: Iterable[Mapping[str, Any]] | None = None,
    ) -> None:
        """Replace the team's seeded custom properties, mailing lists and/or event definitions (``None`` leaves one
        as it is)."""
        with self._lock:
            if properties is not None:
                seeded = [normalize_property(spec) for spec in properties]
                keys = [spec["key"] for spec in seeded]
                if len(set(keys)) != len(keys):
                    raise ValueError(f"duplicate custom property keys in {keys}")
                self._seed_properties = seeded
                self._properties = copy.deepcopy(seeded)
            if lists is not None:
                self._lists = [normalize_list(spec) for spec in lists]
            if events is not None:
                patterns = [normalize_event_pattern(spec) for spec in events]
                self._seed_patterns = {p["eventName"]: p for p in patterns}
                if len(self._seed_patterns) != len(patterns):
                    raise ValueError("an event is declared twice in the team's events")
                self._patterns = copy.deepcopy(self._seed_patterns)

    def now(self) -> float:
        """The store clock in epoch seconds: real time plus whatever :meth:`advance_clock` added."""
        with self._lock:
            return time.time() + self._clock_offset

    def advance_clock(self, seconds: float) -> None:
        """Move the store clock forward, no sleeping (idempotency window, timestamps, rate-limit windows)."""
        if seconds < 0:
            raise ValueError("the store clock only moves forward")
        with self._lock:
            self._clock_offset += seconds

    def reset(self) -> None:
        """Forget contacts, events, the request log and idempotency keys; properties go back to the seeded."""
        with self._lock:
            self._contacts.clear()
            self._by_email.clear()
            self._by_user_id.clear()
            self._events.clear()
            self._requests.clear()
            self._idempotency.clear()
            self._created_through_api.clear()
            self._properties = copy.deepcopy(self._seed_properties)
            self._patterns = copy.deepcopy(self._seed_patterns)

    def contacts(self) -> list[dict[str, Any]]:
        """Every contact (deep copies, so callers cannot corrupt the store), in creation order."""
        with self._lock:
            return copy.deepcopy(list(self._contacts.values()))

    def find(self, email: str | None = None, user_id: str | None = None) -> dict[str, Any] | None:
        """The contact matching every given identifier (email compared case-insensitively), or ``None``."""
        if email is None and user_id is None:
            raise ValueError("find() needs an email or a user_id")
        with self._lock:
            found = self._lookup(email, user_id)
            return copy.deepcopy(found) if found is not None else None

    def created_through_api(self) -> list[dict[str, Any]]:
        """The contacts created through the API (each would have started "Contact added" loops), still present."""
        with self._lock:
            return [copy.deepcopy(self._contacts[i]) for i in self._created_through_api if i in self._contacts]

    def upload_csv(self, text: str) -> dict[str, int]:
        """Loops' CSV upload in the web app (https://loops.so/docs/add-users/csv-upload), for tests: one contact per
        row, matched on userId first, then email, created when neither matches (source "CSV Upload", subscribed
        unless a ``subscribed`` column says false). An empty cell leaves the property as it is; the text ``null``
        clears it; a custom column is read as its property's type. Starts no "Contact added" loop. Returns
        ``{"created", "updated", "errors"}``."""
        import csv
        import io

        counts = {"created": 0, "updated": 0, "errors": 0}
        with self._lock:
            for row in csv.DictReader(io.StringIO(text)):
                email = (row.pop("email", "") or "").strip() or None
                user_id = (row.pop("userId", "") or "").strip() or None
                contact = self._lookup(None, user_id) if user_id else None
                if contact is None and email:
                    contact = self._lookup(email, None)
                if contact is not None and email and contact.get("email") and contact["email"].lower() != email.lower():
                    counts["errors"] += 1  # an upload cannot change an email
                    continue
                if contact is None and not email:
                    counts["errors"] += 1
                    continue
                values: dict[str, Any] = {}
                for key, cell in row.items():
                    if cell is None or cell == "":
                        continue
                    values[key] = None if cell == "null" else self._csv_value(key, cell)
                if contact is None:
                    contact = self._blank_contact("CSV Upload")
                    self._contacts[contact["id"]] = contact
                    counts["created"] += 1
                else:
                    counts["updated"] += 1
                self._unindex(contact)
                if email:
                    contact["email"] = email
                if user_id:
                    contact["userId"] = user_id
                for key, value in values.items():
                    if key == "subscribed" and value is True and contact.get("subscribed") is False:
                        continue  # an upload cannot re-subscribe
                    contact[key] = value
                self._index(contact)
        return counts

    def _csv_value(self, key: str, cell: str) -> Any:
        """A CSV cell as the value of property ``key`` (its type, when the team has it)."""
        kind = "boolean" if key == "subscribed" else self._property_type(key)
        if kind == "number":
            number = float(cell)
            return int(number) if number.is_integer() and "." not in cell else number
        if kind == "boolean":
            return cell.strip().lower() in ("true", "yes", "1")
        return cell

    def events(self) -> list[dict[str, Any]]:
        """Every accepted event, in acceptance order."""
        with self._lock:
            return copy.deepcopy(self._events)

    def requests(self) -> list[dict[str, Any]]:
        """The /api request log, in completion order."""
        with self._lock:
            return copy.deepcopy(self._requests)

    def properties(self, which: str = "all") -> list[dict[str, str]]:
        """Contact properties as ``GET /v1/contacts/properties?list=all|custom`` lists them."""
        if which not in ("all", "custom"):
            raise bad_request(f"Invalid list parameter '{which}': use 'all' or 'custom'.")
        with self._lock:
            custom = copy.deepcopy(self._properties)
        if which == "custom":
            return custom
        defaults = [{"key": key, "label": label, "type": type_} for key, label, type_ in DEFAULT_PROPERTIES]
        return defaults + custom

    def event_pattern(self, name: str) -> dict[str, Any]:
        """``GET /v1/event-patterns/by-name/{eventName}`` (https://loops.so/docs/api-reference/get-event-pattern-by-name):
        the event's definition; 404 for a name the team has no event for (names are case-sensitive)."""
        with self._lock:
            found = self._patterns.get(name)
            if found is None:
                raise LoopsError(404, "Event pattern not found.")
            return copy.deepcopy(found)

    def event_patterns(self) -> list[dict[str, Any]]:
        """Every event definition, for the views."""
        with self._lock:
            return copy.deepcopy(list(self._patterns.values()))

    def lists(self) -> list[dict[str, Any]]:
        """The team's mailing lists as ``GET /v1/lists`` answers them."""
        with self._lock:
            return copy.deepcopy(self._lists)

    def snapshot(self) -> dict[str, Any]:
        """Everything at once, consistently (one lock hold), for the ``/_sandbox/state`` view."""
        with self._lock:
            return {
                "contacts": self.contacts(),
                "events": self.events(),
                "requests": self.requests(),
                "properties": self.properties("all"),
                "lists": self.lists(),
                "eventPatterns": self.event_patterns(),
            }

    def log_request(self, entry: Mapping[str, Any]) -> None:
        """Append one /api request to the log (the app decides what an entry holds)."""
        with self._lock:
            self._requests.append(copy.deepcopy(dict(entry)))

    # ----- Loops operations -----------------------------------------------------------------------------

    def upsert_contact(self, body: Any, *, strict: bool = True) -> str:
        """``PUT /v1/contacts/update``: update the matching contact or create one; returns its id."""
        with self._lock:
            change = self._contact_change(body, strict=strict)
            return self._apply_upsert(change)["id"]

    def create_contact(self, body: Any, *, strict: bool = True) -> str:
        """``POST /v1/contacts/create``: create-only, 409 when the email or userId is taken."""
        with self._lock:
            change = self._contact_change(body, strict=strict)
            if change.email is None:
                raise bad_request("An email is required to create a contact.")
            if self._lookup(change.email, None) is not None:
                raise LoopsError(409, f"A contact with email '{change.email}' already exists.")
            if change.user_id is not None and self._lookup(None, change.user_id) is not None:
                raise LoopsError(409, f"A contact with userId '{change.user_id}' already exists.")
            return self._create(change)["id"]

    def find_contacts(self, email: str | None = None, user_id: str | None = None) -> list[dict[str, Any]]:
        """``GET /v1/contacts/find``: an array, empty when nothing matches (never a 404)."""
        if (email is None) == (user_id is None):
            raise bad_request("Provide exactly one of 'email' or 'userId'.")
        with self._lock:
            found = self._lookup(email, user_id)
            return [copy.deepcopy(found)] if found is not None else []

    def delete_contact(self, body: Any) -> None:
        """``POST /v1/contacts/delete`` with exactly one string identifier; 404 when no contact has it."""
        if not isinstance(body, dict):
            raise bad_request("The request body must be a JSON object.")
        given = {key: body[key] for key in ("email", "userId") if body.get(key) is not None}
        if len(given) != 1:
            raise bad_request("Provide exactly one of 'email' or 'userId'.")
        ((key, value),) = given.items()
        if not isinstance(value, str):
            raise bad_request(f"'{key}' must be a string, not {type(value).__name__}.")
        with self._lock:
            found = self._lookup(value if key == "email" else None, value if key == "userId" else None)
            if found is None:
                raise LoopsError(404, f"No contact with {key} '{value}' was found.")
            self._unindex(found)
            del self._contacts[found["id"]]

    def create_property(self, body: Any) -> None:
        """``POST /v1/contacts/properties``: a new camelCase custom property of one of the four types."""
        if not isinstance(body, dict):
            raise bad_request("The request body must be a JSON object.")
        name, type_name = body.get("name"), body.get("type")
        if not isinstance(name, str) or not _PROPERTY_NAME_RE.match(name):
            raise bad_request(f"Invalid property name {name!r}: it must be camelCase (e.g. 'planName').")
        if type_name not in PROPERTY_TYPES:
            raise bad_request(f"Invalid property type {type_name!r}: use one of string, number, boolean, date.")
        with self._lock:
            if name in RESERVED_BODY_KEYS or name in BODY_ONLY_KEYS:
                raise bad_request(f"'{name}' is a reserved name and cannot be a custom property.")
            if self._property_type(name) is not None:
                raise bad_request(f"A property named '{name}' already exists.")
            self._properties.append({"key": name, "label": label_for(name), "type": type_name})

    def send_event(self, body: Any, *, idempotency_key: str | None = None, strict: bool = True) -> None:
        """``POST /v1/events/send``: resolve (or create) the contact, update it, record the event.

        The idempotency check, validation and recording happen under one lock hold, so two concurrent
        requests with the same key cannot both be accepted. A key is remembered only once the event is.
        """
        if idempotency_key is not None and len(idempotency_key) > MAX_IDEMPOTENCY_KEY:
            raise bad_request(f"The Idempotency-Key header is longer than {MAX_IDEMPOTENCY_KEY} characters.")
        with self._lock:
            now = self.now()
            if idempotency_key is not None:
                seen_at = self._idempotency.get(idempotency_key)
                if seen_at is not None and now - seen_at < IDEMPOTENCY_WINDOW_S:
                    raise LoopsError(
                        409,
                        f"Idempotency key '{idempotency_key}' has already been used in the last 24 hours.",
                    )
            if not isinstance(body, dict):
                raise bad_request("The request body must be a JSON object.")
            event_name = self._event_name(body.get("eventName"))
            event_properties = self._event_properties(body.get("eventProperties"), strict=strict)
            contact_body = {key: value for key, value in body.items() if key not in EVENT_BODY_KEYS}
            change = self._contact_change(contact_body, strict=strict)
            contact = self._apply_upsert(change)
            self._events.append(
                {
                    "eventName": event_name,
                    "email": body.get("email"),
                    "userId": body.get("userId"),
                    "contactId": contact["id"],
                    "eventProperties": copy.deepcopy(event_properties),
                    "mailingLists": dict(change.mailing_lists),
                    "contactProperties": copy.deepcopy(change.values),
                    "idempotencyKey": idempotency_key,
                    "at": iso_timestamp(now),
                }
            )
            if idempotency_key is not None:
                self._idempotency[idempotency_key] = now
            if event_name not in self._patterns:
                # "You can create an event by sending an event with a new event name", its properties with it
                # (https://loops.so/docs/events, "Creating events"). An existing event keeps its definition: properties
                # it lacks are accepted but "not available when sending emails".
                self._patterns[event_name] = normalize_event_pattern(
                    {
                        "eventName": event_name,
                        "eventProperties": [
                            {"name": k, "type": _event_property_type(v)}
                            for k, v in event_properties.items()
                            if v is not None
                        ],
                    }
                )

    # ----- validation -----------------------------------------------------------------------------------

    def _contact_change(self, body: Any, *, strict: bool) -> ContactChange:
        """Validate a contact body (update, create, or the contact part of an event) into a ContactChange.

        Always refused: a non-object body, reserved keys, strings over 500 characters as JSON, a bad email,
        a non-boolean ``subscribed`` or ``mailingLists`` value. Refused only when ``strict``: unknown
        property keys, values of the wrong type, unknown list ids (Loops' behaviour there is not documented).
        """
        if not isinstance(body, dict):
            raise bad_request("The request body must be a JSON object.")
        for key in body:
            if key in RESERVED_BODY_KEYS:
                raise bad_request(f"'{key}' is a reserved name and cannot be set through the API.")
        for key, value in body.items():
            check_length(f"'{key}'", value)
        change = ContactChange(
            email=self._email(body.get("email")),
            user_id=self._user_id(body.get("userId"), strict=strict),
            mailing_lists=self._mailing_lists(body.get("mailingLists"), strict=strict),
        )
        for key, value in body.items():
            if key not in ("email", "userId", "mailingLists"):
                self._check_value(key, value, strict=strict)
                change.values[key] = value
        return change

    @staticmethod
    def _email(value: Any) -> str | None:
        """A valid email or ``None`` (``null`` counts as not given: an identifier cannot be cleared)."""
        if value is None:
            return None
        if not isinstance(value, str) or not _EMAIL_RE.match(value):
            raise bad_request(f"Invalid email address {value!r}.")
        return value

    @staticmethod
    def _user_id(value: Any, *, strict: bool) -> str | None:
        """A userId string; a number is stringified in lenient mode only."""
        if value is None:
            return None
        if isinstance(value, str):
            return value
        if not strict and is_number(value):
            return str(value)
        raise bad_request(f"'userId' must be a string, not {type(value).__name__}.")

    def _mailing_lists(self, value: Any, *, strict: bool) -> dict[str, bool]:
        """``{"<listId>": true|false}`` with JSON booleans; unknown ids refused in strict mode."""
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise bad_request("'mailingLists' must be an object of list ids to booleans.")
        known = {spec["id"] for spec in self._lists}
        for list_id, member in value.items():
            if not isinstance(member, bool):
                raise bad_request(f"mailingLists['{list_id}'] must be true or false, not {member!r}.")
            if strict and list_id not in known:
                raise bad_request(f"Unknown mailing list id '{list_id}'.")
        return dict(value)

    def _check_value(self, key: str, value: Any, *, strict: bool) -> None:
        """Check one contact property value against the property's type (``null`` always clears)."""
        if key == "subscribed":
            if not isinstance(value, bool):
                raise bad_request(f"'subscribed' must be true or false, not {value!r}.")
            return
        if value is None:
            return
        type_name = self._property_type(key)
        if type_name is None:
            if strict:
                raise bad_request(f"Unknown contact property '{key}': create it in Loops first.")
            return
        if strict and not matches_type(value, type_name):
            raise bad_request(f"Invalid value {value!r} for contact property '{key}' of type {type_name}.")

    def _property_type(self, key: str) -> str | None:
        """The type of a settable default or custom property; ``None`` for an unknown key."""
        if key in DEFAULT_STRING_FIELDS or key in ("email", "userId"):
            return "string"
        if key in DEFAULT_DATE_FIELDS:
            return "date"
        if key == "subscribed":
            return "boolean"
        for spec in self._properties:
            if spec["key"] == key:
                return spec["type"]
        return None

    @staticmethod
    def _event_name(value: Any) -> str:
        """``eventName`` is required (https://loops.so/docs/api-reference/send-event) and a non-empty string with no
        ``:`` ("Custom event names can not contain colon characters": https://loops.so/docs/events), in strict and
        lenient mode alike: that is Loops' documented rule, not a sandbox choice."""
        if not isinstance(value, str) or not value.strip():
            raise bad_request("'eventName' is required.")
        if ":" in value:
            raise bad_request(f"Invalid eventName '{value}': it cannot contain ':'.")
        check_length("'eventName'", value)
        return value

    @staticmethod
    def _event_properties(value: Any, *, strict: bool) -> dict[str, Any]:
        """Scalar values only (string, number, boolean or date: https://loops.so/docs/api-reference/send-event) and
        no nulls (strict: Loops does not document a null there); long strings are always refused."""
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise bad_request("'eventProperties' must be an object.")
        for key, item in value.items():
            check_length(f"eventProperties['{key}']", item)
            if not strict:
                continue
            if item is None:
                raise bad_request(f"eventProperties['{key}'] is null: event properties cannot be null.")
            if not (isinstance(item, (str, bool)) or is_number(item)):
                raise bad_request(f"eventProperties['{key}'] must be a string, number, boolean or date.")
        return dict(value)

    # ----- matching and mutation ------------------------------------------------------------------------

    def _lookup(self, email: str | None, user_id: str | None) -> dict[str, Any] | None:
        """The contact matching all given identifiers (caller holds the lock)."""
        ids = set()
        if email is not None:
            ids.add(self._by_email.get(email.lower()))
        if user_id is not None:
            ids.add(self._by_user_id.get(user_id))
        if len(ids) != 1:
            return None
        contact_id = ids.pop()
        return self._contacts[contact_id] if contact_id is not None else None

    def _resolve(self, change: ContactChange) -> dict[str, Any] | None:
        """Loops' matching rules: the contact to update, or ``None`` to create one (caller holds the lock).

        Only email → match or create. Only userId → match, else 400 (no email to create with). Both → the
        contact matching either (it receives the other value), or create; two different contacts → 400.
        """
        if change.email is None and change.user_id is None:
            raise bad_request("Provide an email or a userId.")
        by_email = self._lookup(change.email, None) if change.email is not None else None
        by_user_id = self._lookup(None, change.user_id) if change.user_id is not None else None
        if change.email is None:
            if by_user_id is None:
                raise bad_request(
                    f"No contact has userId '{change.user_id}'; a contact cannot be created without an email."
                )
            return by_user_id
        if by_email is not None and by_user_id is not None and by_email["id"] != by_user_id["id"]:
            # Loops' live answer, word for word (its documents do not describe this case).
            raise bad_request(MULTIPLE_CONTACTS)
        return by_user_id or by_email

    def _apply_upsert(self, change: ContactChange) -> dict[str, Any]:
        """Update the resolved contact, or create one (caller holds the lock)."""
        contact = self._resolve(change)
        if contact is None:
            return self._create(change)
        self._apply(contact, change)
        return contact

    def _blank_contact(self, source: str) -> dict[str, Any]:
        """A new contact with Loops' defaults (subscribed, no values) and ``source``: "API" or "CSV Upload"."""
        return {
            "id": new_contact_id(),
            "email": None,
            "firstName": None,
            "lastName": None,
            "source": source,
            "subscribed": True,
            "userGroup": None,
            "userId": None,
            "mailingLists": {},
            "optInStatus": None,
            "createdAt": iso_timestamp(self.now()),
        }

    def _create(self, change: ContactChange) -> dict[str, Any]:
        """A new contact with Loops' defaults (subscribed, source "API"), then the change applied."""
        contact = self._blank_contact("API")
        self._contacts[contact["id"]] = contact
        self._created_through_api.append(contact["id"])
        self._apply(contact, change)
        return contact

    def _apply(self, contact: dict[str, Any], change: ContactChange) -> None:
        """Write only the keys present: ``None`` clears (default fields become None, custom ones go away)."""
        self._unindex(contact)
        if change.email is not None:
            contact["email"] = change.email
        if change.user_id is not None:
            contact["userId"] = change.user_id
        for key, value in change.values.items():
            if value is None and key not in DEFAULT_STRING_FIELDS and key not in DEFAULT_DATE_FIELDS:
                contact.pop(key, None)
            else:
                contact[key] = copy.deepcopy(value)
        for list_id, member in change.mailing_lists.items():
            if member:
                contact["mailingLists"][list_id] = True
            else:
                contact["mailingLists"].pop(list_id, None)
        self._index(contact)

    def _index(self, contact: dict[str, Any]) -> None:
        if contact.get("email"):
            self._by_email[contact["email"].lower()] = contact["id"]
        if contact.get("userId"):
            self._by_user_id[contact["userId"]] = contact["id"]

    def _unindex(self, contact: dict[str, Any]) -> None:
        if contact.get("email"):
            self._by_email.pop(contact["email"].lower(), None)
        if contact.get("userId"):
            self._by_user_id.pop(contact["userId"], None)
