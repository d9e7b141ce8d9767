"""``TargetLoops``: the settings, the stream → rule routing, and the pieces every sink shares.

The target owns what must be one per run: the HTTP client (one session, one rate limiter), the rejects file,
the dry-run plan and the counters. It also orders drains so that contacts exist before their events are sent.
"""

from __future__ import annotations

import datetime as dt
import gc
import json
import logging
import sys
import threading
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

from singer_sdk import typing as th
from singer_sdk.contrib.msgspec import MsgSpecReader
from singer_sdk.exceptions import ConfigValidationError
from singer_sdk.mapper import RemoveRecordTransform, SameRecordTransform
from singer_sdk.sinks import Sink
from singer_sdk.target_base import Target

from target_loops.client import (
    BaseUrlError,
    ClientSettings,
    LoopsAuthError,
    LoopsClient,
    LoopsUnavailableError,
    check_base_url,
)
from target_loops.ledger import Ledger, LedgerError, TeamIdentityError, describe_url
from target_loops.operations import LoopsRequest, Outcome, OutcomeKind
from target_loops.outbox import Outbox, OutboxSettings, UndeliveredError
from target_loops.preflight import Preflight, PreflightError
from target_loops.rejects import RejectsWriter
from target_loops.report import Progress, RunStats, StreamStats, human_duration, stream_report
from target_loops.rules import Rule, RuleError, match_rule, parse_rules, suggest_rule
from target_loops.serialization import dumps
from target_loops.sinks import LoopsSink, SinkServices

DEFAULT_BASE_URL = "https://app.loops.so/api"
DEFAULT_LEDGER_URL = "sqlite:///.target-loops/ledger.sqlite"


class UnmappedStreamError(RuntimeError):
    """A stream matches no rule and ``unmapped_streams`` is ``error``."""


class MaxRejectsExceeded(RuntimeError):
    """More records were rejected than ``max_rejects`` allows."""


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
)

