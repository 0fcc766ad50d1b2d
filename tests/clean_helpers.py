"""Builders of small interim / labelled folders for the clean and split tests (no tests here).

``interim(rows)`` writes ``samples.parquet`` in the INTERIM_SAMPLES contract from a few fields
per row - everything else gets a harmless default (a unique image, random 64-bit hashes far from
each other, 100 x 100 pixels, word token counts) - plus ``features/meta.json``. ``labelled(...)``
writes what the label stage hands on: ``labels.parquet``, ``evidence.parquet`` and
``vocabulary.json``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from cmrops import io
from cmrops.schema import INTERIM_SAMPLES, LABEL_EVIDENCE, LABELS


def sid(i: int | str) -> str:
    """A sample id (16 hex chars) for a test row name."""
    return hashlib.sha256(f"row-{i}".encode()).hexdigest()[:16]


def rand64(seed: int | str) -> int:
    """A random-looking 64-bit value (far from other values with overwhelming probability)."""
    return int.from_bytes(hashlib.blake2b(f"h-{seed}".encode(), digest_size=8).digest(), "little")


def flip(value: int, bits: Iterable[int]) -> int:
    """``value`` with the given bit positions flipped."""
    for b in bits:
        value ^= 1 << b
    return value


def words(text: str) -> int:
    return len(re.findall(r"\w+|[^\w\s]", text))


def row(name: int | str, **over: Any) -> dict[str, Any]:
    """One interim row named ``name``; ``over`` replaces any column."""
    captions = over.pop("captions", [f"a distinct caption number {name} about things"])
    r: dict[str, Any] = {
        "sample_id": sid(name),
        "source": "test",
        "source_key": f"key-{name}",
        "image_sha256": hashlib.sha256(f"img-{name}".encode()).hexdigest(),
        "image_path": f"objects/{name}",
        "image_bytes": 1000,
        "captions": list(captions),
        "labels": [],
        "extra": "{}",
        "width": 100,
        "height": 100,
        "format": "JPEG",
        "n_frames": 1,
        "phash": rand64(f"p{name}"),
        "dhash": rand64(f"d{name}"),
        "caption_simhash": rand64(f"s{name}"),
        "captions_norm": list(captions),
        "caption_chars_cut": 0,
        "token_counts": [words(c) for c in captions],
        "feature_row": -1,
    }
    r.update(over)
    return r


def interim(
    folder: Path,
    rows: Sequence[Mapping[str, Any]],
    *,
    image: np.ndarray | None = None,
    text: np.ndarray | None = None,
    aligned: bool | None = None,
) -> Path:
    """Write ``folder/samples.parquet`` and ``folder/features/`` (embeddings when given: row i of
    the arrays belongs to rows[i], feature_row set accordingly)."""
    rows = [dict(r) for r in rows]
    if image is not None:
        for i, r in enumerate(rows):
            r["feature_row"] = i
    table = pa.Table.from_pylist(rows, schema=INTERIM_SAMPLES)
    folder.mkdir(parents=True, exist_ok=True)
    io.write_parquet(folder / "samples.parquet", table)
    feat = folder / "features"
    feat.mkdir(exist_ok=True)
    if image is None:
        meta: dict[str, Any] = {"embeddings": False, "rows": 0}
    else:
        assert text is not None
        io.write_npy(feat / "image.npy", image.astype(np.float32))
        io.write_npy(feat / "text.npy", text.astype(np.float32))
        meta = {
            "embeddings": True,
            "rows": len(rows),
            "image": {"encoder": "test-image", "dim": int(image.shape[1])},
            "text": {"encoder": "test-text", "dim": int(text.shape[1])},
        }
        if aligned is not None:
            meta["aligned"] = aligned
    io.write_json(feat / "meta.json", meta)
    return folder


def labelled(
    folder: Path,
    effective: Mapping[str, Sequence[str]],
    *,
    vocabulary: Sequence[str] | None = None,
    methods: Mapping[str, Mapping[str, Sequence[str]]] | None = None,
) -> Path:
    """Write the label stage's hand-over: ``effective`` sample_id -> labels (labels.parquet),
    ``methods`` method -> sample_id -> passed labels (evidence.parquet), the vocabulary."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = sorted(
        set(vocabulary) if vocabulary is not None else {x for v in effective.values() for x in v}
    )
    rows = [
        {"sample_id": s, "label": lab, "source": "auto", "method": "provided", "confidence": 1.0}
        for s in sorted(effective)
        for lab in sorted(set(effective[s]))
    ]
    io.write_parquet(folder / "labels.parquet", pa.Table.from_pylist(rows, schema=LABELS))
    ev = []
    for method, per in (methods or {}).items():
        for s, labs in per.items():
            for lab in sorted(set(labs)):
                ev.append(
                    {
                        "sample_id": s,
                        "label": lab,
                        "source": "auto",
                        "method": method,
                        "confidence": 1.0,
                        "passed": True,
                        "selected": False,
                        "detail": "{}",
                    }
                )
    ev.sort(key=lambda r: (r["sample_id"], r["label"], r["source"], r["method"]))
    io.write_parquet(folder / "evidence.parquet", pa.Table.from_pylist(ev, schema=LABEL_EVIDENCE))
    io.write_json(folder / "vocabulary.json", {"labels": vocab, "size": len(vocab), "terms": {}})
    return folder


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))
