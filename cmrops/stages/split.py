"""Split stage: group-aware, multi-label stratified, seeded and stable splits, with a leakage audit.

``run(params, clean_dir, labelled_dir, out_dir, metrics_path=...)`` reads
``<clean>/samples.parquet`` (the clean stage's kept rows) and ``<labelled>/labels.parquet`` (the
effective labels) and writes:

* ``<out>/assignments.parquet`` - :data:`~cmrops.schema.ASSIGNMENTS`, one row per clean sample,
  sorted by ``sample_id``; the protocol's name and spec are also in the file's schema metadata;
* ``<out>/manifests/`` (:mod:`cmrops.splitting.manifests`) - every set as a sorted sample-id
  list, the query samples with a near-duplicate in the database (linked by the grouping rule
  below; empty by construction for a split this stage makes, the leakage for an imported one)
  and ``manifest.json`` with their sha256s;
* ``metrics_path`` (``metrics/split.json``) - sizes and targets, per-label balance per set, the
  groups, and the leakage audit.

**Protocols** are named in params (``protocols: {name: spec}``, ``protocol: name`` picks one) and
the name is stamped into every row:

* ``kind: ratio`` - ``train`` / ``val`` / ``test`` fractions; ``in_train`` = split is train;
* ``kind: hashing`` - the cross-modal hashing protocol (DCMH and its successors): ``query``
  samples form the query set, all others the retrieval ``database``; ``train`` of the database
  samples (stratified the same way) are the training set (``in_train``). Each size is a count
  (exact), a fraction, or ``{fraction: f, max: m, min: k}`` - a fraction of the samples it is
  drawn from (``query``: the clean samples; ``train``: the database), capped at ``max`` and at
  least ``min`` - so one setting serves a 200-sample trial and a 100k-sample release. The sizes
  chosen, and the rule they came from, are recorded (``sizes_chosen`` in the metrics and the
  manifest). A set too small to split fails at once, naming :data:`MIN_CLEAN_SAMPLES`.

**Procedure** (every step a pure function of the data and ``seed``):

1. *Groups*: samples whose pHash is within ``image_radius`` or whose caption SimHash is within
   ``caption_radius`` are linked; a group is a connected component of both graphs together
   (:mod:`cmrops.splitting.audit`). Groups are assigned, never samples, so near-duplicates never
   straddle sets. A group's key is its smallest ``sample_id``.
2. *Placement* (:mod:`cmrops.splitting.stratify`): each group's preferred set comes from a hash
   of ``(seed, group key)`` weighted by the set fractions; Sechidis et al.'s iterative
   stratification takes labels rarest first and places each group in its most preferred set that
   still needs that label, so every label with at least as many samples as sets appears in every
   set. ``stratify: false`` places by the hash preference and sizes only.
3. *Anchor* (``anchor: path`` to an earlier assignments file of the same protocol): its samples
   keep their set (and ``in_train``) and only new groups are placed; a group that joins anchored
   samples of different sets goes where most of them are, the others are moved and listed.
   ``anchor: previous`` anchors on the ``assignments.parquet`` this stage wrote last time in its
   out folder (an incremental release: scheduled runs add data, nothing earlier moves); on the
   first run, or when that file was made with another protocol or seed, the split is made afresh.

Stability: without an anchor, adding data changes an existing sample's set only where a
label's demand now runs out at a different group (measured: a few percent for +10% data); with
an anchor nothing existing moves. ``import_assignments: path`` instead takes the assignments of
another tool (``sample_id``, ``split``, optional ``in_train``) as they are and audits them.

A set that would be empty is an error naming the set and the sizes.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cmrops import io
from cmrops.cleaning.graph import size_histogram
from cmrops.schema import ASSIGNMENTS, INTERIM_SAMPLES
from cmrops.splitting.audit import leakage, linked_rows, near_duplicate_groups, near_pairs
from cmrops.splitting.manifests import write_manifests
from cmrops.splitting.stratify import GroupLabels, largest_remainder, stratify

log = logging.getLogger(__name__)

STAGE = "split"
RATIO_SETS = ("train", "val", "test")
HASHING_SETS = ("query", "database")
#: The fewest clean samples the hashing protocol splits: a query set, a database and a training
#: subset of at least two near-duplicate groups each need a few samples.
MIN_CLEAN_SAMPLES = 8


# --------------------------------------------------------------------------- params


@dataclass(frozen=True)
class SetSize:
    """A set size that scales with the data: ``fraction`` of the samples it is drawn from,
    rounded, then held within [``min``, ``max``]."""

    fraction: float
    max: int | None = None
    min: int = 1

    def __post_init__(self) -> None:
        if not 0.0 < self.fraction < 1.0:
            raise ValueError(f"fraction must lie in (0, 1), got {self.fraction!r}")
        if self.min < 1 or (self.max is not None and self.max < self.min):
            raise ValueError(f"need 1 <= min <= max, got min={self.min}, max={self.max}")


def resolve_size(size: int | float | SetSize, available: int) -> int:
    """The count ``size`` means when drawn from ``available`` samples (not yet checked against
    what the other sets need)."""
    if isinstance(size, SetSize):
        n = int(np.floor(size.fraction * available + 0.5))
        n = max(n, size.min)
        return min(n, size.max) if size.max is not None else n
    if isinstance(size, float):
        return max(1, int(np.floor(size * available + 0.5)))
    return int(size)


def _size_rule(size: int | float | SetSize) -> str:
    if isinstance(size, SetSize):
        cap = f", at most {size.max}" if size.max is not None else ""
        return f"{size.fraction:g} of the samples{cap}, at least {size.min}"
    if isinstance(size, float):
        return f"{size:g} of the samples"
    return f"exactly {size}"


@dataclass(frozen=True)
class Protocol:
    """One named split protocol (see module docstring)."""

    kind: Literal["ratio", "hashing"]
    # ratio: a fraction; hashing: training samples of the database (a count, a fraction, or a
    # capped fraction)
    train: int | float | SetSize | None = None
    val: float | None = None  # ratio only
    test: float | None = None  # ratio only
    query: int | float | SetSize | None = None  # hashing only: query samples (idem, of all)

    def __post_init__(self) -> None:
        if self.kind == "ratio":
            if self.query is not None:
                raise ValueError("'query' applies to kind hashing, not ratio")
            fr = {"train": self.train, "val": self.val, "test": self.test}
            missing = [k for k, v in fr.items() if v is None]
            if missing:
                raise ValueError(f"kind ratio needs {', '.join(missing)} (fractions)")
            bad = [k for k, v in fr.items() if not 0.0 < float(v) < 1.0]  # type: ignore[arg-type]
            if bad:
                raise ValueError(f"fractions {', '.join(bad)} must lie in (0, 1)")
            total = sum(float(v) for v in fr.values())  # type: ignore[arg-type]
            if abs(total - 1.0) > 1e-6:
                raise ValueError(f"train + val + test must be 1, got {total:g}")
        else:
            if self.val is not None or self.test is not None:
                raise ValueError("'val'/'test' apply to kind ratio, not hashing")
            for name, v in (("query", self.query), ("train", self.train)):
                if v is None:
                    raise ValueError(f"kind hashing needs '{name}' (a count, a fraction or "
                                     "{fraction: f, max: m})")
                if isinstance(v, float) and not 0.0 < v < 1.0:
                    raise ValueError(f"'{name}' as a fraction must lie in (0, 1), got {v!r}")
                if isinstance(v, int) and v < 1:
                    raise ValueError(f"'{name}' as a count must be >= 1, got {v!r}")

    @property
    def sets(self) -> tuple[str, ...]:
        return RATIO_SETS if self.kind == "ratio" else HASHING_SETS

    def spec(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def _default_protocols() -> dict[str, Protocol]:
    return {
        "ratio": Protocol("ratio", train=0.8, val=0.1, test=0.1),
        "hashing": Protocol(
            "hashing", train=SetSize(0.8, max=1000), query=SetSize(0.15, max=200)
        ),
    }


@dataclass(frozen=True)
class SplitParams:
    """The ``split:`` section of params.yaml."""

    protocol: str = "hashing"  # the name of the protocol to run, a key of protocols
    protocols: dict[str, Protocol] = field(default_factory=_default_protocols)
    seed: int = 0
    stratify: bool = True  # iterative stratification by labels (false: hash and sizes only)
    image_radius: int = 8  # pHash radius linking samples into one group (looser than clean)
    caption_radius: int = 3  # caption SimHash radius linking samples into one group
    anchor: str | None = None  # earlier assignments.parquet whose samples keep their set;
    # "previous": the one this stage wrote last time (incremental releases)
    import_assignments: str | None = None  # audit these assignments instead of splitting
    audit_max_listed: int = 50  # leaking pairs listed in metrics (all are counted)

    def __post_init__(self) -> None:
        if self.protocol not in self.protocols:
            raise ValueError(
                f"protocol {self.protocol!r} is not one of protocols: {', '.join(self.protocols)}"
            )
        for name in ("image_radius", "caption_radius"):
            v = getattr(self, name)
            if not 0 <= v <= 64:
                raise ValueError(f"{name} must be in [0, 64], got {v}")
        if self.anchor and self.import_assignments:
            raise ValueError("give anchor or import_assignments, not both")
        if self.audit_max_listed < 0:
            raise ValueError("audit_max_listed must be >= 0")


# --------------------------------------------------------------------------- entry points


def cli_main(args: Any) -> int:
    """``cmrops split --params P --clean C --labelled L --out O --metrics M``."""
    from cmrops.params import load_section

    params = load_section(args.params, STAGE, SplitParams)
    m = run(
        params, args.clean, args.labelled, args.out, metrics_path=args.metrics,
        base_dir=Path(args.params).resolve().parent,
    )  # fmt: skip
    sizes = ", ".join(f"{k} {v}" for k, v in m["sizes"].items())
    chosen = m.get("sizes_chosen")
    if chosen:
        print(f"split: query {chosen['query']} ({chosen['query_rule']}), train {chosen['train']} "
              f"({chosen['train_rule']})")
    print(
        f"split ({m['protocol']['name']}, {m['mode']}): {m['samples']} samples in "
        f"{m['groups']['count']} groups -> {sizes}; in_train {m['in_train']}; "
        f"leaking near-duplicate pairs {m['leakage']['total']}"
    )
    if "release" in m:
        r = m["release"]
        print(
            f"split: anchored on the previous assignments: {r['anchored_samples']} kept their "
            f"set, {r['new_samples']} new, {r['moved']} moved, {r.get('left', 0)} left (dropped "
            "upstream this release: see the quarantine files)"
        )
    return 0


def run(
    params: SplitParams,
    clean_dir: str | os.PathLike[str],
    labelled_dir: str | os.PathLike[str] | None,
    out_dir: str | os.PathLike[str],
    *,
    metrics_path: str | os.PathLike[str] | None = None,
    base_dir: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Split the clean samples (see module docstring); returns the metrics.

    ``metrics_path`` defaults to ``<out>/split.json``; relative ``anchor`` / ``import_assignments``
    paths are resolved against ``base_dir`` (default: the working directory)."""
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    out = Path(out_dir)
    ids, phash, simhash = _load_clean(Path(clean_dir))
    n = len(ids)
    label_names, sample_labels = _load_labels(
        Path(labelled_dir) if labelled_dir else None, ids, params.stratify
    )
    pairs = near_pairs(phash, simhash, params.image_radius, params.caption_radius)
    group = near_duplicate_groups(n, pairs)
    roots, group_idx = np.unique(group, return_inverse=True)
    keys = [ids[int(r)] for r in roots]  # the group key: its smallest sample_id
    weights = np.bincount(group_idx, minlength=len(roots)).astype(np.int64)

    extra: dict[str, Any] = {}
    left: list[str] = []  # samples of the anchor that are not in this release
    if params.import_assignments:
        path = _resolve(base, params.import_assignments)
        split, in_train, sets, protocol_name, extra = _imported(path, ids)
        spec: dict[str, Any] = {"kind": "imported", "file": str(path)}
        mode = "imported"
    else:
        proto = params.protocols[params.protocol]
        protocol_name, spec, mode, sets = params.protocol, proto.spec(), "assigned", proto.sets
        anchor = None
        anchor_path = _anchor_path(params, base, out, spec)
        if anchor_path is not None:
            anchor, left = _load_anchor(anchor_path, ids, proto, params.protocol)
        used_labels = sample_labels if params.stratify else [[] for _ in ids]
        split, in_train, extra = _assign(
            proto, params.seed, keys, weights, group_idx, used_labels, len(label_names), anchor, ids
        )

    release = None
    if params.anchor == PREVIOUS and mode == "assigned":
        # what this release added is history, not a property of the split: it goes beside the
        # output (data/split/release.json, not versioned), so a rerun on the same data writes
        # the same versioned bytes as the run that made them
        counts = extra.pop("anchor", None) or {"anchored_samples": 0, "new_samples": n, "moved": 0}
        release = {
            "anchored_on": "previous" if anchor_path is not None else None,
            **{k: counts[k] for k in ("anchored_samples", "new_samples", "moved")},
            # earlier samples this release no longer holds: an upstream stage dropped them
            # this time (each with its reason in that stage's quarantine file)
            "left": len(left),
            "left_samples": left[:50],
        }
        extra["anchor"] = {
            "mode": PREVIOUS,
            "moved": counts["moved"],
            "moved_samples": counts.get("moved_samples", []),
        }
    if mode == "assigned":  # an imported split is audited as it is, empty sets included
        _check_nonempty(split, in_train, sets, n, len(roots), spec)
    membership = {s: split == s for s in sets}
    apart: list[tuple[str, str]]
    if "query" in sets:
        membership["train"] = in_train.copy()
        apart = [("query", "database"), ("query", "train")]
    else:
        apart = [(a, b) for i, a in enumerate(sets) for b in sets[i + 1 :]]
    audit = leakage(pairs, membership, apart, ids, params.audit_max_listed)

    seed = params.seed
    table = pa.table(
        {
            "sample_id": pa.array(ids, pa.string()),
            "split": pa.array(split.tolist(), pa.string()),
            "in_train": pa.array(in_train, pa.bool_()),
            "group_id": pa.array([keys[int(g)] for g in group_idx], pa.string()),
            "protocol": pa.array([protocol_name] * n, pa.string()),
            "seed": pa.array([seed] * n, pa.int64()),
        },
        schema=ASSIGNMENTS.with_metadata(
            {"cmrops.protocol": json.dumps({"name": protocol_name, **spec}, sort_keys=True)}
        ),
    )
    if params.import_assignments:
        keep = np.flatnonzero(split != "")
        table = table.take(pa.array(keep))
    metrics = _metrics(
        params, protocol_name, spec, mode, sets, split, in_train, group_idx, weights, pairs,
        label_names, sample_labels, audit, extra,
    )  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    io.write_parquet(out / "assignments.parquet", table)
    _write_manifests(out, table, pairs, membership, ids, params, protocol_name, spec, mode)
    io.write_json(Path(metrics_path) if metrics_path else out / "split.json", metrics)
    if release is not None:
        io.write_json(out / RELEASE_FILE, release)
        metrics = {**metrics, "release": release}
    return metrics


