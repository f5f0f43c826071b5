"""Fashion-MNIST's IDX files and the producer's PNG messages: lossless, labelled, by range."""

from __future__ import annotations

import gzip
import io
import struct
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from buildflow.errors import ConfigurationError
from buildflow.producer import ProducerTarget, produce_items
from infra.stack import Stack
from models.datasets.fashion_mnist import (
    FASHION_MNIST,
    FASHION_MNIST_CLASSES,
    fashion_mnist_png,
    load_fashion_mnist,
    read_idx,
)
from tests.training.helpers import needs_fashion_mnist


def _idx(shape: tuple[int, ...], data: bytes) -> bytes:
    return bytes([0, 0, 0x08, len(shape)]) + struct.pack(f">{len(shape)}I", *shape) + data


def test_read_idx_reads_plain_and_gzipped_files(tmp_path: Path) -> None:
    raw = _idx((2, 2, 3), bytes(range(12)))
    (tmp_path / "a").write_bytes(raw)
    (tmp_path / "a.gz").write_bytes(gzip.compress(raw))
    for name in ("a", "a.gz"):
        array = read_idx(tmp_path / name)
        assert array.shape == (2, 2, 3) and array.item_bytes(1) == bytes(range(6, 12))
    (tmp_path / "short").write_bytes(_idx((2, 2), b"\x00\x01\x02"))
    with pytest.raises(ValueError, match=r"shape \(2, 2\) needs 4 bytes, the file has 3"):
        read_idx(tmp_path / "short")
    (tmp_path / "text").write_bytes(b"hello")
    with pytest.raises(ValueError, match="is not an IDX file"):
        read_idx(tmp_path / "text")


def test_missing_files_say_how_to_install_them(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist("test", tmp_path)


@needs_fashion_mnist
def test_the_png_messages_are_the_original_pixels_with_their_class_names() -> None:
    images, labels = load_fashion_mnist("test")
    assert images.shape == (10_000, 28, 28) and len(labels) == 10_000
    items = list(fashion_mnist_png("test", 100, 103))
    assert [name for name, _, _ in items] == [f"fashion-mnist/test/{i:05d}.png" for i in (100, 101, 102)]
    for i, (_, png, label) in zip(range(100, 103), items):
        assert label == FASHION_MNIST_CLASSES[labels[i]]
        decoded = Image.open(io.BytesIO(png))
        assert decoded.format == "PNG" and decoded.mode == "L" and decoded.size == (28, 28)
        assert np.asarray(decoded).tobytes() == images.item_bytes(i)
    with pytest.raises(ConfigurationError, match="range 5..5 is empty or outside 0..10000"):
        list(fashion_mnist_png("test", 5, 5))
    with pytest.raises(ConfigurationError, match="outside 0..10000"):
        list(fashion_mnist_png("test", 0, 10_001))


@needs_fashion_mnist
def test_the_registered_data_set_is_the_files_splits_and_pngs() -> None:
    import processors  # noqa: F401  (registers Fashion-MNIST on import)
    from buildflow.datasets import parse_dataset_spec

    assert parse_dataset_spec("fashion-mnist") == (FASHION_MNIST, "test")
    for split, size in FASHION_MNIST.splits.items():
        assert load_fashion_mnist(split)[0].shape == (size, 28, 28)  # type: ignore[arg-type]
    assert list(FASHION_MNIST.read("train", 7, 9)) == list(fashion_mnist_png("train", 7, 9))
    assert FASHION_MNIST.label_names == FASHION_MNIST_CLASSES


class _Collect(ProducerTarget):
    def __init__(self) -> None:
        self.sent: list[tuple[str, int, str | None]] = []
        self.closed = False

    def send(self, name: str, data: bytes, *, label: str | None, path: Path | None = None) -> None:
        self.sent.append((name, len(data), label))

    def close(self) -> None:
        self.closed = True


def test_produce_items_sends_everything_then_closes() -> None:
    target = _Collect()
    progress: list[tuple[int, int]] = []
    items = [("a.png", b"12", "Bag"), ("b.png", b"345", None)]
    n = produce_items(items, target, total=2, on_sent=lambda i, t: progress.append((i, t)))
    assert n == 2 and target.closed
    assert target.sent == [("a.png", 2, "Bag"), ("b.png", 3, None)]
    assert progress == [(1, 2), (2, 2)]


@needs_fashion_mnist
def test_the_producer_publishes_fashion_mnist_to_pubsub_with_label_attributes(stack_env: Stack) -> None:
    from google.cloud import pubsub_v1

    from buildflow.producer import PubSubProducerTarget

    project, suffix = "buildflow-local", uuid.uuid4().hex[:8]
    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    topic = publisher.create_topic(name=f"projects/{project}/topics/fashion-{suffix}").name
    sub = subscriber.create_subscription(
        name=f"projects/{project}/subscriptions/fashion-{suffix}", topic=topic
    ).name
    try:
        sent = produce_items(fashion_mnist_png("test", 10, 15), PubSubProducerTarget(topic), total=5)
        assert sent == 5
        got: dict[str, tuple[bytes, dict[str, str]]] = {}
        for _ in range(20):  # each pull waits for messages on the server side
            response = subscriber.pull(subscription=sub, max_messages=10, timeout=10)
            for m in response.received_messages:
                got[m.message.attributes["name"]] = (m.message.data, dict(m.message.attributes))
            if response.received_messages:
                subscriber.acknowledge(
                    subscription=sub, ack_ids=[m.ack_id for m in response.received_messages]
                )
            if len(got) == 5:
                break
        expected = {name: (png, label) for name, png, label in fashion_mnist_png("test", 10, 15)}
        assert got.keys() == expected.keys()
        for name, (data, attrs) in got.items():
            assert data == expected[name][0] and attrs["label"] == expected[name][1]
    finally:
        subscriber.delete_subscription(subscription=sub)
        publisher.delete_topic(topic=topic)
