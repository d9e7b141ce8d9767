"""Applying rules: records → ``Operation`` / ``Rejection``, as pure functions.

No I/O and no HTTP: every test maps an in-memory record and compares the exact request body, idempotency key,
contact key and sort key with what Segment's shapes and Loops' API reference (https://loops.so/docs/api-reference)
ask for. Tests that once showed a bug stay as regression tests. The rule keys and their parsing are tested in
test_rule_fields.py, single values in test_rule_values.py.
"""

from __future__ import annotations

import copy
import datetime as dt
from typing import Any

import pytest
from rule_helpers import (
    DELETE,
    EVENT,
    FLAT_IDENTIFY,
    FLAT_IDENTIFY_BODY,
    FLAT_ORDER_ROW,
    FLAT_TRACK,
    FLAT_TRACK_BODY,
    FLAT_USER,
    FLAT_USER_BODY,
    NESTED_IDENTIFY,
    NESTED_IDENTIFY_BODY,
    NESTED_TRACK,
    NESTED_TRACK_BODY,
    RESERVED_TARGETS,
    UPSERT,
    D,
    body,
    contact_rule,
    default_key,
    event_rule,
    mapper,
    reject,
    run,
)

from target_loops import defaults
from target_loops.fields import (
    RuleError,
    match_rule,
    parse_rule,
    parse_rules,
)
from target_loops.operations import Action, Operation, Rejection
from target_loops.rules import StreamMapper
from target_loops.values import PARTIAL_MAILING_LIST, camel_case, partial_list_id

# --------------------------------------------------------------------------------------------------- defaults


@pytest.mark.parametrize(
    ("stream", "record", "method_path", "expected_body", "key", "contact_key", "sort_key"),
    [
        pytest.param(
            "identifies",
            NESTED_IDENTIFY,
            UPSERT,
            NESTED_IDENTIFY_BODY,
            None,
            "u:u_1001",
            "2026-11-01T09:00:00+00:00",
            id="identifies-nested",
        ),
        pytest.param(
            "identify",
            NESTED_IDENTIFY,
            UPSERT,
            NESTED_IDENTIFY_BODY,
            None,
            "u:u_1001",
            "2026-11-01T09:00:00+00:00",
            id="identify-nested",
        ),
        pytest.param(
            "users",
            {k: v for k, v in NESTED_IDENTIFY.items() if k != "timestamp"},
            UPSERT,
            NESTED_IDENTIFY_BODY,
            None,
            "u:u_1001",
            None,
            id="users-nested",
        ),
        pytest.param(
            "identifies",
            FLAT_IDENTIFY,
            UPSERT,
            FLAT_IDENTIFY_BODY,
            None,
            "u:w_2001",
            "2026-11-02T08:00:00+00:00",
            id="identifies-flat",
        ),
        pytest.param(
            "identify",
            FLAT_IDENTIFY,
            UPSERT,
            FLAT_IDENTIFY_BODY,
            None,
            "u:w_2001",
            "2026-11-02T08:00:00+00:00",
            id="identify-flat",
        ),
        pytest.param("users", FLAT_USER, UPSERT, FLAT_USER_BODY, None, "u:w_3001", None, id="users-flat"),
        pytest.param(
            "tracks",
            NESTED_TRACK,
            EVENT,
            NESTED_TRACK_BODY,
            default_key("Order Completed", "ajs-msg-101"),
            "u:u_1001",
            "2026-11-01T10:00:00.250000+00:00",
            id="tracks-nested",
        ),
        pytest.param(
            "track",
            NESTED_TRACK,
            EVENT,
            NESTED_TRACK_BODY,
            default_key("Order Completed", "ajs-msg-101"),
            "u:u_1001",
            "2026-11-01T10:00:00.250000+00:00",
            id="track-nested",
        ),
        pytest.param(
            "tracks",
            FLAT_TRACK,
            EVENT,
            FLAT_TRACK_BODY,
            default_key("Order Completed", "wh-tr-001"),
            "u:w_2001",
            "2026-11-02T08:00:00+00:00",
            id="tracks-flat",
        ),
        pytest.param(
            "track",
            FLAT_TRACK,
            EVENT,
            FLAT_TRACK_BODY,
            default_key("Order Completed", "wh-tr-001"),
            "u:w_2001",
            "2026-11-02T08:00:00+00:00",
            id="track-flat",
        ),
    ],
)
def test_default_rules_exact_requests(
    stream: str,
    record: dict[str, Any],
    method_path: tuple[str, str],
    expected_body: dict[str, Any],
    key: str | None,
    contact_key: str,
    sort_key: str | None,
) -> None:
    op = run(stream, record)
    assert (op.request.method, op.request.path) == method_path
    assert op.request.body == expected_body
    assert op.request.idempotency_key == key
    assert op.contact_key == contact_key
    assert op.sort_key == sort_key
    assert op.record == record
    assert op.action is (Action.SEND_EVENT if method_path == EVENT else Action.UPSERT_CONTACT)


@pytest.mark.parametrize(
    ("stream", "action"),
    [
        ("identifies", Action.UPSERT_CONTACT),
        ("identify", Action.UPSERT_CONTACT),
        ("users", Action.UPSERT_CONTACT),
        ("tracks", Action.SEND_EVENT),
        ("track", Action.SEND_EVENT),
    ],
)
def test_builtin_rules_route_segment_streams(stream: str, action: Action) -> None:
    rule = match_rule(parse_rules(None), stream)
    assert rule is not None
    assert rule.builtin
    assert rule.action is action
    assert rule.label.startswith("built-in rule")


def test_builtin_rules_are_the_segment_streams_also_as_sql_taps_name_them() -> None:
    rules = parse_rules(None)
    assert [(r.stream, r.action) for r in rules if r.action is not Action.SKIP] == [
        ("identifies", Action.UPSERT_CONTACT),
        ("identify", Action.UPSERT_CONTACT),
        ("users", Action.UPSERT_CONTACT),
        ("tracks", Action.SEND_EVENT),
        ("track", Action.SEND_EVENT),
        ("*-identifies", Action.UPSERT_CONTACT),
        ("*-users", Action.UPSERT_CONTACT),
        ("*-tracks", Action.SEND_EVENT),
    ]
    assert match_rule(rules, "pages").action is Action.SKIP  # Segment's page views: counted, not sent
    assert match_rule(rules, "order_completed") is None
    assert match_rule(rules, "web_app-identifies").action is Action.UPSERT_CONTACT
    users_rule = match_rule(rules, "web_app-users")
    users = StreamMapper(users_rule, "web_app-users").map({"id": "u9", "email": "x@example.com"})
    assert users.request.body == {"email": "x@example.com", "userId": "u9"}
    assert match_rule(rules, "web_app-order_completed") is None


def test_seed_identify_email_falls_back_to_top_level_email() -> None:
    record = copy.deepcopy(NESTED_IDENTIFY)
    del record["traits"]["email"]
    b = body("identify", record)
    assert b["email"] == "top-level@example.com"
    assert "top-level" not in str({k: v for k, v in b.items() if k != "email"})


def test_nested_first_name_snake_case_trait_fallback() -> None:
    record = {"messageId": "m", "userId": "u", "traits": {"first_name": "Ada", "last_name": "L", "user_group": "g"}}
    assert body("identify", record) == {"userId": "u", "firstName": "Ada", "lastName": "L", "userGroup": "g"}


def test_flat_tracks_event_name_falls_back_to_event_slug() -> None:
    record = {**FLAT_TRACK, "event_text": None}
    assert body("tracks", record)["eventName"] == "order_completed"


def test_flat_per_event_table_sends_its_own_columns_as_camel_cased_event_properties() -> None:
    op = run("order_completed", FLAT_ORDER_ROW, event_rule("order_completed"))
    assert op.request.body == {
        "email": "linus@example.com",
        "userId": "w_2001",
        "eventName": "Order Completed",
        "eventProperties": {"orderTotal": 120.5, "couponCode": "WELCOME", "itemCount": 3},
    }
    assert op.request.idempotency_key == default_key("Order Completed", "wh-tr-001")


def test_users_flat_falls_back_to_user_id_column_when_id_absent() -> None:
    record = {"user_id": D("42"), "email": "a@example.com"}
    assert body("users", record) == {"userId": "42", "email": "a@example.com"}


