"""What ``ImageClassificationProcessor.setup()`` costs with a warm model cache: wall time,
the process's peak RSS, and whether torch / torchvision were imported.

Each repeat is a fresh ``python`` process (so imports are paid as on a worker start) that
imports the processor, calls ``setup()`` with ``main.py``'s defaults (backend ``auto``,
fp32), and reports; a first, untimed process warms the cache (export, agreement verdicts,
the backend speed measurement). The cache folder is the usual one
(``BUILDFLOW_CACHE_DIR``, default ``~/.cache/buildflow``), or ``--cache DIR``.

    .venv/bin/python -m benchmarks.setup_cost [--repeats 3] [--cache DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = """
import json, sys, time
from pathlib import Path
t0 = time.perf_counter()
from processors import ImageClassificationProcessor
p = ImageClassificationProcessor(bucket_name="b", table_id="p.d.t")
p.__dict__["_buildflow_metrics"] = __import__("buildflow.metrics", fromlist=["Metrics"]).Metrics()
p.setup()
setup_s = time.perf_counter() - t0
status = Path("/proc/self/status").read_text().splitlines()
hwm = next(int(line.split()[1]) / 1024 for line in status if line.startswith("VmHWM:"))
model = p.classifier.model
print(json.dumps({"setup_s": setup_s, "peak_rss_mb": hwm, "backend": model.backend,
                  "precision": getattr(model, "precision", "fp32"),
                  "torch_imported": "torch" in sys.modules,
                  "torchvision_imported": "torchvision" in sys.modules}))
p.teardown()
"""


def one(env: dict[str, str]) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=True,
    )
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cache", type=Path, default=None, help="model cache folder (default: the usual one)")
    args = ap.parse_args(argv)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if args.cache is not None:
        env["BUILDFLOW_CACHE_DIR"] = str(args.cache)
    one(env)  # warms the cache
    runs = [one(env) for _ in range(args.repeats)]
    setup = [float(r["setup_s"]) for r in runs]  # type: ignore[arg-type]
    rss = [float(r["peak_rss_mb"]) for r in runs]  # type: ignore[arg-type]
    print(json.dumps({"runs": runs, "load": os.getloadavg()[0]}, indent=1))
    first = runs[0]
    print(
        f"setup() with a warm cache: {statistics.median(setup):.2f} s "
        f"(range {min(setup):.2f}-{max(setup):.2f}), peak RSS {statistics.median(rss):.0f} MB, "
        f"backend {first['backend']} {first['precision']}, torch imported: {first['torch_imported']}, "
        f"torchvision imported: {first['torchvision_imported']}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
