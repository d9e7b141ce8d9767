"""End to end through the CLI: each sample file → exactly the contacts and events Loops (the sandbox) would hold."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from runner import SAMPLES, SANDBOX_KEY, record, run_target, schema, singer, state

from target_loops.sandbox import CONTACT_OWN_KEYS, Sandbox
from target_loops.serialization import stable_hash


def key(event_name: str, event_id: str) -> str:
    """An event's default Idempotency-Key: a hash of its name and its id (messageId, or a warehouse row's id)."""
    return "tl-" + stable_hash("event", event_name, event_id)[:64]


L1, L2 = "cm06f5v0e45nf0ml5754o9cix", "cm06f5v0e45nf0ml5754o9ciy"
TEAM = json.loads((SAMPLES / "sandbox_team.json").read_text())
RULES = json.loads((SAMPLES / "rules.json").read_text())


@pytest.fixture
def team_sandbox(make_sandbox: Any) -> Sandbox:
    """The sandbox seeded with the sample team's properties and lists (strict: unknown keys are 400)."""
    return make_sandbox(properties=TEAM["properties"], lists=TEAM["lists"])


def config_for(sandbox: Sandbox, **extra: Any) -> dict[str, Any]:
    return {"api_key": SANDBOX_KEY, "base_url": sandbox.url, **extra}


def contacts_by_email(sandbox: Sandbox) -> dict[str, dict[str, Any]]:
    return {c["email"]: c for c in sandbox.store.contacts()}


def custom(contact: dict[str, Any]) -> dict[str, Any]:
    """A contact's custom properties (those that are not Loops' own fields)."""
    return {k: v for k, v in contact.items() if k not in CONTACT_OWN_KEYS and v is not None}


def carries_update(body: dict[str, Any]) -> bool:
    """True for a request that updates a contact: an upsert, or an event with contact properties beside it."""
    return bool(set(body) - {"email", "userId", "eventName", "eventProperties"}) or "eventName" not in body


def writes(sandbox: Sandbox) -> list[dict[str, Any]]:
    return [r for r in sandbox.store.requests() if r["method"] != "GET"]


def last_state_in(path: Path) -> dict[str, Any]:
    states = [json.loads(line) for line in path.read_text().splitlines() if '"STATE"' in line]
    return states[-1]["value"]


def test_segment_export_end_to_end(team_sandbox: Sandbox, tmp_path: Path) -> None:
    run = run_target(config_for(team_sandbox), input_path=SAMPLES / "segment_export.singer", tmp_path=tmp_path)
    assert run.returncode == 0, run.stderr

    contacts = contacts_by_email(team_sandbox)
    assert set(contacts) == {
        "ada@example.com",
        "grace.hopper@example.com",
        "alan@example.com",
        "new.visitor@example.com",
        "edsger@example.com",  # its `address` trait (an object) was left out, the rest sent
    }
    assert custom(contacts["edsger@example.com"]) == {}
    ada = contacts["ada@example.com"]
    assert (ada["userId"], ada["firstName"], ada["lastName"]) == ("u_1001", "Ada", "Lovelace")
    # The 10:00 upgrade wins over the 08:00 identify that arrived later; the older one's other trait is kept.
    assert custom(ada) == {"plan": "team", "seats": 3, "favoriteColor": "green"}
    assert ada["mailingLists"] == {L1: True, L2: True}
    assert ada["subscribed"] is True and ada["source"] == "API"
    grace = contacts["grace.hopper@example.com"]
    assert grace["userId"] == "u_1002"
    assert custom(grace) == {"plan": "pro", "companyName": "US Navy", "seats": 12}
    assert contacts["alan@example.com"]["userId"] == "u_1003"
    assert contacts["alan@example.com"]["firstName"] == "Alan"
    assert contacts["new.visitor@example.com"]["userId"] is None

    events = {(e["eventName"], e["idempotencyKey"]): e for e in team_sandbox.store.events()}
    signed_up, order, pricing, cart = (
        key("Signed Up", "ajs-trk-001"),
        key("Order Completed", "ajs-trk-002"),
        key("Viewed Pricing", "ajs-trk-003"),
        key("Cart Viewed", "ajs-trk-005"),
    )
    assert set(events) == {
        ("Signed Up", signed_up),
        ("Order Completed", order),
        ("Viewed Pricing", pricing),
        ("Cart Viewed", cart),  # its `items` list was left out, the event sent
    }
    assert len(team_sandbox.store.events()) == 4  # the replayed ajs-trk-001 reached Loops once
    assert events["Cart Viewed", cart].get("eventProperties") in (None, {})
    assert events["Signed Up", signed_up]["eventProperties"] == {"plan": "starter", "referrer": "newsletter"}
    assert events["Order Completed", order]["eventProperties"] == {
        "orderId": "o-9001",
        "revenue": 49.99,
        "currency": "USD",
    }
    assert events["Viewed Pricing", pricing]["email"] == "new.visitor@example.com"

    # The identifies of users with an identity became one contact update each (coalesced within the batch), sent
    # alone or riding on that user's next event. Grace's email change (09:05 grace@, 11:00 grace.hopper@) is not
    # merged into the update that ties grace@ to her userId (Loops does not know her userId yet): that update goes
    # first, and the new email rides on her 09:30 event, whose record carries no email of its own.
    updates = [r for r in writes(team_sandbox) if r["status"] == 200 and carries_update(r["body"])]
    assert sorted(r["body"]["email"] for r in updates if "email" in r["body"]) == [
        "ada@example.com",
        "alan@example.com",
        "edsger@example.com",
        "grace@example.com",
    ]
    assert events["Order Completed", order]["email"] == "grace.hopper@example.com"
    reasons = sorted((r["stream"], r["reason"], r.get("partial", False)) for r in run.rejects)
    assert reasons == [
        ("identify", "invalid_email", False),
        ("identify", "nested_value", True),  # a partial line: `address` left out, the contact sent
        ("identify", "no_identifier", False),
        ("track", "http_400", False),  # u_9999: Loops has no contact with that userId
        ("track", "invalid_event_name", False),  # "Plan:Upgraded": refused locally (https://loops.so/docs/events)
        ("track", "nested_value", True),
    ]
    assert run.final_state == last_state_in(SAMPLES / "segment_export.singer")
    assert (run.stream("identify")["action"], run.stream("identify")["read"]) == ("upsert_contact", 9)