def test_shape_detection_picks_defaults_per_record_on_one_stream() -> None:
    m = mapper("identifies")
    nested = m.map(copy.deepcopy(NESTED_IDENTIFY))
    flat = m.map(copy.deepcopy(FLAT_IDENTIFY))
    assert isinstance(nested, Operation) and isinstance(flat, Operation)
    assert nested.request.body == NESTED_IDENTIFY_BODY
    assert flat.request.body == FLAT_IDENTIFY_BODY


@pytest.mark.parametrize(
    ("shape", "record", "expected"),
    [
        pytest.param(
            "flat",
            {"messageId": "m", "user_id": "1", "email": "a@b.co"},
            {"userId": "1", "email": "a@b.co", "messageId": "m"},  # a plain column once the shape is flat
        ),
        pytest.param("nested", {"userId": "1", "traits_x": 1, "email": "a@b.co"}, {"userId": "1", "email": "a@b.co"}),
    ],
    ids=["forced-flat-despite-messageId", "forced-nested-without-markers"],
)
def test_rule_shape_forces_the_defaults(shape: str, record: dict[str, Any], expected: dict[str, Any]) -> None:
    assert body("accounts", record, contact_rule(shape=shape)) == expected


@pytest.mark.parametrize(
    ("record", "nested"),
    [
        ({"messageId": "m"}, True),
        ({"traits": {}}, True),
        ({"properties": {}}, True),
        ({"context": {}}, True),
        ({"traits": None, "context": "x"}, False),
        ({"user_id": "1", "context_ip": "x"}, False),
    ],
    ids=["messageId", "traits-object", "properties-object", "context-object", "null-and-string", "warehouse-row"],
)
def test_looks_nested(record: dict[str, Any], nested: bool) -> None:
    assert defaults.looks_nested(record) is nested


# --------------------------------------------------------------------------------------------------- properties


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        pytest.param(
            {},
            {"email": "ada@example.com", "userId": "u_1001", "plan": "pro", "favorite_color": "red", "seats": 3},
            id="default-traits-path-no-camel",
        ),
        pytest.param(
            {"properties": "traits", "camel_case": True},
            {"email": "ada@example.com", "userId": "u_1001", "plan": "pro", "favoriteColor": "red", "seats": 3},
            id="path-with-camel",
        ),
        pytest.param(
            {"properties": "traits", "include": ["plan", "email"]},
            {"email": "ada@example.com", "userId": "u_1001", "plan": "pro"},
            id="include",
        ),
        pytest.param(
            {"properties": "traits", "exclude": ["seats"]},
            {"email": "ada@example.com", "userId": "u_1001", "plan": "pro", "favorite_color": "red"},
            id="exclude",
        ),
        pytest.param(
            {"properties": "traits", "include": ["plan", "seats"], "exclude": ["seats"]},
            {"email": "ada@example.com", "userId": "u_1001", "plan": "pro"},
            id="exclude-beats-include",
        ),
        pytest.param(
            {"properties": "traits", "camel_case": True, "rename": {"favorite_color": "colour", "plan": "planName"}},
            {"email": "ada@example.com", "userId": "u_1001", "planName": "pro", "colour": "red", "seats": 3},
            id="rename-wins-over-camel",
        ),
        pytest.param(
            {"properties": "*"},
            {"email": "ada@example.com", "userId": "u_1001", "customerTier": "gold"},
            id="star-on-nested-top-level-camel",
        ),
        pytest.param(
            {"properties": "*", "camel_case": False},
            {"email": "ada@example.com", "userId": "u_1001", "customer_tier": "gold"},
            id="star-camel-off",
        ),
        pytest.param(
            {"properties": "context.traits"},
            {"email": "ada@example.com", "userId": "u_1001", "locale": "en"},
            id="deeper-path",
        ),
        pytest.param(
            {"properties": "nothing.here"},
            {"email": "ada@example.com", "userId": "u_1001"},
            id="absent-path-sends-no-properties",
        ),
    ],
)
def test_property_sources_on_nested_records(options: dict[str, Any], expected: dict[str, Any]) -> None:
    record = {
        "type": "identify",
        "messageId": "m-1",
        "anonymousId": "anon",
        "userId": "u_1001",
        "customer_tier": "gold",
        "context": {"traits": {"locale": "en"}},
        "traits": {"email": "ada@example.com", "plan": "pro", "favorite_color": "red", "seats": 3},
    }
    assert body("identify", record, contact_rule("identify", **options)) == expected


@pytest.mark.parametrize(
    ("options", "expected_props"),
    [
        pytest.param({}, {"planName": "pro", "favoriteColor": "red", "seatCount": 3}, id="star-default-camel"),
        pytest.param(
            {"camel_case": False}, {"plan_name": "pro", "favorite_color": "red", "seat_count": 3}, id="camel-off"
        ),
        pytest.param({"include": ["plan_name"]}, {"planName": "pro"}, id="include-source-names"),
        pytest.param({"include": ["planName"]}, {}, id="include-loops-names-do-not-match"),
        pytest.param({"exclude": ["favorite_color", "seat_count"]}, {"planName": "pro"}, id="exclude"),
        pytest.param(
            {"rename": {"plan_name": "plan"}},
            {"plan": "pro", "favoriteColor": "red", "seatCount": 3},
            id="rename",
        ),
        pytest.param({"include": ["id", "uuid", "plan_name"]}, {"planName": "pro"}, id="include-cannot-revive-system"),
    ],
)
def test_property_options_on_flat_rows(options: dict[str, Any], expected_props: dict[str, Any]) -> None:
    record = {
        "id": "row-1",
        "uuid": 9,
        "email": "a@example.com",
        "plan_name": "pro",
        "favorite_color": "red",
        "seat_count": 3,
    }
    assert body("accounts", record, contact_rule(**options)) == {"email": "a@example.com", **expected_props}


SYSTEM_COLUMNS = [
    "id",
    "uuid",
    "uuid_ts",
    "loaded_at",
    "received_at",
    "sent_at",
    "original_timestamp",
    "timestamp",
    "anonymous_id",
    "user_id",
    "event",
    "event_text",
    "context_ip",
    "context_library_name",
    "context_traits_email",
    "_sdc_batched_at",
    "_sdc_extracted_at",
    "_sdc_deleted_at",
    "_sdc_sequence",
]


@pytest.mark.parametrize("column", SYSTEM_COLUMNS)
@pytest.mark.parametrize("action", ["upsert_contact", "send_event"])
def test_system_columns_never_become_properties(column: str, action: str) -> None:
    # An event reads context_traits_email as its email (a value that is one, so the record is not rejected).
    value = "system-value@example.com" if column == "context_traits_email" else "system-value"
    record = {"email": "a@example.com", "what": "Signed Up", "plan": "pro", column: value}
    rule: dict[str, Any] = {"stream": "accounts", "action": action, "properties": "*"}
    if action == "send_event":
        rule["event_name"] = "what"
    op = run("accounts", record, [rule])
    b = op.request.body
    props = [b.get("eventProperties", {})] if action == "send_event" else []
    props.append({k: v for k, v in b.items() if k not in {"email", "userId", "eventName", "eventProperties"}})
    for found in props:
        assert found.get("plan") == "pro"
        assert value not in found.values()
    assert not op.skipped_keys


@pytest.mark.parametrize(
    "key",
    [
        "type",
        "messageId",
        "anonymousId",
        "userId",
        "timestamp",
        "receivedAt",
        "sentAt",
        "originalTimestamp",
        "integrations",
        "channel",
        "version",
        "_metadata",
        "writeKey",
    ],
)
def test_nested_envelope_keys_never_become_properties(key: str) -> None:
    record = {"messageId": "m", "userId": "u", "email": "a@example.com", "plan": "pro", key: "envelope"}
    b = body("identify", record, contact_rule("identify", properties="*"))
    assert "envelope" not in [v for k, v in b.items() if k not in {"email", "userId"}]
    assert b["plan"] == "pro"


def test_nested_envelope_keys_are_plain_columns_on_flat_rows() -> None:
    # "type" is a system key only in Segment JSON; a warehouse table may have a real "type" column
    b = body("accounts", {"email": "a@example.com", "type": "business"}, contact_rule())
    assert b == {"email": "a@example.com", "type": "business"}


