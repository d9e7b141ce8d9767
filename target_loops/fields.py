"""The keys of a rule, declared once, and the parsing of ``mappings``.

Each key a rule may hold is one row of ``FIELDS``: the Loops key it fills, the actions it applies to, its kind, its
default for Segment's nested JSON and for Segment's warehouse rows, and what it means. Everything else is derived
from that table: the keys each action accepts (``ALLOWED_KEYS``), how each key is parsed (by its kind), the defaults
the rule engine falls back on (``RuleField.default_spec``), the contact body keys a property spread must leave alone,
and the README's rule table (``rule_table_markdown``). Segment's own Loops destination declares its fields the same
way, each once with its default source path.

Segment's spec: https://segment.com/docs/connections/spec/; its warehouse schema:
https://segment.com/docs/connections/storage/warehouses/schema/; Loops' request bodies:
https://loops.so/docs/api-reference/update-contact and https://loops.so/docs/api-reference/send-event.
"""

from __future__ import annotations

import enum
import fnmatch
import functools
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from target_loops import defaults
from target_loops.defaults import FLAT, NESTED
from target_loops.operations import Action
from target_loops.serialization import canonical_json
from target_loops.values import is_blank


class RuleError(ValueError):
    """A rule in ``mappings`` is malformed; the message names the rule and says what to write instead."""


# --- the table


class Form(enum.Enum):
    """How a key's value is written in a rule, and so how it is parsed."""

    HEADER = "header"  # stream, action: read before anything else
    SPEC = "field spec"  # a dot path, a list of paths, a constant or a column prefix
    PATH = "property set"  # a dot path to an object, or "*"
    NAMES = "list of names"
    MAPPING = "object of names"
    SWITCH = "true or false"
    SHAPE = '"nested" or "flat"'
    AUDIENCE = "audience actions"


class Kind(enum.Enum):
    """What a key is for (its value is how the README names it). The rule engine treats each kind its own way."""

    #: ``stream`` and ``action``: which records, and what they become.
    RULE = "rule"
    #: Which defaults apply: Segment's nested JSON or its warehouse rows.
    SHAPE = "shape"
    #: Who the request is for (email, user id); at least one must be found.
    IDENTITY = "identity"
    #: A default contact property, sent as a scalar.
    CONTACT = "contact field"
    #: ``subscribed``: read as a boolean, ``true`` only when the rule allows re-subscribing.
    SUBSCRIPTION = "subscription"
    #: ``mailingLists``: list id → boolean, a bad flag drops that list only.
    LISTS = "mailing lists"
    #: A field of the event itself (its name).
    EVENT = "event field"
    #: The id an event's ``Idempotency-Key`` is derived from.
    IDEMPOTENCY = "idempotency"
    #: The record's time, never sent: it orders the updates of one contact.
    ORDER = "ordering"
    #: A set of properties spread into the request.
    PROPERTIES = "property set"
    #: Which source names of the property sets are taken.
    PROPERTY_NAMES = "property names"
    #: Source name → Loops name, for the property sets.
    PROPERTY_RENAME = "property renames"
    #: A true/false option.
    SWITCH = "switch"
    #: What happens when a person joins or leaves the audience a table stands for (``audience.py``).
    AUDIENCE = "audience"

    @property
    def label(self) -> str:
        """How the README's table names the kind."""
        return str(self.value)

    @property
    def form(self) -> Form:
        """How a key of this kind is written in a rule: most kinds are field specs."""
        return _NOT_SPECS.get(self, Form.SPEC)


#: The kinds whose keys are not field specs, and how each is written.
_NOT_SPECS = {
    Kind.RULE: Form.HEADER,
    Kind.SHAPE: Form.SHAPE,
    Kind.PROPERTIES: Form.PATH,
    Kind.PROPERTY_NAMES: Form.NAMES,
    Kind.PROPERTY_RENAME: Form.MAPPING,
    Kind.SWITCH: Form.SWITCH,
    Kind.AUDIENCE: Form.AUDIENCE,
}


