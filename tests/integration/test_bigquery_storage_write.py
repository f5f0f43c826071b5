"""The default BigQuery sink, the Storage Write API (``write_mode="upsert"``/``"append"``),
against the local stack's bqemulator (patched at install: ``infra/patches/bqemulator.py``):
nested REPEATED RECORDs round-trip, a redelivered batch collapses in the ``_dedup`` view,
the writes start no query job, and a ``kill -9`` mid-stream then a restart lose nothing
and duplicate nothing as users are told to query.

Row-level errors (``row_errors``) are something bqemulator never answers, so one test
serves the BigQueryWrite gRPC service itself (a fake of the other side, over real gRPC,
through the official client): the named rows are dead-lettered alone and the others are
sent again; the same server records the request shapes (one connection per sink,
``write_stream`` on every request, the writer schema on the first)."""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from buildflow.environment import Environment
from buildflow.io import BigQueryTable
from buildflow.io.base import OutputRecord
from buildflow.io.google.bigquery import BigQueryTableProvider
from buildflow.io.google.bigquery_storage_write import StorageWriteSink
from buildflow.provisioning import apply, plan
from buildflow.schema import row_to_record
from tests.integration.test_bigquery_sink import PROJECT, SCHEMA, bq, query, records, sample_rows

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]


@pytest.fixture
def env(stack_env: Any, tmp_path: Path) -> Environment:
    return Environment(name="emulator", state_dir=tmp_path)


@pytest.fixture
def dataset(stack_env: Any) -> Iterator[str]:
    name = f"sw_{os.getpid()}_{time.monotonic_ns() % 10**9}"
    yield name
    bq().delete_dataset(f"{PROJECT}.{name}", delete_contents=True, not_found_ok=True)


def planned(env: Environment, table_id: str, write_mode: str = "upsert") -> BigQueryTableProvider:
    p = BigQueryTableProvider(
        BigQueryTable(table_id=table_id, destroy_protection=False, write_mode=write_mode),  # type: ignore[arg-type]
        env,
    )
    apply(plan(p.resources(SCHEMA)))
    return p


def job_count() -> int:
    return len(list(bq().list_jobs(all_users=True)))


def without_meta(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in ("_event_id", "_row_index", "_written_at")}


@pytest.mark.parametrize("mode", ["upsert", "append"])
def test_nested_rows_round_trip_and_a_redelivery_collapses_in_the_view_without_query_jobs(
    env: Environment, dataset: str, mode: str
) -> None:
    table_id = f"{PROJECT}.{dataset}.rows"
    p = planned(env, table_id, mode)
    assert {c.action for c in plan(p.resources(SCHEMA))} == {"no change"}
    assert bq().get_table(table_id).time_partitioning.field == "_written_at"

    before = job_count()
    sink = p.open(SCHEMA)
    try:
        assert asyncio.run(sink.write(records(sample_rows()))) is None
        assert asyncio.run(sink.write(records(sample_rows()))) is None  # a redelivery
    finally:
        asyncio.run(sink.close())
    assert job_count() == before, "the sink's writes started a query job"

    raw = query(f"SELECT _event_id FROM `{table_id}`")
    assert len(raw) == 6  # bqemulator applies no CDC: both appends are in the table
    assert job_count() == before + 1  # the count does see query jobs
    view = {r["name"]: r for r in query(f"SELECT * FROM `{table_id}_dedup`")}
    assert len(view) == 3
    for i, row in enumerate(sample_rows()):
        have = view[row.name]
        assert (have["_event_id"], have["_row_index"]) == (f"ev{i}", 0)
        assert have["_written_at"] is not None
        assert without_meta(have) == row_to_record(row, SCHEMA), row.name


def test_a_value_that_cannot_be_encoded_is_rejected_alone(env: Environment, dataset: str) -> None:
    table_id = f"{PROJECT}.{dataset}.rows"
    sink = planned(env, table_id).open(SCHEMA)
    good = records(sample_rows())
    bad = OutputRecord("bad-bytes", 0, {**good[0].values, "data": "text, not bytes"})
    try:
        rejected = asyncio.run(sink.write([good[0], bad, good[1]]))
    finally:
        asyncio.run(sink.close())
    assert rejected is not None and [r.index for r in rejected] == [1]
    assert "cannot pass the row to BigQuery" in rejected[0].reason
    assert sorted(r["_event_id"] for r in query(f"SELECT _event_id FROM `{table_id}_dedup`")) == [
        "ev0",
        "ev1",
    ]


