"""Uploads through the emulator stack: GCS upload -> notification -> Pub/Sub -> model -> BigQuery.

Starts the local stack on free ports, plans the app in ``--env emulator``, starts
``buildflow run``, then:
* burst: uploads N distinct real photos as fast as one client can, and reports images/s
  (N / (last row's ``processed_at`` - when the first upload call returned));
* paced: uploads M photos at a fixed rate and reports upload-to-row latency p50/p95, from
  the moment each upload call returned to the row's ``processed_at``: notification delivery,
  pull, micro-batching, decode and inference, not the BigQuery insert that follows. (The
  GCS fake's ``eventTime`` is truncated to whole seconds, so it is not used.)

    .venv/bin/python -m benchmarks.emulator_uploads --images 200 --paced 40 --rate 5
"""

from __future__ import annotations

import argparse
import itertools
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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--paced", type=int, default=40)
    parser.add_argument("--rate", type=float, default=5.0, help="paced uploads per second")
    args = parser.parse_args()

    from infra import stack as stack_mod
    from models.samples import sample_photos

    photos = list(sample_photos().items())
    with tempfile.TemporaryDirectory() as tmp:
        stack = stack_mod.start(state_dir=Path(tmp) / "stack")
        os.environ.update(stack.env)
        bucket_name = f"bench-{os.getpid()}"
        env = {**os.environ, "BUILDFLOW_ENV": "emulator", "BUCKET_NAME": bucket_name}
        cli = [sys.executable, "-m", "buildflow.cli"]
        run = None
        try:
            subprocess.run(
                [*cli, "plan", "main:app", "--yes"], cwd=REPO, env=env, check=True, capture_output=True
            )
            run = subprocess.Popen(
                [*cli, "run", "main:app", "--log-level", "info"],
                cwd=REPO,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            assert run.stderr is not None
            for line in run.stderr:  # wait for the model to be loaded
                if "ready: setup()" in line:
                    break
            from google.api_core.client_options import ClientOptions
            from google.auth.credentials import AnonymousCredentials
            from google.cloud import bigquery, storage

            bucket = storage.Client(project=stack.project, credentials=AnonymousCredentials()).bucket(
                bucket_name
            )
            bq = bigquery.Client(
                project=stack.project,
                credentials=AnonymousCredentials(),
                client_options=ClientOptions(api_endpoint=stack.bigquery_url),
            )
            table = f"{stack.project}.image_classification.predictions"

            uploaded_at: dict[str, float] = {}

            def upload(prefix: str, n: int, rate: float | None) -> None:
                t0 = time.monotonic()
                for i, (name, data) in zip(range(n), itertools.cycle(photos)):
                    if rate:
                        time.sleep(max(0.0, t0 + i / rate - time.monotonic()))
                    obj = f"{prefix}/{i:04d}_{name}"
                    bucket.blob(obj).upload_from_string(data, content_type="image/jpeg")
                    uploaded_at[obj] = time.time()  # the upload call returned

            def fetch(prefix: str, n: int) -> list[Any]:
                deadline = time.monotonic() + 600
                while time.monotonic() < deadline:
                    rows = list(
                        bq.query(
                            f"SELECT image_name, processed_at FROM `{table}` "
                            f"WHERE STARTS_WITH(image_name, '{prefix}/')"
                        ).result()
                    )
                    if len(rows) >= n:
                        return rows
                    time.sleep(0.5)
                raise SystemExit(f"only {len(rows)} of {n} rows arrived")

            load0 = os.getloadavg()[0]
            upload("burst", args.images, None)
            burst = fetch("burst", args.images)
            first = min(uploaded_at[r["image_name"]] for r in burst)
            span = max(r["processed_at"].timestamp() for r in burst) - first
            upload("paced", args.paced, args.rate)
            paced = fetch("paced", args.paced)
            lat = sorted((r["processed_at"].timestamp() - uploaded_at[r["image_name"]]) * 1000 for r in paced)
            load1 = os.getloadavg()[0]
        finally:
            if run is not None:
                run.send_signal(signal.SIGTERM)
                run.wait(timeout=60)
            subprocess.run([*cli, "destroy", "main:app", "--yes"], cwd=REPO, env=env, capture_output=True)
            stack_mod.stop(Path(tmp) / "stack")

    q = statistics.quantiles(lat, n=100, method="inclusive")
    print(f"| measure ({os.cpu_count()} CPUs, emulator stack) | value |\n|---|---|")
    print(f"| burst: {args.images} uploads -> rows | {args.images / span:.1f} images/s ({span:.1f} s) |")
    print(
        f"| paced: {args.paced} uploads at {args.rate}/s, upload-to-row p50 / p95 "
        f"| {q[49]:.0f} / {q[94]:.0f} ms |"
    )
    print(f"| 1-min load average before / after | {load0:.2f} / {load1:.2f} |")


if __name__ == "__main__":
    main()
