"""Preflight against the team's schema, type coercion, the dry-run plan, progress lines and the run report."""

from __future__ import annotations

import datetime as dt
import decimal
import json
from pathlib import Path
from typing import Any

import pytest
from runner import SAMPLES, SANDBOX_KEY, record, run_target, schema, singer, state

from target_loops.coercion import CoercionError, coerce
from target_loops.operations import Outcome, OutcomeKind
from target_loops.preflight import (
    MAX_NEW_PROPERTIES,
    Preflight,
    PreflightError,
    UnknownPropertyError,
    guess_type,
    loops_type,
)
from target_loops.sandbox import Sandbox

LIST = {"id": "cm06f5v0e45nf0ml5754o9cix", "name": "Newsletter", "description": "", "isPublic": True}
ROWS = [
    {"id": "i1", "user_id": "u1", "email": "a@example.com", "plan": "pro", "seats": 3, "is_admin": True,
     "trial_ends_at": "2026-12-01T00:00:00Z", f"mailing_lists_{LIST['id']}": True, "mailing_lists_nolist": True},
    {"id": "i2", "user_id": "u2", "email": "b@example.com", "plan": "free", "seats": None, "is_admin": False,
     "trial_ends_at": None, f"mailing_lists_{LIST['id']}": None, "mailing_lists_nolist": None},
]  # fmt: skip


def identifies(rows: list[dict[str, Any]] = ROWS) -> str:
    columns = {
        "id": "string",
        "user_id": "string",
        "email": "string",
        "plan": "string",
        "seats": "integer",
        "is_admin": "boolean",
        "trial_ends_at": {"type": ["string", "null"], "format": "date-time"},
        f"mailing_lists_{LIST['id']}": "boolean",
        "mailing_lists_nolist": "boolean",
    }
    return singer(schema("identifies", columns, ["id"]), *(record("identifies", r) for r in rows), state({"at": 1}))


def config_for(sandbox: Sandbox, tmp_path: Path, **extra: Any) -> dict[str, Any]:
    return {
        "api_key": SANDBOX_KEY,
        "base_url": sandbox.url,
        "ledger_url": f"sqlite:///{tmp_path / 'ledger.sqlite'}",
        **extra,
    }


def custom_properties(sandbox: Sandbox) -> dict[str, str]:
    return {p["key"]: p["type"] for p in sandbox.store.properties("custom")}


@pytest.fixture
def team(make_sandbox: Any) -> Sandbox:
    """A strict team with one list and no custom properties yet."""
    return make_sandbox(lists=[LIST])


def test_create_mode_creates_each_property_with_the_schema_type_before_writing(team: Sandbox, tmp_path: Path) -> None:
    run = run_target(config_for(team, tmp_path), identifies(), tmp_path=tmp_path)
    assert run.returncode == 0, run.stderr
    assert custom_properties(team) == {"plan": "string", "seats": "number", "isAdmin": "boolean", "trialEndsAt": "date"}
    paths = [r["path"] for r in team.store.requests() if r["method"] != "GET"]
    assert paths[:4] == ["/api/v1/contacts/properties"] * 4 and set(paths[4:]) == {"/api/v1/contacts/update"}
    assert "created contact property trialEndsAt (date)" in run.stderr
    contact = team.store.find(user_id="u1")
    assert (contact["seats"], contact["isAdmin"], contact["trialEndsAt"]) == (3, True, "2026-12-01T00:00:00.000Z")
    # The list the team does not have is reported at preflight and left out of the request, not sent.
    assert "mailing list id 'nolist' is not a list of this Loops team" in run.stderr
    assert contact["mailingLists"] == {LIST["id"]: True}
    assert run.rejects == []


def test_drop_mode_leaves_unknown_properties_out_and_counts_them(team: Sandbox, tmp_path: Path) -> None:
    team.configure(properties=[{"key": "plan", "type": "string"}])
    report = tmp_path / "report.json"
    config = config_for(team, tmp_path, unknown_properties="drop", report_path=str(report))
    run = run_target(config, identifies(), tmp_path=tmp_path)
    assert run.returncode == 0, run.stderr
    assert custom_properties(team) == {"plan": "string"}
    bodies = [r["body"] for r in team.store.requests() if r["method"] == "PUT"]
    assert all(set(b) <= {"email", "userId", "plan", "mailingLists"} for b in bodies)
    dropped = json.loads(report.read_text())["properties"]["dropped"]
    assert dropped == {"seats": 1, "isAdmin": 2, "trialEndsAt": 1}


