"""Loops' documented matching rules in memory: the sandbox's ``Store`` behind the outbox's ``sender`` interface.

The outbox's planning is tested without HTTP against the same model the sandbox serves over HTTP
(https://loops.so/docs/api-reference: update matches by userId or email and creates only with an email; an event by
userId alone needs an existing contact; delete takes one identity; find answers an array). Every request is kept, in
the order the outbox sent it.
"""

from __future__ import annotations

import threading
import urllib.parse
from collections.abc import Iterable, Mapping
from typing import Any

from target_loops.operations import LoopsRequest, Outcome, OutcomeKind
from target_loops.sandbox.store import LoopsError, Store


class ModelLoops:
    """A sender for ``Outbox`` that applies each request to a ``Store`` and answers as Loops would."""

    def __init__(self, properties: Iterable[Mapping[str, Any]] = (), lists: Iterable[Mapping[str, Any]] = ()) -> None:
        self.store = Store(properties=properties, lists=lists)
        self.seen: list[LoopsRequest] = []
        self._lock = threading.Lock()

    def __call__(self, request: LoopsRequest) -> Outcome:
        with self._lock:
            self.seen.append(request)
        endpoint = request.path.split("?", 1)[0].rsplit("/", 1)[-1]
        try:
            if endpoint == "update":
                self.store.upsert_contact(request.body)
            elif endpoint == "send":
                self.store.send_event(request.body, idempotency_key=request.idempotency_key)
            elif endpoint == "delete":
                self.store.delete_contact(request.body)
            elif endpoint == "find":
                query = dict(urllib.parse.parse_qsl(request.path.split("?", 1)[1]))
                found = self.store.find_contacts(email=query.get("email"), user_id=query.get("userId"))
                return Outcome(OutcomeKind.DELIVERED, status=200, attempts=1, body=found)
            else:
                raise AssertionError(f"the outbox sent {request.method} {request.path}")
        except LoopsError as exc:
            for status, kind in request.also_done:
                if status == exc.status:
                    return Outcome(kind, status=exc.status, message=exc.message, attempts=1)
            return Outcome(OutcomeKind.REJECTED, status=exc.status, message=exc.message, attempts=1)
        return Outcome(OutcomeKind.DELIVERED, status=200, attempts=1)

    def paths(self) -> list[str]:
        return [r.path.split("?", 1)[0].rsplit("/", 1)[-1] for r in self.seen]

    def contacts(self) -> list[dict[str, Any]]:
        return self.store.contacts()

    def events(self) -> list[dict[str, Any]]:
        return self.store.events()
