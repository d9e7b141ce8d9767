"""The sandbox's read-only HTML page at ``/``: what a sync did, at a glance, for a person rather than a program.

A user rehearsing a sync opens it in a browser to look at the result the way they would look at Loops' audience
page, and at how each run behaved: the runs (the requests of one target process, told apart by the run id the
target puts in its ``User-Agent``: ``target-loops/<version> run/<id>``), per stream where the target names it (the
``X-Target-Loops-Stream`` header), counted in the target's words (``rate_limited``: 429 answers; ``retries``:
transient failures sent again), a requests-per-second chart with the 429s and retries marked, the request log with
Loops' message for each refusal, then the contacts and the events, a page at a time.

It is rendered on the server from a :meth:`Store.snapshot` with the Jinja2 template
``target_loops/templates/sandbox_page.html`` (escaping every value: contacts, events and the log hold whatever a sync
sent), with inline CSS, inline SVG and no script or external asset (the sandbox often runs offline); the app also
serves it with a Content-Security-Policy that allows no script. The chart and the figure tables are the run report's
own template pieces (``_chart.html``, ``_table.html``). Times are shown in the server's local time, with the date
(the JSON views keep Loops' UTC timestamps).

Query parameters (all optional): ``run`` (one run's requests: its id, or ``none`` for requests that named no
run), ``status`` (the log's filter: ``all``, ``2xx``, ``409``, ``429``, ``4xx``, ``5xx``, ``no-answer`` or
``retry``), page sizes ``requests`` (default 100), ``contacts`` (default 50) and ``limit`` (events, default 50),
the pages shown ``rpage``, ``cpage`` and ``epage`` (1 = newest), and ``refresh`` (seconds between automatic
reloads, default 0 = off). Filters and pages are plain links, so they work without JavaScript.
"""

from __future__ import annotations

import collections
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any
from urllib.parse import unquote, urlencode

from target_loops.charts import rate_chart
from target_loops.templating import render

DEFAULT_EVENT_LIMIT = 50
DEFAULT_CONTACT_LIMIT = 50
DEFAULT_REQUEST_LIMIT = 100
MAX_REFRESH_S = 3600

MAX_CHART_BUCKETS = 300
"""Above this many seconds of traffic, a chart bar covers several seconds (the rate stays per second)."""

MAX_RUNS_SHOWN = 20
"""The runs listed, newest first (each one's requests are a link away)."""

NO_RUN = "none"
"""The ``run`` filter for requests that named no run (curl, a test, another client)."""

STANDARD_CONTACT_KEYS: frozenset[str] = frozenset(
    {
        "id",
        "email",
        "userId",
        "firstName",
        "lastName",
        "subscribed",
        "source",
        "userGroup",
        "mailingLists",
        "optInStatus",
        "createdAt",
    }
)
"""Contact keys with a column of their own; every other key is a custom property."""

JSON_VIEWS: tuple[tuple[str, str], ...] = (
    ("/_sandbox/contacts", "contacts"),
    ("/_sandbox/events", "events"),
    ("/_sandbox/requests", "requests"),
    ("/_sandbox/rate", "rate"),
    ("/_sandbox/state", "state"),
)

STATUS_FILTERS: tuple[tuple[str, str], ...] = (
    ("all", "All"),
    ("2xx", "Delivered (2xx)"),
    ("409", "Duplicate, delivered earlier (409)"),
    ("429", "rate_limited (429)"),
    ("4xx", "Refused (other 4xx)"),
    ("5xx", "Server error (5xx)"),
    ("no-answer", "No answer"),
    ("retry", "retries"),
)
"""The request log's filter links: (``status`` value, label). A request has one outcome, and may be a retry."""

FAILED_OUTCOMES: frozenset[str] = frozenset({"429", "5xx", "no-answer"})
"""Outcomes a client sends again; the same request sent again after one of these is a repeat."""

TRANSIENT_OUTCOMES: frozenset[str] = frozenset({"5xx", "no-answer"})
"""Failures whose repeat the target counts as a retry (a repeat after a 429 is counted as rate_limited instead)."""

