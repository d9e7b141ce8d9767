"""The tap's config and state files checked the way target-loops checks its own: every problem at once, one line
each, naming the setting or file and the fix, before anything is emitted.

The SDK's schema validation covers types and ranges; what it lets through is checked here: unknown keys (a typo such
as ``start_dat`` would otherwise be ignored and the whole archive replayed into the target), values of the right
type that cannot work (an empty ``paths`` or ``types``, a ``start_date`` that is not a date, an endpoint that is not
a URL), and the ``--state`` file, which a failed ``tap | target > state.json`` pipeline may have left empty.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from typing import Any
from urllib.parse import urlsplit

from tap_segment_archive.archive import start_day_ms
from tap_segment_archive.ledger import BOOKMARK
from tap_segment_archive.streams import CALL_TYPES
from target_loops.settings import unknown_settings

PROGRAM = "tap-segment-archive"


def config_problems(config: Mapping[str, Any], accepted: Collection[str]) -> list[str]:
    """What is wrong with ``config`` beyond its JSON types (the SDK's schema reports those), one line each."""
    problems = unknown_settings(config, accepted, program=PROGRAM)
    paths = config.get("paths")
    if isinstance(paths, list):
        if not paths:
            problems.append(
                "paths is empty: list at least one local folder, glob, s3://bucket/prefix or gs://bucket/prefix"
            )
        for index, path in enumerate(paths):
            if isinstance(path, str) and not path.strip():
                problems.append(f"paths[{index}] is an empty string: remove it, or give the folder or bucket prefix")
    start_date = config.get("start_date")
    if isinstance(start_date, str):
        try:
            start_day_ms(start_date)
        except ValueError:
            problems.append(
                f"start_date {start_date!r} is not a date: use ISO 8601 (2026-11-02 or 2026-11-02T00:00:00Z), "
                "or leave it out to read every day"
            )
    types = config.get("types")
    if isinstance(types, list) and not types:
        problems.append(
            f"types is empty, so nothing would be emitted: list some of {', '.join(CALL_TYPES)}, or leave it out "
            "for all"
        )
    endpoint = config.get("s3_endpoint_url")
    if isinstance(endpoint, str):
        parts = urlsplit(endpoint.strip())
        if parts.scheme not in ("http", "https") or not parts.netloc:
            problems.append(
                f"s3_endpoint_url {endpoint!r} is not an http(s) URL: write it whole (http://127.0.0.1:9000), or "
                "leave it out for AWS"
            )
    options = config.get("storage_options")
    if isinstance(options, Mapping):
        for protocol, value in options.items():
            if not isinstance(value, Mapping):
                problems.append(
                    f"storage_options.{protocol} must be an object of fsspec options "
                    f'(e.g. {{"{protocol}": {{"profile": "segment"}}}}), not {type(value).__name__}'
                )
    return problems


def state_file_problem(name: str, text: str) -> str | None:
    """Why the ``--state`` file's text cannot be the tap's state, or None."""
    fix = "write the last STATE's value there (a JSON object), or leave out --state to read the archive from the start"
    if not text.strip():
        return f"state file {name!r} is empty (a failed run may have truncated it): {fix}"
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return f"state file {name!r} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}): {fix}"
    except RecursionError:
        return f"state file {name!r} nests too deep to read: {fix}"
    if not isinstance(value, dict):
        return f"state file {name!r} must hold a JSON object, not {type(value).__name__}: {fix}"
    if value.get("type") == "STATE" and "value" in value:
        return f'state file {name!r} holds a whole STATE message: keep only its "value", or leave out --state'
    bookmarks = value.get("bookmarks", {})
    if not isinstance(bookmarks, dict):
        return f"state file {name!r}: bookmarks must be an object: {fix}"
    bookmark = bookmarks.get(BOOKMARK, {})
    if not isinstance(bookmark, dict) or not isinstance(bookmark.get("folders", {}), dict):
        return f"state file {name!r}: bookmarks.{BOOKMARK} is not this tap's bookmark: {fix}"
    return None
