"""The sandbox's WSGI app: Loops' HTTP surface (routes, auth, rate limit) plus latency and fault injection.

The rules themselves live in :mod:`target_loops.sandbox.store`; this module only speaks HTTP. Each ``/api``
request goes through the same pipeline, in this order, so that tests can reason about what was done:

1. latency (a sleep in the handler thread: the server is threaded, so requests still overlap);
2. auth (401, not counted against the rate limit);
3. the rate limit (fixed 1-second windows of the store clock; 429 and no work done);
4. a fault, from the injected queue first, else drawn from the configured fractions
   ("500"/"429"/"502": answered without doing the work; "drop": hang up without doing the work;
   "lost": do the work, then hang up);
5. routing (404/405), the JSON body (400), and the Loops operation.

Outside ``/api``: ``/`` is a read-only HTML page of the store (:mod:`target_loops.sandbox.page`) and
``/_sandbox/*`` are JSON views of it. Neither needs a key, counts against the rate limit or enters the log.

Hanging up: the app shuts the client socket down (``environ["werkzeug.socket"]``) and raises
:class:`ConnectionHungUp`, a ``ConnectionAbortedError``. Werkzeug's dev server treats any ``ConnectionError``
out of the app as "the client went away" and drops it silently, so the client sees the connection closed with
no answer (``requests.ConnectionError``) and nothing is printed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import random
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NoReturn

from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound
from werkzeug.routing import Map, Rule
from werkzeug.wrappers import Request, Response

from target_loops.operations import STREAM_HEADER
from target_loops.sandbox import page
from target_loops.sandbox.store import LoopsError, Store, bad_request, iso_timestamp

logger = logging.getLogger("target_loops.sandbox")

FAULT_KINDS: tuple[str, ...] = ("500", "429", "lost", "drop", "502")
"""Injectable faults. "502" (a non-JSON proxy page) is injection-only: it has no fraction setting."""

JSON_BODY_METHODS: frozenset[str] = frozenset({"POST", "PUT", "PATCH"})

StartResponse = Callable[..., Any]
Handler = Callable[[Request, Any, bool], tuple[int, Any]]


@dataclass(frozen=True)
class SandboxConfig:
    """Everything that shapes the sandbox's behaviour; frozen so a request reads one consistent snapshot."""

    api_key: str = "sandbox-key"
    team_name: str = "Sandbox team"
    rate_limit: int = 10
    latency_ms: float = 0.0
    latency_jitter_ms: float = 0.0
    fail_500: float = 0.0
    fail_429: float = 0.0
    fail_lost: float = 0.0
    fail_drop: float = 0.0
    seed: int | None = None
    lenient: bool = False
    properties: list[dict[str, Any]] = field(default_factory=list)
    lists: list[dict[str, Any]] = field(default_factory=list)
    #: Event definitions served by ``GET /v1/event-patterns/by-name/{eventName}`` (``store.normalize_event_pattern``).
    events: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        """Refuse nonsense at construction, so a bad test setup fails loudly instead of behaving oddly."""
        if self.rate_limit < 0:
            raise ValueError("rate_limit must be >= 0 (0 = unlimited)")
        if self.latency_ms < 0 or self.latency_jitter_ms < 0:
            raise ValueError("latency_ms and latency_jitter_ms must be >= 0")
        fractions = self.fault_fractions()
        if any(not 0.0 <= fraction <= 1.0 for _, fraction in fractions):
            raise ValueError("fail_* fractions must be between 0 and 1")
        if sum(fraction for _, fraction in fractions) > 1.0 + 1e-9:
            raise ValueError("fail_500 + fail_429 + fail_lost + fail_drop must not exceed 1")

    def fault_fractions(self) -> tuple[tuple[str, float], ...]:
        """(fault kind, fraction) pairs in the order one random draw is compared against them."""
        return (
            ("500", self.fail_500),
            ("429", self.fail_429),
            ("lost", self.fail_lost),
            ("drop", self.fail_drop),
        )


class ConnectionHungUp(ConnectionAbortedError):
    """Raised out of the WSGI app to make werkzeug's server drop the connection silently (no answer)."""