def test_queries_while_rows_are_appended_neither_hang_nor_miss_rows(env: Environment, dataset: str) -> None:
    """Users query the table while a run appends to it. bqemulator 1.4.0 ran both on one
    DuckDB connection from two threads and hung within a few appends (patch 3 in
    ``infra/patches/bqemulator.py``): 40 appends of 3 rows each, queries of the table and of
    its view back to back meanwhile; every append answered, every query too, and the
    view ends with all 120 rows."""
    table_id = f"{PROJECT}.{dataset}.rows"
    p = planned(env, table_id)
    appends = 40

    def writer() -> None:
        sink = p.open(SCHEMA)
        try:
            for n in range(appends):
                assert asyncio.run(sink.write(records(sample_rows(), prefix=f"w{n}-"))) is None
        finally:
            asyncio.run(sink.close())

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        written = pool.submit(writer)
        queries = 0
        while not written.done() or queries < 2:
            query(f"SELECT count(*) AS n FROM `{table_id}`")
            query(f"SELECT count(*) AS n FROM `{table_id}_dedup`")
            queries += 1
        written.result()
    assert queries >= 2
    [count] = query(f"SELECT count(*) AS n FROM `{table_id}_dedup`")
    assert count["n"] == appends * len(sample_rows())


# --- a BigQueryWrite server of our own: row_errors and request shapes --------------------


class FakeWrite(grpc.GenericRpcHandler):
    """AppendRows that refuses every request holding a row whose ``name`` starts with
    ``bad``: with ``row_errors`` naming those rows (``refuse="rows"``, what BigQuery does
    for a value it cannot convert) or with INVALID_ARGUMENT alone (``refuse="request"``)."""

    def __init__(self, refuse: str) -> None:
        self.refuse = refuse
        self.requests: list[Any] = []
        self.connections = 0
        self.appended: list[str] = []
        self.answer_after_s = 0.0

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        from google.cloud.bigquery_storage_v1 import types

        if details.method != "/google.cloud.bigquery.storage.v1.BigQueryWrite/AppendRows":
            return None
        return grpc.stream_stream_rpc_method_handler(
            self.append_rows,
            request_deserializer=types.AppendRowsRequest.deserialize,
            response_serializer=types.AppendRowsResponse.serialize,
        )

    def append_rows(self, requests: Iterator[Any], context: Any) -> Iterator[Any]:
        from google.cloud.bigquery_storage_v1 import types
        from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
        from google.rpc import status_pb2

        self.connections += 1
        cls: Any = None
        for request in requests:
            self.requests.append(request)
            descriptor = request.proto_rows.writer_schema.proto_descriptor
            if descriptor.name:
                pool = descriptor_pool.DescriptorPool()
                file = descriptor_pb2.FileDescriptorProto(name="w.proto", syntax="proto2")
                file.message_type.add().CopyFrom(descriptor)
                pool.Add(file)
                cls = message_factory.GetMessageClass(pool.FindMessageTypeByName(descriptor.name))
            rows = [cls.FromString(b) for b in request.proto_rows.rows.serialized_rows]
            bad = [i for i, r in enumerate(rows) if r.name.startswith("bad")]
            if not bad:
                self.appended += [r.name for r in rows]
                time.sleep(self.answer_after_s)  # a server that takes its time to answer
                yield types.AppendRowsResponse(append_result=types.AppendRowsResponse.AppendResult())
                continue
            error = status_pb2.Status(code=grpc.StatusCode.INVALID_ARGUMENT.value[0], message="invalid rows")
            row_errors = [
                types.RowError(
                    index=i,
                    code=types.RowError.RowErrorCode.FIELDS_ERROR,
                    message=f"cannot convert {rows[i].name}",
                )
                for i in bad
            ]
            yield types.AppendRowsResponse(
                error=error, row_errors=row_errors if self.refuse == "rows" else [], write_stream=""
            )