@pytest.mark.parametrize(
    ("rules", "record", "not_in_properties"),
    [
        pytest.param(
            contact_rule(
                email="contact_email",
                user_id="account_id",
                first_name="given",
                last_name="family",
                user_group="tier",
                source="origin",
            ),
            {
                "contact_email": "a@example.com",
                "account_id": 1,
                "given": "A",
                "family": "B",
                "tier": "t",
                "origin": "o",
                "plan": "pro",
            },
            ["contactEmail", "accountId", "given", "family", "tier", "origin"],
            id="flat-upsert-fields",
        ),
        pytest.param(
            contact_rule(mailing_lists={"prefix": "ml_"}),
            {"email": "a@example.com", "ml_news": True, "plan": "pro"},
            ["mlNews"],
            id="flat-upsert-prefix",
        ),
        pytest.param(
            contact_rule(email="contact.email"),
            {"contact": {"email": "a@example.com"}, "plan": "pro"},
            ["contact"],
            id="flat-upsert-nested-path-top-level",
        ),
        pytest.param(
            contact_rule("identify", email="traits.work_email", first_name="traits.given"),
            {"messageId": "m", "traits": {"work_email": "a@example.com", "given": "A", "plan": "pro"}},
            ["work_email", "given"],
            id="nested-traits-paths",
        ),
    ],
)
def test_keys_consumed_by_field_specs_are_not_sent_again(
    rules: list[dict[str, Any]], record: dict[str, Any], not_in_properties: list[str]
) -> None:
    b = body(rules[0]["stream"], record, rules)
    assert b["plan"] == "pro"
    for key in not_in_properties:
        assert key not in b


@pytest.mark.parametrize(
    ("rules", "record", "not_in_event_properties"),
    [
        pytest.param(
            event_rule(event_name="what", idempotency_key="row_key", email="mail", user_id="who"),
            {"what": "Signed Up", "row_key": "k1", "mail": "a@example.com", "who": "u1", "plan": "pro"},
            ["what", "rowKey", "mail", "who"],
            id="flat-event-fields",
        ),
        pytest.param(
            event_rule(),
            {**FLAT_TRACK, "email": "e@example.com", "plan": "pro"},
            ["email"],
            id="flat-event-default-email",
        ),
        pytest.param(
            event_rule("track"),
            {"messageId": "m", "event": "E", "userId": "u", "properties": {"email": "a@example.com", "plan": "pro"}},
            ["email"],
            id="nested-event-properties-email",
        ),
    ],
)
def test_keys_consumed_by_event_field_specs_are_not_sent_again(
    rules: list[dict[str, Any]], record: dict[str, Any], not_in_event_properties: list[str]
) -> None:
    props = body(rules[0]["stream"], record, rules)["eventProperties"]
    assert props["plan"] == "pro"
    for key in not_in_event_properties:
        assert key not in props


# traits.email, traits.firstName ... are read by their own default field spec, so they are not "spread" at all
_CONSUMED_TRAITS = {"email", "userId", "mailingLists", "firstName", "lastName", "userGroup", "source"}


@pytest.mark.parametrize("name", [n for n in RESERVED_TARGETS if n not in _CONSUMED_TRAITS])
def test_reserved_and_body_keys_are_never_spread_from_traits(name: str) -> None:
    record = {"messageId": "m", "userId": "u_1", "traits": {"email": "a@example.com", "plan": "pro", name: "X"}}
    op = run("identify", record)
    assert op.request.body.get(name) != "X"
    assert op.request.body["plan"] == "pro"
    assert op.skipped_keys == (name,)


@pytest.mark.parametrize(
    ("column", "loops_name"),
    [
        ("subscribed", "subscribed"),
        ("updated_at", "updatedAt"),
        ("notes", "notes"),
        ("list_id", "listId"),
        ("team_id", "teamId"),
        ("soft_delete_at", "softDeleteAt"),
        ("opt_in_status", "optInStatus"),
        ("mailing_lists", "mailingLists"),
        ("event_name", "eventName"),
        ("event_properties", "eventProperties"),
        ("firstName", "firstName"),
        ("userId", "userId"),
        ("SUBSCRIBED", "subscribed"),
    ],
)
def test_reserved_and_body_keys_are_never_spread_from_columns(column: str, loops_name: str) -> None:
    op = run("accounts", {"email": "a@example.com", "plan": "pro", column: "X"}, contact_rule())
    assert op.request.body == {"email": "a@example.com", "plan": "pro"}
    assert op.skipped_keys == (column,)
    assert camel_case(column) == loops_name


@pytest.mark.parametrize(
    ("stream", "record", "rename", "expected"),
    [
        pytest.param(
            "accounts",
            {"email": "a@x.co", "created_at": "2026-01-01", "subscribed": True},
            {"created_at": "signupDate", "subscribed": "marketingConsent"},
            {"email": "a@x.co", "signupDate": "2026-01-01", "marketingConsent": True},
            id="flat",
        ),
        pytest.param(
            "identify",
            {"messageId": "m", "userId": "1", "traits": {"createdAt": "2026-01-01", "id": "acct-9"}},
            {"createdAt": "signupDate", "id": "accountId"},
            {"userId": "1", "signupDate": "2026-01-01", "accountId": "acct-9"},
            id="nested",
        ),
    ],
)
def test_rename_sends_a_reserved_source_key_under_another_name(
    stream: str, record: dict[str, Any], rename: dict[str, str], expected: dict[str, Any]
) -> None:
    op = run(stream, record, contact_rule(stream, rename=rename))
    assert op.request.body == expected
    assert op.skipped_keys == ()


def test_reserved_keys_are_skipped_from_event_contact_properties_but_allowed_in_event_properties() -> None:
    record = {"event_text": "Upgraded", "email": "a@example.com", "plan": "pro", "subscribed": True}
    op = run("upgrades", record, event_rule("upgrades", properties="*"))
    assert op.request.body == {
        "email": "a@example.com",
        "plan": "pro",
        "eventName": "Upgraded",
        "eventProperties": {"plan": "pro", "subscribed": True},
    }
    assert op.skipped_keys == ("subscribed",)


@pytest.mark.parametrize(
    ("send_nulls", "expected"),
    [
        (False, {"email": "a@example.com", "userId": "1", "plan": "pro"}),
        (
            True,
            {
                "email": "a@example.com",
                "userId": "1",
                "plan": "pro",
                "seats": None,
                "firstName": None,
                "lastName": None,
                "userGroup": None,
                "source": None,
            },
        ),
    ],
    ids=["off-nulls-left-out", "on-nulls-sent-as-clears"],
)
def test_send_nulls_for_null_columns(send_nulls: bool, expected: dict[str, Any]) -> None:
    record = {
        "user_id": "1",
        "email": "a@example.com",
        "plan": "pro",
        "seats": None,
        "first_name": None,
        "last_name": None,
        "user_group": None,
        "source": None,
        "mailing_lists_news": None,
    }
    assert body("accounts", record, contact_rule(send_nulls=send_nulls)) == expected


def test_send_nulls_default_is_off() -> None:
    assert body("accounts", {"email": "a@example.com", "plan": None, "first_name": None}, contact_rule()) == {
        "email": "a@example.com"
    }


@pytest.mark.parametrize(
    ("stream", "record", "expected"),
    [
        pytest.param(
            "identifies",
            {"user_id": "1", "email": "a@example.com", "plan": None, "first_name": None},
            {"userId": "1", "email": "a@example.com", "plan": None, "firstName": None},
            id="flat-table-without-last_name-user_group-source-columns",
        ),
        pytest.param(
            "identify",
            {"messageId": "m", "userId": "1", "traits": {"email": "a@example.com", "plan": None}},
            {"userId": "1", "email": "a@example.com", "plan": None},
            id="nested-identify-without-name-traits",
        ),
    ],
)
def test_send_nulls_does_not_clear_fields_absent_from_the_record(
    stream: str, record: dict[str, Any], expected: dict[str, Any]
) -> None:
    assert body(stream, record, contact_rule(stream, send_nulls=True)) == expected


# --------------------------------------------------------------------------------------------------- subscribed


@pytest.mark.parametrize(
    ("stream", "record"),
    [
        pytest.param(
            "identify",
            {"messageId": "m", "userId": "u", "traits": {"email": "a@example.com", "subscribed": True}},
            id="nested-trait",
        ),
        pytest.param("identifies", {"user_id": "u", "email": "a@example.com", "subscribed": True}, id="flat-column"),
        pytest.param("users", {"id": "u", "email": "a@example.com", "subscribed": "true"}, id="users-column"),
    ],
)
def test_subscribed_trait_is_never_sent_without_an_explicit_mapping(stream: str, record: dict[str, Any]) -> None:
    op = run(stream, record)
    assert "subscribed" not in op.request.body
    assert op.skipped_keys == ("subscribed",)


