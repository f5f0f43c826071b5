"""The same main.py against real local servers speaking the GCP protocols (--env emulator):
upload with google-cloud-storage -> OBJECT_FINALIZE on Pub/Sub -> model -> BigQuery,
queried with google-cloud-bigquery and UNNEST."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from models.labels import CAT_CLASS_INDICES, DOG_CLASS_INDICES
from models.samples import sample_photos
from tests.models.sample_images import truncated_jpeg
from tests.stack.clients import bq_client, bq_rows, gcs_client

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "buildflow.cli"]
PROJECT = "buildflow-local"
TABLE = f"{PROJECT}.image_classification.predictions"
DEAD = f"{PROJECT}.image_classification.buildflow_dead_letters"


@pytest.fixture
def app_env(local_stack: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    env = dict(local_stack.env)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    # each test gets its own bucket: the stack is shared by the session
    bucket = f"bf-test-{os.getpid()}-{time.monotonic_ns() % 10**9}"
    env = {**os.environ, **env, "BUCKET_NAME": bucket, "COLUMNS": "200", "BUILDFLOW_ENV": "emulator"}
    yield env


def cli(
    *args: str, env: dict[str, str], check: bool = True, cwd: Path = REPO
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [*CLI, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=240, input=""
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"buildflow {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


def wait_for(
    predicate: Any, what: str, timeout: float = 120.0, proc: subprocess.Popen[str] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"run exited early while waiting for {what}: {proc.communicate()}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


@pytest.mark.parametrize("runtime", ["inprocess", "ray"])
def test_emulator_plan_run_upload_query_destroy(
    app_env: dict[str, str], tmp_path: Path, runtime: str
) -> None:
    """On both runtimes; on Ray with 2 replicas, each with its own Pub/Sub subscriber and
    BigQuery client (the subscription spreads the messages over them)."""
    replicas = 2 if runtime == "ray" else 1
    if runtime == "ray":
        pytest.importorskip("ray")
        app_env = {**app_env, "BUILDFLOW_RUNTIME": "ray", "BUILDFLOW_REPLICAS": "2"}
    bucket_name = app_env["BUCKET_NAME"]
    first = cli("plan", "main:app", "--yes", env=app_env)
    for kind in ("bucket", "subscription", "dataset", "table"):
        assert kind in first.stdout
    assert "No changes" in cli("plan", "main:app", env=app_env).stdout

    summary_path = tmp_path / "summary.json"
    run = subprocess.Popen(
        [*CLI, "run", "main:app", "--summary-json", str(summary_path)],
        cwd=REPO,
        env=app_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        bucket = gcs_client().bucket(bucket_name)
        photos = sample_photos(require_darknet=True)
        for name, data in photos.items():
            bucket.blob(name).upload_from_string(data, content_type="image/jpeg")
        bucket.blob("broken.jpg").upload_from_string(truncated_jpeg(), content_type="image/jpeg")

        def landed() -> bool:
            n = bq_rows(f"SELECT count(*) AS n FROM `{TABLE}` WHERE STARTS_WITH(event_id, '{bucket_name}/')")
            d = bq_rows(f"SELECT count(*) AS n FROM `{DEAD}` WHERE STARTS_WITH(event_id, '{bucket_name}/')")
            return n[0]["n"] == len(photos) and d[0]["n"] == 1

        wait_for(landed, "rows of every upload", proc=run)
    finally:
        run.send_signal(signal.SIGTERM)
        out, err = run.communicate(timeout=60)
    assert run.returncode == 0, err
    summary = json.loads(summary_path.read_text())
    assert summary["rows"] == len(photos) and summary["dead_letters"] == 1
    assert summary["processors"][0]["metrics"]["model_loads"] == replicas

    labels = bq_rows(
        f"SELECT image_name, c.label, c.class_index, c.confidence FROM `{TABLE}`, "
        f"UNNEST(classifications) AS c WHERE STARTS_WITH(event_id, '{bucket_name}/')"
    )
    top: dict[str, list[dict[str, Any]]] = {}
    for r in labels:
        top.setdefault(r["image_name"], []).append(r)
    for preds in top.values():
        preds.sort(key=lambda r: -r["confidence"])
    assert {p["class_index"] for p in top["chelsea.jpg"]} & set(CAT_CLASS_INDICES)
    assert top["coffee.jpg"][0]["label"] == "espresso"
    assert top["dog.jpg"][0]["class_index"] in DOG_CLASS_INDICES
    (dead,) = bq_rows(f"SELECT * FROM `{DEAD}` WHERE STARTS_WITH(event_id, '{bucket_name}/')")
    assert dead["object_name"] == "broken.jpg" and dead["error_type"] == "TruncatedImageError"

    gone = cli("destroy", "main:app", "--yes", "--force", env=app_env)
    assert "Deleted" in gone.stdout
    assert gcs_client().lookup_bucket(bucket_name) is None
    from google.cloud import pubsub_v1

    subs = [
        s.name
        for s in pubsub_v1.SubscriberClient().list_subscriptions(request={"project": f"projects/{PROJECT}"})
    ]
    assert not [s for s in subs if bucket_name in s]
    datasets = [d.dataset_id for d in bq_client().list_datasets()]
    assert "image_classification" not in datasets


CONFLICT_APP = """
import dataclasses, os
import buildflow
from buildflow.io import BigQueryTable, GCSFileEvent, GCSFileStream