@pytest.fixture
def fake_write(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Iterator[FakeWrite]:
    from google.cloud.bigquery_storage_v1 import BigQueryWriteClient
    from google.cloud.bigquery_storage_v1.services.big_query_write.transports import (
        BigQueryWriteGrpcTransport,
    )

    import buildflow.io.google.bigquery_storage_write as mod

    handler = FakeWrite(getattr(request, "param", "rows"))
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    client = BigQueryWriteClient(transport=BigQueryWriteGrpcTransport(channel=channel))
    monkeypatch.setattr(mod, "bigquery_write_client", lambda env: client)
    try:
        yield handler
    finally:
        channel.close()
        server.stop(grace=None).wait(5)


def test_a_write_notices_its_acknowledgement_within_the_poll_interval(
    fake_write: FakeWrite, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The answer to an append reaches its future on the client's response thread, but
    ``AppendRowsFuture.result()`` only looks at its next poll; google-api-core's default
    polling sleeps up to seconds between looks (each write waited 0-1 s after its answer,
    median ~0.4 s). With a server that answers after 50 ms, every sleep while the sink
    waits is at most ``ACK_POLL_S``'s longest interval."""
    from google.api_core.retry import retry_unary

    from buildflow.io.google.bigquery_storage_write import ACK_POLL_S

    sleeps: list[float] = []

    class RecordingTime:
        def __getattr__(self, name: str) -> Any:
            return getattr(time, name)

        def sleep(self, seconds: float) -> None:
            sleeps.append(seconds)
            time.sleep(seconds)

    monkeypatch.setattr(retry_unary, "time", RecordingTime())
    fake_write.answer_after_s = 0.05
    env = Environment(name="gcp", state_dir=tmp_path)
    sink = StorageWriteSink(env, "proj-ect", "proj-ect.ds.rows", SCHEMA, "upsert")
    try:
        for n in range(3):
            assert asyncio.run(sink.write(named([f"n{n}-{i}" for i in range(5)]))) is None
    finally:
        asyncio.run(sink.close())
    assert len(fake_write.appended) == 15
    assert sleeps, "the sink never waited for an answer (the server answers after 50 ms)"
    assert max(sleeps) <= ACK_POLL_S[1], sorted(sleeps)[-3:]


def named(names: list[str]) -> list[OutputRecord]:
    base = records(sample_rows())[0].values
    return [OutputRecord(f"ev-{n}", 0, {**base, "name": n}) for n in names]


def test_rows_named_in_row_errors_are_dead_lettered_alone_and_the_others_sent_again(
    fake_write: FakeWrite, tmp_path: Path
) -> None:
    env = Environment(name="gcp", state_dir=tmp_path)
    sink = StorageWriteSink(env, "proj-ect", "proj-ect.ds.rows", SCHEMA, "upsert")
    try:
        rejected = asyncio.run(sink.write(named(["a", "bad-1", "b", "bad-2"])))
        assert asyncio.run(sink.write(named(["c"]))) is None
    finally:
        asyncio.run(sink.close())
    assert rejected is not None
    assert [(r.index, r.reason) for r in rejected] == [
        (1, "BigQuery refused the row: cannot convert bad-1"),
        (3, "BigQuery refused the row: cannot convert bad-2"),
    ]
    assert fake_write.appended == ["a", "b", "c"]  # the refused request appended nothing
    # one long-lived connection; every request names the default stream; the writer
    # schema travels once per connection
    assert fake_write.connections == 1
    stream = "projects/proj-ect/datasets/ds/tables/rows/streams/_default"
    assert [r.write_stream for r in fake_write.requests] == [stream] * 3
    schemas = [r.proto_rows.writer_schema.proto_descriptor.name for r in fake_write.requests]
    assert schemas == ["BuildflowRow", "", ""]
    assert fake_write.requests[0].proto_rows.writer_schema.proto_descriptor.field[-1].name == "_CHANGE_TYPE"


@pytest.mark.parametrize("fake_write", ["request"], indirect=True)
def test_a_request_refused_without_row_errors_is_bisected_down_to_the_bad_row(
    fake_write: FakeWrite, env: Environment, dataset: str
) -> None:
    """INVALID_ARGUMENT for a whole request: once the table (on the emulator) still matches
    the declaration, the rows are bisected so the good ones land."""
    table_id = f"{PROJECT}.{dataset}.rows"
    sink = planned(env, table_id).open(SCHEMA)
    try:
        rejected = asyncio.run(sink.write(named(["a", "b", "bad", "c", "d"])))
    finally:
        asyncio.run(sink.close())
    assert rejected is not None and [r.index for r in rejected] == [2]
    assert "invalid rows" in rejected[0].reason
    assert sorted(fake_write.appended) == ["a", "b", "c", "d"]


# --- kill -9 and redelivery, end to end ---------------------------------------------------


def test_kill_9_mid_stream_then_restart_loses_nothing_and_the_view_has_no_duplicate(
    local_stack: Any, tmp_path: Path
) -> None:
    """The app runs in the emulator env with the default write mode; the runner is
    SIGKILLed once an AppendRows request of the second half of the uploads was appended
    by the server while a holding proxy keeps its answer from the runner: those events
    were written but never acked (no timing: the proxy is armed before those uploads
    exist). Restarted with
    --until-idle until the redeliveries are through: the raw table holds the rewritten
    rows twice (bqemulator applies no CDC), the ``_dedup`` view, which users query where
    CDC is not there to merge, one row per key; no upload is lost."""
    from benchmarks.bigquery_redelivery import run_scenario

    outcome = run_scenario(
        "upsert",
        env=dict(local_stack.env),
        workdir=tmp_path,
        project=PROJECT,
        images=48,
    )
    assert outcome.rewritten > 0, f"no written row was redelivered: {outcome}"
    assert outcome.raw_rows > outcome.rows, f"the raw table shows no redelivered row twice: {outcome}"
    assert outcome.duplicates == 0 and outcome.lost == 0, outcome
    assert outcome.rows == outcome.events == 48, outcome


# --- a whole run in `emulator`: the sink's writes start no query job ----------------------

RUN_APP = """
import dataclasses, os
import buildflow
from buildflow.io import BigQueryTable, GCSFileEvent, GCSFileStream


@dataclasses.dataclass
class Size:
    object_name: str
    size: int


class Sizes(buildflow.Processor):
    name = "object_sizes"

    def source(self):
        return GCSFileStream(
            project_id="buildflow-local", bucket_name=os.environ["BUCKET_NAME"], force_destroy=True
        )

    def sink(self):
        return BigQueryTable(
            table_id=os.environ["TABLE_ID"], destroy_protection=False, write_mode=os.environ["WRITE_MODE"]
        )

    def process(self, event: GCSFileEvent) -> Size:
        return Size(event.name, event.size)


app = buildflow.Node()
app.add(Sizes())
"""


def query_jobs() -> list[str]:
    """The query text of every job the stack's BigQuery server knows (its ``jobs.list``)."""
    return [str(getattr(j, "query", None) or j.job_type) for j in bq().list_jobs(all_users=True)]


@pytest.mark.parametrize("mode", ["upsert", "append", "merge"])
def test_a_run_in_emulator_writes_through_the_storage_write_api_without_query_jobs(
    stack_env: Any, tmp_path: Path, mode: str
) -> None:
    """``buildflow plan`` then ``buildflow run --until-idle`` of a small app in ``emulator``:
    with a Storage Write mode no job appears on the BigQuery server while the run writes its
    rows; with ``merge`` (the control) the same run's MERGE jobs do appear, so the count
    would see them."""
    import subprocess
    import sys

    from tests.stack.clients import gcs_client

    suffix = f"{os.getpid()}{time.monotonic_ns() % 10**8}"
    table_id = f"{PROJECT}.nojobs_{mode}_{suffix}.sizes"
    env = {
        **os.environ,
        **stack_env.env,
        "BUILDFLOW_ENV": "emulator",
        "BUCKET_NAME": f"nojobs-{mode}-{suffix}",
        "TABLE_ID": table_id,
        "WRITE_MODE": mode,
    }
    (tmp_path / "sizes_app.py").write_text(RUN_APP)

    def cli(*args: str) -> None:
        proc = subprocess.run(
            [sys.executable, "-m", "buildflow.cli", *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert proc.returncode == 0, f"buildflow {' '.join(args)}: {proc.stdout}\n{proc.stderr}"

    cli("plan", "sizes_app:app", "--yes")
    try:
        bucket = gcs_client().bucket(env["BUCKET_NAME"])
        for i in range(3):
            bucket.blob(f"f{i}.bin").upload_from_string(b"x" * (i + 1))
        before = query_jobs()
        cli("run", "sizes_app:app", "--until-idle", "--summary-json", str(tmp_path / "summary.json"))
        started = list((collections.Counter(query_jobs()) - collections.Counter(before)).elements())
        assert json.loads((tmp_path / "summary.json").read_text())["rows"] == 3
        if mode == "merge":  # the control: the same count sees a run's query jobs
            assert any(j.startswith(f"MERGE `{table_id}`") for j in started), started
        else:
            assert started == [], f"the run started query jobs: {started}"
        source = f"{table_id}_dedup" if mode != "merge" else table_id
        got = sorted(
            (r["object_name"], r["size"]) for r in query(f"SELECT object_name, size FROM `{source}`")
        )
        assert got == [("f0.bin", 1), ("f1.bin", 2), ("f2.bin", 3)]
    finally:
        cli("destroy", "sizes_app:app", "--yes", "--force")
