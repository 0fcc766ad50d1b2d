"""Preprocess's encoders side by side (cmrops.preprocessing.embed.Embedder): on the CPU with a
budget of two threads, the image and text encoders each open their ONNX Runtime session on one
thread and embed at once; the images switch to a session on the whole budget once the text
encoder is done. The bytes are those of one encoder after the other (the whole stage at 1 thread
and at the budget: tests/test_align_stage.py)."""

from __future__ import annotations

import concurrent.futures as cf
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from cmrops import inference, threads
from cmrops.preprocessing.embed import IMAGE_RUN, Embedder
from cmrops.stages.preprocess import PreprocessParams


@pytest.fixture
def session_threads(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """The intra-op threads of every ONNX Runtime session opened, in order."""
    opened: list[int] = []
    real = inference._session

    def spy(path: Any) -> Any:
        session = real(path)
        opened.append(session.get_session_options().intra_op_num_threads)
        return session

    monkeypatch.setattr(inference, "_session", spy)
    yield opened
    threads.apply(threads.detect().total)  # the Embedders below applied their budgets


def test_the_encoders_share_the_budget_and_give_the_bytes_of_one_after_the_other(
    session_threads: list[int],
) -> None:
    params = PreprocessParams()
    pixels = np.random.default_rng(0).integers(0, 256, (IMAGE_RUN + 5, 224, 224, 3), np.uint8)
    captions = ["a red bus", "two cats on a sofa", "a red bus", ""]

    alone = Embedder(params, "cpu", threads=1)
    image, text, at_once = alone.image_and_text()
    assert not at_once  # one thread: one encoder after the other
    ref_image = image.encode(pixels, params.batch_size, False)
    ref_text = text.encode(captions, params.batch_size, False)
    assert set(session_threads) == {1}  # (an export's check opens a session too)

    seen = len(session_threads)
    paired = Embedder(params, "cpu", threads=2)
    image, text, at_once = paired.image_and_text()
    assert at_once
    assert set(session_threads[seen:]) == {1}  # each encoder on its share of the budget
    seen = len(session_threads)
    running: cf.Future[Any] = cf.Future()  # the text encoder still at work
    assert np.array_equal(paired._images_beside(pixels, running, False), ref_image)
    assert len(session_threads) == seen
    done: cf.Future[Any] = cf.Future()
    done.set_result(None)
    assert np.array_equal(paired._images_beside(pixels, done, False), ref_image)
    assert session_threads[seen:] == [2]  # the images alone: a session on the whole budget
    assert np.array_equal(text.encode(captions, params.batch_size, False), ref_text)
    empty = paired._images_beside(pixels[:0], running, False)
    assert empty.shape == (0, image.dim)
