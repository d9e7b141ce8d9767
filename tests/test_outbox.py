"""The outbox in memory: per-contact order, coalescing, folding, the ledger filter and settling, with a fake sender.

No HTTP, no subprocess: each test builds operations with the real rule engine, hands them to an ``Outbox`` and reads
the requests the fake sender saw, in the order it saw them.
"""

from __future__ import annotations

import collections
import datetime as dt
import json
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from target_loops.ledger import Ledger, keyed_hash
from target_loops.operations import LoopsRequest, Operation, Outcome, OutcomeKind
from target_loops.outbox import Outbox, OutboxSettings, UndeliveredError
from target_loops.report import RunStats
from target_loops.rules import StreamMapper, parse_rules
from tests.loops_model import ModelLoops

NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.timezone.utc)
RULES = {r.stream: r for r in parse_rules([], use_defaults=True)}


def identify(user_id: str | None, email: str | None = None, at: str = "2026-11-01T10:00:00Z", **traits: Any) -> dict:
    traits = {**({"email": email} if email else {}), **traits}
    record: dict[str, Any] = {"type": "identify", "messageId": f"m-{id(traits)}", "timestamp": at, "traits": traits}
    if user_id:
        record["userId"] = user_id
    return record


def track(user_id: str | None, event: str, message_id: str, at: str = "2026-11-01T10:00:00Z", **props: Any) -> dict:
    record: dict[str, Any] = {"type": "track", "event": event, "messageId": message_id, "timestamp": at}
    record["properties"] = props
    if user_id:
        record["userId"] = user_id
    return record


def op(stream: str, record: dict, action: str | None = None) -> Operation:
    rule = RULES[stream]
    if action == "delete":
        rule = parse_rules([{"stream": stream, "action": "delete_contact"}], use_defaults=False)[0]
    result = StreamMapper(rule, stream).map(record)
    assert isinstance(result, Operation), result
    return result


class FakeLoops:
    """Answers like Loops would for the parts a test sets up; records every request in order."""

    def __init__(self, answers: Callable[[LoopsRequest], OutcomeKind] | None = None) -> None:
        self.seen: list[LoopsRequest] = []
        self.lock = threading.Lock()
        self.answers = answers or (lambda request: OutcomeKind.DELIVERED)

    def __call__(self, request: LoopsRequest) -> Outcome:
        with self.lock:
            self.seen.append(request)
        kind = self.answers(request)
        return Outcome(kind, status={OutcomeKind.REJECTED: 400, OutcomeKind.DUPLICATE: 409}.get(kind, 200), attempts=1)

    def paths(self) -> list[str]:
        return [r.path.rsplit("/", 1)[-1] for r in self.seen]


class Rejects:
    def __init__(self) -> None:
        self.lines: list[dict[str, Any]] = []

    def write(self, **line: Any) -> None:
        self.lines.append(line)


def make_outbox(
    sender: FakeLoops, ledger: Ledger | None = None, team: str | None = None, **settings: Any
) -> tuple[Outbox, RunStats, Rejects]:
    stats = RunStats()
    rejects = Rejects()
    outbox = Outbox(
        settings=OutboxSettings(**{"workers": 4, **settings}),
        sender=sender,
        counters=lambda stream: stats.for_stream(stream, None),
        rejects=rejects,
        ledger=ledger,
        team=team,
        now=lambda: NOW,
    )
    return outbox, stats, rejects


def test_an_update_rides_on_the_next_event_of_the_same_contact() -> None:
    loops = FakeLoops()
    outbox, stats, _ = make_outbox(loops)
    outbox.add("identify", [op("identify", identify("u1", "a@x.io", plan="pro"))])
    outbox.add("track", [op("track", track("u1", "Signed Up", "t1", at="2026-11-01T10:01:00Z"))])
    outbox.add("track", [op("track", track("u1", "Paid", "t2", at="2026-11-01T10:02:00Z"))])
    outbox.flush()
    assert loops.paths() == ["send", "send"]
    first, second = loops.seen
    assert first.body["eventName"] == "Signed Up" and first.body["plan"] == "pro"
    assert first.body["email"] == "a@x.io" and first.idempotency_key == RULES_KEY("Signed Up", "t1")
    assert "plan" not in second.body
    assert stats.streams["identify"].folded == 1


