"""Training checkpoints without pickle: safetensors for tensors, JSON for everything else.

A checkpoint is one directory (``models/<method>-<bits>/``):

* ``config.json`` - what was trained: model shape, training hyper-parameters, method, and a
  fingerprint of the training data. A resume with a different config is refused.
* ``model.safetensors`` - the weights (the current ones while training; once ``state.json`` says
  ``done``, the selected ones: best validation mAP);
* ``best.safetensors`` - while training, the best weights so far (absent once done);
* ``optimizer.safetensors`` - every tensor of the optimizer state, named ``state.<param>.<key>``
  (absent for a closed-form model, :mod:`cmrops.models.closed_form`, which has no optimizer);
* ``state.json`` - format and version, step / epoch / batch position, early-stopping state, loss
  history, the optimizer's non-tensor part (param groups, scalar state), the RNG states (torch,
  CUDA, numpy, python) and the SHA-256 of every other file.

**Atomic replacement.** A checkpoint is written complete into ``<dir>.tmp``; then ``<dir>`` is
renamed to ``<dir>.old``, ``<dir>.tmp`` to ``<dir>``, and ``<dir>.old`` removed. A kill at any
point leaves either the new or the previous checkpoint, which :func:`recover` puts back in place.

**Loading never unpickles**: tensors come from ``safetensors`` and everything else from JSON.
Anything unexpected - bad JSON, an unknown format or version, a file whose hash differs from
``state.json`` (truncated or swapped), tensor names, shapes or dtypes that do not fit the model
or optimizer, a config that differs from the run's - raises :class:`CheckpointError` naming the
path and the problem.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from cmrops import io

FORMAT = "cmrops.train.checkpoint"
VERSION = 1
TENSOR_FILES = ("model.safetensors", "best.safetensors", "optimizer.safetensors")


class CheckpointError(ValueError):
    """A checkpoint directory is corrupt, foreign, or belongs to a different configuration."""


# --------------------------------------------------------------------------- directory handling


def _tmp(d: Path) -> Path:
    return d.with_name(d.name + ".tmp")


def _old(d: Path) -> Path:
    return d.with_name(d.name + ".old")


def recover(directory: str | os.PathLike[str]) -> None:
    """Finish or undo a replacement interrupted by a kill (see module docstring)."""
    d = Path(directory)
    if not d.exists() and _old(d).is_dir():
        _old(d).rename(d)  # killed between the two renames: the previous checkpoint is intact
    for leftover in (_old(d), _tmp(d)):
        if leftover.exists():
            shutil.rmtree(leftover)


def exists(directory: str | os.PathLike[str]) -> bool:
    """Whether ``directory`` holds a checkpoint. A non-empty directory without ``state.json``
    is refused (it is not ours, and saving would replace it)."""
    d = Path(directory)
    recover(d)
    if (d / "state.json").is_file():
        return True
    if d.exists() and (not d.is_dir() or any(d.iterdir())):
        raise CheckpointError(
            f"{d}: exists but is not a cmrops training checkpoint (no state.json); move it away"
        )
    return False


def stale_data(directory: str | os.PathLike[str], config: dict[str, Any]) -> bool:
    """The checkpoint in ``directory`` was made with this run's model and training settings on
    other data (``config["data"]`` differs): a model of an earlier release, not a run to resume."""
    if not exists(directory):
        return False
    try:
        saved = _read_json(Path(directory) / "config.json")
    except CheckpointError:
        return False  # let load() report what is wrong
    if not isinstance(saved, dict) or saved.get("data") == config.get("data"):
        return False
    return {k: v for k, v in saved.items() if k != "data"} == {
        k: v for k, v in config.items() if k != "data"
    }


def remove(directory: str | os.PathLike[str]) -> None:
    """Delete a checkpoint (a directory that is not one is refused, see :func:`exists`)."""
    d = Path(directory)
    if exists(d):
        shutil.rmtree(d)


# --------------------------------------------------------------------------- save


def save(
    directory: str | os.PathLike[str],
    config: dict[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    state: dict[str, Any],
    best: dict[str, torch.Tensor] | None = None,
) -> None:
    """Write a checkpoint atomically. ``state`` is the loop's JSON-able state; ``best`` the best
    weights so far (while training); ``optimizer`` None: a model solved without one."""
    d = Path(directory)
    recover(d)
    tmp = _tmp(d)
    tmp.mkdir(parents=True)
    meta = {"format": FORMAT}
    save_file(_cpu(model.state_dict()), tmp / "model.safetensors", metadata=meta)
    if best is not None:
        save_file(_cpu(best), tmp / "best.safetensors", metadata=meta)
    opt_json = None
    if optimizer is not None:
        opt_tensors, opt_json = _flatten_optimizer(optimizer.state_dict())
        save_file(opt_tensors, tmp / "optimizer.safetensors", metadata=meta)
    io.write_json(tmp / "config.json", config)
    files = {
        name: io.sha256_file(tmp / name)
        for name in (*TENSOR_FILES, "config.json")
        if (tmp / name).is_file()
    }
    record = {
        **state,
        "format": FORMAT,
        "version": VERSION,
        "files": files,
        "optimizer": opt_json,
        "rng": rng_state(),
    }
    io.write_json(tmp / "state.json", record)  # written last: the checkpoint is complete
    if d.exists():
        d.rename(_old(d))
    tmp.rename(d)
    shutil.rmtree(_old(d), ignore_errors=True)


def _cpu(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}


def _flatten_optimizer(sd: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    state: dict[str, dict[str, Any]] = {}
    for idx, entries in sd["state"].items():
        out: dict[str, Any] = {}
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                name = f"state.{idx}.{key}"
                tensors[name] = value.detach().to("cpu").contiguous()
                out[key] = {"tensor": name}
            else:
                out[key] = {"value": value}
        state[str(idx)] = out
    groups = [
        {k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()}
        for g in sd["param_groups"]
    ]
    return tensors, {"state": state, "param_groups": groups}


# --------------------------------------------------------------------------- load


def load(
    directory: str | os.PathLike[str],
    config: dict[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
) -> tuple[dict[str, Any], dict[str, torch.Tensor] | None]:
    """Load a checkpoint into ``model`` (and ``optimizer``) after checking it fully.

    Returns ``(state, best)``: the JSON state (RNG states not yet applied, see
    :func:`set_rng_state`) and the best weights so far, if the checkpoint has them."""
    d = Path(directory)
    recover(d)
    state = _read_json(d / "state.json")
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{d}/state.json: not a cmrops training checkpoint")
    if state.get("version") != VERSION:
        raise CheckpointError(
            f"{d}/state.json: checkpoint version {state.get('version')!r}, this cmrops reads "
            f"version {VERSION}"
        )
    files = state.get("files")
    if not isinstance(files, dict) or "model.safetensors" not in files:
        raise CheckpointError(f"{d}/state.json: no file list")
    for name, digest in files.items():
        if name not in (*TENSOR_FILES, "config.json"):
            raise CheckpointError(f"{d}/state.json: unexpected file {name!r}")
        p = d / name
        if not p.is_file():
            raise CheckpointError(f"{p}: missing (named by state.json)")
        if io.sha256_file(p) != digest:
            raise CheckpointError(f"{p}: contents differ from state.json (truncated or replaced)")
    saved_config = _read_json(d / "config.json")
    if saved_config != config:
        raise CheckpointError(
            f"{d}: checkpoint config differs from this run's ({_diff(saved_config, config)}); "
            "delete the directory (or pass --restart) to train from scratch"
        )
    expected = model.state_dict()
    weights = _read_tensors(d / "model.safetensors", expected)
    best = _read_tensors(d / "best.safetensors", expected) if "best.safetensors" in files else None
    model.load_state_dict(weights)
    if optimizer is not None:
        if "optimizer.safetensors" not in files:
            raise CheckpointError(f"{d}: no optimizer state (a model solved without one)")
        optimizer.load_state_dict(_optimizer_state(d, state.get("optimizer"), optimizer))
    return state, best


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None


def _read_tensors(path: Path, expected: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    try:
        with safe_open(path, framework="pt", device="cpu") as fh:
            if (fh.metadata() or {}).get("format") != FORMAT:
                raise CheckpointError(f"{path}: not written by cmrops (no format metadata)")
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
    except CheckpointError:
        raise
    except Exception as e:  # SafetensorError, OSError: truncated, bad header, ...
        raise CheckpointError(f"{path}: unreadable safetensors file ({e})") from None
    if expected is not None:
        missing = sorted(set(expected) - set(tensors))
        extra = sorted(set(tensors) - set(expected))
        if missing or extra:
            raise CheckpointError(
                f"{path}: tensor names do not fit the model (missing {missing[:5]}, "
                f"unexpected {extra[:5]})"
            )
        for k, t in tensors.items():
            e = expected[k]
            if t.shape != e.shape or t.dtype != e.dtype:
                raise CheckpointError(
                    f"{path}: tensor {k!r} is {t.dtype} {tuple(t.shape)}, the model needs "
                    f"{e.dtype} {tuple(e.shape)}"
                )
    return tensors


def _optimizer_state(d: Path, spec: Any, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    path = d / "optimizer.safetensors"
    current = optimizer.state_dict()
    params = [p for g in optimizer.param_groups for p in g["params"]]
    try:
        groups_in = spec["param_groups"]
        state_in = spec["state"]
        if len(groups_in) != len(current["param_groups"]):
            raise CheckpointError(
                f"{path}: {len(groups_in)} param groups, expected {len(current['param_groups'])}"
            )
        groups = []
        for g_in, g_now in zip(groups_in, current["param_groups"], strict=True):
            if set(g_in) != set(g_now) or g_in["params"] != g_now["params"]:
                raise CheckpointError(f"{path}: param groups do not fit this optimizer")
            groups.append(
                {k: tuple(v) if isinstance(g_now[k], tuple) else v for k, v in g_in.items()}
            )
        tensors = _read_tensors(path, None)
        state: dict[int, dict[str, Any]] = {}
        used = set()
        for idx_s, entries in state_in.items():
            idx = int(idx_s)
            if not 0 <= idx < len(params):
                raise CheckpointError(f"{path}: state for parameter {idx} of {len(params)}")
            out: dict[str, Any] = {}
            for key, v in entries.items():
                if "tensor" in v:
                    t = tensors[v["tensor"]]
                    used.add(v["tensor"])
                    if t.ndim and t.shape != params[idx].shape:
                        raise CheckpointError(
                            f"{path}: {v['tensor']} has shape {tuple(t.shape)}, parameter {idx} "
                            f"is {tuple(params[idx].shape)}"
                        )
                    out[key] = t
                else:
                    out[key] = v["value"]
            state[idx] = out
        if used != set(tensors):
            raise CheckpointError(f"{path}: unexpected tensors {sorted(set(tensors) - used)[:5]}")
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise CheckpointError(f"{d}/state.json: malformed optimizer state ({e!r})") from None
    return {"state": state, "param_groups": groups}


def _diff(a: Any, b: Any, prefix: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                return _diff(a.get(k), b.get(k), f"{prefix}{k}.")
    return f"{prefix.rstrip('.') or 'config'}: checkpoint {a!r}, now {b!r}"


# --------------------------------------------------------------------------- RNG


def rng_state() -> dict[str, Any]:
    """Every RNG the training process touches, as JSON (tensors as hex strings)."""
    np_state = np.random.get_state()  # noqa: NPY002 - the legacy global RNG, saved as is
    py_state = random.getstate()
    out: dict[str, Any] = {
        "torch": torch.get_rng_state().numpy().tobytes().hex(),
        "numpy": [np_state[0], np_state[1].tolist(), *[x for x in np_state[2:]]],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = [s.numpy().tobytes().hex() for s in torch.cuda.get_rng_state_all()]
    return out


def set_rng_state(state: dict[str, Any]) -> None:
    try:
        torch.set_rng_state(torch.frombuffer(bytearray.fromhex(state["torch"]), dtype=torch.uint8))
        name, keys, pos, has_gauss, cached = state["numpy"]
        legacy = (name, np.asarray(keys, np.uint32), pos, has_gauss, cached)
        np.random.set_state(legacy)  # noqa: NPY002
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
        if "cuda" in state and torch.cuda.is_available():
            cuda = [
                torch.frombuffer(bytearray.fromhex(h), dtype=torch.uint8) for h in state["cuda"]
            ]
            if len(cuda) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(cuda)
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"state.json: malformed RNG state ({e!r})") from None


_FINGERPRINT_ROWS = 1024


def fingerprint(*arrays: Any) -> str:
    """SHA-256 over the arrays' dtypes, shapes and bytes (the training data's identity)."""
    h = hashlib.sha256()
    for a in arrays:
        h.update(f"{a.dtype.str}{tuple(a.shape)}".encode())
        if a.ndim == 0:
            h.update(np.ascontiguousarray(a).tobytes())
            continue
        # Row blocks: the same bytes as the whole array, but an array-like that reads its rows
        # on demand (finetune.StoredCrops) is never materialised at once.
        for lo in range(0, len(a), _FINGERPRINT_ROWS):
            h.update(np.ascontiguousarray(a[lo : lo + _FINGERPRINT_ROWS]).tobytes())
    return h.hexdigest()
