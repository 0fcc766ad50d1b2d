"""What DVC shows of a reproduced release, read through DVC itself: ``dvc metrics show`` prints
numbers-only digests (small, short lines), ``dvc exp show`` has a metrics column per digest
figure (no prose, lists or timings), and ``dvc plots show`` draws the handful of dvc.yaml's
plots - rendered by headless Chromium with every network request refused (the page carries
vega inline; vega-embed draws SVG): a line per curve, a bar per quarantine row. Uses the
session's tiny reproduced project (tests/test_dvc_support.py)."""

from __future__ import annotations

import csv
import io
import json
import shlex
from pathlib import Path

import pytest
import yaml

from cmrops import digest
from cmrops.stage_table import STAGES
from cmrops.telemetry import files
from tests.test_dvc_support import reproduced_project, sh

REPO = Path(__file__).resolve().parents[1]

#: The DVC read-out of a release stays small (issue 19: 3.9 MB and 302,594-character lines before).
METRICS_SHOW_MAX_BYTES = 20_000


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return reproduced_project(tmp_path_factory.getbasetemp())


def leaves(d: dict) -> list:
    out = []
    for v in d.values():
        out += leaves(v) if isinstance(v, dict) else [v]
    return out


def test_metrics_files_are_the_records_numbers_only_digests(project: Path) -> None:
    spec = yaml.safe_load((project / "dvc.yaml").read_text())
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    for stage in STAGES:
        declared = [next(iter(m)) for m in spec["stages"][stage]["metrics"]]
        assert declared == [files.digest_path(stage)]
        record = files.record(project, stage)
        assert record, stage
        d = json.loads((project / declared[0]).read_text())
        assert d == digest.digest(stage, record)
        assert leaves(d)
        assert all(isinstance(v, int | float) and not isinstance(v, bool) for v in leaves(d))
        # the record is a cached out of the stage: releases restore it from the DVC cache
        outs = {o["path"]: o for o in lock[stage]["outs"]}
        assert "md5" in outs[files.metrics_path(stage)], stage
    # wall-clock files: neither outs nor metrics, and git-ignored
    everything = {o["path"] for s in lock.values() for o in s["outs"]}
    for timing in ("data/interim/throughput.json", "metrics/train_throughput.json"):
        assert (project / timing).is_file()
        assert timing not in everything
        sh(["git", "check-ignore", "-q", timing], project)


def test_dvc_metrics_show_is_small_and_exp_show_has_one_column_per_figure(
    project: Path,
) -> None:
    shown = sh(["dvc", "metrics", "show"], project).stdout
    size = len(shown.encode())
    longest = max(len(line) for line in shown.splitlines())
    print(f"dvc metrics show: {size} bytes, {len(shown.splitlines())} lines, longest {longest}")
    assert size < METRICS_SHOW_MAX_BYTES
    assert "map.i2t." in shown
    assert "planted_defects.recall" in shown

    exps = json.loads(sh(["dvc", "exp", "show", "--json", "--no-pager"], project).stdout)
    data = exps[0]["data"]
    metrics = {p: leaves(v["data"]) for p, v in data["metrics"].items()}
    assert set(metrics) == {files.digest_path(s) for s in STAGES}
    n_metrics = sum(len(v) for v in metrics.values())
    digests = sum(len(leaves(json.loads((project / p).read_text()))) for p in metrics)
    assert n_metrics == digests
    n_params = sum(len(leaves(v["data"])) for v in data["params"].values())
    n_deps = len(data["deps"])
    table = _columns(project)
    print(f"dvc exp show: {len(table)} columns (metrics {n_metrics}, params {n_params}, "
          f"deps {n_deps})")  # fmt: skip
    assert table[:5] == ["Experiment", "rev", "typ", "Created", "parent"]  # the row headers
    assert len(table) == 5 + n_metrics + n_params + n_deps
    # the recipes of docs/versioning.md, run as the page writes them: every metric without the
    # params and dependencies, and the mAP columns only
    sections = set(yaml.safe_load((project / "params.yaml").read_text()))
    recipes = [
        shlex.split(line[2:])[3:]
        for line in (REPO / "docs" / "versioning.md").read_text().splitlines()
        if line.startswith("$ dvc exp show --drop")
    ]
    assert len(recipes) == 2, recipes
    assert all(s in recipes[0][1] for s in sections), "the recipe misses a params section"
    metrics_only = _columns(project, *recipes[0])
    assert len(metrics_only) == len(table) - n_params - n_deps
    headline = _columns(project, *recipes[1])
    maps = digest.digest("evaluate", files.record(project, "evaluate"))
    assert len(headline) == 2 + len(leaves(maps["map"])) + len(maps["float_baseline"])
    print(f"dvc exp show recipes: metrics only {len(metrics_only)}, mAP only {len(headline)}")


