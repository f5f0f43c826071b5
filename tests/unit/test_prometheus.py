"""The Prometheus exporter over an in-process run: scraped over HTTP and parsed with
prometheus-client's parser, every figure equals the run's summary; a taken port is a clear
error."""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Callable, Sequence

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

import buildflow
from buildflow.io import BigQueryTable, GCSFileEvent, GCSFileStream
from buildflow.prometheus import MetricsExporter, MetricsServerError
from buildflow.runtime.base import BoundProcessor, ProcessorStats, RunOptions, RunSummary
from buildflow.runtime.inprocess import InProcessRuntime
from buildflow.testing import gcs_file_event, run_processor


@dataclasses.dataclass
class Row:
    name: str


class Picky(buildflow.Processor):
    max_batch_size = 4
    max_batch_latency_ms = 0

    def source(self) -> GCSFileStream:
        return GCSFileStream(bucket_name="photos")

    def sink(self) -> BigQueryTable:
        return BigQueryTable(table_id="ds.rows")

    def setup(self) -> None:
        self.metrics.increment("model_loads")

    def process(self, event: GCSFileEvent) -> Row:
        if event.name.startswith("v"):
            raise ValueError("bad value")
        if event.name.startswith("t"):
            raise TypeError("bad type")
        return Row(event.name)


class ExportingRuntime(InProcessRuntime):
    """The in-process runtime feeding ``exporter``, and remembering the backlog it saw."""

    def __init__(self, exporter: MetricsExporter) -> None:
        super().__init__()
        self.exporter = exporter
        self.backlogs: list[int | None] = []

    def run(
        self,
        processors: Sequence[BoundProcessor],
        options: RunOptions,
        on_progress: Callable[[list[ProcessorStats], float], None] | None = None,
    ) -> RunSummary:
        def feed(stats: list[ProcessorStats], elapsed: float) -> None:
            self.backlogs.append(stats[0].backlog)
            self.exporter.update(stats, elapsed)

        options = dataclasses.replace(options, progress_interval_s=0.01)
        return super().run(processors, options, on_progress=feed)


def samples(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(url, timeout=5).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def test_scraped_metrics_equal_the_runs_summary() -> None:
    exporter = MetricsExporter(["Picky"])
    url = exporter.start("127.0.0.1", 0)
    try:
        before = samples(url)
        assert before[("buildflow_events_total", (("processor", "Picky"),))] == 0
        names = [f"ok{i}.jpg" for i in range(20)] + ["v1.jpg", "v2.jpg", "t1.jpg"]
        runtime = ExportingRuntime(exporter)
        result = run_processor(Picky(), [gcs_file_event(n, b"x") for n in names], runtime=runtime)
        got = samples(url)
    finally:
        exporter.stop()
    (stats,) = result.summary.processors
    p = (("processor", "Picky"),)
    assert got[("buildflow_events_total", p)] == stats.events == 23
    assert got[("buildflow_rows_total", p)] == stats.rows == 20
    assert got[("buildflow_dead_letters_total", (("error_type", "TypeError"), *p))] == 1
    assert got[("buildflow_dead_letters_total", (("error_type", "ValueError"), *p))] == 2
    assert got[("buildflow_model_loads_total", p)] == 1
    assert got[("buildflow_replicas", p)] == 1
    assert got[("buildflow_event_latency_seconds_count", p)] == 23
    assert got[("buildflow_event_latency_seconds_bucket", (("le", "+Inf"), *p))] == 23
    assert got[("buildflow_event_latency_seconds_sum", p)] == pytest.approx(
        sum(stats.latencies_ms) / 1000, rel=1e-6
    )
    assert got[("buildflow_batch_seconds_count", p)] == stats.batches
    # the backlog the source reported, as of the last progress callback (0: all pulled)
    assert got[("buildflow_backlog", p)] == runtime.backlogs[-1] == 0


def test_a_taken_port_is_a_clear_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(MetricsServerError, match=rf"127\.0\.0\.1:{port}.*--metrics-port"):
            MetricsExporter().start("127.0.0.1", port)


def test_stop_is_idempotent_and_frees_the_port() -> None:
    exporter = MetricsExporter()
    url = exporter.start("127.0.0.1", 0)
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    exporter.stop()
    exporter.stop()
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))  # free again


def test_the_grafana_dashboard_queries_only_metrics_the_exporter_serves() -> None:
    import json
    import re
    from pathlib import Path

    dashboard = json.loads(
        (Path(__file__).resolve().parents[2] / "docs" / "grafana-dashboard.json").read_text()
    )
    exporter = MetricsExporter(["p"])
    exporter.update([ProcessorStats(name="p", backlog=0, dead_letters_by_type={"ValueError": 1})])
    served = {s.name for f in exporter.registry.collect() for s in f.samples}
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"\bbuildflow_[a-z_]+", e)}
    assert len(dashboard["panels"]) >= 7 and used
    assert used <= served, used - served
    families = {
        "buildflow_events_total", "buildflow_rows_total", "buildflow_dead_letters_total",
        "buildflow_event_latency_seconds_bucket", "buildflow_batch_seconds_bucket", "buildflow_backlog",
        "buildflow_replicas", "buildflow_model_loads_total",
    }  # fmt: skip
    assert families <= used  # every metric has a panel
