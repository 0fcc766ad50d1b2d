"""Human labels from files: CSV, JSONL and Label Studio JSON exports.

Every reader turns a file into :class:`Statement` s - "sample *key* has labels *L*" - that
:class:`KeyIndex` then maps to sample ids. The same readers read manual label files and review
answers (a filled-in ``review_queue.csv`` or a Label Studio export of ``review_tasks.json``).

**Sample keys.** A key is a ``sample_id`` (16 hex chars) or a ``source_key`` (the sample's place
in its source: relative path, ``<split>/<file_name>`` for COCO, tar key, URL). A sample id is
looked up first. When two sources share a ``source_key``, a ``source`` column (or field) naming
the source picks one; without it the key is ambiguous, which is an error like an unknown key.
A key of a sample that preprocess quarantined is skipped and counted, not an error.

**CSV** (``.csv``; ``.tsv`` is tab-separated): a header row, then one row per sample or per
(sample, label). The key column is the first of ``key``, ``sample_id``, ``source_key`` present
(or ``key_column``); the label column the first of ``answer``, ``label``, ``labels`` (or
``label_column``). A label cell holds one label or several separated by ``|``; ``-`` means "no
label of the vocabulary applies"; a blank cell says nothing (an unanswered review row).

**JSONL** (``.jsonl``, ``.ndjson``): one object per line with the same fields; the label value
is a string (``|``-separated, ``-`` as above) or a list of strings (``[]`` = no label); ``null``
or a missing field says nothing.

**Label Studio** (``.json``): the JSON export (a list of tasks). The key is ``data.sample_id``,
else ``data.source_key``, else ``data.key`` (or ``key_column``). Of a task's annotations, those
cancelled are ignored; a ``ground_truth`` one wins, else the most recently updated (then highest
id). Its labels are every ``value.choices`` item and the leaf (last element) of every
``value.taxonomy`` path of its results; an annotation with no choices means "no label". A task
without annotations (predictions only) says nothing.

**MIRFlickr-25K annotations** (``format: mirflickr``, or a folder path with ``auto``): the
release's ``mirflickr25k_annotations_v080/`` folder, one ``<concept>.txt`` per label listing the
numbers of its images, one a line (``im<N>.jpg`` of the image folder). The 24 plain lists are the
labels of the cross-modal hashing protocol (DCMH's ``LAll`` has these 24 columns); the 14
``<concept>_r1.txt`` lists (the concept is salient - a strict subset) are read instead with
``label_column: r1``, naming the same concept without the suffix. The key of image N is
``key_column`` formatted with ``n`` (default ``im{n}.jpg``, the ``source_key`` of a folder source
rooted at ``mirflickr/``; ``mirflickr/im{n}.jpg`` when the source is rooted one level up). Image
numbers of images that were not collected are skipped (a subset is fine), but when none of the
numbers is a sample the key pattern is wrong and that is an error. An image in no list says
nothing (its automatic labels stand); MIRFlickr's unlabelled images are usually left out of the
hashing protocol.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cmrops.labels.vocab import LABEL_SEPARATOR, NO_LABEL

log = logging.getLogger(__name__)

FileFormat = Literal["auto", "csv", "jsonl", "labelstudio", "mirflickr"]
KEY_COLUMNS = ("key", "sample_id", "source_key")
LABEL_COLUMNS = ("answer", "label", "labels")
LS_KEY_FIELDS = ("sample_id", "source_key", "key")
_SHOWN = 5  # unknown keys named in an error
MIRFLICKR_KEY = "im{n}.jpg"
MIRFLICKR_LISTS = ("plain", "r1")


class LabelFileError(ValueError):
    """A label file cannot be read: wrong format, missing columns, bad JSON."""


class UnknownSampleKeyError(ValueError):
    """A label file names samples that are not in the input."""


@dataclass(frozen=True)
class Statement:
    """One file's word on one sample: its labels as written (``()`` = no label applies)."""

    key: str
    source: str | None
    labels: tuple[str, ...]
    where: str  # "<file>:<line>" or "<file>:task <i>", for messages and evidence
    optional: bool = False  # names a sample that may not have been collected (a subset)


