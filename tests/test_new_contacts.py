"""new_contacts in memory: the outbox's planning with the policy, against Loops' model (tests/loops_model.py).

Loops starts "Contact added" loops for every contact created through the API and none for a CSV upload
(https://loops.so/docs/loop-builder/loop-triggers): ``skip`` creates nobody and holds back whom Loops lacks,
``csv`` exports whom the ledger does not know. Counted from the model's store, never from the outbox's word.
"""

from __future__ import annotations

import csv
import io
import urllib.parse
from pathlib import Path
from typing import Any

from target_loops.ledger import Ledger
from target_loops.newcontacts import NOT_IN_LOOPS, PENDING_IMPORT, NewContacts
from target_loops.outbox import Outbox, OutboxSettings
from target_loops.report import RunStats
from tests.loops_model import ModelLoops
from tests.test_outbox import NOW, Rejects, identify, op, track

TEAM = "team-a"


def finder(loops: ModelLoops) -> Any:
    """``GET /v1/contacts/find?...`` answered by the model, as the client's ``get_json`` would."""
    calls: list[str] = []

    def find(path: str) -> Any:
        calls.append(path)
        query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(path).query))
        return loops.store.find_contacts(query.get("email"), query.get("userId"))

    find.calls = calls  # type: ignore[attr-defined]
    return find


def make(loops: ModelLoops, ledger: Ledger, policy: str, **kw: Any) -> tuple[Outbox, RunStats, Rejects, NewContacts]:
    stats, rejects = RunStats(), Rejects()
    policy_ = NewContacts(policy, finder=kw.pop("find", None) or finder(loops), **kw)
    outbox = Outbox(
        settings=OutboxSettings(workers=2),
        sender=loops,
        counters=lambda stream: stats.for_stream(stream, None),
        rejects=rejects,
        ledger=ledger,
        team=TEAM,
        now=lambda: NOW,
        new_contacts=policy_,
    )
    return outbox, stats, rejects, policy_


def seeded() -> ModelLoops:
    """A team that already has Ada (added by a CSV upload, so no "Contact added" loop ran for her)."""
    loops = ModelLoops(properties=[{"key": "plan", "type": "string"}, {"key": "logins", "type": "number"}])
    loops.store.upload_csv("email,userId,plan\nada@x.io,u1,free\n")
    return loops


def feed(outbox: Outbox) -> None:
    outbox.add("identify", [op("identify", identify("u1", "ada@x.io", plan="pro"))])
    outbox.add("identify", [op("identify", identify("u2", "bob@x.io", plan="free", at="2026-11-01T10:00:01Z"))])
    outbox.add("track", [op("track", track("u2", "Signed Up", "t2", at="2026-11-01T10:00:02Z"))])
    outbox.add("track", [op("track", track("u1", "Paid", "t1", at="2026-11-01T10:00:03Z"))])
    outbox.flush()
    outbox.close()


def test_skip_updates_the_people_loops_has_and_holds_back_the_rest(tmp_path: Path) -> None:
    loops = seeded()
    ledger = Ledger(f"sqlite:///{tmp_path / 'l.sqlite'}")
    outbox, stats, rejects, policy = make(loops, ledger, "skip")
    feed(outbox)
    assert loops.store.created_through_api() == []
    assert loops.store.find(user_id="u1")["plan"] == "pro"
    assert [e["eventName"] for e in loops.store.events()] == ["Paid"]
    assert loops.store.find(user_id="u2") is None
    held = [(line["stream"], line["reason"]) for line in rejects.lines]
    assert sorted(held) == [("identify", NOT_IN_LOOPS), ("track", NOT_IN_LOOPS)]
    assert all(line["held"] for line in rejects.lines)
    assert stats.for_stream("track", None).reasons[NOT_IN_LOOPS] == 1
    assert policy.report()["unknown_to_ledger"] == 2 and policy.report()["not_in_loops"] == 1

    # The lookup is cached in the ledger: the next run finds Ada known and asks Loops about Bob alone.
    loops.seen.clear()
    outbox, _, rejects, policy = make(loops, ledger, "skip", find=(find := finder(loops)))
    feed(outbox)
    assert find.calls == ["/v1/contacts/find?userId=u2", "/v1/contacts/find?email=bob%40x.io"]
    assert loops.store.created_through_api() == []


