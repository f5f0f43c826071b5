"""The BigQuery sink against the local BigQuery server (bqemulator, via ``local_stack``):
exactly-once MERGE writes, the insert_id alternative, bad rows, the key columns that
``plan`` adds, and a ``kill -9`` of the app followed by redelivery."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import logging
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from buildflow.environment import Environment
from buildflow.errors import ConfigurationError, ProvisioningError, TransientSinkError
from buildflow.io import BigQueryTable
from buildflow.io.base import OutputRecord, RowRejection, SinkRuntime
from buildflow.io.google.bigquery import BigQuerySink, BigQueryTableProvider
from buildflow.provisioning import apply, plan
from buildflow.schema import row_to_record, schema_from_dataclass

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

PROJECT = "buildflow-local"

# Field names avoid DuckDB keywords (``at``, ``day``, ``when``, ...): the emulator does not
# quote identifiers when it translates to DuckDB SQL, and fails (HTTP 500) on them.


@dataclasses.dataclass
class Part:
    label: str
    blob: bytes | None
    tags: list[str]


@dataclasses.dataclass
class Meta:
    key: str
    on_date: datetime.date | None


@dataclasses.dataclass
class Row:
    name: str
    taken_at: datetime.datetime
    taken_on: datetime.date | None
    data: bytes
    blobs: list[bytes]
    ok: bool | None
    score: float
    big: int
    parts: list[Part]
    meta: Meta | None
    owner: Meta


SCHEMA = schema_from_dataclass(Row)


def sample_rows() -> list[Row]:
    ts = datetime.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=datetime.UTC)
    return [
        Row(
            name="full",
            taken_at=ts,
            taken_on=datetime.date(2024, 1, 2),
            data=b"\x00\x01\xfe\xff",
            blobs=[b"x", b"\x00", b""],
            ok=True,
            score=1.5,
            big=2**63 - 1,
            parts=[Part("cat", b"\xfe", ["a", "b"]), Part("dog", None, [])],
            meta=Meta("m", None),
            owner=Meta("o", datetime.date(2020, 2, 29)),
        ),
        Row(
            name="sparse",
            taken_at=ts.replace(microsecond=0),
            taken_on=None,
            data=b"",
            blobs=[],
            ok=None,
            score=-0.25,
            big=-(2**63),
            parts=[],
            meta=None,
            owner=Meta("p", None),
        ),
        Row(
            name="unicode é ✓",
            taken_at=datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC),
            taken_on=datetime.date(1, 1, 1),
            data=bytes(range(256)),
            blobs=[bytes(range(10))],
            ok=False,
            score=0.0,
            big=0,
            parts=[Part("x", None, ["é"])],
            meta=Meta("", datetime.date(9999, 12, 31)),
            owner=Meta("q", None),
        ),
    ]


def records(rows: Sequence[Row], prefix: str = "ev") -> list[OutputRecord]:
    return [OutputRecord(f"{prefix}{i}", 0, row_to_record(r, SCHEMA)) for i, r in enumerate(rows)]


@pytest.fixture
def env(stack_env: Any, tmp_path: Path) -> Environment:
    return Environment(name="emulator", state_dir=tmp_path)


@pytest.fixture
def dataset(stack_env: Any) -> Iterator[str]:
    """A fresh dataset, deleted with its tables afterwards."""
    name = f"sink_{os.getpid()}_{time.monotonic_ns() % 10**9}"
    yield name
    bq().delete_dataset(f"{PROJECT}.{name}", delete_contents=True, not_found_ok=True)


def bq() -> Any:
    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import bigquery

    return bigquery.Client(
        project=PROJECT,
        credentials=AnonymousCredentials(),
        client_options=ClientOptions(api_endpoint=os.environ["BIGQUERY_EMULATOR_HOST"]),
    )


def query(sql: str) -> list[dict[str, Any]]:
    return [dict(r.items()) for r in bq().query(sql).result()]


def provider(env: Environment, table_id: str, write_mode: str = "merge") -> BigQueryTableProvider:
    decl = BigQueryTable(table_id=table_id, destroy_protection=False, write_mode=write_mode)
    return BigQueryTableProvider(decl, env)


def planned(env: Environment, table_id: str, write_mode: str = "merge") -> BigQueryTableProvider:
    p = provider(env, table_id, write_mode)
    apply(plan(p.resources(SCHEMA)))
    return p


def write(sink: SinkRuntime, recs: Sequence[OutputRecord]) -> Sequence[RowRejection] | None:
    return asyncio.run(sink.write(recs))


def counts(table_id: str) -> tuple[int, int]:
    """(rows, distinct (_event_id, _row_index))."""
    got = query(f"SELECT _event_id, _row_index FROM `{table_id}`")
    keys = [(r["_event_id"], r["_row_index"]) for r in got]
    return len(keys), len(set(keys))


# --- declaration ----------------------------------------------------------------------


def test_write_mode_is_validated_and_defaults_to_merge() -> None:
    # the default is now the Storage Write API ("upsert"); merge is an opt-in
    assert BigQueryTable("d.t").write_mode == "upsert"
    with pytest.raises(ConfigurationError) as info:
        BigQueryTable("d.t", write_mode="replace")  # type: ignore[arg-type]
    assert "write_mode" in str(info.value) and "'replace'" in str(info.value)
    assert "'merge'" in str(info.value) and "'insert_id'" in str(info.value)
    fast = BigQueryTable("p-roject.d.t", write_mode="insert_id")
    assert fast.dead_letter_sibling().write_mode == "insert_id"
    assert "insert_id" in fast.describe() and "write_mode" not in BigQueryTable("d.t").describe()
    assert "write_mode='merge'" in BigQueryTable("d.t", write_mode="merge").describe()


# --- merge: round trip and exactly-once -------------------------------------------------


def test_merge_round_trips_nested_repeated_timestamp_bytes_and_nulls(env: Environment, dataset: str) -> None:
    table_id = f"{PROJECT}.{dataset}.rows"
    p = planned(env, table_id)
    cols = {f.name: f.field_type for f in bq().get_table(table_id).schema}
    assert cols["_event_id"] == "STRING" and cols["_row_index"] in ("INTEGER", "INT64")
    sink = p.open(SCHEMA)
    try:
        assert write(sink, records(sample_rows())) is None
    finally:
        asyncio.run(sink.close())
    got = {r["name"]: r for r in query(f"SELECT * FROM `{table_id}`")}
    for i, row in enumerate(sample_rows()):
        want = row_to_record(row, SCHEMA)
        have = got[row.name]
        assert (have.pop("_event_id"), have.pop("_row_index")) == (f"ev{i}", 0)
        assert have == want, row.name


def test_the_same_records_written_twice_land_once_with_merge(env: Environment, dataset: str) -> None:
    table_id = f"{PROJECT}.{dataset}.rows"
    sink = planned(env, table_id).open(SCHEMA)
    recs = records(sample_rows())
    newer = dataclasses.replace(sample_rows()[0], name="full, newer")
    try:
        # within one batch the last row of a key wins
        assert write(sink, [*recs, OutputRecord("ev0", 0, row_to_record(newer, SCHEMA))]) is None
        assert write(sink, recs) is None  # a redelivery: nothing new
        assert write(sink, list(reversed(recs))) is None
    finally:
        asyncio.run(sink.close())
    assert counts(table_id) == (3, 3)
    (first,) = query(f"SELECT name FROM `{table_id}` WHERE _event_id = 'ev0'")
    assert first["name"] == "full, newer"


def test_insert_id_mode_lets_the_emulator_duplicate_a_redelivery(env: Environment, dataset: str) -> None:
    """Documents the difference: the emulator does no insertId de-duplication (BigQuery
    does, best effort, for about a minute), so a batch written twice is there twice."""
    table_id = f"{PROJECT}.{dataset}.rows"
    sink = planned(env, table_id, "insert_id").open(SCHEMA)
    recs = records(sample_rows())
    try:
        assert write(sink, [*recs, recs[0]]) is None  # in-batch duplicate: dropped by buildflow
        assert write(sink, recs) is None
    finally:
        asyncio.run(sink.close())
    assert counts(table_id) == (6, 3)
    got = {r["name"]: r for r in query(f"SELECT * FROM `{table_id}` WHERE _event_id = 'ev0'")}
    assert got["full"]["data"] == b"\x00\x01\xfe\xff" and got["full"]["parts"][0]["blob"] == b"\xfe"


def test_a_large_batch_is_split_into_several_merges(
    env: Environment, dataset: str, caplog: pytest.LogCaptureFixture
) -> None:
    table_id = f"{PROJECT}.{dataset}.rows"
    planned(env, table_id)
    sink = BigQuerySink(env, PROJECT, table_id, SCHEMA, "merge", max_payload_bytes=8_000)
    rows = [dataclasses.replace(sample_rows()[i % 3], name=f"r{i}") for i in range(60)]
    with caplog.at_level(logging.DEBUG, logger="buildflow.io.bigquery"):
        try:
            assert write(sink, records(rows)) is None
            assert write(sink, records(rows)) is None
        finally:
            asyncio.run(sink.close())
    merges = [r.getMessage() for r in caplog.records if r.getMessage().startswith("MERGE into")]
    assert len(merges) >= 6, merges  # several MERGEs per write of 60 rows
    assert sum(" 0 inserted" in m for m in merges) == len(merges) // 2  # the second write
    assert counts(table_id) == (60, 60)


# --- bad rows and failures ----------------------------------------------------------


def test_bad_rows_are_isolated_and_rejected_while_the_others_land(env: Environment, dataset: str) -> None:
    table_id = f"{PROJECT}.{dataset}.rows"
    sink = planned(env, table_id).open(SCHEMA)
    good = records([dataclasses.replace(sample_rows()[i % 3], name=f"g{i}") for i in range(6)])
    bad = [
        OutputRecord("bad-ts", 0, {**good[0].values, "taken_at": "garbage"}),
        OutputRecord("bad-date", 0, {**good[1].values, "taken_on": "2024-13-45"}),
    ]
    batch = [good[0], good[1], bad[0], good[2], good[3], good[4], bad[1], good[5]]
    try:
        rejected = write(sink, batch)
    finally:
        asyncio.run(sink.close())
    assert rejected is not None and [r.index for r in rejected] == [2, 6]
    assert "garbage" in rejected[0].reason and "BigQuery refused the row" in rejected[0].reason
    assert "month" in rejected[1].reason
    names = sorted(r["name"] for r in query(f"SELECT name FROM `{table_id}`"))
    assert names == [f"g{i}" for i in range(6)]


def test_a_row_that_cannot_become_a_parameter_is_rejected_alone(env: Environment, dataset: str) -> None:
    table_id = f"{PROJECT}.{dataset}.rows"
    sink = planned(env, table_id).open(SCHEMA)
    good = records(sample_rows())
    bad = OutputRecord("bad-bytes", 0, {**good[0].values, "data": "text, not bytes"})
    try:
        rejected = write(sink, [good[0], bad, good[1]])
    finally:
        asyncio.run(sink.close())
    assert rejected is not None and [r.index for r in rejected] == [1]
    assert counts(table_id) == (2, 2)


def test_a_missing_table_is_transient_not_a_rejection(env: Environment, dataset: str) -> None:
    table_id = f"{PROJECT}.{dataset}.rows"
    sink = planned(env, table_id).open(SCHEMA)
    bq().delete_table(table_id)
    try:
        with pytest.raises(TransientSinkError, match="plan"):
            write(sink, records(sample_rows()))
    finally:
        asyncio.run(sink.close())


def test_a_table_that_cannot_take_the_statement_is_transient(env: Environment, dataset: str) -> None:
    """A 400 for every row is not blamed on the rows when the table itself is at fault.
    Here: the key columns added to the table's metadata only (what bqemulator's
    tables.update does), so the MERGE cannot bind although the schema looks right."""
    from google.cloud import bigquery

    table_id = f"{PROJECT}.{dataset}.rows"
    bq().create_dataset(f"{PROJECT}.{dataset}", exists_ok=True)
    fields = [bigquery.SchemaField.from_api_repr(f) for f in SCHEMA.to_api_repr()]
    table = bq().create_table(bigquery.Table(table_id, schema=fields))
    keys = [bigquery.SchemaField("_event_id", "STRING"), bigquery.SchemaField("_row_index", "INT64")]
    table.schema = [*fields, *keys]
    bq().update_table(table, ["schema"])
    sink = provider(env, table_id).open(SCHEMA)  # the metadata matches
    try:
        with pytest.raises(TransientSinkError, match="does not take the rows"):
            write(sink, records(sample_rows()))
    finally:
        asyncio.run(sink.close())


def test_a_server_error_is_transient_after_a_bounded_retry(
    env: Environment, dataset: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The emulator answers 500 to an invalid TIMESTAMP in insertAll; the client would
    retry that for minutes. Here it gives up after REQUEST_RETRY_S."""
    import buildflow.io.google.bigquery as mod

    monkeypatch.setattr(mod, "REQUEST_RETRY_S", 1.0)
    table_id = f"{PROJECT}.{dataset}.rows"
    sink = planned(env, table_id, "insert_id").open(SCHEMA)
    bad = OutputRecord("bad-ts", 0, {**records(sample_rows())[0].values, "taken_at": "not a timestamp"})
    t0 = time.monotonic()
    try:
        with pytest.raises(TransientSinkError):
            write(sink, [bad])
    finally:
        asyncio.run(sink.close())
    assert time.monotonic() - t0 < 30


