"""``cmrops metrics serve``: the project's metrics on an HTTP ``/metrics`` endpoint.

Binds 127.0.0.1 by default; the files are read at every scrape. Stops cleanly on SIGTERM or
SIGINT (Ctrl-C).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from prometheus_client.exposition import start_http_server

from cmrops.telemetry.collector import registry_for

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "serve"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9108
ALL_INTERFACES = {"0.0.0.0", "::", "", "[::]"}


def serve(
    project: str | os.PathLike[str],
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    announce: Callable[[str], None] = print,
    stop: threading.Event | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT (or ``stop`` is set). ``port=0`` picks a free port; the
    address actually bound is announced as ``serving ... on http://HOST:PORT/metrics``."""
    root = Path(project)
    if not root.is_dir():
        raise FileNotFoundError(
            f"project folder {root} not found; pass --project DIR (the folder with dvc.yaml)"
        )
    if not 0 <= port <= 65535:
        raise ValueError(f"--port {port} is not a TCP port (0-65535; 0 picks a free one)")
    if host in ALL_INTERFACES:
        log.warning(
            "WARNING: binding %r exposes the metrics on every network interface, to anyone who "
            "can reach this machine; use --host 127.0.0.1 (the default) behind a proxy or a "
            "firewall unless that is intended",
            host,
        )
    try:
        server, thread = start_http_server(port, addr=host, registry=registry_for(root))
    except OSError as e:
        raise ValueError(
            f"cannot listen on {host}:{port} ({e.strerror or e}); choose another --port "
            "(0 picks a free one) or stop what is using it"
        ) from e
    stop = stop or threading.Event()
    bound_host, bound_port = server.server_address[:2]

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s, shutting down", signal.Signals(signum).name)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        announce(f"serving {root.resolve()} metrics on http://{bound_host}:{bound_port}/metrics")
        while not stop.wait(0.5):
            pass
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
