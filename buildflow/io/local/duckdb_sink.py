"""Tables in a local DuckDB file: ``BigQueryTable`` in ``local``, and ``DuckDBTable`` anywhere.

Column types follow the row schema: STRING->VARCHAR, INT64->BIGINT, FLOAT64->DOUBLE,
BOOL->BOOLEAN, BYTES->BLOB, TIMESTAMP->TIMESTAMPTZ, DATE->DATE, RECORD->STRUCT,
REPEATED->``type[]``; top-level REQUIRED fields are NOT NULL (DuckDB has no NOT NULL
inside a STRUCT, so nested fields are nullable).

buildflow adds three columns: ``_event_id`` and ``_row_index`` (the primary key: a
redelivered event's rows are skipped) and ``_written_at``. A write is one plain ``INSERT``;
only when DuckDB refuses it (a key already there: a redelivery; or a bad value) is it done
again as ``INSERT ... ON CONFLICT DO NOTHING``, bisecting to the refused rows. The
``ON CONFLICT`` clause costs ~3 ms of CPU per statement here (DuckDB 2.0, 2-core machine:
4.6 against 1.6 ms for 16 rows), more than the rows themselves, so the common case skips it.

DuckDB lets one process at a time open the file for writing. Opening it costs ~20 ms
(measured on these 2-core machines), more than writing a micro-batch, so the sink keeps
it open while writes keep coming and closes it when no write came for
:data:`IDLE_CLOSE_S`, or, under continuous load, after holding it for :data:`HOLD_MAX_S`
(then it waits :data:`READER_WINDOW_S` before reopening). Other processes
(``buildflow query``, the DuckDB CLI, the web UI) therefore read it within about
``HOLD_MAX_S``: :meth:`_Target.connect` retries a locked file every 10 ms at most. A write
that finds the file locked is retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from buildflow.errors import (
    MissingDependencyError,
    QueryError,
    ResourceGoneError,
    ResourceMissingError,
    TransientSinkError,
)
from buildflow.io.base import OutputRecord, RowRejection, SinkProvider, SinkRuntime
from buildflow.io.google.declarations import BigQueryTable
from buildflow.io.local.declarations import DuckDBTable
from buildflow.provisioning import Resource, ResourceState, require_ready
from buildflow.runtime.threads import BlockingWorker
from buildflow.schema import SchemaField, TableSchema, diff_schemas

__all__ = ["DuckDBTableProvider", "duckdb_type", "parse_duckdb_type", "create_table_sql"]

#: Close the file when no write came for this long, seconds. Closing checkpoints the
#: write-ahead log into the file (~13 ms here) and the next write opens it again (~20 ms).
IDLE_CLOSE_S = 0.5
#: Longest a busy sink keeps the file open before letting other processes in, seconds.
HOLD_MAX_S = 2.0
#: Pause after such a release before the sink opens the file again, seconds: long enough for
#: a reader retrying every 10 ms (see _Target.connect) to open it.
READER_WINDOW_S = 0.03

META_COLUMNS = (
    ("_event_id", "VARCHAR NOT NULL"),
    ("_row_index", "INTEGER NOT NULL"),
    ("_written_at", "TIMESTAMPTZ NOT NULL"),
)

_SCALAR = {
    "STRING": "VARCHAR",
    "INT64": "BIGINT",
    "FLOAT64": "DOUBLE",
    "BOOL": "BOOLEAN",
    "BYTES": "BLOB",
    "TIMESTAMP": "TIMESTAMP WITH TIME ZONE",
    "DATE": "DATE",
}
_SCALAR_BACK = {v: k for k, v in _SCALAR.items()} | {"TIMESTAMPTZ": "TIMESTAMP"}


def _duckdb() -> Any:
    try:
        import duckdb
    except ImportError as e:  # pragma: no cover - duckdb is a core dependency
        raise MissingDependencyError("duckdb is not installed: run `pip install duckdb`") from e
    return duckdb


def q(ident: str) -> str:
    """Quote an identifier for DuckDB."""
    return '"' + ident.replace('"', '""') + '"'


def duckdb_type(f: SchemaField) -> str:
    """The DuckDB type of a schema field (without NOT NULL)."""
    if f.field_type == "RECORD":
        base = "STRUCT(" + ", ".join(f"{q(c.name)} {duckdb_type(c)}" for c in f.fields) + ")"
    else:
        base = _SCALAR[f.field_type]
    return base + "[]" if f.mode == "REPEATED" else base


def create_table_sql(schema_name: str, table: str, schema: TableSchema) -> str:
    """``CREATE TABLE`` for a row schema plus buildflow's metadata columns."""
    cols = [
        f"{q(f.name)} {duckdb_type(f)}" + (" NOT NULL" if f.mode == "REQUIRED" else "") for f in schema.fields
    ]
    cols += [f"{q(n)} {t}" for n, t in META_COLUMNS]
    cols.append('PRIMARY KEY ("_event_id", "_row_index")')
    return f"CREATE TABLE {q(schema_name)}.{q(table)} (\n  " + ",\n  ".join(cols) + "\n)"


