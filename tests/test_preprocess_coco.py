"""The real COCO sample (159 photos, 5 captions each) through the preprocess stage."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import imagehash
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageOps

from cmrops.imaging import uint64_to_bits
from cmrops.stages.preprocess import PreprocessParams, run
from tests.raw_helpers import coco_samples, write_raw


@pytest.fixture(scope="module")
def coco_raw(coco_mini: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    raw = tmp_path_factory.mktemp("coco_raw")
    write_raw(raw, coco_samples(coco_mini))
    return raw


def test_all_159_photos_without_embeddings(coco_mini: Path, coco_raw: Path, tmp_path: Path) -> None:
    params = PreprocessParams(n_workers=2, shard_size=40, embeddings=False)
    metrics = run(params, coco_raw, tmp_path)
    assert (metrics["in"], metrics["kept"], metrics["quarantined"]) == (159, 159, 0)
    assert metrics["formats"] == {"JPEG": 159}
    assert metrics["captions_kept"] >= 159 * 5

    table = pq.read_table(tmp_path / "samples.parquet").to_pylist()
    for row in table[:25]:
        with Image.open(coco_mini / row["source_key"]) as im:
            upright = ImageOps.exif_transpose(im).convert("RGB")
            assert (row["width"], row["height"]) == upright.size
            theirs = imagehash.phash(upright).hash
        ours = uint64_to_bits(row["phash"]).reshape(8, 8)
        assert (ours != theirs).sum() <= 2
    assert all(len(r["token_counts"]) == len(r["captions_norm"]) for r in table)
    assert all(0 < t < 100 for r in table for t in r["token_counts"])  # MiniLM word pieces
    assert len({r["phash"] for r in table}) == 159
    assert len({r["caption_simhash"] for r in table}) == 159
    assert set(json.loads(table[0]["extra"])) == {"coco_id"}


@pytest.mark.slow
def test_sixteen_photos_with_the_real_default_encoders(coco_raw: Path, tmp_path: Path) -> None:
    """Embeddings on with EfficientNet-Lite0 and all-MiniLM-L6-v2 (the offline defaults)."""
    import pyarrow as pa

    rows = pq.read_table(coco_raw / "samples.parquet").slice(0, 16)
    raw16 = tmp_path / "raw16"
    for rel in rows[
        "image_path"
    ].to_pylist():  # a store symlinked from outside would be path_escape
        (raw16 / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(coco_raw / rel, raw16 / rel)
    pq.write_table(
        pa.Table.from_pylist(rows.to_pylist(), schema=rows.schema), raw16 / "samples.parquet"
    )

    params = PreprocessParams(n_workers=1, shard_size=8, batch_size=8, device="cpu")
    out = tmp_path / "out"
    metrics = run(params, raw16, out)
    assert metrics["kept"] == 16
    image = np.load(out / "features" / "image.npy")
    text = np.load(out / "features" / "text.npy")
    assert image.shape == (16, 1280)
    assert text.shape == (16, 384)
    assert np.allclose(np.linalg.norm(image, axis=1), 1, atol=1e-5)
    assert np.allclose(np.linalg.norm(text, axis=1), 1, atol=1e-5)
    meta = json.loads((out / "features" / "meta.json").read_text())
    assert meta["image"]["encoder"] == "efficientnet-lite0"
    assert meta["text"]["encoder"] == "sentence-transformers/all-MiniLM-L6-v2"
    table = pq.read_table(out / "samples.parquet")
    assert table["feature_row"].to_pylist() == list(range(16))
    # photos whose COCO labels overlap are closer, on average, in both spaces
    labels = [set(x) for x in table["labels"].to_pylist()]
    share = np.array([[bool(a & b) for b in labels] for a in labels])
    off = ~np.eye(16, dtype=bool)
    for emb in (image, text):
        sims = emb @ emb.T
        assert sims[share & off].mean() > sims[~share & off].mean()