def test_rejects_file_lines_say_what_and_why(team_sandbox: Sandbox, tmp_path: Path) -> None:
    run = run_target(config_for(team_sandbox), input_path=SAMPLES / "segment_export.singer", tmp_path=tmp_path)
    refused = next(r for r in run.rejects if r["reason"] == "http_400" and r["record"]["messageId"] == "ajs-trk-006")
    assert refused["stream"] == "track"
    assert refused["status"] == 400
    assert "u_9999" in refused["message"]
    assert refused["request"] == {
        "method": "POST",
        "path": "/v1/events/send",
        "body": {"userId": "u_9999", "eventName": "Logged In"},
        "idempotency_key": key("Logged In", "ajs-trk-006"),
    }
    assert refused["record"]["messageId"] == "ajs-trk-006"
    local = next(r for r in run.rejects if r["reason"] == "no_identifier")
    assert local["request"] is None and local["status"] is None
    assert "no email and no user id" in local["message"]
    # A partial line: the record was sent without one value, and the line says which and that the rest went.
    partial = next(r for r in run.rejects if r["reason"] == "nested_value" and r["stream"] == "track")
    assert partial["partial"] is True and "items" in partial["message"] and "left out" in partial["message"]
    assert partial["request"]["body"] == {"userId": "u_1002", "eventName": "Cart Viewed"}
    assert set(refused) == {"at", "run_id", "stream", "reason", "message", "status", "request", "record"}
    assert len({line["run_id"] for line in run.rejects}) == 1


