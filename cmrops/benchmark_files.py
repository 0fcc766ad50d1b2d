"""Reading benchmark files: every variable of a .mat (v4/v5/v7.3) or .h5 file, MATLAB structs
opened into dotted variables, index splits.

:func:`read_file` returns the numeric variables (:class:`Variable`) and a description of every
variable found; :mod:`cmrops.benchmarks_data` decides which is which and imports them.

Some benchmark releases wrap everything in one struct - the RoPH repository's Wikipedia file is
one variable ``data`` with fields ``X1`` (128 x 2866 image features), ``X2`` (100 x 2866 text
features), ``Y`` (labels) and ``split``, itself a struct of ``ind_train`` / ``ind_test`` (1-based
sample indices). :func:`flatten_scipy` (a ``scipy.io.loadmat`` value) and :func:`flatten_hdf5`
(an ``h5py`` group of a v7.3 file) turn such a tree into leaves named by their path
(``data.X1``, ``data.split.ind_train``); :func:`listing` describes every variable of a file -
numeric or not - with its shape, for a message that cannot guess the layout.

:func:`resolve` finds a variable by its full dotted name or by a unique dotted suffix (``X1`` or
``split.ind_train`` for ``data.X1`` / ``data.split.ind_train``). :func:`index_rows` turns an index
variable into 0-based row numbers: ``base`` 1 (MATLAB) or 0, or ``auto``: 0-based when some index
is 0, else 1-based (the MATLAB convention) - and refuses indices outside the samples.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
#: Wikipedia's ``trainset_txt_img_cat.list`` / ``testset_txt_img_cat.list`` (text id, image id,
#: category 1..10, tab-separated) are read as the label variables ``L_tr`` / ``L_te``.
_LIST_PART = {"trainset": "L_tr", "testset": "L_te", "train": "L_tr", "test": "L_te"}


class BenchmarkFormatError(ValueError):
    """A benchmark file cannot be read or does not have a recognisable layout."""


@dataclass
class Variable:
    """One numeric array of a benchmark file."""

    file: str
    key: str
    array: Any  # numpy array, or a scipy sparse matrix
    transposed_hint: bool  # stored column-major (MATLAB v7.3 read by h5py)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)


def _is_numeric(a: Any) -> bool:
    return isinstance(a, np.ndarray) and a.dtype.kind in "biuf" and a.size > 0


def flatten_scipy(name: str, value: Any) -> Iterator[tuple[str, Any]]:
    """``(dotted name, leaf)`` for a loadmat value: a 1 x 1 struct (a structured array) is
    opened field by field, recursively; other values are leaves (numeric or not)."""
    if isinstance(value, np.ndarray) and value.dtype.names:
        if value.size != 1:  # a struct array: listed, not opened
            yield name, value
            return
        record = value.reshape(-1)[0]
        for field in value.dtype.names:
            yield from flatten_scipy(f"{name}.{field}", record[field])
        return
    if isinstance(value, np.ndarray) and value.dtype == object and value.size == 1:
        inner = value.reshape(-1)[0]  # a struct field holding a nested struct, boxed 1 x 1
        if isinstance(inner, np.ndarray) and inner.dtype.names:
            yield from flatten_scipy(name, inner)
            return
    yield name, value


def flatten_hdf5(group: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``(dotted name, h5py object)`` for every dataset and MATLAB sparse group below
    ``group``; MATLAB v7.3 structs are groups, opened recursively (``#refs#`` is skipped)."""
    import h5py

    for key, obj in group.items():
        if key.startswith("#"):
            continue
        name = f"{prefix}{key}"
        if isinstance(obj, h5py.Group) and "MATLAB_sparse" not in obj.attrs:
            yield from flatten_hdf5(obj, f"{name}.")
        else:
            yield name, obj


def describe(value: Any) -> str:
    """``"(128, 2866) float64"``, ``"cell (1, 3)"``, ``"struct array (1, 2)"``, ..."""
    shape = tuple(getattr(value, "shape", ()) or ())
    dtype = getattr(value, "dtype", None)
    if dtype is None:
        return f"{type(value).__name__}"
    if dtype.names:
        return f"struct array {shape}"
    if dtype.kind == "O":
        return f"cell {shape}"
    if dtype.kind in "SU":
        return f"text {shape}"
    return f"{shape} {dtype}"


def listing(found: Mapping[str, str]) -> str:
    """``name (shape dtype)`` per variable, sorted, one line each."""
    return "\n".join(f"  {k} {v}" for k, v in sorted(found.items())) or "  (none)"


def resolve(name: str, variables: Mapping[str, Any]) -> str:
    """The variable ``name`` names: itself, or the one whose dotted path ends with it."""
    if name in variables:
        return name
    hits = [k for k in variables if k.endswith(f".{name}")]
    if len(hits) == 1:
        return hits[0]
    if hits:
        raise KeyError(f"{name!r} is ambiguous: {', '.join(sorted(hits))}")
    raise KeyError(f"no variable {name!r}")


