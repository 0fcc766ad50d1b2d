"""A full disk: a stage that runs out of space fails with one line that names the path and says
what to do - no traceback, no partial file left - and the same command completes, byte for byte
as an uninterrupted run, once space is freed.

The disk is real: a small tmpfs mounted in a private mount namespace (``unshare --mount`` as
root, ``unshare --user --map-root-user --mount`` otherwise), filled with a ballast file until only
some bytes are left, so ``write`` itself returns ENOSPC wherever it happens - storing an object,
spilling the sort buffer, writing a Parquet table. CI runs as root, like this test's author."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.reliability.conftest import COLLECT
from tests.test_dvc_support import REPO, env


def _namespace(tmp: Path) -> list[str]:
    """A command prefix that can mount a tmpfs of its own, or a skip saying why there is none."""
    probe = tmp / "probe"
    probe.mkdir()
    for prefix in (["unshare", "--mount"], ["unshare", "--user", "--map-root-user", "--mount"]):
        try:
            p = subprocess.run(
                [*prefix, "mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(probe)],
                capture_output=True, text=True, timeout=30,
            )  # fmt: skip
        except (OSError, subprocess.TimeoutExpired):
            continue
        if p.returncode == 0:
            return prefix
    pytest.skip("cannot mount a tmpfs here (neither root nor unprivileged user namespaces)")


PAGE = os.sysconf("SC_PAGE_SIZE")  # tmpfs gives every file whole pages


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _pages(files: list[Path]) -> int:
    return sum(-(-f.stat().st_size // PAGE) * PAGE for f in files)


# Where the run is to hit the wall: the free space left, in bytes, from what the uninterrupted run
# wrote: image objects first, then the quarantine and truth tables, then the sort spill (a few
# small files) streamed into samples.parquet
LEVELS = {
    "at_once": lambda objects: 0,
    "storing_images": lambda objects: objects // 2,
    "writing_tables": lambda objects: objects + PAGE,
    "sorting_samples": lambda objects: objects + 2 * PAGE,
}


@pytest.mark.parametrize("level", list(LEVELS))
def test_collect_on_a_full_disk_then_after_freeing_space(raw_project, level, tmp_path):
    prefix = _namespace(tmp_path)
    outputs = raw_project.outputs
    needed = _size(raw_project.path / "data/raw")  # what an uninterrupted run writes
    objects = _pages([p for p in (raw_project.path / "data/raw/objects").rglob("*") if p.is_file()])
    source = tmp_path / "project"
    from tests.reliability.harness import copy_project

    copy_project(raw_project.path, source, drop=outputs)
    free = PAGE + LEVELS[level](objects)  # + the stage lock's page
    mount = tmp_path / "mnt"
    mount.mkdir()
    result = tmp_path / "result.json"
    done = subprocess.run(
        [*prefix, sys.executable, "-m", "tests.reliability.full_disk", "--project", str(source),
         "--mount", str(mount), "--size", str(_size(source) + 4 * needed + (8 << 20)),
         "--free", str(free), "--result", str(result), "--outputs", *outputs, "--", *COLLECT],
        cwd=REPO, env=env(), capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    r = json.loads(result.read_text())
    full, again = r["full"], r["again"]
    stderr = full["stderr"]
    assert full["rc"] == 1, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, stderr[-3000:]
    (line,) = errors
    assert line.startswith("cmrops collect: error: No space left on device: "), line
    assert "data/raw" in line, line  # the path it was writing
    assert "free space" in line, line  # what to do
    assert "rerun" in line, line
    assert full["left"]["temporary"] == [], full["left"]  # no partial file left behind
    assert full["left"]["torn"] == [], full["left"]
    assert "data/raw/samples.parquet" not in full["left"]["files"]
    print(f"{level}: {free} bytes free ({needed} written by a whole run): {line}")
    assert again["rc"] == 0, again["stderr"][-3000:]
    assert again["fingerprint"] == raw_project.reference