class RateLimiter:
    """Loops' limit: N requests per fixed 1-second window for the whole team (all keys share it)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._window: int | None = None
        self._count = 0

    def take(self, limit: int, now: float) -> tuple[bool, dict[str, str]]:
        """Count one request; returns (allowed, x-ratelimit-* headers). ``limit`` 0: unlimited, no headers."""
        if limit <= 0:
            return True, {}
        with self._lock:
            self._roll(now)
            self._count += 1
            remaining = max(0, limit - self._count)
            return self._count <= limit, _limit_headers(limit, remaining)

    def peek(self, limit: int, now: float) -> dict[str, str]:
        """The headers for an answer that does not count (a 401)."""
        if limit <= 0:
            return {}
        with self._lock:
            self._roll(now)
            return _limit_headers(limit, max(0, limit - self._count))

    def _roll(self, now: float) -> None:
        window = math.floor(now)
        if window != self._window:
            self._window, self._count = window, 0


def _limit_headers(limit: int, remaining: int) -> dict[str, str]:
    return {"x-ratelimit-limit": str(limit), "x-ratelimit-remaining": str(remaining)}


@dataclass
class _Injected:
    """A queued deterministic fault: ``count`` more requests to ``path`` (``None`` = any /api path)."""

    kind: str
    count: int
    path: str | None


def normalize_api_path(path: str) -> str:
    """Accept ``/api/v1/x``, ``/v1/x`` or ``v1/x`` in :meth:`SandboxApp.inject`: all name the same route."""
    path = "/" + path.lstrip("/")
    return path if path.startswith("/api/") else "/api" + path


def json_response(status: int, payload: Any, headers: dict[str, str] | None = None) -> Response:
    """A JSON answer, as every Loops endpoint gives."""
    return Response(json.dumps(payload), status=status, headers=headers, mimetype="application/json")


def error_response(status: int, message: str) -> Response:
    """Loops' error shape: ``{"success": false, "message": ...}``."""
    return json_response(status, {"success": False, "message": message})


def refusal_message(response: Response) -> str | None:
    """The ``message`` of an error answer (None for a success), or a short note when the answer is not JSON.

    Kept in the request log because "400" alone does not tell a person which value Loops refused.
    """
    if response.status_code < 400:
        return None
    if response.mimetype != "application/json":
        return f"{response.status_code} answer that is not JSON ({response.mimetype})"
    try:
        payload = json.loads(response.get_data())
    except ValueError:
        return None
    message = payload.get("message") if isinstance(payload, dict) else None
    return str(message) if message is not None else None


def _reject_constant(name: str) -> Any:
    """JSON has no NaN/Infinity: refuse them like a strict JSON parser (Python's accepts them by default)."""
    raise ValueError(f"invalid JSON constant {name}")


def parse_json_body(request: Request) -> tuple[Any, str | None]:
    """(parsed body, error message or None). GET-like requests carry no body and get (None, None)."""
    if request.method not in JSON_BODY_METHODS:
        return None, None
    raw = request.get_data(cache=True)
    if not raw.strip():
        return None, "The request body must be JSON."
    try:
        return json.loads(raw, parse_constant=_reject_constant), None
    except (ValueError, UnicodeDecodeError):
        return None, "The request body is not valid JSON."


