"""Prometheus metrics for one node, in its own CollectorRegistry (no process-wide state).

Counters and queue depths are read from the database at scrape time, so they count what
every process sharing the database did and survive restarts (rows are the audit trail).
Stage latencies come from the `timings` each result records; the histograms take in the
results recorded since this process started (scrape-time tailing, no hook in the worker).
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Gauge, Histogram, Info, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from cxr_node.queue.reports import Reports
from cxr_node.results.identity import ModelIdentity

# Seconds: decode and the forwards on a 2-core CPU are 0.1-1 s; end-to-end includes queueing.
STAGE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _DatabaseCollector:
    """Totals and depths straight from the queue tables."""

    def __init__(self, reports: Reports) -> None:
        self.reports = reports

    def collect(self):
        totals = self.reports.totals()
        for name, key, doc in (
            ("cxr_node_images_received", "received", "Images received and acknowledged."),
            ("cxr_node_images_skipped", "skipped", "Images a selection rule decided not to analyse."),
            ("cxr_node_images_analysed", "analysed", "Images with a recorded result."),
            ("cxr_node_images_failed", "failed", "Images whose job failed for good."),
        ):
            yield CounterMetricFamily(name, doc, value=totals[key])
        # The label is the check's short code (a handful), never the sentence: low cardinality.
        not_analysable = CounterMetricFamily(
            "cxr_node_not_analysable",
            "Images decoded but holding too little for an answer (no class given), per check.",
            labels=["reason"],
        )
        for code, n in sorted(self.reports.not_analysable_by_code().items()):
            not_analysable.add_metric([code], n)
        yield not_analysable
        by_rule = CounterMetricFamily(
            "cxr_node_images_skipped_by_rule",
            "Images not analysed, per deciding selection rule (cxr-node rules show).",
            labels=["rule"],
        )
        for rule, n in sorted(self.reports.skipped_by_rule().items()):
            by_rule.add_metric([rule], n)
        yield by_rule
        exported = CounterMetricFamily(
            "cxr_node_results_exported", "Result objects a destination accepted.", labels=["destination"]
        )
        for dest, n in sorted(self.reports.exported_by_destination().items()):
            exported.add_metric([dest], n)
        yield exported
        depth = self.reports.depth()
        jobs = GaugeMetricFamily("cxr_node_queue_jobs", "Jobs per state.", labels=["state"])
        for state, n in depth["jobs"].items():
            jobs.add_metric([state], n)
        yield jobs
        exp = GaugeMetricFamily("cxr_node_queue_exports", "Export rows per state.", labels=["state"])
        for state, n in depth["exports"].items():
            exp.add_metric([state], n)
        yield exp


def torch_gpu_memory() -> dict[str, float]:
    """Bytes allocated/reserved per CUDA device, only when this process already uses CUDA.

    Never imports torch nor initialises CUDA itself: a receiver-only process stays light.
    """
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return {}
    out = {}
    for index in range(torch.cuda.device_count()):
        out[f"cuda:{index}/allocated"] = float(torch.cuda.memory_allocated(index))
        out[f"cuda:{index}/reserved"] = float(torch.cuda.memory_reserved(index))
    return out


class _GpuCollector:
    def __init__(self, read: Callable[[], dict[str, float]]) -> None:
        self.read = read

    def collect(self):
        values = self.read()
        if not values:
            return
        family = GaugeMetricFamily(
            "cxr_node_gpu_memory_bytes", "GPU memory held by this process.", labels=["device", "kind"]
        )
        for key, value in sorted(values.items()):
            device, kind = key.split("/")
            family.add_metric([device, kind], value)
        yield family


class NodeMetrics:
    def __init__(
        self,
        reports: Reports,
        model: ModelIdentity | None = None,
        gpu_memory: Callable[[], dict[str, float]] = torch_gpu_memory,
        started_at: float | None = None,
    ) -> None:
        self.reports = reports
        self.registry = CollectorRegistry()
        self.registry.register(_DatabaseCollector(reports))
        self.registry.register(_GpuCollector(gpu_memory))
        self.stage_seconds = Histogram(
            "cxr_node_stage_seconds",
            "Seconds per processing stage of each analysed image.",
            ["stage"],
            buckets=STAGE_BUCKETS,
            registry=self.registry,
        )
        self.received_to_result = Histogram(
            "cxr_node_received_to_result_seconds",
            "Seconds from the image's receipt to its recorded result.",
            buckets=STAGE_BUCKETS,
            registry=self.registry,
        )
        Gauge("cxr_node_start_time_seconds", "Unix time this process started.", registry=self.registry).set(
            started_at if started_at is not None else time.time()
        )
        if model is not None:
            Info("cxr_node_model", "The model bundle this process analyses with.", registry=self.registry).info(
                {
                    "name": model.name,
                    "version": model.version,
                    "sha256_a": model.sha256_a,
                    "sha256_b": model.sha256_b,
                    "trained": "true" if model.trained else "false",
                }
            )
        self._seen_result = reports.max_result_id()  # histograms cover results from now on
        self._lock = threading.Lock()

    def refresh(self) -> int:
        """Feed the histograms with results recorded since the last scrape; returns how many."""
        with self._lock:
            fed = 0
            while True:
                batch = self.reports.results_after(self._seen_result)
                for result_id, timings, received_at, created_at in batch:
                    for stage, seconds in timings.items():
                        if isinstance(seconds, (int, float)):
                            self.stage_seconds.labels(stage).observe(float(seconds))
                    if received_at is not None and created_at is not None:
                        self.received_to_result.observe(max(0.0, (created_at - received_at).total_seconds()))
                    self._seen_result = result_id
                fed += len(batch)
                if len(batch) < 1000:
                    return fed

    def render(self) -> bytes:
        self.refresh()
        return generate_latest(self.registry)


__all__ = ["CONTENT_TYPE", "NodeMetrics", "torch_gpu_memory"]
