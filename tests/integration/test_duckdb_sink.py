"""DuckDB tables in the ``local`` environment: plan's diff against a real DuckDB file, the
idempotent sink, and a lock held by another process."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import re
import subprocess
import sys
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, Optional, TypeVar

import duckdb
import pytest

from buildflow.environment import Environment
from buildflow.errors import (
    ProvisioningError,
    QueryError,
    ResourceConflictError,
    ResourceMissingError,
    TransientSinkError,
)
from buildflow.io.base import OutputRecord, SinkDeclaration, SinkRuntime
from buildflow.io.google.declarations import BigQueryTable
from buildflow.io.local import DuckDBTable, duckdb_sink
from buildflow.io.local.duckdb_sink import (
    DuckDBTableProvider,
    create_table_sql,
    duckdb_type,
    parse_duckdb_type,
)
from buildflow.provisioning import apply, plan
from buildflow.schema import SchemaField, TableSchema, row_to_record, schema_from_dataclass

T = TypeVar("T")
UTC = datetime.timezone.utc  # noqa: UP017 (explicit for readers)

# --- row dataclasses ----------------------------------------------------------------------


@dataclasses.dataclass
class Label:
    name: str
    score: float
    tags: list[str]


@dataclasses.dataclass
class Box:
    x: int
    y: int


@dataclasses.dataclass
class Row:
    image: str
    labels: list[Label]
    taken_at: datetime.datetime
    day: datetime.date
    raw: bytes
    note: Optional[str]  # noqa: UP045
    box: Optional[Box]  # noqa: UP045


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
    box: Optional[Box]  # noqa: UP045


@dataclasses.dataclass
class RowWithNullableImage:
    image: Optional[str]  # noqa: UP045
    labels: list[Label]
    taken_at: datetime.datetime
    day: datetime.date
    raw: bytes
    note: Optional[str]  # noqa: UP045
    box: Optional[Box]  # noqa: UP045


SCHEMA = schema_from_dataclass(Row)

DECLARATIONS: list[SinkDeclaration] = [
    BigQueryTable(table_id="proj-123.ds.t"),
    DuckDBTable("ds.t"),
    DuckDBTable("t", database="other/tables.duckdb"),
]


def run(coro: Coroutine[Any, Any, T], timeout_s: float = 20.0) -> T:
    return asyncio.run(asyncio.wait_for(coro, timeout_s))


@pytest.fixture
def env(tmp_path: Path) -> Environment:
    return Environment(name="local", state_dir=tmp_path / "state")


@pytest.fixture
def provider(env: Environment) -> DuckDBTableProvider:
    return DuckDBTableProvider(BigQueryTable(table_id="proj-123.ds.t"), env)


def created(provider: DuckDBTableProvider, schema: TableSchema = SCHEMA) -> DuckDBTableProvider:
    apply(plan(provider.resources(schema)))
    return provider


def actions(provider: DuckDBTableProvider, schema: TableSchema) -> list[tuple[str, tuple[str, ...]]]:
    return [(c.action, c.details) for c in plan(provider.resources(schema))]


def record(event_id: str, row_index: int, row: object, schema: TableSchema = SCHEMA) -> OutputRecord:
    return OutputRecord(event_id, row_index, row_to_record(row, schema))


def sample_row(image: str = "a.jpg", **changes: Any) -> Row:
    row = Row(
        image=image,
        labels=[Label("cat", 0.75, ["pet", "animal"]), Label("dog", 0.25, [])],
        taken_at=datetime.datetime(
            2024, 5, 6, 7, 8, 9, 123456, tzinfo=datetime.timezone(datetime.timedelta(hours=2))
        ),
        day=datetime.date(2024, 5, 6),
        raw=b"\x00\xffbytes",
        note=None,
        box=Box(1, 2),
    )
    return dataclasses.replace(row, **changes)


async def write_and_close(sink: SinkRuntime, *batches: list[OutputRecord]) -> None:
    try:
        for batch in batches:
            await sink.write(batch)
    finally:
        await sink.close()


# --- plan: create, update, conflict --------------------------------------------------------


@pytest.mark.parametrize("declaration", DECLARATIONS, ids=lambda d: d.describe())
def test_created_table_matches_its_schema(env: Environment, declaration: SinkDeclaration) -> None:
    p = DuckDBTableProvider(declaration, env)
    [resource] = p.resources(SCHEMA)
    assert resource.kind == "table"
    assert actions(p, SCHEMA) == [("create", ())]
    apply(plan([resource]))
    assert actions(p, SCHEMA) == [("no change", ())]
    target = p.target()
    if isinstance(declaration, DuckDBTable) and declaration.database:
        assert target.database == env.state_dir / "other" / "tables.duckdb"
        assert resource.name == f"main.t ({target.database})"
    else:
        assert target.database == env.warehouse_path
        assert resource.name == "ds.t"
    cols, _ = p.query(f"SELECT * FROM {target.full_name}")
    assert cols == [*SCHEMA.field_names(), "_event_id", "_row_index", "_written_at"]


def test_create_table_sql_maps_every_type() -> None:
    sql = create_table_sql("ds", "t", SCHEMA)
    assert sql == (
        'CREATE TABLE "ds"."t" (\n'
        '  "image" VARCHAR NOT NULL,\n'
        '  "labels" STRUCT("name" VARCHAR, "score" DOUBLE, "tags" VARCHAR[])[],\n'
        '  "taken_at" TIMESTAMP WITH TIME ZONE NOT NULL,\n'
        '  "day" DATE NOT NULL,\n'
        '  "raw" BLOB NOT NULL,\n'
        '  "note" VARCHAR,\n'
        '  "box" STRUCT("x" BIGINT, "y" BIGINT),\n'
        '  "_event_id" VARCHAR NOT NULL,\n'
        '  "_row_index" INTEGER NOT NULL,\n'
        '  "_written_at" TIMESTAMPTZ NOT NULL,\n'
        '  PRIMARY KEY ("_event_id", "_row_index")\n'
        ")"
    )


def test_added_optional_columns_are_an_update_that_apply_makes(provider: DuckDBTableProvider) -> None:
    created(provider)
    run(write_and_close(provider.open(SCHEMA), [record("e1", 0, sample_row())]))
    new_schema = schema_from_dataclass(RowWithNewOptionalColumns)
    [(action, details)] = actions(provider, new_schema)
    assert action == "update"
    assert details == (
        "field 'extra': declared INT64 NULLABLE, table has no such field",
        "field 'more': declared STRING REPEATED, table has no such field",
    )
    with pytest.raises(ProvisioningError, match="does not match the row schema"):
        provider.open(new_schema)
    apply(plan(provider.resources(new_schema)))
    assert actions(provider, new_schema) == [("no change", ())]
    # The old code still fits: the new columns are NULLABLE / REPEATED, not declared there.
    assert actions(provider, SCHEMA) == [("no change", ())]
    _, rows = provider.query("SELECT image, extra, more FROM ds.t")
    assert rows == [("a.jpg", None, None)]


def test_relaxing_not_null_is_an_update(provider: DuckDBTableProvider) -> None:
    created(provider)
    relaxed = schema_from_dataclass(RowWithNullableImage)
    assert actions(provider, relaxed) == [
        ("update", ("field 'image': declared STRING NULLABLE, table has STRING REQUIRED",))
    ]
    apply(plan(provider.resources(relaxed)))
    assert actions(provider, relaxed) == [("no change", ())]


@pytest.mark.parametrize(
    ("row_type", "detail"),
    [
        (RowWithRetypedColumn, "field 'image': declared INT64 REQUIRED, table has STRING REQUIRED"),
        (RowWithNewRequiredColumn, "field 'extra': declared INT64 REQUIRED, table has no such field"),
    ],
)
def test_retyped_or_new_required_columns_are_conflicts(
    provider: DuckDBTableProvider, row_type: type, detail: str
) -> None:
    created(provider)
    schema = schema_from_dataclass(row_type)
    assert actions(provider, schema) == [("conflict", (detail,))]
    with pytest.raises(ResourceConflictError, match="nothing was changed"):
        apply(plan(provider.resources(schema)))
    with pytest.raises(ProvisioningError, match="does not match the row schema") as info:
        provider.open(schema)
    assert not isinstance(info.value, ResourceMissingError)


def test_a_table_without_buildflow_columns_is_a_conflict(
    env: Environment, provider: DuckDBTableProvider
) -> None:
    env.state_dir.mkdir(parents=True)
    with duckdb.connect(str(env.warehouse_path)) as con:
        con.execute("CREATE SCHEMA ds")
        con.execute(create_table_sql("ds", "t", SCHEMA).split(',\n  "_event_id"')[0] + ")")
    [(action, details)] = actions(provider, SCHEMA)
    assert action == "conflict"
    assert details == (
        "table was not created by buildflow: missing columns ['_event_id', '_row_index', "
        "'_written_at']; drop it or choose another table name",
    )


def test_columns_of_types_buildflow_does_not_map(env: Environment, provider: DuckDBTableProvider) -> None:
    """A column DuckDB types as INTEGER, naive TIMESTAMP, DECIMAL... is a conflict when
    declared or NOT NULL, and ignored when it is an extra NULLABLE column."""
    created(provider)
    with duckdb.connect(str(env.warehouse_path)) as con:
        con.execute("ALTER TABLE ds.t ADD COLUMN extra_nullable DECIMAL(18, 3)")
    assert actions(provider, SCHEMA) == [("no change", ())]
    with duckdb.connect(str(env.warehouse_path)) as con:
        con.execute("ALTER TABLE ds.t ALTER COLUMN taken_at SET DATA TYPE TIMESTAMP")
        con.execute("ALTER TABLE ds.t ADD COLUMN extra_required INTEGER DEFAULT 0 NOT NULL")
    [(action, details)] = actions(provider, SCHEMA)
    assert action == "conflict"
    assert len(details) == 2
    assert details[0].startswith(
        "field 'taken_at': declared TIMESTAMP REQUIRED, table has DuckDB type 'TIMESTAMP'"
    )
    assert details[1] == "field 'extra_required': not declared, table has INTEGER NOT NULL"
    with pytest.raises(ProvisioningError, match="taken_at"):
        provider.open(SCHEMA)


# --- parse_duckdb_type ----------------------------------------------------------------------


def _as_read_back(f: SchemaField, top: bool = True) -> SchemaField:
    """What DuckDB can say about a field: no NOT NULL inside a STRUCT."""
    mode = f.mode if top or f.mode == "REPEATED" else "NULLABLE"
    return SchemaField(f.name, f.field_type, mode, tuple(_as_read_back(c, False) for c in f.fields))


_SCALARS = ("STRING", "INT64", "FLOAT64", "BOOL", "BYTES", "TIMESTAMP", "DATE")
_NESTED = SchemaField(
    "rec",
    "RECORD",
    "REQUIRED",
    (
        SchemaField("x y", "STRING"),  # needs quotes
        SchemaField('we"ird', "INT64", "NULLABLE"),  # a quote inside the quotes
        SchemaField("select", "BOOL"),  # a keyword
        SchemaField("Mixed_Case", "DATE"),
        *(SchemaField(f"s_{t.lower()}", t) for t in _SCALARS),  # every type inside a STRUCT
        SchemaField("when", "TIMESTAMP", "REPEATED"),  # a list in a struct
        SchemaField(
            "items",  # a list of structs in a struct, holding lists and a struct
            "RECORD",
            "REPEATED",
            (
                SchemaField("tags", "STRING", "REPEATED"),
                SchemaField("at", "TIMESTAMP", "NULLABLE"),
                SchemaField("inner", "RECORD", fields=(SchemaField("v", "FLOAT64", "REPEATED"),)),
            ),
        ),
    ),
)
ROUND_TRIP_FIELDS = [
    *(
        SchemaField(f"c_{t.lower()}_{m.lower()}", t, m)
        for t in _SCALARS
        for m in ("REQUIRED", "NULLABLE", "REPEATED")
    ),
    _NESTED,
    dataclasses.replace(_NESTED, name="recs", mode="REPEATED"),
    *(f for f in SCHEMA.fields if f.field_type == "RECORD"),
]


@pytest.mark.parametrize("field", ROUND_TRIP_FIELDS, ids=lambda f: f.name)
def test_parse_duckdb_type_round_trips_duckdb_type(tmp_path: Path, field: SchemaField) -> None:
    expected = _as_read_back(field)
    nullable = field.mode != "REQUIRED"
    assert parse_duckdb_type(field.name, duckdb_type(field), nullable) == expected
    # ... and what DuckDB itself prints for that column (names unquoted where it can).
    with duckdb.connect(str(tmp_path / "types.duckdb")) as con:
        con.execute("CREATE SCHEMA s")
        con.execute(create_table_sql("s", "t", TableSchema((field,))))
        [(printed, is_nullable)] = con.execute(
            "SELECT data_type, is_nullable = 'YES' FROM information_schema.columns "
            "WHERE table_name = 't' AND column_name = ?",
            [field.name],
        ).fetchall()
    assert parse_duckdb_type(field.name, printed, is_nullable) == expected


@pytest.mark.parametrize(
    "text",
    [
        "INTEGER",
        "TIMESTAMP",  # naive: not TIMESTAMPTZ
        "DECIMAL(18,3)",
        "MAP(VARCHAR, BIGINT)",
        "STRUCT(a INTEGER)",
        "STRUCT(a BIGINT",
        "STRUCT(a BIGINT b BIGINT)",
        "BIGINT BIGINT",
        "VARCHAR[3]",
        "",
    ],
)
def test_parse_duckdb_type_rejects_types_without_a_row_schema_equivalent(text: str) -> None:
    with pytest.raises(ValueError, match="DuckDB type"):
        parse_duckdb_type("c", text)


# --- the sink -------------------------------------------------------------------------------


def test_sink_writes_nested_rows_idempotently(provider: DuckDBTableProvider) -> None:
    created(provider)
    first = sample_row("a.jpg")
    second = sample_row("b.jpg", labels=[], note="n", box=None, raw=b"")
    batch1 = [record("e1", 0, first), record("e1", 1, second), record("e2", 0, second)]
    # The redelivered (e1, 0) carries other values: the row already written is kept.
    batch2 = [record("e1", 0, sample_row("changed.jpg")), record("e3", 0, first)]
    run(write_and_close(provider.open(SCHEMA), batch1, batch2, batch1))

    cols, rows = provider.query("SELECT * EXCLUDE (_written_at) FROM ds.t ORDER BY _event_id, _row_index")
    assert cols == [*SCHEMA.field_names(), "_event_id", "_row_index"]
    as_dicts = [dict(zip(cols, r)) for r in rows]
    assert [(r["_event_id"], r["_row_index"], r["image"]) for r in as_dicts] == [
        ("e1", 0, "a.jpg"),
        ("e1", 1, "b.jpg"),
        ("e2", 0, "b.jpg"),
        ("e3", 0, "a.jpg"),
    ]
    a, b = as_dicts[0], as_dicts[1]
    assert a["labels"] == [
        {"name": "cat", "score": 0.75, "tags": ["pet", "animal"]},
        {"name": "dog", "score": 0.25, "tags": []},
    ]
    assert a["taken_at"] == datetime.datetime(2024, 5, 6, 5, 8, 9, 123456, tzinfo=UTC)
    assert a["day"] == datetime.date(2024, 5, 6)
    assert a["raw"] == b"\x00\xffbytes"
    assert a["note"] is None and a["box"] == {"x": 1, "y": 2}
    assert b["labels"] == [] and b["note"] == "n" and b["box"] is None and b["raw"] == b""

    _, [(written_at,)] = provider.query("SELECT max(_written_at) FROM ds.t")
    assert written_at.utcoffset() == datetime.timedelta(0)
    assert abs((datetime.datetime.now(UTC) - written_at).total_seconds()) < 60


def test_write_to_a_dropped_table_is_transient(env: Environment, provider: DuckDBTableProvider) -> None:
    created(provider)
    sink = provider.open(SCHEMA)
    with duckdb.connect(str(env.warehouse_path)) as con:
        con.execute("DROP TABLE ds.t")
    with pytest.raises(TransientSinkError) as err:
        run(write_and_close(sink, [record("e1", 0, sample_row())]))
    assert str(err.value) == (
        "table ds.t no longer exists (deleted while running, e.g. by `buildflow destroy`): "
        "the run stops; `buildflow plan <app>` creates it again"
    )


@contextlib.contextmanager
def held_open_by_another_process(database: Path) -> Iterator[None]:
    """Another process holds ``database`` open read-write until the block ends."""
    code = (
        "import sys, duckdb\n"
        "con = duckdb.connect(sys.argv[1])\n"
        "print('ready', flush=True)\n"
        "sys.stdin.read()\n"
        "con.close()\n"
    )
    with subprocess.Popen(
        [sys.executable, "-c", code, str(database)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        try:
            assert proc.stdout.readline() == "ready\n"  # returns "" if the process died
            yield
        finally:
            proc.stdin.close()  # the holder's stdin.read() returns: it closes and exits
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                raise


def test_a_write_while_another_process_holds_the_file_is_transient_then_succeeds(
    provider: DuckDBTableProvider,
) -> None:
    created(provider)
    sink = provider.open(SCHEMA)
    batch = [record("e1", 0, sample_row())]

    async def main() -> None:
        try:
            with held_open_by_another_process(provider.target().database):
                started = time.monotonic()
                with pytest.raises(TransientSinkError, match="locked by another process"):
                    await sink.write(batch)
                assert time.monotonic() - started >= 1.5  # it waited for the lock first
            await sink.write(batch)  # the holder has exited: the same batch goes through
        finally:
            await sink.close()

    run(main())
    assert provider.query("SELECT _event_id, image FROM ds.t")[1] == [("e1", "a.jpg")]


# --- how long the sink holds the file (others wait for its lock meanwhile) -------------------


def test_writes_in_quick_succession_share_one_connection(provider: DuckDBTableProvider) -> None:
    created(provider)
    sink: Any = provider.open(SCHEMA)

    async def main() -> list[Any]:
        cons = []
        try:
            for i in range(3):
                await sink.write([record(f"e{i}", 0, sample_row())])
                cons.append(sink._con)
        finally:
            await sink.close()
        return cons

    cons = run(main())
    assert cons[0] is not None and cons[0] is cons[1] is cons[2]


def test_a_connection_held_for_hold_max_s_is_released_for_readers_before_the_next_write(
    provider: DuckDBTableProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    created(provider)
    monkeypatch.setattr(duckdb_sink, "HOLD_MAX_S", 0.0)
    sink: Any = provider.open(SCHEMA)

    async def main() -> list[Any]:
        cons = []
        try:
            for i in range(2):
                await sink.write([record(f"e{i}", 0, sample_row())])
                cons.append(sink._con)
        finally:
            await sink.close()
        return cons

    first, second = run(main())
    assert first is not None and second is not None and first is not second
    assert len(provider.query("SELECT _event_id FROM ds.t")[1]) == 2


def test_the_file_is_released_once_the_sink_is_idle(provider: DuckDBTableProvider) -> None:
    created(provider)
    sink: Any = provider.open(SCHEMA)

    async def main() -> bool:
        try:
            await sink.write([record("e1", 0, sample_row())])
            assert sink._con is not None
            deadline = time.monotonic() + 10 * duckdb_sink.IDLE_CLOSE_S  # bounded poll
            while sink._con is not None and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            return sink._con is None
        finally:
            await sink.close()

    assert run(main()), f"the file was still open {10 * duckdb_sink.IDLE_CLOSE_S} s after the last write"


@pytest.mark.parametrize(
    ("message", "is_lock"),
    [
        ('IO Error: Could not set lock on file "w.duckdb": Conflicting lock is held', True),
        ("IO Error: Could not set lock on file", True),
        ("Conflicting lock is held in /usr/bin/python3 (PID 7)", True),
        ("Catalog Error: Table with name t does not exist!", False),
    ],
)
def test_a_lock_error_is_told_by_either_word(message: str, is_lock: bool) -> None:
    assert duckdb_sink._is_lock_error(duckdb.IOException(message)) is is_lock


# --- open() ---------------------------------------------------------------------------------


def test_open_says_what_is_missing(env: Environment, provider: DuckDBTableProvider) -> None:
    db = str(env.warehouse_path)
    with pytest.raises(ResourceMissingError) as err:
        provider.open(SCHEMA)
    assert str(err.value) == (
        f"DuckDB file {db!r} does not exist; run `buildflow plan <app>` first to create the tables."
    )
    with pytest.raises(ResourceMissingError) as err:
        provider.query("SELECT 1")
    assert str(err.value) == f"DuckDB file {db!r} does not exist; run `buildflow plan <app>` first."
    other = DuckDBTableProvider(BigQueryTable(table_id="ds.other"), env)
    created(other)  # the file and the dataset exist, the table does not
    with pytest.raises(ResourceMissingError, match=r"table ds\.t does not exist in .*; run `buildflow plan"):
        provider.open(SCHEMA)
    created(provider)
    run(write_and_close(provider.open(SCHEMA)))


def test_query_is_read_only_and_names_the_tables_there_are(
    env: Environment, provider: DuckDBTableProvider
) -> None:
    created(provider)
    db = str(env.warehouse_path)
    with pytest.raises(QueryError) as err:
        provider.query("SELECT * FROM ds.nope")
    assert str(err.value).startswith("Catalog Error: Table with name nope does not exist!")
    assert str(err.value).endswith(
        f"; tables in {db!r}: ds.t. Run `buildflow plan <app>` to create the app's tables."
    )
    with pytest.raises(QueryError) as err:
        provider.query("CREATE TABLE ds.mine (a INTEGER)")
    assert str(err.value).startswith("query failed: ") and "read-only" in str(err.value)
    assert provider.query("SELECT table_name FROM information_schema.tables")[1] == [("t",)]


def test_rows_duckdb_refuses_are_rejected_alone_and_the_others_written(provider: DuckDBTableProvider) -> None:
    """A value DuckDB cannot store (here a string that is not valid UTF-8) must not make the
    whole batch fail for ever: that row comes back as a rejection, the others are written."""
    created(provider)
    sink = provider.open(SCHEMA)
    batch = [record(f"e{i}", 0, sample_row(f"{i}.jpg")) for i in range(7)]
    bad = {2, 5}
    for i in bad:
        batch[i] = record(f"e{i}", 0, sample_row(f"bad-\udcff-{i}.jpg"))

    async def go() -> Any:
        try:
            return await sink.write(batch)
        finally:
            await sink.close()

    rejected = run(go())
    assert sorted(r.index for r in rejected) == sorted(bad)
    assert all("UTF-8" in r.reason for r in rejected)
    # the reason names DuckDB's exception class, e.g. "ConversionException"
    assert all(re.match(r"DuckDB refused the row: \w+(Exception|Error): ", r.reason) for r in rejected)
    _, rows = provider.query("SELECT _event_id FROM ds.t ORDER BY _event_id")
    assert [r[0] for r in rows] == [f"e{i}" for i in range(7) if i not in bad]


def test_a_batch_with_a_redelivered_row_and_a_refused_row_writes_the_rest(
    provider: DuckDBTableProvider,
) -> None:
    """The plain INSERT fails on both the duplicate key and the bad value; the ON CONFLICT
    path then skips the row already written, rejects the bad one alone and writes the rest."""
    created(provider)
    sink = provider.open(SCHEMA)
    first = [record("e0", 0, sample_row("0.jpg"))]
    batch = [
        record("e0", 0, sample_row("changed.jpg")),  # redelivered: the stored row is kept
        record("e1", 0, sample_row("bad-\udcff.jpg")),  # DuckDB refuses it
        record("e2", 0, sample_row("2.jpg")),
    ]

    async def go() -> Any:
        try:
            assert await sink.write(first) is None
            return await sink.write(batch)
        finally:
            await sink.close()

    rejected = run(go())
    assert [r.index for r in rejected] == [1] and "UTF-8" in rejected[0].reason
    _, rows = provider.query("SELECT _event_id, image FROM ds.t ORDER BY _event_id")
    assert rows == [("e0", "0.jpg"), ("e2", "2.jpg")]
