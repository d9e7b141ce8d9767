"""Headless Chromium for the page tests: the DOM after rendering, screenshots, and a sideways-overflow probe.

Debian's ``chromium`` is driven from the command line only (``--dump-dom``, ``--screenshot``): no driver, no
websocket client. The pages themselves hold no script (their Content-Security-Policy forbids one), so the overflow
probe runs on a copy of a page with one measuring script appended, framed at the width under test: it writes the
document's scroll width, the frame's inner width and any element that sticks out to the right onto the framing
page's ``<body>`` as attributes, and ``--dump-dom`` returns them. Screenshots go to ``tests/artifacts/``
(git-ignored) for a person to look at.
"""

from __future__ import annotations

import html
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

ARTIFACTS = Path(__file__).parent / "artifacts"

#: Appended to a copy of a page: measures once the page is laid out (reading scrollWidth forces the layout) and
#: writes what it found onto the framing page's <body> (file:// pages in one folder may, with
#: --allow-file-access-from-files).
PROBE = """<script>
(function () {
  var width = window.innerWidth, wide = [];
  document.querySelectorAll("body *").forEach(function (e) {
    var box = e.getBoundingClientRect();
    if (box.width && box.right > width + 0.5 && wide.length < 10) {
      var css = e.className && e.className.baseVal !== undefined ? e.className.baseVal : e.className;
      wide.push(e.tagName.toLowerCase() + "." + String(css).split(" ").join(".") + " right=" + Math.round(box.right));
    }
  });
  var report = parent.document.body;
  report.setAttribute("data-probe-scroll-width", document.scrollingElement.scrollWidth);
  report.setAttribute("data-probe-inner-width", width);
  report.setAttribute("data-probe-wide", JSON.stringify(wide));
})();
</script>"""

#: Headless Chromium will not make a window narrower than 500 px, so a page is laid out in a frame of the width
#: asked for, at the top left of the window (a screenshot of a narrower window is cropped to it).
FRAME = (
    '<!doctype html><html><body style="margin:0"><iframe src="{page}" width="{width}" height="{height}" '
    'style="border:0;display:block"></iframe></body></html>'
)


def chromium_binary() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def require_chromium() -> str:
    """Debian's chromium; a skip with the reason outside CI, a failure under CI (where .ci/run installs it)."""
    binary = chromium_binary()
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed, and CI is set: .ci/run installs Debian's chromium package")
        pytest.skip("chromium is not installed (apt-get install chromium); under CI this test fails instead")
    return binary


def _run(binary: str, profile: Path, width: int, height: int, *args: str) -> subprocess.CompletedProcess[str]:
    command = [
        binary,
        "--headless",
        "--no-sandbox",  # needed as root (CI containers); the pages are ours and have no script anyway
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        f"--window-size={width},{height}",
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=90, check=False)


def dump_dom(binary: str, url: str, profile: Path, width: int = 1280, *args: str) -> str:
    """The page's DOM after Chromium loaded and rendered it (``--dump-dom``), as HTML text."""
    done = _run(binary, profile, width, 844, "--virtual-time-budget=5000", *args, "--dump-dom", url)
    assert done.returncode == 0 and "</html>" in done.stdout, done.stderr[-2000:]
    return done.stdout


def lay_out(binary: str, html_text: str, folder: Path, width: int, name: str, height: int = 1800) -> dict[str, Any]:
    """Lay ``html_text`` out ``width`` px wide: a screenshot (``tests/artifacts/<name>-<width>.png``, the top
    ``height`` px) and what the probe measured: the document's scroll width, the frame's inner width and the
    elements that stick out to the right."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}-{width}.html").write_text(html_text, encoding="utf-8")
    (folder / f"{name}-{width}-probe.html").write_text(html_text.replace("</body>", PROBE + "</body>"), "utf-8")
    frames = {}
    for kind, page in (("shot", f"{name}-{width}.html"), ("probe", f"{name}-{width}-probe.html")):
        frames[kind] = folder / f"frame-{kind}-{name}-{width}.html"
        frames[kind].write_text(FRAME.format(page=page, width=width, height=height), encoding="utf-8")
    ARTIFACTS.mkdir(exist_ok=True)
    png = ARTIFACTS / f"{name}-{width}.png"
    png.unlink(missing_ok=True)
    profile = folder / "chromium-profile"
    done = _run(binary, profile, width, height, f"--screenshot={png}", frames["shot"].as_uri())
    assert done.returncode == 0 and png.is_file() and png.stat().st_size > 1000, done.stderr[-2000:]
    dom = dump_dom(binary, frames["probe"].as_uri(), profile, max(width, 500), "--allow-file-access-from-files")
    found = {}
    for key in ("scroll-width", "inner-width", "wide"):
        marker = f'data-probe-{key}="'
        assert marker in dom, f"the probe did not run: {dom[:500]}"
        begin = dom.index(marker) + len(marker)
        found[key] = html.unescape(dom[begin : dom.index('"', begin)])
    return {
        "scroll_width": int(found["scroll-width"]),
        "inner_width": int(found["inner-width"]),
        "wide": json.loads(found["wide"]),
        "screenshot": png,
    }
