"""Property: whatever the input order and wherever the windows fall, Loops ends as record-time order says.

Hypothesis draws a person's history (identify with email changes, email-only rows, tracks by userId alone, by
email alone or by both, deletes), gives each record its own time, then feeds them to the outbox in another order
(whole tables in turn, as a warehouse tap sends them, or shuffled) with flushes at random points. The reference
applies the same records one request each, in record-time order, to a fresh copy of the same model of Loops'
matching rules (``tests/loops_model.py``, the sandbox's store); a request by userId alone that Loops refuses because
the contact does not exist yet is applied again right after that person's next accepted upsert (what "an event
waits for its contact" means), unless the person is deleted first (a record older than a deletion never brings the
contact back). Both must end with the same contacts and every event on the same contact.
"""

from __future__ import annotations

import collections
import datetime as dt
import random
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from target_loops.ledger import Ledger
from target_loops.operations import Action, Operation, OutcomeKind
from target_loops.outbox import Outbox, OutboxSettings
from target_loops.report import RunStats
from target_loops.rules import StreamMapper, parse_rules
from tests.loops_model import ModelLoops

RULES = {r.stream: r for r in parse_rules([], use_defaults=True)}
DELETE_RULE = parse_rules([{"stream": "deletes", "action": "delete_contact"}], use_defaults=False)[0]
PROPERTIES = [{"key": "plan", "type": "string"}]
#: Each person's own email addresses: an email changes within a person, never moves to another person (two
#: people's requests are sent in parallel, so only one person's records have an order to keep).
EMAILS = {"u1": ["a@x.io", "b@x.io"], "u2": ["c@x.io", "d@x.io"], "u3": ["e@x.io"]}
START = dt.datetime(2026, 11, 1, 10, 0, tzinfo=dt.timezone.utc)


class Rejects:
    def __init__(self) -> None:
        self.lines: list[dict[str, Any]] = []

    def write(self, **line: Any) -> None:
        self.lines.append(line)


@st.composite
def histories(draw: st.DrawFn) -> list[tuple[str, dict[str, Any]]]:
    """(stream, record) pairs; the list position is the record time."""
    records: list[tuple[str, dict[str, Any]]] = []
    count = draw(st.integers(min_value=1, max_value=14))
    # A person's email-only rows are linked to them by email and ordered with their records, which the one-request-
    # per-record reference cannot know: it would make a second contact for an email-only row of an email the person
    # moves to later, or after the person was deleted. So a history has email changes and deletes, or email-only
    # rows (each person keeping one email), not both.
    kinds = draw(st.sampled_from([
        ["identify", "identify", "email_row", "track", "track_email", "track_both"],
        ["identify", "identify", "track", "track_both", "delete"],
    ]))  # fmt: skip
    for n in range(count):
        at = (START + dt.timedelta(minutes=n)).isoformat().replace("+00:00", "Z")
        user = draw(st.sampled_from(sorted(EMAILS)))
        email = draw(st.sampled_from(EMAILS[user])) if "delete" in kinds else EMAILS[user][0]
        kind = draw(st.sampled_from(kinds))
        message = f"m{n}"
        if kind == "identify":
            traits: dict[str, Any] = {"email": email}
            if draw(st.booleans()):
                traits["plan"] = draw(st.sampled_from(["free", "pro"]))
            records.append(("identify", {"type": "identify", "messageId": message, "timestamp": at,
                                         "userId": user, "traits": traits}))  # fmt: skip
        elif kind == "email_row":
            traits = {"email": email, "plan": draw(st.sampled_from(["free", "pro"]))}
            records.append(("identify", {"type": "identify", "messageId": message, "timestamp": at,
                                         "traits": traits}))  # fmt: skip
        elif kind == "delete":
            # By userId alone: a delete's email links email-only rows to its person for ordering, a grouping the
            # one-request-per-record reference has no notion of (the email fallback has tests of its own).
            records.append(("deletes", {"type": "identify", "messageId": message, "timestamp": at,
                                        "userId": user, "traits": {}}))  # fmt: skip
        else:
            record: dict[str, Any] = {"type": "track", "event": "Viewed", "messageId": message, "timestamp": at,
                                      "properties": {"n": n}}  # fmt: skip
            if kind in ("track", "track_both"):
                record["userId"] = user
            if kind in ("track_email", "track_both"):
                record["context"] = {"traits": {"email": email}}
            records.append(("track", record))
    return records


def operation(stream: str, record: dict[str, Any]) -> Operation:
    rule = DELETE_RULE if stream == "deletes" else RULES[stream]
    result = StreamMapper(rule, stream).map(record)
    assert isinstance(result, Operation), result
    return result


