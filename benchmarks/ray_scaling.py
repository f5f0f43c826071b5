"""The Ray runtime against the in-process one, on the app and the embedded default (issue 6).

    .venv/bin/python -m benchmarks.ray_scaling --images 400

From one run on this machine, for N distinct real JPEGs already in the local bucket, each
drained by ``buildflow run main:app --until-idle``:

* **in-process**: the reference;
* **ray, 1 replica** and **ray, 2 replicas** (``--runtime ray --replicas k``);

images/s from the run's start to its last row (after set-up, as ``busy_events_per_s``),
launch to first row, Ray's start-up (``ray.init`` of a new local instance, from the run's
log), peak RSS of the job (driver plus replicas), and the scaling efficiency
``ips(2) / (2 * ips(1))``. A replica runs the same pipeline as the in-process runtime; on
a machine with fewer cores than 2 replicas' threads, the efficiency measures contention,
not the framework: the cores are printed beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "buildflow.cli"]


def one_run(images: list[tuple[str, bytes]], work: Path, label: str, extra: list[str]) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k not in ("BUILDFLOW_ENV", "RAY_ADDRESS")}
    env.update(COLUMNS="200", OMP_WAIT_POLICY="PASSIVE")
    state = work / label.replace(" ", "-").replace(",", "")
    plan = [*CLI, "plan", "main:app", "--yes", "--state-dir", str(state)]
    subprocess.run(plan, cwd=REPO, env=env, check=True, capture_output=True)
    bucket = state / "buckets" / "buildflow-images"
    for name, data in images:
        (bucket / name).write_bytes(data)
    summary_path = work / f"{state.name}.json"
    t0 = time.time()
    proc = subprocess.run(
        [*CLI, "run", "main:app", "--until-idle", "--state-dir", str(state)]
        + ["--summary-json", str(summary_path), *extra],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    wall = time.time() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{label}: exited {proc.returncode}\n{proc.stderr[-3000:]}")
    s = json.loads(summary_path.read_text())
    (p,) = s["processors"]
    assert s["rows"] == len(images), (label, s["rows"])
    started = re.search(r"ray: started a local instance in ([0-9.]+) s", proc.stderr)
    return {
        "run": label,
        "images": s["events"],
        "images_per_s": s["busy_events_per_s"],
        "launch_to_first_row_s": p["first_row_at"] - t0,
        "wall_s": wall,
        "ray_start_s": float(started.group(1)) if started else None,
        "peak_rss_mb": s["peak_rss_mb"],
        "replicas": len(p.get("per_replica") or []) or 1,
    }


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def render(rows: list[dict[str, Any]], cpus: int, load: tuple[float, float]) -> str:
    by = {r["run"]: r for r in rows}
    one, two = by.get("ray, 1 replica"), by.get("ray, 2 replicas")
    eff = two["images_per_s"] / (2 * one["images_per_s"]) if one and two else None
    ref = by["in-process"]
    lines = [
        f"ray vs in-process, {cpus} CPUs, load average before {load[0]:.2f}, after {load[1]:.2f}",
        "",
        "| run | img/s | vs in-process | launch to first row s | ray start s | wall s | peak RSS MB (job) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['run']} | {r['images_per_s']:.1f} | {r['images_per_s'] / ref['images_per_s']:.2f} | "
            f"{r['launch_to_first_row_s']:.2f} | {_fmt(r['ray_start_s'])} | "
            f"{r['wall_s']:.1f} | {r['peak_rss_mb']:.0f} |"
        )
    if eff is not None:
        lines += ["", f"scaling efficiency, 2 replicas vs 1: {eff:.2f} (on {cpus} CPUs)"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=400)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out")
    args = ap.parse_args(argv)
    from benchmarks.images import distinct_jpegs

    images = distinct_jpegs(args.images, seed=7)
    before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        rows = [
            one_run(images, work, "in-process", []),
            one_run(images, work, "ray, 1 replica", ["--runtime", "ray", "--replicas", "1"]),
            one_run(images, work, "ray, 2 replicas", ["--runtime", "ray", "--replicas", "2"]),
        ]
    table = render(rows, os.cpu_count() or 0, (before, os.getloadavg()[0]))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ray_scaling.md").write_text(table)
    (args.out / "ray_scaling.json").write_text(json.dumps(rows, indent=2))
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
