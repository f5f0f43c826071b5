"""Kafka on the Ray runtime, end to end on the local stack's broker: ``buildflow run
--runtime ray --replicas 2`` over a 2-partition topic. The consumer group gives each replica
a partition (both replicas busy); one replica's process is killed mid-stream; its partition
moves to the survivor or the replacement and resumes from the last commit. Every record is
exactly one row of the ``<table>_dedup`` view, which users query: 0 lost, 0 duplicated
(the default ``upsert`` table may hold a record the killed replica wrote but did not commit
twice; BigQuery collapses it by primary key, the emulator applies no CDC, the view collapses
it by ``_event_id``). Rows go to the BigQuery fake (several writers at once, queryable while
the run goes on)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.stack.clients import bq_rows

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]
pytest.importorskip("ray")

REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "buildflow.cli"]
PROJECT = "buildflow-local"

APP = """
import dataclasses, datetime, os, time
import buildflow
from buildflow import Node
from buildflow.io import BigQueryTable, KafkaMessageEvent, KafkaTopic


@dataclasses.dataclass
class Row:
    name: str
    event_id: str
    pid: int


@dataclasses.dataclass
class Work(buildflow.Processor):
    marks: str = ""
    max_batch_size = 4
    max_batch_latency_ms = 0
    num_cpus = 0.25

    def source(self):
        return KafkaTopic(os.environ["KAFKA_BOOTSTRAP_SERVERS"], os.environ["TOPIC"], partitions=2)

    def sink(self):
        return BigQueryTable(table_id=os.environ["TABLE"], destroy_protection=False)

    def setup(self):
        self.after_go = 0

    def process(self, event: KafkaMessageEvent) -> Row:
        open(os.path.join(self.marks, f"busy-{os.getpid()}"), "w").close()
        if os.path.exists(os.path.join(self.marks, "go")):
            self.after_go += 1
            if self.after_go == 10:  # mid-stream: die once, as a lost node would
                try:
                    fd = os.open(os.path.join(self.marks, "died"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                except FileExistsError:
                    pass
                else:
                    os.write(fd, str(os.getpid()).encode())
                    os.close(fd)
                    os._exit(1)
        time.sleep(0.02)
        return Row(event.name, event.event_id, os.getpid())


app = Node(name="kafka-ray")
app.add(Work(marks=os.environ["MARKS"]))
"""


def test_two_replicas_share_a_two_partition_topic_and_a_killed_one_loses_and_doubles_nothing(
    stack_env: Any, tmp_path: Path
) -> None:
    from confluent_kafka import Producer

    suffix = uuid.uuid4().hex[:8]
    marks = tmp_path / "marks"
    marks.mkdir()
    table = f"{PROJECT}.kafka_ray_{suffix}.rows"
    (tmp_path / "kafka_ray_app.py").write_text(APP)
    env = {
        **os.environ,
        **stack_env.env,
        "TOPIC": f"ray-{suffix}",
        "TABLE": table,
        "MARKS": str(marks),
        "BUILDFLOW_ENV": "emulator",
        "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "COLUMNS": "200",
    }
    state = ["--state-dir", str(tmp_path / "state")]
    subprocess.run(
        [*CLI, "plan", "kafka_ray_app:app", "--yes", *state],
        cwd=tmp_path, env=env, check=True, capture_output=True, timeout=120, input="",
    )  # fmt: skip
    summary_path = tmp_path / "summary.json"
    run = subprocess.Popen(
        [*CLI, "run", "kafka_ray_app:app", *state, "--runtime", "ray", "--replicas", "2",
         "--no-progress", "--summary-json", str(summary_path)],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    producer = Producer({"bootstrap.servers": env["KAFKA_BOOTSTRAP_SERVERS"]})
    sent: list[str] = []

    def send(n: int) -> None:
        for _ in range(n):
            i = len(sent)
            sent.append(f"r{i:04d}")
            producer.produce(env["TOPIC"], value=b"x" * 64, key=sent[-1].encode(), partition=i % 2)
        assert producer.flush(30) == 0

    try:
        # a trickle over both partitions until both replicas have records (the group has
        # given each a partition): both replicas busy
        deadline = time.monotonic() + 180
        while len(list(marks.glob("busy-*"))) < 2:
            assert run.poll() is None, run.communicate()
            assert time.monotonic() < deadline, f"only {list(marks.glob('busy-*'))} busy"
            send(2)
            time.sleep(0.5)
        busy_before = {int(p.name.removeprefix("busy-")) for p in marks.glob("busy-*")}
        # the main stream; the first replica to take 10 records of it dies mid-stream
        (marks / "go").touch()
        send(240)
        deadline = time.monotonic() + 240
        while True:
            [got] = bq_rows(f"SELECT count(*) AS n FROM `{table}_dedup`")
            if got["n"] >= len(sent) and (marks / "died").exists():
                break
            assert run.poll() is None, run.communicate()
            assert time.monotonic() < deadline, f"{got['n']} of {len(sent)} rows"
            time.sleep(1.0)
        run.send_signal(signal.SIGINT)
        out, err = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()
    assert run.returncode == 0, err

    rows = bq_rows(f"SELECT name, event_id, pid FROM `{table}_dedup`")
    written = bq_rows(f"SELECT name, pid FROM `{table}`")
    assert len(written) >= len(sent)  # the table itself: every record at least once
    names = [r["name"] for r in rows]
    assert sorted(names) == sent  # 0 lost, 0 duplicated
    assert len({r["event_id"] for r in rows}) == len(sent)
    assert {r["event_id"].split("/")[1] for r in rows} == {"0", "1"}
    dead_pid = int((marks / "died").read_text())
    pids = {r["pid"] for r in written}  # the table: the view keeps a rewritten row's last writer
    assert len(busy_before) == 2 and dead_pid in busy_before
    assert busy_before <= pids  # both replicas wrote rows; the killed one before it died

    (stats,) = json.loads(summary_path.read_text())["processors"]
    assert stats["replicas_died"] == 1 and stats["replicas_started"] == 3
    assert stats["dead_letters"] == 0
