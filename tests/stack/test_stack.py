"""End-to-end checks of the local stack itself (infra/stack.py), with Google's own clients.

Every wait is a bounded poll: Pub/Sub's synchronous Pull blocks up to 0.5 s on the fake when
nothing is there, which is the poll interval here.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from google.api_core import exceptions as gexc
from google.api_core.client_options import ClientOptions
from google.api_core.retry import Retry
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery, pubsub_v1, storage
from google.pubsub_v1.services.subscriber.transports.grpc import SubscriberGrpcTransport

from infra import stack as stack_mod
from infra.stack import Stack, StackError

REPO_ROOT = Path(__file__).resolve().parents[2]


def _uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def publisher(stack_env: Stack) -> Iterator[pubsub_v1.PublisherClient]:
    client = pubsub_v1.PublisherClient()  # PUBSUB_EMULATOR_HOST from stack_env
    yield client
    client.stop()
    client.transport.close()


@pytest.fixture
def subscriber(stack_env: Stack) -> Iterator[pubsub_v1.SubscriberClient]:
    client = pubsub_v1.SubscriberClient()
    yield client
    client.close()


@pytest.fixture
def gcs(stack_env: Stack) -> Iterator[storage.Client]:
    client = storage.Client(project=stack_env.project, credentials=AnonymousCredentials())
    yield client
    client.close()


@pytest.fixture
def bq(local_stack: Stack) -> Iterator[bigquery.Client]:
    client = bigquery.Client(
        project=local_stack.project,
        credentials=AnonymousCredentials(),
        client_options=ClientOptions(api_endpoint=local_stack.bigquery_url),
    )
    yield client
    client.close()


def _pull_until(
    subscriber: pubsub_v1.SubscriberClient,
    subscription: str,
    wanted: Callable[[pubsub_v1.types.ReceivedMessage], bool],
    timeout_s: float = 20.0,
) -> list[pubsub_v1.types.ReceivedMessage]:
    """Pull (and ack) until a message satisfies ``wanted``; return those that did."""
    deadline = time.monotonic() + timeout_s
    while True:
        response = subscriber.pull(request={"subscription": subscription, "max_messages": 100}, timeout=5.0)
        received = list(response.received_messages)
        if received:
            subscriber.acknowledge(
                request={"subscription": subscription, "ack_ids": [m.ack_id for m in received]}
            )
        matching = [m for m in received if wanted(m)]
        if matching:
            return matching
        assert time.monotonic() < deadline, f"no wanted message on {subscription} within {timeout_s} s"


def _poll(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"{what} not reached within {timeout_s} s"
        time.sleep(0.05)  # poll interval of a bounded wait


def _subscription(subscriber: pubsub_v1.SubscriberClient, stack: Stack, topic: str, **extra: object) -> str:
    name = f"projects/{stack.project}/subscriptions/{_uid('sub')}"
    subscriber.create_subscription(request={"name": name, "topic": topic, **extra})
    return name


# --------------------------------------------------------------------------------------------
# Pub/Sub
# --------------------------------------------------------------------------------------------


def test_pubsub_publish_pull_ack(
    stack_env: Stack, publisher: pubsub_v1.PublisherClient, subscriber: pubsub_v1.SubscriberClient
) -> None:
    topic = publisher.create_topic(name=f"projects/{stack_env.project}/topics/{_uid('topic')}").name
    # ack_deadline_seconds 0 means "the default" on the real service; pstest alone rejects it.
    subscription = _subscription(subscriber, stack_env, topic, ack_deadline_seconds=0)
    got = subscriber.get_subscription(request={"subscription": subscription})
    assert got.ack_deadline_seconds == 10

    message_id = publisher.publish(topic, b"hello", origin="test").result(timeout=10)

    (message,) = _pull_until(subscriber, subscription, lambda m: m.message.message_id == message_id)
    assert message.message.data == b"hello"
    assert dict(message.message.attributes) == {"origin": "test"}
    # Acked by _pull_until: nothing comes back (Pull waits 0.5 s on the fake when empty).
    again = subscriber.pull(request={"subscription": subscription, "max_messages": 10}, timeout=5.0)
    assert list(again.received_messages) == []
    subscriber.delete_subscription(request={"subscription": subscription})
    publisher.delete_topic(request={"topic": topic})


def test_pubsub_unimplemented_rpcs_answer_unimplemented_and_server_survives(
    stack_env: Stack, publisher: pubsub_v1.PublisherClient, subscriber: pubsub_v1.SubscriberClient
) -> None:
    topic = publisher.create_topic(name=f"projects/{stack_env.project}/topics/{_uid('topic')}").name
    subscription = _subscription(subscriber, stack_env, topic)
    with pytest.raises(gexc.MethodNotImplemented):  # pstest 0.56.0 would panic the process
        subscriber.create_snapshot(
            request={
                "name": f"projects/{stack_env.project}/snapshots/{_uid('snap')}",
                "subscription": subscription,
            }
        )
    with pytest.raises(gexc.MethodNotImplemented):  # refused: it corrupts pstest's state
        subscriber.seek(request={"subscription": subscription, "time": {"seconds": 0}})
    # ModifyAckDeadline of an unknown ack id panics inside pstest: INTERNAL, not a dead server.
    with pytest.raises(gexc.InternalServerError):
        subscriber.modify_ack_deadline(
            request={"subscription": subscription, "ack_ids": ["no-such-id"], "ack_deadline_seconds": 10},
            retry=None,
        )
    message_id = publisher.publish(topic, b"still alive").result(timeout=10)
    _pull_until(subscriber, subscription, lambda m: m.message.message_id == message_id)


def test_pubsub_emulator_binary_min_ack_deadline_redelivery_and_clean_sigterm() -> None:
    binary = stack_mod.ensure_installed().pubsub_emulator
    port = stack_mod.free_ports()["pubsub"]
    proc = subprocess.Popen(
        [str(binary), "--addr", f"127.0.0.1:{port}", "--min-ack-deadline", "1s"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        publisher = stack_mod._publisher(port)
        subscriber = pubsub_v1.SubscriberClient(
            transport=SubscriberGrpcTransport(channel=grpc.insecure_channel(f"127.0.0.1:{port}"))
        )
        try:
            topic = publisher.create_topic(name="projects/p/topics/t").name
            subscriber.create_subscription(
                request={"name": "projects/p/subscriptions/s", "topic": topic, "ack_deadline_seconds": 1}
            )
            message_id = publisher.publish(topic, b"x").result(timeout=10)
            first = subscriber.pull(request={"subscription": "projects/p/subscriptions/s", "max_messages": 1})
            assert [m.message.message_id for m in first.received_messages] == [message_id]
            started = time.monotonic()
            # Not acked: redelivered once the 1 s deadline passes (pstest's usual minimum is 10 s).
            (again,) = _pull_until(subscriber, "projects/p/subscriptions/s", lambda m: True, timeout_s=8.0)
            assert again.message.message_id == message_id
            assert time.monotonic() - started < 8.0
        finally:
            publisher.stop()
            publisher.transport.close()
            subscriber.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        assert proc.stdout is not None
        proc.stdout.close()


# --------------------------------------------------------------------------------------------
# GCS with upload events
# --------------------------------------------------------------------------------------------


def test_gcs_upload_publishes_object_finalize_event(
    stack_env: Stack, gcs: storage.Client, subscriber: pubsub_v1.SubscriberClient
) -> None:
    # The subscription must exist before the upload: Pub/Sub keeps no backlog for later ones.
    subscription = _subscription(subscriber, stack_env, stack_env.events_topic)
    bucket = gcs.create_bucket(_uid("bucket"))
    blob = bucket.blob("images/cat.jpg")
    blob.upload_from_string(b"\xff\xd8not-really-a-jpeg", content_type="image/jpeg")
    blob.reload()
    assert bucket.get_blob("images/cat.jpg").download_as_bytes() == b"\xff\xd8not-really-a-jpeg"

    (event,) = _pull_until(
        subscriber,
        subscription,
        lambda m: (
            m.message.attributes.get("bucketId") == bucket.name
            and m.message.attributes.get("eventType") == "OBJECT_FINALIZE"
        ),
    )
    attributes = dict(event.message.attributes)
    assert attributes["objectId"] == "images/cat.jpg"
    assert attributes["objectGeneration"] == str(blob.generation)
    assert attributes["payloadFormat"] == "JSON_API_V1"
    assert attributes["eventTime"]
    payload = json.loads(event.message.data)
    assert payload["bucket"] == bucket.name
    assert payload["name"] == "images/cat.jpg"
    assert payload["contentType"] == "image/jpeg"
    assert int(payload["size"]) == len(b"\xff\xd8not-really-a-jpeg")

    blob.delete()
    _pull_until(
        subscriber,
        subscription,
        lambda m: (
            m.message.attributes.get("bucketId") == bucket.name
            and m.message.attributes.get("eventType") == "OBJECT_DELETE"
        ),
    )
    bucket.delete()
    subscriber.delete_subscription(request={"subscription": subscription})


# --------------------------------------------------------------------------------------------
# BigQuery
# --------------------------------------------------------------------------------------------


def test_bigquery_repeated_record_insert_and_unnest(local_stack: Stack, bq: bigquery.Client) -> None:
    dataset_id = f"{local_stack.project}.{_uid('ds').replace('-', '_')}"
    bq.create_dataset(dataset_id)
    try:
        table = bq.create_table(
            bigquery.Table(
                f"{dataset_id}.predictions",
                schema=[
                    bigquery.SchemaField("image_uri", "STRING", mode="REQUIRED"),
                    bigquery.SchemaField("classified_at", "TIMESTAMP"),
                    bigquery.SchemaField(
                        "top_k",
                        "RECORD",
                        mode="REPEATED",
                        fields=[
                            bigquery.SchemaField("label", "STRING"),
                            bigquery.SchemaField("score", "FLOAT"),
                        ],
                    ),
                ],
            )
        )
        rows = [
            {
                "image_uri": "gs://b/cat.jpg",
                "classified_at": "2024-01-01T00:00:00Z",
                "top_k": [{"label": "tabby", "score": 0.7}, {"label": "tiger cat", "score": 0.2}],
            },
            {
                "image_uri": "gs://b/coffee.jpg",
                "classified_at": "2024-01-01T00:00:01Z",
                "top_k": [{"label": "espresso", "score": 0.96}],
            },
        ]
        short_retry = Retry(deadline=10.0)  # the fake answers some bad input with HTTP 500
        errors = bq.insert_rows_json(table, rows, row_ids=["cat", "coffee"], retry=short_retry, timeout=10)
        assert errors == []

        query = f"""
            SELECT image_uri, k.label, k.score
            FROM `{table.full_table_id.replace(":", ".")}`, UNNEST(top_k) AS k
            WHERE k.score > 0.5
            ORDER BY k.score DESC
        """
        result = [tuple(row.values()) for row in bq.query(query).result(timeout=30)]
        assert result == [("gs://b/coffee.jpg", "espresso", 0.96), ("gs://b/cat.jpg", "tabby", 0.7)]
    finally:
        bq.delete_dataset(dataset_id, delete_contents=True, not_found_ok=True)


# --------------------------------------------------------------------------------------------
# The stack's own contract: env, status, CLI, stop by PID only, errors
# --------------------------------------------------------------------------------------------


def test_env_status_and_cli_env(local_stack: Stack) -> None:
    env = local_stack.env
    assert env["PUBSUB_EMULATOR_HOST"] == f"127.0.0.1:{local_stack.ports['pubsub']}"
    assert env["STORAGE_EMULATOR_HOST"] == f"http://127.0.0.1:{local_stack.ports['gcs']}"
    assert env["BIGQUERY_EMULATOR_HOST"] == f"http://127.0.0.1:{local_stack.ports['bigquery']}"
    assert env["BUILDFLOW_GCS_EVENTS_TOPIC"] == f"projects/{local_stack.project}/topics/gcs-events"
    assert (local_stack.state_dir / "stack.env").read_text() == local_stack.export_lines()
    assert stack_mod.load(local_stack.state_dir) == local_stack
    assert all(s.up for s in stack_mod.status(local_stack.state_dir).values())

    # What the README tells users to type.
    script = (
        f'eval "$({shlex.quote(sys.executable)} -m infra.stack env --state-dir '
        f'{shlex.quote(str(local_stack.state_dir))})" && echo "$PUBSUB_EMULATOR_HOST $BIGQUERY_EMULATOR_HOST"'
    )
    out = subprocess.run(["bash", "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == [env["PUBSUB_EMULATOR_HOST"], env["BIGQUERY_EMULATOR_HOST"]]


def test_every_server_listens_on_loopback_only(local_stack: Stack) -> None:
    # Connecting through a non-loopback address of this machine must fail for every port.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.255.255.255", 1))
            own_address = probe.getsockname()[0]
        except OSError:
            pytest.skip("this machine has no non-loopback IPv4 address")
    if own_address.startswith("127."):
        pytest.skip("this machine has no non-loopback IPv4 address")
    for name, port in local_stack.ports.items():
        with pytest.raises(OSError), socket.create_connection((own_address, port), timeout=1):
            pass
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            pass
        assert name in stack_mod.PORT_NAMES


def test_start_then_stop_leaves_no_process(tmp_path: Path, local_stack: Stack) -> None:
    stack = stack_mod.start(state_dir=tmp_path / "stack", project="other-project")
    assert stack.ports.keys() == set(stack_mod.PORT_NAMES)
    assert not set(stack.ports.values()) & set(local_stack.ports.values())
    with pytest.raises(StackError, match="already running"):
        stack_mod.start(state_dir=tmp_path / "stack")

    assert sorted(stack_mod.stop(tmp_path / "stack")) == sorted(stack_mod.SERVICES)

    for service, pid in stack.pids.items():
        assert not Path(f"/proc/{pid}").exists(), f"{service} (pid {pid}) still exists after stop()"
    for port in stack.ports.values():
        with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            pass
    assert list((tmp_path / "stack").glob("*.pid")) == []
    assert not (tmp_path / "stack" / "stack.env").exists()
    assert not any(s.running for s in stack_mod.status(tmp_path / "stack").values())
    assert stack_mod.stop(tmp_path / "stack") == []  # idempotent
    # The session's stack is untouched.
    assert all(s.up for s in stack_mod.status(local_stack.state_dir).values())


def test_stop_spares_a_process_that_is_not_the_one_recorded(tmp_path: Path) -> None:
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        ticks = stack_mod._start_ticks(stranger.pid)
        record = {"service": "pubsub", "pid": stranger.pid, "argv": ["/not/what/runs"], "start_ticks": ticks}
        (tmp_path / "pubsub.pid").write_text(json.dumps(record))
        assert stack_mod.stop(tmp_path) == []
        assert stranger.poll() is None, "stop() signalled a process it did not start"
        assert not (tmp_path / "pubsub.pid").exists()
    finally:
        stranger.kill()
        stranger.wait(timeout=10)


def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        ports = {**stack_mod.free_ports(), "gcs": taken.getsockname()[1]}
        with pytest.raises(StackError, match=rf"gcs: port {ports['gcs']} on 127.0.0.1 is already in use"):
            stack_mod.start(ports, state_dir=tmp_path)
    assert list(tmp_path.glob("*.pid")) == []


def test_a_server_that_dies_at_start_is_reported_with_its_log(tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()
    argv = [sys.executable, "-c", "import sys; print('cannot bind: boom', flush=True); sys.exit(3)"]
    proc = stack_mod._spawn("pubsub", argv, tmp_path, os.environ, port=1)

    def never_ready() -> None:
        raise ConnectionRefusedError

    try:
        with pytest.raises(
            StackError, match=r"(?s)pubsub exited with code 3 while starting.*cannot bind: boom"
        ):
            stack_mod._wait_ready("pubsub", proc, tmp_path, 30.0, never_ready)
    finally:
        stack_mod.stop(tmp_path)
    assert proc.returncode == 3