# --- reading DuckDB types back into schema fields (for plan's diff) ---------------
# DuckDB prints TIMESTAMPTZ as the four words ``TIMESTAMP WITH TIME ZONE``: one token.
_TOKEN = re.compile(
    r'\s*("(?:[^"]|"")*"|\[\]|(?i:TIMESTAMP|TIME)\s+(?i:WITH\s+TIME\s+ZONE)\b'
    r"|[A-Za-z_][A-Za-z0-9_]*|\d+|[(),])"
)


def _tokens(text: str) -> list[str]:
    out: list[str] = []
    pos = 0
    while pos < len(text):
        if text[pos:].isspace():
            break
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise ValueError(f"cannot parse DuckDB type {text!r} at {pos}")
        out.append(" ".join(m.group(1).split()))
        pos = m.end()
    return out


def parse_duckdb_type(name: str, text: str, nullable: bool = True) -> SchemaField:
    """Parse a DuckDB type string (as ``DESCRIBE`` prints it) into a :class:`SchemaField`.

    Nested fields come back ``NULLABLE`` (or ``REPEATED``): DuckDB has no NOT NULL inside a
    STRUCT.

    Raises:
        ValueError: the type cannot be parsed, or it has no row-schema equivalent (e.g.
            ``INTEGER``, a naive ``TIMESTAMP``, ``DECIMAL(18,3)``, ``MAP(...)``); ``plan``
            reports such a column as a conflict.
    """
    toks = _tokens(text)
    pos = 0

    def expect(tok: str) -> None:
        nonlocal pos
        if toks[pos] != tok:
            raise ValueError(f"cannot parse DuckDB type {text!r}: expected {tok!r}, got {toks[pos]!r}")
        pos += 1

    def parse() -> tuple[str, tuple[SchemaField, ...], bool]:
        nonlocal pos
        tok = toks[pos]
        pos += 1
        if tok.upper() == "STRUCT":
            expect("(")
            children = []
            while toks[pos] != ")":
                cname = toks[pos]
                cname = cname[1:-1].replace('""', '"') if cname.startswith('"') else cname
                pos += 1
                ctype, cfields, crep = parse()
                children.append(
                    SchemaField(cname, ctype, "REPEATED" if crep else "NULLABLE", cfields)  # type: ignore[arg-type]
                )
                if toks[pos] != ")":
                    expect(",")
            pos += 1
            ftype, fields = "RECORD", tuple(children)
        elif tok.upper() in _SCALAR_BACK:
            ftype, fields = _SCALAR_BACK[tok.upper()], ()
        else:
            raise ValueError(
                f"DuckDB type {text!r}: {tok!r} has no row-schema equivalent; buildflow maps "
                f"only {', '.join(sorted(_SCALAR_BACK))} and STRUCT(...), each optionally []"
            )
        repeated = False
        if pos < len(toks) and toks[pos] == "[]":
            pos += 1
            repeated = True
        return ftype, fields, repeated

    try:
        ftype, fields, repeated = parse()
    except IndexError:
        raise ValueError(f"cannot parse DuckDB type {text!r}: it ends too early") from None
    if pos != len(toks):
        raise ValueError(f"cannot parse DuckDB type {text!r}: unexpected {toks[pos]!r}")
    mode = "REPEATED" if repeated else ("NULLABLE" if nullable else "REQUIRED")
    return SchemaField(name, ftype, mode, fields)  # type: ignore[arg-type]


