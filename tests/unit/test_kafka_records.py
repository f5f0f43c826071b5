"""Kafka records -> envelopes (:func:`buildflow.io.kafka.provider.decode_record`): the event's
coordinates, name, label, time and image for each payload format, and a dead-letter reason
(``Envelope.error``) for every record that cannot become an event. The record on the far
side is a stand-in with confluent-kafka's ``Message`` accessors; the decoding is the
provider's own. The broker round trip of the same formats is in
tests/integration/test_kafka_e2e.py (slow: it needs the broker of the local stack)."""

from __future__ import annotations

import base64
import datetime
import json
from pathlib import Path

import pytest

from buildflow.io import KafkaTopic
from buildflow.io.google.blobs import GCSBlobReader
from buildflow.io.kafka.provider import LocalFileBlob, decode_record

UTC = datetime.UTC
RECORD_MS = 1_700_000_000_123  # the record's own timestamp (ms since the epoch)


class Record:
    """confluent_kafka.Message's accessors over fixed values."""

    def __init__(
        self,
        value: bytes | None,
        *,
        key: bytes | None = None,
        headers: list[tuple[str, bytes | None]] | None = None,
        timestamp_ms: int = RECORD_MS,
        partition: int = 3,
        offset: int = 41,
    ) -> None:
        self._value, self._key, self._headers = value, key, headers
        self._ts, self._p, self._o = timestamp_ms, partition, offset

    def topic(self) -> str:
        return "photos"

    def partition(self) -> int:
        return self._p

    def offset(self) -> int:
        return self._o

    def value(self) -> bytes | None:
        return self._value

    def key(self) -> bytes | None:
        return self._key

    def headers(self) -> list[tuple[str, bytes | None]] | None:
        return self._headers

    def timestamp(self) -> tuple[int, int]:
        return (1, self._ts)


def topic(**kw: object) -> KafkaTopic:
    return KafkaTopic(bootstrap_servers="127.0.0.1:9", topic="photos", **kw)  # type: ignore[arg-type]


def test_a_raw_record_carries_its_coordinates_key_headers_and_time() -> None:
    rec = Record(
        b"\xff\xd8jpeg", key=b"cat-\xff1", headers=[("label", b"cat"), ("src", None), ("cam", b"n\xe9")]
    )
    env = decode_record(rec, topic(), None)
    ev = env.event
    assert env.error is None
    assert (env.event_id, env.ack_id) == ("photos/3/41", ("photos", 3, 41))
    assert (ev.topic, ev.partition, ev.offset, ev.event_id) == ("photos", 3, 41, "photos/3/41")
    # undecodable key bytes are replaced, not an error
    assert ev.key == ev.name == env.object_name == "cat-\ufffd1"
    assert ev.label == "cat"
    assert dict(ev.metadata) == {"label": "cat", "src": "", "cam": "n\ufffd"}
    assert ev.event_time == datetime.datetime.fromtimestamp(RECORD_MS / 1000, tz=UTC)
    assert ev.blob == b"\xff\xd8jpeg"
    assert env.received_at.tzinfo is UTC and env.attempt == 1


def test_without_key_headers_or_timestamp_the_name_is_the_coordinates_and_the_time_now() -> None:
    before = datetime.datetime.now(UTC)
    env = decode_record(Record(b"img", timestamp_ms=0), topic(), None)
    after = datetime.datetime.now(UTC)
    ev = env.event
    assert env.error is None
    assert ev.key is None and ev.label is None and dict(ev.metadata) == {}
    assert ev.name == env.object_name == "photos/3/41"
    assert before <= ev.event_time <= after
    assert ev.event_time == env.received_at


def test_a_record_timestamp_of_one_millisecond_is_the_records_time() -> None:
    ev = decode_record(Record(b"img", timestamp_ms=1), topic(), None).event
    assert ev.event_time == datetime.datetime(1970, 1, 1, 0, 0, 0, 1000, tzinfo=UTC)


@pytest.mark.parametrize("value", [b"", None])
def test_an_empty_raw_record_is_dead_lettered(value: bytes | None) -> None:
    env = decode_record(Record(value), topic(), None)
    assert isinstance(env.error, ValueError)
    assert str(env.error) == "empty record: no image bytes"


def test_a_record_over_max_message_bytes_is_dead_lettered_unread() -> None:
    decl = topic(max_message_bytes=4)
    assert decode_record(Record(b"1234"), decl, None).error is None  # the limit itself is fine
    env = decode_record(Record(b"12345"), decl, None)
    assert str(env.error) == "record of 5 bytes is over max_message_bytes=4"
    assert env.event.blob == b""


