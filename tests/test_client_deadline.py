"""Issue 21: no server holds one request attempt past ``timeout_seconds`` (connect, headers and body together).

A server that trickles its answer, one byte at a time, each byte well within the per-read timeout, never trips a
socket timeout: requests' ``timeout`` is per read, and urllib3's ``Timeout(total=...)`` only sets each read's timeout
once. Each test here starts a hostile raw socket server on 127.0.0.1 (an ephemeral port) that does exactly that, and
checks from the server's side how long each attempt held its connection.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from target_loops.client import (
    ClientSettings,
    DeadlineExceeded,
    Decision,
    LoopsClient,
    LoopsUnavailableError,
    classify,
)
from target_loops.operations import LoopsRequest, Outcome, OutcomeKind
from target_loops.sandbox import Sandbox

pytestmark = pytest.mark.e2e  # every test here starts a server

KEY = "sandbox-key"
IDEMPOTENCY_KEY = "tl-idempotency-key-of-this-event"
#: A byte every quarter second: far inside the one-second per-read timeout, so only a whole-answer deadline ends it.
TRICKLE = 0.25
#: How late past its deadline an attempt may end (the watchdog's reaction, thread scheduling on a busy machine).
MARGIN = 0.6

HEADERS_TRICKLE = b"HTTP/1.1 200 OK\r\nX-Trickle: " + b"a" * 60_000
BODY_TRICKLE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
    + b'{"success": true, "pad": "'
    + b"a" * 60_000
)


@dataclass
class Connection:
    """One connection the hostile server accepted: the request's head, and how long the client held it."""

    head: bytes = b""
    held_seconds: float | None = None  # from the end of the request to the client's hang-up


@dataclass
class Hostile:
    """A raw socket server that reads each request, then sends ``answer`` one byte every ``TRICKLE`` seconds."""

    answer: bytes
    tls: ssl.SSLContext | None = None
    url: str = ""
    connections: list[Connection] = field(default_factory=list)
    _listener: socket.socket | None = None
    _open: list[socket.socket] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Hostile:
        self._listener = socket.create_server(("127.0.0.1", 0))
        scheme = "https" if self.tls else "http"
        self.url = f"{scheme}://127.0.0.1:{self._listener.getsockname()[1]}/api"
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            for conn in self._open:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)  # unblocks a client that no deadline ended
                conn.close()

    def hung_up(self) -> list[float]:
        """How long each attempt held its connection, for those the client has ended."""
        with self._lock:
            return [c.held_seconds for c in self.connections if c.held_seconds is not None]

    def _accept(self) -> None:
        assert self._listener is not None
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self._open.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        record = Connection()
        head = b""
        started = time.monotonic()
        try:
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
            while b"\r\n\r\n" not in head:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                head += chunk
            record.head = head
            with self._lock:
                self.connections.append(record)
            started = time.monotonic()
            for byte in self.answer:
                readable, _, _ = select.select([conn], [], [], TRICKLE)
                if readable and not conn.recv(65536):
                    break  # the client hung up (the rest of its request body would not be empty)
                conn.sendall(bytes([byte]))
            record.held_seconds = time.monotonic() - started
        except OSError:  # ssl.SSLError too
            record.held_seconds = time.monotonic() - started
        finally:
            conn.close()


@pytest.fixture
def hostile() -> Iterator[Callable[..., Hostile]]:
    servers: list[Hostile] = []

    def start(answer: bytes, tls: ssl.SSLContext | None = None) -> Hostile:
        server = Hostile(answer, tls).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def client_at(url: str, **overrides: Any) -> LoopsClient:
    fields: dict[str, Any] = {
        "base_url": url,
        "api_key": KEY,
        "requests_per_second": 100,
        "max_concurrency": 4,
        "timeout_seconds": 1,
        "max_retries": 2,
        "backoff_seconds": 0.01,
    }
    fields.update(overrides)
    return LoopsClient(ClientSettings(**fields))


def an_event() -> LoopsRequest:
    return LoopsRequest(
        "POST",
        "/v1/events/send",
        {"email": "p@example.com", "eventName": "Logged In"},
        IDEMPOTENCY_KEY,
        also_done=((409, OutcomeKind.DUPLICATE),),
    )


def within(seconds: float, call: Callable[[], Any]) -> Any:
    """``call()`` in a thread; fails the test (instead of hanging it) when it has not returned after ``seconds``."""
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(call()), daemon=True)
    thread.start()
    thread.join(seconds)
    assert result, f"still waiting after {seconds} s: no deadline ended the request"
    return result[0]


def wait_for(condition: Callable[[], bool], seconds: float = 10) -> None:
    end = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < end, "the hostile server saw nothing"
        time.sleep(0.02)


@pytest.mark.parametrize("answer", [HEADERS_TRICKLE, BODY_TRICKLE], ids=["headers", "body"])
def test_a_trickled_answer_ends_each_attempt_at_its_deadline_and_is_retried(
    hostile: Callable[..., Hostile], answer: bytes
) -> None:
    server = hostile(answer)
    client = client_at(server.url)
    try:
        outcome: Outcome = within(3 * (1 + MARGIN) + 2, lambda: client.send(an_event()))
    finally:
        client.close()
    assert outcome.kind is OutcomeKind.FAILED
    assert outcome.attempts == 3  # the first attempt and max_retries (2) retries
    assert outcome.message == "no complete answer within 1 s (gave up after 2 retries)"
    assert IDEMPOTENCY_KEY not in outcome.message and KEY not in outcome.message
    # Counted on the server's side: three connections, each held no longer than the deadline.
    wait_for(lambda: len(server.hung_up()) == 3)
    assert len(server.connections) == 3
    assert all(held <= 1 + MARGIN for held in server.hung_up()), server.hung_up()
    # Every retry is the same event under the same Idempotency-Key, so Loops can accept it once only.
    assert all(f"Idempotency-Key: {IDEMPOTENCY_KEY}".encode() in c.head for c in server.connections)


