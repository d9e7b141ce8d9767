"""The run's outbox: every operation the sinks hand over, held until a checkpoint, then sent per contact in order.

One outbox per run owns what used to be spread over the sinks and the target: holding operations across batches and
streams, per-contact order, coalescing, folding a contact's update into its next event, the ledger filter, and
settling each answer (counters, rejects, ledger). It knows no singer-sdk type, so it is tested in memory with a
fake sender.

A window (``hold_rows`` operations, or what is held at a checkpoint) goes: group the held operations by person (a
userId, or an email that one userId owns in the window or in the ledger) → order each person's operations by record
time (times in the future are clamped to now) → split at deletes → per part: one merged update, the events in order,
the update folded into the first event when it can be → drop what the ledger says Loops already has → send each
person's chain in order (different people in parallel) → settle. "Done" only counts what Loops confirmed.
"""

from __future__ import annotations

import collections
import datetime as dt
import json
import logging
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from target_loops.ledger import (
    DELETED,
    ContactRow,
    ContactState,
    Ledger,
    LedgerWriter,
    fingerprint,
    keyed_hash,
    value_hashes,
)
from target_loops.operations import SENDING_STREAM, Action, LoopsRequest, Operation, Outcome, OutcomeKind

if TYPE_CHECKING:
    from target_loops.audience import Audiences

logger = logging.getLogger("target_loops.outbox")

#: Keys that address the contact: always sent, never what makes a payload "new".
IDENTITY_KEYS = frozenset({"email", "userId"})
#: The keys of an events/send body that belong to the event; every other key writes to the contact (Loops' events
#: take contact properties and mailing lists beside the event: https://loops.so/docs/api-reference/send-event).
EVENT_KEYS = frozenset({"eventName", "eventProperties"})
#: A record time further ahead than this is clamped to now for ordering (clock skew between systems is normal).
FUTURE_SKEW = dt.timedelta(minutes=5)


class Counters(Protocol):
    """The per-stream counters the outbox updates (``report.StreamStats``)."""

    requests: int
    delivered: int
    duplicates: int
    coalesced: int
    folded: int
    rejected: int
    retried: int
    rate_limited: int
    planned: int
    unchanged: int
    reasons: collections.Counter[str]


class Rejects(Protocol):
    def write(
        self,
        *,
        stream: str,
        record: dict[str, Any],
        reason: str,
        message: str | None,
        request: LoopsRequest | None = None,
        status: int | None = None,
        held: bool = False,
    ) -> None: ...


class NewContactPolicy(Protocol):
    """What the outbox asks about people the ledger does not know (``newcontacts.NewContacts``)."""

    def screen(self, outbox: Outbox, people: list[Person]) -> list[Person]: ...


class UndeliveredError(RuntimeError):
    """Some requests could not be delivered (transient failures past the retries, or the run stopping)."""


@dataclass(frozen=True)
class OutboxSettings:
    hold_rows: int = 20_000  # flush when this many operations are held (coalesce_rows)
    skip_unchanged: bool = True
    fold_updates: bool = True
    workers: int = 4  # people sent in parallel (the client limits what is really in flight)


@dataclass(slots=True)
class Held:
    """An operation as held: its stream, its place in the input and its (clamped) record time."""

    op: Operation
    stream: str
    seq: int
    at: str | None
    clamped: bool = False  # ``at`` is "now", not the record's own time: it orders, but the ledger never keeps it
    waited: bool = False  # sent once and refused because Loops did not know the person yet (see ``Outbox.waiting``)
    member: bool = False  # an audience row whose membership planning already recorded (Loops holds it: unchanged)


@dataclass
class Person:
    """One contact's operations in a flush, and what the ledger knows of it."""

    key: str  # u:<userId> or e:<email> (memory only)
    identity: str = ""  # the ledger's keyed hash of ``key`` (or of the identity an email is linked to)
    members: list[Held] = field(default_factory=list)
    known: ContactState | None = None


@dataclass(slots=True)
class Step:
    """One request of a person's chain and the records it carries."""

    action: Action
    request: LoopsRequest
    members: list[Held]
    person: Person
    update: Step | None = None  # a folded event: the update riding on it (sent alone if the event is not accepted)
    fallback: LoopsRequest | None = None  # a delete by userId: the same delete by email, if Loops has no such userId
    latest: str | None = None  # an update: the latest record time it carries
    advanced_only: bool = False
    #: The record whose stream the request is counted on (the event, else the latest update). Read at every
    #: settling, so found once.
    lead: Held = field(init=False, repr=False)

    def __post_init__(self) -> None:
        last = self.members[-1]  # an event step's event comes last (a folded update rides before it)
        if self.action is not Action.SEND_EVENT or last.op.action is Action.SEND_EVENT:
            self.lead = last
        else:
            self.lead = next(h for h in self.members if h.op.action is Action.SEND_EVENT)


