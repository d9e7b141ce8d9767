"""The rule engine: which rule a stream gets, and how a record becomes one Loops request.

Pure functions and immutable values, no I/O: rules are parsed and validated once at start (errors name the rule
and the key), compiled once per stream and shape, then applied to each record to give an ``Operation`` or a
``Rejection``.
"""

from __future__ import annotations

import datetime as dt
import decimal
import fnmatch
import functools
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from target_loops import defaults
from target_loops.defaults import FLAT, NESTED
from target_loops.operations import Action, LoopsRequest, Operation, OutcomeKind, Rejection, Skipped
from target_loops.serialization import canonical_json, iso_datetime, json_number, stable_hash

#: Loops refuses a string value longer than 500 characters *including its opening and closing quotes*, so at most
#: 498 characters of text; the value is measured JSON-encoded, so escapes count too
#: (https://loops.so/docs/api-reference/intro, "Debugging").
MAX_ENCODED_STRING = 500
#: An ``Idempotency-Key`` has at most 100 characters (https://loops.so/docs/api-reference/send-event).
MAX_IDEMPOTENCY_KEY = 100
#: A header value must be visible ASCII to reach Loops as written: requests refuses a newline (header injection) and
#: encodes non-ASCII text as Latin-1 or not at all (https://www.rfc-editor.org/rfc/rfc9110#section-5.5).
_SAFE_KEY = re.compile(r"^[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?$")
#: The email field is "the contact's email address" (https://loops.so/docs/api-reference/update-contact): a value
#: that is not shaped like one is refused here rather than creating a contact nobody can be emailed at.
EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
#: The reason of a ``partial`` entry: one mailing list flag that is not a boolean was left out, the rest was sent.
PARTIAL_MAILING_LIST = "invalid_mailing_list"
_PARTIAL_LIST_PREFIX = "mailing list "

UPSERT_PATH = "/v1/contacts/update"
EVENT_PATH = "/v1/events/send"
DELETE_PATH = "/v1/contacts/delete"
#: A 409 on events/send: Loops already accepted this Idempotency-Key (https://loops.so/docs/api-reference/send-event).
EVENT_ALSO_DONE = ((409, OutcomeKind.DUPLICATE),)
#: A 404 on contacts/delete: no such contact, nothing left to delete (https://loops.so/docs/api-reference/delete-contact).
DELETE_ALSO_DONE = ((404, OutcomeKind.ALREADY_DONE),)

_COMMON_KEYS = {"stream", "action", "email", "user_id", "shape", "order_by"}
_PROPERTY_OPTIONS = {"include", "exclude", "rename", "camel_case", "send_nulls"}
ALLOWED_KEYS: dict[Action, frozenset[str]] = {
    Action.UPSERT_CONTACT: frozenset(
        _COMMON_KEYS
        | _PROPERTY_OPTIONS
        | {"properties", "first_name", "last_name", "user_group", "source", "subscribed", "mailing_lists"}
        | {"allow_resubscribe"}
    ),
    Action.SEND_EVENT: frozenset(
        _COMMON_KEYS
        | _PROPERTY_OPTIONS
        | {"event_name", "event_properties", "idempotency_key", "properties", "mailing_lists"}
    ),
    Action.DELETE_CONTACT: frozenset(_COMMON_KEYS),
    Action.SKIP: frozenset({"stream", "action"}),
}
#: A ``segment`` rule takes the keys of both actions it routes to; each applies to the calls it fits.
ALLOWED_KEYS[Action.SEGMENT] = ALLOWED_KEYS[Action.UPSERT_CONTACT] | ALLOWED_KEYS[Action.SEND_EVENT]


class RuleError(ValueError):
    """A rule in ``mappings`` is malformed; the message names the rule and says what to write instead."""