TRUE_VALUES = [True, "true", " yes ", "1", 1, D("1")]
FALSE_VALUES = [False, "FALSE", "n", "0", 0, D("0")]


def subscribed_op(value: Any, **options: Any) -> Operation:
    record = {"messageId": "m", "userId": "u", "traits": {"email": "a@example.com", "subscribed": value}}
    return run("identify", record, contact_rule("identify", subscribed="traits.subscribed", **options))


@pytest.mark.parametrize("value", FALSE_VALUES, ids=repr)
@pytest.mark.parametrize("allow", [None, False, True], ids=["default", "allow-off", "allow-on"])
def test_subscribed_false_is_sent_when_mapped(value: Any, allow: bool | None) -> None:
    op = subscribed_op(value, **({} if allow is None else {"allow_resubscribe": allow}))
    assert op.request.body["subscribed"] is False
    assert op.skipped_keys == ()
    assert op.resubscribe_blocked is False


@pytest.mark.parametrize("value", TRUE_VALUES, ids=repr)
@pytest.mark.parametrize("allow", [None, False], ids=["default", "allow-off"])
def test_subscribed_true_mapped_is_blocked_unless_resubscribe_allowed(value: Any, allow: bool | None) -> None:
    op = subscribed_op(value, **({} if allow is None else {"allow_resubscribe": allow}))
    assert "subscribed" not in op.request.body
    assert op.resubscribe_blocked is True
    assert op.request.body == {"email": "a@example.com", "userId": "u"}


@pytest.mark.parametrize("value", TRUE_VALUES, ids=repr)
def test_subscribed_true_mapped_and_allowed_is_sent(value: Any) -> None:
    op = subscribed_op(value, allow_resubscribe=True)
    assert op.request.body["subscribed"] is True
    assert op.resubscribe_blocked is False


@pytest.mark.parametrize(("value", "allow"), [(False, False), (True, True), (True, False)])
def test_subscribed_constant(value: bool, allow: bool) -> None:
    op = run("accounts", {"email": "a@example.com"}, contact_rule(subscribed={"value": value}, allow_resubscribe=allow))
    sent = value is False or allow
    assert op.request.body == ({"email": "a@example.com", "subscribed": value} if sent else {"email": "a@example.com"})
    assert op.resubscribe_blocked is not sent


