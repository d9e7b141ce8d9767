"""``TargetLoops``: the settings, the stream → rule routing, and the pieces every sink shares.

The target owns what must be one per run: the HTTP client (one session, one rate limiter), the rejects file,
the dry-run plan and the counters. It also orders drains so that contacts exist before their events are sent.
"""

from __future__ import annotations

import collections
import copy
import datetime as dt
import gc
import json
import logging
import os
import sys
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path, PurePath
from typing import IO, TYPE_CHECKING, Any

import click
import msgspec
from singer_sdk.contrib.msgspec import MsgSpecReader
from singer_sdk.contrib.msgspec import decoder as msgspec_decoder
from singer_sdk.exceptions import ConfigValidationError, RecordsWithoutSchemaException
from singer_sdk.mapper import RemoveRecordTransform, SameRecordTransform
from singer_sdk.singerlib.exceptions import InvalidInputLine
from singer_sdk.sinks import Sink
from singer_sdk.target_base import Target

from target_loops import limits
from target_loops.audience import Audiences
from target_loops.batch_files import BatchFileError, UnreadableRow, batch_manifest, display_url, read_rows
from target_loops.client import BaseUrlError, LoopsAuthError, LoopsClient, LoopsUnavailableError
from target_loops.event_patterns import EventPatterns
from target_loops.ledger import Ledger, LedgerError, TeamIdentityError, describe_url
from target_loops.newcontacts import CONTACT_ADDED, NOT_IN_LOOPS, PENDING_IMPORT, NewContacts, UploadPending
from target_loops.operations import LoopsRequest, Outcome, OutcomeKind
from target_loops.outbox import Outbox, OutboxSettings, UndeliveredError
from target_loops.preflight import Preflight, PreflightError
from target_loops.rejects import RejectsWriter
from target_loops.report import (
    Progress,
    RunStats,
    audience_lines,
    event_property_lines,
    plural,
    render_plan,
    render_table,
    run_totals,
    stream_report,
)
from target_loops.rules import Rule, RuleError, match_rule, parse_rules, suggest_rule
from target_loops.serialization import dumps
from target_loops.settings import (
    DEFAULT_BASE_URL,
    SETTINGS,
    config_file_problem,
    load_settings,
    numbers_from_text,
    sqlite_ledger_path,
    without_secrets,
)
from target_loops.sinks import LoopsSink, SinkServices

if TYPE_CHECKING:
    from singer_sdk.singerlib.encoding.base import GenericSingerReader

__all__ = ["DEFAULT_BASE_URL", "SETTINGS", "TargetLoops"]

logger = logging.getLogger("target_loops.target")


class UnmappedStreamError(RuntimeError):
    """A stream matches no rule and ``unmapped_streams`` is ``error``."""


class MaxRejectsExceeded(RuntimeError):
    """More records were rejected than ``max_rejects`` allows."""


class AudienceGuardError(RuntimeError):
    """An audience would lose more members than ``max_leave_fraction`` allows; everything else was delivered."""


class InputError(RuntimeError):
    """A line of input that is not a Singer message the target can read; the message names the line."""


class StopRequested(Exception):
    """Raised at a safe point (between messages, or from a blocked read) after SIGTERM/SIGINT: nothing is half done."""


class StoppedBySignal(Exception):
    """The run stopped on a signal: one line for the user, exit status 128 + the signal number."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


#: Errors that end a run with one clear line instead of a traceback.
USER_ERRORS = (
    RuleError,
    UnmappedStreamError,
    LoopsAuthError,
    LoopsUnavailableError,
    BaseUrlError,
    PreflightError,
    MaxRejectsExceeded,
    UndeliveredError,
    TeamIdentityError,
    LedgerError,
    InputError,
    AudienceGuardError,
)

#: What the SDK raises for a message it cannot use (a missing key, a RECORD before its SCHEMA): a problem of that
#: input line, reported with its number.
_MESSAGE_ERRORS = (InvalidInputLine, RecordsWithoutSchemaException)

_BOM = "\ufeff"


class _RecordBeforeSchema(InputError, RecordsWithoutSchemaException):
    """A RECORD before its SCHEMA, with its line: still the SDK's exception for callers that expect that one."""


class _InvalidMessage(InputError, InvalidInputLine):
    """A message missing a key the SDK needs, with its line: still the SDK's exception for callers that expect it."""


