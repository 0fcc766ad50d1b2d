"""Prometheus metrics of a cmrops project, read from its files at scrape time.

- :mod:`cmrops.telemetry.files` — where each stage's metrics file lives and the headline figures
  (counts, mAP) taken from it, for the run log and for the metrics below;
- :mod:`cmrops.telemetry.collector` — a Prometheus collector over the metrics files and the run
  log (:mod:`cmrops.runlog`), so a long-running endpoint always shows the newest run;
- :mod:`cmrops.telemetry.serve` — ``cmrops metrics serve``: an HTTP ``/metrics`` endpoint;
- :mod:`cmrops.telemetry.push` — a push to a Pushgateway (``$CMROPS_PUSHGATEWAY_URL``), for
  short-lived Airflow tasks;
- :mod:`cmrops.telemetry.record` — what the CLI wraps every stage command in: time it, append a
  run-log line, push when a gateway is configured.

Nothing here writes a DVC-tracked file.
"""
