#!/usr/bin/env python
"""Serve the dashboard on a real run, open every page in headless Chromium, run a search, and
save a PNG of each page (the README's and the docs' figures; tests/test_dashboard_browser.py
runs it too).

    .venv/bin/python scripts/dashboard_screenshots.py                  # a fresh tiny run (~1 min)
    .venv/bin/python scripts/dashboard_screenshots.py --project DIR    # an existing run
    .venv/bin/python scripts/dashboard_screenshots.py --out /tmp/shots --caption "a red star"

The app is started exactly as a user starts it (``streamlit run dashboards/app.py`` on
127.0.0.1, a free port, headless, ``CMROPS_PROJECT_DIR`` set) and stopped when done. The browser
is Debian's ``chromium`` driven by Playwright (no browser download). Each page is captured once
its script has finished (Streamlit's ``data-test-script-state``), its title is shown and its
charts are drawn; a page showing a Python exception is an error. On the Search page a caption
is typed and Enter pressed; the capture waits for the k result cards and checks their Hamming
distances never decrease. PNGs are written to ``--out`` (default ``docs/screenshots``),
re-encoded with a 256-colour palette when larger than :data:`MAX_PNG_BYTES`.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "dashboards" / "app.py"
CHROMIUM = "/usr/bin/chromium"
MAX_PNG_BYTES = 280_000
VIEWPORT = {"width": 1400, "height": 1000}
MAX_HEIGHT = 4000  # pixels; a longer page is cut (the README shows the top of it)
STARTUP_TIMEOUT_S = 60.0
PAGE_TIMEOUT_MS = 90_000  # a cold page may load torch and a text encoder on 2 busy cores
_SCRIPT_DONE = (
    "() => document.querySelector('[data-testid=\"stApp\"]')"
    "?.getAttribute('data-test-script-state') === 'notRunning'"
)
_CHARTS_DRAWN = """() => [...document.querySelectorAll('.vega-embed')]
    .every(e => e.querySelector('canvas, svg'))
    && [...document.querySelectorAll('.js-plotly-plot')].every(e => e.querySelector('.main-svg'))"""
_CONTENT_HEIGHT = "() => document.querySelector('[data-testid=\"stMain\"]')?.scrollHeight ?? 0"
_DISTANCE = re.compile(r"distance\s+(\d+)")


class DashboardError(RuntimeError):
    """The app did not start, a page failed, or the search showed wrong results."""


@dataclass
class PageShot:
    title: str
    slug: str  # file name stem: the title lower-cased, spaces as underscores
    url: str
    png: str  # path of the saved screenshot
    png_bytes: int
    heading: str  # the page's first h1


@dataclass
class SearchShot:
    caption: str
    k: int  # the k slider's value
    cards: int  # result cards shown
    distances: list[int]  # as displayed, in order
    summary: str  # the line above the results (names the model)


@dataclass
class Capture:
    project: str
    pages: list[PageShot] = field(default_factory=list)
    search: SearchShot | None = None


# --------------------------------------------------------------------------- the server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serve(
    project: Path, port: int | None = None, app: Path = APP, env: dict[str, str] | None = None
) -> Iterator[str]:
    """Run the dashboard (or another Streamlit ``app``) on 127.0.0.1 for ``project``; yields its
    base URL; always stops it."""
    port = port or free_port()
    env = {**os.environ, "CMROPS_PROJECT_DIR": str(project.resolve()), **(env or {})}
    cmd = [
        sys.executable, "-m", "streamlit", "run", str(app),
        "--server.address", "127.0.0.1", "--server.port", str(port),
        "--server.headless", "true", "--browser.gatherUsageStats", "false",
    ]  # fmt: skip
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}"
            _wait_healthy(url, proc, log)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], log: Any) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            tail = log.read().decode(errors="replace")[-3000:]
            raise DashboardError(f"streamlit exited with {proc.returncode}:\n{tail}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise DashboardError(f"{url}/_stcore/health did not answer within {STARTUP_TIMEOUT_S:.0f} s")


# --------------------------------------------------------------------------- the browser


def chromium_path(path: str = CHROMIUM) -> str:
    """The system Chromium, or an error saying how to install it (never a browser download)."""
    if not Path(path).is_file():
        raise DashboardError(
            f"{path} not found: install Debian's chromium with `scripts/system_packages.sh` "
            "(the test command runs it); Playwright's own browser download is not used"
        )
    return path


@contextlib.contextmanager
def browser() -> Iterator[Browser]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(
            executable_path=chromium_path(), headless=True, args=["--no-sandbox"]
        )
        try:
            yield b
        finally:
            b.close()


def capture(
    project: Path, out: Path, caption: str | None = None, port: int | None = None
) -> Capture:
    """Serve ``project``, save a PNG of every page under ``out``, run one caption search.
    Raises :class:`DashboardError` when a page fails or the search shows wrong results."""
    out.mkdir(parents=True, exist_ok=True)
    result = Capture(str(project))
    caption = caption or default_caption(project)
    with serve(project, port) as url, browser() as b:
        page = b.new_page(viewport=VIEWPORT)  # type: ignore[arg-type]
        page.set_default_timeout(PAGE_TIMEOUT_MS)
        page.goto(url)
        links = _nav_links(page)
        if not links:
            raise DashboardError(f"{url}: no page links in the navigation")
        for title, href in links:
            page.goto(href)
            heading = _settle(page, title)
            slug = re.sub(r"[^a-z0-9]+", "_", title.lower()).strip("_")
            if slug == "search":
                result.search = _search(page, caption)
            png = out / f"{slug}.png"
            size = _screenshot(page, png)
            result.pages.append(PageShot(title, slug, href, str(png), size, heading))
    return result


def _nav_links(page: Page) -> list[tuple[str, str]]:
    sel = '[data-testid="stSidebarNavLink"], [data-testid="stTopNavLink"]'
    # before the entry script has run, Streamlit lists pages/ itself (the legacy multipage
    # layout: file names, sorted); st.navigation's titles and order arrive with the script
    page.wait_for_function(_SCRIPT_DONE)
    page.locator(sel).first.wait_for()
    links = []
    for a in page.locator(sel).all():
        label = a.locator("span[label]").first.get_attribute("label") or a.inner_text()
        links.append((label.strip(), a.get_attribute("href") or ""))
    return links


def _settle(page: Page, title: str) -> str:
    """Wait until the page's script finished and its content is drawn; returns the h1 text."""
    page.wait_for_function(_SCRIPT_DONE)
    heading = page.locator('[data-testid="stMain"] h1').first
    heading.wait_for()
    _fail_on_exception(page, title)
    with contextlib.suppress(Exception):  # a chart that never draws still gets captured
        page.wait_for_function(_CHARTS_DRAWN, timeout=15_000)
    page.wait_for_timeout(300)  # let images and fonts paint
    return heading.inner_text().strip()