def _write_manifests(
    out: Path,
    table: pa.Table,
    pairs: Sequence[Any],
    membership: dict[str, np.ndarray],
    ids: list[str],
    params: SplitParams,
    protocol_name: str,
    spec: dict[str, Any],
    mode: str,
) -> None:
    """The split's manifests; near-duplicate queries by the grouping's own linking rule."""
    near_dup: list[str] = []
    if "query" in membership and "database" in membership:
        rows = linked_rows(pairs, membership["query"], membership["database"])
        near_dup = [ids[i] for i in np.flatnonzero(rows)]
    why = (
        "groups are assigned whole, so no query has a near-duplicate in the database by "
        "construction (empty unless an anchor moved samples)"
        if mode == "assigned"
        else "imported split: the query samples linked to a database sample (its leakage)"
    )
    write_manifests(
        out,
        table,
        near_dup,
        {
            "protocol": {"name": protocol_name, **spec},
            "seed": params.seed,
            "near_duplicates": {
                "rule": (
                    "a query sample whose image pHash is within image_radius or whose caption "
                    "SimHash is within caption_radius of a database sample's"
                ),
                "image_radius": params.image_radius,
                "caption_radius": params.caption_radius,
                "note": why,
            },
        },
    )


#: ``anchor: previous`` - anchor on this stage's own last output
PREVIOUS = "previous"
#: Beside the assignments with ``anchor: previous``: samples anchored / new / moved this run.
RELEASE_FILE = "release.json"