def reference(records: list[tuple[str, dict[str, Any]]]) -> ModelLoops:
    """One request per record in record-time order; a userId-only request refused for want of the contact goes
    again right after that person's next accepted upsert; a delete by userId falls back to the email only when
    that email's contact has no userId or the same one."""
    loops = ModelLoops(properties=PROPERTIES)
    waiting: dict[str, list[Operation]] = collections.defaultdict(list)
    for stream, record in records:
        op = operation(stream, record)
        outcome = loops(op.request)
        body = op.request.body
        if op.action is Action.DELETE_CONTACT:
            waiting.pop(op.user_id or "", None)  # what waited for this person is older than their deletion
            if outcome.kind is OutcomeKind.ALREADY_DONE and op.email is not None:
                found = loops.store.find_contacts(email=op.email)
                if found and found[0].get("userId") in (None, op.user_id):
                    loops.store.delete_contact({"email": op.email})
            continue
        if outcome.kind is OutcomeKind.REJECTED and "email" not in body and op.user_id is not None:
            waiting[op.user_id].append(op)
            continue
        if outcome.kind is OutcomeKind.DELIVERED and op.user_id is not None and "email" in body:
            for held in waiting.pop(op.user_id, []):
                loops(held.request)
    return loops


def contacts_of(loops: ModelLoops) -> list[tuple[Any, ...]]:
    return sorted(
        (c["userId"] or "", (c["email"] or "").lower(), c.get("plan") or "", c["subscribed"]) for c in loops.contacts()
    )


def events_of(loops: ModelLoops) -> list[tuple[Any, ...]]:
    """Each event with the contact it landed on, as that contact is now. Events of a contact deleted since are left
    out: an event older than a deletion that arrives after it (the deletes table first) is not sent at all, so
    that nobody deleted is emailed for their past."""
    now = {c["id"]: (c["userId"] or "", (c["email"] or "").lower()) for c in loops.contacts()}
    return sorted((e["idempotencyKey"], now[e["contactId"]]) for e in loops.events() if e["contactId"] in now)