class LineReader(MsgSpecReader):
    """The SDK's msgspec reader, reading bytes and counting lines, so that every input problem names its line.

    The fast path is the SDK's: one ``msgspec`` decode per line, then the message's callback. Only a line msgspec
    refuses takes the slow path, which decides per case:

    - a byte order mark or a blank line: ignored (with a warning), the run goes on;
    - a RECORD of a known stream that JSON cannot carry (``NaN``/``Infinity``, an integer too long to read, nesting
      too deep to read, bytes that are not UTF-8) and a RECORD whose ``record`` is not an object: that record is
      rejected (counted, in the rejects file, cut to size), the run goes on. (Numbers beyond a double and nesting
      beyond ``limits.MAX_DEPTH`` in records msgspec does read are the sink's check, ``LoopsSink._validate_and_parse``.)
    - anything else (not JSON, not an object, an unknown message type, a RECORD before its SCHEMA, any other message
      nested too deep to read): ``InputError`` naming the line. The rest cannot be trusted to be what the tap meant;
      skipping the line would let a later STATE cover a record that was never delivered.

    The target sets the hooks: ``reject_record`` (count and write a rejected record) and ``on_stop`` (called with the
    exception that ends the reading, before it propagates).
    """

    def __init__(self) -> None:
        super().__init__()
        self.line_number = 0
        self.blank_lines = 0
        self.reject_record: Callable[[str, Any, str, str], None] | None = None
        self.on_stop: Callable[[BaseException], None] | None = None
        #: Asked after each message: True once a stop was requested (a signal). ``waiting`` is True only while the
        #: reader is blocked on the input, where the signal handler may end the reading at once.
        self.stop_requested: Callable[[], bool] = lambda: False
        self.waiting = False

    def process_lines(
        self, file_input: IO[str] | None, callbacks: Mapping[str, Callable[[dict], None]]
    ) -> collections.Counter[str]:
        """Read every line (as bytes when the input has them: exact line numbers, per-line UTF-8 errors)."""
        source: Any = file_input or self.default_input
        lines: Iterable[bytes | str] = getattr(source, "buffer", source)
        counts: dict[Any, int] = collections.defaultdict(int)
        decode = msgspec_decoder.decode
        number = 0
        stop_requested = self.stop_requested
        iterator = iter(lines)
        try:
            while True:
                self.waiting = True
                try:
                    line = next(iterator)
                except StopIteration:
                    break
                finally:
                    self.waiting = False
                number += 1
                self.line_number = number
                try:
                    message = decode(line)
                except (msgspec.DecodeError, RecursionError) as exc:
                    message = self._salvage(number, line, exc)
                    if message is None:
                        continue
                if type(message) is not dict:
                    raise InputError(
                        f"input line {number} is JSON but not a Singer message (a {_json_type(message)}, not an object)"
                    )
                kind = message.get("type")
                callback = callbacks.get(kind) if type(kind) is str else None
                if callback is None or (kind == "RECORD" and type(message.get("stream")) is not str):
                    raise InputError(self._envelope_problem(number, message, callbacks))
                try:
                    callback(message)
                except _MESSAGE_ERRORS as exc:
                    raise _with_line(number, exc) from None
                counts[kind] += 1
                if stop_requested():
                    raise StopRequested
        except BaseException as exc:
            if self.on_stop is not None:
                self.on_stop(exc)
            raise
        return collections.Counter(counts)

    @staticmethod
    def _envelope_problem(number: int, message: dict, callbacks: Mapping[str, Any]) -> str:
        kind = message.get("type")
        if "type" not in message:
            return f'input line {number} has no "type": not a Singer message'
        if kind not in callbacks:
            known = ", ".join(sorted(callbacks))
            return f"input line {number} has an unknown message type {kind!r} (a Singer target reads {known})"
        return f'input line {number}: a {kind} message needs "stream" as a string, not {message.get("stream")!r}'

    def _salvage(self, number: int, line: bytes | str, error: Exception) -> dict | None:
        """A line msgspec refused: the message it still is, None to go on without it, or ``InputError``."""
        raw = line
        if isinstance(raw, bytes):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                self._not_utf8(number, raw, exc)
                return None
        else:
            text = raw
        if text.startswith(_BOM):
            logger.warning("Input line %d starts with a byte order mark (BOM); it is ignored", number)
            text = text[1:]
            try:
                return msgspec_decoder.decode(text)
            except (msgspec.DecodeError, RecursionError) as exc:
                return self._salvage(number, text, exc)
        if not text.strip():
            self.blank_lines += 1
            if self.blank_lines == 1:
                logger.warning("Input line %d is blank; blank lines are ignored", number)
            return None
        if isinstance(error, RecursionError):
            self._too_deep(number, text)
            return None
        try:
            message = limits.loads(text)
        except (ValueError, RecursionError):
            raise InputError(f"input line {number} is not valid JSON: {error}") from None
        found = limits.problem(message.get("record")) if isinstance(message, dict) else None
        if found is not None and self._rejectable(message):
            text = f"input line {number}: {found.message}; the record is rejected, the run goes on"
            self._reject(message, found.reason, text)
            return None
        raise InputError(f"input line {number} is not valid JSON: {error}")

    def _too_deep(self, number: int, text: str) -> None:
        """A line nested deeper than any JSON reader goes: a RECORD is rejected (shown cut at ``limits.MAX_DEPTH``
        levels of its record), any other message stops the run."""
        try:
            message = limits.loads(limits.cut_text(text, limits.MAX_DEPTH + 1))  # the line is a level above the record
        except (ValueError, RecursionError):
            message = None
        if isinstance(message, dict) and self._rejectable(message):
            found = limits.Problem(limits.TOO_DEEP, "")
            why = (
                f"input line {number}: the record's {found.message}; the record is rejected (cut at that depth in the "
                "rejects file), the run goes on"
            )
            self._reject(message, found.reason, why)
            return
        raise InputError(f"input line {number} nests objects or lists too deep to read; remove or flatten that record")

    def _not_utf8(self, number: int, raw: bytes, exc: UnicodeDecodeError) -> None:
        """Bytes that are not UTF-8: a RECORD of a known stream is rejected (shown with the bad bytes replaced)."""
        problem = f"byte {exc.start + 1} ({raw[exc.start : exc.start + 1]!r}) is not UTF-8"
        try:
            message = limits.loads(raw.decode("utf-8", errors="replace"))
        except (ValueError, RecursionError):
            message = None
        if isinstance(message, dict) and self._rejectable(message):
            self._reject(
                message,
                "invalid_encoding",
                f"input line {number}: {problem}; the record is rejected (shown here with each bad byte as U+FFFD), "
                "the run goes on",
            )
            return
        raise InputError(f"input line {number}: {problem}; Singer messages are UTF-8 JSON") from None

    def _rejectable(self, message: dict) -> bool:
        """A RECORD whose stream is named: its record can be rejected alone (the target knows the stream or says
        that it does not)."""
        return (
            self.reject_record is not None
            and message.get("type") == "RECORD"
            and isinstance(message.get("stream"), str)
            and "record" in message
        )

    def _reject(self, message: dict, reason: str, text: str) -> None:
        assert self.reject_record is not None
        try:
            self.reject_record(message["stream"], message["record"], reason, text)
        except _MESSAGE_ERRORS as exc:  # a stream with no SCHEMA yet
            raise _with_line(self.line_number, exc) from None


def _with_line(number: int, error: Exception) -> InputError:
    """The SDK's message error as an ``InputError`` naming the line (and still of the SDK's class)."""
    kind = _RecordBeforeSchema if isinstance(error, RecordsWithoutSchemaException) else _InvalidMessage
    return kind(f"input line {number}: {error}")


def _json_type(value: Any) -> str:
    if isinstance(value, list):
        return "list"
    if isinstance(value, str):
        return "string"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    return "number"


