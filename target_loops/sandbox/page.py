"""The sandbox's read-only HTML page at ``/``: what a sync did, at a glance, for a person rather than a program.

A user rehearsing a sync opens it in a browser to look at the result the way they would look at Loops' audience
page, and at how the run behaved: request counts, a requests-per-second chart with the 429s and retries marked,
the request log with Loops' message for each refusal, then the contacts and the latest events. It is rendered on
the server in one pass from a :meth:`Store.snapshot`, with inline CSS, inline SVG and no script or external asset
(the sandbox often runs offline, and a page without script cannot be made to run a value a sync sent). Contacts,
events and the log hold whatever a sync sent, so every value goes through :func:`esc`; the app also serves the
page with a Content-Security-Policy that allows no script. Times are shown in the server's local time, with the
date (the JSON views keep Loops' UTC timestamps).

Query parameters (all optional): ``limit`` (events shown, default 50), ``contacts`` (contacts shown, default
500), ``requests`` (log entries shown, default 100), ``status`` (the log's filter: ``all``, ``2xx``, ``409``,
``429``, ``4xx``, ``5xx``, ``no-answer`` or ``retry``) and ``refresh`` (seconds between automatic reloads,
default 0 = off). The filter is a set of plain links, so it works without JavaScript.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlencode

DEFAULT_EVENT_LIMIT = 50
DEFAULT_CONTACT_LIMIT = 500
DEFAULT_REQUEST_LIMIT = 100
MAX_REFRESH_S = 3600

MAX_CHART_BUCKETS = 300
"""Above this many seconds of traffic, a chart bar covers several seconds (the rate stays per second)."""

MIN_CHART_WIDTH = 12
"""The chart is at least this many bars wide, so two seconds of traffic do not make two huge bars."""

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
    ("429", "Rate limited (429)"),
    ("4xx", "Refused (other 4xx)"),
    ("5xx", "Server error (5xx)"),
    ("no-answer", "No answer"),
    ("retry", "Retries"),
)
"""The request log's filter links: (``status`` value, label). A request has one outcome, and may be a retry."""

FAILED_OUTCOMES: frozenset[str] = frozenset({"429", "5xx", "no-answer"})
"""Outcomes a client retries; the same request sent again after one of these counts as a retry."""

EMPTY = '<span class="null">&ndash;</span>'
"""What an empty cell shows."""

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
"""No script, no fetch, no frame: even a value that escaped :func:`esc` could not run."""