class Outbox:
    """Holds the run's operations and sends them per contact, in record-time order."""

    def __init__(
        self,
        *,
        settings: OutboxSettings,
        sender: Callable[[LoopsRequest], Outcome],
        counters: Callable[[str], Counters],
        rejects: Rejects,
        ledger: Ledger | None = None,
        team: str | None = None,
        check: Callable[[], None] | None = None,
        progress: Any = None,
        now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.timezone.utc),
        stopping: Callable[[], bool] = lambda: False,
        on_stop: Callable[[], None] | None = None,
        audiences: Audiences | None = None,
        new_contacts: NewContactPolicy | None = None,
        names_stream: bool = True,
    ) -> None:
        self.settings = settings
        self.sender = sender
        #: Whether the sender reads ``SENDING_STREAM`` (the client names the stream in a header; a dry run's plan
        #: does not, and setting the variable costs as much as planning the request).
        self.names_stream = names_stream
        self._counters = counters
        self._stats: dict[str, Counters] = {}
        self.rejects = rejects
        self.ledger = ledger if ledger is not None and team is not None else None
        self.team = team or ""
        self.check = check
        self.progress = progress
        self.now = now
        #: Asked between requests: True once the run was told to stop (a signal). ``on_stop`` is then called once
        #: from the thread that waits for the flush (never from a signal handler): it stops the client.
        self.stopping = stopping
        self.on_stop = on_stop
        #: ``new_contacts``: which people unknown to the ledger are planned, held back or exported (newcontacts.py).
        self.new_contacts = new_contacts
        self.sending = False
        self.sending_seconds = 0.0  # time spent in flushes: the run's requests/s is over this
        self.clamped = 0
        #: Per event name, the event properties sent and their JSON types (they must exist in Loops' settings).
        self.event_properties: dict[str, dict[str, str]] = {}
        self._held: list[Held] = []
        #: Operations sent by userId alone and refused (400) while the ledger did not know the person: Loops cannot
        #: create a contact without an email, and that person's upsert may come later in the input (a warehouse tap
        #: sends whole tables in turn). They go again with the next window, and once more at the end of the input
        #: (``flush(final=True)``) before they are rejected. The target holds STATE back while any wait.
        self._waiting: list[Held] = []
        self._waiting_people: set[str] = set()
        self._final = False
        self._seq = 0
        self._lock = threading.RLock()  # adding and flushing
        self._settle_lock = threading.Lock()  # counters, rejects, ledger queue
        writable = self.ledger is not None and not self.ledger.read_only
        self._writer = LedgerWriter(self.ledger, self.team) if writable and self.ledger is not None else None
        self._pool = ThreadPoolExecutor(max_workers=max(1, settings.workers), thread_name_prefix="loops-contact")
        self._failures: list[str] = []
        self._planned_counts: collections.Counter[tuple[str, str]] = collections.Counter()
        self._hashes: dict[str, str] = {}  # see ``_keyed``; emptied at the end of each flush
        self._warned_future: set[str] = set()
        #: Audience membership (``audience.py``): rows of audience streams are recorded as seen when planned, and
        #: with what their rule set once Loops holds it.
        self.audiences = audiences
        if audiences is not None:
            audiences.writer = self._writer

    # --- public

    def counters(self, stream: str) -> Counters:
        """The counters of ``stream`` (the same object for a stream all run long, so asked for once)."""
        stats = self._stats.get(stream)
        if stats is None:
            stats = self._stats[stream] = self._counters(stream)
        return stats

    def add(self, stream: str, ops: Iterable[Operation]) -> None:
        """Hold operations (thread-safe); flush when ``hold_rows`` are held."""
        horizon = (self.now() + FUTURE_SKEW).isoformat()
        now_text = self.now().isoformat()
        with self._lock:
            held = self._held
            for op in ops:
                at = op.sort_key
                if at is None or at <= horizon:
                    held.append(Held(op, stream, self._seq, at))
                    self._seq += 1
                    continue
                self.clamped += 1
                if stream not in self._warned_future:
                    self._warned_future.add(stream)
                    logger.warning(
                        "Stream %s: a record is dated %s, in the future; for ordering it counts as now (%s), so "
                        "that it cannot make every later real change look older",
                        stream,
                        at,
                        now_text,
                    )
                held.append(Held(op, stream, self._seq, now_text, clamped=True))
                self._seq += 1
            if len(self._held) >= self.settings.hold_rows:
                self.flush()

    @property
    def held(self) -> int:
        return len(self._held)

    @property
    def waiting(self) -> int:
        """Operations waiting for their person's upsert (see ``_waiting``): while any wait, no STATE is true."""
        return len(self._waiting)

    def flush(self, *, final: bool = False) -> None:
        """Send everything held, per person in order; raise ``UndeliveredError`` if anything was not delivered.

        ``final`` (after the end of the input): operations still waiting for their person are sent once more and
        rejected if Loops still does not know the person.

        The flush waits for its answers before the reading goes on. Sending while reading was tried and measured:
        the reading thread and the sending threads share one interpreter lock, and each answer's hand-over cost the
        reading more than the overlap saved (a re-sync of 100,000 rows took 20-25% longer).
        """
        with self._lock:
            held, self._held = self._held, []
            if self._waiting:
                held = self._waiting + held
                self._waiting = []
            if not held:
                return
            self._final = final
            self.sending = True
            started = time.monotonic()
            try:
                chains = self._plan(held)
                total = sum(len(c) for c in chains)
                if self.progress is not None:
                    self.progress.begin_batch(total)
                try:
                    if self.settings.workers == 1:  # a dry run: the "sender" answers at once, threads only cost
                        for chain in chains:
                            self._run_chain(chain)
                    else:
                        self._wait_for([self._pool.submit(self._run_chain, chain) for chain in chains])
                finally:
                    if self.progress is not None:
                        self.progress.end_batch(total)
                if self._writer is not None:
                    self._writer.sync()
                if self.check is not None:
                    self.check()
                if self._failures:
                    failures, self._failures = self._failures, []
                    raise UndeliveredError(
                        f"{len(failures)} request(s) could not be delivered (first: {failures[0]}). No STATE was "
                        "emitted for them; re-run to replay from the last state."
                    )
            finally:
                self.sending = False
                self.sending_seconds += time.monotonic() - started
                self._hashes = {}
            if self._waiting:
                logger.info(
                    "%d request(s) sent by userId alone wait for their contact's upsert later in the input (Loops "
                    "answered 400: it cannot create a contact without an email); they go again after it, or once "
                    "more at the end of the input",
                    len(self._waiting),
                )

    def _wait_for(self, futures: list[Future[None]]) -> None:
        """Wait for every chain; when the run is told to stop, call ``on_stop`` once (from this thread, never from
        a signal handler: stopping the client takes locks) and keep waiting: each request in flight ends within
        its deadline and nothing new starts, so every answer that came is settled before the flush returns."""
        pending: set[Future[None]] = set(futures)
        stopped = False
        error: BaseException | None = None
        while pending:
            done, pending = wait(pending, timeout=0.1, return_when=FIRST_EXCEPTION)
            for future in done:
                if error is None and future.exception() is not None:
                    error = future.exception()
            if not stopped and self.stopping():
                stopped = True
                if self.on_stop is not None:
                    self.on_stop()
        if error is not None:
            raise error

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        if self._writer is not None:
            self._writer.close()

    # --- planning

    def _plan(self, held: list[Held]) -> list[list[Step]]:
        people = self._people(held)
        self._load_known(people)
        if self.new_contacts is not None:
            self._load_rest(people)
            people = self.new_contacts.screen(self, people)
        delivered = self._delivered_events(held)
        seen_keys: set[str] = set()
        chains = []
        try:
            for person in people:
                chain = self._chain(person, delivered, seen_keys)
                if chain:
                    chains.append(chain)
            if self.audiences is not None:
                self._note_members(people)
        finally:
            counts, self._planned_counts = self._planned_counts, collections.Counter()
            with self._settle_lock:
                for (stream, name), n in counts.items():
                    stats = self.counters(stream)
                    setattr(stats, name, getattr(stats, name) + n)
        return chains

    def _keyed(self, text: str) -> str:
        """``keyed_hash`` for this team, remembered for the flush: a person's identity, an event key and an email
        are each hashed several times while one window is planned, sent and settled."""
        found = self._hashes.get(text)
        if found is None:
            found = self._hashes[text] = keyed_hash(self.team, text)
        return found

    def _note_members(self, people: list[Person]) -> None:
        """Every audience row planned holds its person at its version (what Loops holds of it is recorded when Loops
        accepts it, or was recorded in planning when the ledger shows Loops already has it)."""
        rows: list[tuple[str, int, str, str, dict[str, Any] | None]] = []
        for person in people:
            for h in person.members:
                if h.op.audience is not None and not h.member and h.op.version is not None:
                    rows.append((h.op.audience, h.op.version, person.identity, person.key, None))
        if rows and self.audiences is not None:
            self.audiences.seen(rows)

    def _held_members(self, person: Person, members: Iterable[Held]) -> None:
        """Audience rows whose contact values Loops holds (accepted now, or unchanged): members with what they set."""
        rows = [
            (h.op.audience, h.op.version, person.identity, person.key, h.op.request.body)
            for h in members
            if h.op.audience is not None and h.op.version is not None and h.op.action is Action.UPSERT_CONTACT
        ]
        if rows and self.audiences is not None:
            self.audiences.seen(rows)

    def _people(self, held: list[Held]) -> list[Person]:
        """Group by person: a userId; an email-only record joins the one userId that owns its email (in this
        window, else in the ledger), else stands for itself."""
        people: dict[str, Person] = {}
        without_user: list[Held] = []
        for h in held:
            if h.op.user_id is None:
                without_user.append(h)
                continue
            key = "u:" + h.op.user_id
            person = people.get(key)
            if person is None:
                person = people[key] = Person(key)
            person.members.append(h)
        email_only: dict[str, list[Held]] = collections.defaultdict(list)
        if without_user:
            owners: dict[str, set[str]] = collections.defaultdict(set)
            for h in held:
                if h.op.user_id is not None and h.op.email is not None:
                    owners[h.op.email.lower()].add(h.op.user_id)
            for h in without_user:
                email = (h.op.email or "").lower()
                users = owners.get(email)
                if users and len(users) == 1:
                    people["u:" + next(iter(users))].members.append(h)  # sorted into record order below
                else:
                    email_only[email].append(h)
        if self.ledger is not None:
            for person in people.values():
                person.identity = self._keyed(person.key)
        else:
            for person in people.values():
                person.identity = person.key  # no ledger: nothing is stored, so no hash is needed
        if email_only:
            linked = self._linked_by_ledger(list(email_only))
            by_identity = {p.identity: p for p in people.values()}
            for email, members in email_only.items():
                identity = linked.get(email)
                if identity is not None and identity in by_identity:
                    by_identity[identity].members.extend(members)
                    continue
                key = f"e:{email}"
                default = self._keyed(key) if self.ledger is not None else key
                person = Person(key, identity or default, list(members))
                people[person.key] = person
                by_identity[person.identity] = person
        for person in people.values():
            members = person.members
            if len(members) == 1:
                continue
            if all(h.at is not None for h in members):
                members.sort(key=lambda h: (h.at, h.seq))
            else:
                members.sort(key=lambda h: h.seq)
        return list(people.values())

    def _linked_by_ledger(self, emails: list[str]) -> dict[str, str]:
        """Email → the one identity the ledger has accepted it with (when it is not the email itself)."""
        if self.ledger is None:
            return {}
        hashes = {self._keyed(e): e for e in emails}
        found = self.ledger.identities_by_email(self.team, list(hashes))
        linked = {}
        for email_hash, identities in found.items():
            email = hashes[email_hash]
            others = identities - {self._keyed(f"e:{email}")}
            if len(others) == 1:
                linked[email] = next(iter(others))
        return linked

    def _load_known(self, people: list[Person]) -> None:
        if self.ledger is None:
            return
        wanted = [p.identity for p in people if any(_needs_known(h.op) for h in p.members)]
        known = self.ledger.contact_states(self.team, wanted)
        for person in people:
            person.known = known.get(person.identity)
        asked = set(wanted)
        self._load_by_email([p for p in people if p.known is None and p.key.startswith("u:") and p.identity in asked])

    def _load_by_email(self, people: list[Person]) -> None:
        """People by userId the ledger does not know, whose email Loops holds as an email-only contact (an
        email-only row sent in an earlier window): Loops matches their requests to that contact by email
        (https://loops.so/docs/api-reference/update-contact), so what it holds is that contact's state. Without it,
        an older row of the person would overwrite a newer value the email-only row set. Only a contact that is
        the email's alone (no userId of the ledger has the email) and not deleted stands in."""
        assert self.ledger is not None
        candidates: dict[str, set[str]] = {}  # email identity → people keys
        emails: dict[str, str] = {}  # email identity → email hash
        for person in people:
            for h in person.members:
                if h.op.email:
                    email = h.op.email.lower()
                    identity = self._keyed(f"e:{email}")
                    candidates.setdefault(identity, set()).add(person.key)
                    emails[identity] = self._keyed(email)
        if not candidates:
            return
        states = self.ledger.contact_states(self.team, list(candidates))
        states = {k: v for k, v in states.items() if v.fingerprint != DELETED and len(candidates[k]) == 1}
        if not states:
            return
        owners = self.ledger.identities_by_email(self.team, [emails[k] for k in states])
        by_key = {p.key: p for p in people}
        borrowed: dict[str, list[ContactState]] = {}
        for identity, state in states.items():
            if owners.get(emails[identity], set()) - {identity}:
                continue  # another identity has this email too: Loops' match is not this contact for sure
            borrowed.setdefault(next(iter(candidates[identity])), []).append(state)
        for key, found in borrowed.items():
            if len(found) == 1:
                by_key[key].known = found[0]

    def _load_rest(self, people: list[Person]) -> None:
        """The ledger rows ``_load_known`` leaves out (people with only userId-only events): whether a person is new
        is a ledger question first."""
        if self.ledger is None:
            return
        rest = [p for p in people if p.known is None and not any(_needs_known(h.op) for h in p.members)]
        if rest:
            known = self.ledger.contact_states(self.team, [p.identity for p in rest])
            for person in rest:
                person.known = known.get(person.identity)

    # --- for the new-contact policy (newcontacts.py)

    @property
    def writer(self) -> LedgerWriter | None:
        """The ledger's write-behind (None in a dry run)."""
        return self._writer

    def hold(self, h: Held, reason: str, message: str) -> None:
        """A record held back by the new-contact policy: to the rejects file with ``reason`` (replayable), counted on
        its stream as rejected, but not against ``max_rejects`` (nothing was refused)."""
        with self._settle_lock:
            stats = self.counters(h.stream)
            stats.rejected += 1
            stats.reasons[reason] += 1
            self.rejects.write(stream=h.stream, record=h.op.record, reason=reason, message=message,
                               request=h.op.request, held=True)  # fmt: skip

    def count(self, stream: str, name: str) -> None:
        """Count a planning decision of the new-contact policy (``exported``) on its stream."""
        self._count(stream, name)

    def _delivered_events(self, held: list[Held]) -> set[str]:
        """The hashed keys of the held events the ledger knows were delivered (by a 0.1 key too, after an upgrade)."""
        if self.ledger is None:
            return set()
        events = [h.op for h in held if h.op.action is Action.SEND_EVENT and h.op.request.idempotency_key]
        keys = {self._keyed(op.request.idempotency_key or ""): op for op in events}
        # 0.1 keyed events by the bare id, so one 0.1 key can stand for several events now (two streams' row 1) and
        # be another event's own key: a found hash counts for each event it stands for, and as itself.
        legacy: dict[str, set[str]] = {}
        if self.ledger.legacy_event_keys:
            for hashed, op in keys.items():
                if op.legacy_key:
                    legacy.setdefault(self._keyed(op.legacy_key), set()).add(hashed)
        found = self.ledger.delivered_events(self.team, [*keys, *legacy])
        return {k for k in found if k in keys}.union(*(legacy.get(k, ()) for k in found))

    def _chain(self, person: Person, delivered: set[str], seen_keys: set[str]) -> list[Step]:
        """A person's requests in order: per part between deletes, the merged update (folded into the first event
        when it can be) and the events; then the delete."""
        members = person.members
        known = person.known
        if known is not None and known.seen_at is not None:
            # After a delete, records older than it would bring the contact back; otherwise, a delete older than
            # what Loops holds (a deletes table sent after a newer identify) would undo the newer record.
            deleted = known.fingerprint == DELETED
            if deleted or any(h.op.action is Action.DELETE_CONTACT for h in members):
                members, older = _split_older(members, known.seen_at, deletes=not deleted)
                for stale in older:
                    self._count(stale.stream, "unchanged")  # Loops holds something newer
        if len(members) == 1 and members[0].op.action is Action.UPSERT_CONTACT:
            # One row per person and run (a warehouse table re-sent nightly): the same steps, minus the walking.
            return self._part(person, members, known, delivered, seen_keys)
        chain: list[Step] = []
        part: list[Held] = []
        for h in [*members, None]:
            if h is not None and h.op.action is not Action.DELETE_CONTACT:
                part.append(h)
                continue
            chain.extend(self._part(person, part, known, delivered, seen_keys))
            part = []
            if h is not None:
                chain.append(self._delete_step(person, h))
                known = None  # after a delete, Loops holds nothing of this contact
        return chain

    def _part(
        self, person: Person, part: list[Held], known: ContactState | None, delivered: set[str], seen: set[str]
    ) -> list[Step]:
        """One part (between deletes) of a person's records, in record-time order: the events in order, and the
        updates merged into as few requests as order allows.

        An update may go before (or ride on) an older event only when the two agree on every identity field and
        every contact property and mailing list the event carries; otherwise it stays after that event. Merging
        every update of a part ahead of all its events (what 0.2.0 did) let a newer email overtake an older event
        that still carried the old one: Loops then moved the email back, or created a second contact for an
        email-only event. An update never passes another group of updates either (the later one must win).
        """
        if len(part) == 1:
            return self._alone(person, part[0], known, delivered, seen)
        # Slots in send order: each a group of updates (merged into one request) and the event after it, if any.
        slots: list[tuple[list[Held], Held | None]] = [([], None)]
        for h in part:
            if h.op.action is Action.SEND_EVENT:
                if self._duplicate(h, delivered, seen):
                    continue
                slots[-1] = (slots[-1][0], h)
                slots.append(([], None))
                continue
            body = h.op.request.body
            j = len(slots) - 1
            while not slots[j][0] and j > 0 and _agrees(body, slots[j - 1][1].op.request.body):  # type: ignore[union-attr]
                j -= 1
            group, event = slots[j]
            if group and not _exists(known) and _timed(h, group) and not _same_email(body, group):
                # An email change is not merged into the updates before it while Loops may not know the userId yet:
                # the earlier email is what ties the contact to it (a contact a form created, say), and only then
                # can the email change. Once the ledger knows the contact, its userId finds it whatever the email;
                # and rows without a time of their own (a users table) are in input order, not history: merged.
                slots[j] = (group, None)
                slots.insert(j + 1, ([h], event))
            else:
                group.append(h)
        steps: list[Step] = []
        # What Loops will hold after each step, for the steps after it; computed only when one of them reads it
        # (most people have one group and its events: hashing every update again was a tenth of a dry run).
        written: list[tuple[dict[str, Any], str | None, bool]] = []

        def holds() -> ContactState | None:
            nonlocal known
            for values, at, whole in written:
                known = _projected(known, values, at, fingerprint(values) if whole else "")
            written.clear()
            return known

        for group, event in slots:
            update = self._update_step(person, group, holds()) if group else None
            if update is not None and update.advanced_only:
                self._advance(update, known)
                update = None
            if update is not None:
                written.append((update.request.body, update.latest, True))
            if event is None:
                if update is not None:
                    steps.append(update)
                continue
            request = event.op.request
            now = holds()
            if now is not None:
                # Older than what Loops holds (it waited, or came in a later window than newer records): sent
                # without the values those records set since.
                request = _without_stale_writes(request, now, None if event.clamped else event.at)
            writes = _contact_writes(request.body)
            # An event with both userId and email matches as an update does and gives the contact the other value
            # (https://loops.so/docs/api-reference/send-event, https://loops.so/docs/api-reference/update-contact):
            # the contact now holds the event's email, so a later update back to the old email is a change.
            moved = {"email": request.body["email"]} if {"userId", "email"} <= request.body.keys() else {}
            if writes or moved:
                written.append(({**writes, **moved}, None if event.clamped else event.at, False))
            if update is not None and self._can_fold(update, request.body):
                steps.append(self._fold(update, event, request))
                continue
            if update is not None:
                steps.append(update)
            steps.append(Step(Action.SEND_EVENT, request, [event], person))
        return steps

    def _alone(
        self, person: Person, h: Held, known: ContactState | None, delivered: set[str], seen: set[str]
    ) -> list[Step]:
        """``_part`` for a part of one record (most parts of a window): the same steps, minus the slots."""
        if h.op.action is Action.SEND_EVENT:
            if self._duplicate(h, delivered, seen):
                return []
            request = h.op.request
            if known is not None:
                request = _without_stale_writes(request, known, None if h.clamped else h.at)
            return [Step(Action.SEND_EVENT, request, [h], person)]
        update = self._update_step(person, [h], known)
        if update is not None and update.advanced_only:
            self._advance(update, known)
            return []
        return [update] if update is not None else []

    def _duplicate(self, h: Held, delivered: set[str], seen: set[str]) -> bool:
        """True (and counted) when the event's key was delivered before (the ledger) or is already in this run's
        plan; else its key is noted as planned. Without a ledger the key itself is the mark: nothing is stored."""
        key = h.op.request.idempotency_key
        if not key:
            return False
        hashed = self._keyed(key) if self.ledger is not None else key
        if hashed in delivered or hashed in seen:
            self._count(h.stream, "duplicates")
            return True
        seen.add(hashed)
        return False

    def _update_step(self, person: Person, updates: list[Held], known: ContactState | None) -> Step | None:
        """The person's updates of one part merged into one request (later records win, lists merged per list),
        minus what the ledger says Loops holds; None when Loops holds all of it."""
        if len(updates) == 1:  # the common case: nothing to merge
            body = updates[0].op.request.body
            return self._filter_update(person, updates, body, known)
        has_user = any(h.op.user_id is not None for h in updates)
        body = {}
        for h in updates:
            for key, value in h.op.request.body.items():
                if key == "mailingLists":
                    body["mailingLists"] = {**body.get("mailingLists", {}), **value}
                elif key == "email" and has_user and h.op.user_id is None and "email" in body:
                    continue  # an email-only row addresses the person; it does not move their email
                else:
                    body[key] = value
        for h in updates[:-1]:
            self._count(h.stream, "coalesced")
        return self._filter_update(person, updates, body, known)

    def _filter_update(
        self, person: Person, updates: list[Held], body: dict[str, Any], known: ContactState | None
    ) -> Step | None:
        """The merged update minus what the ledger says Loops holds; None when Loops holds all of it."""
        latest = _latest(updates)
        if self.audiences is not None and any(h.op.change is not None for h in updates):
            known = None  # a leave is sent as decided: its settling ends the membership
        if known is not None and self.settings.skip_unchanged:
            if latest is not None and known.seen_at is not None and latest < known.seen_at:
                # Older than what Loops has (a replay after a crash): it may only add what Loops lacks.
                body = _missing_from(body, known.hashes)
                if body.keys() <= IDENTITY_KEYS and ("userId" not in body or "userId" in known.hashes):
                    self._count(updates[-1].stream, "unchanged")
                    self._unchanged_members(person, updates)
                    return None
            elif known.fingerprint == fingerprint(body) or all(
                known.hashes.get(k) == v for k, v in value_hashes(body).items()
            ):
                self._count(updates[-1].stream, "unchanged")
                self._unchanged_members(person, updates)
                if latest is None or (known.seen_at is not None and latest <= known.seen_at):
                    return None
                # Unchanged but newer: a replay of the rows in between must count as older, so seen_at moves on.
                step = self._update(person, updates, body, latest)
                step.advanced_only = True
                return step
        return self._update(person, updates, body, latest)

    def _unchanged_members(self, person: Person, updates: list[Held]) -> None:
        if self.audiences is None:
            return
        for h in updates:
            h.member = h.op.audience is not None
        self._held_members(person, updates)

    @staticmethod
    def _update(person: Person, updates: list[Held], body: dict[str, Any], latest: str | None) -> Step:
        first = updates[0].op.request
        if body is first.body and first.idempotency_key is None and not first.also_done:
            request = first  # one update sent as it came: the same request
        else:
            request = LoopsRequest(first.method, first.path, body)
        return Step(Action.UPSERT_CONTACT, request, updates, person, latest=latest)

    def _advance(self, step: Step, known: ContactState | None) -> None:
        if self._writer is None or known is None:
            return
        row = ContactRow(step.person.identity, self._email_hash(step.request.body), known.hashes, step.latest,
                         known.fingerprint)  # fmt: skip
        self._writer.contacts([row])

    def _can_fold(self, update: Step, event_body: dict[str, Any]) -> bool:
        """An update rides on the event that follows it (Loops' events/send takes contact properties and mailing
        lists beside the event: https://loops.so/docs/api-reference/send-event), unless it re-subscribes (never
        folded), the two address the person differently, or each carries an identity the other lacks (an
        email-only row and a userId-only event: together they would tie that email to that userId, which neither
        record says, e.g. after the person was deleted)."""
        if not self.settings.fold_updates or "subscribed" in update.request.body:
            return False
        body = update.request.body
        mine = {k for k in IDENTITY_KEYS if body.get(k) is not None}
        theirs = {k for k in IDENTITY_KEYS if event_body.get(k) is not None}
        if mine - theirs and theirs - mine:
            return False
        return all(body.get(k) is None or event_body.get(k) is None or body[k] == event_body[k] for k in IDENTITY_KEYS)

    def _fold(self, update: Step, event: Held, request: LoopsRequest) -> Step:
        body = dict(update.request.body)
        lists = {**body.pop("mailingLists", {}), **request.body.get("mailingLists", {})}
        body.update(request.body)
        if lists:
            body["mailingLists"] = lists
        folded = LoopsRequest(request.method, request.path, body, request.idempotency_key, request.also_done)
        return Step(Action.SEND_EVENT, folded, [*update.members, event], update.person, update=update)

    def _delete_step(self, person: Person, h: Held) -> Step:
        request = h.op.request
        fallback = None
        if "userId" in request.body and h.op.email is not None:
            # Loops deletes by one identity; a userId it does not know may still have a contact under the email,
            # but only one that no other userId owns (checked by ``_delete_by_email``).
            fallback = LoopsRequest(request.method, request.path, {"email": h.op.email}, None, request.also_done)
        return Step(Action.DELETE_CONTACT, request, [h], person, fallback=fallback)

    def _note_event_properties(self, body: dict[str, Any]) -> None:
        props = body.get("eventProperties")
        if not isinstance(props, dict):
            return
        types = self.event_properties.get(body["eventName"])
        if types is None:
            types = self.event_properties.setdefault(body["eventName"], {})
        elif props.keys() <= types.keys():
            return
        for key in props.keys() - types.keys():  # called under the settle lock
            types[key] = _json_type(props[key])

    # --- sending and settling

    def _run_chain(self, chain: list[Step]) -> None:
        """Send one person's requests in order; stop the chain at the first one that was not settled.

        Requests that must wait for this person's upsert (``_should_wait``) are set aside; once a later request of
        the chain makes Loops know the person, they go once more right after it (what a newer record set since is
        left out of them), else they wait for a later window.
        """
        waited: list[Held] = []
        person = chain[0].person
        try:
            for index, step in enumerate(chain):
                if self.stopping():
                    for rest in chain[index:]:
                        self._fail(rest, "not sent: the run is stopping")
                    return
                sent = self._send_step(step, waited)
                if sent and waited and step.action is Action.DELETE_CONTACT:
                    waited, older = _split_older(waited, step.lead.at, deletes=False) if step.lead.at else ([], waited)
                    with self._settle_lock:  # what waited is older than the person's deletion: never sent
                        for h in older:
                            self.counters(h.stream).unchanged += 1
                if sent and waited and person.identity not in self._waiting_people:
                    again, waited = waited, []
                    sent = all(self._send_again(person, h, waited) for h in again)
                if not sent:
                    for rest in chain[index + 1 :]:
                        self._fail(rest, "not sent: an earlier request of the same contact was not delivered")
                    return
        finally:
            if waited:
                with self._settle_lock:
                    self._waiting.extend(waited)
                    self._waiting_people.add(chain[0].person.identity)

    def _send_again(self, person: Person, h: Held, waited: list[Held]) -> bool:
        """A request that waited, now that Loops knows the person: without the values a newer record has set."""
        at = None if h.clamped else h.at
        request = h.op.request if person.known is None else _without_stale_writes(h.op.request, person.known, at)
        action = h.op.action
        if action is Action.UPSERT_CONTACT and not _contact_writes(request.body):
            with self._settle_lock:
                self.counters(h.stream).unchanged += 1
            return True
        step = Step(action, request, [h], person, latest=at if action is Action.UPSERT_CONTACT else None)
        return self._send_step(step, waited)

    def _send_step(self, step: Step, waited: list[Held]) -> bool:
        if self._should_wait(step, None):
            # This person's userId alone was refused before and no upsert has been accepted since: no request.
            self._wait(step, waited)
            return True
        outcome = self._unknown_leaver(step) or self._send_for(step.lead.stream, step.request)
        if step.fallback is not None and outcome.kind is OutcomeKind.ALREADY_DONE:
            self._settle_costs(step, outcome)
            outcome = self._delete_by_email(step, step.fallback)
        if self._should_wait(step, outcome):
            self._settle_costs(step, outcome)
            self._wait(step, waited)
            return True
        if outcome.kind in (OutcomeKind.FAILED, OutcomeKind.ABORTED):
            self._settle_costs(step, outcome)
            self._fail(step, outcome.message or outcome.kind.value)
            return False
        if step.update is not None and outcome.kind is OutcomeKind.REJECTED:
            # Refused with the update on board: either part may be the cause, so each goes again on its own and
            # gets its own verdict (and its own line in the rejects file).
            self._settle_costs(step, outcome)
            alone = Step(Action.SEND_EVENT, step.lead.op.request, [step.lead], step.person)
            return self._send_step(step.update, waited) and self._send_step(alone, waited)
        self._settle(step, outcome)
        if step.update is not None and outcome.kind is OutcomeKind.DUPLICATE:
            # Loops had this event already and ignored the body, so the update riding on it was not applied.
            return self._send_step(step.update, waited)
        return True

    def _should_wait(self, step: Step, outcome: Outcome | None) -> bool:
        """True when a request addressed by userId alone must wait for that person's upsert instead of being
        rejected: Loops answers 400 when no contact has the userId, since it cannot create one without an email
        (https://loops.so/docs/api-reference/send-event, https://loops.so/docs/api-reference/update-contact).
        Loops' 400 does not say which fault it is (its messages are not a contract), so every 400 to a request by
        userId alone waits, never past the final pass: a request refused for another reason costs one more try
        at the end. ``outcome`` None: before sending, for a person still waiting, that is, no request carrying
        their userId has been accepted since one was refused (no request is spent)."""
        body = step.request.body
        if self._final or step.action is Action.DELETE_CONTACT or "email" in body or "userId" not in body:
            return False
        if outcome is None:
            return step.person.identity in self._waiting_people
        return outcome.kind is OutcomeKind.REJECTED and outcome.status == 400

    def _wait(self, step: Step, waited: list[Held]) -> None:
        for h in step.members:
            h.waited = True
            waited.append(h)
        with self._settle_lock:
            self._waiting_people.add(step.person.identity)

    def _delete_by_email(self, step: Step, fallback: LoopsRequest) -> Outcome:
        """The email fallback of a delete whose userId Loops does not know: look the email up first and delete
        only a contact that has no userId or this one. The email may belong to another person by now (an email
        moves between userIds), and deleting by email alone would delete them."""
        user_id = step.request.body.get("userId")
        query = urllib.parse.urlencode({"email": fallback.body["email"]})
        found = self._send_for(step.lead.stream, LoopsRequest("GET", f"/v1/contacts/find?{query}", {}))
        self._settle_costs(step, found)
        if found.kind is not OutcomeKind.DELIVERED:
            return found  # planned (a dry run), failed or aborted: settled as such
        contacts = found.body if isinstance(found.body, list) else []
        owners = {c.get("userId") or None for c in contacts if isinstance(c, dict)}
        if not contacts or owners - {None, user_id}:
            # Nothing under that email, or another person's contact: nothing of this person is left to delete.
            return Outcome(OutcomeKind.ALREADY_DONE, status=found.status, message=found.message)
        return self._send_for(step.lead.stream, fallback)

    def _send_for(self, stream: str, request: LoopsRequest) -> Outcome:
        """Send ``request`` on behalf of ``stream`` (the client names it in a header; see ``SENDING_STREAM``)."""
        if not self.names_stream:
            return self.sender(request)
        token = SENDING_STREAM.set(stream)
        try:
            return self.sender(request)
        finally:
            SENDING_STREAM.reset(token)

    def _unknown_leaver(self, step: Step) -> Outcome | None:
        """An audience's leave addressed by email alone: Loops would create a contact (subscribed) for an email it
        does not know (https://loops.so/docs/api-reference/update-contact), say one deleted by hand since. The
        email is looked up first; no contact means nothing is left to undo. None: send the leave."""
        body = step.request.body
        if "userId" in body or "email" not in body or not any(h.op.change is not None for h in step.members):
            return None
        query = urllib.parse.urlencode({"email": body["email"]})
        found = self.sender(LoopsRequest("GET", f"/v1/contacts/find?{query}", {}))
        if found.kind is not OutcomeKind.DELIVERED:
            return found if found.kind is not OutcomeKind.PLANNED else None  # a dry run plans the leave itself
        self._settle_costs(step, found)
        if isinstance(found.body, list) and found.body:
            return None
        return Outcome(OutcomeKind.ALREADY_DONE, status=found.status, message="no contact has this email")

    def _settle_costs(self, step: Step, outcome: Outcome) -> None:
        with self._settle_lock:
            stats = self.counters(step.lead.stream)
            stats.requests += outcome.attempts
            stats.retried += outcome.retries
            stats.rate_limited += outcome.rate_limited

    def _settle(self, step: Step, outcome: Outcome) -> None:
        kind = outcome.kind
        with self._settle_lock:
            stats = self.counters(step.lead.stream)
            stats.requests += outcome.attempts
            stats.retried += outcome.retries
            stats.rate_limited += outcome.rate_limited
            if kind is OutcomeKind.PLANNED:
                stats.planned += 1
            elif kind in (OutcomeKind.DELIVERED, OutcomeKind.ALREADY_DONE):
                stats.delivered += 1
            elif kind is OutcomeKind.DUPLICATE:
                stats.duplicates += 1
            if step.update is not None and kind in (OutcomeKind.DELIVERED, OutcomeKind.PLANNED):
                self.counters(step.update.lead.stream).folded += 1
            if step.action is Action.SEND_EVENT and kind in (OutcomeKind.DELIVERED, OutcomeKind.PLANNED):
                self._note_event_properties(step.request.body)  # only what Loops accepted (or a plan would send)
            if kind is OutcomeKind.REJECTED:
                for h in step.members:
                    self._reject(h, f"http_{outcome.status}" if outcome.status else "refused", outcome, step.request)
            self._remember(step, kind)
        if self.audiences is not None:
            if kind is OutcomeKind.DELIVERED:
                self._held_members(step.person, step.members)
            if kind is not OutcomeKind.PLANNED:
                self.audiences.settled(h.op.change for h in step.members if h.op.change is not None)

    def _remember(self, step: Step, kind: OutcomeKind) -> None:
        """Write what Loops accepted to the ledger (never anything it did not).

        ``person.known`` follows what Loops holds as the person's chain is sent: nothing after a delete (so a
        contact recreated in the same window is recorded with only what was sent since), and every accepted write,
        an event's contact properties included (a later update that would restore an older value must not look
        unchanged).
        """
        writer = self._writer
        if writer is None and kind is not OutcomeKind.DELIVERED and kind is not OutcomeKind.ALREADY_DONE:
            return  # a plan, a duplicate or a refusal with no ledger to write: Loops' picture did not change
        person = step.person
        if step.action is Action.DELETE_CONTACT:
            if kind in (OutcomeKind.DELIVERED, OutcomeKind.ALREADY_DONE):
                at = None if step.lead.clamped else step.lead.at
                if writer is not None:
                    emails = [self._keyed(h.op.email.lower()) for h in step.members if h.op.email]
                    writer.forget([person.identity], emails)
                    if at is not None:
                        writer.contacts([ContactRow(person.identity, None, {}, at, DELETED)])
                person.known = ContactState("{}", at, DELETED) if at is not None else None
            return
        event_key = step.lead.op.request.idempotency_key if step.action is Action.SEND_EVENT else None
        if writer is not None and event_key and kind in (OutcomeKind.DELIVERED, OutcomeKind.DUPLICATE):
            writer.events([self._keyed(event_key)])
        if kind is not OutcomeKind.DELIVERED:
            return
        body = step.request.body
        if step.action is Action.UPSERT_CONTACT:
            written, latest, print_ = body, step.latest, fingerprint(body)
        else:
            written = {k: v for k, v in body.items() if k not in EVENT_KEYS}
            event = step.lead
            times = [None if event.clamped else event.at, step.update.latest if step.update is not None else None]
            latest = max(filter(None, times), default=None)
            known = person.known
            if written.keys() <= IDENTITY_KEYS and step.update is None:
                # An event that wrote nothing but reached the contact: news when the ledger did not know the
                # contact (by the person's own key: an email-only event linked to a userId does not tell that Loops
                # can find that userId), or when it is newer than anything applied (a delete older than it, arriving
                # later, must not be sent).
                if "userId" not in written and person.key.startswith("u:"):
                    return
                if _exists(known) and (latest is None or (known is not None and (known.seen_at or "") >= latest)):
                    return
            # The whole-payload fingerprint is the update's only when the event itself wrote nothing more.
            alone = step.update is not None and _contact_writes(step.lead.op.request.body) == {}
            print_ = fingerprint(step.update.request.body) if alone and step.update is not None else ""
            if not _contact_writes(body) and step.update is None and known is not None and _exists(known):
                print_ = known.fingerprint  # only the time moved on: the payload Loops last accepted is the same
        known = person.known
        state = {**(known.hashes if known else {}), **value_hashes(written)}
        newest = max(filter(None, (known.seen_at if known else None, latest)), default=None)
        if writer is not None:
            writer.contacts([ContactRow(person.identity, self._email_hash(written), state, newest, print_)])
        person.known = ContactState(_json_text(state), newest, print_)
        if "userId" in written:
            self._waiting_people.discard(person.identity)  # Loops knows the userId now

    def _email_hash(self, body: dict[str, Any]) -> str | None:
        email = body.get("email")
        return self._keyed(email.lower()) if isinstance(email, str) else None

    def _reject(self, h: Held, reason: str, outcome: Outcome, request: LoopsRequest) -> None:
        stats = self.counters(h.stream)
        stats.rejected += 1
        stats.reasons[reason] += 1
        self.rejects.write(
            stream=h.stream,
            record=h.op.record,
            reason=reason,
            message=outcome.message,
            request=request,
            status=outcome.status,
        )

    def _fail(self, step: Step, message: str) -> None:
        with self._settle_lock:
            self._failures.append(f"{step.request.method} {step.request.path}: {message}")

    def _count(self, stream: str, name: str) -> None:
        """Count what planning decided (unchanged, coalesced, duplicates); ``_plan`` adds them up at its end."""
        self._planned_counts[stream, name] += 1


