"""Small builders shared by the collect tests: tiny images, params, a run, its tables."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from PIL import Image

from cmrops.params import from_dict
from cmrops.stages.collect import CollectParams, run


def image_bytes(
    colour: tuple[int, int, int] = (200, 30, 30),
    fmt: str = "JPEG",
    size: tuple[int, int] = (12, 10),
) -> bytes:
    """A small real image, different bytes for different colours."""
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, fmt)
    return buf.getvalue()


def write_image(
    path: Path, colour: tuple[int, int, int] = (200, 30, 30), fmt: str = "JPEG"
) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = image_bytes(colour, fmt)
    path.write_bytes(data)
    return data


def params(*sources: dict[str, Any], **top: Any) -> CollectParams:
    """CollectParams built through the strict loader, as from params.yaml."""
    return from_dict(CollectParams, {"sources": list(sources), **top}, where="test:collect")


def collect(
    out: Path, *sources: dict[str, Any], base: Path | None = None, **top: Any
) -> dict[str, Any]:
    return run(params(*sources, **top), out, base_dir=base)


def rows(out: Path, table: str = "samples") -> list[dict[str, Any]]:
    return pq.read_table(out / f"{table}.parquet").to_pylist()


def by_key(out: Path, table: str = "samples") -> dict[str, dict[str, Any]]:
    return {r["source_key"]: r for r in rows(out, table)}


def reasons(out: Path) -> dict[str, str]:
    """source_key -> quarantine reason."""
    return {r["source_key"]: r["reason"] for r in rows(out, "quarantine")}


def check_balance(out: Path, metrics: dict[str, Any]) -> None:
    """inputs = kept + quarantined, in the metrics and in the tables."""
    samples, quarantine = rows(out), rows(out, "quarantine")
    assert metrics["inputs"] == metrics["kept"] + metrics["quarantined"]
    assert metrics["kept"] == len(samples)
    assert metrics["quarantined"] == len(quarantine)
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert all(r["stage"] == "collect" for r in quarantine)
    for s in metrics["sources"].values():
        assert s["inputs"] == s["kept"] + s["quarantined"]