EMPTY = '<span class="null">&ndash;</span>'
"""What an empty cell shows (the templates write the same)."""

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
"""No script, no fetch, no frame: even a value that escaped the template could not run."""

_RUN_IN_AGENT = re.compile(r"\brun/([A-Za-z0-9._-]{1,64})")


@dataclass(frozen=True)
class PageOptions:
    """What the query string asks for; :func:`parse_options` validates it."""

    event_limit: int = DEFAULT_EVENT_LIMIT
    contact_limit: int = DEFAULT_CONTACT_LIMIT
    request_limit: int = DEFAULT_REQUEST_LIMIT
    status: str = "all"
    refresh: int = 0
    run: str = ""
    request_page: int = 1
    contact_page: int = 1
    event_page: int = 1

    def query(self, **changes: Any) -> str:
        """The page's own URL with ``changes`` applied, keeping only non-default parameters."""
        options = replace(self, **changes)
        params = {
            name: value
            for name, value, default in (
                ("run", options.run, ""),
                ("status", options.status, "all"),
                ("limit", options.event_limit, DEFAULT_EVENT_LIMIT),
                ("contacts", options.contact_limit, DEFAULT_CONTACT_LIMIT),
                ("requests", options.request_limit, DEFAULT_REQUEST_LIMIT),
                ("rpage", options.request_page, 1),
                ("cpage", options.contact_page, 1),
                ("epage", options.event_page, 1),
                ("refresh", options.refresh, 0),
            )
            if value != default
        }
        return "/?" + urlencode(params) if params else "/"


@dataclass(frozen=True)
class TeamInfo:
    """The sandbox settings shown in the page header (from the app's config at request time)."""

    name: str
    rate_limit: int
    lenient: bool
    api_url: str
    faults: tuple[tuple[str, float], ...] = ()
    latency_ms: float = 0.0
    latency_jitter_ms: float = 0.0


def _int_param(args: Mapping[str, str], name: str, default: int, low: int, high: int | None) -> int:
    raw = args.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise ValueError(f"'{name}' must be a whole number, not {raw!r}.") from None
    if value < low or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise ValueError(f"'{name}' must be {bounds}, not {value}.")
    return value


def parse_options(args: Mapping[str, str]) -> PageOptions:
    """The query string → :class:`PageOptions`; ``ValueError`` with a readable message if a value is bad."""
    status = (args.get("status") or "all").strip()
    names = [name for name, _ in STATUS_FILTERS]
    if status not in names:
        raise ValueError(f"'status' must be one of {', '.join(names)}, not {status!r}.")
    return PageOptions(
        event_limit=_int_param(args, "limit", DEFAULT_EVENT_LIMIT, 0, None),
        contact_limit=_int_param(args, "contacts", DEFAULT_CONTACT_LIMIT, 0, None),
        request_limit=_int_param(args, "requests", DEFAULT_REQUEST_LIMIT, 0, None),
        status=status,
        refresh=_int_param(args, "refresh", 0, 0, MAX_REFRESH_S),
        run=(args.get("run") or "").strip(),
        request_page=_int_param(args, "rpage", 1, 1, None),
        contact_page=_int_param(args, "cpage", 1, 1, None),
        event_page=_int_param(args, "epage", 1, 1, None),
    )


# ----- what a logged request says about its run and stream -------------------------------------------------


def run_of(user_agent: str | None) -> str | None:
    """The run id a target put in its ``User-Agent`` (``target-loops/0.2.0 run/1a2b3c``), or None."""
    match = _RUN_IN_AGENT.search(user_agent or "")
    return match.group(1) if match else None


def stream_of(header: str | None) -> str | None:
    """The stream a request came from, from the target's (percent-encoded) stream header, or None."""
    return unquote(header)[:200] if header else None


# ----- the request log: outcomes, retries, the per-second series ------------------------------------------