@dataclasses.dataclass
class Row:
    image_name: int

class P(buildflow.Processor):
    name = "image_classification"
    def source(self):
        return GCSFileStream(project_id="buildflow-local", bucket_name=os.environ["BUCKET_NAME"])
    def sink(self):
        return BigQueryTable(table_id="buildflow-local.image_classification.predictions")
    def process(self, event: GCSFileEvent) -> Row:
        return Row(event.size)

app = buildflow.Node()
app.add(P())
"""


def test_emulator_plan_reports_a_schema_conflict(app_env: dict[str, str], tmp_path: Path) -> None:
    cli("plan", "main:app", "--yes", env=app_env)
    try:
        (tmp_path / "conflict_app.py").write_text(CONFLICT_APP)
        plan = cli("plan", "conflict_app:app", env=app_env, check=False, cwd=tmp_path)
        assert plan.returncode == 1 and "conflict" in plan.stdout
        assert "image_name" in plan.stdout and "INT64" in plan.stdout
    finally:
        cli("destroy", "main:app", "--yes", "--force", env=app_env)


def test_unacked_message_is_redelivered_and_nack_redelivers_at_once(app_env: dict[str, str]) -> None:
    import asyncio

    from buildflow.environment import Environment
    from buildflow.io import GCSFileStream
    from buildflow.io.google.gcs import GCSFileStreamProvider
    from buildflow.provisioning import apply, plan

    bucket_name = app_env["BUCKET_NAME"]
    env = Environment(name="emulator", state_dir=REPO / ".buildflow" / "emulator")
    provider = GCSFileStreamProvider(
        GCSFileStream(project_id=PROJECT, bucket_name=bucket_name, ack_deadline_secs=10), env
    )
    resources = provider.resources("redelivery")
    apply(plan(resources))
    try:
        gcs_client().bucket(bucket_name).blob("coffee.jpg").upload_from_string(sample_photos()["coffee.jpg"])

        async def scenario() -> tuple[str, str, str, bytes]:
            first_src = provider.open("redelivery")
            got: list[Any] = []
            deadline = time.monotonic() + 30
            while not got and time.monotonic() < deadline:
                got = await first_src.pull(10, 1.0)
            (first,) = got
            await first_src.nack(got)  # modifyAckDeadline 0: back at once
            again: list[Any] = []
            while not again and time.monotonic() < deadline:
                again = await first_src.pull(10, 1.0)
            (second,) = again
            await first_src.close()  # closed without ack: redelivered after the deadline
            src = provider.open("redelivery")
            third: list[Any] = []
            deadline = time.monotonic() + 40
            while not third and time.monotonic() < deadline:
                third = await src.pull(10, 1.0)
            data = await asyncio.to_thread(lambda: third[0].event.blob)
            await src.ack(third)
            assert await src.pull(10, 0.5) == []
            await src.close()
            return first.event_id, second.event_id, third[0].event_id, data

        a, b, c, data = asyncio.run(scenario())
        assert a == b == c == f"{bucket_name}/coffee.jpg#" + a.split("#")[1]
        assert data == sample_photos()["coffee.jpg"]
    finally:
        from buildflow.provisioning import destroy, plan_destroy

        destroy(plan_destroy(resources, force=True))


PUBSUB_APP = """
import os
from buildflow import Node
from buildflow.io import PubSubSubscription
from processors import ImageClassificationProcessor

