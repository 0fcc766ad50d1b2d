"""Run a stage on a full file system, free space, run it again: the full-disk test's body.

Runs inside a private mount namespace (``unshare --mount``, plus ``--map-root-user`` when not
root), so the small tmpfs it mounts disappears with it, whatever happens to the test::

    unshare --mount python -m tests.reliability.full_disk --project P --mount M --size BYTES \\
        --free BYTES --result R.json -- collect --params params.yaml --out data/raw

It copies the project onto a fresh tmpfs of ``--size`` bytes, fills it with a ballast file until
``--free`` bytes are left, runs ``cmrops ARGS`` (which must run out of space), records what it
printed and left behind, deletes the ballast (space is freed), runs the same command again and
records the outputs' fingerprint. The test reads the JSON result.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.reliability.harness import CMROPS, fingerprint
from tests.test_dvc_support import env


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--project", type=Path, required=True)
    ap.add_argument("--mount", type=Path, required=True)
    ap.add_argument("--size", type=int, required=True)
    ap.add_argument("--free", type=int, required=True)
    ap.add_argument("--result", type=Path, required=True)
    ap.add_argument("--outputs", nargs="+", required=True)
    ap.add_argument("args", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    args = a.args[1:] if a.args[:1] == ["--"] else a.args
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={a.size}", "tmpfs", str(a.mount)], check=True
    )
    project = a.mount / "p"
    shutil.copytree(a.project, project, symlinks=True)
    st = os.statvfs(a.mount)
    ballast = a.mount / "ballast"
    fill = st.f_bavail * st.f_frsize - a.free
    with open(ballast, "wb") as fh:
        block = b"\0" * (1 << 20)
        while fill > 0:
            fill -= fh.write(block[: min(len(block), fill)])
    full = _run(args, project)
    full["left"] = _left_behind(project, a.outputs)
    ballast.unlink()  # space is freed
    again = _run(args, project)
    again["fingerprint"] = fingerprint(project, a.outputs)
    a.result.write_text(json.dumps({"full": full, "again": again}))
    return 0


def _run(args: list[str], cwd: Path) -> dict:
    p = subprocess.run([CMROPS, *args], cwd=cwd, env=env(), capture_output=True, text=True)
    return {"rc": p.returncode, "stderr": p.stderr, "stdout": p.stdout}


def _left_behind(project: Path, outputs: list[str]) -> dict:
    """Files under the outputs after the failed run: temporary ones, and stored objects whose
    bytes do not match their name (a torn object would be one)."""
    temporary, torn, files = [], [], []
    for rel in outputs:
        for f in sorted(p for p in (project / rel).rglob("*") if p.is_file()):
            name = f.relative_to(project).as_posix()
            files.append(name)
            scratch = ".collect-spill" in f.parts
            if scratch or f.name.endswith(".tmp") or f.name.startswith(".incoming-"):
                temporary.append(name)
            elif "objects" in f.parts and hashlib.sha256(f.read_bytes()).hexdigest() != f.name:
                torn.append(name)
    return {"temporary": temporary, "torn": torn, "files": files}


if __name__ == "__main__":
    sys.exit(main())