def RULES_KEY(event: str, message_id: str) -> str | None:
    """The idempotency key the rule engine derives for an event (whatever its derivation)."""
    return op("track", track("u1", event, message_id)).request.idempotency_key


def test_forty_users_one_identify_and_two_tracks_is_eighty_requests() -> None:
    loops = FakeLoops()
    outbox, _, _ = make_outbox(loops)
    for n in range(40):
        outbox.add("identify", [op("identify", identify(f"u{n}", f"p{n}@x.io", plan="pro"))])
    for n in range(40):
        for k in range(2):
            at = f"2026-11-01T10:0{k + 1}:00Z"
            outbox.add("track", [op("track", track(f"u{n}", "Viewed", f"t{n}-{k}", at=at))])
    outbox.flush()
    assert len(loops.seen) == 80
    assert sum(1 for r in loops.seen if r.body.get("plan") == "pro") == 40


def test_subscribed_is_never_folded() -> None:
    rule = parse_rules([{"stream": "identify", "action": "upsert_contact", "subscribed": "traits.subscribed",
                         "allow_resubscribe": True}], use_defaults=False)[0]  # fmt: skip
    update = StreamMapper(rule, "identify").map(identify("u1", "a@x.io", subscribed=True))
    assert isinstance(update, Operation)
    loops = FakeLoops()
    outbox, _, _ = make_outbox(loops)
    outbox.add("identify", [update])
    outbox.add("track", [op("track", track("u1", "Signed Up", "t1", at="2026-11-01T10:01:00Z"))])
    outbox.flush()
    assert loops.paths() == ["update", "send"]
    assert "subscribed" not in loops.seen[1].body


def test_a_duplicate_event_does_not_take_its_update_down_with_it() -> None:
    loops = FakeLoops(lambda r: OutcomeKind.DUPLICATE if r.path.endswith("send") else OutcomeKind.DELIVERED)
    outbox, stats, _ = make_outbox(loops)
    outbox.add("identify", [op("identify", identify("u1", "a@x.io", plan="pro"))])
    outbox.add("track", [op("track", track("u1", "Signed Up", "t1", at="2026-11-01T10:01:00Z"))])
    outbox.flush()
    assert loops.paths() == ["send", "update"]
    assert loops.seen[1].body == {"userId": "u1", "email": "a@x.io", "plan": "pro"}
    assert stats.streams["track"].duplicates == 1 and stats.streams["identify"].delivered == 1


def test_a_refused_folded_event_is_retried_as_two_requests_each_with_its_own_verdict() -> None:
    def answers(request: LoopsRequest) -> OutcomeKind:
        return OutcomeKind.REJECTED if "badProp" in request.body else OutcomeKind.DELIVERED

    loops = FakeLoops(answers)
    outbox, stats, rejects = make_outbox(loops)
    outbox.add("identify", [op("identify", identify("u1", "a@x.io", badProp="x"))])
    outbox.add("track", [op("track", track("u1", "Signed Up", "t1", at="2026-11-01T10:01:00Z"))])
    outbox.flush()
    assert loops.paths() == ["send", "update", "send"]
    assert [line["stream"] for line in rejects.lines] == ["identify"]
    assert stats.streams["track"].delivered == 1 and stats.streams["track"].rejected == 0


def test_record_time_decides_the_order_across_actions() -> None:
    loops = FakeLoops()
    outbox, _, _ = make_outbox(loops)
    outbox.add("identify", [op("identify", identify("u1", "a@x.io", at="2026-11-01T10:00:00Z", plan="A"))])
    outbox.add("deletes", [op("identify", identify("u1", "a@x.io", at="2026-11-01T11:00:00Z"), action="delete")])
    outbox.add("identify", [op("identify", identify("u1", "a@x.io", at="2026-11-01T12:00:00Z", plan="B"))])
    outbox.flush()
    assert loops.paths() == ["update", "delete", "update"]
    assert loops.seen[-1].body["plan"] == "B"


def test_a_delete_by_user_id_that_loops_does_not_know_deletes_the_contact_under_its_email() -> None:
    """A contact added by email alone (a form, a CSV) has no userId: the delete finds it by email."""
    loops = ModelLoops()
    loops.store.upsert_contact({"email": "a@x.io"})
    outbox, stats, _ = make_outbox(loops)
    outbox.add("deletes", [op("identify", identify("u1", "a@x.io"), action="delete")])
    outbox.flush()
    assert loops.paths() == ["delete", "find", "delete"]
    assert loops.seen[2].body == {"email": "a@x.io"}
    assert loops.contacts() == []
    assert stats.streams["deletes"].delivered == 1


