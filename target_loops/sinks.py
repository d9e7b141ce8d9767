"""The sink: buffers one stream's records, coalesces them into the fewest requests, sends, records outcomes.

Records are mapped as they arrive (``process_record``), so a batch holds small operations; at drain time upserts of
one contact are merged into one request, events keep one request each (never merged, duplicates by idempotency key
dropped), and every outcome lands in the counters or, for a refusal, the rejects file.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import pendulum
from singer_sdk.exceptions import InvalidRecord
from singer_sdk.sinks import BatchSink
from singer_sdk.sinks.core import BaseJSONSchemaValidator

from target_loops.client import LoopsUnavailableError
from target_loops.coercion import CoercionError
from target_loops.ledger import ContactRow, ContactState, fingerprint, value_hashes
from target_loops.operations import Action, LoopsRequest, Operation, Outcome, OutcomeKind, Rejection
from target_loops.preflight import loops_type
from target_loops.rules import StreamMapper
from target_loops.validation import compiled_validator

if TYPE_CHECKING:
    from target_loops.target import TargetLoops


#: A request and the records it carries (several when coalesced or replayed).
Planned = tuple[LoopsRequest, list[Operation]]


def coalesce_upserts(ops: Sequence[Operation]) -> list[Planned]:
    """One request per contact: later records override earlier keys, nothing else an earlier record set is lost.

    "Later" is by the record's timestamp when every record of the contact has one, else by input order.
    ``mailingLists`` are merged list by list rather than replaced.
    """
    groups: dict[str, list[Operation]] = {}
    for op in ops:
        groups.setdefault(op.contact_key, []).append(op)
    merged: list[tuple[LoopsRequest, list[Operation]]] = []
    for members in groups.values():
        if len(members) == 1:
            merged.append((members[0].request, members))
            continue
        if all(m.sort_key is not None for m in members):
            members.sort(key=lambda m: m.sort_key)  # type: ignore[arg-type, return-value]  # stable: ties keep order
        body: dict[str, Any] = {}
        for member in members:
            for key, value in member.request.body.items():
                if key == "mailingLists":
                    body["mailingLists"] = {**body.get("mailingLists", {}), **value}
                else:
                    body[key] = value
        first = members[0].request
        merged.append((LoopsRequest(first.method, first.path, body, first.idempotency_key), members))
    return merged


def dedupe_events(ops: Sequence[Operation]) -> tuple[list[tuple[LoopsRequest, list[Operation]]], int]:
    """One request per event; a second record with the same idempotency key rides on the first (a replayed row)."""
    by_key: dict[str | None, tuple[LoopsRequest, list[Operation]]] = {}
    plain: list[tuple[LoopsRequest, list[Operation]]] = []
    duplicates = 0
    for op in ops:
        key = op.request.idempotency_key
        if key is None:
            plain.append((op.request, [op]))
        elif key in by_key:
            by_key[key][1].append(op)
            duplicates += 1
        else:
            by_key[key] = (op.request, [op])
    return list(by_key.values()) + plain, duplicates


class LoopsSink(BatchSink):
    """One stream, one rule. The target owns the client, the rejects file and the counters."""

    MAX_SIZE_DEFAULT = 500

    def __init__(
        self, target: TargetLoops, stream_name: str, schema: dict, key_properties: Sequence[str] | None
    ) -> None:
        super().__init__(target, stream_name, schema, key_properties)
        self.loops: TargetLoops = target
        rule = target.rule_for_stream(stream_name, schema)
        self.action: Action | None = rule.action if rule is not None else None
        self.mapper = StreamMapper(rule, stream_name, tuple(key_properties or ())) if rule is not None else None
        self.stats = target.stats.for_stream(stream_name, self.action.value if self.action else None)
        if self.mapper is not None and self.action is not Action.DELETE_CONTACT:
            declared, list_ids = self.mapper.declared_properties(schema)
            target.preflight.check_stream(stream_name, {k: loops_type(v) for k, v in declared.items()}, list_ids)
        self._warned_keys: set[str] = set()
        self._invalid: str | None = None
        self._datetime_keys: tuple[str, ...] | None = None
        self._known: dict[str, ContactState] = {}  # the ledger's view of this batch's contacts
        self._held: list[Operation] = []  # upserts and events waiting for the window to close
        self._advanced: list[ContactRow] = []
        self.in_batch = False

    def get_validator(self) -> BaseJSONSchemaValidator | None:
        """A validator compiled once for the stream (``validate_records: false`` turns validation off)."""
        return compiled_validator(self.schema, self.stream_name) if self.validate_schema else None

    def _parse_timestamps_in_record(self, record: dict, schema: dict, treatment: Any) -> None:
        """Top-level ``date-time`` strings → ``datetime`` (as the SDK does), with the keys found once per stream.

        An unparseable value raises ``ValueError``, which rejects the record (``schema_invalid``).
        """
        keys = self._datetime_keys
        if keys is None:
            keys = self._datetime_keys = tuple(
                key for key, sub in (schema.get("properties") or {}).items()
                if isinstance(sub, dict) and sub.get("format") == "date-time"
            )  # fmt: skip
        for key in keys:
            value = record.get(key)
            if isinstance(value, str):
                record[key] = parse_datetime(key, value)

    def _validate_and_parse(self, record: dict) -> dict:
        """Validate against the stream's SCHEMA; a record that fails is rejected (with the reason), not fatal.

        The SDK either stops the whole run on one invalid record or logs it and passes it on unmarked; neither
        says "this record, this reason" in the rejects file. Unparseable date-times are treated the same way.
        """
        self._invalid = None
        try:
            if self._validator is not None:
                self._validator.validate(record)
            self._parse_timestamps_in_record(record=record, schema=self.schema, treatment=self.datetime_error_treatment)
        except (InvalidRecord, ValueError) as exc:
            self._invalid = str(exc).split("\n", 1)[0]
        return record

    def process_record(self, record: dict, context: dict) -> None:
        """Map the record now, keeping only the operation (or the rejection) until the drain."""
        self.stats.read += 1
        if self.mapper is None:
            self.stats.skipped += 1
            return
        if self._invalid is not None:
            message = f"the record does not match the stream's SCHEMA: {self._invalid}"
            context.setdefault("results", []).append(Rejection("schema_invalid", message, record))
            self._invalid = None
            return
        result = self.mapper.map(record)
        if isinstance(result, Operation) and result.skipped_keys:
            self._warn_skipped(result.skipped_keys)
        context.setdefault("results", []).append(result)

    def process_batch(self, context: dict) -> None:
        """Send the batch; raise (failing the run, with no STATE) if anything transient was not delivered.

        Upserts and events are held instead until a checkpoint or ``coalesce_rows`` held records; then every
        stream's upserts (merged per contact) go first and the events after them: a contact whose rows are spread
        over many batches gets one request, and an event finds the contact it is for.
        """
        results: list[Operation | Rejection] = context.get("results", [])
        if not results:
            return
        with self._sending():
            ops = self._admit(results)
            if self.action is Action.DELETE_CONTACT:
                self._send(ops)
                return
            self._held.extend(ops)
            if self.loops.flushing or len(self._held) >= self.loops.coalesce_rows:
                self._send_held()

    def flush(self) -> None:
        """Send what is held across batches (at a checkpoint, before events, at the end)."""
        if self._held:
            with self._sending():
                self._send_held()

    # --- internals

    @contextlib.contextmanager
    def _sending(self) -> Iterator[None]:
        if self.in_batch:
            # A termination signal re-entered the drain (a known SDK behaviour): never send a batch twice at once.
            raise LoopsUnavailableError(f"stream {self.stream_name}: drain interrupted; stopping without a checkpoint")
        self.in_batch = True
        started = time.monotonic()
        try:
            yield
        finally:
            self.stats.elapsed += time.monotonic() - started
            self.in_batch = False

    def _send_held(self) -> None:
        if self.action is Action.SEND_EVENT:
            self.loops.drain_contact_sinks()  # the contacts these events are for must exist first
        held, self._held = self._held, []
        self._send(held)

    def _admit(self, results: list[Operation | Rejection]) -> list[Operation]:
        """Reject what cannot be sent (local rejections, stale events, values that fit no type); keep the rest."""
        ops: list[Operation] = []
        cutoff = self.loops.event_cutoff()
        for result in results:
            if isinstance(result, Rejection):
                self._reject(result.record, result.reason, result.message, result.request)
            elif cutoff is not None and _older_than(result.sort_key, cutoff):
                self._reject(
                    result.record,
                    "stale",
                    f"event at {result.sort_key} is older than max_event_age_hours; not sent so that no workflow "
                    "fires late",
                    result.request,
                )
            else:
                try:
                    self.loops.preflight.enforce(result.request.body, self.stream_name)
                except CoercionError as exc:
                    self._reject(result.record, "invalid_value", str(exc), result.request)
                    continue
                self.stats.resubscribe_blocked += result.resubscribe_blocked
                ops.append(result)
        return ops

    def _send(self, ops: list[Operation]) -> None:
        if not ops:
            return
        if self.action is Action.UPSERT_CONTACT:
            planned = coalesce_upserts(ops)
            merged = len(ops) - len(planned)
            self.stats.coalesced += merged
            if merged:
                self.tally_duplicate_merged(merged)
        elif self.action is Action.SEND_EVENT:
            planned, duplicates = dedupe_events(ops)
            self.stats.duplicates += duplicates
        else:
            planned = [(op.request, [op]) for op in ops]
        planned = self._skip_known(planned)

        step = self.loops.chunk_size
        progress = self.loops.progress
        progress.begin_batch(len(planned))
        done = 0
        try:
            for start in range(0, len(planned), step):
                chunk = planned[start : start + step]
                outcomes = self.loops.send([request for request, _ in chunk])
                done += len(outcomes)
                self._settle(chunk, outcomes)
        finally:
            progress.end_batch(len(planned), done if not self.loops.dry_run else 0)

    def _skip_known(self, planned: list[Planned]) -> list[Planned]:
        """Leave out what the ledger says Loops already has: unchanged contacts, delivered events."""
        ledger, team = self.loops.ledger, self.loops.team
        if ledger is None or team is None:
            return planned
        if self.action is Action.UPSERT_CONTACT:
            self._known = ledger.contact_states(team, self.stream_name, [m[0].contact_key for _, m in planned])
            self._advanced = []
            kept = [item for item in map(self._unknown_part, planned) if item is not None]
            # Unchanged but newer: Loops holds these values as of a later record now; a replay of the rows in
            # between must count as older.
            ledger.record_contacts(team, self.stream_name, self._advanced)
            self.stats.unchanged += len(planned) - len(kept)  # records merged into them count as coalesced
            return kept
        if self.action is Action.SEND_EVENT:
            keys = [request.idempotency_key for request, _ in planned if request.idempotency_key]
            known = ledger.delivered_events(team, keys)
            if not known:
                return planned
            kept = [(r, m) for r, m in planned if r.idempotency_key not in known]
            self.stats.duplicates += len(planned) - len(kept)  # in-batch replays were counted by dedupe_events
            return kept
        return planned

    def _unknown_part(self, item: Planned) -> Planned | None:
        """The part of an upsert Loops does not have yet, or None when it has all of it.

        A payload whose every property matches what Loops last accepted is unchanged. A payload older (by record
        timestamp) than what Loops already has from this stream, as a replay after a crash is, may only add
        properties Loops lacks: it never takes a newer value back.
        """
        request, members = item
        known = self._known.get(members[0].contact_key)
        if known is None or not self.loops.skip_unchanged:
            return item
        latest = _latest(members)
        if latest is not None and known.seen_at is not None and latest < known.seen_at:
            body = _missing_from(request.body, known.hashes)
            if set(body) <= IDENTITY_KEYS:
                return None
            return LoopsRequest(request.method, request.path, body, request.idempotency_key), members
        if known.fingerprint != fingerprint(request.body):
            hashes = value_hashes(request.body)
            if any(known.hashes.get(key) != value for key, value in hashes.items()):
                return item
        if latest is not None and (known.seen_at is None or latest > known.seen_at):
            row = (members[0].contact_key, request.body.get("email"), known.raw, latest, known.fingerprint)
            self._advanced.append(row)
        return None

    def _settle(self, chunk: list[Planned], outcomes: list[Outcome]) -> None:
        """Count, reject, and write the ledger for one chunk; raise if anything could not be delivered."""
        failures: list[str] = []
        accepted: list[tuple[LoopsRequest, list[Operation]]] = []
        for (request, members), outcome in zip(chunk, outcomes, strict=True):
            self.stats.add_outcome(outcome)
            if outcome.done:
                accepted.append((request, members))
            elif outcome.kind is OutcomeKind.REJECTED:
                for op in members:
                    self._reject(op.record, _reason(outcome), outcome.message, request, outcome.status)
            elif outcome.kind in (OutcomeKind.FAILED, OutcomeKind.ABORTED):
                failures.append(f"{request.method} {request.path}: {outcome.message}")
        self._remember(accepted)
        if failures:
            raise LoopsUnavailableError(
                f"stream {self.stream_name}: {len(failures)} request(s) could not be delivered "
                f"(first: {failures[0]}). No STATE was emitted for them; re-run to replay from the last state."
            )

    def _remember(self, accepted: list[Planned]) -> None:
        """Write what Loops accepted to the ledger (never anything it did not)."""
        ledger, team = self.loops.ledger, self.loops.team
        if ledger is None or team is None or not accepted:
            return
        if self.action is Action.UPSERT_CONTACT:
            rows: list[ContactRow] = []
            for request, members in accepted:
                identity = members[0].contact_key
                known = self._known.get(identity)
                state = {**(known.hashes if known else {}), **value_hashes(request.body)}
                newest = max(filter(None, (known.seen_at if known else None, _latest(members))), default=None)
                rows.append((identity, request.body.get("email"), state, newest, fingerprint(request.body)))
            ledger.record_contacts(team, self.stream_name, rows)
        elif self.action is Action.SEND_EVENT:
            ledger.record_events(team, [r.idempotency_key for r, _ in accepted if r.idempotency_key])
        else:
            ledger.forget_contacts(
                team,
                [m[0].contact_key for _, m in accepted],
                [r.body["email"] for r, _ in accepted if "email" in r.body],
            )

    def _reject(
        self,
        record: dict[str, Any],
        reason: str,
        message: str | None,
        request: LoopsRequest | None = None,
        status: int | None = None,
    ) -> None:
        self.stats.rejected += 1
        self.stats.reasons[reason] += 1
        self.loops.rejects.write(
            stream=self.stream_name, record=record, reason=reason, message=message, request=request, status=status
        )

    def _warn_skipped(self, keys: Sequence[str]) -> None:
        self.stats.reserved_skipped.update(keys)
        new = [k for k in keys if k not in self._warned_keys]
        if new:
            self._warned_keys.update(new)
            self.logger.warning(
                "Stream %s: %s are reserved Loops names and are not sent as properties; "
                'use the rule\'s "rename" to send them under another name',
                self.stream_name,
                sorted(new),
            )


#: Keys that address the contact: always sent, never what makes a payload "new".
IDENTITY_KEYS = frozenset({"email", "userId"})


def _latest(members: Sequence[Operation]) -> str | None:
    """The latest record timestamp of a request's records, or None unless every record has one."""
    keys = [m.sort_key for m in members]
    return max(keys) if all(k is not None for k in keys) else None  # type: ignore[type-var]