class SandboxApp:
    """The WSGI callable. Holds the current config, the rate limiter and the fault machinery over a Store."""

    def __init__(self, store: Store, config: SandboxConfig | None = None) -> None:
        self.store = store
        self._config = config or SandboxConfig()
        self._lock = threading.Lock()
        self._limiter = RateLimiter()
        self._injected: list[_Injected] = []
        self._fault_rng, self._jitter_rng = self._rngs(self._config.seed)
        self._url_map = Map(self._rules(), strict_slashes=False, merge_slashes=False)

    # ----- control --------------------------------------------------------------------------------------

    @property
    def config(self) -> SandboxConfig:
        return self._config

    def configure(self, **fields: Any) -> SandboxConfig:
        """Swap in a new config (validated); a new ``seed`` restarts the random sequences."""
        unknown = set(fields) - {f.name for f in dataclasses.fields(SandboxConfig)}
        if unknown:
            raise TypeError(f"unknown SandboxConfig fields: {sorted(unknown)}")
        with self._lock:
            self._config = dataclasses.replace(self._config, **fields)
            if "seed" in fields:
                self._fault_rng, self._jitter_rng = self._rngs(self._config.seed)
            return self._config

    def inject(self, kind: str, count: int = 1, path: str | None = None) -> None:
        """Queue ``count`` faults for the next matching /api requests; queued faults beat the fractions."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {kind!r}: use one of {FAULT_KINDS}")
        if count < 1:
            raise ValueError("count must be >= 1")
        with self._lock:
            self._injected.append(_Injected(kind, count, normalize_api_path(path) if path else None))

    def clear_injected(self) -> None:
        """Forget every queued fault that has not fired yet."""
        with self._lock:
            self._injected.clear()

    @staticmethod
    def _rngs(seed: int | None) -> tuple[random.Random, random.Random]:
        """Separate generators so that latency jitter does not shift the (seeded) fault sequence."""
        if seed is None:
            return random.Random(), random.Random()
        return random.Random(seed), random.Random(f"{seed}-jitter")

    # ----- WSGI entry -----------------------------------------------------------------------------------

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        request = Request(environ)
        path = request.path
        if path == "/":
            response = self._page(request)
        elif path.startswith("/_sandbox/"):
            response = self._view(request)
        elif path == "/api" or path.startswith("/api/"):
            response = self._api(request)
        else:
            response = error_response(404, "Not found.")
        return response(environ, start_response)

    def _page(self, request: Request) -> Response:
        """The HTML page at ``/``: like the views, read-only, no auth, no rate limit, not logged."""
        if request.method not in ("GET", "HEAD"):
            response = error_response(405, "Method not allowed.")
            response.headers["Allow"] = "GET, HEAD"
            return response
        try:
            options = page.parse_options(request.args)
        except ValueError as exc:
            return error_response(400, str(exc))
        config = self._config
        team = page.TeamInfo(
            name=config.team_name,
            rate_limit=config.rate_limit,
            lenient=config.lenient,
            api_url=request.host_url + "api",
            faults=config.fault_fractions(),
            latency_ms=config.latency_ms,
            latency_jitter_ms=config.latency_jitter_ms,
        )
        state = self.store.snapshot()
        series = page.rate_series(state["requests"], config.rate_limit)
        body = page.render_page(state, team, options, iso_timestamp(self.store.now()), series)
        headers = {
            "Cache-Control": "no-store",
            "Content-Security-Policy": page.CONTENT_SECURITY_POLICY,
            "X-Content-Type-Options": "nosniff",
        }
        return Response(body, status=200, headers=headers, mimetype="text/html")

    def _view(self, request: Request) -> Response:
        """Read-only JSON views of the store: no auth, no rate limit, not logged.

        ``/_sandbox/rate`` is the page's requests-per-second chart as numbers (:func:`page.rate_series`).
        """
        views: dict[str, Callable[[], Any]] = {
            "/_sandbox/contacts": self.store.contacts,
            "/_sandbox/events": self.store.events,
            "/_sandbox/requests": self.store.requests,
            "/_sandbox/rate": lambda: page.rate_series(self.store.requests(), self._config.rate_limit),
            "/_sandbox/state": lambda: {"teamName": self._config.team_name, **self.store.snapshot()},
        }
        view = views.get(request.path.rstrip("/"))
        if view is None:
            return error_response(404, "Not found.")
        if request.method not in ("GET", "HEAD"):
            return error_response(405, "Method not allowed.")
        return json_response(200, view())

    def _api(self, request: Request) -> Response:
        """The /api pipeline described in the module docstring; every request ends in the request log."""
        config = self._config
        entry: dict[str, Any] = {
            "at": iso_timestamp(self.store.now()),
            "method": request.method,
            "path": request.path,
            "query": request.args.to_dict(),
            "status": None,
            "idempotencyKey": request.headers.get("Idempotency-Key"),
            # Where the target says so: its run (User-Agent) and stream (page.py groups the log by them).
            "run": page.run_of(request.headers.get("User-Agent")),
            "stream": page.stream_of(request.headers.get(STREAM_HEADER)),
            "body": None,
            "fault": None,
            "message": None,
        }
        self._sleep_latency(config)
        body, body_error = parse_json_body(request)
        entry["body"] = body
        if not self._authorized(request, config):
            response = error_response(401, "Invalid API key")
            response.headers.update(self._limiter.peek(config.rate_limit, self.store.now()))
        else:
            allowed, limit_headers = self._limiter.take(config.rate_limit, self.store.now())
            if allowed:
                response = self._answer(request, entry, body, body_error, config)
            else:
                entry["fault"] = "rate_limited"
                response = error_response(429, "Rate limit exceeded")
            response.headers.update(limit_headers)
            if entry["fault"] == "429" and limit_headers:
                response.headers["x-ratelimit-remaining"] = "0"
        self._log(entry, response)
        return response

    def _answer(
        self,
        request: Request,
        entry: dict[str, Any],
        body: Any,
        body_error: str | None,
        config: SandboxConfig,
    ) -> Response:
        """The Loops operation wrapped in this request's fault, if it draws one."""
        entry["fault"] = fault = self._next_fault(request.path, config)
        if fault == "drop":
            self._log(entry, None)
            self._hang_up(request)
        response = self._fault_response(fault)
        if response is None:
            response = self._dispatch(request, body, body_error, config)
        if fault == "lost":
            self._log(entry, response)  # the status of the work done, never sent
            self._hang_up(request)
        return response

    def _log(self, entry: dict[str, Any], response: Response | None) -> None:
        """Record the request with its status and, for a refusal, Loops' message (what the page shows a person).

        ``response`` is None when the connection was dropped before any work: no status, no message.
        """
        entry["status"] = None if response is None else response.status_code
        entry["message"] = None if response is None else refusal_message(response)
        self.store.log_request(entry)

    # ----- pipeline steps -------------------------------------------------------------------------------

    def _sleep_latency(self, config: SandboxConfig) -> None:
        """Simulated network + Loops latency: ``latency_ms`` plus up to ``latency_jitter_ms`` at random."""
        if config.latency_ms <= 0 and config.latency_jitter_ms <= 0:
            return
        with self._lock:
            jitter = self._jitter_rng.uniform(0.0, config.latency_jitter_ms)
        time.sleep((config.latency_ms + jitter) / 1000.0)

    @staticmethod
    def _authorized(request: Request, config: SandboxConfig) -> bool:
        """Loops wants ``Authorization: Bearer <key>``; anything else is a 401."""
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        return scheme.lower() == "bearer" and token.strip() == config.api_key

    def _next_fault(self, path: str, config: SandboxConfig) -> str | None:
        """The queued fault for this path if any, else one random draw against the configured fractions."""
        with self._lock:
            for queued in self._injected:
                if queued.path is None or queued.path == path.rstrip("/"):
                    queued.count -= 1
                    if queued.count == 0:
                        self._injected.remove(queued)
                    return queued.kind
            fractions = config.fault_fractions()
            if not any(fraction > 0 for _, fraction in fractions):
                return None
            draw = self._fault_rng.random()
        threshold = 0.0
        for kind, fraction in fractions:
            threshold += fraction
            if draw < threshold:
                return kind
        return None

    @staticmethod
    def _fault_response(fault: str | None) -> Response | None:
        """The answer of a fault that answers without doing the work (None for no fault, "lost" or "drop")."""
        if fault == "500":
            return error_response(500, "Internal server error (sandbox fault).")
        if fault == "429":
            return error_response(429, "Rate limit exceeded")
        if fault == "502":
            page = "<html><head><title>502 Bad Gateway</title></head><body><h1>Bad Gateway</h1></body></html>"
            return Response(page, status=502, mimetype="text/html")
        return None

    @staticmethod
    def _hang_up(request: Request) -> NoReturn:
        """Close the client's connection without an answer; see the module docstring for why this is quiet."""
        sock = request.environ.get("werkzeug.socket")
        if sock is not None:
            with contextlib.suppress(OSError):  # the client may already be gone
                sock.shutdown(socket.SHUT_RDWR)
        raise ConnectionHungUp("sandbox fault: connection closed without an answer")

    def _dispatch(self, request: Request, body: Any, body_error: str | None, config: SandboxConfig) -> Response:
        """Route to the Loops operation; Loops' refusals become their status and error body."""
        adapter = self._url_map.bind_to_environ(request.environ)
        try:
            endpoint, _ = adapter.match()
        except MethodNotAllowed as exc:
            response = error_response(405, "Method not allowed.")
            response.headers["Allow"] = ", ".join(sorted(exc.valid_methods or ()))
            return response
        except (NotFound, HTTPException):
            return error_response(404, "Not found.")
        handler: Handler = getattr(self, f"_op_{endpoint}")
        try:
            if body_error is not None:
                raise bad_request(body_error)
            status, payload = handler(request, body, not config.lenient)
        except LoopsError as exc:
            return error_response(exc.status, exc.message)
        except Exception:  # a sandbox bug: answer like a server would, and say so once on stderr
            logger.exception("sandbox error handling %s %s", request.method, request.path)
            return error_response(500, "Internal server error (sandbox bug).")
        return json_response(status, payload)

    # ----- routes: each operation takes (request, parsed body, strict) and returns (status, payload) -----

    @staticmethod
    def _rules() -> list[Rule]:
        """Loops' v1 endpoints that the target uses; anything else under /api is a 404."""
        routes = [
            ("/api/v1/api-key", ["GET"], "api_key"),
            ("/api/v1/contacts/update", ["PUT"], "update"),
            ("/api/v1/contacts/create", ["POST"], "create"),
            ("/api/v1/contacts/find", ["GET"], "find"),
            ("/api/v1/contacts/delete", ["POST"], "delete"),
            ("/api/v1/contacts/properties", ["GET", "POST"], "properties"),
            ("/api/v1/lists", ["GET"], "lists"),
            ("/api/v1/events/send", ["POST"], "send_event"),
            ("/api/v1/event-patterns/by-name/<path:event_name>", ["GET"], "event_pattern"),
        ]
        return [Rule(path, methods=methods, endpoint=endpoint) for path, methods, endpoint in routes]

    def _op_api_key(self, request: Request, body: Any, strict: bool) -> tuple[int, Any]:
        return 200, {"success": True, "teamName": self._config.team_name}

    def _op_update(self, request: Request, body: Any, strict: bool) -> tuple[int, Any]:
        contact_id = self.store.upsert_contact(body, strict=strict)
        return 200, {"success": True, "id": contact_id}

    def _op_create(self, request: Request, body: Any, strict: bool) -> tuple[int, Any]:
        contact_id = self.store.create_contact(body, strict=strict)
        return 200, {"success": True, "id": contact_id}

    def _op_find(self, request: Request, body: Any, strict: bool) -> tuple[int, Any]:
        return 200, self.store.find_contacts(request.args.get("email"), request.args.get("userId"))

    def _op_delete(self, request: Request, body: Any, strict: bool) -> tuple[int, Any]:
        self.store.delete_contact(body)
        return 200, {"success": True, "message": "Contact deleted."}

    def _op_properties(self, request: Request, body: Any, strict: bool) -> tuple[int, Any]:
        if request.method == "POST":
            self.store.create_property(body)
            return 200, {"success": True}
        return 200, self.store.properties(request.args.get("list", "all"))

    def _op_lists(self, request: Request, body: Any, strict: bool) -> tuple[int, Any]:
        return 200, self.store.lists()

    def _op_event_pattern(self, request: Request, body: Any, strict: bool) -> tuple[int, Any]:
        name = request.path.split("/v1/event-patterns/by-name/", 1)[1]
        return 200, self.store.event_pattern(name)

    def _op_send_event(self, request: Request, body: Any, strict: bool) -> tuple[int, Any]:
        key = request.headers.get("Idempotency-Key") or None
        self.store.send_event(body, idempotency_key=key, strict=strict)
        return 200, {"success": True}