def test_csv_writes_unknown_people_with_loops_column_names_and_creates_nobody(tmp_path: Path) -> None:
    loops = ModelLoops(properties=[{"key": "plan", "type": "string"}, {"key": "logins", "type": "number"}])
    ledger = Ledger(f"sqlite:///{tmp_path / 'l.sqlite'}")
    path = tmp_path / "new.csv"
    outbox, stats, rejects, policy = make(loops, ledger, "csv", path=str(path))
    outbox.add("identify", [op("identify", identify("u1", "ada@x.io", plan="free", firstName="Ada", logins=1))])
    outbox.add("identify", [op("identify", identify("u1", "ada@x.io", plan="pro", at="2026-11-01T11:00:00Z"))])
    outbox.flush()
    outbox.add("identify", [op("identify", identify("u2", "bob@x.io", logins=4))])
    outbox.add("track", [op("track", track("u1", "Signed Up", "t1"))])
    outbox.flush()
    outbox.close()
    assert loops.seen == []  # nothing through the API
    assert policy.unwritten and not path.exists()
    policy.write(ledger, TEAM)
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    assert list(rows[0]) == ["email", "firstName", "userId", "logins", "plan"]
    assert rows == [
        {"email": "ada@x.io", "firstName": "Ada", "userId": "u1", "logins": "1", "plan": "pro"},  # merged, latest wins
        {"email": "bob@x.io", "firstName": "", "userId": "u2", "logins": "4", "plan": ""},
    ]
    assert [(line["stream"], line["reason"]) for line in rejects.lines] == [("track", PENDING_IMPORT)]
    assert stats.for_stream("identify", None).exported == 3
    assert ledger.pending_exports(TEAM) == {str(path.resolve()): 2}
    assert not list(tmp_path.glob(".new.csv.*"))  # the temporary file was moved into place


def test_an_existing_csv_is_never_overwritten(tmp_path: Path) -> None:
    loops = ModelLoops()
    ledger = Ledger(f"sqlite:///{tmp_path / 'l.sqlite'}")
    path = tmp_path / "new.csv"
    path.write_text("someone else's file\n")
    outbox, _, _, policy = make(loops, ledger, "csv", path=str(path))
    outbox.add("identify", [op("identify", identify("u1", "ada@x.io"))])
    outbox.flush()
    outbox.close()
    written = Path(policy.write(ledger, TEAM) or "")
    assert path.read_text() == "someone else's file\n"
    assert written.parent == tmp_path and written.name.startswith("new.") and written.suffix == ".csv"
    assert "ada@x.io" in written.read_text()


def export_then(tmp_path: Path, *, upload: bool) -> tuple[ModelLoops, Ledger, Path]:
    loops = ModelLoops(properties=[{"key": "plan", "type": "string"}])
    ledger = Ledger(f"sqlite:///{tmp_path / 'l.sqlite'}")
    path = tmp_path / "new.csv"
    outbox, _, _, policy = make(loops, ledger, "csv", path=str(path))
    for n in range(30):
        outbox.add("identify", [op("identify", identify(f"u{n}", f"p{n}@x.io", plan="free"))])
    outbox.flush()
    outbox.close()
    policy.write(ledger, TEAM)
    if upload:
        assert loops.store.upload_csv(path.read_text())["created"] == 30
    return loops, ledger, path