def test_error_mode_stops_before_any_write_listing_every_unknown_property(team: Sandbox, tmp_path: Path) -> None:
    run = run_target(config_for(team, tmp_path, unknown_properties="error"), identifies(), tmp_path=tmp_path)
    assert run.returncode == 1
    for expected in ("plan (string)", "seats (number)", "isAdmin (boolean)", "trialEndsAt (date)"):
        assert expected in run.stderr
    assert "unknown_properties: create" in run.stderr
    assert [r for r in team.store.requests() if r["method"] != "GET"] == []
    assert run.states == []


def test_non_camel_case_names_are_reported_with_the_name_they_need(team: Sandbox, tmp_path: Path) -> None:
    rules = [{"stream": "identifies", "action": "upsert_contact", "camel_case": False}]
    run = run_target(config_for(team, tmp_path, mappings=rules), identifies(), tmp_path=tmp_path)
    assert run.returncode == 1
    assert "must be camelCase" in run.stderr
    assert "trial_ends_at (date; not camelCase: Loops would need 'trialEndsAt')" in run.stderr
    assert [r for r in team.store.requests() if r["method"] != "GET"] == []


def test_reserved_names_are_never_sent_and_created_at_is(team: Sandbox, tmp_path: Path) -> None:
    """``notes`` stays out; ``createdAt`` is a default date property the API writes (a backfill's sign-up date)."""
    text = singer(
        schema("identifies", {"id": "string", "email": "string", "created_at": "string", "notes": "string"}, ["id"]),
        record("identifies", {"id": "1", "email": "a@example.com", "created_at": "2020-01-01", "notes": "vip"}),
    )
    report = tmp_path / "report.json"
    run = run_target(config_for(team, tmp_path, report_path=str(report)), text, tmp_path=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "reserved Loops names" in run.stderr and "'notes'" in run.stderr
    (stream,) = json.loads(report.read_text())["streams"]
    assert stream["reserved_not_sent"] == {"notes": 1}
    body = next(r["body"] for r in team.store.requests() if r["method"] == "PUT")
    assert body == {"email": "a@example.com", "createdAt": "2020-01-01T00:00:00.000Z"}
    assert team.store.find(email="a@example.com")["createdAt"] == "2020-01-01T00:00:00.000Z"
    assert custom_properties(team) == {}


def test_values_are_coerced_to_the_team_types_or_rejected_with_the_reason(team: Sandbox, tmp_path: Path) -> None:
    team.configure(
        lists=[LIST],
        properties=[
            {"key": "seats", "type": "number"},
            {"key": "isAdmin", "type": "boolean"},
            {"key": "renewsAt", "type": "date"},
            {"key": "zip", "type": "string"},
        ],
    )
    columns = {"email": "string", "seats": "string", "is_admin": "string", "zip": "integer"}
    columns["renews_at"] = {"type": ["string", "integer", "null"]}
    text = singer(
        schema("people", columns),
        record("people", {"email": "ok@example.com", "seats": "12", "is_admin": "yes", "renews_at": "2026-12-01", "zip": 2100}),  # noqa: E501
        record("people", {"email": "ms@example.com", "renews_at": 1764547200000}),
        record("people", {"email": "bad@example.com", "seats": "twelve"}),
        record("people", {"email": "secs@example.com", "renews_at": 1764547200}),
    )  # fmt: skip
    rules = [{"stream": "people", "action": "upsert_contact", "properties": "*"}]
    run = run_target(config_for(team, tmp_path, mappings=rules), text, tmp_path=tmp_path)
    assert run.returncode == 0, run.stderr
    ok = team.store.find(email="ok@example.com")
    assert (ok["seats"], ok["isAdmin"], ok["renewsAt"], ok["zip"]) == (12, True, "2026-12-01T00:00:00.000Z", "2100")
    assert team.store.find(email="ms@example.com")["renewsAt"] == "2025-12-01T00:00:00.000Z"
    reasons = {r["record"]["email"]: (r["reason"], r["message"]) for r in run.rejects}
    assert reasons["bad@example.com"][0] == "invalid_value"
    assert "'seats'" in reasons["bad@example.com"][1] and "'twelve'" in reasons["bad@example.com"][1]
    assert "number" in reasons["bad@example.com"][1]
    assert "epoch seconds" in reasons["secs@example.com"][1]
    assert team.store.find(email="secs@example.com") is None


@pytest.mark.parametrize(
    ("value", "kind", "expected"),
    [
        ("42", "number", 42),
        ("-3.5", "number", -3.5),
        (decimal.Decimal("2"), "number", 2),
        (7, "number", 7),
        ("", "number", None),
        ("TRUE", "boolean", True),
        ("no", "boolean", False),
        (1, "boolean", True),
        ("2026-12-01", "date", "2026-12-01T00:00:00.000Z"),
        ("2026-12-01T10:30:00+02:00", "date", "2026-12-01T08:30:00.000Z"),
        ("2026-12-01T10:30:00", "date", "2026-12-01T10:30:00.000Z"),
        ("2026-12-01T10:30:00.123456Z", "date", "2026-12-01T10:30:00.123Z"),
        (1764547200000, "date", "2025-12-01T00:00:00.000Z"),
        (
            dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone(dt.timedelta(hours=-5))),
            "date",
            "2026-01-02T08:04:05.000Z",
        ),
        (dt.date(2026, 1, 2), "date", "2026-01-02T00:00:00.000Z"),
        (12345, "string", "12345"),
        (False, "string", "false"),
        (None, "number", None),
    ],
)
def test_coercion_table(value: Any, kind: str, expected: Any) -> None:
    assert coerce("p", value, kind) == expected


