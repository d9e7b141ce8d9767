"""Batch mode (``batch_config``): rows go to JSON Lines files, each named in a BATCH message, instead of RECORD lines.

singer-sdk's own batch mode (``Stream.get_batches``) belongs to the per-stream sync this tap replaces, so the tap
writes its batches itself, in the SDK's format: one JSON object per line (here the line Segment wrote, byte for
byte), gzip-compressed unless ``compression`` is ``none``, files under ``storage.root`` (any fsspec URL) named
``<prefix><tap>--<stream>-<uuid>-<n>.json.gz``, and ``{"type": "BATCH", "stream", "encoding", "manifest"}``.

A file is closed and its BATCH message emitted when it holds ``batch_size`` rows, and every open file is closed
before each STATE (``close_all``), so that a STATE never covers a row whose file no BATCH message has named yet.
"""

from __future__ import annotations

import gzip
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit
from urllib.request import url2pathname

import fsspec
from fsspec.implementations.local import LocalFileSystem
from singer_sdk.helpers._batch import BatchConfig

#: What a BATCH message's ``encoding`` may say here (singer-sdk's ``batch_config`` also offers parquet).
FORMATS = ("jsonl",)
COMPRESSIONS = (None, "none", "gzip")


def batch_config_problems(raw: Any) -> list[str]:
    """What is wrong with ``batch_config`` for this tap (empty when it is usable or absent)."""
    if not raw:
        return []
    try:
        config = BatchConfig.from_dict(raw)
    except (TypeError, ValueError) as exc:
        return [f"batch_config: {exc}"]
    problems = []
    if config.encoding.format not in FORMATS:
        problems.append(
            f"batch_config: encoding format {config.encoding.format!r} is not supported by tap-segment-archive; "
            'use "jsonl"'
        )
    if config.encoding.compression not in COMPRESSIONS:
        problems.append(f'batch_config: compression {config.encoding.compression!r} is not supported; use "gzip"')
    if not config.storage.root:
        problems.append("batch_config: storage.root is required (a folder or URL to write the batch files to)")
    return problems


@dataclass
class _OpenFile:
    url: str
    raw: IO[bytes]
    out: IO[bytes]
    rows: int = 0


class Batches:
    """Every stream's open batch file; ``emit`` writes one encoded Singer message (a BATCH) to the output."""

    def __init__(self, raw_config: dict[str, Any], tap_name: str, emit: Callable[[dict[str, Any]], object]) -> None:
        config = BatchConfig.from_dict(raw_config)
        self.batch_size = config.batch_size
        self.gzip = config.encoding.compression == "gzip"
        self.encoding = {"format": config.encoding.format, "compression": "gzip" if self.gzip else "none"}
        self.prefix = config.storage.prefix or ""
        root = config.storage.root
        if urlsplit(root).scheme == "file":  # a file:// URL is percent-encoded; fsspec would keep "%20" as it is
            root = url2pathname(urlsplit(root).path)
        self.fs, self.root = fsspec.core.url_to_fs(root, **config.storage.params)
        self.fs.makedirs(self.root, exist_ok=True)
        self.tap_name = tap_name
        self.emit = emit
        self.files_written = 0
        self._open: dict[str, _OpenFile] = {}
        self._sync_ids: dict[str, str] = {}
        self._counts: dict[str, int] = {}

    def add(self, stream: str, row: bytes) -> None:
        """One row (a JSON object, without its newline) of ``stream``."""
        file = self._open.get(stream)
        if file is None:
            file = self._open[stream] = self._new_file(stream)
        file.out.write(row + b"\n")
        file.rows += 1
        if file.rows >= self.batch_size:
            self._close(stream)

    def close_all(self) -> None:
        """Close every open file and emit its BATCH message (before a STATE, and at the end)."""
        for stream in list(self._open):
            self._close(stream)

    def _new_file(self, stream: str) -> _OpenFile:
        sync_id = self._sync_ids.setdefault(stream, f"{self.tap_name}--{stream}-{uuid.uuid4()}")
        number = self._counts[stream] = self._counts.get(stream, 0) + 1
        path = f"{self.root.rstrip('/')}/{self.prefix}{sync_id}-{number}{'.json.gz' if self.gzip else '.jsonl'}"
        # A local file's URL is percent-encoded (file:///my%20batches/...), as singer-sdk's StorageTarget names it.
        url = Path(path).as_uri() if isinstance(self.fs, LocalFileSystem) else self.fs.unstrip_protocol(path)
        raw = self.fs.open(path, "wb")
        out: IO[bytes] = gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6) if self.gzip else raw  # type: ignore[assignment]
        return _OpenFile(url, raw, out)

    def _close(self, stream: str) -> None:
        file = self._open.pop(stream)
        file.out.close()
        file.raw.close()
        self.files_written += 1
        self.emit({"type": "BATCH", "stream": stream, "encoding": self.encoding, "manifest": [file.url]})
