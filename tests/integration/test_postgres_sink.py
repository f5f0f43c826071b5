"""PostgresTable against a real PostgreSQL server started by the test session on 127.0.0.1
(``tests/postgres_fixture.py``): plan's diff, the upserting sink, row rejections, a server
restart under a live sink, password masking, destroy, and a run through the runtime.

Every test works in its own uuid-named schema, dropped afterwards."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import logging
import math
import pickle
import subprocess
import sys
import uuid
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, Optional, TypeVar

import psycopg
import pytest

import buildflow
from buildflow.environment import Environment
from buildflow.errors import (
    BuildflowError,
    ConfigurationError,
    DestroyProtectedError,
    MissingDependencyError,
    ProvisioningError,
    ResourceConflictError,
    ResourceMissingError,
    TransientSinkError,
)
from buildflow.io import GCSFileEvent, GCSFileStream, PostgresTable
from buildflow.io.base import OutputRecord, RowRejection, SinkRuntime
from buildflow.io.postgres import mask_dsn
from buildflow.io.postgres.provider import PostgresTableProvider, create_table_sql
from buildflow.io.registry import sink_provider
from buildflow.processor import inspect_processor
from buildflow.provisioning import apply, destroy, plan, plan_destroy
from buildflow.runtime.base import BoundProcessor, RunOptions
from buildflow.runtime.inprocess import InProcessRuntime
from buildflow.schema import TableSchema, row_to_record, schema_from_dataclass
from buildflow.testing import InMemorySource, InMemorySourceProvider, gcs_file_event
from tests.postgres_fixture import PostgresServer

T = TypeVar("T")
UTC = datetime.UTC

# --- row dataclasses ----------------------------------------------------------------------


@dataclasses.dataclass
class Label:
    name: str
    score: float
    tags: list[str]


@dataclasses.dataclass
class Capture:
    at: datetime.datetime
    day: datetime.date
    blob: bytes
    camera: Optional[str]  # noqa: UP045


@dataclasses.dataclass
class Row:
    image: str
    labels: list[Label]
    taken_at: datetime.datetime
    day: datetime.date
    raw: bytes
    note: Optional[str]  # noqa: UP045
    capture: Optional[Capture]  # noqa: UP045
    size: int
    ratio: float
    ok: bool


@dataclasses.dataclass
class RowWithNewOptionalColumns(Row):
    extra: Optional[int] = None  # noqa: UP045
    more: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class RowWithNewRequiredColumn(Row):
    extra: int = 0


@dataclasses.dataclass
class RowWithRetypedColumn:
    image: int
    labels: list[Label]
    taken_at: datetime.datetime
    day: datetime.date
    raw: bytes
    note: Optional[str]  # noqa: UP045
    capture: Optional[Capture]  # noqa: UP045
    size: int
    ratio: float
    ok: bool


@dataclasses.dataclass
class RowWithNullableImage:
    image: Optional[str]  # noqa: UP045
    labels: list[Label]
    taken_at: datetime.datetime
    day: datetime.date
    raw: bytes
    note: Optional[str]  # noqa: UP045
    capture: Optional[Capture]  # noqa: UP045
    size: int
    ratio: float
    ok: bool


SCHEMA = schema_from_dataclass(Row)
TAKEN_AT = datetime.datetime(
    2024, 5, 6, 7, 8, 9, 123456, tzinfo=datetime.timezone(datetime.timedelta(hours=2))
)


def sample_row(image: str = "a.jpg", **changes: Any) -> Row:
    row = Row(
        image=image,
        labels=[Label("cat", 0.75, ["pet", "animal"]), Label("dog", 0.25, [])],
        taken_at=TAKEN_AT,
        day=datetime.date(2024, 5, 6),
        raw=b"\x00\xffbytes",
        note=None,
        capture=Capture(TAKEN_AT, datetime.date(2024, 5, 7), b"\x01\x02", None),
        size=2**40,
        ratio=0.5,
        ok=True,
    )
    return dataclasses.replace(row, **changes)


def record(event_id: str, row_index: int, row: object, schema: TableSchema = SCHEMA) -> OutputRecord:
    return OutputRecord(event_id, row_index, row_to_record(row, schema))


def run(coro: Coroutine[Any, Any, T], timeout_s: float = 60.0) -> T:
    return asyncio.run(asyncio.wait_for(coro, timeout_s))


async def write_and_close(sink: SinkRuntime, *batches: list[OutputRecord]) -> list[Any]:
    try:
        return [await sink.write(batch) for batch in batches]
    finally:
        await sink.close()


# --- fixtures -----------------------------------------------------------------------------


@pytest.fixture
def server(postgres_server: PostgresServer) -> Iterator[PostgresServer]:
    """The session's server, running (a test that stops it must start it again)."""
    if not postgres_server.is_running():
        postgres_server.start()
    yield postgres_server
    if not postgres_server.is_running():
        postgres_server.start()