@pytest.mark.parametrize(
    ("value", "kind"),
    [("twelve", "number"), (True, "number"), (float("nan"), "number"), ("maybe", "boolean"), (2, "boolean"),
     ("not a date", "date"), (1764547200, "date"), (True, "date"), ({"a": 1}, "date")],
)  # fmt: skip
def test_coercion_refusals_name_property_value_and_type(value: Any, kind: str) -> None:
    with pytest.raises(CoercionError, match=rf"property 'p': .* is not a {kind}"):
        coerce("p", value, kind)


def test_type_derivation() -> None:
    assert loops_type({"type": ["integer", "null"]}) == "number"
    assert loops_type({"type": "number"}) == "number"
    assert loops_type({"type": ["boolean", "null"]}) == "boolean"
    assert loops_type({"type": ["string", "null"], "format": "date"}) == "date"
    assert loops_type({"type": "string", "format": "date-time"}) == "date"
    assert loops_type({"type": "string"}) == "string"
    assert loops_type({"type": ["object", "null"]}) is None
    assert loops_type({}) == "string"
    assert [guess_type(v) for v in (True, 1, 2.5, "2026-01-01", "x")] == [
        "boolean",
        "number",
        "number",
        "date",
        "string",
    ]


def test_properties_only_the_data_reveals_are_created_at_send_time(team: Sandbox, tmp_path: Path) -> None:
    """A Segment export declares traits as a bare object: its keys are checked when their batch is sent."""
    team.configure(
        lists=[{"id": "cm06f5v0e45nf0ml5754o9cix", "name": "N"}, {"id": "cm06f5v0e45nf0ml5754o9ciy", "name": "P"}]
    )
    run = run_target(config_for(team, tmp_path), input_path=SAMPLES / "segment_export.singer", tmp_path=tmp_path)
    assert run.returncode == 0, run.stderr
    assert custom_properties(team) == {
        "plan": "string",
        "companyName": "string",
        "seats": "number",
        "favoriteColor": "string",
    }
    assert team.store.find(email="ada@example.com")["plan"] == "team"


def test_max_rejects_fails_the_run_after_everything_else_was_delivered(team: Sandbox, tmp_path: Path) -> None:
    rows = [*ROWS, {"id": "x1", "email": "nope"}, {"id": "x2", "email": None}]
    run = run_target(config_for(team, tmp_path, max_rejects=1), identifies(rows), tmp_path=tmp_path)
    assert run.returncode == 1
    assert "2 records were rejected, more than max_rejects (1)" in run.stderr
    assert run.final_state == {"at": 1}  # checkpointed first
    assert {c["userId"] for c in team.store.contacts()} == {"u1", "u2"}
    ok = run_target(config_for(team, tmp_path / "..", max_rejects=2), identifies(rows), tmp_path=tmp_path)
    assert ok.returncode == 0, ok.stderr