UPSERT, EVENT, DELETE = Action.UPSERT_CONTACT, Action.SEND_EVENT, Action.DELETE_CONTACT
#: The actions whose rules name fields; ``segment`` takes the keys of upsert and event rules, ``skip`` none.
_MAPPED = frozenset({UPSERT, EVENT, DELETE})
_PROPERTY_SETS = frozenset({UPSERT, EVENT})
#: The kinds an upsert sends as fields of the contact, beside its identity.
CONTACT_KINDS = frozenset({Kind.CONTACT, Kind.SUBSCRIPTION, Kind.LISTS})


@dataclass(frozen=True, slots=True)
class RuleField:
    """One key of a rule for some actions: what it fills in Loops, its defaults per shape, what it means.

    ``nested`` and ``flat`` are written as a rule would write them (a field spec, or a property set's path); None
    means no default: the key does nothing unless a rule maps it.
    """

    name: str
    loops_key: str | None
    actions: frozenset[Action]
    kind: Kind
    nested: Any
    flat: Any
    description: str

    def default(self, shape: str) -> Any:
        """The default for records of ``shape`` (NESTED or FLAT), as a rule would write it; None when none."""
        return self.nested if shape == NESTED else self.flat

    def default_spec(self, shape: str) -> FieldSpec | None:
        """The default field spec for records of ``shape``, or None when the key has none."""
        raw = self.default(shape)
        return None if raw is None else parse_field_spec(raw, f"default for {self.name}")


def _row(
    name: str,
    loops_key: str | None,
    actions: Sequence[Action] | frozenset[Action],
    kind: Kind,
    description: str,
    nested: Any = None,
    flat: Any = None,
) -> RuleField:
    return RuleField(name, loops_key, frozenset(actions), kind, nested, flat, description)


def _contact_field(name: str, loops_key: str, nested: list[str], what: str) -> RuleField:
    """A default contact property of Loops (https://loops.so/docs/contacts/properties#default-contact-properties)."""
    return _row(name, loops_key, [UPSERT], Kind.CONTACT, f"The contact's {what}.", nested, [name])