def test_a_json_record_names_labels_and_times_the_event_from_its_payload() -> None:
    doc = {
        "image_id": "img-7",
        "label": "dog",
        "image_data": base64.b64encode(b"png bytes").decode(),
        "timestamp": "2024-05-01T12:00:00+00:00",
    }
    rec = Record(json.dumps(doc).encode(), key=b"k", headers=[("label", b"cat")])
    env = decode_record(rec, topic(payload_format="json"), None)
    ev = env.event
    assert env.error is None
    assert ev.name == env.object_name == "img-7"
    assert ev.label == "dog"  # the payload's label wins over the header's
    assert ev.event_time == datetime.datetime(2024, 5, 1, 12, tzinfo=UTC)
    assert ev.blob == b"png bytes"
    assert ev.key == "k"


def test_a_json_record_without_name_label_or_time_keeps_the_records_own() -> None:
    doc = {"image_data": base64.b64encode(b"x").decode()}
    rec = Record(json.dumps(doc).encode(), key=b"k1", headers=[("label", b"cat")])
    ev = decode_record(rec, topic(payload_format="json"), None).event
    assert (ev.name, ev.label) == ("k1", "cat")
    assert ev.event_time == datetime.datetime.fromtimestamp(RECORD_MS / 1000, tz=UTC)


def test_a_json_pixel_payload_over_max_pixels_is_dead_lettered() -> None:
    doc = {"image": [[0, 0], [0, 0]]}
    value = json.dumps(doc).encode()
    assert decode_record(Record(value), topic(payload_format="json", max_pixels=4), None).error is None
    env = decode_record(Record(value), topic(payload_format="json", max_pixels=3), None)
    assert env.error is not None and "max_pixels" in str(env.error)


def test_a_record_that_is_not_json_is_dead_lettered_with_the_reason() -> None:
    env = decode_record(Record(b"{not json"), topic(payload_format="json"), None)
    assert env.error is not None and str(env.error).startswith("not JSON")
    assert env.event.blob == b""


def test_a_gcs_reference_reads_that_object() -> None:
    rec = Record(b" gs://bucket/dir/a.jpg\n")
    env = decode_record(rec, topic(payload_format="reference"), "the-env")
    reader = env.event.reader
    assert env.error is None
    assert isinstance(reader, GCSBlobReader)
    assert reader.env == "the-env"  # type: ignore[comparison-overlap]
    assert (reader.project, reader.bucket, reader.name, reader.generation) == (
        None,
        "bucket",
        "dir/a.jpg",
        None,
    )
    assert env.event.name == "gs://bucket/dir/a.jpg"  # no key: the reference names it
    keyed = decode_record(
        Record(b"gs://bucket/dir/a.jpg", key=b"id-1"), topic(payload_format="reference"), None
    )
    assert keyed.event.name == "id-1"


@pytest.mark.parametrize("ref", ["gs://bucket", "gs://bucket/", "gs:///object"])
def test_a_malformed_gcs_reference_is_dead_lettered(ref: str) -> None:
    env = decode_record(Record(ref.encode()), topic(payload_format="reference"), None)
    assert str(env.error) == f"malformed reference {ref!r}: expected gs://bucket/object"


def test_a_local_reference_is_refused_without_reference_root(tmp_path: Path) -> None:
    env = decode_record(Record(b"a.jpg"), topic(payload_format="reference"), None)
    assert str(env.error) == "local reference 'a.jpg' refused: set reference_root on the KafkaTopic"
    bad = decode_record(Record(b"caf\xe9.jpg"), topic(payload_format="reference"), None)
    assert str(bad.error) == "local reference 'caf\ufffd.jpg' refused: set reference_root on the KafkaTopic"


def test_a_local_reference_reads_inside_reference_root_only(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(b"local image")
    decl = topic(payload_format="reference", reference_root=str(tmp_path))
    env = decode_record(Record(b"a.jpg"), decl, None)
    assert env.error is None
    assert env.event.reader == LocalFileBlob(str(tmp_path), "a.jpg")
    assert env.event.blob == b"local image"
    outside = decode_record(Record(b"../escape.jpg"), decl, None)
    assert outside.error is None  # refused when read: the runtime dead-letters the read error
    root = str(tmp_path.resolve())
    with pytest.raises(PermissionError, match=f"resolves outside reference_root {root!r}$"):
        outside.event.reader.read()