def index_rows(
    values: np.ndarray, n: int, key: str, base: Literal["auto", 0, 1] = "auto"
) -> np.ndarray:
    """0-based row numbers from an index variable of a set of ``n`` samples (module docstring)."""
    a = np.asarray(values).ravel()
    if a.size == 0:
        raise ValueError(f"{key}: no indices")
    if a.dtype.kind == "b":
        if a.size != n:
            raise ValueError(f"{key}: a mask of {a.size} entries for {n} samples")
        return np.flatnonzero(a)
    if a.dtype.kind not in "iuf" or not np.all(np.equal(np.mod(a, 1), 0)):
        raise ValueError(f"{key}: indices must be whole numbers")
    idx = a.astype(np.int64)
    start = (0 if idx.min() == 0 else 1) if base == "auto" else int(base)
    rows = idx - start
    if rows.min() < 0 or rows.max() >= n:
        raise ValueError(
            f"{key}: {start}-based indices {idx.min()}..{idx.max()} fall outside the {n} samples"
        )
    if len(np.unique(rows)) != len(rows):
        raise ValueError(f"{key}: an index is repeated")
    return rows


def read_variables(path: str | os.PathLike[str]) -> dict[str, Variable]:
    """Every numeric variable of a ``.mat`` (v4/v5/v7.3) or ``.h5`` file, by name; the fields
    of MATLAB structs as dotted names (``data.X1``, :mod:`cmrops.benchmark_structs`)."""
    return read_file(path)[0]


def read_file(path: str | os.PathLike[str]) -> tuple[dict[str, Variable], dict[str, str]]:
    """:func:`read_variables` and a description (shape, type) of *every* variable found,
    numeric or not, for the messages that list them."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: benchmark file not found")
    if p.suffix.lower() == ".list":
        found = _read_category_list(p)
        return found, {k: describe(v.array) for k, v in found.items()}
    with open(p, "rb") as fh:
        head = fh.read(512 + 8)
    if head.startswith(b"MATLAB 7.3") or head[:8] == _HDF5_MAGIC or head[512:520] == _HDF5_MAGIC:
        return _read_hdf5(p, matlab=head.startswith(b"MATLAB"))
    import scipy.io

    try:
        data = scipy.io.loadmat(p, squeeze_me=False, mat_dtype=False)
    except NotImplementedError:  # v7.3 without the text header
        return _read_hdf5(p, matlab=True)
    except Exception as e:  # scipy raises many kinds for a foreign file
        raise BenchmarkFormatError(f"{p}: not a readable .mat or .h5 file ({e})") from None
    out, found = {}, {}
    for top, value in data.items():
        if top.startswith("__"):
            continue
        for key, leaf in flatten_scipy(top, value):
            found[key] = "sparse " + str(leaf.shape) if _is_sparse(leaf) else describe(leaf)
            if _is_sparse(leaf) or (
                isinstance(leaf, np.ndarray) and leaf.dtype.kind in "biuf" and leaf.size
            ):
                out[key] = Variable(str(p), key, leaf, transposed_hint=False)
    return out, found


def _read_category_list(p: Path) -> dict[str, Variable]:
    """A Wikipedia ``<trainset|testset>_txt_img_cat.list``: one ``text_id<TAB>image_id<TAB>
    category`` line per pair, in the row order of ``raw_features.mat``."""
    prefix = p.name.split("_", 1)[0].lower()
    if prefix not in _LIST_PART:
        raise BenchmarkFormatError(
            f"{p}: a category list must be named trainset_*.list or testset_*.list (the part "
            "its rows belong to)"
        )
    cats = []
    with open(p, encoding="utf-8-sig") as fh:
        for i, line in enumerate(fh, 1):
            if not line.strip():
                continue
            cols = line.rstrip("\r\n").split("\t")
            if len(cols) != 3 or not cols[2].strip().isdigit():
                raise BenchmarkFormatError(
                    f"{p}:{i}: expected 'text_id<TAB>image_id<TAB>category' with an integer "
                    f"category, got {line.strip()[:80]!r}"
                )
            cats.append(int(cols[2]))
    if not cats:
        raise BenchmarkFormatError(f"{p}: no category lines")
    key = _LIST_PART[prefix]
    return {key: Variable(str(p), key, np.asarray(cats, np.int64)[:, None], False)}


def _read_hdf5(p: Path, matlab: bool) -> tuple[dict[str, Variable], dict[str, str]]:
    import h5py

    out, found = {}, {}
    try:
        with h5py.File(p, "r") as f:
            for key, obj in flatten_hdf5(f):
                if isinstance(obj, h5py.Group):  # a MATLAB_sparse group
                    import scipy.sparse

                    n_rows = int(obj.attrs["MATLAB_sparse"])
                    jc = obj["jc"][()]
                    data = obj["data"][()] if "data" in obj else np.zeros(0)
                    ir = obj["ir"][()] if "ir" in obj else np.zeros(0, np.int64)
                    m = scipy.sparse.csc_matrix((data, ir, jc), shape=(n_rows, len(jc) - 1))
                    out[key] = Variable(str(p), key, m, transposed_hint=False)
                    found[key] = f"sparse {m.shape}"
                    continue
                cls = obj.attrs.get("MATLAB_class", b"")
                shape = obj.shape[::-1] if matlab else obj.shape  # as MATLAB shows it
                found[key] = f"{cls.decode() if cls else obj.dtype} {tuple(shape)}"
                if obj.dtype.kind in "biuf" and obj.size and cls not in (b"char", b"cell"):
                    out[key] = Variable(str(p), key, obj[()], transposed_hint=matlab)
    except OSError as e:
        raise BenchmarkFormatError(f"{p}: not a readable HDF5 file ({e})") from None
    return out, found


def _is_sparse(x: Any) -> bool:
    try:
        import scipy.sparse

        return bool(scipy.sparse.issparse(x))
    except ImportError:  # pragma: no cover
        return False


def _dense(x: Any) -> np.ndarray:
    if _is_sparse(x):
        return np.asarray(x.astype(np.float32).toarray())
    return np.asarray(x)