def outcome(entry: Mapping[str, Any]) -> str:
    """The one filter a logged request belongs to: ``2xx``, ``409``, ``429``, ``4xx``, ``5xx`` or ``no-answer``.

    A 409 is its own outcome because, for the target, it means "delivered earlier" (an event whose
    Idempotency-Key Loops has seen, a contact that exists): the work is done, nothing is wrong. A "lost" fault is
    "no-answer" whatever the status of the work done, because the client never saw that status.
    """
    status = entry.get("status")
    if entry.get("fault") in ("drop", "lost") or not isinstance(status, int):
        return "no-answer"
    if status == 409:
        return "409"
    if status == 429:
        return "429"
    if 400 <= status < 500:
        return "4xx"
    if status >= 500:
        return "5xx"
    return "2xx" if 200 <= status < 300 else "other"


def request_identity(entry: Mapping[str, Any]) -> str:
    """What makes two logged requests "the same request": method, path, query, Idempotency-Key and body."""
    parts = [entry.get("method"), entry.get("path"), entry.get("query") or {}]
    parts += [entry.get("idempotencyKey"), entry.get("body")]
    return json.dumps(parts, sort_keys=True, default=str)


def repeat_causes(log: Sequence[Mapping[str, Any]]) -> list[str | None]:
    """For each entry: the outcome of the failed attempt it repeats (``429``, ``5xx``, ``no-answer``), or None.

    A client that sends the same request again after a success is re-sending, not retrying (a second run, say),
    so only the latest earlier attempt of the same request decides. The log is in completion order, and a repeat
    starts only after the failure it answers has completed, so one pass in log order is enough.
    """
    last: dict[str, str] = {}
    causes: list[str | None] = []
    for entry in log:
        identity = request_identity(entry)
        previous = last.get(identity)
        causes.append(previous if previous in FAILED_OUTCOMES else None)
        last[identity] = outcome(entry)
    return causes


def retry_flags(log: Sequence[Mapping[str, Any]]) -> list[bool]:
    """For each entry: is it a retry in the target's sense, the same request again after a transient failure (a
    5xx or no answer)? A repeat after a 429 is the target's ``rate_limited``, counted on the 429 itself."""
    return [cause in TRANSIENT_OUTCOMES for cause in repeat_causes(log)]


def request_counts(log: Sequence[Mapping[str, Any]], flags: Sequence[bool] | None = None) -> dict[str, int]:
    """Counts over the /api request log: ``requests`` (= ``all``), one per :func:`outcome`, and ``retry``
    (the target's ``retries``); ``rate_limited`` is the 429s (the target's word for them)."""
    counts = {name: 0 for name, _ in STATUS_FILTERS} | {"other": 0}
    for entry in log:
        counts[outcome(entry)] += 1
    counts["all"] = counts["requests"] = len(log)
    counts["retry"] = sum(flags if flags is not None else retry_flags(log))
    counts["rate_limited"] = counts["429"]
    return counts


def parse_time(value: Any) -> datetime | None:
    """A Loops timestamp (``...Z``) → an aware datetime, or None for anything that is not one."""
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)


