"""The rule keys (one table, ``fields.FIELDS``) and the parsing of ``mappings``: field specs, validation messages,
matching streams, and the README's rule table generated from the field table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from rule_helpers import (
    FLAT_IDENTIFY,
    FLAT_IDENTIFY_BODY,
    RESERVED_TARGETS,
    body,
    contact_rule,
)

from target_loops import defaults
from target_loops.fields import (
    ALLOWED_KEYS,
    CONTACT_BODY_KEYS,
    CONTACT_KINDS,
    EVENT_CONTACT_FIELDS,
    FIELDS,
    TABLE_END,
    TABLE_START,
    FieldSpec,
    Form,
    Kind,
    Rule,
    RuleError,
    RuleField,
    fields_of,
    match_rule,
    parse_field_spec,
    parse_rule,
    parse_rules,
    render_readme,
    resolve_path,
    rule_table_markdown,
    suggest_rule,
)
from target_loops.operations import Action

# --------------------------------------------------------------------------------------------------- field specs


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("traits.email", FieldSpec(paths=("traits.email",))),
        (["email", "context_traits_email"], FieldSpec(paths=("email", "context_traits_email"))),
        ({"value": "Segment"}, FieldSpec(constant="Segment", has_constant=True)),
        ({"value": None}, FieldSpec(constant=None, has_constant=True)),
        ({"value": False}, FieldSpec(constant=False, has_constant=True)),
        ({"prefix": "mailing_lists_"}, FieldSpec(prefix="mailing_lists_")),
    ],
    ids=["dot-path", "list-of-paths", "constant", "constant-null", "constant-false", "prefix"],
)
def test_parse_field_spec_forms(raw: Any, expected: FieldSpec) -> None:
    assert parse_field_spec(raw, "here") == expected


@pytest.mark.parametrize(
    "raw",
    [
        None,
        "",
        5,
        True,
        [],
        ["email", ""],
        ["email", 5],
        {},
        {"value": 1, "extra": 2},
        {"prefix": ""},
        {"prefix": 5},
        {"path": "email"},
    ],
    ids=[
        "none",
        "empty-string",
        "int",
        "bool",
        "empty-list",
        "list-with-empty",
        "list-with-int",
        "empty-object",
        "value-plus-extra",
        "empty-prefix",
        "int-prefix",
        "unknown-object",
    ],
)
def test_parse_field_spec_rejects_bad_forms(raw: Any) -> None:
    with pytest.raises(RuleError, match=r"^somewhere: .* is not a field spec"):
        parse_field_spec(raw, "somewhere")


@pytest.mark.parametrize(
    ("action", "key"),
    [
        ("upsert_contact", "email"),
        ("upsert_contact", "user_id"),
        ("upsert_contact", "first_name"),
        ("upsert_contact", "last_name"),
        ("upsert_contact", "user_group"),
        ("upsert_contact", "source"),
        ("upsert_contact", "subscribed"),
        ("upsert_contact", "mailing_lists"),
        ("upsert_contact", "order_by"),
        ("send_event", "event_name"),
        ("send_event", "idempotency_key"),
        ("send_event", "mailing_lists"),
        ("delete_contact", "user_id"),
    ],
)
def test_bad_field_spec_error_names_the_rule(action: str, key: str) -> None:
    rules = [{"stream": "ok", "action": "upsert_contact"}, {"stream": "my_*", "action": action, key: 12}]
    with pytest.raises(RuleError) as info:
        parse_rules(rules)
    message = str(info.value)
    assert message.startswith(f"mappings[1] (stream 'my_*', action {action}) \"{key}\": 12 is not a field spec")


@pytest.mark.parametrize(
    ("record", "path", "expected"),
    [
        ({"traits": {"email": "a@b.co"}}, "traits.email", "a@b.co"),
        ({"a": {"b": {"c": 0}}}, "a.b.c", 0),
        ({"a": {"b": False}}, "a.b", False),
        ({"a": {"b": None}}, "a.b.c", None),
        ({"a": "text"}, "a.b", None),
        ({"a": [{"b": 1}]}, "a.b", None),
        ({}, "missing", None),
        ({"context.ip": "1.2.3.4", "context": {"ip": "other"}}, "context.ip", "1.2.3.4"),
        ({"email": "x@y.co"}, "email", "x@y.co"),
    ],
    ids=[
        "two-levels",
        "falsy-zero",
        "falsy-false",
        "null-midway",
        "through-string",
        "through-list",
        "absent",
        "dotted-key-first",
        "top-level",
    ],
)
def test_resolve_path(record: dict[str, Any], path: str, expected: Any) -> None:
    assert resolve_path(record, path) == expected


@pytest.mark.parametrize(
    ("spec", "record", "expected"),
    [
        (FieldSpec(paths=("a", "b")), {"a": None, "b": "second"}, "second"),
        (FieldSpec(paths=("a", "b")), {"b": "second"}, "second"),
        (FieldSpec(paths=("a", "b")), {"a": "first", "b": "second"}, "first"),
        (FieldSpec(paths=("a", "b")), {"a": 0, "b": "second"}, 0),
        (FieldSpec(paths=("a", "b")), {}, None),
        (FieldSpec(constant="k", has_constant=True), {"a": 1}, "k"),
        (FieldSpec(prefix="ml_"), {"ml_x": True, "ml_y": None, "other": 1}, {"x": True, "y": None}),
        (FieldSpec(prefix="ml_"), {"other": 1}, None),
    ],
    ids=["first-null", "first-absent", "first-wins", "zero-is-not-null", "none", "constant", "prefix", "prefix-none"],
)
def test_field_spec_get(spec: FieldSpec, record: dict[str, Any], expected: Any) -> None:
    assert spec.get(record) == expected


@pytest.mark.parametrize(
    ("options", "record", "expected"),
    [
        pytest.param(
            {"email": "contact.email", "user_id": "account_id"},
            {"account_id": 7, "contact": {"email": "dot@example.com"}, "plan": "x"},
            {"userId": "7", "email": "dot@example.com", "plan": "x"},
            id="dot-path",
        ),
        pytest.param(
            {"email": ["work_email", "home_email"]},
            {"work_email": None, "home_email": "home@example.com", "plan": "x"},
            {"email": "home@example.com", "plan": "x"},
            id="list-first-non-null-second",
        ),
        pytest.param(
            {"email": ["work_email", "home_email"]},
            {"work_email": "work@example.com", "home_email": "home@example.com"},
            {"email": "work@example.com"},
            id="list-first-non-null-first",
        ),
        pytest.param(
            {"source": {"value": "billing-db"}, "user_group": {"value": "customers"}},
            {"email": "c@example.com", "source": "ignored"},
            {"email": "c@example.com", "source": "billing-db", "userGroup": "customers"},
            id="constants",
        ),
        pytest.param(
            {"mailing_lists": {"prefix": "list_"}},
            {"email": "p@example.com", "list_news": True, "list_promo": "0", "list_vip": None, "plan": "x"},
            {"email": "p@example.com", "mailingLists": {"news": True, "promo": False}, "plan": "x"},
            id="prefix",
        ),
    ],
)
def test_field_spec_forms_in_rules(options: dict[str, Any], record: dict[str, Any], expected: dict[str, Any]) -> None:
    assert body("accounts", record, contact_rule(**options)) == expected


# --------------------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        pytest.param("identifies", r"^mappings\[0\]: a rule must be an object", id="not-an-object"),
        pytest.param({"action": "upsert_contact"}, r'^mappings\[0\]: "stream" is required', id="missing-stream"),
        pytest.param({"stream": "", "action": "upsert_contact"}, r'"stream" is required', id="empty-stream"),
        pytest.param({"stream": 5, "action": "upsert_contact"}, r'"stream" is required', id="int-stream"),
        pytest.param(
            {"stream": "s"}, r"^mappings\[0\] \(stream 's'\): \"action\" must be one of .*not None", id="no-action"
        ),
        pytest.param(
            {"stream": "s", "action": "upsert"},
            r"^mappings\[0\] \(stream 's'\): \"action\" must be one of upsert_contact, send_event, delete_contact",
            id="bad-action",
        ),
        pytest.param({"stream": "s", "action": ["send_event"]}, r'"action" must be one of', id="list-action"),
        pytest.param(
            {"stream": "s", "action": "upsert_contact", "emial": "x"},
            r"^mappings\[0\] \(stream 's', action upsert_contact\): unknown key\(s\) \['emial'\]",
            id="unknown-key",
        ),
        pytest.param(
            {"stream": "s", "action": "upsert_contact", "event_name": "x"},
            r"unknown key\(s\) \['event_name'\]",
            id="event-key-on-upsert",
        ),
        pytest.param(
            {"stream": "s", "action": "send_event", "subscribed": "x"},
            r"action send_event\): unknown key\(s\) \['subscribed'\]",
            id="subscribed-on-event",
        ),
        pytest.param(
            {"stream": "s", "action": "delete_contact", "properties": "*"},
            r"action delete_contact\): unknown key\(s\) \['properties'\]",
            id="properties-on-delete",
        ),
        pytest.param(
            {"stream": "s", "action": "upsert_contact", "include": "plan"},
            r"action upsert_contact\): \"include\" must be a list of property names",
            id="include-string",
        ),
        pytest.param(
            {"stream": "s", "action": "upsert_contact", "include": ["plan", 3]},
            r'"include" must be a list',
            id="include-int-item",
        ),
        pytest.param(
            {"stream": "s", "action": "send_event", "exclude": {"a": 1}},
            r"action send_event\): \"exclude\" must be a list",
            id="exclude-object",
        ),
        pytest.param(
            {"stream": "s", "action": "upsert_contact", "rename": ["a", "b"]},
            r'"rename" must map source names to Loops names',
            id="rename-list",
        ),
        pytest.param(
            {"stream": "s", "action": "upsert_contact", "rename": {"a": ""}},
            r'"rename" must map',
            id="rename-empty-target",
        ),
        pytest.param(
            {"stream": "s", "action": "upsert_contact", "rename": {"a": 1}},
            r'"rename" must map',
            id="rename-int-target",
        ),
        pytest.param(
            {"stream": "s", "action": "upsert_contact", "camel_case": "yes"},
            r'"camel_case" must be true or false',
            id="camel-case-string",
        ),
        pytest.param(
            {"stream": "s", "action": "upsert_contact", "send_nulls": 1},
            r'"send_nulls" must be true or false',
            id="send-nulls-int",
        ),
        pytest.param(
            {"stream": "s", "action": "upsert_contact", "shape": "tree"},
            r'"shape" must be "nested" \(Segment JSON\) or "flat"',
            id="bad-shape",
        ),
        pytest.param(
            {"stream": "s", "action": "upsert_contact", "properties": ["traits"]},
            r"action upsert_contact\): \"properties\" must be a dot path to an object",
            id="properties-list",
        ),
        pytest.param(
            {"stream": "s", "action": "upsert_contact", "properties": ""},
            r'"properties" must be a dot path',
            id="properties-empty",
        ),
        pytest.param(
            {"stream": "s", "action": "send_event", "event_properties": True},
            r'"event_properties" must be a dot path',
            id="event-properties-bool",
        ),
    ],
)
def test_rule_validation_errors(raw: Any, message: str) -> None:
    with pytest.raises(RuleError, match=message):
        parse_rule(raw, 0)


@pytest.mark.parametrize("target", RESERVED_TARGETS)
def test_rename_to_reserved_name_is_refused_for_upserts(target: str) -> None:
    raw = {"stream": "accounts", "action": "upsert_contact", "rename": {"some_column": target}}
    with pytest.raises(RuleError, match=r"^mappings\[3\] \(stream 'accounts', action upsert_contact\): \"rename\""):
        parse_rule(raw, 3)


def test_reserved_names_cover_the_loops_api_list() -> None:
    documented = {
        "id",
        "listId",
        "softDeleteAt",
        "teamId",
        "updatedAt",
        "email",
        "firstName",
        "lastName",
        "notes",
        "source",
        "subscribed",
        "userGroup",
        "userId",
        "mailingLists",
        "optInStatus",
        "eventName",
        "eventProperties",
    }
    assert documented <= set(RESERVED_TARGETS)


@pytest.mark.parametrize("raw_rules", [{"stream": "x"}, "identifies", 5], ids=["object", "string", "int"])
def test_parse_rules_requires_a_list(raw_rules: Any) -> None:
    with pytest.raises(RuleError, match=r"^mappings: must be a list of rules"):
        parse_rules(raw_rules)


def test_parse_rules_error_names_the_failing_index() -> None:
    with pytest.raises(RuleError, match=r"^mappings\[2\] \(stream 'c'\)"):
        parse_rules(
            [
                {"stream": "a", "action": "upsert_contact"},
                {"stream": "b", "action": "send_event"},
                {"stream": "c", "action": "nope"},
            ]
        )


def test_valid_rule_is_parsed_into_fields_and_options() -> None:
    rule = parse_rule(
        {
            "stream": "app_*",
            "action": "upsert_contact",
            "email": "email_address",
            "order_by": "updated_at",
            "properties": "*",
            "include": ["a"],
            "exclude": ["b"],
            "rename": {"a": "alpha"},
            "camel_case": False,
            "send_nulls": True,
            "shape": "flat",
        },
        4,
    )
    assert rule.index == 4 and not rule.builtin
    assert rule.fields == {"email": FieldSpec(paths=("email_address",)), "order_by": FieldSpec(paths=("updated_at",))}
    assert rule.options == {
        "properties": "*",
        "include": frozenset({"a"}),
        "exclude": frozenset({"b"}),
        "rename": {"a": "alpha"},
        "camel_case": False,
        "send_nulls": True,
    }
    assert rule.shape == "flat"
    assert rule.label == "mappings[4] (stream 'app_*', action upsert_contact)"


# --------------------------------------------------------------------------------------------------- matching


@pytest.mark.parametrize(
    ("patterns", "stream", "expected"),
    [
        pytest.param(["*_events"], "signup_events", 0, id="suffix-glob"),
        pytest.param(["*_events"], "events", None, id="suffix-glob-needs-underscore"),
        pytest.param(["public-*"], "public-identifies", 0, id="prefix-glob"),
        pytest.param(["order_?ompleted"], "order_completed", 0, id="single-char-glob"),
        pytest.param(["[ab]_table"], "b_table", 0, id="char-class"),
        pytest.param(["Identifies"], "identifies", None, id="case-sensitive"),
        pytest.param(["orders", "ord*"], "orders", 0, id="exact-before-glob-first-wins"),
        pytest.param(["ord*", "orders"], "orders", 0, id="glob-first-wins"),
        pytest.param(["a", "b", "*"], "zzz", 2, id="catch-all-last"),
        pytest.param(["a", "b"], "c", None, id="no-match"),
    ],
)
def test_stream_patterns_first_match_wins(patterns: list[str], stream: str, expected: int | None) -> None:
    rules = parse_rules([{"stream": p, "action": "upsert_contact"} for p in patterns], use_defaults=False)
    rule = match_rule(rules, stream)
    assert (rule.index if rule is not None else None) == expected


def test_user_rules_come_before_builtins() -> None:
    rules = parse_rules([{"stream": "identif*", "action": "delete_contact"}])
    rule = match_rule(rules, "identifies")
    assert rule is not None and not rule.builtin and rule.action is Action.DELETE_CONTACT
    tracks = match_rule(rules, "tracks")
    assert tracks is not None and tracks.builtin
    assert [r.builtin for r in rules] == [False] + [True] * len(defaults.DEFAULT_RULES)


def test_user_rule_for_a_default_stream_overrides_it() -> None:
    rules = [{"stream": "identifies", "action": "upsert_contact", "properties": "*", "include": ["plan"]}]
    assert body("identifies", FLAT_IDENTIFY, rules) == {
        k: v for k, v in FLAT_IDENTIFY_BODY.items() if k not in {"favoriteColor", "trialEndsAt", "seats"}
    }


@pytest.mark.parametrize("stream", ["identifies", "identify", "users", "tracks", "track"])
def test_default_mappings_off(stream: str) -> None:
    assert parse_rules(None, use_defaults=False) == []
    assert match_rule(parse_rules([{"stream": "other", "action": "send_event"}], use_defaults=False), stream) is None


@pytest.mark.parametrize(
    ("columns", "action"),
    [
        (["event", "user_id"], "send_event"),
        (["event_text"], "send_event"),
        (["eventName", "email"], "send_event"),
        (["event_name"], "send_event"),
        (["email", "first_name"], "upsert_contact"),
        ([], "upsert_contact"),
    ],
    ids=["event", "event_text", "eventName", "event_name", "contact-columns", "no-columns"],
)
def test_suggest_rule(columns: list[str], action: str) -> None:
    suggestion = suggest_rule("my_stream", columns)
    assert suggestion == f'{{"action":"{action}","stream":"my_stream"}}'
    parse_rule({"stream": "my_stream", "action": action}, 0)  # the suggestion is itself a valid rule


def test_rule_is_frozen() -> None:
    rule = parse_rule({"stream": "s", "action": "upsert_contact"}, 0)
    assert isinstance(rule, Rule)
    with pytest.raises(AttributeError):
        rule.stream = "other"  # type: ignore[misc]


# --------------------------------------------------------------------------------------------------- the field table


def test_each_key_has_one_row_per_action_and_one_kind() -> None:
    seen: set[tuple[str, Action]] = set()
    kinds: dict[str, Kind] = {}
    for row in FIELDS:
        for action in row.actions:
            assert (row.name, action) not in seen, f"{row.name} is declared twice for {action.value}"
            seen.add((row.name, action))
        assert kinds.setdefault(row.name, row.kind) is row.kind, f"{row.name} has two kinds"
        assert row.description.endswith((".", ")")), row.name


def test_allowed_keys_are_derived_from_the_table_and_unchanged() -> None:
    """The keys each action accepted before the table existed (the table changes none of them)."""
    common = {"stream", "action", "email", "user_id", "shape", "order_by"}
    options = {"include", "exclude", "rename", "camel_case", "send_nulls"}
    upsert = common | options | {"properties", "first_name", "last_name", "user_group", "source", "subscribed"}
    upsert |= {"mailing_lists", "allow_resubscribe"}
    event = common | options | {"event_name", "event_properties", "idempotency_key", "properties", "mailing_lists"}
    audience = {"on_leave", "on_join", "full_table"}  # issue 19: upsert rules only (tables, not identify calls)
    assert {
        Action.UPSERT_CONTACT: upsert | audience,
        Action.SEND_EVENT: event,
        Action.DELETE_CONTACT: common,
        Action.SEGMENT: upsert | event,
        Action.SKIP: {"stream", "action"},
    } == ALLOWED_KEYS


def _defaults(action: Action) -> dict[str, tuple[str | None, Any, Any]]:
    kinds = (Kind.IDENTITY, *CONTACT_KINDS, Kind.EVENT, Kind.IDEMPOTENCY)
    return {row.name: (row.loops_key, row.nested, row.flat) for row in fields_of(action, *kinds)}


def test_defaults_are_derived_from_the_table_and_unchanged() -> None:
    """The defaults the rule engine used before the table existed, per action (field → Loops key, nested, flat)."""
    assert _defaults(Action.UPSERT_CONTACT) == {
        "email": ("email", ["traits.email", "email"], ["email"]),
        "user_id": ("userId", ["userId"], ["user_id"]),
        "first_name": ("firstName", ["traits.firstName", "traits.first_name"], ["first_name"]),
        "last_name": ("lastName", ["traits.lastName", "traits.last_name"], ["last_name"]),
        "user_group": ("userGroup", ["traits.userGroup", "traits.user_group"], ["user_group"]),
        "source": ("source", ["traits.source"], ["source"]),
        "subscribed": ("subscribed", None, None),
        "mailing_lists": ("mailingLists", ["traits.mailingLists"], {"prefix": "mailing_lists_"}),
    }
    assert _defaults(Action.SEND_EVENT) == {
        "email": ("email", ["context.traits.email"], ["context_traits_email", "email"]),
        "user_id": ("userId", ["userId"], ["user_id"]),
        "event_name": ("eventName", ["event"], ["event_text", "event"]),
        "idempotency_key": ("Idempotency-Key", ["messageId"], ["id"]),
        "mailing_lists": ("mailingLists", None, None),
    }
    assert _defaults(Action.DELETE_CONTACT) == {
        "email": ("email", ["traits.email", "email"], ["email"]),
        "user_id": ("userId", ["userId"], ["user_id"]),
    }
    sets = {(a, r.name): (r.nested, r.flat) for a in Action for r in fields_of(a, Kind.PROPERTIES)}
    assert sets == {
        (Action.UPSERT_CONTACT, "properties"): ("traits", "*"),
        (Action.SEND_EVENT, "properties"): (None, None),
        (Action.SEND_EVENT, "event_properties"): ("properties", "*"),
    }
    assert [(r.nested, r.flat) for r in fields_of(Action.DELETE_CONTACT, Kind.ORDER)] == [
        (["timestamp"], ["timestamp"])
    ]


def test_contact_body_keys_are_derived_from_the_table() -> None:
    assert {
        "email", "userId", "firstName", "lastName", "source", "subscribed", "userGroup", "mailingLists", "optInStatus"
    } == CONTACT_BODY_KEYS  # fmt: skip
    assert {"firstName", "lastName", "userGroup", "source"} == EVENT_CONTACT_FIELDS


@pytest.mark.parametrize("row", FIELDS, ids=lambda row: f"{row.name}-{'-'.join(sorted(a.value for a in row.actions))}")
def test_every_default_parses(row: RuleField) -> None:
    for shape in ("nested", "flat"):
        raw = row.default(shape)
        if raw is not None and row.kind.form is Form.SPEC:
            assert isinstance(row.default_spec(shape), FieldSpec)


def test_a_key_the_table_does_not_declare_is_refused_naming_the_keys_it_accepts() -> None:
    with pytest.raises(
        RuleError, match=r"unknown key\(s\) \['first_name'\]; a skip rule accepts \['action', 'stream'\]"
    ):
        parse_rule({"stream": "pages", "action": "skip", "first_name": "x"}, 0)


README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_rule_table_is_the_one_generated_from_the_field_table() -> None:
    """The README's rule table is generated: `python -m target_loops.fields README.md` rewrites it in place."""
    text = README.read_text(encoding="utf-8")
    assert render_readme(text) == text, (
        "README.md's rule table differs from fields.FIELDS; run `python -m target_loops.fields README.md`:\n"
        + rule_table_markdown()
    )


def test_render_readme_replaces_only_the_table() -> None:
    text = f"before\n{TABLE_START}\nold table\n{TABLE_END}\nafter\n"
    assert render_readme(text) == f"before\n{TABLE_START}\n{rule_table_markdown()}{TABLE_END}\nafter\n"
    with pytest.raises(ValueError, match="markers"):
        render_readme("no markers here")
