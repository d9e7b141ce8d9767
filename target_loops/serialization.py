"""JSON for the wire, the rejects file and fingerprints.

The SDK hands sinks ``Decimal`` and ``datetime`` values, which ``json`` cannot encode; Loops wants plain numbers
and ISO-8601 dates with an offset (never epoch seconds), so every value is normalized here, once.
"""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import json
from typing import Any


def iso_datetime(value: dt.datetime) -> str:
    """ISO-8601 with an explicit offset and at most millisecond precision (Loops parses ``.sss``, not ``.ssssss``).

    A naive datetime is taken as UTC, the convention of warehouse loaders and of Loops itself.
    """
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    return value.isoformat(timespec="milliseconds" if value.microsecond else "seconds")


def json_number(value: decimal.Decimal) -> int | float:
    """An integral Decimal becomes an int (``42``, not ``42.0``); any other becomes a float."""
    if value == value.to_integral_value():
        return int(value)
    return float(value)


def json_default(value: Any) -> Any:
    """``default=`` hook for ``json.dumps``: Decimal, datetime, date, time, bytes and sets."""
    if isinstance(value, decimal.Decimal):
        if not value.is_finite():
            return str(value)
        return json_number(value)
    if isinstance(value, dt.datetime):
        return iso_datetime(value)
    if isinstance(value, (dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=str)
    return str(value)


def dumps(value: Any) -> str:
    """Compact JSON of any record or body (non-ASCII kept as is)."""
    return json.dumps(value, default=json_default, ensure_ascii=False, separators=(",", ":"))


def canonical_json(value: Any) -> str:
    """Key-sorted compact JSON: equal data gives equal text, the basis of hashes and fingerprints."""
    return json.dumps(value, default=json_default, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


def stable_hash(*parts: Any) -> str:
    """A sha256 hex digest over the canonical JSON of ``parts``: deterministic across runs and machines."""
    return hashlib.sha256(canonical_json(list(parts)).encode("utf-8")).hexdigest()
