"""Values on their way to Loops: identifiers, scalars, booleans, dates, string lengths and mailing list flags.

One place reads a boolean (``read_boolean``), one parses a date-time (``parse_datetime``) and one writes a date for
Loops (``loops_datetime``): the rule engine and the coercion to a property's type (``coercion.py``) both use them,
so a value means the same thing whichever path it takes. Pure functions, no I/O. A value that cannot be sent raises
``ValueRejected`` with a stable reason code; the rule engine turns it into a ``Rejection`` of that record.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import math
import re
from collections.abc import Mapping
from typing import Any

from target_loops.serialization import canonical_json, json_number

#: Loops refuses a string value longer than 500 characters *including its opening and closing quotes*, so at most
#: 498 characters of text; the value is measured JSON-encoded, so escapes count too
#: (https://loops.so/docs/api-reference/intro, "Debugging").
MAX_ENCODED_STRING = 500
#: The email field is "the contact's email address" (https://loops.so/docs/api-reference/update-contact): a value
#: that is not shaped like one is refused here rather than creating a contact nobody can be emailed at.
EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
#: The reason of a ``partial`` entry: one mailing list flag that is not a boolean was left out, the rest was sent.
PARTIAL_MAILING_LIST = "invalid_mailing_list"
_PARTIAL_LIST_PREFIX = "mailing list "

#: The words read as booleans, wherever a boolean is expected (``subscribed``, a mailing list flag, a boolean
#: property): what warehouses and spreadsheets write for true and false.
TRUE_WORDS = frozenset({"true", "t", "yes", "y", "1"})
FALSE_WORDS = frozenset({"false", "f", "no", "n", "0"})
_STARTS_WITH_YEAR = re.compile(r"^[+-]?\d{4}")


class ValueRejected(Exception):
    """A value that cannot be sent: ``reason`` is the stable code of the rejection, ``message`` names the value."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


# --- empty values


def is_blank(text: str) -> bool:
    """True for an empty or whitespace-only string: "nothing known", which target-loops treats like a null.

    Loops clears a property that is sent ``null`` (https://loops.so/docs/contacts/properties) and would store an
    empty string as the value; a warehouse writes ``""`` (or spaces, from a fixed-width export) where it means
    nothing. So a blank value is left out of the request and out of the ledger, for every property type, contact and
    event alike, and ``send_nulls`` (which clears for NULL columns) never turns one into a clear either: as in
    Loops' own CSV upload, an empty cell does not overwrite (https://loops.so/docs/add-users/csv-upload).
    """
    return not text or (text[0].isspace() and not text.strip())


# --- booleans


