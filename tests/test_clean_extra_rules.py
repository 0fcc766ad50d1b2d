"""A user's own cleaning rule: named in params as ``module:Class`` or through an entry point of
group ``cmrops.cleaning_rules``, loaded strictly, walked after the built-in per-sample rules and
before the duplicate resolution, its evidence on record like a built-in rule's."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from cmrops.cleaning.rules import RULE_ORDER, ExtraRule
from cmrops.params import ParamsError, load_section
from cmrops.stages.clean import STAGE, CleanParams, run
from tests.clean_helpers import interim, row, sid

SPEC = "tests.clean_extra_rule:CaptionUrls"
NO_LABEL_RULES = {"irrelevant": {"enabled": False}, "label_disagreement": {"enabled": False}}


def _params(tmp_path: Path, section: dict) -> CleanParams:
    path = tmp_path / "params.yaml"
    path.write_text(json.dumps({"clean": {**NO_LABEL_RULES, **section}}), encoding="utf-8")
    return load_section(path, STAGE, CleanParams)


def _rows() -> list[dict]:
    return [
        row("link", captions=["http://example.com/img_0042.jpg"]),
        row("both", width=10, captions=["www.x.io"]),  # min_side claims it
        row("one_ok", captions=["http://a.b/c", "a dog runs on the beach"]),
        row("fine"),
    ]


def test_a_rule_named_in_params_runs_in_its_place(tmp_path: Path) -> None:
    params = _params(tmp_path, {"extra_rules": [{"rule": SPEC, "params": {"max_urls": 0}}]})
    assert params.extra_rules == (ExtraRule(SPEC, {"max_urls": 0}),)
    out = tmp_path / "clean"
    m = run(params, interim(tmp_path / "interim", _rows()), None, out)
    assert m["rule_order"] == [*RULE_ORDER[:7], "caption_urls", *RULE_ORDER[7:]]
    assert m["rules"]["caption_urls"] == {
        "status": "run",
        "drops": True,
        "threshold": {"max_urls": 0},
        "flagged": 2,
        "dropped": 1,
        "report": {"captions_with_links": 3},
    }
    q = {r["sample_id"]: r for r in pq.read_table(out / "quarantine.parquet").to_pylist()}
    assert q[sid("link")]["reason"] == "caption_urls"
    assert json.loads(q[sid("link")]["evidence"]) == {"threshold": {"max_urls": 0}, "urls": [1]}
    assert q[sid("both")]["reason"] == "min_side"
    evidence = json.loads(q[sid("both")]["evidence"])
    assert evidence["also_flagged_by"] == ["max_aspect", "caption_urls"]
    assert set(q) == {sid("link"), sid("both")}
    # without it, the same samples give the built-in outcome
    m = run(_params(tmp_path, {}), tmp_path / "interim", None, tmp_path / "plain")
    assert "caption_urls" not in m["rules"]
    assert m["quarantined_by_reason"] == {"min_side": 1}


def test_extra_rules_load_strictly(tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match=r"unknown key\(s\) max_url;"):
        _params(tmp_path, {"extra_rules": [{"rule": SPEC, "params": {"max_url": 1}}]})
    with pytest.raises(ParamsError, match="max_urls must be >= 0"):
        _params(tmp_path, {"extra_rules": [{"rule": SPEC, "params": {"max_urls": -1}}]})
    with pytest.raises(ParamsError, match=r"unknown key\(s\) parms"):
        _params(tmp_path, {"extra_rules": [{"rule": SPEC, "parms": {}}]})
    with pytest.raises(ParamsError, match="cannot be loaded"):
        _params(tmp_path, {"extra_rules": [{"rule": "tests.nowhere:Rule"}]})
    with pytest.raises(ParamsError, match="not a concrete subclass"):
        _params(tmp_path, {"extra_rules": [{"rule": "tests.clean_extra_rule:NotARule"}]})
    with pytest.raises(ParamsError, match="no entry point of that name"):
        _params(tmp_path, {"extra_rules": [{"rule": "caption_urls"}]})
    with pytest.raises(ParamsError, match="which another rule already is"):
        _params(tmp_path, {"extra_rules": [{"rule": SPEC}, {"rule": SPEC}]})


def test_a_rule_installed_through_an_entry_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dist = tmp_path / "site" / "mycaptionrules-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: mycaptionrules\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[cmrops.cleaning_rules]\ncaption_urls = {SPEC}\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    params = _params(tmp_path, {"extra_rules": [{"rule": "caption_urls"}]})
    m = run(params, interim(tmp_path / "interim", _rows()), None, tmp_path / "clean")
    assert m["quarantined_by_reason"] == {"caption_urls": 1, "min_side": 1}
