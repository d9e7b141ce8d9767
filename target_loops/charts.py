"""The numbers behind the charts that the run report and the sandbox page share (templates/_chart.html draws them).

A chart is computed here, in plain Python, and drawn by one Jinja macro as inline SVG: bars of requests per second
with the 429 answers stacked in amber and a mark over a bucket that had retries, the rate limit as a dashed line,
and (run report only) answer-time lines for p50 and p95. The SVG stretches to its box (``preserveAspectRatio=none``),
so it never makes a phone scroll sideways; labels are HTML around it, so they stay legible at any width.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

#: A chart is at least this many bars wide, so two seconds of traffic do not make two huge bars.
MIN_CHART_WIDTH = 12


def nice_ceiling(value: float) -> float:
    """The smallest round number (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8 times 10**n) at or above ``value``: y axis top."""
    if value <= 1:
        return 1.0
    magnitude = 10 ** math.floor(math.log10(value))
    for step in (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10):
        if step * magnitude >= value - 1e-9:
            return step * magnitude
    return 10.0 * magnitude


def fmt_rate(value: float) -> str:
    return f"{value:g}"


def rate_chart(
    buckets: Sequence[Mapping[str, Any]],
    *,
    bucket_seconds: int,
    rate_limit: float,
    label: Callable[[str], str],
    start: str,
    end: str,
) -> dict[str, Any]:
    """The requests-per-second chart. Each bucket: ``at`` (its start, as text), ``requests``, ``rate_limited``,
    ``retries``; ``label`` turns an ``at`` into axis text (local time on the sandbox, UTC in a run report)."""
    width_s = max(int(bucket_seconds), 1)
    peak = max((b["requests"] / width_s for b in buckets), default=0.0)
    top = nice_ceiling(max(peak, float(rate_limit), 1.0) * 1.15)
    view_w = max(len(buckets), MIN_CHART_WIDTH)

    def y(rate: float) -> float:
        return round(100 - rate / top * 100, 3)

    bars = []
    for index, bucket in enumerate(buckets):
        rate = round(bucket["requests"] / width_s, 3)
        # A 429 is counted when its answer comes back, its request when it starts: a second can hold a 429 whose
        # request started the second before, so the amber part is at most the whole bar.
        limited = min(bucket["rate_limited"], bucket["requests"]) / width_s
        tip = f"{label(bucket['at'])}: {bucket['requests']} request{'s' if bucket['requests'] != 1 else ''}"
        if width_s > 1:
            tip += f" in {width_s} s ({fmt_rate(rate)}/s)"
        if bucket["rate_limited"]:
            tip += f", {bucket['rate_limited']} answered 429"
        if bucket["retries"]:
            tip += f", {bucket['retries']} retried"
        bars.append(
            {
                "index": index,
                "x": index + 0.1,
                "at": bucket["at"],
                "requests": bucket["requests"],
                "per_second": fmt_rate(rate),
                "rate_limited": bucket["rate_limited"],
                "retries": bucket["retries"],
                "y": y(rate),
                "height": round(rate / top * 100, 3),
                "height_429": round(limited / top * 100, 3),
                "mark": f"M{index + 0.25} {round(max(0.0, y(rate) - 2) - 7, 3)}h0.5l-0.25 7z",
                "tip": tip,
            }
        )
    ticks = [(0, "start", start)]
    if len(buckets) >= view_w / 2:  # a short run's bars fill the left of the chart: its end label would collide
        ticks.append((len(buckets), "end", end))
    if len(buckets) >= 4:
        ticks.insert(1, (len(buckets) // 2, "mid", buckets[len(buckets) // 2]["at"]))
    return {
        "bars": bars,
        "view_w": view_w,
        "top": fmt_rate(top),
        "half": fmt_rate(top / 2),
        "half_y": y(top / 2),
        "bucket_seconds": width_s,
        "rate_limit": fmt_rate(rate_limit) if rate_limit else "",
        "limit_y": y(rate_limit) if rate_limit else None,
        "start": start,
        "ticks": [{"css": css, "left": round(i / view_w * 100, 2), "text": label(at)} for i, css, at in ticks],
        "peak": fmt_rate(round(peak, 3)),
        "requests": sum(b["requests"] for b in buckets),
        "rate_limited": sum(b["rate_limited"] for b in buckets),
        "retries": sum(b["retries"] for b in buckets),
    }


def answer_chart(buckets: Sequence[Mapping[str, Any]], view_w: int) -> dict[str, Any] | None:
    """Answer times over the run: p50 and p95 per bucket as two lines (milliseconds; None when nothing came back)."""
    p95s = [b.get("answer_ms_p95") for b in buckets]
    known = [v for v in p95s if v is not None]
    if not known:
        return None
    top = nice_ceiling(max(known) * 1.15)

    def points(key: str) -> str:
        return " ".join(
            f"{i + 0.5},{round(100 - b[key] / top * 100, 3)}" for i, b in enumerate(buckets) if b.get(key) is not None
        )

    p50s = [b["answer_ms_p50"] for b in buckets if b.get("answer_ms_p50") is not None]
    return {
        "view_w": view_w,
        "top": fmt_rate(top),
        "half": fmt_rate(top / 2),
        "p50": points("answer_ms_p50"),
        "p95": points("answer_ms_p95"),
        "p50_max": fmt_rate(max(p50s)) if p50s else "",
        "p95_max": fmt_rate(max(known)),
    }