def _nested_nullable(f: SchemaField, top: bool = True) -> SchemaField:
    """DuckDB cannot say NOT NULL inside a STRUCT: compare nested fields as NULLABLE."""
    mode = f.mode if top or f.mode == "REPEATED" else "NULLABLE"
    return SchemaField(
        f.name, f.field_type, mode, tuple(_nested_nullable(c, False) for c in f.fields), f.description
    )


def _is_lock_error(e: Exception) -> bool:
    text = str(e).lower()
    return "lock" in text or "conflicting" in text


class _Target:
    """Where a table lives: database file, schema, table name. Picklable."""

    def __init__(self, database: Path, schema_name: str, table: str) -> None:
        self.database = database
        self.schema_name = schema_name
        self.table = table

    @property
    def full_name(self) -> str:
        return f"{self.schema_name}.{self.table}"

    def open(self, read_only: bool = False, wait_s: float = 0.0) -> Any:
        """Open the database; retry every 1-10 ms for up to ``wait_s`` while another
        process holds its lock (a writing sink lets readers in at least every
        :data:`HOLD_MAX_S`, for :data:`READER_WINDOW_S`).

        Raises:
            TransientSinkError: Still locked after ``wait_s``.
        """
        duckdb = _duckdb()
        deadline = time.monotonic() + wait_s
        delay = 0.001
        while True:
            try:
                return duckdb.connect(str(self.database), read_only=read_only)
            except duckdb.Error as e:
                if not _is_lock_error(e):
                    raise
                if time.monotonic() >= deadline:
                    raise TransientSinkError(
                        f"DuckDB file {str(self.database)!r} is locked by another process: {e}"
                    ) from e
                time.sleep(delay)
                delay = min(delay * 2, 0.01)

    @contextlib.contextmanager
    def connect(self, read_only: bool = False, wait_s: float = 0.0) -> Iterator[Any]:
        """:meth:`open`, closed when the block ends.

        ``read_only`` in a process that already has the file open for writing (a running
        sink, e.g. under ``buildflow run --ui``): DuckDB refuses a read-only connection
        beside a read-write one of the same process, so this opens a read-write
        connection to the same database instance and runs the block in a ``BEGIN
        TRANSACTION READ ONLY`` (any write in it fails), rolled back at the end.
        """
        duckdb = _duckdb()
        in_transaction = False
        try:
            con = self.open(read_only=read_only, wait_s=wait_s)
        except duckdb.ConnectionException as e:
            if not (read_only and "different configuration" in str(e)):
                raise
            con = self.open(read_only=False, wait_s=wait_s)
            con.execute("BEGIN TRANSACTION READ ONLY")
            in_transaction = True
        try:
            yield con
        finally:
            if in_transaction:
                with contextlib.suppress(Exception):
                    con.execute("ROLLBACK")
            con.close()

    def existing_columns(self, con: Any) -> list[tuple[str, str, bool]] | None:
        rows = con.execute(
            "SELECT column_name, data_type, is_nullable = 'YES' FROM information_schema.columns "
            "WHERE table_schema = ? AND table_name = ? ORDER BY ordinal_position",
            [self.schema_name, self.table],
        ).fetchall()
        return [(r[0], r[1], bool(r[2])) for r in rows] or None


