"""Train stage: cross-modal hashing models on the preprocess embeddings, and their codes.

``run(params, split_dir, clean_dir, interim_dir, labelled_dir, models_dir, codes_dir)`` reads

* ``<split>/assignments.parquet`` (:data:`~cmrops.schema.ASSIGNMENTS`) - who trains, who queries;
* ``<clean>/samples.parquet`` - ``sample_id`` → ``feature_row``;
* ``<interim>/features/{image,text}.npy`` and ``meta.json`` - the embeddings;
* ``<labelled>/labels.parquet`` and ``vocabulary.json`` - multi-hot labels (optional: without
  them only the unsupervised method can train, and validation counts the paired item as the
  relevant one);

and trains one model per (method, bit length) in params (:mod:`cmrops.models`; the methods are
:data:`cmrops.methods.CATALOGUE`: deep ones through the one training loop, closed-form ones
solved in float64, all through :func:`cmrops.models.loop.fit`), writing

* ``<models>/<method>-<bits>/`` - the checkpoint: ``model.safetensors`` (the selected weights,
  or a closed-form method's projection matrices), ``optimizer.safetensors`` (deep methods),
  ``state.json``, ``config.json`` (:mod:`cmrops.models.checkpoint`);
* ``<codes>/<method>-<bits>/{image,text}_{query,database}.npy`` - packed ``uint64`` codes,
  ``cmrops.pack_bits(x > 0)``, shape ``(n, ceil(bits / 64))``; ``..._float.npy`` - the
  continuous head outputs or projections (float32) they come from; ``meta.json`` - method
  (and ``method_info``: kind, family, supervised, paper), bits, protocol, split seed, model
  directory, set sizes, steps, final losses, best validation mAP;
* ``<codes>/aligned-float/`` and ``<models>/aligned-float/`` (``float_baseline: true``) - the
  aligned float baseline (:mod:`cmrops.align.baseline`): an alignment fitted on the training
  pairs only, as ``align:`` in params says, and the float vectors of the query and database
  samples in its shared space; evaluate reports every model's mAP as a share of it;
* ``<codes>/rows.parquet`` - ``role`` (query / database), ``row``, ``sample_id``: the sample of
  each code row, the same for every model (samples in ``sample_id`` order within a role);
* ``<codes>/training_samples.parquet`` - ``role`` (train / val), ``sample_id``: the samples every
  model was fitted (train) and selected (val) on - what a withdrawal's impact list reads;
* ``metrics_path`` (``metrics/train.json``) - per model: steps, epochs, best validation mAP and
  its step, the early-stop step, final losses; ``methods``: what each trained method is.

**Roles.** Hashing protocol (sets query / database): query = ``query``, database =
``database``, training = ``in_train``. Ratio protocol (train / val / test): training =
``train``, validation = ``val``, query = ``test``, database = ``train`` + ``val`` (what a
deployed index would hold). Without a ``val`` set, validation is a seeded slice of the training
samples (``val_fraction``, whole near-duplicate groups, chosen by a hash of ``(seed,
group_id)``), held out from training. Validation queries retrieve from the training samples
(at most ``val_database_max`` of them) when there are labels, else from themselves (paired).

**Reruns.** A finished checkpoint with the same config (params and a fingerprint of the data) is
reused: a rerun trains nothing and rewrites byte-identical codes and metrics. An unfinished one
is resumed (a kill costs at most ``checkpoint_every`` steps). A checkpoint with the same params
on other data (a scheduled run added samples) is a model of an earlier release: training starts
afresh. A checkpoint of other params is refused (``--restart`` discards it). Code folders of
models no longer in params are removed.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pyarrow as pa

from cmrops import io, threads
from cmrops.methods import CcaOptions, CmfhOptions, DjsrhOptions, ItqOptions
from cmrops.schema import CODE_ROWS, TRAINING_SAMPLES
from cmrops.stages.train_inputs import Inputs as Inputs
from cmrops.stages.train_inputs import Roles as Roles
from cmrops.stages.train_inputs import assign_roles as assign_roles
from cmrops.stages.train_inputs import load_encoder_inputs as load_encoder_inputs
from cmrops.stages.train_inputs import load_inputs as load_inputs

if TYPE_CHECKING:
    from cmrops.stages.align import AlignStageParams

log = logging.getLogger(__name__)

STAGE = "train"
ALIGNED = "aligned-float"  # cmrops.align.baseline.NAME (kept torch-free here)
#: Beside rows.parquet: the samples the models were fitted and selected on (TRAINING_SAMPLES).
TRAINING_FILE = "training_samples.parquet"


# --------------------------------------------------------------------------- params


@dataclass(frozen=True)
class TrainParams:
    """The ``train:`` section of params.yaml."""

    # every method but djsrh (cmrops.methods): it runs all its epochs, ~4x dcmh's time in CI
    methods: tuple[str, ...] | str = ("dcmh", "contrastive", "itq", "cca", "cmfh")
    bits: tuple[int, ...] | int = (16, 32, 64, 128)  # one model per method and bit length
    epochs: int = 50
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 1e-4
    hidden: tuple[int, ...] = (1024,)  # hidden widths of each modality's MLP head
    dropout: float = 0.1
    quantization_weight: float = 0.05  # γ · mean (B - F)²
    balance_weight: float = 1.0  # η · mean over bits of (batch mean of F)²
    temperature: float = 0.1  # contrastive InfoNCE temperature
    grad_clip: float = 1.0  # max gradient norm (0: off)
    patience: int = 10  # epochs without a better validation mAP before stopping (0: never)
    checkpoint_every: int = 200  # steps (0: only at the end)
    val_fraction: float = 0.1  # of the training samples, when the split has no val set
    val_database_max: int = 5000  # training samples the validation queries retrieve from
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # End-to-end fine-tuning (cmrops.models.finetune): a CLIP-style dual encoder (HF id in the
    # local cache, or a save_pretrained directory) under the heads; null: heads on embeddings.
    finetune_encoder: str | None = None
    encoder_layers: int = 2  # its last blocks per tower that train with the heads (-1: all)
    encoder_lr: float = 1e-5  # their learning rate
    # Each method's own knobs (cmrops.methods), defaults from the papers.
    djsrh: DjsrhOptions = field(default_factory=DjsrhOptions)
    cca: CcaOptions = field(default_factory=CcaOptions)
    itq: ItqOptions = field(default_factory=ItqOptions)
    cmfh: CmfhOptions = field(default_factory=CmfhOptions)
    # The aligned float baseline (cmrops.align.baseline): an alignment fitted on the training
    # pairs (align.kind and align.train from params), its float vectors in <codes>/aligned-float.
    float_baseline: bool = True
    # What a supervised method (dcmh) learns similarity from: labels (sharing one), pairs (only
    # the pair itself), auto: pairs when the labels were induced from the captions (they restate
    # the captions; the pairing is the signal caption data has), else labels.
    supervision: Literal["auto", "labels", "pairs"] = "auto"

    def __post_init__(self) -> None:
        from cmrops.methods import METHODS, describe, info
        from cmrops.models.hasher import SUPPORTED_BITS

        methods = (self.methods,) if isinstance(self.methods, str) else tuple(self.methods)
        bits = (self.bits,) if isinstance(self.bits, int) else tuple(self.bits)
        object.__setattr__(self, "methods", methods)
        object.__setattr__(self, "bits", bits)
        if not methods or not bits:
            raise ValueError("methods and bits must each name at least one value")
        bad = [m for m in methods if m not in METHODS]
        if bad:
            raise ValueError(f"methods: unknown {bad}; {describe()}")
        bad_bits = [b for b in bits if b not in SUPPORTED_BITS]
        if bad_bits:
            raise ValueError(f"bits: {bad_bits} not supported; choose from {list(SUPPORTED_BITS)}")
        if len(set(methods)) != len(methods) or len(set(bits)) != len(bits):
            raise ValueError("methods and bits must not repeat a value")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.val_database_max < 1:
            raise ValueError(f"val_database_max must be >= 1, got {self.val_database_max}")
        if self.finetune_encoder is not None and not str(self.finetune_encoder).strip():
            raise ValueError("finetune_encoder: empty; name a CLIP-style model or use null")
        on_embeddings = [m for m in methods if m == "djsrh" or info(m).kind == "closed_form"]
        if self.finetune_encoder is not None and on_embeddings:
            raise ValueError(
                f"methods {on_embeddings} work on the embeddings, not with finetune_encoder; "
                "train them in a run without it, or use methods: [dcmh, contrastive]"
            )
        for m in methods:  # the optimisation settings, validated once
            self.train_config(m)
        for b in bits:
            self.model_config(1, 1, b)

    def similarity(self, labels_induced: bool) -> Literal["labels", "pairs"]:
        """A supervised method's similarity under ``supervision`` (see the field's comment)."""
        if self.supervision == "auto":
            return "pairs" if labels_induced else "labels"
        return self.supervision

    def train_config(self, method: str, similarity: str = "labels") -> Any:
        from cmrops.models.loop import TrainConfig

        return TrainConfig(
            method=method,  # type: ignore[arg-type]
            similarity=similarity,  # type: ignore[arg-type]
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            weight_decay=self.weight_decay,
            quantization_weight=self.quantization_weight,
            balance_weight=self.balance_weight,
            temperature=self.temperature,
            grad_clip=self.grad_clip,
            patience=self.patience,
            checkpoint_every=self.checkpoint_every,
            seed=self.seed,
            encoder_lr=self.encoder_lr,
            djsrh=self.djsrh,
            cca=self.cca,
            itq=self.itq,
            cmfh=self.cmfh,
        )

    def model_config(
        self, image_dim: int, text_dim: int, bits: int, encoder_sha256: str | None = None
    ) -> Any:
        from cmrops.models.hasher import HasherConfig

        return HasherConfig(
            image_dim,
            text_dim,
            bits,
            tuple(self.hidden),
            self.dropout,
            encoder=self.finetune_encoder,
            encoder_layers=self.encoder_layers,
            encoder_sha256=encoder_sha256,
        )


# --------------------------------------------------------------------------- entry points


def cli_main(args: Any) -> int:
    """``cmrops train --params P --split S --clean C --interim I --labelled L --models M
    --codes K --metrics F [--raw R] [--restart]``."""
    from cmrops.params import load_section
    from cmrops.stages.align import AlignStageParams

    params = load_section(args.params, STAGE, TrainParams)
    align = load_section(args.params, "align", AlignStageParams)
    m = run(
        params,
        args.split,
        args.clean,
        args.interim,
        args.labelled,
        args.models,
        args.codes,
        metrics_path=args.metrics,
        restart=args.restart,
        raw_dir=args.raw,
        align=align,
    )
    r = m["roles"]
    print(
        f"train ({m['protocol']}): {r['train']} training, {r['val']} validation samples; "
        f"codes for {r['query']} queries and {r['database']} database samples"
    )
    for name, s in m["models"].items():
        best = "-" if s["best_val_map"] is None else f"{s['best_val_map']:.4f}"
        stop = f", early stop at {s['early_stop_step']}" if s["early_stop_step"] else ""
        if m["methods"][name.rsplit("-", 1)[0]]["kind"] == "closed_form":
            runs = f"closed form, {s['steps']} iterations, val mAP {best}"
        else:
            runs = f"{s['steps']} steps, {s['epochs']} epochs, best val mAP {best}{stop}"
        print(f"  {name}: {runs}, {m['throughput'][name]['samples_per_s']:.0f} samples/s")
    base = m.get("float_baseline")
    if base:
        print(
            f"  {ALIGNED}: {base['kind']} alignment, {base['dim']}-d, fitted on "
            f"{base['train_pairs']} training pairs (float vectors, no codes)"
        )
    return 0


def run(
    params: TrainParams,
    split_dir: str | os.PathLike[str],
    clean_dir: str | os.PathLike[str],
    interim_dir: str | os.PathLike[str],
    labelled_dir: str | os.PathLike[str] | None,
    models_dir: str | os.PathLike[str],
    codes_dir: str | os.PathLike[str],
    *,
    metrics_path: str | os.PathLike[str] | None = None,
    restart: bool = False,
    progress: bool = True,
    raw_dir: str | os.PathLike[str] | None = None,
    align: AlignStageParams | None = None,
) -> dict[str, Any]:
    """Train every model of ``params`` and write their codes (see module docstring); returns
    the metrics. ``restart`` discards existing checkpoints; ``metrics_path`` defaults to
    ``<codes>/train.json``; ``raw_dir`` (default: ``data/raw`` beside ``interim_dir``) holds
    the images that a fine-tuned encoder reads; ``align`` (default: its defaults) says how the
    aligned float baseline's alignment is fitted. Each model trains on
    :data:`cmrops.threads.TRAINING_THREADS` threads (:func:`cmrops.threads.training`); on the
    CPU the models spread over worker processes (:mod:`cmrops.stages.train_models`)."""
    from cmrops.encoders import resolve_device
    from cmrops.methods import info
    from cmrops.stages.train_models import Job, Source, sets, train_all, workers_for

    data = load_inputs(
        Path(split_dir),
        Path(clean_dir),
        Path(interim_dir),
        Path(labelled_dir) if labelled_dir else None,
    )
    roles = assign_roles(data, params)
    supervised = [m for m in params.methods if info(m).supervised]
    similarity = params.similarity(data.labels_induced)
    if supervised and data.labels_induced:
        log.warning(
            "train: the labels were induced from the captions; supervised method(s) %s learn "
            "from %s (train.supervision: %s)",
            ", ".join(supervised), "the pairing" if similarity == "pairs" else "those labels",
            params.supervision,
        )  # fmt: skip
    if supervised and data.labels is None and similarity == "labels":
        unsupervised = [m for m in params.methods if not info(m).supervised]
        raise ValueError(
            f"method {', '.join(supervised)} is supervised but there are no labels (pass "
            f"--labelled with the label stage's output, set train.supervision: pairs, or train "
            f"only methods: {unsupervised})"
        )
    device = resolve_device(params.device)

    image, text = data.image, data.text
    encoder_sha = None
    feature_dims = (data.image.shape[1], data.text.shape[1])
    if params.finetune_encoder is not None:
        raw = Path(raw_dir) if raw_dir is not None else Path(interim_dir).parent / "raw"
        image, text, encoder_sha, feature_dims = load_encoder_inputs(
            params.finetune_encoder, data.ids, Path(interim_dir), raw, progress
        )

    data_sets = sets(data, roles, image, text)

    models, codes = Path(models_dir), Path(codes_dir)
    codes.mkdir(parents=True, exist_ok=True)
    rows_table = pa.table(
        {
            "role": ["query"] * len(roles.query) + ["database"] * len(roles.database),
            "row": np.concatenate([np.arange(len(roles.query)), np.arange(len(roles.database))]),
            "sample_id": [data.ids[i] for i in roles.query] + [data.ids[i] for i in roles.database],
        },
        schema=CODE_ROWS,
    )
    io.write_parquet(codes / "rows.parquet", rows_table)
    fitted = [("train", i) for i in roles.train] + [("val", i) for i in roles.val]
    fitted.sort(key=lambda r: (r[0], data.ids[r[1]]))
    io.write_parquet(
        codes / TRAINING_FILE,
        pa.table(
            {"role": [r for r, _ in fitted], "sample_id": [data.ids[i] for _, i in fitted]},
            schema=TRAINING_SAMPLES,
        ),
    )

    not_trained = _too_wide(params, len(roles.train), feature_dims)
    names = [f"{m}-{b}" for m in params.methods for b in params.bits]
    names = [n for n in names if n not in not_trained]
    if not names:
        raise ValueError(
            f"train: no model can be trained on {len(roles.train)} training sample(s): "
            + "; ".join(not_trained.values())
        )
    facts = {**_set_facts(data, roles), "val_samples": len(roles.val), "val_from": roles.val_from}
    jobs = [
        Job(
            method=m,
            bits=b,
            similarity=similarity if info(m).supervised else "labels",
            feature_dims=feature_dims,
            encoder_sha=encoder_sha,
            models=models,
            codes=codes,
            device=device,
            restart=restart,
            facts=facts,
        )
        for m in params.methods
        for b in params.bits
        if f"{m}-{b}" not in not_trained
    ]
    source = Source(
        Path(split_dir), Path(clean_dir), Path(interim_dir),
        Path(labelled_dir) if labelled_dir else None,
    )  # fmt: skip
    workers = workers_for(jobs, device, params.finetune_encoder is not None)

    def float_baseline() -> dict[str, Any] | None:
        if not params.float_baseline:
            return None
        return _float_baseline(data, roles, codes, models, align, progress)

    trained, baseline = train_all(
        jobs, params, data_sets, source, workers=workers, progress=progress,
        alongside=float_baseline,
    )  # fmt: skip
    summary = {name: stats for name, (stats, _) in trained.items()}
    throughput: dict[str, Any] = {name: rate for name, (_, rate) in trained.items()}
    if params.float_baseline:
        names.append(ALIGNED)
    else:
        shutil.rmtree(models / ALIGNED, ignore_errors=True)
    _remove_stale_codes(codes, names)

    metrics = {
        "stage": STAGE,
        "protocol": data.protocol,
        "split_seed": data.split_seed,
        "device": device,
        "roles": {k: len(getattr(roles, k)) for k in ("train", "val", "query", "database")},
        "val_from": roles.val_from,
        "labels": 0 if data.labels is None else int(data.labels.shape[1]),
        "labels_induced": data.labels_induced,
        "supervision": {"setting": params.supervision, "similarity": similarity},
        "media": data.media,
        "features": data.features,
        "finetune": None
        if params.finetune_encoder is None
        else {
            "encoder": params.finetune_encoder,
            "encoder_sha256": encoder_sha,
            "encoder_layers": params.encoder_layers,
            "encoder_lr": params.encoder_lr,
        },
        "methods": {m: info(m).to_json() for m in params.methods},
        "models": summary,
        # closed-form models whose bits exceed the canonical directions this data has
        **({"not_trained": not_trained} if not_trained else {}),
        "float_baseline": baseline,
    }
    metrics_file = Path(metrics_path) if metrics_path else codes / "train.json"
    io.write_json(metrics_file, metrics)
    # Wall-clock figures vary run to run: kept out of every versioned output (as preprocess's
    # throughput.json) so reruns, `dvc repro` and the Airflow DAG produce identical bytes.
    io.write_json(metrics_file.with_name("train_throughput.json"), {"device": device, **throughput})
    return {**metrics, "throughput": throughput}


def _too_wide(params: TrainParams, n_train: int, dims: tuple[int, int]) -> dict[str, str]:
    """The closed-form models (CCA, ITQ) that cannot be fitted: more bits than the canonical
    directions ``n_train`` pairs of ``dims``-wide features have. They are skipped with a warning
    (a small trial set still trains the rest); name -> the reason, recorded in the metrics."""
    from cmrops.methods import info
    from cmrops.models.cca import directions_available

    available = directions_available(n_train, *dims)
    skipped: dict[str, str] = {}
    for method in params.methods:
        if info(method).kind != "closed_form":
            continue
        for bits in params.bits:
            if bits > available:
                skipped[f"{method}-{bits}"] = (
                    f"{method}-{bits}: only {available} canonical directions exist (min of the "
                    f"feature dims {dims[0]}, {dims[1]} and training samples - 1 = {n_train - 1})"
                )
    for reason in skipped.values():
        log.warning("train: not trained - %s; more training samples or fewer bits train it", reason)
    return skipped


def _set_facts(data: Inputs, roles: Roles) -> dict[str, Any]:
    """What every code folder's ``meta.json`` says about the data and its sets."""
    return {
        "media": data.media,
        "protocol": data.protocol,
        "split_seed": data.split_seed,
        "n_query": len(roles.query),
        "n_database": len(roles.database),
        "train_samples": len(roles.train),
    }


