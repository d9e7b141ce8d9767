"""BATCH input: the rows of the files a BATCH message names, read one at a time.

A singer-sdk tap in batch mode (``batch_config`` in its config) writes a stream's records to JSON Lines files and
emits ``{"type": "BATCH", "stream": ..., "encoding": {"format": "jsonl", "compression": "gzip"}, "manifest": [URL,
...]}`` instead of RECORD messages. The SDK's own reader (``Sink.process_batch_files``) loads a whole file into a list
and hands it to the sink's ``process_batch``, past the record path; here the rows are yielded as they are read, so
that the target sends each one through the path of a RECORD line and memory stays flat whatever the file's size.

Only what the file says is trusted: gzip is recognised by its magic bytes, not by the message (singer-sdk's JSONL
writer gzips even when its ``compression`` says ``none``). A row is decoded exactly as a RECORD line's ``record`` is
(msgspec, numbers with a fraction as ``Decimal``), so a row gives the same requests either way. A row that a RECORD
line would have had rejected alone (``NaN``, bytes that are not UTF-8) is yielded as an ``UnreadableRow``; anything
that leaves the rest of the file in doubt (missing, unreadable, corrupt or truncated gzip, a row that is not JSON)
raises ``BatchFileError``, whose message names the file (never the credentials of its URL), the row where there is
one, and what to do.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any
from urllib.parse import urlsplit, urlunsplit
from urllib.request import url2pathname

import fsspec
import msgspec
from singer_sdk.contrib.msgspec import decoder as msgspec_decoder

from target_loops import limits

__all__ = ["BatchFileError", "UnreadableRow", "batch_manifest", "display_url", "read_rows"]

_GZIP_MAGIC = b"\x1f\x8b"
_BOM = "\ufeff"
#: The compressions a BATCH message may declare (singer-sdk's ``batch_config`` offers gzip and none).
_COMPRESSIONS = (None, "none", "gzip")
_AGAIN = "run the tap and the target again"


class BatchFileError(Exception):
    """A BATCH message, or one of its files, that cannot be read; the message says which, where and what to do."""


@dataclass(frozen=True)
class UnreadableRow:
    """A row that JSON cannot carry (``NaN``/``Infinity``, bytes that are not UTF-8): rejected alone, as the same
    record in a RECORD line would be. ``record`` is the row as far as it could be read."""

    record: Any
    reason: str
    problem: str


def batch_manifest(message: dict[str, Any]) -> tuple[str, list[str]]:
    """The BATCH message's stream and file URLs, once its encoding is one this reader can read."""
    stream = message.get("stream")
    if not isinstance(stream, str):
        raise BatchFileError(f'a BATCH message needs "stream" as a string, not {stream!r}')
    encoding = message.get("encoding")
    manifest = message.get("manifest")
    if not isinstance(encoding, dict) or "format" not in encoding:
        raise BatchFileError(f'a BATCH message needs "encoding" with a "format", not {encoding!r}')
    if not isinstance(manifest, list) or not all(isinstance(url, str) for url in manifest):
        raise BatchFileError(f'a BATCH message needs "manifest" as a list of file URLs, not {manifest!r}')
    fmt, compression = encoding["format"], encoding.get("compression")
    if fmt != "jsonl":
        raise BatchFileError(
            f"encoding format {fmt!r} is not supported: target-loops reads jsonl batch files (gzip or not); set the "
            'tap\'s batch_config encoding format to "jsonl"'
        )
    if compression not in _COMPRESSIONS:
        raise BatchFileError(
            f"compression {compression!r} is not supported: target-loops reads jsonl batch files, gzip or not; set "
            'the tap\'s batch_config encoding compression to "gzip" or "none"'
        )
    return stream, manifest


def display_url(url: str) -> str:
    """The URL as it may be shown: without user, password, query string or fragment (which may hold a token)."""
    parts = urlsplit(url)
    if not parts.scheme or not (parts.username or parts.password or parts.query or parts.fragment):
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host += f":{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def read_rows(url: str) -> Iterator[tuple[int, Any]]:
    """``(row number, row)`` for every row of the file, as they are read (a row is a line; blank lines are skipped).

    A row is what its line decodes to (not necessarily an object: the caller rejects what is not), or an
    ``UnreadableRow``. Raises ``BatchFileError`` for a file or row that cannot be read.
    """
    shown = display_url(url)
    number = 0
    try:
        with _open(url, shown) as raw:
            source: Iterable[bytes] = gzip.GzipFile(fileobj=raw, mode="rb") if _peek(raw) == _GZIP_MAGIC else raw
            decode = msgspec_decoder.decode
            for number, line in enumerate(source, start=1):
                try:
                    yield number, decode(line)
                except (msgspec.DecodeError, RecursionError) as exc:
                    row = _salvage(shown, number, line, exc)
                    if row is not None:
                        yield number, row
    except EOFError:
        raise BatchFileError(
            f"batch file {shown} is a truncated gzip file (it ends after row {number}): the tap's write did not "
            f"finish; {_AGAIN}"
        ) from None
    except (gzip.BadGzipFile, zlib.error) as exc:
        raise BatchFileError(
            f"batch file {shown} is not a valid gzip file (at row {number + 1}: {_scrub(str(exc), url)}); {_AGAIN}"
        ) from None
    except OSError as exc:
        raise BatchFileError(
            f"batch file {shown} cannot be read at row {number + 1}: {_os_problem(exc, url)}"
        ) from None


