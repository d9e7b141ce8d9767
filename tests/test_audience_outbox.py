"""Audiences in memory: membership in the ledger, the closing, the guard and leaves as outbox operations (issue 19).

No HTTP: a fake sender answers, a real SQLite ledger in ``tmp_path`` keeps the members, and each test counts the
requests the sender saw and the rows the ledger holds.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from target_loops.audience import Audiences, AudienceSpec
from target_loops.fields import RuleError
from target_loops.ledger import SCHEMA_VERSION, Ledger, members
from target_loops.operations import LoopsRequest, Operation, OutcomeKind
from target_loops.outbox import Outbox, OutboxSettings, UndeliveredError
from target_loops.report import RunStats
from target_loops.rules import StreamMapper, parse_rules
from tests.test_outbox import FakeLoops, Rejects

TEAM = "team-a"
LIST = "cm06f5v0e45nf0ml5754o9cix"
STREAM = "beta_users"


def rule(**keys: Any) -> Any:
    raw = {"stream": STREAM, "action": "upsert_contact", "on_leave": "remove_from_lists", "full_table": True, **keys}
    return parse_rules([raw], use_defaults=False)[0]


class Run:
    """One run of the target's audience path: rows in, the closing at the end, what the fake Loops saw."""

    def __init__(self, ledger: Ledger, loops: FakeLoops, spec_rule: Any, *, now: float, dry: bool = False, **kw: Any):
        self.stats = RunStats()
        self.rejects = Rejects()
        self.audiences = Audiences(
            ledger=ledger,
            team=TEAM,
            max_leave_fraction=kw.get("fraction", 0.25),
            min_members=kw.get("floor", 5),
            dry_run=dry,
            now=lambda: now,
        )
        self.outbox = Outbox(
            settings=OutboxSettings(workers=1 if dry else 4),
            sender=loops,
            counters=lambda stream: self.stats.for_stream(stream, None),
            rejects=self.rejects,
            ledger=ledger,
            team=TEAM,
            audiences=self.audiences,
        )
        spec = AudienceSpec.of(spec_rule)
        assert spec is not None
        self.audiences.register(STREAM, spec)
        self.mapper = StreamMapper(spec_rule, STREAM)

    def rows(self, ids: range | list[int], version: Any = None) -> None:
        ops = []
        for n in ids:
            row = {"user_id": f"u{n}", "email": f"p{n}@x.io", "plan": "beta", f"mailing_lists_{LIST}": True}
            op = self.mapper.map(row)
            assert isinstance(op, Operation)
            op.audience, op.version = STREAM, self.audiences.version_for(STREAM, version)
            ops.append(op)
        self.outbox.add(STREAM, ops)

    def end(self) -> None:
        """A normal end of input: send what is held, close, send the leaves."""
        self.outbox.flush()
        for stream, ops in self.audiences.close(lambda s: self.stats.for_stream(s, None).rejected):
            self.outbox.add(stream, ops)
        self.outbox.flush()
        if self.outbox.waiting:  # as the target does: one last try of what waits, then Loops' refusal is final
            self.outbox.flush(final=True)
        self.outbox.close()


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    return Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}")


def member_rows(ledger: Ledger) -> int:
    with ledger.engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(members)).scalar_one())


def leaves(loops: FakeLoops) -> list[dict[str, Any]]:
    return [r.body for r in loops.seen if (r.body.get("mailingLists") or {}).get(LIST) is False]


def test_members_not_seen_in_a_complete_run_leave_and_only_they(ledger: Ledger) -> None:
    loops = FakeLoops()
    first = Run(ledger, loops, rule(), now=1000)
    first.rows(range(10))
    first.end()
    assert member_rows(ledger) == 10 and leaves(loops) == []
    loops.seen.clear()
    second = Run(ledger, loops, rule(), now=2000)
    second.rows([n for n in range(10) if n != 4])
    second.end()
    assert [r.body for r in loops.seen] == [{"userId": "u4", "mailingLists": {LIST: False}}]  # unchanged rows: 0
    assert second.stats.streams[STREAM].delivered == 1
    assert member_rows(ledger) == 9  # the leave settled: u4 is no longer a member
    loops.seen.clear()
    third = Run(ledger, loops, rule(), now=3000)
    third.rows([n for n in range(10) if n != 4])
    third.end()
    assert loops.seen == []  # nobody leaves twice


