"""Answers the sandbox cannot give: a server that is not Loops (HTML 200, redirects, broken bodies), proxies.

Each test starts a tiny stdlib HTTP server (or a raw socket server) on 127.0.0.1:0 and talks real HTTP to it.
"""

from __future__ import annotations

import json
import socketserver
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from target_loops.client import ClientSettings, LoopsClient, LoopsUnavailableError
from target_loops.operations import LoopsRequest, OutcomeKind
from target_loops.sandbox import Sandbox

KEY = "sandbox-key"

#: (method, path) -> (status, headers, body); a handler may also return None to break the connection.
Answer = tuple[int, dict[str, str], bytes]
Handler = Callable[[str, str], Answer | None]


@dataclass
class Server:
    """A stdlib HTTP server in a thread that records every request line it served."""

    url: str
    seen: list[tuple[str, str]] = field(default_factory=list)


def _json(status: int, payload: Any) -> Answer:
    return status, {"Content-Type": "application/json"}, json.dumps(payload).encode()


HTML = b"<html><head><title>Sign in</title></head><body>Please sign in</body></html>"


@pytest.fixture
def serve() -> Iterator[Callable[[Handler], Server]]:
    servers: list[ThreadingHTTPServer] = []

    def start(handler: Handler) -> Server:
        record = Server(url="")

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                record.seen.append((self.command, self.path))
                answer = handler(self.command, self.path)
                if answer is None:  # a broken chunked body, then hang up
                    self.wfile.write(
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                        b"zz\r\n{\r\n"
                    )
                    self.wfile.flush()
                    self.close_connection = True
                    return
                status, headers, body = answer
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_PUT = do_POST = _any

        httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        httpd.daemon_threads = True
        threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        servers.append(httpd)
        record.url = f"http://127.0.0.1:{httpd.server_address[1]}/api"
        return record

    yield start
    for httpd in servers:
        httpd.shutdown()
        httpd.server_close()


def client_at(url: str, **overrides: Any) -> LoopsClient:
    fields: dict[str, Any] = {
        "base_url": url,
        "api_key": KEY,
        "requests_per_second": 200,
        "max_concurrency": 2,
        "timeout_seconds": 5,
        "max_retries": 2,
        "backoff_seconds": 0.01,
    }
    fields.update(overrides)
    return LoopsClient(ClientSettings(**fields))


def upsert(i: int = 1) -> LoopsRequest:
    return LoopsRequest("PUT", "/v1/contacts/update", {"email": f"p{i}@example.com"})


def event(key: str) -> LoopsRequest:
    return LoopsRequest("POST", "/v1/events/send", {"email": "p@example.com", "eventName": "X"}, key)


# --- A1: success means Loops said so


def test_html_200_on_a_write_is_not_a_delivery_and_stops_the_run(serve: Callable[[Handler], Server]) -> None:
    server = serve(lambda method, path: (200, {"Content-Type": "text/html; charset=utf-8"}, HTML))
    client = client_at(server.url)
    try:
        outcome = client.send(event("k-1"))
        assert not outcome.done, "an HTML page is not Loops accepting the event"
        assert outcome.kind is OutcomeKind.ABORTED
        from target_loops.client import NotLoopsError

        with pytest.raises(
            NotLoopsError, match=r"does not look like the Loops API: got text/html from POST /v1/events/send"
        ):
            client.raise_if_fatal()
        later = client.send(upsert())
        assert later.kind is OutcomeKind.ABORTED and later.attempts == 0
        assert len(server.seen) == 1  # not retried, and nothing sent after the fatal answer
        with pytest.raises(NotLoopsError):
            client.send_many([upsert(2)])
    finally:
        client.close()


def test_json_200_without_success_is_not_a_delivery(serve: Callable[[Handler], Server]) -> None:
    server = serve(lambda method, path: _json(200, {"ok": True}))
    client = client_at(server.url)
    try:
        outcome = client.send(upsert())
        assert not outcome.done
        assert "success" in (outcome.message or "")
    finally:
        client.close()


def test_check_api_key_refuses_an_html_page(serve: Callable[[Handler], Server]) -> None:
    server = serve(lambda method, path: (200, {"Content-Type": "text/html"}, HTML))
    client = client_at(server.url)
    try:
        with pytest.raises(Exception, match=r"base_url .* does not look like the Loops API: got text/html") as info:
            client.check_api_key()
        assert KEY not in str(info.value)
    finally:
        client.close()


# --- A2: writes never follow redirects


def _redirecting(method: str, path: str) -> Answer:
    if path.startswith("/api/v1/"):
        return 302, {"Location": "/elsewhere", "Content-Type": "text/html"}, b"Found"
    return _json(200, {"success": True, "teamName": "Someone else"})  # what a followed redirect would meet