class _Reject(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


# --- field specs


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """Where one value comes from: dot paths (first non-null wins), a constant, or columns sharing a prefix."""

    paths: tuple[str, ...] = ()
    constant: Any = None
    has_constant: bool = False
    prefix: str | None = None
    getters: tuple[Callable[[Mapping[str, Any]], Any], ...] = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # One compiled getter per path: this runs for every field of every record.
        object.__setattr__(self, "getters", tuple(_getter(path) for path in self.paths))

    def get(self, record: Mapping[str, Any]) -> Any:
        """The value for ``record``, or None when every path is absent or null (an empty string counts as absent)."""
        if self.has_constant:
            return self.constant
        if self.prefix is not None:
            found = {k[len(self.prefix) :]: v for k, v in record.items() if k.startswith(self.prefix)}
            return found or None
        for getter in self.getters:
            value = getter(record)
            if value is not None and value != "":
                return value
        return None

    def holds_null(self, record: Mapping[str, Any]) -> bool:
        """True when a path is present in ``record`` with a null value (a NULL column, as opposed to no column)."""
        return any(_present(record, path) for path in self.paths)

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


def _getter(path: str) -> Callable[[Mapping[str, Any]], Any]:
    """A function reading ``path`` from a record: the same as ``resolve_path``, with the common shapes unrolled."""
    if "." not in path:
        return lambda record: record.get(path)
    parts = path.split(".")
    if len(parts) == 2:
        head, tail = parts

        def two(record: Mapping[str, Any]) -> Any:
            value = record.get(path)
            if value is not None:
                return value
            inner = record.get(head)
            return inner.get(tail) if isinstance(inner, dict) else resolve_path(record, path)

        return two
    return lambda record: resolve_path(record, path)


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


# --- property sets


def camel_case(name: str) -> str:
    """``first_name`` → ``firstName``, ``Favorite-Color`` → ``favoriteColor``, ``USER_ID`` → ``userId``.

    A name that is already camelCase (``planId``) is left as it is.
    """
    parts = [p for p in re.split(r"[_\-\s]+", name) if p]
    if not parts:
        return name
    words = [p.lower() if p.isupper() else p for p in parts]
    head = words[0][:1].lower() + words[0][1:]
    return head + "".join(w[:1].upper() + w[1:] for w in words[1:])


@dataclass(frozen=True, slots=True)
class PropertySource:
    """A set of properties: every key of the object at ``path``, or every usable top-level column (``"*"``)."""

    path: str  # "*" or a dot path
    include: frozenset[str] | None
    exclude: frozenset[str]
    rename: Mapping[str, str]
    camel_case: bool

    def loops_name(self, source_name: str) -> str:
        """The Loops property name for a source key: renamed, else camelCased when asked."""
        renamed = self.rename.get(source_name)
        if renamed is not None:
            return renamed
        return camel_case(source_name) if self.camel_case else source_name


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
    unknown = sorted(set(raw) - ALLOWED_KEYS[action])
    if unknown:
        raise RuleError(
            f"{where}: unknown key(s) {unknown}; a {action.value} rule accepts {sorted(ALLOWED_KEYS[action])}"
        )

    not_specs = {"stream", "action", "shape", "properties", "event_properties", "allow_resubscribe"}
    spec_keys = ALLOWED_KEYS[action] - not_specs - _PROPERTY_OPTIONS
    fields = {k: parse_field_spec(raw[k], f'{where} "{k}"') for k in sorted(spec_keys) if k in raw}

    options: dict[str, Any] = {}
    for key in ("properties", "event_properties"):
        if key in raw:
            value = raw[key]
            if not isinstance(value, str) or not value:
                raise RuleError(f'{where}: "{key}" must be a dot path to an object ("traits") or "*" (every column)')
            options[key] = value
    for key in ("include", "exclude"):
        if key in raw:
            value = raw[key]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise RuleError(f'{where}: "{key}" must be a list of property names')
            options[key] = frozenset(value)
    if "rename" in raw:
        rename = raw["rename"]
        if not isinstance(rename, dict) or not all(isinstance(v, str) and v for v in rename.values()):
            raise RuleError(f'{where}: "rename" must map source names to Loops names, e.g. {{"plan_name": "plan"}}')
        # In an upsert, a rename onto a contact field (set by its own field spec: first_name, subscribed, ...) or a
        # reserved name would be left out of every request; say so now. An event rule's rename also serves its
        # event properties, where those names are plain names, so it is not checked here.
        bad = sorted(v for v in rename.values() if v in defaults.RESERVED_NAMES or v in defaults.CONTACT_BODY_KEYS)
        if bad and action is Action.UPSERT_CONTACT:
            raise RuleError(
                f'{where}: "rename" targets {bad} are contact fields with their own field spec or names Loops '
                "reserves; map the field spec (first_name, user_group, ...) or choose other property names"
            )
        options["rename"] = dict(rename)
    for key in ("camel_case", "send_nulls", "allow_resubscribe"):
        if key in raw:
            if not isinstance(raw[key], bool):
                raise RuleError(f'{where}: "{key}" must be true or false')
            options[key] = raw[key]
    shape = raw.get("shape")
    if shape not in (None, NESTED, FLAT):
        raise RuleError(f'{where}: "shape" must be "nested" (Segment JSON) or "flat" (warehouse rows)')
    return Rule(index=index, stream=stream, action=action, fields=fields, options=options, shape=shape, builtin=builtin)


def _sub_rule(rule: Rule, action: Action) -> Rule:
    """The part of a ``segment`` rule that applies to one call type: its keys that fit ``action``, nested shape."""
    allowed = ALLOWED_KEYS[action]
    options = {k: v for k, v in rule.options.items() if k in allowed}
    if action is Action.SEND_EVENT:
        options.pop("properties", None)  # a segment rule's "properties" are the identify's traits
    fields = {k: v for k, v in rule.fields.items() if k in allowed}
    return Rule(rule.index, rule.stream, action, fields, options, shape=NESTED, builtin=rule.builtin)


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


def suggest_rule(stream_name: str, properties: Sequence[str]) -> str:
    """A rule to paste into ``mappings`` for an unmapped stream, guessed from its columns."""
    names = set(properties)
    looks_like_event = bool(names & {"event", "event_text", "event_name", "eventName"})
    action = "send_event" if looks_like_event else "upsert_contact"
    return canonical_json({"stream": stream_name, "action": action})


# --- compiled plans


@dataclass(slots=True)
class _Plan:
    """A rule resolved against one shape: every field spec and property source, ready to apply."""

    fields: dict[str, tuple[str, FieldSpec]]  # field name → (Loops key, spec)
    properties: PropertySource | None
    event_properties: PropertySource | None
    idempotency_key: FieldSpec | None
    order_by: FieldSpec
    skip_top_level: frozenset[str]  # columns "*" must not spread because a field spec reads them
    skip_prefixes: tuple[str, ...]  # column prefixes read by a prefix spec (``mailing_lists_``)
    used_paths: frozenset[str]  # exact paths read by a field spec (``traits.email``), skipped by a path spread
    nested: bool
    #: Per property source: source key → Loops name (None: not a property). Keys repeat on every record.
    names: dict[int, dict[str, str | None]] = field(default_factory=dict)
    #: ``fields`` without the identity (email, user id): what an upsert reads besides who it is for.
    contact_fields: tuple[tuple[str, str, FieldSpec], ...] = ()


@dataclass
class StreamMapper:
    """A rule bound to one stream: turns each record into an ``Operation`` or a ``Rejection``."""

    rule: Rule
    stream_name: str
    key_properties: tuple[str, ...] = ()
    _plans: dict[str, _Plan] = field(default_factory=dict)
    _routes: dict[str, StreamMapper] = field(default_factory=dict)

    def map(self, record: dict[str, Any]) -> Operation | Rejection | Skipped:
        """Apply the rule to one record. Never raises for bad data: a bad record is a ``Rejection``.

        A value no check foresaw (a date past year 9999, a decimal that cannot be compared) also becomes a rejection
        (``invalid_value``): raising would stop the run at this record, and every rerun at the same record.
        """
        if self.rule.action is Action.SEGMENT:
            return self._route(record)
        if self.rule.action is Action.SKIP:
            return Skipped(str(record.get("type") or self.stream_name))
        shape = self.rule.shape or (NESTED if defaults.looks_nested(record) else FLAT)
        plan = self._plans.get(shape) or self._compile(shape)
        call = record.get("type") if shape == NESTED else None
        if isinstance(call, str) and call in defaults.WRONG_CALLS.get(self.rule.action.value, ()):
            return Rejection(
                "wrong_call_type",
                f"a Segment {call!r} call in a stream whose rule is {self.rule.action.value}: it would be "
                f"{'merged into a contact update' if self.rule.action is Action.UPSERT_CONTACT else 'sent as an event'}"
                ". "
                f'For a stream of mixed Segment calls use {{"stream": "{self.stream_name}", "action": "segment"}}, '
                "which routes each call by its type",
                record,
            )
        try:
            if self.rule.action is Action.UPSERT_CONTACT:
                return self._upsert(plan, record)
            if self.rule.action is Action.SEND_EVENT:
                return self._event(plan, record)
            return self._delete(plan, record)
        except _Reject as exc:
            return Rejection(reason=exc.reason, message=exc.message, record=record)
        except (ValueError, ArithmeticError) as exc:
            return Rejection(reason="invalid_value", message=f"a value cannot be read: {exc}", record=record)

    # ----- routing raw Segment calls

    def _route(self, record: dict[str, Any]) -> Operation | Rejection | Skipped:
        """A ``segment`` rule: identify → contact upsert, track → event, each with the built-in Segment defaults and
        the rule's overrides that fit it; page, screen, group and alias are counted and skipped."""
        call = record.get("type")
        if call in defaults.SKIPPED_CALLS:
            return Skipped(str(call))
        route = self._routes.get(call) if isinstance(call, str) else None
        if route is None and call in ("identify", "track"):
            route = self._routes[call] = StreamMapper(
                _sub_rule(self.rule, Action.UPSERT_CONTACT if call == "identify" else Action.SEND_EVENT),
                self.stream_name,
                self.key_properties,
            )
        if route is None:
            return Rejection(
                "unknown_call_type",
                f"type {call!r} is not a Segment call type (identify, track, page, screen, group, alias)",
                record,
            )
        return route.map(record)

    # ----- compilation

    def _compile(self, shape: str) -> _Plan:
        rule, opts = self.rule, self.rule.options
        table = {
            Action.UPSERT_CONTACT: defaults.CONTACT_FIELDS,
            Action.SEND_EVENT: defaults.EVENT_FIELDS,
            Action.DELETE_CONTACT: defaults.DELETE_FIELDS,
        }[rule.action]
        fields: dict[str, tuple[str, FieldSpec]] = {}
        for name, (loops_key, nested_default, flat_default) in table.items():
            spec = rule.fields.get(name)
            if spec is None:
                default = nested_default if shape == NESTED else flat_default
                if default is None:
                    continue
                spec = parse_field_spec(default, f"default for {name}")
            fields[name] = (loops_key, spec)
        idem = fields.pop("idempotency_key", (None, None))[1]
        order_by = rule.fields.get("order_by") or parse_field_spec(defaults.ORDER_BY[shape], "order_by")

        def source(key: str, default_table: dict[str, Any] | None) -> PropertySource | None:
            path = opts.get(key) or (default_table[shape] if default_table else None)
            if path is None:
                return None
            return PropertySource(
                path=path,
                include=opts.get("include"),
                exclude=opts.get("exclude", frozenset()),
                rename=opts.get("rename", {}),
                camel_case=opts.get("camel_case", path == "*"),
            )

        if rule.action is Action.UPSERT_CONTACT:
            properties = source("properties", defaults.CONTACT_PROPERTIES)
            event_properties = None
        elif rule.action is Action.SEND_EVENT:
            properties = source("properties", None)
            event_properties = source("event_properties", defaults.EVENT_PROPERTIES)
        else:
            properties = event_properties = None

        # order_by too: the column that orders updates is bookkeeping, not a property.
        specs = [spec for _, spec in fields.values()] + [s for s in (idem, order_by) if s is not None]
        plan = _Plan(
            fields=fields,
            properties=properties,
            event_properties=event_properties,
            idempotency_key=idem,
            order_by=order_by,
            skip_top_level=frozenset(k for spec in specs for k in spec.top_level_keys()),
            skip_prefixes=tuple(spec.prefix for spec in specs if spec.prefix is not None),
            used_paths=frozenset(p for spec in specs for p in spec.paths),
            nested=shape == NESTED,
            contact_fields=tuple((n, k, spec) for n, (k, spec) in fields.items() if n not in ("email", "user_id")),
        )
        self._plans[shape] = plan
        return plan

    # ----- actions

    def _identity(self, plan: _Plan, record: dict[str, Any], body: dict[str, Any]) -> str:
        email = _clean_email(plan.fields["email"][1].get(record))
        user_id = _clean_user_id(plan.fields["user_id"][1].get(record))
        if email is None and user_id is None:
            raise _Reject(
                "no_identifier",
                f"no email and no user id: looked for the email in {plan.fields['email'][1].describe()} and the "
                f'user id in {plan.fields["user_id"][1].describe()}; map "email" or "user_id" in the rule',
            )
        if email is not None:
            if not EMAIL_RE.match(email):
                raise _Reject("invalid_email", f"{email!r} is not an email address")
            _check_length("email", email)
            body["email"] = email
        if user_id is not None:
            _check_length("userId", user_id)
            body["userId"] = user_id
        return f"u:{user_id}" if user_id is not None else f"e:{email.lower()}"  # type: ignore[union-attr]

    def _upsert(self, plan: _Plan, record: dict[str, Any]) -> Operation:
        send_nulls = self.rule.options.get("send_nulls", False)
        resubscribe_blocked = False
        body: dict[str, Any] = {}
        skipped: list[str] = []
        partial: list[tuple[str, str]] = []
        if plan.properties is not None:
            self._spread(plan, plan.properties, record, body, skipped, send_nulls=send_nulls, skip=_UPSERT_SKIP)
        contact_key = self._identity(plan, record, body)
        for name, loops_key, spec in plan.contact_fields:
            value = spec.get(record)
            if name == "mailing_lists":
                lists = _mailing_lists(value, partial)
                if lists:
                    body["mailingLists"] = lists
            elif name == "subscribed":
                if value is not None:
                    subscribed = _boolean(value, "subscribed")
                    if subscribed and not self.rule.options.get("allow_resubscribe", False):
                        # Loops would re-subscribe someone who opted out: only an explicit opt-in may send true.
                        resubscribe_blocked = True
                    else:
                        body["subscribed"] = subscribed
            elif value is not None:
                body[loops_key] = _scalar(loops_key, value)
            elif send_nulls and spec.holds_null(record):
                body[loops_key] = None
        request = LoopsRequest("PUT", UPSERT_PATH, body)
        return Operation(
            Action.UPSERT_CONTACT,
            request,
            record,
            contact_key,
            _sort_key(plan.order_by.get(record)),
            tuple(skipped),
            resubscribe_blocked,
            body.get("email"),
            body.get("userId"),
            partial=tuple(partial),
        )

    def _event(self, plan: _Plan, record: dict[str, Any]) -> Operation:
        body: dict[str, Any] = {}
        skipped: list[str] = []
        partial: list[tuple[str, str]] = []
        # eventName is required (https://loops.so/docs/api-reference/send-event).
        name = _identifier(plan.fields["event_name"][1].get(record), "event name", "invalid_event_name")
        if name is None:
            raise _Reject("no_event_name", f"no event name in {plan.fields['event_name'][1].describe()}")
        # No other local rule on the name: none has a public source that we could confirm (a ':' was once refused
        # here). If Loops refuses a name, its 400 and message go to the rejects file like any refusal.
        _check_length("eventName", name)
        if plan.properties is not None:
            send_nulls = self.rule.options.get("send_nulls", False)
            self._spread(plan, plan.properties, record, body, skipped, send_nulls=send_nulls, skip=_EVENT_SKIP)
        contact_key = self._identity(plan, record, body)
        body["eventName"] = name
        if plan.event_properties is not None:
            event_props: dict[str, Any] = {}
            self._spread(plan, plan.event_properties, record, event_props, skipped, send_nulls=False, skip=None)
            if event_props:
                body["eventProperties"] = event_props
        if "mailing_lists" in plan.fields:
            lists = _mailing_lists(plan.fields["mailing_lists"][1].get(record), partial)
            if lists:
                body["mailingLists"] = lists
        key = self._idempotency_key(plan, record, name)
        request = LoopsRequest("POST", EVENT_PATH, body, key, EVENT_ALSO_DONE)
        return Operation(
            Action.SEND_EVENT,
            request,
            record,
            contact_key,
            _sort_key(plan.order_by.get(record)),
            tuple(skipped),
            email=body.get("email"),
            user_id=body.get("userId"),
            partial=tuple(partial),
            legacy_key=self._legacy_key(plan, record),
        )

    def _legacy_key(self, plan: _Plan, record: dict[str, Any]) -> str | None:
        """The key 0.1 derived from a default id (the id itself, hashed when over 100 characters), so that an event
        a 0.1 ledger recorded is still known after the upgrade; None where the derivation did not change."""
        if plan.idempotency_key is None or "idempotency_key" in self.rule.fields:
            return None
        text = _key_text(plan.idempotency_key.get(record))
        if text is None:
            return None
        return text if len(text) <= MAX_IDEMPOTENCY_KEY else "tl-" + stable_hash(text)[:64]

    def _delete(self, plan: _Plan, record: dict[str, Any]) -> Operation:
        found: dict[str, Any] = {}
        contact_key = self._identity(plan, record, found)
        body = {"userId": found["userId"]} if "userId" in found else {"email": found["email"]}
        request = LoopsRequest("POST", DELETE_PATH, body, also_done=DELETE_ALSO_DONE)
        return Operation(
            Action.DELETE_CONTACT,
            request,
            record,
            contact_key,
            _sort_key(plan.order_by.get(record)),
            email=found.get("email"),
            user_id=found.get("userId"),
        )

    # ----- pieces

    def _spread(
        self,
        plan: _Plan,
        source: PropertySource,
        record: dict[str, Any],
        out: dict[str, Any],
        skipped: list[str],
        *,
        send_nulls: bool,
        skip: frozenset[str] | None,
    ) -> None:
        """Copy a property set into ``out`` under Loops names, refusing nested values and long strings.

        ``skip``: Loops names left out (and listed in ``skipped``) because the request sets them another way or
        Loops reserves them; None for event properties, where any name is the event's own.
        """
        items: Iterable[tuple[str, Any]]
        if source.path == "*":
            items = record.items()
            top = True
        else:
            obj = resolve_path(record, source.path)
            if obj is None:
                return
            if not isinstance(obj, Mapping):
                raise _Reject(
                    "properties_not_object", f"{source.path!r} holds {type(obj).__name__}, not an object of properties"
                )
            items = obj.items()
            top = False
        prefix = f"{source.path}." if not top else ""
        names = plan.names.setdefault(id(source), {})
        for key, value in items:
            try:
                name = names[key]
            except KeyError:
                name = _property_name(plan, source, key, prefix)
                if len(names) < 10_000:  # bounded: a source with unbounded key names just is not cached
                    names[key] = name
            if name is None:
                continue
            if skip is not None and name in skip:
                skipped.append(key)
                continue
            if value is None:
                if send_nulls:
                    out[name] = None
                continue
            out[name] = _scalar(name, value, where=f"{prefix}{key}")

    def declared_properties(self, schema: Mapping[str, Any]) -> tuple[dict[str, Mapping[str, Any]], set[str]]:
        """What the rule will send for a stream with this SCHEMA: contact property names (→ their JSON schema)
        and mailing list ids, so that preflight can check them before the first record is sent.

        Properties under an object the SCHEMA does not describe (a bare ``traits`` object) are only known from
        the data; they are checked when their batch is sent.
        """
        if self.rule.action is Action.SKIP:
            return {}, set()
        if self.rule.action is Action.SEGMENT:
            identify = StreamMapper(_sub_rule(self.rule, Action.UPSERT_CONTACT), self.stream_name, self.key_properties)
            return identify.declared_properties(schema)
        props: Mapping[str, Any] = schema.get("properties") or {}
        shape = self.rule.shape or (NESTED if _schema_looks_nested(props) else FLAT)
        plan = self._plans.get(shape) or self._compile(shape)
        found: dict[str, Mapping[str, Any]] = {}
        lists: set[str] = set()
        skip = _EVENT_SKIP if self.rule.action is Action.SEND_EVENT else _UPSERT_SKIP
        if plan.properties is not None:
            source = plan.properties
            items = props if source.path == "*" else _schema_at(props, source.path)
            prefix = "" if source.path == "*" else f"{source.path}."
            for key, sub in items.items():
                name = _property_name(plan, source, key, prefix)
                if name is not None and name not in skip:
                    found[name] = sub if isinstance(sub, Mapping) else {}
        for prefix_ in plan.skip_prefixes:
            if "mailing_lists" in plan.fields and plan.fields["mailing_lists"][1].prefix == prefix_:
                lists.update(k[len(prefix_) :] for k in props if k.startswith(prefix_))
        return found, lists

    def _idempotency_key(self, plan: _Plan, record: dict[str, Any], event_name: str) -> str:
        """The event's Idempotency-Key: at most 100 visible ASCII characters, the same for every copy of one event.

        - A key the rule maps (``idempotency_key``) is sent as given when it is a safe header value of at most 100
          characters, else as a hash of it.
        - By default (Segment's ``messageId``, a warehouse row's ``id``) the key is a hash of the event name and that
          id: an id is unique per table, not per team, so ``orders`` 1 and ``refunds`` 1 must not share a key, while
          Segment's ``tracks`` row and the per-event table row of one event (same name, same id) still do.
        - Without an id: a hash of the stream and its key properties, else of the whole record.
        """
        value = plan.idempotency_key.get(record) if plan.idempotency_key is not None else None
        text = _key_text(value)
        if text is not None:
            if "idempotency_key" in self.rule.fields:
                if len(text) <= MAX_IDEMPOTENCY_KEY and _SAFE_KEY.match(text):
                    return text
                return "tl-" + stable_hash(text)[:64]
            return "tl-" + stable_hash("event", event_name, text)[:64]
        if self.key_properties and all(record.get(k) is not None for k in self.key_properties):
            return "tl-" + stable_hash(self.stream_name, [record[k] for k in self.key_properties])[:64]
        payload = {k: v for k, v in record.items() if not k.startswith("_sdc_")}
        return "tl-" + stable_hash(self.stream_name, payload)[:64]


#: Loops names an upsert's property spread leaves out: the contact fields (their own field specs set them) and the
#: reserved names.
_UPSERT_SKIP = defaults.CONTACT_BODY_KEYS | defaults.RESERVED_NAMES
#: The same for an event's contact properties, which may carry the default contact properties
#: (https://loops.so/docs/api-reference/send-event).
_EVENT_SKIP = (defaults.CONTACT_BODY_KEYS - defaults.EVENT_CONTACT_FIELDS) | defaults.RESERVED_NAMES


def _key_text(value: Any) -> str | None:
    """An idempotency id as text (``42`` and ``"42"`` alike), or None when it is absent or blank."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, Mapping | list | tuple):
        return canonical_json(value)
    if isinstance(value, float | decimal.Decimal) and _finite(value) and value == int(value):
        value = int(value)
    text = str(value).strip()
    return text or None


def _finite(value: float | decimal.Decimal) -> bool:
    return value.is_finite() if isinstance(value, decimal.Decimal) else math.isfinite(value)


def _property_name(plan: _Plan, source: PropertySource, key: str, prefix: str) -> str | None:
    """The Loops name a source key is sent under, or None when it is not part of this property set."""
    if not prefix:
        if (
            key in plan.skip_top_level
            or defaults.is_system_column(key)
            or (plan.nested and key in defaults.NESTED_SYSTEM_KEYS)
            or (plan.skip_prefixes and key.startswith(plan.skip_prefixes))
        ):
            return None
    elif f"{prefix}{key}" in plan.used_paths:
        return None
    if (source.include is not None and key not in source.include) or key in source.exclude:
        return None
    return source.loops_name(key)


def _schema_looks_nested(props: Mapping[str, Any]) -> bool:
    """The SCHEMA counterpart of ``defaults.looks_nested``."""
    return "messageId" in props or any(
        "object" in _types(props.get(k)) for k in ("traits", "properties", "context") if k in props
    )


def _types(schema: Any) -> list[str]:
    kind = schema.get("type", []) if isinstance(schema, Mapping) else []
    return [kind] if isinstance(kind, str) else list(kind)


def _schema_at(props: Mapping[str, Any], path: str) -> Mapping[str, Any]:
    """The declared sub-properties at a dot path of a SCHEMA, or {} when the SCHEMA does not say."""
    node: Any = {"properties": props}
    for part in path.split("."):
        node = (node.get("properties") or {}).get(part) if isinstance(node, Mapping) else None
        if node is None:
            return {}
    return node.get("properties") or {} if isinstance(node, Mapping) else {}


# --- values


def _identifier(value: Any, what: str, reason: str) -> str | None:
    """A scalar identifier as text; an object, a list or a boolean is refused rather than sent as its Python repr
    or silently ignored (a boolean in an id column is a broken row, and it is counted as one)."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise _Reject(reason, f"the {what} is the boolean {json.dumps(value)}; it must be a string or a number")
    if isinstance(value, Mapping | list | tuple):
        kind = "an object" if isinstance(value, Mapping) else "a list"
        raise _Reject("nested_value", f"the {what} is {kind} ({value!r:.80}); it must be a single value")
    if isinstance(value, float | decimal.Decimal):
        if not _finite(value):
            raise _Reject("invalid_number", f"the {what} is {value}, which is not an id")
        if value == int(value):
            value = int(value)  # warehouse ids are often numbers: 42, never "42.0"
    text = str(value).strip()
    return text or None


def _clean_email(value: Any) -> str | None:
    return _identifier(value, "email", "invalid_email")


def _clean_user_id(value: Any) -> str | None:
    """Loops user ids are strings; warehouse ids are often integers."""
    return _identifier(value, "user id", "invalid_user_id")


def encoded_length(text: str) -> int:
    """The length Loops measures for a string value: JSON-encoded, quotes and escapes included, counted as
    JavaScript counts (UTF-16 code units: a character outside the Basic Multilingual Plane counts twice)."""
    encoded = json.dumps(text, ensure_ascii=False)
    return len(encoded) + sum(1 for ch in encoded if ord(ch) > 0xFFFF)


def _check_length(where: str, text: str) -> None:
    """Refuse a string Loops would refuse for its length (see ``MAX_ENCODED_STRING``), naming it and its length."""
    if len(text) > 82:  # 82 characters stay within the limit even if each needed a 6-character escape
        length = encoded_length(text)
        if length > MAX_ENCODED_STRING:
            raise _Reject(
                "string_too_long",
                f"{where!r} is {len(text)} characters long, {length} as JSON with its quotes and escapes; Loops allows "
                f"{MAX_ENCODED_STRING} including the quotes, i.e. {MAX_ENCODED_STRING - 2} characters of plain text",
            )


def _scalar(name: str, value: Any, where: str | None = None) -> Any:
    """A JSON scalar Loops accepts, or a rejection that names the property."""
    where = where or name
    if isinstance(value, str):
        _check_length(where, value)
        return value
    if isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise _Reject("invalid_number", f"property {where!r} is {value}, which JSON cannot carry")
        return value
    if isinstance(value, decimal.Decimal):
        if not value.is_finite():
            raise _Reject("invalid_number", f"property {where!r} is {value}, which JSON cannot carry")
        return json_number(value)
    if isinstance(value, dt.datetime):
        return iso_datetime(value)
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, Mapping | list | tuple):
        kind = "an object" if isinstance(value, Mapping) else "a list"
        raise _Reject(
            "nested_value",
            f"property {where!r} is {kind}; Loops properties are scalars. Add {where.split('.')[-1]!r} to the "
            f'rule\'s "exclude", or turn it into scalar columns with stream_maps',
        )
    return str(value)


