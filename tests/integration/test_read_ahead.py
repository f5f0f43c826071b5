"""Object reads overlap: a run reads bucket objects many at a time, ahead of processing,
through the stack's GCS server behind a proxy that adds 50 ms per round trip."""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

import buildflow
from benchmarks.latency_proxy import LatencyProxy
from buildflow.environment import Environment
from buildflow.events import GCSFileEvent
from buildflow.io.google import clients
from buildflow.io.google.blobs import GCSBlobReader
from buildflow.testing import InMemorySink, InMemorySource, run_processor
from tests.stack.clients import gcs_client

N = 40
DOWNLOAD = b"GET /download/"  # the object reads of the GCS JSON API
SIZE = 20_000


@dataclass
class Digest:
    name: str
    sha256: str


class DigestProcessor(buildflow.Processor):
    """One row per event: the SHA-256 of its blob, read in process_batch one after another."""

    max_batch_size = 8

    def source(self) -> InMemorySource:
        return InMemorySource((), event_type=GCSFileEvent)

    def sink(self) -> InMemorySink:
        return InMemorySink("digests")

    def process_batch(self, events: list[GCSFileEvent]) -> list[Digest]:
        return [Digest(e.name, hashlib.sha256(e.blob).hexdigest()) for e in events]


@pytest.fixture
def proxied_gcs(
    stack_env: Any, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[LatencyProxy, list[GCSFileEvent]]]:
    """Upload events of N objects of the GCS fake, whose reads go through a 50 ms proxy
    (STORAGE_EMULATOR_HOST points at it); the setup's own requests go direct."""
    bucket_name = f"read-ahead-{datetime.datetime.now().strftime('%H%M%S%f')}"
    bucket = gcs_client().create_bucket(bucket_name)
    for i in range(N):
        bucket.blob(f"obj{i:03d}").upload_from_string(bytes([i]) * SIZE)
    uploads = events(bucket_name)
    with LatencyProxy("127.0.0.1", stack_env.ports["gcs"], rtt_s=0.05) as proxy:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
        clients._client.cache_clear()  # the storage client is made once per process
        try:
            yield proxy, uploads
        finally:
            clients._client.cache_clear()


def events(bucket_name: str) -> list[GCSFileEvent]:
    env = Environment(name="emulator", state_dir=Environment.resolve("local").state_dir)
    out = []
    for blob in gcs_client().list_blobs(bucket_name):  # direct, not through the proxy
        now = datetime.datetime.now(datetime.UTC)
        gen = int(blob.generation)
        out.append(
            GCSFileEvent(
                bucket_name=bucket_name,
                name=blob.name,
                generation=gen,
                size=int(blob.size),
                content_type=None,
                event_time=now,
                event_id=GCSFileEvent.make_event_id(bucket_name, blob.name, gen),
                metadata={},
                reader=GCSBlobReader(env, None, bucket_name, blob.name, gen),
            )
        )
    return out


def expected() -> dict[str, str]:
    return {f"obj{i:03d}": hashlib.sha256(bytes([i]) * SIZE).hexdigest() for i in range(N)}


def test_objects_are_read_many_at_a_time_within_the_byte_budget(
    proxied_gcs: tuple[LatencyProxy, list[GCSFileEvent]],
) -> None:
    proxy, uploads = proxied_gcs
    budget = 6 * SIZE  # six objects read ahead at most

    class Budgeted(DigestProcessor):
        read_ahead_bytes = budget

    result = run_processor(Budgeted(), uploads)
    assert result.dead_letters == []
    assert sorted(
        (r["_event_id"].rsplit("/", 1)[1].split("#")[0], r["sha256"]) for r in result.rows
    ) == sorted(expected().items())
    assert len(result.rows) == N  # exactly one row per event
    stats = result.summary.processors[0].read_ahead
    assert 1 < stats["reads"] <= N  # the rest were reached by process_batch first (budget)
    assert proxy.peak_in_flight_of(DOWNLOAD) > 1, proxy.peak_in_flight_of(
        DOWNLOAD
    )  # several requests waited at once
    assert 1 < stats["peak_requests"]
    assert stats["peak_bytes"] <= budget


def test_without_read_ahead_the_same_run_reads_one_object_at_a_time(
    proxied_gcs: tuple[LatencyProxy, list[GCSFileEvent]],
) -> None:
    """The check above, the other way: the proxy does see a one-at-a-time reader."""
    proxy, uploads = proxied_gcs

    class Serial(DigestProcessor):
        read_ahead_requests = 0

    result = run_processor(Serial(), uploads)
    assert len(result.rows) == N and result.dead_letters == []
    assert proxy.peak_in_flight_of(DOWNLOAD) == 1
    assert result.summary.processors[0].read_ahead == {}
