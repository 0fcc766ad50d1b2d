"""Audio encoders and speech recognition: the loading path of :mod:`cmrops.encoders`, for sound.

An audio encoder is named in params by a **spec**:

* ``logmel-stats`` (the default): model-free. Per wave, a 64-band log-mel spectrogram (25 ms Hann
  window, 10 ms hop, at 16 kHz) summarised by each band's mean, standard deviation and drift
  (mean of the last half minus mean of the first half): 192 numbers, from
  :mod:`cmrops.media.audio`;
* a local directory written by ``save_pretrained`` or a Hugging Face model id **already in the
  local cache** (resolved by :func:`cmrops.encoders.resolve_model_dir`; nothing is downloaded) of a
  ``transformers`` audio model with its feature extractor: wav2vec2 / HuBERT / WavLM, AST, CLAP,
  or the encoder half of Whisper / Speech2Text. A CLAP model embeds with ``get_audio_features``
  (its projection), a model with a pooled output (AST) uses it, any other is the mean over time
  of ``last_hidden_state``, counting only the frames of real audio when the feature extractor
  pads.

A transcriber (:func:`load_transcriber`) is a CTC model (``...ForCTC``: greedy argmax, decoded by
its processor) or a sequence-to-sequence speech model (Whisper, Speech2Text: greedy
``generate``).

Waves are mono float32 at the model's ``sample_rate``, of any length. A wave longer than the
model's window (30 s, or less where the feature extractor has a fixed window: Whisper's 30 s,
CLAP's 10 s, AST's ~10 s) is cut into equal pieces no longer than the window, so nothing is
silently truncated and CLAP's random crop of long inputs never runs: an embedding is then the
length-weighted mean of its pieces' (normalised) embeddings, a transcript their texts joined by
spaces. Pieces shorter than 0.1 s are padded with silence to 0.1 s. Pieces are batched in order
of length; a model that cannot mask padding (its feature extractor returns no attention mask and
its inputs vary in length, e.g. wav2vec2-base) runs one piece at a time, so that a clip's result
never depends on the clips batched with it.

As in :mod:`cmrops.encoders`: ``float32`` L2-normalised rows, ``eval()`` mode under
``torch.inference_mode``, ``cuda`` when ``device="auto"`` finds one, a ``tqdm`` progress bar.
"""

from __future__ import annotations

import inspect
import itertools
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from cmrops.encoders import (
    ModelNotFoundError,
    _deterministic,
    _features,
    _load_hf_model,
    _probe_dim,
    _run_batches,
    resolve_device,
    resolve_model_dir,
)

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

AUDIO_DEFAULT: Final = "logmel-stats"
#: Sample rate and mel bands of the built-in encoder.
LOGMEL_SAMPLE_RATE: Final = 16_000
LOGMEL_BANDS: Final = 64
#: Longest piece a model sees at once, in seconds (and Whisper's window).
MAX_WINDOW_S: Final = 30.0
#: Shorter pieces are padded with silence to this length (a wav2vec2 frame needs 25 ms).
MIN_PIECE_S: Final = 0.1
#: Default bound on the tokens a sequence-to-sequence model generates per piece: what OpenAI's
#: Whisper decodes per 30 s window (half its 448-token context).
MAX_NEW_TOKENS: Final = 224


# --------------------------------------------------------------------------- public API


@dataclass
class AudioEncoder:
    """Embeds mono float32 waves at ``sample_rate`` into L2-normalised float32 rows."""

    name: str
    dim: int
    sample_rate: int
    device: str
    _embed: Callable[[list[np.ndarray], int, bool], np.ndarray]

    def encode(
        self, waves: Sequence[np.ndarray], batch_size: int = 16, progress: bool = True
    ) -> np.ndarray:
        """Embeddings of ``waves`` (1-D, any lengths) as a ``(n, dim)`` float32 array."""
        _check_batch_size(batch_size)
        return self._embed([_mono(w) for w in waves], batch_size, progress)


@dataclass
class Transcriber:
    """Transcribes mono float32 waves at ``sample_rate`` into text."""

    name: str
    sample_rate: int
    device: str
    _run: Callable[[list[np.ndarray], int, bool], list[str]]

    def transcribe(
        self, waves: Sequence[np.ndarray], batch_size: int = 8, progress: bool = True
    ) -> list[str]:
        """One stripped transcript per wave (``""`` when nothing is recognised)."""
        _check_batch_size(batch_size)
        return self._run([_mono(w) for w in waves], batch_size, progress)


