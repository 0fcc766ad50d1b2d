"""Push a project's metrics to a Prometheus Pushgateway.

Airflow tasks are short-lived: no server scrapes them, so each stage pushes its own metrics when
it ends. Configured by ``$CMROPS_PUSHGATEWAY_URL`` (``http://host:9091``; unset: no push) and
``$CMROPS_PUSHGATEWAY_TIMEOUT`` (seconds, default 5). A gateway behind basic auth takes
``http://user:password@host:9091``: the credentials are sent as an ``Authorization`` header and
masked (:func:`cmrops.redaction.redact`) in every message. One group per stage, grouping key
``job=<job>, instance=<project folder name>, stage=<stage>``: a push replaces that stage's
previous metrics (``PUT``) and never touches another stage's, and the gateway does not grow with
every run (the run id is the ``run_id`` label of ``cmrops_info``, not a grouping key).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any
from urllib.error import URLError

from prometheus_client.exposition import basic_auth_handler, default_handler, push_to_gateway

from cmrops.redaction import redact, redact_url, split_credentials
from cmrops.telemetry.collector import registry_for

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_JOB",
    "GATEWAY_ENV",
    "TIMEOUT_ENV",
    "PushError",
    "gateway_from_env",
    "grouping_key",
    "push_after_stage",
    "push_project",
    "push_stage",
]

GATEWAY_ENV = "CMROPS_PUSHGATEWAY_URL"
TIMEOUT_ENV = "CMROPS_PUSHGATEWAY_TIMEOUT"
DEFAULT_JOB = "cmrops"
DEFAULT_TIMEOUT_S = 5.0


class PushError(RuntimeError):
    """The Pushgateway could not be reached or refused the push."""


def gateway_from_env() -> str | None:
    return os.environ.get(GATEWAY_ENV, "").strip() or None


def timeout_from_env() -> float:
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise ValueError(f"${TIMEOUT_ENV}={raw!r} is not a positive number of seconds")
    return value


def grouping_key(project: str | os.PathLike[str], stage: str) -> dict[str, str]:
    return {"instance": Path(project).resolve().name or "cmrops", "stage": stage}


def push_stage(
    project: str | os.PathLike[str],
    stage: str,
    gateway: str,
    job: str = DEFAULT_JOB,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> None:
    """Replace ``stage``'s group on the gateway with the stage's current metrics; raises
    :class:`PushError` with what to check when the gateway is down, slow or refuses."""
    registry = registry_for(project, [stage])
    url, user, password = split_credentials(gateway)

    def handler(*args: Any, **kwargs: Any) -> Any:  # the URL's credentials as basic auth
        if user is None:
            return default_handler(*args, **kwargs)
        return basic_auth_handler(*args, **kwargs, username=user, password=password or "")

    try:
        push_to_gateway(
            url, job=job, registry=registry, grouping_key=grouping_key(project, stage),
            timeout=timeout, handler=handler,
        )  # fmt: skip
    except (URLError, OSError, ValueError) as e:  # HTTPError is a URLError; timeouts are OSError
        reason = getattr(e, "reason", None) or e
        raise PushError(
            f"cannot push {stage} metrics to the Pushgateway at {redact_url(gateway)} within "
            f"{timeout:g}s: {redact(str(reason))} (is it running and reachable? it is set by "
            f"${GATEWAY_ENV})"
        ) from e


def push_project(
    project: str | os.PathLike[str],
    gateway: str,
    job: str = DEFAULT_JOB,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> list[str]:
    """Push every stage's metrics (one group each); returns the stages pushed."""
    from cmrops.stage_table import STAGES

    if not Path(project).is_dir():
        raise FileNotFoundError(f"project folder {project} not found (pass --project DIR)")
    for stage in STAGES:
        push_stage(project, stage, gateway, job, timeout)
    return list(STAGES)


def push_after_stage(project: str | os.PathLike[str], stage: str) -> bool:
    """Push ``stage``'s metrics when ``$CMROPS_PUSHGATEWAY_URL`` is set. Never raises: a gateway
    that is down or slow costs at most the timeout and a warning, and the stage still succeeds."""
    gateway = gateway_from_env()
    if not gateway:
        return False
    try:
        push_stage(project, stage, gateway, timeout=timeout_from_env())
    except (PushError, ValueError) as e:
        log.warning("metrics not pushed: %s", e)
        return False
    log.info("pushed %s metrics to the Pushgateway at %s", stage, redact_url(gateway))
    return True
