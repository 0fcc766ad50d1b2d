"""The encoders over a decoded shard (:class:`Embedder`: this process, or a Ray actor), where
they run, and the per-shard embedding files and records.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import functools
import hashlib
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import pyarrow as pa

from cmrops import io
from cmrops.preprocessing.shards import INPUT_FILES, Shard, record

if TYPE_CHECKING:
    from cmrops.stages.preprocess import PreprocessParams


#: How captions are grouped into batches (``TextEncoder.encode``): part of the embed key, so shards
#: embedded with an earlier grouping are embedded again rather than mixed with new ones.
TEXT_BATCHES = "sorted-by-tokens"
#: How embeddings are scaled to unit length (``cmrops.encoders``): numpy, no longer torch (the
#: last bit of a row can differ), so earlier shards are embedded again rather than mixed.
UNIT_ROWS = "numpy"

T = TypeVar("T")

#: Images per session run when the image and text encoders embed side by side: an image's bytes
#: do not depend on its batch, and two image sessions (:meth:`Embedder._images_beside`) each
#: keep a memory arena as large as their largest run (EfficientNet-Lite0 at 64 images: about
#: 1.7 GB of activations), at about the same rate (docs/performance.md).
IMAGE_RUN = 16


def embed_key(shard: Shard, params: PreprocessParams, device: str) -> str:
    spec = {
        "shard": shard.input_hash,
        "image_encoder": params.image_encoder,
        "text_encoder": params.text_encoder,
        "audio_encoder": params.audio.encoder,
        "asr": dataclasses.asdict(params.asr),
        "encoder_size": params.encoder_size,
        "batch_size": params.batch_size,
        "device": device,
        "runtime": params.runtime,
        "text_batches": TEXT_BATCHES,  # a caption's bytes depend on its batch's padding
        "unit_rows": UNIT_ROWS,
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def engine_device(eng: Any, params: PreprocessParams) -> str:
    """Where the encoders run: resolved here for the local engine, from the cluster's GPUs on
    Ray (``auto``: cuda when the cluster has a GPU)."""
    gpus = eng.gpus()
    if gpus is None:
        return _device(params)
    if params.device == "cuda" and not gpus:
        raise ValueError('preprocess.device is "cuda" but the Ray cluster has no GPU; use "auto"')
    return "cuda" if params.device != "cpu" and gpus else "cpu"


def embedders(eng: Any, params: PreprocessParams, device: str, n_shards: int) -> Any:
    """The encoder workers: this process on the local engine, Ray actors otherwise (one GPU
    each on cuda). A CPU actor uses this process's thread budget."""
    if eng.kind == "local":
        return eng.actors(functools.partial(Embedder, params, device), size=1, gpu=False)
    threads = None
    if device == "cpu":
        from cmrops.threads import current

        threads = current()
    size = eng.params.embed_actors or (eng.gpus() if device == "cuda" else 1)
    factory = functools.partial(Embedder, params, device, threads)
    return eng.actors(factory, size=min(size, n_shards), gpu=device == "cuda")


def _device(params: PreprocessParams) -> str:
    from cmrops.encoders import resolve_device

    return resolve_device(params.device)


