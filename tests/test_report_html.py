"""The HTML run report (``report_html_path``): one self-contained page per run, dry or real, completed or stopped.

Its figures are the JSON report's (``report_path``), checked cell by cell; its chart is the client's own timeline,
checked against the sandbox's log (requests, 429s); it names every stream and rejection reason, holds no script and
fetches nothing, and never shows the API key, even when a rejected record holds it.
"""

from __future__ import annotations

import html
import json
import re
import signal
import time
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from browser import dump_dom, lay_out, require_chromium
from runner import SANDBOX_KEY, Run, record, run_target, schema, singer, start_target, state

from target_loops.html_report import render_report, write_report
from target_loops.rejects import SAMPLE_TEXT
from target_loops.report import TABLE_COLUMNS
from target_loops.sandbox import Sandbox
from target_loops.timeline import MAX_BUCKETS, Timeline

COLUMNS = {"id": "string", "user_id": "string", "email": "string", "plan": "string", "note": "string"}


class Cells(HTMLParser):
    """Reads the stream table's cells (``data-row`` / ``data-column``), tags seen, and the chart's bar groups."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.cells: dict[tuple[str, str], str] = {}
        self.tags: set[str] = set()
        self.attrs: list[tuple[str, dict[str, str]]] = []
        self._row: str | None = None
        self._cell: str | None = None
        self._text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        self.tags.add(tag)
        self.attrs.append((tag, values))
        if tag == "tr" and "data-row" in values:
            self._row = values["data-row"]
        if tag == "td" and self._row is not None and "data-column" in values:
            self._cell, self._text = values["data-column"], []

    def handle_endtag(self, tag: str) -> None:
        if tag == "tr":
            self._row = None
        if tag == "td" and self._row is not None and self._cell is not None:
            self.cells[(self._row, self._cell)] = "".join(self._text).strip()
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._text.append(data)

    def all(self, tag: str, **wanted: str) -> list[dict[str, str]]:
        """Elements by tag and attributes (``class_``: one of its classes; ``data_x``: ``data-x``)."""

        def has(a: dict[str, str], name: str, value: str) -> bool:
            if name == "class_":
                return value in a.get("class", "").split()
            return a.get(name.replace("_", "-")) == value

        return [a for t, a in self.attrs if t == tag and all(has(a, k, v) for k, v in wanted.items())]


def people(rows: list[dict[str, Any]], stream: str = "identifies") -> str:
    return singer(schema(stream, COLUMNS, ["id"]), *(record(stream, r) for r in rows), state({"at": 1}))


def assert_self_contained(text: str) -> None:
    """No script of any kind, nothing fetched from elsewhere (links to docs are fine: they load nothing)."""
    assert not re.search(r"<script|javascript:|\son\w+=", text, re.IGNORECASE)
    assert not re.search(r"<(link|img|iframe|object|embed)\b", text, re.IGNORECASE)
    assert not re.search(r"(src|srcset)=|url\(|@import", text, re.IGNORECASE)


@pytest.fixture
def finished(make_sandbox: Any, tmp_path: Path) -> tuple[Sandbox, Run, Path]:
    """A real run against the sandbox with 429s, a retried 500 and three kinds of rejection (one record holding the
    API key in a value); its HTML report."""
    loops = make_sandbox(properties=[{"key": "plan", "type": "string"}, {"key": "note", "type": "string"}])
    loops.inject("429", count=3, path="/v1/contacts/update")
    loops.inject("500", count=1, path="/v1/events/send")
    rows = [{"id": f"i{i}", "user_id": f"u{i}", "email": f"u{i}@example.com", "plan": "pro"} for i in range(12)]
    rows.append({"id": "bad1", "email": None, "user_id": None})  # no identity: rejected locally
    # The key in a rejected record's value, where cutting the value short would cut the key in two.
    note = "k" * (SAMPLE_TEXT - len(SANDBOX_KEY)) + SANDBOX_KEY + " " + "x" * 500  # the cut leaves all but its end
    rows.append({"id": "bad2", "email": "not an email", "user_id": None, "note": note})
    events = singer(
        schema("order_completed", {"id": "string", "event": "string", "email": "string", "revenue": "number"}),
        record("order_completed", {"id": "o1", "event": "Order Completed", "email": "u1@example.com", "revenue": 9.5}),
        record("order_completed", {"id": "o2", "event": "Order Completed", "email": "u2@example.com", "revenue": 12}),
        record("order_completed", {"id": "o3", "email": "u3@example.com", "revenue": 1}),  # no event name
    )
    html_path = tmp_path / "out" / "run.html"
    run = run_target(
        {
            "api_key": SANDBOX_KEY,
            "base_url": loops.url,
            "ledger_url": f"sqlite:///{tmp_path / 'l.sqlite'}",
            "report_html_path": str(html_path),
            "mappings": [{"stream": "order_completed", "action": "send_event"}],
        },
        people(rows) + events,
        tmp_path=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    return loops, run, html_path


def test_a_run_with_rejections_and_429s_writes_the_page(finished: tuple[Sandbox, Run, Path]) -> None:
    loops, run, html_path = finished
    report = json.loads(run.report_path.read_text())
    text = html_path.read_text(encoding="utf-8")
    assert "HTML run report written to" in run.stderr
    assert_self_contained(text)
    assert SANDBOX_KEY[:-1] not in text and "***" in text  # not even what a cut would leave of it
    assert len(text) < 200_000

    page = Cells(text)
    # Every stream and rejection reason is named; the table's cells are the JSON report's figures.
    streams = {s["stream"]: s for s in report["streams"]}
    assert set(streams) == {"identifies", "order_completed"}
    for name, stream in streams.items():
        for column in TABLE_COLUMNS:
            assert page.cells[(name, column)] == f"{stream[column]:,}", (name, column)
        assert page.cells[(name, "action")] == stream["action"]
    for column in TABLE_COLUMNS:
        assert page.cells[("total", column)] == f"{report['totals'][column]:,}", column
    reasons = {r for s in report["streams"] for r in s["rejected_by_reason"]}
    assert len(reasons) >= 2
    shown = {a["data-reason"]: int(a["data-count"]) for a in page.all("details", class_="reason")}
    assert shown == {r: sum(s["rejected_by_reason"].get(r, 0) for s in report["streams"]) for r in reasons}
    assert "x" * 100 not in text and "…" in text  # sample values are cut short

    # The chart: an inline SVG whose totals are what the sandbox logged (429s and the retried 500 included).
    assert "svg" in page.tags
    log = loops.store.requests()
    bars = page.all("g", class_="bucket")
    assert sum(int(b["data-requests"]) for b in bars) == len(log) == report["http"]["requests"]
    assert sum(int(b["data-rate-limited"]) for b in bars) == 3 == report["totals"]["rate_limited"]
    assert sum(int(b["data-retries"]) for b in bars) == report["http"]["retries"] >= 1
    assert page.all("line", class_="limit") and page.all("polyline", class_="p95")
    # The outcome in one sentence, and what to add in Loops.
    assert re.search(r"Run completed in [^:]+: Loops accepted [\d,]+ requests, 3 records rejected", text)
    assert "Order Completed" in text and "revenue" in text and "Settings → Events" in text


def fate_lines(text: str) -> dict[str, str]:
    """The page's "what became of each record" lines, by ``data-stream``, as text."""
    block = re.search(r'<ul class="kv" id="record-fates">(.*?)</ul>', text, re.DOTALL)
    assert block, "the page has no record-fates list"
    found = re.findall(r'<li data-stream="([^"]*)">(.*?)</li>', block.group(1), re.DOTALL)
    return {html.unescape(stream): html.unescape(line) for stream, line in found}


