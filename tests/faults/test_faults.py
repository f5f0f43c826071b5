"""Fault tests: the real app (``tests/faults/fault_app.py``: the image classifier with a
chosen source and sink) run by the real CLI in a subprocess against real local servers, while
the test kills the runner, stops the sink's server, or cuts the link to the broker.

Each test checks that no event is lost and none is written twice, and appends its figures
(events, rows, duplicates, lost, reprocessed, peak RSS...) as one JSON line to
``.buildflow/reports/faults.jsonl`` (or ``$BUILDFLOW_FAULT_REPORT``); the same line is printed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from buildflow.runtime import RunOptions
from models.samples import sample_photos
from tests.faults.proxy import TcpProxy

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "buildflow.cli"]
APP = "tests.faults.fault_app:app"
TABLE = "faults.predictions"
BATCH = 32  # ImageClassificationProcessor.max_batch_size
REPORT = Path(os.environ.get("BUILDFLOW_FAULT_REPORT", REPO / ".buildflow" / "reports" / "faults.jsonl"))


def report(test: str, **figures: Any) -> None:
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"test": test, **figures}, default=str)
    with REPORT.open("a", encoding="utf-8") as f:
        f.write(line + "\n")
    print(line)


def wait_until(pred: Callable[[], bool], timeout_s: float, what: str, runner: Runner | None = None) -> None:
    """Bounded poll of ``pred``; fails naming ``what`` (with the runner's log if it died)."""
    deadline = time.monotonic() + timeout_s
    while not pred():
        if runner is not None and not runner.alive:
            raise AssertionError(
                f"the runner exited ({runner.proc.returncode}) before {what}:\n{runner.log()}"
            )
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.1)