_TRUE = {"true", "t", "yes", "y", "1"}
_FALSE = {"false", "f", "no", "n", "0"}


def _boolean(value: Any, where: str) -> bool:
    """JSON booleans as they are; 1/0 and "true"/"false" read as booleans; anything else rejects the record."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | decimal.Decimal) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise _Reject("invalid_boolean", f"{where} is {value!r}, not a boolean")


def _mailing_lists(value: Any, partial: list[tuple[str, str]]) -> dict[str, bool]:
    """``{listId: bool}`` with nulls left out (a NULL warehouse column says nothing about the list).

    A flag that is not a boolean drops that list only (appended to ``partial``), as Loops' own Segment destination
    drops just the bad entry: the contact and its other lists are still sent. Values must be booleans
    (https://loops.so/docs/api-reference/update-contact, ``mailingLists``).
    """
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _Reject("invalid_mailing_lists", f"mailing lists must be an object {{listId: true|false}}, got {value!r}")
    lists: dict[str, bool] = {}
    for key, flag in value.items():
        if flag is None:
            continue
        list_id = str(key)
        try:
            lists[list_id] = _boolean(flag, "flag")
        except _Reject:
            partial.append((PARTIAL_MAILING_LIST, partial_list_message(list_id, flag)))
    return lists


def partial_list_message(list_id: str, flag: Any) -> str:
    """The message of a dropped mailing list flag; ``partial_list_id`` reads the list id back from it."""
    shown = repr(flag) if not isinstance(flag, str) else json.dumps(flag, ensure_ascii=False)
    return (
        f"{_PARTIAL_LIST_PREFIX}{json.dumps(list_id, ensure_ascii=False)}: {shown:.80} is not true or false; "
        "this list was left out, the rest of the record was sent"
    )


def partial_list_id(message: str) -> str | None:
    """The list id of a ``partial`` entry's message (so the report can count dropped flags per list), or None."""
    if not message.startswith(_PARTIAL_LIST_PREFIX):
        return None
    try:
        list_id, _ = json.JSONDecoder().raw_decode(message, len(_PARTIAL_LIST_PREFIX))
    except ValueError:
        return None
    return list_id if isinstance(list_id, str) else None


def _sort_key(value: Any) -> str | None:
    """A comparable form of the record's timestamp (UTC ISO text), or None when it has none.

    A timestamp that has no UTC form (``0001-01-01T00:00:00+05:00`` is before year 1 in UTC) rejects the record.
    """
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        try:
            return value.astimezone(dt.timezone.utc).isoformat()
        except (OverflowError, ValueError):
            raise _Reject(
                "invalid_value", f"the timestamp {value.isoformat()} is outside the years 1-9999 once in UTC"
            ) from None
    if isinstance(value, str):
        try:
            parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        return _sort_key(parsed)
    return None
