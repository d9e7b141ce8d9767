"""Preflight: the Loops team's contract (properties and their types, mailing lists) checked before writes.

At start the team's properties and lists are read once. For each stream, the contact properties its rule can produce
(from the rule and the stream's SCHEMA) are checked when the stream's SCHEMA arrives, before any of its records is
sent: unknown properties are created, dropped or refused (``unknown_properties``). Keys only the data reveals
(an undeclared ``traits`` object) are handled per record when their batch is sent: created (under their camelCase
name when they are not camelCase), dropped, or the record is rejected; never an error that stops the run, which
would stop every rerun at the same record. Every value is then coerced to its property's type.

Loops has no API to delete a contact property, so a run creates at most ``max_new`` of them (the
``max_new_properties`` setting). Properties a SCHEMA declares beyond that stop the run before any of that stream's
records is sent, listing them; properties only one record's data reveals beyond that reject that record
(``unknown_property``), so that one wide record never stops a run half-way.

Loops' contact properties: https://loops.so/docs/contacts/properties; creating one:
https://loops.so/docs/api-reference/create-contact-property.
"""

from __future__ import annotations

import collections
import logging
import re
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NoReturn

from target_loops.coercion import CoercionError, coerce
from target_loops.operations import LoopsRequest, OutcomeKind
from target_loops.values import camel_case

if TYPE_CHECKING:
    from target_loops.event_patterns import EventPatterns

logger = logging.getLogger(__name__)
#: Team properties one run may create unless the settings say otherwise (``max_new_properties``).
MAX_NEW_PROPERTIES = 25
#: How many of the properties past ``max_new`` an error names (one record can hold thousands of keys).
_LISTED = 50

#: Property names are camelCase ("This should be in camelCase, like planName":
#: https://loops.so/docs/api-reference/create-contact-property).
CAMEL = re.compile(r"^[a-z][a-zA-Z0-9]*$")
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?)?$")
#: The team-schema reads (https://loops.so/docs/api-reference/list-contact-properties,
#: https://loops.so/docs/api-reference/list-mailing-lists): each answers an array of objects.
PROPERTIES = "/v1/contacts/properties?list=all"
LISTS = "/v1/lists"
#: Body keys that are not contact properties (checked elsewhere, or not at all).
NOT_PROPERTIES = frozenset({"mailingLists", "eventName", "eventProperties", "email", "userId"})


class PreflightError(RuntimeError):
    """The rules and the team's schema disagree in a way the settings say must stop the run."""

    #: True when Loops answered that it refuses to create a property (not when it could not be reached).
    refused: bool = False


