"""Pure parts of the Google providers: notification decoding and BigQuery JSON values."""

from __future__ import annotations

import datetime
import json
import types

import pytest

from buildflow.environment import Environment
from buildflow.io import GCSFileStream
from buildflow.io.base import OutputRecord
from buildflow.io.google.bigquery import insert_id, to_json
from buildflow.io.google.gcs import decode_notification

ENV = Environment(name="emulator", state_dir=Environment.resolve("local").state_dir)


def received(attrs: dict[str, str], data: bytes = b"", message_id: str = "42") -> types.SimpleNamespace:
    message = types.SimpleNamespace(attributes=attrs, data=data, message_id=message_id)
    return types.SimpleNamespace(message=message, ack_id="ack-1", delivery_attempt=0)


def finalize(bucket: str = "photos", name: str = "cat.jpg", **extra: str) -> dict[str, str]:
    return {
        "bucketId": bucket,
        "objectId": name,
        "objectGeneration": "1700000000123456",
        "eventType": "OBJECT_FINALIZE",
        "eventTime": "2026-11-22T05:00:00.123456Z",
        "payloadFormat": "JSON_API_V1",
        **extra,
    }


PAYLOAD = json.dumps({"size": "1234", "contentType": "image/jpeg", "metadata": {"label": "cat"}}).encode()


def test_finalize_notification_becomes_a_gcs_file_event() -> None:
    env = decode_notification(received(finalize(), PAYLOAD), GCSFileStream(bucket_name="photos"), ENV, "p")
    assert env is not None and env.error is None
    e = env.event
    assert (e.bucket_name, e.name, e.generation, e.size) == ("photos", "cat.jpg", 1700000000123456, 1234)
    assert e.content_type == "image/jpeg" and e.object_metadata == {"label": "cat"}
    assert e.event_id == env.event_id == "photos/cat.jpg#1700000000123456"
    assert e.event_time == datetime.datetime(2026, 11, 22, 5, 0, 0, 123456, tzinfo=datetime.UTC)
    assert e.metadata["objectId"] == "cat.jpg" and env.ack_id == "ack-1"


@pytest.mark.parametrize(
    "attrs, decl",
    [
        (finalize(eventType="OBJECT_DELETE"), GCSFileStream(bucket_name="photos")),
        (finalize(bucket="other-bucket"), GCSFileStream(bucket_name="photos")),
        (finalize(name="raw/cat.jpg"), GCSFileStream(bucket_name="photos", prefix="incoming/")),
    ],
)
def test_other_events_buckets_and_prefixes_are_skipped(attrs: dict[str, str], decl: GCSFileStream) -> None:
    assert decode_notification(received(attrs, PAYLOAD), decl, ENV, "p") is None


def test_wrong_content_type_is_skipped() -> None:
    payload = json.dumps({"size": "3", "contentType": "text/plain"}).encode()
    decl = GCSFileStream(bucket_name="photos", content_types=("image/",))
    assert decode_notification(received(finalize(), payload), decl, ENV, "p") is None


def test_message_without_notification_attributes_is_dead_lettered() -> None:
    env = decode_notification(received({"foo": "bar"}, b"hi"), GCSFileStream(bucket_name="photos"), ENV, "p")
    assert env is not None and isinstance(env.error, ValueError)
    assert "bucketId" in str(env.error) and env.event_id == "pubsub:42"


def test_malformed_payload_is_dead_lettered() -> None:
    env = decode_notification(
        received(finalize(), b"{not json"), GCSFileStream(bucket_name="photos"), ENV, "p"
    )
    assert env is not None and "malformed notification payload" in str(env.error)


def test_bigquery_json_values() -> None:
    ts = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    row = {"t": ts, "d": datetime.date(2026, 1, 2), "b": b"\x00\xff", "r": [{"x": ts}], "n": None}
    assert to_json(row) == {
        "t": "2026-01-02T03:04:05+00:00",
        "d": "2026-01-02",
        "b": "AP8=",
        "r": [{"x": "2026-01-02T03:04:05+00:00"}],
        "n": None,
    }


def test_insert_ids_are_stable_and_within_the_limit() -> None:
    short = OutputRecord("photos/cat.jpg#1", 2, {})
    assert insert_id(short) == "photos/cat.jpg#1/2"
    long = OutputRecord("photos/" + "x" * 200 + "#1", 0, {})
    assert len(insert_id(long)) == 64 and insert_id(long) == insert_id(long)