def _split_older(members: list[Held], at: str, *, deletes: bool) -> tuple[list[Held], list[Held]]:
    """``members`` split into (kept, older than ``at``): only deletes when ``deletes``, else everything but deletes.
    A record without a time of its own (none, or clamped) is never older."""
    kept: list[Held] = []
    older: list[Held] = []
    for h in members:
        is_delete = h.op.action is Action.DELETE_CONTACT
        if is_delete is deletes and h.at is not None and not h.clamped and h.at < at:
            older.append(h)
        else:
            kept.append(h)
    return kept, older


def _exists(known: ContactState | None) -> bool:
    """True when the ledger (or this chain) says Loops has the contact: known, and not deleted since."""
    return known is not None and known.fingerprint != DELETED


def _needs_known(op: Operation) -> bool:
    """Whether planning needs the person's ledger row: to filter an update, to record what an event writes, to
    tell whether an event by email is older than the person's delete (it would recreate the contact), or whether
    a delete is older than what Loops holds."""
    if op.action is Action.SEND_EVENT:
        # An audience's join or leave event: its settling must not replace what the ledger holds of the contact.
        return op.email is not None or bool(_contact_writes(op.request.body)) or op.change is not None
    return True  # an update, or a delete (one older than what Loops holds must not be sent)


def _writes_contact(op: Operation) -> bool:
    """True for an update, and for an event that carries contact properties or mailing lists."""
    if op.action is Action.UPSERT_CONTACT:
        return True
    return op.action is Action.SEND_EVENT and bool(_contact_writes(op.request.body))