def detect_format(path: Path) -> Literal["csv", "jsonl", "labelstudio", "mirflickr"]:
    if path.is_dir():
        return "mirflickr"
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        return "csv"
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix == ".json":
        return "labelstudio"
    raise LabelFileError(
        f"{path}: cannot tell the format from the extension {suffix!r}; use .csv/.tsv, "
        ".jsonl or .json (Label Studio export), a MIRFlickr annotation folder, or set 'format'"
    )


def read_statements(
    path: Path,
    fmt: FileFormat = "auto",
    key_column: str | None = None,
    label_column: str | None = None,
    name: str | None = None,
) -> list[Statement]:
    """Every statement of the label file at ``path`` (``name`` is how messages call it)."""
    shown = name or str(path)
    if fmt == "mirflickr" or (fmt == "auto" and path.is_dir()):
        return read_mirflickr(path, key_column or MIRFLICKR_KEY, label_column, shown)
    if not path.is_file():
        raise FileNotFoundError(f"{shown}: label file not found")
    kind = detect_format(path) if fmt == "auto" else fmt
    if kind == "csv":
        return _read_csv(path, shown, key_column, label_column)
    if kind == "jsonl":
        return _read_jsonl(path, shown, key_column, label_column)
    return _read_labelstudio(path, shown, key_column)


def _split_cell(text: str) -> tuple[str, ...] | None:
    """A label cell: ``None`` when blank, ``()`` for ``-``, else the ``|``-separated labels."""
    text = text.strip()
    if not text:
        return None
    if text == NO_LABEL:
        return ()
    return tuple(p.strip() for p in text.split(LABEL_SEPARATOR) if p.strip())


def _pick(
    columns: Sequence[str], wanted: str | None, defaults: Sequence[str], what: str, shown: str
) -> str:
    if wanted is not None:
        if wanted not in columns:
            raise LabelFileError(
                f"{shown}: no {what} column {wanted!r}; columns are {', '.join(columns)}"
            )
        return wanted
    for c in defaults:
        if c in columns:
            return c
    raise LabelFileError(
        f"{shown}: no {what} column; expected one of {', '.join(defaults)} "
        f"(columns are {', '.join(columns) or 'none'})"
    )


def _read_csv(
    path: Path, shown: str, key_column: str | None, label_column: str | None
) -> list[Statement]:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh, delimiter=delimiter)
        header = next(reader, None)
        if header is None:
            return []
        columns = [h.strip() for h in header]
        kcol = columns.index(_pick(columns, key_column, KEY_COLUMNS, "sample key", shown))
        lcol = columns.index(_pick(columns, label_column, LABEL_COLUMNS, "label", shown))
        scol = columns.index("source") if "source" in columns else None
        out = []
        for row in reader:
            line = reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            key = row[kcol].strip() if kcol < len(row) else ""
            labels = _split_cell(row[lcol]) if lcol < len(row) else None
            if labels is None:
                continue
            if not key:
                raise LabelFileError(f"{shown}:{line}: empty sample key")
            source = None
            if scol is not None and scol < len(row):
                source = row[scol].strip() or None
            out.append(Statement(key, source, labels, f"{shown}:{line}"))
    return out


