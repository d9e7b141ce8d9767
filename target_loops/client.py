"""The one HTTP client of a run: the session, the rate limiter, the worker pool and the retry policy.

Every stream's sink sends through the same ``LoopsClient``, so the whole run stays inside one Loops team's budget
(10 requests/s unless Loops raised it) however many streams drain at once. Each answer is classified by the
status table of ``loops-api.md``: delivered, duplicate, already done, rejected for good, or retried.
"""

from __future__ import annotations

import ipaddress
import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests

from target_loops import __version__
from target_loops.operations import LoopsRequest, Outcome, OutcomeKind
from target_loops.rules import EVENT_PATH
from target_loops.serialization import dumps

logger = logging.getLogger("target_loops.client")

PERMANENT_NOTE = "Loops refused this record; fix the data or the rule and re-send it."
#: 429s in a row for one request before it is given up as failed (429 waits do not use ``max_retries``).
MAX_RATE_LIMITED_WAITS = 100
#: Retries of the start-of-run checks (GET /v1/api-key ...): fail within seconds when Loops cannot be reached.
START_RETRIES = 3


class LoopsAuthError(RuntimeError):
    """Loops answered 401/403: the key is wrong or revoked. The run stops at once."""


class LoopsUnavailableError(RuntimeError):
    """A transient failure outlived ``max_retries``: the run fails so that the next run replays the work."""


class BaseUrlError(ValueError):
    """``base_url`` is unusable (not http(s), or plain http to a host that is not this machine)."""


def check_base_url(url: str) -> str:
    """The API root without a trailing slash; refuses plain ``http://`` except to loopback (the sandbox).

    An API key sent over plain HTTP to another host can be read on the way, so it is never allowed.
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme not in ("http", "https") or not host:
        raise BaseUrlError(f"base_url {url!r} is not an http(s) URL; use https://app.loops.so/api or the sandbox's URL")
    if parts.scheme == "http" and not _is_loopback(host):
        raise BaseUrlError(
            f"base_url {url!r} uses plain http:// to {host!r}, which would send the API key unencrypted; "
            "use https://, or a loopback address (127.0.0.1, localhost) for the sandbox"
        )
    return url.rstrip("/")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ClientSettings:
    """What the client needs from the target's settings."""

    base_url: str
    api_key: str
    requests_per_second: float = 10
    max_concurrency: int = 4
    timeout_seconds: float = 30
    max_retries: int = 8
    backoff_seconds: float = 1.0
    backoff_max_seconds: float = 60.0


class RateLimiter:
    """Paces requests evenly at ``rate`` per second across threads (a token bucket of depth one).

    Even spacing, not bursts, is what keeps a per-second window on Loops' side from answering 429.
    ``pause`` pushes every later slot back (after a 429 or when the window is used up); ``lower_rate``
    follows the limit Loops announces in ``x-ratelimit-limit`` when it is below the configured one.
    """

    def __init__(self, rate: float) -> None:
        self._lock = threading.Lock()
        self.rate = float(rate)
        self._next = time.monotonic()

    def reserve(self) -> float:
        """Claim the next slot; returns how long the caller must wait before sending."""
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next)
            self._next = slot + 1.0 / self.rate
            return slot - now

    def pause(self, seconds: float) -> None:
        """No slot starts sooner than ``seconds`` from now."""
        with self._lock:
            self._next = max(self._next, time.monotonic() + seconds)

    def lower_rate(self, rate: float) -> bool:
        """Adopt a lower rate; True when it changed."""
        with self._lock:
            if 0 < rate < self.rate:
                self.rate = float(rate)
                return True
            return False


