"""Video-text and audio-text data sets through every stage of the pipeline (the same commands DVC
and the DAG run): an MSR-VTT-style and a Clotho-style corpus with planted re-encoded copies and
two broken files each, real decoding, the real offline encoders, CPU - the session's
``video_project`` / ``audio_project`` (tests/media_project.py), which the dashboard tests show
too."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.media_project import BROKEN, COPIES, N

pytestmark = pytest.mark.slow  # about a minute and a half each on 2 cores


def _chance_map(work: Path) -> float:
    """The mAP a random ranking scores: the mean share of relevant database items."""
    labels = pq.read_table(work / "data/labelled/labels.parquet").to_pylist()
    of: dict[str, set[str]] = {}
    for r in labels:
        of.setdefault(r["sample_id"], set()).add(r["label"])
    a = pq.read_table(work / "data/split/assignments.parquet").to_pylist()
    query = [r["sample_id"] for r in a if r["split"] == "query"]
    database = [r["sample_id"] for r in a if r["split"] == "database"]
    shares = [np.mean([bool(of.get(q, set()) & of.get(d, set())) for d in database]) for q in query]
    return float(np.mean(shares))


def _check(work: Path, media: str) -> dict[str, Any]:
    # the broken files are quarantined by preprocess with their reasons; the rest go on
    q = pq.read_table(work / "data/interim/quarantine.parquet").to_pylist()
    assert {r["source_key"]: r["reason"] for r in q} == BROKEN[media]
    assert json.loads((work / "data/interim/metrics.json").read_text())["kept"] == N
    r = json.loads((work / "metrics/retrieval.json").read_text())
    forward, backward = f"{media}_to_text", f"text_to_{media}"
    assert r["media"] == media
    assert r["directions"] == [forward, backward]
    assert set(r["models"]) == {"dcmh-16", "contrastive-16"}
    for name, m in r["models"].items():
        assert set(m["directions"]) == {forward, backward}
        assert set(m["code_health"]) == {media, "text"}
        for d in (forward, backward):
            plot = work / "plots" / m["directions"][d]["plots"]["pr"]
            assert plot.is_file()
            assert plot.name == f"{name}_{d}.json"
    base = r["float_baseline"]["directions"]
    if r["relevance"]["mode"] == "pair":
        # caption data: each query has its own pair only; a random ranking puts it at
        # (database + 1) / 2 on average. The aligned float baseline (a few dozen training pairs)
        # ranks it well above that over both directions
        ranks = [base[d]["pair_ranks"]["mean_rank"] for d in (forward, backward)]
        chance = (base[forward]["database"] + 1) / 2
        assert float(np.mean(ranks)) < 0.75 * chance, (ranks, chance)
    else:
        chance = _chance_map(work)
        for d in (forward, backward):  # the aligned float baseline learns something real
            assert base[d]["map"] > 1.5 * chance, (d, base[d]["map"], chance)
    train = json.loads((work / "metrics/train.json").read_text())
    assert train["media"] == media
    meta = json.loads((work / "data/codes/dcmh-16/meta.json").read_text())
    assert meta["media"] == media
    return r


def _near_duplicates_found(work: Path, media: str) -> None:
    """Clean drops one clip of every planted copy pair as a near-duplicate, keeping the other,
    and no other clip as one."""
    samples = pq.read_table(work / "data/interim/samples.parquet").to_pylist()
    key = {r["sample_id"]: r["source_key"] for r in samples}
    found = set()
    for r in pq.read_table(work / "data/clean/quarantine.parquet").to_pylist():
        evidence = json.loads(r["evidence"])
        if r["reason"].startswith("near_duplicate"):
            found.add(frozenset({key[r["sample_id"]], key[evidence["kept"]]}))
    assert found == {frozenset(pair) for pair in COPIES[media].items()}


def test_video_text_pipeline(video_project: Path) -> None:
    _check(video_project, "video")
    _near_duplicates_found(video_project, "video")
    thumbs = pq.read_table(video_project / "data/interim/thumbs.parquet")
    assert thumbs.num_rows == N  # a strip per decoded video, none for the broken ones


def test_audio_text_pipeline(audio_project: Path) -> None:
    _check(audio_project, "audio")
    _near_duplicates_found(audio_project, "audio")
    quality = json.loads((audio_project / "metrics/quality.json").read_text())
    assert "audio clips have no frame size" in quality["not_run"]["min_side"]