@dataclasses.dataclass
class App:
    """The fault app with its own state dir, process log and environment."""

    tmp: Path
    env: dict[str, str]

    @property
    def state(self) -> Path:
        return self.tmp / "state"

    @property
    def process_log(self) -> Path:
        return self.tmp / "processed.log"

    def cli(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        state = ("--state-dir", str(self.state)) if args[0] in ("plan", "run", "query", "destroy") else ()
        proc = subprocess.run(
            [*CLI, *args, *state],
            cwd=REPO,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            input="",
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"buildflow {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
            )
        return proc

    def query(self, sql: str) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = json.loads(self.cli("query", APP, sql, "--format", "json").stdout)
        return rows

    def processed(self) -> list[str]:
        """Event ids in the order the processor saw them (repeats = reprocessing)."""
        try:
            return self.process_log.read_text(encoding="utf-8").split()
        except FileNotFoundError:
            return []

    def acked(self) -> int:
        """Events the local bucket's subscription has acked (its SQLite ack store)."""
        n = 0
        for db in (self.state / "subscriptions").glob("*.sqlite3"):
            try:
                with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
                    n += int(con.execute("SELECT count(*) FROM acked").fetchone()[0])
            except sqlite3.Error:
                pass
        return n

    def bucket(self) -> Path:
        return self.state / "buckets" / self.env["FAULT_BUCKET"]

    def spawn(self, *args: str) -> Runner:
        return Runner(self, args)


class Runner:
    """``buildflow run`` of the fault app in a subprocess, its RSS sampled every 100 ms."""

    def __init__(self, app: App, args: tuple[str, ...], target: str = APP) -> None:
        self.summary_path = app.tmp / f"summary-{uuid.uuid4().hex[:6]}.json"
        self.log_path = app.tmp / f"run-{uuid.uuid4().hex[:6]}.log"
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [
                *CLI,
                "run",
                target,
                "--state-dir",
                str(app.state),
                "--summary-json",
                str(self.summary_path),
                *args,
            ],
            cwd=REPO,
            env=app.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.started = time.monotonic()
        self.rss: list[tuple[float, float]] = []  # (monotonic s, MB)
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()

    def _sample(self) -> None:
        status = Path(f"/proc/{self.proc.pid}/status")
        while self.proc.poll() is None:
            try:
                for line in status.read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        self.rss.append((time.monotonic(), int(line.split()[1]) / 1024))
            except OSError:
                return
            time.sleep(0.1)

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def rss_between(self, t0: float, t1: float) -> list[float]:
        return [mb for t, mb in self.rss if t0 <= t <= t1]

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text()[-6000:]

    def wait(self, timeout_s: float = 120) -> int:
        try:
            rc = self.proc.wait(timeout=timeout_s)
        finally:
            self._log.close()
        return rc

    def kill(self) -> None:
        if self.alive:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self._log.close()

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = json.loads(self.summary_path.read_text())
        return out


def make_app(tmp_path: Path, **env: str) -> App:
    base = {k: v for k, v in os.environ.items() if k not in ("BUILDFLOW_ENV", "FAULT_SOURCE", "FAULT_SINK")}
    full = {
        **base,
        "COLUMNS": "200",
        "BUILDFLOW_LOG_LEVEL": "info",
        "FAULT_BUCKET": f"fault-{uuid.uuid4().hex[:8]}",
        "FAULT_PROCESS_LOG": str(tmp_path / "processed.log"),
        **env,
    }
    return App(tmp_path, full)


def photos(n: int, tag: str = "img") -> dict[str, bytes]:
    """``n`` uniquely named copies of the packaged real photos."""
    real = list(sample_photos().values())
    return {f"{tag}_{i:05d}.jpg": real[i % len(real)] for i in range(n)}


def write_into(bucket: Path, files: dict[str, bytes]) -> None:
    bucket.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (bucket / name).write_bytes(data)


def runner_cleanup(runners: list[Runner]) -> None:
    for r in runners:
        r.kill()


@pytest.fixture
def runners() -> Iterator[list[Runner]]:
    """Runners a test started; killed at the end whatever happened."""
    started: list[Runner] = []
    yield started
    runner_cleanup(started)


# -- kill -9 -------------------------------------------------------------------------------
def test_kill_9_mid_stream_then_restart_gives_exactly_one_row_per_event(
    tmp_path: Path, runners: list[Runner]
) -> None:
    app = make_app(tmp_path)
    app.cli("plan", APP, "--yes")
    n = 160
    write_into(app.bucket(), photos(n))

    first = app.spawn()
    runners.append(first)
    wait_until(lambda: app.acked() >= 2 * BATCH, 180, "two batches acked", first)
    first.proc.send_signal(signal.SIGKILL)
    first.wait(30)
    acked_at_kill = app.acked()
    processed_at_kill = len(app.processed())
    rows_at_kill = app.query(f"SELECT count(*) AS n FROM {TABLE}")[0]["n"]
    assert acked_at_kill < n, "the kill came after the end: nothing to prove"

    second = app.spawn("--until-idle")
    runners.append(second)
    assert second.wait(300) == 0, second.log()
    summary = second.summary()
    stats = app.query(
        f"SELECT count(*) AS rows, count(DISTINCT _event_id) AS events, "
        f"count(DISTINCT image_name) AS names FROM {TABLE}"
    )[0]
    processed = app.processed()
    report(
        "kill -9 mid-stream, restart (local bucket -> DuckDB)",
        events=n,
        rows=stats["rows"],
        duplicates=stats["rows"] - stats["events"],
        lost=n - stats["names"],
        acked_at_kill=acked_at_kill,
        written_at_kill=rows_at_kill,
        processed_at_kill=processed_at_kill,
        reprocessed=len(processed) - len(set(processed)),
        restart_events=summary["events"],
        peak_rss_mb=round(summary["peak_rss_mb"]),
    )
    assert stats["rows"] == stats["events"] == stats["names"] == n
    assert summary["events"] == n - acked_at_kill, "events acked before the kill were delivered again"
    assert len(set(processed)) == n


# -- the sink's server down for 10 s --------------------------------------------------------
def _pg_count(dsn: str, table: str) -> tuple[int, int]:
    import psycopg

    try:
        with psycopg.connect(dsn, connect_timeout=2) as con:
            row = con.execute(f'SELECT count(*), count(DISTINCT "_event_id") FROM "{table}"').fetchone()
            assert row is not None
            return int(row[0]), int(row[1])
    except psycopg.OperationalError:
        return -1, -1


def test_sink_server_down_for_10_s_mid_stream_recovers_by_itself_with_bounded_memory(
    tmp_path: Path, runners: list[Runner], postgres_server: Any
) -> None:
    table = f"fault_{uuid.uuid4().hex[:8]}"  # the server is shared by the session
    app = make_app(tmp_path, FAULT_SINK="postgres", FAULT_PG_DSN=postgres_server.dsn, FAULT_PG_TABLE=table)
    app.cli("plan", APP, "--yes")
    n = 400
    write_into(app.bucket(), photos(n))
    runner = app.spawn()
    runners.append(runner)
    try:
        wait_until(lambda: _pg_count(postgres_server.dsn, table)[0] >= BATCH, 180, "first rows", runner)
        postgres_server.stop()
        t_stop = time.monotonic()
        acked_at_stop, processed_at_stop = app.acked(), len(app.processed())
        time.sleep(10)  # the outage itself, not synchronisation
        t_start = time.monotonic()
        acked_at_start, processed_at_start = app.acked(), len(app.processed())
        assert runner.alive, runner.log()
    finally:
        if not postgres_server.is_running():
            postgres_server.start()
    wait_until(lambda: _pg_count(postgres_server.dsn, table)[0] >= n, 240, "every row", runner)
    t_done = time.monotonic()
    runner.proc.send_signal(signal.SIGTERM)
    assert runner.wait(60) == 0, runner.log()
    summary = runner.summary()
    rows, distinct = _pg_count(postgres_server.dsn, table)
    before = runner.rss_between(t_stop - 2, t_stop)
    during = runner.rss_between(t_stop, t_start)
    processed = app.processed()
    sink_retries = summary["processors"][0]["sink_retries"]
    in_flight_bound = (2 * RunOptions().max_inflight_batches + 1) * BATCH
    report(
        "PostgreSQL stopped 10 s mid-stream (local bucket -> PostgreSQL)",
        events=n,
        rows=rows,
        duplicates=rows - distinct,
        lost=n - distinct,
        sink_retries=sink_retries,
        acked_during_outage=acked_at_start - acked_at_stop,
        processed_during_outage=processed_at_start - processed_at_stop,
        backlog_at_restart=n - processed_at_start,
        rss_before_mb=round(max(before)),
        rss_max_during_mb=round(max(during)),
        recovery_s=round(t_done - t_start, 1),
        reprocessed=len(processed) - len(set(processed)),
        peak_rss_mb=round(summary["peak_rss_mb"]),
    )
    assert rows == distinct == n
    assert sink_retries > 0, "the outage was not seen: nothing was proved"
    assert acked_at_start == acked_at_stop, "events were acked while their rows could not be written"
    # backpressure: only the in-flight batches are read and processed while the sink is down,
    # though hundreds of files wait
    assert processed_at_start - processed_at_stop <= in_flight_bound < n - processed_at_start
    assert max(during) - max(before) < 100, "memory grew during the outage"


def test_drain_deadline_and_second_signal_while_the_sink_is_down(
    tmp_path: Path, runners: list[Runner], postgres_server: Any
) -> None:
    """SIGTERM drains for at most ``--drain-timeout-s``; a second SIGTERM stops at once;
    neither acks an unwritten event, so a later run writes each exactly once."""
    table = f"fault_{uuid.uuid4().hex[:8]}"  # the server is shared by the session
    app = make_app(tmp_path, FAULT_SINK="postgres", FAULT_PG_DSN=postgres_server.dsn, FAULT_PG_TABLE=table)
    app.cli("plan", APP, "--yes")
    n = 150
    write_into(app.bucket(), photos(n))
    figures: dict[str, Any] = {"events": n}
    try:
        for case, args in (
            ("deadline", ("--drain-timeout-s", "3")),
            ("second-signal", ("--drain-timeout-s", "600")),
        ):
            if not postgres_server.is_running():
                postgres_server.start()
            written = _pg_count(postgres_server.dsn, table)[0]
            runner = app.spawn(*args)
            runners.append(runner)
            wait_until(
                lambda w=written: _pg_count(postgres_server.dsn, table)[0] > w,
                180,
                "new rows",
                runner,
            )
            postgres_server.stop()
            done = len(app.processed())
            wait_until(lambda d=done: len(app.processed()) > d, 180, "a batch processed", runner)
            acked = app.acked()
            t0 = time.monotonic()
            runner.proc.send_signal(signal.SIGTERM)
            if case == "second-signal":
                wait_until(lambda r=runner: "draining" in r.log(), 30, "the drain to start", runner)
                t0 = time.monotonic()
                runner.proc.send_signal(signal.SIGTERM)
            rc = runner.wait(60)
            figures[f"{case}_exit_s"] = round(time.monotonic() - t0, 1)
            assert rc == 130, runner.log()  # the CLI's exit status for a hard stop
            summary = runner.summary()
            assert summary["stop_reason"] == "hard-stop", summary
            assert app.acked() == acked, "a stop acked events whose rows were not written"
            limit = 3 + 10 if case == "deadline" else 10  # + teardown (closing the pool)
            assert figures[f"{case}_exit_s"] < limit, runner.log()
    finally:
        if not postgres_server.is_running():
            postgres_server.start()
    last = app.spawn("--until-idle")
    runners.append(last)
    assert last.wait(300) == 0, last.log()
    rows, distinct = _pg_count(postgres_server.dsn, table)
    figures.update(rows=rows, duplicates=rows - distinct, lost=n - distinct)
    report("SIGTERM drain deadline and second signal with PostgreSQL down", **figures)
    assert rows == distinct == n


# -- the broker unreachable for 10 s ----------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def kafka_behind_proxy(tmp_path: Path) -> Iterator[tuple[str, TcpProxy]]:
    """A tansu broker of its own that advertises a proxy's address, so every client
    connection goes through the proxy (and the test can cut them all)."""
    from infra.stack import _installed_paths, _probe_kafka

    broker_port = _free_port()
    with TcpProxy("127.0.0.1", broker_port) as proxy:
        log = (tmp_path / "tansu.log").open("w")
        env = {
            k: v for k, v in os.environ.items() if not k.startswith(("CLUSTER_ID", "LISTENER", "ADVERTISED"))
        }
        proc = subprocess.Popen(
            [
                str(_installed_paths().tansu),
                "broker",
                "--listener-url",
                f"tcp://127.0.0.1:{broker_port}",
                "--advertised-listener-url",
                f"tcp://{proxy.address}",
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    _probe_kafka(proxy.port)
                    break
                except Exception:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise
                    time.sleep(0.2)
            yield proxy.address, proxy
        finally:
            proc.terminate()
            proc.wait(timeout=10)
            log.close()


def test_broker_unreachable_for_10_s_the_consumer_reconnects_and_resumes(
    tmp_path: Path, runners: list[Runner], kafka_behind_proxy: tuple[str, TcpProxy]
) -> None:
    bootstrap, proxy = kafka_behind_proxy
    topic = f"fault-{uuid.uuid4().hex[:8]}"
    app = make_app(tmp_path, FAULT_SOURCE="kafka", FAULT_TOPIC=topic, KAFKA_BOOTSTRAP_SERVERS=bootstrap)
    app.cli("plan", APP, "--yes")
    first, later = photos(120, "a"), photos(60, "b")
    write_into(tmp_path / "first", first)
    write_into(tmp_path / "later", later)
    app.cli("produce", str(tmp_path / "first"), "--kafka", f"{bootstrap}/{topic}")

    runner = app.spawn()
    runners.append(runner)
    wait_until(lambda: len(app.processed()) >= BATCH, 180, "the first batch", runner)
    proxy.cut()
    t_cut = time.monotonic()
    processed_at_cut = len(app.processed())
    time.sleep(10)  # the outage itself
    proxy.restore()
    t_restore = time.monotonic()
    links_before = proxy.connections
    assert runner.alive, runner.log()
    app.cli("produce", str(tmp_path / "later"), "--kafka", f"{bootstrap}/{topic}")
    n = len(first) + len(later)
    wait_until(lambda: len(set(app.processed())) >= n, 240, "every record processed", runner)
    t_done = time.monotonic()
    runner.proc.send_signal(signal.SIGTERM)
    assert runner.wait(60) == 0, runner.log()
    summary = runner.summary()
    stats = app.query(
        f"SELECT count(*) AS rows, count(DISTINCT _event_id) AS events, count(DISTINCT image_name) AS names "
        f"FROM {TABLE}"
    )[0]
    processed = app.processed()
    report(
        "Kafka broker unreachable 10 s mid-stream (Kafka -> DuckDB)",
        events=n,
        rows=stats["rows"],
        duplicates=stats["rows"] - stats["events"],
        lost=n - stats["names"],
        processed_at_cut=processed_at_cut,
        reprocessed=len(processed) - len(set(processed)),
        resume_to_done_s=round(t_done - t_restore, 1),
        outage_s=round(t_restore - t_cut, 1),
        reconnections=proxy.connections - links_before,
        peak_rss_mb=round(summary["peak_rss_mb"]),
    )
    assert stats["rows"] == stats["events"] == stats["names"] == n
    assert proxy.connections > links_before, "the consumer never came back through the proxy"


# -- Pub/Sub unreachable for 10 s --------------------------------------------------------------
def _bq_client(stack: Any) -> Any:
    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import bigquery

    return bigquery.Client(
        project=stack.project,
        credentials=AnonymousCredentials(),
        client_options=ClientOptions(api_endpoint=stack.bigquery_url),
    )


def _upload(stack: Any, bucket: str, files: dict[str, bytes]) -> None:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    client = storage.Client(project=stack.project, credentials=AnonymousCredentials())
    b = client.bucket(bucket)
    for name, data in files.items():
        b.blob(name).upload_from_string(data, content_type="image/jpeg")


def test_pubsub_unreachable_for_10_s_the_subscriber_reconnects_and_resumes(
    tmp_path: Path, runners: list[Runner], stack_env: Any
) -> None:
    local_stack = stack_env  # the Google clients of this process talk to the stack too
    host, port = local_stack.pubsub_host.rsplit(":", 1)
    with TcpProxy(host, int(port)) as proxy:
        app = make_app(tmp_path, **local_stack.env, BUILDFLOW_ENV="emulator")
        app.env["PUBSUB_EMULATOR_HOST"] = proxy.address
        app.cli("plan", APP, "--yes")
        try:
            first, later = photos(100, "a"), photos(60, "b")
            _upload(local_stack, app.env["FAULT_BUCKET"], first)
            runner = app.spawn()
            runners.append(runner)
            wait_until(lambda: len(app.processed()) >= BATCH, 180, "the first batch", runner)
            proxy.cut()
            t_cut = time.monotonic()
            _upload(local_stack, app.env["FAULT_BUCKET"], later)  # published while we are cut off
            time.sleep(max(0.0, 10 - (time.monotonic() - t_cut)))  # the outage itself
            proxy.restore()
            t_restore = time.monotonic()
            links_before = proxy.connections
            assert runner.alive, runner.log()
            n = len(first) + len(later)
            wait_until(lambda: len(set(app.processed())) >= n, 240, "every upload processed", runner)
            t_done = time.monotonic()
            runner.proc.send_signal(signal.SIGTERM)
            assert runner.wait(60) == 0, runner.log()
            summary = runner.summary()
            table = f"{local_stack.project}.{TABLE}"
            result = _bq_client(local_stack).query(
                f"SELECT count(*) AS n, count(DISTINCT image_name) AS names FROM `{table}`"
            )
            row = next(iter(result.result()))
            processed = app.processed()
            report(
                "Pub/Sub unreachable 10 s mid-stream (GCS notifications -> BigQuery emulator)",
                events=n,
                rows=row["n"],
                duplicates=row["n"] - row["names"],
                lost=n - row["names"],
                reprocessed=len(processed) - len(set(processed)),
                resume_to_done_s=round(t_done - t_restore, 1),
                reconnections=proxy.connections - links_before,
                peak_rss_mb=round(summary["peak_rss_mb"]),
            )
            assert row["n"] == row["names"] == n
            assert proxy.connections > links_before, "the subscriber never came back through the proxy"
        finally:
            app.cli("destroy", APP, "--yes", "--force", check=False)


def test_a_processor_slower_than_the_ack_deadline_processes_nothing_twice(
    tmp_path: Path, runners: list[Runner], stack_env: Any
) -> None:
    """Each batch takes longer than the subscription's ack deadline (10 s, Pub/Sub's
    minimum): the runner extends the leases of everything in flight, so Pub/Sub redelivers
    nothing and no event is processed twice."""
    app = make_app(
        tmp_path, **stack_env.env, BUILDFLOW_ENV="emulator", FAULT_ACK_DEADLINE="10", FAULT_SLOW_S="12"
    )
    app.cli("plan", APP, "--yes")
    try:
        n = 48
        _upload(stack_env, app.env["FAULT_BUCKET"], photos(n))
        runner = app.spawn("--until-idle")
        runners.append(runner)
        t0 = time.monotonic()
        assert runner.wait(240) == 0, runner.log()
        summary = runner.summary()
        processed = app.processed()
        report(
            "processor slower than the ack deadline (12 s batches, 10 s deadline; Pub/Sub -> BigQuery)",
            events=n,
            processed=len(processed),
            reprocessed=len(processed) - len(set(processed)),
            batches=summary["processors"][0]["batches"],
            run_s=round(time.monotonic() - t0, 1),
        )
        assert summary["rows"] == n
        assert len(processed) == len(set(processed)) == n, "an event was processed twice"
        assert summary["processors"][0]["batches"] >= 2, (
            "one batch: the second never waited past the deadline"
        )
    finally:
        app.cli("destroy", APP, "--yes", "--force", check=False)


# -- 10,000 events ------------------------------------------------------------------------------
def test_10000_events_give_10000_rows_with_flat_memory(tmp_path: Path, runners: list[Runner]) -> None:
    """The model-free ``digest_app`` over 10,000 files: the framework alone (local bucket,
    micro-batches of 256, DuckDB upserts, acks)."""
    digest = "tests.faults.digest_app:app"
    app = make_app(tmp_path)
    app.cli("plan", digest, "--yes")
    n = 10_000
    bucket = app.bucket()
    bucket.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (bucket / f"f{i:05d}.bin").write_bytes(i.to_bytes(4, "big") * 256)
    runner = Runner(app, ("--until-idle",), target=digest)
    runners.append(runner)
    wait_until(lambda: app.acked() >= n // 5, 300, "the first 2,000 acks", runner)
    t_fifth = time.monotonic()
    assert runner.wait(600) == 0, runner.log()
    summary = runner.summary()
    out = app.cli(
        "query",
        digest,
        "SELECT count(*) AS rows, count(DISTINCT _event_id) AS events, count(DISTINCT sha256) AS digests "
        "FROM faults.digests",
        "--format",
        "json",
    ).stdout
    stats = json.loads(out)[0]
    report(
        "10,000 events (model-free digest app: local bucket -> DuckDB)",
        events=n,
        rows=stats["rows"],
        duplicates=stats["rows"] - stats["events"],
        lost=n - stats["events"],
        events_per_s=round(summary["events_per_s"]),
        first_row_s=round(summary["first_row_s"], 2),
        loop_lag_max_ms=round(summary["loop_lag_max_ms"]),
        rss_at_20pct_mb=round(max(runner.rss_between(0, t_fifth))),
        peak_rss_mb=round(summary["peak_rss_mb"]),
    )
    assert summary["events"] == summary["rows"] == n
    assert stats["rows"] == stats["events"] == stats["digests"] == n
    # the backlog is listed off the event loop, in one pass (it was O(n^2): 15 s of lag)
    assert summary["loop_lag_max_ms"] < 1000
    # flat: the last 8,000 events add (almost) nothing to what the first 2,000 needed
    assert summary["peak_rss_mb"] - max(runner.rss_between(0, t_fifth)) < 50
