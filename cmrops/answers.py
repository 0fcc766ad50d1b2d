"""The project's review answers: an append-only JSON Lines log that people write (the dashboard's
Review page, or anything else through :func:`append`) and the ``label`` and ``clean`` stages merge
on their next run.

**Where.** ``review/answers.jsonl`` under the project root (:data:`DEFAULT_PATH`); both stages
read it when it is there (``--review-log`` on their command lines, a dependency of both in
``dvc.yaml``, so ``dvc repro`` reruns them after an answer). No params edit is needed.

**Records**, one JSON object per line, each with ``v`` (1), ``id`` (unique), ``at`` (UTC, ISO
8601), ``who``, ``sample_id`` and ``kind``:

* ``kind: "labels"`` - ``action`` (``accept``: the suggested labels are right; ``reject``: no
  label of the vocabulary applies; ``edit``: other labels), ``labels`` (the sample's labels as
  the reviewer left them; ``[]`` = none applies), optional ``note``. The label stage makes them
  the sample's labels with source ``reviewed`` (reviewed > manual > auto). The fields
  ``sample_id`` and ``labels`` are those of the JSONL label files (:mod:`cmrops.labels.manual`).
* ``kind: "quarantine"`` - ``stage`` (``clean``), ``reason`` (the rule that quarantined the
  sample), ``verdict`` (``confirm`` or ``overrule``) and ``why`` (required for an overrule).
  The clean stage keeps a sample whose quarantine by that rule was overruled (another rule may
  still claim it) and lists every verdict it applied in ``data/clean/overrides.parquet``.

The **latest** record of a kind for a sample wins (file order: the order the writes happened).

**Concurrency and crashes.** :func:`append` takes an exclusive ``flock`` on the log, writes the
batch with one ``write`` and fsyncs it; readers take a shared lock, so two sessions answering
at once never lose each other's answers and a reader never sees half a batch. A writer killed
mid-write can leave an unterminated last line: readers ignore it (reported as ``torn_bytes``)
and the next :func:`append` cuts it off before writing. A complete line that is not a valid
record is an error naming the file and line (someone edited the log by hand).

**Merged or pending.** A stage that merged the log records what it read (:func:`merged_record`:
the byte length and SHA-256 of the prefix it read) in ``review_log.json`` beside its outputs; an
answer ending past that prefix is *pending* until the stage runs again (:func:`merge_state`).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Literal

__all__ = [
    "ACTIONS",
    "DEFAULT_PATH",
    "KINDS",
    "VERDICTS",
    "AnswerIndex",
    "AnswerLogError",
    "LogSnapshot",
    "MergeState",
    "Record",
    "append",
    "label_answer",
    "latest",
    "merge_state",
    "merged_record",
    "quarantine_verdict",
    "read",
]

#: The project's review answers, relative to the project root (the folder of params.yaml).
DEFAULT_PATH = "review/answers.jsonl"
#: What a stage that merged the log writes beside its outputs (see :func:`merged_record`).
MERGED_FILE = "review_log.json"
VERSION = 1
KINDS = ("labels", "quarantine")
ACTIONS = ("accept", "reject", "edit")
VERDICTS = ("confirm", "overrule")
MAX_WHO = 100
MAX_TEXT = 2000

Kind = Literal["labels", "quarantine"]


class AnswerLogError(ValueError):
    """The answer log holds a line that is not a valid record, or an answer is malformed."""


# --------------------------------------------------------------------------- records


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _who(who: str) -> str:
    text = " ".join(str(who).split())[:MAX_WHO]
    if not text:
        raise AnswerLogError("who: name the reviewer (a non-empty name)")
    return text


def _sample_id(sample_id: str) -> str:
    if not isinstance(sample_id, str) or not sample_id.strip():
        raise AnswerLogError(f"sample_id: expected a non-empty string, got {sample_id!r}")
    return sample_id.strip()


def label_answer(
    sample_id: str,
    labels: Iterable[str],
    action: str,
    who: str,
    note: str = "",
    at: str | None = None,
) -> dict[str, Any]:
    """A ``labels`` record: ``labels`` are the sample's labels as the reviewer left them
    (empty = no label applies, which ``action="reject"`` requires)."""
    if action not in ACTIONS:
        raise AnswerLogError(f"action must be one of {', '.join(ACTIONS)}, got {action!r}")
    chosen = list(dict.fromkeys(s.strip() for s in labels if s and s.strip()))
    if action == "reject" and chosen:
        raise AnswerLogError("action 'reject' (no label applies) takes no labels")
    return {
        "v": VERSION,
        "id": uuid.uuid4().hex,
        "at": at or _now(),
        "who": _who(who),
        "kind": "labels",
        "sample_id": _sample_id(sample_id),
        "action": action,
        "labels": sorted(chosen),
        "note": str(note).strip()[:MAX_TEXT],
    }


def quarantine_verdict(
    sample_id: str,
    stage: str,
    reason: str,
    verdict: str,
    why: str,
    who: str,
    at: str | None = None,
) -> dict[str, Any]:
    """A ``quarantine`` record: confirm or overrule the quarantine of ``sample_id`` by rule
    ``reason`` of ``stage``; an overrule needs a ``why``."""
    if verdict not in VERDICTS:
        raise AnswerLogError(f"verdict must be one of {', '.join(VERDICTS)}, got {verdict!r}")
    why = str(why).strip()[:MAX_TEXT]
    if verdict == "overrule" and not why:
        raise AnswerLogError("an overrule needs a reason (why the rule was wrong here)")
    if not stage or not reason:
        raise AnswerLogError("stage and reason name the quarantine decision judged")
    return {
        "v": VERSION,
        "id": uuid.uuid4().hex,
        "at": at or _now(),
        "who": _who(who),
        "kind": "quarantine",
        "sample_id": _sample_id(sample_id),
        "stage": str(stage),
        "reason": str(reason),
        "verdict": verdict,
        "why": why,
    }


def _check(obj: Any, where: str) -> dict[str, Any]:
    """``obj`` as a valid record, or :class:`AnswerLogError` saying what is wrong at ``where``."""
    if not isinstance(obj, dict):
        raise AnswerLogError(f"{where}: expected a JSON object")
    if obj.get("v") != VERSION:
        raise AnswerLogError(f"{where}: unknown record version {obj.get('v')!r} (expected 1)")
    kind = obj.get("kind")
    if kind not in KINDS:
        raise AnswerLogError(f"{where}: kind must be one of {', '.join(KINDS)}, got {kind!r}")
    for name in ("id", "at", "who", "sample_id"):
        if not isinstance(obj.get(name), str) or not obj[name]:
            raise AnswerLogError(f"{where}: field {name!r} must be a non-empty string")
    if kind == "labels":
        labels = obj.get("labels")
        if not isinstance(labels, list) or not all(isinstance(s, str) for s in labels):
            raise AnswerLogError(f"{where}: 'labels' must be a list of strings")
        if obj.get("action") not in ACTIONS:
            raise AnswerLogError(f"{where}: action must be one of {', '.join(ACTIONS)}")
    else:
        if obj.get("verdict") not in VERDICTS:
            raise AnswerLogError(f"{where}: verdict must be one of {', '.join(VERDICTS)}")
        for name in ("stage", "reason"):
            if not isinstance(obj.get(name), str) or not obj[name]:
                raise AnswerLogError(f"{where}: field {name!r} must be a non-empty string")
    return obj


@dataclass(frozen=True)
class Record:
    """One answer of the log: its line number, byte span and fields."""

    line: int  # 1-based
    start: int  # byte offset of the line
    end: int  # byte offset after its newline
    data: Mapping[str, Any]

    @property
    def kind(self) -> str:
        return str(self.data["kind"])

    @property
    def sample_id(self) -> str:
        return str(self.data["sample_id"])

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(self.data.get("labels") or ())


# --------------------------------------------------------------------------- writing


@contextlib.contextmanager
def _locked(path: Path, mode: str, how: int) -> Iterator[IO[bytes]]:
    with open(path, mode) as fh:
        fcntl.flock(fh.fileno(), how)
        try:
            yield fh
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def append(path: str | os.PathLike[str], records: Sequence[Mapping[str, Any]]) -> int:
    """Append ``records`` (from :func:`label_answer` / :func:`quarantine_verdict`) to the log at
    ``path`` as one locked, fsynced write; returns the log's size after it. Creates the log
    (and its folder) when absent."""
    lines = []
    for i, rec in enumerate(records):
        _check(dict(rec), f"record {i}")
        lines.append(json.dumps(dict(rec), sort_keys=True, ensure_ascii=False) + "\n")
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(lines).encode("utf-8")
    with _locked(p, "a+b", fcntl.LOCK_EX) as fh:
        size = fh.seek(0, os.SEEK_END)
        if size:
            fh.seek(size - 1)
            if fh.read(1) != b"\n":  # a writer killed mid-line left a torn tail: cut it off
                fh.seek(0)
                size = fh.read().rfind(b"\n") + 1
                fh.truncate(size)
        if data:
            fh.seek(0, os.SEEK_END)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        return size + len(data)


# --------------------------------------------------------------------------- reading


@dataclass
class LogSnapshot:
    """What one read of the log saw: its complete records, the bytes they span from the start
    of the file (``bytes``) and the SHA-256 of those bytes; ``torn_bytes`` of an unterminated
    last line (a write in progress or killed) are not records."""

    path: str
    records: list[Record] = field(default_factory=list)
    bytes: int = 0
    sha256: str = hashlib.sha256(b"").hexdigest()
    torn_bytes: int = 0


def read(path: str | os.PathLike[str]) -> LogSnapshot:
    """Every complete record of the log at ``path`` (an empty snapshot when it is absent)."""
    p = Path(path)
    if not p.is_file():
        return LogSnapshot(str(path))
    with _locked(p, "rb", fcntl.LOCK_SH) as fh:
        data = fh.read()
    return _parse(str(path), data)


def _parse(shown: str, data: bytes, start: int = 0, line0: int = 0) -> LogSnapshot:
    """Records of ``data`` (bytes of the log from offset ``start``, line ``line0 + 1`` on)."""
    end = data.rfind(b"\n") + 1
    records = []
    pos, line = 0, line0
    for raw in data[:end].split(b"\n")[:-1]:
        line += 1
        where = f"{shown}:{line}"
        if raw.strip():
            try:
                obj = json.loads(raw)
            except ValueError as e:
                raise AnswerLogError(f"{where}: not valid JSON ({e})") from e
            records.append(
                Record(line, start + pos, start + pos + len(raw) + 1, _check(obj, where))
            )
        pos += len(raw) + 1
    snap = LogSnapshot(shown, records, start + end, "", len(data) - end)
    snap.sha256 = hashlib.sha256(data[:end]).hexdigest() if start == 0 else ""
    return snap


def latest(records: Iterable[Record], kind: Kind, stage: str | None = None) -> dict[str, Record]:
    """sample_id -> its latest record of ``kind`` (quarantine verdicts: of ``stage`` only)."""
    out: dict[str, Record] = {}
    for r in records:
        if r.kind != kind or (stage is not None and r.data.get("stage") != stage):
            continue
        out[r.sample_id] = r
    return out


class AnswerIndex:
    """The log kept in memory and refreshed by reading only what was appended since (the
    dashboard holds one per project); a log that shrank or was replaced is read again whole."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.records: list[Record] = []
        self.labels: dict[str, Record] = {}
        self.verdicts: dict[str, Record] = {}  # clean's
        self.bytes = 0  # complete lines read so far
        self.lines = 0
        self.torn_bytes = 0
        self._identity: tuple[int, int] | None = None

    def refresh(self) -> AnswerIndex:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self.__init__(self.path)  # type: ignore[misc]
            return self
        identity = (st.st_dev, st.st_ino)
        if identity != self._identity or st.st_size < self.bytes:
            self.__init__(self.path)  # type: ignore[misc]
            self._identity = identity
        if st.st_size == self.bytes + self.torn_bytes:
            return self
        with _locked(self.path, "rb", fcntl.LOCK_SH) as fh:
            fh.seek(self.bytes)
            data = fh.read()
        snap = _parse(str(self.path), data, self.bytes, self.lines)
        self.lines += data[: snap.bytes - self.bytes].count(b"\n")
        self.records.extend(snap.records)
        self.labels.update(latest(snap.records, "labels"))
        self.verdicts.update(latest(snap.records, "quarantine", "clean"))
        self.bytes, self.torn_bytes = snap.bytes, snap.torn_bytes
        return self


