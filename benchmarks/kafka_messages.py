"""Kafka: produce N real photos (raw format) -> `buildflow run` -> rows in the local DuckDB.

Starts the local stack's broker (and the rest of the stack) on free ports, then:
* burst: produces N messages as fast as the producer can and reports images/s (N / (last
  row's ``processed_at`` - first record's timestamp)) and produce-to-row p50/p95 (each
  record's producer timestamp to its row's ``processed_at``: includes queueing behind the
  burst);
* paced: produces M messages at a fixed rate and reports produce-to-row p50/p95.

    .venv/bin/python -m benchmarks.kafka_messages --messages 1000 --paced 200 --rate 10
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

APP = """
import os
from buildflow import Node
from buildflow.io import KafkaTopic
from processors import ImageClassificationProcessor

app = Node()
app.add(ImageClassificationProcessor(
    bucket_name="unused-bucket",
    table_id="bench.kafka_predictions",
    source=KafkaTopic(os.environ["KAFKA_BOOTSTRAP_SERVERS"], os.environ["TOPIC"],
                      consumer_config={"session.timeout.ms": "6000"}),
))
"""


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--paced", type=int, default=200)
    parser.add_argument("--rate", type=float, default=10.0)
    args = parser.parse_args()

    from infra import stack as stack_mod
    from models.samples import write_samples

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        stack = stack_mod.start(state_dir=tmp / "stack")
        (tmp / "kafka_bench_app.py").write_text(APP)
        env = {**os.environ, **stack.env, "TOPIC": "bench-images", "PYTHONPATH": str(REPO)}
        env.pop("BUILDFLOW_ENV", None)
        cli = [sys.executable, "-m", "buildflow.cli"]
        state = ["--state-dir", str(tmp / "state")]
        bootstrap = stack.env["KAFKA_BOOTSTRAP_SERVERS"]
        run = None
        try:
            subprocess.run(
                [*cli, "plan", "kafka_bench_app:app", "--yes", *state],
                cwd=tmp,
                env=env,
                check=True,
                capture_output=True,
            )
            burst_dir, paced_dir = tmp / "burst", tmp / "paced"
            write_samples(burst_dir / "burst", copies=args.messages)
            write_samples(paced_dir / "paced", copies=args.paced)
            run = subprocess.Popen(
                [*cli, "run", "kafka_bench_app:app", *state, "--log-level", "info"],
                cwd=tmp,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            assert run.stderr is not None
            for line in run.stderr:
                if "ready: setup()" in line:
                    break

            def rows(prefix: str, n: int) -> list[dict[str, Any]]:
                deadline = time.monotonic() + 900
                sql = (
                    f"SELECT image_name, epoch_ms(upload) AS up, epoch_ms(processed_at) AS done "
                    f"FROM bench.kafka_predictions WHERE image_name LIKE '{prefix}/%'"
                )
                while time.monotonic() < deadline:
                    out = subprocess.run(
                        [*cli, "query", "kafka_bench_app:app", sql, "--format", "json", *state],
                        cwd=tmp,
                        env=env,
                        capture_output=True,
                        text=True,
                    )
                    got = json.loads(out.stdout) if out.returncode == 0 else []
                    if len(got) >= n:
                        return got
                    time.sleep(1.0)
                raise SystemExit(f"only {len(got)} of {n} rows arrived")

            load0 = os.getloadavg()[0]
            produce = [*cli, "produce", "--kafka", f"{bootstrap}/bench-images"]
            subprocess.run([*produce, str(burst_dir)], cwd=tmp, env=env, check=True, capture_output=True)
            burst = rows("burst", args.messages)
            span = (max(r["done"] for r in burst) - min(r["up"] for r in burst)) / 1000
            burst_lat = [r["done"] - r["up"] for r in burst]
            subprocess.run(
                [*produce, str(paced_dir), "--rate", str(args.rate)],
                cwd=tmp,
                env=env,
                check=True,
                capture_output=True,
            )
            paced_lat = [r["done"] - r["up"] for r in rows("paced", args.paced)]
            load1 = os.getloadavg()[0]
        finally:
            if run is not None:
                run.send_signal(signal.SIGTERM)
                run.wait(timeout=60)
            stack_mod.stop(tmp / "stack")

    def pct(xs: list[float]) -> str:
        q = statistics.quantiles(xs, n=100, method="inclusive")
        return f"{q[49]:.0f} / {q[94]:.0f} ms"

    print(f"| measure ({os.cpu_count()} CPUs, tansu broker) | value |\n|---|---|")
    print(f"| burst: {args.messages} messages -> rows | {args.messages / span:.1f} images/s ({span:.1f} s) |")
    print(f"| burst: produce-to-row p50 / p95 (queueing included) | {pct(burst_lat)} |")
    print(f"| paced: {args.paced} messages at {args.rate}/s, produce-to-row p50 / p95 | {pct(paced_lat)} |")
    print(f"| 1-min load average before / after | {load0:.2f} / {load1:.2f} |")


if __name__ == "__main__":
    main()
