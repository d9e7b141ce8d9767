"""``tap-segment-archive``: Segment's S3 / GCS archive (or any folder of Segment JSON lines) as Singer streams.

The archive is one sequence of files whose lines mix every call type, so the tap reads it once, in order, and
routes each line to the stream of its ``type``; the SDK's own sync (one stream after the other, each with its own
bookmark) would read the archive six times and could not say "line 40,000 of file X" as one position. The sync is
therefore the tap's own (``sync_all``), built on the SDK's streams, schemas, catalog, stream maps and CLI.

A record is the line Segment wrote, byte for byte: the tap checks that the line is a JSON object with a ``type`` and
a ``messageId``, holding no number JavaScript cannot read and no nesting deeper than ``target_loops.limits.MAX_DEPTH``
(what the target could only reject; checked cheaply, ``limits.line_problem``), and then writes the line itself
inside the RECORD message, without decoding it into Python objects and encoding it again. Nothing can be dropped or
changed on the way (no schema conformance, no float or date round-trips), and it is several times faster than the
target that reads it. Stream maps, when configured, need the record as a dict: then (and only then) the line is
decoded and goes through the SDK's mappers. With ``batch_config`` the same lines go to batch files
named in BATCH messages instead (``batches.py``), each before the STATE covering it.
"""

from __future__ import annotations

import collections
import copy
import io
import itertools
import logging
import sys
import time
from collections.abc import Callable, Iterator
from types import FrameType
from typing import IO, Any, cast

import msgspec
from singer_sdk import Tap
from singer_sdk import typing as th
from singer_sdk.exceptions import ConfigValidationError
from singer_sdk.mapper import SameRecordTransform
from singer_sdk.singerlib.encoding.simple import Message, RecordMessage

from tap_segment_archive.archive import Archive, ArchiveError, ArchiveFile, start_day_ms
from tap_segment_archive.batches import Batches, batch_config_problems
from tap_segment_archive.config import config_problems, state_file_problem
from tap_segment_archive.ledger import BOOKMARK, Ledger, bookmark_of
from tap_segment_archive.streams import CALL_TYPES, CallStream
from target_loops.limits import TOO_DEEP, Problem, line_problem
from target_loops.settings import config_file_problem

#: Bad lines logged one by one per run; after that only counted (a corrupt file must not flood the log).
MAX_LOGGED_BAD_LINES = 200


class _Envelope(msgspec.Struct):
    """The two keys the tap needs from a line; msgspec skips (and still syntax-checks) everything else."""

    type: Any = None
    messageId: Any = None  # Segment's key


_decode_envelope = msgspec.json.Decoder(_Envelope).decode
_decode = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder(enc_hook=str).encode


class _Stop(Exception):
    """SIGTERM/SIGINT arrived: stop at the next checkpoint, with an exact STATE."""


class Counters:
    """What a run read, for the summary line (and the tests)."""

    def __init__(self) -> None:
        self.records: collections.Counter[str] = collections.Counter()
        self.deselected: collections.Counter[str] = collections.Counter()
        self.unknown: collections.Counter[str] = collections.Counter()
        self.bad: collections.Counter[str] = collections.Counter()
        self.files_read = 0
        self.files_done_before = 0
        self.files_before_start = 0
        self.lines = 0
        self.logged_bad = 0

    def summary(self) -> str:
        records = ", ".join(f"{name} {self.records[name]:,}" for name in CALL_TYPES)
        parts = [
            f"files read {self.files_read:,} (already read before {self.files_done_before:,}, "
            f"received before start_date {self.files_before_start:,})",
            f"lines {self.lines:,}",
            f"records: {records}",
        ]
        if self.deselected:
            parts.append("skipped (type not selected): " + ", ".join(f"{k} {v:,}" for k, v in self.deselected.items()))
        if self.unknown:
            parts.append("skipped (unknown type): " + ", ".join(f"{k!r} {v:,}" for k, v in self.unknown.items()))
        if self.bad:
            parts.append("bad lines: " + ", ".join(f"{k} {v:,}" for k, v in self.bad.items()))
        return "; ".join(parts)


