"""The train stage's inputs: the upstream outputs read and cross-checked (:func:`load_inputs`),
and the rows each model trains, selects and is coded on (:func:`assign_roles`). Read by the stage
(:mod:`cmrops.stages.train`) and by each training worker process
(:mod:`cmrops.stages.train_models`), so both see the same arrays."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from cmrops import io

if TYPE_CHECKING:
    from cmrops.stages.train import TrainParams

log = logging.getLogger("cmrops.stages.train")  # the stage's logger: its lines read as before


# --------------------------------------------------------------------------- inputs


@dataclass
class Inputs:
    """The training data of every sample in the split, in ``sample_id`` order."""

    ids: list[str]
    split: np.ndarray  # str
    in_train: np.ndarray  # bool
    group_id: list[str]
    protocol: str
    split_seed: int | None
    image: np.ndarray  # (n, image_dim) float32
    text: np.ndarray
    labels: np.ndarray | None  # (n, n_labels) bool over the vocabulary, or None
    features: dict[str, Any]  # encoders and dims from features/meta.json
    aligned: tuple[bool, str] = (False, "")  # one aligned dual encoder embedded both, and why
    media: str = "image"  # what the "image" side is: image, video or audio (features/meta.json)
    labels_induced: bool = False  # vocabulary.json says the labels were induced from captions


def load_inputs(split: Path, clean: Path, interim: Path, labelled: Path | None) -> Inputs:
    """Read and cross-check the upstream outputs (see module docstring)."""
    from cmrops.labels.zeroshot import alignment as encoders_aligned

    path = split / "assignments.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found - run `cmrops split` first (or pass --split)")
    t = io.read_parquet(path)
    need = ("sample_id", "split", "in_train", "group_id", "protocol", "seed")
    missing = [c for c in need if c not in t.column_names]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)} (re-run `cmrops split`)")
    order = np.argsort(np.asarray(t["sample_id"].to_pylist(), dtype=object), kind="stable")
    t = t.take(pa.array(order))
    ids = t["sample_id"].to_pylist()
    if not ids:
        raise ValueError(f"{path}: no samples")
    if None in ids or len(set(ids)) != len(ids):
        raise ValueError(f"{path}: sample_id must be unique and non-null")
    protocols = sorted({str(p) for p in t["protocol"].to_pylist()})
    seeds = sorted({s for s in t["seed"].to_pylist() if s is not None})

    samples = clean / "samples.parquet"
    if not samples.is_file():
        raise FileNotFoundError(f"{samples}: not found - run `cmrops clean` first (or --clean)")
    c = io.read_parquet(samples)
    for col in ("sample_id", "feature_row"):
        if col not in c.column_names:
            raise ValueError(f"{samples}: missing column {col!r}")
    row_of = dict(
        zip(c["sample_id"].to_pylist(), c["feature_row"].fill_null(-1).to_pylist(), strict=True)
    )
    absent = [s for s in ids if s not in row_of]
    if absent:
        raise ValueError(
            f"{path}: {len(absent)} sample(s) are not in {samples} (e.g. {absent[0]}); the split "
            "is stale - re-run `cmrops split`"
        )
    rows = np.asarray([row_of[s] for s in ids], np.int64)
    if (rows < 0).any():
        raise ValueError(
            f"{samples}: {(rows < 0).sum()} sample(s) have no embeddings (feature_row -1); "
            "training needs preprocess.embeddings: true"
        )
    meta_path = interim / "features" / "meta.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path}: not found - run `cmrops preprocess` (or --interim)")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    arrays = []
    for kind in ("image", "text"):
        p = interim / "features" / f"{kind}.npy"
        if not p.is_file():
            raise FileNotFoundError(f"{p}: not found (preprocess.embeddings must be true)")
        arr = io.read_npy(p, mmap_mode="r")
        if arr.ndim != 2 or rows.max() >= len(arr):
            raise ValueError(
                f"{p}: shape {arr.shape} does not cover feature rows up to {rows.max()}"
            )
        x = np.ascontiguousarray(arr[rows], dtype=np.float32)
        if not np.isfinite(x).all():
            raise ValueError(f"{p}: non-finite values in the embeddings of split samples")
        arrays.append(x)
    features = {
        k: {"encoder": meta.get(k, {}).get("encoder"), "dim": int(a.shape[1])}
        for k, a in zip(("image", "text"), arrays, strict=True)
    }
    return Inputs(
        ids=ids,
        split=np.asarray(t["split"].to_pylist(), dtype=object),
        in_train=np.asarray(t["in_train"].fill_null(False).to_pylist(), bool),
        group_id=[
            g if g is not None else s for g, s in zip(t["group_id"].to_pylist(), ids, strict=True)
        ],
        protocol=protocols[0] if len(protocols) == 1 else "+".join(protocols),
        split_seed=int(seeds[0]) if len(seeds) == 1 else None,
        image=arrays[0],
        text=arrays[1],
        labels=_load_labels(labelled, ids) if labelled is not None else None,
        labels_induced=labelled is not None and _induced(labelled),
        features=features,
        aligned=encoders_aligned(meta),
        media=str(meta.get("media", "image")),
    )


def _induced(labelled: Path) -> bool:
    """Whether the label stage induced its vocabulary from the captions (vocabulary.json)."""
    path = labelled / "vocabulary.json"
    try:
        v = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    return bool(isinstance(v, dict) and v.get("induced"))


def _load_labels(labelled: Path, ids: list[str]) -> np.ndarray | None:
    """Multi-hot ``(n, len(vocabulary))`` labels, or None when no split sample has a label."""
    path = labelled / "labels.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found - run `cmrops label` first (or --labelled)")
    t = io.read_parquet(path)
    names: list[str]
    vocab_path = labelled / "vocabulary.json"
    if vocab_path.is_file():
        try:
            v = json.loads(vocab_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{vocab_path}: not valid JSON: {e}") from e
        v = v.get("labels", v) if isinstance(v, dict) else v
        names = list(v) if isinstance(v, dict | list) else []
    else:
        names = sorted({x for x in t["label"].to_pylist() if x is not None})
    col = {name: j for j, name in enumerate(names)}
    row = {s: i for i, s in enumerate(ids)}
    hot = np.zeros((len(ids), len(names)), bool)
    for sid, label in zip(t["sample_id"].to_pylist(), t["label"].to_pylist(), strict=True):
        i, j = row.get(sid), col.get(label)
        if i is not None and j is not None:
            hot[i, j] = True
    if not hot.any():
        log.warning("%s: no split sample has a vocabulary label; training without labels", path)
        return None
    return hot


def load_encoder_inputs(
    spec: str, ids: list[str], interim: Path, raw: Path, progress: bool
) -> tuple[np.ndarray, np.ndarray, str, tuple[int, int]]:
    """What a fine-tuned encoder trains on, for ``ids`` in order: ``uint8`` centre crops of the
    images at the encoder's input size, the first normalised caption's tokens, the encoder
    weights' SHA-256, and its feature widths (image, text)."""
    from cmrops.models import finetune

    directory = finetune.encoder_dir(spec)
    sha = finetune.weights_sha256(str(directory))
    path = interim / "samples.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found - run `cmrops preprocess` (or --interim)")
    t = io.read_parquet(path).select(["sample_id", "image_path", "captions_norm"])
    where = {s: i for i, s in enumerate(t["sample_id"].to_pylist())}
    absent = [s for s in ids if s not in where]
    if absent:
        raise ValueError(f"{path}: {len(absent)} split sample(s) missing (e.g. {absent[0]})")
    rows = [where[s] for s in ids]
    rel = t["image_path"].to_pylist()
    caps = t["captions_norm"].to_pylist()
    paths = [raw / rel[i] for i in rows]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"{missing[0]}: image missing ({len(missing)} in all); fine-tuning reads the images "
            "collect stored - pass --raw with collect's output folder"
        )
    captions = [caps[i][0] if caps[i] else "" for i in rows]
    size, _, _ = finetune.image_stats(directory)
    pixels = finetune.prepare_images(paths, size, progress)
    tokens = finetune.tokenize_captions(directory, captions)
    dim = finetune.projection_dim(directory)
    log.info(
        "fine-tuning %s: %d images at %dpx, captions of <= %d tokens",
        spec,
        len(ids),
        size,
        tokens.shape[2],
    )
    return pixels, tokens, sha, (dim, dim)