def _anchor_path(params: SplitParams, base: Path, out: Path, spec: dict[str, Any]) -> Path | None:
    """The anchor file to use, or None. With ``previous``: ``<out>/assignments.parquet`` when it
    exists and was made with this protocol (name and spec) and seed; else a fresh split."""
    if not params.anchor:
        return None
    if params.anchor != PREVIOUS:
        return _resolve(base, params.anchor)
    path = out / "assignments.parquet"
    if not path.is_file():
        return None
    want = json.dumps({"name": params.protocol, **spec}, sort_keys=True)
    try:
        import pyarrow.parquet as pq

        schema = pq.read_schema(path)
        seeds = pc.unique(io.read_parquet(path).column("seed")).to_pylist()
    except (pa.ArrowInvalid, OSError, KeyError) as e:
        log.warning("split: ignoring the previous assignments %s (%s): splitting afresh", path, e)
        return None
    got = (schema.metadata or {}).get(b"cmrops.protocol", b"").decode()
    if got != want or seeds not in ([], [params.seed]):
        log.warning(
            "split: the previous assignments %s were made with protocol %s, seed %s (now %s, "
            "seed %s): splitting afresh",
            path, got or "?", seeds, want, params.seed,
        )  # fmt: skip
        return None
    return path


def _resolve(base: Path, p: str) -> Path:
    q = Path(p).expanduser()
    return q if q.is_absolute() else base / q


