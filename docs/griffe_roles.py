"""Griffe extension for the API reference: cmrops docstrings are plain text with reST roles.

``:func:`~cmrops.align.fit_alignment``` becomes the code span ``fit_alignment`` (the full dotted
name without ``~``), a literal block's ``::`` a single colon, and a reST section underline
(``Ties`` over ``----``) a bold line, so the docstrings render as Markdown without warnings.
Loaded by mkdocstrings (``extensions:`` in mkdocs.yml); nothing imports it.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:func|mod|data|class|meth|attr|exc|obj):`(~?)([^`]+)`")
_SECTION = re.compile(r"^(\S[^\n]*)\n-{3,}[ \t]*$", re.M)
_LITERAL = re.compile(r"(\S)::[ \t]*$", re.M)


def _role(m: re.Match[str]) -> str:
    target = re.sub(r"\s+", "", m.group(2))
    if m.group(1):
        target = target.rsplit(".", 1)[-1]
    return f"``{target}``"


def markdown(text: str) -> str:
    """The docstring ``text`` with its reST constructs written as Markdown."""
    text = _ROLE.sub(_role, text)
    text = _SECTION.sub(r"**\1**", text)
    return _LITERAL.sub(r"\1:", text)


class RolesToMarkdown(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = markdown(obj.docstring.value)