def _json_labels(value: Any, where: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return _split_cell(value)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(v.strip() for v in value if v.strip())
    raise LabelFileError(f"{where}: labels must be a string or a list of strings, got {value!r}")


def _read_jsonl(
    path: Path, shown: str, key_column: str | None, label_column: str | None
) -> list[Statement]:
    out = []
    with path.open(encoding="utf-8-sig") as fh:
        for i, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{shown}:{i}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise LabelFileError(f"{where}: not valid JSON ({e.msg})") from e
            if not isinstance(obj, dict):
                raise LabelFileError(f"{where}: expected a JSON object per line")
            fields = list(obj)
            kfield = _pick(fields, key_column, KEY_COLUMNS, "sample key", where)
            present = [f for f in (label_column,) if f] or [f for f in LABEL_COLUMNS if f in obj]
            labels = _json_labels(obj.get(present[0]), where) if present else None
            if labels is None:
                continue
            key = str(obj[kfield]).strip()
            if not key:
                raise LabelFileError(f"{where}: empty sample key")
            source = obj.get("source")
            out.append(Statement(key, str(source) if source else None, labels, where))
    return out


def _read_labelstudio(path: Path, shown: str, key_column: str | None) -> list[Statement]:
    try:
        tasks = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as e:
        raise LabelFileError(f"{shown}: not valid JSON ({e.msg} at line {e.lineno})") from e
    if isinstance(tasks, dict):
        tasks = [tasks]
    if not isinstance(tasks, list):
        raise LabelFileError(f"{shown}: expected a Label Studio JSON export (a list of tasks)")
    out = []
    for i, task in enumerate(tasks):
        where = f"{shown}:task {i}" + (
            f" (id {task['id']})" if isinstance(task, dict) and "id" in task else ""
        )
        if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
            raise LabelFileError(f"{where}: a task needs a 'data' object (is this a JSON export?)")
        data = task["data"]
        fields = [key_column] if key_column else [f for f in LS_KEY_FIELDS if data.get(f)]
        if not fields or not data.get(fields[0]):
            raise LabelFileError(
                f"{where}: data has no sample key; expected one of "
                f"{', '.join([key_column] if key_column else LS_KEY_FIELDS)}"
            )
        annotation = _pick_annotation(task.get("annotations") or [])
        if annotation is None:
            continue
        labels = _annotation_labels(annotation, where)
        source = data.get("source")
        out.append(
            Statement(str(data[fields[0]]).strip(), str(source) if source else None, labels, where)
        )
    return out


def _pick_annotation(annotations: list[Any]) -> dict[str, Any] | None:
    live = [a for a in annotations if isinstance(a, dict) and not a.get("was_cancelled")]
    if not live:
        return None

    def rank(a: dict[str, Any]) -> tuple[bool, str, int]:
        when = str(a.get("updated_at") or a.get("created_at") or "")
        ident = a.get("id")
        return bool(a.get("ground_truth")), when, ident if isinstance(ident, int) else -1

    return max(live, key=rank)


def _annotation_labels(annotation: dict[str, Any], where: str) -> tuple[str, ...]:
    labels: list[str] = []
    for result in annotation.get("result") or []:
        value = result.get("value") if isinstance(result, dict) else None
        if not isinstance(value, dict):
            continue
        for choice in value.get("choices") or []:
            labels.append(str(choice))
        for path in value.get("taxonomy") or []:
            if isinstance(path, list) and path:
                labels.append(str(path[-1]))
            elif isinstance(path, str):
                labels.append(path)
            else:
                raise LabelFileError(f"{where}: taxonomy path {path!r} is not a list of names")
    return tuple(dict.fromkeys(s.strip() for s in labels if s.strip()))


def read_mirflickr(
    folder: Path, key: str = MIRFLICKR_KEY, lists: str | None = None, name: str | None = None
) -> list[Statement]:
    """Statements of a MIRFlickr-25K annotation folder (see module docstring): one per image
    named by some list, with the concepts of every list naming it. ``lists``: ``None`` or
    ``"plain"`` (the 24 ``<concept>.txt``), ``"r1"`` (the ``<concept>_r1.txt``)."""
    shown = name or str(folder)
    if not folder.exists():
        raise FileNotFoundError(
            f"{shown}: MIRFlickr annotation folder not found (the unzipped "
            "mirflickr25k_annotations_v080/ with <concept>.txt lists)"
        )
    if not folder.is_dir():
        raise LabelFileError(
            f"{shown}: format mirflickr reads a folder of <concept>.txt lists, not a file"
        )
    which = lists or "plain"
    if which not in MIRFLICKR_LISTS:
        raise LabelFileError(
            f"{shown}: label_column for format mirflickr is 'plain' (the 24 <concept>.txt) or "
            f"'r1' (the <concept>_r1.txt), got {which!r}"
        )
    if "{n}" not in key:
        raise LabelFileError(
            f"{shown}: key_column for format mirflickr is a pattern with {{n}} for the image "
            f"number (e.g. {MIRFLICKR_KEY!r}), got {key!r}"
        )
    files = sorted(
        f
        for f in folder.glob("*.txt")
        if f.name.lower() != "readme.txt" and f.stem.endswith("_r1") == (which == "r1")
    )
    if not files:
        raise LabelFileError(
            f"{shown}: no {'<concept>_r1.txt' if which == 'r1' else '<concept>.txt'} lists in "
            "the folder (is it mirflickr25k_annotations_v080/?)"
        )
    concepts: dict[int, list[str]] = {}
    first: dict[int, str] = {}
    for f in files:
        concept = f.stem[: -len("_r1")] if which == "r1" else f.stem
        with f.open(encoding="utf-8-sig") as fh:
            for i, line in enumerate(fh, 1):
                text = line.strip()
                if not text:
                    continue
                if not text.isdigit() or int(text) < 1:
                    raise LabelFileError(
                        f"{shown}/{f.name}:{i}: expected an image number (a positive integer) "
                        f"per line, got {text[:40]!r}"
                    )
                n = int(text)
                concepts.setdefault(n, []).append(concept)
                first.setdefault(n, f"{shown}/{f.name}:{i}")
    return [
        Statement(key.format(n=n), None, tuple(dict.fromkeys(concepts[n])), first[n], True)
        for n in sorted(concepts)
    ]


# --------------------------------------------------------------------------- key resolution


class KeyIndex:
    """Maps sample keys (sample_id or source_key, see module docstring) to sample ids."""

    def __init__(
        self,
        samples: Iterable[tuple[str, str, str]],
        quarantined: Iterable[tuple[str | None, str | None, str | None]] = (),
    ) -> None:
        """``samples``: (sample_id, source, source_key) of the input; ``quarantined``: the same
        of samples preprocess dropped (their keys are skipped, not errors)."""
        self._ids: set[str] = set()
        self._by_key: dict[str, dict[str, str]] = {}
        for sid, source, key in samples:
            self._ids.add(sid)
            self._by_key.setdefault(key, {})[source] = sid
        self._gone_ids = set()
        self._gone_keys: set[str] = set()
        for sid, _source, key in quarantined:
            if sid and sid not in self._ids:
                self._gone_ids.add(sid)
            if key and key not in self._by_key:
                self._gone_keys.add(key)

    def resolve(self, key: str, source: str | None = None) -> tuple[str | None, str]:
        """``(sample_id, "ok")`` or ``(None, status)`` with status ``quarantined``, ``unknown``,
        or ``ambiguous: <sources>``."""
        if key in self._ids:
            return key, "ok"
        hits = self._by_key.get(key)
        if hits:
            if source is not None:
                return (hits[source], "ok") if source in hits else (None, "unknown")
            if len(hits) == 1:
                return next(iter(hits.values())), "ok"
            return None, "ambiguous: in sources " + ", ".join(sorted(hits))
        if key in self._gone_ids or key in self._gone_keys:
            return None, "quarantined"
        return None, "unknown"

    def resolve_all(
        self, statements: Sequence[Statement], shown: str
    ) -> tuple[list[tuple[str, Statement]], int]:
        """Each statement with its sample id, and how many were skipped as quarantined.

        Raises :class:`UnknownSampleKeyError` naming the file and the first unknown keys.
        """
        resolved: list[tuple[str, Statement]] = []
        bad: dict[str, str] = {}
        skipped = absent = 0
        for st in statements:
            sid, status = self.resolve(st.key, st.source)
            if sid is not None:
                resolved.append((sid, st))
            elif status == "quarantined":
                skipped += 1
            elif st.optional and status == "unknown":
                absent += 1
            else:
                label = st.key if st.source is None else f"{st.source}:{st.key}"
                bad.setdefault(label, status)
        if bad:
            first = list(bad.items())[:_SHOWN]
            listed = "; ".join(f"{k!r} ({status})" for k, status in first)
            more = f" and {len(bad) - len(first)} more" if len(bad) > len(first) else ""
            raise UnknownSampleKeyError(
                f"{shown}: {len(bad)} sample key(s) not in the input: {listed}{more}. Keys are "
                "the sample_id or the source_key of data/interim/samples.parquet (add a 'source' "
                "column when a source_key is in several sources)"
            )
        if absent and not resolved and not skipped:
            example = next(st.key for st in statements if st.optional)
            raise UnknownSampleKeyError(
                f"{shown}: none of its {absent} images is a sample of the input (e.g. "
                f"{example!r}); set key_column to the pattern of their source_key, e.g. "
                f"'{MIRFLICKR_KEY}' or 'mirflickr/{MIRFLICKR_KEY}'"
            )
        if absent:
            log.warning("%s: %d listed image(s) are not in the input, skipped", shown, absent)
        return resolved, skipped