def test_warehouse_rows_end_to_end(team_sandbox: Sandbox, tmp_path: Path) -> None:
    run = run_target(config_for(team_sandbox, **RULES), input_path=SAMPLES / "warehouse_rows.singer", tmp_path=tmp_path)
    assert run.returncode == 0, run.stderr
    contacts = contacts_by_email(team_sandbox)
    assert set(contacts) == {"linus@example.com", "margaret.hamilton@example.com"}
    linus = contacts["linus@example.com"]
    assert (linus["userId"], linus["firstName"], linus["lastName"]) == ("w_2001", "Linus", "Torvalds")
    # NULL columns of the repeat left the plan alone; a date property goes out as ISO-8601 UTC.
    assert custom(linus) == {"plan": "team", "seats": 6, "trialEndsAt": "2026-12-01T00:00:00.000Z"}
    assert linus["mailingLists"] == {L1: True}
    margaret = contacts["margaret.hamilton@example.com"]
    assert margaret["userId"] == "w_2002"
    assert custom(margaret) == {"plan": "enterprise", "seats": 40, "isAdmin": True}
    assert margaret["mailingLists"] in ({}, {L1: False}, None)

    events = sorted((e["eventName"], e["userId"], e["idempotencyKey"]) for e in team_sandbox.store.events())
    assert events == [
        ("Logged In", "w_2001", key("Logged In", "wh-trk-001")),
        ("Order Completed", "w_2001", key("Order Completed", "wh-ord-001")),
        ("Order Completed", "w_2002", key("Order Completed", "wh-ord-002")),
        ("Signed Up", "w_2002", key("Signed Up", "wh-trk-002")),
    ]
    orders = {e["idempotencyKey"]: e["eventProperties"] for e in team_sandbox.store.events()}
    order_1, order_2 = key("Order Completed", "wh-ord-001"), key("Order Completed", "wh-ord-002")
    assert orders[order_1] == {"orderId": "o-1", "revenue": 120.5, "currency": "EUR"}  # NULL coupon left out
    assert orders[order_2] == {"orderId": "o-2", "revenue": 18, "currency": "USD", "coupon": "WELCOME10"}
    logged_in = orders[key("Logged In", "wh-trk-001")]
    assert logged_in == {} or logged_in is None
    assert sorted(r["reason"] for r in run.rejects) == ["http_400", "no_identifier"]
    assert run.final_state == last_state_in(SAMPLES / "warehouse_rows.singer")


def test_custom_table_with_explicit_rule(team_sandbox: Sandbox, tmp_path: Path) -> None:
    run = run_target(config_for(team_sandbox, **RULES), input_path=SAMPLES / "custom_table.singer", tmp_path=tmp_path)
    assert run.returncode == 0, run.stderr
    contacts = contacts_by_email(team_sandbox)
    assert custom(contacts["katherine@example.com"]) == {
        "fullName": "Katherine Johnson",
        "accountStatus": "active",
        "lifetimeValue": 1250.75,
    }
    assert contacts["katherine@example.com"]["userId"] == "7001"  # integer ids become Loops' string user ids
    assert custom(contacts["dorothy@example.com"]) == {"fullName": "Dorothy Vaughan", "accountStatus": "churned"}
    bodies = [r["body"] for r in writes(team_sandbox)]
    assert all("passwordHash" not in b and "password_hash" not in b for b in bodies)