#: Every key of a rule. A key appears once per group of actions that share its meaning and defaults (``email`` is
#: read from other places in an event than in a contact update). The order is the order of the fields in a request.
FIELDS: tuple[RuleField, ...] = (
    _row("stream", None, list(Action), Kind.RULE,
         "An exact stream name or a glob (`*_events`); the first rule that matches a stream wins."),
    _row("action", None, list(Action), Kind.RULE,
         "What each record becomes: `upsert_contact`, `send_event`, `delete_contact`, `segment` (raw Segment calls, "
         "each routed by its `type`) or `skip` (read and counted, nothing sent)."),
    _row("shape", None, _MAPPED, Kind.SHAPE,
         "`nested` (Segment JSON) or `flat` (warehouse rows): which defaults apply. Detected per record when absent."),
    _row("email", "email", [UPSERT, DELETE], Kind.IDENTITY,
         "The contact's email address.", ["traits.email", "email"], ["email"]),
    _row("email", "email", [EVENT], Kind.IDENTITY,
         "The email address of the contact the event is for. Unmapped, `properties.email` is read only when the "
         "record has no user id and no context email: an address in a Segment event's properties (an invitee's) is "
         "never written onto the contact of a known user. A flat row's own `email` column comes after the context's.",
         ["context.traits.email"], ["context_traits_email", "email"]),
    _row("user_id", "userId", _MAPPED, Kind.IDENTITY,
         "The contact's user id (the built-in rules of the `users` table read its `id` first).",
         ["userId"], ["user_id"]),
    _contact_field("first_name", "firstName", ["traits.firstName", "traits.first_name"], "first name"),
    _contact_field("last_name", "lastName", ["traits.lastName", "traits.last_name"], "last name"),
    _contact_field("user_group", "userGroup", ["traits.userGroup", "traits.user_group"], "user group"),
    _contact_field("source", "source", ["traits.source"], "source (where the contact came from)"),
    _row("subscribed", "subscribed", [UPSERT], Kind.SUBSCRIPTION,
         "Never read unless mapped: `false` unsubscribes; `true` is sent only with `allow_resubscribe`, because it "
         "re-subscribes people who opted out."),
    _row("allow_resubscribe", None, [UPSERT], Kind.SWITCH,
         "Let a mapped `subscribed` send `true` (default false)."),
    _row("mailing_lists", "mailingLists", [UPSERT], Kind.LISTS,
         "Mailing list ids → true (add) or false (remove); a flag that is not a boolean leaves out that list only.",
         ["traits.mailingLists"], {"prefix": "mailing_lists_"}),
    _row("mailing_lists", "mailingLists", [EVENT], Kind.LISTS,
         "Mailing list ids → true or false, sent with the event; only when mapped."),
    _row("event_name", "eventName", [EVENT], Kind.EVENT,
         "The event's name.", ["event"], ["event_text", "event"]),
    _row("idempotency_key", "Idempotency-Key", [EVENT], Kind.IDEMPOTENCY,
         "The event's id: the key sent is a hash of the event name and this id; a mapped key is sent as given when "
         "it is at most 100 visible ASCII characters, else hashed.", ["messageId"], ["id"]),
    _row("properties", None, [UPSERT], Kind.PROPERTIES,
         "Custom contact properties: a dot path to an object, or `\"*\"` for every column no other key reads.",
         "traits", "*"),
    _row("properties", None, [EVENT], Kind.PROPERTIES,
         "Contact properties the event updates (`firstName`, `lastName`, `userGroup`, `source` included); only when "
         "mapped."),
    _row("event_properties", "eventProperties", [EVENT], Kind.PROPERTIES,
         "The event's properties: a dot path to an object, or `\"*\"` (a per-event table's own columns).",
         "properties", "*"),
    _row("include", None, _PROPERTY_SETS, Kind.PROPERTY_NAMES,
         "Only these source names of the property sets."),
    _row("exclude", None, _PROPERTY_SETS, Kind.PROPERTY_NAMES,
         "Source names left out of the property sets."),
    _row("rename", None, _PROPERTY_SETS, Kind.PROPERTY_RENAME,
         "Source name → Loops name."),
    _row("camel_case", None, _PROPERTY_SETS, Kind.SWITCH,
         "Send `first_name` as `firstName` (default: true for `\"*\"`, false for a path)."),
    _row("send_nulls", None, _PROPERTY_SETS, Kind.SWITCH,
         "Send a NULL column as `null`, which clears the property in Loops (default false: left out). An empty "
         "or blank string is never a clear: it is left out either way."),
    _row("order_by", None, _MAPPED, Kind.ORDER,
         "The record's time, which orders the updates of one contact.", ["timestamp"], ["timestamp"]),
    _row("on_leave", None, [UPSERT], Kind.AUDIENCE,
         "The stream is an audience: what happens to a person this rule put in it when their row is gone "
         "(`remove_from_lists`, `clear_properties`, `unsubscribe`, `delete`, `{\"event\": \"Left beta\"}`, or a list "
         "of these). Decided when the audience is closed: an `ACTIVATE_VERSION`, or the end of input with "
         "`full_table`."),
    _row("on_join", None, [UPSERT], Kind.AUDIENCE,
         "`{\"event\": \"Joined beta\"}`: an event sent when a person enters the audience (not at its first sync)."),
    _row("full_table", None, [UPSERT], Kind.SWITCH,
         "Every run's input holds the whole table (a tap that sends no `ACTIVATE_VERSION`): a run whose input ends "
         "normally closes the audience."),
)  # fmt: skip