def test_a_delete_never_deletes_another_person_who_owns_the_email_now() -> None:
    """u1 left; their old email now belongs to u2. Deleting u1 (unknown to Loops by userId) must not delete u2."""
    loops = ModelLoops()
    loops.store.upsert_contact({"email": "a@x.io", "userId": "u2"})
    outbox, stats, rejects = make_outbox(loops)
    outbox.add("deletes", [op("identify", identify("u1", "a@x.io"), action="delete")])
    outbox.flush()
    assert loops.paths() == ["delete", "find"]
    assert [c["userId"] for c in loops.contacts()] == ["u2"]
    assert stats.streams["deletes"].delivered == 1 and rejects.lines == []  # nothing of u1 was left to delete


def test_a_contact_recreated_after_a_delete_in_the_same_window_gets_its_dropped_values_back(tmp_path: Path) -> None:
    ledger = Ledger(f"sqlite:///{tmp_path / 'l.sqlite'}")
    loops = ModelLoops(properties=[{"key": "plan", "type": "string"}, {"key": "company", "type": "string"}])
    outbox, _, _ = make_outbox(loops, ledger, "team-1")
    outbox.add("identify", [op("identify", identify("u1", "a@x.io", at="2026-11-01T10:00:00Z", plan="pro",
                                                     company="Acme"))])  # fmt: skip
    outbox.add("deletes", [op("identify", identify("u1", "a@x.io", at="2026-11-01T11:00:00Z"), action="delete")])
    outbox.add("identify", [op("identify", identify("u1", "a@x.io", at="2026-11-01T12:00:00Z", plan="pro"))])
    outbox.flush()
    outbox.close()
    assert "company" not in loops.contacts()[0]
    outbox, _, _ = make_outbox(loops, ledger, "team-1")
    outbox.add("identify", [op("identify", identify("u1", "a@x.io", at="2026-11-01T13:00:00Z", plan="pro",
                                                     company="Acme"))])  # fmt: skip
    outbox.flush()
    outbox.close()
    assert loops.contacts()[0]["company"] == "Acme"


def test_a_newer_email_never_overtakes_an_older_event_that_carries_the_old_one() -> None:
    """track (old@, 10:00) then identify (new@, 11:00): Loops must end with new@, not have it moved back."""
    loops = ModelLoops()
    outbox, _, _ = make_outbox(loops)
    outbox.add("identify", [op("identify", identify("u1", "new@x.io", at="2026-11-01T11:00:00Z"))])
    event = track("u1", "Paid", "t1", at="2026-11-01T10:00:00Z")
    event["context"] = {"traits": {"email": "old@x.io"}}
    outbox.add("track", [op("track", event)])
    outbox.flush()
    assert [c["email"] for c in loops.contacts()] == ["new@x.io"]
    assert loops.paths() == ["send", "update"]


def test_an_email_only_event_between_two_emails_lands_on_the_person_and_makes_no_second_contact() -> None:
    loops = ModelLoops()
    outbox, _, _ = make_outbox(loops)
    outbox.add("identify", [op("identify", identify("u1", "a@x.io", at="2026-11-01T10:00:00Z"))])
    outbox.add("track", [op("track", track(None, "Opened", "t1", at="2026-11-01T10:30:00Z", email="a@x.io"))])
    outbox.add("identify", [op("identify", identify("u1", "b@x.io", at="2026-11-01T11:00:00Z"))])
    outbox.flush()
    assert [(c["userId"], c["email"]) for c in loops.contacts()] == [("u1", "b@x.io")]
    assert [e["userId"] or e["email"] for e in loops.events()] == ["u1"]


def test_updates_that_agree_with_the_events_between_them_still_become_one_request() -> None:
    loops = ModelLoops(properties=[{"key": "plan", "type": "string"}])
    outbox, stats, _ = make_outbox(loops)
    outbox.add("identify", [op("identify", identify("u1", "a@x.io", at="2026-11-01T10:00:00Z", plan="free"))])
    outbox.add("track", [op("track", track("u1", "Viewed", "t1", at="2026-11-01T10:30:00Z"))])
    outbox.add("identify", [op("identify", identify("u1", "a@x.io", at="2026-11-01T11:00:00Z", plan="pro"))])
    outbox.flush()
    assert loops.paths() == ["send"]
    assert loops.contacts()[0]["plan"] == "pro"
    assert stats.streams["identify"].coalesced == 1 and stats.streams["identify"].folded == 1


