"""The one HTTP client of a run: the session, the rate limiter, the in-flight level and the retry policy.

Every request of a run goes through one ``LoopsClient``, so the whole run stays inside one Loops team's budget
(10 requests/s unless Loops raised it) however many threads send at once. The design follows stripe-python's
client: a pure decision about each answer (:func:`classify`, :func:`should_retry`, :func:`backoff_seconds`) and one
short loop (:meth:`LoopsClient._exchange`) that every request uses, GETs included.

Loops' rules, from its API reference (https://loops.so/docs/api-reference/intro):

- 200 with ``{"success": true, ...}`` is the only success; errors are ``{"success": false, "message": ...}`` (older
  answers carry ``error``), so the status decides and ``message`` (else ``error``) explains;
- 401: the key is wrong or revoked; 429: over the team's rate limit (10 requests/s, announced in
  ``x-ratelimit-limit`` / ``x-ratelimit-remaining``); 5xx: Loops' side; 405: wrong method, declared without a body
  in Loops' OpenAPI (https://loops.so/docs/api-reference/intro lists the statuses).

This project's own choices where Loops' documents say nothing (each is marked where it is made):

- a redirect is never followed and stops the run: Loops documents no 3xx answer, and requests would turn a
  redirected PUT/POST into a GET that "succeeds";
- 403 stops the run like 401: no Loops page documents it, and a refusal of the credential (by Loops or a gateway in
  front of it) would refuse every record alike;
- 408 is retried like a 5xx: by its definition the server did not process the request
  (https://www.rfc-editor.org/rfc/rfc9110#status.408), so sending it again cannot do the work twice;
- a 200 that is not Loops' JSON means ``base_url`` points at something else (a proxy's login page, a web server) and
  nothing was delivered (Loops' success bodies: https://loops.so/docs/api-reference).
"""

from __future__ import annotations

import collections
import enum
import ipaddress
import logging
import math
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import requests
from urllib3.util import parse_url

from target_loops import __version__
from target_loops.deadline import DeadlineAdapter, DeadlineExceeded, Watchdog
from target_loops.operations import SENDING_STREAM, STREAM_HEADER, LoopsRequest, Outcome, OutcomeKind
from target_loops.serialization import dumps
from target_loops.timeline import Timeline

logger = logging.getLogger("target_loops.client")

#: 429s for one request before it is given up (429 waits do not use ``max_retries``: they are Loops pacing us).
MAX_RATE_LIMITED_WAITS = 100
#: Retries of the start-of-run reads (GET /v1/api-key ...): fail within seconds when Loops cannot be reached.
START_RETRIES = 3
#: Answer times kept for the in-flight level (a moving window: about 6 s of answers at 10 requests/s).
RECENT_ANSWERS = 64
#: The percentile of recent answer times the in-flight level plans for, and the margin on top of it.
LEVEL_PERCENTILE = 0.9
LEVEL_MARGIN = 1.2
LEVEL_HEADROOM = 2


class LoopsAuthError(RuntimeError):
    """Loops answered 401/403: the key is wrong or revoked. The run stops at once."""


class LoopsUnavailableError(RuntimeError):
    """A transient failure outlived its retries: the run fails so that the next run replays the work."""


class NotLoopsError(LoopsUnavailableError):
    """``base_url`` answered something Loops never answers (HTML, a redirect, a 200 without ``success``).

    A kind of ``LoopsUnavailableError`` (Loops is not at that address), so a caller that stops on the one stops on
    the other; it is never retried.
    """


class BaseUrlError(ValueError):
    """``base_url`` is unusable (not http(s), user-info, a backslash, or plain http to a host that is not this one)."""


class ApiKeyError(ValueError):
    """``api_key`` cannot be a Loops key (empty, inner whitespace, control or non-ASCII characters)."""


# --- settings: the key and the URL


def clean_api_key(value: str) -> str:
    """The key without surrounding whitespace (a ``.env`` file's newline, Windows' ``\\r\\n``).

    Loops wants ``Authorization: Bearer <key>`` (https://loops.so/docs/api-reference/intro). A key with inner
    whitespace, control characters or non-ASCII characters cannot be one: it is refused by naming ``api_key`` and
    the position of the first bad character, never by echoing the key (an HTTP library's error would print it).
    """
    if not isinstance(value, str):
        raise ApiKeyError(f"api_key must be a string, not {type(value).__name__}")
    key = value.strip()
    if not key:
        raise ApiKeyError("api_key is empty (set it to a key from Loops → Settings → API)")
    for position, char in enumerate(key, start=1):
        code = ord(char)
        if code > 0x7E:
            what = "a non-ASCII character"
        elif char.isspace():
            what = "whitespace"
        elif code < 0x20 or code == 0x7F:
            what = "a control character"
        else:
            continue
        raise ApiKeyError(
            f"api_key contains {what} at position {position} of {len(key)}: a Loops key is printable ASCII with no "
            "spaces (surrounding whitespace is stripped); copy it again from Loops → Settings → API"
        )
    return key


