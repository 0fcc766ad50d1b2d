"""A release's outputs, read from the DVC cache through its ``dvc.lock``, not from the workspace.

An export, a data card or an impact list is *of a release*. Reading the workspace would be
right only while the workspace is that release, and restoring it (``cmrops release checkout``)
would rewrite the outputs under a running DAG or a user's experiment. So these readers take
the release's recorded ``dvc.lock`` and open each output by its hash in the DVC cache - the
exact bytes of that release whatever the workspace holds now; an object missing from the cache
is fetched from the DVC remote (its ``files/md5/..`` layout) into the cache first, as
``dvc fetch`` would. Metrics and plots (``cache: false``) come from the release record itself.

Layout (DVC 3): a file output's cache object is ``<cache>/<md5[:2]>/<md5[2:]>``; a directory
output's md5 ends in ``.dir`` and its object is a JSON list of ``{"relpath", "md5"}``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cmrops.releases import Release, ReleaseError

log = logging.getLogger(__name__)

__all__ = ["MissingOutputError", "ReleaseData"]


class MissingOutputError(ReleaseError):
    """An output the release names is in neither the DVC cache nor the remote."""


@dataclass(frozen=True)
class _Out:
    path: str  # the output's path in dvc.lock (a file or a folder)
    md5: str
    stage: str

    @property
    def is_dir(self) -> bool:
        return self.md5.endswith(".dir")


class ReleaseData:
    """Read-only access to one release's outputs (see the module docstring)."""

    def __init__(
        self, project: str | os.PathLike[str], release: Release, remote: str | None = None
    ) -> None:
        import yaml

        self.project = Path(project).resolve()
        self.release = release
        self.remote = remote
        lock = yaml.safe_load(release.file("dvc.lock").read_text(encoding="utf-8")) or {}
        self.outs: dict[str, _Out] = {}
        for stage, spec in (lock.get("stages") or {}).items():
            for out in spec.get("outs") or []:
                if out.get("md5"):
                    self.outs[str(out["path"])] = _Out(str(out["path"]), str(out["md5"]), stage)
        self._dirs: dict[str, dict[str, str]] = {}
        self._cache: Path | None = None

    # -- where things are --------------------------------------------------------------------

    @property
    def cache(self) -> Path:
        """The DVC cache's ``files/md5`` folder of the project: ``cache.dir`` of the project's
        ``.dvc/config`` / ``config.local`` (relative to ``.dvc/``), else ``.dvc/cache``. Read
        from the files, not through ``dvc.repo.Repo`` (seconds to open, per export)."""
        if self._cache is None:
            import configparser

            base = self.project / ".dvc"
            where = base / "cache"
            for name in ("config", "config.local"):
                cp = configparser.ConfigParser(strict=False, interpolation=None)
                try:
                    cp.read(base / name, encoding="utf-8")
                except configparser.Error:
                    continue
                if cp.has_option("cache", "dir"):
                    d = Path(os.path.expanduser(cp.get("cache", "dir")))
                    where = d if d.is_absolute() else (base / d).resolve()
            self._cache = where / "files" / "md5"
        return self._cache

    def _object(self, md5: str) -> Path:
        return self.cache / md5[:2] / md5[2:]

    def _fetch(self, md5s: list[str]) -> None:
        """Objects missing from the cache, from the DVC remote's ``files/md5`` into the cache."""
        from cmrops import releases, storage, versioning

        missing = [m for m in md5s if not self._object(m).is_file()]
        if not missing:
            return
        try:
            info = versioning.remote_info(self.project, self.remote)
        except versioning.VersioningError as e:
            raise MissingOutputError(
                f"release {self.release.id}: {len(missing)} object(s) are not in the DVC cache "
                f"and there is no remote to fetch them from ({e})"
            ) from e
        url = f"{info.url.rstrip('/')}/files/md5"
        rels = [f"{m[:2]}/{m[2:]}" for m in missing]
        with releases._endpoint(info.endpoint):
            storage.pull(url, rels, self.cache)
        still = [m for m in missing if not self._object(m).is_file()]
        if still:
            raise MissingOutputError(
                f"release {self.release.id}: {len(still)} object(s) (e.g. {still[0]}) are in "
                f"neither the DVC cache nor the remote {info.url}; was the release pushed "
                "(dvc push), or were its objects garbage-collected (dvc gc)?"
            )

    def _entry(self, rel: str) -> tuple[_Out, str]:
        """The output holding ``rel`` and ``rel``'s path inside it ('' for the output itself)."""
        rel = rel.strip("/")
        for path, out in self.outs.items():
            if rel == path:
                return out, ""
            if out.is_dir and rel.startswith(path + "/"):
                return out, rel[len(path) + 1 :]
        raise MissingOutputError(
            f"release {self.release.id}: {rel} is not an output of its dvc.lock"
        )

    def _listing(self, out: _Out) -> dict[str, str]:
        """relpath -> md5 of a directory output (its ``.dir`` object)."""
        if out.path not in self._dirs:
            self._fetch([out.md5])
            items = json.loads(self._object(out.md5).read_text(encoding="utf-8"))
            self._dirs[out.path] = {str(i["relpath"]): str(i["md5"]) for i in items}
        return self._dirs[out.path]

    # -- reading -----------------------------------------------------------------------------

    def has(self, rel: str) -> bool:
        """``rel`` is an output (or a file of a directory output) of the release, or one of its
        recorded small files."""
        if rel in self.release.files:
            return True
        try:
            out, inner = self._entry(rel)
        except MissingOutputError:
            return False
        if not inner:
            return True
        listing = self._listing(out)
        return inner in listing or any(k.startswith(inner + "/") for k in listing)

    def path(self, rel: str) -> Path:
        """A local, read-only path holding file ``rel`` of the release (never write to it: it
        is a DVC cache object). Fetched from the remote into the cache when missing."""
        if rel in self.release.files:
            return self.release.file(rel)
        out, inner = self._entry(rel)
        if not inner:
            if out.is_dir:
                raise MissingOutputError(f"release {self.release.id}: {rel} is a folder")
            md5 = out.md5
        else:
            if not out.is_dir:
                raise MissingOutputError(f"release {self.release.id}: {out.path} is a file")
            listing = self._listing(out)
            if inner not in listing:
                raise MissingOutputError(
                    f"release {self.release.id}: no file {inner} in its {out.path}"
                )
            md5 = listing[inner]
        self._fetch([md5])
        return self._object(md5)

    def files(self, folder: str) -> list[tuple[str, str]]:
        """``(path relative to the project, md5)`` of every file under ``folder``, sorted."""
        folder = folder.strip("/")
        out, inner = self._entry(folder)
        if not out.is_dir:
            return [(out.path, out.md5)]
        prefix = inner + "/" if inner else ""
        return sorted(
            (f"{out.path}/{k}", m) for k, m in self._listing(out).items() if k.startswith(prefix)
        )

    def prefetch(self, folder: str) -> None:
        """Fetch every object under ``folder`` missing from the cache in one pass."""
        self._fetch([m for _, m in self.files(folder)])

    def read_json(self, rel: str) -> dict[str, Any] | None:
        """A JSON object of the release (recorded file or output), or None when absent."""
        if not self.has(rel):
            return None
        data = json.loads(self.path(rel).read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else None

    def materialize(self, folders: list[str], dest: str | os.PathLike[str]) -> Path:
        """A read-only view of ``folders`` (outputs or folders inside them) under ``dest``,
        laid out as in the project: every file a symbolic link to its cache object. For code
        that takes folders (a stage function re-run on a release: the ablation)."""
        root = Path(dest)
        for folder in folders:
            for rel, _ in self._iter_files(folder):
                link = root / rel
                link.parent.mkdir(parents=True, exist_ok=True)
                if link.is_symlink() or link.exists():
                    link.unlink()
                link.symlink_to(self.path(rel))
        return root

    def _iter_files(self, folder: str) -> Iterator[tuple[str, str]]:
        folder = folder.strip("/")
        recorded = sorted(
            r for r in self.release.files if r == folder or r.startswith(folder + "/")
        )
        yield from ((r, "") for r in recorded)
        if folder in self.release.files:
            return
        inside = [p for p in self.outs if p == folder or p.startswith(folder + "/")]
        if inside:  # a folder above outputs (data/raw holds several, and its metrics.json)
            for p in sorted(inside):
                yield from self.files(p)
        elif not recorded:
            yield from self.files(folder)
