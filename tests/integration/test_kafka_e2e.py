"""Kafka against a real Kafka-protocol broker (tansu, started by the test session): every
payload format, restart mid-stream, two consumers with one killed, poison messages, and
plan/destroy of topics. Rows go to the local DuckDB warehouse (keyed by
topic/partition/offset), so the tests can count them exactly."""

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

from models.labels import DOG_CLASS_INDICES
from models.samples import sample_photos

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "buildflow.cli"]

APP = """
import os
from buildflow import Node
from buildflow.io import KafkaTopic
from processors import ImageClassificationProcessor

app = Node()
app.add(ImageClassificationProcessor(
    bucket_name="unused-bucket",
    table_id="buildflow-local.kafka_images.predictions",
    source=KafkaTopic(
        bootstrap_servers=os.environ["KAFKA_BOOTSTRAP_SERVERS"],
        topic=os.environ["TOPIC"],
        payload_format=os.environ.get("FORMAT", "raw"),
        partitions=int(os.environ.get("PARTITIONS", "1")),
        reference_root=os.environ.get("REFERENCE_ROOT"),
        max_message_bytes=int(os.environ.get("MAX_BYTES", str(20 * 1024 * 1024))),
        consumer_config={"session.timeout.ms": "6000", "heartbeat.interval.ms": "1000"},
    ),
))
"""


@pytest.fixture
def kafka_app(local_stack: Any, tmp_path: Path) -> dict[str, Any]:
    (tmp_path / "kafka_app.py").write_text(APP)
    env = {
        **os.environ,
        **local_stack.env,
        "TOPIC": f"images-{uuid.uuid4().hex[:8]}",
        "COLUMNS": "200",
    }
    env.pop("BUILDFLOW_ENV", None)
    return {"env": env, "cwd": tmp_path, "state": tmp_path / "state"}