@pytest.mark.parametrize(
    ("stream", "record"),
    [
        pytest.param("identify", {"messageId": "m", "userId": "u", "traits": {"subscribed": True}}, id="nested"),
        pytest.param("identifies", {"user_id": "u", "subscribed": "true"}, id="flat"),
    ],
)
def test_allow_resubscribe_alone_never_sends_an_unmapped_subscribed_trait(stream: str, record: dict[str, Any]) -> None:
    op = run(stream, record, contact_rule(stream, allow_resubscribe=True))
    assert op.request.body == {"userId": "u"}
    assert op.skipped_keys == ("subscribed",)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"stream": "s", "action": "upsert_contact", "allow_resubscribe": "yes"}, '"allow_resubscribe" must be true'),
        (
            {"stream": "s", "action": "send_event", "allow_resubscribe": True},
            r"unknown key\(s\) \['allow_resubscribe'\]",
        ),
    ],
    ids=["not-a-bool", "not-for-events"],
)
def test_allow_resubscribe_validation(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(RuleError, match=message):
        parse_rule(raw, 0)


def test_subscribed_mapped_but_null_is_left_out() -> None:
    assert body("accounts", {"email": "a@example.com", "opt_in": None}, contact_rule(subscribed="opt_in")) == {
        "email": "a@example.com"
    }


@pytest.mark.parametrize("value", ["maybe", 2, D("0.5"), 1.0, [True], {"a": True}], ids=repr)
def test_subscribed_bad_value_is_rejected(value: Any) -> None:
    rejection = reject("accounts", {"email": "a@example.com", "opt_in": value}, contact_rule(subscribed="opt_in"))
    assert rejection.reason == "invalid_boolean"


# --------------------------------------------------------------------------------------------------- mailing lists


@pytest.mark.parametrize(
    ("lists", "expected"),
    [
        ({"l1": True, "l2": False}, {"l1": True, "l2": False}),
        ({"l1": "true", "l2": "false"}, {"l1": True, "l2": False}),
        ({"l1": 1, "l2": 0}, {"l1": True, "l2": False}),
        ({"l1": D("1"), "l2": D("0")}, {"l1": True, "l2": False}),
        ({"l1": "Yes", "l2": "no"}, {"l1": True, "l2": False}),
        ({"l1": True, "l2": None}, {"l1": True}),
        ({"l1": None}, None),
        ({}, None),
        (None, None),
    ],
    ids=["booleans", "strings", "ints", "decimals", "yes-no", "null-dropped", "all-null", "empty", "absent"],
)
def test_nested_mailing_lists(lists: Any, expected: dict[str, bool] | None) -> None:
    record = {"messageId": "m", "userId": "u", "traits": {"mailingLists": lists}}
    b = body("identify", record)
    assert b.get("mailingLists") == expected
    assert "mailing_lists" not in b


@pytest.mark.parametrize(
    ("columns", "expected"),
    [
        ({"mailing_lists_l1": True, "mailing_lists_l2": False}, {"l1": True, "l2": False}),
        ({"mailing_lists_l1": "1", "mailing_lists_l2": "f"}, {"l1": True, "l2": False}),
        ({"mailing_lists_cm06f5v0e45nf0ml5754o9cix": 1}, {"cm06f5v0e45nf0ml5754o9cix": True}),
        ({"mailing_lists_l1": None, "mailing_lists_l2": True}, {"l2": True}),
        ({"mailing_lists_l1": None}, None),
        ({}, None),
    ],
    ids=["booleans", "strings", "real-list-id", "null-dropped", "all-null", "no-columns"],
)
def test_flat_mailing_list_columns(columns: dict[str, Any], expected: dict[str, bool] | None) -> None:
    b = body("identifies", {"user_id": "u", "email": "a@example.com", **columns})
    assert b.get("mailingLists") == expected
    assert not any(k.startswith("mailingLists") and k != "mailingLists" for k in b)


@pytest.mark.parametrize(
    ("lists", "reason"),
    [
        (["l1"], "invalid_mailing_lists"),
        ("l1", "invalid_mailing_lists"),
        (True, "invalid_mailing_lists"),
    ],
    ids=["list", "string", "bool"],
)
def test_bad_mailing_lists_are_rejected(lists: Any, reason: str) -> None:
    record = {"messageId": "m", "userId": "u", "traits": {"email": "a@example.com", "mailingLists": lists}}
    assert reject("identify", record).reason == reason


def test_event_mailing_lists_only_when_mapped() -> None:
    record = {"event_text": "Joined", "email": "a@example.com", "lists": {"l1": "true"}, "id": "k"}
    plain = body("joins", {k: v for k, v in record.items() if k != "lists"}, event_rule("joins"))
    assert "mailingLists" not in plain
    mapped = body("joins", record, event_rule("joins", mailing_lists="lists"))
    assert mapped["mailingLists"] == {"l1": True}
    assert "lists" not in mapped.get("eventProperties", {})


# --------------------------------------------------------------------------------------------------- rejections

LONG = "x" * 499  # 501 characters with its JSON quotes: one too many
MAX_OK = "x" * 498  # 500 with its quotes: the most Loops takes
LONG_EMAIL = "a" * 493 + "@b.com"  # 499 characters, a valid address


@pytest.mark.parametrize(
    ("stream", "record", "rules", "reason"),
    [
        pytest.param("identifies", {"plan": "pro"}, None, "no_identifier", id="upsert-no-identifier-flat"),
        pytest.param(
            "identify", {"messageId": "m", "traits": {"plan": "pro"}}, None, "no_identifier", id="upsert-no-id-nested"
        ),
        pytest.param(
            "identifies", {"user_id": None, "email": None, "plan": "p"}, None, "no_identifier", id="upsert-nulls"
        ),
        pytest.param("identifies", {"email": "   "}, None, "no_identifier", id="upsert-blank-email"),
        pytest.param("tracks", {"event_text": "E", "id": "k"}, None, "no_identifier", id="event-no-identifier"),
        pytest.param("identifies", {"email": "not-an-email"}, None, "invalid_email", id="invalid-email"),
        pytest.param("identifies", {"email": "a@b"}, None, "invalid_email", id="email-no-dot-domain"),
        pytest.param("identifies", {"email": "a b@c.de"}, None, "invalid_email", id="email-with-space"),
        pytest.param(
            "identifies", {"user_id": "1", "email": "nope"}, None, "invalid_email", id="invalid-email-with-user-id"
        ),
        pytest.param("tracks", {"user_id": "1", "id": "k"}, None, "no_event_name", id="no-event-name-flat"),
        pytest.param(
            "tracks", {"user_id": "1", "event_text": None, "event": None}, None, "no_event_name", id="null-event-name"
        ),
        pytest.param("tracks", {"user_id": "1", "event_text": "  "}, None, "no_event_name", id="blank-event-name"),
        pytest.param(
            "track", {"messageId": "m", "userId": "1", "properties": {}}, None, "no_event_name", id="no-event-nested"
        ),
        pytest.param("identifies", {"email": "a@b.co", "bio": LONG}, None, "string_too_long", id="long-property"),
        pytest.param("identifies", {"email": LONG_EMAIL}, None, "string_too_long", id="long-email"),
        pytest.param("identifies", {"user_id": LONG}, None, "string_too_long", id="long-user-id"),
        pytest.param("tracks", {"user_id": "1", "event_text": LONG}, None, "string_too_long", id="long-event-name"),
        pytest.param(
            "signups",
            {"user_id": "1", "event_text": "E", "note": LONG},
            event_rule("signups"),
            "string_too_long",
            id="long-event-property",
        ),
        pytest.param(
            "identifies",
            {"email": "a@b.co", "first_name": LONG},
            None,
            "string_too_long",
            id="long-first-name",
        ),
        pytest.param(
            "identify",
            {"messageId": "m", "userId": "1", "traits": {"mailingLists": ["l1"]}},
            None,
            "invalid_mailing_lists",
            id="mailing-lists-list",
        ),
        pytest.param(
            "identify",
            {"messageId": "m", "userId": "1", "traits": "not-an-object"},
            None,
            "properties_not_object",
            id="traits-string",
        ),
        pytest.param(
            "track",
            {"messageId": "m", "userId": "1", "event": "E", "properties": ["a"]},
            None,
            "properties_not_object",
            id="event-properties-list",
        ),
        pytest.param(
            "deletes",
            {"plan": "x"},
            [{"stream": "deletes", "action": "delete_contact"}],
            "no_identifier",
            id="delete-no-identifier",
        ),
    ],
)
def test_local_rejections(stream: str, record: dict[str, Any], rules: list[dict[str, Any]] | None, reason: str) -> None:
    rejection = reject(stream, record, rules)
    assert rejection.reason == reason
    assert rejection.record == record
    assert rejection.request is None
    assert rejection.message


@pytest.mark.parametrize(
    ("stream", "record", "rules"),
    [
        pytest.param("identifies", {"email": "a@b.co", "bio": MAX_OK}, None, id="property-500"),
        pytest.param("identifies", {"user_id": MAX_OK}, None, id="user-id-500"),
        pytest.param("identifies", {"email": "a" * 492 + "@b.com"}, None, id="email-498"),
        pytest.param("tracks", {"user_id": "1", "event_text": MAX_OK}, None, id="event-name-500"),
        pytest.param(
            "signups", {"user_id": "1", "event_text": "E", "n": MAX_OK}, event_rule("signups"), id="event-property-500"
        ),
    ],
)
def test_500_characters_pass(stream: str, record: dict[str, Any], rules: list[dict[str, Any]] | None) -> None:
    run(stream, record, rules)


@pytest.mark.parametrize(
    ("stream", "record", "sent"),
    [
        pytest.param(
            "identifies", {"email": "a@b.co", "address": {"city": "Paris"}}, {"email": "a@b.co"}, id="object-column"
        ),
        pytest.param("identifies", {"email": "a@b.co", "tags": ["a", "b"]}, {"email": "a@b.co"}, id="list-column"),
        pytest.param(
            "identify",
            {"messageId": "m", "userId": "1", "traits": {"address": {"city": "Paris"}, "plan": "pro"}},
            {"userId": "1", "plan": "pro"},
            id="object-trait",
        ),
        pytest.param(
            "track",
            {"messageId": "m", "userId": "1", "event": "E", "properties": {"products": [{"sku": 1}], "total": 9}},
            {"userId": "1", "eventName": "E", "eventProperties": {"total": 9}},
            id="list-event-property",
        ),
    ],
)
def test_a_nested_property_is_left_out_and_the_rest_is_sent(
    stream: str, record: dict[str, Any], sent: dict[str, Any]
) -> None:
    """Segment's standard ``address``/``company`` traits and an order's ``products`` cannot be Loops values; one of
    them must not cost the contact or the event: it is left out, as a partial rejection that says so."""
    op = run(stream, record)
    assert op.request.body == sent
    ((reason, message),) = op.partial
    assert reason == "nested_value" and "left out" in message


def test_nested_value_message_names_the_property_and_the_fix() -> None:
    op = run("identify", {"messageId": "m", "userId": "1", "traits": {"address": {"city": "Paris"}}})
    ((_, message),) = op.partial
    assert "'traits.address'" in message
    assert "exclude" in message


def test_excluded_nested_value_is_not_rejected() -> None:
    record = {"messageId": "m", "userId": "1", "traits": {"address": {"city": "Paris"}, "plan": "pro"}}
    assert body("identify", record, contact_rule("identify", exclude=["address"])) == {"userId": "1", "plan": "pro"}


def test_no_identifier_message_says_where_it_looked() -> None:
    rejection = reject("identifies", {"plan": "pro"})
    assert "'email'" in rejection.message and "'user_id'" in rejection.message


@pytest.mark.parametrize(
    ("name", "expected"),
    [(" Signed Up ", "Signed Up"), (42, "42"), ("Order Completed", "Order Completed")],
    ids=["trimmed", "number", "plain"],
)
def test_event_name_normalization(name: Any, expected: str) -> None:
    assert body("tracks", {"user_id": "1", "event_text": name})["eventName"] == expected


# --------------------------------------------------------------------------------------------------- events


def test_event_properties_never_carry_nulls_even_with_send_nulls() -> None:
    record = {"event_text": "E", "user_id": "1", "id": "k", "plan": None, "coupon": "X"}
    op = run("signups", record, event_rule("signups", send_nulls=True))
    assert op.request.body["eventProperties"] == {"coupon": "X"}


def test_event_without_properties_has_no_event_properties_key() -> None:
    op = run("track", {"messageId": "m", "userId": "1", "event": "E", "properties": {"a": None}})
    assert "eventProperties" not in op.request.body


def test_event_contact_properties_are_top_level_and_may_clear() -> None:
    record = {
        "messageId": "m",
        "userId": "1",
        "event": "Upgraded",
        "traits": {"plan": "pro", "seats": None},
        "properties": {"from": "basic"},
    }
    rules = event_rule("track", properties="traits", send_nulls=True)
    assert body("track", record, rules) == {
        "userId": "1",
        "eventName": "Upgraded",
        "plan": "pro",
        "seats": None,
        "eventProperties": {"from": "basic"},
    }


def test_event_properties_options_path_and_camel_case() -> None:
    record = {"messageId": "m", "userId": "1", "event": "E", "properties": {"order_id": 1, "coupon_code": "C"}}
    rules = event_rule("track", event_properties="properties", camel_case=True, exclude=["coupon_code"])
    assert body("track", record, rules)["eventProperties"] == {"orderId": 1}


@pytest.mark.parametrize(
    ("stream", "record", "rules", "key"),
    [
        pytest.param("track", {**NESTED_TRACK}, None, default_key("Order Completed", "ajs-msg-101"), id="nested-msgid"),
        pytest.param("tracks", {**FLAT_TRACK}, None, default_key("Order Completed", "wh-tr-001"), id="flat-id"),
        pytest.param(
            "tracks", {**FLAT_TRACK, "id": 12345}, None, default_key("Order Completed", "12345"), id="flat-int-id"
        ),
        pytest.param(
            "tracks", {**FLAT_TRACK, "id": "  spaced  "}, None, default_key("Order Completed", "spaced"), id="trimmed"
        ),
        pytest.param(
            "s",
            {"event_text": "E", "user_id": "1", "dedupe": "d-1", "id": "x"},
            event_rule("s", idempotency_key="dedupe"),
            "d-1",
            id="mapped-column",
        ),
        pytest.param(
            "s",
            {"event_text": "E", "user_id": "1", "meta": {"key": "d-2"}},
            event_rule("s", idempotency_key="meta.key", exclude=["meta"]),
            "d-2",
            id="mapped-path",
        ),
        pytest.param(
            "s",
            {"event_text": "E", "user_id": "1", "a": None, "b": "bk"},
            event_rule("s", idempotency_key=["a", "b"]),
            "bk",
            id="mapped-list",
        ),
        pytest.param(
            "s",
            {"event_text": "E", "user_id": "1", "k": "k" * 100},
            event_rule("s", idempotency_key="k"),
            "k" * 100,
            id="mapped-exactly-100-kept",
        ),
    ],
)
def test_mapped_idempotency_key(stream: str, record: dict[str, Any], rules: Any, key: str) -> None:
    assert run(stream, record, rules).request.idempotency_key == key


@pytest.mark.parametrize("length", [101, 150, 500, 5000])
def test_long_idempotency_key_is_hashed_to_at_most_100(length: int) -> None:
    record = {**FLAT_TRACK, "id": "k" * length}
    key = run("tracks", record).request.idempotency_key
    assert key is not None and len(key) <= 100
    assert key.startswith("tl-")
    assert run("tracks", record).request.idempotency_key == key
    other = run("tracks", {**FLAT_TRACK, "id": "k" * (length - 1) + "j"}).request.idempotency_key
    assert other != key


BARE_EVENT = {"event_text": "Signed Up", "user_id": "u1", "plan": "pro", "at": "2026-01-01T00:00:00Z"}


def fallback_key(record: dict[str, Any], stream: str = "signups", key_properties: tuple[str, ...] = ()) -> str:
    op = run(stream, record, event_rule(stream), key_properties=key_properties)
    key = op.request.idempotency_key
    assert key is not None and key.startswith("tl-") and len(key) <= 100
    return key


def test_fallback_key_is_deterministic() -> None:
    assert fallback_key(BARE_EVENT) == fallback_key(dict(BARE_EVENT))
    assert fallback_key(BARE_EVENT) == fallback_key(dict(reversed(list(BARE_EVENT.items()))))


@pytest.mark.parametrize(
    "change",
    [{"plan": "team"}, {"at": "2026-01-01T00:00:01Z"}, {"user_id": "u2"}, {"extra": None}],
    ids=["property", "timestamp", "user", "extra-null-column"],
)
def test_fallback_key_differs_for_a_different_record(change: dict[str, Any]) -> None:
    assert fallback_key({**BARE_EVENT, **change}) != fallback_key(BARE_EVENT)


def test_fallback_key_differs_per_stream() -> None:
    assert fallback_key(BARE_EVENT, "signups") != fallback_key(BARE_EVENT, "signups_v2")


def test_fallback_key_ignores_sdc_columns() -> None:
    with_sdc = {**BARE_EVENT, "_sdc_batched_at": "2026-02-02T00:00:00Z", "_sdc_sequence": 17}
    again = {**BARE_EVENT, "_sdc_batched_at": "2026-03-03T00:00:00Z", "_sdc_sequence": 99}
    assert fallback_key(with_sdc) == fallback_key(BARE_EVENT) == fallback_key(again)


def test_fallback_key_uses_key_properties_when_present() -> None:
    first = fallback_key({**BARE_EVENT, "event_id": 7}, key_properties=("event_id",))
    changed = fallback_key({**BARE_EVENT, "event_id": 7, "plan": "team"}, key_properties=("event_id",))
    assert first == changed  # only the key properties count
    assert fallback_key({**BARE_EVENT, "event_id": 8}, key_properties=("event_id",)) != first
    assert fallback_key({**BARE_EVENT, "event_id": 7}) != first  # whole-record hash without key properties


def test_fallback_key_uses_whole_record_when_a_key_property_is_null() -> None:
    record = {**BARE_EVENT, "event_id": None}
    assert fallback_key(record, key_properties=("event_id",)) == fallback_key(record)
    assert fallback_key({**record, "plan": "x"}, key_properties=("event_id",)) != fallback_key(record)


def test_fallback_key_when_mapped_key_is_null_or_blank() -> None:
    assert fallback_key({**BARE_EVENT, "id": None}) == fallback_key({**BARE_EVENT, "id": None})
    assert run("signups", {**BARE_EVENT, "id": "  "}, event_rule("signups")).request.idempotency_key.startswith("tl-")


@pytest.mark.parametrize(
    ("stream", "record", "email"),
    [
        pytest.param(
            "track",
            {
                "messageId": "m",
                "event": "E",
                "properties": {"email": "p@x.co"},
                "context": {"traits": {"email": "c@x.co"}},
            },
            "c@x.co",
            id="nested-context-traits-first",
        ),
        pytest.param(
            "track",
            {"messageId": "m", "event": "E", "properties": {"email": "p@x.co"}},
            "p@x.co",
            id="nested-properties-email-when-nothing-else",
        ),
        pytest.param(
            "track",
            {"messageId": "m", "event": "E", "properties": {"email": None}, "context": {"traits": {"email": "c@x.co"}}},
            "c@x.co",
            id="nested-context-traits-fallback",
        ),
        pytest.param(
            "track",
            {"messageId": "m", "event": "E", "context": {"traits": {"email": "c@x.co"}}},
            "c@x.co",
            id="nested-no-properties",
        ),
        pytest.param(
            "tracks",
            {"event_text": "E", "email": "p@x.co", "context_traits_email": "c@x.co"},
            "c@x.co",
            id="flat-context-traits-first",
        ),
        pytest.param(
            "tracks", {"event_text": "E", "email": "p@x.co"}, "p@x.co", id="flat-email-column-when-nothing-else"
        ),
        pytest.param(
            "tracks",
            {"event_text": "E", "email": None, "context_traits_email": "c@x.co"},
            "c@x.co",
            id="flat-context-traits-fallback",
        ),
        pytest.param(
            "tracks", {"event_text": "E", "context_traits_email": "c@x.co"}, "c@x.co", id="flat-no-email-column"
        ),
    ],
)
def test_event_email_fallback_order(stream: str, record: dict[str, Any], email: str) -> None:
    op = run(stream, record)
    assert op.request.body["email"] == email
    assert "userId" not in op.request.body
    assert op.contact_key == f"e:{email}"


def test_an_invitees_email_in_event_properties_is_not_written_onto_the_inviter() -> None:
    """ "Invite Sent" by a known user (userId) whose properties.email is the invitee: the event goes by userId alone.

    Read first (as Segment's own destination does), the invitee's address would reach Loops with the inviter's userId,
    and Loops gives a contact matched by userId the email sent with it: the inviter's address would be replaced.
    """
    record = {
        "messageId": "m-inv",
        "event": "Invite Sent",
        "userId": "u_inviter",
        "properties": {"email": "invitee@example.com", "role": "editor"},
    }
    body = run("track", record).request.body
    assert body["userId"] == "u_inviter"
    assert "email" not in body
    assert body["eventProperties"] == {"role": "editor"}
    # Without a userId the event's properties are all that says who it is for.
    anonymous = run("track", {**record, "userId": None}).request.body
    assert anonymous["email"] == "invitee@example.com" and "userId" not in anonymous


def test_nested_event_does_not_use_top_level_traits_email() -> None:
    record = {"messageId": "m", "event": "E", "traits": {"email": "t@x.co"}}
    assert reject("track", record).reason == "no_identifier"


def test_tracks_row_and_per_event_table_row_share_the_idempotency_key() -> None:
    from_tracks = run("tracks", FLAT_TRACK).request.idempotency_key
    from_table = run("order_completed", FLAT_ORDER_ROW, event_rule("order_completed")).request.idempotency_key
    assert from_tracks == from_table == default_key("Order Completed", "wh-tr-001")
    from_export = run("track", {**NESTED_TRACK, "messageId": "wh-tr-001"}).request.idempotency_key
    assert from_export == from_tracks  # a Segment export replayed and its warehouse copy are one event


@pytest.mark.parametrize(
    ("stream", "record", "reasons"),
    [
        pytest.param(
            "identifies",
            {"email": ["a@b.co"]},
            {"nested_value", "invalid_email"},
            id="email-list",
        ),
        pytest.param("identifies", {"email": {"work": "a@b.co"}}, {"nested_value", "invalid_email"}, id="email-object"),
        pytest.param(
            "identifies",
            {"email": "a@b.co", "user_id": {"id": 1}},
            {"nested_value"},
            id="user-id-object",
        ),
        pytest.param(
            "identifies",
            {"email": "a@b.co", "user_id": ["u1"]},
            {"nested_value"},
            id="user-id-list",
        ),
        pytest.param(
            "tracks",
            {"user_id": "1", "event_text": ["Signed Up"]},
            {"nested_value", "no_event_name"},
            id="event-name-list",
        ),
        pytest.param(
            "tracks",
            {"user_id": "1", "event_text": {"name": "Signed Up"}},
            {"nested_value", "no_event_name"},
            id="event-name-object",
        ),
    ],
)
def test_object_or_list_identifiers_and_event_names_are_rejected(
    stream: str, record: dict[str, Any], reasons: set[str]
) -> None:
    result = mapper(stream).map(copy.deepcopy(record))
    assert isinstance(result, Rejection), f"sent: {result.request.body if isinstance(result, Operation) else result}"
    assert result.reason in reasons


@pytest.mark.parametrize("value", [float("nan"), float("inf"), D("NaN"), D("Infinity")], ids=repr)
def test_non_finite_user_id_is_not_sent(value: Any) -> None:
    result = mapper("identifies").map({"email": "a@b.co", "user_id": value})
    if isinstance(result, Operation):
        assert "userId" not in result.request.body, result.request.body
    else:
        assert result.reason in {"invalid_number", "invalid_user_id"}


# --------------------------------------------------------------------------------------------------- delete


DELETE_RULE = [{"stream": "deleted_users", "action": "delete_contact"}]


@pytest.mark.parametrize(
    ("record", "expected_body", "contact_key"),
    [
        pytest.param({"user_id": "u1", "email": "a@x.co"}, {"userId": "u1"}, "u:u1", id="flat-userId-preferred"),
        pytest.param({"user_id": None, "email": "A@x.co"}, {"email": "A@x.co"}, "e:a@x.co", id="flat-email-only"),
        pytest.param({"user_id": D("42")}, {"userId": "42"}, "u:42", id="flat-int-user-id"),
        pytest.param(
            {"messageId": "m", "userId": "u1", "traits": {"email": "a@x.co"}},
            {"userId": "u1"},
            "u:u1",
            id="nested-userId-preferred",
        ),
        pytest.param(
            {"messageId": "m", "traits": {"email": "a@x.co"}}, {"email": "a@x.co"}, "e:a@x.co", id="nested-email"
        ),
        pytest.param({"messageId": "m", "email": "a@x.co"}, {"email": "a@x.co"}, "e:a@x.co", id="nested-top-email"),
    ],
)
def test_delete_contact(record: dict[str, Any], expected_body: dict[str, Any], contact_key: str) -> None:
    op = run("deleted_users", record, DELETE_RULE)
    assert op.action is Action.DELETE_CONTACT
    assert (op.request.method, op.request.path) == DELETE
    assert op.request.body == expected_body
    assert op.request.idempotency_key is None
    assert op.contact_key == contact_key


def test_delete_contact_with_mapped_fields() -> None:
    rules = [{"stream": "gdpr", "action": "delete_contact", "email": "subject_email", "user_id": {"value": None}}]
    assert body("gdpr", {"subject_email": "x@y.co", "user_id": "ignored"}, rules) == {"email": "x@y.co"}


# --------------------------------------------------------------------------------------------------- ordering


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-01-01T00:00:00Z", "2026-01-01T00:00:00+00:00"),
        ("2026-01-01T02:00:00+02:00", "2026-01-01T00:00:00+00:00"),
        ("2026-01-01T00:00:00.120Z", "2026-01-01T00:00:00.120000+00:00"),
        ("2026-01-01T00:00:00", "2026-01-01T00:00:00+00:00"),
        (dt.datetime(2026, 1, 1), "2026-01-01T00:00:00+00:00"),
        (dt.datetime(2026, 1, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=1))), "2026-01-01T00:00:00+00:00"),
        ("not a date", None),
        (1767225600, None),
        (None, None),
    ],
    ids=["zulu", "offset", "millis", "naive-string", "naive-datetime", "aware-datetime", "garbage", "epoch", "null"],
)
def test_sort_key_from_timestamp(value: Any, expected: str | None) -> None:
    assert run("identifies", {"email": "a@x.co", "timestamp": value}).sort_key == expected


