"""The sink: one stream, one rule. It maps records to operations and hands them to the run's outbox.

Records are mapped as they arrive (``process_record``), so a batch holds small operations; at drain time the batch's
local refusals (rule rejections, stale events, values that fit no property type) go to the rejects file and the rest
to the outbox (``process_batch``), which orders, coalesces, sends and settles them for the whole run. The sink works
through one collaborator, ``SinkServices``, and never calls back into the target.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from singer_sdk.exceptions import InvalidRecord
from singer_sdk.sinks import BatchSink
from singer_sdk.sinks.core import BaseJSONSchemaValidator

from target_loops import defaults, limits
from target_loops.audience import Audiences, AudienceSpec
from target_loops.coercion import CoercionError
from target_loops.operations import Action, LoopsRequest, Operation, Rejection, Skipped
from target_loops.outbox import Outbox
from target_loops.preflight import Preflight, loops_type
from target_loops.rejects import RejectsWriter
from target_loops.report import RunStats
from target_loops.rules import Rule, StreamMapper
from target_loops.validation import compiled_validator
from target_loops.values import parse_datetime


@dataclass
class SinkServices:
    """What every sink of a run shares, built once by the target (the sinks' one collaborator)."""

    rule_for_stream: Callable[[str, dict], Rule | None]
    preflight: Preflight
    rejects: RejectsWriter
    stats: RunStats
    event_cutoff: Callable[[], dt.datetime | None]
    outbox: Outbox | None = None  # set when the run starts (after the key check), before any sink exists
    #: Where the record being processed was read ("input line 12", "batch file ... row 3"), for reject messages.
    position: Callable[[], str] | None = None
    #: The run's audiences (rules with ``on_leave``/``on_join``), set when the run starts; and the ``version`` of the
    #: RECORD message being processed (an ``ACTIVATE_VERSION`` stream's rows carry one).
    audiences: Audiences | None = None
    record_version: Callable[[], Any] | None = None


class LoopsSink(BatchSink):
    """One stream, one rule: map each record, refuse what cannot be sent, hand the rest to the outbox."""

    MAX_SIZE_DEFAULT = 500

    def __init__(self, target: Any, stream_name: str, schema: dict, key_properties: Sequence[str] | None) -> None:
        super().__init__(target, stream_name, schema, key_properties)
        self.services: SinkServices = target.services
        rule = self.services.rule_for_stream(stream_name, schema)
        self.action: Action | None = rule.action if rule is not None else None
        self.mapper = StreamMapper(rule, stream_name, tuple(key_properties or ())) if rule is not None else None
        self.stats = self.services.stats.for_stream(stream_name, self.action.value if self.action else None)
        self._warned_keys: set[str] = set()
        #: Why the record being processed is rejected before mapping, as (reason, message), else None.
        self._invalid: tuple[str, str] | None = None
        self._datetime_keys: tuple[str, ...] | None = None
        self._debug = self.logger.isEnabledFor(logging.DEBUG)
        audience = AudienceSpec.of(rule)
        self.audiences = self.services.audiences if audience is not None else None
        if self.audiences is not None and audience is not None:
            self.audiences.register(stream_name, audience)
            self.stats.audience = True

    def setup(self) -> None:
        """Check the contact properties and lists the stream's rule can produce against the team, before any of its
        records is sent (create, drop or refuse them, as ``unknown_properties`` says)."""
        if self.mapper is not None and self.action not in (Action.DELETE_CONTACT, Action.SKIP):
            declared, list_ids = self.mapper.declared_properties(self.schema)
            self.services.preflight.check_stream(
                self.stream_name, {k: loops_type(v) for k, v in declared.items()}, list_ids
            )

    def get_validator(self) -> BaseJSONSchemaValidator | None:
        """A validator compiled once for the stream (``validate_records: false`` turns validation off)."""
        return compiled_validator(self.schema, self.stream_name) if self.validate_schema else None

    def _parse_timestamps_in_record(self, record: dict, schema: dict, treatment: Any) -> None:
        """Top-level ``date-time`` strings → ``datetime`` (as the SDK does), with the keys found once per stream.

        An unparseable value raises ``ValueError``, which rejects the record (``schema_invalid``).
        """
        keys = self._datetime_keys
        if keys is None:
            # Loader and envelope columns that no rule reads (received_at, sent_at, uuid_ts, _sdc_*...) are left as
            # text: parsing them cost a tenth of a warehouse row's time for nothing. `timestamp` orders updates.
            keys = self._datetime_keys = tuple(
                key for key, sub in (schema.get("properties") or {}).items()
                if isinstance(sub, dict) and sub.get("format") == "date-time"
                and (key == "timestamp" or not _never_read(key))
            )  # fmt: skip
        for key in keys:
            value = record.get(key)
            if type(value) is str:
                try:  # the usual form first (Segment's and the loaders': an offset or Z), without the checks
                    parsed = _fromisoformat(value)
                except ValueError:
                    parsed = None
                if parsed is None or parsed.tzinfo is None:
                    parsed = parse_datetime(key, value)  # any other form, or the error that names the value
                record[key] = parsed
            elif isinstance(value, str):
                record[key] = parse_datetime(key, value)

    def _validate_and_parse(self, record: dict) -> dict:
        """Check what JSON can carry, then validate against the stream's SCHEMA; a record that fails either is
        rejected (with the reason), not fatal.

        First, before anything converts a value: a number JavaScript cannot hold (``1e5000``: ``invalid_number``)
        or nesting deeper than ``limits.MAX_DEPTH`` (``too_deep``). Such a record would otherwise stop the run in
        whatever step first converts it (an int of 5,000 digits has no text; ``1E+100000000`` as an int takes
        minutes), and every rerun at the same record. Then the SCHEMA: the SDK either stops the whole run on one
        invalid record or logs it and passes it on unmarked; neither says "this record, this reason" in the
        rejects file. Unparseable date-times are treated the same way.
        """
        self._invalid = None
        found = limits.problem(record)
        if found is not None:
            self._invalid = (found.reason, f"{found.message}; the record is rejected, the run goes on")
            return record
        try:
            if self._validator is not None:
                self._validator.validate(record)
            self._parse_timestamps_in_record(record=record, schema=self.schema, treatment=self.datetime_error_treatment)
        except (InvalidRecord, ValueError, OverflowError) as exc:
            first_line = str(exc).split("\n", 1)[0]
            self._invalid = ("schema_invalid", f"the record does not match the stream's SCHEMA: {first_line}")
        return record

    def take(self, record: dict) -> None:
        """The SDK's steps for one record (``Target._process_record_message``, singer-sdk 0.54), in its order, with
        the calls that do nothing for this sink left out: ``preprocess_record`` (not overridden), the key check
        (done inline, the SDK's own call raises), the tally and the debug line (written only when debug is on)."""
        context = self._pending_batch
        if context is None:
            context = self._get_context(record)
        self._remove_sdc_metadata_from_record(record)
        self._validate_and_parse(record)
        for key in self._key_properties:
            if key not in record:
                self._singer_validate_message(record)  # raises MissingKeyPropertiesError, naming the keys
        self._total_records_read += 1  # tally_record_read
        self._batch_records_read += 1
        self.process_record(record, context)
        self.record_counter_metric.increment()
        if self._debug:
            self._after_process_record(context)

    def process_record(self, record: dict, context: dict) -> None:
        """Map the record now, keeping only the operation (or the rejection) until the drain."""
        self.stats.read += 1
        if self.mapper is None:
            self.stats.skipped += 1
            return
        if self._invalid is not None:
            reason, message = self._invalid
            if self.services.position is not None:
                message = f"{self.services.position()}: {message}"
            context.setdefault("results", []).append(Rejection(reason, message, record))
            self._invalid = None
            return
        result = self.mapper.map(record)
        if isinstance(result, Skipped):
            self.stats.skipped_calls[result.kind] += 1
            return
        if isinstance(result, Operation):
            if result.skipped_keys:
                self._warn_skipped(result.skipped_keys)
            if self.audiences is not None:
                message_version = self.services.record_version() if self.services.record_version else None
                result.audience = self.stream_name
                result.version = self.audiences.version_for(self.stream_name, message_version)
        context.setdefault("results", []).append(result)

    def process_batch(self, context: dict) -> None:
        """Refuse what cannot be sent, hand the rest to the outbox (which sends at checkpoints or when full)."""
        results: list[Operation | Rejection] = context.get("results", [])
        if not results:
            return
        outbox = self.services.outbox
        assert outbox is not None, "the outbox exists once the run has started"
        outbox.add(self.stream_name, self._admit(results))

    def activate_version(self, new_version: int) -> None:
        """ACTIVATE_VERSION: for an audience, the stream's version to close at a normal end of input; for any other
        stream nothing (Loops has no table whose old rows could be dropped), quietly."""
        if self.audiences is not None:
            self.audiences.activated(self.stream_name, new_version)
            self.logger.info("Stream %s: ACTIVATE_VERSION %s (the audience closes at the end of input)",
                             self.stream_name, new_version)  # fmt: skip

    # --- internals

    def _admit(self, results: list[Operation | Rejection]) -> list[Operation]:
        """Reject what cannot be sent (local rejections, stale events, values that fit no type); keep the rest."""
        ops: list[Operation] = []
        cutoff = self.services.event_cutoff()
        preflight = self.services.preflight
        for result in results:
            if isinstance(result, Rejection):
                self._reject(result.record, result.reason, result.message, result.request)
                continue
            if cutoff is not None and result.action is Action.SEND_EVENT and _older_than(result.sort_key, cutoff):
                self._reject(
                    result.record,
                    "stale",
                    f"event at {result.sort_key} is older than max_event_age_hours; not sent so that no workflow "
                    "fires late",
                    result.request,
                )
                continue
            try:
                preflight.enforce(result.request.body, self.stream_name)
            except CoercionError as exc:
                self._reject(result.record, exc.reason, str(exc), result.request)
                continue
            for reason, message in result.partial:
                self._reject(result.record, reason, message, result.request, partial=True)
            self.stats.resubscribe_blocked += result.resubscribe_blocked
            ops.append(result)
        return ops

    def _reject(
        self,
        record: dict[str, Any],
        reason: str,
        message: str | None,
        request: LoopsRequest | None = None,
        *,
        partial: bool = False,
    ) -> None:
        """One line in the rejects file. A partial rejection (one bad entry dropped, the rest sent) is counted by
        reason but not as a rejected record."""
        if partial:
            self.stats.left_out[reason] += 1
        else:
            self.stats.rejected += 1
            self.stats.reasons[reason] += 1
        self.services.rejects.write(
            stream=self.stream_name,
            record=record,
            reason=reason,
            message=message,
            request=request,
            partial=partial,
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


_fromisoformat = dt.datetime.fromisoformat


def _never_read(key: str) -> bool:
    """True for a loader or Segment envelope column that no rule turns into a Loops value."""
    return defaults.is_system_column(key) or key in defaults.NESTED_SYSTEM_KEYS


def _older_than(sort_key: str | None, cutoff: dt.datetime) -> bool:
    """True when the record's timestamp is known and before ``cutoff``."""
    return sort_key is not None and dt.datetime.fromisoformat(sort_key) < cutoff