def test_runs_within_one_second_after_a_guarded_run_still_tell_who_is_gone(ledger: Ledger) -> None:
    """A run stopped by the guard leaves the audience unclosed: the next run, started within the same second of the
    clock, must still hold its people at a newer version than the stopped run saw them at, or nobody ever leaves."""
    loops = FakeLoops()
    first = Run(ledger, loops, rule(), now=1000)
    first.rows(range(20))
    first.end()
    cut = Run(ledger, loops, rule(), now=1001)
    cut.rows(range(3))  # 17 of 20: stopped by the guard
    cut.end()
    assert leaves(loops) == [] and cut.audiences.problems
    again = Run(ledger, loops, rule(), now=1001)  # the same second as the cut run
    again.rows(range(1, 20))
    again.end()
    assert [b["userId"] for b in leaves(loops)] == ["u0"]


def test_the_guard_holds_every_leave_back_above_max_leave_fraction_but_not_below_the_floor(ledger: Ledger) -> None:
    loops = FakeLoops()
    first = Run(ledger, loops, rule(), now=1000)
    first.rows(range(8))
    first.end()
    loops.seen.clear()
    cut = Run(ledger, loops, rule(), now=2000)
    cut.rows(range(6))  # 2 of 8 = 25%: not more than 0.25
    cut.end()
    assert len(leaves(loops)) == 2 and cut.audiences.problems == []
    loops.seen.clear()
    cut = Run(ledger, loops, rule(), now=3000)
    cut.rows(range(4))  # 2 of 6 = 33%
    cut.end()
    assert leaves(loops) == []
    assert cut.audiences.problems and "2 of 6" in cut.audiences.problems[0]
    assert "max_leave_fraction 0.25" in cut.audiences.problems[0]
    assert member_rows(ledger) == 6  # nobody removed from the ledger either
    small = Run(ledger, loops, rule(), now=4000, floor=7)  # 6 members, below a floor of 7: the guard does not fire
    small.rows(range(1))
    small.end()
    assert len(leaves(loops)) == 5 and small.audiences.problems == []


def test_a_refused_leave_goes_to_the_rejects_file_and_a_failed_one_is_tried_again_next_closing(ledger: Ledger) -> None:
    first = Run(ledger, FakeLoops(), rule(), now=1000, floor=100)
    first.rows(range(3))
    first.end()
    refused = FakeLoops(lambda r: OutcomeKind.REJECTED if r.body.get("userId") == "u0" else OutcomeKind.DELIVERED)
    second = Run(ledger, refused, rule(), now=2000, floor=100)
    second.rows([2])
    second.end()
    assert [line["record"]["audience"] for line in second.rejects.lines] == [STREAM]
    assert member_rows(ledger) == 1  # a refusal is a final answer: u0 and u1 are no longer members
    first = Run(ledger, FakeLoops(), rule(), now=3000, floor=100)
    first.rows(range(3))
    first.end()
    failing = FakeLoops(lambda r: OutcomeKind.FAILED)
    broken = Run(ledger, failing, rule(), now=4000, floor=100)
    broken.rows([2])
    with pytest.raises(UndeliveredError):
        broken.end()
    assert member_rows(ledger) == 3  # not delivered: still members
    loops = FakeLoops()
    retry = Run(ledger, loops, rule(), now=5000, floor=100)
    retry.rows([2])
    retry.end()
    assert sorted(b["userId"] for b in leaves(loops)) == ["u0", "u1"]


def test_record_versions_decide_who_leaves_at_activate_version(ledger: Ledger) -> None:
    no_full = rule(full_table=False)
    loops = FakeLoops()
    first = Run(ledger, loops, no_full, now=1000)
    first.audiences.activated(STREAM, 500)
    first.rows(range(6), version=500)
    first.end()
    second = Run(ledger, loops, no_full, now=2000)
    second.audiences.activated(STREAM, 600)
    second.rows(range(1, 6), version=600)
    second.rows([0], version=500)  # a row of the older version: it does not hold its person in version 600
    second.end()
    assert [b["userId"] for b in leaves(loops)] == ["u0"]


def test_the_dry_run_plans_leaves_from_what_it_read_and_writes_nothing(ledger: Ledger, tmp_path: Path) -> None:
    first = Run(ledger, FakeLoops(), rule(), now=1000)
    first.rows(range(10))
    first.end()
    read_only = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}", read_only=True)
    planned = FakeLoops(lambda r: OutcomeKind.PLANNED)
    dry = Run(read_only, planned, rule(), now=2000, dry=True)
    dry.rows(range(1, 10))
    dry.end()
    assert [b["userId"] for b in leaves(planned)] == ["u0"]
    assert member_rows(ledger) == 10
    assert [(c.members, c.left, c.joined) for c in dry.audiences.closings] == [(10, 1, 0)]


