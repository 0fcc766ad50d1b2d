"""Every release gets its data card from the DAG's version task; its figures are the release's
own (checked against the release's outputs), in the structure of a dataset card; and what
each cleaning rule is worth is measured on the same release, with paired tests, and lands in
the card."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pyarrow.parquet as pq
import pytest

from cmrops import ablation, datacard, releases
from cmrops.release_data import ReleaseData

# the shared two-release project is built in the first test's setup (minutes on a busy
# 2-core machine): more than the default per-test timeout
pytestmark = pytest.mark.timeout(2400)


@pytest.fixture(scope="module")
def rel(handon_releases: dict[str, Any]) -> releases.Release:
    return releases.find(handon_releases["project"], handon_releases["second"])


def test_every_release_has_its_card(handon_releases: dict[str, Any]) -> None:
    project = handon_releases["project"]
    for rid in (handon_releases["first"], handon_releases["second"]):
        r = releases.find(project, rid)
        card = json.loads(r.attachment("datacard.json").read_text())
        assert card["release"]["id"] == rid
        assert r.attachment("datacard.md").read_text().startswith("# Dataset Card for")
    assert handon_releases["runs"][1]["datacard"]["samples"] > 0


def test_card_figures_are_the_releases_own(handon_releases: dict[str, Any], rel) -> None:
    card = json.loads(rel.attachment("datacard.json").read_text())
    data = ReleaseData(handon_releases["project"], rel)
    clean = pq.read_table(data.path("data/clean/samples.parquet")).to_pylist()
    assert card["composition"]["samples"] == len(clean)
    assert card["composition"]["captions"]["total"] == sum(len(r["captions"]) for r in clean)
    assert card["licenses"] == {"cc0-1.0": len(clean)}
    (src,) = card["sources"]
    assert (src["name"], src["license"], src["samples"]) == ("synthetic", "cc0-1.0", len(clean))
    # every quarantine reason of every stage, with its count and an example that has it
    for stage, path in datacard.QUARANTINES:
        rows = pq.read_table(data.path(path)).to_pylist() if data.has(path) else []
        counts = Counter(r["reason"] for r in rows)
        got = card["quarantine"]["stages"].get(stage, {})
        assert {k: v["count"] for k, v in got.items()} == dict(counts)
        for reason, e in got.items():
            assert any(e["example"] in (r["sample_id"], f"{r['source']}:{r['source_key']}")
                       for r in rows if r["reason"] == reason)  # fmt: skip
    split = data.read_json("metrics/split.json")
    assert card["splits"]["sizes"] == split["sizes"]
    assert card["splits"]["leakage"]["total"] == split["leakage"]["total"]
    retrieval = data.read_json("metrics/retrieval.json")
    assert set(card["retrieval"]["models"]) == set(retrieval["models"])
    assert card["citation"].startswith("@misc{")
    assert any("Synthetic" in x for x in card["limitations"])
    md = datacard.markdown(card)
    for section in ("## Dataset Details", "## Uses", "## Dataset Structure",
                    "## Dataset Creation", "### Annotations", "### Splits and leakage audit",
                    "### Personal and Sensitive Information", "## Bias, Risks, and Limitations",
                    "## Evaluation", "## Citation"):  # fmt: skip
        assert section in md, section


def test_what_each_rule_is_worth(handon_releases: dict[str, Any], rel) -> None:
    project = handon_releases["project"]
    quality = ReleaseData(project, rel).read_json("metrics/quality.json")
    ran = {k: v for k, v in quality["rules"].items() if k in ablation.RULES}
    params = ablation.AblationParams(methods=["itq"], bits=[16])
    report = ablation.run(project, rel.id, params)
    split = ReleaseData(project, rel).read_json("metrics/split.json")
    assert report["queries"] == split["sizes"]["query"]  # the release's queries, fixed
    for name, r in report["rules"].items():
        if name == ablation.NO_CLEANING:
            assert r["dropped"] == quality["quarantined"]
            continue
        assert r["dropped"] == int(ran[name].get("dropped") or 0)
        if not r["ablated"]:
            assert r["dropped"] == 0 or ran[name]["status"] != "run"
            continue
        # what came back went to the database / training side, never a query
        assert r["restored"] <= r["dropped"]
        assert r["placed"]["database"] + r["placed"]["train"] == r["restored"]
        for dirs in r["delta"].values():
            for cell in dirs.values():
                assert 0.0 <= cell["map_p"] <= 1.0
                assert cell["map_ci"][0] <= cell["map"] <= cell["map_ci"][1]
                if r["restored"] == 0:  # nothing came back: exactly the baseline
                    assert cell["map"] == 0.0
                    assert cell["map_p"] == 1.0
    assert report["rules"][ablation.NO_CLEANING]["ablated"]
    assert report["rules"][ablation.NO_CLEANING]["restored"] > 0
    attached = releases.find(project, rel.id).attachment(ablation.NAME)
    assert json.loads(attached.read_text())["rules"].keys() == report["rules"].keys()
    card = datacard.attach_card(project, rel.id)
    assert card["ablation"]["rules"].keys() == report["rules"].keys()
    assert "### What each cleaning rule is worth" in datacard.markdown(card)
