"""Single values on their way to Loops: camelCase names, scalars, numbers, booleans and dates (one parser, one
output form, https://loops.so/docs/contacts/properties#dates).
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
from pathlib import Path
from typing import Any

import pytest
from rule_helpers import (
    D,
    body,
    contact_rule,
    event_rule,
    mapper,
    reject,
    run,
)
from runner import record, run_target, sandbox_config, schema, singer

from target_loops.coercion import CoercionError, coerce
from target_loops.operations import Operation, Rejection
from target_loops.serialization import canonical_json, iso_datetime, json_default, json_number
from target_loops.values import camel_case, loops_datetime, parse_datetime, read_boolean, sort_key

# --------------------------------------------------------------------------------------------------- camelCase


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("first_name", "firstName"),
        ("last_name", "lastName"),
        ("user_group", "userGroup"),
        ("favorite_color", "favoriteColor"),
        ("USER_ID", "userId"),
        ("FAVORITE_COLOR", "favoriteColor"),
        ("Favorite Color", "favoriteColor"),
        ("Favorite-Color", "favoriteColor"),
        ("favorite  color", "favoriteColor"),
        ("planId", "planId"),
        ("PlanId", "planId"),
        ("mailing_lists", "mailingLists"),
        ("plan", "plan"),
        ("Plan", "plan"),
        ("URL", "url"),
        ("user_ID", "userId"),
        ("first__name", "firstName"),
        ("_leading_underscore", "leadingUnderscore"),
        ("trailing_", "trailing"),
        ("seats_2", "seats2"),
        ("created_at", "createdAt"),
        ("already camelCase", "alreadyCamelCase"),
        ("___", "___"),
        # "" is not a value: left out of the request (tests/test_empty_values.py)
    ],
)
def test_camel_case(name: str, expected: str) -> None:
    assert camel_case(name) == expected


# --------------------------------------------------------------------------------------------------- values


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (D("42"), 42),
        (D("42.000"), 42),
        (D("1E+2"), 100),
        (D("-7"), -7),
        (D("19.99"), 19.99),
        (D("0.5"), 0.5),
        (7, 7),
        (2.5, 2.5),
        (True, True),
        (False, False),
        ("text", "text"),
        # "" is not a value: left out of the request (tests/test_empty_values.py)
        (dt.datetime(2026, 11, 2, 8, 30, 15), "2026-11-02T08:30:15.000Z"),
        (dt.datetime(2026, 11, 2, 8, 30, 15, 123456), "2026-11-02T08:30:15.123Z"),
        (dt.datetime(2026, 11, 2, 8, 30, 15, 999), "2026-11-02T08:30:15.000Z"),
        (dt.datetime(2026, 11, 2, 8, 30, 15, tzinfo=dt.timezone.utc), "2026-11-02T08:30:15.000Z"),
        (
            dt.datetime(2026, 11, 2, 10, 30, 15, 250000, tzinfo=dt.timezone(dt.timedelta(hours=2))),
            "2026-11-02T08:30:15.250Z",
        ),
        (dt.date(2026, 11, 2), "2026-11-02T00:00:00.000Z"),
    ],
    ids=repr,
)
def test_value_normalization(value: Any, expected: Any) -> None:
    b = body("accounts", {"email": "a@example.com", "value": value}, contact_rule())
    assert b["value"] == expected
    assert type(b["value"]) is type(expected)


def test_values_normalized_in_event_properties_too() -> None:
    record = {"event_text": "Paid", "email": "a@example.com", "amount": D("10.00"), "at": dt.datetime(2026, 1, 1)}
    assert body("payments", record, event_rule("payments"))["eventProperties"] == {
        "amount": 10,
        "at": "2026-01-01T00:00:00.000Z",
    }


def test_datetimes_are_never_epoch_numbers() -> None:
    stamp = dt.datetime(2026, 11, 2, 8, 30, tzinfo=dt.timezone.utc)
    b = body("accounts", {"email": "a@example.com", "renews_at": stamp}, contact_rule())
    assert isinstance(b["renewsAt"], str) and b["renewsAt"].startswith("2026-11-02T08:30")


@pytest.mark.parametrize(
    "value", [float("nan"), float("inf"), float("-inf"), D("NaN"), D("Infinity"), D("-Infinity")], ids=repr
)
def test_non_finite_numbers_are_rejected(value: Any) -> None:
    rejection = reject("accounts", {"email": "a@example.com", "score": value}, contact_rule())
    assert rejection.reason == "invalid_number"
    assert "score" in rejection.message


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (42, "42"),
        (D("42"), "42"),
        (D("42.0"), "42"),
        (42.0, "42"),
        (D("4.2E+1"), "42"),
        (12345678901234, "12345678901234"),
        (42.5, "42.5"),
        (" u_42 ", "u_42"),
        ("u_42", "u_42"),
    ],
    ids=repr,
)
def test_user_id_normalized_to_string(value: Any, expected: str) -> None:
    op = run("identifies", {"user_id": value, "email": "a@example.com"})
    assert op.request.body["userId"] == expected
    assert op.contact_key == f"u:{expected}"


@pytest.mark.parametrize("value", [None, "", "   "], ids=repr)
def test_unusable_user_id_falls_back_to_email(value: Any) -> None:
    op = run("identifies", {"user_id": value, "email": "A@Example.com"})
    assert op.request.body == {"email": "A@Example.com"}
    assert op.contact_key == "e:a@example.com"


def test_email_is_trimmed() -> None:
    assert body("identifies", {"email": "  a@example.com "}) == {"email": "a@example.com"}


@pytest.mark.parametrize(
    ("value", "expected"),
    [(D("3"), 3), (D("3.25"), 3.25), (D("-0"), 0), (D("1E+3"), 1000), (D("0.1"), 0.1)],
    ids=repr,
)
def test_json_number(value: decimal.Decimal, expected: float) -> None:
    result = json_number(value)
    assert result == expected and type(result) is type(expected)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (dt.datetime(2026, 1, 2, 3, 4, 5), "2026-01-02T03:04:05+00:00"),
        (dt.datetime(2026, 1, 2, 3, 4, 5, 6000), "2026-01-02T03:04:05.006+00:00"),
        (dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone(dt.timedelta(hours=-5))), "2026-01-02T03:04:05-05:00"),
    ],
    ids=["naive", "micro-to-milli", "negative-offset"],
)
def test_iso_datetime(value: dt.datetime, expected: str) -> None:
    assert iso_datetime(value) == expected


def test_iso_datetime_is_the_stable_hash_text_not_what_loops_is_sent() -> None:
    """A datetime left in a record is hashed (fallback idempotency keys) in this text; Loops gets loops_datetime."""
    at = dt.datetime(2026, 1, 1, 0, 0, 0, 6000)
    record = {"event_text": "E", "email": "a@example.com", "at": at}
    assert iso_datetime(at) == "2026-01-01T00:00:00.006+00:00"
    assert body("e", record, event_rule("e"))["eventProperties"] == {"at": "2026-01-01T00:00:00.006Z"}


# --------------------------------------------------------------------------------------------------- one boolean parser

BOOLEANS: list[tuple[Any, bool | None]] = [
    (True, True),
    (False, False),
    (1, True),
    (0, False),
    (D("1"), True),
    (D("0.0"), False),
    ("true", True),
    (" YES ", True),
    ("t", True),
    ("y", True),
    ("1", True),
    ("False", False),
    ("no", False),
    ("N", False),
    ("f", False),
    ("0", False),
    (2, None),
    (-1, None),
    (1.0, None),
    (0.5, None),
    (D("0.5"), None),
    (D("NaN"), None),
    (D("sNaN"), None),
    ("maybe", None),
    ("", None),
    (None, None),
    ([True], None),
    ({"a": True}, None),
]


@pytest.mark.parametrize(("value", "expected"), BOOLEANS, ids=repr)
def test_read_boolean(value: Any, expected: bool | None) -> None:
    assert read_boolean(value) is expected


@pytest.mark.parametrize(("value", "expected"), [b for b in BOOLEANS if b[0] not in (None, "")], ids=repr)
def test_every_boolean_path_reads_a_value_alike(value: Any, expected: bool | None) -> None:
    """subscribed, a mailing list flag and a boolean property read one value the same way (one parser); an empty
    cell is no value at all, so it is not among these."""
    record = {"email": "a@example.com", "opt_in": value, "mailing_lists_l1": value}
    result = mapper("accounts", contact_rule(subscribed="opt_in", allow_resubscribe=True)).map(record)
    try:
        coerced: bool | None = coerce("p", value, "boolean")
    except CoercionError:
        coerced = None
    if expected is None:
        assert isinstance(result, Rejection) and result.reason == "invalid_boolean"
        assert coerced is None
        lists_op = run("accounts", {"email": "a@example.com", "mailing_lists_l1": value}, contact_rule())
        assert "mailingLists" not in lists_op.request.body and len(lists_op.partial) == 1
    else:
        assert isinstance(result, Operation)
        assert result.request.body["subscribed"] is expected
        assert result.request.body["mailingLists"] == {"l1": expected}
        assert coerced is expected


# --------------------------------------------------------------------------------------------------- one date parser


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-01-02T03:04:05Z", dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)),
        ("2026-01-02T03:04:05.123456+02:00", dt.datetime(2026, 1, 2, 1, 4, 5, 123456, tzinfo=dt.timezone.utc)),
        ("2026-01-02 03:04", dt.datetime(2026, 1, 2, 3, 4, tzinfo=dt.timezone.utc)),
        ("2026-01-02", dt.datetime(2026, 1, 2, tzinfo=dt.timezone.utc)),
        (" 2026-01-02T03:04:05 ", dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)),
        ("2026-01-02T03:04:05.123456789Z", dt.datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=dt.timezone.utc)),
        ("2026-01-02T03:04:05+0200", dt.datetime(2026, 1, 2, 1, 4, 5, tzinfo=dt.timezone.utc)),
        ("2026-032", dt.datetime(2026, 2, 1, tzinfo=dt.timezone.utc)),
    ],
    ids=repr,
)
def test_parse_datetime_reads_iso_8601(text: str, expected: dt.datetime) -> None:
    parsed = parse_datetime("at", text)
    assert parsed == expected and parsed.tzinfo is not None


@pytest.mark.parametrize("text", ["10:30", "T10:30", "12", "Nov 2 2026", "garbage", "", "P1D", "1767225600"])
def test_parse_datetime_refuses_what_is_not_a_dated_iso_8601_text(text: str) -> None:
    """A bare time would be read as that time *today*: a different date on every run."""
    with pytest.raises(ValueError, match=r"^at: .* is not an ISO-8601 date or date-time$"):
        parse_datetime("at", text)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (dt.datetime(2026, 1, 2, 3, 4, 5), "2026-01-02T03:04:05.000Z"),
        (dt.datetime(2026, 1, 2, 3, 4, 5, 999999), "2026-01-02T03:04:05.999Z"),
        (dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone(dt.timedelta(hours=-5))), "2026-01-02T08:04:05.000Z"),
        (dt.date(2026, 1, 2), "2026-01-02T00:00:00.000Z"),
        (dt.datetime.max, "9999-12-31T23:59:59.999Z"),
    ],
    ids=repr,
)
def test_loops_datetime_is_the_one_date_form(value: dt.date, expected: str) -> None:
    assert loops_datetime(value) == expected


def test_loops_datetime_refuses_an_instant_with_no_utc_form() -> None:
    with pytest.raises(ValueError, match="outside the years 1-9999"):
        loops_datetime(dt.datetime(1, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=5))))


#: Years before 1000 went out as ``1-01-01T…``, which is no ECMA-262 date time string (its years are 4 digits,
#: 0000-9999: https://tc39.es/ecma262/#sec-date-time-string-format) and which Loops refuses.
EVERY_CENTURY = [
    (dt.datetime(1, 1, 1), "0001-01-01T00:00:00.000Z"),
    (dt.datetime(999, 12, 31, 23, 59, 59, 999000), "0999-12-31T23:59:59.999Z"),
    (dt.date(1000, 1, 1), "1000-01-01T00:00:00.000Z"),
    (dt.datetime(9999, 12, 31, 23, 59, 59, 999999), "9999-12-31T23:59:59.999Z"),
    (dt.datetime(1899, 12, 31, 23, 0, tzinfo=dt.timezone(dt.timedelta(hours=-5))), "1900-01-01T04:00:00.000Z"),
]


@pytest.mark.parametrize(("value", "expected"), EVERY_CENTURY, ids=repr)
def test_every_year_goes_out_with_four_digits(value: dt.date, expected: str) -> None:
    assert loops_datetime(value) == expected
    assert coerce("at", value.isoformat(), "date") == expected  # a date property given ISO text
    assert (
        body("e", {"event_text": "E", "email": "a@example.com", "at": value}, event_rule("e"))["eventProperties"]["at"]
        == expected
    )


def test_epoch_milliseconds_of_year_one_go_out_with_four_digits() -> None:
    assert coerce("at", -62_135_596_800_000, "date") == "0001-01-01T00:00:00.000Z"


def test_dates_of_every_century_reach_loops(make_sandbox: Any, tmp_path: Path) -> None:
    """Through the CLI: the sandbox reads dates as Loops documents them (ECMA-262), and takes each of these."""
    sandbox = make_sandbox(properties=[{"key": "signedUpAt", "type": "date"}])
    texts = ["0001-01-01", "0999-12-31T23:59:59.999Z", "1000-01-01T00:00:00Z", "9999-12-31T23:59:59.999Z",
             "1899-12-31T23:00:00-05:00"]  # fmt: skip
    expected = [x for _, x in EVERY_CENTURY]
    rows = [
        record("identifies", {"id": f"i{n}", "user_id": f"u{n}", "email": f"u{n}@example.com", "signed_up_at": t})
        for n, t in enumerate(texts)
    ]
    columns = {"id": "string", "user_id": "string", "email": "string",
               "signed_up_at": {"type": ["string", "null"], "format": "date-time"}}  # fmt: skip
    run = run_target(sandbox_config(sandbox, tmp_path), singer(schema("identifies", columns, ["id"]), *rows),
                     tmp_path=tmp_path)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.rejects == []
    assert [sandbox.store.find(user_id=f"u{n}")["signedUpAt"] for n in range(len(texts))] == expected  # type: ignore[index]


@pytest.mark.parametrize(
    "value",
    [
        "2026-12-01T10:30:00+02:00",
        dt.datetime(2026, 12, 1, 8, 30),
        dt.datetime(2026, 12, 1, 8, 30, tzinfo=dt.timezone.utc),
    ],
    ids=repr,
)
def test_event_property_and_contact_date_are_sent_in_the_same_form(value: Any) -> None:
    """A date sent as an event property (the rule engine) and as a contact date property (coercion) read alike."""
    record = {"event_text": "E", "email": "a@example.com", "at": value}
    event_value = body("e", record, event_rule("e"))["eventProperties"]["at"]
    expected = "2026-12-01T08:30:00.000Z"
    assert coerce("at", value, "date") == expected
    assert event_value == (value if isinstance(value, str) else expected)  # text is sent as the record wrote it


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-01-01T00:00:00Z", "2026-01-01T00:00:00+00:00"),
        ("2026-01-01", "2026-01-01T00:00:00+00:00"),
        (dt.datetime(2026, 1, 1, 0, 0, 0, 500), "2026-01-01T00:00:00.000500+00:00"),
        ("10:30", None),
        (1767225600, None),
        (None, None),
    ],
    ids=repr,
)
def test_sort_key_keeps_its_comparable_form(value: Any, expected: str | None) -> None:
    """Sort keys order updates and the ledger keeps them between runs (``seen_at``): microseconds, ``+00:00``."""
    assert sort_key(value) == expected


# --------------------------------------------------------------------------------------------------- hash text


def _json_text(value: Any) -> str:
    """The text hashes and fingerprints have always been computed from (``json.dumps``, keys sorted)."""
    return json.dumps(value, default=json_default, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


def test_canonical_json_is_the_text_hashes_were_always_computed_from() -> None:
    """The fast encoder must write exactly what ``json`` writes, or every ledger fingerprint and idempotency key
    recorded by an earlier run would stop matching (contacts re-sent, events sent twice)."""
    for code_point in range(0x110000):
        if not 0xD800 <= code_point < 0xE000:
            text = f"a{chr(code_point)}b"
            assert canonical_json(text) == _json_text(text), hex(code_point)
    values: list[Any] = [
        "\ud800",  # a lone surrogate: json's text, as before
        {"b": 1, "a": {"d": [1, "x", None, True, False], "c": -(2**70)}},
        {"mailingLists": {"cm2": True, "cm1": False}, "email": "ada@example.com", "seats": 3},
        1e16,  # floats take json's path: 1e+16 (msgspec writes 1e16)
        [0.1, 1e-07, -0.0],
        {"when": dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc), "n": decimal.Decimal("1.50")},
        {1: "an int key"},
    ]
    for value in values:
        assert canonical_json(value) == _json_text(value), value