def test_order_by_field_spec() -> None:
    rules = contact_rule(order_by="updated_at", exclude=["updated_at"])
    op = run("accounts", {"email": "a@x.co", "updated_at": "2026-05-05T05:05:05Z", "timestamp": "2020-01-01"}, rules)
    assert op.sort_key == "2026-05-05T05:05:05+00:00"


def test_order_by_column_is_not_spread_as_a_property() -> None:
    record = {"email": "a@x.co", "plan": "pro", "synced_at": "2026-05-05T05:05:05Z"}
    op = run("accounts", record, contact_rule(order_by="synced_at"))
    assert op.sort_key == "2026-05-05T05:05:05+00:00"
    assert op.request.body == {"email": "a@x.co", "plan": "pro"}


def test_mapper_compiles_once_per_shape() -> None:
    m = mapper("identifies")
    m.map(dict(FLAT_IDENTIFY))
    m.map(dict(FLAT_IDENTIFY))
    assert set(m._plans) == {"flat"}
    m.map(copy.deepcopy(NESTED_IDENTIFY))
    assert set(m._plans) == {"flat", "nested"}


# ------------------------------------------------------------------------------------------------ Loops as documented
# Each test below failed on the code before it: it pins what Loops' API reference says (https://loops.so/docs).


def test_event_contact_properties_may_carry_default_contact_properties() -> None:
    record = {
        "event_text": "Upgraded",
        "email": "a@example.com",
        "first_name": "Ada",
        "last_name": "Lovelace",
        "user_group": "admins",
        "source": "billing",
        "plan": "pro",
        "subscribed": True,
    }
    op = run("upgrades", record, event_rule("upgrades", properties="*", event_properties="properties"))
    assert op.request.body == {
        "email": "a@example.com",
        "firstName": "Ada",
        "lastName": "Lovelace",
        "userGroup": "admins",
        "source": "billing",
        "plan": "pro",
        "eventName": "Upgraded",
    }
    assert op.skipped_keys == ("subscribed",)  # never spread: it would re-subscribe people who opted out