class LoopsClient:
    """Sends ``LoopsRequest`` values to Loops within its rate limit, retrying what is transient.

    Thread-safe: sinks of different streams call ``send_many`` at once and share one pool of
    ``max_concurrency`` workers, one session and one limiter.
    """

    def __init__(self, settings: ClientSettings) -> None:
        self.settings = settings
        self.base_url = check_base_url(settings.base_url)
        self.limiter = RateLimiter(settings.requests_per_second)
        self.session = requests.Session()
        adapter = requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=max(settings.max_concurrency, 1))
        self.session.mount("https://", adapter)
        self.session.mount("http://", adapter)
        self.session.headers.update(
            {
                "Authorization": f"Bearer {settings.api_key}",
                "Content-Type": "application/json",
                "Accept": "application/json",
                "User-Agent": f"target-loops/{__version__}",
            }
        )
        self._pool = ThreadPoolExecutor(max_workers=max(settings.max_concurrency, 1), thread_name_prefix="loops-http")
        self._stop = threading.Event()
        self._fatal: BaseException | None = None
        self._rng = random.Random()
        #: Called with each finished request's outcome, from the worker threads (progress reporting).
        self.listener: Callable[[Outcome], None] | None = None

    # --- public

    def check_api_key(self) -> str:
        """``GET /v1/api-key``: the team name, or ``LoopsAuthError`` before any record is read."""
        status, data = self._get_with_retries("/v1/api-key")
        if status in (401, 403):
            raise LoopsAuthError(
                "Loops rejected the API key (HTTP 401 from GET /v1/api-key). Set api_key to a valid key of the team "
                "(Loops → Settings → API); no record was read and nothing was written."
            )
        if status != 200:
            raise LoopsUnavailableError(f"GET /v1/api-key answered HTTP {status}: {_message(data)}")
        return str(data.get("teamName", "")) if isinstance(data, dict) else ""

    def get_json(self, path: str) -> Any:
        """A read-only GET (properties, lists), with the same retries; raises on anything but 200."""
        status, data = self._get_with_retries(path)
        if status in (401, 403):
            raise LoopsAuthError(f"Loops rejected the API key (HTTP {status} from GET {path}).")
        if status != 200:
            raise LoopsUnavailableError(f"GET {path} answered HTTP {status}: {_message(data)}")
        return data

    def send_many(self, batch: Sequence[LoopsRequest]) -> list[Outcome]:
        """Send every request (concurrently, paced), returning one outcome each, in order.

        Raises ``LoopsAuthError`` when Loops rejects the key; the other requests then end as ``ABORTED``.
        """
        outcomes = list(self._pool.map(self.send, batch))
        if isinstance(self._fatal, LoopsAuthError):
            raise self._fatal
        return outcomes

    def send(self, request: LoopsRequest) -> Outcome:
        """One request to its end: delivered, duplicate, already done, rejected, failed or aborted."""
        outcome = self._send(request)
        if self.listener is not None:
            self.listener(outcome)
        return outcome

    def _send(self, request: LoopsRequest) -> Outcome:
        outcome = Outcome(OutcomeKind.ABORTED)
        transient = 0
        while True:
            if self._stop.is_set():
                outcome.kind, outcome.message = OutcomeKind.ABORTED, "not sent: the run is stopping"
                return outcome
            self._wait(self.limiter.reserve())
            outcome.attempts += 1
            try:
                response = self.session.request(
                    request.method,
                    self.base_url + request.path,
                    data=dumps(request.body).encode("utf-8"),
                    headers={"Idempotency-Key": request.idempotency_key} if request.idempotency_key else None,
                    timeout=self.settings.timeout_seconds,
                )
            except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as exc:
                failure = f"{type(exc).__name__}: {_short(exc)}"
                if not self._retry_transient(outcome, transient, failure, request):
                    return outcome
                transient += 1
                continue
            status = response.status_code
            self._observe(response)
            data = _json_or_none(response)
            outcome.status, outcome.message = status, _message(data) or _short_text(response)
            if status == 200:
                outcome.kind = OutcomeKind.DELIVERED
                return outcome
            if status == 409 and request.path == EVENT_PATH:
                outcome.kind = OutcomeKind.DUPLICATE
                return outcome
            if status == 404 and request.method == "POST" and request.path.endswith("/contacts/delete"):
                outcome.kind = OutcomeKind.ALREADY_DONE
                return outcome
            if status == 429:
                outcome.rate_limited += 1
                if outcome.rate_limited >= MAX_RATE_LIMITED_WAITS:
                    outcome.kind = OutcomeKind.FAILED
                    outcome.message = f"still rate limited (429) after {outcome.rate_limited} waits"
                    self._stop.set()
                    return outcome
                self.limiter.pause(self._rate_limit_pause(response))
                continue
            if status in (401, 403):
                self._fail_run(
                    LoopsAuthError(
                        f"Loops rejected the API key (HTTP {status} from {request.method} {request.path}); "
                        "the run stopped. Check the api_key setting."
                    )
                )
                outcome.kind = OutcomeKind.ABORTED
                return outcome
            if status >= 500 or status == 408:
                if not self._retry_transient(outcome, transient, f"HTTP {status}: {outcome.message}", request):
                    return outcome
                transient += 1
                continue
            outcome.kind = OutcomeKind.REJECTED
            return outcome

    def abort(self) -> None:
        """Start no new request (the run is stopping); requests in flight finish."""
        self._stop.set()

    def close(self) -> None:
        """Stop the workers and the session (waits for requests in flight)."""
        self._stop.set()
        self._pool.shutdown(wait=True)
        self.session.close()

    # --- internals

    def _get_with_retries(self, path: str) -> tuple[int, Any]:
        """A read-only GET with the same pacing, for start-of-run checks.

        Retries are capped at 3 here: at the start nothing is in flight, so a Loops that cannot be reached
        should end the run within seconds (the next scheduled run tries again) rather than after minutes.
        """
        transient = 0
        retries = min(self.settings.max_retries, START_RETRIES)
        while True:
            self._wait(self.limiter.reserve())
            try:
                response = self.session.get(self.base_url + path, timeout=self.settings.timeout_seconds)
            except (requests.ConnectionError, requests.Timeout) as exc:
                if transient >= retries:
                    raise LoopsUnavailableError(
                        f"cannot reach Loops at {self.base_url} ({type(exc).__name__}) after {transient} retries; "
                        "check base_url and the network"
                    ) from None
                logger.warning("GET %s failed (%s); retry %d of %d", path, type(exc).__name__, transient + 1, retries)
                self._wait(self._backoff(transient))
                transient += 1
                continue
            self._observe(response)
            if response.status_code == 429:
                self.limiter.pause(self._rate_limit_pause(response))
                continue
            if response.status_code >= 500 and transient < retries:
                logger.warning(
                    "GET %s answered HTTP %d; retry %d of %d", path, response.status_code, transient + 1, retries
                )
                self._wait(self._backoff(transient))
                transient += 1
                continue
            return response.status_code, _json_or_none(response)

    def _retry_transient(self, outcome: Outcome, transient: int, failure: str, request: LoopsRequest) -> bool:
        """Sleep before a retry and return True, or mark the outcome failed when ``max_retries`` is spent."""
        if transient >= self.settings.max_retries:
            outcome.kind = OutcomeKind.FAILED
            outcome.message = f"{failure} (gave up after {transient} retries)"
            # Loops is failing: stop the other requests rather than burn through their retries too.
            self._stop.set()
            return False
        outcome.retries += 1
        logger.info(
            "Retrying %s %s after %s (retry %d of %d)",
            request.method,
            request.path,
            failure,
            transient + 1,
            self.settings.max_retries,
        )
        self._wait(self._backoff(transient))
        return True

    def _backoff(self, attempt: int) -> float:
        """Capped exponential backoff with jitter: half the step fixed, half random."""
        step = min(self.settings.backoff_max_seconds, self.settings.backoff_seconds * (2**attempt))
        return step / 2 + self._rng.uniform(0, step / 2)

    def _rate_limit_pause(self, response: requests.Response) -> float:
        """How long every worker holds back after a 429: ``Retry-After`` if Loops ever sends one, else ~a window."""
        retry_after = response.headers.get("Retry-After")
        if retry_after:
            try:
                return min(float(retry_after), self.settings.backoff_max_seconds)
            except ValueError:
                pass
        base = max(1.0 / self.limiter.rate, min(1.0, self.settings.backoff_seconds))
        return base * self._rng.uniform(1.0, 1.5)

    def _observe(self, response: requests.Response) -> None:
        """Follow Loops' ``x-ratelimit-*`` headers: adopt a lower announced limit; pause when the window is spent."""
        limit = _int_header(response, "x-ratelimit-limit")
        if limit is not None and self.limiter.lower_rate(limit):
            logger.warning("Loops announces a limit of %d requests/s; pacing at that rate", limit)
        if _int_header(response, "x-ratelimit-remaining") == 0:
            self.limiter.pause(1.0 / self.limiter.rate)

    def _fail_run(self, error: BaseException) -> None:
        if self._fatal is None:
            self._fatal = error
        self._stop.set()

    def _wait(self, seconds: float) -> None:
        if seconds > 0:
            self._stop.wait(seconds)


def _int_header(response: requests.Response, name: str) -> int | None:
    value = response.headers.get(name)
    try:
        return int(float(value)) if value is not None else None
    except ValueError:
        return None


def _json_or_none(response: requests.Response) -> Any:
    """The JSON body, or None for a body that is not JSON (a proxy's error page)."""
    try:
        return response.json()
    except ValueError:
        return None


def _message(data: Any) -> str | None:
    """Loops' ``message``, falling back to the deprecated ``error`` key."""
    if isinstance(data, dict):
        for key in ("message", "error"):
            if isinstance(data.get(key), str) and data[key]:
                return data[key]
    return None


def _short_text(response: requests.Response) -> str | None:
    text = (response.text or "").strip()
    return text[:200] if text else None


def _short(exc: BaseException) -> str:
    return str(exc)[:200]