def check_base_url(url: str) -> str:
    """The API root without a trailing slash, parsed as strictly as requests connects.

    Refused: anything but http(s); plain ``http://`` to a host that is not this machine (the key would cross the
    network unencrypted); user-info (``user:pass@``: requests would replace the Bearer key with Basic auth, and the
    password would reach logs); backslashes (``http://evil.example\\@127.0.0.1`` reads as 127.0.0.1 to urlsplit but
    requests connects to evil.example); whitespace and control characters; a query or fragment.
    """
    shown = _redact_url(url)
    if not isinstance(url, str) or not url:
        raise BaseUrlError("base_url is empty; use https://app.loops.so/api or the sandbox's URL")
    if "\\" in url:
        raise BaseUrlError(f"base_url {shown!r} contains a backslash; HTTP clients disagree on where its host ends")
    if any(char.isspace() or ord(char) < 0x20 or ord(char) == 0x7F for char in url):
        raise BaseUrlError(f"base_url {shown!r} contains whitespace or a control character")
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        _ = parts.port  # a port that is not a number raises here
        seen = parse_url(url)  # what requests (urllib3) will connect to
    except ValueError as exc:
        raise BaseUrlError(f"base_url {shown!r} is not a valid URL ({type(exc).__name__})") from None
    if "@" in parts.netloc:
        raise BaseUrlError(
            f"base_url {shown!r} contains user-info (user:password@); the API key is the only credential Loops "
            "takes: remove it"
        )
    if parts.scheme not in ("http", "https") or not host:
        raise BaseUrlError(
            f"base_url {shown!r} is not an http(s) URL; use https://app.loops.so/api or the sandbox's URL"
        )
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        raise BaseUrlError(f"base_url {shown!r} has a query or fragment; give only the API root")
    if (seen.host or "").strip("[]").lower() != host.lower() or seen.auth:
        raise BaseUrlError(f"base_url {shown!r} is read differently by HTTP clients; write it plainly")
    if parts.scheme == "http" and not _is_loopback(host):
        raise BaseUrlError(
            f"base_url {shown!r} uses plain http:// to {host!r}, which would send the API key unencrypted; "
            "use https://, or a loopback address (127.0.0.1, localhost) for the sandbox"
        )
    return url.rstrip("/")


def _redact_url(url: Any) -> str:
    """The URL for a message: any user-info replaced by ``***``."""
    text = str(url)
    scheme, sep, rest = text.partition("://")
    if not sep:
        return text
    authority, slash, path = rest.partition("/")
    if "@" in authority:
        authority = "***@" + authority.rsplit("@", 1)[1]
    return f"{scheme}{sep}{authority}{slash}{path}"


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ClientSettings:
    """What the client needs from the target's settings.

    ``max_concurrency`` is a ceiling: the client keeps about ``requests_per_second x recent answer time`` requests in
    flight (Little's law), never more than this.
    """

    base_url: str
    api_key: str
    requests_per_second: float = 10
    max_concurrency: int = 32
    #: The whole of one attempt: connect, send, and the complete answer, headers and body (see ``deadline``).
    timeout_seconds: float = 30
    max_retries: int = 8
    backoff_seconds: float = 1.0
    backoff_max_seconds: float = 60.0


# --- the pure decision


class Decision(str, enum.Enum):
    """What to do with one answer."""

    DONE = "done"  # Loops holds the effect (200, or a status the request says also means done)
    REJECTED = "rejected"  # a permanent refusal of this request
    RETRY = "retry"  # transient: back off and send again
    RATE_LIMITED = "rate_limited"  # 429: everyone pauses, then send again
    FATAL = "fatal"  # the run must stop (bad key, not Loops)


@dataclass(frozen=True)
class Verdict:
    """The meaning of one answer: ``kind`` for DONE/REJECTED, ``error`` for FATAL."""

    decision: Decision
    message: str | None = None
    kind: OutcomeKind | None = None
    error: Exception | None = None


#: Exceptions after which the same request may succeed (the connection, not the request, failed).
TRANSIENT_EXCEPTIONS: tuple[type[BaseException], ...] = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
)