def test_event_contact_properties_from_nested_traits_and_rename_targets() -> None:
    record = {
        "messageId": "m",
        "userId": "1",
        "event": "Upgraded",
        "traits": {"firstName": "Bob", "group": "ops", "email": "t@x.co"},
        "properties": {},
    }
    rules = event_rule("track", properties="traits", rename={"group": "userGroup"})
    assert body("track", record, rules) == {
        "userId": "1",
        "firstName": "Bob",
        "userGroup": "ops",
        "eventName": "Upgraded",
    }


def test_event_declared_properties_include_default_contact_properties() -> None:
    schema = {"properties": {"event_text": {"type": "string"}, "first_name": {"type": "string"}, "plan": {}}}
    found, _ = mapper("upgrades", event_rule("upgrades", properties="*")).declared_properties(schema)
    assert set(found) == {"firstName", "plan"}


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("x" * 498, True),
        ("x" * 499, False),
        ('"' * 249, True),  # each quote is escaped: 2 * 249 + 2 = 500
        ('"' * 250, False),
        ("a" + "\n" * 248 + "b", True),  # 2 + 2 * 248 + 2 = 500 (newlines alone would be blank: left out)
        ("a\n" + "x" * 496, False),  # 498 characters of text, 501 as JSON
        ("é" * 498, True),  # sent as UTF-8, not escaped
        ("😀" * 249, True),  # two UTF-16 units each, as JavaScript counts: 500
        ("😀" * 250, False),
    ],
    ids=["498", "499", "249-quotes", "250-quotes", "249-newlines", "escape-tips-over", "accents", "emoji", "emoji-502"],
)
def test_string_limit_counts_the_json_quotes_and_escapes(text: str, ok: bool) -> None:
    result = mapper("identifies").map({"email": "a@b.co", "bio": text})
    if ok:
        assert isinstance(result, Operation) and result.request.body["bio"] == text
    else:
        assert isinstance(result, Rejection) and result.reason == "string_too_long"
        assert "'bio'" in result.message and f"{len(text)} characters" in result.message


