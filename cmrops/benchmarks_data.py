"""Import the feature files of the standard cross-modal hashing benchmarks.

The cross-modal hashing literature distributes MIRFlickr-25K, NUS-WIDE, MS-COCO and Wikipedia as
MATLAB ``.mat`` (v5, read with ``scipy.io.loadmat``; v7.3, which is HDF5, read with ``h5py``)
or ``.h5`` files of image features, text bag-of-words (or topic) vectors and labels.
:func:`import_benchmark` turns one such set - one file or several (DCMH ships one variable per
file) - into the files the train and evaluate stages read, under ``out``::

    out/clean/samples.parquet                 sample_id, feature_row, source, source_key (the
                                              other INTERIM_SAMPLES columns null)
    out/interim/features/{image,text}.npy     float32, L2-normalised rows (``normalize=True``)
    out/interim/features/meta.json
    out/labelled/labels.parquet               LABELS rows (source auto, method provided)
    out/labelled/vocabulary.json              {"labels": [...]}
    out/split/assignments.parquet             protocol "imported:<name>"
    out/split/manifests/                      the sets as sample-id lists and the queries with a
                                              near-duplicate in the database
                                              (:mod:`cmrops.splitting.manifests`)
    out/import.json                           what was read and how

so that ``cmrops train --split out/split --clean out/clean --interim out/interim --labelled
out/labelled ...`` and ``cmrops evaluate`` run on it unchanged.

**Variables** are recognised by name (case-insensitive): a modality - image ``I``, ``X``,
``image(s)``, ``img``; text ``T``, ``Y``, ``text(s)``, ``txt``, ``tag(s)``; labels ``L``,
``label(s)``, ``lab``, ``gnd`` - optionally followed (``_`` or ``-`` allowed) by a part: ``tr`` /
``train`` / ``training``, ``te`` / ``test`` / ``query`` / ``qr``, ``db`` / ``database`` /
``retrieval`` / ``ret``, or ``All`` / nothing (no fixed split). So ``I_tr``/``T_te``/``L_db``
(DJSRH, DSAH, ...), ``XAll``/``YAll``/``LAll`` (DCMH's MIRFlickr and NUS-WIDE), ``IAll``,
``ImgTrain``/``TagTrain``/``LabTrain`` and ``image``/``text``/``label`` all work, and so do the
part-first names of the deep-feature releases (``train_imgs_deep``, ``test_text``,
``train_imgs_labels`` - identical ``*_imgs_labels`` and ``*_texts_labels`` count once; a
``valid_*`` part is not read); ``keys`` maps
``"image"``, ``"text_query"``, ... to variable names where they do not. Other variables (file
names, cell arrays) are ignored; an image variable holding raw pixels (more than 2 dimensions) is
refused - run such images through collect/preprocess instead.

**Wikipedia** (Rasiwasia et al. 2010) is read in the layouts it circulates in: the hashing
``.mat`` (``I_tr`` 2173x128 SIFT BoVW, ``T_tr`` 2173x10 LDA, ``L_tr`` class ids 1..10, and
``I_te``/``T_te``/``L_te`` with 693 rows); the original release's ``raw_features.mat`` (the same
features, no labels) given together with ``trainset_txt_img_cat.list`` and
``testset_txt_img_cat.list`` (``text_id<TAB>image_id<TAB>category`` per row, read as
``L_tr``/``L_te``); and the deep-feature ``.h5py`` (``train_imgs_deep`` 4096-d,
``train_text`` 300-d doc2vec, ``train_imgs_labels``/``train_texts_labels``, ``test_*``).
:mod:`cmrops.benchmark_layouts` writes stand-ins of each.

**Orientation.** MATLAB stores matrices column-major, so ``h5py`` reads a v7.3 variable of shape
``(n, d)`` as ``(d, n)``; some ``.h5`` files are written that way too. Each part's sample count is
the dimension its image, text and label arrays share, and every array is turned to ``(n, d)``
(the file's convention breaks a tie). Labels are multi-hot ``(n, C)`` 0/1 arrays, or class ids
``(n,)`` / ``(n, 1)`` (Wikipedia: one of 10 categories; named by their id).

**Split.** With ``query``, ``database`` and ``train`` parts: query = the query part, database =
the database part, ``in_train`` = database samples that are also in the train part (matched by
content); a training sample absent from the database becomes split ``"train"`` (it trains, it is
never retrieved). With only ``train`` and ``query`` parts (Wikipedia): the database is the train
part. Without parts: ``query`` samples (seeded) become the queries, the rest the database, and
``train`` of the database samples are ``in_train`` - the DCMH protocol (MIRFlickr: query 2000,
train 10000; NUS-WIDE: 2100 / 10500; MS-COCO: 5000 / 10000).

**Near-duplicate queries** (:func:`near_duplicate_queries`): a query whose image or text row
equals a database row, or has cosine similarity >= ``near_duplicate_cosine`` (0.99) with one,
on the features as read (all-zero rows match nothing). They are listed in
``split/manifests/near_duplicate_queries.txt`` so that evaluate also reports the mAP without
them.

**Sample ids** are content-derived: the first 16 hex chars of the SHA-256 of a sample's image,
text and label rows (as float32), with an occurrence number when a part repeats a row exactly.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from cmrops import benchmark_files as structs
from cmrops import io
from cmrops.benchmark_files import (
    BenchmarkFormatError,
    Variable,
    _dense,
    read_file,
    read_variables,
)
from cmrops.ids import SAMPLE_ID_HEX
from cmrops.schema import ASSIGNMENTS, INTERIM_SAMPLES, LABELS
from cmrops.splitting.manifests import write_manifests

log = logging.getLogger(__name__)

__all__ = [
    "BenchmarkFormatError",
    "Variable",
    "classify",
    "import_benchmark",
    "near_duplicate_queries",
    "orient",
    "read_file",
    "read_variables",
]

#: Cosine similarity from which a database row counts as a near-duplicate of a query row.
NEAR_DUPLICATE_COSINE = 0.99

MODALITIES = ("image", "text", "labels")
PARTS = ("all", "train", "query", "database")
_MOD = {
    "image": "images?|imgs?|i|x",
    "text": "texts?|txts?|tags?|t|y",
    "labels": "labels?|labs?|l|gnd",
}
_PART = {
    "all": "all",
    "train": "train|training|tr",
    "query": "test|te|query|qr",
    "database": "database|db|retrieval|ret",
}
_KEY = re.compile(
    "^(?:"
    + "|".join(f"(?P<{m}>{p})" for m, p in _MOD.items())
    + ")[_-]?(?:"
    + "|".join(f"(?P<{k}>{p})" for k, p in _PART.items())
    + ")?$",
    re.IGNORECASE,
)
# Part first, as the deep-feature releases name them (``train_imgs_deep``, ``test_text``,
# ``train_texts_labels``, ``valid_imgs_deep``: a validation part is not read).
_PART_FIRST = re.compile(
    "^(?:(?P<train>train|training|tr)|(?P<query>test|te|query)|(?P<database>database|db|retrieval))"
    "_(?:(?P<image>images?|imgs?)|(?P<text>texts?|txts?|tags?))"
    "(?:_(?P<labels>labels?|labs?)|_(?:deep|vgg|feat|features?|doc2vec|vec|bow))?$",
    re.IGNORECASE,
)


# --------------------------------------------------------------------------- layout


#: Index variables (``ind_train``, ``test_idx``, ...): 0/1-based sample numbers of a part.
_INDEX = re.compile(
    r"^(?:(?:ind|idx|index|indices|inds)_?(?P<a>train|tr|test|te|query|db|database|retrieval)"
    r"|(?P<b>train|tr|test|te|query|db|database|retrieval)_?(?:ind|idx|index|indices|inds))$",
    re.IGNORECASE,
)
INDEX_KEYS = {"train_index": "train", "test_index": "query", "database_index": "database"}
_HOW = (
    "name them: cmrops import-benchmark FILE --image VAR --text VAR [--labels VAR] "
    "[--train-index VAR --test-index VAR] (VAR: a variable or a dotted path into a struct, "
    "e.g. data.X1)"
)


def _leaf(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def _part_of(word: str) -> str:
    for part, pattern in _PART.items():
        if re.fullmatch(pattern, word, re.IGNORECASE):
            return part
    return "query" if word.lower() in ("test", "te") else word


def index_variables(
    variables: Mapping[str, Variable], keys: Mapping[str, str] | None = None
) -> dict[str, Variable]:
    """``{part: index variable}``: recognised by name (``ind_train``, ``split.ind_test``) or
    given in ``keys`` as ``train_index`` / ``test_index`` / ``database_index``."""
    found: dict[str, list[Variable]] = {}
    for name, var in variables.items():
        m = _INDEX.match(_leaf(name))
        if m:
            found.setdefault(_part_of(m.group("a") or m.group("b")), []).append(var)
    for spec, name in (keys or {}).items():
        if spec in INDEX_KEYS:
            found[INDEX_KEYS[spec]] = [variables[_resolve(name, variables)]]
    out = {}
    for part, vs in found.items():
        if len(vs) > 1:
            raise BenchmarkFormatError(
                f"several variables look like the {part} indices: "
                f"{', '.join(v.key for v in vs)}; choose one with --{part}-index"
            )
        out[part] = vs[0]
    return out


def _resolve(name: str, variables: Mapping[str, Variable]) -> str:
    try:
        return structs.resolve(name, variables)
    except KeyError as e:
        every = {k: structs.describe(v.array) for k, v in variables.items()}
        raise BenchmarkFormatError(
            f"{e.args[0]}; the file holds:\n{structs.listing(every)}"
        ) from None


def classify(
    variables: Mapping[str, Variable],
    keys: Mapping[str, str] | None = None,
    found: Mapping[str, str] | None = None,
) -> dict[str, dict[str, Variable]]:
    """``{part: {modality: variable}}`` from variable names (``keys`` overrides: ``"image"``,
    ``"labels_train"``, ...; a name may be a dotted path into a struct, or its unique end).
    ``found`` describes every variable of the files, for the message when nothing is
    recognised."""
    chosen: dict[tuple[str, str], list[Variable]] = {}
    for name, var in variables.items():
        m = _KEY.match(_leaf(name)) or _PART_FIRST.match(_leaf(name))
        if not m:
            continue
        groups = {k for k, v in m.groupdict().items() if v is not None}
        mod = "labels" if "labels" in groups else next(k for k in groups if k in MODALITIES)
        part = next((k for k in groups if k in PARTS), "all")
        chosen.setdefault((part, mod), []).append(var)
    for spec, name in (keys or {}).items():
        if spec in INDEX_KEYS:
            continue
        name = _resolve(name, variables)
        mod, _, part = spec.partition("_")
        part = part or "all"
        if mod not in MODALITIES or part not in PARTS:
            raise BenchmarkFormatError(
                f"keys: {spec!r} is not <modality>[_<part>] with modality in {MODALITIES} and "
                f"part in {PARTS}"
            )
        if name not in variables:
            raise BenchmarkFormatError(
                f"keys: variable {name!r} not found; have {sorted(variables)}"
            )
        for (p, m), vs in list(chosen.items()):  # an explicit key replaces guesses for its slot
            if m == mod:
                chosen[p, m] = [v for v in vs if v.key != name]
        chosen[part, mod] = [variables[name]]
    layout: dict[str, dict[str, Variable]] = {}
    for (part, mod), vs in chosen.items():
        vs = [v for v in vs if mod != "image" or _image_ok(v, vs)]
        if not vs:
            continue
        if len(vs) > 1 and mod == "labels" and _all_equal(vs):
            vs = sorted(vs, key=lambda v: v.key)[:1]  # train_imgs_labels == train_texts_labels
        if len(vs) > 1:
            raise BenchmarkFormatError(
                f"several variables look like the {mod} of part {part!r}: "
                f"{', '.join(v.key for v in vs)}; choose one with keys={{'{mod}_{part}': ...}}"
            )
        layout.setdefault(part, {})[mod] = vs[0]
    every = dict(found) if found else {k: structs.describe(v.array) for k, v in variables.items()}
    if not layout:
        raise BenchmarkFormatError(
            "no image/text/label variables recognised; the file(s) hold:\n"
            f"{structs.listing(every)}\n{_HOW}"
        )
    if "all" in layout and len(layout) > 1:
        raise BenchmarkFormatError(
            f"both split parts {sorted(p for p in layout if p != 'all')} and unsplit variables "
            f"{sorted(v.key for v in layout['all'].values())}; choose with keys="
        )
    for part, mods in layout.items():
        missing = [m for m in ("image", "text") if m not in mods]
        if missing:
            raise BenchmarkFormatError(
                f"part {part!r}: no {' or '.join(missing)} variable (recognised "
                f"{', '.join(f'{m} {v.key}' for m, v in mods.items())}); the file(s) hold:\n"
                f"{structs.listing(every)}\n{_HOW}"
            )
    label_parts = [p for p in layout if "labels" in layout[p]]
    if label_parts and len(label_parts) != len(layout):
        raise BenchmarkFormatError(
            f"labels for parts {label_parts} but not for {sorted(set(layout) - set(label_parts))}"
        )
    return layout


def _all_equal(vs: Sequence[Variable]) -> bool:
    first = np.ravel(_dense(vs[0].array))
    return all(np.array_equal(first, np.ravel(_dense(v.array))) for v in vs[1:])


def _image_ok(v: Variable, all_candidates: list[Variable]) -> bool:
    nd = len([s for s in v.shape if s != 1]) if len(v.shape) > 2 else 2
    if nd <= 2:
        return True
    if len(all_candidates) == 1:
        raise BenchmarkFormatError(
            f"{v.file}: {v.key} has shape {v.shape}: raw images, not features - extract "
            "features first (collect + preprocess) or pass keys= naming a feature variable"
        )
    return False


def orient(part: str, mods: Mapping[str, Variable]) -> tuple[int, dict[str, np.ndarray], list[str]]:
    """``(n, {modality: (n, d) array}, keys read transposed)`` for one part."""
    shapes = {m: v.shape for m, v in mods.items()}
    for m, s in shapes.items():
        if len(s) not in (1, 2):
            raise BenchmarkFormatError(f"part {part!r}: {mods[m].key} has shape {s}")
    candidates = None
    for s in shapes.values():
        dims = set(s)
        candidates = dims if candidates is None else candidates & dims
    if not candidates:
        raise BenchmarkFormatError(
            f"part {part!r}: the arrays share no sample dimension: "
            + ", ".join(f"{mods[m].key} {s}" for m, s in shapes.items())
        )
    if len(candidates) == 1:
        n = next(iter(candidates))
    else:  # ambiguous (square-ish arrays): the file's storage convention decides
        hint = any(v.transposed_hint for v in mods.values())
        n = shapes["image"][-1 if hint else 0]
        if n not in candidates:
            n = min(candidates)
    out, transposed = {}, []
    for m, v in mods.items():
        a = _dense(v.array)
        square = a.ndim == 2 and a.shape[0] == a.shape[1] == n
        if a.ndim == 2 and (a.shape[0] != n or (square and v.transposed_hint)):
            a = a.T
            transposed.append(v.key)
        out[m] = np.ascontiguousarray(a)
    return n, out, transposed


def _labels(a: np.ndarray, key: str) -> tuple[np.ndarray, list[str]]:
    """Multi-hot bool ``(n, C)`` and label names from multi-hot or class-id labels."""
    if a.ndim == 2 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim == 1:
        if not np.all(np.equal(np.mod(a, 1), 0)):
            raise BenchmarkFormatError(f"{key}: 1-D labels must be integer class ids")
        ids = a.astype(np.int64)
        classes = np.unique(ids)
        hot = ids[:, None] == classes[None, :]
        return hot, [f"class_{c}" for c in classes.tolist()]
    values = np.unique(a)
    if not np.all(np.isin(values, (0, 1))):
        raise BenchmarkFormatError(
            f"{key}: multi-hot labels must be 0/1, got values {values[:5].tolist()}..."
        )
    width = len(str(a.shape[1] - 1))
    return a.astype(bool), [f"label_{j:0{width}d}" for j in range(a.shape[1])]


# --------------------------------------------------------------------------- import


def import_benchmark(
    paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    name: str | None = None,
    keys: Mapping[str, str] | None = None,
    query: int = 2000,
    train: int = 10000,
    seed: int = 0,
    normalize: bool = True,
    near_duplicate_cosine: float = NEAR_DUPLICATE_COSINE,
    index_base: Literal["auto", 0, 1] = "auto",
) -> dict[str, Any]:
    """Import one benchmark (see module docstring); returns the summary written to
    ``out/import.json``. ``query``, ``train`` and ``seed`` apply only to files without a fixed
    split; ``near_duplicate_cosine`` is the threshold of :func:`near_duplicate_queries`;
    ``index_base`` says how index variables count (``auto``: 0-based when some index is 0,
    else MATLAB's 1-based)."""
    if not 0.0 < near_duplicate_cosine <= 1.0:
        raise ValueError(f"near_duplicate_cosine must be in (0, 1], got {near_duplicate_cosine}")
    files = [Path(paths)] if isinstance(paths, str | os.PathLike) else [Path(p) for p in paths]
    if not files:
        raise ValueError("paths: no benchmark file given")
    variables: dict[str, Variable] = {}
    found: dict[str, str] = {}
    for f in files:
        numeric, described = read_file(f)
        for key, var in numeric.items():
            if key in variables:
                raise BenchmarkFormatError(f"variable {key!r} is in {variables[key].file} and {f}")
            variables[key] = var
        found.update(described)
    name = name or files[0].stem
    indices = index_variables(variables, keys)
    for v in indices.values():  # an index is no feature or label variable
        variables.pop(v.key, None)
    layout = classify(variables, keys, found)
    has_labels = "labels" in next(iter(layout.values()))

    parts: dict[str, dict[str, np.ndarray]] = {}
    transposed: list[str] = []
    for part, mods in layout.items():
        _, arrays, t = orient(part, mods)
        parts[part] = arrays
        transposed += t
    index_note = None
    if indices:
        parts, index_note = _split_by_indices(parts, indices, index_base)
    dims = {m: {a[m].shape[1] for a in parts.values()} for m in ("image", "text")}
    for m, d in dims.items():
        if len(d) != 1:
            raise BenchmarkFormatError(f"{m} features have different widths across parts: {d}")

    # Samples: unique by content across parts (a train row that is also a database row is one).
    label_names: list[str] = []
    if has_labels:
        label_names = _label_names(parts)
    ids_of: dict[str, list[str]] = {}
    first: dict[str, tuple[str, int]] = {}
    for part, arrays in parts.items():
        ids_of[part] = _sample_ids(arrays, label_names)
        for i, sid in enumerate(ids_of[part]):
            first.setdefault(sid, (part, i))
    ordered = sorted(first)
    row_of = {sid: r for r, sid in enumerate(ordered)}
    n = len(ordered)

    image = np.zeros((n, next(iter(dims["image"]))), np.float32)
    text = np.zeros((n, next(iter(dims["text"]))), np.float32)
    hot = np.zeros((n, len(label_names)), bool)
    for sid, (part, i) in first.items():
        r = row_of[sid]
        image[r] = parts[part]["image"][i]
        text[r] = parts[part]["text"][i]
        if has_labels:
            hot[r] = _hot_row(parts[part], i, label_names)
    if not (np.isfinite(image).all() and np.isfinite(text).all()):
        raise BenchmarkFormatError("features contain NaN or infinite values")
    raw_image, raw_text = image.copy(), text.copy()
    if normalize:
        for x in (image, text):
            norm = np.linalg.norm(x, axis=1, keepdims=True)
            np.divide(x, norm, out=x, where=norm > 0)

    split, in_train, protocol_spec = _split(parts, ids_of, ordered, query, train, seed)
    protocol = f"imported:{name}"
    out = Path(out_dir)
    assignments = _write(
        out,
        name,
        ordered,
        first,
        image,
        text,
        hot,
        label_names,
        split,
        in_train,
        protocol,
        seed,
        protocol_spec,
    )
    near = near_duplicate_queries(
        {"image": raw_image, "text": raw_text}, split, near_duplicate_cosine
    )
    nd_ids = sorted(ordered[r] for r in np.flatnonzero(near["any"]))
    nd_rule = {
        "rule": "a query whose image or text feature row equals a database row, or has cosine "
        f">= {near_duplicate_cosine} with one (all-zero rows never match)",
        "cosine_threshold": near_duplicate_cosine,
        "features": "as imported, before normalisation",
        "by_modality": {m: int(near[m].sum()) for m in ("image", "text")},
    }
    manifest = write_manifests(
        out / "split",
        assignments,
        nd_ids,
        {"protocol": protocol, "seed": seed, "near_duplicates": nd_rule, "source": name},
    )
    summary = {
        "name": name,
        "files": [str(f) for f in files],
        "variables": {p: {m: v.key for m, v in mods.items()} for p, mods in layout.items()},
        "read_transposed": sorted(transposed),
        "indices": index_note,
        "layout": "fixed split" if "all" not in layout else "no split (seeded)",
        "protocol": {"name": protocol, **protocol_spec},
        "samples": n,
        "rows_per_part": {p: len(v) for p, v in ids_of.items()},
        "merged_across_parts": sum(len(v) for v in ids_of.values()) - n,
        "sets": {s: int((split == s).sum()) for s in sorted(set(split.tolist()))},
        "in_train": int(in_train.sum()),
        "image_dim": int(image.shape[1]),
        "text_dim": int(text.shape[1]),
        "labels": len(label_names),
        "unlabelled_samples": int((~hot.any(axis=1)).sum()) if has_labels else n,
        "normalized": normalize,
        "near_duplicate_queries": {
            "count": len(nd_ids),
            **nd_rule["by_modality"],
            "cosine_threshold": near_duplicate_cosine,
        },
        "manifests": {k: v["sha256"] for k, v in manifest["files"].items()},
    }
    io.write_json(out / "import.json", summary)
    return summary


def _split_by_indices(
    parts: dict[str, dict[str, np.ndarray]],
    indices: Mapping[str, Variable],
    base: Literal["auto", 0, 1],
) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, Any]]:
    """The one unsplit part cut into the parts its index variables name (``train``,
    ``query``, ``database``), with a record of the indices used."""
    if set(parts) != {"all"}:
        raise BenchmarkFormatError(
            f"index variables ({', '.join(v.key for v in indices.values())}) but the features "
            f"are already split into parts {sorted(parts)}"
        )
    if "query" not in indices:
        raise BenchmarkFormatError(
            f"index variables {', '.join(v.key for v in indices.values())} name no test/query "
            "part: pass --test-index"
        )
    arrays = parts["all"]
    n = len(next(iter(arrays.values())))
    out: dict[str, dict[str, np.ndarray]] = {}
    note: dict[str, Any] = {"base": base, "variables": {}}
    for part, var in sorted(indices.items()):
        try:
            rows = structs.index_rows(_dense(var.array), n, var.key, base)
        except ValueError as e:
            raise BenchmarkFormatError(str(e)) from None
        out[part] = {m: a[rows] for m, a in arrays.items()}
        note["variables"][part] = {"key": var.key, "rows": len(rows)}
    return out, note


