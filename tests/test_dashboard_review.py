"""The dashboard's acting pages through ``AppTest`` on the shared tiny run: the Review page
(answer the label queue, confirm / overrule a quarantine, paginate, filter, order, the map's
selection), the answers merged by a real label / clean rerun, the Map page, drill-down from a count
to its samples, downloads, and the Search page's relevance rules and default model. Tests that
write answers work on a copy of the run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from streamlit.testing.v1 import AppTest

from cmrops import answers, drilldown, report
from cmrops.pipeline import run_stage
from cmrops.review_items import quarantine_doubt

APP = Path(__file__).resolve().parents[1] / "dashboards" / "app.py"


@pytest.fixture
def project_copy(dashboard_project: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny run (30 MB) for tests that answer and rerun stages."""
    dest = tmp_path / "project"
    def caches(folder: str, names: list[str]) -> list[str]:  # the dashboard's, not DVC's
        return ["cache"] if Path(folder).name == ".cmrops" else []

    shutil.copytree(dashboard_project, dest, symlinks=True, ignore=caches)  # fmt: skip
    return dest


def _app(project: Path, monkeypatch: pytest.MonkeyPatch, page: str) -> AppTest:
    monkeypatch.setenv("CMROPS_PROJECT_DIR", str(project))
    monkeypatch.setenv("CMROPS_REVIEWER", "tester")
    at = AppTest.from_file(str(APP), default_timeout=180).run()
    at.switch_page(f"pages/{page}.py").run()
    _ok(at)
    return at