def one_plan_per_person(records: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    """The records with each person's first ``plan`` in all of their rows that set one.

    The ledger keeps one time per contact, not one per property (README, "What it guarantees"): a row older than
    what Loops holds of its contact only adds what Loops lacks. So when rows arrive out of record-time order across
    windows, a value set by a row older than the contact's time but newer than the row that set the value Loops
    holds is not applied (found by this test: plan free at 10:01 and a row without plan at 10:07 in one window,
    plan pro at 10:06 in the next). The one-request-per-record reference would apply it. Out-of-order windows are
    therefore tested with one value of each property per person; within one window, and in record-time order,
    values still change freely (the outbox orders a window by record time), and so they do in the pinned examples.
    """
    owner = {email: user for user, emails in EMAILS.items() for email in emails}
    first: dict[str, str] = {}
    out = []
    for stream, record in records:
        traits = record.get("traits") or {}
        if "plan" in traits:
            person = record.get("userId") or owner[traits["email"]]
            plan = first.setdefault(person, traits["plan"])
            record = {**record, "traits": {**traits, "plan": plan}}
        out.append((stream, record))
    return out


def _call(n: int, kind: str, user: str, email: str | None = None) -> tuple[str, dict[str, Any]]:
    at = (START + dt.timedelta(minutes=n)).strftime("%Y-%m-%dT%H:%M:%SZ")
    base: dict[str, Any] = {"type": kind, "messageId": f"m{n}", "timestamp": at, "userId": user}
    if kind == "identify":
        return "identify", {**base, "traits": {"email": email}}
    extra = {"context": {"traits": {"email": email}}} if email else {}
    return "track", {**base, "event": "Viewed", "properties": {"n": n}, **extra}


#: Found by Hypothesis: an event by userId with another email (u1 → b@), then an identify back to the first email.
#: The identify was taken as unchanged (the outbox's picture of Loops ignored the email the event moved to).
EMAIL_BACK = [
    _call(0, "identify", "u1", "a@x.io"),
    _call(1, "track", "u1", "b@x.io"),
    _call(2, "identify", "u1", "a@x.io"),
]


#: Found by Hypothesis: whole tables in turn (identifies first), u1 moves from a@ to b@ (m12); the tracks come last,
#: and one of them (m7, older than the move) carries the old email beside the userId. Sent after the move, it gave the
#: contact its old email back. An event older than what Loops holds no longer carries a differing email.
OLD_EVENT_EMAIL_AFTER_MOVE = [
    _call(0, "identify", "u1", "a@x.io"),
    _call(1, "identify", "u1", "a@x.io"),
    _call(2, "track", "u1"),
    _call(3, "identify", "u1", "a@x.io"),
    _call(4, "track", "u1"),
    _call(5, "track", "u1"),
    _call(6, "track", "u1"),
    _call(7, "track", "u1", "a@x.io"),
    _call(8, "identify", "u1", "a@x.io"),
    _call(9, "track", "u3"),
    _call(10, "track", "u1"),
    _call(11, "track", "u1"),
    _call(12, "identify", "u1", "b@x.io"),
]


#: Found by Hypothesis: the newest email-only row (plan pro) arrives alone in a first window and creates the contact;
#: the person's userId rows, older, come in the next window. The ledger did not know the userId, so the older plan
#: was sent as new, and Loops (matching by email) ended with it. Shuffled by ``random.Random(1)``: m3, m0, m2, m1.
NEWEST_EMAIL_ROW_FIRST = [
    _call(0, "identify", "u1", "a@x.io"),
    ("identify", {"type": "identify", "messageId": "m1", "timestamp": "2026-11-01T10:01:00Z",
                  "traits": {"email": "a@x.io", "plan": "free"}}),
    ("track", {"type": "track", "event": "Viewed", "messageId": "m2", "timestamp": "2026-11-01T10:02:00Z",
               "properties": {"n": 2}, "userId": "u1"}),
    ("identify", {"type": "identify", "messageId": "m3", "timestamp": "2026-11-01T10:03:00Z",
                  "traits": {"email": "a@x.io", "plan": "pro"}}),
]  # fmt: skip


#: The examples above, fed exactly as they are (each has one value per property where it matters).
PINNED = (EMAIL_BACK, NEWEST_EMAIL_ROW_FIRST, OLD_EVENT_EMAIL_AFTER_MOVE)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@example(records=EMAIL_BACK, order="time", shuffle_seed=random.Random(0), cuts=set())
@example(records=NEWEST_EMAIL_ROW_FIRST, order="shuffled", shuffle_seed=random.Random(1), cuts={1})
@example(records=OLD_EVENT_EMAIL_AFTER_MOVE, order="tables", shuffle_seed=random.Random(1), cuts={1, 5})
@given(
    records=histories(),
    order=st.sampled_from(["time", "tables", "shuffled"]),
    shuffle_seed=st.randoms(use_true_random=False),
    cuts=st.sets(st.integers(min_value=1, max_value=13), max_size=4),
)
def test_loops_ends_as_record_time_order_says(
    records: list[tuple[str, dict[str, Any]]], order: str, shuffle_seed: Any, cuts: set[int]
) -> None:
    if order != "time" and cuts and not any(records is pinned for pinned in PINNED):
        records = one_plan_per_person(records)
    fed = list(records)
    if any(stream == "deletes" for stream, _ in records):
        # A delete arriving before older records of its person is handled (tombstones: tests/test_outbox.py), but
        # what the older records did before it cannot be known then: their events may still reach the contact the
        # person is recreated as. The reference cannot express that, so deletes come in record-time order here.
        order = "time"
    if order == "tables":
        tables = ["track", "deletes", "identify"]
        shuffle_seed.shuffle(tables)
        fed.sort(key=lambda pair: tables.index(pair[0]))
    elif order == "shuffled":
        shuffle_seed.shuffle(fed)
    loops = ModelLoops(properties=PROPERTIES)
    rejects = Rejects()
    stats = RunStats()
    with tempfile.TemporaryDirectory() as folder:
        ledger = Ledger(f"sqlite:///{Path(folder) / 'ledger.sqlite'}")
        outbox = Outbox(
            settings=OutboxSettings(workers=2),
            sender=loops,
            counters=lambda stream: stats.for_stream(stream, None),
            rejects=rejects,
            ledger=ledger,
            team="team-1",
            now=lambda: START + dt.timedelta(days=30),
        )
        try:
            for position, (stream, record) in enumerate(fed):
                if position in cuts:
                    outbox.flush()  # a window ends here (hold_rows, or a checkpoint)
                outbox.add(stream, [operation(stream, record)])
            outbox.flush()
            outbox.flush(final=True)
            assert outbox.waiting == 0
        finally:
            outbox.close()
            ledger.close()
    expected = reference(records)
    assert contacts_of(loops) == contacts_of(expected)
    assert events_of(loops) == events_of(expected)
