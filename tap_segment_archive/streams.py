"""One stream per Segment call type, each record exactly the JSON line Segment wrote.

The schemas declare Segment's envelope (the spec's common fields plus each call's own) and nothing inside
``traits``, ``properties``, ``context``, ``integrations``: those are open objects, because a schema that lists their
keys (as file taps infer from samples) makes the SDK and many targets drop every key it did not list. The envelope's
types are as loose as Segment's own data can be, so that a target validating records against them never rejects a
real call:

- ids are strings, or numbers for senders that send numeric ids (Segment keeps them as sent);
- ``timestamp`` and ``receivedAt`` are set by Segment's servers (always ISO-8601 UTC): ``format: date-time``, so a
  target can order and age them; ``sentAt`` and ``originalTimestamp`` come from the sender's clock and library, so
  they are plain strings (a target would reject a record whose "date-time" it cannot parse);
- ``additionalProperties`` is allowed everywhere: some senders add top-level keys (``email``, ``_metadata``...).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from singer_sdk import Stream

if TYPE_CHECKING:
    from singer_sdk.helpers.types import Context

    from tap_segment_archive.tap import TapSegmentArchive

#: Segment's call types, in the order their streams are declared.
CALL_TYPES: tuple[str, ...] = ("identify", "track", "page", "screen", "group", "alias")

_STRING = {"type": ["string", "null"]}
_ID = {"type": ["string", "number", "null"]}
_INSTANT = {"type": ["string", "null"], "format": "date-time"}
_OPEN = {"type": ["object", "null"], "additionalProperties": True}

#: Every call's envelope (Segment spec: "Common fields"), as written to the archive.
COMMON: dict[str, Any] = {
    "type": {"type": "string"},
    "messageId": {"type": "string"},
    "userId": _ID,
    "anonymousId": _ID,
    "timestamp": _INSTANT,
    "receivedAt": _INSTANT,
    "sentAt": _STRING,
    "originalTimestamp": _STRING,
    "channel": _STRING,
    "version": {"type": ["integer", "number", "string", "null"]},
    "writeKey": _STRING,
    "projectId": _STRING,
    "context": _OPEN,
    "integrations": _OPEN,
}

#: Each call's own fields.
OWN: dict[str, dict[str, Any]] = {
    "identify": {"traits": _OPEN},
    "track": {"event": _STRING, "properties": _OPEN},
    "page": {"name": _STRING, "category": _STRING, "properties": _OPEN},
    "screen": {"name": _STRING, "category": _STRING, "properties": _OPEN},
    "group": {"groupId": _ID, "traits": _OPEN},
    "alias": {"previousId": _ID},
}


def schema_of(call_type: str) -> dict[str, Any]:
    """The JSON schema of one call type's stream."""
    return {
        "type": "object",
        "properties": {**COMMON, **OWN[call_type]},
        "required": ["type", "messageId"],
        "additionalProperties": True,
    }


class CallStream(Stream):
    """The calls of one type. The tap reads the archive once for all of them (``TapSegmentArchive.sync_all``).

    ``messageId`` is the key: Segment's archive is at-least-once (the same call can be in two files), and the
    messageId is what a target deduplicates on.
    """

    primary_keys = ("messageId",)
    replication_key = None

    def __init__(self, tap: TapSegmentArchive, call_type: str) -> None:
        super().__init__(tap=tap, schema=schema_of(call_type), name=call_type)
        self.call_type = call_type

    def get_records(self, context: Context | None) -> Iterable[dict[str, Any]]:
        """This stream's calls from the whole archive, ignoring and leaving the state alone.

        Only for programmatic use of one stream; a sync reads the archive once for every stream instead.
        """
        tap: TapSegmentArchive = self._tap  # type: ignore[assignment]
        yield from tap.iter_calls(self.call_type)