class TargetLoops(Target):
    """Singer target for Loops: upserts contacts, sends events and deletes contacts, as the rules say."""

    name = "target-loops"
    config_jsonschema = SETTINGS.to_dict()
    default_sink_class = LoopsSink
    #: msgspec parses Singer lines several times faster than the default reader, with the same types
    #: (numbers with a fraction as Decimal); ``LineReader`` adds line numbers and a per-line decision on bad input.
    message_reader_class = LineReader
    #: Take the lean record path where it is equivalent to the SDK's (a test runs both and compares requests).
    fast_record_path = True

    def __init__(
        self,
        *,
        config: dict | PurePath | str | list[PurePath | str] | None = None,
        parse_env_config: bool = False,
        validate_config: bool = True,
        setup_mapper: bool = True,
        message_reader: GenericSingerReader | None = None,
    ) -> None:
        """Check the whole config at once and build the frozen ``Settings`` before anything is read or sent.

        The SDK's schema validation (types, ranges, allowed values) and the target's own checks (unknown keys, the
        key, the URL, the rules, the files the run writes) are listed together in one error, so a user fixes a
        config in one go. The stream maps are built only from a config without problems.
        """
        schema_problems: list[str] = []
        try:
            super().__init__(
                config=config,
                parse_env_config=parse_env_config,
                validate_config=validate_config,
                setup_mapper=False,
                message_reader=message_reader,
            )
        except ConfigValidationError as exc:
            schema_problems = list(exc.errors)  # listed with the target's own problems below
        self.settings, problems = load_settings(self._config, self.accepted_settings())
        self.rules: list[Rule] = []
        try:
            mappings = self.settings.mappings
            self.rules = parse_rules(
                list(mappings) if mappings is not None else None, use_defaults=self.settings.default_mappings
            )
        except RuleError as exc:
            problems.append(str(exc))
        problems = without_secrets(schema_problems + problems, self._config)
        for report_path in (self.settings.report_path, self.settings.report_html_path):
            if report_path and Path(report_path).is_file():
                Path(report_path).unlink()  # a report on disk is this run's or none: never an earlier run's
        if problems and validate_config:
            raise ConfigValidationError(problems[0], errors=problems, schema=self.config_jsonschema)
        if setup_mapper:
            self.setup_mapper()
        if not _log_level_asked():
            self.metrics_logger.setLevel(logging.WARNING)  # the SDK's METRIC lines, unless a log level was asked
        self.run_id = uuid.uuid4().hex[:12]
        self.stats = RunStats()
        would_reject = self.settings.would_reject_path
        self.rejects = RejectsWriter(
            would_reject or self.settings.rejects_path if self.settings.dry_run else self.settings.rejects_path,
            run_id=self.run_id,
            dry_run=self.settings.dry_run,
            writes=not self.settings.dry_run or would_reject is not None,
        )
        if self.settings.api_key:
            self.rejects.secrets = (self.settings.api_key,)  # never in a sample of the HTML report, not even cut
        self.client: LoopsClient | None = None
        self.preflight = Preflight(None)
        self.progress = Progress(
            self.logger,
            interval=float(self.settings.progress_seconds),
            http_stats=lambda: getattr(self.client, "stats", dict)(),
        )
        self._started_at = dt.datetime.now(dt.timezone.utc)
        self.ledger: Ledger | None = None
        self.team: str | None = None  # the ledger's namespace for this Loops team
        self.outbox: Outbox | None = None
        self.new_contacts: NewContacts | None = None
        #: What every sink shares: the sinks' one collaborator.
        self.services = SinkServices(
            rule_for_stream=self.rule_for_stream,
            preflight=self.preflight,
            rejects=self.rejects,
            stats=self.stats,
            event_cutoff=self.event_cutoff,
            position=self._position,
        )
        # The SDK drains everything (and writes STATE) when a record arrives after this age; make it our cadence.
        self._MAX_RECORD_AGE_IN_MINUTES = self.settings.checkpoint_seconds / 60
        self._plan_file: IO[str] | None = None
        self._plan_lock = threading.Lock()
        self._started = False
        self._finished = False
        self._last_state_written: dict | None = None
        self._with_metadata = self.settings.add_record_metadata
        #: The signal that asked the run to stop (SIGTERM/SIGINT), set by the handler and acted on at safe points.
        self._stop_signal: int | None = None
        self._state_held = False
        #: The batch file and row being read while a BATCH message is processed (None for RECORD lines).
        self._batch_row: tuple[str, int] | None = None
        #: The ``version`` of the RECORD message being processed (rows of an ACTIVATE_VERSION stream carry one).
        self._record_version: Any = None
        self.services.record_version = lambda: self._record_version
        self.audiences: Audiences | None = None
        if isinstance(self.message_reader, LineReader):
            self.message_reader.reject_record = self._reject_unreadable
            self.message_reader.on_stop = self._stop_reading
            self.message_reader.stop_requested = self._stop_requested

    # --- settings

    @property
    def dry_run(self) -> bool:
        """True when nothing may be sent."""
        return self.settings.dry_run

    @classmethod
    def append_builtin_config(cls, config_jsonschema: dict) -> None:
        """The SDK's settings that mean something here, with their real defaults: ``batch_size_rows`` defaults to
        the sink's 500 (the SDK shows none); ``load_method`` (append/upsert/overwrite of a database table) and
        ``faker_config`` (needs the SDK's faker extra, not installed) do nothing for Loops, so they are not offered."""
        super().append_builtin_config(config_jsonschema)
        properties = config_jsonschema["properties"]
        for idle in ("load_method", "faker_config"):
            properties.pop(idle, None)
        if "batch_size_rows" in properties:
            properties["batch_size_rows"] = {
                **properties["batch_size_rows"],
                "default": LoopsSink.MAX_SIZE_DEFAULT,
                "minimum": 1,
                "description": "Records per batch handed from a stream's sink to the outbox (the outbox holds up "
                "to coalesce_rows across batches, so this rarely needs changing).",
            }

    @classmethod
    def get_singer_command(cls) -> click.Command:
        """``--help`` that says what the target does, shows two invocations and points to ``--about``."""
        command = super().get_singer_command()
        command.help = (
            "Sync Singer streams of people and product events (identify-like and track-like records, from a "
            "warehouse or a Segment export) into Loops: contacts upserted, events sent, contacts deleted, as the "
            "stream-to-action rules in the config say."
        )
        command.epilog = (
            "\b\nExamples:\n"
            "  tap-postgres --config tap.json | target-loops --config config.json\n"
            "  target-loops --config config.json --input sample_streams/segment_export.singer\n"
            "\n"
            "\b\nEvery setting, with its default and range:\n"
            "  target-loops --about --format=markdown\n"
            "Settings from TARGET_LOOPS_API_KEY, TARGET_LOOPS_BASE_URL... instead of a file:\n"
            "  target-loops --config=ENV\n"
            "Rehearse first with dry_run: true, or against the bundled sandbox:\n"
            "  target-loops-sandbox"
        )
        return command

    def _validate_config(self, *, raise_errors: bool = True) -> list[str]:
        """The SDK's schema check, on number settings given as text made numbers first (``numbers_from_text``)."""
        numbers_from_text(self._config)
        return super()._validate_config(raise_errors=raise_errors)

    @classmethod
    def accepted_settings(cls) -> frozenset[str]:
        """Every top-level key a config may hold: the target's settings and the SDK's own for this target's
        capabilities (stream maps, flattening, record validation, batch size...), exactly as ``--about`` lists them."""
        schema = copy.deepcopy(cls.config_jsonschema)
        cls.append_builtin_config(schema)
        return frozenset(schema["properties"])

    def rule_for_stream(self, stream_name: str, schema: dict) -> Rule | None:
        """The stream's rule; an unmapped stream stops the run (before any write) unless told to skip it."""
        if self._dropped_by_stream_maps(stream_name):
            return None
        rule = match_rule(self.rules, stream_name)
        if rule is None and self.settings.unmapped_streams == "error":
            example = suggest_rule(stream_name, list((schema or {}).get("properties", {})))
            raise UnmappedStreamError(
                f"Stream {stream_name!r} matches no rule in mappings, so target-loops does not know what to send "
                f'for it. Add a rule to mappings, e.g. {example} (with "email"/"user_id" paths if its columns '
                f"differ from the defaults), or set unmapped_streams: skip to ignore it."
            )
        if rule is None:
            self.logger.warning("Stream %r matches no rule: its records are counted and skipped", stream_name)
        else:
            self.logger.info("Stream %r → %s", stream_name, rule.label)
        return rule

    def _dropped_by_stream_maps(self, stream_name: str) -> bool:
        """True when ``stream_maps`` removes the stream (``{"stream": null}``): the SDK still makes it a sink."""
        return any(
            isinstance(stream_map, RemoveRecordTransform) and stream_map.stream_alias == stream_name
            for maps in self.mapper.stream_maps.values()
            for stream_map in maps
        )

    # --- start, send, finish

    def _start(self) -> None:
        """Once, before the first record: check the key (a bad key stops here), the team's schema, the ledger."""
        if self._started:
            return
        self._started = True
        settings = self.settings
        if self.dry_run and gc.get_threshold()[0] >= 50_000:
            # A dry run sends nothing, so it makes next to no cyclic garbage: young-object collections every
            # 1,000,000 allocations instead of 50,000 cost 0.3% of its time instead of 6%, at the same peak memory
            # (131 MiB either way on 100,000 records). A real run must not: the HTTP client's answers and retries
            # leave cycles, and at 1,000,000 a run of 22,000 requests peaked at 269 MiB instead of 160.
            gc.set_threshold(1_000_000, 50, 100)
        base_url = settings.base_url
        self.ledger = Ledger(settings.ledger_url, read_only=self.dry_run)
        ledger_file = sqlite_ledger_path(settings.ledger_url)
        where = str(Path(ledger_file).resolve()) if ledger_file else describe_url(settings.ledger_url)
        self.logger.info("Ledger: %s", where)
        if self.rejects.writes:
            self.logger.info("Rejects file: %s", self.rejects.path.resolve())
        team_name = None
        if settings.api_key:
            self.client = LoopsClient(settings.client_settings())
            self.client.listener = self.progress.note
            self.client.identify_run(self.run_id)
            self.client.stopping = self._stop_requested
            team_name = self.client.check_api_key()
            self.logger.info("Connected to Loops team %r at %s", team_name, base_url)
        self.preflight = Preflight(
            self.client,
            mode=settings.unknown_properties,
            dry_run=self.dry_run,
            max_new=settings.max_new_properties,
            events=EventPatterns(self.client, mode=settings.unknown_event_properties),
        )
        self.services.preflight = self.preflight
        self.preflight.load()
        if self.client is not None:
            assert settings.api_key is not None, "a client exists only with a key"
            resolve = self.ledger.resolve_team if not self.dry_run else self._known_or_resolved
            self.team = resolve(
                base_url=base_url,
                team_name=team_name,
                api_key=settings.api_key,
                list_ids=list(self.preflight.lists),
                explicit=settings.ledger_namespace,
            )
        elif self.dry_run:
            self.team = self.ledger.known_team(base_url, explicit=settings.ledger_namespace)
        if self.dry_run:
            path = settings.dry_run_path
            if path:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
                self._plan_file = Path(path).open("w", encoding="utf-8")  # noqa: SIM115 - closed in _finish
            self.logger.info(
                "Dry run: nothing will be sent to Loops and no STATE is emitted; the ledger is read only%s%s",
                "" if self.team else " (no team known yet: every row counts as new)",
                "" if self.client else "; no api_key, so the team's properties are not checked",
            )
        self.audiences = Audiences(
            ledger=self.ledger,
            team=self.team,
            max_leave_fraction=float(settings.max_leave_fraction),
            min_members=settings.leave_guard_min_members,
            dry_run=self.dry_run,
        )
        self.services.audiences = self.audiences
        self.new_contacts = NewContacts(
            settings.new_contacts,
            path=settings.new_contacts_path,
            finder=self.client.get_json if self.client is not None else None,
            dry_run=self.dry_run,
            run_started=self._started_at,
            workers=min(settings.max_concurrency, 16),
        )
        self._log_new_contacts()
        self.outbox = Outbox(
            audiences=self.audiences,
            settings=OutboxSettings(
                hold_rows=settings.coalesce_rows,
                skip_unchanged=settings.skip_unchanged and not settings.full_resync,
                fold_updates=settings.fold_updates,
                workers=settings.max_concurrency if not self.dry_run else 1,
            ),
            sender=self._plan_request if self.dry_run else self._send_request,
            names_stream=not self.dry_run,
            counters=lambda stream: self.stats.for_stream(stream, None),
            rejects=self.rejects,
            ledger=self.ledger,
            team=self.team,
            check=getattr(self.client, "raise_if_fatal", None),
            progress=self.progress if not self.dry_run else None,
            stopping=self._stop_requested,
            on_stop=self.client.abort if self.client is not None else None,
            new_contacts=self.new_contacts,
        )
        self.services.outbox = self.outbox

    def _log_new_contacts(self) -> None:
        """The preflight's word on new contacts: what the policy does, and any CSV still waiting for its upload."""
        policy = self.settings.new_contacts
        if policy == "create":
            self.logger.info(
                "new_contacts: create: each person Loops does not have is created through the API, which %s; the "
                "run counts the people unknown to the ledger (set new_contacts: skip or csv to create nobody)",
                CONTACT_ADDED,
            )
        elif policy == "skip":
            self.logger.info("new_contacts: skip: people Loops does not have are held back (%s)", NOT_IN_LOOPS)
        else:
            self.logger.info(
                "new_contacts: csv: people unknown to the ledger go to %s for Loops' CSV upload, not the API",
                self.settings.new_contacts_path,
            )
        if self.ledger is not None and self.team is not None:
            for path, count in self.ledger.pending_exports(self.team).items():
                self.logger.warning("%d people exported to %s are not confirmed in Loops yet", count, path)

    def _known_or_resolved(self, **kwargs: Any) -> str | None:
        """A dry run with a key: the namespace the real run would use (read only: nothing is recorded), None when
        the real run would stop for the team's identity. With ``ledger_namespace`` that may be the ledger the name
        is about to name, so the plan matches the real run's."""
        assert self.ledger is not None
        try:
            return self.ledger.resolve_team(**kwargs)
        except TeamIdentityError:
            return None

    def event_cutoff(self) -> dt.datetime | None:
        """Events that happened before this instant are stale (``max_event_age_hours``), or None."""
        hours = self.settings.max_event_age_hours
        if hours is None:
            return None
        return dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=hours)  # bounded by the schema's maximum

    def _send_request(self, request: LoopsRequest) -> Outcome:
        assert self.client is not None, "the client is created before the first record"
        return self.client.send(request)

    def _plan_request(self, request: LoopsRequest) -> Outcome:
        """A dry run's "send": one line of the plan file (when one is asked for), nothing on the wire."""
        if self._plan_file is not None:
            self._plan_line(dumps(request.as_dict()))
        return Outcome(OutcomeKind.PLANNED)

    def _plan_line(self, line: str) -> None:
        """One line of the plan file (planned requests and would-be rejects), from any sending thread."""
        if self._plan_file is not None:
            with self._plan_lock:
                self._plan_file.write(line + "\n")

    # --- input that cannot be used as it is

    def _reject_unreadable(self, stream: str, record: Any, reason: str, message: str) -> None:
        """A RECORD no sink can take (its ``record`` is not an object, or JSON cannot carry it): that record is
        rejected alone, counted on its stream, and the run goes on. A stream with no SCHEMA yet is bad input
        (``RecordsWithoutSchemaException``, reported with the line); a stream the config skips or drops is skipped.
        """
        maps = self.mapper.stream_maps.get(stream)
        if not maps:
            self._assert_sink_exists(stream)
            maps = []
        alias = maps[0].stream_alias if maps else stream
        if maps and isinstance(maps[0], RemoveRecordTransform):
            return  # stream_maps drops the whole stream
        self._assert_sink_exists(alias)
        sink = self._sinks_active[alias]
        stats = sink.stats if isinstance(sink, LoopsSink) else self.stats.for_stream(alias, None)
        stats.read += 1
        if isinstance(sink, LoopsSink) and sink.mapper is None:
            stats.skipped += 1  # unmapped_streams: skip
            return
        stats.rejected += 1
        stats.reasons[reason] += 1
        self.rejects.write(stream=alias, record=record, reason=reason, message=message)

    def _stop_reading(self, error: BaseException) -> None:
        """Reading ended before the end of input. For a line that cannot be read, everything before it is
        delivered and checkpointed first (a STATE before that line covers only earlier records); for a signal, see
        ``_stopped``; for any error, the run report says ``completed: false``."""
        if self._finished:
            return
        if self._stop_signal is not None:
            self._stopped(error)
        try:
            if isinstance(error, InputError):
                self.logger.warning(
                    "Stopping at a line that cannot be read; delivering and checkpointing what came before it"
                )
                self.drain_all()
        finally:
            self._finish(completed=False)

    def _process_record_message(self, message_dict: dict) -> None:
        """The SDK's record path, minus the steps an identity stream map makes no-ops.

        Profiling showed the SDK's per-record bookkeeping (copying the record for a map that changes nothing,
        re-looking up the map and the sink, re-checking settings) costing as much as the mapping itself. When the
        stream has no map of its own and no ``_sdc`` metadata is asked for, the same steps run in the same order
        without those lookups; anything else takes the SDK's own path.
        """
        if self._stop_signal is not None:
            raise StopRequested  # a safe point: the previous record is wholly handed over, this one not begun
        self._record_version = message_dict.get("version")
        stream = message_dict.get("stream")
        record = message_dict.get("record")
        if not isinstance(record, dict) and "record" in message_dict:
            what = "null" if record is None else type(record).__name__
            subject = "the row" if self._batch_row is not None else 'the RECORD\'s "record"'
            self._reject_unreadable(
                stream,  # type: ignore[arg-type]  # the reader lets only a string stream through
                record,
                "invalid_record",
                f"{self._position()}: {subject} is {what}, not an object; the record is rejected, the run goes on",
            )
            return
        sink = self._sinks_active.get(stream)  # type: ignore[arg-type]
        maps = self.mapper.stream_maps.get(stream) if sink is not None else None  # type: ignore[arg-type]
        if (
            not isinstance(sink, LoopsSink)
            or not self.fast_record_path
            or self._with_metadata
            or not isinstance(record, dict)
            or not maps
            or len(maps) != 1
            or type(maps[0]) is not SameRecordTransform
            or maps[0].stream_alias != stream
        ):
            super()._process_record_message(message_dict)
            return
        sink.take(record)
        if sink.is_full:
            self.logger.info("Target sink for '%s' is full. Draining...", stream)
            self.drain_one(sink)
        self._handle_max_record_age()

    def _process_batch_message(self, message_dict: dict) -> None:
        """Every row of the BATCH's files, as it is read, as a RECORD of the BATCH's stream.

        The SDK hands whole files to ``Sink.process_batch_files``, whose ``process_batch`` here would see none of
        their rows. Sent through ``_process_record_message`` instead, a row meets the stream maps, validation, the
        rule, the outbox, checkpoints and a stop request exactly as a RECORD line does, and a STATE after the BATCH
        covers it. A file or row that cannot be read is an ``InputError``: what came before the BATCH is delivered
        and checkpointed (``_stop_reading``), and no STATE after it is written.
        """
        where = f"input line {getattr(self.message_reader, 'line_number', '?')}"
        stream = message_dict.get("stream")
        try:
            stream, manifest = batch_manifest(message_dict)
            for url in manifest:
                for number, row in read_rows(url):
                    self._batch_row = (url, number)
                    if type(row) is UnreadableRow:
                        message = f"{self._position()}: {row.problem}; the record is rejected, the run goes on"
                        self._reject_unreadable(stream, row.record, row.reason, message)
                    else:
                        self._process_record_message({"type": "RECORD", "stream": stream, "record": row})
        except BatchFileError as exc:
            of = f" (a BATCH of stream {stream!r})" if isinstance(stream, str) else ""
            raise InputError(f"{where}{of}: {exc}") from None
        finally:
            self._batch_row = None

    def _position(self) -> str:
        """Where the record being read came from, for messages: its input line, or its batch file and row."""
        if self._batch_row is not None:
            url, number = self._batch_row
            return f"batch file {display_url(url)} row {number}"
        return f"input line {getattr(self.message_reader, 'line_number', '?')}"

    def _process_activate_version_message(self, message_dict: dict) -> None:
        """ACTIVATE_VERSION goes to the stream's sink (an audience closes at that version at a normal end of input),
        without the SDK's two warnings about a feature that has no other meaning for Loops."""
        version = message_dict.get("version")
        stream = message_dict.get("stream")
        if not isinstance(version, int) or isinstance(version, bool) or not isinstance(stream, str):
            raise InputError(
                f"input line {getattr(self.message_reader, 'line_number', '?')}: an ACTIVATE_VERSION needs "
                f'"stream" (a string) and "version" (an integer), not {stream!r} and {version!r}'
            )
        if stream not in self.mapper.stream_maps:
            self._assert_sink_exists(stream)
        for stream_map in self.mapper.stream_maps[stream]:
            if isinstance(stream_map, RemoveRecordTransform):
                continue
            self.get_sink(stream_map.stream_alias).activate_version(version)

    def _close_audiences(self) -> None:
        """At a normal end of input: send everything held, then close the audiences whose version is complete;
        their leaves and joins go to the outbox, and the final drain sends them before the last STATE."""
        if self.audiences is None or self.outbox is None or not self.audiences.is_any():
            return
        for sink in [*self._sinks_to_clear, *self._sinks_active.values()]:
            self.drain_one(sink)
        self.outbox.flush()
        for stream, ops in self.audiences.close(lambda name: self.stats.for_stream(name, None).rejected):
            self.outbox.add(stream, ops)
        for closing in self.audiences.closings:
            stats = self.stats.for_stream(closing.stream, None)
            if closing.closed and not closing.first:
                stats.joined += closing.joined
                stats.left += closing.left

    def _process_schema_message(self, message_dict: dict) -> None:
        self._start()
        super()._process_schema_message(message_dict)

    def _process_state_message(self, message_dict: dict) -> None:
        """Checkpoint at least every ``checkpoint_seconds``: send everything buffered, then emit this STATE.

        Every record before a STATE message is in a sink when it arrives, so once all sinks are drained the STATE
        is true. (The SDK alone only checkpoints when a record arrives after 5 minutes.)
        """
        super()._process_state_message(message_dict)
        if self._max_record_age_in_minutes >= self._MAX_RECORD_AGE_IN_MINUTES:
            self.drain_all()

    def process_endofpipe(self) -> None:
        """Drain everything (STATE is written only if it all went through), then report and close.

        ``max_rejects`` is checked last, so that everything else was delivered and checkpointed before the run
        reports failure.
        """
        completed = False
        try:
            self._close_audiences()
            super().process_endofpipe()
            if self.outbox is not None and self.outbox.waiting:
                # Requests still waiting for their person's upsert: one last try now that the whole input is in,
                # then Loops' refusal goes to the rejects file; only then is the latest STATE true.
                self.outbox.flush(final=True)
                if self._latest_state:
                    self._write_state_message(copy.deepcopy(self._latest_state))
            if self.new_contacts is not None and self.new_contacts.unwritten:
                # The CSV is written once the whole input is in; only then is the STATE held back for it true.
                self.new_contacts.write(self.ledger, self.team)
                if self._latest_state:
                    self._write_state_message(copy.deepcopy(self._latest_state))
            completed = True
        except BaseException as exc:
            if self._stop_signal is not None:
                self._stopped(exc)
            raise
        finally:
            self._finish(completed=completed)
        if self.audiences is not None and self.audiences.problems and not self.dry_run:
            raise AudienceGuardError("; ".join(self.audiences.problems))
        limit = self.settings.max_rejects
        if limit is not None and self.rejects.count > limit:
            raise MaxRejectsExceeded(
                f"{self.rejects.count} records were rejected, more than max_rejects ({limit}); everything else was "
                f"delivered and checkpointed. See {self.rejects.path}."
            )
        pending = self.new_contacts.pending_paths if self.new_contacts is not None else {}
        if pending and not self.dry_run:
            path, count = next(iter(pending.items()))
            raise UploadPending(
                f"upload {path} in Loops first: {count} people exported to it are not in Loops yet, so nothing was "
                f"sent for them (their records are in {self.rejects.path}, reason {PENDING_IMPORT}); everything else "
                "was delivered and checkpointed"
            )

    def _finish(self, *, completed: bool = False) -> None:
        """Report and close: the end-of-run table on stderr (plain lines), the JSON report to ``report_path``."""
        if self._finished:
            return
        self._finished = True
        self.rejects.close()
        report = self._report(completed)
        lines = render_table(report)
        lines += audience_lines(report["audiences"], dry=self.dry_run)
        if self.dry_run:
            lines += render_plan(report, float(self.settings.requests_per_second))
        else:
            lines += event_property_lines(report["event_properties"], report["event_definitions"])
            if self.preflight.created:
                created = ", ".join(f"{k} ({v})" for k, v in self.preflight.created.items())
                lines.append(f"contact properties created: {created}")
        if self.preflight.dropped:
            lines.append(f"properties left out (unknown_properties: drop): {dict(self.preflight.dropped)}")
        if self.preflight.unknown_lists:
            lines.append(f"unknown mailing lists left out: {dict(self.preflight.unknown_lists)}")
        if self.new_contacts is not None:
            lines += self.new_contacts.lines()
        if self.rejects.held:
            where = f"see {self.rejects.path.resolve()}" if self.rejects.writes else "set dry_run_path to list them"
            lines.append(f"{plural(self.rejects.held, 'record')} held back by new_contacts: {where}")
        if self.rejects.count:
            where = f"see {self.rejects.path.resolve()}" if self.rejects.writes else "set dry_run_path to list them"
            verb = "would be rejected" if self.rejects.dry_run else "rejected this run"
            lines.append(f"{plural(self.rejects.count, 'record')} {verb}: {where}")
        sys.stderr.write("\n".join(lines) + "\n")
        sys.stderr.flush()
        if completed and getattr(self.message_reader, "line_number", None) == 0:
            # A tap that fails inside `tap | target-loops` is, for the target, an input that ends at once.
            self.logger.warning(
                "target-loops: the input was empty (not one line). If a tap feeds target-loops, check that it "
                "succeeded: run the pipeline under `set -o pipefail`, and save its STATE only when both succeeded"
            )
        if self.settings.report_path:
            path = Path(self.settings.report_path)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
            self.logger.info("Run report written to %s", path.resolve())
        if self.settings.report_html_path:
            self._write_html_report(report)
        if self._plan_file is not None:
            self._plan_file.close()
        if self.outbox is not None:
            self.outbox.close()
        if self.client is not None:
            self.client.close()
        if self.ledger is not None:
            self.ledger.close()

    def _write_html_report(self, report: dict[str, Any]) -> None:
        """The run report as an HTML page (``report_html_path``): the same dict, the client's timeline, the
        rejects' samples."""
        assert self.settings.report_html_path is not None
        # Imported here: the page's modules and Jinja2 are a tenth of the start-up, and most runs write no page.
        from target_loops.html_report import render_report, write_report

        text = render_report(
            report,
            timeline=self.client.timeline.snapshot() if self.client is not None else None,
            samples=self.rejects.samples,
            rate_limit=self.client.limiter.limit if self.client is not None else 0.0,
            secrets=[self.settings.api_key or ""],
        )
        path = write_report(self.settings.report_html_path, text)
        self.logger.info("HTML run report written to %s", path.resolve())

    def _report(self, completed: bool) -> dict[str, Any]:
        """The run report: every figure of the end-of-run table and more, in the same words (``report_path``)."""
        finished = dt.datetime.now(dt.timezone.utc)
        streams = [stream_report(s) for s in self.stats.streams.values() if s.action is not None or s.read]
        rejects_lines = 0
        if self.rejects.path.exists():
            with self.rejects.path.open("rb") as handle:
                rejects_lines = sum(1 for _ in handle)
        sending = self.outbox.sending_seconds if self.outbox is not None else 0.0
        http_stats = getattr(self.client, "stats", None)
        return {
            "run_id": self.run_id,
            "started_at": self._started_at.isoformat(timespec="seconds"),
            "finished_at": finished.isoformat(timespec="seconds"),
            "elapsed_seconds": round((finished - self._started_at).total_seconds(), 3),
            "completed": completed,
            "dry_run": self.dry_run,
            "streams": streams,
            "totals": run_totals(streams, sending),
            "http": dict(http_stats()) if callable(http_stats) else {},
            "event_properties": self.outbox.event_properties if self.outbox is not None else {},
            "event_definitions": self.preflight.events.report() if self.preflight.events is not None else {},
            "audiences": [c.as_dict() for c in self.audiences.closings] if self.audiences is not None else [],
            "properties": {
                "created" if not self.dry_run else "would_create": self.preflight.created,
                "dropped": dict(self.preflight.dropped),
                "unknown_mailing_lists": dict(self.preflight.unknown_lists),
            },
            "rejects": {
                "path": str(self.rejects.path) if self.rejects.writes else None,
                "this_run": self.rejects.count,
                "lines": rejects_lines,
                "would_reject": self.rejects.dry_run,  # a dry run: these were not sent, and nothing was refused yet
            },
            "max_rejects": self.settings.max_rejects,
            "new_contacts": {
                **(self.new_contacts.report() if self.new_contacts is not None else {}),
                "held_back_records": self.rejects.held,
            },
        }

    def _write_state_message(self, state: dict) -> None:
        """Emit a STATE only when it is true and new: never in a dry run (nothing was sent, so a STATE would move
        the tap's bookmark past rows Loops never got), never twice the same (frequent checkpoints repeat it)."""
        if self.dry_run or state == self._last_state_written:
            return
        if self.new_contacts is not None and self.new_contacts.unwritten:
            return  # people exported to the CSV are in memory only until the end of the input (process_endofpipe)
        if self.outbox is not None and self.outbox.waiting:
            if not self._state_held:
                self._state_held = True
                self.logger.info(
                    "STATE is held back while %d request(s) wait for their contact's upsert: a STATE now would "
                    "cover records that Loops has not accepted",
                    self.outbox.waiting,
                )
            return
        super()._write_state_message(state)
        self._last_state_written = state

    def _drain_all(self, sink_list: Iterable[Sink], parallelism: int) -> None:
        """Drain the sinks (they hand their operations to the outbox), then send everything the outbox holds.

        ``drain_all`` writes STATE right after this returns, so every record before that STATE is then settled.
        An undelivered request raises here, and no STATE is written.
        """
        super()._drain_all(sink_list, parallelism)
        if self.outbox is not None:
            self.outbox.flush()

    # --- signals

    def _handle_termination(self, signum: int, frame: Any) -> None:
        """SIGTERM/SIGINT: only note that a stop was asked; the run acts on it at its next safe point.

        A handler runs between two bytecodes of the main thread, wherever it is: inside a sink's hand-over to the
        outbox, inside a thread pool's ``submit`` (holding its lock), inside a ledger write. The SDK's handler (and
        0.2.0's) drained and wrote STATE from there: a batch the interrupted frame held was checkpointed unsent, and
        shutting a pool down inside its own ``submit`` deadlocked. So this takes no lock, does no I/O and changes
        nothing but one attribute. The safe points: after each message (``LineReader``), before each record, and
        the outbox's wait for its requests (it stops the client; each request in flight ends within its deadline).
        Only a reader blocked on its input is interrupted here, since nothing is half done there.

        A second signal ends the process at once (a user pressing Ctrl-C twice): what Loops accepted in the last
        half second may be sent again next run, as after a kill -9 (a 409 for events, a repeat for contacts).
        """
        if self._stop_signal is not None:
            os.write(2, b"target-loops: a second signal: exiting at once, without a new STATE\n")
            os._exit(128 + signum)
        self._stop_signal = signum
        if getattr(self.message_reader, "waiting", False):
            raise StopRequested

    def _stop_requested(self) -> bool:
        return self._stop_signal is not None

    def _stopped(self, error: BaseException) -> None:
        """The run stops on a signal: STATE only if everything read is settled, then one line and exit 128 + n.

        Held work is not sent: sending it could take far longer than an orchestrator waits (hold_rows operations
        at 10 requests/s is half an hour); the next run replays it from the last STATE, and the ledger skips what
        was accepted.
        """
        signum = self._stop_signal
        assert signum is not None
        settled = (
            isinstance(error, StopRequested)
            and self.outbox is not None
            and not self.outbox.held
            and not self.outbox.waiting
            and all(sink.current_size == 0 for sink in self._sinks_active.values())
            and not self._sinks_to_clear
        )
        if settled and self._latest_state:
            self._write_state_message(copy.deepcopy(self._latest_state))
        self._finish(completed=False)
        name = {2: "SIGINT", 15: "SIGTERM"}.get(signum, f"signal {signum}")
        accepted = sum(stats.delivered for stats in self.stats.streams.values())
        where = (
            "everything read was settled and checkpointed"
            if settled and self._latest_state
            else "no STATE was written for what was read since the last one; the next run replays from there"
        )
        raise StoppedBySignal(
            signum,
            f"stopped by {name} before the end of the input: {accepted} request(s) accepted by Loops; "
            f"{where} (the ledger skips what Loops already has)",
        ) from None

    # --- CLI

    @classmethod
    def cb_config(cls, ctx: Any, param: Any, value: tuple[str, ...]) -> Any:
        """``--config`` files: one that is missing or not a JSON object is one line naming the file and where
        (line and column), and exit status 1, instead of the SDK's traceback."""
        for path in value:
            problem = config_file_problem(path) if path != "ENV" else None
            if problem is not None:
                cls.logger.error("target-loops: %s", problem)
                ctx.exit(1)
        return super().cb_config(ctx, param, value)

    @classmethod
    def invoke(cls, *args: Any, **kwargs: Any) -> None:
        """Run the target; a user error ends the run with one clear line and exit status 1."""
        # Held records (coalesce_rows) are many long-lived containers; CPython's default thresholds would walk
        # them over and over (measured: a third of a dry run's time). Collect young objects far less often, and
        # leave everything loaded at start-up out of collections altogether. (A dry run goes further: ``_start``.)
        gc.freeze()
        gc.set_threshold(50_000, 50, 100)
        try:
            super().invoke(*args, **kwargs)
        except StoppedBySignal as exc:
            cls.logger.warning("target-loops: %s", exc)
            sys.exit(exc.exit_code)
        except UploadPending as exc:
            cls.logger.error("target-loops: %s", exc)
            sys.exit(exc.exit_code)
        except USER_ERRORS as exc:
            cls.logger.error("target-loops: %s", exc)
            sys.exit(1)


logging.getLogger("urllib3").setLevel(logging.WARNING)


def _log_level_asked() -> bool:
    """True when the user set the SDK's log level (``TARGET_LOOPS_LOGLEVEL`` or ``LOGLEVEL``): then the SDK's
    own informational lines (METRIC, settings parsing) are shown as the SDK shows them."""
    return bool(os.environ.get("TARGET_LOOPS_LOGLEVEL") or os.environ.get("LOGLEVEL"))


class _QuietSdkNoise(logging.Filter):
    """Drops the SDK's start-up chatter about env var settings unless a log level was asked for."""

    NOISE = ("Skipping parse of env var settings", "Parsing env var for settings config")

    def filter(self, record: logging.LogRecord) -> bool:
        return _log_level_asked() or not str(record.msg).startswith(self.NOISE)


logging.getLogger(TargetLoops.name).addFilter(_QuietSdkNoise())

if __name__ == "__main__":
    TargetLoops.cli()
