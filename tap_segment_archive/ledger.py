"""The tap's bookmark: which archive files are finished, and how far the file being read got.

Segment's archive only grows: a day folder receives new files for a while (one copy an hour) and a file is never
rewritten. A high-water mark ("everything up to file X") would miss a new file of an old day, so the bookmark is a
ledger of finished files per day folder, kept exact for recent days. It stays bounded on long archives: once a day is
``settle_days`` older than the newest day of the archive, the ledger keeps only ``through``, the last name of the
longest run of finished files at the start of that folder (in name order). Segment names a file after the time of its
copy, so a file that arrives later in an old day sorts after every file already there: it is still read.

The bookmark, under ``bookmarks.segment_archive`` of the Singer state::

    {"version": 1,
     "folders": {"<day folder URL>": {"through": "<name>" | null, "done": ["<name>", ...]}},
     "reading": ["<file URL>", <lines of it already emitted>] | null}

Meltano merges a run's partial states into the last complete one with a deep dict merge (dict keys are never
removed, any other value is replaced): every value that must be able to shrink or disappear (``done``, ``through``,
``reading``) is therefore a list, a string or null, never a dict.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any

from tap_segment_archive.archive import DAY_MS, ArchiveFile, received_day

BOOKMARK = "segment_archive"
VERSION = 1


class Ledger:
    """The bookmark, read from the incoming state and updated as files are read."""

    def __init__(self, value: Mapping[str, Any] | None, *, settle_days: int) -> None:
        value = value or {}
        self.settle_ms = max(settle_days, 0) * DAY_MS
        self.folders: dict[str, dict[str, Any]] = {}
        self._done: dict[str, set[str]] = {}
        for folder, entry in (value.get("folders") or {}).items():
            if not isinstance(entry, Mapping):
                continue
            through = entry.get("through")
            done = {str(name) for name in entry.get("done") or ()}
            self.folders[folder] = {"through": through if isinstance(through, str) else None}
            self._done[folder] = done
        reading = value.get("reading")
        self.reading: tuple[str, int] | None = None
        if isinstance(reading, list) and len(reading) == 2 and isinstance(reading[1], int):
            self.reading = (str(reading[0]), reading[1])

    def is_done(self, file: ArchiveFile) -> bool:
        """True when ``file`` was read to its end by an earlier run (or earlier in this one)."""
        entry = self.folders.get(file.folder)
        if entry is None:
            return False
        through = entry["through"]
        return (through is not None and file.name <= through) or file.name in self._done[file.folder]

    def resume_line(self, file: ArchiveFile) -> int:
        """How many lines of ``file`` a previous run already emitted (0 unless it stopped inside this file)."""
        if self.reading is not None and self.reading[0] == file.url:
            return self.reading[1]
        return 0

    def progress(self, file: ArchiveFile, lines: int) -> None:
        """``lines`` lines of ``file`` are emitted (the next STATE lets a resumed run skip them)."""
        self.reading = (file.url, lines)

    def finish(self, file: ArchiveFile) -> None:
        """``file`` is read to its end: never read again."""
        self.folders.setdefault(file.folder, {"through": None})
        self._done.setdefault(file.folder, set()).add(file.name)
        self.reading = None

    def compact(self, files: Iterable[ArchiveFile], newest_day_ms: int) -> None:
        """Fold the settled day folders among ``files`` (the listing, or a part of it) into their ``through`` name.

        A day is settled when it is ``settle_days`` older than ``newest_day_ms``, the archive's newest day. Exact
        with respect to the listing: ``through`` only moves over files that are listed and finished, in name order,
        so a listed file that is not finished always stays to be read.
        """
        by_folder: dict[str, list[ArchiveFile]] = {}
        for file in files:
            by_folder.setdefault(file.folder, []).append(file)
        for folder, members in by_folder.items():
            entry = self.folders.get(folder)
            day = received_day(folder.rsplit("/", 1)[-1])
            if entry is None or day is None or day + self.settle_ms >= newest_day_ms:
                continue
            done = self._done[folder]
            through = entry["through"]
            for file in sorted(members, key=lambda f: f.name):
                if (through is not None and file.name <= through) or file.name in done:
                    through = file.name if through is None or file.name > through else through
                else:
                    break
            entry["through"] = through
            if through is not None:
                self._done[folder] = {name for name in done if name > through}

    def value(self) -> dict[str, Any]:
        """The bookmark as it goes into a STATE message (a fresh structure: safe to serialize later)."""
        return {
            "version": VERSION,
            "folders": {
                folder: {"through": entry["through"], "done": sorted(self._done.get(folder, ()))}
                for folder, entry in sorted(self.folders.items())
            },
            "reading": list(self.reading) if self.reading is not None else None,
        }


def bookmark_of(state: Mapping[str, Any]) -> dict[str, Any] | None:
    """The tap's bookmark inside a Singer state (``{"bookmarks": {"segment_archive": ...}}``), if any."""
    found = (state.get("bookmarks") or {}).get(BOOKMARK)
    return dict(copy.deepcopy(found)) if isinstance(found, Mapping) else None
