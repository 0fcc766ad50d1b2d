"""The cross-modal hashing benchmark layout: the release's embeddings and labels as the
MIRFlickr / NUS-WIDE feature files of DJSRH, DCMH and their successors ship them, in the names
``cmrops import-benchmark`` reads back (:mod:`cmrops.benchmarks_data`).

One file, ``<name>.mat`` (MATLAB v7.3: HDF5 with the 512-byte MATLAB header, every variable
column-major with its ``MATLAB_class``, so MATLAB's ``load`` reads it too) or ``<name>.h5``
(row-major, as the deep-feature ``.h5`` releases), holding per part

==========  ==========================  ===============================================
part        variables                   samples
==========  ==========================  ===============================================
query       ``I_te``, ``T_te``, ``L_te``  the query set (a ratio split's ``test`` set)
database    ``I_db``, ``T_db``, ``L_db``  the retrieval database (ratio: ``train`` + ``val``)
train       ``I_tr``, ``T_tr``, ``L_tr``  the training samples (``in_train``)
==========  ==========================  ===============================================

``I_*`` are the image (or video / audio) embeddings and ``T_*`` the text embeddings of
preprocess (float32, as stored: ``import-benchmark --no-normalize`` gives them back exactly),
``L_*`` multi-hot labels (uint8 / MATLAB logical) over ``label_names`` (the release's label
vocabulary, sorted), left out when no sample has a label. ``ids_te`` / ``ids_db`` / ``ids_tr``
hold the sample ids and ``label_names`` the labels, as text (MATLAB ``char`` rows; HDF5 byte
strings), which importers skip as non-numeric. Arrays are written in blocks of
:data:`BLOCK` rows from the memory-mapped embeddings, and HDF5 object times are not stored, so
the same release gives the same bytes.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from cmrops.export.base import ExportOptions, Progress, write_card
from cmrops.export.stream import ReleaseSamples

BLOCK = 4096
PARTS = (("query", "te"), ("database", "db"), ("train", "tr"))
FEATURES = "data/interim/features"


def write(
    samples: ReleaseSamples,
    out: Path,
    progress: Progress,
    options: ExportOptions,
    card: dict[str, Any],
    mtime: int,
) -> dict[str, Any]:
    from cmrops import datacard

    write_card(out, card, progress, datacard.markdown(card))
    data = samples.data
    rows_of = _feature_rows(samples)
    parts: dict[str, list[tuple[str, int, list[str]]]] = {p: [] for p, _ in PARTS}
    ids: list[str] = []
    ratio = any(s in samples.sets for s in ("train", "val", "test"))
    for s in samples:
        ids.append(s.sample_id)
        entry = (s.sample_id, rows_of[s.sample_id], s.labels)
        if s.split in ("query", "test"):
            parts["query"].append(entry)
        elif s.split in ("database", "train", "val"):
            parts["database"].append(entry)
        if s.in_train or (ratio and s.split == "train"):
            parts["train"].append(entry)
    empty = [p for p, v in parts.items() if not v]
    if empty:
        raise ValueError(
            f"release {data.release.id}: the hashing layout needs query, database and training "
            f"samples; {', '.join(empty)} would be empty (sets exported: "
            f"{', '.join(samples.sets)})"
        )
    if any(r < 0 for v in parts.values() for _, r, _ in v):
        raise ValueError(f"release {data.release.id}: samples without embeddings (feature_row "
                         "-1): the hashing layout needs preprocess.embeddings: true")  # fmt: skip
    image = np.load(data.path(f"{FEATURES}/image.npy"), mmap_mode="r", allow_pickle=False)
    text = np.load(data.path(f"{FEATURES}/text.npy"), mmap_mode="r", allow_pickle=False)
    vocab = sorted({lab for v in parts.values() for _, _, labs in v for lab in labs})
    name = f"{_name(card)}.{options.container}"
    if not progress.done(name):
        tmp = out / f".{name}.tmp"
        tmp.unlink(missing_ok=True)
        _write_file(tmp, options.container == "mat", parts, image, text, vocab, mtime)
        os.replace(tmp, out / name)
        progress.record(name, len(ids))
    layout = {
        "file": name,
        "container": options.container,
        "variables": {
            p: [f"{m}_{suffix}" for m in ("I", "T", *(["L"] if vocab else []))]
            for p, suffix in PARTS
        },
        "image_dim": int(image.shape[1]),
        "text_dim": int(text.shape[1]),
        "labels": len(vocab),
        "parts": {p: len(v) for p, v in parts.items()},
        "read_back": f"cmrops import-benchmark {name} --no-normalize --out DIR",
    }
    with progress.unit("hashing.json") as fh:
        fh.write((json.dumps(layout, indent=2, sort_keys=True) + "\n").encode())
    return {"sample_ids": ids, "sets": dict(samples.sets), "hashing": layout}


def _name(card: dict[str, Any]) -> str:
    raw = str(card.get("name") or "cmrops")
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in raw).strip("_")
    return safe or "cmrops"


def _feature_rows(samples: ReleaseSamples) -> dict[str, int]:
    from cmrops import io
    from cmrops.export.stream import CLEAN

    out: dict[str, int] = {}
    for batch in io.iter_parquet(samples.data.path(CLEAN), columns=["sample_id", "feature_row"]):
        sid, row = batch.column(0).to_pylist(), batch.column(1).fill_null(-1).to_pylist()
        out.update(zip(sid, row, strict=True))
    return out


def _write_file(
    path: Path,
    matlab: bool,
    parts: dict[str, list[tuple[str, int, list[str]]]],
    image: np.ndarray,
    text: np.ndarray,
    vocab: list[str],
    mtime: int,
) -> None:
    import h5py

    col = {lab: j for j, lab in enumerate(vocab)}
    kw: dict[str, Any] = {"userblock_size": 512} if matlab else {}
    with h5py.File(path, "w", libver=("earliest", "v110"), track_order=False, **kw) as f:
        for part, suffix in PARTS:
            entries = parts[part]
            n = len(entries)
            rows = np.asarray([r for _, r, _ in entries], np.int64)
            for var, src in ((f"I_{suffix}", image), (f"T_{suffix}", text)):
                ds = _dataset(f, var, n, src.shape[1], np.float32, matlab, "single")
                for lo in range(0, n, BLOCK):
                    block = np.asarray(src[rows[lo : lo + BLOCK]], np.float32)
                    _put(ds, lo, block, matlab)
            if vocab:
                ds = _dataset(f, f"L_{suffix}", n, len(vocab), np.uint8, matlab, "logical")
                for lo in range(0, n, BLOCK):
                    chunk = entries[lo : lo + BLOCK]
                    hot = np.zeros((len(chunk), len(vocab)), np.uint8)
                    for i, (_, _, labs) in enumerate(chunk):
                        hot[i, [col[x] for x in labs]] = 1
                    _put(ds, lo, hot, matlab)
            _text(f, f"ids_{suffix}", [sid for sid, _, _ in entries], matlab)
        if vocab:
            _text(f, "label_names", vocab, matlab)
    if matlab:
        _matlab_header(path, mtime)


def _dataset(f: Any, name: str, n: int, d: int, dtype: Any, matlab: bool, cls: str) -> Any:
    shape = (d, n) if matlab else (n, d)  # MATLAB is column-major: (n, d) is stored (d, n)
    chunks = (d, min(n, BLOCK)) if matlab else (min(n, BLOCK), d)
    ds = f.create_dataset(name, shape=shape, dtype=dtype, chunks=chunks if n and d else None,
                          track_times=False)  # fmt: skip
    if matlab:
        ds.attrs["MATLAB_class"] = np.bytes_(cls)
    return ds


def _put(ds: Any, lo: int, block: np.ndarray, matlab: bool) -> None:
    if matlab:
        ds[:, lo : lo + len(block)] = block.T
    else:
        ds[lo : lo + len(block), :] = block


def _text(f: Any, name: str, values: list[str], matlab: bool) -> None:
    """A list of strings: a MATLAB char matrix (uint16, one padded row each) or HDF5 bytes."""
    width = max((len(v) for v in values), default=0)
    if matlab:
        codes = np.zeros((width, len(values)), np.uint16)  # (n, width) stored column-major
        for i, v in enumerate(values):
            codes[:, i] = [ord(c) if ord(c) <= 0xFFFF else ord("?") for c in v.ljust(width)]
        ds = f.create_dataset(name, data=codes, track_times=False)
        ds.attrs["MATLAB_class"] = np.bytes_("char")
        ds.attrs["MATLAB_int_decode"] = np.int32(2)
    else:
        f.create_dataset(name, data=np.asarray([v.encode() for v in values], f"S{max(width, 1)}"),
                         track_times=False)  # fmt: skip


def _matlab_header(path: Path, mtime: int) -> None:
    """The MAT-file v7.3 header in the HDF5 user block (text, subsystem offset, version 0x0200,
    endian 'IM'), dated by the release so the bytes do not change."""
    when = time.strftime("%a %b %d %H:%M:%S %Y", time.gmtime(mtime))
    text = f"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: {when} HDF5 schema 1.00 ."
    header = text.ljust(116).encode("ascii") + b"\x00" * 8 + b"\x00\x02" + b"IM"
    with open(path, "r+b") as fh:
        fh.write(header)
