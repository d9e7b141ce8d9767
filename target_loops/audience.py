"""Audiences: a table decides who is on a list, and who leaves it.

An upsert rule with ``on_leave`` (or ``on_join``) makes its stream an audience. Every row the outbox plans marks its
person as seen in the audience at the row's version (the tap's ``version``, the stream's ``ACTIVATE_VERSION``, or the
run's own stamp); a row Loops accepted (or the ledger shows Loops already holds) also records what the rule set: the
lists it set true and a short hash per property it wrote. Only such people are members, so a list member added by a
form or by hand is never touched.

An audience is *closed* when its version is known complete: the input ended normally after the stream's
``ACTIVATE_VERSION``, or after any input for a ``full_table`` rule. Never on an input cut short, a failed or
stopped run, nor at an audience's first closing (its first sync: a baseline; nobody joins or leaves). Closing asks
the ledger for the members last seen before the closing version (the set difference is done in SQL: only leavers
come into memory), checks the guard (``max_leave_fraction``), and turns each leaver into ordinary operations for the
outbox: per person, ordered with their other rows, settled into the ledger, refused ones in the rejects file, STATE
only after.

A dry run writes nothing: it keeps who it read in memory and plans the same leaves against the members the ledger has.
"""

from __future__ import annotations

import collections
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from target_loops.fields import Rule
from target_loops.ledger import ContactState, Ledger, LedgerWriter, MemberRow, keyed_hash, value_hashes
from target_loops.operations import Action, LoopsRequest, Operation
from target_loops.rules import DELETE_ALSO_DONE, DELETE_PATH, EVENT_ALSO_DONE, EVENT_PATH, UPSERT_PATH
from target_loops.serialization import stable_hash

logger = logging.getLogger("target_loops.audience")

#: Body keys that are not something the rule "set" for the person: who it is, and the subscription (never undone).
_NOT_HELD = frozenset({"email", "userId", "mailingLists", "subscribed"})


@dataclass(frozen=True, slots=True)
class AudienceSpec:
    """What a rule says about its audience (parsed and checked by ``fields.parse_rule``)."""

    leave: tuple[str, ...]  # remove_from_lists, clear_properties, unsubscribe, delete, "event:<name>"
    join_event: str | None
    full_table: bool

    @classmethod
    def of(cls, rule: Rule | None) -> AudienceSpec | None:
        """The rule's audience, or None when the rule has neither ``on_leave`` nor ``on_join``."""
        if rule is None or rule.action is not Action.UPSERT_CONTACT:
            return None
        opts = rule.options
        if "on_leave" not in opts and "on_join" not in opts:
            return None
        join = opts.get("on_join")
        return cls(
            leave=tuple(opts.get("on_leave", ())),
            join_event=join[0].split(":", 1)[1] if join else None,
            full_table=bool(opts.get("full_table", False)),
        )

    def describe(self) -> str:
        """What leaving does, in the rule's words."""
        parts = [f"event {a.split(':', 1)[1]!r}" if a.startswith("event:") else a for a in self.leave]
        return ", ".join(parts) or "nothing (on_join only)"


@dataclass(frozen=True, slots=True)
class Change:
    """A leave or join request the target made for an audience (``Operation.change``)."""

    audience: int
    identity: bytes
    kind: str  # "leave" or "join"
    last: bool  # the person's last request of this change: settling it ends their membership


@dataclass
class Closing:
    """What happened to one audience in the run: the report's and the plan's figures."""

    stream: str
    on_leave: str
    members: int = 0
    joined: int = 0
    left: int = 0
    closed: bool = False
    first: bool = False
    note: str | None = None  # why it was not closed, or what the guard said
    stopped: bool = False  # the guard held every leave back
    seconds: float = 0.0  # the closing's own time: the set difference and the leave operations built

    def as_dict(self) -> dict[str, Any]:
        return {
            "stream": self.stream,
            "on_leave": self.on_leave,
            "members": self.members,
            "joined": self.joined,
            "left": self.left,
            "closed": self.closed,
            "first_sync": self.first,
            "stopped_by_guard": self.stopped,
            "note": self.note,
            "seconds": round(self.seconds, 3),
        }


@dataclass
class _Audience:
    stream: str
    spec: AudienceSpec
    id: int | None
    closed: int | None
    stamp: int
    activated: int | None = None
    seen: dict[bytes, str] = field(default_factory=dict)  # dry run only: identity → address


def held_of(body: dict[str, Any]) -> str:
    """What an upsert body sets for its person, as the ledger keeps it: the lists set true, and per property it
    writes (not clears) the short hash of the value, the same hash the contact's own ledger row holds."""
    lists = sorted(k for k, v in (body.get("mailingLists") or {}).items() if v is True)
    props = value_hashes({k: v for k, v in body.items() if k not in _NOT_HELD and v is not None})
    held: dict[str, Any] = {}
    if lists:
        held["l"] = lists
    if props:
        held["p"] = props
    return json.dumps(held, separators=(",", ":"), sort_keys=True)


