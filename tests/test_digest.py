"""What DVC sees of a stage, made from its metrics record: the numbers-only digest
(cmrops.digest), the plot tables (cmrops.plot_tables), the CLI that writes both, and the fix
that lets a dry run reach the run cache with missing inputs (cmrops.dvc_fixes). Fast: records
built here; tests/test_dvc_readout.py reads a real reproduced project through DVC itself."""

from __future__ import annotations

import json
import sysconfig
from pathlib import Path
from types import SimpleNamespace

import pytest

from cmrops import digest, dvc_fixes, plot_tables
from cmrops.telemetry import files

CLEAN = {
    "stage": "clean",
    "inputs": 77,
    "kept": 69,
    "quarantined": 8,
    "quarantined_by_reason": {"exact_duplicate": 2, "mismatch": 6},
    "rule_order": ["min_side", "mismatch"],
    "rules": {"mismatch": {"status": "run", "drops": True, "threshold": -0.07, "flagged": 6}},
    "not_run": {"caption_language": "no detector"},
    "synthetic": {"overall": {"precision": 0.75, "recall": 0.6667, "caught": 6, "relevant": 9}},
}
EVALUATE = {
    "stage": "evaluate",
    "ties": {"tie_aware": "expected value under a uniformly random order ..."},
    "directions": ["image_to_text", "text_to_image"],
    "float_baseline": {
        "directions": {"image_to_text": {"map": 0.52}, "text_to_image": {"map": 0.69}}
    },
    "models": {
        name: {
            "method": name.split("-")[0],
            "bits": int(name.split("-")[1]),
            "directions": {
                d: {
                    "hash": {"map": m, "precision_at": {"100": 0.4}, "map_at": {"50": 0.6}},
                    "plots": {"pr": f"pr/{name}_{d}.json", "pk": f"pk/{name}_{d}.json"},
                }
                for d, m in (("image_to_text", 0.5), ("text_to_image", 0.6))
            },
        }
        for name in ("dcmh-16", "dcmh-32", "itq-16")
    },
}


def leaves(d: dict) -> list:
    out = []
    for v in d.values():
        out += leaves(v) if isinstance(v, dict) else [v]
    return out


def test_numbers_only_keeps_finite_numbers_and_drops_the_rest() -> None:
    d = digest.numbers_only(
        {"n": 3, "x": 0.5, "ok": True, "why": "prose", "ids": [1, 2], "none": None,
         "nan": float("nan"), "inf": float("inf"), "empty": {"s": "x"}, "sub": {"k": 1}}
    )  # fmt: skip
    assert d == {"n": 3, "x": 0.5, "sub": {"k": 1}}


def test_clean_digest_counts_reasons_and_planted_defects() -> None:
    d = digest.digest("clean", CLEAN)
    assert d == {
        "in": 77,
        "kept": 69,
        "quarantined": 8,
        "quarantined_by_reason": {"exact_duplicate": 2, "mismatch": 6},
        "planted_defects": {"precision": 0.75, "recall": 0.6667},
    }


def test_evaluate_digest_is_the_map_per_direction_and_model() -> None:
    d = digest.digest("evaluate", EVALUATE)
    assert d == {
        "models": 3,
        "map": {
            "i2t": {"dcmh-16": 0.5, "dcmh-32": 0.5, "itq-16": 0.5},
            "t2i": {"dcmh-16": 0.6, "dcmh-32": 0.6, "itq-16": 0.6},
        },
        "float_baseline": {"i2t": 0.52, "t2i": 0.69},
    }
    assert all(isinstance(v, int | float) and not isinstance(v, bool) for v in leaves(d))


@pytest.mark.parametrize(
    ("direction", "short"),
    [("image_to_text", "i2t"), ("text_to_image", "t2i"), ("video_to_text", "v2t"),
     ("text_to_audio", "t2a"), ("image_to_image", "i2i"), ("odd", "odd")],
)  # fmt: skip
def test_short_direction(direction: str, short: str) -> None:
    assert digest.short_direction(direction) == short


def test_every_stage_has_a_digest_and_a_digest_path() -> None:
    from cmrops.stage_table import STAGES

    for stage in STAGES:
        assert files.digest_path(stage) == f"metrics/dvc/{stage}.json"
        assert digest.digest(stage, {}) in ({}, {"models": 0})  # an empty record: no error
    assert digest.digest("nope", CLEAN) == {}