def _ok(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def _metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def _text(at: AppTest) -> str:
    parts = [e.value for kind in ("markdown", "caption") for e in at.get(kind)]
    parts += [e.value for e in [*at.success, *at.warning, *at.info]]
    return " ".join(parts)


def _items(at: AppTest) -> list[str]:
    """Sample ids of the items on the page, in order (each item's form holds its label field)."""
    keys = [w.key for w in [*at.multiselect, *at.radio] if w.key]
    return [k.split("_")[-1] for k in keys if k.startswith(("rv_labels_", "rv_verdict_"))]


def _button(at: AppTest, sid: str, label: str):
    return next(b for b in at.button if b.label == label and sid in (b.key or ""))


# --------------------------------------------------------------------------- review: labels


def test_the_label_queue_pages_least_confident_first_and_filters(
    dashboard_project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    at = _app(dashboard_project, monkeypatch, "review")
    queue = report.review_queue(dashboard_project)
    assert at.radio(key="rv_kind").value == "labels"
    assert f"Label queue ({len(queue)})" in at.radio(key="rv_kind").options
    first = _items(at)
    by_priority = queue.sort_values(["priority", "sample_id"], ascending=[False, True])
    assert first == list(by_priority["sample_id"][: len(first)])
    assert len(first) == 10  # the default page size
    at.number_input(key="rv_page").set_value(2).run()
    _ok(at)
    assert _items(at) == list(by_priority["sample_id"][10:20])
    at.selectbox(key="rv_order").set_value("confident").run()
    confident = queue.sort_values(["priority", "sample_id"])["sample_id"]
    assert _items(at) == list(confident[10:20])  # page 2, most confident first
    at.selectbox(key="rv_size").set_value(25).run()
    at.number_input(key="rv_page").set_value(1).run()
    assert len(_items(at)) == min(25, len(queue))
    reason = queue["reason"].iloc[-1]
    at.selectbox(key="rv_reason").set_value(reason).run()
    _ok(at)
    n = int((queue["reason"] == reason).sum())
    assert len(_items(at)) == min(25, n)
    assert f"of {n}" in _text(at)
    # each item shows its captions and its candidate labels with sources and confidences
    tables = [d.value for d in at.dataframe]
    cands = [t for t in tables if {"label", "confidence", "source", "method"} <= set(t.columns)]
    assert len(cands) == len(_items(at))


def test_answers_are_saved_pending_then_merged_by_a_label_rerun(
    project_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = project_copy
    at = _app(p, monkeypatch, "review")
    vocab = json.loads((p / "data/labelled/vocabulary.json").read_text())["labels"]
    a, b, c = _items(at)[:3]
    at.multiselect(key=f"rv_labels_{a}").set_value(vocab[:2])
    at.text_input(key=f"rv_note_{a}").input("two shapes")
    _button(at, a, "Save labels").click().run()
    _ok(at)
    _button(at, b, "No label applies").click().run()
    _button(at, c, "Accept suggested").click().run()
    _ok(at)
    log = answers.read(p / answers.DEFAULT_PATH)
    got = {r.sample_id: r.data for r in log.records}
    assert got[a]["labels"] == sorted(vocab[:2])
    assert got[a]["action"] == "edit"
    assert got[a]["note"] == "two shapes"
    assert got[a]["who"] == "tester"
    assert got[b]["action"] == "reject"
    assert got[b]["labels"] == []
    assert got[c]["action"] == "accept"
    assert a not in _items(at)  # "to review" hides answered items
    assert _metrics(at)["Pending"] == "3"
    at.selectbox(key="rv_status").set_value("answered").run()
    assert set(_items(at)) == {a, b, c}
    assert "pending" in _text(at)

    run_stage("label", p)  # what `dvc repro` runs next (the log is a dependency of label)
    rows = pq.read_table(p / "data/labelled/labels.parquet").to_pylist()
    mine = {(r["sample_id"], r["label"], r["source"]) for r in rows if r["sample_id"] == a}
    assert mine == {(a, label, "reviewed") for label in vocab[:2]}
    assert not [r for r in rows if r["sample_id"] == b]  # no label applies
    at.run()
    _ok(at)
    assert _metrics(at)["Pending"] == "0"
    assert _metrics(at)["Merged"] == "3"
    log_table = next(d.value for d in at.dataframe if "status" in d.value.columns)
    assert set(log_table["status"]) == {"merged"}
    assert set(log_table["sample_id"]) == {a, b, c}
    assert "leave the label queue" in _text(at)  # merged answers are no longer in the queue


def test_saving_without_a_reviewer_name_writes_nothing(
    project_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    at = _app(project_copy, monkeypatch, "review")
    at.text_input(key="rv_who").input("  ").run()
    sid = _items(at)[0]
    _button(at, sid, "Accept suggested").click().run()
    assert any("Reviewer" in e.value for e in at.error)
    assert not (project_copy / answers.DEFAULT_PATH).stat().st_size


# --------------------------------------------------------------------------- review: quarantine


def test_a_quarantine_overrule_needs_a_reason_and_returns_the_sample(
    project_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = project_copy
    at = _app(p, monkeypatch, "review")
    q = pq.read_table(p / "data/clean/quarantine.parquet").to_pylist()
    at.radio(key="rv_kind").set_value("quarantine").run()
    _ok(at)
    shown = _items(at)
    doubt = {r["sample_id"]: quarantine_doubt(r["reason"], json.loads(r["evidence"])) for r in q}
    assert shown == sorted(doubt, key=lambda s: (-doubt[s], s))[:10]
    sid = shown[0]
    reason = next(r["reason"] for r in q if r["sample_id"] == sid)
    at.radio(key=f"rv_verdict_{sid}").set_value("overrule")
    _button(at, sid, "Save verdict").click().run()
    assert any("needs a reason" in e.value for e in at.error)  # nothing written
    assert not (p / answers.DEFAULT_PATH).stat().st_size
    at.radio(key=f"rv_verdict_{sid}").set_value("overrule")
    at.text_input(key=f"rv_why_{sid}").input("the caption does describe the image")
    _button(at, sid, "Save verdict").click().run()
    _ok(at)
    other = _items(at)[0]
    _button(at, other, "Save verdict").click().run()  # confirm (the default)
    verdicts = answers.latest(answers.read(p / answers.DEFAULT_PATH).records, "quarantine")
    assert verdicts[sid].data["verdict"] == "overrule"
    assert verdicts[sid].data["reason"] == reason
    assert verdicts[other].data["verdict"] == "confirm"

    run_stage("clean", p)
    kept = pq.read_table(p / "data/clean/samples.parquet")["sample_id"].to_pylist()
    over = {
        r["sample_id"]: r for r in pq.read_table(p / "data/clean/overrides.parquet").to_pylist()
    }
    assert over[sid]["verdict"] == "overrule"
    if over[sid]["outcome"] == "kept":  # (another rule may claim it: then it says which)
        assert sid in kept
    else:
        assert over[sid]["quarantined_by"] != reason
    assert other not in kept
    at.run()
    _ok(at)
    assert _metrics(at)["Pending"] == "0"


def test_the_maps_selection_is_reviewed_least_confident_first(
    dashboard_project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    at = _app(dashboard_project, monkeypatch, "review")
    assert "Selection (0)" in at.radio(key="rv_kind").options
    labels = pq.read_table(dashboard_project / "data/labelled/labels.parquet").to_pandas()
    ids = sorted(labels["sample_id"].unique())[:7]
    at.session_state["review_selection"] = ids  # what the Map page's "Send to review" sets
    at.radio(key="rv_kind").set_value("selection").run()
    _ok(at)
    shown = _items(at)
    assert sorted(shown) == ids
    best = labels[labels["sample_id"].isin(ids)].groupby("sample_id")["confidence"].max()
    assert [round(1 - best[s], 6) for s in shown] == sorted(
        (round(1 - best[s], 6) for s in shown), reverse=True
    )


# --------------------------------------------------------------------------- map


def test_the_map_page_opens_on_a_computed_layout_and_colours_by_each_field(
    dashboard_project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    at = _app(dashboard_project, monkeypatch, "map")
    assert at.selectbox(key="map_method").value in ("pca", "umap")
    assert len(at.get("plotly_chart")) == 1
    for colour in ("split", "quarantine", "dup_group", "label"):
        at.selectbox(key="map_colour").set_value(colour).run()
        _ok(at)
        spec = json.loads(at.get("plotly_chart")[0].proto.spec)
        assert all(t["type"] == "scattergl" for t in spec["data"])
        names = [t["name"] for t in spec["data"]]
        assert sum(int(x.rsplit("(", 1)[1].rstrip(")")) for x in names) == len(
            pq.read_table(dashboard_project / "data/interim/samples.parquet")
        )
    at.radio(key="map_modality").set_value("text").run()
    _ok(at)


def test_selected_rows_come_from_each_points_customdata() -> None:
    from dashboards.mapplot import selected_rows

    event = {"selection": {"points": [{"customdata": [4, "b"]}, {"customdata": [1, "a"]},
                                      {"customdata": [4, "b"]}]}}  # fmt: skip
    assert selected_rows(event) == [1, 4]
    assert selected_rows(None) == []


# --------------------------------------------------------------------------- drill-down, search


@pytest.mark.parametrize(
    ("page", "key", "what"),
    [
        ("data_quality", "dq_counts", "quarantine"),
        ("data_quality", "dq_label_counts", "label"),
        ("data_quality", "dq_decided_by", "decided_by"),
        ("overview", "ov_quarantine", "quarantine"),
        ("splits", "splits_sizes", "split"),
    ],
)
def test_a_count_drills_down_to_its_samples(
    page: str, key: str, what: str, dashboard_project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    at = _app(dashboard_project, monkeypatch, page)
    counts = next(d for d in at.dataframe if d.key == key).value
    at.session_state[key] = {"selection": {"rows": [0], "columns": [], "cells": []}}
    at.run()
    _ok(at)
    row = counts.iloc[0]
    n = int(row.get("count", row.get("samples")))
    assert f"**{n}**" in _text(at)
    value = {"quarantine": (row.get("stage"), row.get("reason")), "label": row.get("label"),
             "decided_by": row.get("decided_by"), "split": row.get("set")}[what]  # fmt: skip
    listed = drilldown.samples(dashboard_project, what, value)
    assert len(listed) == n


def test_downloads_are_the_table_as_csv_and_parquet(dashboard_project: Path) -> None:
    import io

    import pandas as pd

    df = drilldown.samples(dashboard_project, "split", "query")
    back = pd.read_parquet(io.BytesIO(drilldown.to_bytes(df, "parquet")))
    assert back["sample_id"].tolist() == df["sample_id"].tolist()
    csv = pd.read_csv(io.BytesIO(drilldown.to_bytes(df, "csv")))
    assert len(csv) == len(df)
    assert list(csv.columns) == list(df.columns)


def test_search_opens_on_the_best_model_and_offers_the_stricter_rule(
    dashboard_project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    at = _app(dashboard_project, monkeypatch, "search")
    table = report.retrieval_table(dashboard_project)
    t2i = table[table["direction"] == "text_to_image"]
    best = t2i.loc[t2i["map"].idxmax()]
    assert at.selectbox(key="search_method").value == best["method"]
    assert at.selectbox(key="search_bits").value == best["bits"]
    at.text_input(key="search_caption").input("two red circles").run()
    _ok(at)
    text = _text(at)
    assert "Relevant = a result that shares at least one label" in text
    tally = [m.value for m in at.markdown if "relevant" in m.value and " of " in m.value]
    any_n = int(tally[0].split("**")[-2].split(" of ")[0])
    at.radio(key="search_rule").set_value("all").run()
    _ok(at)
    assert "Relevant = a result that has every label of the query" in _text(at)
    tally = [m.value for m in at.markdown if "relevant" in m.value and " of " in m.value]
    assert int(tally[0].split("**")[-2].split(" of ")[0]) <= any_n


# --------------------------------------------------------------------------- releases


def _two_releases(p: Path) -> tuple[str, str]:
    """Release the run as it is, then a second one with other metrics (kept - 5) and lock."""
    from cmrops import releases

    off = releases.ReleaseParams(git="off")
    first = releases.create(p, params=off).id
    quality = json.loads((p / "metrics/quality.json").read_text())
    quality["kept"] -= 5
    (p / "metrics/quality.json").write_text(json.dumps(quality))
    with (p / "dvc.lock").open("a") as fh:
        fh.write("# a later run\n")
    second = releases.create(p, params=off).id
    assert first != second
    return first, second


def test_the_release_picker_shows_the_latest_and_an_earlier_release_from_the_cache(
    project_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = project_copy
    kept = json.loads((p / "metrics/quality.json").read_text())["kept"]
    first, second = _two_releases(p)
    monkeypatch.setenv("CMROPS_PROJECT_DIR", str(p))
    at = AppTest.from_file(str(APP), default_timeout=180).run()
    _ok(at)
    box = at.selectbox(key="release_box")
    assert box.value == second  # the latest by default
    assert int(_metrics(at)["Kept after clean"]) == kept - 5
    box.set_value(first).run()
    _ok(at)
    assert int(_metrics(at)["Kept after clean"]) == kept
    at.switch_page("pages/data_quality.py").run()  # its tables come from the DVC cache
    _ok(at)
    assert not at.info
    at.switch_page("pages/review.py").run()
    _ok(at)
    assert "Review works on the workspace" in _text(at)
    at.switch_page("pages/releases.py").run()
    _ok(at)
    table = next(d.value for d in at.dataframe if "release" in d.value.columns)
    assert list(table["release"]) == [second, first]


def test_an_earlier_release_missing_from_the_cache_says_what_is_missing(
    project_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = project_copy
    first, _ = _two_releases(p)
    shutil.rmtree(p / ".dvc" / "cache")  # the tables of the first release are gone
    monkeypatch.setenv("CMROPS_PROJECT_DIR", str(p))
    at = AppTest.from_file(str(APP), default_timeout=180).run()
    at.selectbox(key="release_box").set_value(first).run()
    _ok(at)
    for page in ("data_quality", "splits", "map", "search", "releases"):
        at.switch_page(f"pages/{page}.py").run()
        assert not at.exception, (page, [e.value for e in at.exception])
    at.switch_page("pages/map.py").run()
    assert any(f"cmrops release checkout {first}" in c.value for c in at.code)