def _missing_from(body: dict[str, Any], state: dict[str, str]) -> dict[str, Any]:
    """The identity keys plus every property (and mailing list) of ``body`` that ``state`` does not hold."""
    kept = {k: v for k, v in body.items() if k in IDENTITY_KEYS or (k not in state and k != "mailingLists")}
    lists = {k: v for k, v in (body.get("mailingLists") or {}).items() if f"mailingLists.{k}" not in state}
    if lists:
        kept["mailingLists"] = lists
    return kept


def parse_datetime(key: str, value: str) -> dt.datetime:
    """ISO-8601 text → an aware ``datetime`` (no offset means UTC); ``ValueError`` names the field."""
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00") if value.endswith("Z") else value)
    except ValueError:
        try:
            parsed = pendulum.parse(value, strict=False)
        except Exception as exc:  # pendulum raises its own ParserError and others
            raise ValueError(f"{key}: {value!r} is not an ISO-8601 date-time") from exc
        if not isinstance(parsed, dt.datetime):
            raise ValueError(f"{key}: {value!r} is not an ISO-8601 date-time") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)


def _older_than(sort_key: str | None, cutoff: dt.datetime) -> bool:
    """True when the record's timestamp is known and before ``cutoff``."""
    return sort_key is not None and dt.datetime.fromisoformat(sort_key) < cutoff


def _reason(outcome: Outcome) -> str:
    """The rejects file's reason code for a refusal by Loops."""
    return f"http_{outcome.status}" if outcome.status else "refused"
