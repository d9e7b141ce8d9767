"""Issue 21: a 200 of the wrong shape to the team-schema reads stops the run before any write, in one clear line.

The preflight reads ``GET /v1/contacts/properties?list=all`` (Loops answers an array of ``{key, label, type}``,
Loops' default properties included) and ``GET /v1/lists`` (an array of ``{id, name, description, isPublic}``). A
server that answers ``GET /v1/api-key`` like Loops but these reads with anything else is not Loops: read as "a team
with no properties", it would make the run create properties. The sandbox answers only Loops' shapes, so each test
here starts a tiny stdlib HTTP server on 127.0.0.1 that answers the key check like Loops and the schema reads with a
wrong shape, runs the real CLI against it, and counts on the server's side that nothing but GETs reached it.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from runner import SANDBOX_KEY, record, run_target, schema, singer, state

pytestmark = pytest.mark.e2e  # every test here starts a server and runs the CLI

PROPERTIES = "/api/v1/contacts/properties?list=all"
LISTS = "/api/v1/lists"
LOOPS_PROPERTIES = [
    {"key": "email", "label": "Email", "type": "string"},
    {"key": "firstName", "label": "First Name", "type": "string"},
    {"key": "userId", "label": "User ID", "type": "string"},
]
LOOPS_LISTS = [{"id": "cm06f5v0e45nf0ml5754o9cix", "name": "Newsletter", "description": None, "isPublic": True}]


class Impostor:
    """What the server was asked (``"METHOD path"``), and the JSON text it answers each schema read with."""

    def __init__(self, answers: dict[str, str]) -> None:
        self.answers = answers
        self.hits: list[str] = []
        self.url = ""


@pytest.fixture
def impostor() -> Iterator[Callable[[str, str], Impostor]]:
    servers: list[ThreadingHTTPServer] = []

    def start(properties: str, lists: str) -> Impostor:
        state = Impostor(
            {PROPERTIES: properties, LISTS: lists, "/api/v1/api-key": '{"success": true, "teamName": "T"}'}
        )

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                state.hits.append(f"{self.command} {self.path}")
                # Writes "succeed", as a server that is not Loops might say: the test counts that none was made.
                body = state.answers.get(self.path, '{"success": true}').encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = _answer

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        state.url = f"http://127.0.0.1:{server.server_address[1]}/api"
        return state

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def people() -> str:
    """One identify with a custom property (``plan``): against "an empty team" the run would create it."""
    columns = {"id": "string", "user_id": "string", "email": "string", "plan": "string"}
    return singer(
        schema("identifies", columns, ["id"]),
        record("identifies", {"id": "i1", "user_id": "u1", "email": "a@example.com", "plan": "pro"}),
        state({"at": 1}),
    )


#: The start of each message: the read, then what it answered.
P = "GET /v1/contacts/properties?list=all answered"
L = "GET /v1/lists answered"
GOOD = json.dumps(LOOPS_PROPERTIES)
#: A JSON ``null`` is refused by the client itself, like any 200 that is not Loops' JSON.
NULL = "got null or malformed JSON (application/json)"


@pytest.mark.parametrize(
    ("properties", "lists", "words"),
    [
        pytest.param(
            '{"success": true, "data": []}', "[]", f'{P} a JSON object (keys: "success", "data")', id="object"
        ),
        pytest.param(f'{{"{SANDBOX_KEY}": []}}', "[]", f'{P} a JSON object (keys: "***")', id="echoes-the-key"),
        pytest.param('["email", "plan"]', "[]", f"{P} an array whose item 0 is a string", id="strings"),
        pytest.param(
            '[{"label": "E", "type": "string"}]', "[]", f'{P} an array whose item 0 has no "key"', id="no-key"
        ),
        pytest.param(
            '[{"key": "email", "label": "E"}]', "[]", f'{P} an array whose item 0 has no "type"', id="no-type"
        ),
        pytest.param(
            '[{"key": 7, "type": "string"}]', "[]", f'{P} an array whose item 0 has a number as "key"', id="key"
        ),
        pytest.param("[]", "[]", f'{P} an array without Loops\' default property "email"', id="no-defaults"),
        pytest.param("null", "[]", f"{NULL} from GET /v1/contacts/properties?list=all", id="null"),
        pytest.param(GOOD, '{"lists": []}', f'{L} a JSON object (keys: "lists")', id="lists-object"),
        pytest.param(GOOD, "[1, 2]", f"{L} an array whose item 0 is a number", id="lists-numbers"),
        pytest.param(GOOD, '[{"name": "Newsletter"}]', f'{L} an array whose item 0 has no "id"', id="lists-no-id"),
        pytest.param(GOOD, "null", f"{NULL} from GET /v1/lists", id="lists-null"),
    ],
)
def test_a_schema_read_of_the_wrong_shape_stops_the_run_before_any_write(
    impostor: Callable[[str, str], Impostor], tmp_path: Path, properties: str, lists: str, words: str
) -> None:
    server = impostor(properties, lists)
    config = {"api_key": SANDBOX_KEY, "base_url": server.url, "ledger_url": f"sqlite:///{tmp_path / 'l.sqlite'}"}
    run = run_target(config, people(), tmp_path=tmp_path)  # run_target checks: no traceback
    assert run.returncode == 1
    [error] = [line for line in run.stderr.splitlines() if "ERROR" in line]
    assert f"target-loops: base_url {server.url} does not look like the Loops API: {words}" in error
    assert all(hit.startswith("GET ") for hit in server.hits), server.hits  # nothing was written
    assert run.states == []
    assert SANDBOX_KEY not in run.stderr


def test_loops_shapes_pass(impostor: Callable[[str, str], Impostor], tmp_path: Path) -> None:
    """The same server with Loops' shapes: the preflight goes on and creates the missing property (a write)."""
    server = impostor(GOOD, json.dumps(LOOPS_LISTS))
    config = {"api_key": SANDBOX_KEY, "base_url": server.url, "ledger_url": f"sqlite:///{tmp_path / 'l.sqlite'}"}
    run = run_target(config, people(), tmp_path=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "POST /api/v1/contacts/properties" in server.hits