# --------------------------------------------------------------------------- inputs


def _load_clean(clean: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    path = clean / "samples.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found - run `cmrops clean` first (or pass --clean)")
    need = ("sample_id", "phash", "caption_simhash")
    missing = [c for c in need if c not in pq.read_schema(path).names]
    if missing:
        raise ValueError(
            f"{path}: missing column(s) {', '.join(missing)}; expected the INTERIM_SAMPLES "
            "contract (re-run `cmrops clean`)"
        )
    table = io.read_parquet(path, columns=list(need))  # only these: bounded by N, not captions
    table = table.cast(pa.schema([INTERIM_SAMPLES.field(c) for c in need]))
    table = table.take(pc.sort_indices(table, [("sample_id", "ascending")]))
    ids = table["sample_id"].to_pylist()
    if not ids:
        raise ValueError(f"{path}: no samples to split")
    if len(set(ids)) != len(ids) or None in ids:
        raise ValueError(f"{path}: sample_id must be unique and non-null")
    phash = table["phash"].fill_null(0).to_numpy().astype(np.uint64)
    simhash = table["caption_simhash"].fill_null(0).to_numpy().astype(np.uint64)
    return ids, phash, simhash


def _load_labels(
    labelled: Path | None, ids: list[str], required: bool
) -> tuple[list[str], list[list[int]]]:
    """Sorted label names and each sample's label ids (effective labels of the label stage)."""
    path = labelled / "labels.parquet" if labelled else None
    if path is None or not path.is_file():
        if required:
            raise FileNotFoundError(
                f"{path or '--labelled'}: labels.parquet not found - run `cmrops label` first, or "
                "set split.stratify: false"
            )
        return [], [[] for _ in ids]
    t = io.read_parquet(path, columns=["sample_id", "label"])
    t = t.filter(pc.is_valid(t["label"]))
    rows = pc.index_in(t["sample_id"], value_set=pa.array(ids, pa.string())).fill_null(-1)
    rows = np.asarray(rows.to_numpy(), dtype=np.int64)
    ok = rows >= 0
    labels = t["label"].filter(pa.array(ok))
    rows = rows[ok]
    names = sorted(pc.unique(labels).to_pylist())
    lab = np.asarray(
        pc.index_in(labels, value_set=pa.array(names, pa.string())).to_numpy(), dtype=np.int64
    )
    pairs = np.unique(rows * max(len(names), 1) + lab)  # (row, label) sorted, repeats dropped
    rows, lab = pairs // max(len(names), 1), pairs % max(len(names), 1)
    ends = np.cumsum(np.bincount(rows, minlength=len(ids))).tolist()
    flat = lab.tolist()
    return names, [flat[a:b] for a, b in zip([0, *ends[:-1]], ends, strict=True)]