def test_events_before_their_contact_in_an_earlier_window_wait_for_it_and_are_all_delivered() -> None:
    """A warehouse tap sends the tracks table (userId only) before identifies, in different windows."""
    loops = ModelLoops()
    outbox, stats, rejects = make_outbox(loops, hold_rows=1_000)
    outbox.add("track", [op("track", track(f"u{n}", "Viewed", f"t{n}")) for n in range(30)])
    outbox.flush()
    assert outbox.waiting == 30 and stats.streams["track"].rejected == 0
    first_window = len(loops.seen)
    outbox.add("identify", [op("identify", identify(f"u{n}", f"u{n}@x.io", at="2026-11-01T11:00:00Z"))
                            for n in range(30)])  # fmt: skip
    outbox.flush()
    assert outbox.waiting == 0 and rejects.lines == []
    assert len(loops.events()) == 30 and stats.streams["track"].delivered == 30
    assert first_window == 30  # one refused request per person, not one per event


def test_an_event_whose_contact_never_comes_is_rejected_after_the_end_of_the_input() -> None:
    loops = ModelLoops()
    outbox, stats, rejects = make_outbox(loops)
    outbox.add("track", [op("track", track("ghost", "Viewed", "t1")), op("track", track("ghost", "Paid", "t2"))])
    outbox.flush()
    assert outbox.waiting == 2 and rejects.lines == []
    outbox.flush(final=True)
    assert outbox.waiting == 0
    assert [line["reason"] for line in rejects.lines] == ["http_400", "http_400"]
    assert stats.streams["track"].rejected == 2


def test_an_event_that_waited_does_not_move_a_newer_contact_value_back(tmp_path: Path) -> None:
    rule = parse_rules([{"stream": "track", "action": "send_event", "properties": "properties.contact"}],
                       use_defaults=False)[0]  # fmt: skip
    record = track("u1", "Downgraded", "t1", at="2026-11-01T10:00:00Z")
    record["properties"] = {"contact": {"plan": "free"}}
    event = StreamMapper(rule, "track").map(record)
    assert isinstance(event, Operation) and event.request.body["plan"] == "free"
    ledger = Ledger(f"sqlite:///{tmp_path / 'l.sqlite'}")
    loops = ModelLoops(properties=[{"key": "plan", "type": "string"}])
    outbox, _, rejects = make_outbox(loops, ledger, "team-1")
    outbox.add("track", [event])
    outbox.flush()
    outbox.add("identify", [op("identify", identify("u1", "a@x.io", at="2026-11-01T11:00:00Z", plan="pro"))])
    outbox.flush()
    outbox.close()
    assert rejects.lines == [] and len(loops.events()) == 1
    assert loops.contacts()[0]["plan"] == "pro"


def test_what_an_event_writes_to_the_contact_is_in_the_ledger(tmp_path: Path) -> None:
    """An update (plan pro), then an event that sets plan free, then the same update again next run: Loops holds
    free, so the update must be sent (0.2.0's ledger only knew the update and skipped it as unchanged)."""
    rule = parse_rules([{"stream": "track", "action": "send_event", "properties": "properties.contact"}],
                       use_defaults=False)[0]  # fmt: skip
    record = track("u1", "Downgraded", "t1", at="2026-11-01T11:00:00Z")
    record["properties"] = {"contact": {"plan": "free"}}
    event = StreamMapper(rule, "track").map(record)
    assert isinstance(event, Operation)
    ledger = Ledger(f"sqlite:///{tmp_path / 'l.sqlite'}")
    loops = ModelLoops(properties=[{"key": "plan", "type": "string"}])
    outbox, _, _ = make_outbox(loops, ledger, "team-1", fold_updates=False)
    outbox.add("identify", [op("identify", identify("u1", "a@x.io", at="2026-11-01T10:00:00Z", plan="pro"))])
    outbox.add("track", [event])
    outbox.flush()
    outbox.close()
    assert loops.contacts()[0]["plan"] == "free"
    outbox, _, _ = make_outbox(loops, ledger, "team-1")
    outbox.add("identify", [op("identify", identify("u1", "a@x.io", at="2026-11-01T12:00:00Z", plan="pro"))])
    outbox.flush()
    outbox.close()
    assert loops.contacts()[0]["plan"] == "pro"