def _columns(project: Path, *args: str) -> list[str]:
    out = sh(["dvc", "exp", "show", "--csv", *args], project).stdout
    return next(csv.reader(io.StringIO(out)))


def test_plots_show_draws_the_handful_of_charts_offline(project: Path, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    from tests.test_dashboard_browser import load_script

    spec = yaml.safe_load((project / "dvc.yaml").read_text())
    ids = [next(iter(p)) for p in spec["plots"]]
    assert ids == ["precision_recall", "precision_at_k", "map_by_bits", "quarantine"]
    shown = json.loads(sh(["dvc", "plots", "show", "--json"], project).stdout)
    assert not shown.get("errors"), shown.get("errors")
    assert sorted(shown["data"]) == sorted(ids)  # no chart per file any more
    quarantine = shown["data"]["quarantine"][0]["content"]["data"]["values"]
    record = {
        s: files.quarantine_reasons(s, files.record(project, s)) for s in files.QUARANTINING_STAGES
    }
    assert {(r["stage"], r["reason"]): r["count"] for r in quarantine if r["count"]} == {
        (s, reason): n for s, by in record.items() for reason, n in by.items()
    }

    page = project / ".dvc" / "plots" / "offline.html"
    assert page.is_file(), "run scripts/bootstrap.sh (it writes .dvc/plots/offline.html)"
    out = tmp_path / "dvc_plots"
    sh(["dvc", "plots", "show", "-o", str(out)], project)
    html = (out / "index.html").read_text()
    assert "cdn.jsdelivr" not in html
    assert "<script src=" not in html
    assert html.count("vegaEmbed('#") == len(ids)

    blocked: list[str] = []
    shots = load_script()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=shots.chromium_path(), headless=True, args=["--no-sandbox"]
        )
        try:
            page_ = browser.new_page(viewport={"width": 1400, "height": 900})

            def refuse(route) -> None:  # type: ignore[no-untyped-def]
                if route.request.url.startswith("file://"):
                    route.continue_()
                else:
                    blocked.append(route.request.url)
                    route.abort()

            page_.route("**/*", refuse)
            errors: list[str] = []
            page_.on("pageerror", lambda e: errors.append(str(e)))
            page_.goto((out / "index.html").as_uri())
            page_.wait_for_function(
                f"document.querySelectorAll('.vega-embed svg.marks').length >= {len(ids)}",
                timeout=60_000,
            )
            # every chart drew its data: a line per curve, a bar per quarantine row
            drawn = page_.evaluate(
                """ids => Object.fromEntries(ids.map(id => {
                    const svg = document.querySelector('#' + id + ' svg.marks');
                    const n = s => svg ? svg.querySelectorAll(s + '.role-mark > path').length : -1;
                    return [id, {lines: n('g.mark-line'), bars: n('g.mark-rect')}];
                }))""",
                ids,
            )
            page_.screenshot(path=str(tmp_path / "plots.png"), full_page=True)
        finally:
            browser.close()
    assert errors == []
    assert blocked == []  # the page asked for nothing beyond itself
    tables = {
        name: json.loads((project / "plots" / "retrieval" / f"{name}.json").read_text())
        for name in ("pr", "pk", "map")
    }
    curves = {name: {(r["model"], r["direction"]) for r in rows} for name, rows in tables.items()}
    assert drawn["precision_recall"]["lines"] == len(curves["pr"]) > 0
    assert drawn["precision_at_k"]["lines"] == len(curves["pk"]) > 0
    methods = {(r["method"], r["direction"]) for r in tables["map"]}
    assert drawn["map_by_bits"]["lines"] == len(methods) > 0
    assert drawn["quarantine"]["bars"] == len(quarantine)