@pytest.fixture
def pg_schema(server: PostgresServer) -> Iterator[str]:
    """A uuid-named schema for one test, dropped with everything in it afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    yield name
    with server.superuser_connect("bf_test") as con:
        con.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


@pytest.fixture
def env(tmp_path: Path) -> Environment:
    return Environment(name="local", state_dir=tmp_path / "state")


@pytest.fixture
def decl(server: PostgresServer, pg_schema: str) -> PostgresTable:
    return PostgresTable(server.dsn, f"{pg_schema}.rows", connect_timeout_s=2)


@pytest.fixture
def provider(decl: PostgresTable, env: Environment) -> PostgresTableProvider:
    return PostgresTableProvider(decl, env)


def created(provider: PostgresTableProvider, schema: TableSchema = SCHEMA) -> PostgresTableProvider:
    apply(plan(provider.resources(schema)))
    return provider


def actions(provider: PostgresTableProvider, schema: TableSchema) -> list[tuple[str, tuple[str, ...]]]:
    return [(c.action, c.details) for c in plan(provider.resources(schema))]


def count(provider: PostgresTableProvider) -> int:
    _, [(n,)] = provider.query(f"SELECT count(*) FROM {provider.declaration.table}")
    return int(n)


# --- the declaration (no server needed) ----------------------------------------------------

SECRET_DSN = "postgresql://app:s3cr3t-P%40ss@db.example.com:5432/prod?sslmode=require"


def test_declaration_masks_the_password_everywhere() -> None:
    t = PostgresTable(SECRET_DSN, "analytics.rows")
    masked = "postgresql://app:***@db.example.com:5432/prod?sslmode=require"
    assert t.describe() == f"PostgresTable('analytics.rows', dsn='{masked}')"
    assert "s3cr3t" not in repr(t) and masked in repr(t)
    assert (t.schema_name, t.table_name) == ("analytics", "rows")
    assert PostgresTable(SECRET_DSN, "rows").schema_name == "public"
    sibling = t.dead_letter_sibling()
    assert sibling.table == "analytics.buildflow_dead_letters" and sibling.dsn == SECRET_DSN
    assert sibling.destroy_protection and sibling.pool_max_size == t.pool_max_size


@pytest.mark.parametrize(
    ("dsn", "masked"),
    [
        ("postgresql://u:pw@h/db", "postgresql://u:***@h/db"),
        ("postgres://u:p%2Fw@h1:1,h2:2/db", "postgres://u:***@h1:1,h2:2/db"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        (
            "postgresql://h/db?user=u&password=pw&sslmode=require",
            "postgresql://h/db?user=u&password=***&sslmode=require",
        ),
        ("host=h user=u password=pw dbname=d", "host=h user=u password=*** dbname=d"),
        ("host=h password = 'p w\\' x' dbname=d", "host=h password = *** dbname=d"),
        ("password=pw", "password=***"),
        ("env:DATABASE_URL", "env:DATABASE_URL"),
    ],
)
def test_mask_dsn(dsn: str, masked: str) -> None:
    assert mask_dsn(dsn) == masked


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"dsn": "", "table": "t"}, "invalid dsn"),
        ({"dsn": "env:1BAD", "table": "t"}, "after 'env:' comes the name"),
        ({"dsn": SECRET_DSN, "table": "a.b.c"}, "invalid table 'a.b.c'"),
        ({"dsn": SECRET_DSN, "table": "9t"}, "invalid table"),
        ({"dsn": SECRET_DSN, "table": "x" * 64}, "at most 63"),
        ({"dsn": SECRET_DSN, "table": "t", "pool_min_size": 5, "pool_max_size": 4}, "pool_min_size=5"),
        ({"dsn": SECRET_DSN, "table": "t", "pool_max_size": 0}, "pool_max_size=0"),
        ({"dsn": SECRET_DSN, "table": "t", "pool_min_size": 1.5}, "not an int"),
        ({"dsn": SECRET_DSN, "table": "t", "connect_timeout_s": 0}, "at least 1"),
    ],
)
def test_invalid_declarations(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match) as info:
        PostgresTable(**kwargs)
    assert "s3cr3t" not in str(info.value)


def test_registry_binds_postgres_table_in_every_environment(tmp_path: Path) -> None:
    for name in ("local", "emulator", "gcp"):
        p = sink_provider(PostgresTable(SECRET_DSN, "t"), Environment.resolve(name, state_dir=tmp_path))
        assert isinstance(p, PostgresTableProvider)


def test_declaration_and_provider_are_picklable_and_import_no_driver(tmp_path: Path) -> None:
    code = (
        "import sys, pickle\n"
        "from buildflow.io import PostgresTable\n"
        f"t = PostgresTable({SECRET_DSN!r}, 'a.b')\n"
        "assert pickle.loads(pickle.dumps(t)) == t\n"
        "assert 'psycopg' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    p = PostgresTableProvider(
        PostgresTable(SECRET_DSN, "a.b"), Environment.resolve("local", state_dir=tmp_path)
    )
    again = pickle.loads(pickle.dumps(p))
    assert again.declaration == p.declaration
    [resource] = pickle.loads(pickle.dumps(p.resources(SCHEMA)))
    assert resource.name == "a.b (postgresql://app:***@db.example.com:5432/prod?sslmode=require)"


def test_a_missing_driver_says_how_to_install_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psycopg_pool", None)  # makes `import psycopg_pool` fail
    p = PostgresTableProvider(
        PostgresTable(SECRET_DSN, "t"), Environment.resolve("local", state_dir=tmp_path)
    )
    with pytest.raises(MissingDependencyError, match=r"run pip install 'buildflow\[postgres\]'"):
        p.resources(SCHEMA)


def test_dsn_from_an_environment_variable(
    server: PostgresServer, pg_schema: str, env: Environment, monkeypatch: pytest.MonkeyPatch
) -> None:
    decl = PostgresTable("env:BF_TEST_PG_DSN", f"{pg_schema}.rows")
    assert decl.describe() == f"PostgresTable('{pg_schema}.rows', dsn='env:BF_TEST_PG_DSN')"
    p = PostgresTableProvider(decl, env)
    monkeypatch.delenv("BF_TEST_PG_DSN", raising=False)
    with pytest.raises(ConfigurationError, match="environment variable BF_TEST_PG_DSN is not set"):
        p.resources(SCHEMA)
    monkeypatch.setenv("BF_TEST_PG_DSN", server.dsn)
    [resource] = p.resources(SCHEMA)
    assert resource.name.endswith(f":***@127.0.0.1:{server.port}/bf_test (from env:BF_TEST_PG_DSN))")
    assert server.password not in resource.name
    created(p)
    assert count(p) == 0


def test_an_invalid_dsn_is_a_configuration_error_that_hides_the_password(env: Environment) -> None:
    p = PostgresTableProvider(PostgresTable("host=127.0.0.1 password='s3cr3t-xyz", "t"), env)
    with pytest.raises(ConfigurationError, match="invalid DSN") as info:
        p.resources(SCHEMA)
    assert "s3cr3t" not in str(info.value)


# --- plan: create, update, conflict --------------------------------------------------------


def test_plan_creates_the_table_then_has_no_change(provider: PostgresTableProvider, pg_schema: str) -> None:
    [resource] = provider.resources(SCHEMA)
    assert resource.kind == "table"
    assert resource.name == f"{pg_schema}.rows ({provider.declaration.masked_dsn})"
    assert actions(provider, SCHEMA) == [("create", ())]
    apply(plan([resource]))
    assert actions(provider, SCHEMA) == [("no change", ())]
    _, cols = provider.query(
        "SELECT column_name, data_type, is_nullable FROM information_schema.columns "
        f"WHERE table_schema = '{pg_schema}' AND table_name = 'rows' ORDER BY ordinal_position"
    )
    assert cols == [
        ("image", "text", "NO"),
        ("labels", "jsonb", "YES"),
        ("taken_at", "timestamp with time zone", "NO"),
        ("day", "date", "NO"),
        ("raw", "bytea", "NO"),
        ("note", "text", "YES"),
        ("capture", "jsonb", "YES"),
        ("size", "bigint", "NO"),
        ("ratio", "double precision", "NO"),
        ("ok", "boolean", "NO"),
        ("_event_id", "text", "NO"),
        ("_row_index", "integer", "NO"),
        ("_written_at", "timestamp with time zone", "NO"),
    ]
    _, [(pk,)] = provider.query(
        f"SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = '{pg_schema}.rows'::regclass "
        "AND contype = 'p'"
    )
    assert pk == "PRIMARY KEY (_event_id, _row_index)"


def test_create_table_sql_maps_every_type() -> None:
    assert create_table_sql("s", "t", SCHEMA) == (
        'CREATE TABLE "s"."t" (\n'
        '  "image" text NOT NULL,\n'
        '  "labels" jsonb,\n'
        '  "taken_at" timestamptz NOT NULL,\n'
        '  "day" date NOT NULL,\n'
        '  "raw" bytea NOT NULL,\n'
        '  "note" text,\n'
        '  "capture" jsonb,\n'
        '  "size" bigint NOT NULL,\n'
        '  "ratio" double precision NOT NULL,\n'
        '  "ok" boolean NOT NULL,\n'
        '  "_event_id" text NOT NULL,\n'
        '  "_row_index" integer NOT NULL,\n'
        '  "_written_at" timestamptz NOT NULL,\n'
        '  PRIMARY KEY ("_event_id", "_row_index")\n'
        ")"
    )


def test_added_optional_columns_are_an_update_that_apply_makes(provider: PostgresTableProvider) -> None:
    created(provider)
    run(write_and_close(provider.open(SCHEMA), [record("e1", 0, sample_row())]))
    new_schema = schema_from_dataclass(RowWithNewOptionalColumns)
    assert actions(provider, new_schema) == [
        (
            "update",
            (
                "field 'extra': declared INT64 NULLABLE (bigint), table has no such field",
                "field 'more': declared JSONB REPEATED (jsonb), table has no such field",
            ),
        )
    ]
    with pytest.raises(ProvisioningError, match="does not match the row schema"):
        provider.open(new_schema)
    apply(plan(provider.resources(new_schema)))
    assert actions(provider, new_schema) == [("no change", ())]
    assert actions(provider, SCHEMA) == [("no change", ())]  # the old code still fits
    _, rows = provider.query(f"SELECT image, extra, more FROM {provider.declaration.table}")
    assert rows == [("a.jpg", None, None)]
    new_row = RowWithNewOptionalColumns(**dataclasses.asdict(sample_row("b.jpg")), extra=7, more=["x"])
    new_row.labels, new_row.capture = sample_row().labels, sample_row().capture
    run(write_and_close(provider.open(new_schema), [record("e2", 0, new_row, new_schema)]))
    _, rows = provider.query(f"SELECT image, extra, more FROM {provider.declaration.table} ORDER BY image")
    assert rows == [("a.jpg", None, None), ("b.jpg", 7, ["x"])]


def test_relaxing_not_null_is_an_update(provider: PostgresTableProvider) -> None:
    created(provider)
    relaxed = schema_from_dataclass(RowWithNullableImage)
    assert actions(provider, relaxed) == [
        ("update", ("field 'image': declared STRING NULLABLE (text), table has text NOT NULL",))
    ]
    apply(plan(provider.resources(relaxed)))
    assert actions(provider, relaxed) == [("no change", ())]


@pytest.mark.parametrize(
    ("row_type", "detail"),
    [
        (
            RowWithRetypedColumn,
            "field 'image': declared INT64 REQUIRED (bigint NOT NULL), table has text NOT NULL",
        ),
        (
            RowWithNewRequiredColumn,
            "field 'extra': declared INT64 REQUIRED (bigint NOT NULL), table has no such field",
        ),
    ],
)
def test_retyped_or_new_required_columns_are_conflicts(
    provider: PostgresTableProvider, row_type: type, detail: str
) -> None:
    created(provider)
    schema = schema_from_dataclass(row_type)
    assert actions(provider, schema) == [("conflict", (detail,))]
    with pytest.raises(ResourceConflictError, match="nothing was changed"):
        apply(plan(provider.resources(schema)))
    with pytest.raises(ProvisioningError, match="does not match the row schema") as info:
        provider.open(schema)
    assert not isinstance(info.value, ResourceMissingError)


def test_tightening_to_not_null_and_retyping_a_jsonb_column_are_conflicts(
    provider: PostgresTableProvider, server: PostgresServer
) -> None:
    created(provider, schema_from_dataclass(RowWithNullableImage))
    with server.superuser_connect("bf_test") as con:
        con.execute(f"ALTER TABLE {provider.declaration.table} ALTER COLUMN labels TYPE text")
    assert actions(provider, SCHEMA) == [
        (
            "conflict",
            (
                "field 'image': declared STRING REQUIRED (text NOT NULL), table has text",
                "field 'labels': declared JSONB REPEATED (jsonb), table has text",
            ),
        )
    ]


def test_a_table_without_buildflow_columns_is_a_conflict(
    provider: PostgresTableProvider, server: PostgresServer, pg_schema: str
) -> None:
    sql = create_table_sql(pg_schema, "rows", SCHEMA).split(',\n  "_event_id"')[0] + ")"
    with psycopg.connect(server.dsn, autocommit=True) as con:
        con.execute(f'CREATE SCHEMA "{pg_schema}"')
        con.execute(sql)
    assert actions(provider, SCHEMA) == [
        (
            "conflict",
            (
                "table was not created by buildflow: missing columns ['_event_id', '_row_index', "
                "'_written_at']; drop it or choose another table name",
            ),
        )
    ]


def test_a_table_the_role_may_not_write_is_a_conflict(
    provider: PostgresTableProvider, server: PostgresServer, pg_schema: str
) -> None:
    """Another role's table: its columns are still compared (information_schema would hide
    them), and the missing privileges are a conflict."""
    with server.superuser_connect("bf_test") as con:
        con.execute(f'CREATE SCHEMA "{pg_schema}" AUTHORIZATION bf_test')
        con.execute(create_table_sql(pg_schema, "rows", SCHEMA))  # owned by postgres
    expected = (
        f"role 'bf_test' lacks SELECT, INSERT, UPDATE on the table; grant it, e.g. GRANT SELECT, "
        f'INSERT, UPDATE ON "{pg_schema}"."rows" TO "bf_test"'
    )
    assert actions(provider, SCHEMA) == [("conflict", (expected,))]
    with server.superuser_connect("bf_test") as con:
        con.execute(f'GRANT SELECT, INSERT, UPDATE ON "{pg_schema}"."rows" TO bf_test')
    assert actions(provider, SCHEMA) == [("no change", ())]
    run(write_and_close(provider.open(SCHEMA), [record("e1", 0, sample_row())]))
    assert count(provider) == 1


def test_undeclared_columns(provider: PostgresTableProvider, server: PostgresServer) -> None:
    """An extra nullable (or defaulted) column is fine; an extra NOT NULL one is a conflict."""
    created(provider)
    table = provider.declaration.table
    with server.superuser_connect("bf_test") as con:
        con.execute(f"ALTER TABLE {table} ADD COLUMN extra_nullable numeric(18, 3)")
        con.execute(f"ALTER TABLE {table} ADD COLUMN extra_default integer NOT NULL DEFAULT 0")
    assert actions(provider, SCHEMA) == [("no change", ())]
    with server.superuser_connect("bf_test") as con:
        con.execute(f"ALTER TABLE {table} ALTER COLUMN extra_default DROP DEFAULT")
    assert actions(provider, SCHEMA) == [
        (
            "conflict",
            (
                "field 'extra_default': not declared, table has integer NOT NULL "
                "(without a default, inserts would fail)",
            ),
        )
    ]


# --- the sink -------------------------------------------------------------------------------


def test_rows_round_trip_with_nested_repeated_records_timestamps_dates_bytes_and_nulls(
    provider: PostgresTableProvider,
) -> None:
    created(provider)
    first = sample_row("a.jpg")
    second = sample_row("b.jpg", labels=[], note="n", capture=None, raw=b"", ratio=float("nan"), ok=False)
    results = run(write_and_close(provider.open(SCHEMA), [record("e1", 0, first), record("e1", 1, second)]))
    assert results == [None]

    cols, rows = provider.query(f"SELECT * FROM {provider.declaration.table} ORDER BY _event_id, _row_index")
    assert cols == [*SCHEMA.field_names(), "_event_id", "_row_index", "_written_at"]
    a, b = (dict(zip(cols, r)) for r in rows)
    assert a["labels"] == [
        {"name": "cat", "score": 0.75, "tags": ["pet", "animal"]},
        {"name": "dog", "score": 0.25, "tags": []},
    ]
    # TIMESTAMP in a RECORD: ISO 8601 in UTC; DATE: ISO; BYTES: base64; NULL: JSON null
    assert a["capture"] == {
        "at": "2024-05-06T05:08:09.123456+00:00",
        "day": "2024-05-07",
        "blob": "AQI=",
        "camera": None,
    }
    assert a["taken_at"] == datetime.datetime(2024, 5, 6, 5, 8, 9, 123456, tzinfo=UTC)
    assert a["day"] == datetime.date(2024, 5, 6)
    assert a["raw"] == b"\x00\xffbytes"
    assert a["note"] is None and a["size"] == 2**40 and a["ratio"] == 0.5 and a["ok"] is True
    assert (a["_event_id"], a["_row_index"], b["_event_id"], b["_row_index"]) == ("e1", 0, "e1", 1)
    assert b["labels"] == [] and b["note"] == "n" and b["capture"] is None and b["raw"] == b""
    assert math.isnan(b["ratio"]) and b["ok"] is False  # double precision holds NaN
    written_at = a["_written_at"]
    assert written_at.utcoffset() == datetime.timedelta(0)
    assert abs((datetime.datetime.now(UTC) - written_at).total_seconds()) < 60
    # jsonb is queryable as JSON
    _, [(name,)] = provider.query(
        f"SELECT labels -> 0 ->> 'name' FROM {provider.declaration.table} WHERE image = 'a.jpg'"
    )
    assert name == "cat"


def test_the_same_event_id_and_row_index_is_upserted_and_the_latest_values_win(
    provider: PostgresTableProvider,
) -> None:
    created(provider)
    table = provider.declaration.table
    sink = provider.open(SCHEMA)

    async def main() -> None:
        try:
            assert (
                await sink.write([record("e1", 0, sample_row("first.jpg")), record("e2", 0, sample_row())])
                is None
            )
            _, [(before,)] = provider.query(f"SELECT _written_at FROM {table} WHERE _event_id = 'e1'")
            # redelivered with other values, and a key twice in one batch: the last one wins
            assert (
                await sink.write(
                    [
                        record("e1", 0, sample_row("second.jpg", note="x")),
                        record("e3", 0, sample_row("dup-1.jpg")),
                        record("e3", 0, sample_row("dup-2.jpg")),
                    ]
                )
                is None
            )
            _, [(after,)] = provider.query(f"SELECT _written_at FROM {table} WHERE _event_id = 'e1'")
            assert after >= before
        finally:
            await sink.close()

    run(main())
    _, rows = provider.query(f"SELECT _event_id, _row_index, image, note FROM {table} ORDER BY _event_id")
    assert rows == [("e1", 0, "second.jpg", "x"), ("e2", 0, "a.jpg", None), ("e3", 0, "dup-2.jpg", None)]


def test_a_batch_of_1000_rows_is_written_in_one_go(provider: PostgresTableProvider) -> None:
    created(provider)
    batch = [record(f"e{i}", 0, sample_row(f"{i}.jpg", size=i)) for i in range(1000)]
    assert run(write_and_close(provider.open(SCHEMA), batch, batch)) == [None, None]
    _, [(n, total)] = provider.query(f"SELECT count(*), sum(size) FROM {provider.declaration.table}")
    assert (n, total) == (1000, sum(range(1000)))


def test_rows_postgres_refuses_are_rejected_alone_and_the_others_written(
    provider: PostgresTableProvider,
) -> None:
    created(provider)
    batch = [
        record("e0", 0, sample_row("ok-0.jpg")),
        record("e1", 0, sample_row("nul\x00byte.jpg")),  # text cannot hold NUL
        record("e2", 0, sample_row("ok-2.jpg")),
        record("e3", 0, sample_row("ok-3.jpg", labels=[Label("a\x00b", 1.0, [])])),  # nor can jsonb
        record("e4", 0, sample_row("ok-4.jpg", labels=[Label("nan", float("nan"), [])])),  # JSON has no NaN
        record("e5", 0, sample_row("ok-5.jpg")),
    ]
    [rejections] = run(write_and_close(provider.open(SCHEMA), batch))
    assert [r.index for r in rejections] == [1, 3, 4]
    assert all(isinstance(r, RowRejection) for r in rejections)
    assert "NUL" in rejections[0].reason
    assert "\\u0000" in rejections[1].reason
    assert (
        rejections[2].reason
        == "field 'labels' holds a FLOAT64 NaN or infinity, which a jsonb value cannot hold"
    )
    _, rows = provider.query(f"SELECT _event_id FROM {provider.declaration.table} ORDER BY _event_id")
    assert rows == [("e0",), ("e2",), ("e5",)]


def test_writes_fail_transiently_while_the_server_is_down_and_the_same_sink_recovers(
    provider: PostgresTableProvider, server: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    created(provider)
    sink = provider.open(SCHEMA)
    errors: list[str] = []

    async def main() -> None:
        try:
            assert await sink.write([record("before", 0, sample_row())]) is None
            server.stop()
            try:
                for attempt in range(2):
                    with pytest.raises(TransientSinkError, match="is unavailable") as info:
                        await sink.write([record(f"down-{attempt}", 0, sample_row())])
                    errors.append(str(info.value))
            finally:
                server.start()
            # the pool was closed after the failure: a fresh one connects at once
            assert await sink.write([record("after", 0, sample_row())]) is None
            # a restart with no write in between: the pooled connection is dead, the
            # pool's check discards it and the write gets a new one
            server.stop()
            server.start()
            assert await sink.write([record("after-restart", 0, sample_row())]) is None
        finally:
            await sink.close()

    run(main())
    _, rows = provider.query(f"SELECT _event_id FROM {provider.declaration.table} ORDER BY _event_id")
    assert rows == [("after",), ("after-restart",), ("before",)]
    assert errors and all(provider.declaration.masked_dsn in e for e in errors)
    everything = "\n".join([*errors, caplog.text, *(r.getMessage() for r in caplog.records)])
    assert server.password not in everything


def test_the_password_is_never_shown(
    server: PostgresServer,
    pg_schema: str,
    env: Environment,
    provider: PostgresTableProvider,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    seen: list[str] = [provider.declaration.describe(), repr(provider.declaration)]
    seen += [f"{r.kind} {r.name}" for r in provider.resources(SCHEMA)]
    for call in (lambda: provider.open(SCHEMA), lambda: provider.query("SELECT * FROM nowhere")):
        with pytest.raises(BuildflowError) as info:
            call()
        seen.append(str(info.value))
    wrong = PostgresTable(server.dsn.replace(server.password, "not-" + server.password), f"{pg_schema}.rows")
    with pytest.raises(ProvisioningError, match="password authentication failed") as info:
        plan(PostgresTableProvider(wrong, env).resources(SCHEMA))
    seen.append(str(info.value))
    down = PostgresTable(
        f"postgresql://bf_test:{server.password}@127.0.0.1:1/bf_test", "t", connect_timeout_s=1
    )
    with pytest.raises(ProvisioningError, match="cannot connect") as info:
        plan(PostgresTableProvider(down, env).resources(SCHEMA))
    seen.append(str(info.value))
    created(provider)
    sink = provider.open(SCHEMA)
    with server.superuser_connect("bf_test") as con:
        con.execute(f"DROP TABLE {provider.declaration.table}")
    with pytest.raises(TransientSinkError, match="run `buildflow plan <app>`") as info:
        run(write_and_close(sink, [record("e1", 0, sample_row())]))
    seen.append(str(info.value))
    seen += [caplog.text, *(r.getMessage() for r in caplog.records)]
    everything = "\n".join(seen)
    assert ":***@127.0.0.1" in everything
    assert server.password not in everything


def test_open_says_the_table_is_missing(provider: PostgresTableProvider) -> None:
    with pytest.raises(ResourceMissingError, match=r"does not exist at .*; run `buildflow plan <app>` first"):
        provider.open(SCHEMA)


# --- destroy --------------------------------------------------------------------------------


def test_destroy_protection_then_destroy_drops_the_table(
    provider: PostgresTableProvider, decl: PostgresTable, env: Environment
) -> None:
    created(provider)
    [change] = plan_destroy(provider.resources(SCHEMA))
    assert (change.action, change.details) == ("protected", ("destroy_protection=True",))
    with pytest.raises(DestroyProtectedError):
        destroy([change])
    assert count(provider) == 0  # still there

    unprotected = PostgresTableProvider(dataclasses.replace(decl, destroy_protection=False), env)
    [change] = plan_destroy(unprotected.resources(SCHEMA))
    assert change.action == "delete"
    destroy([change])
    assert [c.action for c in plan_destroy(unprotected.resources(SCHEMA))] == ["absent"]
    assert actions(provider, SCHEMA) == [("create", ())]
    # --force deletes a protected table too
    created(provider)
    destroy(plan_destroy(provider.resources(SCHEMA), force=True))
    assert actions(provider, SCHEMA) == [("create", ())]


# --- through the runtime ----------------------------------------------------------------------


@dataclasses.dataclass
class ImageRow:
    image: str
    size: int
    labels: list[Label]


def test_a_run_through_the_runtime_is_idempotent(decl: PostgresTable, env: Environment) -> None:
    class P(buildflow.Processor):
        def source(self) -> GCSFileStream:
            return GCSFileStream(bucket_name="photos")

        def sink(self) -> PostgresTable:
            return decl

        def process(self, event: GCSFileEvent) -> ImageRow:
            nul = "\x00" if event.name == "bad.jpg" else ""  # PostgreSQL cannot store it
            return ImageRow(event.name + nul, event.size, [Label("cat", 0.5, ["x"])])

    events = tuple(gcs_file_event(f"f{i:03d}.jpg", b"x" * i) for i in range(50))
    bad = gcs_file_event("bad.jpg", b"x")
    spec = inspect_processor(P())

    def bound() -> BoundProcessor:
        return BoundProcessor(
            spec=spec,
            source=InMemorySourceProvider(InMemorySource((*events, bad)), env),
            sink=PostgresTableProvider(decl, env),
            dead_letter=PostgresTableProvider(decl.dead_letter_sibling(), env),
        )

    apply(plan(bound().resources()))
    opts = RunOptions(until_idle=True, idle_grace_ms=0, handle_signals=False)
    rows = PostgresTableProvider(decl, env)
    dead = PostgresTableProvider(decl.dead_letter_sibling(), env)
    for _ in range(2):
        summary = InProcessRuntime().run([bound()], opts)
        assert summary.error is None and summary.events == 51
        assert count(rows) == 50
        _, dl = dead.query(f"SELECT event_id, stage, reason FROM {decl.dead_letter_sibling().table}")
        assert len(dl) == 1
        assert dl[0][0] == bad.event_id and dl[0][1] == "sink" and "NUL" in dl[0][2]
    _, sizes = rows.query(f"SELECT sum(size), count(DISTINCT _event_id) FROM {decl.table}")
    assert sizes == [(sum(range(50)), 50)]