def _load_anchor(
    path: Path, ids: list[str], proto: Protocol, name: str
) -> tuple[dict[str, tuple[str, bool]], list[str]]:
    """The earlier assignment of each of ``ids`` it holds, and its samples not in ``ids``."""
    if not path.is_file():
        raise FileNotFoundError(f"split.anchor {path}: not found")
    t = io.read_parquet(path)
    for c in ("sample_id", "split"):
        if c not in t.column_names:
            raise ValueError(f"split.anchor {path}: missing column {c!r}")
    splits = t["split"].to_pylist()
    bad = sorted(set(splits) - set(proto.sets))
    if bad:
        raise ValueError(
            f"split.anchor {path}: sets {bad} are not sets of protocol {name!r} "
            f"({', '.join(proto.sets)}); anchor a split of the same protocol"
        )
    in_train = (
        t["in_train"].to_pylist()
        if "in_train" in t.column_names
        else [s == "train" for s in splits]
    )
    known = set(ids)
    given = t["sample_id"].to_pylist()
    anchor = {
        sid: (s, bool(tr))
        for sid, s, tr in zip(given, splits, in_train, strict=True)
        if sid in known
    }
    return anchor, sorted({sid for sid in given if sid not in known})


def _imported(
    path: Path, ids: list[str]
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...], str, dict[str, Any]]:
    if not path.is_file():
        raise FileNotFoundError(f"split.import_assignments {path}: not found")
    if path.suffix == ".parquet":
        t = io.read_parquet(path)
        cols = {c: t[c].to_pylist() for c in t.column_names}
    else:  # CSV with a header: sample_id,split[,in_train]
        import csv

        with path.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        cols = {k: [r[k] for r in rows] for k in (rows[0].keys() if rows else [])}
    for c in ("sample_id", "split"):
        if c not in cols:
            raise ValueError(f"split.import_assignments {path}: missing column {c!r}")
    given = dict(zip(cols["sample_id"], cols["split"], strict=True))
    train_col = cols.get("in_train")
    trains = dict(zip(cols["sample_id"], train_col, strict=True)) if train_col is not None else None
    split = np.array([str(given.get(sid) or "") for sid in ids], dtype=object)
    usual = (*RATIO_SETS, *HASHING_SETS)  # the usual set order, then any other name

    def order(s: str) -> tuple[int, str]:
        return (usual.index(s) if s in usual else len(usual), s)

    sets = tuple(sorted({s for s in split if s}, key=order))
    if not sets:
        raise ValueError(f"split.import_assignments {path}: assigns none of the clean samples")

    def truthy(v: Any) -> bool:
        return v is True or str(v).strip().lower() in ("1", "true", "yes")

    in_train = np.array(
        [(truthy(trains[sid]) if trains is not None and sid in trains else s == "train")
         for sid, s in zip(ids, split, strict=True)], dtype=bool,
    )  # fmt: skip
    known = set(ids)
    missing = [sid for sid, s in zip(ids, split, strict=True) if not s]
    unknown = [sid for sid in given if sid not in known]
    extra = {
        "imported": {
            "file": str(path),
            "clean_samples_not_assigned": len(missing),
            "not_assigned_examples": missing[:20],
            "assigned_samples_not_in_clean": len(unknown),
        }
    }
    return split, in_train, sets, f"imported:{path.name}", extra


