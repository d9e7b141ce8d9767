"""Event properties checked against Loops' own definition of each event.

Loops wants an event's properties added to the event before they are used: properties an event does not define are
"not available when sending emails" (https://loops.so/docs/events/properties). ``GET
/v1/event-patterns/by-name/{eventName}`` (https://loops.so/docs/api-reference/get-event-pattern-by-name) answers an
event's definition: ``{"id", "eventName", "eventProperties": [{"name", "type"}], "incomingWebhookPlatform"}``.

Each event name of the run is read once, the first time a request of it is fitted, and the answer is kept for the
run (read only: Loops has no API to add an event property). Then, per event name, the run knows which properties
Loops defines, which the data sends that Loops lacks (with the type to create them with) and which types disagree;
the log says so at once, the plan and the run report at the end.

What a run does with a sent property the definition lacks is ``unknown_event_properties``, and only applies when
Loops answered with a definition:

- ``warn`` (default): sent as it is (Loops accepts it), named in the log, the plan and the report;
- ``drop``: left out of the event's ``eventProperties`` (the rest of the event is sent), counted per event name
  and property in the report;
- ``error``: the record is rejected (``unknown_event_property``), naming the event and the properties.

Without a definition nothing changes: a 404 means Loops has no event of that name yet (sending one creates it with
the properties sent: https://loops.so/docs/events, "Creating events"), or an API that predates event patterns; a
405 means the latter, and no other name is asked for. Types that disagree are reported, never changed: Loops says
nothing of what it does with them.
"""

from __future__ import annotations

import collections
import decimal
import logging
import threading
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from target_loops.coercion import CoercionError
from target_loops.operations import OutcomeKind
from target_loops.preflight import guess_type

logger = logging.getLogger(__name__)

#: ``GET /v1/event-patterns/by-name/{eventName}``, the name URL-encoded ("Event names are case-sensitive and should
#: be URL-encoded": https://loops.so/docs/api-reference/get-event-pattern-by-name).
BY_NAME = "/v1/event-patterns/by-name/"
#: At most this many event names are read in one run (this project's bound: a rule that maps a per-record value
#: to the event name would otherwise cost one read per record).
MAX_READS = 200
#: Loops' four property types (https://loops.so/docs/events/properties).
TYPES = frozenset({"string", "number", "boolean", "date"})
MODES = ("warn", "drop", "error")

#: What Loops said about an event name.
DEFINED = "defined"  # 200: its definition
NOT_DEFINED = "not_defined"  # 404: no event of that name yet, or an API without event patterns
UNAVAILABLE = "unavailable"  # 405 or past MAX_READS: not asked


class UnknownEventPropertyError(CoercionError):
    """An event carries properties its Loops definition lacks and ``unknown_event_properties`` is ``error``."""

    reason = "unknown_event_property"


@dataclass
class EventCheck:
    """One event name: Loops' answer, and how the run's data compares with it."""

    loops: str  # DEFINED, NOT_DEFINED or UNAVAILABLE
    defined: dict[str, str] | None = None  # property → Loops type (DEFINED only)
    sent: dict[str, str] = field(default_factory=dict)  # property → type of the first value sent
    missing: dict[str, str] = field(default_factory=dict)  # sent, not defined → the type to create it with
    mismatched: dict[str, tuple[str, str]] = field(default_factory=dict)  # property → (Loops type, type sent)
    dropped: collections.Counter[str] = field(default_factory=collections.Counter)  # property → events
    rejected: int = 0  # records rejected for its undefined properties (mode error)

    def report(self) -> dict[str, Any]:
        """This event name in the run report."""
        return {
            "loops": self.loops,
            "defined": dict(sorted(self.defined.items())) if self.defined is not None else None,
            "sent": dict(sorted(self.sent.items())),
            "missing": dict(sorted(self.missing.items())),
            "type_mismatches": {k: {"loops": a, "sent": b} for k, (a, b) in sorted(self.mismatched.items())},
            "dropped": dict(sorted(self.dropped.items())),
            "rejected": self.rejected,
        }


def value_type(value: Any) -> str:
    """The Loops type a sent value reads as: boolean, number, date (an ISO-8601 string) or string (the same guess
    as for contact properties only the data reveals)."""
    if isinstance(value, decimal.Decimal):
        return "number"
    return guess_type(value)


def fits(value: Any, loops_type: str) -> bool:
    """Whether ``value`` is of ``loops_type`` as Loops reads it: a date is an ISO-8601 string or epoch milliseconds
    (https://loops.so/docs/events/properties: "similar to contact properties")."""
    sent = value_type(value)
    if loops_type == "date":
        return sent in ("date", "number")
    if loops_type == "string":
        return sent in ("string", "date")
    return sent == loops_type