SETTINGS = th.PropertiesList(
    th.Property(
        "api_key",
        th.StringType,
        secret=True,
        description="Loops API key (Loops → Settings → API), sent as a Bearer token and never logged. "
        "Required unless dry_run is true.",
    ),
    th.Property(
        "base_url",
        th.StringType,
        default=DEFAULT_BASE_URL,
        description="API root. Point it at the sandbox (http://127.0.0.1:8787/api) to rehearse a sync. "
        "Plain http:// is refused for any host that is not loopback.",
    ),
    th.Property(
        "requests_per_second",
        th.IntegerType,
        default=10,
        description="Ceiling for all requests of the run, shared by every stream (Loops allows 10/s per team).",
    ),
    th.Property(
        "max_concurrency",
        th.IntegerType,
        default=32,
        description="The most requests in flight at once. The level in use follows Loops' answer time (requests/s "
        "times answer time, plus headroom), so the rate limit stays full at any latency; this is its ceiling.",
    ),
    th.Property("timeout_seconds", th.IntegerType, default=30, description="Timeout of each request, in seconds."),
    th.Property(
        "max_retries",
        th.IntegerType,
        default=8,
        description="Retries of a transient failure (5xx, timeout, connection error) before the run fails; "
        "waits after a 429 do not use this budget.",
    ),
    th.Property(
        "retry_backoff_seconds",
        th.NumberType,
        default=1.0,
        description="First backoff step of a retry; it doubles each retry (with jitter), up to 60 s.",
    ),
    th.Property(
        "mappings",
        th.ArrayType(th.ObjectType(additional_properties=True)),
        description="Stream-to-action rules, first match wins: {stream (name or glob), action (upsert_contact, "
        "send_event, delete_contact), field specs...}. See the README's rule reference.",
    ),
    th.Property(
        "default_mappings",
        th.BooleanType,
        default=True,
        description="Append the built-in Segment rules (identifies, identify, users, tracks, track) after "
        "the rules in mappings.",
    ),
    th.Property(
        "unmapped_streams",
        th.StringType,
        default="error",
        allowed_values=["error", "skip"],
        description="What a stream that no rule matches gets: error (stop before any write, naming the stream "
        "and a rule to add) or skip (read and count its records, send nothing).",
    ),
    th.Property(
        "rejects_path",
        th.StringType,
        default="loops_rejects.jsonl",
        description="JSONL file (appended to) with one line per rejected record: stream, record, the request "
        "attempted, HTTP status, Loops' message and the reason.",
    ),
    th.Property(
        "ledger_url",
        th.StringType,
        secret=True,  # a PostgreSQL URL may hold a password
        default=DEFAULT_LEDGER_URL,
        description="SQLAlchemy URL of the sync ledger (what Loops has accepted): SQLite by default, a PostgreSQL URL "
        "(postgresql+psycopg://…, extra 'postgres') for runners without a persistent disk.",
    ),
    th.Property(
        "ledger_namespace",
        th.StringType,
        description="The ledger's name for the Loops team of api_key. Leave it out: target-loops tells teams apart by "
        "key and, for a new key, by the team's mailing list ids (unique across Loops). Set it when the run asks "
        "(a new key of a team it cannot verify), or to keep two ledgers apart on purpose.",
    ),
    th.Property(
        "fold_updates",
        th.BooleanType,
        default=True,
        description="Send a contact's pending update inside its next event's request (Loops' events/send takes "
        "contact properties): one request instead of two. Never folds subscribed; falls back to a separate update "
        "when the event is refused or was already delivered.",
    ),
    th.Property(
        "skip_unchanged",
        th.BooleanType,
        default=True,
        description="Skip contact upserts whose payload fingerprint matches the last one Loops accepted.",
    ),
    th.Property(
        "full_resync",
        th.BooleanType,
        default=False,
        description="Ignore contact fingerprints for this run (new ones are still recorded); delivered events are "
        "never re-sent.",
    ),
    th.Property(
        "checkpoint_seconds",
        th.IntegerType,
        default=60,
        description="At most this long between emitted STATE messages while input flows (the SDK alone waits "
        "5 minutes). Each checkpoint sends everything buffered first.",
    ),
    th.Property(
        "max_event_age_hours",
        th.IntegerType,
        description="Events whose timestamp is older are rejected with reason 'stale' instead of firing Loops "
        "workflows late (first backfills, catch-up after an outage).",
    ),
    th.Property(
        "coalesce_rows",
        th.IntegerType,
        default=20_000,
        description="Upserts and events are held across batches until a checkpoint or this many held records per "
        "stream, then sent contacts first: a contact spread over many batches gets one request.",
    ),
    th.Property(
        "unknown_properties",
        th.StringType,
        default="create",
        allowed_values=["create", "drop", "error"],
        description="A contact property the rules produce that the Loops team lacks: create it (type from the "
        "SCHEMA), drop it from every request (counted in the report), or error (stop before any write, listing them).",
    ),
    th.Property(
        "report_path",
        th.StringType,
        description="Write the run report (per stream and action: read, sent, unchanged, duplicates, rejected with "
        "reasons, created properties, elapsed, requests/s; the rejects file) as JSON to this file.",
    ),
    th.Property(
        "progress_seconds",
        th.IntegerType,
        default=10,
        description="At most this long between progress lines while sending (requests done/planned, rate, 429s, "
        "retries, rejects, ETA).",
    ),
    th.Property(
        "max_rejects",
        th.IntegerType,
        description="Exit non-zero when more records than this were rejected in the run (after everything else was "
        "delivered and checkpointed).",
    ),
    th.Property(
        "dry_run",
        th.BooleanType,
        default=False,
        description="Run the whole pipeline and print a plan (requests per stream, unchanged, rejects, properties to "
        "create, estimated duration); send nothing. No API key needed; with one, the preflight runs read-only.",
    ),
    th.Property(
        "dry_run_path",
        th.StringType,
        description="With dry_run: a JSONL file that gets one line per planned request "
        "(method, path, body, idempotency key).",
    ),
)


