"""`buildflow run --until-idle` on N distinct real photos in the local bucket.

Reports, from one run on this machine:
* end-to-end images/s (events / run time, as the run summary measures it after setup),
* wall time of the whole command, and time from process start to the first row,
* peak RSS of the run process (ru_maxrss),
* for scale, the bare ceiling in the same run: decode + preprocess + model at the same
  micro-batch size, in one process with no framework, and the ratio ours / bare.

    .venv/bin/python -m benchmarks.run_until_idle --images 200
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def bare_ceiling(photos: list[bytes], batch: int) -> float:
    """Images/s of decode + preprocess + inference with no framework (same model, batch)."""
    import torch

    from models import decode_image, load_model

    model = load_model("efficientnet_lite0")
    model.classify([decode_image(photos[0])])  # warm-up
    t0 = time.perf_counter()
    for i in range(0, len(photos), batch):
        imgs = [decode_image(p, target_short_side=256) for p in photos[i : i + batch]]
        model.top_k(model.predict_proba(torch.stack([model.preprocess(x) for x in imgs])), 5)
    return len(photos) / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--no-baseline", action="store_true")
    args = parser.parse_args()

    from models.samples import write_samples

    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "state"
        cli = [sys.executable, "-m", "buildflow.cli"]
        subprocess.run(
            [*cli, "plan", "main:app", "--yes", "--state-dir", str(state)],
            cwd=REPO,
            check=True,
            capture_output=True,
        )
        paths = write_samples(state / "buckets" / "buildflow-images", copies=args.images)
        summary_path = Path(tmp) / "summary.json"
        load_before = os.getloadavg()[0]
        launched = time.time()
        t0 = time.monotonic()
        proc = subprocess.run(
            [
                *cli,
                "run",
                "main:app",
                "--until-idle",
                "--state-dir",
                str(state),
                "--summary-json",
                str(summary_path),
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
        )
        wall = time.monotonic() - t0
        if proc.returncode != 0:
            sys.exit(f"run failed:\n{proc.stderr}")
        s = json.loads(summary_path.read_text())
        load_after = os.getloadavg()[0]
        photos = [p.read_bytes() for p in paths]

    # The run's clock starts after setup; process start to first row adds import + model load.
    to_first_row = s["processors"][0]["first_row_at"] - launched
    bare = None if args.no_baseline else bare_ceiling(photos, batch=16)
    rows = [
        ("images", f"{s['events']} ({s['rows']} rows, {s['dead_letters']} dead letters)"),
        ("images/s, end to end (run clock)", f"{s['events_per_s']:.1f}"),
        ("wall time of `buildflow run --until-idle`", f"{wall:.2f} s"),
        ("start (after setup) to first row", f"{s['first_row_s']:.2f} s"),
        ("process start to first row (incl. imports, model load)", f"{to_first_row:.2f} s"),
        ("model loads", str(s["processors"][0]["metrics"].get("model_loads"))),
        ("peak RSS of the run process", f"{s['peak_rss_mb']:.0f} MB"),
        (
            "receive-to-row p50 / p95 (backlog: includes queueing)",
            f"{s['processors'][0]['latency_p50_ms']:.0f} / {s['processors'][0]['latency_p95_ms']:.0f} ms",
        ),
    ]
    if bare is not None:
        rows += [
            ("bare decode+preprocess+model, same batch (16), same run", f"{bare:.1f} images/s"),
            ("ours / bare", f"{s['events_per_s'] / bare:.2f}"),
        ]
    rows.append(("1-min load average before / after", f"{load_before:.2f} / {load_after:.2f}"))
    print(f"| measure ({os.cpu_count()} CPUs) | value |\n|---|---|")
    for k, v in rows:
        print(f"| {k} | {v} |")


if __name__ == "__main__":
    main()
