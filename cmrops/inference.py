"""CPU inference through ONNX Runtime: a torch module exported once, cached, verified, then run.

:func:`onnx_session` turns an encoder's torch forward pass (a ``torch.nn.Module`` over numpy-able
tensors) into an ONNX Runtime ``InferenceSession`` on the CPU provider:

1. **Cache.** The export lives in ``<cache>/<key>/model.onnx`` where ``key`` hashes the module's
   weights (every tensor of its ``state_dict``, names and bytes), the input signature and the
   torch / ONNX Runtime versions; ``<cache>`` is ``$CMROPS_ONNX_CACHE``, else ``cmrops/onnx``
   under the Hugging Face home (``$HF_HOME``, ``~/.cache/huggingface``) where the encoders'
   weights live. Folders are written whole, then renamed: a killed export leaves nothing.
2. **Export**, once per key, with torch's TorchScript exporter (``torch.onnx.export(dynamo=False)``:
   seconds, and no package beyond ``onnx``; the ``torch.export``-based one needs ``onnxscript``
   and took minutes here for the same graphs).
3. **Verify** on a probe batch of other shapes than the export's example (so a shape frozen by
   tracing is caught): every row's cosine to torch's output must be >= :data:`MIN_COSINE`. The
   outcome is recorded beside the model (``verified.json``); a model that fails, or cannot be
   exported, is recorded too, so later runs go straight to torch, and the reason is logged.
4. **Run** with this process's thread budget (:func:`cmrops.threads.current`) as
   ``intra_op_num_threads`` - or the share :func:`session_threads` sets for sessions that run
   side by side - one inter-op thread and no spinning (idle threads sleep, which is what a
   machine shared with other work needs).

ONNX Runtime's CPU kernels give the same bytes for any thread count (tests check it) and, for a
fixed input shape, any rerun - but not the same bytes as torch (different kernels: cosine >=
0.9999, not equality).
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

__all__ = [
    "MIN_COSINE",
    "OnnxModel",
    "cache_dir",
    "onnx_session",
    "open_export",
    "session_threads",
]

#: Smallest cosine between an ONNX Runtime row and torch's for the export to be used.
MIN_COSINE = 0.9999
CACHE_ENV = "CMROPS_ONNX_CACHE"
#: Bump when the export recipe changes, so cached exports are redone.
RECIPE = 1
_MODEL, _RECORD = "model.onnx", "verified.json"


def cache_dir() -> Path:
    """Where exports are kept (see the module docstring)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    from huggingface_hub import constants

    return Path(constants.HF_HOME) / "cmrops" / "onnx"


@dataclass
class OnnxModel:
    """An ONNX Runtime session over an exported module: ``run(*arrays) -> array``."""

    session: Any
    input_names: tuple[str, ...]
    path: Path
    exporter: str

    def run(self, *arrays: np.ndarray) -> np.ndarray:
        feed = dict(zip(self.input_names, arrays, strict=True))
        return self.session.run(None, feed)[0]


def _versions() -> dict[str, str]:
    import onnxruntime
    import torch

    return {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__}


def _weights_key(module: Any, signature: dict[str, Any]) -> str:
    h = hashlib.sha256(
        json.dumps({"recipe": RECIPE, **signature, **_versions()}, sort_keys=True).encode()
    )
    for name, tensor in module.state_dict().items():
        h.update(name.encode())
        h.update(str(tuple(tensor.shape)).encode() + str(tensor.dtype).encode())
        h.update(tensor.detach().cpu().contiguous().view(-1).view(dtype=_bytes_dtype()).numpy())
    return h.hexdigest()[:32]


def _bytes_dtype() -> Any:
    import torch

    return torch.uint8


_SESSION_THREADS: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "cmrops_session_threads", default=None
)


@contextlib.contextmanager
def session_threads(threads: int) -> Iterator[None]:
    """Sessions opened in the block use ``threads`` intra-op threads instead of the whole
    budget: for sessions that run side by side (the image and the text encoder of
    :class:`cmrops.preprocessing.embed.Embedder`). Their outputs are the same bytes at any
    thread count."""
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    token = _SESSION_THREADS.set(threads)
    try:
        yield
    finally:
        _SESSION_THREADS.reset(token)


def _session(path: Path) -> Any:
    import onnxruntime as ort

    from cmrops.threads import current

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = _SESSION_THREADS.get() or current()
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a64, b64 = a.astype(np.float64).reshape(len(a), -1), b.astype(np.float64).reshape(len(b), -1)
    den = np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)
    return (a64 * b64).sum(1) / np.maximum(den, 1e-30)


