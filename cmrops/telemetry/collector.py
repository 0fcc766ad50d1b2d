"""A Prometheus collector over one project's metrics files and run log.

It reads the files at every scrape (they are small), so a long-running ``cmrops metrics serve``
shows the newest run without a restart. Names follow Prometheus conventions: base units
(``_seconds``), ``_total`` only on counters, ratios as plain 0..1 gauges. The table of names,
labels and units is in docs/orchestration.md ("Prometheus metrics").
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
        from cmrops.stage_table import STAGES

        stages = [s for s in STAGES if self._wants(s)]
        found = {s: m for s in stages if (m := self._file(s)) is not None}
        runs = runlog.read_runs(self.project)
        # the run that wrote each stage's metrics file: every gauge read from that file says so
        made_by = {r.stage: r.run_id for r in runs if r.status == "success" and r.part is None}
        families: list[Metric] = [
            *self._run_log(stages, runs),
            *self._samples(found, made_by),
            *self._split(found.get("split"), made_by.get("split", "")),
            *self._clean(found.get("clean"), made_by.get("clean", "")),
            *self._retrieval(found.get("evaluate"), made_by.get("evaluate", "")),
        ]
        yield from (f for f in families if f.samples)

    # ------------------------------------------------------------------ run log

    def _run_log(self, stages: Sequence[str], all_runs: list[runlog.StageRun]) -> Iterable[Metric]:
        parts = [r for r in all_runs if r.stage in stages]
        runs = [r for r in parts if r.part is None]
        duration = GaugeMetricFamily(
            "cmrops_stage_duration_seconds",
            "Wall-clock duration of the stage's last successful run, its parts run as separate "
            "tasks included (preprocess's mapped shards).",
            labels=["stage", "run_id"],
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
                ok = last_ok[stage]
                duration.add_metric([stage, ok.run_id], runlog.wall_seconds(parts, ok))
                success.add_metric([stage], ok.finished_at)
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
    def _samples(found: dict[str, dict[str, Any]], made_by: dict[str, str]) -> Iterable[Metric]:
        samples = GaugeMetricFamily(
            "cmrops_stage_samples",
            "Samples into the stage (outcome=in), passed on (kept) and quarantined, from its "
            "metrics file; in = kept + quarantined. run_id: the run that wrote the file.",
            labels=["stage", "outcome", "run_id"],
        )
        reasons = GaugeMetricFamily(
            "cmrops_quarantined_samples",
            "Samples the stage quarantined, by reason code.",
            labels=["stage", "reason", "run_id"],
        )
        for stage, m in found.items():
            run_id = made_by.get(stage, "")
            for outcome, n in files.stage_samples(stage, m).items():
                samples.add_metric([stage, outcome, run_id], n)
            for reason, n in sorted(files.quarantine_reasons(stage, m).items()):
                reasons.add_metric([stage, reason, run_id], n)
        return samples, reasons

    @staticmethod
    def _split(m: dict[str, Any] | None, run_id: str) -> Iterable[Metric]:
        if not m:
            return ()
        protocol = files.split_protocol(m)
        sizes = GaugeMetricFamily(
            "cmrops_split_samples",
            "Samples assigned to each set of the split (a sample may be in database and train).",
            labels=["protocol", "set", "run_id"],
        )
        for name, n in sorted(files.split_sizes(m).items()):
            sizes.add_metric([protocol, name, run_id], n)
        leaking = GaugeMetricFamily(
            "cmrops_split_leaking_pairs",
            "Near-duplicate pairs that straddle query and database/train (should be 0).",
            labels=["protocol", "run_id"],
        )
        total = files.split_leaking(m)
        if total is not None:
            leaking.add_metric([protocol, run_id], total)
        return sizes, leaking

    @staticmethod
    def _clean(m: dict[str, Any] | None, run_id: str) -> Iterable[Metric]:
        overall = files.planted_defects(m or {})
        out = []
        for key in ("precision", "recall"):
            fam = GaugeMetricFamily(
                f"cmrops_clean_planted_defect_{key}",
                f"Cleaning {key} on the defects planted in the synthetic set (0..1).",
                labels=["run_id"],
            )
            if isinstance(overall.get(key), int | float):
                fam.add_metric([run_id], overall[key])
            out.append(fam)
        return out

    @staticmethod
    def _retrieval(m: dict[str, Any] | None, run_id: str) -> Iterable[Metric]:
        if not m:
            return ()
        mean_ap = GaugeMetricFamily(
            "cmrops_retrieval_map",
            "Retrieval mAP (0..1) over the whole ranking: ranking=tie_aware (Hamming ranking, "
            "expected value over tie orders; the headline), database_order (ties broken by "
            "database row) or float (the continuous outputs before binarising: the baseline).",
            labels=[*MODEL_LABELS, "direction", "protocol", "ranking", "run_id"],
        )
        health = {
            key: GaugeMetricFamily(name, doc, labels=[*MODEL_LABELS, "modality", "run_id"])
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
            labels=[*MODEL_LABELS, "direction", "protocol", "ranking", "k", "run_id"],
        )
        for model, spec in sorted((m.get("models") or {}).items()):
            labels = [model, str(spec.get("method", "")), str(spec.get("bits", ""))]
            protocol = str(spec.get("protocol", ""))
            for direction, d in sorted((spec.get("directions") or {}).items()):
                for ranking, (part, key) in RANKINGS.items():
                    value = (d.get(part) or {}).get(key)
                    if isinstance(value, int | float):
                        mean_ap.add_metric([*labels, direction, protocol, ranking, run_id], value)
                ranks = (d.get("hash") or {}).get("pair_ranks") or {}
                pair_ranks = {**ranks, "float": (d.get("float") or {}).get("pair_ranks") or {}}
                for ranking, pr in sorted(pair_ranks.items()):
                    for k, value in sorted(((pr or {}).get("recall_at") or {}).items()):
                        if isinstance(value, int | float):
                            recall.add_metric(
                                [*labels, direction, protocol, ranking, k, run_id], value
                            )
            for modality, h in sorted((spec.get("code_health") or {}).items()):
                values = {
                    "balance": (h.get("bit_balance") or {}).get("mean_abs_deviation"),
                    "constant": (h.get("bit_balance") or {}).get("constant_bits"),
                    "correlation": h.get("mean_abs_bit_correlation"),
                    "entropy": (h.get("buckets") or {}).get("entropy_bits"),
                }
                for key, value in values.items():
                    if isinstance(value, int | float):
                        health[key].add_metric([*labels, modality, run_id], value)
        return [mean_ap, recall, *health.values()]


def registry_for(
    project: str | os.PathLike[str], stages: Sequence[str] | None = None
) -> CollectorRegistry:
    """A registry holding only the project's collector (no process or platform metrics)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ProjectCollector(project, stages))
    return registry
