"""The run report as one self-contained HTML page (``report_html_path``): what a person opens after a run.

It shows the run's JSON report (``report_path``; the same dict, not a recount): the outcome in one sentence, the
end-of-run table's cells (:func:`target_loops.report.table_rows`) and its lines of what became of each stream's
records (:func:`target_loops.report.fates_line`), every other counter a stream has, the
requests-per-second chart with the 429s, retries and the rate limit, answer times over the run, rejections by reason
with a few samples (values cut short by :func:`target_loops.rejects.sample_value`), the event properties to add in
Loops and the properties created. Inline CSS and SVG only: no script, nothing fetched, so the file can be mailed,
attached to a CI run or opened offline. Its size is bounded whatever the run's size: the timeline has at most
``timeline.MAX_BUCKETS`` buckets and the samples a few per reason.

The API key never appears: no part of the page is built from the config, and the rendered text is checked for it
anyway (a record could hold it as a value).
"""

from __future__ import annotations

import datetime as dt
import html
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from target_loops import __version__
from target_loops.charts import answer_chart, rate_chart
from target_loops.report import TABLE_COLUMNS, fates_line, human_duration, plural, table_rows
from target_loops.templating import render

#: Per-stream keys that are not counters, or are shown elsewhere on the page.
NOT_COUNTERS = frozenset({"stream", "action", *TABLE_COLUMNS, "planned", "rejected_by_reason"})


def outcome_sentence(report: Mapping[str, Any]) -> str:
    """The run in one sentence: finished or not, what Loops accepted (or would be sent), what was refused."""
    totals = report["totals"]
    took = human_duration(float(report["elapsed_seconds"]))
    rejected = int(report["rejects"]["this_run"])
    if report["dry_run"]:
        head = f"Dry run {'finished' if report['completed'] else 'did NOT finish'} in {took}"
        did = f"{plural(int(totals['planned']), 'request')} would be sent"
        refused = f"{plural(rejected, 'record')} would be rejected" if rejected else "nothing would be rejected"
    else:
        head = f"Run {'completed' if report['completed'] else 'did NOT complete'} in {took}"
        did = f"Loops accepted {plural(int(totals['sent']), 'request')}"
        refused = f"{plural(rejected, 'record')} rejected" if rejected else "nothing rejected"
    extra = []
    if totals.get("rate_limited"):
        extra.append(f"{totals['rate_limited']:,} answered 429")
    if totals.get("retries"):
        extra.append(f"{plural(int(totals['retries']), 'retry', 'retries')}")
    tail = f" ({', '.join(extra)})" if extra else ""
    ending = "" if report["completed"] else "; the next run replays from the last STATE"
    return f"{head}: {did}, {refused}{tail}{ending}."


def other_counters(stream: Mapping[str, Any]) -> list[tuple[str, str]]:
    """A stream's counters beyond the table's columns, whatever they are (new ones show up without a change
    here): non-zero numbers, and non-empty counts by kind (``left_out``, ``skipped_calls``, ...)."""
    found = []
    for key, value in stream.items():
        if key in NOT_COUNTERS or isinstance(value, bool):
            continue
        if isinstance(value, (int, float)) and value:
            found.append((key, f"{value:,}"))
        elif isinstance(value, Mapping) and value:
            found.append((key, ", ".join(f"{k} {v:,}" if isinstance(v, int) else f"{k} {v}" for k, v in value.items())))
    return found