class Audiences:
    """The run's audiences: who was seen, and the closing at the end of a complete input."""

    def __init__(
        self,
        *,
        ledger: Ledger | None,
        team: str | None,
        max_leave_fraction: float,
        min_members: int,
        dry_run: bool,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.ledger = ledger
        self.team = team or ""
        self.tracked = ledger is not None and team is not None
        self.max_leave_fraction = max_leave_fraction
        self.min_members = min_members
        self.dry_run = dry_run
        self.now = now
        self.writer: LedgerWriter | None = None  # the outbox's: members are written behind, like contacts
        self.closings: list[Closing] = []
        self.problems: list[str] = []  # guard lines: the run exits non-zero after delivering everything else
        self._by_stream: dict[str, _Audience] = {}
        self._lock = threading.Lock()

    # --- the streams

    def register(self, stream: str, spec: AudienceSpec) -> None:
        """A sink whose rule has an audience: read (or create) its ledger row once."""
        with self._lock:
            if stream in self._by_stream:
                return
            found = None
            if self.tracked and self.ledger is not None:
                found = self.ledger.audience(self.team, keyed_hash(self.team, f"audience|{stream}"))
            audience_id, closed = found if found is not None else (None, None)
            # Newer than every version already held, not only the last closed one: a run stopped by the guard
            # closes nothing, and the next run may start within the same second of the clock (or after it stepped
            # back); holding people at the stopped run's version again would make nobody look gone.
            newest = self.ledger.newest_member_version(audience_id) if audience_id is not None and self.ledger else None
            stamp = max(int(self.now()), (closed or 0) + 1, (newest or 0) + 1)
            self._by_stream[stream] = _Audience(stream, spec, audience_id, closed, stamp)
            if not self.tracked:
                logger.warning(
                    "Stream %s is an audience, but no Loops team is known to the ledger (a dry run without a key "
                    "or a ledger): nobody can join or leave it in this run",
                    stream,
                )

    def is_audience(self, stream: str) -> bool:
        return stream in self._by_stream

    def is_any(self) -> bool:
        return bool(self._by_stream)

    def activated(self, stream: str, version: int) -> None:
        """ACTIVATE_VERSION: ``version`` is the stream's version now; it closes at a normal end of input."""
        with self._lock:
            audience = self._by_stream.get(stream)
            if audience is not None:
                audience.activated = max(version, audience.activated or version)

    def version_for(self, stream: str, message_version: Any) -> int:
        """The version a row holds its person at: the RECORD's own, else the activated one, else the run's stamp."""
        audience = self._by_stream[stream]
        if isinstance(message_version, int) and not isinstance(message_version, bool):
            return message_version
        return audience.activated if audience.activated is not None else audience.stamp

    # --- the outbox's hooks

    def seen(self, rows: Iterable[tuple[str, int, str, str, dict[str, Any] | None]]) -> None:
        """Rows planned: (stream, version, identity hash, address, body when Loops holds it, else None)."""
        out: list[MemberRow] = []
        for stream, version, identity, address, body in rows:
            audience = self._by_stream.get(stream)
            if audience is None:
                continue
            key = bytes.fromhex(identity) if _is_hex(identity) else identity.encode("utf-8")
            if self.dry_run:
                with self._lock:
                    audience.seen[key] = address
            elif audience.id is not None:
                out.append(MemberRow(audience.id, key, address, version, None if body is None else held_of(body)))
        if out and self.writer is not None:
            self.writer.members(out)

    def settled(self, changes: Iterable[Change]) -> None:
        """A leave came to its end (accepted or refused): the person is no longer a member."""
        done = [(c.audience, c.identity) for c in changes if c.kind == "leave" and c.last]
        if done and self.writer is not None:
            self.writer.left(done)

    # --- closing

    def close(self, rejected: Callable[[str], int]) -> list[tuple[str, list[Operation]]]:
        """Close every audience whose version is complete; return the leave and join operations per stream.

        ``rejected(stream)``: records of the stream refused in this run. A refused row's person may still be in
        the table, so such an audience is not closed (nobody leaves it); the line says which.
        """
        if self.writer is not None:
            self.writer.sync()  # every member seen so far is in the ledger before the database is asked
        plans: list[tuple[_Audience, Closing, list[tuple[bytes, str, str]], list[tuple[bytes, str]], int]] = []
        started = time.perf_counter()
        for audience in self._by_stream.values():
            closing = Closing(audience.stream, audience.spec.describe())
            self.closings.append(closing)
            version = audience.activated
            if version is None and audience.spec.full_table:
                version = audience.stamp
            if version is None:
                closing.note = "not closed: no ACTIVATE_VERSION for the stream in this input, and full_table is not set"
                continue
            if not self.tracked or self.ledger is None:
                closing.note = "not closed: no Loops team is known to the ledger"
                continue
            if audience.closed is not None and version <= audience.closed:
                closing.note = (
                    f"not closed: version {version} is not newer than the last one closed ({audience.closed})"
                )
                continue
            refused = rejected(audience.stream)
            if refused:
                closing.note = (
                    f"not closed: {refused} row(s) of the stream were rejected in this run, and a rejected row's "
                    "person may still be in the table; nobody leaves until a run rejects none (see the rejects file)"
                )
                logger.warning("Audience %s %s", audience.stream, closing.note)
                continue
            closing.closed = True
            if audience.closed is None:
                closing.members = self._count(audience, version)[0]
                closing.first = True
                closing.note = "first sync: its members are recorded; nobody joins or leaves"
                self._mark_closed(audience, version)
                continue
            members, leaving = self._count(audience, version)
            closing.members = members
            fraction = leaving / members if members else 0.0
            if members >= self.min_members and fraction > self.max_leave_fraction:
                # Counted before any leaver is read: a table truncated to nothing never brings its audience into
                # memory.
                closing.stopped = True
                closing.closed = False
                verb = "would stop" if self.dry_run else "stopped"
                closing.note = (
                    f"{verb}: {leaving:,} of {members:,} ({fraction:.0%}) > max_leave_fraction "
                    f"{self.max_leave_fraction:g}"
                )
                self.problems.append(
                    f"audience {audience.stream!r}: {leaving:,} of {members:,} members ({fraction:.0%}) would "
                    f"leave, more than max_leave_fraction {self.max_leave_fraction:g}: no leave was sent for it "
                    "(a truncated table?). Everything else was delivered; fix the table, or raise "
                    "max_leave_fraction for one run if so many really left"
                )
                continue
            leavers, joiners = self._differences(audience, version)
            plans.append((audience, closing, leavers, joiners, version))
        operations = self._operations(plans)
        for closing in self.closings:
            closing.seconds = time.perf_counter() - started
        return operations

    def _count(self, audience: _Audience, version: int) -> tuple[int, int]:
        """(members, members who would leave), counted by the database in a real run; a dry run, which wrote none
        of what it read, counts the ledger's members that it did not read."""
        assert self.ledger is not None
        if audience.id is None:  # a dry run of an audience the ledger does not know: everyone read is new
            return len(audience.seen), 0
        if not self.dry_run:
            return self.ledger.member_counts(audience.id, version)
        members = leaving = 0
        for identity, _, _ in self.ledger.audience_members(audience.id):
            members += 1
            leaving += identity not in audience.seen
        return members, leaving

    def _differences(
        self, audience: _Audience, version: int
    ) -> tuple[list[tuple[bytes, str, str]], list[tuple[bytes, str]]]:
        """(leavers, joiners): the set difference done by the database in a real run, against what was read in a
        dry run."""
        assert self.ledger is not None
        if audience.id is None:
            return [], list(audience.seen.items())
        if not self.dry_run:
            return self.ledger.leavers(audience.id, version), self.ledger.joiners(audience.id)
        leavers: list[tuple[bytes, str, str]] = []
        known: set[bytes] = set()
        for identity, address, held in self.ledger.audience_members(audience.id):
            if identity in audience.seen:
                known.add(identity)
            else:
                leavers.append((identity, address, held))
        return leavers, [(i, a) for i, a in audience.seen.items() if i not in known]

    def _mark_closed(self, audience: _Audience, version: int) -> None:
        if self.ledger is not None and audience.id is not None and not self.dry_run:
            self.ledger.close_audience(audience.id, version)
        audience.closed = version

    def _operations(
        self, plans: list[tuple[_Audience, Closing, list[tuple[bytes, str, str]], list[tuple[bytes, str]], int]]
    ) -> list[tuple[str, list[Operation]]]:
        assert self.ledger is not None
        leaving = {(a.id, identity) for a, _, leavers, _, _ in plans for identity, _, _ in leavers}
        ids = [a.id for a in self._by_stream.values() if a.id is not None]
        everyone = [identity for _, _, leavers, _, _ in plans for identity, _, _ in leavers]
        holdings = self.ledger.member_holdings(ids, everyone)
        clearing = [i for a, _, leavers, _, _ in plans if "clear_properties" in a.spec.leave for i, _, _ in leavers]
        states = self.ledger.contact_states(self.team, [i.hex() for i in clearing]) if clearing else {}
        result: list[tuple[str, list[Operation]]] = []
        forget: list[tuple[int, bytes]] = []
        for audience, closing, leavers, joiners, version in plans:
            assert audience.id is not None
            ops: list[Operation] = []
            for identity, address in joiners if audience.spec.join_event else ():
                ops.append(self._event(audience, version, identity, address, "join", audience.spec.join_event or ""))
            for identity, address, held in leavers:
                others = [
                    h for aid, h in holdings.get(identity, []) if aid != audience.id and (aid, identity) not in leaving
                ]
                person = self._leave(audience, version, identity, address, held, others, states.get(identity.hex()))
                if person:
                    ops.extend(person)
                else:
                    forget.append((audience.id, identity))  # nothing of theirs left to undo
            closing.joined = len(joiners)
            closing.left = len(leavers)
            self._mark_closed(audience, version)
            if ops:
                result.append((audience.stream, ops))
            logger.info(
                "Audience %s closed at version %s: %d of %d member(s) leave (%s), %d joined",
                audience.stream,
                version,
                len(leavers),
                closing.members,
                audience.spec.describe(),
                len(joiners),
            )
        if forget and self.writer is not None:
            self.writer.left(forget)
        return result

    def _leave(
        self,
        audience: _Audience,
        version: int,
        identity: bytes,
        address: str,
        held_text: str,
        others: list[str],
        state: ContactState | None,
    ) -> list[Operation]:
        """A leaver's requests in order: the contact update (lists, properties, subscription), the events, the
        delete. The update rides on the first event when the outbox can fold it."""
        held: dict[str, Any] = json.loads(held_text or "{}")
        who = _who(address)
        update: dict[str, Any] = {}
        actions = audience.spec.leave
        if "remove_from_lists" in actions:
            still = {list_id for other in others for list_id in json.loads(other or "{}").get("l", ())}
            lists = {list_id: False for list_id in held.get("l", ()) if list_id not in still}
            if lists:
                update["mailingLists"] = lists
        if "clear_properties" in actions and state is not None:
            # Only where Loops still holds the value this rule wrote: a newer value from elsewhere stays.
            for name, value_hash in sorted(held.get("p", {}).items()):
                if state.hashes.get(name) == value_hash:
                    update[name] = None
        if "unsubscribe" in actions:
            update["subscribed"] = False
        requests: list[tuple[Action, LoopsRequest]] = []
        if update:
            requests.append((Action.UPSERT_CONTACT, LoopsRequest("PUT", UPSERT_PATH, {**who, **update})))
        for item in actions:
            if item.startswith("event:"):
                name = item.split(":", 1)[1]
                requests.append((Action.SEND_EVENT, _event_request(audience, version, identity, who, "leave", name)))
        if "delete" in actions:
            requests.append(
                (Action.DELETE_CONTACT, LoopsRequest("POST", DELETE_PATH, dict(who), None, DELETE_ALSO_DONE))
            )
        record = {"audience": audience.stream, "left_at_version": version, **who}
        return [
            _operation(
                action, request, record, address, Change(audience.id or 0, identity, "leave", n == len(requests) - 1)
            )
            for n, (action, request) in enumerate(requests)
        ]

    def _event(
        self, audience: _Audience, version: int, identity: bytes, address: str, kind: str, name: str
    ) -> Operation:
        who = _who(address)
        record = {"audience": audience.stream, f"{kind}ed_at_version": version, **who}
        request = _event_request(audience, version, identity, who, kind, name)
        return _operation(Action.SEND_EVENT, request, record, address, Change(audience.id or 0, identity, kind, True))

    # --- figures

    def counts(self) -> dict[str, tuple[int, int]]:
        """Per audience stream closed in this run: (joined, left)."""
        found: dict[str, tuple[int, int]] = collections.defaultdict(lambda: (0, 0))
        for closing in self.closings:
            if closing.closed and not closing.first:
                found[closing.stream] = (closing.joined, closing.left)
        return dict(found)


def _who(address: str) -> dict[str, str]:
    kind, _, value = address.partition(":")
    return {"userId": value} if kind == "u" else {"email": value}


def _event_request(
    audience: _Audience, version: int, identity: bytes, who: dict[str, str], kind: str, name: str
) -> LoopsRequest:
    """The event of a join or a leave: its Idempotency-Key is derived from the audience, the person and the
    version, so a replay of the same closing never fires a loop twice
    (https://loops.so/docs/api-reference/send-event)."""
    key = "tl-" + stable_hash("audience", kind, audience.stream, identity.hex(), version, name)[:64]
    return LoopsRequest("POST", EVENT_PATH, {**who, "eventName": name}, key, EVENT_ALSO_DONE)


def _operation(
    action: Action, request: LoopsRequest, record: dict[str, Any], address: str, change: Change
) -> Operation:
    who = request.body
    return Operation(
        action,
        request,
        record,
        address,
        None,
        email=who.get("email"),
        user_id=who.get("userId"),
        change=change,
    )


def _is_hex(text: str) -> bool:
    return len(text) == 32 and all(c in "0123456789abcdef" for c in text)
