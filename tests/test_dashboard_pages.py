"""The Streamlit dashboard through ``AppTest``: every page through the router, on the shared
tiny real run (``dashboard_project``) and on an empty project; the numbers shown are the ones
in the metrics files; widgets are driven by their keys."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from streamlit.testing.v1 import AppTest

from cmrops import pipeline, report, runlog

APP = Path(__file__).resolve().parents[1] / "dashboards" / "app.py"
PAGES = ["overview", "data_quality", "splits", "retrieval", "code_health", "review", "map"]


def _app(project: Path, monkeypatch: pytest.MonkeyPatch, page: str | None = None) -> AppTest:
    monkeypatch.setenv("CMROPS_PROJECT_DIR", str(project))
    at = AppTest.from_file(str(APP), default_timeout=120).run()
    assert at.sidebar.code[0].value == str(project)  # the sidebar says which project is shown
    if page and page != "overview":
        at.switch_page(f"pages/{page}.py").run()
    _ok(at)
    return at


def _ok(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def _metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def _json(project: Path, rel: str) -> dict[str, Any]:
    return json.loads((project / rel).read_text())


def _close(shown: str, value: float) -> bool:
    return abs(float(shown) - value) <= 5e-5  # shown rounded to 4 places


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders_the_tiny_run(
    page: str, dashboard_project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    at = _app(dashboard_project, monkeypatch, page)
    assert at.title[0].value == page.replace("_", " ").capitalize()
    assert not at.info, [i.value for i in at.info]  # no empty state


@pytest.mark.parametrize("page", PAGES)
def test_every_page_says_what_to_run_on_an_empty_project(
    page: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    at = _app(tmp_path, monkeypatch, page)
    text = " ".join(i.value for i in at.info)
    assert "make run" in text
    assert "No " in text
    assert "cmrops " in " ".join(c.value for c in at.code)  # the stage command(s) to run
    assert not at.metric


def test_overview_shows_the_run_and_the_headline_numbers(
    dashboard_project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = dashboard_project
    at = _app(p, monkeypatch)
    m = _metrics(at)
    text = " ".join(md.value for md in at.markdown)
    raw, quality = _json(p, "data/raw/metrics.json"), _json(p, "metrics/quality.json")
    interim = _json(p, "data/interim/metrics.json")
    last = json.loads((p / ".cmrops" / "runs.jsonl").read_text().splitlines()[-1])
    assert f"Run id  \n`{last['run_id']}`" in text
    assert f"Data version (DVC)  \n`{runlog.data_version(p)}`" in text
    assert int(m["Stages"]) == len(pipeline.STAGES)
    assert m["Status"] == "success"
    assert int(m["Samples in"]) == raw["inputs"]
    assert int(m["Kept after clean"]) == quality["kept"]
    assert int(m["Quarantined"]) == (
        raw["quarantined"] + interim["quarantined"] + quality["quarantined"]
    )
    assert int(m["Leaking pairs"]) == _json(p, "metrics/split.json")["leakage"]["total"]
    assert _close(m["Cleaning precision"], quality["synthetic"]["overall"]["precision"])
    assert _close(m["Cleaning recall"], quality["synthetic"]["overall"]["recall"])
    retrieval = _json(p, "metrics/retrieval.json")
    best = max(
        d["hash"]["map"] for s in retrieval["models"].values() for d in s["directions"].values()
    )
    assert _close(m["Best mAP (hash)"], best)


def test_data_quality_examples_follow_the_reason_filter(
    dashboard_project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = dashboard_project
    at = _app(p, monkeypatch, "data_quality")
    expected = {}
    for stage, rel in [("collect", "data/raw/metrics.json"),
                       ("preprocess", "data/interim/metrics.json"),
                       ("clean", "metrics/quality.json")]:  # fmt: skip
        for reason, n in _json(p, rel)["quarantined_by_reason"].items():
            expected[f"{stage}: {reason}"] = n
    box = at.selectbox(key="dq_reason")
    assert sorted(box.options) == sorted(f"{k} ({n})" for k, n in expected.items())
    for option, n in expected.items():
        at.selectbox(key="dq_reason").set_value(option)
        at.number_input(key="dq_limit").set_value(50)
        at.run()
        _ok(at)
        assert int(_metrics(at)["Quarantined for this reason"]) == n, option
        images = len(at.image)
        if option.endswith(("near_duplicate_image", "exact_duplicate")):
            assert images >= 2 * n, option  # each example beside the sample it duplicates
            assert "pHash distance **" in " ".join(md.value for md in at.markdown)
        if option == "preprocess: truncated_image":
            assert any("cannot decode" in w.value for w in at.warning)  # evidence, no crash
    q = _json(p, "metrics/quality.json")["quarantined_by_reason"]
    at.selectbox(key="dq_reason").set_value("clean: near_duplicate_image").run()
    rows = report.quarantine(p)
    rows = rows[rows["reason"] == "near_duplicate_image"]
    assert len(rows) == q["near_duplicate_image"]
    shown = " ".join(md.value for md in at.markdown)
    for _, row in rows.iterrows():
        assert f"pHash distance **{int(row['distance'])}**" in shown

    lab = _json(p, "data/labelled/metrics.json")["review"]
    assert int(_metrics(at)["Samples to review"]) == lab["queue"]
    for reason, n in lab["by_reason"].items():
        at.selectbox(key="dq_review_reason").set_value(reason).run()
        _ok(at)
        assert int(_metrics(at)["Samples to review"]) == n


def test_splits_page_numbers(dashboard_project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = dashboard_project
    split = _json(p, "metrics/split.json")
    at = _app(p, monkeypatch, "splits")
    m = _metrics(at)
    for name, n in split["sizes"].items():
        assert int(m[name]) == n
    assert int(m["Leaking near-duplicate pairs"]) == split["leakage"]["total"]
    at.selectbox(key="splits_measure").set_value("samples").run()
    _ok(at)
    table = next(d.value for d in at.dataframe if "label" in d.value.columns).set_index("label")
    for label, by_set in split["labels"]["per_label"].items():
        for s in split["sizes"]:
            assert table.loc[label, s] == by_set[s]


@pytest.mark.parametrize(
    ("method", "bits", "direction"),
    [("dcmh", 32, "text_to_image"), ("contrastive", 16, "image_to_text")],
)
def test_retrieval_selection_shows_the_file_values(
    method: str,
    bits: int,
    direction: str,
    dashboard_project: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    p = dashboard_project
    at = _app(p, monkeypatch, "retrieval")
    at.selectbox(key="ret_method").set_value(method)
    at.selectbox(key="ret_bits").set_value(bits)
    at.selectbox(key="ret_direction").set_value(direction)
    at.run()
    _ok(at)
    d = _json(p, "metrics/retrieval.json")["models"][f"{method}-{bits}"]["directions"][direction]
    m = _metrics(at)
    assert _close(m["Best mAP (hash)"], d["hash"]["map"])
    assert _close(m["Its float baseline"], d["float"]["map"])
    assert m["Queries × database"] == f"{d['queries']} × {d['database']}"
    table = at.dataframe[0].value
    assert len(table) == 1
    assert table.iloc[0]["map"] == d["hash"]["map"]
    assert table.iloc[0]["float_map"] == d["float"]["map"]
    assert table.iloc[0]["map_database_order"] == d["hash"]["map_database_order"]
    history = at.dataframe[-1].value
    assert set(history["model"]) == {f"{method}-{bits}"}
    assert history.iloc[-1]["map"] == pytest.approx(d["hash"]["map"])
    at.checkbox(key="ret_show_float").uncheck().run()
    _ok(at)


def test_retrieval_all_models_best_of_a_direction(
    dashboard_project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = dashboard_project
    at = _app(p, monkeypatch, "retrieval")
    at.selectbox(key="ret_direction").set_value("image_to_text").run()
    models = _json(p, "metrics/retrieval.json")["models"]
    maps = [s["directions"]["image_to_text"]["hash"]["map"] for s in models.values()]
    assert _close(_metrics(at)["Best mAP (hash)"], max(maps))
    assert len(at.dataframe[0].value) == len(models)


def test_code_health_selection_shows_the_file_values(
    dashboard_project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = dashboard_project
    at = _app(p, monkeypatch, "code_health")
    retrieval = _json(p, "metrics/retrieval.json")["models"]
    for model in ("dcmh-32", "contrastive-16"):
        for modality in ("image", "text"):
            at.selectbox(key="ch_model").set_value(model)
            at.selectbox(key="ch_modality").set_value(modality)
            at.run()
            _ok(at)
            ch = retrieval[model]["code_health"][modality]
            m = _metrics(at)
            assert _close(m["Balance deviation"], ch["bit_balance"]["mean_abs_deviation"])
            bits = retrieval[model]["bits"]
            assert m["Constant bits"] == f"{ch['bit_balance']['constant_bits']} / {bits}"
            corr = ch["mean_abs_bit_correlation"]
            if corr is None:
                assert m["Mean |bit correlation|"] == "—"
            else:
                assert _close(m["Mean |bit correlation|"], corr)
            assert m["Distinct codes"] == f"{ch['buckets']['distinct']} / {ch['codes']}"


def test_a_damaged_metrics_file_is_an_error_box_saying_what_to_rerun(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "split.json").write_text("{truncated")
    monkeypatch.setenv("CMROPS_PROJECT_DIR", str(tmp_path))
    at = AppTest.from_file(str(APP), default_timeout=120).run()
    at.switch_page("pages/splits.py").run()
    assert not at.exception
    assert "rerun `cmrops split`" in at.error[0].value


def test_a_new_run_shows_without_a_restart(
    dashboard_project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    metrics = tmp_path / "data" / "raw" / "metrics.json"
    metrics.parent.mkdir(parents=True)
    raw = _json(dashboard_project, "data/raw/metrics.json")
    metrics.write_text(json.dumps(raw))
    at = _app(tmp_path, monkeypatch)
    assert int(_metrics(at)["Samples in"]) == raw["inputs"]
    raw = {**raw, "inputs": raw["inputs"] + 23}
    metrics.write_text(json.dumps(raw))  # a stage rewrites its metrics: new mtime and size
    at.run()
    _ok(at)
    assert int(_metrics(at)["Samples in"]) == raw["inputs"]


def test_streamlit_serves_on_loopback_headless_without_usage_stats() -> None:
    import tomllib

    config = tomllib.loads((APP.parents[1] / ".streamlit" / "config.toml").read_text())
    assert config["server"]["address"] == "127.0.0.1"
    assert config["server"]["headless"] is True
    assert config["browser"]["gatherUsageStats"] is False


# --------------------------------------------------------------------------- video and audio
# The session's generated video-text and audio-text projects (tests/media_project.py): 64 clean
# samples and two broken files each, every stage run.

MEDIA = ["video", "audio"]
ITEMS = {"video": "videos", "audio": "clips"}


def _media_project(media: str, request: pytest.FixtureRequest) -> Path:
    return request.getfixturevalue(f"{media}_project")


def _audio(at: AppTest) -> list[str]:
    """The media URLs of the page's audio players."""
    return [a.proto.url for a in at.get("audio")]