def test_insert_id_rejects_the_invalid_row_and_resends_the_stopped_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """BigQuery inserts nothing from an insertAll request with an invalid row: the valid
    rows come back with the reason "stopped". (The emulator never answers insertErrors,
    so a fake client stands in.)"""
    import buildflow.io.google.bigquery as mod

    calls: list[list[str]] = []

    class FakeClient:
        def insert_rows_json(self, table: str, rows: list[Any], row_ids: list[str], **kw: Any) -> Any:
            calls.append(row_ids)
            if len(calls) > 1:
                return []
            bad = {"reason": "invalid", "message": "no such field: x."}
            stop = {"reason": "stopped", "message": ""}
            return [{"index": i, "errors": [bad if i == 1 else stop]} for i in range(len(rows))]

    monkeypatch.setattr(mod, "bigquery_client", lambda env, project: FakeClient())
    sink = BigQuerySink(
        Environment(name="emulator", state_dir=tmp_path), PROJECT, f"{PROJECT}.d.t", SCHEMA, "insert_id"
    )
    try:
        rejected = write(sink, records(sample_rows()))
    finally:
        asyncio.run(sink.close())
    assert rejected == [RowRejection(1, "no such field: x.")]
    assert calls == [["ev0/0", "ev1/0", "ev2/0"], ["ev0/0", "ev2/0"]]


