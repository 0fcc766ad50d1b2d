"""A worker function for tests/test_threads.py (importable by spawned processes)."""

from __future__ import annotations

import os
from typing import Any


def report(_: int) -> dict[str, Any]:
    """What a worker process sees: its environment, torch's threads and the BLAS pools."""
    import torch
    from threadpoolctl import threadpool_info

    return {
        "env": os.environ.get("CMROPS_THREADS"),
        "omp": os.environ.get("OMP_NUM_THREADS"),
        "wait": os.environ.get("OMP_WAIT_POLICY"),
        "torch": torch.get_num_threads(),
        "pools": sorted({i["num_threads"] for i in threadpool_info()}),
    }