def test_events_wait_for_contacts_created_in_the_same_run(sandbox: Sandbox, tmp_path: Path) -> None:
    """Tracks arrive first and fill their batch; their user ids only exist once the identifies are sent."""
    messages = [schema("tracks", {"id": "string", "user_id": "string", "event_text": "string"}, ["id"])]
    messages.append(schema("identifies", {"id": "string", "user_id": "string", "email": "string"}, ["id"]))
    for i in range(6):
        messages.append(record("identifies", {"id": f"i{i}", "user_id": f"u{i}", "email": f"u{i}@example.com"}))
    for i in range(6):
        messages.append(record("tracks", {"id": f"t{i}", "user_id": f"u{i}", "event_text": "Logged In"}))
    messages.append(state({"bookmarks": {"tracks": "t5"}}))
    run = run_target(config_for(sandbox, batch_size_rows=3), singer(*messages), tmp_path=tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.rejects == []
    assert len(sandbox.store.events()) == 6
    assert run.final_state == {"bookmarks": {"tracks": "t5"}}


def test_unmapped_stream_stops_before_any_write(sandbox: Sandbox, tmp_path: Path) -> None:
    text = singer(
        schema("identifies", {"id": "string", "user_id": "string", "email": "string"}, ["id"]),
        record("identifies", {"id": "1", "user_id": "u1", "email": "a@example.com"}),
        schema("page_views", {"id": "string", "url": "string"}, ["id"]),
        record("page_views", {"id": "p1", "url": "/"}),
    )
    run = run_target(config_for(sandbox), text, tmp_path=tmp_path)
    assert run.returncode == 1
    assert "'page_views' matches no rule" in run.stderr
    assert '{"action":"upsert_contact","stream":"page_views"}' in run.stderr
    assert "unmapped_streams: skip" in run.stderr
    assert writes(sandbox) == []
    assert run.states == []


def test_unmapped_stream_skip_counts_and_goes_on(sandbox: Sandbox, tmp_path: Path) -> None:
    text = singer(
        schema("page_views", {"id": "string", "url": "string"}, ["id"]),
        record("page_views", {"id": "p1", "url": "/"}),
        schema("identifies", {"id": "string", "user_id": "string", "email": "string"}, ["id"]),
        record("identifies", {"id": "1", "user_id": "u1", "email": "a@example.com"}),
        state({"bookmarks": {"identifies": "1"}}),
    )
    run = run_target(config_for(sandbox, unmapped_streams="skip"), text, tmp_path=tmp_path)
    assert run.returncode == 0, run.stderr
    assert [c["email"] for c in sandbox.store.contacts()] == ["a@example.com"]
    assert (run.stream("page_views")["action"], run.stream("page_views")["skipped"]) == (None, 1)
    assert run.final_state == {"bookmarks": {"identifies": "1"}}


def test_bad_key_stops_with_a_clear_error_and_no_writes(sandbox: Sandbox, tmp_path: Path) -> None:
    secret = "sk_live_do-not-print-me-0123456789"
    run = run_target(
        {"api_key": secret, "base_url": sandbox.url}, input_path=SAMPLES / "segment_export.singer", tmp_path=tmp_path
    )
    assert run.returncode != 0
    assert "Loops rejected the API key" in run.stderr
    assert secret not in run.stdout + run.stderr
    assert writes(sandbox) == []
    assert sandbox.store.contacts() == []
    assert run.states == []


@pytest.mark.parametrize(
    ("base_url", "accepted"),
    [
        ("http://loops.example.com/api", False),
        ("http://10.0.0.5:8787/api", False),
        ("ftp://app.loops.so/api", False),
    ],
)
def test_base_url_must_be_https_unless_loopback(base_url: str, accepted: bool, tmp_path: Path) -> None:
    run = run_target({"api_key": "k", "base_url": base_url}, "", tmp_path=tmp_path)
    assert run.returncode != 0
    assert "base_url" in run.stderr


def test_missing_api_key_is_a_config_error(tmp_path: Path) -> None:
    run = run_target({}, "", tmp_path=tmp_path)
    assert run.returncode != 0
    assert "api_key is required" in run.stderr


def test_bad_rule_is_reported_with_its_position(tmp_path: Path) -> None:
    rules = {"mappings": [{"stream": "users", "action": "upsert_contact", "emial": "email"}]}
    run = run_target({"api_key": "k", **rules}, "", tmp_path=tmp_path)
    assert run.returncode != 0
    assert "mappings[0]" in run.stderr and "'emial'" in run.stderr


def test_dry_run_plans_without_a_key_and_sends_nothing(sandbox: Sandbox, tmp_path: Path) -> None:
    plan = tmp_path / "plan.jsonl"
    run = run_target(
        {"dry_run": True, "dry_run_path": str(plan), "base_url": sandbox.url},
        input_path=SAMPLES / "segment_export.singer",
        tmp_path=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    assert sandbox.store.requests() == []
    lines = [json.loads(line) for line in plan.read_text().splitlines()]
    # Four contact updates (one per user; those with an event ride on it) and five events (the replay is
    # dropped, "Plan:Upgraded" refused locally; u_9999 is only refused by Loops itself).
    assert sum(1 for x in lines if carries_update(x["body"])) == 4
    assert {x["idempotency_key"] for x in lines if x["idempotency_key"]} == {
        key("Signed Up", "ajs-trk-001"),
        key("Order Completed", "ajs-trk-002"),
        key("Viewed Pricing", "ajs-trk-003"),
        key("Cart Viewed", "ajs-trk-005"),
        key("Logged In", "ajs-trk-006"),
    }
    assert run.final_state is None  # a dry run sends nothing, so it checkpoints nothing


def test_rerun_never_sends_an_event_twice(team_sandbox: Sandbox, tmp_path: Path) -> None:
    first = run_target(config_for(team_sandbox), input_path=SAMPLES / "segment_export.singer", tmp_path=tmp_path)
    assert first.returncode == 0, first.stderr
    first_requests = team_sandbox.store.requests()
    second = run_target(config_for(team_sandbox), input_path=SAMPLES / "segment_export.singer", tmp_path=tmp_path)
    assert second.returncode == 0, second.stderr
    assert len(team_sandbox.store.events()) == 4
    assert second.stream("track")["read"] == 7
    assert second.stream("track")["duplicates"] == 5  # the in-run replay + four the ledger knows were delivered
    second_run = [(r["method"], r["path"]) for r in team_sandbox.store.requests()[len(first_requests) :]]
    # Only the preflight reads (each event name's definition once) and the event Loops refused (fixed data may pass
    # now) are sent again; it goes by userId alone, so its 400 first waits for an upsert of its person and is tried
    # once more at the end of the input. "Plan:Upgraded" is refused locally again, never read nor sent.
    patterns = [p for _, p in second_run if "/event-patterns/" in p]
    assert sorted(patterns) == [
        f"/api/v1/event-patterns/by-name/{name}"
        for name in ("Cart Viewed", "Logged In", "Order Completed", "Signed Up", "Viewed Pricing")
    ]
    assert [r for r in second_run if "/event-patterns/" not in r[1]] == [
        ("GET", "/api/v1/api-key"),
        ("GET", "/api/v1/contacts/properties"),
        ("GET", "/api/v1/lists"),
        *[("POST", "/api/v1/events/send")] * 2,
    ]
    assert len(second.rejects) == len(first.rejects)


def test_api_key_is_never_written_anywhere(sandbox: Sandbox, tmp_path: Path) -> None:
    """A key that Loops accepts, a run with rejects and retries: the key appears in no output."""
    secret = "sandbox-key-SECRET-7f3a9"
    sandbox.configure(api_key=secret, fail_500=0.3, seed=3)
    run = run_target(
        {"api_key": secret, "base_url": sandbox.url}, input_path=SAMPLES / "segment_export.singer", tmp_path=tmp_path
    )
    assert run.returncode == 0, run.stderr
    assert run.rejects
    assert run.report["totals"]["retries"] > 0
    for text in (run.stdout, run.stderr, run.rejects_path.read_text(), run.report_path.read_text()):
        assert secret not in text


def test_a_record_that_breaks_its_schema_is_rejected_not_fatal(sandbox: Sandbox, tmp_path: Path) -> None:
    text = singer(
        schema("identifies", {"id": "string", "user_id": "string", "email": "string", "seats": "integer"}, ["id"]),
        record("identifies", {"id": "1", "user_id": "u1", "email": "a@example.com", "seats": "many"}),
        record("identifies", {"id": "2", "user_id": "u2", "email": "b@example.com", "seats": 2}),
        state({"bookmarks": {"identifies": "2"}}),
    )
    run = run_target(config_for(sandbox, unknown_properties="drop"), text, tmp_path=tmp_path)
    assert run.returncode == 0, run.stderr
    assert [c["userId"] for c in sandbox.store.contacts()] == ["u2"]
    (reject,) = run.rejects
    assert reject["reason"] == "schema_invalid" and "seats must be integer" in reject["message"]
    assert run.final_state == {"bookmarks": {"identifies": "2"}}


def test_a_contact_spread_over_many_batches_gets_one_request(sandbox: Sandbox, tmp_path: Path) -> None:
    """Upserts are held across batches (``coalesce_rows``) until a checkpoint or events need them."""
    rows = [
        {"id": f"i{n}", "user_id": f"u{n % 4}", "email": f"u{n % 4}@example.com", "plan": f"p{n}"} for n in range(24)
    ]
    text = singer(
        schema("identifies", {"id": "string", "user_id": "string", "email": "string", "plan": "string"}, ["id"]),
        *(record("identifies", r) for r in rows),
        state({"at": 24}),
    )
    run = run_target(config_for(sandbox, batch_size_rows=3), text, tmp_path=tmp_path)
    assert run.returncode == 0, run.stderr
    assert len(upserts(sandbox)) == 4  # 24 rows, 8 batches, 4 contacts: one request each
    assert run.stream("identifies")["coalesced"] == 20
    assert run.final_state == {"at": 24}
    small = tmp_path / "small-window"
    small.mkdir()
    before = len(upserts(sandbox))
    held_back = run_target(config_for(sandbox, batch_size_rows=3, coalesce_rows=6), text, tmp_path=small)
    assert held_back.returncode == 0, held_back.stderr
    # A window of 6 rows sends each contact once per window: its intermediate states too.
    assert len(upserts(sandbox)) - before == 16, held_back.stderr


def upserts(sandbox: Sandbox) -> list[dict[str, Any]]:
    return [r for r in sandbox.store.requests() if r["path"] == "/api/v1/contacts/update"]