app = Node()
app.add(ImageClassificationProcessor(
    bucket_name="unused-bucket",
    table_id="buildflow-local.pubsub_images.predictions",
    source=PubSubSubscription(
        project_id="buildflow-local",
        subscription=os.environ["SUB"],
        topic=os.environ["TOPIC"],
    ),
))
"""


def test_pubsub_messages_carrying_or_pointing_at_images(app_env: dict[str, str], tmp_path: Path) -> None:
    """Image bytes in the payload, a gs:// reference, and an empty message (dead-lettered)."""
    from google.cloud import pubsub_v1

    suffix = app_env["BUCKET_NAME"]
    env = {**app_env, "SUB": f"images-{suffix}", "TOPIC": f"images-{suffix}"}
    (tmp_path / "pubsub_app.py").write_text(PUBSUB_APP)
    plan = cli("plan", "pubsub_app:app", "--yes", env=env, cwd=tmp_path)
    assert "topic" in plan.stdout and "subscription" in plan.stdout
    photos = sample_photos()
    (tmp_path / "chelsea.jpg").write_bytes(photos["chelsea.jpg"])
    up = cli("upload", "pubsub_app:app", str(tmp_path / "chelsea.jpg"), env=env, cwd=tmp_path)
    assert "message" in up.stdout
    bucket = gcs_client().create_bucket(f"{suffix}-refs")
    bucket.blob("in/coffee.jpg").upload_from_string(photos["coffee.jpg"])
    topic = f"projects/{PROJECT}/topics/images-{suffix}"
    publisher = pubsub_v1.PublisherClient()
    publisher.publish(topic, f"gs://{bucket.name}/in/coffee.jpg".encode()).result(timeout=30)
    publisher.publish(topic, b"", note="nothing here").result(timeout=30)
    try:
        summary_path = tmp_path / "summary.json"
        cli(
            "run",
            "pubsub_app:app",
            "--until-idle",
            "--summary-json",
            str(summary_path),
            env=env,
            cwd=tmp_path,
        )
        summary = json.loads(summary_path.read_text())
        assert summary["rows"] == 2 and summary["dead_letters"] == 1
        got = {
            r["image_name"]: r["label"]
            for r in bq_rows(
                f"SELECT image_name, classifications[OFFSET(0)].label AS label "
                f"FROM `{PROJECT}.pubsub_images.predictions`"
            )
        }
        assert got["in/coffee.jpg"] == "espresso"
        assert "chelsea.jpg" in got
        (dead,) = bq_rows(f"SELECT * FROM `{PROJECT}.pubsub_images.buildflow_dead_letters`")
        assert dead["stage"] == "decode" and "empty message" in dead["reason"]
    finally:
        cli("destroy", "pubsub_app:app", "--yes", "--force", env=env, cwd=tmp_path)
        bucket.delete(force=True)


