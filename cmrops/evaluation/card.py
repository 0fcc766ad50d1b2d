"""What the metrics file states besides the numbers: the protocol card, the tie conventions
(:data:`TIES`) and the definition of every metric (:data:`DEFINITIONS`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cmrops import metrics as M

if TYPE_CHECKING:
    from pathlib import Path

    from cmrops.stages.evaluate import EvaluateParams


TIES = {
    "tie_aware": (
        "expected value under a uniformly random order of the database items at equal Hamming "
        "distance (McSherry & Najork 2008), in closed form from per-distance counts; the default"
    ),
    "database_order": (
        "ties broken by database row (a stable sort by distance, the order of "
        "HammingIndex.search): what calc_map with a stable argsort computes"
    ),
    "float": "cosine similarity of the continuous outputs; exact ties broken by database row",
}


DEFINITIONS = {
    "map": (
        "mean over all queries of average precision over the whole ranking; a query with no "
        "relevant item has AP 0 (see queries_without_relevant, map_relevant_only)"
    ),
    "map_at": (
        "CalcTopMap: precision averaged over the relevant positions within the top k, divided "
        "by the relevant items retrieved there (0 when none)"
    ),
    "precision_at": "relevant items in the top K / K",
    "recall_at": "relevant items in the top K / all relevant items (0 when none)",
    "ndcg_at": "binary gains, 1/log2(position + 1) discounts, ideal DCG over min(R, K) items",
    "within_radius": (
        "Hamming lookup within the radius: precision averaged over the queries that retrieve "
        "something (coverage = their share), recall over all queries with a relevant item"
    ),
    "gap": "float baseline minus hash (tie-aware)",
    "map_without_near_duplicate_queries": (
        "mAP over the queries without a near-duplicate in the database (manifests' "
        "near_duplicate_queries.txt); equal to map when there is none"
    ),
    "pair_ranks": (
        "pair relevance: recall_at = share of queries whose pair is in the top K (R@K); "
        "median_rank / mean_rank of the pair's 1-based position; tie-aware: the expected "
        "position under random tie order (before + (t + 1) / 2 for t tied items), averaged "
        "exactly for R@K"
    ),
    "float_baseline": (
        "aligned float baseline (<codes>/aligned-float): cosine ranking of both modalities in "
        "one learned shared space; the cross-modal float reference"
    ),
    "vs_float_baseline": "hash (tie-aware) / aligned float baseline, per metric",
    "code_health": (
        "over each modality's database codes: bit balance (mean |P(bit) - 0.5|, worst bit), "
        "mean |Pearson correlation| between non-constant bits, bucket occupancy"
    ),
}


def protocol_card(
    params: EvaluateParams,
    split: dict[str, Any],
    lists: dict[str, Any] | None,
    relevance: dict[str, Any],
    models: list[tuple[str, Path, dict[str, Any]]],
    train: dict[str, Any] | None,
    n_query: int,
    n_database: int,
) -> dict[str, Any]:
    """How every figure of the file was obtained (see module docstring)."""
    pair = relevance["mode"] == "pair"
    ranked = n_query + n_database if pair else n_database
    sets = split["sets"]
    val_from = (train or {}).get("val_from")
    selection = {
        name: {
            "train_samples": meta.get("train_samples"),
            "val_samples": meta.get("val_samples"),
            "val_from": meta.get("val_from", val_from),
        }
        for name, _, meta in models
    }
    card: dict[str, Any] = {
        "split": {"name": split["name"], "spec": split["spec"], "seed": split["seed"]},
        "sizes": {
            "query": n_query,
            "database": n_database,
            "ranked_database": ranked,
            "train": split["in_train"],
            "val": sets.get("val", 0),
        },
        "relevance": {
            "mode": relevance["mode"],
            "rule": relevance["stamp"]["rule"],
            "secondary": "labels" if relevance.get("secondary") else None,
        },
        "model_selection": {
            "rule": (
                "validation split only: checkpoints and early stopping are chosen on the "
                "validation samples, never on the query set"
            ),
            "val_from": {
                "split": "the split's val set",
                "train_slice": "near-duplicate groups held out of the training set",
            },
            "models": selection,
        },
        "map": {
            "full": f"every query ranks the whole database ({ranked} items): 'map'",
            "at_k": {
                "requested": list(params.map_at),
                "used": {str(k): v for k, v in M.clip_cutoffs(params.map_at, ranked).items()},
                "rule": "cut-offs above the database size are clipped to it",
            },
        },
        "ties": {
            "primary": "tie_aware",
            "secondary": "database_order" if params.database_order else None,
            "float": "float",
        },
    }
    if lists is None:
        card["manifests"] = None
        card["near_duplicate_queries"] = {"count": None, "definition": None}
    else:
        man = lists["manifest"]
        card["manifests"] = {name: f["sha256"] for name, f in sorted(man["files"].items())}
        nd = man.get("near_duplicate_queries", {})
        card["near_duplicate_queries"] = {
            "count": len(lists["near_duplicate_queries"]),
            "definition": nd.get("definition"),
        }
    return card