# --- plan: the key columns ------------------------------------------------------------


def test_plan_adds_the_key_columns_to_a_table_made_without_them(env: Environment, dataset: str) -> None:
    from google.cloud import bigquery

    table_id = f"{PROJECT}.{dataset}.old"
    bq().create_dataset(f"{PROJECT}.{dataset}", exists_ok=True)
    old_schema = [bigquery.SchemaField.from_api_repr(f) for f in SCHEMA.to_api_repr()]
    old_schema.append(bigquery.SchemaField("legacy_note", "STRING"))  # not declared: kept
    bq().create_table(bigquery.Table(table_id, schema=old_schema))
    p = provider(env, table_id)

    with pytest.raises(ProvisioningError, match="_event_id"):
        p.open(SCHEMA)  # merge needs the key columns: run refuses the table
    changes = {c.resource.kind: c for c in plan(p.resources(SCHEMA))}
    assert changes["dataset"].action == "no change"
    assert changes["table"].action == "update"
    assert any("_event_id" in d and "STRING NULLABLE" in d for d in changes["table"].details)
    assert any("_row_index" in d and "INT64 NULLABLE" in d for d in changes["table"].details)
    apply(list(changes.values()))

    assert {c.action for c in plan(p.resources(SCHEMA))} == {"no change"}
    names = [f.name for f in bq().get_table(table_id).schema]
    assert names[-3:] == ["legacy_note", "_event_id", "_row_index"]
    sink = p.open(SCHEMA)
    try:
        assert write(sink, records(sample_rows())) is None
        assert write(sink, records(sample_rows())) is None
    finally:
        asyncio.run(sink.close())
    assert counts(table_id) == (3, 3)