class Embedder:
    """The encoders, loaded on first use, wherever the engine runs it (this process or a Ray
    actor); ``threads``: the thread budget to apply first (:mod:`cmrops.threads`)."""

    def __init__(self, params: PreprocessParams, device: str, threads: int | None = None) -> None:
        self.params = params
        self.device = device
        self.threads = threads
        self._models: dict[str, Any] = {}

    def _load(self, what: str, session_threads: int | None = None) -> Any:
        if what not in self._models:
            self._budget()
            if session_threads is not None:
                from cmrops.inference import session_threads as share

                with share(session_threads):
                    return self._load(what)
            runtime = self.params.runtime
            if what in ("image", "image-alone"):
                from cmrops.encoders import load_image_encoder

                model = load_image_encoder(self.params.image_encoder, self.device, runtime)
            elif what == "text":
                from cmrops.encoders import load_text_encoder

                model = load_text_encoder(self.params.text_encoder, self.device, runtime)
            elif what == "audio":
                from cmrops.audio_models import load_audio_encoder

                model = load_audio_encoder(self.params.audio.encoder, self.device)
            else:
                from cmrops.audio_models import load_transcriber

                model = load_transcriber(self.params.asr.model, self.device)
            self._models[what] = model
        return self._models[what]

    def _budget(self) -> int:
        """This process's thread budget, ``threads`` applied first when given."""
        from cmrops.threads import apply, current

        if self.threads is not None:
            apply(self.threads)
        return current()

    def image_and_text(self) -> tuple[Any, Any, bool]:
        """The image and text encoders, and whether they embed side by side: on the CPU, with
        a budget of two threads or more, each loaded with its share of it (the image encoder
        the larger), when both run on ONNX Runtime (whose outputs are the same bytes at any
        thread count). ONNX Runtime's intra-op threads scale poorly over EfficientNet-Lite0's
        small convolutions, so two encoders on one thread each embed more than one after the
        other on two (docs/performance.md)."""
        budget = self._budget()
        split = self.device == "cpu" and self.params.runtime != "torch" and budget >= 2
        image = self._load("image", budget - budget // 2 if split else None)
        text = self._load("text", budget // 2 if split else None)
        at_once = split and image.runtime == text.runtime == "onnxruntime"
        return image, text, at_once

    def _images_beside(
        self, pixels: np.ndarray, texts: cf.Future[Any], progress: bool
    ) -> np.ndarray:
        """``pixels`` embedded :data:`IMAGE_RUN` at a time while ``texts`` runs: on the image
        encoder's share of the budget until the text encoder is done, then on the whole budget
        (a second session of the same export; an image's bytes depend neither on its batch nor
        on the thread count)."""
        beside = self._load("image")
        bs = min(self.params.batch_size, IMAGE_RUN)
        if len(pixels) == 0:
            return beside.encode(pixels, bs, progress=False)
        out = np.empty((len(pixels), beside.dim), np.float32)
        starts = range(0, len(pixels), bs)
        if progress:
            from tqdm import tqdm

            starts = tqdm(starts, desc=f"image {beside.name}", unit="batch")
        for lo in starts:
            encoder = beside if not texts.done() else self._load("image-alone")
            out[lo : lo + bs] = encoder.encode(pixels[lo : lo + bs], bs, progress=False)
        return out

    @property
    def image(self) -> Any:
        return self._load("image")

    @property
    def text(self) -> Any:
        return self._load("text")

    def embed(self, shard_dir: str, stem: str) -> dict[str, Any]:
        """Embed a decoded shard's encoder inputs and captions (read from ``shard_dir``): one
        vector per image; a video's keyframes averaged; an audio clip through the audio encoder
        (and, with ``asr.model``, transcribed)."""
        params = self.params
        progress = sys.stderr.isatty()
        folder = Path(shard_dir)
        table = io.read_parquet(folder / f"{stem}.samples.parquet")
        counts = io.read_npy(folder / f"{stem}.counts.npy")
        if len(counts) != table.num_rows:
            raise RuntimeError(f"{stem}: encoder inputs of {len(counts)} rows for {table.num_rows}")
        media = table["media"][0].as_py() if table.num_rows else "image"
        captions = table["captions_norm"].to_pylist()
        transcripts: list[str] | None = None
        if media == "audio":
            media_encoder, text_encoder = self._load("audio"), self.text  # loaded before timing
            image, transcripts, image_seconds = self._audio(folder, stem, counts, progress)
            if transcripts is not None and params.asr.as_caption:
                captions = [[*c, t] if t else c for c, t in zip(captions, transcripts, strict=True)]
            flat = [c for caps in captions for c in caps]
            per_caption, text_seconds = _timed(
                text_encoder.encode, flat, params.batch_size, progress
            )
            n_inputs = len(counts)
        else:
            pixels = io.read_npy(folder / f"{stem}.pixels.npy")
            if int(counts.sum()) != len(pixels):
                raise RuntimeError(f"{stem}: {len(pixels)} frames, the counts say {counts.sum()}")
            flat = [c for caps in captions for c in caps]
            media_encoder, text_encoder, at_once = self.image_and_text()
            with cf.ThreadPoolExecutor(1, thread_name_prefix="cmrops-text") as beside:
                embed_text = functools.partial(
                    _timed, text_encoder.encode, flat, params.batch_size, progress
                )
                if at_once:
                    texts = beside.submit(embed_text)
                    image, image_seconds = _timed(self._images_beside, pixels, texts, progress)
                    per_caption, text_seconds = texts.result()
                else:
                    image, image_seconds = _timed(
                        media_encoder.encode, pixels, params.batch_size, progress
                    )
                    per_caption, text_seconds = embed_text()
            if media == "video":  # the mean of the keyframes, renormalised
                image = _pool(image, counts)
            n_inputs = len(pixels)
        text = _pool(per_caption, np.array([len(c) for c in captions], np.int64))
        facts = {
            "media": media,
            "image_encoder": media_encoder.name,
            "image_dim": media_encoder.dim,
            "image_runtime": getattr(media_encoder, "runtime", "torch"),
            "text_encoder": text_encoder.name,
            "text_dim": text_encoder.dim,
            "text_runtime": text_encoder.runtime,
        }
        if transcripts is not None:
            facts["asr_model"] = self._load("asr").name
        return {
            "image": image.astype(np.float32),
            "text": text.astype(np.float32),
            "transcripts": transcripts,
            "sample_ids": table["sample_id"].to_pylist(),
            "facts": facts,
            "images": n_inputs,
            "texts": len(flat),
            "image_seconds": image_seconds,
            "text_seconds": text_seconds,  # beside image_seconds when side by side
        }

    def _audio(
        self, folder: Path, stem: str, counts: np.ndarray, progress: bool
    ) -> tuple[np.ndarray, list[str] | None, float]:
        """A shard's clips through the audio encoder (and the transcriber, with ``asr.model``):
        (embeddings, transcripts, seconds)."""
        params = self.params
        bounds = np.concatenate([[0], np.cumsum(counts)])
        waves = io.read_npy(folder / f"{stem}.waves.npy")
        clips = [waves[bounds[i] : bounds[i + 1]] for i in range(len(counts))]
        media_encoder = self._load("audio")
        transcriber = self._load("asr") if params.asr.model else None
        t0 = time.perf_counter()
        rate = params.audio.sample_rate
        image = media_encoder.encode(
            _at_rate(clips, rate, media_encoder.sample_rate), params.batch_size, progress
        )
        transcripts = None
        if transcriber is not None:
            transcripts = transcriber.transcribe(
                _at_rate(clips, rate, transcriber.sample_rate), params.asr.batch_size, progress
            )
        return image, transcripts, time.perf_counter() - t0


def _timed(fn: Callable[..., T], *args: Any) -> tuple[T, float]:
    """``fn(*args)`` and the seconds it took."""
    t0 = time.perf_counter()
    return fn(*args), time.perf_counter() - t0


def _at_rate(clips: list[np.ndarray], rate: int, target: int) -> list[np.ndarray]:
    """The clips (decoded at ``audio.sample_rate``) at the rate a model expects (CLAP: 48 kHz)."""
    if rate == target:
        return clips
    from cmrops.media.audio import resample

    return [resample(c, rate, target) for c in clips]


def _pool(vectors: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Mean of consecutive runs of ``counts`` rows, L2-renormalised (float64 sums)."""
    owner = np.repeat(np.arange(len(counts)), counts)
    out = np.zeros((len(counts), vectors.shape[1]), np.float64)
    np.add.at(out, owner, vectors.astype(np.float64))
    out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    return out


TRANSCRIPTS = pa.schema([("sample_id", pa.string()), ("transcript", pa.string())])


def embed_shard(
    result: dict[str, Any], shard: Shard, shard_dir: Path, key: str, timing: dict[str, Any]
) -> None:
    """Write and record what :meth:`Embedder.embed` computed for ``shard``."""
    io.write_npy(shard_dir / f"{shard.stem}.image.npy", result["image"])
    io.write_npy(shard_dir / f"{shard.stem}.text.npy", result["text"])
    files = [f"{shard.stem}.image.npy", f"{shard.stem}.text.npy"]
    if result["transcripts"] is not None:
        rows = {"sample_id": result["sample_ids"], "transcript": result["transcripts"]}
        io.write_parquet(
            shard_dir / f"{shard.stem}.transcripts.parquet", pa.table(rows, schema=TRANSCRIPTS)
        )
        files.append(f"{shard.stem}.transcripts.parquet")
    record(shard_dir, shard, "embed", key, files, **result["facts"])
    for name in INPUT_FILES:
        (shard_dir / f"{shard.stem}.{name}").unlink(missing_ok=True)
    timing["images_embedded"] += result["images"]
    timing["texts_embedded"] += result["texts"]
    timing["image_embed_seconds"] += result["image_seconds"]
    timing["text_embed_seconds"] += result["text_seconds"]
