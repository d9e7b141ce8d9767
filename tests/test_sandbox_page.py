"""What a person sees of the sandbox: the page at ``/`` (in headless Chromium too), its chart, and the CLI's help.

The browser test drives a real sync (the target CLI against a rate-limited sandbox with injected 429s) plus a few
direct requests for a 409, a 400 and a retried 500, then loads the page in Debian's ``chromium`` and checks that
what the page shows (counts, filter counts, log rows, chart bars) is what the sandbox's JSON views say. It is
skipped only when chromium is missing outside CI (``CI`` set: a missing chromium fails; ``.ci/run`` installs it).
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import requests

from target_loops.sandbox import Sandbox
from target_loops.sandbox.page import (
    MAX_CHART_BUCKETS,
    PageOptions,
    TeamInfo,
    outcome,
    rate_series,
    render_page,
    repeat_causes,
    request_counts,
    retry_flags,
)
from target_loops.sandbox.server import build_parser
from tests.browser import dump_dom, lay_out, require_chromium
from tests.runner import SAMPLES, SANDBOX_KEY, run_target

TEAM = json.loads((SAMPLES / "sandbox_team.json").read_text())
AUTH = {"Authorization": f"Bearer {SANDBOX_KEY}"}


# ----- helpers -------------------------------------------------------------------------------------------


def root(sb: Sandbox) -> str:
    return sb.url.removesuffix("/api")


def api(sb: Sandbox, method: str, path: str, body: Any = None, **headers: str) -> requests.Response | None:
    """One Loops call; None when the sandbox hung up (an injected drop/lost fault)."""
    try:
        return requests.request(method, sb.url + path, json=body, headers={**AUTH, **headers}, timeout=5)
    except requests.ConnectionError:
        return None


def view(sb: Sandbox, name: str) -> Any:
    return requests.get(f"{root(sb)}/_sandbox/{name}", timeout=5).json()


def page_text(sb: Sandbox, **params: Any) -> str:
    response = requests.get(root(sb) + "/", params=params, timeout=5)
    assert response.status_code == 200, response.text
    return response.text


class Dom(HTMLParser):
    """The few things the tests read off the page: elements with an id or data-* attributes, log rows, times."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str], list[str]]] = []  # (tag, attributes, text parts)
        self._open: list[tuple[str, dict[str, str], list[str]]] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = (tag, {name: value or "" for name, value in attrs}, [])
        self.elements.append(element)
        if tag not in ("meta", "link", "br", "rect", "path", "line", "input", "img"):
            self._open.append(element)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, {name: value or "" for name, value in attrs}, []))

    def handle_endtag(self, tag: str) -> None:
        for index in range(len(self._open) - 1, -1, -1):
            if self._open[index][0] == tag:
                del self._open[index:]
                break

    def handle_data(self, data: str) -> None:
        for _, _, parts in self._open:
            parts.append(data)

    def find(self, tag: str | None = None, **attrs: str) -> list[tuple[str, dict[str, str], str]]:
        """Elements by tag and attribute values (``class_`` matches one class; ``attr=True``-like: ``"*"``)."""
        found = []
        for element_tag, element_attrs, parts in self.elements:
            if tag is not None and element_tag != tag:
                continue
            if all(_matches(element_attrs, name, wanted) for name, wanted in attrs.items()):
                found.append((element_tag, element_attrs, "".join(parts)))
        return found

    def number(self, tag: str | None = None, **attrs: str) -> int:
        (element,) = self.find(tag, **attrs)
        return int(element[2].replace(",", "").strip())


def _matches(element_attrs: dict[str, str], name: str, wanted: str) -> bool:
    """``class_`` matches one of the classes, ``"*"`` any value, anything else the exact value."""
    name = "class" if name == "class_" else name.replace("_", "-")
    if name not in element_attrs:
        return False
    if name == "class":
        return wanted in element_attrs[name].split()
    return wanted in ("*", element_attrs[name])


@pytest.fixture
def chromium() -> str:
    """Debian's chromium (see tests/browser.py: skipped without it outside CI, a failure under CI)."""
    return require_chromium()


# ----- the page in a real browser, after a sync ---------------------------------------------------------