class DuckDBTableResource(Resource):
    """A DuckDB table created from a row schema."""

    kind = "table"

    def __init__(self, target: _Target, schema: TableSchema, protected: bool) -> None:
        self.target = target
        self.schema = schema
        self.protected = protected
        self.name = (
            target.full_name
            if target.database.name == "warehouse.duckdb"
            else (f"{target.full_name} ({target.database})")
        )

    def inspect(self) -> ResourceState:
        if not self.target.database.exists():
            return ResourceState(exists=False)
        with self.target.connect(read_only=True, wait_s=10) as con:
            cols = self.target.existing_columns(con)
        if cols is None:
            return ResourceState(exists=False)
        meta = {n for n, _ in META_COLUMNS}
        missing_meta = sorted(meta - {c[0] for c in cols})
        conflicts: list[str] = []
        if missing_meta:
            conflicts.append(
                f"table was not created by buildflow: missing columns {missing_meta}; "
                "drop it or choose another table name"
            )
        # A column whose DuckDB type has no row-schema equivalent (INTEGER, a naive
        # TIMESTAMP, DECIMAL, MAP, ...) is a conflict when declared, or when it is NOT NULL
        # (inserts would fail); it is left out of the schema diff either way.
        declared_by_name = {f.name.lower(): f for f in self.schema.fields}
        parsed: list[SchemaField] = []
        unmapped: set[str] = set()
        for n, t, nullable in cols:
            if n in meta:
                continue
            try:
                parsed.append(parse_duckdb_type(n, t, nullable))
            except ValueError as e:
                unmapped.add(n.lower())
                want = declared_by_name.get(n.lower())
                if want is not None:
                    declared_as = f"{want.field_type} {want.mode}"
                    conflicts.append(f"field {want.name!r}: declared {declared_as}, table has {e}")
                elif not nullable:
                    conflicts.append(f"field {n!r}: not declared, table has {t} NOT NULL")
        existing = TableSchema(tuple(parsed))
        declared = TableSchema(
            tuple(_nested_nullable(f) for f in self.schema.fields if f.name.lower() not in unmapped)
        )
        updates: list[str] = []
        for d in diff_schemas(declared, existing):
            if d.kind == "extra_in_existing" and d.existing and "REQUIRED" not in d.existing:
                continue  # an extra NULLABLE column does not stop inserts
            if d.is_compatible_update() and "." not in d.path:
                updates.append(str(d))
            else:
                conflicts.append(str(d))
        return ResourceState(True, updates=tuple(updates), conflicts=tuple(conflicts))

    def create(self) -> None:
        self.target.database.parent.mkdir(parents=True, exist_ok=True)
        with self.target.connect(wait_s=10) as con:
            con.execute(f"CREATE SCHEMA IF NOT EXISTS {q(self.target.schema_name)}")
            con.execute(create_table_sql(self.target.schema_name, self.target.table, self.schema))

    def update(self, state: ResourceState) -> None:
        """Add missing NULLABLE/REPEATED columns, relax NOT NULL where the schema allows."""
        with self.target.connect(wait_s=10) as con:
            cols = {c[0]: c for c in self.target.existing_columns(con) or []}
            tbl = f"{q(self.target.schema_name)}.{q(self.target.table)}"
            for f in self.schema.fields:
                if f.name not in cols:
                    con.execute(f"ALTER TABLE {tbl} ADD COLUMN {q(f.name)} {duckdb_type(f)}")
                elif f.mode != "REQUIRED" and not cols[f.name][2]:
                    con.execute(f"ALTER TABLE {tbl} ALTER COLUMN {q(f.name)} DROP NOT NULL")

    def delete(self) -> None:
        with self.target.connect(wait_s=10) as con:
            con.execute(f"DROP TABLE IF EXISTS {q(self.target.schema_name)}.{q(self.target.table)}")


