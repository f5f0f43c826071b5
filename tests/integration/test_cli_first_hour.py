"""A new user's first hour, through the real CLI: errors that say what to do, quickly.

A model-free app (local bucket or the emulator's -> a table) keeps every command to about a
second; each test runs the command the issue reports and checks the one-line answer."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

CLI = [sys.executable, "-m", "buildflow.cli"]
LONG_NAME = "a_rather_long_processor_name_for_80_columns"
APP = f'''
import dataclasses
import os

import buildflow
from buildflow import Node
from buildflow.io import BigQueryTable, GCSFileEvent, GCSFileStream


@dataclasses.dataclass
class Row:
    image_name: str
    size: int


class SizeProcessor(buildflow.Processor):
    name = "{LONG_NAME}"

    def source(self):
        return GCSFileStream(project_id="buildflow-local", bucket_name=os.environ["BUCKET_NAME"],
                             force_destroy=True)

    def sink(self):
        return BigQueryTable(table_id="buildflow-local.tiny.sizes", destroy_protection=False)

    def process(self, event: GCSFileEvent) -> Row:
        return Row(event.metadata.get("objectId", "?"), len(event.blob))


app = Node()
app.add(SizeProcessor())
'''
STACK_VARS = (
    "PUBSUB_EMULATOR_HOST",
    "STORAGE_EMULATOR_HOST",
    "BIGQUERY_EMULATOR_HOST",
    "BUILDFLOW_GCS_EVENTS_TOPIC",
    "KAFKA_BOOTSTRAP_SERVERS",
)


@pytest.fixture
def app(tmp_path: Path) -> Path:
    (tmp_path / "tiny.py").write_text(APP)
    return tmp_path


def clean_env(**extra: str) -> dict[str, str]:
    """A new terminal: none of the stack's variables, no BUILDFLOW_ENV."""
    env = {k: v for k, v in os.environ.items() if k not in STACK_VARS and not k.startswith("BUILDFLOW_")}
    return {
        **env,
        "BUCKET_NAME": f"tiny-{os.getpid()}-{time.monotonic_ns() % 10**9}",
        "COLUMNS": "80",
        **extra,
    }


def cli(cwd: Path, *args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, input=""
    )


def one_line(text: str) -> str:
    return " ".join(text.split())


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_run_main_ap_says_what_the_module_has(app: Path) -> None:
    proc = cli(app, "run", "tiny:ap", env=clean_env())
    assert proc.returncode == 1
    msg = one_line(proc.stderr)
    assert "tiny has no 'ap'" in msg and "'app', a buildflow.Node" in msg and "tiny:app" in msg


def test_query_rejects_an_unknown_format_and_names_the_tables(app: Path) -> None:
    env = clean_env()
    bad = cli(app, "query", "tiny:app", "SELECT 1", "--format", "yaml", env=env)
    assert bad.returncode == 2 and "yaml" in bad.stderr and "csv" in bad.stderr
    assert cli(app, "plan", "tiny:app", "--yes", env=env).returncode == 0
    proc = cli(app, "query", "tiny:app", "SELECT * FROM tiny.size", env=env)
    msg = one_line(proc.stderr)
    assert proc.returncode == 1 and "pg_catalog" not in msg
    assert "tiny.sizes" in msg and "buildflow plan" in msg


def test_a_second_terminal_is_told_the_planned_environment(app: Path, local_stack: Any) -> None:
    planned = clean_env(**local_stack.env, BUILDFLOW_ENV="emulator")
    assert cli(app, "plan", "tiny:app", "--yes", env=planned).returncode == 0
    try:
        # the other terminal: no BUILDFLOW_ENV, none of the stack's variables
        second = {**clean_env(), "BUCKET_NAME": planned["BUCKET_NAME"]}
        t0 = time.monotonic()
        proc = cli(app, "run", "tiny:app", env=second, timeout=30)
        assert time.monotonic() - t0 < 20
        msg = one_line(proc.stderr)
        assert proc.returncode == 1, proc.stderr
        assert "planned in 'emulator'" in msg and "would use 'local'" in msg
        assert 'eval "$(python -m infra.stack env)" && buildflow run tiny:app --env emulator' in msg
        # with --env emulator (and the variables) it is what was planned: no complaint
        q = cli(app, "query", "tiny:app", "SELECT COUNT(*) AS n FROM tiny.sizes", env=planned)
        assert q.returncode == 0, q.stderr
    finally:
        assert cli(app, "destroy", "tiny:app", "--yes", env=planned).returncode == 0
    # destroyed: the record is gone, so the default environment is not refused for it
    after = cli(app, "run", "tiny:app", "--until-idle", env={**second}, timeout=30)
    assert "planned in" not in after.stderr and "buildflow plan" in one_line(after.stderr)