def read_boolean(value: Any) -> bool | None:
    """``value`` as a boolean, or None when it is not one.

    JSON booleans as they are; the integers 1 and 0 (also as an integral ``Decimal``); the words of ``TRUE_WORDS``
    and ``FALSE_WORDS`` in any case, surrounding spaces ignored. A float (``1.0``, ``0.5``) is a measurement, not a
    flag, and is not read as one.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return bool(value) if value in (0, 1) else None
    if isinstance(value, decimal.Decimal):
        return bool(value) if value.is_finite() and value in (0, 1) else None
    if isinstance(value, str):
        word = value.strip().lower()
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
    return None


# --- dates


def parse_datetime(key: str, value: str) -> dt.datetime:
    """ISO-8601 text → an aware ``datetime`` (no offset means UTC, a date alone means its midnight UTC).

    The standard library's parser first (every form a tap or a warehouse writes, and fast), then pendulum's strict
    ISO-8601 parser for the rarer forms (``2026-032``, nanoseconds, ``+0200``). Only text that starts with a year is
    read: a bare time (``10:30``) would otherwise be read as that time *today*, a different date on every run.
    ``ValueError`` names ``key``; nothing else is raised. A result may still have no UTC form
    (``0001-01-01T00:00:00+05:00``): ``as_utc`` checks that.
    """
    text = value.strip()
    try:
        parsed: Any = dt.datetime.fromisoformat(text)
    except ValueError:
        parsed = None
        if _STARTS_WITH_YEAR.match(text):
            import pendulum  # only for the rarer forms: imported when the first one is met (start-up)

            try:
                parsed = pendulum.parse(text, strict=True, tz="UTC")
            except Exception:  # pendulum raises its own ParserError, and others for odd input
                parsed = None
    if isinstance(parsed, dt.date) and not isinstance(parsed, dt.datetime):
        parsed = dt.datetime(parsed.year, parsed.month, parsed.day)
    if not isinstance(parsed, dt.datetime):
        raise ValueError(f"{key}: {value!r:.200} is not an ISO-8601 date or date-time")
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)


def as_utc(value: dt.date) -> dt.datetime:
    """A date or date-time as an aware UTC ``datetime`` (naive means UTC; a date means its midnight UTC).

    ``ValueError`` when the instant has no UTC form within the years 1-9999.
    """
    if not isinstance(value, dt.datetime):
        value = dt.datetime(value.year, value.month, value.day)
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.timezone.utc)
    try:
        return value.astimezone(dt.timezone.utc)
    except (OverflowError, ValueError):
        raise ValueError(f"{value.isoformat()} is outside the years 1-9999 once in UTC") from None


def loops_datetime(value: dt.date) -> str:
    """The one form in which a date reaches Loops: UTC, milliseconds, ``Z`` (``2026-11-02T08:30:15.250Z``).

    It is Loops' documented ``YYYY-MM-DDTHH:MM:SS.sss`` with the UTC designator
    (https://loops.so/docs/contacts/properties#dates), JavaScript's ``Date.toISOString()`` form, and it carries no
    more precision than Loops keeps. The year is always four digits (``0001``-``9999``): ECMA-262's date time
    string format has exactly four (https://tc39.es/ecma262/#sec-date-time-string-format; other years need the
    six-digit ``±YYYYYY`` form, which Loops does not document and Python's dates never need). ``strftime("%Y")``
    writes year 1 as ``1``, which no ECMA-262 reader takes. ``ValueError`` when the instant has no UTC form.
    """
    utc = as_utc(value)
    return (
        f"{utc.year:04d}-{utc.month:02d}-{utc.day:02d}T{utc.hour:02d}:{utc.minute:02d}:{utc.second:02d}."
        f"{utc.microsecond // 1000:03d}Z"
    )


def sort_key(value: Any) -> str | None:
    """A comparable form of a record's timestamp, or None when it has none (absent, a number, unparseable text).

    Microsecond UTC ISO text (``2026-01-01T00:00:00.120000+00:00``): it orders one contact's updates and the ledger
    keeps it between runs (``seen_at``), so its form stays as it is; it is never sent to Loops. A timestamp with no
    UTC form (``0001-01-01T00:00:00+05:00`` is before year 1 in UTC) rejects the record.
    """
    if isinstance(value, str):
        try:
            value = parse_datetime("timestamp", value)
        except ValueError:
            return None
    if not isinstance(value, dt.datetime):
        return None
    if value.tzinfo is dt.timezone.utc:
        return value.isoformat()  # already UTC: what ``as_utc`` would give back
    try:
        return as_utc(value).isoformat()
    except ValueError as exc:
        raise ValueRejected("invalid_value", f"the timestamp {exc}") from None


# --- names


def camel_case(name: str) -> str:
    """``first_name`` → ``firstName``, ``Favorite-Color`` → ``favoriteColor``, ``USER_ID`` → ``userId``.

    A name that is already camelCase (``planId``) is left as it is.
    """
    parts = [p for p in re.split(r"[_\-\s]+", name) if p]
    if not parts:
        return name
    words = [p.lower() if p.isupper() else p for p in parts]
    head = words[0][:1].lower() + words[0][1:]
    return head + "".join(w[:1].upper() + w[1:] for w in words[1:])


# --- identifiers and scalars


def finite(value: float | decimal.Decimal) -> bool:
    """True for a number JSON can carry (not NaN, not an infinity)."""
    return value.is_finite() if isinstance(value, decimal.Decimal) else math.isfinite(value)


def _kind_of(value: Mapping[str, Any] | list[Any] | tuple[Any, ...]) -> str:
    return "an object" if isinstance(value, Mapping) else "a list"


def identifier(value: Any, what: str, reason: str) -> str | None:
    """A scalar identifier as text; an object, a list or a boolean is refused rather than sent as its Python repr
    or silently ignored (a boolean in an id column is a broken row, and it is counted as one)."""
    if type(value) is str:
        return value.strip() or None
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueRejected(reason, f"the {what} is the boolean {json.dumps(value)}; it must be a string or a number")
    if isinstance(value, Mapping | list | tuple):
        raise ValueRejected(
            "nested_value", f"the {what} is {_kind_of(value)} ({value!r:.80}); it must be a single value"
        )
    if isinstance(value, float | decimal.Decimal):
        if not finite(value):
            raise ValueRejected("invalid_number", f"the {what} is {value}, which is not an id")
        if value == int(value):
            value = int(value)  # warehouse ids are often numbers: 42, never "42.0"
    text = str(value).strip()
    return text or None


def key_text(value: Any) -> str | None:
    """An idempotency id as text (``42`` and ``"42"`` alike), or None when it is absent or blank."""
    if type(value) is str:
        return value.strip() or None
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, Mapping | list | tuple):
        return canonical_json(value)
    if isinstance(value, float | decimal.Decimal) and finite(value) and value == int(value):
        value = int(value)
    text = str(value).strip()
    return text or None


def encoded_length(text: str) -> int:
    """The length Loops measures for a string value: JSON-encoded, quotes and escapes included, counted as
    JavaScript counts (UTF-16 code units: a character outside the Basic Multilingual Plane counts twice)."""
    encoded = json.dumps(text, ensure_ascii=False)
    return len(encoded) + sum(1 for ch in encoded if ord(ch) > 0xFFFF)


def check_length(where: str, text: str) -> None:
    """Refuse a string Loops would refuse for its length (see ``MAX_ENCODED_STRING``), naming it and its length."""
    if len(text) > 82:  # 82 characters stay within the limit even if each needed a 6-character escape
        length = encoded_length(text)
        if length > MAX_ENCODED_STRING:
            raise ValueRejected(
                "string_too_long",
                f"{where!r} is {len(text)} characters long, {length} as JSON with its quotes and escapes; Loops allows "
                f"{MAX_ENCODED_STRING} including the quotes, i.e. {MAX_ENCODED_STRING - 2} characters of plain text",
            )


def scalar(value: Any, where: str) -> Any:
    """A JSON scalar Loops accepts for the property ``where``, or a ``ValueRejected`` that names it."""
    if isinstance(value, str):
        check_length(where, value)
        return value
    if isinstance(value, bool | int):
        return value
    if isinstance(value, float | decimal.Decimal):
        if not finite(value):
            raise ValueRejected("invalid_number", f"property {where!r} is {value}, which JSON cannot carry")
        return json_number(value) if isinstance(value, decimal.Decimal) else value
    if isinstance(value, dt.date):
        try:
            return loops_datetime(value)
        except ValueError as exc:
            raise ValueRejected("invalid_value", f"property {where!r}: {exc}") from None
    if isinstance(value, Mapping | list | tuple):
        raise ValueRejected(
            "nested_value",
            f"property {where!r} is {_kind_of(value)}; Loops properties are scalars. Add {where.split('.')[-1]!r} to "
            f'the rule\'s "exclude", or turn it into scalar columns with stream_maps',
        )
    return str(value)


# --- mailing lists


def mailing_lists(value: Any, partial: list[tuple[str, str]]) -> dict[str, bool]:
    """``{listId: bool}`` with nulls and blanks left out (a NULL or empty warehouse cell says nothing about the list).

    A flag that is not a boolean drops that list only (appended to ``partial``), as Loops' own Segment destination
    drops just the bad entry: the contact and its other lists are still sent. Values must be booleans
    (https://loops.so/docs/api-reference/update-contact, ``mailingLists``).
    """
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueRejected(
            "invalid_mailing_lists", f"mailing lists must be an object {{listId: true|false}}, got {value!r}"
        )
    lists: dict[str, bool] = {}
    for key, flag in value.items():
        if flag is None or (type(flag) is str and is_blank(flag)):
            continue
        list_id = str(key)
        read = read_boolean(flag)
        if read is None:
            partial.append((PARTIAL_MAILING_LIST, partial_list_message(list_id, flag)))
        else:
            lists[list_id] = read
    return lists


def partial_list_message(list_id: str, flag: Any) -> str:
    """The message of a dropped mailing list flag; ``partial_list_id`` reads the list id back from it."""
    shown = repr(flag) if not isinstance(flag, str) else json.dumps(flag, ensure_ascii=False)
    return (
        f"{_PARTIAL_LIST_PREFIX}{json.dumps(list_id, ensure_ascii=False)}: {shown:.80} is not true or false; "
        "this list was left out, the rest of the record was sent"
    )


def partial_list_id(message: str) -> str | None:
    """The list id of a ``partial`` entry's message (so the report can count dropped flags per list), or None."""
    if not message.startswith(_PARTIAL_LIST_PREFIX):
        return None
    try:
        list_id, _ = json.JSONDecoder().raw_decode(message, len(_PARTIAL_LIST_PREFIX))
    except ValueError:
        return None
    return list_id if isinstance(list_id, str) else None