def fate_counts(line: str) -> dict[str, int]:
    """``s: 14 read = 12 sent on their own + 2 rejected`` → ``{"sent on their own": 12, "rejected": 2}``."""
    rest = line.partition(" read = ")[2]
    return {words: int(n.replace(",", "")) for n, words in re.findall(r"([\d,]+) ([a-z ]+?)(?: \+ |$)", rest)}


def test_the_page_says_what_became_of_each_record_as_the_printed_table_does(
    finished: tuple[Sandbox, Run, Path],
) -> None:
    """Per stream, the page shows the printed table's line of what became of the records (sent on their own, folded
    into an event, rejected...): the same words and numbers, adding up to what was read, and what the sandbox holds."""
    loops, run, html_path = finished
    report = json.loads(run.report_path.read_text())
    shown = fate_lines(html_path.read_text(encoding="utf-8"))
    printed = dict(re.findall(r"^(?:.*\s)?(\w+): ([\d,]+ read = .*)$", run.stderr, re.MULTILINE))
    assert set(shown) == {"identifies", "order_completed"} == set(printed), (shown, run.stderr)
    for stream in report["streams"]:
        name = stream["stream"]
        assert shown[name] == f"{name}: {printed[name]}"
        assert shown[name].startswith(f"{name}: {stream['read']:,} read = ")
        assert sum(fate_counts(shown[name]).values()) == stream["read"], shown[name]
    identifies, events = fate_counts(shown["identifies"]), fate_counts(shown["order_completed"])
    # Counted from the sandbox: every person with an email is a contact (on their own or folded into an event),
    # every event with a name was sent; the two people without one, and the nameless event, were rejected.
    people_sent = identifies.get("sent on their own", 0) + identifies.get("folded into an event", 0)
    assert people_sent == len(loops.store.contacts()) == 12
    assert identifies["rejected"] == 2 and events == {"sent": len(loops.store.events()), "rejected": 1}


