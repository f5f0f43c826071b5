"""``buildflow run --metrics-port 0`` end to end: a model-free app reads the stack's Pub/Sub
fake, the test scrapes the printed URL with a real HTTP client while the run goes on, parses
the Prometheus text format with prometheus-client's own parser and compares every figure
with the run's summary."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "buildflow.cli"]

APP = """
import dataclasses, os
import buildflow
from buildflow import Node
from buildflow.io import DuckDBTable, PubSubMessageEvent, PubSubSubscription


@dataclasses.dataclass
class Sized:
    name: str
    size: int


class Sizes(buildflow.Processor):
    max_batch_latency_ms = 20

    def source(self):
        return PubSubSubscription(
            project_id="buildflow-local",
            subscription=os.environ["SUB"],
            topic=os.environ["TOPIC"],
            ack_deadline_secs=10,
        )

    def sink(self):
        return DuckDBTable(table="metrics.sizes", destroy_protection=False)

    def setup(self):
        self.metrics.increment("model_loads")

    def process(self, event: PubSubMessageEvent) -> Sized:
        if event.data.startswith(b"bad-value"):
            raise ValueError("a bad value")
        if event.data.startswith(b"bad-key"):
            raise KeyError("a missing key")
        return Sized(event.name, len(event.data))


app = Node(name="metrics-app")
app.add(Sizes())
"""


def scrape(url: str) -> dict[str, list[Any]]:
    """``{family name: [samples]}`` of one scrape, parsed by prometheus-client."""
    text = httpx.get(url, timeout=5).text
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def value(families: dict[str, list[Any]], sample: str, **labels: str) -> float | None:
    for fam in families.values():
        for s in fam:
            if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None


def test_metrics_port_serves_the_runs_own_counts(stack_env: Any, tmp_path: Path) -> None:
    from google.cloud import pubsub_v1

    (tmp_path / "metrics_app.py").write_text(APP)
    suffix = uuid.uuid4().hex[:8]
    env = {
        **os.environ,
        **stack_env.env,
        "TOPIC": f"metrics-{suffix}",
        "SUB": f"metrics-{suffix}-sub",
        "BUILDFLOW_ENV": "emulator",
        "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    }
    state = ["--state-dir", str(tmp_path / "state")]
    subprocess.run(
        [*CLI, "plan", "metrics_app:app", "--yes", *state], cwd=tmp_path, env=env, check=True,
        capture_output=True, timeout=120, input="",
    )  # fmt: skip
    summary_path = tmp_path / "summary.json"
    proc = subprocess.Popen(
        [*CLI, "run", "metrics_app:app", *state, "--metrics-port", "0", "--no-progress",
         "--summary-json", str(summary_path)],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    lines: queue.Queue[str] = queue.Queue()
    stderr: list[str] = []

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            stderr.append(line)
            lines.put(line)

    threading.Thread(target=read, daemon=True).start()
    try:
        url = None
        deadline = time.monotonic() + 60
        while url is None:
            assert time.monotonic() < deadline, "no metrics URL printed:\n" + "".join(stderr)
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                assert proc.poll() is None, "run exited:\n" + "".join(stderr)
                continue
            m = re.search(r"metrics: (http://127\.0\.0\.1:(\d+)/metrics)", line)
            url = m.group(1) if m else None
        assert url is not None and int(url.rsplit(":", 1)[1].split("/")[0]) > 0

        # before any event: every series is there, at 0
        first = scrape(url)
        assert value(first, "buildflow_events_total", processor="Sizes") == 0

        publisher = pubsub_v1.PublisherClient()
        topic = publisher.topic_path("buildflow-local", env["TOPIC"])
        payloads = [b"ok-%d" % i for i in range(14)] + [b"bad-value"] * 3 + [b"bad-key"] * 2
        for f in [publisher.publish(topic, p, name=f"m{i}") for i, p in enumerate(payloads)]:
            f.result(timeout=30)

        deadline = time.monotonic() + 90
        while True:
            fams = scrape(url)
            if value(fams, "buildflow_event_latency_seconds_count", processor="Sizes") == len(payloads):
                break
            assert proc.poll() is None, "run exited:\n" + "".join(stderr)
            assert time.monotonic() < deadline, f"metrics never reached {len(payloads)} events: {fams}"
            time.sleep(0.2)

        assert value(fams, "buildflow_events_total", processor="Sizes") == 19
        assert value(fams, "buildflow_rows_total", processor="Sizes") == 14
        assert value(fams, "buildflow_dead_letters_total", processor="Sizes", error_type="ValueError") == 3
        assert value(fams, "buildflow_dead_letters_total", processor="Sizes", error_type="KeyError") == 2
        assert value(fams, "buildflow_model_loads_total", processor="Sizes") == 1
        assert value(fams, "buildflow_replicas", processor="Sizes") == 1
        # the Pub/Sub fake has no Cloud Monitoring: the backlog is unknown, so not exported
        # (tests/unit/test_prometheus.py checks it with a source that knows it)
        assert value(fams, "buildflow_backlog", processor="Sizes") is None
        inf = value(fams, "buildflow_event_latency_seconds_bucket", processor="Sizes", le="+Inf")
        assert inf == 19
        batches = value(fams, "buildflow_batch_seconds_count", processor="Sizes")
        assert batches is not None and 1 <= batches <= 19
        assert (value(fams, "buildflow_batch_seconds_sum", processor="Sizes") or 0) > 0
        # buckets are cumulative: non-decreasing up to +Inf
        buckets = [
            s.value for s in fams["buildflow_event_latency_seconds"]
            if s.name.endswith("_bucket") and s.labels["processor"] == "Sizes"
        ]  # fmt: skip
        assert buckets == sorted(buckets) and buckets[-1] == 19

        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    assert proc.returncode == 0, "".join(stderr)
    summary = json.loads(summary_path.read_text())
    (p,) = summary["processors"]
    assert (p["events"], p["rows"], p["dead_letters"]) == (19, 14, 5)
    assert p["dead_letters_by_type"] == {"ValueError": 3, "KeyError": 2}
    # the server is gone with the run
    with pytest.raises(httpx.ConnectError):
        httpx.get(url, timeout=2)