def _keys_of(action: Action) -> frozenset[str]:
    return frozenset(f.name for f in FIELDS if action in f.actions)


#: The keys a rule of each action accepts. A ``segment`` rule takes the keys of both actions it routes to; each
#: applies to the calls it fits (``Rule.narrowed``).
ALLOWED_KEYS: dict[Action, frozenset[str]] = {action: _keys_of(action) for action in Action}
#: Audience keys are for tables (one row per person), not for Segment's identify calls.
AUDIENCE_KEYS = frozenset({"on_leave", "on_join", "full_table"})
ALLOWED_KEYS[Action.SEGMENT] = (ALLOWED_KEYS[UPSERT] | ALLOWED_KEYS[EVENT]) - AUDIENCE_KEYS


@functools.cache
def fields_of(action: Action, *kinds: Kind) -> tuple[RuleField, ...]:
    """The rows of ``action`` (of ``kinds`` when given), in table order."""
    return tuple(f for f in FIELDS if action in f.actions and (not kinds or f.kind in kinds))


#: Body keys Loops reads as fields of the contact itself: in an upsert only their own field spec may set them, so a
#: property spread leaves them out. ``optInStatus`` is added by this project's choice: Loops shows it on contacts
#: (double opt-in: https://loops.so/docs/contacts/double-opt-in) but no page says the API writes it, so no spread
#: may send a source column of that name.
CONTACT_BODY_KEYS = frozenset(
    {f.loops_key for f in fields_of(UPSERT, Kind.IDENTITY, *CONTACT_KINDS) if f.loops_key} | {"optInStatus"}
)
#: Default contact properties an event may carry beside ``eventName``: Loops' events/send accepts contact
#: properties, default and custom, at the top level of its body (https://loops.so/docs/api-reference/send-event).
#: The other contact body keys keep their own handling there: the identity, ``mailingLists`` (a field spec) and
#: ``subscribed`` (never spread: it re-subscribes people who opted out).
EVENT_CONTACT_FIELDS = frozenset(f.loops_key for f in fields_of(UPSERT, Kind.CONTACT) if f.loops_key)


# --- field specs


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """Where one value comes from: dot paths (first non-null wins), a constant, or columns sharing a prefix."""

    paths: tuple[str, ...] = ()
    constant: Any = None
    has_constant: bool = False
    prefix: str | None = None
    #: ``get(record)``: the value, or None when every path is absent or null (an empty string counts as absent).
    #: Compiled for this spec's paths (``_compiled_get``), since it runs for every field of every record.
    get: Callable[[Mapping[str, Any]], Any] = field(default=None, init=False, repr=False, compare=False)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.has_constant:
            constant = self.constant
            getter: Callable[[Mapping[str, Any]], Any] = lambda record: constant  # noqa: E731
        elif self.prefix is not None:
            getter = functools.partial(_prefixed, self.prefix)
        else:
            getter = _compiled_get(self.paths)
        object.__setattr__(self, "get", getter)

    def holds_null(self, record: Mapping[str, Any]) -> bool:
        """True when a path is present in ``record`` with a null value (a NULL column, as opposed to no column);
        a blank string is not a null here: it never clears (``values.is_blank``)."""
        return any(_present(record, path) and resolve_path(record, path) is None for path in self.paths)

    def top_level_keys(self) -> set[str]:
        """The record keys this spec reads, so that ``"*"`` does not send them a second time."""
        return {path.split(".", 1)[0] for path in self.paths}

    def describe(self) -> str:
        """How the spec reads, for error messages."""
        if self.has_constant:
            return f"the constant {self.constant!r}"
        if self.prefix is not None:
            return f"columns starting with {self.prefix!r}"
        return " or ".join(repr(p) for p in self.paths)