def _export(
    module: Any,
    example: Sequence[Any],
    names: Sequence[str],
    dynamic: dict[str, dict[int, str]],
    dest: Path,
) -> None:
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python values frozen as constants
        torch.onnx.export(
            module,
            tuple(example),
            str(dest),
            dynamo=False,
            input_names=list(names),
            output_names=["output"],
            dynamic_axes={**dynamic, "output": {0: "batch"}},
            opset_version=17,
        )


def onnx_session(
    module: Any,
    *,
    name: str,
    example: Sequence[Any],
    probe: Sequence[Any],
    input_names: Sequence[str],
    dynamic: dict[str, dict[int, str]],
    reference: Callable[..., Any] | None = None,
) -> OnnxModel | None:
    """``module`` (a torch module in ``eval()`` mode on the CPU) as an :class:`OnnxModel`, or
    None - with the reason logged - when it does not export or does not verify.

    ``example``: the tensors the export traces; ``probe``: other tensors (another batch size, other
    lengths) on which ONNX Runtime must agree with ``reference`` (default: ``module``) to cosine
    >= :data:`MIN_COSINE`; ``dynamic``: the axes that vary, ``{input: {axis: label}}``."""

    signature = {
        "inputs": list(input_names),
        "dynamic": {k: {str(a): v for a, v in d.items()} for k, d in dynamic.items()},
        "example": [list(t.shape) for t in example],
    }
    key = _weights_key(module, signature)
    folder = cache_dir() / key
    record = _read_record(folder)
    if record is not None and not record.get("ok"):
        log.info("%s: torch (the ONNX export was rejected before: %s)", name, record["reason"])
        return None
    if record is None:
        record = _export_and_verify(
            module, name, example, probe, input_names, dynamic, reference, folder
        )
        if not record.get("ok"):
            log.warning("%s: running on torch: %s", name, record["reason"])
            return None
    return open_export(folder, input_names)


def open_export(folder: Path, input_names: Sequence[str]) -> OnnxModel | None:
    """The verified export in ``folder`` (a folder :func:`onnx_session` wrote), or None when
    there is none or it failed its verification."""
    record = _read_record(folder)
    if record is None or not record.get("ok"):
        return None
    return OnnxModel(
        _session(folder / _MODEL), tuple(input_names), folder / _MODEL, record["exporter"]
    )


def _read_record(folder: Path) -> dict[str, Any] | None:
    try:
        record = json.loads((folder / _RECORD).read_text())
    except (FileNotFoundError, json.JSONDecodeError, NotADirectoryError):
        return None
    if record.get("ok") and not (folder / _MODEL).is_file():
        return None
    return record


def _export_and_verify(
    module: Any,
    name: str,
    example: Sequence[Any],
    probe: Sequence[Any],
    input_names: Sequence[str],
    dynamic: dict[str, dict[int, str]],
    reference: Callable[..., Any] | None,
    folder: Path,
) -> dict[str, Any]:
    import torch

    with torch.inference_mode():
        expected = (reference or module)(*probe).float().numpy()
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        log.info("%s: exporting to ONNX, once (cached in %s)", name, folder.parent)
        try:
            _export(module, example, input_names, dynamic, tmp / _MODEL)
            got = OnnxModel(_session(tmp / _MODEL), tuple(input_names), tmp, "torchscript").run(
                *[t.numpy() for t in probe]
            )
        except Exception as e:  # any exporter or runtime failure: torch runs the model
            record = {"ok": False, "reason": f"export failed: {type(e).__name__}: {e}"[:500]}
        else:
            same = got.shape == expected.shape
            cos = float(_cosines(got, expected).min()) if same else -1.0
            if same and cos >= MIN_COSINE:
                record = {"ok": True, "exporter": "torchscript", "min_cosine": cos}
            else:
                record = {
                    "ok": False,
                    "reason": f"the export differs from torch on the probe batch (shape "
                    f"{got.shape} vs {expected.shape}, smallest cosine {cos:.6f} < {MIN_COSINE})",
                }
        record.update(_versions())
        if not record["ok"]:
            (tmp / _MODEL).unlink(missing_ok=True)
        (tmp / _RECORD).write_text(json.dumps(record, indent=2) + "\n")
        _publish(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return record


def _publish(tmp: Path, folder: Path) -> None:
    """Rename the finished folder into place (over an unusable one: a record without its
    model); a concurrent export of the same key that got there first is as good as ours."""
    if folder.exists():
        shutil.rmtree(folder, ignore_errors=True)
    with contextlib.suppress(OSError):
        os.replace(tmp, folder)
