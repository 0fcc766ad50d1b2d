"""Audio encoders and transcribers: the built-in log-mel encoder, tiny saved wav2vec2 / CTC /
Whisper models through the real loading path, hub ids from a fake cache, clear errors."""

from __future__ import annotations

import json
import shutil
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from cmrops import audio_models as A
from cmrops import encoders as E
from tests.tiny_models import tiny_ast, tiny_clap, tiny_wav2vec2, tiny_wav2vec2_ctc, tiny_whisper

SR = 16_000


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """The tiny models gain nothing from intra-op threads, and on a busy 2-core machine the
    threads' barriers cost several times the work."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tiny_audio")


@pytest.fixture(scope="module")
def w2v_dir(tiny: Path) -> Path:
    return tiny_wav2vec2(tiny / "wav2vec2")


@pytest.fixture(scope="module")
def ctc_dir(tiny: Path) -> Path:
    return tiny_wav2vec2_ctc(tiny / "wav2vec2-ctc")


@pytest.fixture(scope="module")
def whisper_dir(tiny: Path) -> Path:
    return tiny_whisper(tiny / "whisper")


def _noise(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.1 * rng.standard_normal(round(seconds * SR))).astype(np.float32)


def _unit_rows(x: np.ndarray) -> bool:
    return bool(np.allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5))


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b)


# --------------------------------------------------------------------------- built-in encoder


def test_logmel_stats_calls_the_media_functions_as_documented(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[int, int, dict[str, float]]] = []

    def log_mel(wave: np.ndarray, sample_rate: int, **kw: float) -> np.ndarray:
        calls.append((len(wave), sample_rate, kw))
        frames = max(1, len(wave) // 160)
        return np.tile(np.arange(64, dtype=np.float32), (frames, 1)) + len(wave)

    def logmel_stats(mel: np.ndarray) -> np.ndarray:
        return np.concatenate([mel.mean(0), mel.std(0), mel[-1] - mel[0]])

    fake = types.ModuleType("cmrops.media.audio")
    fake.log_mel = log_mel  # type: ignore[attr-defined]
    fake.logmel_stats = logmel_stats  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "cmrops.media.audio", fake)

    enc = A.load_audio_encoder()
    assert (enc.name, enc.dim, enc.sample_rate) == ("logmel-stats", 192, 16000)
    calls.clear()
    out = enc.encode([np.zeros(800, np.float32), np.ones(3200, np.float32)], progress=False)
    assert [(n, sr) for n, sr, _ in calls] == [(800, 16000), (3200, 16000)]
    assert all(kw == {"n_mels": 64, "win_s": 0.025, "hop_s": 0.010} for *_, kw in calls)
    assert out.shape == (2, 192)
    assert out.dtype == np.float32
    assert _unit_rows(out)


def _tone(freq: float, seconds: float = 1.0, gain: float = 0.5) -> np.ndarray:
    t = np.arange(round(seconds * SR)) / SR
    return (gain * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _chirp(f0: float, f1: float, seconds: float = 1.0) -> np.ndarray:
    t = np.arange(round(seconds * SR)) / SR
    phase = 2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * seconds))
    return (0.5 * np.sin(phase)).astype(np.float32)


def test_logmel_stats_separates_pitch_and_direction_more_than_gain() -> None:
    enc = A.load_audio_encoder("logmel-stats")
    assert (enc.dim, enc.sample_rate) == (192, 16000)
    low, high = _tone(220), _tone(1760)
    rise, fall = _chirp(300, 3000), _chirp(3000, 300)
    quiet = _tone(220, gain=0.1)  # the same sound, 14 dB down
    waves = [low, high, rise, fall, quiet, _tone(440, seconds=0.3), _tone(440, seconds=4.0)]
    emb = enc.encode(waves, batch_size=3, progress=False)
    assert emb.shape == (7, 192)
    assert emb.dtype == np.float32
    assert _unit_rows(emb)
    same = _cos(emb[0], emb[4])
    assert same > _cos(emb[0], emb[1])
    assert same > _cos(emb[2], emb[3])
    np.testing.assert_allclose(enc.encode(waves, batch_size=1, progress=False), emb, atol=1e-6)


# --------------------------------------------------------------------------- HF encoders


def test_wav2vec2_encoder_is_the_masked_mean_of_its_hidden_states(w2v_dir: Path) -> None:
    import torch
    from transformers import AutoFeatureExtractor, AutoModel

    enc = A.load_audio_encoder(str(w2v_dir), device="cpu")
    assert (enc.name, enc.dim, enc.sample_rate, enc.device) == (str(w2v_dir), 32, SR, "cpu")
    waves = [_noise(s, i) for i, s in enumerate((0.05, 0.3, 1.0, 2.5))]
    out = enc.encode(waves, batch_size=4, progress=False)
    assert out.shape == (4, 32)
    assert out.dtype == np.float32
    assert _unit_rows(out)

    model = AutoModel.from_pretrained(w2v_dir).eval()
    fe = AutoFeatureExtractor.from_pretrained(w2v_dir)
    with torch.inference_mode():  # one wave alone: no padding, a plain mean over time
        x = fe([waves[2]], sampling_rate=SR, return_tensors="pt")
        ref = model(**x).last_hidden_state.mean(1)
    ref = torch.nn.functional.normalize(ref, dim=1).numpy()
    np.testing.assert_allclose(out[2:3], ref, atol=1e-5)


def test_hf_encoder_is_deterministic_batch_and_order_invariant(w2v_dir: Path) -> None:
    waves = [_noise(s, 10 + i) for i, s in enumerate((0.7, 0.2, 1.3, 0.4, 0.9))]
    first = A.load_audio_encoder(str(w2v_dir), device="cpu").encode(waves, 2, progress=False)
    E._load_hf_model.cache_clear()  # a second, independent load from disk
    enc = A.load_audio_encoder(str(w2v_dir), device="cpu")
    assert np.array_equal(enc.encode(waves, 2, progress=False), first)
    np.testing.assert_allclose(enc.encode(waves, 1, progress=False), first, atol=1e-5)
    np.testing.assert_allclose(enc.encode(waves, 5, progress=False), first, atol=1e-5)
    np.testing.assert_allclose(enc.encode(waves[::-1], 3, progress=False)[::-1], first, atol=1e-5)
    assert enc.encode([], progress=False).shape == (0, 32)
    with pytest.raises(ValueError, match="batch_size"):
        enc.encode(waves, batch_size=0)
    with pytest.raises(ValueError, match="mono"):
        enc.encode([np.zeros((2, SR), np.float32)])
    with pytest.raises(ValueError, match="float"):
        enc.encode([np.zeros(SR, np.int16)])


def test_model_that_cannot_mask_padding_runs_unpadded(tmp_path: Path) -> None:
    enc = A.load_audio_encoder(str(tiny_wav2vec2(tmp_path / "w2v", attention_mask=False)), "cpu")
    waves = [_noise(s, 20 + i) for i, s in enumerate((0.3, 1.1, 0.6))]
    alone = np.concatenate([enc.encode([w], progress=False) for w in waves])
    assert np.array_equal(enc.encode(waves, batch_size=3, progress=False), alone)


def test_long_wave_is_the_length_weighted_mean_of_its_pieces(w2v_dir: Path) -> None:
    enc = A.load_audio_encoder(str(w2v_dir), device="cpu")
    wave = _noise(40.0, 30)  # past the 30 s window: two 20 s pieces
    whole = enc.encode([wave], progress=False)[0]
    halves = enc.encode([wave[: 20 * SR], wave[20 * SR :]], progress=False)
    mean = halves.sum(0) / np.linalg.norm(halves.sum(0))
    np.testing.assert_allclose(whole, mean, atol=1e-5)


def test_whisper_encoder_pools_only_the_frames_of_real_audio(whisper_dir: Path) -> None:
    import torch
    from transformers import AutoFeatureExtractor, WhisperModel

    enc = A.load_audio_encoder(str(whisper_dir), device="cpu")
    assert (enc.dim, enc.sample_rate) == (32, SR)
    waves = [_noise(1.0, 40), _noise(2.0, 41)]
    out = enc.encode(waves, batch_size=2, progress=False)
    assert _unit_rows(out)

    model = WhisperModel.from_pretrained(whisper_dir).eval()
    fe = AutoFeatureExtractor.from_pretrained(whisper_dir)
    with torch.inference_mode():  # padded to 30 s; 1 s = 100 mel frames = 50 encoder frames
        x = fe(waves[:1], sampling_rate=SR, return_tensors="pt")["input_features"]
        hidden = model.get_encoder()(x).last_hidden_state
    ref = torch.nn.functional.normalize(hidden[:, :50].mean(1), dim=1).numpy()
    np.testing.assert_allclose(out[:1], ref, atol=1e-5)
    everything = torch.nn.functional.normalize(hidden.mean(1), dim=1).numpy()
    assert not np.allclose(out[:1], everything, atol=1e-3)


def test_clap_uses_its_projection_and_never_crops_at_random(tmp_path: Path) -> None:
    import torch
    from transformers import ClapFeatureExtractor, ClapModel

    clap_dir = tiny_clap(tmp_path / "clap")
    enc = A.load_audio_encoder(str(clap_dir), device="cpu")
    assert (enc.dim, enc.sample_rate) == (16, 48_000)  # the projection, not the 32-d tower
    rng = np.random.default_rng(90)
    clip = (0.1 * rng.standard_normal(2 * 48_000)).astype(np.float32)
    long = (0.1 * rng.standard_normal(25 * 48_000)).astype(np.float32)  # past CLAP's 10 s
    out = enc.encode([clip, long], batch_size=2, progress=False)
    assert _unit_rows(out)

    model = ClapModel.from_pretrained(clap_dir).eval()
    fe = ClapFeatureExtractor.from_pretrained(clap_dir)
    with torch.inference_mode():
        ref = model.get_audio_features(**fe([clip], sampling_rate=48_000, return_tensors="pt"))
    ref = torch.nn.functional.normalize(getattr(ref, "pooler_output", ref), dim=1).numpy()
    np.testing.assert_allclose(out[:1], ref, atol=1e-5)
    # 25 s is cut into three pieces of 10 s or less, so the feature extractor's random crop
    # of long inputs never runs: the same numbers every time
    np.random.seed(1)  # noqa: NPY002 - the global state CLAP's random crop would draw from
    first = enc.encode([long], progress=False)
    np.random.seed(2)  # noqa: NPY002
    assert np.array_equal(enc.encode([long], progress=False), first)
    pieces = enc.encode(np.array_split(long, 3), progress=False)
    np.testing.assert_allclose(first[0], pieces.sum(0) / np.linalg.norm(pieces.sum(0)), atol=1e-5)


@pytest.mark.filterwarnings("ignore:At least one mel filter has all zero values")
def test_ast_uses_its_pooled_output(tmp_path: Path) -> None:
    import torch
    from transformers import ASTFeatureExtractor, ASTModel

    ast_dir = tiny_ast(tmp_path / "ast")
    enc = A.load_audio_encoder(str(ast_dir), device="cpu")
    assert (enc.dim, enc.sample_rate) == (32, SR)
    wave = _noise(1.0, 95)
    out = enc.encode([wave, _noise(0.4, 96)], batch_size=2, progress=False)
    model = ASTModel.from_pretrained(ast_dir).eval()
    fe = ASTFeatureExtractor.from_pretrained(ast_dir)
    with torch.inference_mode():
        ref = model(**fe([wave], sampling_rate=SR, return_tensors="pt")).pooler_output
    ref = torch.nn.functional.normalize(ref, dim=1).numpy()
    np.testing.assert_allclose(out[:1], ref, atol=1e-5)


# --------------------------------------------------------------------------- resolution


def _fake_hub_cache(root: Path, repo_id: str, model_dir: Path) -> Path:
    """The layout ``hf download`` leaves: ``models--org--name/{refs/main,snapshots/<sha>/}``."""
    sha = "0123456789abcdef0123456789abcdef01234567"
    repo = root / ("models--" + repo_id.replace("/", "--"))
    shutil.copytree(model_dir, repo / "snapshots" / sha)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(sha)
    return root


def test_hub_id_resolves_from_the_local_cache_only(
    w2v_dir: Path, ctc_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    cache = _fake_hub_cache(tmp_path / "hub", "cmrops-test/tiny-wav2vec2", w2v_dir)
    _fake_hub_cache(cache, "cmrops-test/tiny-ctc", ctc_dir)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))

    waves = [_noise(0.5, 50), _noise(1.2, 51)]
    enc = A.load_audio_encoder("cmrops-test/tiny-wav2vec2", device="cpu")
    assert enc.name == "cmrops-test/tiny-wav2vec2"
    local = A.load_audio_encoder(str(w2v_dir), device="cpu")
    assert np.array_equal(enc.encode(waves, progress=False), local.encode(waves, progress=False))
    asr = A.load_transcriber("cmrops-test/tiny-ctc", device="cpu")
    assert asr.name == "cmrops-test/tiny-ctc"
    local_asr = A.load_transcriber(str(ctc_dir), device="cpu")
    assert asr.transcribe(waves, progress=False) == local_asr.transcribe(waves, progress=False)

    for load in (A.load_audio_encoder, A.load_transcriber):
        with pytest.raises(E.ModelNotFoundError, match="never downloads") as info:
            load("cmrops-test/not-cached", device="cpu")
        msg = str(info.value)
        assert str(cache) in msg  # where it looked
        assert "hf download cmrops-test/not-cached" in msg  # what to do
        assert "logmel-stats" in msg


def test_missing_or_incomplete_directories_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(E.ModelNotFoundError, match="does not exist"):
        A.load_audio_encoder(str(tmp_path / "nowhere" / "model"), device="cpu")
    from transformers import Wav2Vec2Model

    from tests.tiny_models import _tiny_wav2vec2_config

    Wav2Vec2Model(_tiny_wav2vec2_config()).save_pretrained(tmp_path / "no-extractor")
    with pytest.raises(E.ModelNotFoundError, match=r"preprocessor_config\.json"):
        A.load_audio_encoder(str(tmp_path / "no-extractor"), device="cpu")


# --------------------------------------------------------------------------- transcribers


def test_ctc_transcriber_is_greedy_deterministic_and_batch_invariant(ctc_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCTC, AutoProcessor

    asr = A.load_transcriber(str(ctc_dir), device="cpu")
    assert (asr.name, asr.sample_rate) == (str(ctc_dir), SR)
    waves = [_noise(0.2, 60), _noise(1.5, 61), _noise(0.7, 62), np.zeros(50, np.float32)]
    texts = asr.transcribe(waves, batch_size=3, progress=False)
    assert len(texts) == 4
    assert all(isinstance(t, str) and t == t.strip() for t in texts)
    assert any(texts)
    again = A.load_transcriber(str(ctc_dir), device="cpu")  # a second load from disk
    assert again.transcribe(waves, batch_size=3, progress=False) == texts
    assert asr.transcribe(waves, batch_size=1, progress=False) == texts
    assert asr.transcribe(waves[::-1], batch_size=2, progress=False) == texts[::-1]
    assert asr.transcribe([], progress=False) == []

    model = AutoModelForCTC.from_pretrained(ctc_dir).eval()
    proc = AutoProcessor.from_pretrained(ctc_dir)
    with torch.inference_mode():
        x = proc.feature_extractor([waves[1]], sampling_rate=SR, return_tensors="pt")
        ref = proc.batch_decode(model(**x).logits.argmax(-1))[0].strip()
    assert texts[1] == ref


@pytest.mark.parametrize("model", ["ctc", "whisper"])
def test_long_waves_are_transcribed_in_pieces(model: str, ctc_dir: Path, whisper_dir: Path) -> None:
    spec = str(ctc_dir if model == "ctc" else whisper_dir)
    asr = A.load_transcriber(spec, device="cpu", max_new_tokens=12)  # a random decoder never stops
    short, long = _noise(0.2, 70), _noise(40.0, 71)  # 40 s: two 20 s pieces
    texts = asr.transcribe([short, long], batch_size=2, progress=False)
    assert len(texts) == 2
    assert all(isinstance(t, str) and t == t.strip() for t in texts)
    halves = asr.transcribe([long[: 20 * SR], long[20 * SR :]], batch_size=2, progress=False)
    assert texts[1] == " ".join(t for t in halves if t)
    assert asr.transcribe([long, short], batch_size=1, progress=False) == texts[::-1]


def test_seq2seq_transcriber_is_deterministic_and_batch_invariant(whisper_dir: Path) -> None:
    asr = A.load_transcriber(str(whisper_dir), device="cpu", max_new_tokens=12)
    assert (asr.name, asr.sample_rate) == (str(whisper_dir), SR)
    waves = [_noise(0.2, 80), _noise(3.0, 81), _noise(1.0, 82)]
    texts = asr.transcribe(waves, batch_size=3, progress=False)
    assert len(texts) == 3
    assert all(isinstance(t, str) and t == t.strip() for t in texts)
    again = A.load_transcriber(str(whisper_dir), device="cpu", max_new_tokens=12)
    assert again.transcribe(waves, batch_size=3, progress=False) == texts
    assert asr.transcribe(waves, batch_size=1, progress=False) == texts


def test_a_model_without_a_recognition_head_is_refused(w2v_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a speech-recognition model"):
        A.load_transcriber(str(w2v_dir), device="cpu")
    from tests.tiny_models import tiny_bert

    with pytest.raises(ValueError, match="not a speech-recognition model"):
        A.load_transcriber(str(tiny_bert(tmp_path / "bert")), device="cpu")
    # a config that claims a CTC head its weights do not have: the head would be random
    headless = shutil.copytree(w2v_dir, tmp_path / "headless")
    config = json.loads((headless / "config.json").read_text())
    config["architectures"] = ["Wav2Vec2ForCTC"]
    (headless / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="no trained ctc recognition head"):
        A.load_transcriber(str(headless), device="cpu")
