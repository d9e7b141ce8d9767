"""Finding and reading the files of a Segment archive, on the local disk or in cloud storage (fsspec).

Segment's S3 / GCS destinations write ``segment-logs/<source-id>/<received-day as epoch ms>/<unix-ts>.<hash>.gz``:
gzipped JSON lines, every call type mixed, never rewritten. The tap reads them in a stable order, received-day first
and file name second, so that a run (and a resumed run) always meets the files in the same sequence; the name starts
with the copy's unix time, so within a day this is also the order Segment wrote them in.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gzip
import logging
import posixpath
import shutil
import tempfile
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import IO, Any, cast

import fsspec
from fsspec.implementations.local import LocalFileSystem

#: What a folder contributes: Segment's ``.gz`` files and plain JSON lines (``.json.gz`` etc. end with ``.gz``).
EXTENSIONS = (".gz", ".json", ".jsonl")
DAY_MS = 86_400_000
#: Read size: big enough that splitting lines, not I/O calls, dominates; small enough to stay cheap in memory.
CHUNK = 1 << 20
#: A gzip file's decompressed bytes are held in memory up to this size, on disk past it, until its CRC is checked.
SPOOL_BYTES = 64 << 20
_GLOB_CHARS = frozenset("*?[")

logger = logging.getLogger("tap-segment-archive")


class ArchiveError(Exception):
    """A configured path or a file that cannot be read (a typo is better reported than silently read as empty; a
    damaged file is named, and the run stops before any STATE covers what was not read)."""


@dataclass(frozen=True, order=True)
class ArchiveFile:
    """One file of the archive, with what orders it and what identifies it in the state.

    ``day_ms`` is the received-day of Segment's layout (the parent folder, epoch milliseconds), or None for a
    file outside that layout; ``folder`` is the URL of its parent folder (the state's key for the day) and ``name``
    its base name (the state's entry for the file).
    """

    day_ms: int
    name: str
    url: str
    folder: str
    dated: bool

    @property
    def gzipped(self) -> bool:
        return self.name.endswith(".gz")

    @property
    def day(self) -> str:
        """The received-day as a date, for logs (``-`` outside Segment's layout)."""
        if not self.dated:
            return "-"
        return dt.datetime.fromtimestamp(self.day_ms / 1000, tz=dt.timezone.utc).date().isoformat()


def received_day(folder_name: str) -> int | None:
    """Segment's day folder (epoch ms, 13 digits; 10 digits taken as seconds) → epoch ms, else None."""
    if not folder_name.isdigit():
        return None
    value = int(folder_name)
    if len(folder_name) <= 10:
        value *= 1000
    return value


def start_day_ms(start_date: str | None) -> int | None:
    """``start_date`` → the epoch ms of its UTC day: received-days before that day are skipped.

    The whole day of ``start_date`` is kept, because a day folder holds the calls of every hour of that day.
    """
    if not start_date:
        return None
    text = start_date.strip()
    moment = dt.datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    day = moment.astimezone(dt.timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    return int(day.timestamp() * 1000)


def storage_options_for(protocol: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """fsspec options of one protocol: ``storage_options[<protocol>]`` plus the ``s3_endpoint_url`` shortcut.

    Credentials are not settings: s3fs and gcsfs find them the usual way (AWS_* / GOOGLE_APPLICATION_CREDENTIALS
    environment, ~/.aws profiles with AWS_PROFILE, instance roles, gcloud's application default credentials).
    """
    every = config.get("storage_options") or {}
    options: dict[str, Any] = dict(every.get(protocol) or {})
    if protocol in ("s3", "s3a") and config.get("s3_endpoint_url"):
        options.setdefault("endpoint_url", config["s3_endpoint_url"])
    return options


class Archive:
    """The files under the configured ``paths``, listed and opened through fsspec."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.config = config

    def _filesystem(self, path: str) -> tuple[Any, str]:
        """fsspec's filesystem for ``path`` (instances are cached by fsspec) and the path inside it."""
        return fsspec.core.url_to_fs(path, **storage_options_for(_protocol(path), self.config))

    def list_files(self, paths: Iterable[str]) -> list[ArchiveFile]:
        """Every file under ``paths`` (folders recursively, globs expanded), deduplicated, in reading order."""
        found: dict[str, ArchiveFile] = {}
        for path in paths:
            try:
                fs, stripped = self._filesystem(path)
                members = self._expand(fs, path, stripped)
            except ArchiveError:
                raise
            except Exception as exc:  # botocore, gcsfs, aiohttp...: each its own family of errors
                raise ArchiveError(_unlistable(path, exc)) from None
            for member in members:
                file = self._describe(fs, member)
                found.setdefault(file.url, file)
        return sorted(found.values())

    def _expand(self, fs: Any, path: str, stripped: str) -> list[str]:
        local = isinstance(fs, LocalFileSystem)
        if any(ch in _GLOB_CHARS for ch in stripped):
            matches = fs.glob(stripped)
            files: list[str] = []
            for match in matches:
                if fs.isdir(match):
                    files.extend(self._find(fs, match))
                else:
                    files.append(match)  # a glob names files: read whatever their extension
            if not files:
                logger.warning("paths: %s matches no file", path)
            return files
        if fs.isdir(stripped):
            files = self._find(fs, stripped)
            if not files:
                logger.warning("paths: no *.gz, *.json or *.jsonl file under %s", path)
            return files
        if fs.isfile(stripped):
            return [stripped]
        if local:
            raise ArchiveError(
                f"paths: {path} does not exist: fix paths in the config (a folder, a file, a glob, s3://bucket/prefix "
                "or gs://bucket/prefix)"
            )
        # A bucket that does not exist or cannot be read lists as empty in s3fs/gcsfs: ask for it, to say why.
        fs.ls(stripped.split("/", 1)[0], refresh=True)
        # An empty bucket prefix is normal before Segment's first copy: read nothing, say so.
        logger.warning("paths: nothing under %s (yet)", path)
        return []

    @staticmethod
    def _find(fs: Any, folder: str) -> list[str]:
        """The archive files under ``folder``; the others (a README, a manifest, ``.DS_Store``) are counted in one
        line, so that a folder of the wrong kind is noticed without a warning per file."""
        return _archive_files(fs.find(folder), folder)

    @staticmethod
    def _describe(fs: Any, member: str) -> ArchiveFile:
        local = isinstance(fs, LocalFileSystem)
        url = member if local else fs.unstrip_protocol(member)
        folder, name = posixpath.split(url)
        day = received_day(posixpath.basename(folder))
        dated = day is not None
        return ArchiveFile(day_ms=day if day is not None else -1, name=name, url=url, folder=folder, dated=dated)

    @contextlib.contextmanager
    def open(self, file: ArchiveFile) -> Iterator[IO[bytes]]:
        """The file's bytes, decompressed when its name ends with ``.gz``."""
        fs, stripped = self._filesystem(file.url)
        with contextlib.ExitStack() as stack:
            if isinstance(fs, LocalFileSystem):
                raw: IO[bytes] = stack.enter_context(open(stripped, "rb"))  # the builtin: no fsspec layer per read
            else:
                raw = stack.enter_context(fs.open(stripped, "rb", block_size=8 * CHUNK))
            if file.gzipped:
                unzipped = gzip.GzipFile(fileobj=raw, mode="rb")  # by name, as Segment names them
                stack.callback(unzipped.close)
                yield cast(IO[bytes], unzipped)
            else:
                yield raw

    def lines(self, file: ArchiveFile) -> Iterator[bytes]:
        """The lines of ``file`` (``iter_lines``), decompressed when its name ends with ``.gz``.

        A file that cannot be read to its end (a truncated copy, a file named ``.gz`` that is not gzip, damaged
        data, an I/O error) raises ``ArchiveError`` naming it, the last line read and what to do, instead of what
        gzip raised (``EOFError`` ends a click command with a bare "Aborted!"). Only reading is caught here: an
        error of the caller between two lines (a closed stdout) is its own.

        A gzip file is decompressed whole (into memory, or a temporary file past ``SPOOL_BYTES``) before its first
        line is given: gzip checks its data only at the end, and damaged data can decode into lines that were never
        written (measured: mangled messageIds that would have been sent to Loops as new events).
        """
        read = 0
        try:
            with self.open(file) as stream, contextlib.ExitStack() as stack:
                source: IO[bytes] = stream
                if file.gzipped:
                    source = stack.enter_context(tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES))
                    shutil.copyfileobj(stream, source, CHUNK)  # raises here, before any line, if the data is bad
                    source.seek(0)
                for line in iter_lines(source):
                    read += 1
                    yield line
        except (EOFError, zlib.error, OSError) as exc:
            raise ArchiveError(_unreadable(file, exc, read)) from None


def _archive_files(found: list[str], where: str) -> list[str]:
    """The archive files among ``found``; the others (a README, a manifest, ``.DS_Store``) counted in one line."""
    files = [p for p in found if p.endswith(EXTENSIONS)]
    others = [p for p in found if not p.endswith(EXTENSIONS)]
    if others:
        logger.info(
            "paths: %d file%s under %s not *.gz, *.json or *.jsonl, left out (e.g. %s)",
            len(others),
            "" if len(others) == 1 else "s",
            where,
            posixpath.basename(others[0]),
        )
    return files


def _unlistable(path: str, error: BaseException) -> str:
    """One line: which configured path could not be listed, the cause (the last line of the library's message),
    and what to check."""
    cause = " ".join(str(error).split()) or type(error).__name__
    if len(cause) > 300:
        cause = cause[:300] + "..."
    protocol = _protocol(path)
    if protocol in ("s3", "s3a"):
        check = (
            "check the bucket name in paths, the credentials (AWS_PROFILE, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
            "an instance role) and, for an S3-compatible server, s3_endpoint_url"
        )
    elif protocol in ("gs", "gcs"):
        check = (
            "check the bucket name in paths and the credentials (GOOGLE_APPLICATION_CREDENTIALS, "
            "storage_options.gs.token)"
        )
    else:
        check = "check paths and storage_options"
    return f"paths: {path} cannot be listed ({type(error).__name__}: {cause}): {check}"


def _unreadable(file: ArchiveFile, error: BaseException, lines_read: int) -> str:
    """One line: which file, what is wrong with it, where reading stopped, what to do."""
    if isinstance(error, EOFError):
        what = "is truncated (its gzip data ends early)"
    elif isinstance(error, gzip.BadGzipFile) and str(error).startswith("Not a gzipped file"):
        what = "is not gzip data, although its name ends with .gz"
    elif isinstance(error, zlib.error | gzip.BadGzipFile):
        what = f"is corrupt (gzip: {error})"
    else:
        what = f"cannot be read ({error})"
    where = f"after line {lines_read:,}" if lines_read else "before its first line"
    fix = (
        "rename it if it holds plain JSON lines, or move it out of paths"
        if "not gzip data" in what
        else "replace it with an intact copy, or move it out of paths"
    )
    return (
        f"{file.url} {what}: reading stopped {where}, and no STATE covers the rest. To go on, {fix}, and run again: "
        "the run resumes from its last STATE"
    )


def _protocol(url: str) -> str:
    return url.partition("://")[0] if "://" in url else "file"


def iter_lines(stream: IO[bytes]) -> Iterator[bytes]:
    """The lines of ``stream`` without their ``\\n``, read in large chunks (much faster than ``readline``).

    A last line without a newline is still a line; a file ending with ``\\n`` has no empty line after it, so line
    numbers are the same whichever way the file ends.
    """
    rest = b""
    read = stream.read
    while True:
        chunk = read(CHUNK)
        if not chunk:
            break
        lines = (rest + chunk).split(b"\n") if rest else chunk.split(b"\n")
        rest = lines.pop()
        yield from lines
    if rest:
        yield rest
