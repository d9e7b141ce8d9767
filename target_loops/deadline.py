"""A deadline for each request attempt: no server holds one past ``timeout_seconds``, however slowly it answers.

requests' ``timeout`` bounds each socket read, not the answer: a server that sends a byte of its headers or body every
second never trips it, and urllib3's ``Timeout(total=...)`` sets each read's timeout once, from what is left when the
read starts, so it does not end a trickle either. Neither can a signal: the run would hang on that one read.

So one watchdog thread per client keeps the deadline of every attempt in flight, and when one passes, shuts that
attempt's socket down (``shutdown(SHUT_RDWR)``): the read blocked on it returns at once, and requests raises (or
returns the cut answer, which the client discards: a 200 cut inside its headers can look complete). The attempt then
counts as a transient failure (:class:`DeadlineExceeded`), retried like a timeout.

The socket is reached through urllib3's extension points, not its internals: the pools' connection classes
(``ConnectionCls``) tell the attempt running in the current thread which socket it uses when they connect and each
time they send a request on a kept-alive connection; the pools forget it when the connection is put back (the
answer was read whole), so a deadline never cuts a connection another attempt has taken over.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import requests
import urllib3.poolmanager
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

#: The attempt the current thread is making (set by :meth:`Watchdog.attempt`), read by the connection classes.
_current = threading.local()


class DeadlineExceeded(requests.Timeout):
    """An attempt got no complete answer within ``timeout_seconds``; transient, so it is retried."""


class Attempt:
    """One request attempt: its deadline and, while it talks to the server, the socket it uses."""

    __slots__ = ("cut", "deadline", "done", "expired", "socket", "watchdog")

    def __init__(self, watchdog: Watchdog, deadline: float) -> None:
        self.watchdog = watchdog
        self.deadline = deadline
        self.socket: Any = None  # a socket.socket, or urllib3's SSLTransport (TLS inside a TLS proxy)
        self.expired = False  # the deadline passed while the attempt was in flight
        self.cut = False  # the watchdog shut this attempt's socket down: whatever came back is incomplete
        self.done = False

    def remaining(self) -> float:
        """Seconds left before the deadline (negative once it passed)."""
        return self.deadline - time.monotonic()


class Watchdog:
    """The deadlines of one client's attempts, and the one thread that enforces them.

    The thread starts with the first attempt and ends after :meth:`close` once no attempt is in flight; an attempt
    made after that starts it again, so no attempt is ever without its deadline.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Attempt]] = []
        self._order = itertools.count()
        self._live = 0
        self._thread: threading.Thread | None = None
        self._closing = False

    @contextmanager
    def attempt(self, seconds: float) -> Iterator[Attempt]:
        """The scope of one attempt in the current thread: its socket is shut down ``seconds`` after it began."""
        attempt = Attempt(self, time.monotonic() + seconds)
        with self._cond:
            heapq.heappush(self._heap, (attempt.deadline, next(self._order), attempt))
            self._live += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._watch, name="loops-deadline", daemon=True)
                self._thread.start()
            self._cond.notify()
        _current.attempt = attempt
        try:
            yield attempt
        finally:
            _current.attempt = None
            with self._cond:
                attempt.done = True
                attempt.socket = None
                self._live -= 1
                self._cond.notify()

    def close(self) -> None:
        """End the thread once no attempt is in flight (each ends by its deadline); returns when it has ended."""
        with self._cond:
            self._closing = True
            thread = self._thread
            self._cond.notify()
        if thread is not None:
            thread.join()

    def note(self, attempt: Attempt, sock: Any) -> None:
        """``attempt`` now talks over ``sock``; shut it down at once if the deadline has already passed."""
        with self._cond:
            if attempt.done:
                return
            attempt.socket = sock
            if attempt.expired:
                _shut_down(sock)
                attempt.cut = True

    def release(self, attempt: Attempt) -> None:
        """``attempt``'s connection went back to its pool: its socket is no longer this attempt's to cut."""
        with self._cond:
            attempt.socket = None

    def _watch(self) -> None:
        with self._cond:
            while True:
                now = time.monotonic()
                while self._heap and self._heap[0][0] <= now:
                    _, _, attempt = heapq.heappop(self._heap)
                    if not attempt.done:
                        attempt.expired = True
                        if attempt.socket is not None:
                            _shut_down(attempt.socket)
                            attempt.cut = True
                if self._closing and not self._live:
                    self._heap.clear()
                    self._thread = None
                    return
                self._cond.wait(self._heap[0][0] - now if self._heap else None)


