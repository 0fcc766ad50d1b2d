"""End-to-end fine-tuning of a CLIP-style dual encoder under the hashing heads
(:mod:`cmrops.models.finetune`), on a tiny randomly initialised CLIP saved with
``save_pretrained`` (the real loading path), on the CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open

from cmrops import pack_bits
from cmrops.models import HasherConfig, PairedData, TrainConfig, encode, fit
from cmrops.models.finetune import (
    EncoderError,
    EncoderHasher,
    StoredCrops,
    prepare_images,
    tokenize_captions,
    weights_sha256,
)
from cmrops.models.ranking import cross_modal_map
from cmrops.models.synthetic import synthetic_images
from tests.tiny_models import tiny_bert, tiny_clip


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip", image_size=32)


def _data(clip: Path, n: int, seed: int) -> PairedData:
    images, captions, labels = synthetic_images(n, 32, seed)
    return PairedData(images, tokenize_captions(clip, captions), labels)


def _config(clip: Path, bits: int = 16, layers: int = 1) -> HasherConfig:
    return HasherConfig(
        16, 16, bits, (32,), 0.0, encoder=str(clip), encoder_layers=layers,
        encoder_sha256=weights_sha256(str(clip)),
    )  # fmt: skip


TRAIN = TrainConfig(
    "dcmh", epochs=6, batch_size=16, lr=3e-3, encoder_lr=1e-3, patience=0, checkpoint_every=5
)


def test_inputs_are_pixels_and_tokens(clip_dir: Path, tmp_path: Path) -> None:
    tokens = tokenize_captions(clip_dir, ["a red bus", "the blue cat on the mat street"])
    assert tokens.dtype == np.int64
    assert tokens.shape[:2] == (2, 2)
    assert tokens[0, 1].sum() < tokens[1, 1].sum()  # attention masks: the short one is padded
    from PIL import Image

    p = tmp_path / "wide.png"
    Image.new("RGB", (64, 32), (10, 200, 30)).save(p)
    pixels = prepare_images([p], 32, progress=False)
    assert pixels.shape == (1, 32, 32, 3)
    assert pixels.dtype == np.uint8
    assert tuple(pixels[0, 16, 16]) == (10, 200, 30)
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    with pytest.raises(EncoderError, match=r"broken\.jpg"):
        prepare_images([tmp_path / "broken.jpg"], 32, progress=False)


def test_finetuning_learns_and_trains_only_the_last_blocks(clip_dir: Path, tmp_path: Path) -> None:
    train, val = _data(clip_dir, 96, 0), _data(clip_dir, 24, 1)
    config = _config(clip_dir)
    before = EncoderHasher(config).state_dict()
    untouched = EncoderHasher(config).encoder.state_dict()
    result = fit(config, TRAIN, train, val, tmp_path / "m", device="cpu", progress=False)
    hist = result.history
    assert hist[-1]["loss"] < hist[0]["loss"]

    qi, qt = (pack_bits(x > 0) for x in encode(result.model, val))
    di, dt = (pack_bits(x > 0) for x in encode(result.model, train))
    trained = cross_modal_map(qi, qt, di, dt, val.labels, train.labels)["map"]
    rng = np.random.default_rng(7)
    rand = [rng.integers(0, 2**63, (len(x), 1), dtype=np.uint64) for x in (qi, qt, di, dt)]
    random_map = cross_modal_map(*rand, val.labels, train.labels)["map"]
    assert trained > random_map + 0.15, (trained, random_map)

    # Only the heads and the last block of each tower (+ norms, projections) are trained and
    # saved; the first block stays as loaded.
    with safe_open(tmp_path / "m" / "model.safetensors", framework="pt") as fh:
        saved = set(fh.keys())
    assert saved == set(before)
    assert not any("layers.0." in k for k in saved)
    assert any("vision_model.encoder.layers.1." in k for k in saved)
    assert any("text_model.encoder.layers.1." in k for k in saved)
    after = result.model.encoder.state_dict()
    first = "vision_model.encoder.layers.0.mlp.fc1.weight"
    last = "vision_model.encoder.layers.1.mlp.fc1.weight"
    assert np.array_equal(after[first].numpy(), untouched[first].numpy())
    assert not np.array_equal(after[last].numpy(), untouched[last].numpy())


def test_kill_and_resume_gives_the_same_codes(clip_dir: Path, tmp_path: Path) -> None:
    train, val = _data(clip_dir, 48, 0), _data(clip_dir, 12, 1)
    cfg = TrainConfig("contrastive", epochs=3, batch_size=16, patience=0, checkpoint_every=4)
    config = _config(clip_dir, bits=32)
    whole = fit(config, cfg, train, val, tmp_path / "a", device="cpu", progress=False)

    class Killed(Exception):
        pass

    def kill(step: int) -> None:
        if step == 6:
            raise Killed

    with pytest.raises(Killed):
        fit(config, cfg, train, val, tmp_path / "b", device="cpu", progress=False, on_step=kill)
    resumed = fit(config, cfg, train, val, tmp_path / "b", device="cpu", progress=False)
    assert resumed.resumed_from_step == 4
    for a, b in zip(encode(whole.model, val), encode(resumed.model, val), strict=True):
        assert np.array_equal(pack_bits(a > 0), pack_bits(b > 0))
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_crops_read_from_the_store_train_exactly_like_decoded_ones(
    clip_dir: Path, tmp_path: Path
) -> None:
    from PIL import Image

    images, captions, labels = synthetic_images(32, 32, 0)
    paths = []
    for i, im in enumerate(images):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(im).save(paths[-1])  # lossless: the crops are the arrays again
    stored = prepare_images(paths, 32, progress=False)
    assert isinstance(stored, StoredCrops)
    assert stored.shape == images.shape
    assert stored.dtype == np.uint8
    assert np.array_equal(np.asarray(stored), images)
    assert np.array_equal(np.asarray(stored[np.array([3, 1])]), images[[3, 1]])
    assert np.array_equal(stored[5], images[5])
    tokens = tokenize_captions(clip_dir, captions)
    cfg = TrainConfig("contrastive", epochs=2, batch_size=8, patience=0, checkpoint_every=3)
    config = _config(clip_dir, bits=16)
    in_memory = fit(
        config, cfg, PairedData(images, tokens, labels), None, tmp_path / "a", device="cpu",
        progress=False,
    )  # fmt: skip

    class Killed(Exception):
        pass

    def kill(step: int) -> None:
        if step == 5:
            raise Killed

    lazy = PairedData(stored, tokens, labels)
    with pytest.raises(Killed):
        fit(config, cfg, lazy, None, tmp_path / "b", device="cpu", progress=False, on_step=kill)
    resumed = fit(config, cfg, lazy, None, tmp_path / "b", device="cpu", progress=False)
    assert resumed.resumed_from_step == 3
    for a, b in zip(encode(in_memory.model, lazy), encode(resumed.model, lazy), strict=True):
        assert np.array_equal(pack_bits(a > 0), pack_bits(b > 0))
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_changed_encoder_weights_and_wrong_models_are_refused(
    clip_dir: Path, tmp_path: Path
) -> None:
    other = tiny_clip(tmp_path / "other", seed=1, image_size=32)
    stale = HasherConfig(
        16, 16, 16, (32,), 0.0, encoder=str(other), encoder_sha256=weights_sha256(str(clip_dir))
    )
    with pytest.raises(EncoderError, match="encoder weights changed"):
        EncoderHasher(stale)
    bert = tiny_bert(tmp_path / "bert")
    with pytest.raises(EncoderError, match="not an aligned dual encoder"):
        EncoderHasher(HasherConfig(16, 16, 16, encoder=str(bert)))
    with pytest.raises(FileNotFoundError):
        EncoderHasher(HasherConfig(16, 16, 16, encoder=str(tmp_path / "absent")))
