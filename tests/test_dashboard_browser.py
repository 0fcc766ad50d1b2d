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
    assert elapsed < 90, f"the browser run took {elapsed:.0f} s"


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
