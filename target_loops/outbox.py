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
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from target_loops.ledger import ContactRow, ContactState, Ledger, LedgerWriter, fingerprint, keyed_hash, value_hashes
from target_loops.operations import Action, LoopsRequest, Operation, Outcome, OutcomeKind

logger = logging.getLogger("target_loops.outbox")

#: Keys that address the contact: always sent, never what makes a payload "new".
IDENTITY_KEYS = frozenset({"email", "userId"})
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
    ) -> None: ...


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


@dataclass
class Person:
    """One contact's operations in a flush, and what the ledger knows of it."""

    key: str  # u:<userId> or e:<email> (memory only)
    identity: str = ""  # the ledger's keyed hash of ``key`` (or of the identity an email is linked to)
    members: list[Held] = field(default_factory=list)
    known: ContactState | None = None


@dataclass
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

    @property
    def lead(self) -> Held:
        """The record whose stream the request is counted on (the event, else the latest update)."""
        return self.members[-1] if self.action is not Action.SEND_EVENT else self._event

    @property
    def _event(self) -> Held:
        return next(h for h in self.members if h.op.action is Action.SEND_EVENT)


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
    ) -> None:
        self.settings = settings
        self.sender = sender
        self.counters = counters
        self.rejects = rejects
        self.ledger = ledger if ledger is not None and team is not None else None
        self.team = team or ""
        self.check = check
        self.progress = progress
        self.now = now
        self.sending = False
        self.sending_seconds = 0.0  # time spent in flushes: the run's requests/s is over this
        self.clamped = 0
        #: Per event name, the event properties sent and their JSON types (they must exist in Loops' settings).
        self.event_properties: dict[str, dict[str, str]] = {}
        self._held: list[Held] = []
        self._seq = 0
        self._lock = threading.RLock()  # adding and flushing
        self._settle_lock = threading.Lock()  # counters, rejects, ledger queue
        writable = self.ledger is not None and not self.ledger.read_only
        self._writer = LedgerWriter(self.ledger, self.team) if writable and self.ledger is not None else None
        self._pool = ThreadPoolExecutor(max_workers=max(1, settings.workers), thread_name_prefix="loops-contact")
        self._failures: list[str] = []
        self._planned_counts: collections.Counter[tuple[str, str]] = collections.Counter()
        self._warned_future: set[str] = set()

    # --- public

    def add(self, stream: str, ops: Iterable[Operation]) -> None:
        """Hold operations (thread-safe); flush when ``hold_rows`` are held."""
        horizon = (self.now() + FUTURE_SKEW).isoformat()
        now_text = self.now().isoformat()
        with self._lock:
            for op in ops:
                at = op.sort_key
                if at is not None and at > horizon:
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
                    self._held.append(Held(op, stream, self._seq, now_text, clamped=True))
                else:
                    self._held.append(Held(op, stream, self._seq, at))
                self._seq += 1
            if len(self._held) >= self.settings.hold_rows:
                self.flush()

    @property
    def held(self) -> int:
        return len(self._held)

    def flush(self) -> None:
        """Send everything held, per person in order; raise ``UndeliveredError`` if anything was not delivered.

        The flush waits for its answers before the reading goes on. Sending while reading was tried and measured:
        the reading thread and the sending threads share one interpreter lock, and each answer's hand-over cost the
        reading more than the overlap saved (a re-sync of 100,000 rows took 20-25% longer).
        """
        with self._lock:
            held, self._held = self._held, []
            if not held:
                return
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
                        list(self._pool.map(self._run_chain, chains))
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

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        if self._writer is not None:
            self._writer.close()

    # --- planning

    def _plan(self, held: list[Held]) -> list[list[Step]]:
        people = self._people(held)
        self._load_known(people)
        delivered = self._delivered_events(held)
        seen_keys: set[str] = set()
        chains = []
        try:
            for person in people:
                chain = self._chain(person, delivered, seen_keys)
                if chain:
                    chains.append(chain)
        finally:
            counts, self._planned_counts = self._planned_counts, collections.Counter()
            with self._settle_lock:
                for (stream, name), n in counts.items():
                    stats = self.counters(stream)
                    setattr(stats, name, getattr(stats, name) + n)
        return chains

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
                person.identity = keyed_hash(self.team, person.key)
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
                default = keyed_hash(self.team, key) if self.ledger is not None else key
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
        hashes = {keyed_hash(self.team, e): e for e in emails}
        found = self.ledger.identities_by_email(self.team, list(hashes))
        linked = {}
        for email_hash, identities in found.items():
            email = hashes[email_hash]
            others = identities - {keyed_hash(self.team, f"e:{email}")}
            if len(others) == 1:
                linked[email] = next(iter(others))
        return linked

    def _load_known(self, people: list[Person]) -> None:
        if self.ledger is None:
            return
        wanted = [p.identity for p in people if any(h.op.action is Action.UPSERT_CONTACT for h in p.members)]
        known = self.ledger.contact_states(self.team, wanted)
        for person in people:
            person.known = known.get(person.identity)

    def _delivered_events(self, held: list[Held]) -> set[str]:
        """The hashed keys of the held events the ledger knows were delivered (by a 0.1 key too, after an upgrade)."""
        if self.ledger is None:
            return set()
        events = [h.op for h in held if h.op.action is Action.SEND_EVENT and h.op.request.idempotency_key]
        keys = {keyed_hash(self.team, op.request.idempotency_key or ""): op for op in events}
        # 0.1 keyed events by the bare id, so one 0.1 key can stand for several events now (two streams' row 1) and
        # be another event's own key: a found hash counts for each event it stands for, and as itself.
        legacy: dict[str, set[str]] = {}
        if self.ledger.legacy_event_keys:
            for hashed, op in keys.items():
                if op.legacy_key:
                    legacy.setdefault(keyed_hash(self.team, op.legacy_key), set()).add(hashed)
        found = self.ledger.delivered_events(self.team, [*keys, *legacy])
        return {k for k in found if k in keys}.union(*(legacy.get(k, ()) for k in found))

    def _chain(self, person: Person, delivered: set[str], seen_keys: set[str]) -> list[Step]:
        """A person's requests in order: per part between deletes, the merged update (folded into the first event
        when it can be) and the events; then the delete."""
        members = person.members
        if len(members) == 1 and members[0].op.action is Action.UPSERT_CONTACT:
            # One row per person and run (a warehouse table re-sent nightly): the same steps, minus the walking.
            return self._part(person, members, person.known, delivered, seen_keys)
        chain: list[Step] = []
        known = person.known
        part: list[Held] = []
        for h in [*person.members, None]:
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
        updates = [h for h in part if h.op.action is Action.UPSERT_CONTACT]
        events: list[Held] = []
        for h in part:
            if h.op.action is not Action.SEND_EVENT:
                continue
            key = h.op.request.idempotency_key
            hashed = keyed_hash(self.team, key) if key else None
            if hashed is not None and (hashed in delivered or hashed in seen):
                self._count(h.stream, "duplicates")
                continue
            if hashed is not None:
                seen.add(hashed)
            events.append(h)
            self._note_event_properties(h.op.request.body)
        update = self._update_step(person, updates, known) if updates else None
        if update is not None and update.advanced_only:
            self._advance(update)
            update = None
        if not events:
            return [update] if update is not None else []
        steps: list[Step] = []
        if update is not None and self._can_fold(update, events[0]):
            steps.append(self._fold(update, events[0]))
            events = events[1:]
        elif update is not None:
            steps.append(update)
        steps.extend(Step(Action.SEND_EVENT, h.op.request, [h], person) for h in events)
        return steps

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
        if known is not None and self.settings.skip_unchanged:
            if latest is not None and known.seen_at is not None and latest < known.seen_at:
                # Older than what Loops has (a replay after a crash): it may only add what Loops lacks.
                body = _missing_from(body, known.hashes)
                if body.keys() <= IDENTITY_KEYS:
                    self._count(updates[-1].stream, "unchanged")
                    return None
            elif known.fingerprint == fingerprint(body) or all(
                known.hashes.get(k) == v for k, v in value_hashes(body).items()
            ):
                self._count(updates[-1].stream, "unchanged")
                if latest is None or (known.seen_at is not None and latest <= known.seen_at):
                    return None
                # Unchanged but newer: a replay of the rows in between must count as older, so seen_at moves on.
                step = self._update(person, updates, body, latest)
                step.advanced_only = True
                return step
        return self._update(person, updates, body, latest)

    @staticmethod
    def _update(person: Person, updates: list[Held], body: dict[str, Any], latest: str | None) -> Step:
        first = updates[0].op.request
        return Step(Action.UPSERT_CONTACT, LoopsRequest(first.method, first.path, body), updates, person, latest=latest)

    def _advance(self, step: Step) -> None:
        known = step.person.known
        if self._writer is None or known is None:
            return
        row = ContactRow(step.person.identity, self._email_hash(step.request.body), known.hashes, step.latest,
                         known.fingerprint)  # fmt: skip
        self._writer.contacts([row])

    def _can_fold(self, update: Step, event: Held) -> bool:
        """An update rides on the event that follows it (Loops' events/send takes contact properties and mailing
        lists beside the event: https://loops.so/docs/api-reference/send-event), unless it re-subscribes (never
        folded) or the two address the person differently."""
        if not self.settings.fold_updates or "subscribed" in update.request.body:
            return False
        body, event_body = update.request.body, event.op.request.body
        return all(body.get(k) is None or event_body.get(k) is None or body[k] == event_body[k] for k in IDENTITY_KEYS)

    def _fold(self, update: Step, event: Held) -> Step:
        body = dict(update.request.body)
        lists = {**body.pop("mailingLists", {}), **event.op.request.body.get("mailingLists", {})}
        body.update(event.op.request.body)
        if lists:
            body["mailingLists"] = lists
        request = event.op.request
        folded = LoopsRequest(request.method, request.path, body, request.idempotency_key, request.also_done)
        return Step(Action.SEND_EVENT, folded, [*update.members, event], update.person, update=update)

    def _delete_step(self, person: Person, h: Held) -> Step:
        request = h.op.request
        fallback = None
        if "userId" in request.body and h.op.email is not None:
            # Loops deletes by one identity; a userId it does not know may still have a contact under the email.
            fallback = LoopsRequest(request.method, request.path, {"email": h.op.email}, None, request.also_done)
        return Step(Action.DELETE_CONTACT, request, [h], person, fallback=fallback)

    def _note_event_properties(self, body: dict[str, Any]) -> None:
        props = body.get("eventProperties")
        if not isinstance(props, dict):
            return
        types = self.event_properties.get(body["eventName"])
        if types is None:
            types = self.event_properties.setdefault(body["eventName"], {})
        for key in props.keys() - types.keys():  # planning runs on one thread: no lock needed
            types[key] = _json_type(props[key])

    # --- sending and settling

    def _run_chain(self, chain: list[Step]) -> None:
        """Send one person's requests in order; stop the chain at the first one that was not settled."""
        for index, step in enumerate(chain):
            if not self._send_step(step):
                for rest in chain[index + 1 :]:
                    self._fail(rest, "not sent: an earlier request of the same contact was not delivered")
                return

    def _send_step(self, step: Step) -> bool:
        outcome = self.sender(step.request)
        if step.fallback is not None and outcome.kind is OutcomeKind.ALREADY_DONE:
            self._settle_costs(step, outcome)
            outcome = self.sender(step.fallback)
        if outcome.kind in (OutcomeKind.FAILED, OutcomeKind.ABORTED):
            self._settle_costs(step, outcome)
            self._fail(step, outcome.message or outcome.kind.value)
            return False
        if step.update is not None and outcome.kind is OutcomeKind.REJECTED:
            # Refused with the update on board: either part may be the cause, so each goes again on its own and
            # gets its own verdict (and its own line in the rejects file).
            self._settle_costs(step, outcome)
            alone = Step(Action.SEND_EVENT, step.lead.op.request, [step.lead], step.person)
            return self._send_step(step.update) and self._send_step(alone)
        self._settle(step, outcome)
        if step.update is not None and outcome.kind is OutcomeKind.DUPLICATE:
            # Loops had this event already and ignored the body, so the update riding on it was not applied.
            return self._send_step(step.update)
        return True

    def _settle_costs(self, step: Step, outcome: Outcome) -> None:
        with self._settle_lock:
            stats = self.counters(step.lead.stream)
            stats.requests += outcome.attempts
            stats.retried += outcome.retries
            stats.rate_limited += outcome.rate_limited

    def _settle(self, step: Step, outcome: Outcome) -> None:
        self._settle_costs(step, outcome)
        kind = outcome.kind
        with self._settle_lock:
            stats = self.counters(step.lead.stream)
            if kind is OutcomeKind.PLANNED:
                stats.planned += 1
            elif kind in (OutcomeKind.DELIVERED, OutcomeKind.ALREADY_DONE):
                stats.delivered += 1
            elif kind is OutcomeKind.DUPLICATE:
                stats.duplicates += 1
            if step.update is not None and kind in (OutcomeKind.DELIVERED, OutcomeKind.PLANNED):
                self.counters(step.update.lead.stream).folded += 1
            if kind is OutcomeKind.REJECTED:
                for h in step.members:
                    self._reject(h, f"http_{outcome.status}" if outcome.status else "refused", outcome, step.request)
            if self._writer is not None:
                self._remember(step, kind)

    def _remember(self, step: Step, kind: OutcomeKind) -> None:
        """Write what Loops accepted to the ledger (never anything it did not)."""
        writer = self._writer
        assert writer is not None
        if step.action is Action.DELETE_CONTACT:
            if kind in (OutcomeKind.DELIVERED, OutcomeKind.ALREADY_DONE):
                emails = [keyed_hash(self.team, h.op.email.lower()) for h in step.members if h.op.email]
                writer.forget([step.person.identity], emails)
            return
        event_key = step.lead.op.request.idempotency_key if step.action is Action.SEND_EVENT else None
        if event_key and kind in (OutcomeKind.DELIVERED, OutcomeKind.DUPLICATE):
            writer.events([keyed_hash(self.team, event_key)])
        update = step if step.action is Action.UPSERT_CONTACT else step.update
        if update is not None and kind is OutcomeKind.DELIVERED:
            known = update.person.known
            state = {**(known.hashes if known else {}), **value_hashes(update.request.body)}
            newest = max(filter(None, (known.seen_at if known else None, update.latest)), default=None)
            row = ContactRow(update.person.identity, self._email_hash(update.request.body), state, newest,
                             fingerprint(update.request.body))  # fmt: skip
            writer.contacts([row])
            update.person.known = ContactState(_json_text(state), newest, row.fingerprint)

    def _email_hash(self, body: dict[str, Any]) -> str | None:
        email = body.get("email")
        return keyed_hash(self.team, email.lower()) if isinstance(email, str) else None

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