def test_after_the_upload_a_sample_is_found_and_only_later_changes_are_sent(tmp_path: Path) -> None:
    loops, ledger, _ = export_then(tmp_path, upload=True)
    outbox, _, rejects, policy = make(loops, ledger, "create", find=(find := finder(loops)))
    for n in range(30):
        plan = "pro" if n == 7 else "free"
        outbox.add("identify", [op("identify", identify(f"u{n}", f"p{n}@x.io", plan=plan))])
    outbox.flush()
    outbox.close()
    assert len(find.calls) == 20  # the sample, then the upload counts for all 30
    assert [(r.body["userId"], r.body["plan"]) for r in loops.seen] == [("u7", "pro")]
    assert loops.store.created_through_api() == [] and rejects.lines == []
    assert policy.report()["confirmed_uploaded"] == 30 and ledger.pending_exports(TEAM) == {}


def test_before_the_upload_nothing_is_sent_for_exported_people(tmp_path: Path) -> None:
    loops, ledger, path = export_then(tmp_path, upload=False)
    outbox, _, rejects, policy = make(loops, ledger, "create")
    for n in range(30):
        outbox.add("identify", [op("identify", identify(f"u{n}", f"p{n}@x.io", plan="pro"))])
    outbox.add("identify", [op("identify", identify("new", "new@x.io", plan="pro"))])
    outbox.flush()
    outbox.close()
    assert [r.body["userId"] for r in loops.seen] == ["new"]  # a person never exported goes as the policy says
    assert {line["reason"] for line in rejects.lines} == {PENDING_IMPORT} and len(rejects.lines) == 30
    assert f"upload {path.resolve()} in Loops first" in rejects.lines[0]["message"]
    assert policy.pending_paths == {str(path.resolve()): 30}
    assert ledger.pending_exports(TEAM) == {str(path.resolve()): 30}  # still waiting for the upload


def test_create_counts_the_people_unknown_to_the_ledger_once(tmp_path: Path) -> None:
    loops = ModelLoops()
    ledger = Ledger(f"sqlite:///{tmp_path / 'l.sqlite'}")
    outbox, _, _, policy = make(loops, ledger, "create")
    outbox.add("identify", [op("identify", identify("u1", "ada@x.io"))])
    outbox.flush()
    outbox.add("identify", [op("identify", identify("u1", "ada@x.io", plan="x", at="2026-11-02T00:00:00Z"))])
    outbox.add("identify", [op("identify", identify("u2", "bob@x.io"))])
    outbox.flush()
    outbox.close()
    assert policy.report()["unknown_to_ledger"] == 2
    assert len(loops.store.created_through_api()) == 2
    assert any("Contact added" in line and "new_contacts" in line for line in policy.lines())


def test_an_exported_person_the_upload_missed_is_new_again(tmp_path: Path) -> None:
    loops, ledger, path = export_then(tmp_path, upload=False)
    text = path.read_text().splitlines()
    loops.store.upload_csv("\n".join([text[0], *(line for line in text[1:] if "p3@" not in line)]) + "\n")
    outbox, _, rejects, policy = make(loops, ledger, "skip")
    for n in range(30):
        outbox.add("identify", [op("identify", identify(f"u{n}", f"p{n}@x.io", plan="free"))])
    outbox.flush()
    outbox.close()
    # The rest is unchanged; the one the upload left out goes through new_contacts again (skip: held back).
    assert loops.seen == [] and loops.store.created_through_api() == []
    assert [(line["record"]["userId"], line["reason"]) for line in rejects.lines] == [("u3", NOT_IN_LOOPS)]
    assert policy.report()["confirmed_uploaded"] == 29 and policy.report()["unknown_to_ledger"] == 1


def test_a_dry_run_writes_no_csv(tmp_path: Path) -> None:
    loops = ModelLoops()
    ledger = Ledger(f"sqlite:///{tmp_path / 'l.sqlite'}", read_only=True)
    outbox, _, _, policy = make(loops, ledger, "csv", path=str(tmp_path / "new.csv"), dry_run=True)
    outbox.add("identify", [op("identify", identify("u1", "ada@x.io"))])
    outbox.flush()
    outbox.close()
    assert policy.write(ledger, TEAM) is None and not (tmp_path / "new.csv").exists()
    assert policy.report()["exported"] == 1 and loops.seen == []