@pytest.mark.parametrize(
    ("stream", "record", "rules"),
    [
        pytest.param("identifies", {"email": "a@b.co", "first_name": "x" * 499}, None, id="first-name"),
        pytest.param("identifies", {"user_id": "x" * 499}, None, id="user-id"),
        pytest.param("identifies", {"email": "a" * 494 + "@b.co"}, None, id="email"),
        pytest.param("tracks", {"user_id": "1", "event_text": "x" * 499}, None, id="event-name"),
        pytest.param("s", {"user_id": "1", "event_text": "E", "note": "x" * 499}, event_rule("s"), id="event-property"),
    ],
)
def test_499_characters_are_refused_everywhere(stream: str, record: dict[str, Any], rules: Any) -> None:
    assert reject(stream, record, rules).reason == "string_too_long"


@pytest.mark.parametrize(
    ("stream", "record", "rules"),
    [
        pytest.param("identifies", {"email": "a@b.co", "created_at": "2020-01-01T00:00:00Z"}, None, id="flat-column"),
        pytest.param(
            "identify",
            {"messageId": "m", "userId": "1", "traits": {"email": "a@b.co", "createdAt": "2020-01-01T00:00:00Z"}},
            None,
            id="nested-trait",
        ),
        pytest.param(
            "accounts",
            {"email": "a@b.co", "signed_up": "2020-01-01T00:00:00Z"},
            contact_rule(rename={"signed_up": "createdAt"}),
            id="rename-target",
        ),
        pytest.param(
            "signups",
            {"email": "a@b.co", "event_text": "Signed Up", "created_at": "2020-01-01T00:00:00Z"},
            event_rule("signups", properties="*", event_properties="properties"),
            id="event-contact-property",
        ),
    ],
)
def test_created_at_is_written(stream: str, record: dict[str, Any], rules: Any) -> None:
    op = run(stream, record, rules)
    assert op.request.body["createdAt"] == "2020-01-01T00:00:00Z"
    assert op.skipped_keys == ()


@pytest.mark.parametrize("name", ["Plan: Upgraded", "Plan:Upgraded", ":", "a:b:c"])
def test_a_colon_in_an_event_name_is_refused_locally(name: str) -> None:
    """ "Custom event names can not contain colon characters" (https://loops.so/docs/events): nothing is sent."""
    result = reject("tracks", {"user_id": "1", "event_text": name})
    assert result.reason == "invalid_event_name"
    assert "https://loops.so/docs/events" in result.message and repr(name) in result.message


@pytest.mark.parametrize(
    ("stream", "record", "rules", "kept"),
    [
        pytest.param(
            "identify",
            {"messageId": "m", "userId": "u", "traits": {"mailingLists": {"listA": True, "listB": "foobar"}}},
            None,
            {"listA": True},
            id="nested",
        ),
        pytest.param(
            "identifies",
            {"email": "a@b.co", "mailing_lists_listA": False, "mailing_lists_listB": "foobar"},
            None,
            {"listA": False},
            id="flat-columns",
        ),
        pytest.param(
            "joins",
            {"event_text": "Joined", "email": "a@b.co", "lists": {"listA": "yes", "listB": "foobar"}},
            event_rule("joins", mailing_lists="lists"),
            {"listA": True},
            id="event",
        ),
    ],
)
def test_one_bad_mailing_list_flag_drops_that_list_not_the_contact(
    stream: str, record: dict[str, Any], rules: Any, kept: dict[str, bool]
) -> None:
    op = run(stream, record, rules)
    assert op.request.body["mailingLists"] == kept
    ((reason, message),) = op.partial
    assert reason == PARTIAL_MAILING_LIST == "invalid_mailing_list"
    assert "listB" in message and "foobar" in message
    assert partial_list_id(message) == "listB"
    assert op.record == record


@pytest.mark.parametrize("flag", ["maybe", 2, {"on": True}, [True], 0.5, D("NaN")], ids=repr)
def test_every_bad_flag_is_a_partial_rejection(flag: Any) -> None:
    record = {"messageId": "m", "userId": "u", "traits": {"plan": "pro", "mailingLists": {"l1": flag, "l2": True}}}
    op = run("identify", record)
    assert op.request.body == {"userId": "u", "plan": "pro", "mailingLists": {"l2": True}}
    assert [partial_list_id(message) for _, message in op.partial] == ["l1"]


def test_all_flags_bad_sends_the_contact_without_lists() -> None:
    record = {"messageId": "m", "userId": "u", "traits": {"plan": "pro", "mailingLists": {"a": "x", 'b"\n': "z"}}}
    op = run("identify", record)
    assert op.request.body == {"userId": "u", "plan": "pro"}
    assert [partial_list_id(m) for _, m in op.partial] == ["a", 'b"\n']


def test_partial_list_id_of_other_messages() -> None:
    assert partial_list_id("something else") is None
    assert partial_list_id("mailing list not-json") is None


def test_default_idempotency_key_is_unique_to_the_event_not_the_table_row() -> None:
    orders = run("orders", {"event_text": "Order Completed", "user_id": "1", "id": 1}, event_rule("orders"))
    refunds = run("refunds", {"event_text": "Order Refunded", "user_id": "1", "id": 1}, event_rule("refunds"))
    assert orders.request.idempotency_key != refunds.request.idempotency_key
    assert orders.request.idempotency_key == default_key("Order Completed", "1")


@pytest.mark.parametrize(
    "value",
    ["событие-2", "line\nbreak", "tab\tkey", " ", "k" * 101, "ünïcödé", "trailing\r\n"],
    ids=["cyrillic", "newline", "tab", "blank", "101", "latin-1", "crlf"],
)
def test_idempotency_keys_are_always_safe_header_values(value: str) -> None:
    for stream, record, rules in (
        ("track", {**NESTED_TRACK, "messageId": value}, None),
        ("s", {"event_text": "E", "user_id": "1", "dedupe": value}, event_rule("s", idempotency_key="dedupe")),
    ):
        key = run(stream, record, rules).request.idempotency_key
        assert key is not None and 0 < len(key) <= 100
        assert key.isascii() and key.isprintable() and key == key.strip()
        key.encode("latin-1")


def test_mapped_safe_idempotency_key_is_kept_as_given() -> None:
    rules = event_rule("s", idempotency_key="dedupe")
    assert run("s", {"event_text": "E", "user_id": "1", "dedupe": "ord-42:v2"}, rules).request.idempotency_key == (
        "ord-42:v2"
    )


@pytest.mark.parametrize(
    "timestamp",
    [
        "0001-01-01T00:00:00+05:00",
        "9999-12-31T23:59:59-05:00",
        dt.datetime(1, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=5))),
    ],
    ids=["year-1-east", "year-9999-west", "datetime"],
)
@pytest.mark.parametrize("stream", ["identifies", "tracks"])
def test_timestamps_out_of_range_reject_the_record(stream: str, timestamp: Any) -> None:
    record = {"user_id": "1", "email": "a@b.co", "event_text": "E", "timestamp": timestamp}
    rejection = reject(stream, record)
    assert rejection.reason == "invalid_value"
    assert "timestamp" in rejection.message


@pytest.mark.parametrize(
    ("column", "value", "reason"),
    [
        ("user_id", True, "invalid_user_id"),
        ("user_id", False, "invalid_user_id"),
        ("email", True, "invalid_email"),
        ("event_text", True, "invalid_event_name"),
    ],
)
def test_boolean_identifiers_are_counted_rejections(column: str, value: bool, reason: str) -> None:
    record = {"user_id": "u1", "email": "a@b.co", "event_text": "E", column: value}
    stream = "tracks" if column == "event_text" else "identifies"
    rejection = reject(stream, record)
    assert rejection.reason == reason
    assert "boolean" in rejection.message


ODD_VALUES: list[Any] = [
    D("sNaN"),
    D("1E+400"),
    D("-Infinity"),
    float("nan"),
    10**400,
    dt.datetime.max,
    dt.datetime.min.replace(tzinfo=dt.timezone(dt.timedelta(hours=1))),
    dt.date.max,
    "\udc80",
    "0001-01-01T00:00:00+05:00",
    b"\xff",
    {"a": [1, {"b": None}]},
    True,
]


@pytest.mark.parametrize("value", ODD_VALUES, ids=repr)
@pytest.mark.parametrize("field", ["user_id", "email", "event_text", "id", "timestamp", "plan", "mailing_lists_l1"])
@pytest.mark.parametrize("stream", ["identifies", "tracks", "deletes"])
def test_map_never_raises(stream: str, field: str, value: Any) -> None:
    rules = [{"stream": "deletes", "action": "delete_contact"}]
    record = {"user_id": "u1", "email": "a@b.co", "event_text": "E", "id": "k", field: value}
    result = mapper(stream, rules).map(record)
    assert isinstance(result, Operation | Rejection)