def resolve_path(record: Mapping[str, Any], path: str) -> Any:
    """Follow a dot path (``traits.email``) into nested objects; a key that itself holds a dot is tried first."""
    value = record.get(path)
    if value is not None or "." not in path:
        return value
    value = record
    for part in _split(path):
        if not isinstance(value, dict | Mapping):
            return None
        value = value.get(part)
        if value is None:
            return None
    return value


@functools.lru_cache(maxsize=1024)
def _split(path: str) -> tuple[str, ...]:
    return tuple(path.split("."))


def _prefixed(prefix: str, record: Mapping[str, Any]) -> Any:
    """The columns starting with ``prefix``, keyed by the rest of their name, or None when there are none."""
    found = {k[len(prefix) :]: v for k, v in record.items() if k.startswith(prefix)}
    return found or None


@functools.lru_cache(maxsize=512)
def _compiled_get(paths: tuple[str, ...]) -> Callable[[Mapping[str, Any]], Any]:
    """One function reading ``paths`` in turn from a record (the first value that is not null or blank), with each
    path unrolled into plain lookups: the same result as ``resolve_path`` on each path and ``is_blank`` on each
    value, without a call per path. Generated once per distinct tuple of paths; each path is embedded as a string
    literal (``repr``), never as code."""
    lines = ["def get(record):"]
    for path in paths:
        lines.append(f"    value = record.get({path!r})")
        parts = path.split(".")
        if len(parts) == 2:
            lines.append("    if value is None:")
            lines.append(f"        inner = record.get({parts[0]!r})")
            lines.append(f"        if isinstance(inner, dict): value = inner.get({parts[1]!r})")
            lines.append(f"        else: value = resolve_path(record, {path!r})")
        elif len(parts) > 2:
            lines.append("    if value is None:")
            lines.append(f"        value = resolve_path(record, {path!r})")
        lines.append("    if value is not None and not (type(value) is str and is_blank(value)):")
        lines.append("        return value")
    lines.append("    return None")
    namespace: dict[str, Any] = {"resolve_path": resolve_path, "is_blank": is_blank}
    exec(compile("\n".join(lines), f"<field spec {paths!r}>", "exec"), namespace)
    getter: Callable[[Mapping[str, Any]], Any] = namespace["get"]
    return getter


def _present(record: Mapping[str, Any], path: str) -> bool:
    """True when ``path`` exists in ``record`` (whatever its value, null included)."""
    if path in record:
        return True
    head, _, rest = path.partition(".")
    if not rest or not isinstance(record.get(head), Mapping):
        return False
    return _present(record[head], rest)


def parse_field_spec(raw: Any, where: str) -> FieldSpec:
    """A field spec from config: ``"a.b"``, ``["a", "b"]``, ``{"value": x}`` or ``{"prefix": "mailing_lists_"}``."""
    if isinstance(raw, str) and raw:
        return FieldSpec(paths=(raw,))
    if isinstance(raw, list) and raw and all(isinstance(p, str) and p for p in raw):
        return FieldSpec(paths=tuple(raw))
    if isinstance(raw, dict) and set(raw) == {"value"}:
        return FieldSpec(constant=raw["value"], has_constant=True)
    if isinstance(raw, dict) and set(raw) == {"prefix"} and isinstance(raw["prefix"], str) and raw["prefix"]:
        return FieldSpec(prefix=raw["prefix"])
    raise RuleError(
        f'{where}: {raw!r} is not a field spec. Write a dot path ("traits.email"), a list of paths '
        f'(["email", "context_traits_email"]), a constant ({{"value": "Segment"}}) '
        f'or a column prefix ({{"prefix": "mailing_lists_"}}).'
    )


# --- rules


