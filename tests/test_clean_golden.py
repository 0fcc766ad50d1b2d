"""The clean stage's outputs are byte-identical to the reference digests recorded before its
rules became operator modules (``tests/clean_golden.py`` says how they were made): the hand-made
samples that every rule flags, in both duplicate modes. The synthetic set's digests are checked
in ``tests/test_clean_synthetic.py`` on its shared pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests import clean_golden


@pytest.mark.parametrize("name", ["rules", "with_caption"])
def test_hand_made_outputs_match_the_reference(tmp_path: Path, name: str) -> None:
    reference = json.loads(clean_golden.REFERENCE.read_text(encoding="utf-8"))[name]
    assert clean_golden.scenario(tmp_path, name) == reference
