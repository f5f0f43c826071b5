"""Producers: publish a folder of images to a Kafka topic or a Pub/Sub topic.

The folder is walked recursively; a file's sub-folder name becomes its ``label`` (as in
flower-photo style data sets: ``roses/123.jpg`` -> label ``roses``). Files are sent as fast
as possible or at a fixed rate, in any payload format of :class:`buildflow.io.KafkaTopic`.

    buildflow produce ~/flowers --kafka 127.0.0.1:9092/images --format json --rate 50
    buildflow produce ~/flowers --pubsub projects/my-project/topics/images
    buildflow produce ~/flowers --kafka 127.0.0.1:9092/images --format pixels
    buildflow produce --dataset flowers:test --start 0 --end 1000 --kafka 127.0.0.1:9092/flowers

``--dataset NAME[:SPLIT]`` publishes a registered data set's examples by index range instead
of a folder (:mod:`buildflow.datasets`: the app registers its data sets; each example is an
encoded image with its true class name as the ``label``), so a classifier's streamed
accuracy can be measured.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Literal, get_args

from buildflow.errors import ConfigurationError
from buildflow.io.kafka.declarations import KafkaTopic
from buildflow.io.kafka.envelope import confluent_kafka_module, encode_json_envelope
from buildflow.io.payloads import encode_pixel_payload

__all__ = [
    "PRODUCE_FORMATS",
    "ProduceFormat",
    "ProducerTarget",
    "KafkaProducerTarget",
    "PubSubProducerTarget",
    "iter_images",
    "produce",
    "produce_items",
]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff")


def iter_images(folder: Path) -> Iterator[tuple[Path, str, str | None]]:
    """``(path, name relative to folder, label)`` of every image file under ``folder``, sorted.

    Raises:
        ConfigurationError: ``folder`` is not a folder.
    """
    if not folder.is_dir():
        raise ConfigurationError(f"{str(folder)!r} is not a folder")
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith("."):
            rel = path.relative_to(folder)
            yield path, rel.as_posix(), (rel.parts[-2] if len(rel.parts) > 1 else None)


class ProducerTarget(ABC):
    """Where a producer sends images."""

    @abstractmethod
    def send(self, name: str, data: bytes, *, label: str | None, path: Path | None = None) -> None:
        """Send one image (asynchronously; :meth:`close` waits for delivery)."""

    @abstractmethod
    def close(self) -> None:
        """Wait for every send to be delivered.

        Raises:
            RuntimeError: some sends failed (the message says how many and why).
        """


#: What a producer can send: the payload formats of the sources, plus ``pixels`` (the
#: training API's ``{"data", "timestamp", "image": nested uint8 lists}``, which a source
#: with ``payload_format="json"`` reads).
ProduceFormat = Literal["raw", "json", "reference", "pixels"]
PRODUCE_FORMATS: tuple[str, ...] = get_args(ProduceFormat)


def _payload(fmt: str, name: str, data: bytes, label: str | None, path: Path | None) -> bytes:
    if fmt == "json":
        return encode_json_envelope(name, data, path=str(path) if path else name, label=label)
    if fmt == "pixels":
        return encode_pixel_payload(data)
    if fmt == "reference":
        if path is None:
            raise ConfigurationError("the reference format sends file paths: give a folder of files")
        return str(path).encode()
    return data


class KafkaProducerTarget(ProducerTarget):
    """Produces in ``fmt`` (default: the declaration's payload format): ``raw`` (value =
    bytes), ``json`` (the JSON envelope), ``pixels`` (the training API's pixel payload) or
    ``reference`` (value = the path); key = the image's name, header ``label`` = its label."""

    def __init__(self, decl: KafkaTopic, fmt: ProduceFormat | None = None) -> None:
        self.decl = decl
        self.fmt = fmt or decl.payload_format
        self._producer = confluent_kafka_module().Producer(
            {
                "bootstrap.servers": decl.bootstrap_servers,
                "linger.ms": 5,
                "message.max.bytes": max(decl.max_message_bytes + 4096, 1_000_000),
                **dict(decl.producer_config),
            }
        )
        self._errors: list[str] = []

    def _delivered(self, err: Any, msg: Any) -> None:
        if err is not None:
            self._errors.append(str(err))

    def send(self, name: str, data: bytes, *, label: str | None, path: Path | None = None) -> None:
        headers = [("label", label.encode())] if label else []
        value = _payload(self.fmt, name, data, label, path)
        while True:
            try:
                self._producer.produce(
                    self.decl.topic,
                    value=value,
                    key=name.encode(),
                    headers=headers,
                    on_delivery=self._delivered,
                )
                break
            except BufferError:  # local queue full: let deliveries drain
                self._producer.poll(0.1)
        self._producer.poll(0)

    def close(self) -> None:
        left = self._producer.flush(60)
        if left or self._errors:
            why = (
                f"errors: {self._errors[:3]}"
                if self._errors
                else f"no delivery report within 60 s: is the broker at "
                f"{self.decl.bootstrap_servers!r} up, and does topic {self.decl.topic!r} exist?"
            )
            raise RuntimeError(f"{left} messages undelivered; {why}")


class PubSubProducerTarget(ProducerTarget):
    """Publishes in ``fmt``: ``raw`` (the image bytes), ``json`` (the JSON envelope) or
    ``pixels`` (the training API's pixel payload), with ``name`` and ``label`` attributes.

    Raises:
        ConfigurationError: ``fmt`` is ``reference`` (Kafka only) or unknown.
    """

    def __init__(self, topic_path: str, fmt: ProduceFormat = "raw") -> None:
        from buildflow.extras import import_optional

        if fmt not in ("raw", "json", "pixels"):
            raise ConfigurationError(f"Pub/Sub payload format {fmt!r}: use raw, json or pixels")
        self.fmt = fmt
        self.topic_path = topic_path
        pubsub = import_optional("google.cloud.pubsub_v1", extra="gcp", needed_by="producing to Pub/Sub")
        self._client = pubsub.PublisherClient()
        self._futures: list[Any] = []

    def send(self, name: str, data: bytes, *, label: str | None, path: Path | None = None) -> None:
        attrs = {"name": name} | ({"label": label} if label else {})
        payload = _payload(self.fmt, name, data, label, path)
        self._futures.append(self._client.publish(self.topic_path, payload, **attrs))

    def close(self) -> None:
        failed = []
        for f in self._futures:
            try:
                f.result(timeout=60)
            except Exception as e:
                failed.append(str(e))
        if failed:
            raise RuntimeError(f"{len(failed)} messages failed; first: {failed[0]}")


def produce(
    folder: Path,
    target: ProducerTarget,
    *,
    rate: float | None = None,
    limit: int | None = None,
    on_sent: Callable[[int, int], None] | None = None,
) -> int:
    """Send every image under ``folder`` (at most ``limit``) at ``rate`` per second (None:
    as fast as possible). Calls ``on_sent(sent, total)`` after each. Returns the count."""
    images = list(iter_images(folder))[:limit]
    t0 = time.monotonic()
    for i, (path, name, label) in enumerate(images):
        if rate:
            time.sleep(max(0.0, t0 + i / rate - time.monotonic()))
        target.send(name, path.read_bytes(), label=label, path=path)
        if on_sent is not None:
            on_sent(i + 1, len(images))
    target.close()
    return len(images)


def produce_items(
    items: Iterable[tuple[str, bytes, str | None]],
    target: ProducerTarget,
    *,
    total: int | None = None,
    rate: float | None = None,
    on_sent: Callable[[int, int], None] | None = None,
) -> int:
    """Send in-memory images ``(name, data, label)`` in order (e.g. a registered data set's
    :meth:`buildflow.datasets.Dataset.read`) at ``rate`` per second (None: as fast as
    possible), then wait for delivery. ``reference`` payloads need files: use :func:`produce`.

    Calls ``on_sent(sent, total)`` after each (``total``: the expected count, for progress).
    Returns the count sent.

    Raises:
        RuntimeError: Some sends were not delivered.
    """
    t0 = time.monotonic()
    sent = 0
    for name, data, label in items:
        if rate:
            time.sleep(max(0.0, t0 + sent / rate - time.monotonic()))
        target.send(name, data, label=label)
        sent += 1
        if on_sent is not None:
            on_sent(sent, total or sent)
    target.close()
    return sent