def test_redirect_on_a_write_is_fatal_not_followed(serve: Callable[[Handler], Server]) -> None:
    server = serve(_redirecting)
    client = client_at(server.url)
    try:
        outcome = client.send(upsert())
        assert not outcome.done, "requests turned the PUT into a GET of the redirect target"
        assert server.seen == [("PUT", "/api/v1/contacts/update")]
        with pytest.raises(Exception, match=r"redirect.*HTTP 302"):
            client.raise_if_fatal()
    finally:
        client.close()


def test_redirect_at_start_is_refused(serve: Callable[[Handler], Server]) -> None:
    server = serve(_redirecting)
    client = client_at(server.url)
    try:
        with pytest.raises(Exception, match=r"does not look like the Loops API.*redirect"):
            client.check_api_key()
        assert server.seen == [("GET", "/api/v1/api-key")]
    finally:
        client.close()


def test_404_page_on_a_delete_is_not_already_done(serve: Callable[[Handler], Server]) -> None:
    """A web server's 404 page means a wrong base_url, not "nothing to delete"."""
    server = serve(lambda method, path: (404, {"Content-Type": "text/html"}, b"<h1>Not Found</h1>"))
    client = client_at(server.url)
    request = LoopsRequest("POST", "/v1/contacts/delete", {"email": "a@example.com"})
    try:
        outcome = client.send(request)
        assert not outcome.done
    finally:
        client.close()


# --- D: one retry loop, GETs included


def test_get_survives_a_broken_chunked_body(serve: Callable[[Handler], Server]) -> None:
    calls = iter(range(100))

    def flaky(method: str, path: str) -> Answer | None:
        return None if next(calls) == 0 else _json(200, [{"id": "l1", "name": "News"}])

    server = serve(flaky)
    client = client_at(server.url)
    try:
        assert client.get_json("/v1/lists") == [{"id": "l1", "name": "News"}]
        assert len(server.seen) == 2
    finally:
        client.close()


def test_get_does_not_retry_429_forever(sandbox: Sandbox) -> None:
    sandbox.configure(fail_429=1.0)
    client = client_at(sandbox.url, backoff_max_seconds=0.02)
    result: list[BaseException | None] = []

    def run() -> None:
        try:
            client.get_json("/v1/lists")
            result.append(None)
        except BaseException as exc:
            result.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout=20)
    client.abort()
    sandbox.configure(fail_429=0.0)
    try:
        assert result, "GET kept retrying 429 answers"
        assert isinstance(result[0], LoopsUnavailableError)
        assert "429" in str(result[0])
    finally:
        thread.join(timeout=10)
        client.close()


# --- issue 10 item 6: no proxy for loopback


class _FakeProxy(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        self.lines: list[str] = []
        outer = self

        class H(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                self.request.settimeout(2)
                try:
                    data = self.request.recv(4096)
                except OSError:
                    data = b""
                outer.lines.append(data.split(b"\r\n", 1)[0].decode("latin-1"))
                self.request.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

        super().__init__(("127.0.0.1", 0), H)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def proxy(monkeypatch: pytest.MonkeyPatch) -> Iterator[_FakeProxy]:
    server = _FakeProxy()
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.setenv(name, server.url)
    yield server
    server.shutdown()
    server.server_close()


def test_loopback_sandbox_is_never_reached_through_a_proxy(proxy: _FakeProxy, sandbox: Sandbox) -> None:
    client = client_at(sandbox.url)
    try:
        assert client.check_api_key() == "Sandbox team"
        assert client.send(upsert()).kind is OutcomeKind.DELIVERED
    finally:
        client.close()
    assert proxy.lines == [], "the Bearer key went through the environment's proxy"


def test_environment_proxy_is_honoured_for_loops_itself(proxy: _FakeProxy) -> None:
    client = client_at("https://app.loops.so/api", max_retries=0)
    try:
        with pytest.raises(LoopsUnavailableError) as info:
            client.check_api_key()
        assert KEY not in str(info.value)
    finally:
        client.close()
    assert proxy.lines and proxy.lines[0].startswith("CONNECT app.loops.so:443")


def test_a_redirect_that_echoes_the_key_does_not_put_it_in_the_error(serve: Callable[[Handler], Server]) -> None:
    server = serve(lambda method, path: (302, {"Location": f"https://login.example/?token={KEY}"}, b""))
    client = client_at(server.url)
    try:
        with pytest.raises(LoopsUnavailableError) as info:
            client.check_api_key()
    finally:
        client.close()
    assert "login.example" in str(info.value)
    assert KEY not in str(info.value)