class DuckDBSink(SinkRuntime):
    """Writes micro-batches with one ``INSERT ... SELECT UNNEST($1)`` (``ON CONFLICT DO
    NOTHING`` only after DuckDB refused the plain one: see the module docstring).

    A locked file or a missing table is a transient error (retried by the runtime); a row
    whose values DuckDB refuses is returned as a :class:`RowRejection` (dead-lettered) and
    the rest of the batch is written. The file stays open between writes that follow each
    other closely (see the module docstring); every statement commits on its own.
    All DuckDB calls run on one thread of the sink's own."""

    def __init__(self, target: _Target, schema: TableSchema) -> None:
        self.target = target
        self.schema = schema
        self._io = BlockingWorker(f"duckdb-{target.table}")
        # Touched on the _io thread only.
        self._con: Any = None
        self._opened_at = 0.0
        self._last_write_at = 0.0
        self._idle_timer: asyncio.TimerHandle | None = None
        self._idle_check: asyncio.Task[None] | None = None  # kept: the loop holds tasks weakly
        # _written_at is DuckDB's own clock at the statement (now(): the start of its
        # transaction, one per statement), not a value sent with every row.
        sent = [(n, t) for n, t in META_COLUMNS if n != "_written_at"]
        cols = [f.name for f in schema.fields] + [n for n, _ in sent]
        struct = (
            "STRUCT("
            + ", ".join(
                [f"{q(f.name)} {duckdb_type(f)}" for f in schema.fields]
                + [f"{q(n)} {t.replace(' NOT NULL', '')}" for n, t in sent]
            )
            + ")[]"
        )
        self._sql = (
            f"INSERT INTO {q(target.schema_name)}.{q(target.table)} "
            f"({', '.join(map(q, cols))}, {q('_written_at')}) "
            f"SELECT {', '.join('s.' + q(c) for c in cols)}, now() "
            f"FROM (SELECT UNNEST($1::{struct}) AS s) ON CONFLICT DO NOTHING"
        )
        self._plain_sql = self._sql.removesuffix(" ON CONFLICT DO NOTHING")

    def _write(self, records: Sequence[OutputRecord]) -> list[RowRejection]:
        payload = [{**r.values, "_event_id": r.event_id, "_row_index": r.row_index} for r in records]
        duckdb = _duckdb()
        try:
            return self._insert(self._connection(), payload)
        except duckdb.CatalogException as e:
            self._release()
            raise ResourceGoneError(
                f"table {self.target.full_name} no longer exists (deleted while running, e.g. by "
                "`buildflow destroy`): the run stops; `buildflow plan <app>` creates it again"
            ) from e
        except duckdb.IOException as e:
            self._release()
            raise TransientSinkError(str(e)) from e
        except BaseException:
            self._release()
            raise
        finally:
            self._last_write_at = time.monotonic()

    def _connection(self) -> Any:
        """The open connection, (re)opened as needed; released first when held for
        :data:`HOLD_MAX_S` already, so that readers get in."""
        if self._con is not None and time.monotonic() - self._opened_at >= HOLD_MAX_S:
            self._release()
            time.sleep(READER_WINDOW_S)
        if self._con is None:
            self._con = self.target.open(wait_s=2)
            self._opened_at = time.monotonic()
        return self._con

    def _release(self) -> None:
        con, self._con = self._con, None
        if con is not None:
            with contextlib.suppress(Exception):
                con.close()

    def _release_if_idle(self) -> None:
        if self._con is not None and time.monotonic() - self._last_write_at >= IDLE_CLOSE_S * 0.9:
            self._release()

    def _insert(self, con: Any, payload: list[dict[str, Any]]) -> list[RowRejection]:
        """Insert ``payload`` with the plain statement; if DuckDB refuses it (a key already
        written, a bad value), which writes nothing, go the ``ON CONFLICT`` way
        (:meth:`_insert_isolating`)."""
        duckdb = _duckdb()
        try:
            con.execute(self._plain_sql, [payload])
            return []
        except (duckdb.DataError, duckdb.IntegrityError, duckdb.InvalidInputException):
            return self._insert_isolating(con, payload, 0)

    def _insert_isolating(self, con: Any, payload: list[dict[str, Any]], offset: int) -> list[RowRejection]:
        """Insert ``payload``; if DuckDB refuses the data itself (a value it cannot convert
        or store, a constraint), bisect to find the rows it refuses alone and insert the
        rest. Each statement is its own transaction, so a refused one wrote nothing.
        O(k log n) statements for k bad rows among n."""
        duckdb = _duckdb()
        try:
            con.execute(self._sql, [payload])
            return []
        except (duckdb.DataError, duckdb.IntegrityError, duckdb.InvalidInputException) as e:
            if len(payload) == 1:
                return [RowRejection(offset, f"DuckDB refused the row: {type(e).__name__}: {e}")]
        mid = len(payload) // 2
        return self._insert_isolating(con, payload[:mid], offset) + self._insert_isolating(
            con, payload[mid:], offset + mid
        )

    async def write(self, records: Sequence[OutputRecord]) -> Sequence[RowRejection] | None:
        recs = list(records)
        try:
            return await self._io.run(lambda: self._write(recs)) or None
        finally:
            # (Re)arm the idle close: the file is closed IDLE_CLOSE_S after the last write.
            if self._idle_timer is not None:
                self._idle_timer.cancel()
            self._idle_timer = asyncio.get_running_loop().call_later(IDLE_CLOSE_S, self._start_idle_check)

    def _start_idle_check(self) -> None:
        self._idle_check = asyncio.get_running_loop().create_task(self._io.run(self._release_if_idle))

    async def close(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        with contextlib.suppress(Exception):
            if self._idle_check is not None:
                await self._idle_check
            await self._io.run(self._release)
        self._io.stop()


class DuckDBTableProvider(SinkProvider):
    """Binds :class:`BigQueryTable` (in ``local``) or :class:`DuckDBTable` to a DuckDB file."""

    sql_dialect = "duckdb"

    def target(self) -> _Target:
        decl = self.declaration
        if isinstance(decl, BigQueryTable):
            return _Target(self.environment.warehouse_path, decl.dataset_id, decl.table_name)
        assert isinstance(decl, DuckDBTable)
        db = Path(decl.database) if decl.database else self.environment.warehouse_path
        if not db.is_absolute():
            db = self.environment.state_dir / db
        return _Target(db, decl.schema_name, decl.table_name)

    def resources(self, schema: TableSchema) -> list[Resource]:
        protected = bool(getattr(self.declaration, "destroy_protection", False))
        return [DuckDBTableResource(self.target(), schema, protected)]

    def open(self, schema: TableSchema) -> SinkRuntime:
        target = self.target()
        if not target.database.exists():
            raise ResourceMissingError(
                f"DuckDB file {str(target.database)!r} does not exist; run `buildflow plan "
                "<app>` first to create the tables."
            )
        require_ready(
            DuckDBTableResource(target, schema, False),
            f"table {target.full_name}",
            f" in {str(target.database)!r}",
        )
        return DuckDBSink(target, schema)

    def query(self, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
        target = self.target()
        if not target.database.exists():
            raise ResourceMissingError(
                f"DuckDB file {str(target.database)!r} does not exist; run `buildflow plan <app>` first."
            )
        duckdb = _duckdb()
        with target.connect(read_only=True, wait_s=10) as con:
            try:
                cur = con.execute(sql)
            except duckdb.CatalogException as e:
                raise QueryError(_missing_table_message(con, target, e)) from e
            except duckdb.Error as e:
                raise QueryError(f"query failed: {e}") from e
            cols = [d[0] for d in cur.description or []]
            return cols, cur.fetchall()


def _missing_table_message(con: Any, target: _Target, e: Exception) -> str:
    """DuckDB's complaint about a name it does not know, with the tables the warehouse has
    instead of DuckDB's guess from its own catalog (``pg_catalog.pg_description``...)."""
    first = str(e).split("\n", 1)[0]
    if "Table with name" not in first:
        return f"query failed: {e}"
    rows = con.execute(
        "SELECT table_schema || '.' || table_name FROM information_schema.tables "
        "WHERE table_catalog = current_database() AND table_schema NOT IN "
        "('information_schema', 'pg_catalog') ORDER BY 1"
    ).fetchall()
    tables = ", ".join(r[0] for r in rows)
    db = repr(str(target.database))
    have = f"tables in {db}: {tables}" if tables else f"{db} has no tables"
    return f"{first}; {have}. Run `buildflow plan <app>` to create the app's tables."
