"""Prometheus textfile metrics of the last run, for node_exporter's textfile collector.

A scheduled job has no endpoint to scrape; the file (written atomically by prometheus-client)
is how an alert learns that last night's refresh failed or never ran.
"""

from __future__ import annotations

import time
from pathlib import Path

from prometheus_client import CollectorRegistry, Gauge, write_to_textfile

from imgpipe.catalog.sync import SyncReport


def write(path: Path, report: SyncReport) -> None:
    registry = CollectorRegistry()
    labels = {"catalog": Path(report.catalog).name, "shard": report.shard or "all"}

    def gauge(name: str, doc: str, value: float) -> None:
        Gauge(name, doc, list(labels), registry=registry).labels(**labels).set(value)

    counts = report.counts()
    gauge("imgpipe_catalog_published_images", "Images uploaded by the last run", counts["created"])
    gauge("imgpipe_catalog_copied_images", "Images already published, copied into stores they missed",
          counts["copied"])
    gauge("imgpipe_catalog_resigned_images", "Images already published, signed anew without an upload",
          counts["resigned"])
    gauge("imgpipe_catalog_unchanged_images", "Images already published, left as they were", counts["unchanged"])
    gauge("imgpipe_catalog_failed_images", "Images the last run should have published but did not", counts["failed"])
    gauge("imgpipe_catalog_errors", "Errors of the last run (uploads, downloads, clouds, rotation)",
          len(report.failures))
    gauge("imgpipe_catalog_uploaded_bytes", "Bytes uploaded by the last run", report.uploaded_bytes)
    gauge("imgpipe_catalog_duration_seconds", "Wall time of the last run", report.seconds)
    gauge("imgpipe_catalog_last_run_timestamp_seconds", "When the last run finished", time.time())
    gauge("imgpipe_catalog_last_run_success", "1 if the last run had no error", 0 if report.failures else 1)
    changed = Gauge("imgpipe_catalog_changed_images", "Existing images the last run changed, by action",
                    [*labels, "action"], registry=registry)
    for action in ("discard", "unhide", "hide", "deactivate", "delete"):
        changed.labels(**labels, action=action).set(report.changed()[action])
    path.parent.mkdir(parents=True, exist_ok=True)
    write_to_textfile(str(path), registry)