class UnknownPropertyError(CoercionError):
    """A record carries a property the team lacks and that cannot (or, per ``unknown_properties``, must not) be
    created: that record is rejected (``reason``), the run goes on."""

    reason = "unknown_property"  # overrides CoercionError's "invalid_value"


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

    def __init__(
        self,
        client: Any,
        *,
        mode: str = "create",
        dry_run: bool = False,
        max_new: int = MAX_NEW_PROPERTIES,
        events: EventPatterns | None = None,
    ) -> None:
        self.client = client
        #: Loops' event definitions, read once per event name (``event_patterns.py``); None: not checked.
        self.events = events
        self.mode = mode
        self.dry_run = dry_run
        #: At most this many properties are created in one run (a dry run counts those it would create).
        self.max_new = max_new
        self.properties: dict[str, str] = {}  # key → Loops type, defaults included
        self.lists: dict[str, str] = {}  # id → name
        self.loaded = False
        self.created: dict[str, str] = {}  # name → type (in a dry run: would be created)
        self.drop: set[str] = set()
        self.dropped: collections.Counter[str] = collections.Counter()
        self.unknown_lists: collections.Counter[str] = collections.Counter()
        #: Keys only the data revealed, sent under their camelCase name (``company_name`` → ``companyName``).
        self.renamed: dict[str, str] = {}
        #: Keys only the data revealed that cannot be created (name → why): records carrying them are rejected.
        self.refused: dict[str, str] = {}
        self._lock = threading.RLock()

    def load(self) -> None:
        """Read the team's properties and lists (two GETs); without a client (dry run, no key) nothing is checked."""
        if self.client is None:
            return
        self.properties = self._read_properties()
        lists = self.client.get_json(LISTS)
        self._check_shape(LISTS, lists, ("id",))
        self.lists = {x["id"]: x.get("name") or "" for x in lists}
        self.loaded = True
        logger.info("Loops team schema: %d contact properties, %d mailing lists", len(self.properties), len(self.lists))

    def _read_properties(self) -> dict[str, str]:
        """The team's contact properties, key → Loops type, Loops' defaults included."""
        properties = self.client.get_json(PROPERTIES)
        self._check_shape(PROPERTIES, properties, ("key", "type"))
        if not any(p["key"] == "email" for p in properties):
            # list=all always carries Loops' default properties; without them every property would look missing.
            self._not_loops(PROPERTIES, 'an array without Loops\' default property "email"')
        return {p["key"]: p["type"] for p in properties}

    def _check_shape(self, path: str, answer: Any, fields: tuple[str, ...]) -> None:
        """``answer`` is an array of objects, each with a non-empty string in every one of ``fields``.

        Anything else means ``base_url`` is not Loops: reading it as a team with no properties (or lists) would
        make the run create properties, so the run stops here, before any write.
        """
        if not isinstance(answer, list):
            self._not_loops(path, _shape(answer))
        for index, item in enumerate(answer):
            if not isinstance(item, dict):
                self._not_loops(path, f"an array whose item {index} is {_shape(item)}")
            for name in fields:
                value = item.get(name)
                if not isinstance(value, str) or not value:
                    problem = (
                        "has no" if value is None else "has an empty" if value == "" else f"has {_shape(value)} as"
                    )
                    self._not_loops(path, f'an array whose item {index} {problem} "{name}"')

    def _not_loops(self, path: str, shape: str) -> NoReturn:
        raise self.client.not_loops(
            f"GET {path} answered {shape}; nothing was sent (use https://app.loops.so/api or the sandbox's URL)"
        )

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
        """Create, drop or refuse the properties of ``wanted`` that the team does not have.

        Raises ``PreflightError`` (the run stops) when they cannot be created: not camelCase, or more than the run
        may still create (``max_new``); in that case none of them is created.
        """
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
            over = self._over_budget(unknown)
            if over:
                raise PreflightError(
                    f"{where}: {over}. Loops has no API to delete a contact property, so nothing was created and "
                    "nothing was sent. Raise max_new_properties if these are wanted, exclude them in the rule, or set "
                    "unknown_properties: drop."
                )
            self._create_all(unknown, where)

    def _over_budget(self, unknown: Mapping[str, str]) -> str | None:
        """Why creating ``unknown`` would pass ``max_new`` (listing them), or None when it fits."""
        if len(self.created) + len(unknown) <= self.max_new:
            return None
        names = sorted(unknown.items())
        listing = ", ".join(f"{n} ({t})" for n, t in names[:_LISTED])
        if len(names) > _LISTED:
            listing += f", and {len(names) - _LISTED} more"
        return (
            f"{len(unknown)} new contact propert{'y' if len(unknown) == 1 else 'ies'} ({listing}) would pass "
            f"max_new_properties ({self.max_new}; {len(self.created)} created in this run so far)"
        )

    def _create_all(self, unknown: Mapping[str, str], where: str) -> None:
        """Create each property of ``unknown`` (in a dry run: note it as would-be created)."""
        with self._lock:
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
        # Another run may have created it meanwhile: re-read before giving up.
        if not outcome.done and name not in self._read_properties():
            error = PreflightError(f"could not create contact property {name} ({kind}): {outcome.message}")
            error.refused = outcome.kind is OutcomeKind.REJECTED
            raise error

    # --- keys only the data reveals: per record

    def _resolve_revealed(self, body: dict[str, Any], unknown: Mapping[str, str], where: str) -> None:
        """Handle the keys of one body the team lacks, as ``unknown_properties`` says, for this record only.

        ``create``: a camelCase key is created; another (``company_name``) is created and sent under its camelCase
        name (``companyName``), or the record is rejected when it has none or Loops refuses it. ``drop``: left out of
        this and every later request. ``error``: this record is rejected, naming the keys.
        """
        with self._lock:
            unknown = {n: t for n, t in unknown.items() if n not in self.properties and n in body}
            if not unknown:
                return
            listing = ", ".join(f"{n} ({t}{_hint(n)})" for n, t in sorted(unknown.items()))
            if self.mode == "error":
                raise UnknownPropertyError(
                    f"{where}: contact properties unknown to this Loops team: {listing}; the record is rejected "
                    "(unknown_properties: error). Create them in Loops, or set unknown_properties: create or drop."
                )
            if self.mode == "drop":
                self.resolve(unknown, where)
                for key in [k for k in body if k in self.drop]:
                    del body[key]
                    self.dropped[key] += 1
                return
            refused = sorted(n for n in unknown if n in self.refused)
            if refused:
                raise UnknownPropertyError("; ".join(f"{where}: {self.refused[n]}" for n in refused))
            targets = {name: name if CAMEL.match(name) else camel_case(name) for name in unknown}
            for name, target in sorted(targets.items()):
                if not CAMEL.match(target):
                    self.refused[name] = (
                        f"contact property {name!r} has no camelCase form Loops accepts (it needs a lowercase letter "
                        "first, then letters and digits); rename it with the rule's rename, or exclude it"
                    )
                    raise UnknownPropertyError(f"{where}: {self.refused[name]}")
            new = {t: unknown[n] for n, t in targets.items() if t not in self.properties}
            over = self._over_budget(new)
            if over:
                # Not kept in ``refused``: a later record that needs fewer new properties may still fit.
                raise UnknownPropertyError(
                    f"{where}: {over}; the record is rejected and nothing of it was created (Loops has no API to "
                    "delete a contact property). Raise max_new_properties, or exclude these keys in the rule."
                )
            for name, kind in sorted(unknown.items()):
                target = targets[name]
                if target not in self.properties:
                    try:
                        self.resolve({target: kind}, where)
                    except PreflightError as exc:
                        if not exc.refused:
                            raise  # Loops unreachable past every retry: the run stops, as for any request
                        self.refused[name] = f"Loops refused to create contact property {target!r}: {exc}"
                        raise UnknownPropertyError(f"{where}: {self.refused[name]}") from None
                if target != name:
                    self.renamed[name] = target
                    logger.warning(
                        "%s: %r (revealed by the data, not camelCase) is sent as contact property %r",
                        where,
                        name,
                        target,
                    )
            self._rename(body)

    def _rename(self, body: dict[str, Any]) -> None:
        """Send keys the data revealed under their camelCase name; a key that already has that name wins."""
        renamed: dict[str, Any] = {}
        for key, value in body.items():
            target = self.renamed.get(key)
            if target is None:
                renamed[key] = value
            elif target in body:
                self.dropped[key] += 1  # the record also carries the camelCase name itself: that value wins
            else:
                renamed[target] = value
        body.clear()
        body.update(renamed)

    # --- at send time: each request body

    def enforce(self, body: dict[str, Any], stream: str) -> None:
        """Make ``body`` fit the team, editing it in place: unknown keys created, renamed or dropped, values coerced,
        unknown lists left out.

        ``body`` is the body of one record's request, built by the rule engine for that record alone: a
        ``LoopsRequest`` is frozen (its fields cannot be re-bound) but its body dict is not, and the sink fits it here
        before handing the request on, so nothing else holds it yet.

        Raises ``CoercionError`` (the record is rejected) for a value that cannot fit its property's type, its
        subclass ``UnknownEventPropertyError`` for event properties ``unknown_event_properties: error`` refuses, and
        ``UnknownPropertyError`` for a key the data revealed that ``unknown_properties`` refuses (``error``),
        that cannot be created, or that would pass ``max_new``. Nothing else: one record never stops the run (but
        Loops unreachable while creating a property does, as for any request).
        """
        if not self.loaded:
            return
        if self.events is not None and "eventName" in body:
            self.events.check(body, f"stream {stream}")
        if self.drop:
            for key in [k for k in body if k in self.drop]:
                del body[key]
                self.dropped[key] += 1
        if self.renamed and any(k in self.renamed for k in body):
            self._rename(body)
        unknown = {k: guess_type(v) for k, v in body.items() if k not in self.properties and k not in NOT_PROPERTIES}
        if unknown:
            self._resolve_revealed(body, unknown, f"stream {stream}")
        blank: list[str] = []
        for key, value in body.items():
            kind = self.properties.get(key)
            if kind is not None and key not in NOT_PROPERTIES and key != "subscribed":
                fitted = coerce(key, value, kind)
                if fitted is None and value is not None:
                    blank.append(key)  # a blank value is not a clear: ``null`` would wipe Loops' value
                else:
                    body[key] = fitted
        for key in blank:
            del body[key]
        lists = body.get("mailingLists")
        if lists and self.lists:
            for list_id in [k for k in lists if k not in self.lists]:
                del lists[list_id]
                self.unknown_lists[list_id] += 1
            if not lists:
                del body["mailingLists"]


def _shape(value: Any) -> str:
    """What a JSON value is, for a message: ``null``, ``a string``, ``a JSON object (keys: "a", "b")``..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        keys = ", ".join(f'"{key}"' for key in list(value)[:5]) + (", ..." if len(value) > 5 else "")
        return f"a JSON object (keys: {keys})" if value else "an empty JSON object"
    return type(value).__name__


def _hint(name: str) -> str:
    fixed = camel_case(name)
    return "" if CAMEL.match(name) or fixed == name else f"; not camelCase: Loops would need {fixed!r}"


def _create_request(name: str, kind: str) -> LoopsRequest:
    return LoopsRequest("POST", "/v1/contacts/properties", {"name": name, "type": kind})
