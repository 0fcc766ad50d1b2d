"""The dashboard in a real browser: ``streamlit run dashboards/app.py`` served on 127.0.0.1 for the
shared tiny run, opened by Debian's headless Chromium through Playwright; every page must render
(title shown, no exception), a caption search must show k results with non-decreasing Hamming
distances, and each page's screenshot must be a real, small PNG
(scripts/dashboard_screenshots.py does the driving; running it by hand refreshes docs/screenshots/).
On the generated video-text and audio-text runs, each search hit must show its video's keyframe
strip as a loaded ``<img>`` and its clip as an ``<audio>`` the browser decoded."""

from __future__ import annotations

import importlib.util
import re
import sys
import time
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from PIL import Image

from cmrops import report
from cmrops.search import available_models

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "dashboard_screenshots.py"


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("dashboard_screenshots", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def shots() -> ModuleType:
    return load_script()


def test_every_page_renders_and_a_search_shows_k_sorted_results(
    shots: ModuleType, dashboard_project: Path, tmp_path: Path
) -> None:
    started = time.monotonic()
    result = shots.capture(dashboard_project, tmp_path, caption="two red circles")
    elapsed = time.monotonic() - started

    page_files = sorted(p.stem for p in (REPO / "dashboards" / "pages").glob("*.py"))
    assert sorted(p.slug for p in result.pages) == page_files
    for p in result.pages:
        assert p.heading, f"page {p.title} has no title"
        png = Path(p.png)
        assert png.parent == tmp_path
        assert png.stat().st_size == p.png_bytes < 300_000
        im = Image.open(png)
        assert im.format == "PNG"
        assert im.width == shots.VIEWPORT["width"]
        assert im.height >= shots.VIEWPORT["height"]
        pixels = np.asarray(im.convert("L"), dtype=np.float32)
        assert pixels.std() > 10, f"{png.name} looks blank"  # text, tables, charts
    search = result.search
    assert search is not None
    assert search.caption == "two red circles"
    assert search.cards == search.k >= 1
    assert len(search.distances) == search.k
    assert search.distances == sorted(search.distances)
    model = re.search(r"model (\S+)", search.summary)
    assert model is not None
    bits = {m.name: m.bits for m in available_models(dashboard_project)}[model.group(1)]
    assert all(0 <= d <= bits for d in search.distances)
    assert elapsed < 240, f"the browser run took {elapsed:.0f} s"


def test_missing_chromium_says_how_to_install_it(shots: ModuleType, tmp_path: Path) -> None:
    with pytest.raises(shots.DashboardError, match=r"scripts/system_packages\.sh"):
        shots.chromium_path(str(tmp_path / "chromium"))
    assert shots.chromium_path() == "/usr/bin/chromium"  # the real one is there for the test above


_MAIN = '[data-testid="stMain"]'
_CARDS = '[class*="st-key-search_hit_"]'
_LOADED = """sel => [...document.querySelectorAll(sel)].every(e =>
    e.tagName === 'IMG' ? e.complete && e.naturalWidth > 0 : e.readyState >= 1)"""
_SAMPLE_ID = re.compile(r"\b([0-9a-f]{16}) · ")


def test_search_shows_a_strip_per_video_and_a_player_per_clip(
    shots: ModuleType, video_project: Path, audio_project: Path
) -> None:
    """Query by a held-out video / clip (no text encoder to load): the query and each of the k
    hits show the media itself, as the browser received it."""
    for media, item, project in (("video", "video", video_project),
                                 ("audio", "clip", audio_project)):  # fmt: skip
        with shots.serve(project) as url, shots.browser() as b:
            page = b.new_page(viewport=shots.VIEWPORT)
            page.set_default_timeout(shots.PAGE_TIMEOUT_MS)
            page.goto(f"{url}/search")
            assert shots._settle(page, "Search") == "Search"
            page.get_by_text(f"Query {item} → captions", exact=True).click()
            k = int(page.locator('.st-key-search_k input[type="range"]').input_value())
            page.locator(f".st-key-search_hit_{k}").wait_for()
            shots._settle(page, "Search")  # no exception
            summary = page.get_by_text("nearest database").first.inner_text()
            assert f"({media} → text)" in summary
            tag = "img" if media == "video" else "audio"
            page.wait_for_function(_LOADED, arg=f"{_MAIN} {tag}")
            assert page.locator(f"{_MAIN} {tag}").count() == 1 + k  # the query's, each hit's
            cards = page.locator(_CARDS).all()
            assert len(cards) == k
            for card in cards:
                sid = _SAMPLE_ID.search(card.inner_text())
                assert sid is not None, card.inner_text()
                assert card.locator(tag).count() == 1, (media, sid.group(1))
                if media == "video":  # the very strip preprocess stored for this hit
                    w, h = card.locator("img").evaluate("e => [e.naturalWidth, e.naturalHeight]")
                    strip = report.video_strip(project, sid.group(1))
                    assert (w, h) == (strip.width, strip.height)
                    assert w >= 2 * h  # keyframes side by side
                else:  # the browser decoded the WAV: its length is the clip's
                    seconds = card.locator("audio").evaluate("e => e.duration")
                    assert abs(seconds - 1.0) < 0.05, (sid.group(1), seconds)


# --------------------------------------------------------------------------- review, map

_ITEMS = '[class*="st-key-rv_item_"]'
_ITEM_ID = re.compile(r"st-key-rv_item_([0-9a-f]{16})")


@pytest.fixture
def project_copy(dashboard_project: Path, tmp_path: Path) -> Path:
    import shutil

    dest = tmp_path / "project"
    def caches(folder: str, names: list[str]) -> list[str]:  # the dashboard's, not DVC's
        return ["cache"] if Path(folder).name == ".cmrops" else []

    shutil.copytree(dashboard_project, dest, symlinks=True, ignore=caches)  # fmt: skip
    return dest


def _item_ids(page) -> list[str]:
    ids = []
    for item in page.locator(_ITEMS).all():
        m = _ITEM_ID.search(item.get_attribute("class") or "")
        if m:
            ids.append(m.group(1))
    return ids


def _wait_records(log: Path, n: int, timeout_s: float = 60.0) -> list:
    from cmrops import answers

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        records = answers.read(log).records
        if len(records) >= n:
            return records
        time.sleep(0.2)
    raise AssertionError(f"{log}: {len(answers.read(log).records)} answers, expected {n}")


def test_two_sessions_review_at_once_and_the_next_label_run_merges_both(
    shots: ModuleType, project_copy: Path
) -> None:
    """Two browser sessions (two reviewers) answer different samples at the same moment - one
    by keyboard (type a note, press Enter), one by a button - both answers land in the log, a
    label rerun merges them (source "reviewed"), and the page then shows them merged."""
    import pyarrow.parquet as pq

    from cmrops import answers
    from cmrops.pipeline import run_stage

    log = project_copy / answers.DEFAULT_PATH
    with shots.serve(project_copy) as url, shots.browser() as b:
        pages = []
        for who in ("ann", "bo"):
            page = b.new_context(viewport=shots.VIEWPORT).new_page()
            page.set_default_timeout(shots.PAGE_TIMEOUT_MS)
            page.goto(f"{url}/review")
            assert shots._settle(page, "Review") == "Review"
            box = page.get_by_role("textbox", name="Reviewer", exact=True)
            box.fill(who)
            box.press("Enter")
            page.wait_for_function(shots._SCRIPT_DONE)
            pages.append(page)
        ann, bo = pages
        first, second = _item_ids(ann)[:2]
        assert _item_ids(bo)[:2] == [first, second]  # same queue, same order
        note = ann.locator(f".st-key-rv_item_{first}").get_by_role(
            "textbox", name="Note (optional)"
        )
        note.fill("checked by keyboard")
        reject = bo.locator(f".st-key-rv_item_{second}").get_by_role(
            "button", name="No label applies"
        )
        note.press("Enter")  # submits ann's form (Save labels) ...
        reject.click()  # ... while bo answers his
        records = _wait_records(log, 2)
        got = {r.sample_id: r.data for r in records}
        assert got[first]["who"] == "ann"
        assert got[first]["note"] == "checked by keyboard"
        assert got[second]["who"] == "bo"
        assert got[second]["action"] == "reject"

        run_stage("label", project_copy)
        rows = pq.read_table(project_copy / "data/labelled/labels.parquet").to_pylist()
        assert {r["source"] for r in rows if r["sample_id"] == first} == {"reviewed"}
        assert not [r for r in rows if r["sample_id"] == second]  # no label applies
        ann.reload()
        shots._settle(ann, "Review")
        merged = ann.locator('[data-testid="stMetric"]').filter(has_text="Merged")
        assert merged.locator('[data-testid="stMetricValue"]').inner_text().strip() == "2"
        assert first not in _item_ids(ann)  # answered samples leave the queue


def test_the_map_draws_selects_with_a_box_and_sends_to_review(
    shots: ModuleType, dashboard_project: Path
) -> None:
    with shots.serve(dashboard_project) as url, shots.browser() as b:
        page = b.new_page(viewport=shots.VIEWPORT)
        page.set_default_timeout(shots.PAGE_TIMEOUT_MS)
        page.goto(f"{url}/map")
        assert shots._settle(page, "Map") == "Map"
        plot = page.locator(".js-plotly-plot").first
        plot.locator(".main-svg").first.wait_for()
        drawn = plot.evaluate("e => e._fullData.reduce((n, t) => n + t.x.length, 0)")
        import pyarrow.parquet as pq

        assert (
            drawn == pq.read_metadata(dashboard_project / "data/interim/samples.parquet").num_rows
        )
        plot.hover()
        page.locator('.modebar-btn[data-title="Box Select"]').click()
        area = plot.locator(".nsewdrag").first.bounding_box()
        assert area is not None
        x0, y0 = area["x"] + 2, area["y"] + 2
        page.mouse.move(x0, y0)
        page.mouse.down()
        page.mouse.move(x0 + area["width"] - 4, y0 + area["height"] / 2, steps=8)
        page.mouse.up()
        heading = page.get_by_text(re.compile(r"^\d+ selected$"))
        heading.wait_for()
        page.wait_for_function(shots._SCRIPT_DONE)
        n = int(heading.inner_text().split()[0])
        assert 0 < n <= drawn
        page.get_by_role("button", name=f"Send {n} to review").click()
        page.wait_for_url(re.compile(r"/review$"))
        shots._settle(page, "Review")
        assert page.get_by_text(f"Selection ({n})").count() == 1
        assert len(_item_ids(page)) == min(n, 10)


def test_a_map_of_100k_points_renders_in_the_browser(shots: ModuleType, tmp_path: Path) -> None:
    app = Path(__file__).resolve().parent / "large_map_app.py"
    n = 100_000
    with shots.serve(tmp_path, app=app, env={"CMROPS_LARGE_MAP_N": str(n)}) as url, \
            shots.browser() as b:  # fmt: skip
        page = b.new_page(viewport=shots.VIEWPORT)
        page.set_default_timeout(shots.PAGE_TIMEOUT_MS)
        started = time.monotonic()
        page.goto(url)
        shots._settle(page, "Large map")
        plot = page.locator(".js-plotly-plot").first
        plot.locator("canvas").first.wait_for(state="attached")
        drawn = plot.evaluate("e => e._fullData.reduce((n, t) => n + t.x.length, 0)")
        seconds = time.monotonic() - started
        assert drawn == n
        legend = plot.locator(".legendtext").evaluate_all("els => els.map(e => e.textContent)")
        assert sum(int(t.rsplit("(", 1)[1].rstrip(")")) for t in legend) == n
        print(f"100k-point map drawn in {seconds:.1f} s")  # reported by the bench
