"""Coercion of property values to the Loops type of their property (string, number, boolean, date).

Loops' properties have one of four types (https://loops.so/docs/contacts/properties) and what Loops does with a value
of the wrong type is not documented, so every value is made to fit its property before it is sent, or the record is
rejected with the property, the value and the type named. Booleans and dates are read and written by the same
functions as in the rule engine (``values.read_boolean``, ``values.parse_datetime``, ``values.loops_datetime``).
Pure functions, no I/O; a value that cannot be read (a date past year 9999, a number too large for a date) is a
``CoercionError`` like any other, never another exception.
"""

from __future__ import annotations

import datetime as dt
import decimal
import math
import re
from typing import Any

from target_loops.serialization import json_number
from target_loops.values import loops_datetime, parse_datetime, read_boolean

_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
#: Epoch milliseconds below this are before 1973-03-03: far more likely epoch *seconds*, which Loops misreads
#: (Loops reads a number as milliseconds: https://loops.so/docs/contacts/properties#dates).
_MIN_EPOCH_MS = 100_000_000_000
#: The instants this module can write as ISO-8601 text: the years 1 to 9999 in UTC.
_MAX_EPOCH_MS = 253_402_300_799_999
_MIN_EPOCH_MS_NEGATIVE = -62_135_596_800_000


class CoercionError(ValueError):
    """A value that cannot be made to fit its property's type; the message names both. The record is rejected
    with ``reason`` (subclasses say why more precisely)."""

    reason = "invalid_value"


def coerce(name: str, value: Any, loops_type: str) -> Any:
    """``value`` as the JSON Loops expects for a ``loops_type`` property; None stays None (a clear). A blank string
    (any type) gives None too: the preflight then leaves the key out, since a ``null`` would clear Loops' value."""
    if value is None:
        return None
    if isinstance(value, decimal.Decimal):
        if not value.is_finite():
            raise CoercionError(f"property {name!r}: {value} is not a {loops_type} (not a finite number)")
        value = json_number(value)
    if isinstance(value, str) and not value.strip():
        return None  # an empty cell says nothing: the caller leaves it out, never sends it as a clear
    if loops_type == "string":
        return _to_string(value)
    try:
        if loops_type == "number":
            return _to_number(value)
        if loops_type == "boolean":
            return _to_boolean(value)
        if loops_type == "date":
            return _to_date(value)
    except CoercionError as exc:
        raise CoercionError(f"property {name!r}: {value!r:.200} is not a {loops_type} ({exc})") from None
    except (ValueError, TypeError, ArithmeticError, OSError) as exc:
        # Whatever the parsers raise for a value nobody foresaw: this record is rejected, the run goes on.
        raise CoercionError(f"property {name!r}: {value!r:.200} is not a {loops_type} ({exc})") from None
    return value  # a type Loops added after this code: send as is


def _to_string(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return value if isinstance(value, str) else str(value)


def _to_number(value: Any) -> int | float:
    if isinstance(value, bool):
        raise CoercionError("a boolean is not a number")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise CoercionError("not a finite number")
        return value
    if isinstance(value, str) and _NUMBER.match(value.strip()):
        number = float(value)
        if not math.isfinite(number):
            raise CoercionError("not a finite number")
        text = value.strip()
        return int(text) if re.fullmatch(r"[+-]?\d+", text) else number
    raise CoercionError("expected a number or a numeric string")


def _to_boolean(value: Any) -> bool:
    read = read_boolean(value)
    if read is None:
        raise CoercionError("expected true/false, 1/0 or yes/no")
    return read


def _to_date(value: Any) -> str:
    """Any ISO-8601 date or date-time (offset or not: no offset means UTC), or epoch milliseconds → Loops' date text."""
    if isinstance(value, bool):
        raise CoercionError("a boolean is not a date")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise CoercionError("not a finite number")
        if abs(value) < _MIN_EPOCH_MS:
            raise CoercionError(
                "numbers are read as epoch milliseconds and this one is too small: if it is epoch seconds, "
                "multiply by 1000 or send an ISO-8601 date"
            )
        if not _MIN_EPOCH_MS_NEGATIVE <= value <= _MAX_EPOCH_MS:
            raise CoercionError("as epoch milliseconds this is outside the years 1-9999")
        moment: dt.date = dt.datetime.fromtimestamp(value / 1000, tz=dt.timezone.utc)
    elif isinstance(value, dt.date):
        moment = value
    elif isinstance(value, str):
        text = value.strip()
        if _NUMBER.match(text):
            return _to_date(float(text))
        try:
            moment = parse_datetime("date", text)
        except ValueError:
            raise CoercionError("not an ISO-8601 date or date-time") from None
    else:
        raise CoercionError("expected an ISO-8601 date or epoch milliseconds")
    try:
        return loops_datetime(moment)
    except ValueError:
        raise CoercionError("outside the years 1-9999 once in UTC") from None
