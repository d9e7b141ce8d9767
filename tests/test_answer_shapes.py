"""Each answer shape Loops documents, over real HTTP from a tiny local server, and what the client makes of it.

Shapes: https://loops.so/docs/api-reference (success bodies per endpoint, ``{"success": false, "message"}`` errors and
the older ``error`` key), the status table of https://loops.so/docs/api-reference/intro, the 405 that Loops' OpenAPI
declares without a body, and ``GET /v1/event-patterns/by-name/{eventName}``
(https://loops.so/docs/api-reference/get-event-pattern-by-name).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from target_loops.client import ClientSettings, LoopsAuthError, LoopsClient, NotLoopsError
from target_loops.event_patterns import EventPatterns
from target_loops.operations import LoopsRequest, OutcomeKind

#: An answer: (status, content type or None, body bytes).
Answer = tuple[int, str | None, bytes]
JSON = "application/json"


def js(status: int, payload: Any) -> Answer:
    return status, JSON, json.dumps(payload).encode()


#: The paths each test server was asked for, by the client pointed at it.
SEEN: dict[int, list[str]] = {}


@pytest.fixture
def serve() -> Iterator[Callable[[list[Answer]], LoopsClient]]:
    """A stdlib server answering the given answers in turn (the last one repeats), and a client pointed at it
    (``SEEN[id(client)]``: the paths asked for)."""
    servers: list[ThreadingHTTPServer] = []
    clients: list[LoopsClient] = []

    def start(answers: list[Answer]) -> LoopsClient:
        queue = list(answers)
        lock = threading.Lock()
        seen: list[str] = []

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _any(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with lock:
                    seen.append(self.path)
                    status, content_type, body = queue.pop(0) if len(queue) > 1 else queue[0]
                self.send_response(status)
                if content_type:
                    self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_PUT = do_POST = _any

        httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        httpd.daemon_threads = True
        threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        servers.append(httpd)
        client = LoopsClient(
            ClientSettings(
                base_url=f"http://127.0.0.1:{httpd.server_address[1]}/api",
                api_key="shape-test-key",
                requests_per_second=500,
                max_concurrency=2,
                timeout_seconds=5,
                max_retries=2,
                backoff_seconds=0.01,
            )
        )
        clients.append(client)
        SEEN[id(client)] = seen
        return client

    yield start
    for client in clients:
        client.close()
    for httpd in servers:
        httpd.shutdown()
        httpd.server_close()


UPDATE = LoopsRequest("PUT", "/v1/contacts/update", {"email": "a@x.io"})
EVENT = LoopsRequest(
    "POST", "/v1/events/send", {"email": "a@x.io", "eventName": "X"}, "k1", ((409, OutcomeKind.DUPLICATE),)
)
DELETE = LoopsRequest("POST", "/v1/contacts/delete", {"email": "a@x.io"}, None, ((404, OutcomeKind.ALREADY_DONE),))
CREATE_PROPERTY = LoopsRequest("POST", "/v1/contacts/properties", {"name": "plan", "type": "string"})


@pytest.mark.parametrize(
    ("request_", "answers", "kind", "message"),
    [
        pytest.param(UPDATE, [js(200, {"success": True, "id": "c1"})], OutcomeKind.DELIVERED, None, id="update-200"),
        pytest.param(EVENT, [js(200, {"success": True})], OutcomeKind.DELIVERED, None, id="event-200"),
        pytest.param(
            DELETE,
            [js(200, {"success": True, "message": "Contact deleted."})],
            OutcomeKind.DELIVERED,
            None,
            id="delete-200",
        ),
        pytest.param(CREATE_PROPERTY, [js(200, {"success": True})], OutcomeKind.DELIVERED, None, id="property-200"),
        pytest.param(
            UPDATE,
            [js(400, {"success": False, "message": "Invalid email"})],
            OutcomeKind.REJECTED,
            "Invalid email",
            id="400-message",
        ),
        pytest.param(
            UPDATE,
            [js(400, {"success": False, "error": "Old words"})],
            OutcomeKind.REJECTED,
            "Old words",
            id="400-error",
        ),
        pytest.param(
            UPDATE,
            [js(400, {"success": False, "message": "Multiple contacts found for the given criteria"})],
            OutcomeKind.REJECTED,
            "Multiple contacts found",
            id="400-two-contacts",
        ),
        pytest.param(
            DELETE,
            [js(404, {"success": False, "message": "Contact not found."})],
            OutcomeKind.ALREADY_DONE,
            None,
            id="delete-404",
        ),
        pytest.param(UPDATE, [(405, None, b"")], OutcomeKind.REJECTED, "HTTP 405", id="405-no-body"),
        pytest.param(UPDATE, [(405, JSON, b"")], OutcomeKind.REJECTED, "HTTP 405", id="405-empty-json"),
        pytest.param(
            UPDATE,
            [js(405, {"success": False, "message": "Method not allowed"})],
            OutcomeKind.REJECTED,
            "Method not allowed",
            id="405-json",
        ),
        pytest.param(UPDATE, [(404, None, b"")], OutcomeKind.REJECTED, "HTTP 404", id="404-no-body"),
        pytest.param(
            EVENT,
            [js(409, {"success": False, "message": "Idempotency key already used"})],
            OutcomeKind.DUPLICATE,
            None,
            id="event-409",
        ),
        pytest.param(
            EVENT,
            [js(429, {"success": False, "message": "Rate limit exceeded"}), js(200, {"success": True})],
            OutcomeKind.DELIVERED,
            None,
            id="429-then-200",
        ),
        pytest.param(
            EVENT,
            [(500, None, b""), js(200, {"success": True})],
            OutcomeKind.DELIVERED,
            None,
            id="500-then-200",
        ),
    ],
)
def test_each_documented_answer(
    serve: Callable[[list[Answer]], LoopsClient],
    request_: LoopsRequest,
    answers: list[Answer],
    kind: OutcomeKind,
    message: str | None,
) -> None:
    client = serve(answers)
    outcome = client.send(request_)
    assert outcome.kind is kind, outcome
    if message is not None:
        assert outcome.message is not None and message in outcome.message
    # None of these answers stops the run: each is Loops' own (a 405 without a body included).
    assert client.fatal is None
    assert client.send(request_).kind is not OutcomeKind.ABORTED


def test_reads_answer_their_documented_shapes(serve: Callable[[list[Answer]], LoopsClient]) -> None:
    pattern = {
        "id": "cm1",
        "eventName": "Signed Up",
        "eventProperties": [{"name": "plan", "type": "string"}],
        "incomingWebhookPlatform": None,
    }
    client = serve(
        [
            js(200, {"success": True, "teamName": "Acme"}),
            js(200, [{"id": "l1", "name": "News", "description": None, "isPublic": False}]),
            js(200, pattern),
            js(404, {"success": False, "message": "Event pattern not found"}),
            (405, None, b""),
        ]
    )
    assert client.check_api_key() == "Acme"
    assert client.get_json("/v1/lists")[0]["id"] == "l1"
    found = client.read("/v1/event-patterns/by-name/Signed%20Up")
    assert (found.kind, found.body) == (OutcomeKind.DELIVERED, pattern)
    missing = client.read("/v1/event-patterns/by-name/Other")
    assert (missing.kind, missing.status) == (OutcomeKind.REJECTED, 404)
    older = client.read("/v1/event-patterns/by-name/Other")
    assert (older.kind, older.status) == (OutcomeKind.REJECTED, 405)
    assert client.fatal is None


def test_a_401_stops_the_run(serve: Callable[[list[Answer]], LoopsClient]) -> None:
    client = serve([js(401, {"success": False, "message": "Invalid API key"})])
    client.send(UPDATE)
    assert isinstance(client.fatal, LoopsAuthError)


def test_an_html_404_is_still_not_loops(serve: Callable[[list[Answer]], LoopsClient]) -> None:
    """A page that is not JSON under a 404 is a web server at the wrong address, not Loops' refusal."""
    client = serve([(404, "text/html", b"<h1>Not Found</h1>")])
    outcome = client.send(UPDATE)
    assert outcome.kind is OutcomeKind.ABORTED and client.fatal is not None
    assert "does not look like the Loops API" in str(client.fatal)


