"""The Ray runtime beyond the semantics both runtimes share (tests/unit/test_runtime.py runs
those on both): replicas sharing the work, a replica killed mid-run, autoscaling from the
backlog, draining on a stop, the app end to end on the embedded default, and a two-node
cluster started with ``ray start``.

Replicas run in other processes, so what they saw is read back from files or from the
run summary, never from a closure.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import buildflow
from buildflow.io import BigQueryTable, GCSFileEvent, GCSFileStream
from buildflow.runtime.base import RunOptions
from buildflow.testing import gcs_file_event, run_processor

pytest.importorskip("ray")

REPO = Path(__file__).resolve().parents[2]


@dataclasses.dataclass
class Row:
    name: str
    pid: int


class Base(buildflow.Processor):
    _abstract_processor = True
    max_batch_size = 4
    max_batch_latency_ms = 0
    num_cpus = 0.5

    def source(self) -> GCSFileStream:
        return GCSFileStream(bucket_name="photos")

    def sink(self) -> BigQueryTable:
        return BigQueryTable(table_id="ds.rows")

    def setup(self) -> None:
        self.metrics.increment("model_loads")


def events(n: int) -> list[GCSFileEvent]:
    return [gcs_file_event(f"f{i:03d}.jpg", b"x") for i in range(n)]


class Slow(Base):
    num_replicas = 2

    def process(self, event: GCSFileEvent) -> Row:
        time.sleep(0.02)
        return Row(event.name, os.getpid())


def test_two_replicas_share_the_work_each_loading_its_model_once(ray_runtime: Any) -> None:
    result = run_processor(Slow(), events(60), runtime=ray_runtime)
    assert sorted(r["name"] for r in result.rows) == [e.name for e in events(60)]
    assert len({r["pid"] for r in result.rows}) == 2  # two processes did the work
    (stats,) = result.summary.processors
    assert stats.replicas_started == 2 and stats.replicas_died == 0
    assert [r["model_loads"] for r in stats.per_replica] == [1, 1]
    assert all(r["events"] > 0 for r in stats.per_replica)
    assert stats.setup_calls == 2 and stats.metrics["model_loads"] == 2


@dataclasses.dataclass
class Dies(Base):
    """Replica process exits (as a crashed node would) at its 10th event, once in the run."""

    marker: str = ""
    num_replicas = 2

    def __post_init__(self) -> None:
        self.seen = 0

    def process(self, event: GCSFileEvent) -> Row:
        self.seen += 1
        if self.seen == 10:
            try:
                fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                pass
            else:
                os.close(fd)
                os._exit(1)
        time.sleep(0.01)
        return Row(event.name, os.getpid())


def test_a_replica_killed_mid_run_is_replaced_and_loses_nothing(ray_runtime: Any, tmp_path: Path) -> None:
    result = run_processor(Dies(marker=str(tmp_path / "died")), events(80), runtime=ray_runtime)
    assert (tmp_path / "died").exists()
    # every event has its row, exactly once (the sink is idempotent on event id), and
    # nothing was dead-lettered: the dead replica's events were redelivered
    assert sorted(r["name"] for r in result.rows) == [e.name for e in events(80)]
    assert result.dead_letters == []
    (stats,) = result.summary.processors
    assert stats.replicas_died == 1 and stats.replicas_started == 3
    assert [r["state"] for r in stats.per_replica].count("died") == 1
    # the replacement loaded its own model (the dead one may have died before it was polled)
    assert [r["model_loads"] for r in stats.per_replica if r["state"] == "finished"] == [1, 1]


class Scales(Base):
    min_replicas = 1
    max_replicas = 2

    def process(self, event: GCSFileEvent) -> Row:
        time.sleep(0.05)
        return Row(event.name, os.getpid())


def test_backlog_adds_a_replica_up_to_max(ray_session: Any) -> None:
    from buildflow.runtime.ray_runtime import Autoscaling, RayRuntime

    runtime = RayRuntime(autoscaling=Autoscaling(interval_s=0.3, scale_up_drain_s=1.0, cooldown_s=0.5))
    result = run_processor(Scales(), events(120), runtime=runtime)
    assert len(result.rows) == 120
    (stats,) = result.summary.processors
    assert stats.replicas_started == 2  # grew once, and never beyond max_replicas
    assert len({r["pid"] for r in result.rows}) == 2


class Big(Scales):
    max_replicas = 3
    num_cpus = 1.5  # the test instance has 4 CPUs: 2 replicas fit with 0.5 kept free, 3 do not


def test_autoscaling_keeps_cpus_free_for_the_rest_of_the_cluster(ray_session: Any) -> None:
    from buildflow.runtime.ray_runtime import Autoscaling, RayRuntime

    runtime = RayRuntime(autoscaling=Autoscaling(interval_s=0.3, scale_up_drain_s=0.5, cooldown_s=0.3))
    result = run_processor(Big(), events(150), runtime=runtime)
    assert len(result.rows) == 150
    assert result.summary.processors[0].replicas_started == 2  # a third would leave < 0.5 CPU


class Idle(Base):
    num_replicas = 2
    min_replicas = 1
    max_replicas = 2

    def process(self, event: GCSFileEvent) -> Row:
        return Row(event.name, os.getpid())


def test_no_backlog_for_a_while_stops_a_replica_down_to_min(
    ray_session: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from buildflow.runtime.ray_runtime import Autoscaling, RayRuntime

    runtime = RayRuntime(autoscaling=Autoscaling(interval_s=0.2, scale_down_idle_s=1.0, cooldown_s=0.5))
    caplog.set_level("INFO", logger="buildflow.runtime.ray_runtime")

    def stop_when_scaled_down() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(
            "stopping replica" in r.message for r in caplog.records
        ):
            time.sleep(0.1)
        time.sleep(0.5)
        runtime.request_stop()

    watcher = threading.Thread(target=stop_when_scaled_down)
    watcher.start()
    result = run_processor(Idle(), events(20), runtime=runtime, options=RunOptions(handle_signals=False))
    watcher.join()
    assert len(result.rows) == 20
    stopped = [r.message for r in caplog.records if "stopping replica" in r.message]
    assert len(stopped) == 1  # down to min_replicas (1), not below
    assert result.summary.processors[0].teardown_calls == 2  # the stopped one drained too


@dataclasses.dataclass
class Forever(Base):
    """Each replica touches ``<started>/<pid>`` at its first event."""

    started: str = ""
    num_replicas = 2

    def process(self, event: GCSFileEvent) -> Row:
        Path(self.started, str(os.getpid())).touch()
        time.sleep(0.02)
        return Row(event.name, os.getpid())


def test_a_stop_drains_every_replica_and_nothing_hangs(ray_runtime: Any, tmp_path: Path) -> None:
    """No until-idle: the run goes on until asked to stop (once both replicas are processing);
    every event pulled by then is written and acked (rows == events), and both replicas
    report back."""
    asked: list[float] = []

    def stop_once_both_replicas_process() -> None:
        deadline = time.monotonic() + 120  # replicas start slowly on a loaded machine
        while len(list(tmp_path.iterdir())) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        asked.append(time.monotonic())
        ray_runtime.request_stop()

    stopper = threading.Thread(target=stop_once_both_replicas_process, daemon=True)
    stopper.start()
    result = run_processor(
        Forever(started=str(tmp_path)),
        events(2000),
        runtime=ray_runtime,
        options=RunOptions(handle_signals=False, drain_timeout_s=20),
    )
    stopper.join()
    assert len(list(tmp_path.iterdir())) == 2  # both replicas were processing when asked
    assert time.monotonic() - asked[0] < 30  # the drain ends well within its deadline
    summary = result.summary
    assert summary.stop_reason == "signal"
    assert 0 < summary.rows == summary.events < 2000
    assert len(result.rows) == summary.rows
    assert summary.processors[0].teardown_calls == 2


# -- the app, end to end, on the embedded default ---------------------------------------------
def _cli(
    *args: str, env: dict[str, str], cwd: Path = REPO, timeout: int = 600
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "buildflow.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _photos(bucket: Path, n: int) -> list[str]:
    from benchmarks.images import distinct_jpegs

    names = []
    for name, data in distinct_jpegs(n, seed=5):
        (bucket / name).write_bytes(data)
        names.append(name)
    (bucket / "broken.jpg").write_bytes(b"not a jpeg at all")
    return names


def _app_copy(tmp_path: Path) -> Path:
    """The app (main.py, processors, schemas, models) in a folder of its own, so the run
    uploads that folder, not the repository, as the job's working directory."""
    app = tmp_path / "app"
    app.mkdir()
    shutil.copy(REPO / "main.py", app / "main.py")
    for pkg in ("processors", "schemas", "models"):
        shutil.copytree(REPO / pkg, app / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    return app


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("BUILDFLOW_ENV", "RAY_ADDRESS")}
    env.update(COLUMNS="200", OMP_WAIT_POLICY="PASSIVE", INFERENCE_THREADS="1", DECODE_THREADS="1")
    return env


