"""The sandbox's read-only HTML page at ``/``: contacts, the latest events, request counts and the team's settings.

A user rehearsing a sync opens it in a browser to look at the result the way they would look at Loops' audience
page. It is rendered on the server in one pass from a :meth:`Store.snapshot`, with inline CSS and no script or
external asset (the sandbox often runs offline). Contacts and events hold whatever a sync sent, so every value
goes through :func:`esc`; the app also serves the page with a Content-Security-Policy that allows no script.

Query parameters (all optional): ``limit`` (events shown, default 50), ``contacts`` (contacts shown, default
500) and ``refresh`` (seconds between automatic reloads, default 0 = off).
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlencode

DEFAULT_EVENT_LIMIT = 50
DEFAULT_CONTACT_LIMIT = 500
MAX_REFRESH_S = 3600

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
    ("/_sandbox/state", "state"),
)

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
    refresh: int = 0

    def query(self, **changes: int) -> str:
        """The page's own URL with ``changes`` applied, keeping only non-default parameters."""
        options = replace(self, **changes)
        params = {
            name: value
            for name, value, default in (
                ("limit", options.event_limit, DEFAULT_EVENT_LIMIT),
                ("contacts", options.contact_limit, DEFAULT_CONTACT_LIMIT),
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
    """``?limit=&contacts=&refresh=`` → :class:`PageOptions`; ``ValueError`` with a readable message if bad."""
    return PageOptions(
        event_limit=_int_param(args, "limit", DEFAULT_EVENT_LIMIT, 0, None),
        contact_limit=_int_param(args, "contacts", DEFAULT_CONTACT_LIMIT, 0, None),
        refresh=_int_param(args, "refresh", 0, 0, MAX_REFRESH_S),
    )


def request_counts(log: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Counts over the /api request log: all, 429s, other 4xx, 5xx, and hung up (``drop``/``lost`` faults)."""
    counts = {"requests": 0, "429": 0, "4xx": 0, "5xx": 0, "no_answer": 0}
    for entry in log:
        counts["requests"] += 1
        status = entry.get("status")
        if entry.get("fault") in ("drop", "lost"):
            counts["no_answer"] += 1
        elif status == 429:
            counts["429"] += 1
        elif isinstance(status, int) and 400 <= status < 500:
            counts["4xx"] += 1
        elif isinstance(status, int) and status >= 500:
            counts["5xx"] += 1
    return counts


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
    return (
        "<header>"
        f'<h1>Loops sandbox <span class="team" id="team-name">{esc(team.name)}</span></h1>'
        f'<p class="meta">{" · ".join(facts)}</p>'
        f'<nav><a class="button" href="{esc(options.query())}" id="reload">Reload</a> {refresh}'
        f'<span class="views">JSON: {views}</span></nav>'
        f'<p class="meta small">Read-only. Rendered at {esc(now)} (sandbox clock).</p>'
        "</header>"
    )


def _counts(contacts: int, events: int, counts: Mapping[str, int]) -> str:
    cards = [
        ("contacts", "Contacts", contacts, ""),
        ("events", "Events", events, ""),
        ("requests", "API requests", counts["requests"], ""),
        ("429", "429 rate limited", counts["429"], "warn"),
        ("4xx", "Other 4xx", counts["4xx"], "bad"),
        ("5xx", "5xx", counts["5xx"], "bad"),
        ("no-answer", "No answer (hung up)", counts["no_answer"], "bad"),
    ]
    items = "".join(
        f'<div class="card{" " + tone if tone and value else ""}"><dt>{label}</dt>'
        f'<dd id="count-{key}">{fmt_count(value)}</dd></div>'
        for key, label, value, tone in cards
    )
    return f'<dl class="cards">{items}</dl>'


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
            f'<td class="time">{fmt_text(contact.get("createdAt"))}</td>'
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
            f'<td class="time">{fmt_text(event.get("at"))}</td>'
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
color:var(--fg);background:var(--soft)}
header{background:#fff;border-bottom:1px solid var(--line);padding:16px 24px 10px}
h1{font-size:20px;margin:0 0 4px}
h1 .team{color:var(--accent);margin-left:6px}
h2{font-size:15px;margin:0;display:inline}
h3{font-size:13px;margin:0 0 6px;color:var(--muted)}
a{color:#0969da;text-decoration:none}
a:hover{text-decoration:underline}
nav{margin:8px 0 4px;display:flex;flex-wrap:wrap;gap:6px 14px;align-items:center}
nav .views{margin-left:auto;color:var(--muted)}
nav .views a{margin-left:8px}
.button{display:inline-block;padding:3px 12px;border:1px solid var(--line);border-radius:6px;background:var(--soft);
color:var(--fg);font-weight:600}
main{padding:16px 24px 32px}
.meta{margin:2px 0;color:var(--muted)}
.small{font-size:12px;color:var(--muted);font-weight:400}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:0 0 16px}
.card{background:#fff;border:1px solid var(--line);border-radius:8px;padding:8px 16px;min-width:120px}
.card dt{font-size:12px;color:var(--muted)}
.card dd{margin:0;font-size:22px;font-weight:600;font-variant-numeric:tabular-nums}
.card.warn{border-color:#d4a72c}.card.warn dd{color:#9a6700}
.card.bad{border-color:#ff8182}.card.bad dd{color:#cf222e}
section{background:#fff;border:1px solid var(--line);border-radius:8px;margin:0 0 16px;overflow:hidden}
section>h2,summary{display:block;padding:10px 14px;background:var(--soft);border-bottom:1px solid var(--line)}
summary{display:list-item;cursor:pointer}
details:not([open]) summary{border-bottom:0}
.columns{display:flex;flex-wrap:wrap;gap:12px 48px;padding:12px 14px}
.scroll{overflow-x:auto}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;vertical-align:top;padding:6px 10px;border-bottom:1px solid var(--line)}
th{font-size:12px;color:var(--muted);font-weight:600;white-space:nowrap}
tbody tr:last-child td{border-bottom:0}
tbody tr:hover{background:#f6f8fa}
td{max-width:340px;overflow-wrap:anywhere}
td.time{white-space:nowrap;color:var(--muted);font-size:12px;font-variant-numeric:tabular-nums}
td.email,td.event-name{font-weight:600}
.mono,code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12px}
.null{color:#8c959f}
ul.kv{list-style:none;margin:0;padding:0}
ul.kv .k{color:var(--muted);font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12px}
ul.kv .k::after{content:":"}
.pill{display:inline-block;padding:0 8px;border-radius:999px;background:#ddf4ff;color:#0550ae;font-size:12px;
margin:1px 0;white-space:nowrap}
.pill.yes{background:#dafbe1;color:#116329}
.pill.no{background:#ffebe9;color:#a40e26}
.pill.left{background:#eaeef2;color:var(--muted);text-decoration:line-through}
.sign{display:inline-block;width:1em;color:var(--muted);font-weight:600}
.unknown{outline:1px dashed #bf8700;outline-offset:1px}
.empty{margin:0;padding:18px 14px;color:var(--muted)}
.note{margin:0;padding:6px 14px;font-size:12px;color:var(--muted);border-bottom:1px solid var(--line)}
"""


def render_page(state: Mapping[str, Any], team: TeamInfo, options: PageOptions, now: str) -> str:
    """The whole page from one :meth:`Store.snapshot` (``contacts``, ``events``, ``requests``, ``properties``,
    ``lists``), the team's settings, the query options and the store clock's time."""
    contacts: Sequence[Mapping[str, Any]] = state.get("contacts", [])
    events: Sequence[Mapping[str, Any]] = state.get("events", [])
    properties: Sequence[Mapping[str, Any]] = state.get("properties", [])
    lists: Sequence[Mapping[str, Any]] = state.get("lists", [])
    list_names = {spec["id"]: str(spec.get("name") or spec["id"]) for spec in lists}
    custom_keys = frozenset(str(prop["key"]) for prop in properties)
    emails = {str(contact.get("id")): str(contact["email"]) for contact in contacts if contact.get("email")}
    refresh = f'<meta http-equiv="refresh" content="{options.refresh}">' if options.refresh else ""
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"{refresh}<title>{esc(team.name)} · Loops sandbox</title><style>{STYLE}</style></head><body>"
        f"{_header(team, options, now)}<main>"
        f"{_counts(len(contacts), len(events), request_counts(state.get('requests', [])))}"
        f"{_contacts_section(contacts, list_names, custom_keys, options)}"
        f"{_events_section(events, list_names, emails, options)}"
        f"{_team_section(properties, lists)}"
        "</main></body></html>\n"
    )
