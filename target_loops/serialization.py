"""JSON for the wire, the rejects file and fingerprints.

The SDK hands sinks ``Decimal`` and ``datetime`` values, which ``json`` cannot encode. Values bound for Loops are
made into JSON scalars before they reach a request body (``values.scalar``: dates in Loops' one date form,
``values.loops_datetime``); what is encoded here is everything else: records in the rejects file, and the inputs of
hashes and fingerprints, whose text must not change from one version to the next.
"""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import json
from typing import Any

import msgspec


def iso_datetime(value: dt.datetime) -> str:
    """A datetime inside JSON written here: ISO-8601 with its own offset, at most millisecond precision.

    A naive datetime is taken as UTC, the convention of warehouse loaders. This is the text that hashes and
    fingerprints were computed from (a record without an id gets an idempotency key hashed from its values), so it
    stays as it is: changing it would change keys that earlier runs recorded. Loops is sent
    ``values.loops_datetime`` instead.
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
    """Key-sorted compact JSON: equal data gives equal text, the basis of hashes and fingerprints.

    Every contact of a nightly re-sync is fingerprinted, so plain data (the usual request body) is encoded by
    msgspec, ten times faster and byte for byte the same text as ``json.dumps`` gives it (tested over every code
    point); anything else (floats: ``1e+16`` against msgspec's ``1e16``; dates, decimals) goes through ``json``.
    """
    if _plain(value):
        try:
            return _SORTED.encode(value).decode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate: json writes it through, as it always has
            pass
    return json.dumps(value, default=json_default, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


_SORTED = msgspec.json.Encoder(order="sorted")


def _plain(value: Any) -> bool:
    """Made only of what msgspec and json write alike: str-keyed dicts, lists, strings, integers, booleans, null."""
    kind = type(value)
    if kind in _SCALARS:
        return True
    # Loops, not all(): this runs for every contact of a re-sync, and a generator costs twice the time.
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str or (type(item) not in _SCALARS and not _plain(item)):
                return False
        return True
    if kind is list:
        for item in value:  # noqa: SIM110
            if type(item) not in _SCALARS and not _plain(item):
                return False
        return True
    return False


_SCALARS = frozenset({str, int, bool, type(None)})


def stable_hash(*parts: Any) -> str:
    """A sha256 hex digest over the canonical JSON of ``parts``: deterministic across runs and machines."""
    value = list(parts)
    if _plain(value):
        try:  # canonical_json's own bytes, without the round trip through str (an event key hashes per record)
            return hashlib.sha256(_SORTED.encode(value)).hexdigest()
        except UnicodeEncodeError:
            pass
    return hashlib.sha256(canonical_json(value).encode("utf-8")).hexdigest()