def cli(
    app: dict[str, Any], *args: str, check: bool = True, **extra: str
) -> subprocess.CompletedProcess[str]:
    env = {**app["env"], **extra}
    proc = subprocess.run(
        [
            *CLI,
            *args,
            *(("--state-dir", str(app["state"])) if args[0] in ("plan", "run", "query", "destroy") else ()),
        ],
        cwd=app["cwd"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        input="",
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"buildflow {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


def spawn_run(app: dict[str, Any], **extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*CLI, "run", "kafka_app:app", "--state-dir", str(app["state"])],
        cwd=app["cwd"],
        env={**app["env"], **extra},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def query(app: dict[str, Any], sql: str) -> list[dict[str, Any]]:
    out = cli(app, "query", "kafka_app:app", sql, "--format", "json").stdout
    rows: list[dict[str, Any]] = json.loads(out)
    return rows


def photo_folder(root: Path, copies: int = 1) -> Path:
    """cat/, coffee/, dog/ sub-folders of real photos (the sub-folder is the label)."""
    photos = sample_photos(require_darknet=True)
    for label, name in (("cat", "chelsea.jpg"), ("coffee", "coffee.jpg"), ("dog", "dog.jpg")):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(copies):
            (root / label / f"{i:03d}_{name}").write_bytes(photos[name])
    return root


def produce(app: dict[str, Any], folder: Path, fmt: str = "raw", **extra: str) -> None:
    bootstrap = app["env"]["KAFKA_BOOTSTRAP_SERVERS"]
    cli(
        app, "produce", str(folder), "--kafka", f"{bootstrap}/{app['env']['TOPIC']}", "--format", fmt, **extra
    )


def wait_rows(
    app: dict[str, Any], n: int, proc: subprocess.Popen[str] | None = None, timeout: float = 180
) -> int:
    deadline = time.monotonic() + timeout
    while True:
        got = query(app, "SELECT count(*) AS n FROM kafka_images.predictions")[0]["n"]
        if got >= n:
            return int(got)
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"run exited early: {proc.communicate()}")
        assert time.monotonic() < deadline, f"only {got} of {n} rows after {timeout} s"
        time.sleep(0.3)


@pytest.mark.parametrize("fmt", ["raw", "json", "reference", "pixels"])
def test_each_payload_format_gives_rows_with_the_right_labels(kafka_app: dict[str, Any], fmt: str) -> None:
    """``pixels``: the training API's payload (uint8 arrays as nested lists), read by a
    ``payload_format="json"`` source."""
    folder = photo_folder(kafka_app["cwd"] / "photos")
    extra = {"FORMAT": "json" if fmt == "pixels" else fmt, "REFERENCE_ROOT": str(folder)}
    cli(kafka_app, "plan", "kafka_app:app", "--yes", **extra)
    produce(kafka_app, folder, fmt)
    cli(kafka_app, "run", "kafka_app:app", "--until-idle", **extra)
    rows = {
        r["image_name"]: r
        for r in query(
            kafka_app, "SELECT image_name, classifications, event_id FROM kafka_images.predictions"
        )
    }
    assert len(rows) == 3, rows.keys()
    by_label = {name.split("/")[0] if "/" in name else Path(name).parent.name: r for name, r in rows.items()}
    assert by_label["coffee"]["classifications"][0]["label"] == "espresso"
    assert by_label["dog"]["classifications"][0]["class_index"] in DOG_CLASS_INDICES
    topic = kafka_app["env"]["TOPIC"]
    assert all(r["event_id"].startswith(f"{topic}/0/") for r in rows.values())


def test_kill_mid_stream_then_restart_loses_and_duplicates_nothing(kafka_app: dict[str, Any]) -> None:
    folder = photo_folder(kafka_app["cwd"] / "photos", copies=20)  # 60 messages
    cli(kafka_app, "plan", "kafka_app:app", "--yes")
    produce(kafka_app, folder)
    run = spawn_run(kafka_app)
    try:
        wait_rows(kafka_app, 1, run)
    finally:
        run.send_signal(signal.SIGKILL)  # no drain, no commit of what is in flight
        run.communicate(timeout=30)
    cli(kafka_app, "run", "kafka_app:app", "--until-idle")
    per_offset = query(
        kafka_app, "SELECT event_id, count(*) AS n FROM kafka_images.predictions GROUP BY event_id"
    )
    assert len(per_offset) == 60 and all(r["n"] == 1 for r in per_offset)


def test_two_consumers_split_partitions_and_one_dies(kafka_app: dict[str, Any]) -> None:
    extra = {"PARTITIONS": "2"}
    folder = photo_folder(kafka_app["cwd"] / "photos", copies=20)  # 60 messages
    cli(kafka_app, "plan", "kafka_app:app", "--yes", **extra)
    a, b = spawn_run(kafka_app, **extra), spawn_run(kafka_app, **extra)
    try:
        produce(kafka_app, folder)
        wait_rows(kafka_app, 5, a)
        a.send_signal(signal.SIGKILL)
        a.communicate(timeout=30)
        wait_rows(kafka_app, 60, b, timeout=240)
    finally:
        for p in (a, b):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                p.communicate(timeout=60)
    per_offset = query(
        kafka_app, "SELECT event_id, count(*) AS n FROM kafka_images.predictions GROUP BY event_id"
    )
    assert len(per_offset) == 60 and all(r["n"] == 1 for r in per_offset)
    partitions = {r["event_id"].split("/")[1] for r in per_offset}
    assert partitions == {"0", "1"}


def test_poison_messages_are_dead_lettered_and_the_partition_moves_on(kafka_app: dict[str, Any]) -> None:
    from confluent_kafka import Producer

    from buildflow.io.kafka.provider import encode_json_envelope

    extra = {"FORMAT": "json", "MAX_BYTES": "400000"}
    cli(kafka_app, "plan", "kafka_app:app", "--yes", **extra)
    photos = sample_photos()
    topic = kafka_app["env"]["TOPIC"]
    producer = Producer({"bootstrap.servers": kafka_app["env"]["KAFKA_BOOTSTRAP_SERVERS"]})
    messages = [
        ("good-1", encode_json_envelope("good-1", photos["coffee.jpg"])),
        ("bad-json", b"{this is not json"),
        ("bad-base64", json.dumps({"image_id": "x", "image_data": "!!not base64!!"}).encode()),
        ("not-an-image", encode_json_envelope("not-an-image", b"plain text, not pixels")),
        ("too-big", encode_json_envelope("too-big", os.urandom(400_000))),
        ("good-2", encode_json_envelope("good-2", photos["chelsea.jpg"])),
    ]
    for key, value in messages:
        producer.produce(topic, value=value, key=key)
    assert producer.flush(30) == 0
    cli(kafka_app, "run", "kafka_app:app", "--until-idle", **extra)
    names = sorted(
        r["image_name"] for r in query(kafka_app, "SELECT image_name FROM kafka_images.predictions")
    )
    assert names == ["good-1", "good-2"]
    dead = {
        r["object_name"]: r
        for r in query(
            kafka_app, "SELECT object_name, reason, stage, event_id FROM kafka_images.buildflow_dead_letters"
        )
    }
    assert set(dead) == {"bad-json", "bad-base64", "not-an-image", "too-big"}
    assert "not JSON" in dead["bad-json"]["reason"]
    assert "bad 'image_data'" in dead["bad-base64"]["reason"]
    assert "over max_message_bytes" in dead["too-big"]["reason"]
    assert dead["not-an-image"]["stage"] == "process"
    assert all(r["event_id"].startswith(f"{topic}/0/") for r in dead.values())  # coordinates


def test_plan_creates_and_destroy_deletes_topics(kafka_app: dict[str, Any]) -> None:
    from confluent_kafka.admin import AdminClient

    extra = {"PARTITIONS": "2"}
    topic = kafka_app["env"]["TOPIC"]
    admin = AdminClient({"bootstrap.servers": kafka_app["env"]["KAFKA_BOOTSTRAP_SERVERS"]})
    first = cli(kafka_app, "plan", "kafka_app:app", "--yes", **extra)
    assert "kafka://" in first.stdout and topic in first.stdout
    md = admin.list_topics(timeout=10)
    assert len(md.topics[topic].partitions) == 2
    assert "No changes" in cli(kafka_app, "plan", "kafka_app:app", **extra).stdout
    cli(kafka_app, "destroy", "kafka_app:app", "--yes", "--force", **extra)  # the tables are protected
    deadline = time.monotonic() + 30
    while topic in admin.list_topics(timeout=10).topics:
        assert time.monotonic() < deadline, "topic still listed after destroy"
        time.sleep(0.2)


def _consume_all(bootstrap: str, topic: str, n: int) -> list[Any]:
    from confluent_kafka import Consumer

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"check-{uuid.uuid4().hex[:6]}",
            "auto.offset.reset": "earliest",
            "session.timeout.ms": "6000",
        }
    )
    consumer.subscribe([topic])
    got: list[Any] = []
    deadline = time.monotonic() + 60
    try:
        while len(got) < n and time.monotonic() < deadline:
            got += [m for m in consumer.consume(num_messages=n, timeout=1.0) if m.error() is None]
    finally:
        consumer.close()
    return got