# ----- bad values reject the record, never the run (in process: the preflight against a team held in memory)


class TeamInMemory:
    """The two reads and the property create the preflight makes, answered from memory (no HTTP, no mock of one)."""

    def __init__(self, properties: dict[str, str], refuse: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        self.properties = dict(properties)
        self.refuse = refuse
        self.created: list[tuple[str, str]] = []

    def get_json(self, path: str) -> Any:
        if path.startswith("/v1/contacts/properties"):
            return [{"key": k, "label": k, "type": t} for k, t in self.properties.items()]
        return [LIST]

    def send_many(self, requests: list[Any]) -> list[Outcome]:
        outcomes = []
        for request in requests:
            name, kind = request.body["name"], request.body["type"]
            if name in self.refuse:
                outcomes.append(Outcome(OutcomeKind.REJECTED, 400, f"Invalid property name {name!r}"))
                continue
            self.properties[name] = kind
            self.created.append((name, kind))
            outcomes.append(Outcome(OutcomeKind.DELIVERED, 200))
        return outcomes


DEFAULTS = {"email": "string", "firstName": "string", "userId": "string", "createdAt": "date", "subscribed": "boolean"}


def loaded(mode: str, team: TeamInMemory | None = None) -> tuple[Preflight, TeamInMemory]:
    team = team or TeamInMemory(DEFAULTS)
    preflight = Preflight(team, mode=mode)
    preflight.load()
    return preflight, team


def test_a_non_camel_case_trait_only_the_data_reveals_is_created_under_its_camel_case_name() -> None:
    preflight, team = loaded("create")
    body = {"userId": "u1", "company_name": "US Navy", "plan": "pro"}
    preflight.enforce(body, "identify")
    assert body == {"userId": "u1", "companyName": "US Navy", "plan": "pro"}
    assert sorted(team.created) == [("companyName", "string"), ("plan", "string")]
    again = {"userId": "u2", "company_name": "ACM"}
    preflight.enforce(again, "identify")
    assert again == {"userId": "u2", "companyName": "ACM"}
    assert len(team.created) == 2  # created once


def test_the_camel_case_name_in_the_same_record_wins() -> None:
    preflight, _ = loaded("create")
    body = {"userId": "u1", "company_name": "old", "companyName": "new"}
    preflight.enforce(body, "identify")
    assert body == {"userId": "u1", "companyName": "new"}


def test_drop_mode_drops_a_non_camel_case_trait_only_the_data_reveals() -> None:
    preflight, team = loaded("drop")
    body = {"userId": "u1", "company_name": "US Navy", "firstName": "Grace"}
    preflight.enforce(body, "identify")
    assert body == {"userId": "u1", "firstName": "Grace"}
    assert preflight.dropped == {"company_name": 1} and team.created == []


def test_error_mode_rejects_the_record_that_reveals_an_unknown_trait() -> None:
    preflight, team = loaded("error")
    with pytest.raises(UnknownPropertyError, match="company_name") as caught:
        preflight.enforce({"userId": "u1", "company_name": "US Navy"}, "identify")
    assert isinstance(caught.value, CoercionError) and caught.value.reason == "unknown_property"
    body = {"userId": "u2", "firstName": "Ada"}
    preflight.enforce(body, "identify")  # the next record is fine
    assert body == {"userId": "u2", "firstName": "Ada"} and team.created == []


@pytest.mark.parametrize("key", ["2fa_enabled", "$ref", "ключ"])
def test_a_trait_with_no_camel_case_form_rejects_its_record_only(key: str) -> None:
    preflight, team = loaded("create")
    for _ in range(2):
        with pytest.raises(UnknownPropertyError, match="camelCase"):
            preflight.enforce({"userId": "u1", key: "x"}, "identify")
    assert team.created == []


def test_a_property_loops_refuses_to_create_rejects_its_record_only() -> None:
    preflight, team = loaded("create", TeamInMemory(DEFAULTS, refuse={"badName"}))
    with pytest.raises(UnknownPropertyError, match="badName"):
        preflight.enforce({"userId": "u1", "badName": "x"}, "identify")
    body = {"userId": "u1", "plan": "pro"}
    preflight.enforce(body, "identify")
    assert body == {"userId": "u1", "plan": "pro"} and team.created == [("plan", "string")]


@pytest.mark.parametrize(
    "value",
    ["0001-01-01T00:00:00+05:00", "9999-12-31T23:59:59-05:00", 99999999999999999, "99999999999999999", -(10**17),
     float("inf"), "1e400", dt.datetime.max.replace(tzinfo=dt.timezone(dt.timedelta(hours=-5)))],
    ids=repr,
)  # fmt: skip
def test_dates_out_of_range_are_a_coercion_error(value: Any) -> None:
    with pytest.raises(CoercionError, match="property 'p'"):
        coerce("p", value, "date")


@pytest.mark.parametrize("value", ["0001-01-01T00:00:00+05:00", 99999999999999999, "garbage"])
def test_enforce_raises_only_coercion_errors(value: Any) -> None:
    preflight, _ = loaded("create")
    with pytest.raises(CoercionError, match="createdAt"):
        preflight.enforce({"userId": "u1", "createdAt": value}, "identify")


def test_created_at_is_coerced_as_the_default_date_property() -> None:
    preflight, team = loaded("create")
    body = {"userId": "u1", "createdAt": "2020-01-01"}
    preflight.enforce(body, "users")
    assert body == {"userId": "u1", "createdAt": "2020-01-01T00:00:00.000Z"} and team.created == []


def test_data_revealed_non_camel_case_trait_end_to_end(team: Sandbox, tmp_path: Path) -> None:
    """A Segment export's bare ``traits`` object carries ``company_name``: the run goes on (it used to stop)."""
    text = singer(
        schema("identify", {"messageId": "string", "userId": "string", "traits": {"type": ["object", "null"]}},
               ["messageId"]),
        record("identify", {"messageId": "m1", "userId": "u1",
                            "traits": {"email": "a@example.com", "company_name": "US Navy"}}),
        record("identify", {"messageId": "m2", "userId": "u2", "traits": {"email": "b@example.com", "plan": "pro"}}),
    )  # fmt: skip
    run = run_target(config_for(team, tmp_path), text, tmp_path=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "PreflightError" not in run.stderr and "Traceback" not in run.stderr
    assert custom_properties(team) == {"companyName": "string", "plan": "string"}
    assert team.store.find(user_id="u1")["companyName"] == "US Navy"
    assert team.store.find(user_id="u2")["plan"] == "pro"


# ----- at most max_new_properties new team properties per run (Loops has no API to delete one)


def wide(count: int, prefix: str = "trait") -> dict[str, str]:
    return {f"{prefix}{i:04d}": "x" for i in range(count)}


def test_the_default_limit_is_25() -> None:
    assert Preflight(None).max_new == MAX_NEW_PROPERTIES == 25


def test_schema_properties_past_the_limit_stop_the_run_and_create_none() -> None:
    preflight, team = loaded("create")
    declared: dict[str, str | None] = {name: "string" for name in wide(26)}
    with pytest.raises(PreflightError, match=r"26 new contact properties .* would pass max_new_properties \(25") as e:
        preflight.check_stream("identifies", declared, set())
    assert "trait0000 (string)" in str(e.value) and "trait0025 (string)" in str(e.value)
    assert "no API to delete" in str(e.value)
    assert team.created == [] and preflight.created == {}


def test_schema_properties_up_to_the_limit_are_created() -> None:
    preflight, team = loaded("create")
    preflight.check_stream("identifies", dict.fromkeys(wide(25), "number"), set())
    assert len(team.created) == 25


def test_one_wide_record_is_rejected_and_creates_nothing_the_run_goes_on() -> None:
    """One record with 5,000 traits used to create 5,000 team properties."""
    preflight, team = loaded("create")
    with pytest.raises(UnknownPropertyError, match="5000 new contact properties") as caught:
        preflight.enforce({"userId": "u1", **wide(5000)}, "identify")
    assert caught.value.reason == "unknown_property"
    assert "and 4950 more" in str(caught.value)  # the message names 50, not 5,000
    assert team.created == []
    body = {"userId": "u2", "plan": "pro", "company_name": "ACM"}
    preflight.enforce(body, "identify")  # a later record that fits still creates what it needs
    assert body == {"userId": "u2", "plan": "pro", "companyName": "ACM"}
    assert sorted(team.created) == [("companyName", "string"), ("plan", "string")]


def test_the_limit_is_per_run_across_schema_and_data() -> None:
    preflight, team = loaded("create")
    preflight.check_stream("accounts", dict.fromkeys(wide(20, "col"), "string"), set())
    with pytest.raises(UnknownPropertyError, match=r"20 created in this run so far"):
        preflight.enforce({"userId": "u1", **wide(6)}, "identify")
    preflight.enforce({"userId": "u1", **wide(5)}, "identify")
    assert len(team.created) == 25
    with pytest.raises(UnknownPropertyError):
        preflight.enforce({"userId": "u1", "oneMore": 1}, "identify")
    known = {"userId": "u1", "trait0001": "y", "col0001": "z"}
    preflight.enforce(known, "identify")  # properties the run created are known from then on
    assert known == {"userId": "u1", "trait0001": "y", "col0001": "z"}


@pytest.mark.parametrize("max_new", [0, 3])
def test_the_limit_is_the_constructor_setting(max_new: int) -> None:
    team = TeamInMemory(DEFAULTS)
    preflight = Preflight(team, mode="create", max_new=max_new)
    preflight.load()
    preflight.enforce({"userId": "u1", **wide(max_new)}, "identify")
    with pytest.raises(UnknownPropertyError, match=rf"max_new_properties \({max_new};"):
        preflight.enforce({"userId": "u1", "extra": 1}, "identify")
    assert len(team.created) == max_new


def test_a_dry_run_counts_what_it_would_create() -> None:
    team = TeamInMemory(DEFAULTS)
    preflight = Preflight(team, mode="create", dry_run=True, max_new=2)
    preflight.load()
    preflight.enforce({"userId": "u1", "a": 1, "b": 2}, "identify")
    with pytest.raises(UnknownPropertyError):
        preflight.enforce({"userId": "u1", "c": 3}, "identify")
    assert preflight.created == {"a": "number", "b": "number"} and team.created == []


def test_drop_and_error_modes_create_nothing_whatever_the_limit() -> None:
    drop = Preflight(TeamInMemory(DEFAULTS), mode="drop", max_new=0)
    drop.load()
    body = {"userId": "u1", **wide(30)}
    drop.enforce(body, "identify")
    assert body == {"userId": "u1"}


def test_a_schema_past_the_limit_stops_the_run_before_any_write(team: Sandbox, tmp_path: Path) -> None:
    columns = {"id": "string", "email": "string", **dict.fromkeys(wide(26, "col"), "string")}
    text = singer(schema("accounts", columns, ["id"]), record("accounts", {"id": "1", "email": "a@example.com"}))
    rules = [{"stream": "accounts", "action": "upsert_contact"}]
    run = run_target(config_for(team, tmp_path, mappings=rules), text, tmp_path=tmp_path)
    assert run.returncode != 0
    assert "would pass max_new_properties (25" in run.stderr and "col0025 (string)" in run.stderr
    assert [r for r in team.store.requests() if r["method"] != "GET"] == []
    assert custom_properties(team) == {}


def test_a_wide_record_is_rejected_the_others_are_delivered(team: Sandbox, tmp_path: Path) -> None:
    """A Segment export declares traits as a bare object: only the data reveals its keys."""
    columns = {"messageId": "string", "userId": "string", "type": "string", "traits": {"type": ["object", "null"]}}
    rows = [
        {"messageId": "m1", "type": "identify", "userId": "u1", "traits": {"email": "a@example.com", "plan": "pro"}},
        {"messageId": "m2", "type": "identify", "userId": "u2", "traits": {"email": "b@example.com", **wide(300)}},
        {"messageId": "m3", "type": "identify", "userId": "u3", "traits": {"email": "c@example.com", "seats": 3}},
    ]
    text = singer(schema("identify", columns), *(record("identify", r) for r in rows), state({"at": 1}))
    run = run_target(config_for(team, tmp_path), text, tmp_path=tmp_path)
    assert run.returncode == 0, run.stderr
    assert custom_properties(team) == {"plan": "string", "seats": "number"}
    (rejected,) = run.rejects
    assert "max_new_properties" in rejected["message"] and rejected["record"]["messageId"] == "m2"
    assert team.store.find(user_id="u2") is None and team.store.find(user_id="u3") is not None