def test_a_start_of_run_read_that_trickles_fails_clearly(hostile: Callable[..., Hostile]) -> None:
    server = hostile(HEADERS_TRICKLE)
    client = client_at(server.url, max_retries=1)
    try:
        error = within(2 * (1 + MARGIN) + 2, lambda: _raised(client.check_api_key))
    finally:
        client.close()
    assert isinstance(error, LoopsUnavailableError)
    assert "GET /v1/api-key failed (no complete answer within 1 s (gave up after 1 retries))" in str(error)
    assert len(server.connections) == 2


def _raised(call: Callable[[], Any]) -> BaseException | None:
    try:
        call()
    except BaseException as exc:  # the test inspects it
        return exc
    return None


@pytest.mark.parametrize("answer", [HEADERS_TRICKLE, BODY_TRICKLE], ids=["headers", "body"])
def test_abort_during_a_trickle_ends_the_attempt_by_its_deadline_and_starts_no_other(
    hostile: Callable[..., Hostile], answer: bytes
) -> None:
    server = hostile(answer)
    client = client_at(server.url, max_retries=5)
    outcomes: list[list[Outcome]] = []
    sender = threading.Thread(target=lambda: outcomes.append(client.send_many([an_event()])), daemon=True)
    sender.start()
    wait_for(lambda: len(server.connections) == 1)
    client.abort()  # what the target does when the run stops
    started = time.monotonic()
    within(1 + 1 + 1, client.close)
    assert time.monotonic() - started <= 1 + 1
    sender.join(1)
    [[outcome]] = outcomes
    assert outcome.kind is OutcomeKind.ABORTED and outcome.attempts == 1
    time.sleep(0.3)
    assert len(server.connections) == 1  # no retry started after the abort


def test_abort_during_a_backoff_wait_returns_at_once(hostile: Callable[..., Hostile]) -> None:
    server = hostile(HEADERS_TRICKLE)
    client = client_at(server.url, max_retries=5, backoff_seconds=30, backoff_max_seconds=60)
    outcomes: list[list[Outcome]] = []
    sender = threading.Thread(target=lambda: outcomes.append(client.send_many([an_event()])), daemon=True)
    sender.start()
    wait_for(lambda: len(server.hung_up()) == 1)  # the first attempt was cut: the client now waits 15-30 s
    time.sleep(0.2)
    client.abort()
    started = time.monotonic()
    within(3, client.close)
    assert time.monotonic() - started <= 0.5
    sender.join(1)
    [[outcome]] = outcomes
    assert outcome.kind is OutcomeKind.ABORTED and outcome.attempts == 1
    assert len(server.connections) == 1


def test_answers_that_come_in_time_on_a_reused_connection_are_never_cut(make_sandbox: Any) -> None:
    """The deadline is per attempt: a connection kept alive across many quick answers outlives many deadlines."""
    sandbox: Sandbox = make_sandbox(latency_ms=40)
    client = client_at(sandbox.url, max_concurrency=1, max_retries=0)
    try:
        outcomes = client.send_many(
            [LoopsRequest("PUT", "/v1/contacts/update", {"email": f"p{i}@example.com"}) for i in range(40)]
        )
    finally:
        client.close()
    assert [o.kind for o in outcomes] == [OutcomeKind.DELIVERED] * 40  # 40 x 40 ms: past the 1 s deadline in all
    assert all(o.attempts == 1 for o in outcomes)
    assert len(sandbox.store.requests()) == 40


def test_a_missed_deadline_is_transient_and_says_so() -> None:
    verdict = classify(an_event(), None, None, None, DeadlineExceeded("no complete answer within 30 s"))
    assert verdict.decision is Decision.RETRY
    assert verdict.message == "no complete answer within 30 s"


def self_signed(tmp_path: Path) -> tuple[ssl.SSLContext, Path]:
    """A server context with a fresh certificate for 127.0.0.1, and that certificate for the client to trust."""
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    return context, cert_path


@pytest.mark.parametrize("answer", [HEADERS_TRICKLE, BODY_TRICKLE], ids=["headers", "body"])
def test_the_deadline_cuts_a_trickle_over_tls_too(
    hostile: Callable[..., Hostile], tmp_path: Path, answer: bytes
) -> None:
    """Loops is https: the watchdog shuts the TLS connection's socket down under the thread reading it."""
    context, cert = self_signed(tmp_path)
    server = hostile(answer, context)
    client = client_at(server.url, max_retries=1)
    client.session.verify = str(cert)
    try:
        outcome: Outcome = within(2 * (1 + MARGIN) + 2, lambda: client.send(an_event()))
    finally:
        client.close()
    assert (outcome.kind, outcome.attempts) == (OutcomeKind.FAILED, 2)
    assert outcome.message == "no complete answer within 1 s (gave up after 1 retries)"
    wait_for(lambda: len(server.hung_up()) == 2)
    assert all(held <= 1 + MARGIN for held in server.hung_up()), server.hung_up()
