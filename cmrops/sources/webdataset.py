"""WebDataset tar shards, read as a stream (``tarfile`` mode ``r|*``, plain or compressed).

Members are grouped into samples by key: the member path up to the first dot of its base name
(``d/0001.jpg`` and ``d/0001.txt`` -> key ``d/0001``), members of one sample being adjacent, as
WebDataset writes them. A sample needs one image member (``.jpg``, ``.jpeg``, ``.png``,
``.webp``, also as the last part of a longer extension such as ``.seg.png``) and a caption:
``.txt`` (one caption a line) and/or ``.json`` with ``"caption"``
(string) or ``"captions"`` (list), and optional ``"labels"`` (list); other JSON keys and the
extensions of other members go to ``extra``.

Nothing is ever extracted by name. A member that is absolute, contains ``..``, or is a link,
device or fifo is refused (``unsafe_member``) without being read. A shard that ends early
(truncated data or header, no end-of-archive marker, a broken compressed stream) keeps the samples
completed before the break; the sample being read when it ended, whose members may be missing, is
quarantined (``truncated_shard``), and so is the shard as a whole when no sample was pending (not a
tar at all, or only refused members). ``source_key`` is ``"<shard file name>/<key>"``.

Header sizes are checked before a byte of the member is read or skipped (GNU base-256 and pax
``size`` records included): a size beyond what an uncompressed shard still holds ends the shard at
once as ``truncated_shard`` (a header bomb claiming a petabyte costs nothing), and so does a pax
or GNU long-name header above 1 MiB. A member over the size cap (``max_image_bytes``) quarantines
its sample; its data is drained in chunks that stop where the stream really ends, so skipping it
costs at most the bytes that are there, never the bytes claimed.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import re
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from cmrops.sources.base import RawItem, Reason, Record, Reject, caption_lines, clean_labels

log = logging.getLogger(__name__)

IMAGE_EXTS = frozenset({"jpg", "jpeg", "png", "webp"})
TEXT_EXTS = frozenset({"txt", "json"})
_BRACES = re.compile(r"\{(\d+)\.\.(\d+)\}")


#: Largest pax / GNU long-name header accepted: tarfile reads one into memory whole.
MAX_META_HEADER_BYTES = 1 << 20
_META_TYPES = frozenset(
    {
        tarfile.GNUTYPE_LONGNAME,
        tarfile.GNUTYPE_LONGLINK,
        tarfile.XHDTYPE,
        tarfile.XGLTYPE,
        tarfile.SOLARIS_XHDTYPE,
    }
)
_DRAIN_CHUNK = 1 << 20


class ClaimedSizeError(tarfile.ReadError):
    """A member header claims more bytes than the shard can hold (a header bomb or a cut file)."""

    def __init__(self, member: str, message: str) -> None:
        super().__init__(message)
        self.member = member


class _EndTracking(tarfile.TarInfo):
    """TarInfo that notes whether the archive ended with a proper end-of-archive block, and
    checks every header's claimed size before tarfile reads or skips that many bytes.

    In stream mode ``tarfile`` treats a missing or cut header after the first member as the end
    of the archive, silently; this hook (the documented ``TarFile(tarinfo=...)`` extension point)
    lets the reader tell a clean end from a truncated shard. Stream mode also skips a member by
    reading its claimed size in 16 KiB steps, and keeps stepping after the data ends: a header
    that claims a petabyte would keep it busy for days. :meth:`fromtarfile` refuses claims an
    uncompressed shard cannot hold and drains an over-cap member itself, stopping at the real end.

    The reader makes a subclass per shard with :attr:`raw_size` (the file's size) and
    :attr:`max_member_bytes` (the member cap) set.
    """

    raw_size: int = 0
    max_member_bytes: int = 0

    @classmethod
    def fromtarfile(cls, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        try:
            info = super().fromtarfile(tarfile_)
        except tarfile.EOFHeaderError:
            tarfile_.cmrops_clean_end = True  # type: ignore[attr-defined]
            raise
        # what tarfile will skip to reach the next header (after any pax "size" override)
        claimed = tarfile_.offset - info.offset_data
        if claimed > 0:
            cls._check_room(tarfile_, info, info.offset_data, claimed)
            if info.size > cls.max_member_bytes:
                _drain(tarfile_, info, claimed)
        return info

    def _proc_member(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        # runs before tarfile reads a pax / GNU header's data into memory or skips member data
        if self.type in _META_TYPES:
            if self.size > MAX_META_HEADER_BYTES:
                raise ClaimedSizeError(
                    self.name,
                    f"extended header {_clean(self.name)!r} claims {self.size} bytes (more "
                    f"than {MAX_META_HEADER_BYTES})",
                )
            self._check_room(tarfile_, self, self.offset + tarfile.BLOCKSIZE, self.size)
        elif self.isreg() or self.type not in tarfile.SUPPORTED_TYPES:
            self._check_room(tarfile_, self, self.offset + tarfile.BLOCKSIZE, self.size)
        return super()._proc_member(tarfile_)  # type: ignore[misc]

    @classmethod
    def _check_room(
        cls, tarfile_: tarfile.TarFile, info: tarfile.TarInfo, start: int, claimed: int
    ) -> None:
        """Refuse ``claimed`` bytes from ``start`` beyond the end of an uncompressed shard (a
        compressed stream's length is unknown until read: :func:`_drain` bounds those)."""
        if getattr(tarfile_.fileobj, "comptype", None) != "tar":
            return
        left = max(cls.raw_size - start, 0)
        if claimed > left:
            raise ClaimedSizeError(
                info.name,
                f"member {_clean(info.name)!r} claims {info.size} bytes but only {left} remain "
                "in the file",
            )


def _drain(tarfile_: tarfile.TarFile, info: tarfile.TarInfo, claimed: int) -> None:
    """Read past ``claimed`` bytes of member data that will not be kept, in chunks, stopping
    at the real end of the stream (where tarfile's own skip would keep going)."""
    stream = tarfile_.fileobj
    assert stream is not None
    done = 0
    while done < claimed:
        got = len(stream.read(min(_DRAIN_CHUNK, claimed - done)))
        if not got:
            raise ClaimedSizeError(
                info.name,
                f"member {_clean(info.name)!r} claims {info.size} bytes but the stream ends "
                f"after {done}",
            )
        done += got


@dataclass
class _Group:
    key: str
    members: dict[str, bytes] = field(default_factory=dict)  # extension -> content
    problem: Reject | None = None


class WebDatasetSource:
    """Samples from a list of tar shards (paths, globs, or ``{000..009}`` brace ranges)."""

    def __init__(self, name: str, shards: list[Path], max_member_bytes: int) -> None:
        self.name = name
        self.shards = shards
        self.max_member_bytes = max_member_bytes
        if not shards:
            raise ValueError(f"source {name!r}: no shards given (set 'shards' in params)")
        for shard in shards:
            if not shard.is_file():
                raise FileNotFoundError(
                    f"{shard}: tar shard of source {name!r} not found (fix 'shards' in params)"
                )

    def size_hint(self) -> int | None:
        return None

    def __iter__(self) -> Iterator[Record]:
        for shard in self.shards:
            yield from self._shard_records(shard)

    def _shard_records(self, shard: Path) -> Iterator[Record]:
        group: _Group | None = None
        seen: set[str] = set()
        error: str | None = None
        clean_end = False
        cut_at: str | None = None  # the member whose claimed size ended the shard
        with shard.open("rb") as raw:
            bounded = type(
                "_BoundedTarInfo",
                (_EndTracking,),
                {
                    "raw_size": os.fstat(raw.fileno()).st_size,
                    "max_member_bytes": self.max_member_bytes,
                },
            )
            try:
                with tarfile.open(fileobj=raw, mode="r|*", tarinfo=bounded) as tf:
                    for member in tf:
                        unsafe = _unsafe(member)
                        if unsafe:
                            yield Reject(
                                self.name,
                                f"{shard.name}/{_clean(member.name)}",
                                Reason.UNSAFE_MEMBER,
                                f"tar member refused: {unsafe}",
                                {"member": _clean(member.name), "type": _kind(member)},
                            )
                            continue
                        if not member.isfile():
                            continue  # directories
                        key, ext = _split_name(member.name)
                        if not key or ext is None:
                            continue  # hidden files, names without an extension
                        if group is None or key != group.key:
                            if group is not None:
                                yield self._finish(shard, group)
                            group = _Group(key)
                            if key in seen:
                                group.problem = Reject(
                                    self.name,
                                    f"{shard.name}/{key}",
                                    Reason.DUPLICATE_KEY,
                                    f"key {key!r} appears again after other samples",
                                )
                            seen.add(key)
                        self._add_member(tf, member, ext, group, shard)
                    clean_end = getattr(tf, "cmrops_clean_end", False)
            except ClaimedSizeError as e:
                error, cut_at = str(e), e.member
            except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
                error = f"{type(e).__name__}: {e}"
        if cut_at is not None:
            # the header was refused before the loop saw it: the pending sample is whole unless
            # the refused member belongs to it
            key, ext = _split_name(cut_at)
            if group is not None and key != group.key:
                yield self._finish(shard, group)
                group = None
            if group is None and key and ext is not None and _unsafe_name(cut_at) is None:
                group = _Group(key)
        if error is None and not clean_end:
            error = "the archive ends without its end-of-archive blocks"
        if error is None:
            if group is not None:
                yield self._finish(shard, group)
            return
        log.warning("%s: %s is truncated or corrupt (%s)", self.name, shard, error)
        if group is not None:
            yield Reject(
                self.name,
                f"{shard.name}/{group.key}",
                Reason.TRUNCATED_SHARD,
                f"the shard ended while this sample was read ({error})",
                {"shard": shard.name, "members_read": sorted(group.members)},
            )
        else:
            yield Reject(
                self.name,
                shard.name,
                Reason.TRUNCATED_SHARD,
                f"the shard ended early ({error}); samples after the break are lost",
                {"shard": shard.name, "samples_read": len(seen)},
            )

    def _add_member(
        self, tf: tarfile.TarFile, member: tarfile.TarInfo, ext: str, group: _Group, shard: Path
    ) -> None:
        if group.problem is not None:
            return
        key = f"{shard.name}/{group.key}"
        if ext in group.members:
            group.problem = Reject(
                self.name,
                key,
                Reason.DUPLICATE_MEMBER,
                f"member {_clean(member.name)} appears twice",
            )
            return
        if member.size > self.max_member_bytes:
            reason = Reason.IMAGE_TOO_LARGE if _is_image(ext) else Reason.MALFORMED_ROW
            group.problem = Reject(
                self.name,
                key,
                reason,
                f"member {_clean(member.name)} is {member.size} bytes, over "
                f"the {self.max_member_bytes} byte limit",
            )
            return
        if not _is_image(ext) and ext not in TEXT_EXTS:
            group.members[ext] = b""  # noted, not read
            return
        fh = tf.extractfile(member)
        data = fh.read() if fh is not None else b""
        if len(data) != member.size:
            raise tarfile.ReadError(f"member {member.name} is cut short")
        group.members[ext] = data

    def _finish(self, shard: Path, group: _Group) -> Record:
        key = f"{shard.name}/{group.key}"
        if group.problem is not None:
            return group.problem
        images = sorted(e for e in group.members if _is_image(e))
        if len(images) > 1:
            return Reject(
                self.name,
                key,
                Reason.MULTIPLE_IMAGES,
                f"sample has several images: {', '.join(images)}",
            )
        captions: list[str] = []
        labels: list[str] = []
        extra: dict[str, Any] = {"shard": shard.name}
        if "txt" in group.members:
            try:
                captions.extend(caption_lines(group.members["txt"].decode("utf-8-sig")))
            except UnicodeDecodeError as e:
                return Reject(
                    self.name,
                    key,
                    Reason.INVALID_UTF8,
                    f"{group.key}.txt is not UTF-8 (byte {e.start})",
                )
        if "json" in group.members:
            try:
                meta = json.loads(group.members["json"].decode("utf-8-sig"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                return Reject(self.name, key, Reason.MALFORMED_JSON, f"{group.key}.json: {e}")
            if not isinstance(meta, dict):
                return Reject(
                    self.name,
                    key,
                    Reason.MALFORMED_JSON,
                    f"{group.key}.json is a {type(meta).__name__}, not an object",
                )
            problem = _take_json(meta, captions, labels, extra)
            if problem:
                return Reject(self.name, key, Reason.MALFORMED_JSON, f"{group.key}.json: {problem}")
        others = sorted(e for e in group.members if not _is_image(e) and e not in TEXT_EXTS)
        if others:
            extra["ignored_members"] = others
        if not images:
            return Reject(
                self.name,
                key,
                Reason.MISSING_IMAGE,
                f"sample has no image member (has: {', '.join(sorted(group.members))})",
            )
        if not captions:
            return Reject(
                self.name,
                key,
                Reason.MISSING_CAPTION,
                "sample has no .txt caption nor a caption in its .json",
            )
        return RawItem(
            self.name,
            key,
            tuple(captions),
            clean_labels(labels),
            data=group.members[images[0]],
            extra=extra,
        )


def expand_shards(patterns: list[str], base: Path) -> list[Path]:
    """Shard paths from patterns: ``{000..009}`` ranges and globs, relative to ``base``.

    A glob that matches nothing is an error (it would silently read no data); a plain path is
    returned as is, so that a missing file is reported by the source, by name.
    """
    out: list[Path] = []
    for pattern in patterns:
        for spec in _expand_braces(pattern):
            full = spec if Path(spec).is_absolute() else str(base / spec)
            if glob.has_magic(full):
                matches = sorted(glob.glob(full))
                if not matches:
                    raise FileNotFoundError(f"{full}: no tar shard matches this pattern")
                out.extend(Path(m) for m in matches)
            else:
                out.append(Path(full))
    return out


def _expand_braces(pattern: str) -> list[str]:
    m = _BRACES.search(pattern)
    if not m:
        return [pattern]
    lo, hi = m.group(1), m.group(2)
    width = len(lo)
    head, tail = pattern[: m.start()], pattern[m.end() :]
    return [
        s for i in range(int(lo), int(hi) + 1) for s in _expand_braces(f"{head}{i:0{width}d}{tail}")
    ]


def _is_image(ext: str) -> bool:
    """``jpg``, ``png``, ``seg.png``...: the last dotted part names an image format."""
    return ext.rpartition(".")[2] in IMAGE_EXTS


def _unsafe(member: tarfile.TarInfo) -> str | None:
    unsafe = _unsafe_name(member.name)
    if unsafe:
        return unsafe
    if member.issym() or member.islnk():
        return f"{_kind(member)} to {_clean(member.linkname)!r}"
    if not (member.isfile() or member.isdir()):
        return f"{_kind(member)} member"
    return None


def _unsafe_name(name: str) -> str | None:
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return f"absolute path {_clean(name)!r}"
    if ".." in parts:
        return f"path {_clean(name)!r} climbs out with '..'"
    return None


def _kind(member: tarfile.TarInfo) -> str:
    for test, label in (
        (member.issym, "symlink"),
        (member.islnk, "hard link"),
        (member.ischr, "character device"),
        (member.isblk, "block device"),
        (member.isfifo, "fifo"),
        (member.isdir, "directory"),
        (member.isfile, "file"),
    ):
        if test():
            return label
    return "special file"


def _split_name(name: str) -> tuple[str, str | None]:
    """``a/b/0001.seg.png`` -> (``a/b/0001``, ``seg.png``); hidden names give an empty key."""
    name = name[2:] if name.startswith("./") else name
    head, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    if not dot or not stem:
        return "", None
    return (f"{head}/{stem}" if head else stem), ext.lower()


def _take_json(
    meta: dict[str, Any], captions: list[str], labels: list[str], extra: dict[str, Any]
) -> str | None:
    cap, caps, labs = meta.get("caption"), meta.get("captions"), meta.get("labels")
    if cap is not None:
        if not isinstance(cap, str):
            return "'caption' must be a string"
        captions.append(cap)
    if caps is not None:
        if not isinstance(caps, list) or not all(isinstance(c, str) for c in caps):
            return "'captions' must be a list of strings"
        captions.extend(caps)
    if labs is not None:
        if not isinstance(labs, list) or not all(isinstance(x, str) for x in labs):
            return "'labels' must be a list of strings"
        labels.extend(labs)
    extra.update({k: v for k, v in meta.items() if k not in ("caption", "captions", "labels")})
    return None


def _clean(text: str) -> str:
    return text.encode("utf-8", "replace").decode("utf-8")