def _fail_on_exception(page: Page, title: str) -> None:
    errors = page.locator('[data-testid="stException"]')
    if errors.count():
        raise DashboardError(f"page {title!r} shows an exception:\n{errors.first.inner_text()}")


def _search(page: Page, caption: str) -> SearchShot:
    box = page.get_by_label("Caption", exact=True)
    box.fill(caption)
    box.press("Enter")
    k = int(page.locator('.st-key-search_k input[type="range"]').input_value())
    cards = page.locator('[class*="st-key-search_hit_"]')
    page.locator(f".st-key-search_hit_{k}").wait_for()
    page.wait_for_function(_SCRIPT_DONE)
    _fail_on_exception(page, "Search")
    alerts = page.locator('[data-testid="stAlert"]')
    texts = [c.inner_text() for c in cards.all()]
    distances = [int(m.group(1)) for t in texts if (m := _DISTANCE.search(t))]
    shot = SearchShot(
        caption=caption,
        k=k,
        cards=len(texts),
        distances=distances,
        summary=page.get_by_text("nearest database").first.inner_text(),
    )
    if shot.cards != k or len(distances) != k:
        raise DashboardError(
            f"search {caption!r}: {shot.cards} result cards ({len(distances)} distances) for "
            f"k={k}; alerts: {[a.inner_text() for a in alerts.all()]}"
        )
    if distances != sorted(distances):
        raise DashboardError(f"search {caption!r}: distances not sorted: {distances}")
    page.wait_for_timeout(300)
    return shot