def _images(at: AppTest) -> list[str]:
    """The media URLs of the page's images (``.jpg``: a keyframe strip, ``.png``: a thumbnail)."""
    return [img.url for element in at.image for img in element.proto.imgs]


def _text(at: AppTest) -> str:
    parts = [
        e.value for kind in ("markdown", "caption", "title", "subheader") for e in at.get(kind)
    ]
    parts += [w.label for w in [*at.selectbox, *at.radio, *at.text_input]]
    parts += [o for r in at.radio for o in r.options]
    return " ".join(parts)


@pytest.mark.parametrize("media", MEDIA)
@pytest.mark.parametrize("page", [*PAGES, "search"])
def test_every_page_renders_a_media_project(
    page: str, media: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    at = _app(_media_project(media, request), monkeypatch, page)
    assert at.title[0].value == page.replace("_", " ").capitalize()
    assert not at.info, [i.value for i in at.info]  # no empty state


@pytest.mark.parametrize("media", MEDIA)
def test_data_quality_previews_media_and_shows_the_broken_files_evidence(
    media: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.media_project import BROKEN

    p = _media_project(media, request)
    at = _app(p, monkeypatch, "data_quality")
    for key, reason in BROKEN[media].items():
        at.selectbox(key="dq_reason").set_value(f"preprocess: {reason}").run()
        _ok(at)
        assert _metrics(at)["Quarantined for this reason"] == "1"
        assert any(key in m.value for m in at.markdown)  # source:key - detail
        assert at.json, reason  # the evidence
        warnings = " ".join(w.value for w in at.warning)
        if media == "video":  # never decoded: no strip, the reason says why
            assert not _images(at)
            assert "no keyframe strip stored" in warnings
        elif reason == "truncated_audio":  # the stored bytes are still a WAV: listen to it
            assert [u.rsplit(".", 1)[1] for u in _audio(at)] == ["wav"]
        else:
            assert not _audio(at)
            assert "not an audio format" in warnings

    n = json.loads((p / "metrics/quality.json").read_text())["quarantined_by_reason"][
        "near_duplicate_image"
    ]
    at.selectbox(key="dq_reason").set_value("clean: near_duplicate_image")
    at.number_input(key="dq_limit").set_value(3)
    at.run()
    _ok(at)
    shown = min(n, 3)
    if media == "video":  # each quarantined video's strip beside the kept one's
        assert [u.rsplit(".", 1)[1] for u in _images(at)] == ["jpg"] * 2 * shown
        assert not _audio(at)
        assert "**Frame size**" in _text(at)
    else:  # a player for the quarantined clip and one for the clip it duplicates
        assert len(_audio(at)) == 2 * shown
        assert not _images(at)
        assert "Image size" not in _text(at)
    captions = [c.value for c in at.caption] + [i.caption for e in at.image for i in e.proto.imgs]
    assert sum("(kept)" in c for c in captions) == shown
    assert "**Duration**" in _text(at)


@pytest.mark.parametrize("media", MEDIA)
def test_search_page_finds_media_and_previews_each_hit(
    media: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cmrops.search import Catalog, SearchSettings

    p = _media_project(media, request)
    catalog = Catalog.load(p, SearchSettings())
    at = _app(p, monkeypatch, "search")
    assert at.radio(key="search_mode").options == [
        f"Caption → {ITEMS[media]}",
        f"Query {ITEMS[media][:-1]} → captions",
    ]
    at.slider(key="search_k").set_value(4).run()
    at.text_input(key="search_caption").input(catalog.caption_of(catalog.query_ids[0])).run()
    _ok(at)
    text = _text(at)
    assert f"**4** nearest database {ITEMS[media]}" in text
    assert f"(text → {media})" in text
    previews = _images(at) if media == "video" else _audio(at)
    assert [u.rsplit(".", 1)[1] for u in previews] == ["jpg" if media == "video" else "wav"] * 4

    at.radio(key="search_mode").set_value("image").run()
    _ok(at)
    sid = catalog.query_ids[-1]
    at.selectbox(key="search_image").set_value(sid).run()
    _ok(at)
    text = _text(at)
    assert f"Query {ITEMS[media][:-1]} (held-out query set)" in text
    assert "**4** nearest database captions" in text
    assert f"({media} → text)" in text
    previews = _images(at) if media == "video" else _audio(at)
    assert len(previews) == 1 + 4  # the query's, then each hit's
    assert "image" not in text.lower()  # the media's own words


@pytest.mark.parametrize("media", MEDIA)
def test_retrieval_and_code_health_name_the_media(
    media: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = _media_project(media, request)
    retrieval = _json(p, "metrics/retrieval.json")
    at = _app(p, monkeypatch, "retrieval")
    box = at.selectbox(key="ret_direction")
    assert sorted(box.options) == sorted(d.replace("_to_", " → ") for d in retrieval["directions"])
    at.selectbox(key="ret_direction").set_value(f"text_to_{media}").run()
    _ok(at)
    d = retrieval["models"]["dcmh-16"]["directions"][f"text_to_{media}"]
    at.selectbox(key="ret_method").set_value("dcmh").run()
    assert _close(_metrics(at)["Best mAP (hash)"], d["hash"]["map"])

    at = _app(p, monkeypatch, "code_health")
    at.selectbox(key="ch_model").set_value("dcmh-16")
    at.selectbox(key="ch_modality").set_value(media)
    at.run()
    _ok(at)  # the media's codes are the image_*.npy files
    ch = retrieval["models"]["dcmh-16"]["code_health"][media]
    assert _metrics(at)["Distinct codes"] == f"{ch['buckets']['distinct']} / {ch['codes']}"