# --------------------------------------------------------------------------- roles


@dataclass
class Roles:
    """Row indices (into :class:`Inputs`) of each role."""

    train: np.ndarray
    val: np.ndarray
    query: np.ndarray
    database: np.ndarray
    val_database: np.ndarray  # what validation queries retrieve from (labelled data)
    val_from: str  # "split" (a val set) or "train_slice"


def assign_roles(data: Inputs, params: TrainParams) -> Roles:
    """Training / validation / query / database rows for the split's protocol."""
    split = data.split
    sets = set(split.tolist())
    idx = np.arange(len(split))
    if "query" in sets:  # hashing protocol (and imported benchmarks)
        pool, query, database = idx[data.in_train], idx[split == "query"], idx[split == "database"]
        val = idx[split == "val"]
    elif "test" in sets or "train" in sets:  # ratio protocol
        pool, val, query = idx[split == "train"], idx[split == "val"], idx[split == "test"]
        database = np.sort(np.concatenate([pool, val]))
    else:
        raise ValueError(
            f"assignments: unknown sets {sorted(sets)}; expected query/database or train/val/test"
        )
    val_from = "split"
    train = pool
    if not len(val) and params.val_fraction > 0:
        val_from = "train_slice"
        held = _held_out_groups(data, pool, params)
        val, train = pool[held], pool[~held]
    for name, rows in (("training", train), ("query", query), ("database", database)):
        if not len(rows):
            raise ValueError(f"assignments: the {name} set is empty (sets: {sorted(sets)})")
    if len(train) < 2:
        raise ValueError(f"assignments: {len(train)} training sample(s); need at least 2")
    val_db = train
    if len(val_db) > params.val_database_max:
        keys = np.asarray([_hash(params.seed, "db", data.ids[i]) for i in val_db], dtype=object)
        val_db = np.sort(val_db[np.argsort(keys, kind="stable")[: params.val_database_max]])
    return Roles(train, val, query, database, val_db, val_from)


def _held_out_groups(data: Inputs, pool: np.ndarray, params: TrainParams) -> np.ndarray:
    """Mask over ``pool``: whole near-duplicate groups, in the order of a hash of (seed, group),
    until ``val_fraction`` of the pool is held out (at least one sample, at most all but one).
    A group that would leave fewer than two training samples (the least training needs) is
    passed over while the pool has three or more."""
    target = min(max(1, round(params.val_fraction * len(pool))), len(pool) - 1)
    keep = 2 if len(pool) >= 3 else 1
    groups: dict[str, list[int]] = {}
    for j, i in enumerate(pool):
        groups.setdefault(data.group_id[i], []).append(j)
    held = np.zeros(len(pool), bool)
    count = 0
    for g in sorted(groups, key=lambda g: _hash(params.seed, "val", g)):
        if count >= target:
            break
        if count + len(groups[g]) > len(pool) - keep:
            continue
        held[groups[g]] = True
        count += len(groups[g])
    return held


def _hash(seed: int, purpose: str, key: str) -> str:
    return hashlib.sha256(f"{seed}:{purpose}:{key}".encode()).hexdigest()