@dataclass(frozen=True, slots=True)
class Rule:
    """One validated entry of ``mappings``: a stream pattern, an action and the field specs it overrides."""

    index: int
    stream: str
    action: Action
    fields: Mapping[str, FieldSpec]
    options: Mapping[str, Any]
    shape: str | None = None  # NESTED, FLAT or None (detected per record)
    builtin: bool = False

    def matches(self, stream_name: str) -> bool:
        """Exact name or glob (``*_events``)."""
        return self.stream == stream_name or fnmatch.fnmatchcase(stream_name, self.stream)

    @property
    def label(self) -> str:
        """How error messages name the rule."""
        origin = "built-in rule" if self.builtin else f"mappings[{self.index}]"
        return f"{origin} (stream {self.stream!r}, action {self.action.value})"

    def narrowed(self, action: Action) -> Rule:
        """The part of a ``segment`` rule that applies to one call type: its keys that fit ``action``, nested shape."""
        allowed = ALLOWED_KEYS[action]
        options = {k: v for k, v in self.options.items() if k in allowed}
        if action is EVENT:
            options.pop("properties", None)  # a segment rule's "properties" are the identify's traits
        fields = {k: v for k, v in self.fields.items() if k in allowed}
        return Rule(self.index, self.stream, action, fields, options, shape=NESTED, builtin=self.builtin)


def _parse_path(key: str, value: Any, where: str, action: Action) -> str:
    if not isinstance(value, str) or not value:
        raise RuleError(f'{where}: "{key}" must be a dot path to an object ("traits") or "*" (every column)')
    return value


def _parse_names(key: str, value: Any, where: str, action: Action) -> frozenset[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RuleError(f'{where}: "{key}" must be a list of property names')
    return frozenset(value)


def _parse_rename(key: str, value: Any, where: str, action: Action) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(v, str) and v for v in value.values()):
        raise RuleError(f'{where}: "{key}" must map source names to Loops names, e.g. {{"plan_name": "plan"}}')
    # In an upsert, a rename onto a contact field (set by its own field spec: first_name, subscribed, ...) or a
    # reserved name would be left out of every request; say so now. An event rule's rename also serves its event
    # properties, where those names are plain names, so it is not checked here.
    bad = sorted(v for v in value.values() if v in defaults.RESERVED_NAMES or v in CONTACT_BODY_KEYS)
    if bad and action is UPSERT:
        raise RuleError(
            f'{where}: "{key}" targets {bad} are contact fields with their own field spec or names Loops '
            "reserves; map the field spec (first_name, user_group, ...) or choose other property names"
        )
    return dict(value)


def _parse_switch(key: str, value: Any, where: str, action: Action) -> bool:
    if not isinstance(value, bool):
        raise RuleError(f'{where}: "{key}" must be true or false')
    return value


#: What ``on_leave`` may do besides sending an event (``audience.py`` builds the requests).
LEAVE_ACTIONS = ("remove_from_lists", "clear_properties", "unsubscribe", "delete")
_LEAVE_EXAMPLE = '["remove_from_lists", {"event": "Left beta"}]'


def _parse_audience_event(key: str, value: Any, where: str) -> str:
    name = value.get("event") if isinstance(value, dict) and set(value) == {"event"} else None
    if not isinstance(name, str) or not name.strip():
        raise RuleError(f'{where}: "{key}" takes an event as {{"event": "Left beta"}}, not {value!r}')
    if ":" in name:
        # https://loops.so/docs/events: "Custom event names can not contain colon characters".
        raise RuleError(f'{where}: "{key}" event {name!r} contains ":", which Loops refuses in event names')
    return name.strip()