@pytest.fixture
def synced(make_sandbox: Any, tmp_path: Path) -> Iterator[tuple[Sandbox, dict[str, Any]]]:
    """A sandbox after a real sync with 429s (the target retries them), then a 409, a 400 and a retried 500."""
    sb = make_sandbox(rate_limit=20, properties=TEAM["properties"], lists=TEAM["lists"])
    sb.inject("429", count=2, path="/v1/contacts/update")
    run = run_target(
        {"api_key": SANDBOX_KEY, "base_url": sb.url, "ledger_url": f"sqlite:///{tmp_path / 'ledger.db'}"},
        input_path=SAMPLES / "segment_export.singer",
        tmp_path=tmp_path,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    event = next(event for event in sb.store.events() if event["idempotencyKey"])
    again = {"eventName": event["eventName"], "email": event["email"] or "x@example.com"}
    duplicate = api(sb, "POST", "/v1/events/send", again, **{"Idempotency-Key": event["idempotencyKey"]})
    assert duplicate is not None and duplicate.status_code == 409
    refused = api(sb, "PUT", "/v1/contacts/update", {"email": "a@example.com", "colour": "blue"})
    assert refused is not None and refused.status_code == 400
    sb.inject("500", path="/v1/lists")
    assert [getattr(api(sb, "GET", "/v1/lists"), "status_code", None) for _ in range(2)] == [500, 200]
    yield sb, json.loads(run.report_path.read_text())


def test_page_in_chromium_matches_the_json_views(
    chromium: str, synced: tuple[Sandbox, dict[str, Any]], tmp_path: Path
) -> None:
    synced, report = synced
    state, series = view(synced, "state"), view(synced, "rate")
    log = state["requests"]
    statuses = Counter(entry["status"] for entry in log)
    assert statuses[409] >= 1 and statuses[400] >= 1 and statuses[429] >= 2 and statuses[500] >= 1
    dom = Dom(dump_dom(chromium, root(synced) + "/?requests=100000", tmp_path / "profile"))

    # The cards and the filter links count what the log says (computed here from the raw statuses).
    assert dom.number(id="count-contacts") == len(state["contacts"])
    assert dom.number(id="count-events") == len(state["events"])
    assert dom.number(id="count-requests") == len(log)
    assert dom.number(id="count-429") == statuses[429]
    assert dom.number(id="count-5xx") == sum(n for status, n in statuses.items() if status and status >= 500)
    other_4xx = sum(n for status, n in statuses.items() if status and 400 <= status < 500 and status not in (409, 429))
    assert dom.number(id="count-4xx") == other_4xx  # a 409 is not an error: not counted here
    assert dom.number(data_count="409") == dom.number(data_filter_count="409") == statuses[409]
    assert dom.number(data_filter_count="all") == len(log)
    assert dom.number(data_filter_count="2xx") == sum(n for status, n in statuses.items() if 200 <= status < 300)

    # Every request has a row, with its outcome; 409s read "duplicate (delivered earlier)", refusals their message.
    rows = dom.find("tr", class_="req")
    assert len(rows) == len(log)
    assert Counter(attrs["data-outcome"] for _, attrs, _ in rows) == Counter(outcome(entry) for entry in log)
    for _, attrs, text in rows:
        if attrs["data-outcome"] == "409":
            assert "duplicate (delivered earlier)" in text and "has already been used" in text
    assert any("Unknown contact property 'colour'" in text for _, _, text in rows)

    # Times are local, with the date, and say which instant they are.
    times = [attrs for _, attrs, _ in dom.find("time", datetime="*")]
    assert {attrs["datetime"] for attrs in times} >= {entry["at"] for entry in log}
    first = datetime.fromisoformat(log[0]["at"].replace("Z", "+00:00")).astimezone()
    for _, _, shown in dom.find("time", datetime=log[0]["at"]):  # in the log, and as the run's start
        assert first.strftime("%H:%M:%S") in shown and str(first.year) in shown and first.strftime("%b") in shown

    # The chart: one bar group per bucket, the same numbers as /_sandbox/rate, bars drawn to those numbers.
    (svg,) = [attrs for _, attrs, _ in dom.find("svg", class_="plot-svg")]
    assert int(svg["data-buckets"]) == len(series["buckets"]) and svg["data-start"] == series["start"]
    assert int(svg["data-bucket-seconds"]) == series["bucketSeconds"] and int(svg["data-rate-limit"]) == 20
    bars = [attrs for _, attrs, _ in dom.find("g", class_="bucket")]
    shown_series = [
        {
            "at": bar["data-at"],
            "requests": int(bar["data-requests"]),
            "perSecond": float(bar["data-per-second"]),
            "rateLimited": int(bar["data-rate-limited"]),
            "retries": int(bar["data-retries"]),
        }
        for bar in bars
    ]
    assert shown_series == series["buckets"]
    heights = [float(attrs["height"]) for _, attrs, _ in dom.find("rect", class_="bar")]
    y_max = float(svg["data-y-max"])
    drawn = [bucket["perSecond"] for bucket in series["buckets"] if bucket["perSecond"]]
    assert heights == pytest.approx([rate / y_max * 100 for rate in drawn], abs=0.01)
    assert len(dom.find("rect", class_="bar-429")) == sum(1 for b in series["buckets"] if b["rateLimited"])
    assert len(dom.find("path", class_="retry-mark")) == sum(1 for b in series["buckets"] if b["retries"])
    # In the target's words: the 429s are rate_limited, the 500 sent again is a retry.
    assert series["totals"]["rateLimited"] == statuses[429] and series["totals"]["retries"] == 1
    for name in ("requests", "rateLimited", "retries"):
        assert dom.number(data_total=name) == series["totals"][name]
    assert dom.number(data_count="retry") == dom.number(data_filter_count="retry") == series["totals"]["retries"]

    # The runs: the target's run, found by the id it sent in its User-Agent, counted per stream in its words; the
    # numbers are the target's own JSON report's (requests, rate_limited, retries of each stream).
    runs = {attrs["data-run"]: attrs for _, attrs, _ in dom.find("tr", class_="run")}
    assert set(runs) == {report["run_id"], "none"}  # the target's run, and this test's own requests
    ours = runs[report["run_id"]]
    assert int(ours["data-rate-limited"]) == report["totals"]["rate_limited"] == 2
    per_stream = {
        attrs["data-stream"]: (int(attrs["data-requests"]), int(attrs["data-rate-limited"]), int(attrs["data-retries"]))
        for _, attrs, _ in dom.find("li", class_="run-stream")
    }
    for stream in report["streams"]:
        if stream["requests"]:
            expected = (stream["requests"], stream["rate_limited"], stream["retries"])
            assert per_stream[stream["stream"]] == expected, stream["stream"]
    unnamed = sum(1 for entry in log if entry["run"] == report["run_id"] and entry["stream"] is None)
    assert int(ours["data-requests"]) == report["totals"]["requests"] + unnamed  # + the key check, the preflight

    # The status filter is a plain link: no script needed, only matching rows.
    filtered = Dom(dump_dom(chromium, root(synced) + "/?status=409", tmp_path / "profile"))
    assert [attrs["data-outcome"] for _, attrs, _ in filtered.find("tr", class_="req")] == ["409"] * statuses[409]
    (current,) = filtered.find("a", aria_current="true")
    assert "409" in current[1]["href"]


def test_page_reads_at_desktop_and_phone_width(
    chromium: str, synced: tuple[Sandbox, dict[str, Any]], tmp_path: Path
) -> None:
    """Screenshots at 1280 and 390 px (tests/artifacts/sandbox-page-*.png); at either width nothing is wider than
    the window: no sideways scrolling, and no element cut off by its box."""
    sb, _ = synced
    api(sb, "PUT", "/v1/contacts/update", {"email": "a.very.long.address.for.a.phone@subdomain.example.com"})
    text = page_text(sb)
    for width in (1280, 390):
        laid_out = lay_out(chromium, text, tmp_path / "browser", width, "sandbox-page")
        assert laid_out["inner_width"] == width
        assert laid_out["scroll_width"] <= width, laid_out
        assert laid_out["wide"] == [], laid_out


# ----- the page over plain HTTP (no browser) ------------------------------------------------------------


def test_page_lists_runs_by_the_run_id_in_the_user_agent(make_sandbox: Any) -> None:
    """A run is the requests of one target process (``run/<id>`` in its User-Agent); its streams come from the
    percent-encoded stream header; ``?run=`` shows one run's requests, ``?run=none`` those that named no run."""
    sb = make_sandbox(rate_limit=3)
    first = {"User-Agent": "target-loops/0.2.0 run/aaa111", "X-Target-Loops-Stream": "Order%20Completed%20%C3%A9"}
    for _ in range(5):  # the fourth and fifth of the second are 429s
        api(sb, "GET", "/v1/lists", **first)
    time.sleep(1.1)
    api(sb, "GET", "/v1/lists", **{"User-Agent": "target-loops/0.2.0 run/bbb222"})
    api(sb, "GET", "/v1/api-key")  # no run named (python-requests' own User-Agent)
    log = sb.store.requests()
    assert [entry["run"] for entry in log] == ["aaa111"] * 5 + ["bbb222", None]
    assert log[0]["stream"] == "Order Completed é" and log[5]["stream"] is None
    dom = Dom(page_text(sb))
    runs = {attrs["data-run"]: attrs for _, attrs, _ in dom.find("tr", class_="run")}
    assert list(runs) == ["none", "bbb222", "aaa111"]  # newest first
    limited = sum(1 for entry in log[:5] if entry["status"] == 429)
    assert (runs["aaa111"]["data-requests"], runs["aaa111"]["data-rate-limited"]) == ("5", str(limited))
    (stream,) = [attrs for _, attrs, _ in dom.find("li", class_="run-stream", data_stream="Order Completed é")]
    assert (stream["data-requests"], stream["data-rate-limited"], stream["data-retries"]) == ("5", str(limited), "0")
    one = Dom(page_text(sb, run="aaa111"))
    assert len(one.find("tr", class_="req")) == 5 and one.number(id="count-requests") == 5
    assert one.number(id="count-429") == limited and one.find(id="run-filter")
    assert len(Dom(page_text(sb, run="none")).find("tr", class_="req")) == 1


def test_page_shows_a_page_at_a_time(sandbox: Sandbox) -> None:
    """300 contacts, 300 events, 600 requests: the page shows the newest 50, 50 and 100, with links to the rest,
    instead of a page many screens long."""
    for index in range(300):
        api(sandbox, "POST", "/v1/events/send", {"eventName": "Order Completed", "email": f"p{index}@example.com"})
        api(sandbox, "PUT", "/v1/contacts/update", {"email": f"p{index}@example.com", "firstName": f"P{index}"})
    text = page_text(sandbox)
    dom = Dom(text)
    assert (len(dom.find("tr", class_="contact")), len(dom.find("tr", class_="event"))) == (50, 50)
    assert len(dom.find("tr", class_="req")) == 100
    assert "Contacts 1-50 of 300, newest first · page 1 of 6" in text and 'rel="older"' in text
    last = Dom(page_text(sandbox, cpage=6))
    assert [row[2].split()[0] for row in last.find("tr", class_="contact")][-1] == "p0@example.com"
    assert len(text) < 400_000


# ----- the page over plain HTTP (no browser) ------------------------------------------------------------


def test_page_duplicates_are_not_errors_and_refusals_say_why(sandbox: Sandbox) -> None:
    body = {"eventName": "signup", "email": "a@x.io"}
    answers = [api(sandbox, "POST", "/v1/events/send", body, **{"Idempotency-Key": "k1"}) for _ in range(2)]
    assert [getattr(answer, "status_code", None) for answer in answers] == [200, 409]
    api(sandbox, "PUT", "/v1/contacts/update", {"email": "b@x.io", "colour": "blue"})
    dom = Dom(page_text(sandbox))
    assert dom.number(id="count-4xx") == 1  # the 400, not the 409
    (duplicate,) = [row for row in dom.find("tr", class_="req") if row[1]["data-outcome"] == "409"]
    assert "duplicate (delivered earlier)" in duplicate[2] and "k1" in duplicate[2]
    assert "Idempotency key 'k1' has already been used in the last 24 hours." in duplicate[2]
    assert "s-409" in page_text(sandbox) and 'class="card bad"><dt>Other 4xx (refused)</dt><dd id="count-4xx">1<' in (
        page_text(sandbox)
    )
    (refused,) = [row for row in dom.find("tr", class_="req") if row[1]["data-outcome"] == "4xx"]
    assert "Unknown contact property 'colour': create it in Loops first." in refused[2]
    assert [entry["message"] for entry in sandbox.store.requests()] == [
        None,
        "Idempotency key 'k1' has already been used in the last 24 hours.",
        "Unknown contact property 'colour': create it in Loops first.",
    ]


def test_page_status_filter_works_without_script(make_sandbox: Any) -> None:
    sb = make_sandbox(rate_limit=2)
    for _ in range(5):
        api(sb, "GET", "/v1/lists")
    sb.inject("drop")
    api(sb, "GET", "/v1/lists")
    log = sb.store.requests()
    for status in ("all", "2xx", "429", "no-answer", "409"):
        text = page_text(sb, status=status, requests=1000)
        assert "<script" not in text
        outcomes = re.findall(r'<tr class="req [^"]*" data-outcome="([\w-]+)"', text)
        expected = [outcome(entry) for entry in reversed(log) if status in ("all", outcome(entry))]
        assert outcomes == expected, status
        assert re.findall(r'class="chip chip-([\w-]+) on"[^>]*aria-current=true', text) == [status]
    assert "No request matches" in page_text(sb, status="409")
    limited = page_text(sb, requests=2)
    assert len(re.findall(r'<tr class="req ', limited)) == 2 and "Requests 1-2 of 6, newest first" in limited
    older = page_text(sb, requests=2, rpage=3)  # the oldest page: the first two requests
    assert re.findall(r'data-outcome="([\w-]+)"', older) == [outcome(entry) for entry in reversed(log[:2])]
    bad = requests.get(root(sb) + "/", params={"status": "teapot"}, timeout=5)
    assert bad.status_code == 400 and "'status' must be one of" in bad.json()["message"]


def test_page_times_are_server_local_with_the_date(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    api(sandbox, "POST", "/v1/events/send", {"eventName": "signup", "email": "a@x.io"})
    (event,) = sandbox.store.events()
    at = datetime.fromisoformat(event["at"].replace("Z", "+00:00"))
    if not hasattr(time, "tzset"):
        pytest.skip("time.tzset is not available on this platform")
    monkeypatch.setenv("TZ", "Asia/Kolkata")  # UTC+05:30 all year: a zone whose offset shows in the minutes
    time.tzset()
    try:
        text = page_text(sandbox)
    finally:
        monkeypatch.undo()
        time.tzset()
    kolkata = at.astimezone(timezone(timedelta(hours=5, minutes=30)))
    expected = f"{kolkata.day} {kolkata:%b %Y %H:%M:%S}"
    assert f'<time datetime="{event["at"]}" title="{event["at"]}">{expected}</time>' in text
    assert '<span id="zone">IST, UTC+05:30</span>' in text


def test_page_has_the_chart_and_the_rate_view(make_sandbox: Any) -> None:
    sb = make_sandbox(rate_limit=3)
    for _ in range(5):
        api(sb, "GET", "/v1/lists")
    series = view(sb, "rate")
    assert series == rate_series(sb.store.requests(), 3)
    assert series["totals"]["requests"] == 5 and series["totals"]["rateLimited"] >= 1
    text = page_text(sb)
    assert '<section id="chart">' in text and 'data-rate-limit="3"' in text and 'class="limit"' in text
    assert "<script" not in text and "http://www.w3.org" not in text  # inline SVG, nothing fetched
    assert 'href="/_sandbox/rate"' in text
    empty = make_sandbox()
    assert "No API requests yet." in page_text(empty) and view(empty, "rate")["buckets"] == []


def test_page_reads_on_a_phone() -> None:
    """The layout rules a phone needs; the look itself was checked on screenshots at 390 and 1280 px wide."""
    text = render_page({}, TeamInfo("Acme", 10, False, "http://127.0.0.1:1/api"), PageOptions(), "2025-01-01T00:00:00Z")
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in text
    assert "@media (max-width:640px)" in text
    assert "table.stack tr{display:block" in text  # rows stack instead of squeezing columns or scrolling sideways


# ----- the series, retries and counts (pure functions) -----------------------------------------------------


def entry(at: str, status: int | None, *, path: str = "/api/v1/lists", key: str | None = None, **extra: Any) -> dict:
    return {
        "at": at,
        "method": "GET",
        "path": path,
        "query": {},
        "status": status,
        "idempotencyKey": key,
        "body": None,
        "fault": None,
        "message": None,
        **extra,
    }


def test_retries_are_repeats_after_a_failure_only() -> None:
    log = [
        entry("2025-01-01T00:00:00.100Z", 429),  # a
        entry("2025-01-01T00:00:00.200Z", 200),  # a again after a 429: retry
        entry("2025-01-01T00:00:01.000Z", 200),  # a again after a success: a re-send, not a retry
        entry("2025-01-01T00:00:01.100Z", 500, path="/api/v1/x", key="k"),
        entry("2025-01-01T00:00:01.200Z", 200, path="/api/v1/x", key="other"),  # another request
        entry("2025-01-01T00:00:01.300Z", 200, path="/api/v1/x", key="k"),  # retry of the 500
        entry("2025-01-01T00:00:02.000Z", 200, path="/api/v1/y", fault="lost"),  # done, but no answer
        entry("2025-01-01T00:00:02.100Z", 409, path="/api/v1/y"),  # retry, answered "duplicate"
        entry("2025-01-01T00:00:02.200Z", 400, path="/api/v1/z"),
        entry("2025-01-01T00:00:02.300Z", 400, path="/api/v1/z"),  # a 400 is not retried: a re-send
    ]
    # The target's words: a repeat after a 429 is rate_limited (counted on the 429), a retry follows a 5xx or no answer.
    assert repeat_causes(log) == [None, "429", None, None, None, "5xx", None, "no-answer", None, None]
    assert retry_flags(log) == [False, False, False, False, False, True, False, True, False, False]
    assert [outcome(item) for item in log] == [
        "429",
        "2xx",
        "2xx",
        "5xx",
        "2xx",
        "2xx",
        "no-answer",
        "409",
        "4xx",
        "4xx",
    ]
    counts = request_counts(log)
    assert (counts["requests"], counts["409"], counts["4xx"], counts["retry"], counts["no-answer"]) == (10, 1, 2, 2, 1)
    assert counts["rate_limited"] == counts["429"] == 1


def test_rate_series_is_per_second_with_idle_seconds_and_wider_bars_for_long_spans() -> None:
    log = [
        entry("2025-01-01T00:00:00.100Z", 200),
        entry("2025-01-01T00:00:00.900Z", 429),
        entry("2025-01-01T00:00:03.500Z", 200),  # the 429's request again: rate_limited, not a retry
    ]
    series = rate_series(log, rate_limit=10)
    assert series["bucketSeconds"] == 1 and series["rateLimit"] == 10
    assert series["start"] == "2025-01-01T00:00:00.000Z" and series["end"] == "2025-01-01T00:00:04.000Z"
    assert [(b["requests"], b["rateLimited"], b["retries"]) for b in series["buckets"]] == [
        (2, 1, 0),
        (0, 0, 0),
        (0, 0, 0),
        (1, 0, 0),
    ]
    assert series["totals"] == {"requests": 3, "rateLimited": 1, "retries": 0, "peakPerSecond": 2.0}
    long = rate_series([entry("2025-01-01T00:00:00Z", 200), entry("2025-01-02T00:00:00Z", 200)])
    assert long["bucketSeconds"] == -(-86_401 // MAX_CHART_BUCKETS) and len(long["buckets"]) <= MAX_CHART_BUCKETS
    assert long["buckets"][0]["perSecond"] == round(1 / long["bucketSeconds"], 3)
    assert rate_series([])["buckets"] == [] and rate_series([])["totals"]["requests"] == 0


# ----- target-loops-sandbox --help -----------------------------------------------------------------------


def test_help_gives_every_option_a_description_and_its_default() -> None:
    parser = build_parser()
    for action in parser._actions:
        if action.option_strings and action.dest != "help":
            assert action.help and "(default: " in action.help, action.option_strings
    text = parser.format_help()
    assert "``" not in text and ":class:" not in text and ":func:" not in text  # no reStructuredText markup
    assert "target-loops-sandbox --port 8787" in text and "/_sandbox/rate" in text
