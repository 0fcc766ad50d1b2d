"""The documentation's examples run, and its commands and links exist (as lucidrains'
``test_readme.py`` does for a README).

* Every ```` ```python ```` block of README.md and docs/**/*.md runs: the blocks of one page in
  order, in one namespace, in a fresh temporary working folder (so examples may write files).
  A block that cannot run in a test says so on its first line, ``# not run: <why>`` (it needs a
  finished ``make run``, a GPU, a server, data that is not in the repository); the reason is
  required.
* Every ``cmrops ...`` command in a ```` ```bash ```` block names real subcommands and options
  (checked against the CLI's own parser), and every ``make TARGET`` a target of the Makefile.
* Every relative link of README.md points at a file of the repository (the docs site's own
  links are checked by ``mkdocs build --strict``, a step of scripts/test.sh, not here).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
NOT_RUN = re.compile(r"#\s*not run:\s*(\S.*)")
FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<info>[^\n`]*)\n(?P<body>.*?)^(?P=indent)```[ \t]*$",
                   re.M | re.S)  # fmt: skip


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    text = page.read_text(encoding="utf-8")
    found = []
    for m in FENCE.finditer(text):
        indent = m.group("indent")
        body = "".join(line.removeprefix(indent) for line in m.group("body").splitlines(True))
        lang = m.group("info").strip().split(" ")[0].lstrip("{.").rstrip("}")
        found.append(Block(page, text.count("\n", 0, m.start()) + 1, lang, body))
    return found


def python_blocks(page: Path) -> list[Block]:
    return [b for b in blocks(page) if b.lang in ("python", "py")]


def runnable(block: Block) -> bool:
    first = block.code.lstrip().split("\n", 1)[0]
    if first.startswith("#") and "not run" in first:
        assert NOT_RUN.fullmatch(first.strip()), (
            f"{block.where}: write '# not run: <the reason>' on the first line of a block that "
            "does not run in the tests"
        )
        return False
    return True


PAGES_WITH_EXAMPLES = [p for p in PAGES if any(runnable(b) for b in python_blocks(p))]


def test_the_docs_have_runnable_examples() -> None:
    # the parametrised test below must not pass by finding nothing
    assert REPO / "README.md" in PAGES_WITH_EXAMPLES
    assert len(PAGES_WITH_EXAMPLES) >= 3, [str(p) for p in PAGES_WITH_EXAMPLES]


@pytest.mark.parametrize(
    "page", PAGES_WITH_EXAMPLES, ids=[str(p.relative_to(REPO)) for p in PAGES_WITH_EXAMPLES]
)
def test_python_examples_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "__docs__"}
    for block in python_blocks(page):
        if not runnable(block):
            continue
        # compiled under the page's name and line, so a traceback points into the page; not
        # inheriting this file's `from __future__ import annotations` (a reader's script has not)
        code = compile("\n" * block.line + block.code, str(page), "exec", dont_inherit=True)
        with contextlib.redirect_stdout(io.StringIO()):
            try:
                exec(code, namespace)
            except Exception as e:
                raise AssertionError(f"the example at {block.where} failed: {e!r}") from e


# -- commands --------------------------------------------------------------------------------


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {s for a in parser._actions for s in a.option_strings}


def _commands(code: str) -> list[list[str]]:
    """Every simple command of a shell snippet, as tokens (comments and continuations gone)."""
    out = []
    for line in code.replace("\\\n", " ").splitlines():
        try:
            tokens = shlex.split(line, comments=True)
        except ValueError:  # an unbalanced quote in prose-like lines: not a command we check
            continue
        current: list[str] = []
        for tok in tokens:
            if tok in ("&&", "||", ";", "|", "then", "do"):
                out.append(current)
                current = []
            else:
                current.append(tok)
        out.append(current)
    return [c for c in out if c]


def check_cmrops(tokens: list[str], where: str) -> None:
    from cmrops.cli import build_parser

    parser = build_parser()
    path = ["cmrops"]
    rest = tokens
    while (subs := _subparsers(parser)) and rest and not rest[0].startswith("-"):
        name = rest[0]
        assert name in subs, f"{where}: `{' '.join(path)} {name}`: no such command {sorted(subs)}"
        parser, path, rest = subs[name], [*path, name], rest[1:]
    known = _options(parser)
    for tok in rest:
        opt = tok.strip("[]").split("=", 1)[0]
        if opt.startswith("--"):
            assert opt in known, f"{where}: `{' '.join(path)}` has no option {opt} {sorted(known)}"


def make_targets() -> set[str]:
    text = (REPO / "Makefile").read_text()
    return set(re.findall(r"^([A-Za-z][\w-]*):", text, re.M))


SHELL_BLOCKS = [b for p in PAGES for b in blocks(p) if b.lang in ("bash", "sh", "shell")]


def test_shell_examples_name_real_commands_and_targets() -> None:
    targets = make_targets()
    checked = 0
    for block in SHELL_BLOCKS:
        for cmd in _commands(block.code):
            for i, tok in enumerate(cmd):
                if tok == "cmrops" or tok.endswith("/cmrops"):
                    check_cmrops(cmd[i + 1 :], block.where)
                    checked += 1
                    break
                if tok == "make" and i + 1 < len(cmd):
                    target = cmd[i + 1]
                    assert target in targets, f"{block.where}: no make target {target!r}"
                    checked += 1
                    break
    assert checked >= 20, checked  # the stage commands alone are more


def test_the_command_check_catches_a_wrong_option() -> None:
    with pytest.raises(AssertionError, match="no option --output"):
        check_cmrops(["collect", "--params", "p.yaml", "--output", "x"], "t")
    with pytest.raises(AssertionError, match="no such command"):
        check_cmrops(["release", "delete", "x"], "t")


# -- README links ------------------------------------------------------------------------------


def test_readme_links_point_at_files() -> None:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)\s]+)\)", text) + re.findall(r'(?:src|href)="([^"]+)"', text)
    local = [u.split("#", 1)[0] for u in links if not re.match(r"[a-z]+:", u) and u[0] != "#"]
    assert local, "the README links into the docs"
    missing = [u for u in local if not (REPO / u).exists()]
    assert not missing, f"README.md links to missing files: {missing}"


# -- generated pages ---------------------------------------------------------------------------


def test_the_clean_page_lists_every_rule_with_its_params() -> None:
    """docs/stages/clean.md's rules section is what scripts/clean_rules_doc.py generates from
    the registered rules (their docstrings and params), in the order the stage walks them."""
    import dataclasses
    import importlib.util

    from cmrops.cleaning.rules import builtin

    spec = importlib.util.spec_from_file_location(
        "clean_rules_doc", REPO / "scripts" / "clean_rules_doc.py"
    )
    assert spec is not None
    assert spec.loader is not None
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    page = gen.PAGE.read_text(encoding="utf-8")
    assert gen.render(page) == page, "docs/stages/clean.md is stale: run scripts/clean_rules_doc.py"
    section = page.split(gen.BEGIN, 1)[1].split(gen.END, 1)[0]
    headings = re.findall(r"^### `(\w+)`$", section, re.M)
    assert headings == list(builtin())
    for name, rule in builtin().items():
        for f in dataclasses.fields(rule.params_type):
            assert f"| `{name}.{f.name}` |" in section, f"{name}.{f.name} not on the clean page"