def _contact_writes(body: dict[str, Any]) -> dict[str, Any]:
    """What an events/send body writes to the contact besides addressing it."""
    return {k: v for k, v in body.items() if k not in EVENT_KEYS and k not in IDENTITY_KEYS}


def _agrees(update: dict[str, Any], event: dict[str, Any]) -> bool:
    """True when ``update`` may go before (or ride on) the older ``event``: they agree on every identity field and
    contact property the event carries, and on every mailing list it sets. Emails compare case-insensitively,
    as Loops matches them."""
    for key, value in event.items():
        if key in EVENT_KEYS:
            continue
        if key == "mailingLists" and isinstance(value, dict):
            lists = update.get("mailingLists") or {}
            if any(list_id in lists and lists[list_id] != member for list_id, member in value.items()):
                return False
            continue
        if key not in update:
            continue
        other = update[key]
        if key == "email" and isinstance(value, str) and isinstance(other, str):
            if value.lower() != other.lower():
                return False
        elif other != value:
            return False
    return True


def _timed(h: Held, group: list[Held]) -> bool:
    """True when ``h`` and every record of ``group`` carry a time of their own (their order is their history)."""
    return h.at is not None and not h.clamped and all(g.at is not None and not g.clamped for g in group)


def _same_email(body: dict[str, Any], group: list[Held]) -> bool:
    """True unless ``body`` and the group's latest email differ (case-insensitively, as Loops compares them)."""
    email = body.get("email")
    if not isinstance(email, str):
        return True
    for h in reversed(group):
        other = h.op.request.body.get("email")
        if isinstance(other, str):
            return other.lower() == email.lower()
    return True