def _open(url: str, shown: str) -> IO[bytes]:
    """The file, opened for reading: a ``file://`` URL or a path directly, any other URL through fsspec (the
    filesystems singer-sdk taps write batches to: s3://, gs://, az://... with their package installed)."""
    parts = urlsplit(url)
    try:
        if parts.scheme == "file" and parts.netloc in ("", "localhost"):
            return open(url2pathname(parts.path), "rb")
        if not parts.scheme:
            return open(url, "rb")
        opened: IO[bytes] = fsspec.open(url, mode="rb").open()
        return opened
    except (OSError, ValueError, ImportError) as exc:
        problem = _os_problem(exc, url) if isinstance(exc, OSError) else _scrub(str(exc), url)
        raise BatchFileError(f"batch file {shown} cannot be read: {problem}") from None


def _peek(file: IO[bytes]) -> bytes:
    """The file's first two bytes, leaving it where it was."""
    peek = getattr(file, "peek", None)
    if peek is not None:
        return bytes(peek(2)[:2])
    head = file.read(2)
    file.seek(0)
    return head


def _os_problem(exc: OSError, url: str) -> str:
    """What went wrong, and what to do, in words."""
    if isinstance(exc, FileNotFoundError):
        return (
            "no such file; a tap's batch files must stay where it wrote them (batch_config storage, readable from "
            f"where target-loops runs) until the target has read them: {_AGAIN}"
        )
    if isinstance(exc, PermissionError):
        return "permission denied; let the user running target-loops read it"
    if isinstance(exc, IsADirectoryError):
        return "it is a folder, not a file"
    return _scrub(exc.strerror or str(exc), url) or type(exc).__name__


def _scrub(text: str, url: str) -> str:
    """``text`` without any user, password or query string of ``url`` in it."""
    parts = urlsplit(url)
    for secret in (parts.password, parts.username, parts.query, parts.fragment):
        if secret:
            text = text.replace(secret, "***")
    return text


def _salvage(shown: str, number: int, line: bytes, error: Exception) -> Any:
    """A row msgspec refused: the row it still is, an ``UnreadableRow``, None for a blank line, or
    ``BatchFileError``. The same decisions as for a RECORD line (``LineReader``), through the same ``limits``."""
    where = f"batch file {shown} row {number}"
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        problem = f"byte {exc.start + 1} ({line[exc.start : exc.start + 1]!r}) is not UTF-8"
        try:
            row = limits.loads(line.decode("utf-8", errors="replace"))
        except (ValueError, RecursionError):
            raise BatchFileError(f"{where}: {problem} (rows are UTF-8 JSON); {_AGAIN}") from None
        return UnreadableRow(row, "invalid_encoding", f"{problem} (shown here with each bad byte as U+FFFD)")
    if number == 1 and text.startswith(_BOM):
        try:
            return msgspec_decoder.decode(text[1:])
        except (msgspec.DecodeError, RecursionError) as exc:
            return _salvage(shown, number, text[1:].encode(), exc)
    if not text.strip():
        return None
    if isinstance(error, RecursionError):
        try:  # shown cut at the depth the target reads
            row = limits.loads(limits.cut_text(text, limits.MAX_DEPTH))
        except (ValueError, RecursionError):
            raise BatchFileError(f"{where} is not valid JSON: {error}; fix or re-create the file ({_AGAIN})") from None
        return UnreadableRow(row, limits.TOO_DEEP, limits.Problem(limits.TOO_DEEP, "").message)
    try:
        row = limits.loads(text)
    except (ValueError, RecursionError):
        raise BatchFileError(f"{where} is not valid JSON: {error}; fix or re-create the file ({_AGAIN})") from None
    found = limits.problem(row)
    if found is None:
        raise BatchFileError(f"{where} is not valid JSON: {error}; fix or re-create the file ({_AGAIN})")
    return UnreadableRow(row, found.reason, found.message)