def test_an_api_without_event_patterns_is_asked_once_and_nothing_changes(
    serve: Callable[[list[Answer]], LoopsClient],
) -> None:
    """A 405 (an API that predates the route) falls back quietly to sending what the data has: no other name is
    asked, no property is dropped even with ``drop``."""
    client = serve([(405, None, b"")])
    patterns = EventPatterns(client, mode="drop")
    first = {"eventName": "Signed Up", "eventProperties": {"plan": "pro"}}
    second = {"eventName": "Logged In", "eventProperties": {"via": "sso"}}
    patterns.check(first, "stream tracks")
    patterns.check(second, "stream tracks")
    assert SEEN[id(client)] == ["/api/v1/event-patterns/by-name/Signed%20Up"]
    assert first["eventProperties"] == {"plan": "pro"} and second["eventProperties"] == {"via": "sso"}
    assert {name: c["loops"] for name, c in patterns.report().items()} == {
        "Logged In": "unavailable",
        "Signed Up": "unavailable",
    }
    assert client.fatal is None


def test_an_event_pattern_answer_of_another_shape_is_not_loops(serve: Callable[[list[Answer]], LoopsClient]) -> None:
    client = serve([js(200, {"eventName": "Signed Up", "properties": {"plan": "string"}})])
    with pytest.raises(NotLoopsError, match="eventProperties"):
        EventPatterns(client).check({"eventName": "Signed Up", "eventProperties": {"plan": "pro"}}, "stream tracks")
