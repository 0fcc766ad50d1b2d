"""cmrops: cross-modal (image-text) retrieval datasets and the hashing models that search them.

The public API of the Hamming engine (implemented in Rust, :mod:`cmrops._core`)::

    codes = cmrops.pack_bits(bits)                  # (n, n_bits) {0,1}/bool/±1 -> (n, words) uint64
    index = cmrops.HammingIndex(codes)              # exact; all cores unless n_threads=
    dist, ids = index.search(queries, k=10)         # sorted by (distance, id)
    lims, dist, ids = index.range_search(queries, radius=4)
    pairs = cmrops.near_duplicates(codes, radius=4) # every pair within the radius, i < j
    groups = cmrops.duplicate_groups(codes, radius=4)
    total, relevant = cmrops.hamming_histogram(q, db, q_labels, db_labels)

Bit order: bit ``j`` of a code is bit ``j % 64`` of ``uint64`` word ``j // 64`` (see
:mod:`cmrops.codes`); as bytes this is FAISS's binary layout.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cmrops._core import (
        CorruptIndexError,
        HammingIndex,
        duplicate_groups,
        get_simd_path,
        near_duplicates,
        set_simd_path,
        simd_paths,
    )
    from cmrops.codes import (
        from_faiss,
        hamming_histogram,
        n_words,
        pack_bits,
        pack_labels,
        to_faiss,
        unpack_bits,
    )

__version__ = "0.1.0"

#: The public API, loaded on first use: ``import cmrops.schedule`` (the Airflow DAG, at parse
#: time) must not pay for numpy and the Rust extension.
_LAZY = {
    **dict.fromkeys(
        ("CorruptIndexError", "HammingIndex", "duplicate_groups", "get_simd_path",
         "near_duplicates", "set_simd_path", "simd_paths"),
        "cmrops._core",
    ),
    **dict.fromkeys(
        ("from_faiss", "hamming_histogram", "n_words", "pack_bits", "pack_labels", "to_faiss",
         "unpack_bits"),
        "cmrops.codes",
    ),
}  # fmt: skip


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'cmrops' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "CorruptIndexError",
    "HammingIndex",
    "__version__",
    "duplicate_groups",
    "from_faiss",
    "get_simd_path",
    "hamming_histogram",
    "n_words",
    "near_duplicates",
    "pack_bits",
    "pack_labels",
    "set_simd_path",
    "simd_paths",
    "to_faiss",
    "unpack_bits",
]