def _parse_audience(key: str, value: Any, where: str, action: Action) -> tuple[str, ...]:
    """``on_leave``: one value or a list (``"event:<name>"`` for an event); ``on_join``: an event only."""
    if key == "on_join":
        return (f"event:{_parse_audience_event(key, value, where)}",)
    items = value if isinstance(value, list) else [value]
    parsed: list[str] = []
    for item in items:
        if isinstance(item, dict):
            parsed.append(f"event:{_parse_audience_event(key, item, where)}")
        elif item in LEAVE_ACTIONS:
            parsed.append(str(item))
        else:
            raise RuleError(
                f'{where}: "on_leave" value {item!r} is not one of {", ".join(LEAVE_ACTIONS)} or {{"event": "..."}}; '
                f"e.g. {_LEAVE_EXAMPLE}"
            )
    if not parsed:
        raise RuleError(f'{where}: "on_leave" is empty; e.g. {_LEAVE_EXAMPLE}')
    if "delete" in parsed and set(parsed) & {"remove_from_lists", "clear_properties", "unsubscribe"}:
        raise RuleError(
            f'{where}: "on_leave" has "delete" with changes to the contact it deletes; keep "delete" (and an event, '
            'sent before it) or drop "delete"'
        )
    return tuple(dict.fromkeys(parsed))


_OPTION_PARSERS: dict[Form, Callable[[str, Any, str, Action], Any]] = {
    Form.PATH: _parse_path,
    Form.NAMES: _parse_names,
    Form.MAPPING: _parse_rename,
    Form.SWITCH: _parse_switch,
    Form.AUDIENCE: _parse_audience,
}


def parse_rule(raw: Any, index: int, *, builtin: bool = False) -> Rule:
    """Validate one rule from config; every mistake is reported with the rule's position and a fix."""
    where = f"mappings[{index}]"
    if not isinstance(raw, dict):
        raise RuleError(
            f'{where}: a rule must be an object like {{"stream": "identifies", "action": "upsert_contact"}}'
        )
    stream = raw.get("stream")
    if not isinstance(stream, str) or not stream:
        raise RuleError(f'{where}: "stream" is required (an exact stream name or a glob such as "*_events")')
    try:
        action = Action(raw.get("action"))
    except ValueError:
        raise RuleError(
            f'{where} (stream {stream!r}): "action" must be one of '
            f"{', '.join(a.value for a in Action)}, not {raw.get('action')!r}"
        ) from None
    where = f"{where} (stream {stream!r}, action {action.value})"
    allowed = ALLOWED_KEYS[action]
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise RuleError(f"{where}: unknown key(s) {unknown}; a {action.value} rule accepts {sorted(allowed)}")

    forms = {f.name: f.kind.form for f in FIELDS if f.name in allowed}
    given = sorted(k for k in raw if forms[k] is not Form.HEADER)
    fields = {k: parse_field_spec(raw[k], f'{where} "{k}"') for k in given if forms[k] is Form.SPEC}
    options: dict[str, Any] = {}
    for form, parse in _OPTION_PARSERS.items():
        for key in (k for k in given if forms[k] is form):
            options[key] = parse(key, raw[key], where, action)
    shape = raw.get("shape")
    if shape not in (None, NESTED, FLAT):
        raise RuleError(f'{where}: "shape" must be "nested" (Segment JSON) or "flat" (warehouse rows)')
    if options.get("full_table") and not ({"on_leave", "on_join"} & set(options)):
        raise RuleError(
            f'{where}: "full_table" does nothing without "on_leave" or "on_join"; add e.g. '
            f'"on_leave": "remove_from_lists", or remove "full_table"'
        )
    return Rule(index=index, stream=stream, action=action, fields=fields, options=options, shape=shape, builtin=builtin)


def parse_rules(raw_rules: Sequence[Any] | None, *, use_defaults: bool = True) -> list[Rule]:
    """The user's rules first (first match wins), then the built-in Segment rules unless turned off."""
    if raw_rules is not None and not isinstance(raw_rules, list):
        raise RuleError("mappings: must be a list of rules")
    rules = [parse_rule(raw, i) for i, raw in enumerate(raw_rules or [])]
    if use_defaults:
        rules += [parse_rule(raw, i, builtin=True) for i, raw in enumerate(defaults.DEFAULT_RULES)]
    return rules