def utc_text(epoch_s: float) -> str:
    """An instant as Loops writes it (UTC, milliseconds, ``Z``), for the JSON series."""
    moment = datetime.fromtimestamp(epoch_s, tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def rate_series(log: Sequence[Mapping[str, Any]], rate_limit: int = 0) -> dict[str, Any]:
    """The request log bucketed per second of arrival: requests/s, 429 answers and retries in each bucket.

    The chart on the page and the ``/_sandbox/rate`` view both come from here, so they cannot disagree. Every
    second from the first request to the last has a bucket (idle seconds are zeros, so the x axis is time);
    beyond :data:`MAX_CHART_BUCKETS` seconds a bucket covers several seconds and ``perSecond`` is its average.
    ``retries`` are the target's (a request sent again after a 5xx or no answer; see :func:`retry_flags`).
    """
    flags = retry_flags(log)
    arrivals = []
    for entry, retry in zip(log, flags, strict=True):
        moment = parse_time(entry.get("at"))
        if moment is not None:
            arrivals.append((moment.timestamp(), entry.get("status") == 429, retry))
    series: dict[str, Any] = {"bucketSeconds": 1, "start": None, "end": None, "rateLimit": rate_limit}
    totals: dict[str, Any] = {"requests": 0, "rateLimited": 0, "retries": 0, "peakPerSecond": 0.0}
    if not arrivals:
        return {**series, "buckets": [], "totals": totals}
    first = math.floor(min(at for at, _, _ in arrivals))
    span = math.floor(max(at for at, _, _ in arrivals)) - first + 1
    width = max(1, math.ceil(span / MAX_CHART_BUCKETS))
    count = math.ceil(span / width)
    buckets: list[dict[str, Any]] = [
        {"at": utc_text(first + index * width), "requests": 0, "perSecond": 0.0, "rateLimited": 0, "retries": 0}
        for index in range(count)
    ]
    for at, limited, retry in arrivals:
        bucket = buckets[min(count - 1, int((at - first) // width))]
        bucket["requests"] += 1
        bucket["rateLimited"] += int(limited)
        bucket["retries"] += int(retry)
    for bucket in buckets:
        bucket["perSecond"] = round(bucket["requests"] / width, 3)
    totals = {
        "requests": len(arrivals),
        "rateLimited": sum(bucket["rateLimited"] for bucket in buckets),
        "retries": sum(bucket["retries"] for bucket in buckets),
        "peakPerSecond": max(bucket["perSecond"] for bucket in buckets),
    }
    series.update(bucketSeconds=width, start=utc_text(first), end=utc_text(first + count * width))
    return {**series, "buckets": buckets, "totals": totals}


# ----- runs ---------------------------------------------------------------------------------------------------


def runs(log: Sequence[Mapping[str, Any]], flags: Sequence[bool] | None = None) -> list[dict[str, Any]]:
    """The log's runs, newest first: per run its first and last request, the counts in the target's words, and
    per stream (where the target named it) ``requests``, ``rate_limited`` and ``retries``: the columns of the
    target's end-of-run table for the same run. Requests that named no run are one group, ``run`` None."""
    flags = retry_flags(log) if flags is None else flags
    found: dict[str | None, dict[str, Any]] = {}
    for entry, retry in zip(log, flags, strict=True):
        run = entry.get("run")
        item = found.get(run)
        if item is None:
            item = found[run] = {
                "run": run,
                "first": entry.get("at"),
                "last": entry.get("at"),
                "requests": 0,
                "rate_limited": 0,
                "retries": 0,
                "duplicates": 0,
                "refused": 0,
                "failed": 0,
                "streams": {},
            }
        kind = outcome(entry)
        item["last"] = entry.get("at")
        item["requests"] += 1
        item["rate_limited"] += kind == "429"
        item["retries"] += retry
        item["duplicates"] += kind == "409"
        item["refused"] += kind == "4xx"
        item["failed"] += kind in TRANSIENT_OUTCOMES
        stream = entry.get("stream") or ""
        per = item["streams"].setdefault(stream, {"requests": 0, "rate_limited": 0, "retries": 0})
        per["requests"] += 1
        per["rate_limited"] += kind == "429"
        per["retries"] += retry
    ordered = sorted(found.values(), key=lambda item: str(item["last"] or ""), reverse=True)
    for item in ordered:
        first, last = parse_time(item["first"]), parse_time(item["last"])
        item["seconds"] = round((last - first).total_seconds(), 1) if first and last else 0.0
    return ordered


# ----- values as the template shows them --------------------------------------------------------------------


def show(value: Any) -> tuple[str, str]:
    """A JSON value as (css class, text): strings as text, ``null`` greyed, everything else as compact JSON."""
    if value is None:
        return "null", "null"
    if isinstance(value, str):
        return ("", value) if value else ("null", '""')
    if isinstance(value, bool):
        return "", "true" if value else "false"
    if isinstance(value, (int, float)):
        return "", json.dumps(value)
    return "mono", json.dumps(value, ensure_ascii=False)


def local_time(moment: datetime, *, ms: bool = False) -> str:
    """``3 Jun 2025 14:03:22`` in the server's local time zone: readable, with the date, unambiguous."""
    local = moment.astimezone()
    text = f"{local.day} {local:%b %Y %H:%M:%S}"
    return text + f".{local.microsecond // 1000:03d}" if ms else text


def zone_label(moment: datetime | None = None) -> str:
    """The server's zone as a person reads it: ``CET, UTC+01:00`` (``UTC`` alone when that is the zone)."""
    local = (moment or datetime.now(timezone.utc)).astimezone()
    offset = local.strftime("%z")
    offset_text = f"UTC{offset[:3]}:{offset[3:]}" if offset else "UTC"
    name = local.tzname() or ""
    if offset_text == "UTC+00:00" and name in ("UTC", "GMT", ""):
        return "UTC"
    return f"{name}, {offset_text}" if name and not name.startswith(("+", "-")) else offset_text


def time_text(value: Any, *, ms: bool = False) -> str | None:
    """A Loops timestamp in local time (``None`` when it is not one: the template shows the value as text)."""
    moment = parse_time(value)
    return local_time(moment, ms=ms) if moment is not None else None


def _short_time(at: str) -> str:
    moment = parse_time(at)
    return local_time(moment)[-8:] if moment else ""


ANSWER_TEXT: dict[str, str] = {
    "2xx": "OK",
    "409": "duplicate (delivered earlier)",
    "429": "rate limited",
    "4xx": "refused",
    "5xx": "server error",
}


def _about(entry: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Who or what a request was about: event name, email, userId from the body or the query, and its key."""
    raw_body, raw_query = entry.get("body"), entry.get("query")
    body: Mapping[str, Any] = raw_body if isinstance(raw_body, Mapping) else {}
    query: Mapping[str, Any] = raw_query if isinstance(raw_query, Mapping) else {}
    parts = []
    for key in ("eventName", "email", "userId", "name"):
        value = body.get(key, query.get(key)) if key != "name" else body.get("name")
        if isinstance(value, (str, int, float)) and not isinstance(value, bool) and value != "":
            parts.append((key, str(value)))
    if entry.get("idempotencyKey"):
        parts.append(("key", str(entry["idempotencyKey"])))
    return parts


def _loose(item: Mapping[str, Any]) -> collections.defaultdict[str, Any]:
    """A record as the template reads it: a key a sync did not send reads as None (Loops' data has no fixed shape)."""
    return collections.defaultdict(lambda: None, item)


def _pages(total: int, size: int, current: int, url: Any) -> dict[str, Any]:
    """One page of a newest-first list: which slice, and the pager's text and links (``url(page)``)."""
    pages = max(1, math.ceil(total / size)) if size else 1
    current = min(current, pages)
    start = (current - 1) * size
    stop = min(start + size, total) if size else 0
    links = []
    if current > 1:
        links += [("newest", url(1)), ("newer", url(current - 1))]
    if current < pages:
        links += [("older", url(current + 1)), ("oldest", url(pages))]
    return {
        "start": start,
        "stop": stop,
        "page": current,
        "pages": pages,
        "total": total,
        "text": f"{start + 1:,}-{stop:,} of {total:,}, newest first" if stop else f"none of {total:,} shown",
        "links": links,
    }


# ----- the page -----------------------------------------------------------------------------------------------


def render_page(
    state: Mapping[str, Any], team: TeamInfo, options: PageOptions, now: str, series: Mapping[str, Any] | None = None
) -> str:
    """The whole page from one :meth:`Store.snapshot` (``contacts``, ``events``, ``requests``, ``properties``,
    ``lists``), the team's settings, the query options and the store clock's time (Loops' UTC text).

    ``series`` is :func:`rate_series` of the same log, passed in when the caller also serves it as JSON so that
    the chart and ``/_sandbox/rate`` are one computation; computed here otherwise (and always for one run's page).
    """
    contacts: Sequence[Mapping[str, Any]] = state.get("contacts", [])
    events: Sequence[Mapping[str, Any]] = state.get("events", [])
    full_log: Sequence[Mapping[str, Any]] = state.get("requests", [])
    properties: Sequence[Mapping[str, Any]] = state.get("properties", [])
    lists: Sequence[Mapping[str, Any]] = state.get("lists", [])
    list_names = {spec["id"]: str(spec.get("name") or spec["id"]) for spec in lists}
    custom_keys = frozenset(str(prop["key"]) for prop in properties)
    emails = {str(contact.get("id")): str(contact["email"]) for contact in contacts if contact.get("email")}

    all_runs = runs(full_log)
    log = full_log
    if options.run:
        wanted = None if options.run == NO_RUN else options.run
        log = [entry for entry in full_log if entry.get("run") == wanted]
        series = None
    causes = repeat_causes(log)
    flags = [cause in TRANSIENT_OUTCOMES for cause in causes]
    counts = request_counts(log, flags)
    if series is None:
        series = rate_series(log, team.rate_limit)

    kinds = [outcome(entry) for entry in log]
    matching = [
        index
        for index, (kind, retry) in enumerate(zip(kinds, flags, strict=True))
        if options.status == "all" or (retry if options.status == "retry" else kind == options.status)
    ]
    matching.reverse()
    request_pages = _pages(
        len(matching),
        options.request_limit,
        options.request_page,
        lambda n: options.query(request_page=n) + "#requests",
    )
    shown_requests = []
    for index in matching[request_pages["start"] : request_pages["stop"]]:
        entry = log[index]
        path = str(entry.get("path") or "").removeprefix("/api")
        if entry.get("query"):
            path += "?" + urlencode(entry["query"])
        shown_requests.append(
            {
                "entry": _loose(entry),
                "kind": kinds[index],
                "retry": flags[index],
                "after_429": causes[index] == "429",
                "path": path,
                "about": _about(entry),
                "answer": ANSWER_TEXT.get(kinds[index], ""),
            }
        )

    contact_pages = _pages(
        len(contacts),
        options.contact_limit,
        options.contact_page,
        lambda n: options.query(contact_page=n) + "#contacts",
    )
    newest_contacts = list(reversed(contacts))[contact_pages["start"] : contact_pages["stop"]]
    event_pages = _pages(
        len(events), options.event_limit, options.event_page, lambda n: options.query(event_page=n) + "#events"
    )
    newest_events = list(reversed(events))[event_pages["start"] : event_pages["stop"]]

    chart = None
    if series["buckets"]:
        buckets = [
            {"at": b["at"], "requests": b["requests"], "rate_limited": b["rateLimited"], "retries": b["retries"]}
            for b in series["buckets"]
        ]
        chart = rate_chart(
            buckets,
            bucket_seconds=int(series["bucketSeconds"]),
            rate_limit=float(series.get("rateLimit") or 0),
            label=_short_time,
            start=series["start"],
            end=series["end"],
        )
        first, last = parse_time(series["start"]), parse_time(buckets[-1]["at"])
        chart["span_text"] = local_time(first) if first else ""
        if first and last and last != first:
            chart["span_text"] += f" to {local_time(last)[-8:]}"
        chart["limit_text"] = "the sandbox's rate limit"

    faults = [f"{kind} {fraction:g}" for kind, fraction in team.faults if fraction]
    moment = parse_time(now)
    return render(
        "sandbox_page.html",
        team=team,
        options=options,
        now=now,
        zone=zone_label(moment),
        faults=", ".join(faults),
        json_views=JSON_VIEWS,
        status_filters=STATUS_FILTERS,
        status_label=dict(STATUS_FILTERS)[options.status].lower(),
        counts=counts,
        contacts_total=len(contacts),
        events_total=len(events),
        runs=all_runs[:MAX_RUNS_SHOWN],
        runs_total=len(all_runs),
        no_run=NO_RUN,
        chart=chart,
        requests=shown_requests,
        request_pages=request_pages,
        log_total=len(log),
        contacts=[(_loose(c), {k: v for k, v in c.items() if k not in STANDARD_CONTACT_KEYS}) for c in newest_contacts],
        contact_pages=contact_pages,
        events=[_loose(e) for e in newest_events],
        event_pages=event_pages,
        list_names=list_names,
        custom_keys=custom_keys,
        emails=emails,
        properties=[_loose(p) for p in properties if p.get("key") not in STANDARD_CONTACT_KEYS | {"notes"}],
        lists=[_loose(spec) for spec in lists],
        show=show,
        time_text=time_text,
        fmt=lambda n: f"{n:,}",
    )