def _check_run(
    app: Path, state: Path, names: list[str], summary_path: Path, env: dict[str, str]
) -> dict[str, Any]:
    s = json.loads(summary_path.read_text())
    (p,) = s["processors"]
    q = _cli(
        "query",
        "main:app",
        "SELECT image_name FROM image_classification.predictions ORDER BY 1",
        "--format",
        "json",
        "--state-dir",
        str(state),
        env=env,
        cwd=app,
    )
    assert q.returncode == 0, q.stderr
    assert [r["image_name"] for r in json.loads(q.stdout)] == sorted(names)
    assert p["rows"] == len(names) and p["dead_letters"] == 1  # broken.jpg, with its reason
    return dict(p)


@pytest.mark.slow
def test_the_app_on_ray_local_end_to_end_two_replicas(tmp_path: Path) -> None:
    app, state, env = _app_copy(tmp_path), tmp_path / "state", _env()
    assert _cli("plan", "main:app", "--yes", "--state-dir", str(state), env=env, cwd=app).returncode == 0
    names = _photos(state / "buckets" / "buildflow-images", 24)
    summary = tmp_path / "summary.json"
    run = _cli(
        "run",
        "main:app",
        "--runtime",
        "ray",
        "--replicas",
        "2",
        "--until-idle",
        "--state-dir",
        str(state),
        "--summary-json",
        str(summary),
        env=env,
        cwd=app,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    p = _check_run(app, state, names, summary, env)
    assert p["replicas_started"] == 2
    assert sorted(int(r["model_loads"]) for r in p["per_replica"]) == [1, 1]
    assert "replicas" in run.stdout  # the per-replica table


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_a_two_node_ray_start_cluster_runs_the_app(tmp_path: Path) -> None:
    """A head and a worker started with `ray start`, each with its own temporary folder;
    the app's folder reaches the workers only as the job's uploaded working directory.
    One CPU per node and one per replica: the two replicas land on different nodes."""
    ray_bin = Path(sys.executable).with_name("ray")
    port = _free_port()
    head_tmp, worker_tmp = Path(f"/tmp/bf-ray-head-{port}"), Path(f"/tmp/bf-ray-worker-{port}")
    # token authentication (Ray's default for local clusters since 2.59), one token for
    # every node and the driver, as a real cluster would be set up
    env = {**_env(), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    base = ["--node-ip-address", "127.0.0.1", "--disable-usage-stats", "--num-cpus", "1"]
    started: list[Path] = []
    try:
        head = subprocess.run(
            [str(ray_bin), "start", "--head", "--port", str(port), "--temp-dir", str(head_tmp), *base,
             "--include-dashboard", "false"],
            env=env, capture_output=True, text=True, timeout=180,
        )  # fmt: skip
        assert head.returncode == 0, head.stderr[-3000:]
        started.append(head_tmp)
        worker = subprocess.run(
            [str(ray_bin), "start", "--address", f"127.0.0.1:{port}", "--temp-dir", str(worker_tmp), *base],
            env=env, capture_output=True, text=True, timeout=180,
        )  # fmt: skip
        assert worker.returncode == 0, worker.stderr[-3000:]
        started.append(worker_tmp)

        app, state = _app_copy(tmp_path), tmp_path / "state"
        assert _cli("plan", "main:app", "--yes", "--state-dir", str(state), env=env, cwd=app).returncode == 0
        names = _photos(state / "buckets" / "buildflow-images", 48)
        summary = tmp_path / "summary.json"
        run = _cli(
            "run", "main:app", "--runtime", "ray", "--address", f"127.0.0.1:{port}", "--replicas", "2",
            "--until-idle", "--state-dir", str(state), "--summary-json", str(summary),
            env=env, cwd=app,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr[-4000:]
        p = _check_run(app, state, names, summary, env)
        assert sorted(int(r["model_loads"]) for r in p["per_replica"]) == [1, 1]
        # one replica on each node (one CPU each), both classified images: the fair start
        # hands nothing out until both have loaded their model
        assert len({r["node"] for r in p["per_replica"]}) == 2
        assert all(r["events"] > 0 for r in p["per_replica"])
        # each node wrote its own logs under its own temporary folder
        assert list(head_tmp.glob("session_*/logs")) and list(worker_tmp.glob("session_*/logs"))
    finally:
        # `ray stop` would stop every Ray process on the machine: stop only this cluster's
        for tmp in reversed(started):
            _kill_processes_mentioning(str(tmp))
        for tmp in (head_tmp, worker_tmp):
            shutil.rmtree(tmp, ignore_errors=True)


def _kill_processes_mentioning(text: str) -> None:
    """SIGTERM, then SIGKILL after 10 s, every process whose command line contains ``text``
    (a node's temporary folder: its raylet, GCS, workers and helpers all name it)."""

    def pids() -> list[int]:
        out = []
        for d in Path("/proc").iterdir():
            if d.name.isdigit() and int(d.name) != os.getpid():
                try:
                    if text in d.joinpath("cmdline").read_bytes().replace(b"\0", b" ").decode(
                        errors="replace"
                    ):
                        out.append(int(d.name))
                except OSError:
                    continue
        return out

    for pid in pids():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while pids() and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in pids():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_ray_options_without_the_ray_runtime_fail_clearly(tmp_path: Path) -> None:
    env = _env()
    proc = _cli("run", "main:app", "--replicas", "2", "--state-dir", str(tmp_path / "state"), env=env)
    assert proc.returncode == 1
    assert "--address and --replicas need --runtime ray" in proc.stderr
    proc = _cli("run", "main:app", "--runtime", "spark", "--state-dir", str(tmp_path / "state"), env=env)
    assert proc.returncode == 1 and "unknown runtime 'spark'" in proc.stderr


def test_prometheus_metrics_are_summed_over_replicas(ray_session: Any) -> None:
    """``--metrics-port`` on Ray: the exporter, fed by the driver's progress callback,
    serves each processor's counts summed over its replicas."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    from buildflow.prometheus import MetricsExporter
    from buildflow.runtime.ray_runtime import RayRuntime

    exporter = MetricsExporter(["Slow"])
    seen_replicas: list[int | None] = []

    class Exported(RayRuntime):
        def run(self, processors: Any, options: RunOptions, on_progress: Any = None) -> Any:
            def feed(stats: Any, elapsed: float) -> None:
                seen_replicas.append(stats[0].replicas)
                exporter.update(stats, elapsed)

            return super().run(processors, dataclasses.replace(options, progress_interval_s=0.2), feed)

    url = exporter.start("127.0.0.1", 0)
    try:
        result = run_processor(Slow(), events(40), runtime=Exported())
        text = httpx.get(url, timeout=5).text
    finally:
        exporter.stop()
    got = {
        (s.name, s.labels.get("le")): s.value for f in text_string_to_metric_families(text) for s in f.samples
    }
    (stats,) = result.summary.processors
    assert got[("buildflow_events_total", None)] == stats.events == 40
    assert got[("buildflow_rows_total", None)] == len(result.rows) == 40
    assert got[("buildflow_model_loads_total", None)] == 2  # one per replica, added up
    assert got[("buildflow_event_latency_seconds_count", None)] == 40
    assert got[("buildflow_batch_seconds_count", None)] == stats.batches
    assert all(r["events"] > 0 for r in stats.per_replica) and len(stats.per_replica) == 2
    assert 2 in seen_replicas  # the replicas gauge while both ran
    assert got[("buildflow_replicas", None)] == 0  # and after the run
