"""The synchronous predict endpoint (``HTTPEndpoint``): request latency p50/p99 and throughput
at a stated number of concurrent clients, with the shipped model on real photos, against the
bare model's batch latency in the same run as the baseline.

Setup: ``buildflow run`` of the shipped ``ImageClassificationProcessor`` (efficientnet_lite0,
``max_batch_size`` 16) with ``source=HTTPEndpoint(port=0)``, ``local`` environment (DuckDB sink),
as a subprocess; ``--metrics-port 0`` for the micro-batch counts. Images: distinct real JPEGs
(:func:`benchmarks.images.distinct_jpegs`: crops of the packaged photos, ~500x375 and
~1350x900 alternating).

Each round, interleaved so machine load hits each alike:

* ``bare model``: ``BatchClassifier.load(...).classify`` in this process (decode +
  preprocessing + inference, no HTTP, no runtime, no sink) on a batch of 1 and on a batch of
  16 (the processor's ``max_batch_size``), while the server is idle;
* ``endpoint, c clients``: ``c`` httpx clients post images back to back (closed loop), each
  ``--requests`` of them; latency = from sending a request to its answer (200 with the row,
  written to DuckDB); throughput = answers / wall time of the level. The mean micro-batch
  size is ``buildflow_events_total`` / ``buildflow_batch_seconds_count`` over the level, from
  the run's Prometheus endpoint;
* ``endpoint without a model``: the same endpoint and sink with a processor that does no
  work, 1 client: the endpoint's own cost per request.

Ratios: endpoint p50 at 1 client / bare batch-of-1 latency (the endpoint's overhead on one
image), and endpoint throughput at the highest concurrency / bare batch-of-16 throughput.

    .venv/bin/python -m benchmarks.predict_endpoint --concurrency 1,8,32 --rounds 2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.images import distinct_jpegs
from benchmarks.stats import percentiles

REPO = Path(__file__).resolve().parents[1]
BATCH = 16  # ImageClassificationProcessor.max_batch_size

APP = """
from buildflow import Node
from buildflow.io import HTTPEndpoint
from processors import ImageClassificationProcessor

app = Node(name="predict-endpoint-bench")
app.add(
    ImageClassificationProcessor(
        bucket_name="unused",
        table_id="buildflow-local.bench_endpoint.predictions",
        source=HTTPEndpoint(route="/classify", port=0, max_pending=1024),
    )
)
"""

#: The same endpoint and sink with a processor that does no work (one row per image, its size):
#: what the endpoint itself costs per request (HTTP, the runtime, the DuckDB write).
APP_NO_MODEL = """
import dataclasses
from buildflow import Node
from buildflow.io import BigQueryTable, FileEvent, HTTPEndpoint

@dataclasses.dataclass
class Row:
    image_name: str
    size: int

app = Node(name="predict-endpoint-bench-no-model")

@app.processor(
    source=HTTPEndpoint(route="/classify", port=0, max_pending=1024),
    sink=BigQueryTable(table_id="buildflow-local.bench_endpoint.no_model"),
)
def sizes(event: FileEvent) -> Row:
    return Row(event.name, len(event.blob))