def test_slow_batch_keeps_its_lease_instead_of_being_redelivered(app_env: dict[str, str]) -> None:
    """A message held three times its ack deadline is not redelivered to another consumer
    of the same subscription while in flight (its lease is extended), and is gone once acked."""
    import asyncio

    from google.cloud import pubsub_v1

    from buildflow.environment import Environment
    from buildflow.io import PubSubSubscription
    from buildflow.io.google.pubsub import (
        PubSubPullSource,
        PubSubSubscriptionResource,
        PubSubTopicResource,
        decode_message,
    )

    suffix = app_env["BUCKET_NAME"]
    env = Environment(name="emulator", state_dir=REPO / ".buildflow" / "emulator")
    decl = PubSubSubscription(project_id=PROJECT, subscription=f"lease-{suffix}", topic=f"lease-{suffix}")
    topic = PubSubTopicResource(env, decl.topic_path)
    sub = PubSubSubscriptionResource(env, decl.subscription_path, decl.topic_path, ack_deadline_secs=1)
    topic.create()
    sub.create()
    try:
        pubsub_v1.PublisherClient().publish(decl.topic_path, b"payload").result(timeout=30)

        def source() -> PubSubPullSource:
            return PubSubPullSource(env, decl.subscription_path, 1, lambda m: decode_message(m, decl, env))

        async def scenario() -> tuple[int, int]:
            holder, other = source(), source()
            got: list[Any] = []
            deadline = time.monotonic() + 20
            while not got and time.monotonic() < deadline:
                got = await holder.pull(10, 0.5)
            assert len(got) == 1
            stolen = 0
            end = time.monotonic() + 3.0  # three ack deadlines
            while time.monotonic() < end:
                stolen += len(await other.pull(10, 0.2))
            await holder.ack(got)
            end = time.monotonic() + 2.5
            after = 0
            while time.monotonic() < end:
                after += len(await other.pull(10, 0.2))
            await holder.close()
            await other.close()
            return stolen, after

        stolen, after = asyncio.run(scenario())
        assert stolen == 0, "an in-flight message was redelivered while its lease was held"
        assert after == 0, "an acked message came back"
    finally:
        sub.delete()
        topic.delete()


def test_cloud_errors_are_one_line_with_the_fix(app_env: dict[str, str]) -> None:
    from buildflow.environment import Environment
    from buildflow.errors import ProvisioningError
    from buildflow.io import GCSFileStream
    from buildflow.io.google.gcs import GCSBucketResource

    env = Environment(name="emulator", state_dir=REPO / ".buildflow" / "emulator")
    decl = GCSFileStream(project_id=PROJECT, bucket_name=app_env["BUCKET_NAME"] + "-taken")
    bucket = GCSBucketResource(env, PROJECT, decl)
    bucket.create()
    try:
        with pytest.raises(ProvisioningError) as info:
            bucket.create()
        message = str(info.value)
        assert "\n" not in message and "create" in message and "Conflict" in message
        assert "choose another name" in message
    finally:
        bucket.delete()


def test_produce_a_folder_to_pubsub_with_labels(app_env: dict[str, str], tmp_path: Path) -> None:
    from google.cloud import pubsub_v1

    suffix = app_env["BUCKET_NAME"]
    topic = f"projects/{PROJECT}/topics/produce-{suffix}"
    sub = f"projects/{PROJECT}/subscriptions/produce-{suffix}"
    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    publisher.create_topic(request={"name": topic})
    subscriber.create_subscription(request={"name": sub, "topic": topic})
    try:
        photos = sample_photos()
        for label, name in (("cat", "chelsea.jpg"), ("coffee", "coffee.jpg")):
            (tmp_path / "photos" / label).mkdir(parents=True)
            (tmp_path / "photos" / label / name).write_bytes(photos[name])
        out = cli("produce", str(tmp_path / "photos"), "--pubsub", topic, env=app_env)
        assert "sent 2 images" in out.stdout
        got: dict[str, tuple[str, bytes]] = {}
        deadline = time.monotonic() + 30
        while len(got) < 2 and time.monotonic() < deadline:
            resp = subscriber.pull(request={"subscription": sub, "max_messages": 10}, timeout=5)
            for m in resp.received_messages:
                got[m.message.attributes["name"]] = (m.message.attributes["label"], m.message.data)
        assert got == {
            "cat/chelsea.jpg": ("cat", photos["chelsea.jpg"]),
            "coffee/coffee.jpg": ("coffee", photos["coffee.jpg"]),
        }
    finally:
        subscriber.delete_subscription(request={"subscription": sub})
        publisher.delete_topic(request={"topic": topic})
