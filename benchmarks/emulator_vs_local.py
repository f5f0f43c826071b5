"""The app end to end in ``emulator`` (with and without 50 ms added to every GCS round trip)
as a ratio to ``local``, on the same photos, in the same run.

Each round runs, back to back on the same N distinct real JPEGs (:mod:`benchmarks.images`):

* ``local``: the photos in the local bucket, ``buildflow run main:app --until-idle`` into
  the DuckDB table (as :func:`benchmarks.suite.ours_throughput`);
* ``emulator``: the local stack (Pub/Sub, GCS and BigQuery servers on 127.0.0.1), the photos
  uploaded to a fresh bucket (so N notifications wait in Pub/Sub), then the same run
  command with ``--env emulator``: notification pull, object download, decode, inference,
  BigQuery insert, ack;
* ``emulator+50ms``: the same, with the run's ``STORAGE_EMULATOR_HOST`` pointing at a
  :class:`benchmarks.latency_proxy.LatencyProxy` that adds 50 ms per round trip in front of
  the GCS server (real Cloud Storage first-byte latency is of that order), and the
  downloads that overlapped at the proxy.

Throughput is the run summary's ``busy_events_per_s`` (run start after setup to the last
sink write). Each run's summary also says where the time went (``stage_s``: pulls that
returned events, ``process_batch``, sink writes, acks; they overlap) and what the payload
read-ahead did. Ratios are per round, the median round reported.

    .venv/bin/python -m benchmarks.emulator_vs_local --images 200 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

from benchmarks.latency_proxy import LatencyProxy
from benchmarks.suite import _app_env, _cli, ours_throughput

DOWNLOAD = b"GET /download/"


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a live process has used so far (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu_s() -> float:
    """CPU seconds of this process's finished children (the runner of each run)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def timed(run: Any, stack: Any) -> dict[str, Any]:
    """``run()``, with the CPU seconds its runner and each stack server used meanwhile."""
    servers = {name: cpu_s(pid) for name, pid in stack.pids.items()}
    runner0, own0 = children_cpu_s(), time.process_time()
    out: dict[str, Any] = run()
    out["runner_cpu_s"] = children_cpu_s() - runner0  # includes the plan command's
    out["bench_process_cpu_s"] = time.process_time() - own0  # uploads, the proxy
    out["stack_cpu_s"] = {name: round(cpu_s(pid) - servers[name], 2) for name, pid in stack.pids.items()}
    return out


def emulator_run(
    images: list[tuple[str, bytes]], stack: Any, tag: str, proxy: LatencyProxy | None
) -> dict[str, Any]:
    """Upload ``images`` to a fresh bucket of the stack and run the app until idle."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    bucket_name = f"bench-{tag}-{os.getpid()}-{int(time.time())}"
    env = {**_app_env("efficientnet_lite0", None), **stack.env, "BUCKET_NAME": bucket_name}
    env["BUILDFLOW_ENV"] = "emulator"
    env["BQ_DATASET"] = f"bench_{tag.replace('-', '_')}_{os.getpid()}_{int(time.time())}"
    _cli("plan", "main:app", "--yes", env=env)
    bucket = storage.Client(project=stack.project, credentials=AnonymousCredentials()).bucket(bucket_name)
    for name, data in images:
        bucket.blob(name).upload_from_string(data, content_type="image/jpeg")
    if proxy is not None:
        env["STORAGE_EMULATOR_HOST"] = proxy.url
        proxy.reset_counts()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            summary_path = Path(tmp) / "summary.json"
            _cli("run", "main:app", "--until-idle", "--summary-json", str(summary_path), env=env)
            s = json.loads(summary_path.read_text())
    finally:
        # the next round's servers start clean: an earlier round's subscription, bucket
        # and tables otherwise stay in the servers' memory (the Pub/Sub server's CPU grew
        # from round to round, up to 2.5 s per run, taken from the cores the run uses)
        env["STORAGE_EMULATOR_HOST"] = stack.env["STORAGE_EMULATOR_HOST"]
        _cli("destroy", "main:app", "--yes", "--force", env=env)
    p = s["processors"][0]
    out = {
        "images": s["events"],
        "rows": s["rows"],
        "images_per_s": s["busy_events_per_s"],
        "batches": p["batches"],
        "stage_s": p.get("stage_s"),
        "read_ahead": p.get("read_ahead"),
        "setup_s": p["setup_s"],
    }
    if proxy is not None:
        out["proxy_peak_downloads_in_flight"] = proxy.peak_in_flight_of(DOWNLOAD)
    if s["rows"] != len(images):
        raise SystemExit(f"{tag}: {s['rows']} rows for {len(images)} uploads")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--rtt-ms", type=float, default=50.0)
    ap.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    from benchmarks.images import distinct_jpegs
    from infra import stack as stack_mod

    images = distinct_jpegs(args.images, seed=3)
    results: dict[str, Any] = {"images": args.images, "load_before": os.getloadavg()[0], "rounds": []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        stack = stack_mod.start(state_dir=work / "stack")
        os.environ.update(stack.env)  # this process's uploads go to the stack's GCS
        try:
            with LatencyProxy("127.0.0.1", stack.ports["gcs"], rtt_s=args.rtt_ms / 1000) as proxy:
                for r in range(args.rounds):
                    rnd = {
                        "local": timed(
                            partial(ours_throughput, images, work, "efficientnet_lite0", None), stack
                        ),
                        "emulator": timed(partial(emulator_run, images, stack, f"e{r}", None), stack),
                        "emulator_proxy": timed(partial(emulator_run, images, stack, f"p{r}", proxy), stack),
                    }
                    base = rnd["local"]["images_per_s"]
                    rnd["ratio_emulator"] = rnd["emulator"]["images_per_s"] / base
                    rnd["ratio_emulator_proxy"] = rnd["emulator_proxy"]["images_per_s"] / base
                    results["rounds"].append(rnd)
                    print(json.dumps(rnd, default=str), flush=True)
        finally:
            stack_mod.stop(work / "stack")
    results["load_after"] = os.getloadavg()[0]
    rounds = results["rounds"]
    for key in ("ratio_emulator", "ratio_emulator_proxy"):
        results[key] = statistics.median([r[key] for r in rounds])
    print(f"| {args.images} photos, {os.cpu_count()} CPUs | img/s (per round) | / local (median) |")
    print("|---|---|---:|")
    for what, key in (
        ("local", None),
        ("emulator", "ratio_emulator"),
        ("emulator + 50 ms GCS", "ratio_emulator_proxy"),
    ):
        col = {"local": "local", "emulator": "emulator", "emulator + 50 ms GCS": "emulator_proxy"}[what]
        rates = ", ".join(f"{r[col]['images_per_s']:.1f}" for r in rounds)
        ratio = f"{results[key]:.2f}" if key else "1"
        print(f"| {what} | {rates} | {ratio} |")
    print(f"1-min load average before / after: {results['load_before']:.2f} / {results['load_after']:.2f}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
