"""A Prometheus collector over one project's metrics files and run log.

It reads the files at every scrape (they are small), so a long-running ``cmrops metrics serve``
shows the newest run without a restart. Names follow Prometheus conventions: base units
(``_seconds``), ``_total`` only on counters, ratios as plain 0..1 gauges. The table of names,
labels and units is in the README ("Prometheus metrics").
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from cmrops import runlog
from cmrops.telemetry import files

__all__ = ["ProjectCollector", "registry_for"]

#: Where each retrieval ranking's mAP sits in a direction of ``metrics/retrieval.json``.
RANKINGS = {
    "tie_aware": ("hash", "map"),
    "database_order": ("hash", "map_database_order"),
    "float": ("float", "map"),
}
MODEL_LABELS = ["model", "method", "bits"]


class ProjectCollector(Collector):
    """Metrics of the project at ``project``; only those of ``stages`` when given (a push sends
    one stage's metrics to its own Pushgateway group)."""

    def __init__(self, project: str | os.PathLike[str], stages: Sequence[str] | None = None):
        self.project = Path(project)
        self.stages = None if stages is None else tuple(stages)

    def _wants(self, stage: str) -> bool:
        return self.stages is None or stage in self.stages

    def _file(self, stage: str) -> dict[str, Any] | None:
        rel = files.metrics_path(stage)
        return None if rel is None else files.load_json(self.project / rel)

    def collect(self) -> Iterator[Metric]:
        from cmrops.pipeline import STAGES

        stages = [s for s in STAGES if self._wants(s)]
        found = {s: m for s in stages if (m := self._file(s)) is not None}
        families: list[Metric] = [
            *self._run_log(stages),
            *self._samples(found),
            *self._split(found.get("split")),
            *self._clean(found.get("clean")),
            *self._retrieval(found.get("evaluate")),
        ]
        yield from (f for f in families if f.samples)

    # ------------------------------------------------------------------ run log

    def _run_log(self, stages: Sequence[str]) -> Iterable[Metric]:
        runs = [r for r in runlog.read_runs(self.project) if r.stage in stages]
        duration = GaugeMetricFamily(
            "cmrops_stage_duration_seconds",
            "Wall-clock duration of the stage's last successful run.",
            labels=["stage"],
        )
        success = GaugeMetricFamily(
            "cmrops_stage_last_success_timestamp_seconds",
            "Unix time the stage's last successful run finished.",
            labels=["stage"],
        )
        failure = GaugeMetricFamily(
            "cmrops_stage_last_failure_timestamp_seconds",
            "Unix time the stage's last failed run finished.",
            labels=["stage"],
        )
        total = CounterMetricFamily(
            "cmrops_stage_runs",
            "Stage runs recorded in the project's run log, by outcome.",
            labels=["stage", "status"],
        )
        info = GaugeMetricFamily(
            "cmrops_info",
            "Always 1: the run id and data version of the latest recorded stage run.",
            labels=["run_id", "data_version"],
        )
        last_ok: dict[str, runlog.StageRun] = {}
        last_failed: dict[str, runlog.StageRun] = {}
        counts: dict[tuple[str, str], int] = {}
        for r in runs:  # oldest first: later records win
            (last_ok if r.status == "success" else last_failed)[r.stage] = r
            counts[(r.stage, r.status)] = counts.get((r.stage, r.status), 0) + 1
        for stage in stages:
            if stage in last_ok:
                duration.add_metric([stage], last_ok[stage].duration_s)
                success.add_metric([stage], last_ok[stage].finished_at)
            if stage in last_failed:
                failure.add_metric([stage], last_failed[stage].finished_at)
            for status in runlog.STATUSES:
                if (stage, status) in counts:
                    total.add_metric([stage, status], counts[(stage, status)])
        if runs:
            info.add_metric([runs[-1].run_id, runs[-1].data_version or ""], 1)
        return duration, success, failure, total, info

    # ------------------------------------------------------------------ stage files

    @staticmethod
    def _samples(found: dict[str, dict[str, Any]]) -> Iterable[Metric]:
        samples = GaugeMetricFamily(
            "cmrops_stage_samples",
            "Samples into the stage (outcome=in), passed on (kept) and quarantined, from its "
            "metrics file; in = kept + quarantined.",
            labels=["stage", "outcome"],
        )
        reasons = GaugeMetricFamily(
            "cmrops_quarantined_samples",
            "Samples the stage quarantined, by reason code.",
            labels=["stage", "reason"],
        )
        for stage, m in found.items():
            for outcome, n in files.stage_samples(stage, m).items():
                samples.add_metric([stage, outcome], n)
            for reason, n in sorted(files.quarantine_reasons(stage, m).items()):
                reasons.add_metric([stage, reason], n)
        return samples, reasons

    @staticmethod
    def _split(m: dict[str, Any] | None) -> Iterable[Metric]:
        if not m:
            return ()
        protocol = str((m.get("protocol") or {}).get("name", ""))
        sizes = GaugeMetricFamily(
            "cmrops_split_samples",
            "Samples assigned to each set of the split (a sample may be in database and train).",
            labels=["protocol", "set"],
        )
        for name, n in sorted((m.get("sizes") or {}).items()):
            sizes.add_metric([protocol, name], n)
        leaking = GaugeMetricFamily(
            "cmrops_split_leaking_pairs",
            "Near-duplicate pairs that straddle query and database/train (should be 0).",
            labels=["protocol"],
        )
        total = (m.get("leakage") or {}).get("total")
        if isinstance(total, int | float):
            leaking.add_metric([protocol], total)
        return sizes, leaking

    @staticmethod
    def _clean(m: dict[str, Any] | None) -> Iterable[Metric]:
        overall = ((m or {}).get("synthetic") or {}).get("overall") or {}
        out = []
        for key in ("precision", "recall"):
            fam = GaugeMetricFamily(
                f"cmrops_clean_planted_defect_{key}",
                f"Cleaning {key} on the defects planted in the synthetic set (0..1).",
            )
            if isinstance(overall.get(key), int | float):
                fam.add_metric([], overall[key])
            out.append(fam)
        return out

    @staticmethod
    def _retrieval(m: dict[str, Any] | None) -> Iterable[Metric]:
        if not m:
            return ()
        mean_ap = GaugeMetricFamily(
            "cmrops_retrieval_map",
            "Retrieval mAP (0..1) over the whole ranking: ranking=tie_aware (Hamming ranking, "
            "expected value over tie orders; the headline), database_order (ties broken by "
            "database row) or float (the continuous outputs before binarising: the baseline).",
            labels=[*MODEL_LABELS, "direction", "protocol", "ranking"],
        )
        health = {
            key: GaugeMetricFamily(name, doc, labels=[*MODEL_LABELS, "modality"])
            for key, name, doc in (
                (
                    "balance",
                    "cmrops_code_bit_balance_deviation",
                    "Mean over bits of |P(bit = 1) - 0.5| of the database codes (0 = balanced).",
                ),
                (
                    "constant",
                    "cmrops_code_constant_bits",
                    "Bits with the same value in every code.",
                ),
                (
                    "correlation",
                    "cmrops_code_bit_correlation",
                    "Mean |Pearson correlation| between the non-constant bits of the codes.",
                ),
                (
                    "entropy",
                    "cmrops_code_bucket_entropy_bits",
                    "Entropy of the codes' bucket occupancy, in bits.",
                ),
            )
        }
        recall = GaugeMetricFamily(
            "cmrops_retrieval_pair_recall",
            "Pair relevance (caption data): share of queries whose own pair is in the top k "
            "(R@k, 0..1), ranking=tie_aware or database_order (hash codes) or float.",
            labels=[*MODEL_LABELS, "direction", "protocol", "ranking", "k"],
        )
        for model, spec in sorted((m.get("models") or {}).items()):
            labels = [model, str(spec.get("method", "")), str(spec.get("bits", ""))]
            protocol = str(spec.get("protocol", ""))
            for direction, d in sorted((spec.get("directions") or {}).items()):
                for ranking, (part, key) in RANKINGS.items():
                    value = (d.get(part) or {}).get(key)
                    if isinstance(value, int | float):
                        mean_ap.add_metric([*labels, direction, protocol, ranking], value)
                ranks = (d.get("hash") or {}).get("pair_ranks") or {}
                pair_ranks = {**ranks, "float": (d.get("float") or {}).get("pair_ranks") or {}}
                for ranking, pr in sorted(pair_ranks.items()):
                    for k, value in sorted(((pr or {}).get("recall_at") or {}).items()):
                        if isinstance(value, int | float):
                            recall.add_metric([*labels, direction, protocol, ranking, k], value)
            for modality, h in sorted((spec.get("code_health") or {}).items()):
                values = {
                    "balance": (h.get("bit_balance") or {}).get("mean_abs_deviation"),
                    "constant": (h.get("bit_balance") or {}).get("constant_bits"),
                    "correlation": h.get("mean_abs_bit_correlation"),
                    "entropy": (h.get("buckets") or {}).get("entropy_bits"),
                }
                for key, value in values.items():
                    if isinstance(value, int | float):
                        health[key].add_metric([*labels, modality], value)
        return [mean_ap, recall, *health.values()]


def registry_for(
    project: str | os.PathLike[str], stages: Sequence[str] | None = None
) -> CollectorRegistry:
    """A registry holding only the project's collector (no process or platform metrics)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ProjectCollector(project, stages))
    return registry