# --------------------------------------------------------------------------- assignment


def _assign(
    proto: Protocol,
    seed: int,
    keys: list[str],
    weights: np.ndarray,
    group_idx: np.ndarray,
    sample_labels: list[list[int]],
    n_labels: int,
    anchor: dict[str, tuple[str, bool]] | None,
    ids: list[str],
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    n, n_groups = len(ids), len(keys)
    glabels = GroupLabels.from_samples(group_idx, n_groups, sample_labels, n_labels)
    sets = proto.sets
    fixed = np.full(n_groups, -1, np.int64)
    extra: dict[str, Any] = {}
    anchored_train = np.zeros(n, bool)
    anchored_rows = np.zeros(n, bool)
    if anchor is not None:
        fixed, moved, anchored_rows, anchored_train = _apply_anchor(
            anchor, ids, group_idx, n_groups, sets
        )
        extra["anchor"] = {
            "anchored_samples": int(anchored_rows.sum()),
            "new_samples": int(n - anchored_rows.sum()),
            "moved": len(moved),
            "moved_samples": moved[:50],
            "why_moved": "a new sample linked anchored samples of different sets into one group",
        }
    if proto.kind == "ratio":
        fr = np.array([proto.train, proto.val, proto.test], dtype=np.float64)
        targets = largest_remainder(n, fr)
        assign = stratify(keys, weights, glabels, sets, targets, seed, fixed=fixed, exact=True,
                          keep_presence=True)  # fmt: skip
        split = np.array([sets[int(assign[g])] for g in group_idx], dtype=object)
        return split, split == "train", extra

    if n < MIN_CLEAN_SAMPLES:
        raise ValueError(
            f"split: {n} clean samples are too few for the hashing protocol (it needs at least "
            f"{MIN_CLEAN_SAMPLES}: a query set, a database and a training set); add data or "
            "see what the earlier stages quarantined"
        )
    assert proto.query is not None
    assert proto.train is not None
    q = resolve_size(proto.query, n)
    if q >= n - 1:
        raise ValueError(
            f"split: a query set of {q} ({_size_rule(proto.query)}) would leave too small a "
            f"database ({n} clean samples); lower query or use a fraction"
        )
    targets = np.array([q, n - q], np.int64)
    assign = stratify(keys, weights, glabels, sets, targets, seed, fixed=fixed, exact=True,
                      keep_presence=False)  # fmt: skip
    split = np.array([sets[int(assign[g])] for g in group_idx], dtype=object)
    db = split == "database"
    n_db = int(db.sum())
    t = resolve_size(proto.train, n_db)
    if t > n_db:
        raise ValueError(
            f"split: the training set of {t} ({_size_rule(proto.train)}) is larger than the "
            f"database ({n_db} samples: {n} clean - {n - n_db} query); lower train or query, or "
            "give them as fractions ({fraction: f, max: m})"
        )
    extra["sizes_chosen"] = {
        "query": q,
        "train": t,
        "query_rule": _size_rule(proto.query),
        "train_rule": f"{_size_rule(proto.train)} (of the {n_db}-sample database)",
    }
    # training subset of the database, stratified the same way (groups stay whole)
    db_groups = np.unique(group_idx[db])
    sub = {int(g): i for i, g in enumerate(db_groups)}
    sub_keys = [keys[int(g)] for g in db_groups]
    sub_w = weights[db_groups]
    sub_fixed = np.full(len(db_groups), -1, np.int64)
    if anchor is not None:
        for s in np.flatnonzero(anchored_rows & db):
            sub_fixed[sub[int(group_idx[s])]] = 0 if anchored_train[s] else 1
    rows_db = np.flatnonzero(db)
    sub_of_row = np.array([sub[int(group_idx[s])] for s in rows_db], np.int64)
    sub_labels = GroupLabels.from_samples(
        sub_of_row, len(db_groups), [sample_labels[s] for s in rows_db], n_labels
    )
    if t == n_db:
        choice = np.zeros(len(db_groups), np.int64)
    else:
        choice = stratify(sub_keys, sub_w, sub_labels, ("train", "rest"),
                          np.array([t, n_db - t], np.int64), seed + 1, fixed=sub_fixed,
                          exact=True)  # fmt: skip
    in_train = np.zeros(n, bool)
    in_train[rows_db] = choice[sub_of_row] == 0
    return split, in_train, extra


def _apply_anchor(
    anchor: dict[str, tuple[str, bool]],
    ids: list[str],
    group_idx: np.ndarray,
    n_groups: int,
    sets: Sequence[str],
) -> tuple[np.ndarray, list[dict[str, str]], np.ndarray, np.ndarray]:
    set_index = {s: j for j, s in enumerate(sets)}
    votes: list[Counter[int]] = [Counter() for _ in range(n_groups)]
    anchored_rows = np.zeros(len(ids), bool)
    anchored_train = np.zeros(len(ids), bool)
    for i, sid in enumerate(ids):
        a = anchor.get(sid)
        if a is None:
            continue
        anchored_rows[i] = True
        anchored_train[i] = a[1]
        votes[int(group_idx[i])][set_index[a[0]]] += 1
    fixed = np.full(n_groups, -1, np.int64)
    for g, v in enumerate(votes):
        if v:
            fixed[g] = min(v, key=lambda j: (-v[j], j))  # most anchored members, then set order
    moved = []
    for i, sid in enumerate(ids):
        a = anchor.get(sid)
        if a is not None and set_index[a[0]] != fixed[int(group_idx[i])]:
            moved.append(
                {"sample_id": sid, "from": a[0], "to": sets[int(fixed[int(group_idx[i])])]}
            )
    return fixed, moved, anchored_rows, anchored_train


def _check_nonempty(
    split: np.ndarray,
    in_train: np.ndarray,
    sets: Sequence[str],
    n: int,
    n_groups: int,
    spec: dict[str, Any],
) -> None:
    sizes = {s: int((split == s).sum()) for s in sets}
    if "query" in sets:
        sizes["train (in_train)"] = int(in_train.sum())
    empty = [s for s, v in sizes.items() if v == 0]
    if empty:
        raise ValueError(
            f"split would leave {', '.join(repr(s) for s in empty)} empty: sizes "
            f"{', '.join(f'{k}={v}' for k, v in sizes.items())} for {n} clean samples in "
            f"{n_groups} near-duplicate groups (protocol {spec}); add data or change the protocol"
        )


# --------------------------------------------------------------------------- metrics


def _metrics(
    params: SplitParams,
    protocol_name: str,
    spec: dict[str, Any],
    mode: str,
    sets: Sequence[str],
    split: np.ndarray,
    in_train: np.ndarray,
    group_idx: np.ndarray,
    weights: np.ndarray,
    pairs: Sequence[Any],
    label_names: list[str],
    sample_labels: list[list[int]],
    audit: dict[str, Any],
    extra: dict[str, Any],
) -> dict[str, Any]:
    assigned = split != ""
    n = int(assigned.sum())
    masks = {s: split == s for s in sets}
    if "query" in sets:
        masks["train"] = in_train & assigned
    sizes = {s: int(m.sum()) for s, m in masks.items()}
    per_label: dict[str, Any] = {}
    missing: dict[str, list[str]] = {s: [] for s in masks}
    worst = weighted = 0.0
    n_assignments = 0
    lab_rows: list[list[int]] = [[] for _ in label_names]
    for i, labs in enumerate(sample_labels):
        if assigned[i]:
            for j in labs:
                lab_rows[j].append(i)
    for j, name in enumerate(label_names):
        rows = np.asarray(lab_rows[j], np.int64)
        total = len(rows)
        entry: dict[str, Any] = {"total": total}
        for s, m in masks.items():
            c = int(m[rows].sum()) if total else 0
            share = c / total if total else 0.0
            expected = sizes[s] / n if n else 0.0
            entry[s] = c
            worst = max(worst, abs(share - expected))
            weighted += total * abs(share - expected)
            n_assignments += total
            if c == 0 and total >= len(sets):
                missing[s].append(name)
        per_label[name] = entry
    return {
        "stage": STAGE,
        "mode": mode,
        "protocol": {"name": protocol_name, **spec},
        "seed": params.seed,
        "stratified": bool(params.stratify and label_names and mode == "assigned"),
        "samples": n,
        "sizes": sizes,
        "in_train": int((in_train & assigned).sum()),
        "groups": {
            "count": len(np.unique(group_idx[assigned])) if n else 0,
            "sizes": size_histogram(group_idx),
            "largest": int(weights.max()) if len(weights) else 0,
            "linked_by": {p.kind: {"radius": p.radius, "pairs": len(p.pairs)} for p in pairs},
        },
        "labels": {
            "count": len(label_names),
            "unlabelled_samples": int(
                sum(1 for i, x in enumerate(sample_labels) if not x and assigned[i])
            ),
            "missing_from_a_set": {s: v for s, v in missing.items()},
            # |share of a label's samples in a set - share of all samples in that set|
            "share_deviation": {
                "max": round(worst, 4),
                "mean_weighted_by_label_size": round(weighted / n_assignments, 4)
                if n_assignments
                else 0.0,
            },
            "per_label": per_label,
        },
        "leakage": audit,
        **extra,
    }