def _shut_down(sock: Any) -> None:
    """Shut the connection down in both directions: a read blocked on it returns at once (closing would not)."""
    raw = sock if isinstance(sock, socket.socket) else getattr(sock, "socket", None)
    if isinstance(raw, socket.socket):
        # The plain socket's method, also for a TLS socket: ssl.SSLSocket.shutdown would drop its TLS state under
        # the thread that is reading with it. OSError: already closed, so nothing is blocked on it.
        with contextlib.suppress(OSError):
            socket.socket.shutdown(raw, socket.SHUT_RDWR)


def _attempt() -> Attempt | None:
    attempt: Attempt | None = getattr(_current, "attempt", None)
    return attempt


def _note(sock: Any) -> None:
    attempt = _attempt()
    if attempt is not None and sock is not None:
        attempt.watchdog.note(attempt, sock)


def _connect_within(conn: HTTPConnection, new_conn: Callable[[], socket.socket]) -> socket.socket:
    """Open ``conn``'s socket within what is left of the attempt's deadline, and note it.

    The TCP connect gets at most that long, and so does the TLS handshake that follows on an https connection (its
    socket is not the attempt's to shut down until it is wrapped; CPython bounds a whole handshake by the socket's
    timeout).
    """
    attempt = _attempt()
    if attempt is None:
        return new_conn()
    planned = conn.timeout
    conn.timeout = _within(planned, attempt.remaining())
    try:
        sock = new_conn()
    finally:
        conn.timeout = planned
    sock.settimeout(_within(sock.gettimeout(), attempt.remaining()))
    attempt.watchdog.note(attempt, sock)
    return sock


def _within(timeout: Any, remaining: float) -> float:
    left = max(remaining, 0.001)  # a deadline already passed: fail at once, as a timeout
    return min(float(timeout), left) if isinstance(timeout, int | float) else left


class _WatchedHTTPConnection(HTTPConnection):
    """urllib3's connection, telling the current attempt which socket it uses (for TLS, the wrapped one)."""

    def _new_conn(self) -> socket.socket:
        return _connect_within(self, super()._new_conn)

    def connect(self) -> None:
        super().connect()
        _note(self.sock)

    def request(self, method: str, url: str, body: Any = None, headers: Any = None, **options: Any) -> None:
        _note(self.sock)  # a kept-alive connection: the socket is already open
        super().request(method, url, body, headers, **options)


class _WatchedHTTPSConnection(_WatchedHTTPConnection, HTTPSConnection):
    """urllib3's TLS connection, watched the same way (its ``connect`` wraps the socket before ours notes it)."""


def _released() -> None:
    attempt = _attempt()
    if attempt is not None:
        attempt.watchdog.release(attempt)


class _WatchedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection

    def _put_conn(self, conn: Any) -> None:
        _released()
        super()._put_conn(conn)


class _WatchedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection

    def _put_conn(self, conn: Any) -> None:
        _released()
        super()._put_conn(conn)


_WATCHED_POOLS: dict[str, type[HTTPConnectionPool]] = {"http": _WatchedHTTPPool, "https": _WatchedHTTPSPool}


class DeadlineAdapter(requests.adapters.HTTPAdapter):
    """requests' adapter whose connections an attempt's deadline can cut (directly or through an HTTP proxy).

    A SOCKS proxy's pools are its own: through one, only requests' per-read timeout applies.
    """

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any) -> None:
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)
        self.poolmanager.pool_classes_by_scheme = _WATCHED_POOLS

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if manager.pool_classes_by_scheme is urllib3.poolmanager.pool_classes_by_scheme:
            manager.pool_classes_by_scheme = _WATCHED_POOLS
        return manager


__all__ = ["Attempt", "DeadlineAdapter", "DeadlineExceeded", "Watchdog"]