def near_duplicate_queries(
    features: Mapping[str, np.ndarray],
    split: np.ndarray,
    cosine: float = NEAR_DUPLICATE_COSINE,
    chunk: int = 1024,
) -> dict[str, np.ndarray]:
    """Which query rows (``split == "query"``) have a near-duplicate among the database rows,
    per modality and in any: ``{"image": (n,) bool, "text": ..., "any": ...}`` (False outside
    the queries). A near-duplicate is a database row equal to the query's row, or whose cosine
    similarity with it reaches ``cosine``. All-zero rows (a text without a single tag) carry no
    content and match nothing."""
    split = np.asarray(split)
    q_rows = np.flatnonzero(split == "query")
    db_rows = np.flatnonzero(split == "database")
    out = {m: np.zeros(len(split), bool) for m in features}
    for m, x in features.items():
        x = np.asarray(x, np.float32)
        if not len(q_rows) or not len(db_rows):
            continue
        norm = np.linalg.norm(x, axis=1)
        unit = np.divide(x, norm[:, None], out=np.zeros_like(x), where=norm[:, None] > 0)
        exact = {x[r].tobytes() for r in db_rows if norm[r] > 0}
        db = unit[db_rows]
        for lo in range(0, len(q_rows), chunk):
            rows = q_rows[lo : lo + chunk]
            best = (unit[rows] @ db.T).max(axis=1)
            same = np.fromiter((x[r].tobytes() in exact for r in rows), bool, len(rows))
            out[m][rows] = ((best >= cosine) | same) & (norm[rows] > 0)
    out["any"] = (
        np.logical_or.reduce([out[m] for m in features]) if features else np.zeros(len(split), bool)
    )
    return out