def match_rule(rules: Sequence[Rule], stream_name: str) -> Rule | None:
    """The first rule whose pattern matches ``stream_name``."""
    return next((rule for rule in rules if rule.matches(stream_name)), None)


#: Table names (the last part of a stream name) that hold people: their rows are contacts.
_PEOPLE_TABLES = ("user", "identif", "contact", "customer", "people", "person", "member", "subscriber", "lead")


def suggest_rule(stream_name: str, properties: Sequence[str]) -> str:
    """A rule to paste into ``mappings`` for an unmapped stream, guessed from its name and columns: an event column,
    or a table of things rather than people (``orders`` with ``order_id``, ``order_completed``, ``signed_up``)
    suggests ``send_event``; people's tables and anything else, ``upsert_contact``."""
    names = set(properties)
    table = re.split(r"[-.]", stream_name.lower())[-1]
    singular = table[:-1] if table.endswith("s") else table
    looks_like_event = bool(names & {"event", "event_text", "event_name", "eventName"}) or (
        not table.startswith(_PEOPLE_TABLES)
        and (
            bool(names & {f"{singular}_id", f"{singular}Id"})
            or re.search(r"(^|_)[a-z]+ed(_|$)", table) is not None
            or singular in ("order", "purchase", "payment", "event", "track", "signup", "checkout")
        )
    )
    action = "send_event" if looks_like_event else "upsert_contact"
    return canonical_json({"stream": stream_name, "action": action})


# --- the README's table

_ACTION_NAMES = {UPSERT: "upsert", EVENT: "event", DELETE: "delete"}


def _markdown_default(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, list):
        return ", ".join(f"`{v}`" for v in value)
    if isinstance(value, dict):
        return f"`{json.dumps(value)}`"
    return '`"*"`' if value == "*" else f"`{value}`"


def _markdown_actions(actions: frozenset[Action]) -> str:
    if actions == frozenset(Action):
        return "all"
    return ", ".join(name for action, name in _ACTION_NAMES.items() if action in actions)


def rule_table_markdown() -> str:
    """The README's table of rule keys, one line per row of ``FIELDS`` (a test checks that the README holds it)."""
    lines = [
        "| key | actions | kind | Loops key | nested default | flat (warehouse) default | meaning |",
        "|---|---|---|---|---|---|---|",
    ]
    for f in FIELDS:
        has_defaults = f.kind.form in (Form.SPEC, Form.PATH)
        cells = [
            f"`{f.name}`",
            _markdown_actions(f.actions),
            f.kind.label,
            f"`{f.loops_key}`" if f.loops_key else "",
            _markdown_default(f.nested) if has_defaults else "",
            _markdown_default(f.flat) if has_defaults else "",
            f.description,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


#: The README's rule table sits between these lines; ``render_readme`` rewrites what is between them.
TABLE_START = "<!-- rule table: generated from target_loops/fields.py by `python -m target_loops.fields README.md` -->"
TABLE_END = "<!-- end of rule table -->"


def render_readme(text: str) -> str:
    """``text`` (the README) with its rule table replaced by ``rule_table_markdown()``; ValueError without markers."""
    start, end = text.find(TABLE_START), text.find(TABLE_END)
    if start < 0 or end < start:
        raise ValueError(f"the README has no rule table markers ({TABLE_START!r} ... {TABLE_END!r})")
    head = text[: start + len(TABLE_START)]
    return f"{head}\n{rule_table_markdown()}{text[end:]}"


def _main(argv: Sequence[str]) -> int:
    """``python -m target_loops.fields README.md`` rewrites the README's rule table; without a path, prints it."""
    if not argv:
        print(rule_table_markdown(), end="")
        return 0
    import pathlib

    path = pathlib.Path(argv[0])
    text = path.read_text(encoding="utf-8")
    rendered = render_readme(text)
    if rendered != text:
        path.write_text(rendered, encoding="utf-8")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(_main(sys.argv[1:]))