def test_plan_creates_then_reports_no_change(env: Environment, dataset: str) -> None:
    p = provider(env, f"{PROJECT}.{dataset}.rows")
    assert {c.action for c in plan(p.resources(SCHEMA))} == {"create"}
    apply(plan(p.resources(SCHEMA)))
    assert {c.action for c in plan(p.resources(SCHEMA))} == {"no change"}


# --- kill -9 and redelivery, end to end -------------------------------------------------


def test_kill_9_then_restart_leaves_exactly_one_row_per_upload(local_stack: Any, tmp_path: Path) -> None:
    """The app runs in the emulator env with ``write_mode="merge"``; the runner is SIGKILLed
    once a MERGE of the second half of the uploads was applied by the server while a
    holding proxy keeps its answer from the runner: those events were written but never
    acked (no timing: the proxy is armed before those uploads exist). Restarted with
    --until-idle until the redeliveries are through, no row is duplicated and none is
    lost."""
    from benchmarks.bigquery_redelivery import run_scenario

    outcome = run_scenario(
        "merge",
        env=dict(local_stack.env),
        workdir=tmp_path,
        project=PROJECT,
        images=48,
    )
    assert outcome.rewritten > 0, f"no written row was redelivered: {outcome}"
    assert outcome.duplicates == 0 and outcome.lost == 0, outcome
    assert outcome.rows == outcome.events == 48, outcome