def test_a_record_from_the_future_does_not_freeze_a_contact(caplog: pytest.LogCaptureFixture) -> None:
    loops = FakeLoops()
    outbox, _, _ = make_outbox(loops)
    outbox.add("identify", [op("identify", identify("u1", "a@x.io", at="2999-01-01T00:00:00Z", plan="old"))])
    outbox.add("identify", [op("identify", identify("u1", "a@x.io", at="2026-12-01T12:00:30Z", plan="new"))])
    outbox.flush()
    assert loops.seen[-1].body["plan"] == "new"
    assert outbox.clamped == 1
    assert "in the future" in caplog.text


def test_one_person_with_and_without_user_id_is_one_contact_in_record_order() -> None:
    loops = FakeLoops()
    outbox, _, _ = make_outbox(loops)
    outbox.add("crm", [op("identify", identify(None, "a@x.io", at="2026-11-01T12:00:00Z", plan="new"))])
    outbox.add("identify", [op("identify", identify("u1", "a@x.io", at="2026-11-01T10:00:00Z", plan="old"))])
    outbox.flush()
    assert len(loops.seen) == 1
    assert loops.seen[0].body == {"email": "a@x.io", "userId": "u1", "plan": "new"}


def test_two_event_tables_with_overlapping_ids_are_different_events() -> None:
    loops = FakeLoops()
    outbox, stats, _ = make_outbox(loops)
    rows = [{"id": n, "user_id": "u1", "email": "a@x.io", "event_text": name} for name in ("Order", "Refund")
            for n in (1, 2, 3)]  # fmt: skip
    rules = parse_rules([{"stream": "*", "action": "send_event"}], use_defaults=False)
    for row in rows:
        stream = row["event_text"].lower() + "s"
        result = StreamMapper(rules[0], stream).map(row)
        assert isinstance(result, Operation)
        outbox.add(stream, [result])
    outbox.flush()
    assert len(loops.seen) == 6
    assert len({r.idempotency_key for r in loops.seen}) == 6
    assert stats.streams["refunds"].duplicates == 0


def test_a_transient_failure_stops_that_contact_and_fails_the_flush() -> None:
    loops = FakeLoops(lambda r: OutcomeKind.FAILED if r.path.endswith("update") else OutcomeKind.DELIVERED)
    outbox, _, _ = make_outbox(loops, fold_updates=False)
    outbox.add("identify", [op("identify", identify("u1", "a@x.io", plan="pro"))])
    outbox.add("track", [op("track", track("u1", "Signed Up", "t1", at="2026-11-01T10:01:00Z"))])
    with pytest.raises(UndeliveredError, match="2 request"):
        outbox.flush()
    assert loops.paths() == ["update"]  # the event after it was not sent out of order


def test_the_ledger_is_per_contact_across_streams(tmp_path: Path) -> None:
    ledger = Ledger(f"sqlite:///{tmp_path / 'l.sqlite'}")
    loops = FakeLoops()
    for stream, plan, at in (("crm", "pro", "10"), ("billing", "free", "11"), ("crm", "pro", "12")):
        outbox, _, _ = make_outbox(loops, ledger, "team-1")
        outbox.add(stream, [op("identify", identify("u1", "a@x.io", at=f"2026-11-01T{at}:00:00Z", plan=plan))])
        outbox.flush()
        outbox.close()
    assert [r.body["plan"] for r in loops.seen] == ["pro", "free", "pro"]


def test_the_ledger_links_an_email_only_row_to_its_user(tmp_path: Path) -> None:
    ledger = Ledger(f"sqlite:///{tmp_path / 'l.sqlite'}")
    loops = FakeLoops()
    outbox, _, _ = make_outbox(loops, ledger, "team-1")
    outbox.add("identify", [op("identify", identify("u1", "a@x.io", at="2026-11-01T12:00:00Z", plan="new"))])
    outbox.flush()
    outbox.close()
    outbox, stats, _ = make_outbox(loops, ledger, "team-1")
    # An older email-only row of the same person: Loops already holds a newer plan, so nothing is sent.
    outbox.add("crm", [op("identify", identify(None, "a@x.io", at="2026-11-01T10:00:00Z", plan="old"))])
    outbox.flush()
    assert len(loops.seen) == 1
    assert stats.streams["crm"].unchanged == 1