class EventPatterns:
    """Loops' event definitions for this run, read once per name, and what the data sent for each.

    Thread-safe: sinks of several streams fit their requests at once.
    """

    def __init__(self, client: Any, *, mode: str = "warn") -> None:
        if mode not in MODES:
            raise ValueError(f"unknown_event_properties must be one of {', '.join(MODES)}, not {mode!r}")
        self.client = client
        self.mode = mode
        self.checks: dict[str, EventCheck] = {}
        self._available = client is not None
        self._reads = 0
        self._lock = threading.RLock()

    def check(self, body: dict[str, Any], where: str) -> None:
        """Compare one event request's ``eventProperties`` with its event's definition, editing ``body`` in place
        (``drop``) or raising ``UnknownEventPropertyError`` (``error``) for properties the definition lacks."""
        name = body.get("eventName")
        if not isinstance(name, str):
            return
        props = body.get("eventProperties")
        props = props if isinstance(props, dict) else {}
        with self._lock:
            check = self.checks.get(name) or self._read(name)
            for key, value in props.items():
                if key not in check.sent:
                    self._first_sight(name, check, key, value)
                elif check.defined is not None and key not in check.mismatched and key in check.defined:
                    self._compare(name, check, key, value)
            if check.defined is None:
                return
            unknown = sorted(k for k in props if k not in check.defined)
            if not unknown:
                return
            if self.mode == "error":
                check.rejected += 1
                listing = ", ".join(f"{k} ({value_type(props[k])})" for k in unknown)
                raise UnknownEventPropertyError(
                    f"{where}: event {name!r} sends properties its Loops definition lacks: {listing}; the record is "
                    "rejected (unknown_event_properties: error). Add them to the event in Loops (Settings → Events), "
                    "or set unknown_event_properties: warn or drop."
                )
            if self.mode == "drop":
                for key in unknown:
                    del props[key]
                    check.dropped[key] += 1
                if not props:
                    body.pop("eventProperties", None)

    def report(self) -> dict[str, dict[str, Any]]:
        """Per event name, in the run report's words (``event_definitions``)."""
        with self._lock:
            return {name: check.report() for name, check in sorted(self.checks.items())}

    # --- internals

    def _read(self, name: str) -> EventCheck:
        """Ask Loops for ``name``'s definition once (caller holds the lock); the answer is kept for the run."""
        if not self._available or self._reads >= MAX_READS:
            if self._available and self._reads == MAX_READS:
                logger.warning(
                    "Event definitions: %d event names read from Loops, the most one run asks for; the others are not "
                    "checked",
                    MAX_READS,
                )
                self._reads += 1
            check = self.checks[name] = EventCheck(UNAVAILABLE)
            return check
        self._reads += 1
        path = BY_NAME + quote(name, safe="")
        outcome = self.client.read(path)
        if outcome.kind is OutcomeKind.DELIVERED:
            defined = self._definition(path, outcome.body)
            check = EventCheck(DEFINED, defined)
            listing = ", ".join(f"{k} ({t})" for k, t in sorted(defined.items())) or "no properties"
            logger.info("Event %r: Loops defines %s", name, listing)
        elif outcome.status == 405:
            # An API without event patterns: ask no more, check nothing (what target-loops did before).
            self._available = False
            check = EventCheck(UNAVAILABLE)
            logger.info("Loops answered 405 to GET %s: event definitions are not checked in this run", path)
        else:
            check = EventCheck(NOT_DEFINED)
            logger.info(
                "Event %r: Loops has no definition of it (HTTP %s%s); its first send creates it with the properties "
                "sent",
                name,
                outcome.status,
                f": {outcome.message}" if outcome.message and outcome.status != 404 else "",
            )
        self.checks[name] = check
        return check

    def _definition(self, path: str, answer: Any) -> dict[str, str]:
        """The properties of a 200 answer, which must be Loops' shape; anything else means base_url is not Loops."""
        props = answer.get("eventProperties") if isinstance(answer, dict) else None
        if not isinstance(props, list) or not all(
            isinstance(p, dict) and isinstance(p.get("name"), str) and p.get("type") in TYPES for p in props
        ):
            raise self.client.not_loops(
                f'GET {path} answered without Loops\' "eventProperties": [{{"name", "type"}}]; nothing more was sent'
            )
        return {p["name"]: p["type"] for p in props}

    def _first_sight(self, name: str, check: EventCheck, key: str, value: Any) -> None:
        """The first value of ``key`` sent with event ``name``: note its type, and say at once what Loops lacks."""
        sent = check.sent[key] = value_type(value)
        if check.defined is None:
            return
        loops_type = check.defined.get(key)
        if loops_type is None:
            check.missing[key] = sent
            effect = {
                "warn": "sent, but not available in emails",
                "drop": "left out of the requests (unknown_event_properties: drop)",
                "error": "its records are rejected (unknown_event_properties: error)",
            }[self.mode]
            logger.warning(
                "Event %r: property %s (%s) is not defined on this event in Loops: %s. Add it in Loops → Settings → "
                "Events",
                name,
                key,
                sent,
                effect,
            )
        else:
            self._compare(name, check, key, value)

    @staticmethod
    def _compare(name: str, check: EventCheck, key: str, value: Any) -> None:
        """Note (once per property) a value whose type is not the one Loops defines for it."""
        assert check.defined is not None, "only a defined event is compared"
        loops_type = check.defined[key]
        if not fits(value, loops_type):
            sent = value_type(value)
            check.mismatched[key] = (loops_type, sent)
            logger.warning(
                "Event %r: property %s is %s in Loops, but the data sends %s (%r); sent as it is",
                name,
                key,
                loops_type,
                sent,
                value,
            )