"""


def _env() -> dict[str, str]:
    env = {**os.environ, "BUILDFLOW_LOG_LEVEL": "info", "COLUMNS": "200"}
    env.pop("BUILDFLOW_ENV", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return env


class Server:
    """``buildflow run`` of :data:`APP` until :meth:`stop`; its endpoint and metrics URLs."""

    def __init__(self, tmp: Path, source: str = APP, name: str = "endpoint_app") -> None:
        (tmp / f"{name}.py").write_text(source)
        app, state = str(tmp / f"{name}.py") + ":app", str(tmp / f"state_{name}")
        cmd = [sys.executable, "-m", "buildflow.cli"]
        subprocess.run([*cmd, "plan", app, "--yes", "--state-dir", state], cwd=REPO, env=_env(), check=True,
                       capture_output=True, timeout=300)  # fmt: skip
        self.proc = subprocess.Popen(
            [*cmd, "run", app, "--no-progress", "--state-dir", state, "--metrics-port", "0"],
            cwd=REPO,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        assert self.proc.stdout is not None
        out = self.proc.stdout
        self.reader = threading.Thread(target=lambda: self.lines.extend(iter(out.readline, "")), daemon=True)
        self.reader.start()
        deadline = time.monotonic() + 300
        while True:
            text = "".join(self.lines)
            url = re.search(r"^endpoint: (http://\S+)", text, re.M)
            metrics = re.search(r"^metrics: (http://\S+)", text, re.M)
            if url and metrics and "ready: setup() took" in text:
                self.url, self.metrics_url = url.group(1), metrics.group(1)
                return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"buildflow run did not get ready:\n{text}")
            time.sleep(0.05)

    def counts(self) -> tuple[float, float]:
        """(events pulled, micro-batches processed) so far, from the Prometheus endpoint."""
        import httpx
        from prometheus_client.parser import text_string_to_metric_families

        events = batches = 0.0
        for family in text_string_to_metric_families(httpx.get(self.metrics_url, timeout=10).text):
            for s in family.samples:
                if s.name == "buildflow_events_total":
                    events += s.value
                elif s.name == "buildflow_batch_seconds_count":
                    batches += s.value
        return events, batches

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.reader.join(timeout=10)


async def _clients(
    url: str, images: list[bytes], concurrency: int, per_client: int
) -> tuple[list[float], float]:
    """``concurrency`` closed-loop clients, ``per_client`` requests each: (latencies ms, wall s)."""
    import httpx

    latencies: list[float] = []

    async def client(k: int, http: httpx.AsyncClient) -> None:
        for i in range(per_client):
            body = images[(k * per_client + i) % len(images)]
            t0 = time.perf_counter()
            r = await http.post(url, content=body, headers={"content-type": "image/jpeg"})
            latencies.append((time.perf_counter() - t0) * 1000)
            if r.status_code != 200:
                raise RuntimeError(f"{r.status_code}: {r.text}")

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=300, limits=limits) as http:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(k, http) for k in range(concurrency)))
        return latencies, time.perf_counter() - t0


def _bare(classifier: Any, images: list[bytes], reps: int) -> dict[str, float]:
    """Batch-of-1 latency (ms, median of ``reps``) and batch-of-16 latency and img/s."""
    one = []
    for i in range(reps):
        t0 = time.perf_counter()
        classifier.classify([images[i % len(images)]])
        one.append((time.perf_counter() - t0) * 1000)
    full = []
    for i in range(max(1, reps // 4)):
        batch = [images[(i * BATCH + j) % len(images)] for j in range(BATCH)]
        t0 = time.perf_counter()
        classifier.classify(batch)
        full.append((time.perf_counter() - t0) * 1000)
    b16 = statistics.median(full)
    return {"batch1_ms": statistics.median(one), "batch16_ms": b16, "batch16_img_s": BATCH / b16 * 1000}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", default="1,8,32", help="comma-separated client counts")
    parser.add_argument("--requests", type=int, default=0, help="requests per client (0: 24 / clients, >= 4)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--bare-reps", type=int, default=12)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]

    from models import BatchClassifier

    images = [data for _, data in distinct_jpegs(96, seed=7)]
    load_before = os.getloadavg()
    classifier = BatchClassifier.load("efficientnet_lite0")
    classifier.classify(images[:2])  # warm-up
    bare: list[dict[str, float]] = []
    by_level: dict[int, list[float]] = {c: [] for c in levels}
    rates: dict[int, list[float]] = {c: [] for c in levels}
    batch_sizes: dict[int, list[float]] = {c: [] for c in levels}
    no_model: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-endpoint-") as tmp:
        server = Server(Path(tmp))
        empty = Server(Path(tmp), APP_NO_MODEL, "no_model_app")
        try:
            asyncio.run(_clients(server.url, images[:4], 2, 2))  # warm-up of the served model
            asyncio.run(_clients(empty.url, images[:4], 2, 2))
            for _ in range(args.rounds):
                bare.append(_bare(classifier, images, args.bare_reps))
                no_model.extend(asyncio.run(_clients(empty.url, images, 1, 48))[0])
                for c in levels:
                    per_client = args.requests or max(4, 48 // c)
                    e0, b0 = server.counts()
                    lat, wall = asyncio.run(_clients(server.url, images, c, per_client))
                    e1, b1 = server.counts()
                    by_level[c].extend(lat)
                    rates[c].append(len(lat) / wall)
                    batch_sizes[c].append((e1 - e0) / max(1.0, b1 - b0))
        finally:
            server.stop()
            empty.stop()
            classifier.close()
    load_after = os.getloadavg()

    b1 = statistics.median(b["batch1_ms"] for b in bare)
    b16 = statistics.median(b["batch16_ms"] for b in bare)
    b16_rate = statistics.median(b["batch16_img_s"] for b in bare)
    figures: dict[str, Any] = {
        "load_average_1m": [round(load_before[0], 2), round(load_after[0], 2)],
        "cpus": os.cpu_count(),
        "bare": {"batch1_ms": b1, "batch16_ms": b16, "batch16_img_s": b16_rate},
        "no_model_1_client": percentiles(no_model),
        "endpoint": {},
    }
    print(
        f"load average (1 min) {load_before[0]:.2f} before, {load_after[0]:.2f} after; "
        f"{os.cpu_count()} CPUs; {args.rounds} rounds, interleaved"
    )
    print(f"bare model: batch of 1 {b1:.0f} ms; batch of {BATCH} {b16:.0f} ms = {b16_rate:.1f} img/s")
    nm = figures["no_model_1_client"]
    print(
        f"endpoint without a model (HTTP + runtime + DuckDB write), 1 client: p50 {nm['p50_ms']:.1f} ms, "
        f"p99 {nm['p99_ms']:.1f} ms ({nm['n']} requests)"
    )
    print(
        "| clients | requests | p50 ms | p99 ms | img/s | mean micro-batch "
        "| p50 / bare batch-of-1 | img/s / bare |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for c in levels:
        p = percentiles(by_level[c])
        rate = statistics.median(rates[c])
        mean_batch = statistics.median(batch_sizes[c])
        figures["endpoint"][c] = {**p, "img_s": rate, "mean_batch": mean_batch}
        print(
            f"| {c} | {p['n']} | {p['p50_ms']:.0f} | {p['p99_ms']:.0f} | {rate:.1f} | {mean_batch:.1f} "
            f"| {p['p50_ms'] / b1:.2f} | {rate / b16_rate:.2f} |"
        )
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