def classify(
    request: LoopsRequest,
    status: int | None,
    body: Any,
    content_type: str | None,
    exception: BaseException | None = None,
    *,
    location: str | None = None,
    empty: bool = False,
) -> Verdict:
    """The meaning of one answer (or of the exception that replaced it); pure, no I/O.

    ``body`` is the parsed JSON body or None when the body is not JSON; ``empty`` says the answer had no body at all.
    Status table: https://loops.so/docs/api-reference/intro (200 success; 400 invalid request; 401 bad key; 404 not
    found; 405 wrong method; 409 idempotency key already used; 429 rate limited; 5xx Loops' side).

    The status decides first where Loops documents no body: a 405 (declared without one in Loops' OpenAPI) is a
    refusal of the request whatever its body, and so is a 404 without a body. Only a 404 that carries a page that
    is not JSON (a web server's "Not Found") means ``base_url`` is not Loops.
    """
    what = f"{request.method} {request.path}"
    if exception is not None:
        if isinstance(exception, DeadlineExceeded):
            return Verdict(Decision.RETRY, str(exception))  # the client's own words: no header value in them
        if isinstance(exception, TRANSIENT_EXCEPTIONS):
            return Verdict(Decision.RETRY, f"{type(exception).__name__}: {_short(exception)}")
        # Anything else (requests' InvalidHeader, InvalidURL, ...) is a local fault that retrying cannot fix. Its
        # text may hold a header value (the key), so only its type is named.
        return Verdict(
            Decision.FATAL,
            error=LoopsUnavailableError(f"{what} could not be sent ({type(exception).__name__})"),
        )
    assert status is not None, "an answer has a status"
    got = _content_label(content_type)
    if 300 <= status < 400:
        # This project's choice: Loops documents no redirect, and requests would turn a redirected PUT/POST into a GET
        # that "succeeds".
        target = f" to {_redact_url(location)}" if location else ""
        return Verdict(
            Decision.FATAL,
            error=NotLoopsError(
                f"does not look like the Loops API: {what} was answered with a redirect (HTTP {status}{target}); "
                "Loops documents no redirect, so base_url points elsewhere (use https://app.loops.so/api)"
            ),
        )
    if status == 200:
        if request.method == "GET" and body is not None and not _is_failure(body):
            return Verdict(Decision.DONE, kind=OutcomeKind.DELIVERED)  # reads answer arrays or objects
        if isinstance(body, dict) and body.get("success") is True:
            return Verdict(Decision.DONE, _message(body), kind=OutcomeKind.DELIVERED)
        if body is None:
            # requests reads a JSON ``null`` as None too: neither it nor malformed JSON is any answer of Loops.
            shown = f"null or malformed JSON ({got})" if got.endswith("json") else got
            detail = f"got {shown} from {what}"
        else:
            detail = f'got JSON without "success": true from {what}'
        return Verdict(
            Decision.FATAL,
            f"HTTP 200 without Loops' success answer ({detail})",
            error=NotLoopsError(
                f"does not look like the Loops API: {detail}"
                + ("" if request.method == "GET" else "; nothing was delivered")
            ),
        )
    for also_status, also_kind in request.also_done:
        # Only Loops' own JSON error counts: a web server's 404 page on a delete means a wrong base_url.
        if status == also_status and isinstance(body, dict):
            return Verdict(Decision.DONE, _message(body), kind=also_kind)
    message = _message(body) or f"HTTP {status} ({got})"
    # 401 is Loops' bad key (https://loops.so/docs/api-reference/intro); 403 is this project's choice (module doc).
    if status in (401, 403):
        return Verdict(
            Decision.FATAL,
            message,
            error=LoopsAuthError(
                f"Loops rejected the API key (HTTP {status} from {what}); the run stopped. Check the api_key setting "
                "(a key of the team, from Loops → Settings → API)."
            ),
        )
    if status == 429:
        return Verdict(Decision.RATE_LIMITED, message)
    if status >= 500 or status == 408:  # 408: this project's choice (module docstring)
        return Verdict(Decision.RETRY, f"HTTP {status}: {message}")
    if 200 < status < 300:
        return Verdict(
            Decision.FATAL,
            message,
            error=NotLoopsError(
                f"does not look like the Loops API: {what} answered HTTP {status} ({got}); Loops answers 200"
            ),
        )
    if body is None and status == 404 and not empty:
        # Loops answers its 404s in JSON (or, where undocumented, without a body); an HTML "Not Found" is a web server
        # at the wrong address. A 405 is decided by its status alone: Loops' OpenAPI declares it without a body.
        return Verdict(
            Decision.FATAL,
            message,
            error=NotLoopsError(f"does not look like the Loops API: got {got} (HTTP {status}) from {what}"),
        )
    return Verdict(Decision.REJECTED, message, kind=OutcomeKind.REJECTED)


def should_retry(verdict: Verdict, retries: int, max_retries: int, rate_limited: int) -> bool:
    """Whether another attempt is worth it (stripe-python's ``_should_retry``): transient and within budget."""
    if verdict.decision is Decision.RETRY:
        return retries < max_retries
    if verdict.decision is Decision.RATE_LIMITED:
        return rate_limited < MAX_RATE_LIMITED_WAITS
    return False


def backoff_seconds(retries: int, base: float, cap: float, rng: random.Random) -> float:
    """Capped exponential backoff with jitter (stripe-python's ``_sleep_time_seconds``): half fixed, half random."""
    step = min(cap, base * (2**retries))
    return step / 2 + rng.uniform(0, step / 2)


