"""A verified ONNX export reopened from the model's files alone, without building the model.

:func:`cmrops.inference.onnx_session` keys an export by the weights of a built torch module, so a
process has to build the model before it can find its export. For a ``transformers`` text model
that import and build is most of the cost: :func:`cmrops.encoders.load_text_encoder` took 5.0-5.8 s
on a cached export, and 0.3-0.4 s reopened from the record below (all-MiniLM-L6-v2, AMD EPYC,
torch already imported). For the EfficientNet-Lite0 image encoder the build itself is quick, but
it needs torch, whose import takes 2.3-2.8 s here. Every process that embeds pays it: preprocess,
the align stage's concept bridge, the label stage's prompts.

So, once an export is verified, :func:`remember_text` / :func:`remember_image` record what running
it needs under a hash of the files the model is loaded from (:func:`files_key`): the export's
folder, the output width, and for text the input names, the padding and the length limit.
:func:`reopen_text` / :func:`reopen_image` find that record from the files alone:

* text runs the export with the ``tokenizers`` library's tokenizer read from ``tokenizer.json``,
  without ``transformers``. The record is written only when that tokenizer gives exactly the
  arrays ``transformers``' tokenizer gives on :data:`PROBE_TEXTS` (casing, accents, digits, empty
  text, a text past the length limit); a model without ``tokenizer.json``, padded on the left, or
  whose tokenizers differ on a probe keeps the full load;
* the image encoder's pixels are prepared in numpy (:func:`cmrops.encoders.efficientnet_lite_array`,
  the same bytes as torch's), without torch.

The files key covers the files a load reads (configuration, vocabulary, weights: the suffixes in
:data:`_KEYED` of a model folder, or the named weights file), their relative paths, and the
versions of the packages that export and run the model; any change loads, exports and verifies
the model again.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from cmrops import io
from cmrops.inference import RECIPE, OnnxModel, cache_dir, open_export

log = logging.getLogger(__name__)

__all__ = [
    "PROBE_TEXTS",
    "ReopenedText",
    "files_key",
    "remember_image",
    "remember_text",
    "reopen_image",
    "reopen_text",
]

#: File suffixes a text model's load reads: configuration, vocabulary, weights.
_KEYED = (".json", ".txt", ".safetensors", ".bin", ".model")
_PACKAGES = ("torch", "transformers", "tokenizers", "onnxruntime")
#: Where the records live, beside the exports.
_FOLDER = "by-files"

#: Texts on which the two tokenizers must give the same arrays before a record is written.
PROBE_TEXTS = (
    "probe",
    "",
    "A man riding a wave on top of a surfboard.",
    "TWO Dogs, 3 cats & a naïve café owner's bicycle (1990s) - really!?",
    "日本語のテキスト and emoji 🙂 mixed with tabs\tand  spaces",
    " ".join(["a red double-decker bus drives past a row of shops"] * 60),  # past any limit
)


def files_key(root: Path, files: Sequence[Path] | None = None) -> str:
    """Hash of ``files`` (default: those a load of the model folder ``root`` reads), their paths
    relative to ``root``, and the package versions."""
    if files is None:
        files = [p for p in root.rglob("*") if p.suffix in _KEYED and p.is_file()]
    h = hashlib.sha256(json.dumps({"recipe": RECIPE, **_versions()}, sort_keys=True).encode())
    for path in sorted(files):
        h.update(path.relative_to(root).as_posix().encode() + b"\0")
        h.update(str(path.stat().st_size).encode() + b"\0")
        with path.open("rb") as f:
            h.update(hashlib.file_digest(f, "sha256").digest())
    return h.hexdigest()[:32]


def _versions() -> dict[str, str]:
    out = {}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = ""
    return out


@dataclass
class ReopenedText:
    """An export with its tokenizer: ``prepare(texts)`` gives the arrays ``run`` takes."""

    model: OnnxModel
    dim: int
    max_length: int
    names: tuple[str, ...]
    padding: str  # "longest" or "max_length"
    pad_id: int
    tokenizer: Any  # tokenizers.Tokenizer, truncating at max_length, never padding

    def prepare(self, texts: list[str]) -> tuple[np.ndarray, ...]:
        encs = self.tokenizer.encode_batch(texts)
        width = max((len(e.ids) for e in encs), default=0)
        if self.padding == "max_length":
            width = self.max_length
        arrays = {
            "input_ids": np.full((len(encs), width), self.pad_id, dtype=np.int64),
            "attention_mask": np.zeros((len(encs), width), dtype=np.int64),
            "token_type_ids": np.zeros((len(encs), width), dtype=np.int64),
        }
        for i, e in enumerate(encs):
            n = len(e.ids)
            arrays["input_ids"][i, :n] = e.ids
            arrays["attention_mask"][i, :n] = e.attention_mask
            arrays["token_type_ids"][i, :n] = e.type_ids
        return tuple(arrays[k] for k in self.names)

    def run(self, arrays: tuple[np.ndarray, ...]) -> np.ndarray:
        return self.model.run(*arrays)

    def tokens(self, texts: list[str]) -> list[int]:
        return [len(e.ids) for e in self.tokenizer.encode_batch(texts)]


def _tokenizer(model_dir: Path, max_length: int) -> Any:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(max_length)
    return tok


def _record_path(key: str) -> Path:
    return cache_dir() / _FOLDER / f"{key}.json"


def _recorded(
    key: str, names: Sequence[str] | None = None
) -> tuple[dict[str, Any], OnnxModel] | None:
    """The record under ``key`` and its export (inputs ``names``, default the record's), or
    None when the export is gone or failed; raises FileNotFoundError without a record."""
    record = json.loads(_record_path(key).read_text())
    model = open_export(cache_dir() / record["export"], tuple(names or record["names"]))
    return None if model is None else (record, model)


def reopen_text(model_dir: Path) -> ReopenedText | None:
    """The recorded export of ``model_dir`` (:func:`remember_text`), or None: no record for these
    files, or its export is gone or unusable (the caller then loads the model in full)."""
    try:
        found = _recorded(files_key(model_dir))
        if found is None:
            return None
        record, model = found
        return ReopenedText(
            model,
            int(record["dim"]),
            int(record["max_length"]),
            tuple(record["names"]),
            str(record["padding"]),
            int(record["pad_id"]),
            _tokenizer(model_dir, int(record["max_length"])),
        )
    except FileNotFoundError:  # no record for these files (yet)
        return None
    except Exception as e:  # a damaged record or export, one being replaced: the full load
        log.info("%s: no usable ONNX record (%s); loading the model", model_dir, e)
        return None


def reopen_image(weights: Path, input_name: str) -> tuple[OnnxModel, int] | None:
    """The recorded export of the image model whose weights are the file ``weights``
    (:func:`remember_image`) and its output width, or None (as :func:`reopen_text`)."""
    try:
        found = _recorded(files_key(weights.parent, [weights]), (input_name,))
        return None if found is None else (found[1], int(found[0]["dim"]))
    except FileNotFoundError:
        return None
    except Exception as e:  # as in reopen_text
        log.info("%s: no usable ONNX record (%s); loading the model", weights, e)
        return None


def remember_image(weights: Path, model: OnnxModel, *, dim: int) -> bool:
    """Record ``model`` (a verified export of the image model loaded from ``weights``) for
    :func:`reopen_image`; returns whether it did (it never raises)."""
    try:
        record = {"export": model.path.parent.name, "dim": dim, **_versions()}
        io.write_json(_record_path(files_key(weights.parent, [weights])), record)
        return True
    except Exception as e:  # an optimisation: never fail the load over it
        log.info("%s: could not record the export for a quick reopen (%s)", weights, e)
        return False


def remember_text(
    model_dir: Path,
    model: OnnxModel,
    hf_tokenizer: Any,
    *,
    names: Sequence[str],
    padding: str,
    max_length: int,
    dim: int,
) -> bool:
    """Record ``model`` (a verified export of ``model_dir``) for :func:`reopen_text`, when the
    ``tokenizers`` tokenizer gives the same arrays as ``hf_tokenizer`` on :data:`PROBE_TEXTS`.
    Returns whether it did (it never raises: a missing record only costs the full load)."""
    try:
        reason = _unsupported(model_dir, hf_tokenizer, padding)
        if reason is None:
            fast = ReopenedText(
                model, dim, max_length, tuple(names), padding, int(hf_tokenizer.pad_token_id),
                _tokenizer(model_dir, max_length),
            )  # fmt: skip
            reason = _differs(fast, hf_tokenizer, list(PROBE_TEXTS))
        if reason is not None:
            log.info("%s: the export is reopened only with the full load (%s)", model_dir, reason)
            return False
        record = {
            "export": model.path.parent.name,
            "dim": dim,
            "max_length": max_length,
            "names": list(names),
            "padding": padding,
            "pad_id": int(hf_tokenizer.pad_token_id),
            **_versions(),
        }
        io.write_json(_record_path(files_key(model_dir)), record)
        return True
    except Exception as e:  # an optimisation: never fail the load over it
        log.info("%s: could not record the export for a quick reopen (%s)", model_dir, e)
        return False


def _unsupported(model_dir: Path, hf_tokenizer: Any, padding: str) -> str | None:
    if not (model_dir / "tokenizer.json").is_file():
        return "no tokenizer.json"
    if getattr(hf_tokenizer, "padding_side", "right") != "right":
        return "the tokenizer pads on the left"
    if getattr(hf_tokenizer, "pad_token_id", None) is None:
        return "the tokenizer has no padding token"
    if padding not in ("longest", "max_length"):
        return f"padding {padding!r}"
    return None


def _differs(fast: ReopenedText, hf_tokenizer: Any, texts: list[str]) -> str | None:
    """Why the two tokenizers disagree on ``texts`` (None: they give the same arrays)."""
    for group in [[t] for t in texts] + [texts]:  # alone, and padded together
        want = hf_tokenizer(
            group, padding=fast.padding, truncation=True, max_length=fast.max_length,
            return_tensors="np",
        )  # fmt: skip
        got = fast.prepare(group)
        for name, array in zip(fast.names, got, strict=True):
            if not np.array_equal(np.asarray(want[name], dtype=np.int64), array):
                return f"the tokenizers differ on {name} for {group[0][:40]!r}"
        counts = hf_tokenizer(group, truncation=True, max_length=fast.max_length)
        if [len(x) for x in counts["input_ids"]] != fast.tokens(group):
            return f"the token counts differ for {group[0][:40]!r}"
    return None