def test_an_existing_ledger_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    Ledger(f"sqlite:///{path}").close()
    with sqlite3.connect(path) as conn:  # as schema 2 left it: no audience tables
        conn.execute("DROP TABLE target_loops_members")
        conn.execute("DROP TABLE target_loops_audiences")
        conn.execute("UPDATE target_loops_meta SET value = '2' WHERE key = 'schema_version'")
        conn.execute(
            "CREATE TABLE target_loops_contacts_v2 (team VARCHAR(64), identity VARCHAR(32), email VARCHAR(32), "
            "state TEXT, fingerprint VARCHAR(32), seen_at VARCHAR(40), delivered_at FLOAT)"
        )
        row = ("a" * 32, "f" * 32)
        conn.execute("INSERT INTO target_loops_contacts_v2 VALUES ('t', ?, NULL, '{}', ?, NULL, 1.0)", row)
    ledger = Ledger(f"sqlite:///{path}")
    assert ledger.audience("t", "a") == (1, None)
    assert ledger.contact_states("t", ["a" * 32])["a" * 32].fingerprint == "f" * 32
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT value FROM target_loops_meta WHERE key='schema_version'").fetchone() == (
            str(SCHEMA_VERSION),
        )


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"on_leave": "remove"}, "is not one of remove_from_lists"),
        ({"on_leave": ["delete", "unsubscribe"]}, '"delete" with changes'),
        ({"on_leave": {"event": "Left: beta"}}, 'contains ":"'),
        ({"on_join": "Joined"}, '"on_join" takes an event as {"event": "Left beta"}'),
        ({"on_leave": [], "full_table": True}, '"on_leave" is empty'),
        ({"full_table": True}, '"full_table" does nothing without "on_leave"'),
        ({"full_table": "yes", "on_leave": "delete"}, '"full_table" must be true or false'),
    ],
)
def test_audience_keys_are_checked_with_one_line_naming_the_rule(keys: dict[str, Any], message: str) -> None:
    with pytest.raises(RuleError) as caught:
        parse_rules([{"stream": STREAM, "action": "upsert_contact", **keys}], use_defaults=False)
    text = str(caught.value)
    assert message in text and "mappings[0] (stream 'beta_users', action upsert_contact)" in text
    assert "\n" not in text


def test_a_segment_rule_refuses_audience_keys() -> None:
    with pytest.raises(RuleError, match="unknown key"):
        parse_rules([{"stream": "x", "action": "segment", "on_leave": "delete"}], use_defaults=False)


def test_join_and_leave_events_carry_a_key_from_audience_person_and_version(ledger: Ledger) -> None:
    spec = rule(on_leave={"event": "Left beta"}, on_join={"event": "Joined beta"})
    first = Run(ledger, FakeLoops(), spec, now=1000, floor=100)
    first.rows(range(3))
    first.end()
    loops = FakeLoops()
    second = Run(ledger, loops, spec, now=2000, floor=100)
    second.rows(range(1, 4))
    second.end()
    events = {r.body["eventName"]: r for r in loops.seen if r.path.endswith("events/send")}
    assert events["Left beta"].body == {"userId": "u0", "eventName": "Left beta"}
    assert events["Joined beta"].body == {"userId": "u3", "eventName": "Joined beta"}
    keys = {r.idempotency_key for r in events.values()}
    assert len(keys) == 2 and all(k and k.startswith("tl-") and len(k) <= 100 for k in keys)
    assert isinstance(events["Left beta"], LoopsRequest)


def test_a_leave_by_email_alone_is_not_sent_to_an_email_loops_no_longer_has(ledger: Ledger) -> None:
    """An update by email creates a subscribed contact when none has the email: a leaver deleted by hand since must
    not come back. The email is looked up first; no contact, no leave (and the membership ends)."""
    by_email = rule(user_id={"value": None})

    class Loops(FakeLoops):
        def __call__(self, request: LoopsRequest) -> Any:
            outcome = super().__call__(request)
            if request.method == "GET":
                outcome.body = [] if "p0%40x.io" in request.path else [{"email": "p1@x.io"}]
            return outcome

    first = Run(ledger, FakeLoops(), by_email, now=1000, floor=100)
    first.rows(range(4))
    first.end()
    loops = Loops()
    second = Run(ledger, loops, by_email, now=2000, floor=100)
    second.rows(range(2, 4))
    second.end()
    assert [(r.method, r.body) for r in loops.seen if r.method != "GET"] == [
        ("PUT", {"email": "p1@x.io", "mailingLists": {LIST: False}})
    ]
    assert len([r for r in loops.seen if r.method == "GET"]) == 2
    assert member_rows(ledger) == 2