def _projected(known: ContactState | None, written: dict[str, Any], at: str | None, print_: str) -> ContactState:
    """What Loops holds once ``written`` is applied on top of ``known``: later parts of a chain are filtered
    against it, not against the ledger's older picture."""
    state = {**(known.hashes if known else {}), **value_hashes(written)}
    newest = max(filter(None, (known.seen_at if known else None, at)), default=None)
    return ContactState(_json_text(state), newest, print_)


def _without_stale_writes(request: LoopsRequest, known: ContactState, at: str | None) -> LoopsRequest:
    """An event older than what Loops holds of its contact (it waited for the contact, or arrived in a later window
    than newer records): it keeps its event and its identity, and drops the contact values a newer record has set
    since (they would move Loops back in time). That includes its email when it also carries the userId Loops
    knows the contact by and Loops holds another email: an event with both gives the contact its email
    (https://loops.so/docs/api-reference/send-event), and the userId alone finds the contact."""
    if at is None or known.seen_at is None or known.seen_at <= at:
        return request
    held = known.hashes
    body = {k: v for k, v in request.body.items() if k in EVENT_KEYS or k in IDENTITY_KEYS or k not in held}
    if "userId" in body and "email" in body and "email" in held:
        hashes = value_hashes({"userId": body["userId"], "email": body["email"]})
        if held.get("userId") == hashes["userId"] and held["email"] != hashes["email"]:
            del body["email"]
    if isinstance(body.get("mailingLists"), dict):
        lists = {k: v for k, v in body["mailingLists"].items() if f"mailingLists.{k}" not in held}
        if lists:
            body["mailingLists"] = lists
        else:
            del body["mailingLists"]
    if body == request.body:
        return request
    return LoopsRequest(request.method, request.path, body, request.idempotency_key, request.also_done)


def _latest(members: Sequence[Held]) -> str | None:
    """The latest record time of a request's records, or None unless every record has a time of its own (a time in
    the future was clamped: it must not make the ledger treat every later real change as older)."""
    if len(members) == 1:
        return None if members[0].clamped else members[0].at
    times = [None if h.clamped else h.at for h in members]
    return max(t for t in times if t is not None) if all(t is not None for t in times) else None


def _missing_from(body: dict[str, Any], state: dict[str, str]) -> dict[str, Any]:
    """The identity keys plus every property (and mailing list) of ``body`` that ``state`` does not hold."""
    kept = {k: v for k, v in body.items() if k in IDENTITY_KEYS or (k not in state and k != "mailingLists")}
    lists = {k: v for k, v in (body.get("mailingLists") or {}).items() if f"mailingLists.{k}" not in state}
    if lists:
        kept["mailingLists"] = lists
    return kept


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return "string" if isinstance(value, str) else type(value).__name__


def _json_text(state: dict[str, str]) -> str:
    return json.dumps(state, separators=(",", ":"), sort_keys=True)