def rate_limit_pause(retry_after: str | None, rate: float, recent: int, cap: float, rng: random.Random) -> float:
    """How long every sender holds back after a 429; ``recent`` counts the other 429s of the last two seconds.

    Loops documents no ``Retry-After`` (https://loops.so/docs/api-reference/intro: 10 requests/s per team, over it a
    429); one is honoured if it ever comes. Otherwise one pacing slot for a lone 429 (a window that a little jitter
    overfilled), doubling with each further 429 up to a whole one-second window (someone else shares the team's
    limit, or the limit is lower than announced).
    """
    if retry_after:
        try:
            seconds = float(retry_after)
        except ValueError:
            seconds = -1.0
        if seconds >= 0 and math.isfinite(seconds):
            return min(seconds, cap)
    pause = min(1.0, cap, (1.0 / rate) * 2 ** min(recent, 10))
    return pause * rng.uniform(1.0, 1.5)


# --- pacing and the in-flight level


class RateLimiter:
    """Paces request starts evenly across threads (a token bucket of depth one).

    Even spacing, not bursts, is what keeps a per-second window on Loops' side from answering 429. ``limit`` is the
    most Loops allows (the setting, or the lower ``x-ratelimit-limit`` Loops announces); ``rate`` is the pace, which
    a 429 lowers by a few percent (at most once a second) and answers without 429 bring back to the limit: when the
    time a request takes to reach Loops varies, an evenly paced stream can still overfill a fixed one-second window
    now and then, and a slightly slower pace is worth far more than the pauses 429s cost.
    """

    #: A 429 lowers the pace by this fraction of the limit; ``RECOVER_ANSWERS`` answers without one bring it back.
    CUT = 0.03
    RECOVER_ANSWERS = 300
    #: The pace never drops below this fraction of the limit on 429s alone (pauses handle the rest).
    FLOOR = 0.5

    def __init__(self, rate: float) -> None:
        self._lock = threading.Lock()
        self.limit = float(rate)
        self.rate = float(rate)
        self._next = time.monotonic()
        self._paused_until = 0.0
        self._last_cut = -math.inf

    def reserve(self) -> float:
        """Claim the next slot; returns how long the caller must wait before sending."""
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next)
            self._next = slot + 1.0 / self.rate
            return slot - now

    def acquire(self, stop: threading.Event) -> bool:
        """Wait for a slot; a hard pause that began meanwhile moves the slot after it. False once ``stop`` is set."""
        while True:
            wait = self.reserve()
            if wait > 0 and stop.wait(wait):
                return False
            if stop.is_set():
                return False
            with self._lock:
                if time.monotonic() >= self._paused_until:
                    return True

    def pause(self, seconds: float, *, hard: bool = True) -> None:
        """No new slot starts sooner than ``seconds`` from now; ``hard`` also holds back slots already reserved."""
        with self._lock:
            until = time.monotonic() + seconds
            self._next = max(self._next, until)
            if hard:
                self._paused_until = max(self._paused_until, until)

    def slow_down(self, answer_seconds: float = 0.0) -> bool:
        """After a 429: lower the pace by ``CUT`` of the limit; True when it changed.

        At most once a second or once per answer time (``answer_seconds``), whichever is longer: the 429s of
        requests sent before the last cut say nothing about the pace since.
        """
        with self._lock:
            now = time.monotonic()
            if now - self._last_cut < max(1.0, answer_seconds):
                return False
            self._last_cut = now
            rate = max(self.limit * self.FLOOR, self.rate - self.limit * self.CUT)
            changed, self.rate = rate < self.rate, rate
            return changed

    def speed_up(self) -> None:
        """After an answer that was not a 429: move the pace back toward the limit."""
        if self.rate < self.limit:
            with self._lock:
                self.rate = min(self.limit, self.rate + self.limit * self.CUT / self.RECOVER_ANSWERS)

    def lower_rate(self, rate: float) -> bool:
        """Adopt a lower limit (``x-ratelimit-limit``); True when it changed."""
        with self._lock:
            if 0 < rate < self.limit:
                self.limit = float(rate)
                self.rate = min(self.rate, self.limit)
                return True
            return False