class TapSegmentArchive(Tap):
    """Segment's archive (``segment-logs/<source>/<received-day>/<ts>.<hash>.gz``) → identify, track, page, screen,
    group and alias streams, incrementally, resumable within a file."""

    name = "tap-segment-archive"
    package_name = "target-loops"  # the distribution that ships this tap (for --version / --about)

    config_jsonschema = th.PropertiesList(
        th.Property(
            "paths",
            th.ArrayType(th.StringType),
            required=True,
            title="Paths",
            description=(
                "Where the archive is: local folders or globs, s3://bucket/prefix, gs://bucket/prefix. A folder "
                "means every *.gz, *.json and *.jsonl file under it, recursively. Files are read by received-day "
                "(Segment's day folder), then by name."
            ),
        ),
        th.Property(
            "start_date",
            th.DateTimeType,
            title="Start date",
            description=(
                "Skip the received-days (Segment's day folders) before this date's UTC day. Files outside "
                "Segment's layout (no day folder) are always read."
            ),
        ),
        th.Property(
            "types",
            th.ArrayType(th.StringType(allowed_values=list(CALL_TYPES))),
            default=list(CALL_TYPES),
            title="Call types",
            description="The call types to emit (identify, track, page, screen, group, alias); the rest are counted.",
        ),
        th.Property(
            "state_interval_lines",
            th.IntegerType(minimum=1, maximum=10_000_000),
            default=5000,
            title="STATE interval (lines)",
            description=(
                "Emit a STATE every this many lines inside a file (and at the end of every file): a run killed "
                "mid-file resumes from the last one, re-reading at most this many lines."
            ),
        ),
        th.Property(
            "settle_days",
            th.IntegerType(minimum=0, maximum=3650),
            default=7,
            title="Settle days",
            description=(
                "Day folders this many days older than the archive's newest day are kept in the state as 'every "
                "file up to name X' instead of a list of names, so the state stays small. Segment names files by "
                "copy time, so a file arriving later in an old day sorts after X and is still read."
            ),
        ),
        th.Property(
            "s3_endpoint_url",
            th.StringType,
            title="S3 endpoint URL",
            description=(
                "For S3-compatible servers (MinIO, Ceph, moto): the endpoint of s3:// paths. Credentials come "
                "from the usual AWS environment variables, profiles (AWS_PROFILE) or instance role."
            ),
        ),
        th.Property(
            "storage_options",
            th.ObjectType(additional_properties=True),
            title="Storage options",
            description=(
                'fsspec options per protocol, e.g. {"s3": {"profile": "segment", "requester_pays": true}, '
                '"gs": {"project": "my-project", "token": "/path/key.json"}}.'
            ),
        ),
    ).to_dict()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._reading = False
        self._stopping = False
        self.counters = Counters()
        super().__init__(*args, **kwargs)

    @classmethod
    def accepted_settings(cls) -> frozenset[str]:
        """Every top-level key a config may hold: the tap's settings and the SDK's own for its capabilities."""
        schema = copy.deepcopy(cls.config_jsonschema)
        cls.append_builtin_config(schema)
        return frozenset(schema["properties"])

    def _validate_config(self, *, raise_errors: bool = True) -> list[str]:
        """The SDK's schema check, plus unknown keys, values of the right type that cannot work, and what this
        tap's batch mode cannot do (parquet), all listed together (``config.py``)."""
        problems = config_problems(self.config, self.accepted_settings())
        problems += batch_config_problems(self.config.get("batch_config"))
        try:
            errors = super()._validate_config(raise_errors=raise_errors)
        except ConfigValidationError as exc:
            exc.errors.extend(problems)
            raise
        if problems and raise_errors:
            raise ConfigValidationError("Config validation failed", errors=problems)
        return errors + problems

    def discover_streams(self) -> list[CallStream]:
        """One stream per Segment call type (the names target-loops' built-in rules expect)."""
        return [CallStream(self, call_type) for call_type in CALL_TYPES]

    # --- reading

    def _files(self) -> list[ArchiveFile]:
        return Archive(self.config).list_files(self.config["paths"])

    def iter_calls(self, call_type: str) -> Iterator[dict[str, Any]]:
        """Every call of ``call_type`` in the archive, decoded, without state (``CallStream.get_records``)."""
        archive = Archive(self.config)
        start = start_day_ms(self.config.get("start_date"))
        for file in archive.list_files(self.config["paths"]):
            if start is not None and file.dated and file.day_ms < start:
                continue
            for line in archive.lines(file):
                if line_problem(line) is not None:
                    continue
                try:
                    record = _decode(line)
                except (msgspec.DecodeError, RecursionError):
                    continue
                if isinstance(record, dict) and record.get("type") == call_type:
                    yield record

    # --- the sync

    def sync_all(self) -> None:  # type: ignore[misc]  # final in the SDK: see the module docstring for why
        """Read the archive once, in order, emitting each line to its call type's stream, with STATE as it goes."""
        config = self.config
        types = set(config.get("types") or CALL_TYPES)
        streams: dict[str, CallStream] = {
            name: stream  # type: ignore[misc]
            for name, stream in self.streams.items()
            if name in types and stream.selected
        }
        archive = Archive(config)
        files = archive.list_files(config["paths"])
        ledger = Ledger(bookmark_of(self.state), settle_days=int(config.get("settle_days", 7)))
        newest_day = max((file.day_ms for file in files if file.dated), default=-1)
        ledger.compact(files, newest_day)
        start = start_day_ms(config.get("start_date"))
        interval = int(config.get("state_interval_lines") or 5000)
        counters = self.counters = Counters()
        by_folder: dict[str, list[ArchiveFile]] = collections.defaultdict(list)
        for file in files:
            by_folder[file.folder].append(file)

        sys.stdout.flush()  # anything the SDK printed goes first; from here on everything goes through `out`
        out: IO[bytes] = sys.stdout.buffer
        write = out.write

        def emit(message: Message) -> None:
            write(_encode(message.to_dict()) + b"\n")

        # Batch mode: rows go to files, each named by a BATCH message before the next STATE.
        batches = None
        if config.get("batch_config"):
            batches = Batches(config["batch_config"], self.name, lambda message: write(_encode(message) + b"\n"))

        def emit_state() -> None:
            if batches is not None:
                batches.close_all()
            value = {"bookmarks": {BOOKMARK: ledger.value()}}
            self._state = cast(Any, value)  # what the SDK's SIGTERM handler would print
            write(b'{"type":"STATE","value":' + _encode(value) + b"}\n")
            out.flush()

        # Raw lines go out as they are for streams without maps; mapped streams get decoded records.
        fast: dict[str, bytes] = {}
        mapped: dict[str, CallStream] = {}
        for name, stream in streams.items():
            for message in stream._generate_schema_messages():
                emit(message)
            maps = stream.stream_maps
            identity = (
                len(maps) == 1
                and type(maps[0]) is SameRecordTransform
                and maps[0].stream_alias == name
                and not maps[0].flattening_enabled
            )
            if identity:
                fast[name] = b'{"type":"RECORD","stream":' + _encode(name) + b',"record":'
            else:
                mapped[name] = stream
        emit_state()
        self.logger.info(
            "%d files under %s; streams %s%s",
            len(files),
            ", ".join(config["paths"]),
            ", ".join(streams) or "(none selected)",
            f" (through stream maps: {', '.join(mapped)})" if mapped else "",
        )

        def bad(file: ArchiveFile, lineno: int, reason: str, line: bytes, detail: str) -> None:
            counters.bad[reason] += 1
            if counters.logged_bad < MAX_LOGGED_BAD_LINES:
                counters.logged_bad += 1
                said = f"{reason} ({detail})" if detail else reason
                self.logger.warning("%s line %d: %s, skipped: %.200r", file.url, lineno, said, line[:200])
            elif counters.logged_bad == MAX_LOGGED_BAD_LINES:
                counters.logged_bad += 1
                self.logger.warning("more bad lines: only counted from now on (see the summary)")

        def write_mapped(stream: CallStream, line: bytes) -> None:
            record = _decode(line)
            for stream_map in stream.stream_maps:
                result = stream_map.transform(record)
                if result is None:
                    continue
                if batches is not None:
                    batches.add(stream_map.stream_alias, _encode(result))
                else:
                    emit(RecordMessage(stream=stream_map.stream_alias, record=result))

        started = time.monotonic()
        self._reading = True
        try:
            for file in files:
                if ledger.is_done(file):
                    counters.files_done_before += 1
                    continue
                if start is not None and file.dated and file.day_ms < start:
                    counters.files_before_start += 1
                    continue
                if self._stopping:
                    raise _Stop
                self._read_file(
                    archive, file, ledger, interval, fast, mapped, counters, bad, write_mapped, emit_state, batches
                )
                counters.files_read += 1
                ledger.finish(file)
                ledger.compact(by_folder[file.folder], newest_day)
                emit_state()
        except _Stop:
            self.logger.info("Stopping on request; the last STATE is exact: a new run resumes there.")
        finally:
            self._reading = False
            out.flush()
        elapsed = time.monotonic() - started
        total = sum(counters.records.values())
        self.logger.info(
            "tap-segment-archive: %s; %.1fs, %s records/s",
            counters.summary(),
            elapsed,
            f"{total / elapsed:,.0f}" if elapsed > 0 else "-",
        )

    def _read_file(
        self,
        archive: Archive,
        file: ArchiveFile,
        ledger: Ledger,
        interval: int,
        fast: dict[str, bytes],
        mapped: dict[str, CallStream],
        counters: Counters,
        bad: Callable[[ArchiveFile, int, str, bytes, str], None],
        write_mapped: Callable[[CallStream, bytes], None],
        emit_state: Callable[[], None],
        batches: Batches | None = None,
    ) -> None:
        """Emit the lines of one file after those a previous run emitted; STATE every ``interval`` lines."""
        skip = ledger.resume_line(file)
        if skip:
            self.logger.info("%s: resuming after line %d", file.url, skip)
        else:
            self.logger.debug("%s (received %s)", file.url, file.day)
        write = sys.stdout.buffer.write
        decode = _decode_envelope
        records = counters.records
        lineno = skip
        checkpoint = skip + interval
        for line in itertools.islice(archive.lines(file), skip, None):
            lineno += 1
            if lineno >= checkpoint:
                # Before this line: the STATE covers exactly the lines already written.
                ledger.progress(file, lineno - 1)
                emit_state()
                checkpoint = lineno + interval
                if self._stopping:
                    raise _Stop
            line = line.strip()
            if not line:
                continue
            try:
                envelope = decode(line)
            except msgspec.ValidationError:
                bad(file, lineno, "not a JSON object", line, "")
                continue
            except msgspec.DecodeError:
                bad(file, lineno, "not JSON", line, "")
                continue
            except RecursionError:
                too_deep = Problem(TOO_DEEP, "")
                bad(file, lineno, too_deep.label, line, too_deep.message)
                continue
            kind = envelope.type
            if not isinstance(kind, str) or not kind:
                bad(file, lineno, "no type", line, "")
                continue
            prefix = fast.get(kind)
            stream = None
            if prefix is None:
                stream = mapped.get(kind)
                if stream is None:
                    if kind in CALL_TYPES:
                        counters.deselected[kind] += 1
                    else:
                        if kind not in counters.unknown:
                            self.logger.warning("%s line %d: unknown call type %r: counted, skipped", file.url,
                                                lineno, kind)  # fmt: skip
                        counters.unknown[kind] += 1
                    continue
            if not isinstance(envelope.messageId, str) or not envelope.messageId:
                bad(file, lineno, "no messageId", line, "")
                continue
            if not line.isascii():
                try:
                    line.decode("utf-8")
                except UnicodeDecodeError:
                    bad(file, lineno, "not UTF-8", line, "")
                    continue
            found = line_problem(line)
            if found is not None:  # what the target could only reject: a number beyond a double, deep nesting
                bad(file, lineno, found.label, line, found.message)
                continue
            if prefix is not None:
                if batches is None:
                    write(prefix + line + b"}\n")
                else:
                    batches.add(kind, line)
            elif stream is not None:
                write_mapped(stream, line)
            records[kind] += 1
        counters.lines += lineno - skip

    # --- the command

    @classmethod
    def cb_config(cls, ctx: Any, param: Any, value: tuple[str, ...]) -> Any:
        """``--config`` files: one that is missing or not a JSON object is one line naming it, exit status 1."""
        for path in value:
            problem = config_file_problem(path) if path != "ENV" else None
            if problem is not None:
                cls.logger.error("%s: %s", cls.name, problem)
                ctx.exit(1)
        return super().cb_config(ctx, param, value)

    @classmethod
    def invoke(cls, *args: Any, **kwargs: Any) -> None:
        """Run the tap; a path, file or ``--state`` that cannot be read ends the run with one line naming it and the
        fix, exit status 1."""
        state = kwargs.get("state")
        if state is not None:
            name = getattr(state, "name", "--state")
            text = state.read()
            problem = state_file_problem(name, text)
            if problem is not None:
                cls.logger.error("%s: %s", cls.name, problem)
                sys.exit(1)
            kwargs["state"] = io.StringIO(text)
        try:
            super().invoke(*args, **kwargs)
        except ArchiveError as exc:
            cls.logger.error("tap-segment-archive: %s", exc)
            sys.exit(1)

    # --- signals

    def _handle_termination(self, signum: int, frame: FrameType | None) -> None:
        """SIGTERM/SIGINT while reading: finish the current line, emit an exact STATE at the next checkpoint, exit 0.

        The SDK's handler would print ``self.state`` and exit at once, from whatever line the signal interrupted.
        """
        if self._reading:
            self._stopping = True
            return
        super()._handle_termination(signum, frame)


def main() -> None:
    """The console script."""
    logging.getLogger("fsspec").setLevel(logging.WARNING)
    TapSegmentArchive.cli()
