"""The dashboard in a real browser: ``streamlit run dashboards/app.py`` served on 127.0.0.1 for the
shared tiny run, opened by Debian's headless Chromium through Playwright; every page must render
(title shown, no exception), a caption search must show k results with non-decreasing Hamming
distances, and each page's screenshot must be a real, small PNG
(scripts/dashboard_screenshots.py does the driving; running it by hand refreshes the README's)."""

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