def test_quarantine_rows_most_frequent_first_and_a_row_when_none() -> None:
    assert plot_tables.quarantine_rows("clean", CLEAN) == [
        {"stage": "clean", "reason": "mismatch", "count": 6},
        {"stage": "clean", "reason": "exact_duplicate", "count": 2},
    ]
    assert plot_tables.quarantine_rows("collect", {"inputs": 5, "kept": 5}) == [
        {"stage": "collect", "reason": plot_tables.NO_QUARANTINE, "count": 0}
    ]


def test_retrieval_tables_join_the_curves_with_method_bits_direction(tmp_path: Path) -> None:
    for name in EVALUATE["models"]:
        for d in ("image_to_text", "text_to_image"):
            pr = [{"radius": r, "precision": 0.5, "recall": r / 8, "coverage": 0.1} for r in (0, 1)]
            pk = [{"k": k, "precision": 0.4, "float_precision": 0.5} for k in (1, 10)]
            for sub, rows in (("pr", pr), ("pk", pk)):
                (tmp_path / sub).mkdir(exist_ok=True)
                (tmp_path / sub / f"{name}_{d}.json").write_text(json.dumps(rows))
    tables = plot_tables.retrieval_tables(EVALUATE, tmp_path)
    assert len(tables["pr"]) == len(tables["pk"]) == 3 * 2 * 2
    assert len(tables["map"]) == 3 * 2
    for rows in tables.values():  # DVC needs the same fields in every row of a table
        assert len({tuple(sorted(r)) for r in rows}) == 1
    assert tables["pk"][0] == {
        "method": "dcmh", "bits": 16, "direction": "image_to_text", "model": "dcmh-16",
        "k": 1, "precision": 0.4,
    }  # fmt: skip
    assert [r["model"] for r in tables["map"]][::2] == ["dcmh-16", "dcmh-32", "itq-16"]


def test_cli_writes_the_digest_after_the_stage_and_only_when_asked(tmp_path: Path) -> None:
    from cmrops import cli

    params = tmp_path / "params.yaml"
    params.write_text("collect:\n  sources:\n    - {name: s, kind: synthetic, n: 12, seed: 1}\n")
    base = ["collect", "--params", str(params), "--out", str(tmp_path / "raw")]
    assert cli.main(base) == 0
    assert not (tmp_path / "dvc").exists()
    out = tmp_path / "dvc" / "collect.json"
    plots = tmp_path / "plots"
    assert cli.main([*base, "--digest", str(out), "--plots", str(plots)]) == 0
    record = json.loads((tmp_path / "raw" / "metrics.json").read_text())
    assert json.loads(out.read_text()) == digest.digest("collect", record)
    assert json.loads(out.read_text())["in"] == 12
    rows = json.loads((plots / "quarantine" / "collect.json").read_text())
    assert sum(r["count"] for r in rows) == record["quarantined"]
    # a failing stage writes no digest
    out.unlink()
    assert cli.main([*base[:2], str(tmp_path / "missing.yaml"), *base[3:], "--digest", str(out)])
    assert not out.exists()


def test_dry_run_fix_skips_the_run_cache_for_a_stage_with_a_missing_input(tmp_path: Path) -> None:
    import dvc.stage.cache as cache

    assert dvc_fixes.is_patched(cache)  # importing cmrops.dvc_fixes installed the hook
    present = tmp_path / "present"
    present.write_text("x")

    def dep(path: Path) -> SimpleNamespace:
        def get_hash() -> str:
            if not path.exists():
                raise FileNotFoundError(path)  # what DVC 3.67.1 does for a missing dep
            return "hash"

        return SimpleNamespace(protocol="local", def_path=str(path), exists=path.exists(),
                               get_hash=get_hash)  # fmt: skip

    stage = SimpleNamespace(
        is_callback=False, always_changed=False, cmd="true",
        deps=[dep(present), dep(tmp_path / "not-made-yet")],
        outs=[SimpleNamespace(protocol="local", def_path="out", persist=False, is_in_repo=True)],
    )  # fmt: skip
    assert cache._can_hash(stage) is False  # no FileNotFoundError: nothing to look up
    with pytest.raises(FileNotFoundError):
        cache._can_hash.__wrapped__(stage)  # the unpatched function


def test_bootstrap_installed_the_dry_run_fix_for_every_dvc_process() -> None:
    pth = Path(sysconfig.get_paths()["purelib"]) / dvc_fixes.PTH_NAME
    assert pth.is_file(), f"{pth} missing: run scripts/bootstrap.sh"
    assert pth.read_text().startswith("import cmrops.dvc_fixes")
