"""Preflight: the Loops team's contract (properties and their types, mailing lists) checked before writes.

At start the team's properties and lists are read once. For each stream, the contact properties its rule can produce
(from the rule and the stream's SCHEMA) are checked when the stream's SCHEMA arrives, before any of its records is
sent: unknown properties are created, dropped or refused (``unknown_properties``). Keys only the data reveals
(an undeclared ``traits`` object) are checked the same way when their batch is sent. Every value is then coerced to
its property's type.
"""

from __future__ import annotations

import collections
import logging
import re
import threading
from collections.abc import Mapping
from typing import Any

from target_loops.coercion import coerce
from target_loops.operations import LoopsRequest
from target_loops.rules import camel_case

logger = logging.getLogger("target_loops.preflight")

CAMEL = re.compile(r"^[a-z][a-zA-Z0-9]*$")
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?)?$")
#: Body keys that are not contact properties (checked elsewhere, or not at all).
NOT_PROPERTIES = frozenset({"mailingLists", "eventName", "eventProperties", "email", "userId"})


class PreflightError(RuntimeError):
    """The rules and the team's schema disagree in a way the settings say must stop the run."""


def loops_type(schema: Mapping[str, Any] | None) -> str | None:
    """The Loops type for a JSON schema: string; integer/number → number; boolean; date/date-time → date."""
    if not schema:
        return "string"
    types = schema.get("type", "string")
    types = [types] if isinstance(types, str) else [t for t in types if t != "null"]
    if schema.get("format") in ("date", "date-time"):
        return "date"
    if "boolean" in types:
        return "boolean"
    if "integer" in types or "number" in types:
        return "number"
    if "object" in types or "array" in types:
        return None  # not a property value: such records are rejected by the rules
    return "string"


def guess_type(value: Any) -> str:
    """A Loops type for a value seen in data with no schema (a property created at run time)."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str) and _ISO_DATE.match(value):
        return "date"
    return "string"


class Preflight:
    """The team's schema and what this run did about it. Thread-safe: sinks of several streams use it at once."""

    def __init__(self, client: Any, *, mode: str = "create", dry_run: bool = False) -> None:
        self.client = client
        self.mode = mode
        self.dry_run = dry_run
        self.properties: dict[str, str] = {}  # key → Loops type, defaults included
        self.lists: dict[str, str] = {}  # id → name
        self.loaded = False
        self.created: dict[str, str] = {}  # name → type (in a dry run: would be created)
        self.drop: set[str] = set()
        self.dropped: collections.Counter[str] = collections.Counter()
        self.unknown_lists: collections.Counter[str] = collections.Counter()
        self._lock = threading.RLock()

    def load(self) -> None:
        """Read the team's properties and lists (two GETs); without a client (dry run, no key) nothing is checked."""
        if self.client is None:
            return
        properties = self.client.get_json("/v1/contacts/properties?list=all")
        lists = self.client.get_json("/v1/lists")
        self.properties = {p["key"]: p.get("type", "string") for p in properties or [] if isinstance(p, dict)}
        self.lists = {str(x["id"]): x.get("name", "") for x in lists or [] if isinstance(x, dict)}
        self.loaded = True
        logger.info("Loops team schema: %d contact properties, %d mailing lists", len(self.properties), len(self.lists))

    # --- before any write: from SCHEMA

    def check_stream(self, stream: str, declared: Mapping[str, str | None], list_ids: set[str]) -> None:
        """Check the properties (name → Loops type) and list ids a stream's rule can produce."""
        if not self.loaded:
            return
        for list_id in sorted(list_ids - set(self.lists)):
            logger.warning(
                "Stream %s: mailing list id %r is not a list of this Loops team (known: %s); it will be left out",
                stream,
                list_id,
                ", ".join(f"{k} ({v})" for k, v in self.lists.items()) or "none",
            )
        self.resolve({n: t or "string" for n, t in declared.items() if t is not None}, f"stream {stream}")

    def resolve(self, wanted: Mapping[str, str], where: str) -> None:
        """Create, drop or refuse the properties of ``wanted`` that the team does not have."""
        with self._lock:
            unknown = {n: t for n, t in wanted.items() if n not in self.properties and n not in self.drop}
            if not unknown:
                return
            listing = ", ".join(f"{n} ({t}{_hint(n)})" for n, t in sorted(unknown.items()))
            if self.mode == "error":
                count = f"{len(unknown)} contact propert{'y' if len(unknown) == 1 else 'ies'}"
                raise PreflightError(
                    f"{where}: {count} unknown to this Loops team: {listing}. Create them in Loops "
                    "(Settings → Contact properties), set unknown_properties: create to let target-loops create "
                    "them, or drop to leave them out."
                )
            if self.mode == "drop":
                self.drop.update(unknown)
                logger.warning("%s: unknown properties left out of every request: %s", where, listing)
                return
            bad = {n: t for n, t in unknown.items() if not CAMEL.match(n)}
            if bad:
                raise PreflightError(
                    f"{where}: Loops property names must be camelCase, so these cannot be created: "
                    f"{', '.join(f'{n} ({t}{_hint(n)})' for n, t in sorted(bad.items()))}. Use the rule's "
                    "camel_case: true or rename, or unknown_properties: drop."
                )
            for name, kind in sorted(unknown.items()):
                if self.dry_run:
                    logger.info("%s: would create contact property %s (%s)", where, name, kind)
                else:
                    self._create(name, kind)
                    logger.info("%s: created contact property %s (%s)", where, name, kind)
                self.created[name] = kind
                self.properties[name] = kind

    def _create(self, name: str, kind: str) -> None:
        outcome = self.client.send_many([_create_request(name, kind)])[0]
        if not outcome.done:
            # Another run may have created it meanwhile: re-read before giving up.
            properties = self.client.get_json("/v1/contacts/properties?list=all")
            if not any(isinstance(p, dict) and p.get("key") == name for p in properties or []):
                raise PreflightError(f"could not create contact property {name} ({kind}): {outcome.message}")

    # --- at send time: each request body

    def enforce(self, body: dict[str, Any], stream: str) -> None:
        """Make ``body`` fit the team: unknown keys created or dropped, values coerced, unknown lists left out.

        Raises ``CoercionError`` (the record is rejected) for a value that cannot fit its property's type.
        """
        if not self.loaded:
            return
        if self.drop:
            for key in [k for k in body if k in self.drop]:
                del body[key]
                self.dropped[key] += 1
        unknown = {k: guess_type(v) for k, v in body.items() if k not in self.properties and k not in NOT_PROPERTIES}
        if unknown:
            self.resolve(unknown, f"stream {stream}")
            for key in [k for k in body if k in self.drop]:
                del body[key]
                self.dropped[key] += 1
        for key, value in body.items():
            kind = self.properties.get(key)
            if kind is not None and key not in NOT_PROPERTIES and key != "subscribed":
                body[key] = coerce(key, value, kind)
        lists = body.get("mailingLists")
        if lists and self.lists:
            for list_id in [k for k in lists if k not in self.lists]:
                del lists[list_id]
                self.unknown_lists[list_id] += 1
            if not lists:
                del body["mailingLists"]


def _hint(name: str) -> str:
    fixed = camel_case(name)
    return "" if CAMEL.match(name) or fixed == name else f"; not camelCase: Loops would need {fixed!r}"


def _create_request(name: str, kind: str) -> LoopsRequest:
    return LoopsRequest("POST", "/v1/contacts/properties", {"name": name, "type": kind})