class InFlight:
    """How many requests may be in flight: Little's law, ``rate x recent answer time``, between 1 and a ceiling.

    The level follows a moving percentile of recent answer times (HTTP round trips only, not waits for a slot or
    a 429 pause), so it rises when Loops slows down and falls when it speeds up. The token bucket still decides
    when each request starts: a higher level never means a burst.
    """

    def __init__(self, ceiling: int, rate: Callable[[], float]) -> None:
        self.ceiling = max(1, int(ceiling))
        self._rate = rate
        self._cond = threading.Condition()
        self._recent: collections.deque[float] = collections.deque(maxlen=RECENT_ANSWERS)
        self._active = 0
        # Nothing measured yet: the ceiling, which costs nothing (starts are paced); the first answer sets it.
        self.level = self.ceiling
        self.peak = 0

    @contextmanager
    def slot(self, stop: threading.Event) -> Iterator[bool]:
        """Hold one place in flight (True), or yield False when the run is stopping."""
        with self._cond:
            while self._active >= self.level and not stop.is_set():
                self._cond.wait(0.1)
            if stop.is_set():
                yield False
                return
            self._active += 1
            self.peak = max(self.peak, self._active)
        try:
            yield True
        finally:
            with self._cond:
                self._active -= 1
                self._cond.notify()

    def observe(self, seconds: float) -> None:
        """One answer time: recompute the level."""
        with self._cond:
            self._recent.append(seconds)
            ordered = sorted(self._recent)
            planned = ordered[min(len(ordered) - 1, int(LEVEL_PERCENTILE * len(ordered)))]
            wanted = math.ceil(self._rate() * planned * LEVEL_MARGIN) + LEVEL_HEADROOM
            level = max(1, min(self.ceiling, wanted))
            if level != self.level:
                grew = level > self.level
                self.level = level
                if grew:
                    self._cond.notify_all()

    def recent_answer_seconds(self) -> float:
        """The median of recent answer times (0 before any answer)."""
        with self._cond:
            if not self._recent:
                return 0.0
            return sorted(self._recent)[len(self._recent) // 2]

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    @property
    def active(self) -> int:
        return self._active


class AnswerTimes:
    """Every answer time of the run in 1 ms buckets: exact-enough percentiles in bounded memory."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: collections.Counter[int] = collections.Counter()
        self._total = 0

    def add(self, seconds: float) -> None:
        with self._lock:
            self._counts[round(seconds * 1000)] += 1
            self._total += 1

    def percentile(self, fraction: float) -> int | None:
        with self._lock:
            if not self._total:
                return None
            rank = max(1, math.ceil(fraction * self._total))
            seen = 0
            for ms in sorted(self._counts):
                seen += self._counts[ms]
                if seen >= rank:
                    return ms
            return max(self._counts)


class _BearerAuth(requests.auth.AuthBase):
    """``Authorization: Bearer <key>`` (https://loops.so/docs/api-reference/intro) set as the session's auth.

    Being the session's auth, it also keeps requests from replacing it with a ``~/.netrc`` login. Its repr never
    shows the key.
    """

    def __init__(self, key: str) -> None:
        self._key = key

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self._key}"
        return request

    def __repr__(self) -> str:
        return "_BearerAuth(***)"


# --- the client


class LoopsClient:
    """Sends ``LoopsRequest`` values to Loops within its rate limit, retrying what is transient.

    Thread-safe: callers may call :meth:`send` from up to ``max_concurrency`` threads at once; the client decides
    how many are in flight (:class:`InFlight`) and when each starts (:class:`RateLimiter`).
    """

    def __init__(self, settings: ClientSettings) -> None:
        self.settings = settings
        self.base_url = check_base_url(settings.base_url)
        self._key = clean_api_key(settings.api_key)
        self.limiter = RateLimiter(settings.requests_per_second)
        ceiling = max(int(settings.max_concurrency), 1)
        self.in_flight = InFlight(ceiling, lambda: self.limiter.rate)
        self.session = requests.Session()
        host = urlsplit(self.base_url).hostname or ""
        if _is_loopback(host):
            # The sandbox on this machine: never through the environment's HTTP(S)_PROXY (the key would travel
            # to the proxy). For Loops itself the environment's proxies stay honoured (corporate networks).
            self.session.trust_env = False
            self.session.proxies.clear()
        # Its connections tell the watchdog which socket each attempt uses, so that a deadline can cut it.
        adapter = DeadlineAdapter(pool_connections=1, pool_maxsize=ceiling, max_retries=0)
        self._watchdog = Watchdog()
        self.session.mount("https://", adapter)
        self.session.mount("http://", adapter)
        self.session.auth = _BearerAuth(self._key)
        self.session.headers.update(
            {
                "Content-Type": "application/json",
                "Accept": "application/json",
                "User-Agent": f"target-loops/{__version__}",
            }
        )
        self._pool = ThreadPoolExecutor(max_workers=ceiling, thread_name_prefix="loops-http")
        self._stop = threading.Event()
        self._fatal: Exception | None = None
        self._rng = random.Random()
        self._answers = AnswerTimes()
        #: Requests, 429s, retries and answer times per second of the run: the HTML run report's charts.
        self.timeline = Timeline()
        self._counts_lock = threading.Lock()
        self._counts = {"requests": 0, "rate_limited": 0, "retries": 0}
        self._recent_429: collections.deque[float] = collections.deque()
        #: Called with each finished request's outcome, from the sending thread (progress reporting).
        self.listener: Callable[[Outcome], None] | None = None
        #: Asked between attempts and during waits: True once the run was told to stop. A signal handler cannot
        #: call ``abort()`` (it takes a lock the interrupted thread may hold), so the target sets this instead, and
        #: the start-of-run reads on the main thread stop at once rather than after their retries.
        self.stopping: Callable[[], bool] = lambda: False

    # --- public

    def identify_run(self, run_id: str) -> None:
        """Name the run in every request's ``User-Agent`` (``target-loops/<version> run/<id>``), so that a server's
        log (the sandbox's page lists runs by it) can tell the requests of one target process apart."""
        self.session.headers["User-Agent"] = f"target-loops/{__version__} run/{run_id}"

    def check_api_key(self) -> str:
        """``GET /v1/api-key`` (https://loops.so/docs/api-reference/api-key): the team name.

        Raises before any record is read: ``LoopsAuthError`` for a bad key, ``NotLoopsError`` when base_url answers
        something that is not Loops (an HTML page, a redirect), ``LoopsUnavailableError`` when it cannot be reached.
        """
        data = self.get_json("/v1/api-key")
        if not isinstance(data, dict) or data.get("success") is not True:
            raise NotLoopsError(
                f"base_url {self.base_url} does not look like the Loops API: GET /v1/api-key answered JSON without "
                '"success": true'
            )
        return str(data.get("teamName") or "")

    def get_json(self, path: str) -> Any:
        """A read-only GET (properties, lists), through the same loop with a small transient budget.

        Raises ``LoopsAuthError``, ``NotLoopsError`` or ``LoopsUnavailableError`` on anything but Loops' 200.
        """
        outcome = self.read(path)
        if outcome.kind is OutcomeKind.DELIVERED:
            return outcome.body
        raise LoopsUnavailableError(f"GET {path} answered HTTP {outcome.status}: {outcome.message}")

    def read(self, path: str) -> Outcome:
        """A read-only GET whose refusal is an answer too: DELIVERED with the JSON body, or REJECTED with the status
        and Loops' message (a 404 for an event Loops has no definition of, a 405 from an API without the route).

        Raises ``LoopsAuthError``, ``NotLoopsError`` or ``LoopsUnavailableError`` when there is no such answer.
        """
        request = LoopsRequest("GET", path, {})
        outcome, verdict, data = self._exchange(request, max_retries=min(self.settings.max_retries, START_RETRIES))
        if verdict is not None and verdict.decision is Decision.DONE:
            outcome.body = data
            return outcome
        if verdict is not None and verdict.decision is Decision.REJECTED:
            return outcome
        if outcome.kind is OutcomeKind.ABORTED:
            self.raise_if_fatal()
            raise LoopsUnavailableError(f"GET {path} was not sent: the run is stopping")
        if outcome.status is None or outcome.status in (408, 429) or outcome.status >= 500:
            raise LoopsUnavailableError(
                f"cannot reach Loops at {self.base_url}: GET {path} failed ({outcome.message}); "
                "check base_url and the network"
            )
        raise LoopsUnavailableError(f"GET {path} answered HTTP {outcome.status}: {outcome.message}")

    def send_many(self, batch: Sequence[LoopsRequest]) -> list[Outcome]:
        """Send every request (concurrently, paced), returning one outcome each, in order.

        Raises the run's fatal error (``LoopsAuthError``, ``NotLoopsError``) if one happened; the other requests
        then end as ``ABORTED``.
        """
        outcomes = list(self._pool.map(self.send, batch))
        self.raise_if_fatal()
        return outcomes

    def send(self, request: LoopsRequest) -> Outcome:
        """One request to its end: delivered, duplicate, already done, rejected, failed or aborted. Blocking."""
        outcome, verdict, data = self._exchange(request, max_retries=self.settings.max_retries)
        if request.method == "GET" and verdict is not None and verdict.decision is Decision.DONE:
            outcome.body = data
        if self.listener is not None:
            self.listener(outcome)
        return outcome

    def not_loops(self, what: str) -> NotLoopsError:
        """The error for an answer of Loops' status but not its shape (``what`` says which read, what came back):
        it names base_url, and never holds the key (a server that is not Loops may echo it)."""
        error = self._located(NotLoopsError(f"does not look like the Loops API: {what}"))
        assert isinstance(error, NotLoopsError), "_located keeps the error's type"
        return error

    def raise_if_fatal(self) -> None:
        """Raise the run's fatal error (bad key, not Loops, redirect), if one happened."""
        if self._fatal is not None:
            raise self._fatal

    @property
    def fatal(self) -> Exception | None:
        """The run's fatal error, or None."""
        return self._fatal

    def abort(self) -> None:
        """Start no new attempt and no backoff wait (the run is stopping); an attempt in flight ends by its
        deadline (``timeout_seconds``), whatever the server does. Safe to call from any thread."""
        self._stop.set()
        self.in_flight.wake()

    def close(self) -> None:
        """Stop the workers and the session: waits for attempts in flight, so returns within ``timeout_seconds``."""
        self.abort()
        self._pool.shutdown(wait=True)
        self._watchdog.close()
        self.session.close()

    def stats(self) -> dict[str, Any]:
        """Figures for progress lines and the run report: answer times, the in-flight level, request counts."""
        with self._counts_lock:
            counts = dict(self._counts)
        return {
            "answer_ms_p50": self._answers.percentile(0.5),
            "answer_ms_p95": self._answers.percentile(0.95),
            "in_flight_level": self.in_flight.level,
            "in_flight_now": self.in_flight.active,
            "in_flight_peak": self.in_flight.peak,
            "in_flight_ceiling": self.in_flight.ceiling,
            "requests_per_second": round(self.limiter.rate, 3),
            "rate_limit": self.limiter.limit,
            **counts,
        }

    # --- the one loop

    def _exchange(self, request: LoopsRequest, *, max_retries: int) -> tuple[Outcome, Verdict | None, Any]:
        """Send ``request`` until it is settled; returns the outcome, the last verdict and the last JSON body."""
        outcome = Outcome(OutcomeKind.ABORTED)
        verdict: Verdict | None = None
        data: Any = None
        data_bytes = None if request.method == "GET" else dumps(request.body).encode("utf-8")
        headers = {"Idempotency-Key": request.idempotency_key} if request.idempotency_key else {}
        stream = SENDING_STREAM.get()
        if stream is not None:
            # Informational only (no server needs it): percent-encoded, since a header value is Latin-1.
            headers[STREAM_HEADER] = quote(stream, safe="")
        url = self.base_url + request.path
        while True:
            if self.stopping():
                self.abort()
            if self._stop.is_set():
                outcome.kind = OutcomeKind.ABORTED
                outcome.message = self._stopping_message(outcome)
                return outcome, verdict, data
            response: requests.Response | None = None
            error: BaseException | None = None
            with self.in_flight.slot(self._stop) as sending:
                if not sending or not self.limiter.acquire(self._stop):
                    continue  # stopping: the check above ends it
                outcome.attempts += 1
                self._count("requests")
                started = time.perf_counter()
                with self._watchdog.attempt(self.settings.timeout_seconds) as attempt:
                    try:
                        response = self.session.request(
                            request.method,
                            url,
                            data=data_bytes,
                            headers=headers,
                            timeout=self.settings.timeout_seconds,  # each read's; the watchdog bounds the whole
                            allow_redirects=False,
                        )
                    except Exception as exc:
                        error = exc
                elapsed = time.perf_counter() - started
                if attempt.cut or (error is not None and attempt.remaining() <= 0):
                    # Cut by its deadline: whatever came back is incomplete (a 200 cut inside its headers can
                    # even look whole), and a timeout at the deadline is the same failure.
                    if response is not None:
                        response.close()
                    response = None
                    error = DeadlineExceeded(f"no complete answer within {self.settings.timeout_seconds:g} s")
            if response is not None:
                self._answers.add(elapsed)
                self.timeline.answer(elapsed)
                self.in_flight.observe(elapsed)
                self._observe(response)
                data = _json_or_none(response)
                verdict = classify(
                    request,
                    response.status_code,
                    data,
                    response.headers.get("Content-Type"),
                    location=response.headers.get("Location"),
                    empty=not response.content,
                )
                outcome.status = response.status_code
            else:
                verdict = classify(request, None, None, None, error)
                outcome.status = None
            outcome.message = self._scrub(verdict.message)
            if verdict.decision is Decision.DONE or verdict.decision is Decision.REJECTED:
                outcome.kind = verdict.kind or OutcomeKind.DELIVERED
                return outcome, verdict, data
            if verdict.decision is Decision.FATAL:
                error = self._located(verdict.error or NotLoopsError(verdict.message or "unexpected answer"))
                self._fail_run(error)
                outcome.kind, outcome.message = OutcomeKind.ABORTED, str(error)
                return outcome, verdict, data
            if not should_retry(verdict, outcome.retries, max_retries, outcome.rate_limited):
                # Loops is failing (or rate limiting without end): stop the other requests rather than burn through
                # their retries too; the run fails and the next one replays what was not delivered.
                outcome.kind = OutcomeKind.FAILED
                outcome.message = (
                    f"still rate limited (429) after {outcome.rate_limited} waits"
                    if verdict.decision is Decision.RATE_LIMITED
                    else f"{outcome.message} (gave up after {outcome.retries} retries{self._budget_note(max_retries)})"
                )
                self._stop.set()
                return outcome, verdict, data
            if verdict.decision is Decision.RATE_LIMITED:
                outcome.rate_limited += 1
                self._count("rate_limited")
                assert response is not None
                self._rate_limited(response)
                continue
            outcome.retries += 1  # Decision.RETRY
            self._count("retries")
            logger.info(
                "Retrying %s %s after %s (retry %d of %d)",
                request.method,
                request.path,
                outcome.message,
                outcome.retries,
                max_retries,
            )
            self._wait(
                backoff_seconds(
                    outcome.retries - 1, self.settings.backoff_seconds, self.settings.backoff_max_seconds, self._rng
                )
            )

    # --- internals

    def _budget_note(self, max_retries: int) -> str:
        """Why a read at start gave up before ``max_retries``: its budget is smaller, so a wrong base_url fails fast."""
        if max_retries >= self.settings.max_retries:
            return ""
        return (
            f": the checks at start retry at most {START_RETRIES} times; max_retries ({self.settings.max_retries}) "
            "is for sending"
        )

    def _observe(self, response: requests.Response) -> None:
        """Follow Loops' ``x-ratelimit-*`` headers (https://loops.so/docs/api-reference/intro): adopt a lower
        announced limit; hold back one slot when the current window is spent."""
        limit = _int_header(response, "x-ratelimit-limit")
        if limit is not None and self.limiter.lower_rate(limit):
            logger.warning("Loops announces a limit of %d requests/s; pacing at that rate", limit)
        if _int_header(response, "x-ratelimit-remaining") == 0:
            # Soft: later starts move back one slot; starts already reserved keep their time.
            self.limiter.pause(1.0 / self.limiter.rate, hard=False)
        if response.status_code != 429:
            self.limiter.speed_up()

    def _rate_limited(self, response: requests.Response) -> None:
        """A 429: everyone pauses (longer when 429s come in a row), and the pace drops a little."""
        now = time.monotonic()
        with self._counts_lock:
            while self._recent_429 and now - self._recent_429[0] > 2.0:
                self._recent_429.popleft()
            recent = len(self._recent_429)
            self._recent_429.append(now)
        pause = rate_limit_pause(
            response.headers.get("Retry-After"), self.limiter.rate, recent, self.settings.backoff_max_seconds, self._rng
        )
        self.limiter.pause(pause)
        if self.limiter.slow_down(self.in_flight.recent_answer_seconds()):
            logger.info("Loops answered 429: pacing at %.2f requests/s for a while", self.limiter.rate)

    def _located(self, error: Exception) -> Exception:
        """A not-Loops error names base_url (never with user-info: check_base_url refused that); no error text
        keeps the key (a redirect's Location could echo it)."""
        text = str(error)
        if isinstance(error, NotLoopsError) and not text.startswith("base_url"):
            return type(error)(self._scrub(f"base_url {self.base_url} {text}"))
        if self._key in text:
            return type(error)(self._scrub(text))
        return error

    def _fail_run(self, error: Exception) -> None:
        if self._fatal is None:
            self._fatal = error
        self.abort()

    def _stopping_message(self, outcome: Outcome) -> str:
        why = f"the run stopped ({type(self._fatal).__name__})" if self._fatal is not None else "the run is stopping"
        if not outcome.attempts:
            return f"not sent: {why}"
        tries = f"{outcome.attempts} attempt{'s' if outcome.attempts != 1 else ''}"
        return f"not settled: {why} after {tries} (last: {outcome.message})"

    def _scrub(self, text: str | None) -> str | None:
        """No message leaves the client with the key in it (an answer or an exception may echo a header)."""
        if text and self._key in text:
            return text.replace(self._key, "***")
        return text

    def _count(self, name: str) -> None:
        with self._counts_lock:
            self._counts[name] += 1
        self.timeline.count(name)

    def _wait(self, seconds: float) -> None:
        """Back off for ``seconds``, or less once the run stops (``abort()`` or ``stopping``)."""
        deadline = time.monotonic() + seconds
        while not self._stop.is_set() and not self.stopping():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._stop.wait(min(left, 0.1))


def _int_header(response: requests.Response, name: str) -> int | None:
    value = response.headers.get(name)
    try:
        return int(float(value)) if value is not None else None
    except (ValueError, OverflowError):
        return None


def _json_or_none(response: requests.Response) -> Any:
    """The JSON body, or None for a body that is not JSON (a proxy's error page)."""
    try:
        return response.json()
    except ValueError:
        return None


def _is_failure(body: Any) -> bool:
    return isinstance(body, dict) and body.get("success") is False


def _content_label(content_type: str | None) -> str:
    """``text/html`` from ``text/html; charset=utf-8``; ``no content type`` when absent."""
    if not content_type:
        return "no content type"
    return content_type.split(";", 1)[0].strip().lower() or "no content type"


def _message(data: Any) -> str | None:
    """Loops' ``message``, falling back to the deprecated ``error`` key."""
    if isinstance(data, dict):
        for key in ("message", "error"):
            value = data.get(key)
            if isinstance(value, str) and value:
                return value[:500]
    return None


def _short(exc: BaseException) -> str:
    """The cause a person can act on: the operating system's words for a failed connection (``connection
    refused``, ``name or service not known``) found inside requests' and urllib3's wrappers, else the exception's
    text on one line, cut at a word."""
    seen: set[int] = set()
    stack: list[BaseException] = [exc]
    while stack:
        error = stack.pop()
        if id(error) in seen:
            continue
        seen.add(id(error))
        if isinstance(error, OSError) and isinstance(error.strerror, str) and error.strerror:
            return error.strerror[0].lower() + error.strerror[1:]
        inner = (error.__cause__, error.__context__, getattr(error, "reason", None), *error.args)
        stack.extend(item for item in inner if isinstance(item, BaseException))
    text = " ".join(str(exc).split())
    return text if len(text) <= 200 else text[:200].rsplit(" ", 1)[0] + "…"


__all__ = [
    "ApiKeyError",
    "BaseUrlError",
    "ClientSettings",
    "Decision",
    "LoopsAuthError",
    "LoopsClient",
    "LoopsUnavailableError",
    "NotLoopsError",
    "RateLimiter",
    "Verdict",
    "backoff_seconds",
    "check_base_url",
    "classify",
    "clean_api_key",
    "rate_limit_pause",
    "should_retry",
]
