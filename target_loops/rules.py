"""Applying a rule: how one record becomes one Loops request.

A rule (parsed and validated once at start by ``fields.py``) is compiled once per stream and shape into a plan, then
applied to each record to give an ``Operation``, a ``Rejection`` or a ``Skipped``. No I/O. Each call builds a new
request body for its record; the caller owns it from then on (preflight fits it to the team in place before it is
sent). The values themselves (identifiers, scalars, booleans, dates, lengths) are read by ``values.py``.

The rule table and rule parsing live in ``fields.py``; the names other modules import from here are re-exported
(``__all__``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from target_loops import defaults
from target_loops.defaults import FLAT, NESTED
from target_loops.fields import (
    CONTACT_BODY_KEYS,
    CONTACT_KINDS,
    EVENT_CONTACT_FIELDS,
    FieldSpec,
    Kind,
    Rule,
    RuleError,
    RuleField,
    fields_of,
    match_rule,
    parse_rules,
    resolve_path,
    suggest_rule,
)
from target_loops.operations import Action, LoopsRequest, Operation, OutcomeKind, Rejection, Skipped
from target_loops.serialization import json_number, stable_hash
from target_loops.values import (
    EMAIL_RE,
    ValueRejected,
    camel_case,
    check_length,
    identifier,
    key_text,
    mailing_lists,
    read_boolean,
    scalar,
    sort_key,
)

#: What other modules import from here. ``Rule``, ``RuleError``, ``match_rule``, ``parse_rules`` and
#: ``suggest_rule`` live in ``fields.py`` now and are re-exported so that those imports keep working.
__all__ = [
    "DELETE_PATH",
    "EVENT_PATH",
    "MAX_IDEMPOTENCY_KEY",
    "UPSERT_PATH",
    "PropertySource",
    "Rule",
    "RuleError",
    "StreamMapper",
    "match_rule",
    "parse_rules",
    "suggest_rule",
]

#: An ``Idempotency-Key`` has at most 100 characters (https://loops.so/docs/api-reference/send-event).
MAX_IDEMPOTENCY_KEY = 100
#: A header value must be visible ASCII to reach Loops as written: requests refuses a newline (header injection) and
#: encodes non-ASCII text as Latin-1 or not at all (https://www.rfc-editor.org/rfc/rfc9110#section-5.5).
_SAFE_KEY = re.compile(r"^[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?$")

UPSERT_PATH = "/v1/contacts/update"
EVENT_PATH = "/v1/events/send"
DELETE_PATH = "/v1/contacts/delete"
#: A 409 on events/send: Loops already accepted this Idempotency-Key (https://loops.so/docs/api-reference/send-event).
EVENT_ALSO_DONE = ((409, OutcomeKind.DUPLICATE),)
#: A 404 on contacts/delete: no such contact, nothing left to delete (https://loops.so/docs/api-reference/delete-contact).
DELETE_ALSO_DONE = ((404, OutcomeKind.ALREADY_DONE),)


# --- property sets


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


# --- compiled plans


@dataclass(slots=True)
class _Plan:
    """A rule resolved against one shape: every field spec and property source, ready to apply."""

    fields: dict[str, tuple[str, FieldSpec]]  # field name → (Loops key, spec): identity, contact and event fields
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
    #: The contact fields, lists and subscription of an upsert as (kind, Loops key, spec): what it reads besides who
    #: it is for.
    contact_fields: tuple[tuple[Kind, str, FieldSpec], ...] = ()
    #: An event rule's email when the record has no user id and no other (``defaults.EVENT_EMAIL_WITHOUT_USER_ID``).
    email_fallback: FieldSpec | None = None


@dataclass
class StreamMapper:
    """A rule bound to one stream: turns each record into an ``Operation`` or a ``Rejection``."""

    rule: Rule
    stream_name: str
    key_properties: tuple[str, ...] = ()
    _plans: dict[str, _Plan] = field(default_factory=dict)
    _routes: dict[str, StreamMapper] = field(default_factory=dict)
    #: The Segment call types this rule's action refuses (``defaults.WRONG_CALLS``), looked up once.
    _wrong_calls: frozenset[str] = field(default=frozenset(), init=False, repr=False)

    def __post_init__(self) -> None:
        self._wrong_calls = frozenset(defaults.WRONG_CALLS.get(self.rule.action.value, ()))

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
        if type(call) is str and call in self._wrong_calls:
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
        except ValueRejected as exc:
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
                self.rule.narrowed(Action.UPSERT_CONTACT if call == "identify" else Action.SEND_EVENT),
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
        """The rule resolved against ``shape``: each key of the field table the rule does not map takes its default."""
        rule, opts = self.rule, self.rule.options
        fields: dict[str, tuple[str, FieldSpec]] = {}
        idem: FieldSpec | None = None
        order_by: FieldSpec | None = None
        for row in fields_of(rule.action, Kind.IDENTITY, *CONTACT_KINDS, Kind.EVENT, Kind.IDEMPOTENCY, Kind.ORDER):
            spec = rule.fields.get(row.name) or row.default_spec(shape)
            if spec is None:
                continue
            if row.kind is Kind.IDEMPOTENCY:
                idem = spec
            elif row.kind is Kind.ORDER:
                order_by = spec
            else:
                fields[row.name] = (row.loops_key or row.name, spec)
        assert order_by is not None, "order_by has a default for every shape"

        def source(row: RuleField | None) -> PropertySource | None:
            path = None if row is None else opts.get(row.name) or row.default(shape)
            if path is None:
                return None
            return PropertySource(
                path=path,
                include=opts.get("include"),
                exclude=opts.get("exclude", frozenset()),
                rename=opts.get("rename", {}),
                camel_case=opts.get("camel_case", path == "*"),
            )

        sets = {row.name: row for row in fields_of(rule.action, Kind.PROPERTIES)}
        fallback = None
        if (
            rule.action is Action.SEND_EVENT
            and "email" not in rule.fields
            and shape in defaults.EVENT_EMAIL_WITHOUT_USER_ID
        ):
            fallback = FieldSpec(paths=(defaults.EVENT_EMAIL_WITHOUT_USER_ID[shape],))
        # order_by too: the column that orders updates is bookkeeping, not a property; and the fallback email, which
        # is never sent as an event property either (as when it was read first).
        specs = [spec for _, spec in fields.values()] + [s for s in (idem, order_by, fallback) if s is not None]
        contact_kinds = {row.name: row.kind for row in fields_of(rule.action, *CONTACT_KINDS)}
        plan = _Plan(
            fields=fields,
            properties=source(sets.get("properties")),
            event_properties=source(sets.get("event_properties")),
            idempotency_key=idem,
            order_by=order_by,
            skip_top_level=frozenset(k for spec in specs for k in spec.top_level_keys()),
            skip_prefixes=tuple(spec.prefix for spec in specs if spec.prefix is not None),
            used_paths=frozenset(p for spec in specs for p in spec.paths),
            nested=shape == NESTED,
            contact_fields=tuple((contact_kinds[n], k, spec) for n, (k, spec) in fields.items() if n in contact_kinds),
            email_fallback=fallback,
        )
        self._plans[shape] = plan
        return plan

    # ----- actions

    def _identity(self, plan: _Plan, record: dict[str, Any], body: dict[str, Any]) -> str:
        email = plan.fields["email"][1].get(record)
        email = (email.strip() or None) if type(email) is str else identifier(email, "email", "invalid_email")
        user_id = plan.fields["user_id"][1].get(record)
        if type(user_id) is not str:
            user_id = identifier(user_id, "user id", "invalid_user_id")
        else:
            user_id = user_id.strip() or None
        if email is None and user_id is None and plan.email_fallback is not None:
            email = identifier(plan.email_fallback.get(record), "email", "invalid_email")
        if email is None and user_id is None:
            where = plan.fields["email"][1].describe()
            if plan.email_fallback is not None:
                where += f" or {plan.email_fallback.describe()}"
            raise ValueRejected(
                "no_identifier",
                f"no email and no user id: looked for the email in {where} and the "
                f'user id in {plan.fields["user_id"][1].describe()}; map "email" or "user_id" in the rule',
            )
        if email is not None:
            if not EMAIL_RE.match(email):
                raise ValueRejected("invalid_email", f"{email!r} is not an email address")
            if len(email) > 82:
                check_length("email", email)
            body["email"] = email
        if user_id is not None:
            if len(user_id) > 82:
                check_length("userId", user_id)
            body["userId"] = user_id
        return f"u:{user_id}" if user_id is not None else f"e:{email.lower()}"  # type: ignore[union-attr]

    def _upsert(self, plan: _Plan, record: dict[str, Any]) -> Operation:
        send_nulls = self.rule.options.get("send_nulls", False)
        resubscribe_blocked = False
        body: dict[str, Any] = {}
        skipped: list[str] = []
        partial: list[tuple[str, str]] = []
        if plan.properties is not None:
            self._spread(
                plan, plan.properties, record, body, skipped, partial, send_nulls=send_nulls, skip=_UPSERT_SKIP
            )
        contact_key = self._identity(plan, record, body)
        for kind, loops_key, spec in plan.contact_fields:
            value = spec.get(record)
            if kind is Kind.LISTS:
                lists = mailing_lists(value, partial)
                if lists:
                    body[loops_key] = lists
            elif kind is Kind.SUBSCRIPTION:
                if value is not None:
                    subscribed = read_boolean(value)
                    if subscribed is None:
                        raise ValueRejected("invalid_boolean", f"subscribed is {value!r}, not a boolean")
                    if subscribed and not self.rule.options.get("allow_resubscribe", False):
                        # Loops would re-subscribe someone who opted out (https://loops.so/docs/api-reference/update-contact,
                        # "subscribed"): only an explicit opt-in may send true.
                        resubscribe_blocked = True
                    else:
                        body["subscribed"] = subscribed
            elif value is not None:
                body[loops_key] = scalar(value, loops_key)
            elif send_nulls and spec.holds_null(record):
                body[loops_key] = None
        request = LoopsRequest("PUT", UPSERT_PATH, body)
        return _operation(
            plan, record, request, contact_key, body, skipped, partial, resubscribe_blocked=resubscribe_blocked
        )

    def _event(self, plan: _Plan, record: dict[str, Any]) -> Operation:
        body: dict[str, Any] = {}
        skipped: list[str] = []
        partial: list[tuple[str, str]] = []
        # eventName is required (https://loops.so/docs/api-reference/send-event).
        name = identifier(plan.fields["event_name"][1].get(record), "event name", "invalid_event_name")
        if name is None:
            raise ValueRejected("no_event_name", f"no event name in {plan.fields['event_name'][1].describe()}")
        if ":" in name:
            # "Custom event names can not contain colon characters (:)" (https://loops.so/docs/events, "Creating
            # events"): refused here, never sent.
            raise ValueRejected(
                "invalid_event_name",
                f"event name {name!r} contains ':', which Loops does not allow in event names "
                "(https://loops.so/docs/events); rename the event at the source or with stream_maps",
            )
        check_length("eventName", name)
        if plan.properties is not None:
            send_nulls = self.rule.options.get("send_nulls", False)
            self._spread(plan, plan.properties, record, body, skipped, partial, send_nulls=send_nulls, skip=_EVENT_SKIP)
        contact_key = self._identity(plan, record, body)
        body["eventName"] = name
        if plan.event_properties is not None:
            event_props: dict[str, Any] = {}
            self._spread(
                plan, plan.event_properties, record, event_props, skipped, partial, send_nulls=False, skip=None
            )
            if event_props:
                body["eventProperties"] = event_props
        if "mailing_lists" in plan.fields:
            lists = mailing_lists(plan.fields["mailing_lists"][1].get(record), partial)
            if lists:
                body["mailingLists"] = lists
        id_value = plan.idempotency_key.get(record) if plan.idempotency_key is not None else None
        key = self._idempotency_key(record, name, id_value)
        request = LoopsRequest("POST", EVENT_PATH, body, key, EVENT_ALSO_DONE)
        legacy_key = _legacy_key(id_value, key)
        return _operation(plan, record, request, contact_key, body, skipped, partial, legacy_key=legacy_key)

    def _delete(self, plan: _Plan, record: dict[str, Any]) -> Operation:
        found: dict[str, Any] = {}
        contact_key = self._identity(plan, record, found)
        body = {"userId": found["userId"]} if "userId" in found else {"email": found["email"]}
        request = LoopsRequest("POST", DELETE_PATH, body, also_done=DELETE_ALSO_DONE)
        return _operation(plan, record, request, contact_key, found, (), ())

    # ----- pieces

    def _spread(
        self,
        plan: _Plan,
        source: PropertySource,
        record: dict[str, Any],
        out: dict[str, Any],
        skipped: list[str],
        partial: list[tuple[str, str]],
        *,
        send_nulls: bool,
        skip: frozenset[str] | None,
    ) -> None:
        """Copy a property set into ``out`` under Loops names, refusing long strings and leaving nested values out.

        ``skip``: Loops names left out (and listed in ``skipped``) because the request sets them another way or
        Loops reserves them; None for event properties, where any name is the event's own.

        A property that is an object or a list (Segment's standard ``address`` and ``company`` traits, the
        ``products`` of "Order Completed") cannot be a Loops property value: it is left out and reported as a
        partial rejection (``nested_value``, appended to ``partial``) while the rest of the record is sent, so one
        such property never costs a contact or an event.
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
                raise ValueRejected(
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
            kind = type(value)
            if kind is str:
                if not value or (value[0].isspace() and not value.strip()):
                    continue  # an empty cell is not a value, and never a clear (see ``values.is_blank``)
                if len(value) > 82:  # as in ``check_length``: shorter text is always within Loops' limit
                    check_length(f"{prefix}{key}", value)
                out[name] = value
                continue
            if kind is int or kind is bool:
                out[name] = value
                continue
            if kind is Decimal and value.is_finite():  # the reader's numbers with a fraction (as ``scalar``)
                out[name] = json_number(value)
                continue
            if value is None:
                if send_nulls:
                    out[name] = None
                continue
            if isinstance(value, Mapping | list | tuple):
                try:
                    scalar(value, f"{prefix}{key}")
                except ValueRejected as exc:
                    partial.append((exc.reason, f"left out, the rest of the record was sent: {exc.message}"))
                continue
            out[name] = scalar(value, f"{prefix}{key}")

    def declared_properties(self, schema: Mapping[str, Any]) -> tuple[dict[str, Mapping[str, Any]], set[str]]:
        """What the rule will send for a stream with this SCHEMA: contact property names (→ their JSON schema)
        and mailing list ids, so that preflight can check them before the first record is sent.

        Properties under an object the SCHEMA does not describe (a bare ``traits`` object) are only known from
        the data; they are checked when their batch is sent.
        """
        if self.rule.action is Action.SKIP:
            return {}, set()
        if self.rule.action is Action.SEGMENT:
            identify = StreamMapper(self.rule.narrowed(Action.UPSERT_CONTACT), self.stream_name, self.key_properties)
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

    def _idempotency_key(self, record: dict[str, Any], event_name: str, value: Any) -> str:
        """The event's Idempotency-Key: at most 100 visible ASCII characters, the same for every copy of one event.

        - A key the rule maps (``idempotency_key``) is sent as given when it is a safe header value of at most 100
          characters, else as a hash of it.
        - By default (Segment's ``messageId``, a warehouse row's ``id``) the key is a hash of the event name and that
          id: an id is unique per table, not per team, so ``orders`` 1 and ``refunds`` 1 must not share a key, while
          Segment's ``tracks`` row and the per-event table row of one event (same name, same id) still do.
        - Without an id: a hash of the stream and its key properties, else of the whole record.
        """
        text = key_text(value)
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
_UPSERT_SKIP = CONTACT_BODY_KEYS | defaults.RESERVED_NAMES
#: The same for an event's contact properties, which may carry the default contact properties
#: (https://loops.so/docs/api-reference/send-event).
_EVENT_SKIP = (CONTACT_BODY_KEYS - EVENT_CONTACT_FIELDS) | defaults.RESERVED_NAMES


_ACTIONS = {UPSERT_PATH: Action.UPSERT_CONTACT, EVENT_PATH: Action.SEND_EVENT, DELETE_PATH: Action.DELETE_CONTACT}


def _operation(
    plan: _Plan,
    record: dict[str, Any],
    request: LoopsRequest,
    contact_key: str,
    who: Mapping[str, Any],
    skipped: Iterable[str],
    partial: Iterable[tuple[str, str]],
    **extra: Any,
) -> Operation:
    """A mapped record: its request, who it is for (``who``: the identities found, as sent) and its time."""
    operation = Operation(
        _ACTIONS[request.path],
        request,
        record,
        contact_key,
        sort_key(plan.order_by.get(record)),
        tuple(skipped) if skipped else (),
        False,
        who.get("email"),
        who.get("userId"),
        tuple(partial) if partial else (),
    )
    for name, value in extra.items():
        setattr(operation, name, value)
    return operation


def _legacy_key(value: Any, key: str) -> str | None:
    """The key target-loops 0.1 sent for this event, when it is not ``key``: a ledger written by 0.1 holds
    only that text (hashed at the upgrade), so an event 0.1 delivered is known after the upgrade too.

    0.1 took the id, mapped or default, as Python's own text of the value the reader and sink handed over,
    stripped (``str(value).strip()``), and hashed it only when over 100 characters. That text is rebuilt here
    as 0.1 wrote it, not as 0.2 reads ids: a number with a fraction stays as written (the reader gives a
    ``Decimal``: ``1234.00``, ``1.5E+3``, ``-0.0``, where ``key_text`` gives ``1234``), a boolean is ``True``,
    an object is its Python repr, and a mapped key outside visible ASCII is kept (0.2 hashes it). Without an id
    0.1 hashed the stream and key properties or the record, as 0.2 does, so no legacy key is needed there (as
    long as the record reaches the rule as it reached 0.1's). Tested against a ledger written by 0.1.0's own
    code (tests/fixtures/ledger_0_1).
    """
    text = str(value).strip() if value is not None else ""
    if not text:
        return None
    legacy = text if len(text) <= MAX_IDEMPOTENCY_KEY else "tl-" + stable_hash(text)[:64]
    return legacy if legacy != key else None


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
