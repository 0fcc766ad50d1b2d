"""A 2-D map of the samples from their embeddings, computed once per data version.

:func:`sample_map` lays out every sample preprocess embedded (``data/interim/features/image.npy``
or ``text.npy``; quarantined ones included, so a map can show where the rules cut) with one of

* ``umap`` - UMAP (umap-learn) on the first 50 principal components: neighbourhoods and
  clusters kept, the usual choice (FiftyOne Brain's and LightlyStudio's maps); seeded, which
  makes umap-learn run single-threaded (its parallel mode is not reproducible), and the first
  call in a process pays numba's JIT compilation;
* ``pca`` - the first two principal components (scikit-learn): a linear view in well under a
  second even for 100,000 samples, a first look while UMAP would still be compiling;
* ``tsne`` - t-SNE (scikit-learn, Barnes-Hut, on 50 principal components): local structure,
  slow beyond a few tens of thousands of samples.

The result is cached under ``<project>/.cmrops/cache/map/`` by the SHA-256 of the feature file,
the sample-to-row mapping, the method, its settings and the seed: one computation per data
version, shared by every dashboard session. :func:`attributes` gives what a map is coloured by.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from cmrops import io

__all__ = [
    "METHODS",
    "MapError",
    "SampleMap",
    "attributes",
    "cache_path",
    "compute",
    "features_hash",
    "sample_map",
]

METHODS = ("umap", "pca", "tsne")
MODALITIES = ("image", "text")
PCA_DIMS = 50  # UMAP and t-SNE start from this many principal components
VERSION = 1


class MapError(ValueError):
    """No embeddings to map, or they cannot be read; the message says what to run."""


def compute(
    x: np.ndarray,
    method: str = "umap",
    seed: int = 0,
    *,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    perplexity: float = 30.0,
) -> np.ndarray:
    """2-D coordinates (float32, n x 2) of the rows of ``x`` by ``method`` (see module
    docstring), deterministic for a seed."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"expected a 2-D array of embeddings, got shape {x.shape}")
    n = len(x)
    if n < 3 or x.shape[1] < 2:  # nothing to lay out: a line of points
        return np.column_stack([np.arange(n, dtype=np.float32), np.zeros(n, np.float32)])
    from sklearn.decomposition import PCA

    dims = 2 if method == "pca" else min(PCA_DIMS, x.shape[1], n - 1)
    reduced = PCA(dims, random_state=seed, svd_solver="auto").fit_transform(x)
    if method == "pca":
        out = reduced
    elif method == "umap":
        import umap

        reducer = umap.UMAP(
            n_components=2,
            n_neighbors=max(2, min(n_neighbors, n - 1)),
            min_dist=min_dist,
            random_state=seed,
            n_jobs=1,
        )
        out = reducer.fit_transform(reduced)
    else:
        from sklearn.manifold import TSNE

        out = TSNE(
            2, perplexity=min(perplexity, max(1.0, (n - 1) / 3)), init="pca", random_state=seed
        ).fit_transform(reduced)
    return np.ascontiguousarray(out, dtype=np.float32)