def test_producer_labels_records_with_their_sub_folder(kafka_app: dict[str, Any]) -> None:
    folder = photo_folder(kafka_app["cwd"] / "photos")
    produce(kafka_app, folder, "raw")
    msgs = _consume_all(kafka_app["env"]["KAFKA_BOOTSTRAP_SERVERS"], kafka_app["env"]["TOPIC"], 3)
    got = {m.key().decode(): dict(m.headers() or [])["label"].decode() for m in msgs}
    assert got == {"cat/000_chelsea.jpg": "cat", "coffee/000_coffee.jpg": "coffee", "dog/000_dog.jpg": "dog"}


def test_kafka_sink_writes_rows_as_json_keyed_by_event_id(kafka_app: dict[str, Any]) -> None:
    import asyncio
    import datetime

    from buildflow.environment import Environment
    from buildflow.io import KafkaTopic
    from buildflow.io.base import OutputRecord
    from buildflow.io.kafka.provider import KafkaSinkProvider
    from buildflow.provisioning import apply, plan
    from buildflow.schema import TableSchema

    bootstrap = kafka_app["env"]["KAFKA_BOOTSTRAP_SERVERS"]
    decl = KafkaTopic(bootstrap, kafka_app["env"]["TOPIC"] + ".predictions")
    provider = KafkaSinkProvider(decl, Environment(name="local", state_dir=kafka_app["state"]))
    apply(plan(provider.resources(TableSchema(()))))
    when = datetime.datetime(2026, 11, 22, 5, 0, tzinfo=datetime.UTC)
    records = [
        OutputRecord(
            "images/0/7", 0, {"image_name": "cat.jpg", "processed_at": when, "top": [{"label": "tabby"}]}
        ),
        OutputRecord("images/0/8", 1, {"image_name": "dog.jpg", "processed_at": when, "top": []}),
    ]

    async def write() -> None:
        sink = provider.open(TableSchema(()))
        await sink.write(records)
        await sink.close()

    asyncio.run(write())
    msgs = _consume_all(bootstrap, decl.topic, 2)
    by_key = {m.key().decode(): json.loads(m.value()) for m in msgs}
    assert by_key["images/0/7/0"] == {
        "image_name": "cat.jpg",
        "processed_at": "2026-11-22T05:00:00+00:00",
        "top": [{"label": "tabby"}],
        "_event_id": "images/0/7",
        "_row_index": 0,
    }
    assert by_key["images/0/8/1"]["image_name"] == "dog.jpg"