def record_fate_lines(report: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(stream, the printed table's line of what became of its records): the very lines of :func:`fates_line`, so
    that a reader of the page sees why ``sent 2`` of 200 identifies is no failure, in the table's words."""
    lines = ((s["stream"], fates_line(s, dry=report["dry_run"])) for s in report["streams"])
    return [(stream, line) for stream, line in lines if line is not None]


#: The report's own top-level keys, shown in their sections; any other (a counter a later change adds) is listed
#: under "More about the run".
SHOWN_KEYS = frozenset(
    {"run_id", "started_at", "finished_at", "elapsed_seconds", "completed", "dry_run", "streams", "totals", "http",
     "event_properties", "properties", "rejects", "max_rejects"}
)  # fmt: skip


def run_extras(report: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The report's top-level figures no section shows, as text (numbers, and counts by kind, one level deep)."""
    found = []
    for key, value in report.items():
        if key in SHOWN_KEYS or value in (None, {}, [], 0):
            continue
        if isinstance(value, Mapping):
            text = ", ".join(f"{k} {v:,}" if isinstance(v, int) else f"{k} {v}" for k, v in value.items())
        else:
            text = f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)
        found.append((key, text))
    return found


def _utc_label(at: str) -> str:
    return at[11:19] if len(at) >= 19 else at


def chart_context(timeline: Mapping[str, Any] | None, rate_limit: float) -> tuple[Any, Any]:
    """The two charts' numbers from the client's timeline (None, None for a run that sent nothing)."""
    if not timeline or not timeline.get("buckets"):
        return None, None
    start = dt.datetime.fromisoformat(timeline["start"])
    width = int(timeline["bucket_seconds"])
    buckets: Sequence[Mapping[str, Any]] = timeline["buckets"]

    def at(offset: float) -> str:
        return (start + dt.timedelta(seconds=offset)).strftime("%Y-%m-%dT%H:%M:%SZ")

    rows = [{**b, "at": at(b["offset_seconds"])} for b in buckets]
    end = at(buckets[-1]["offset_seconds"] + width)
    chart = rate_chart(
        rows, bucket_seconds=width, rate_limit=rate_limit, label=_utc_label, start=rows[0]["at"], end=end
    )
    chart["span_text"] = f"{rows[0]['at'][:10]} {_utc_label(rows[0]['at'])} to {_utc_label(end)} UTC"
    chart["limit_text"] = "the rate limit the run paced to"
    return chart, answer_chart(rows, chart["view_w"])


def rejections(report: Mapping[str, Any], samples: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """Rejections by reason, most first: the count, the streams they came from, a few samples."""
    by_reason: dict[str, dict[str, int]] = {}
    for stream in report["streams"]:
        for reason, count in stream["rejected_by_reason"].items():
            by_reason.setdefault(reason, {})[stream["stream"]] = count
    result = []
    for reason, streams in sorted(by_reason.items(), key=lambda item: (-sum(item[1].values()), item[0])):
        shown = [
            {
                "stream": s["stream"],
                "message": s.get("message") or "",
                "record": json.dumps(s.get("record"), ensure_ascii=False, default=str),
            }
            for s in samples.get(reason, ())
        ]
        result.append({"reason": reason, "count": sum(streams.values()), "streams": streams, "samples": shown})
    return result


def render_report(
    report: Mapping[str, Any],
    *,
    timeline: Mapping[str, Any] | None = None,
    samples: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
    rate_limit: float = 0.0,
    secrets: Sequence[str] = (),
) -> str:
    """The page for ``report`` (the JSON report's dict), with the client's timeline and the rejects' samples."""
    header, rows = table_rows(report)
    chart, answers = chart_context(timeline, rate_limit)
    properties = report["properties"]
    created_key = "would_create" if report["dry_run"] else "created"
    text = render(
        "run_report.html",
        report=report,
        outcome=outcome_sentence(report),
        header=header,
        rows=rows,
        others=[(s["stream"], other_counters(s)) for s in report["streams"] if other_counters(s)],
        fates=record_fate_lines(report),
        extras=run_extras(report),
        chart=chart,
        answers=answers,
        rejections=rejections(report, samples or {}),
        event_properties=sorted(report["event_properties"].items()),
        created=properties.get(created_key) or {},
        created_label="would be created" if report["dry_run"] else "created",
        dropped=properties.get("dropped") or {},
        unknown_lists=properties.get("unknown_mailing_lists") or {},
        http=report.get("http") or {},
        version=__version__,
        human_duration=human_duration,
    )
    for secret in secrets:
        if secret:
            for form in {secret, html.escape(secret, quote=True)}:
                text = text.replace(form, "***")
    return text


def write_report(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically: a temporary file beside it, then a rename, so that a reader (or a
    run killed while writing) never sees half a page."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return target