def test_a_dry_run_writes_the_page_too(make_sandbox: Any, tmp_path: Path) -> None:
    loops = make_sandbox()
    html_path = tmp_path / "dry.html"
    rows = [{"id": "i1", "user_id": "u1", "email": "a@example.com", "plan": "pro"}]
    run = run_target(
        {"base_url": loops.url, "dry_run": True, "report_html_path": str(html_path)},
        people(rows),
        tmp_path=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    text = html_path.read_text()
    assert "Dry run finished in" in text and "1 request would be sent" in text
    assert Cells(text).cells[("identifies", "planned")] == "1"
    assert "No request was sent (a dry run sends nothing)." in text
    assert_self_contained(text)


def test_a_run_stopped_by_sigterm_writes_the_page(make_sandbox: Any, tmp_path: Path) -> None:
    loops = make_sandbox()
    html_path = tmp_path / "stopped.html"
    html_path.write_text("an earlier run's page")
    proc = start_target(
        {
            "api_key": SANDBOX_KEY,
            "base_url": loops.url,
            "ledger_url": f"sqlite:///{tmp_path / 'l.sqlite'}",
            "report_html_path": str(html_path),
        },
        tmp_path=tmp_path,
        stdin=True,
    )
    assert proc.stdin is not None
    proc.stdin.write(people([{"id": "i1", "user_id": "u1", "email": "a@example.com"}]))
    proc.stdin.flush()
    deadline = time.monotonic() + 30
    while not any(r["path"] == "/api/v1/lists" for r in loops.store.requests()):
        assert time.monotonic() < deadline, "the run never started"
        time.sleep(0.02)
    time.sleep(0.3)  # the record is read and held; the input stays open
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    text = html_path.read_text()
    assert "Run did NOT complete" in text and 'data-completed="false"' in text
    assert Cells(text).cells[("identifies", "read")] == "1"


def test_the_page_stays_small_for_a_long_big_run() -> None:
    """A million rows at 10 requests/s is a day of sending: the timeline folds into a few hundred buckets, the
    samples are a few per reason, so the page stays far under 2 MB."""
    now = [0.0]
    timeline = Timeline(clock=lambda: now[0])
    for second in range(100_000):
        now[0] = float(second)
        for _ in range(10):
            timeline.count("requests")
            timeline.answer(0.05 + (second % 7) / 100)
        if second % 97 == 0:
            timeline.count("rate_limited")
    snapshot = timeline.snapshot()
    assert len(snapshot["buckets"]) <= MAX_BUCKETS and snapshot["bucket_seconds"] == 512
    assert sum(b["requests"] for b in snapshot["buckets"]) == 1_000_000
    streams = [
        {
            "stream": f"stream_{i}",
            "action": "upsert_contact",
            **{c: 1_000_000 // 20 for c in TABLE_COLUMNS},
            "planned": 0,
            "requests": 50_000,
            "rejected_by_reason": {f"reason_{j}": 100 for j in range(20)},
            "left_out": {},
        }
        for i in range(20)
    ]
    report = {
        "run_id": "abc",
        "started_at": "2026-01-01T00:00:00+00:00",
        "finished_at": "2026-01-02T04:00:00+00:00",
        "elapsed_seconds": 100_000.0,
        "completed": True,
        "dry_run": False,
        "streams": streams,
        "totals": {
            **{c: 1_000_000 for c in TABLE_COLUMNS},
            "requests": 1_000_000,
            "planned": 0,
            "sending_seconds": 100_000.0,
            "requests_per_second": 10.0,
        },
        "http": {"answer_ms_p50": 60, "answer_ms_p95": 110},
        "event_properties": {f"Event {i}": {f"p{j}": "string" for j in range(30)} for i in range(50)},
        "properties": {"created": {f"prop{i}": "string" for i in range(25)}, "dropped": {}},
        "rejects": {"path": "rejects.jsonl", "this_run": 40_000, "lines": 40_000, "would_reject": False},
        "max_rejects": None,
    }
    samples = {
        f"reason_{j}": [{"stream": "s", "message": "m" * 60, "record": {f"k{k}": "v" * 60 for k in range(8)}}] * 3
        for j in range(20)
    }
    text = render_report(report, timeline=snapshot, samples=samples, rate_limit=10)
    assert len(text.encode()) < 2_000_000
    assert_self_contained(text)


def test_counters_a_later_change_adds_show_up_without_a_template_change() -> None:
    """Issues 19/20 add counters (new contacts, audience joins/leaves) to the report: per stream and per run, any
    figure the page has no section for is listed by its key."""
    report = tiny_report()
    report["streams"][0]["new_contacts"] = 7
    report["streams"][0]["audience"] = {"joined": 3, "left": 1}
    report["audience_changes"] = {"joined": 3, "left": 1}
    text = render_report(report)
    assert '<span class="k">new_contacts</span> 7' in text
    assert '<span class="k">audience</span> joined 3, left 1' in text
    assert '<li data-key="audience_changes"><span class="k">audience_changes</span> joined 3, left 1</li>' in text


def tiny_report(stream: str = "users") -> dict[str, Any]:
    return {
        "run_id": "r1",
        "started_at": "s",
        "finished_at": "f",
        "elapsed_seconds": 1.0,
        "completed": True,
        "dry_run": False,
        "streams": [{"stream": stream, "action": "send_event", **{c: 0 for c in TABLE_COLUMNS}, "planned": 0,
                     "requests": 0, "rejected_by_reason": {}}],
        "totals": {**{c: 0 for c in TABLE_COLUMNS}, "requests": 0, "planned": 0, "sending_seconds": 0,
                   "requests_per_second": 0},
        "http": {},
        "event_properties": {},
        "properties": {"created": {}},
        "rejects": {"path": None, "this_run": 0, "lines": 0, "would_reject": False},
        "max_rejects": None,
    }  # fmt: skip


def test_the_page_is_written_whole_or_not_at_all(tmp_path: Path) -> None:
    """A temporary file beside the page, then a rename: a reader never sees half a page, and nothing is left over."""
    page = tmp_path / "reports" / "run.html"
    write_report(page, "first")
    write_report(page, "<!doctype html>second")
    assert page.read_text() == "<!doctype html>second"
    assert [p.name for p in page.parent.iterdir()] == ["run.html"]


def test_templates_escape_what_a_sync_sent() -> None:
    hostile = '<script>alert(1)</script>"><img src=x>'
    report = {
        "run_id": "r1",
        "started_at": "s",
        "finished_at": "f",
        "elapsed_seconds": 1.0,
        "completed": True,
        "dry_run": False,
        "streams": [
            {
                "stream": hostile,
                "action": "send_event",
                **{c: 0 for c in TABLE_COLUMNS},
                "planned": 0,
                "requests": 0,
                "rejected_by_reason": {hostile: 1},
            }
        ],
        "totals": {
            **{c: 0 for c in TABLE_COLUMNS},
            "requests": 0,
            "planned": 0,
            "sending_seconds": 0,
            "requests_per_second": 0,
        },
        "http": {},
        "event_properties": {hostile: {hostile: "string"}},
        "properties": {"created": {}},
        "rejects": {"path": None, "this_run": 1, "lines": 0, "would_reject": False},
        "max_rejects": None,
    }
    samples = {hostile: [{"stream": hostile, "message": hostile, "record": {"a": hostile}}]}
    text = render_report(report, samples=samples)
    assert "<script" not in text and "<img" not in text and "&lt;script&gt;" in text


def test_the_page_in_chromium_at_desktop_and_phone_width(finished: tuple[Sandbox, Run, Path], tmp_path: Path) -> None:
    """What a person sees: screenshots at 1280 and 390 px (tests/artifacts/run-report-*.png), nothing wider than
    the window, and the rendered numbers equal to the JSON report's."""
    chromium = require_chromium()
    _, run, html_path = finished
    report = json.loads(run.report_path.read_text())
    text = html_path.read_text(encoding="utf-8")
    for width in (1280, 390):
        laid_out = lay_out(chromium, text, tmp_path / "browser", width, "run-report")
        assert laid_out["inner_width"] == width
        assert laid_out["scroll_width"] <= laid_out["inner_width"], laid_out
        assert laid_out["wide"] == [], laid_out
    dom = dump_dom(chromium, html_path.as_uri(), tmp_path / "profile")
    rendered = Cells(dom)
    for stream in report["streams"]:
        for column in TABLE_COLUMNS:
            assert rendered.cells[(stream["stream"], column)] == f"{stream[column]:,}"
    cards = dict(re.findall(r'<dd id="total-([a-z_]+)">([\d,]+)</dd>', dom))
    assert cards == {
        key: f"{report['totals'][key]:,}" for key in ("read", "sent", "rejected", "requests", "rate_limited", "retries")
    }
