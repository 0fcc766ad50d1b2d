"""``dvc exp run`` as a user meets it: ``-S`` changes only the set value in params.yaml, and
``--dry`` works on a fresh clone (nothing reproduced yet).

``-S`` goes through DVC's own code: ``dvc.utils.hydra.apply_overrides`` (what
``dvc exp run -S`` calls on params.yaml) for several kinds of value, and once end to end with a
queued experiment, whose stash commit holds the params.yaml DVC wrote."""

from __future__ import annotations

import difflib
import shutil
from pathlib import Path

import pytest
import yaml

from tests.test_dvc_support import REPO, make_project, sh

#: (override, the keys it sets)
OVERRIDES = [
    ("train.bits=[32]", ("train", "bits")),
    ("train.methods=[dcmh,contrastive,djsrh,itq,cca,cmfh]", ("train", "methods")),
    ("split.seed=1", ("split", "seed")),
    ("align.train.lr=0.01", ("align", "train", "lr")),
    ("label.zeroshot.min_similarity=0.2", ("label", "zeroshot", "min_similarity")),
    ("preprocess.asr.model=openai/whisper-tiny", ("preprocess", "asr", "model")),
    ("split.protocols.hashing.query.max=100", ("split", "protocols", "hashing", "query", "max")),
    ("label.synonyms.grey=[gray,silver]", ("label", "synonyms", "grey")),
    ("evaluate.top_k=[1,10]", ("evaluate", "top_k")),
]


def apply(path: Path, override: str) -> None:
    from dvc.utils.hydra import apply_overrides

    apply_overrides(str(path), [override])


def key_lines(text: str, keys: tuple[str, ...]) -> range:
    """The line numbers (0-based) of ``keys``'s entry: its key line and its value's lines."""
    from ruamel.yaml import YAML

    node = YAML(typ="rt").load(text)
    for k in keys[:-1]:
        node = node[k]
    start = node.lc.key(keys[-1])[0]
    later = [node.lc.key(k)[0] for k in node if node.lc.key(k)[0] > start]
    if later:
        end = min(later)
    else:  # the last key of its map: up to the next line indented less than it
        indent = node.lc.key(keys[-1])[1]
        lines = text.splitlines()
        end = next(
            (i for i in range(start + 1, len(lines))
             if lines[i].strip() and len(lines[i]) - len(lines[i].lstrip()) < indent),
            len(lines),
        )  # fmt: skip
    return range(start, end)


def changed_lines(before: str, after: str) -> tuple[set[int], int]:
    """Lines of ``before`` that were removed or replaced, and the number of lines added."""
    old: set[int] = set()
    added = 0
    sm = difflib.SequenceMatcher(a=before.splitlines(), b=after.splitlines(), autojunk=False)
    for tag, i1, i2, j1, j2 in sm.get_opcodes():
        if tag != "equal":
            old |= set(range(i1, max(i2, i1 + 1)))  # an insertion counts where it lands
            added += j2 - j1
    return old, added


def test_a_no_op_set_rewrites_params_yaml_byte_for_byte(tmp_path: Path) -> None:
    p = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", p)
    apply(p, f"train.epochs={yaml.safe_load(p.read_text())['train']['epochs']}")
    assert p.read_text() == (REPO / "params.yaml").read_text(), (
        "params.yaml is not in the layout `dvc exp run -S` writes back (docs/versioning.md)"
    )


@pytest.mark.parametrize(("override", "keys"), OVERRIDES, ids=[o for o, _ in OVERRIDES])
def test_set_changes_only_the_set_value(tmp_path: Path, override: str, keys: tuple) -> None:
    before = (REPO / "params.yaml").read_text()
    p = tmp_path / "params.yaml"
    p.write_text(before)
    apply(p, override)
    after = p.read_text()
    # the value changed as asked, and nothing else did
    want = yaml.safe_load(before)
    node = want
    for k in keys[:-1]:
        node = node[k]
    node[keys[-1]] = yaml.safe_load(override.split("=", 1)[1].replace(",", ", "))
    assert yaml.safe_load(after) == want
    # ... and the diff stays within the set key's own lines (comments, layout kept)
    old, added = changed_lines(before, after)
    assert old, override
    lines = key_lines(before, keys)
    assert old <= set(lines) | {lines.stop}, (
        override,
        "\n".join(difflib.unified_diff(before.splitlines(), after.splitlines(), lineterm="")),
    )
    assert added <= 8


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project as a fresh clone has it: the checkout's own params.yaml, no outputs."""
    return make_project(tmp_path_factory.mktemp("fresh") / "p")


def test_exp_run_dry_on_a_fresh_clone_lists_every_stage(fresh: Path) -> None:
    proc = sh(["dvc", "exp", "run", "--dry"], fresh, timeout=600)
    stages = list(yaml.safe_load((fresh / "dvc.yaml").read_text())["stages"])
    ran = [line.split("'")[1] for line in proc.stdout.splitlines() if line.startswith("Running")]
    assert ran == stages, proc.stdout[-3000:]
    assert "ERROR" not in proc.stdout + proc.stderr
    assert not (fresh / "data").exists()  # a dry run made nothing
    sh(["dvc", "repro", "--dry"], fresh, timeout=600)


def test_queued_experiment_diff_is_only_the_set_lines(fresh: Path) -> None:
    sh(["dvc", "exp", "run", "--queue", "-S", "train.bits=[32]"], fresh, timeout=600)
    stash = "refs/exps/celery/stash"
    diff = sh(["git", "diff", "-U0", "HEAD", stash, "--", "params.yaml"], fresh).stdout
    body = [ln for ln in diff.splitlines() if ln[:1] in "+-" and ln[:3] not in ("+++", "---")]
    bits = yaml.safe_load((fresh / "params.yaml").read_text())["train"]["bits"]
    assert sorted(body) == sorted(f"-  - {b}" for b in bits if b != 32), diff
    assert sh(["git", "status", "--porcelain", "params.yaml"], fresh).stdout == ""  # untouched
    sh(["dvc", "queue", "remove", "--all"], fresh)