def _label_names(parts: Mapping[str, Mapping[str, np.ndarray]]) -> list[str]:
    kinds = {p: _labels(a["labels"], f"labels of part {p!r}") for p, a in parts.items()}
    multi = {p for p, a in parts.items() if a["labels"].ndim == 2 and a["labels"].shape[1] > 1}
    if multi and len(multi) != len(parts):
        raise BenchmarkFormatError("labels are multi-hot in some parts and class ids in others")
    if multi:
        widths = {len(names) for _, names in kinds.values()}
        if len(widths) != 1:
            raise BenchmarkFormatError(f"multi-hot label widths differ across parts: {widths}")
        return next(iter(kinds.values()))[1]
    classes = sorted({int(n.split("_")[1]) for _, names in kinds.values() for n in names})
    return [f"class_{c}" for c in classes]


def _hot_row(arrays: Mapping[str, np.ndarray], i: int, names: list[str]) -> np.ndarray:
    a = arrays["labels"]
    if a.ndim == 2 and a.shape[1] > 1:
        return a[i].astype(bool)
    c = f"class_{int(np.ravel(a)[i])}"
    return np.asarray([x == c for x in names])


def _sample_ids(arrays: Mapping[str, np.ndarray], label_names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for i in range(len(arrays["image"])):
        h = hashlib.sha256()
        h.update(np.ascontiguousarray(arrays["image"][i], np.float32).tobytes())
        h.update(b"|")
        h.update(np.ascontiguousarray(arrays["text"][i], np.float32).tobytes())
        if label_names:
            h.update(b"|")
            h.update(_hot_row(arrays, i, label_names).tobytes())
        digest = h.hexdigest()
        k = seen.get(digest, 0)
        seen[digest] = k + 1
        if k:
            digest = hashlib.sha256(f"{digest}#{k}".encode()).hexdigest()
        out.append(digest[:SAMPLE_ID_HEX])
    return out


def _split(
    parts: Mapping[str, Any],
    ids_of: Mapping[str, list[str]],
    ordered: list[str],
    query: int,
    train: int,
    seed: int,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    n = len(ordered)
    split = np.empty(n, dtype=object)
    in_train = np.zeros(n, bool)
    row = {sid: r for r, sid in enumerate(ordered)}
    if "all" in parts:
        if not 1 <= query < n or not 1 <= train <= n - query:
            raise ValueError(
                f"query={query}, train={train}: need 1 <= query < {n} samples and "
                f"1 <= train <= {n} - query"
            )
        perm = np.random.default_rng(seed).permutation(n)
        split[:] = "database"
        split[perm[:query]] = "query"
        in_train[perm[query : query + train]] = True
        return split, in_train, {"kind": "hashing", "query": query, "train": train, "seed": seed}
    if "query" not in parts:
        raise BenchmarkFormatError(f"no query/test part among {sorted(parts)}")
    database_part = "database" if "database" in parts else "train"
    if database_part == "train" and "train" not in parts:
        raise BenchmarkFormatError("a query part but neither database nor train part")
    for sid in ids_of[database_part]:
        split[row[sid]] = "database"
    for sid in ids_of.get("train", ids_of[database_part]):
        in_train[row[sid]] = True
        if split[row[sid]] is None:
            split[row[sid]] = "train"  # trains, never retrieved
    for sid in ids_of["query"]:
        if split[row[sid]] is not None and split[row[sid]] != "query":
            log.warning("sample %s is in the query part and the %s", sid, split[row[sid]])
        split[row[sid]] = "query"
        in_train[row[sid]] = False
    spec = {"kind": "fixed", "parts": sorted(parts), "database": database_part}
    return split, in_train, spec


def _write(
    out: Path,
    name: str,
    ids: list[str],
    first: Mapping[str, tuple[str, int]],
    image: np.ndarray,
    text: np.ndarray,
    hot: np.ndarray,
    label_names: list[str],
    split: np.ndarray,
    in_train: np.ndarray,
    protocol: str,
    seed: int,
    spec: dict[str, Any],
) -> pa.Table:
    n = len(ids)
    columns: dict[str, Any] = {f.name: pa.nulls(n, f.type) for f in INTERIM_SAMPLES}
    columns["sample_id"] = pa.array(ids, pa.string())
    columns["source"] = pa.array([name] * n, pa.string())
    columns["source_key"] = pa.array([f"{first[s][0]}:{first[s][1]}" for s in ids], pa.string())
    columns["feature_row"] = pa.array(np.arange(n, dtype=np.int64))
    io.write_parquet(out / "clean" / "samples.parquet", pa.table(columns, schema=INTERIM_SAMPLES))

    feat = out / "interim" / "features"
    io.write_npy(feat / "image.npy", image)
    io.write_npy(feat / "text.npy", text)
    io.write_json(
        feat / "meta.json",
        {
            "embeddings": True,
            "rows": n,
            # a benchmark's own features (SIFT / VGG, LDA / bag of words): two spaces, not one
            "aligned": False,
            "image": {"encoder": f"imported:{name}-image", "dim": int(image.shape[1])},
            "text": {"encoder": f"imported:{name}-text", "dim": int(text.shape[1])},
        },
    )

    rows_i, cols_j = np.nonzero(hot)  # sorted by (sample, label index); labels are named in order
    io.write_parquet(
        out / "labelled" / "labels.parquet",
        pa.table(
            {
                "sample_id": pa.array([ids[i] for i in rows_i], pa.string()),
                "label": pa.array([label_names[j] for j in cols_j], pa.string()),
                "source": pa.array(["auto"] * len(rows_i), pa.string()),
                "method": pa.array(["provided"] * len(rows_i), pa.string()),
                "confidence": pa.array(np.ones(len(rows_i)), pa.float64()),
            },
            schema=LABELS,
        ),
    )
    io.write_json(out / "labelled" / "vocabulary.json", {"labels": label_names})

    table = pa.table(
        {
            "sample_id": pa.array(ids, pa.string()),
            "split": pa.array(split.tolist(), pa.string()),
            "in_train": pa.array(in_train, pa.bool_()),
            "group_id": pa.array(ids, pa.string()),
            "protocol": pa.array([protocol] * n, pa.string()),
            "seed": pa.array([seed] * n, pa.int64()),
        },
        schema=ASSIGNMENTS.with_metadata(
            {"cmrops.protocol": json.dumps({"name": protocol, **spec}, sort_keys=True)}
        ),
    )
    io.write_parquet(out / "split" / "assignments.parquet", table)
    return table


def cli_main(args: Any) -> int:
    """For a ``cmrops import-benchmark FILE... --out DIR [--name N] [--query Q] [--train T]
    [--seed S] [--no-normalize] [--near-duplicate-cosine C]`` command."""
    keys = {
        k: v
        for k, v in (
            ("image", args.image), ("text", args.text), ("labels", args.labels),
            ("train_index", args.train_index), ("test_index", args.test_index),
            ("database_index", args.database_index),
        )
        if v
    }  # fmt: skip
    base = args.index_base if args.index_base == "auto" else int(args.index_base)
    s = import_benchmark(
        args.files,
        args.out,
        name=args.name,
        keys=keys or None,
        index_base=base,
        query=args.query,
        train=args.train,
        seed=args.seed,
        normalize=not args.no_normalize,
        near_duplicate_cosine=args.near_duplicate_cosine,
    )
    print(
        f"imported {s['name']}: {s['samples']} samples ({s['layout']}), sets {s['sets']}, "
        f"in_train {s['in_train']}, image {s['image_dim']}-d, text {s['text_dim']}-d, "
        f"{s['labels']} labels; transposed on read: {', '.join(s['read_transposed']) or 'none'}; "
        f"{s['near_duplicate_queries']['count']} queries with a near-duplicate in the database"
    )
    return 0