@threads.training()  # the alignment it fits trains like the models: the same bytes anywhere
def _float_baseline(
    data: Inputs,
    roles: Roles,
    codes: Path,
    models: Path,
    align: AlignStageParams | None,
    progress: bool,
) -> dict[str, Any]:
    """The aligned float baseline (:mod:`cmrops.align.baseline`) of the embeddings, fitted on
    the training rows; ``align.kind: auto`` takes the encoders' own space when aligned."""
    from cmrops.align.baseline import write_float_baseline
    from cmrops.stages.align import AlignStageParams, resolve_kind

    align = align or AlignStageParams()
    dims = data.image.shape[1], data.text.shape[1]
    meta = {m: {"encoder": data.features[m]["encoder"]} for m in ("image", "text")}
    kind, why = resolve_kind(align.kind, data.aligned, *dims, meta, len(roles.train))
    if kind == "learned":
        why = f"learned on the training pairs: {why}"
    elif kind == "fused":
        why = f"concept bridge fused with heads learned on the training pairs: {why}"

    def pair(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return data.image[rows], data.text[rows]

    return write_float_baseline(
        codes,
        models,
        pair(roles.train),
        pair(roles.query),
        pair(roles.database),
        kind=kind,
        why=why,
        params=align.train,
        concept=align.concept,
        encoders=(str(meta["image"]["encoder"]), str(meta["text"]["encoder"])),
        meta={"stage": STAGE, **_set_facts(data, roles)},
        progress=progress,
    )


def _remove_stale_codes(codes: Path, keep: list[str]) -> None:
    for d in sorted(p for p in codes.iterdir() if p.is_dir() and p.name not in keep):
        meta = d / "meta.json"
        try:
            ours = json.loads(meta.read_text(encoding="utf-8")).get("stage") == STAGE
        except (OSError, ValueError, AttributeError):
            ours = False
        if ours:
            log.info("removing %s: model no longer in params", d)
            shutil.rmtree(d)