def load_audio_encoder(spec: str = AUDIO_DEFAULT, device: str = "auto") -> AudioEncoder:
    """The audio encoder named by ``spec``: the model-free ``logmel-stats`` default or a
    ``transformers`` audio model (see module docstring)."""
    if spec == AUDIO_DEFAULT:
        return _logmel_stats_encoder()
    dev = resolve_device(device)
    _deterministic(dev)
    model_dir = _resolve(spec, "audio encoder")
    model, config = _load_hf_model(str(model_dir), dev)
    projected = hasattr(model, "get_audio_features")
    if projected:  # CLAP: the projected audio embedding
        module, forward = model, model.get_audio_features
    elif getattr(config, "is_encoder_decoder", False) and hasattr(model, "get_encoder"):
        module = model.get_encoder()  # Whisper, Speech2Text: the encoder half
        forward = module.forward
    else:
        module, forward = model, model.forward
    feats = _Featurizer.load(model_dir, dev, forward)

    def embed(pieces: list[np.ndarray]) -> torch.Tensor:
        inputs, mask = feats(pieces)
        out = forward(**inputs)
        if projected:
            return _features(out)
        pooled = getattr(out, "pooler_output", None)
        if pooled is not None:
            return pooled.flatten(1)
        return _mean_over_time(out.last_hidden_state, mask, module)

    dim = _probe_dim(lambda: embed([np.zeros(feats.sample_rate // 2, np.float32)]))
    name = f"audio {spec}"

    def encode(waves: list[np.ndarray], batch_size: int, progress: bool) -> np.ndarray:
        pieces, owner, weight = _split(waves, feats.window, feats.min_piece)
        order = sorted(range(len(pieces)), key=lambda i: (len(pieces[i]), i))
        ordered = [pieces[i] for i in order]
        emb = _run_batches(
            len(ordered),
            batch_size if feats.batchable else 1,
            progress,
            name,
            dim,
            lambda lo, hi: embed(ordered[lo:hi]),
        )
        per_piece = np.empty_like(emb)
        per_piece[np.asarray(order, dtype=np.int64)] = emb
        return _pool_pieces(per_piece, owner, weight, len(waves))

    return AudioEncoder(spec, dim, feats.sample_rate, dev, encode)


def load_transcriber(
    spec: str, device: str = "auto", *, max_new_tokens: int = MAX_NEW_TOKENS
) -> Transcriber:
    """The speech recogniser named by ``spec`` (a local directory or a cached hub id): a CTC
    model or a sequence-to-sequence speech model (see module docstring). ``max_new_tokens``
    bounds what a sequence-to-sequence model generates per piece (and half its decoder
    context bounds it too)."""
    import torch
    from transformers import AutoConfig

    dev = resolve_device(device)
    _deterministic(dev)
    model_dir = _resolve(spec, "speech-recognition model")
    config = AutoConfig.from_pretrained(str(model_dir), local_files_only=True)
    kind = _asr_kind(spec, config)
    model = _load_asr_model(model_dir, kind).to(dev).eval()
    processor = _load_processor(model_dir)
    feats = _Featurizer.load(model_dir, dev, model.forward, processor.feature_extractor)

    if kind == "ctc":
        pad_id = _ctc_pad_id(processor, config)

        def run(pieces: list[np.ndarray]) -> list[str]:
            inputs, mask = feats(pieces)
            ids = model(**inputs).logits.argmax(-1)
            if mask is not None:  # frames past a piece's end decode as blanks
                keep = _frame_mask(mask, ids.shape[1], model)
                ids = ids.masked_fill(~keep, pad_id)
            return processor.batch_decode(ids.cpu())

    else:
        limit = min(max_new_tokens, int(getattr(config, "max_target_positions", 448)) // 2)

        def run(pieces: list[np.ndarray]) -> list[str]:
            inputs, mask = feats(pieces)
            if mask is not None:  # Whisper ignores it, but warns about a batch without one
                inputs.setdefault("attention_mask", mask)
            ids = model.generate(**inputs, max_new_tokens=limit, do_sample=False, num_beams=1)
            return processor.batch_decode(ids.cpu(), skip_special_tokens=True)

    def transcribe(waves: list[np.ndarray], batch_size: int, progress: bool) -> list[str]:
        from tqdm import tqdm

        pieces, owner, _weight = _split(waves, feats.window, feats.min_piece)
        order = sorted(range(len(pieces)), key=lambda i: (len(pieces[i]), i))
        step = batch_size if feats.batchable else 1
        texts = [""] * len(pieces)
        starts = range(0, len(order), step)
        with torch.inference_mode():
            for lo in tqdm(
                starts, desc=f"asr {spec}", unit="batch", disable=not progress or not order
            ):
                batch = order[lo : lo + step]
                for i, text in zip(batch, run([pieces[i] for i in batch]), strict=True):
                    texts[i] = text.strip()
        joined: list[list[str]] = [[] for _ in waves]
        for i, text in enumerate(texts):
            if text:
                joined[owner[i]].append(text)
        return [" ".join(parts) for parts in joined]

    return Transcriber(spec, feats.sample_rate, dev, transcribe)


# --------------------------------------------------------------------------- built-in encoder


def _logmel_stats_encoder() -> AudioEncoder:
    import torch

    from cmrops.media.audio import log_mel, logmel_stats

    sr = LOGMEL_SAMPLE_RATE

    def stats(wave: np.ndarray) -> np.ndarray:
        mel = log_mel(wave, sr, n_mels=LOGMEL_BANDS, win_s=0.025, hop_s=0.010)
        return np.asarray(logmel_stats(mel), dtype=np.float32)

    dim = int(stats(np.zeros(sr // 2, np.float32)).shape[0])

    def encode(waves: list[np.ndarray], batch_size: int, progress: bool) -> np.ndarray:
        return _run_batches(
            len(waves),
            batch_size,
            progress,
            f"audio {AUDIO_DEFAULT}",
            dim,
            lambda lo, hi: torch.from_numpy(np.stack([stats(w) for w in waves[lo:hi]])),
        )

    return AudioEncoder(AUDIO_DEFAULT, dim, sr, "cpu", encode)


# --------------------------------------------------------------------------- loading


def _resolve(spec: str, what: str) -> Path:
    try:
        return resolve_model_dir(spec)
    except ModelNotFoundError as e:
        from huggingface_hub import constants

        raise ModelNotFoundError(
            f"{what} {spec!r}: {e}. (A hub id is looked up only in the Hugging Face cache, "
            f"{constants.HF_HUB_CACHE}.) For audio, the model-free default encoder is "
            f"{AUDIO_DEFAULT!r}"
        ) from e


def _asr_kind(spec: str, config: Any) -> str:
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CTC_MAPPING_NAMES,
        MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES,
    )

    archs = list(getattr(config, "architectures", None) or [])
    model_type = str(getattr(config, "model_type", ""))
    seq2seq = set(MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES.values())
    if any(a.endswith("ForCTC") for a in archs):
        return "ctc"
    if any(a in seq2seq for a in archs):
        return "seq2seq"
    if not archs and model_type in MODEL_FOR_CTC_MAPPING_NAMES:
        return "ctc"
    if not archs and model_type in MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES:
        return "seq2seq"
    raise ValueError(
        f"{spec!r} (model_type {model_type!r}, architectures {archs}) is not a speech-recognition "
        "model: expected a CTC model (an ...ForCTC checkpoint such as "
        "facebook/wav2vec2-base-960h) or a sequence-to-sequence speech model (such as "
        "openai/whisper-tiny); an audio encoder without a recognition head belongs in "
        "load_audio_encoder"
    )


def _load_asr_model(model_dir: Path, kind: str) -> Any:
    from transformers import AutoModelForCTC, AutoModelForSpeechSeq2Seq

    auto = AutoModelForCTC if kind == "ctc" else AutoModelForSpeechSeq2Seq
    try:
        model, info = auto.from_pretrained(
            str(model_dir), local_files_only=True, output_loading_info=True
        )
    except (OSError, ValueError) as e:
        raise ModelNotFoundError(
            f"{model_dir}: cannot load a {kind} speech-recognition model from it ({e}); expected "
            "config.json and model.safetensors as written by save_pretrained()"
        ) from e
    missing = sorted(info.get("missing_keys") or ())
    heads = ("lm_head",) if kind == "ctc" else ("lm_head", "proj_out", "decoder")
    if any(h in key for key in missing for h in heads):
        raise ValueError(
            f"{model_dir}: the checkpoint has no trained {kind} recognition head (missing "
            f"{missing[:3]}...): it would be random, so it cannot transcribe"
        )
    if missing:  # e.g. wav2vec2's masked_spec_embed, used only in pre-training
        log.warning(
            "%s: weights not in the checkpoint, left as initialised: %s", model_dir, missing
        )
    return model


def _load_processor(model_dir: Path) -> Any:
    from transformers import AutoProcessor

    try:
        processor = AutoProcessor.from_pretrained(str(model_dir), local_files_only=True)
    except (OSError, TypeError, ValueError) as e:
        raise ModelNotFoundError(
            f"{model_dir}: cannot load its processor ({e}); a speech-recognition model needs "
            "its feature extractor and tokenizer saved beside it (processor.save_pretrained())"
        ) from e
    if not hasattr(processor, "feature_extractor") or not hasattr(processor, "batch_decode"):
        raise ModelNotFoundError(
            f"{model_dir}: has a {type(processor).__name__} but a speech-recognition model needs "
            "a processor with both a feature extractor and a tokenizer "
            "(processor.save_pretrained())"
        )
    return processor


def _load_feature_extractor(model_dir: Path) -> Any:
    from transformers import AutoFeatureExtractor

    try:
        return AutoFeatureExtractor.from_pretrained(str(model_dir), local_files_only=True)
    except (OSError, ValueError) as e:
        raise ModelNotFoundError(
            f"{model_dir}: cannot load its feature extractor ({e}); an audio model needs the "
            "preprocessor_config.json its feature extractor or processor writes with "
            "save_pretrained()"
        ) from e


def _ctc_pad_id(processor: Any, config: Any) -> int:
    pad = getattr(getattr(processor, "tokenizer", None), "pad_token_id", None)
    if pad is None:
        pad = getattr(config, "pad_token_id", None)
    return int(pad or 0)


# --------------------------------------------------------------------------- features


@dataclass
class _Featurizer:
    """A feature extractor called the way its model needs: padded to the longest piece when it
    does not pad itself, with the attention mask asked for (to pool over real frames) but passed
    to the model only where the model takes one."""

    fe: Any
    device: str
    sample_rate: int
    window: int  # samples
    min_piece: int  # samples
    call_kwargs: dict[str, Any]
    pass_mask: bool
    accepted: frozenset[str] | None
    batchable: bool = True

    @classmethod
    def load(
        cls, model_dir: Path, device: str, forward: Callable[..., Any], fe: Any = None
    ) -> _Featurizer:
        fe = fe if fe is not None else _load_feature_extractor(model_dir)
        sr = int(getattr(fe, "sampling_rate", 0) or 0)
        if sr <= 0:
            raise ValueError(f"{model_dir}: the feature extractor names no sampling_rate")
        params = inspect.signature(fe.__call__).parameters
        kwargs: dict[str, Any] = {}
        if "padding" in params and params["padding"].default is False:
            kwargs["padding"] = "longest"  # wav2vec2, Speech2Text: they pad only when asked
        if "return_attention_mask" in params:
            kwargs["return_attention_mask"] = True
        fparams = inspect.signature(forward).parameters
        takes_any = any(p.kind is p.VAR_KEYWORD for p in fparams.values())
        accepted = None if takes_any else frozenset(fparams)
        pass_mask = bool(getattr(fe, "return_attention_mask", False)) and (
            accepted is None or "attention_mask" in accepted
        )
        self = cls(
            fe,
            device,
            sr,
            _window_samples(fe, sr),
            max(1, round(MIN_PIECE_S * sr)),
            kwargs,
            pass_mask,
            accepted,
        )
        # a fixed-size input (Whisper, AST, CLAP) or a mask the model takes makes padding safe
        short, _ = self([np.zeros(sr // 4, np.float32)])
        long, _ = self([np.zeros(sr // 2, np.float32)])
        key = next(iter(short))
        self.batchable = short[key].shape == long[key].shape or self.pass_mask
        return self

    def __call__(self, pieces: list[np.ndarray]) -> tuple[dict[str, Any], torch.Tensor | None]:
        enc = self.fe(
            pieces, sampling_rate=self.sample_rate, return_tensors="pt", **self.call_kwargs
        )
        mask = enc.get("attention_mask")
        inputs = {
            k: v.to(self.device)
            for k, v in enc.items()
            if (k != "attention_mask" or self.pass_mask)
            and (self.accepted is None or k in self.accepted)
        }
        return inputs, None if mask is None else mask.to(self.device)


def _window_samples(fe: Any, sr: int) -> int:
    """The longest piece the feature extractor keeps whole (at most :data:`MAX_WINDOW_S`)."""
    longest = round(MAX_WINDOW_S * sr)
    for attr in ("n_samples", "nb_max_samples"):  # Whisper's chunk_length, CLAP's max_length_s
        val = getattr(fe, attr, None)
        if isinstance(val, int) and val > 0:
            return min(val, longest)
    if type(fe).__name__ == "ASTFeatureExtractor":  # max_length Kaldi frames: 25 ms, 10 ms hop
        return min(round((fe.max_length - 1) * 0.010 * sr + 0.025 * sr), longest)
    return longest


def _mono(wave: np.ndarray) -> np.ndarray:
    arr = np.asarray(wave)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(
            f"expected a mono 1-D float wave (samples in [-1, 1]), got {arr.dtype} {arr.shape}"
        )
    return arr.astype(np.float32, copy=False)


def _check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")


def _split(
    waves: list[np.ndarray], window: int, min_piece: int
) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Each wave as ``ceil(len / window)`` equal pieces (at least one), each at least
    ``min_piece`` long; returns the pieces, each piece's wave index and its length (a weight)."""
    pieces: list[np.ndarray] = []
    owner: list[int] = []
    weight: list[float] = []
    for i, wave in enumerate(waves):
        n = max(1, math.ceil(len(wave) / window))
        bounds = np.linspace(0, len(wave), n + 1).round().astype(np.int64).tolist()
        for lo, hi in itertools.pairwise(bounds):
            piece = wave[lo:hi]
            if len(piece) < min_piece:
                piece = np.pad(piece, (0, min_piece - len(piece)))
            pieces.append(piece)
            owner.append(i)
            weight.append(float(max(hi - lo, 1)))
    return pieces, np.asarray(owner, dtype=np.int64), np.asarray(weight, dtype=np.float64)


def _pool_pieces(emb: np.ndarray, owner: np.ndarray, weight: np.ndarray, n: int) -> np.ndarray:
    """Per wave, the length-weighted mean of its pieces' rows, L2-normalised; a wave of one
    piece keeps that piece's row unchanged."""
    if len(owner) == n:  # one piece per wave, in order
        return emb
    out = np.zeros((n, emb.shape[1]), dtype=np.float64)
    np.add.at(out, owner, emb.astype(np.float64) * weight[:, None])
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return (out / np.maximum(norms, 1e-12)).astype(np.float32)


def _frame_mask(mask: torch.Tensor, frames: int, model: Any) -> torch.Tensor:
    """``(batch, frames)`` bool: which output frames come from real input, given the input-level
    attention mask (samples for wav2vec2, feature frames for Whisper / Speech2Text)."""
    import torch

    lengths = mask.sum(-1)
    if mask.shape[-1] != frames:
        to_out = getattr(model, "_get_feat_extract_output_lengths", None)
        if to_out is not None:
            lengths = to_out(lengths)
        else:
            lengths = torch.ceil(lengths * frames / mask.shape[-1])
    lengths = lengths.clamp(min=1, max=frames).to(mask.device)
    return torch.arange(frames, device=mask.device)[None, :] < lengths[:, None]


def _mean_over_time(hidden: torch.Tensor, mask: torch.Tensor | None, model: Any) -> torch.Tensor:
    if mask is None:
        return hidden.mean(dim=1)
    keep = _frame_mask(mask, hidden.shape[1], model).unsqueeze(-1).to(hidden.dtype)
    return (hidden * keep).sum(1) / keep.sum(1).clamp(min=1.0)