class TargetLoops(Target):
    """Singer target for Loops: upserts contacts, sends events and deletes contacts, as the rules say."""

    name = "target-loops"
    config_jsonschema = SETTINGS.to_dict()
    default_sink_class = LoopsSink
    #: msgspec parses Singer lines several times faster than the default reader, with the same types
    #: (numbers with a fraction as Decimal).
    message_reader_class = MsgSpecReader
    #: Take the lean record path where it is equivalent to the SDK's (a test runs both and compares requests).
    fast_record_path = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rules: list[Rule] = self._parse_rules()
        self._check_settings()
        self.run_id = uuid.uuid4().hex[:12]
        self.stats = RunStats()
        self.rejects = RejectsWriter(self.config.get("rejects_path") or "loops_rejects.jsonl", run_id=self.run_id)
        self.client: LoopsClient | None = None
        self.preflight = Preflight(None)
        self.progress = Progress(self.logger, interval=float(self.config.get("progress_seconds", 10)))
        self._started_at = dt.datetime.now(dt.timezone.utc)
        self.ledger: Ledger | None = None
        self.team: str | None = None  # the ledger's namespace for this Loops team
        self.outbox: Outbox | None = None
        #: What every sink shares: the sinks' one collaborator.
        self.services = SinkServices(
            rule_for_stream=self.rule_for_stream,
            preflight=self.preflight,
            rejects=self.rejects,
            stats=self.stats,
            event_cutoff=self.event_cutoff,
        )
        # The SDK drains everything (and writes STATE) when a record arrives after this age; make it our cadence.
        self._MAX_RECORD_AGE_IN_MINUTES = float(self.config.get("checkpoint_seconds", 60)) / 60
        self._plan_file: IO[str] | None = None
        self._plan_lock = threading.Lock()
        self._started = False
        self._finished = False
        self._last_state_written: dict | None = None
        self._with_metadata = bool(self.config.get("add_record_metadata"))

    # --- settings

    @property
    def dry_run(self) -> bool:
        """True when nothing may be sent."""
        return bool(self.config.get("dry_run"))

    def _parse_rules(self) -> list[Rule]:
        try:
            return parse_rules(self.config.get("mappings"), use_defaults=self.config.get("default_mappings", True))
        except RuleError as exc:
            raise ConfigValidationError(str(exc), errors=[str(exc)]) from None

    def _check_settings(self) -> None:
        errors: list[str] = []
        if not self.dry_run and not self.config.get("api_key"):
            errors.append("api_key is required (or set dry_run: true to plan without sending)")
        try:
            check_base_url(self.config.get("base_url") or DEFAULT_BASE_URL)
        except BaseUrlError as exc:
            errors.append(str(exc))
        if self.config.get("checkpoint_seconds") is not None and self.config["checkpoint_seconds"] < 0:
            errors.append(f"checkpoint_seconds must be 0 or more, not {self.config['checkpoint_seconds']}")
        if self.config.get("max_event_age_hours") is not None and self.config["max_event_age_hours"] < 1:
            errors.append(f"max_event_age_hours must be at least 1, not {self.config['max_event_age_hours']}")
        for name in ("requests_per_second", "max_concurrency", "timeout_seconds", "coalesce_rows", "progress_seconds"):
            if self.config.get(name) is not None and self.config[name] < 1:
                errors.append(f"{name} must be at least 1, not {self.config[name]}")
        if self.config.get("max_retries") is not None and self.config["max_retries"] < 0:
            errors.append(f"max_retries must be 0 or more, not {self.config['max_retries']}")
        if errors:
            raise ConfigValidationError(errors[0], errors=errors)

    def rule_for_stream(self, stream_name: str, schema: dict) -> Rule | None:
        """The stream's rule; an unmapped stream stops the run (before any write) unless told to skip it."""
        if self._dropped_by_stream_maps(stream_name):
            return None
        rule = match_rule(self.rules, stream_name)
        if rule is None and self.config.get("unmapped_streams", "error") == "error":
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
        config = self.config
        base_url = check_base_url(config.get("base_url") or DEFAULT_BASE_URL)
        ledger_url = config.get("ledger_url") or DEFAULT_LEDGER_URL
        self.ledger = Ledger(ledger_url, read_only=self.dry_run)
        self.logger.info("Ledger: %s", describe_url(ledger_url))
        team_name = None
        if config.get("api_key"):
            self.client = LoopsClient(
                ClientSettings(
                    base_url=base_url,
                    api_key=config["api_key"],
                    # The SDK parses config numbers as Decimal; the client does float arithmetic.
                    requests_per_second=float(config.get("requests_per_second", 10)),
                    max_concurrency=int(config.get("max_concurrency", 32)),
                    timeout_seconds=float(config.get("timeout_seconds", 30)),
                    max_retries=int(config.get("max_retries", 8)),
                    backoff_seconds=float(config.get("retry_backoff_seconds", 1.0)),
                )
            )
            self.client.listener = self.progress.note
            team_name = self.client.check_api_key()
            self.logger.info("Connected to Loops team %r at %s", team_name, base_url)
        self.preflight = Preflight(self.client, mode=config.get("unknown_properties") or "create", dry_run=self.dry_run)
        self.services.preflight = self.preflight
        self.preflight.load()
        if self.client is not None:
            resolve = self.ledger.resolve_team if not self.dry_run else self._known_or_resolved
            self.team = resolve(
                base_url=base_url,
                team_name=team_name,
                api_key=config["api_key"],
                list_ids=list(self.preflight.lists),
                explicit=config.get("ledger_namespace"),
            )
        elif self.dry_run:
            self.team = config.get("ledger_namespace") or self.ledger.known_team(base_url)
        if self.dry_run:
            path = config.get("dry_run_path")
            if path:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
                self._plan_file = Path(path).open("w", encoding="utf-8")  # noqa: SIM115 - closed in _finish
            self.logger.info(
                "Dry run: nothing will be sent to Loops and no STATE is emitted; the ledger is read only%s%s",
                "" if self.team else " (no team known yet: every row counts as new)",
                "" if self.client else "; no api_key, so the team's properties are not checked",
            )
        self.outbox = Outbox(
            settings=OutboxSettings(
                hold_rows=int(config.get("coalesce_rows", 20_000)),
                skip_unchanged=bool(config.get("skip_unchanged", True)) and not config.get("full_resync"),
                fold_updates=bool(config.get("fold_updates", True)),
                workers=int(config.get("max_concurrency", 32)) if not self.dry_run else 1,
            ),
            sender=self._plan_request if self.dry_run else self._send_request,
            counters=lambda stream: self.stats.for_stream(stream, None),
            rejects=self.rejects,
            ledger=self.ledger,
            team=self.team,
            check=getattr(self.client, "raise_if_fatal", None),
            progress=self.progress if not self.dry_run else None,
        )
        self.services.outbox = self.outbox

    def _known_or_resolved(self, **kwargs: Any) -> str | None:
        """A dry run with a key: the team's namespace if the ledger knows it (read only: never a new one)."""
        assert self.ledger is not None
        if kwargs.get("explicit"):
            return str(kwargs["explicit"])
        try:
            return self.ledger.resolve_team(**kwargs)
        except TeamIdentityError:
            return None

    def event_cutoff(self) -> dt.datetime | None:
        """Events that happened before this instant are stale (``max_event_age_hours``), or None."""
        hours = self.config.get("max_event_age_hours")
        if hours is None:
            return None
        return dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=float(hours))

    def _send_request(self, request: LoopsRequest) -> Outcome:
        assert self.client is not None, "the client is created before the first record"
        return self.client.send(request)

    def _plan_request(self, request: LoopsRequest) -> Outcome:
        """A dry run's "send": one line of the plan file, nothing on the wire."""
        if self._plan_file is not None:
            with self._plan_lock:
                self._plan_file.write(dumps(request.as_dict()) + "\n")
        return Outcome(OutcomeKind.PLANNED)

    def _process_record_message(self, message_dict: dict) -> None:
        """The SDK's record path, minus the steps an identity stream map makes no-ops.

        Profiling showed the SDK's per-record bookkeeping (copying the record for a map that changes nothing,
        re-looking up the map and the sink, re-checking settings) costing as much as the mapping itself. When the
        stream has no map of its own and no ``_sdc`` metadata is asked for, the same steps run in the same order
        without those lookups; anything else takes the SDK's own path.
        """
        stream = message_dict.get("stream")
        sink = self._sinks_active.get(stream)  # type: ignore[arg-type]
        record = message_dict.get("record")
        maps = self.mapper.stream_maps.get(stream) if sink is not None else None  # type: ignore[arg-type]
        if (
            sink is None
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
        context = sink._get_context(record)
        sink._remove_sdc_metadata_from_record(record)
        sink._validate_and_parse(record)
        record = sink.preprocess_record(record, context)
        sink._singer_validate_message(record)
        sink.tally_record_read()
        sink.process_record(record, context)
        sink.record_counter_metric.increment()
        sink._after_process_record(context)
        if sink.is_full:
            self.logger.info("Target sink for '%s' is full. Draining...", stream)
            self.drain_one(sink)
        self._handle_max_record_age()

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
            super().process_endofpipe()
            completed = True
        finally:
            self._finish(completed=completed)
        limit = self.config.get("max_rejects")
        if limit is not None and self.rejects.count > limit:
            raise MaxRejectsExceeded(
                f"{self.rejects.count} records were rejected, more than max_rejects ({limit}); everything else was "
                f"delivered and checkpointed. See {self.rejects.path}."
            )

    def _finish(self, *, completed: bool = False) -> None:
        if self._finished:
            return
        self._finished = True
        streams = [s for s in self.stats.streams.values() if s.action is not None or s.read]
        for stats in streams:
            self.logger.info("Summary: %s", stats.summary_line())
        if self.preflight.created:
            verb = "would create" if self.dry_run else "created"
            self.logger.info(
                "Properties %s: %s", verb, ", ".join(f"{k} ({v})" for k, v in self.preflight.created.items())
            )
        if self.preflight.dropped:
            self.logger.warning("Properties dropped: %s", dict(self.preflight.dropped))
        if self.preflight.unknown_lists:
            self.logger.warning("Unknown mailing lists left out: %s", dict(self.preflight.unknown_lists))
        if self.dry_run:
            for line in self._plan_lines(streams):
                self.logger.info("%s", line)
        if self.rejects.count:
            self.logger.warning("%d record(s) rejected this run: see %s", self.rejects.count, self.rejects.path)
        self.rejects.close()
        report = self._report(streams, completed)
        self.logger.info("Run report: %s", dumps(report))
        if self.config.get("report_path"):
            path = Path(self.config["report_path"])
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        if self._plan_file is not None:
            self._plan_file.close()
        if self.outbox is not None:
            self.outbox.close()
        if self.client is not None:
            self.client.close()
        if self.ledger is not None:
            self.ledger.close()

    def _plan_lines(self, streams: list[StreamStats]) -> list[str]:
        """The dry run's plan: what a real run would send, and how long that takes at the configured rate."""
        rate = float(self.config.get("requests_per_second", 10))
        lines = ["Plan (dry run):"]
        for st in streams:
            reasons = ", ".join(f"{k} {v}" for k, v in sorted(st.reasons.items())) or "none"
            lines.append(
                f"  {st.stream} → {st.action or 'unmapped'}: {st.planned:,} requests; unchanged {st.unchanged:,}, "
                f"coalesced {st.coalesced:,}, duplicate events {st.duplicates:,}, rejected {st.rejected:,} ({reasons})"
            )
        if self.preflight.created:
            lines.append(
                "  properties to create: " + ", ".join(f"{k} ({v})" for k, v in self.preflight.created.items())
            )
        total = sum(st.planned for st in streams)
        lines.append(f"  {total:,} requests at {rate:g}/s ≈ {human_duration(total / rate)}")
        return lines

    def _report(self, streams: list[StreamStats], completed: bool) -> dict[str, Any]:
        """The run report (also written to ``report_path``)."""
        finished = dt.datetime.now(dt.timezone.utc)
        rejects_lines = 0
        if self.rejects.path.exists():
            with self.rejects.path.open("rb") as handle:
                rejects_lines = sum(1 for _ in handle)
        return {
            "started_at": self._started_at.isoformat(timespec="seconds"),
            "finished_at": finished.isoformat(timespec="seconds"),
            "elapsed_seconds": round((finished - self._started_at).total_seconds(), 3),
            "completed": completed,
            "dry_run": self.dry_run,
            "streams": [stream_report(st) for st in streams],
            "properties": {
                "created" if not self.dry_run else "would_create": self.preflight.created,
                "dropped": dict(self.preflight.dropped),
                "unknown_mailing_lists": dict(self.preflight.unknown_lists),
            },
            "rejects": {"path": str(self.rejects.path), "this_run": self.rejects.count, "lines": rejects_lines},
            "max_rejects": self.config.get("max_rejects"),
        }

    def _write_state_message(self, state: dict) -> None:
        """Emit a STATE only when it is true and new: never in a dry run (nothing was sent, so a STATE would move
        the tap's bookmark past rows Loops never got), never twice the same (frequent checkpoints repeat it)."""
        if self.dry_run or state == self._last_state_written:
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
        """SIGTERM/SIGINT: checkpoint only what is true.

        Between flushes, the SDK's handler drains every sink and writes STATE (all of it delivered). During a
        flush, re-entering the drain (the SDK's behaviour) could write a STATE that covers requests still in
        flight; instead the run stops here: in-flight requests finish, nothing new starts, no STATE is written,
        and the next run replays from the last STATE it did emit.
        """
        if self.outbox is not None and self.outbox.sending:
            self.logger.warning(
                "Received signal %d while sending: stopping without a new STATE; "
                "the next run replays from the last STATE emitted",
                signum,
            )
            if self.client is not None:
                self.client.abort()
            self._finish()
            raise SystemExit(128 + signum)
        try:
            super()._handle_termination(signum, frame)  # drains everything, writes STATE, exits 0
        finally:
            self._finish()

    # --- CLI

    @classmethod
    def invoke(cls, *args: Any, **kwargs: Any) -> None:
        """Run the target; a user error ends the run with one clear line and exit status 1."""
        # Held records (coalesce_rows) are many long-lived containers; CPython's default thresholds would walk
        # them over and over (measured: a third of a dry run's time). Collect young objects far less often,
        # and leave everything loaded at start-up out of collections altogether.
        gc.freeze()
        gc.set_threshold(50_000, 50, 100)
        try:
            super().invoke(*args, **kwargs)
        except USER_ERRORS as exc:
            cls.logger.error("target-loops: %s", exc)
            sys.exit(1)


logging.getLogger("urllib3").setLevel(logging.WARNING)

if __name__ == "__main__":
    TargetLoops.cli()