# --------------------------------------------------------------------------- merged or pending


def merged_record(snapshot: LogSnapshot | None, log: str | None, **counts: int) -> dict[str, Any]:
    """What a stage writes to ``review_log.json``: the log it read (as named on its command
    line, None when there was none), the prefix it merged (``bytes``, ``sha256``, ``records``)
    and its own counts."""
    if snapshot is None:
        return {"log": log, "bytes": 0, "records": 0, "sha256": None, **counts}
    return {
        "log": log,
        "bytes": snapshot.bytes,
        "records": len(snapshot.records),
        "sha256": snapshot.sha256,
        **counts,
    }


@dataclass(frozen=True)
class MergeState:
    """How far a stage merged the log: ``ran`` (its review_log.json is there), ``bytes`` of the
    log it merged, and ``consistent`` (the log still starts with exactly those bytes; False when
    it was edited or replaced since, so which answers are merged is unknown)."""

    stage: str
    ran: bool
    bytes: int
    consistent: bool
    detail: str = ""

    def merged(self, record: Record) -> bool:
        return self.ran and self.consistent and record.end <= self.bytes


def merge_state(stage: str, merged_json: Path, log: Path) -> MergeState:
    """Compare the ``review_log.json`` a stage wrote with the log as it is now."""
    try:
        info = json.loads(merged_json.read_text(encoding="utf-8"))
        n, digest = int(info.get("bytes") or 0), info.get("sha256")
    except FileNotFoundError:
        return MergeState(stage, False, 0, True, f"{stage} has not run with the answer log yet")
    except (OSError, ValueError, TypeError, AttributeError) as e:
        return MergeState(stage, False, 0, False, f"{merged_json} cannot be read ({e})")
    if n == 0:
        return MergeState(stage, True, 0, True)
    try:
        with open(log, "rb") as fh:
            prefix = fh.read(n)
    except OSError:
        prefix = b""
    ok = len(prefix) == n and hashlib.sha256(prefix).hexdigest() == digest
    why = "" if ok else f"the answer log changed since {stage} merged it (edited or replaced)"
    return MergeState(stage, True, n, ok, why)