@dataclass(frozen=True)
class PageOptions:
    """What the query string asks for; :func:`parse_options` validates it."""

    event_limit: int = DEFAULT_EVENT_LIMIT
    contact_limit: int = DEFAULT_CONTACT_LIMIT
    request_limit: int = DEFAULT_REQUEST_LIMIT
    status: str = "all"
    refresh: int = 0

    def query(self, **changes: Any) -> str:
        """The page's own URL with ``changes`` applied, keeping only non-default parameters."""
        options = replace(self, **changes)
        params = {
            name: value
            for name, value, default in (
                ("limit", options.event_limit, DEFAULT_EVENT_LIMIT),
                ("contacts", options.contact_limit, DEFAULT_CONTACT_LIMIT),
                ("requests", options.request_limit, DEFAULT_REQUEST_LIMIT),
                ("status", options.status, "all"),
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
    )


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


def retry_flags(log: Sequence[Mapping[str, Any]]) -> list[bool]:
    """For each entry: is it a retry, i.e. the same request as one whose last attempt failed (429, 5xx, no answer)?

    A client that sends the same request again after a success is re-sending, not retrying (a second run, say),
    so only the latest earlier attempt of the same request decides. The log is in completion order, and a retry
    starts only after the failure it answers has completed, so one pass in log order is enough.
    """
    last_failed: dict[str, bool] = {}
    flags = []
    for entry in log:
        identity = request_identity(entry)
        flags.append(last_failed.get(identity, False))
        last_failed[identity] = outcome(entry) in FAILED_OUTCOMES
    return flags


def request_counts(log: Sequence[Mapping[str, Any]], flags: Sequence[bool] | None = None) -> dict[str, int]:
    """Counts over the /api request log: ``requests`` (= ``all``), one per :func:`outcome`, and ``retry``."""
    counts = {name: 0 for name, _ in STATUS_FILTERS} | {"other": 0}
    for entry in log:
        counts[outcome(entry)] += 1
    counts["all"] = counts["requests"] = len(log)
    counts["retry"] = sum(flags if flags is not None else retry_flags(log))
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


# ----- value formatting: every user-supplied value goes through esc() ------------------------------------


def esc(value: Any) -> str:
    """HTML-escape text, quotes included (safe in element content and in attribute values)."""
    return html.escape(str(value), quote=True)


def fmt_value(value: Any) -> str:
    """A JSON value as HTML: strings as text, ``null`` greyed, everything else as compact JSON."""
    if value is None:
        return '<span class="null">null</span>'
    if isinstance(value, str):
        return esc(value) if value else '<span class="null">""</span>'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return esc(json.dumps(value))
    return f'<span class="mono">{esc(json.dumps(value, ensure_ascii=False))}</span>'


def fmt_text(value: Any) -> str:
    """An optional text cell: the value, or a grey dash when it is empty."""
    return esc(value) if value not in (None, "") else EMPTY


def fmt_pairs(pairs: Mapping[str, Any], known: frozenset[str] | None = None) -> str:
    """``{key: value}`` as a compact list; keys outside ``known`` (when given) are flagged as not in the team."""
    if not pairs:
        return EMPTY
    items = []
    for key, value in pairs.items():
        flag = ""
        if known is not None and key not in known:
            flag = ' class="unknown" title="not a contact property of this team (accepted in lenient mode)"'
        items.append(f'<li{flag}><span class="k">{esc(key)}</span> {fmt_value(value)}</li>')
    return '<ul class="kv">' + "".join(items) + "</ul>"


def fmt_lists(memberships: Mapping[str, Any], names: Mapping[str, str], *, changes: bool = False) -> str:
    """Mailing lists by name; ``changes`` shows joins (+) and leaves (minus) as sent with an event."""
    if not memberships:
        return EMPTY
    pills = []
    for list_id, member in memberships.items():
        name = names.get(list_id)
        css = "pill" if name is not None else "pill unknown"
        title = f"list id {list_id}" if name is not None else f"list id {list_id}: not a list of this team"
        sign = ""
        if changes:
            sign = '<span class="sign">+</span>' if member else '<span class="sign">&minus;</span>'
            css += "" if member else " left"
            title += " (joined)" if member else " (left)"
        pills.append(f'{sign}<span class="{css}" title="{esc(title)}">{esc(name or list_id)}</span>')
    return " ".join(pills)


def fmt_subscribed(contact: Mapping[str, Any]) -> str:
    subscribed = contact.get("subscribed")
    badge = '<span class="pill yes">yes</span>' if subscribed else '<span class="pill no">no</span>'
    opt_in = contact.get("optInStatus")
    return badge + (f' <span class="small">opt-in: {esc(opt_in)}</span>' if opt_in is not None else "")


def fmt_count(value: int) -> str:
    return f"{value:,}"


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


def fmt_time(value: Any, *, ms: bool = False) -> str:
    """A Loops timestamp as a ``<time>`` in local time, the original UTC text in its tooltip; else as text."""
    moment = parse_time(value)
    if moment is None:
        return fmt_text(value)
    text = local_time(moment, ms=ms)
    if ms:
        text = f'{esc(text[:-4])}<span class="ms">{esc(text[-4:])}</span>'
    return f'<time datetime="{esc(value)}" title="{esc(value)}">{text if ms else esc(text)}</time>'


# ----- page sections --------------------------------------------------------------------------------------


def _header(team: TeamInfo, options: PageOptions, now: str) -> str:
    limit = f"{team.rate_limit} requests/s" if team.rate_limit > 0 else "unlimited"
    facts = [
        f'rate limit <b id="rate-limit">{esc(limit)}</b>',
        "lenient (unknown properties and wrong types accepted)" if team.lenient else "strict",
        f"API base URL <code>{esc(team.api_url)}</code>",
    ]
    faults = [f"{kind} {fraction:g}" for kind, fraction in team.faults if fraction]
    if faults:
        facts.append("faults: " + esc(", ".join(faults)))
    if team.latency_ms or team.latency_jitter_ms:
        facts.append(f"latency {team.latency_ms:g}+{team.latency_jitter_ms:g} ms")
    views = " ".join(f'<a href="{esc(path)}">{esc(label)}</a>' for path, label in JSON_VIEWS)
    if options.refresh:
        refresh = f'auto-reload every {options.refresh} s · <a href="{esc(options.query(refresh=0))}">stop</a>'
    else:
        refresh = f'<a href="{esc(options.query(refresh=5))}">auto-reload every 5 s</a>'
    jumps = " ".join(
        f'<a href="#{anchor}">{label}</a>'
        for anchor, label in (
            ("chart", "Chart"),
            ("requests", "Requests"),
            ("contacts", "Contacts"),
            ("events", "Events"),
            ("team", "Team"),
        )
    )
    moment = parse_time(now)
    rendered = fmt_time(now)
    return (
        "<header>"
        f'<h1>Loops sandbox <span class="team" id="team-name">{esc(team.name)}</span></h1>'
        f'<p class="meta">{" · ".join(facts)}</p>'
        f'<nav><a class="button" href="{esc(options.query())}" id="reload">Reload</a> {refresh}'
        f'<span class="jumps">{jumps}</span><span class="views">JSON: {views}</span></nav>'
        f'<p class="meta small">Read-only. Rendered at {rendered} (sandbox clock). '
        f'Times are the server\'s local time (<span id="zone">{esc(zone_label(moment))}</span>).</p>'
        "</header>"
    )


def _counts(contacts: int, events: int, counts: Mapping[str, int]) -> str:
    cards = [
        ("contacts", "Contacts", contacts, ""),
        ("events", "Events", events, ""),
        ("requests", "API requests", counts["requests"], ""),
        ("429", "429 rate limited", counts["429"], "warn"),
        ("4xx", "Other 4xx (refused)", counts["4xx"], "bad"),
        ("5xx", "5xx", counts["5xx"], "bad"),
        ("no-answer", "No answer (hung up)", counts["no-answer"], "bad"),
    ]
    items = []
    for key, label, value, tone in cards:
        extra = ""
        if key == "requests":
            # Duplicates and retries are part of the total, not errors: said under it, in grey.
            extra = (
                f'<p class="small">{_count_span("409", counts["409"])} duplicate (delivered earlier) · '
                f"{_count_span('retry', counts['retry'])} retried</p>"
            )
        items.append(
            f'<div class="card{" " + tone if tone and value else ""}"><dt>{label}</dt>'
            f'<dd id="count-{key}">{fmt_count(value)}</dd>{extra}</div>'
        )
    return f'<dl class="cards">{"".join(items)}</dl>'


def _count_span(name: str, value: int) -> str:
    return f'<span data-count="{esc(name)}">{fmt_count(value)}</span>'


def _nice_ceiling(value: float) -> float:
    """The smallest round number (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8 times 10**n) at or above ``value``: y axis top."""
    if value <= 1:
        return 1.0
    magnitude = 10 ** math.floor(math.log10(value))
    for step in (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10):
        if step * magnitude >= value - 1e-9:
            return step * magnitude
    return 10.0 * magnitude


def _fmt_rate(value: float) -> str:
    return f"{value:g}"


def _chart_section(series: Mapping[str, Any]) -> str:
    """Requests per second as inline SVG bars: 429 answers in amber on top of each bar, a purple mark over a
    second that had retries, the rate limit as a dashed line. Numbers are on ``data-*`` attributes (tests and
    curious people read them) and in each bar's tooltip; axis labels are HTML so they stay legible at any width."""
    buckets: Sequence[Mapping[str, Any]] = series["buckets"]
    totals: Mapping[str, Any] = series["totals"]
    width_s = int(series["bucketSeconds"])
    limit = int(series.get("rateLimit") or 0)
    heading = '<h2>Requests per second <span class="small">API requests by second of arrival</span></h2>'
    if not buckets:
        return f'<section id="chart">{heading}<p class="empty">No API requests yet.</p></section>'
    top = _nice_ceiling(max(float(totals["peakPerSecond"]), float(limit), 1.0) * 1.15)
    view_w = max(len(buckets), MIN_CHART_WIDTH)

    def y(rate: float) -> float:
        return round(100 - rate / top * 100, 3)

    parts = [
        f'<line x1="0" x2="{view_w}" y1="{y(top / 2)}" y2="{y(top / 2)}" stroke="#d8dee4" '
        'vector-effect="non-scaling-stroke"/>'
    ]
    for index, bucket in enumerate(buckets):
        moment = parse_time(bucket["at"])
        when = local_time(moment) if moment else str(bucket["at"])
        tip = f"{when}: {bucket['requests']} request{'s' if bucket['requests'] != 1 else ''}"
        if width_s > 1:
            tip += f" in {width_s} s ({_fmt_rate(bucket['perSecond'])}/s)"
        if bucket["rateLimited"]:
            tip += f", {bucket['rateLimited']} answered 429"
        if bucket["retries"]:
            tip += f", {bucket['retries']} retried"
        shapes = []
        rate = float(bucket["perSecond"])
        limited_rate = bucket["rateLimited"] / width_s
        if rate:
            shapes.append(
                f'<rect class="bar" x="{index + 0.1}" y="{y(rate)}" width="0.8" '
                f'height="{round(rate / top * 100, 3)}" fill="#54aeff"/>'
            )
        if limited_rate:
            shapes.append(
                f'<rect class="bar-429" x="{index + 0.1}" y="{y(rate)}" width="0.8" '
                f'height="{round(limited_rate / top * 100, 3)}" fill="#d4a72c"/>'
            )
        if bucket["retries"]:
            tip_y = max(0.0, y(rate) - 2)
            shapes.append(
                f'<path class="retry-mark" d="M{index + 0.25} {round(tip_y - 7, 3)}h0.5l-0.25 7z" fill="#8250df"/>'
            )
        parts.append(
            f'<g class="bucket" data-index="{index}" data-at="{esc(bucket["at"])}" '
            f'data-requests="{bucket["requests"]}" data-per-second="{_fmt_rate(rate)}" '
            f'data-rate-limited="{bucket["rateLimited"]}" data-retries="{bucket["retries"]}">'
            f"<title>{esc(tip)}</title>{''.join(shapes)}</g>"
        )
    limit_label = ""
    if limit:
        parts.append(
            f'<line class="limit" x1="0" x2="{view_w}" y1="{y(limit)}" y2="{y(limit)}" stroke="#cf222e" '
            'stroke-dasharray="6 4" vector-effect="non-scaling-stroke"/>'
        )
        limit_label = f'<span class="limit-label" style="top:{y(limit)}%">limit {limit}/s</span>'
    first, last = parse_time(series["start"]), parse_time(buckets[-1]["at"])
    # Time labels at the start of the first bar, the middle and the end of the last bar; the outer two are
    # aligned inwards so that no label sticks out of the chart (which would make a phone scroll sideways).
    ticks = [(0, "start", series["start"]), (len(buckets), "end", series["end"])]
    if len(buckets) >= 4:
        ticks.insert(1, (len(buckets) // 2, "mid", buckets[len(buckets) // 2]["at"]))
    x_labels = "".join(
        f'<span class="{css}" style="left:{round(index / view_w * 100, 2)}%">'
        f"{esc(local_time(moment)[-8:]) if (moment := parse_time(at)) else ''}</span>"
        for index, css, at in ticks
    )
    span_text = esc(local_time(first)) if first else ""
    if first and last and last != first:
        span_text += f" &ndash; {esc(local_time(last)[-8:])}"
    svg = (
        f'<svg class="plot-svg" viewBox="0 0 {view_w} 100" preserveAspectRatio="none" role="img" '
        f'aria-label="requests per second over time" data-bucket-seconds="{width_s}" '
        f'data-buckets="{len(buckets)}" data-start="{esc(series["start"])}" data-y-max="{_fmt_rate(top)}" '
        f'data-rate-limit="{limit}">{"".join(parts)}</svg>'
    )
    legend = (
        '<ul class="legend">'
        '<li><i style="background:#54aeff"></i>requests/s</li>'
        '<li><i style="background:#d4a72c"></i>answered 429 (rate limited)</li>'
        '<li><i class="tri"></i>second with retried requests</li>'
        + ('<li><i class="dash"></i>the sandbox\'s rate limit</li>' if limit else "")
        + "</ul>"
    )
    bar = "1 bar = 1 second" if width_s == 1 else f"1 bar = {width_s} seconds (average per second)"
    summary = (
        f'<p class="small chart-summary">{span_text} · {bar} · peak '
        f'<b data-total="peakPerSecond">{_fmt_rate(float(totals["peakPerSecond"]))}</b>/s · '
        f'<b data-total="requests">{fmt_count(int(totals["requests"]))}</b> requests · '
        f'<b data-total="rateLimited">{fmt_count(int(totals["rateLimited"]))}</b> answered 429 · '
        f'<b data-total="retries">{fmt_count(int(totals["retries"]))}</b> retried</p>'
    )
    return (
        f'<section id="chart">{heading}<div class="chart-box">{summary}'
        '<div class="chart">'
        f'<div class="y-axis"><span style="top:0%">{_fmt_rate(top)}/s</span>'
        f'<span style="top:50%">{_fmt_rate(top / 2)}/s</span><span style="top:100%">0</span></div>'
        f'<div class="plot">{svg}{limit_label}</div>'
        f'<div></div><div class="x-axis">{x_labels}</div>'
        f"</div>{legend}</div></section>"
    )


ANSWER_TEXT: dict[str, str] = {
    "2xx": "OK",
    "409": "duplicate (delivered earlier)",
    "429": "rate limited",
    "4xx": "refused",
    "5xx": "server error",
}


def _answer_cell(entry: Mapping[str, Any], kind: str, retry: bool) -> str:
    """The status as a person reads it; a 409 is grey, not red, because the work was done earlier."""
    status = entry.get("status")
    fault = entry.get("fault")
    if kind == "no-answer":
        text = "no answer: done, then hung up" if fault == "lost" else "no answer: connection dropped"
        badge = f'<span class="status s-no-answer">{esc(text)}</span>'
    else:
        badge = f'<span class="status s-{kind}">{esc(status)}</span> {esc(ANSWER_TEXT.get(kind, ""))}'
    if fault in ("500", "429", "502"):
        badge += ' <span class="small">(injected fault)</span>'
    if retry:
        badge += ' <span class="pill retry" title="the same request as one that failed just before">retry</span>'
    return badge


def _about_cell(entry: Mapping[str, Any]) -> str:
    """Who or what a request was about: event name, email, userId from the body or the query, and its key."""
    raw_body, raw_query = entry.get("body"), entry.get("query")
    body: Mapping[str, Any] = raw_body if isinstance(raw_body, Mapping) else {}
    query: Mapping[str, Any] = raw_query if isinstance(raw_query, Mapping) else {}
    parts = []
    for key in ("eventName", "email", "userId", "name"):
        value = body.get(key, query.get(key)) if key != "name" else body.get("name")
        if isinstance(value, (str, int, float)) and not isinstance(value, bool) and value != "":
            parts.append(f'<span class="k">{esc(key)}</span> {esc(value)}')
    if entry.get("idempotencyKey"):
        parts.append(f'<span class="k">key</span> <span class="mono">{esc(entry["idempotencyKey"])}</span>')
    return " ".join(f'<span class="about">{part}</span>' for part in parts) if parts else EMPTY


def _requests_section(log: Sequence[Mapping[str, Any]], flags: Sequence[bool], options: PageOptions) -> str:
    """The /api request log, newest first, with filter links (plain links: no script needed)."""
    counts = request_counts(log, flags)
    kinds = [outcome(entry) for entry in log]
    chips = []
    for name, label in STATUS_FILTERS:
        current = name == options.status
        chips.append(
            f'<a class="chip chip-{name}{" on" if current else ""}" href="{esc(options.query(status=name))}#requests"'
            f"{' aria-current=true' if current else ''}>{esc(label)} "
            f'<b data-filter-count="{name}">{fmt_count(counts[name])}</b></a>'
        )
    heading = f'<h2>Request log <span class="small">newest first · {fmt_count(len(log))} in all</span></h2>'
    filters = f'<nav class="filters" aria-label="filter by answer">{"".join(chips)}</nav>'
    if not log:
        return f'<section id="requests">{heading}<p class="empty">No API requests yet.</p></section>'
    matching = [
        (entry, kind, retry)
        for entry, kind, retry in zip(log, kinds, flags, strict=True)
        if options.status == "all" or (retry if options.status == "retry" else kind == options.status)
    ]
    shown = list(reversed(matching))[: options.request_limit]
    rows = []
    for entry, kind, retry in shown:
        path = str(entry.get("path") or "").removeprefix("/api")
        query = entry.get("query") or {}
        if query:
            path += "?" + urlencode(query)
        rows.append(
            f'<tr class="req req-{kind}{" req-retry" if retry else ""}" data-outcome="{kind}" '
            f'data-status="{esc(entry.get("status") if entry.get("status") is not None else "")}" '
            f'data-retry="{int(retry)}">'
            f'<td class="req-time">{fmt_time(entry.get("at"), ms=True)}</td>'
            f'<td class="req-call"><span class="method">{esc(entry.get("method", ""))}</span> '
            f'<span class="mono">{esc(path)}</span></td>'
            f'<td class="req-about">{_about_cell(entry)}</td>'
            f'<td class="req-answer">{_answer_cell(entry, kind, retry)}</td>'
            f'<td class="req-message">{fmt_text(entry.get("message"))}</td>'
            "</tr>"
        )
    label = dict(STATUS_FILTERS)[options.status].lower()
    if not matching:
        table = f'<p class="empty">No request matches “{esc(label)}”.</p>'
    else:
        head = "".join(f"<th>{name}</th>" for name in ("Time", "Request", "About", "Answer", "Loops' message"))
        table = (
            '<div class="scroll tall"><table class="log">'
            f"<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
        )
    noun = "requests" if options.status == "all" else f"requests ({label})"
    note = _shown_note(len(shown), len(matching), noun, options.query(request_limit=len(matching)) + "#requests")
    return f'<section id="requests">{heading}{filters}{note}{table}</section>'


def _shown_note(shown: int, total: int, noun: str, more_url: str) -> str:
    if shown >= total:
        return ""
    return (
        f'<p class="note">Showing the {fmt_count(shown)} newest of {fmt_count(total)} {noun}. '
        f'<a href="{esc(more_url)}">Show all</a></p>'
    )


def _contacts_section(
    contacts: Sequence[Mapping[str, Any]],
    list_names: Mapping[str, str],
    custom_keys: frozenset[str],
    options: PageOptions,
) -> str:
    newest = list(reversed(contacts))[: options.contact_limit]
    heading = f'<h2>Contacts <span class="small">newest first · {fmt_count(len(contacts))} in all</span></h2>'
    if not contacts:
        return f'<section id="contacts">{heading}<p class="empty">No contacts yet.</p></section>'
    rows = []
    for contact in newest:
        name = " ".join(part for part in (contact.get("firstName"), contact.get("lastName")) if part)
        custom = {key: value for key, value in contact.items() if key not in STANDARD_CONTACT_KEYS}
        rows.append(
            f'<tr class="contact" title="contact id {esc(contact.get("id", ""))}">'
            f'<td class="email">{fmt_text(contact.get("email"))}</td>'
            f'<td class="mono">{fmt_text(contact.get("userId"))}</td>'
            f"<td>{fmt_text(name)}</td>"
            f"<td>{fmt_subscribed(contact)}</td>"
            f"<td>{fmt_text(contact.get('source'))}</td>"
            f"<td>{fmt_text(contact.get('userGroup'))}</td>"
            f'<td class="lists">{fmt_lists(contact.get("mailingLists") or {}, list_names)}</td>'
            f'<td class="props">{fmt_pairs(custom, custom_keys)}</td>'
            f'<td class="time">{fmt_time(contact.get("createdAt"))}</td>'
            "</tr>"
        )
    head = "".join(
        f"<th>{label}</th>"
        for label in (
            "Email",
            "User ID",
            "Name",
            "Subscribed",
            "Source",
            "User group",
            "Mailing lists",
            "Custom properties",
            "Created",
        )
    )
    note = _shown_note(len(newest), len(contacts), "contacts", options.query(contact_limit=len(contacts)))
    return (
        f'<section id="contacts">{heading}{note}<div class="scroll"><table>'
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></div></section>"
    )


def _events_section(
    events: Sequence[Mapping[str, Any]],
    list_names: Mapping[str, str],
    emails: Mapping[str, str],
    options: PageOptions,
) -> str:
    newest = list(reversed(events))[: options.event_limit]
    heading = f'<h2>Latest events <span class="small">newest first · {fmt_count(len(events))} in all</span></h2>'
    if not events:
        return f'<section id="events">{heading}<p class="empty">No events yet.</p></section>'
    if not newest:
        return f'<section id="events">{heading}<p class="empty">No events shown (limit=0).</p></section>'
    rows = []
    for event in newest:
        who = [f"<div>{esc(event['email'])}</div>"] if event.get("email") else []
        if event.get("userId"):
            who.append(f'<div class="mono">userId {esc(event["userId"])}</div>')
        resolved = emails.get(str(event.get("contactId")))
        if not event.get("email") and resolved:
            who.append(f'<div class="small" title="the contact this userId matched">{esc(resolved)}</div>')
        sent_lists = event.get("mailingLists") or {}
        sent_values = event.get("contactProperties") or {}
        update = fmt_pairs(sent_values) if sent_values or not sent_lists else ""
        if sent_lists:
            update += f'<div class="lists">{fmt_lists(sent_lists, list_names, changes=True)}</div>'
        rows.append(
            '<tr class="event">'
            f'<td class="time">{fmt_time(event.get("at"))}</td>'
            f'<td class="event-name">{esc(event.get("eventName", ""))}</td>'
            f"<td>{''.join(who) or fmt_text(None)}</td>"
            f'<td class="props">{fmt_pairs(event.get("eventProperties") or {})}</td>'
            f'<td class="props">{update}</td>'
            f'<td class="mono key">{fmt_text(event.get("idempotencyKey"))}</td>'
            "</tr>"
        )
    head = "".join(
        f"<th>{label}</th>"
        for label in ("Time", "Event", "Contact", "Event properties", "Contact update sent", "Idempotency key")
    )
    note = _shown_note(len(newest), len(events), "events", options.query(event_limit=len(events)))
    return (
        f'<section id="events">{heading}{note}<div class="scroll"><table>'
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></div></section>"
    )


def _team_section(properties: Sequence[Mapping[str, Any]], lists: Sequence[Mapping[str, Any]]) -> str:
    custom = [prop for prop in properties if prop.get("key") not in STANDARD_CONTACT_KEYS | {"notes"}]
    prop_items = "".join(
        f'<li><span class="k">{esc(prop["key"])}</span> {esc(prop.get("type", ""))}'
        f' <span class="small">“{esc(prop.get("label", ""))}”</span></li>'
        for prop in custom
    )
    list_items = "".join(
        f'<li>{esc(spec.get("name", ""))} <span class="small mono">{esc(spec.get("id", ""))}</span>'
        f"{'' if spec.get('isPublic', True) else ' <span class=small>(private)</span>'}</li>"
        for spec in lists
    )
    none = '<p class="null">none</p>'
    return (
        '<section id="team"><details><summary><h2>Team schema '
        f'<span class="small">{len(custom)} custom properties · {len(lists)} mailing lists</span></h2></summary>'
        '<div class="columns">'
        f"<div><h3>Custom properties</h3>{f'<ul class=kv>{prop_items}</ul>' if prop_items else none}</div>"
        f"<div><h3>Mailing lists</h3>{f'<ul class=kv>{list_items}</ul>' if list_items else none}</div>"
        "</div></details></section>"
    )


STYLE = """
:root{color-scheme:light;--fg:#1f2328;--muted:#656d76;--line:#d8dee4;--soft:#f6f8fa;--accent:#5b3df5}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;
color:var(--fg);background:var(--soft);-webkit-text-size-adjust:100%}
header{background:#fff;border-bottom:1px solid var(--line);padding:16px 24px 10px}
h1{font-size:20px;margin:0 0 4px;overflow-wrap:anywhere}
h1 .team{color:var(--accent);margin-left:6px}
h2{font-size:15px;margin:0;display:inline}
h3{font-size:13px;margin:0 0 6px;color:var(--muted)}
a{color:#0969da;text-decoration:none}
a:hover{text-decoration:underline}
nav{margin:8px 0 4px;display:flex;flex-wrap:wrap;gap:6px 14px;align-items:center}
nav .views{margin-left:auto;color:var(--muted)}
nav .views a,nav .jumps a{margin-left:8px}
.meta code{overflow-wrap:anywhere}
.button{display:inline-block;padding:3px 12px;border:1px solid var(--line);border-radius:6px;background:var(--soft);
color:var(--fg);font-weight:600}
main{padding:16px 24px 32px}
.meta{margin:2px 0;color:var(--muted)}
.small{font-size:12px;color:var(--muted);font-weight:400}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:0 0 16px}
.card{background:#fff;border:1px solid var(--line);border-radius:8px;padding:8px 16px;min-width:120px}
.card dt{font-size:12px;color:var(--muted)}
.card dd{margin:0;font-size:22px;font-weight:600;font-variant-numeric:tabular-nums}
.card p{margin:0}
.card.warn{border-color:#d4a72c}.card.warn dd{color:#9a6700}
.card.bad{border-color:#ff8182}.card.bad dd{color:#cf222e}
section{background:#fff;border:1px solid var(--line);border-radius:8px;margin:0 0 16px;overflow:hidden}
section>h2,summary{display:block;padding:10px 14px;background:var(--soft);border-bottom:1px solid var(--line)}
summary{display:list-item;cursor:pointer}
details:not([open]) summary{border-bottom:0}
.columns{display:flex;flex-wrap:wrap;gap:12px 48px;padding:12px 14px}
.scroll{overflow-x:auto;-webkit-overflow-scrolling:touch}
.scroll.tall{max-height:70vh;overflow-y:auto}
.tall thead th{position:sticky;top:0;background:#fff;box-shadow:0 1px 0 var(--line)}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;vertical-align:top;padding:6px 10px;border-bottom:1px solid var(--line)}
th{font-size:12px;color:var(--muted);font-weight:600;white-space:nowrap}
tbody tr:last-child td{border-bottom:0}
tbody tr:hover{background:#f6f8fa}
td{max-width:340px;overflow-wrap:anywhere}
td.time,td.req-time{white-space:nowrap;color:var(--muted);font-size:12px;font-variant-numeric:tabular-nums}
.ms{color:#8c959f}
td.email,td.event-name{font-weight:600}
td.req-call{white-space:nowrap}
.method{font-weight:600;font-size:12px}
td.req-message{min-width:200px}
.about{white-space:nowrap;margin-right:8px}
table.log{min-width:760px}
#contacts table{min-width:960px}
#events table{min-width:760px}
.mono,code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12px}
.null{color:#8c959f}
ul.kv{list-style:none;margin:0;padding:0}
ul.kv .k,.req-about .k{color:var(--muted);font-size:12px;
font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
ul.kv .k::after,.req-about .k::after{content:":"}
.pill{display:inline-block;padding:0 8px;border-radius:999px;background:#ddf4ff;color:#0550ae;font-size:12px;
margin:1px 0;white-space:nowrap}
.pill.yes{background:#dafbe1;color:#116329}
.pill.no{background:#ffebe9;color:#a40e26}
.pill.left{background:#eaeef2;color:var(--muted);text-decoration:line-through}
.pill.retry{background:#fbefff;color:#6639ba}
.sign{display:inline-block;width:1em;color:var(--muted);font-weight:600}
.unknown{outline:1px dashed #bf8700;outline-offset:1px}
.empty{margin:0;padding:18px 14px;color:var(--muted)}
.note{margin:0;padding:6px 14px;font-size:12px;color:var(--muted);border-bottom:1px solid var(--line)}
.status{display:inline-block;min-width:3.2em;padding:0 6px;border-radius:4px;font-weight:600;font-size:12px;
text-align:center;font-variant-numeric:tabular-nums}
.s-2xx{background:#dafbe1;color:#116329}
.s-409{background:#eaeef2;color:#424a53}
.s-429{background:#fff8c5;color:#7d4e00}
.s-4xx,.s-5xx,.s-no-answer{background:#ffebe9;color:#a40e26}
.s-other{background:#eaeef2;color:#424a53}
.filters{margin:0;padding:8px 14px;gap:6px;border-bottom:1px solid var(--line)}
.chip{display:inline-block;padding:2px 10px;border:1px solid var(--line);border-radius:999px;color:var(--fg);
font-size:12px;white-space:nowrap}
.chip b{font-variant-numeric:tabular-nums;color:var(--muted);margin-left:2px}
.chip.on{background:var(--fg);border-color:var(--fg);color:#fff}
.chip.on b{color:#fff}
.chart-box{padding:10px 14px 12px}
.chart-summary{margin:0 0 8px}
.chart{display:grid;grid-template-columns:3.2em minmax(0,1fr);column-gap:6px}
.y-axis{position:relative;height:180px;font-size:11px;color:var(--muted);text-align:right}
.y-axis span{position:absolute;right:0;transform:translateY(-50%);white-space:nowrap}
.plot{position:relative;height:180px;border-left:1px solid var(--line);border-bottom:1px solid var(--line)}
.plot-svg{display:block;width:100%;height:100%;overflow:visible}
.limit-label{position:absolute;right:2px;transform:translateY(-110%);font-size:11px;color:#cf222e;background:#fff}
.x-axis{position:relative;height:18px;font-size:11px;color:var(--muted)}
.x-axis span{position:absolute;top:2px;white-space:nowrap}
.x-axis .mid{transform:translateX(-50%)}.x-axis .end{transform:translateX(-100%)}
.legend{display:flex;flex-wrap:wrap;gap:4px 16px;list-style:none;margin:6px 0 0;padding:0;font-size:12px;
color:var(--muted)}
.legend i{display:inline-block;width:10px;height:10px;margin-right:5px;vertical-align:-1px}
.legend i.tri{width:0;height:0;border:5px solid transparent;border-top:8px solid #8250df;border-bottom:0}
.legend i.dash{width:16px;height:0;border-top:2px dashed #cf222e;vertical-align:3px}
@media (max-width:640px){
header{padding:12px 12px 8px}
main{padding:10px 8px 24px}
nav .views{margin-left:0}
nav .jumps a:first-child{margin-left:0}
.cards{gap:6px}
.card{flex:1 1 calc(50% - 6px);min-width:0;padding:6px 10px}
.card dd{font-size:18px}
th,td{padding:5px 6px}
td{max-width:240px}
table.log{min-width:0}
table.log thead{display:none}
table.log tr{display:block;padding:6px 8px;border-bottom:1px solid var(--line)}
table.log td{display:block;max-width:none;padding:1px 0;border:0}
table.log td.req-time,table.log td.req-call{display:inline-block;margin-right:8px}
table.log td.req-message{min-width:0;color:var(--muted)}
.about{white-space:normal}
.chart-box{padding:8px}
.y-axis,.plot{height:150px}
.x-axis .mid{display:none}
}
"""


def render_page(
    state: Mapping[str, Any], team: TeamInfo, options: PageOptions, now: str, series: Mapping[str, Any] | None = None
) -> str:
    """The whole page from one :meth:`Store.snapshot` (``contacts``, ``events``, ``requests``, ``properties``,
    ``lists``), the team's settings, the query options and the store clock's time (Loops' UTC text).

    ``series`` is :func:`rate_series` of the same log, passed in when the caller also serves it as JSON so that
    the chart and ``/_sandbox/rate`` are one computation; computed here otherwise.
    """
    contacts: Sequence[Mapping[str, Any]] = state.get("contacts", [])
    events: Sequence[Mapping[str, Any]] = state.get("events", [])
    log: Sequence[Mapping[str, Any]] = state.get("requests", [])
    properties: Sequence[Mapping[str, Any]] = state.get("properties", [])
    lists: Sequence[Mapping[str, Any]] = state.get("lists", [])
    list_names = {spec["id"]: str(spec.get("name") or spec["id"]) for spec in lists}
    custom_keys = frozenset(str(prop["key"]) for prop in properties)
    emails = {str(contact.get("id")): str(contact["email"]) for contact in contacts if contact.get("email")}
    flags = retry_flags(log)
    if series is None:
        series = rate_series(log, team.rate_limit)
    refresh = f'<meta http-equiv="refresh" content="{options.refresh}">' if options.refresh else ""
    # The request log comes before the contacts: a long log scrolls inside its own box, and the contacts and
    # events, what the sync left in Loops, stay one jump away (header links).
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"{refresh}<title>{esc(team.name)} · Loops sandbox</title><style>{STYLE}</style></head><body>"
        f"{_header(team, options, now)}<main>"
        f"{_counts(len(contacts), len(events), request_counts(log, flags))}"
        f"{_chart_section(series)}"
        f"{_requests_section(log, flags, options)}"
        f"{_contacts_section(contacts, list_names, custom_keys, options)}"
        f"{_events_section(events, list_names, emails, options)}"
        f"{_team_section(properties, lists)}"
        "</main></body></html>\n"
    )