def test_an_explicit_environment_the_app_was_not_planned_in(app: Path) -> None:
    env = clean_env()
    assert cli(app, "plan", "tiny:app", "--yes", env=env).returncode == 0
    proc = cli(app, "run", "tiny:app", "--env", "emulator", env=env)
    msg = one_line(proc.stderr)
    assert proc.returncode == 1 and "planned in 'local'" in msg
    assert "buildflow run tiny:app --env local" in msg and "buildflow plan tiny:app --env emulator" in msg


def test_a_stopped_stack_fails_fast_naming_the_address(app: Path) -> None:
    ports = [closed_port() for _ in range(3)]
    env = clean_env(
        BUILDFLOW_ENV="emulator",
        PUBSUB_EMULATOR_HOST=f"127.0.0.1:{ports[0]}",
        STORAGE_EMULATOR_HOST=f"http://127.0.0.1:{ports[1]}",
        BIGQUERY_EMULATOR_HOST=f"http://127.0.0.1:{ports[2]}",
        BUILDFLOW_GCS_EVENTS_TOPIC="buildflow-gcs-events",
    )
    for command in (["plan", "tiny:app", "--yes"], ["run", "tiny:app"]):
        t0 = time.monotonic()
        proc = cli(app, *command, env=env, timeout=30)
        took = time.monotonic() - t0
        msg = one_line(proc.stderr)
        assert proc.returncode == 1, proc.stderr
        assert took < 15, f"{command[0]} took {took:.1f} s"
        for port in ports:
            assert f"127.0.0.1:{port}" in msg
        assert "python -m infra.stack start" in msg and "Traceback" not in proc.stderr


def test_produce_to_no_broker_fails_fast(app: Path) -> None:
    (app / "photos").mkdir()
    (app / "photos" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    port = closed_port()
    t0 = time.monotonic()
    proc = cli(app, "produce", "photos", "--kafka", f"127.0.0.1:{port}/images", env=clean_env(), timeout=30)
    assert time.monotonic() - t0 < 15
    msg = one_line(proc.stderr)
    assert proc.returncode == 1 and f"127.0.0.1:{port}" in msg and "infra.stack start" in msg


def test_plan_rejects_a_checkpoint_that_does_not_exist(tmp_path: Path) -> None:
    (tmp_path / "fashion_app.py").write_text(
        textwrap.dedent(
            """
            from buildflow import Node
            from buildflow.io import KafkaTopic
            from processors import FashionMNISTProcessor

            app = Node()
            app.add(FashionMNISTProcessor(
                checkpoint="runs/fashion_mnist_cnn/model.pt",
                table_id="buildflow-local.fashion_mnist.predictions",
                source=KafkaTopic("127.0.0.1:9", "fashion"),
            ))
            """
        )
    )
    repo = Path(__file__).resolve().parents[2]
    env = clean_env(PYTHONPATH=os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")]))
    for command in ("plan", "run"):
        proc = cli(tmp_path, command, "fashion_app:app", env=env)
        msg = one_line(proc.stderr)
        assert proc.returncode == 1, proc.stderr
        assert "checkpoint 'runs/fashion_mnist_cnn/model.pt' does not exist" in msg
        assert "models/training/artifacts/fashion_mnist_cnn.pt" in msg and "Traceback" not in proc.stderr
    assert not (tmp_path / ".buildflow").exists()  # plan created nothing


@pytest.mark.parametrize("where", ["local", "emulator"])
def test_destroy_while_running_stops_the_run_with_one_line(
    app: Path, where: str, request: pytest.FixtureRequest
) -> None:
    env = clean_env()
    if where == "emulator":
        env = {**env, **request.getfixturevalue("local_stack").env, "BUILDFLOW_ENV": "emulator"}
    assert cli(app, "plan", "tiny:app", "--yes", env=env).returncode == 0
    log = app / "run.log"
    with log.open("w") as sink:
        run = subprocess.Popen(
            [*CLI, "run", "tiny:app", "--no-progress"],
            cwd=app,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while "ready: setup()" not in one_line(log.read_text()):
            assert run.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        assert cli(app, "destroy", "tiny:app", "--yes", "--force", env=env).returncode == 0
        assert run.wait(60) == 1
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    text = log.read_text()
    assert "Traceback" not in text and "grpc" not in text.lower()
    assert one_line(text).count("no longer exists (deleted while running") == 1, text
    assert "run summary (stopped: error)" in text