def _screenshot(page: Page, path: Path) -> int:
    """The whole page: Streamlit scrolls inside ``stMain``, so the viewport is grown to its
    content height (at most :data:`MAX_HEIGHT`) and restored afterwards."""
    from PIL import Image

    height = VIEWPORT["height"]
    for _ in range(3):  # growing the viewport can re-flow the page once
        content = page.evaluate(_CONTENT_HEIGHT)
        if content <= height:
            break
        height = min(int(content) + 8, MAX_HEIGHT)
        page.set_viewport_size({"width": VIEWPORT["width"], "height": height})
        page.wait_for_timeout(400)
    raw = page.screenshot()
    page.set_viewport_size(VIEWPORT)  # type: ignore[arg-type]
    if len(raw) > MAX_PNG_BYTES:
        im = Image.open(io.BytesIO(raw)).convert("RGB").quantize(colors=256)
        buf = io.BytesIO()
        im.save(buf, format="PNG", optimize=True)
        raw = buf.getvalue()
    path.write_bytes(raw)
    return len(raw)


# --------------------------------------------------------------------------- the run


def default_caption(project: Path) -> str:
    """A real held-out caption: the first query sample's (so the search means something on any
    dataset); a fixed phrase when the run has no codes."""
    from cmrops.search import Catalog, SearchError, SearchSettings

    try:
        catalog = Catalog.load(project, SearchSettings())
        return catalog.caption_of(catalog.query_ids[0]) or "a photo"
    except (SearchError, IndexError, OSError):
        return "a photo"


def build_tiny_run(dest: Path, n: int = 100, epochs: int = 30) -> Path:
    """The test suite's tiny synthetic run (tests/test_dvc_support.py), every stage, then
    ``dvc commit`` and a release - with more epochs than the tests train, so the codes mean
    something."""
    sys.path.insert(0, str(REPO))
    from cmrops.pipeline import STAGES, run_stage
    from tests.test_dvc_support import git_commit, make_project, sh, tiny_params

    params = tiny_params(n)
    params["train"]["epochs"] = epochs
    project = make_project(dest, params)
    for name in STAGES:
        run_stage(name, project, str(project / "params.yaml"))
    sh(["dvc", "commit", "--force", "--quiet"], project, timeout=300)
    git_commit(project, "tiny run")
    from cmrops import releases

    releases.create(project)  # as the DAG's version task does: the Releases page has one
    return project


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--project", type=Path, help="a project after a run (default: a tiny run)")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "screenshots")
    ap.add_argument("--caption", help="what to type on the Search page (default: a query caption)")
    args = ap.parse_args(argv)
    tmp = None
    try:
        project = args.project
        if project is None:
            tmp = Path(tempfile.mkdtemp(prefix="cmrops-shots-"))
            print(f"building a tiny run in {tmp} ...", flush=True)
            project = build_tiny_run(tmp / "project")
        elif not (project / "data" / "codes").is_dir():
            print(f"{project}: no data/codes - run the pipeline there first", file=sys.stderr)
            return 2
        result = capture(project.resolve(), args.out, args.caption)
    except DashboardError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    for p in result.pages:
        print(f"{p.title:<14} {p.png}  ({p.png_bytes / 1000:.0f} kB)")
    if result.search:
        print(json.dumps(asdict(result.search)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