def test_the_ledger_holds_hashes_not_people(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite"
    ledger = Ledger(f"sqlite:///{path}")
    outbox, _, _ = make_outbox(FakeLoops(), ledger, "team-1")
    outbox.add("identify", [op("identify", identify("user-4711", "ada@example.com", plan="pro"))])
    outbox.add("track", [op("track", track("user-4711", "Signed Up", "msg-0815", at="2026-11-01T10:01:00Z"))])
    outbox.flush()
    outbox.close()
    ledger.close()
    dump = "\n".join(sqlite3.connect(path).iterdump())
    for secret in ("user-4711", "ada@example.com", "msg-0815", "Signed Up"):
        assert secret not in dump
    assert keyed_hash("team-1", "u:user-4711") in dump.lower()  # stored as bytes: SQLite dumps them as X'…'


def test_accepted_work_reaches_the_ledger_within_a_second_while_a_flush_is_still_sending(tmp_path: Path) -> None:
    ledger = Ledger(f"sqlite:///{tmp_path / 'l.sqlite'}")
    gate = threading.Event()
    sent = collections.Counter[str]()

    def slow(request: LoopsRequest) -> OutcomeKind:
        sent["n"] += 1
        if sent["n"] > 5:
            gate.wait(5)  # the rest of the flush hangs, as a kill -9 would find it
        return OutcomeKind.DELIVERED

    outbox, _, _ = make_outbox(FakeLoops(slow), ledger, "team-1", workers=1)
    outbox.add("track", [op("track", track("u1", "E", f"t{n}", at=f"2026-11-01T10:0{n}:00Z")) for n in range(8)])
    flushing = threading.Thread(target=outbox.flush)
    flushing.start()
    deadline = threading.Event()
    deadline.wait(1.5)
    delivered = ledger.delivered_events(
        "team-1", [keyed_hash("team-1", RULES_KEY("E", f"t{n}") or "") for n in range(8)]
    )
    gate.set()
    flushing.join()
    outbox.close()
    assert len(delivered) == 5


def test_a_full_window_is_settled_before_the_next_so_the_ledger_filter_sees_what_it_delivered(
    tmp_path: Path,
) -> None:
    """A full window (``hold_rows``) is sent and settled, ledger writes included, before the rows after it are
    planned: a contact's requests never overtake each other across windows, and a row repeating what the window
    before delivered is not sent again."""
    ledger = Ledger(f"sqlite:///{tmp_path / 'l.sqlite'}")
    loops = FakeLoops()
    outbox, stats, _ = make_outbox(loops, ledger, "team-1", hold_rows=2)
    outbox.add("identify", [op("identify", identify(u, f"{u}@x.io", plan="A")) for u in ("u1", "u2")])
    assert outbox.held == 0 and len(loops.seen) == 2
    outbox.add("identify", [op("identify", identify("u1", "u1@x.io", at="2026-11-01T11:00:00Z", plan="B"))])
    outbox.add("identify", [op("identify", identify("u2", "u2@x.io", at="2026-11-01T11:00:00Z", plan="A"))])
    outbox.flush()
    outbox.close()
    seen = [(r.body["userId"], r.body["plan"]) for r in loops.seen]
    assert sorted(seen[:2]) == [("u1", "A"), ("u2", "A")] and seen[2:] == [("u1", "B")]
    assert stats.streams["identify"].unchanged == 1  # u2's second row: the window before delivered plan A
    assert stats.streams["identify"].delivered == 3


def test_events_replayed_in_the_same_window_are_sent_once() -> None:
    loops = FakeLoops()
    outbox, stats, _ = make_outbox(loops)
    outbox.add("track", [op("track", track("u1", "Signed Up", "t1")) for _ in range(3)])
    outbox.flush()
    assert len(loops.seen) == 1 and stats.streams["track"].duplicates == 2


def test_event_properties_are_listed_per_event_name() -> None:
    outbox, _, _ = make_outbox(FakeLoops())
    outbox.add("track", [op("track", track("u1", "Order Completed", "t1", revenue=10, currency="EUR", gift=False))])
    outbox.flush()
    assert outbox.event_properties == {
        "Order Completed": {"revenue": "number", "currency": "string", "gift": "boolean"}
    }
    json.dumps(outbox.event_properties)