def features_hash(path: Path, chunk: int = 1 << 22) -> str:
    """SHA-256 of a file's bytes, read in chunks (a 100,000 x 384 float32 file is 150 MB)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class SampleMap:
    sample_ids: list[str]
    xy: np.ndarray  # float32, len(sample_ids) x 2
    method: str
    modality: str
    seed: int
    seconds: float  # of the computation (when it was cached: then)
    cached: bool  # read from the cache this time
    key: str


def _embedded(project: Path, modality: str) -> tuple[list[str], np.ndarray, Path]:
    """sample ids and feature rows of the embedded interim samples, and the feature file."""
    root = Path(project)
    samples = root / "data/interim/samples.parquet"
    feats = root / "data/interim/features" / f"{modality}.npy"
    if not samples.is_file() or not feats.is_file():
        missing = [str(p.relative_to(root)) for p in (samples, feats) if not p.is_file()]
        raise MapError(
            f"no {modality} embeddings to map (missing {', '.join(missing)}): run `cmrops "
            "preprocess` with preprocess.embeddings on"
        )
    try:
        t = pq.read_table(samples, columns=["sample_id", "feature_row"])
    except Exception as e:  # pyarrow raises several types for damaged files
        raise MapError(f"{samples} cannot be read ({e}); rerun `cmrops preprocess`") from e
    ids = t["sample_id"].to_pylist()
    rows = np.asarray(t["feature_row"].fill_null(-1).to_numpy(), dtype=np.int64)
    keep = rows >= 0
    order = np.argsort(np.asarray(ids, dtype=object)[keep], kind="stable")
    kept_ids = [s for s, k in zip(ids, keep, strict=True) if k]
    return [kept_ids[i] for i in order], rows[keep][order], feats


def cache_path(
    project: Path, method: str = "umap", seed: int = 0, modality: str = "image", **settings: Any
) -> Path:
    """Where :func:`sample_map` keeps (or will keep) this map of the current data version: the
    file exists when it was computed before."""
    return _keyed(project, method, seed, modality, settings)[0]


def _keyed(
    project: Path, method: str, seed: int, modality: str, settings: dict[str, Any]
) -> tuple[Path, str, list[str], np.ndarray, Path]:
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {', '.join(MODALITIES)}, got {modality!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    ids, rows, feats = _embedded(project, modality)
    if not ids:
        raise MapError("no sample has an embedding (feature_row = -1 everywhere)")
    h = hashlib.sha256(f"v{VERSION} {method} {seed} {sorted(settings.items())}".encode())
    h.update(features_hash(feats).encode())
    h.update("\n".join(ids).encode())
    h.update(rows.tobytes())
    key = h.hexdigest()[:20]
    path = io.project_cache(project, "map") / f"{modality}-{method}-{key}.parquet"
    return path, key, ids, rows, feats


def sample_map(
    project: Path, method: str = "umap", seed: int = 0, modality: str = "image", **settings: Any
) -> SampleMap:
    """The map of the project's embedded samples (see module docstring), from the cache when
    this data version was mapped before with the same method, settings and seed."""
    path, key, ids, rows, feats = _keyed(project, method, seed, modality, settings)
    if path.is_file():
        try:
            t = pq.read_table(path)
            meta = json.loads((t.schema.metadata or {}).get(b"cmrops", b"{}"))
            xy = np.column_stack([t["x"].to_numpy(), t["y"].to_numpy()]).astype(np.float32)
            return SampleMap(
                t["sample_id"].to_pylist(),
                xy,
                method,
                modality,
                seed,
                float(meta.get("seconds", 0.0)),
                True,
                key,
            )
        except Exception:  # a damaged cache file is recomputed
            path.unlink(missing_ok=True)
    try:
        x = np.load(feats, mmap_mode="r", allow_pickle=False)
        if rows.max() >= len(x):
            raise MapError(f"{feats} has {len(x)} rows but the samples refer to row {rows.max()}")
        x = np.asarray(x[rows], dtype=np.float32)
    except (OSError, ValueError) as e:
        raise MapError(f"{feats} cannot be read ({e}); rerun `cmrops preprocess`") from e
    started = time.perf_counter()
    xy = compute(x, method, seed, **settings)
    seconds = time.perf_counter() - started
    meta = {
        "method": method,
        "seed": seed,
        "modality": modality,
        "seconds": round(seconds, 3),
        "settings": settings,
        "rows": len(ids),
    }
    table = pa.table({"sample_id": ids, "x": xy[:, 0], "y": xy[:, 1]}).replace_schema_metadata(
        {"cmrops": json.dumps(meta, sort_keys=True)}
    )
    with io.atomic_output(path, "wb") as fh:
        pq.write_table(table, fh, compression="zstd")
    return SampleMap(ids, xy, method, modality, seed, seconds, False, key)


# --------------------------------------------------------------------------- colours


def _column(project: Path, rel: str, columns: list[str]) -> pd.DataFrame | None:
    p = Path(project) / rel
    if not p.is_file():
        return None
    try:
        return pq.read_table(p, columns=columns).to_pandas()
    except Exception as e:  # pyarrow raises several types for damaged files
        raise MapError(f"{p} cannot be read ({e})") from e


def attributes(project: Path, sample_ids: Sequence[str]) -> pd.DataFrame:
    """What a map point is coloured and labelled by, one row per sample id (in that order):
    ``label`` (its most confident label, ties to the rarest; "(none)"), ``labels`` (all),
    ``split`` (its set, "(not in split)" when clean dropped it or split has not run),
    ``quarantine`` (clean's reason, or "kept"), ``dup_group`` (its near-duplicate image group,
    or "(none)"), ``caption`` (the first), ``image_path`` (under data/raw)."""
    out = pd.DataFrame({"sample_id": list(sample_ids)})
    samples = _column(
        project, "data/interim/samples.parquet", ["sample_id", "captions", "image_path"]
    )
    if samples is not None:
        samples["caption"] = samples["captions"].map(lambda c: c[0] if len(c) else "")
        out = out.merge(samples[["sample_id", "caption", "image_path"]], "left", "sample_id")
    labels = _column(project, "data/labelled/labels.parquet", ["sample_id", "label", "confidence"])
    if labels is not None and len(labels):
        freq = labels["label"].value_counts()
        labels["rarity"] = labels["label"].map(freq)
        order = ["sample_id", "confidence", "rarity"]
        top = labels.sort_values(order, ascending=[True, False, True])
        first = top.drop_duplicates("sample_id").set_index("sample_id")["label"]
        joined = labels.sort_values("label").groupby("sample_id")["label"].agg(", ".join)
        out["label"] = out["sample_id"].map(first).fillna("(none)")
        out["labels"] = out["sample_id"].map(joined).fillna("")
    else:
        out["label"], out["labels"] = "(none)", ""
    split = _column(project, "data/split/assignments.parquet", ["sample_id", "split"])
    smap = split.set_index("sample_id")["split"] if split is not None else pd.Series(dtype=str)
    out["split"] = out["sample_id"].map(smap).fillna("(not in split)")
    q = _column(project, "data/clean/quarantine.parquet", ["sample_id", "reason"])
    qmap = q.set_index("sample_id")["reason"] if q is not None else pd.Series(dtype=str)
    out["quarantine"] = out["sample_id"].map(qmap).fillna("kept")
    g = _column(project, "data/clean/groups.parquet", ["sample_id", "image_group"])
    gmap = (
        g.dropna().set_index("sample_id")["image_group"] if g is not None else pd.Series(dtype=str)
    )
    out["dup_group"] = out["sample_id"].map(gmap).fillna("(none)")
    for c in ("caption", "image_path"):
        if c not in out:
            out[c] = None
    return out
