"""The small values that flow between the rule engine, the sinks and the HTTP client.

record → rules → ``Operation`` (or ``Rejection``) → sink coalesces → ``LoopsRequest`` → client → ``Outcome``.
"""

from __future__ import annotations

import contextvars
import enum
from dataclasses import dataclass, field
from typing import Any, NamedTuple

#: The stream whose request the current thread is sending (set by the outbox around each send), so that the client
#: can name it in :data:`STREAM_HEADER`; None for the run's own reads and writes (preflight, the key check).
SENDING_STREAM: contextvars.ContextVar[str | None] = contextvars.ContextVar("sending_stream", default=None)

#: The request header that names the Singer stream a request comes from (percent-encoded). Informational: the
#: sandbox groups its log by it; Loops ignores it.
STREAM_HEADER = "X-Target-Loops-Stream"


class Action(str, enum.Enum):
    """What a rule does with each record of its stream."""

    UPSERT_CONTACT = "upsert_contact"
    SEND_EVENT = "send_event"
    DELETE_CONTACT = "delete_contact"
    #: Raw Segment calls of every type in one stream: each record is routed by its own ``type``.
    SEGMENT = "segment"
    #: Read and count, send nothing (Segment calls with no Loops equivalent: page, screen, group, alias).
    SKIP = "skip"


class OutcomeKind(str, enum.Enum):
    """How one request ended."""

    DELIVERED = "delivered"  # 200
    DUPLICATE = "duplicate"  # 409 on events/send: Loops had already accepted this idempotency key
    ALREADY_DONE = "already_done"  # 404 on contacts/delete: nothing left to delete
    REJECTED = "rejected"  # a permanent 4xx for this record
    FAILED = "failed"  # a transient failure that outlived max_retries
    ABORTED = "aborted"  # not sent because the run is stopping (bad key, another failure)
    PLANNED = "planned"  # dry run: not sent


class LoopsRequest(NamedTuple):
    """One HTTP call to Loops: ``path`` is relative to ``base_url`` (e.g. ``/v1/contacts/update``).

    ``also_done`` says which non-200 answers still mean Loops holds the effect, for this request only: a 409 on
    ``events/send`` (the idempotency key was already accepted), a 404 on ``contacts/delete`` (nothing to delete).
    The client knows no endpoint: what counts as success travels with the request.

    Immutable, and a named tuple rather than a frozen dataclass: one is made for every record, and a frozen
    dataclass costs three times as much to make.
    """

    method: str
    path: str
    body: dict[str, Any]
    idempotency_key: str | None = None
    also_done: tuple[tuple[int, OutcomeKind], ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """The request as written to the rejects file and the dry-run plan (never any header but the key)."""
        return {
            "method": self.method,
            "path": self.path,
            "body": self.body,
            "idempotency_key": self.idempotency_key,
        }


@dataclass(slots=True)
class Operation:
    """A record that mapped cleanly: the request it asks for, and what coalescing needs to know.

    ``contact_key`` groups upserts of one contact (``u:<userId>``, else ``e:<email>``); ``sort_key`` is the
    record's timestamp (ISO string, or None) so that later facts override earlier ones. ``email`` and ``user_id``
    are the record's identities as sent (held in memory only: the outbox links one person's rows by them).
    """

    action: Action
    request: LoopsRequest
    record: dict[str, Any]
    contact_key: str
    sort_key: str | None = None
    skipped_keys: tuple[str, ...] = ()
    resubscribe_blocked: bool = False  # the record said subscribed: true and the rule does not allow it
    email: str | None = None
    user_id: str | None = None
    #: Parts of the record left out while the rest is sent, as (reason, message) pairs: e.g. one mailing list flag
    #: that is not a boolean (reason ``invalid_mailing_list``). Each is a partial rejection of this record.
    partial: tuple[tuple[str, str], ...] = ()
    #: The key target-loops 0.1 derived for this event (the id's text as 0.1 wrote it), when it is not the key sent
    #: now: a ledger written by 0.1 knows the event by that key.
    legacy_key: str | None = None
    #: Audiences (``audience.py``): the audience stream an upsert row belongs to, and the version that holds it.
    audience: str | None = None
    version: int | None = None
    #: A leave or a join the target made itself for an audience (``audience.Change``), else None.
    change: Any = None


@dataclass(frozen=True, slots=True)
class Skipped:
    """A record deliberately not sent: a Segment call with no Loops equivalent, counted by its ``kind``."""

    kind: str


@dataclass(frozen=True, slots=True)
class Rejection:
    """A record the rule engine refused before anything was sent; ``reason`` is a stable code."""

    reason: str
    message: str
    record: dict[str, Any] = field(repr=False)
    request: LoopsRequest | None = None


@dataclass(slots=True)
class Outcome:
    """The end of one request, with what it cost."""

    kind: OutcomeKind
    status: int | None = None
    message: str | None = None
    attempts: int = 0
    retries: int = 0
    rate_limited: int = 0
    #: A read's JSON answer (``GET /v1/contacts/find``); None for writes, whose answer is only their verdict.
    body: Any = None

    @property
    def done(self) -> bool:
        """True when Loops holds the effect of the request (or holds nothing to undo, for a delete)."""
        return self.kind in (OutcomeKind.DELIVERED, OutcomeKind.DUPLICATE, OutcomeKind.ALREADY_DONE)
