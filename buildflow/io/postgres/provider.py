"""``PostgresTable`` on PostgreSQL, with psycopg 3 and psycopg_pool (any environment).

Column types follow the row schema: STRING->``text``, INT64->``bigint``,
FLOAT64->``double precision``, BOOL->``boolean``, BYTES->``bytea``,
TIMESTAMP->``timestamptz``, DATE->``date``; a RECORD or REPEATED field is one ``jsonb``
column holding the value as JSON (TIMESTAMP and DATE as ISO 8601 strings, BYTES as base64,
like BigQuery's JSON). Top-level REQUIRED fields are NOT NULL. buildflow adds
``_event_id text``, ``_row_index integer`` (together the primary key) and
``_written_at timestamptz`` (the server's transaction time of the write).

``plan`` compares the table's columns (name, type, nullability, as ``pg_catalog`` has them)
with the ones the row schema gives: a missing NULLABLE/REPEATED column is added and a NOT NULL that the
schema relaxed is dropped in place (updates); a column of another type, a new REQUIRED
column, a NOT NULL column the schema does not declare, or missing buildflow columns are
conflicts. What is inside a ``jsonb`` column is not compared (JSON has no schema here):
a field added to a nested RECORD needs no change to the table.

Writes: one micro-batch is one transaction: ``COPY`` into a temporary staging table, then
``INSERT ... SELECT ... ON CONFLICT (_event_id, _row_index) DO UPDATE``: a redelivered
event's rows are overwritten with the latest values (upsert), never duplicated (within a
batch, the last row of a key wins). If PostgreSQL refuses
the batch for a value (a NUL character in a string, a constraint the table has), the rows
are retried one by one, each under a savepoint, in one transaction: the rows it refuses
are returned as :class:`~buildflow.io.base.RowRejection` (their events are dead-lettered)
and all others are written.

Connections come from a ``psycopg_pool.ConnectionPool``, opened lazily on the sink's I/O
thread; each connection is checked before use. A connection failure (server down or
restarted, network) raises :class:`~buildflow.errors.TransientSinkError`, so the runtime
retries the batch with backoff, and the pool is closed: the next attempt opens a fresh
one, connecting at once instead of after the pool's own growing reconnect backoff.

The password of the DSN is never printed: the pool gets the DSN without it (the password
goes as a separate connection argument), and every message buildflow raises is scrubbed
of it (:func:`buildflow.io.postgres.declarations.mask_dsn` shows ``postgresql://user:***@host/db``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import re
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from buildflow.errors import (
    ConfigurationError,
    ProvisioningError,
    TransientSinkError,
)
from buildflow.extras import import_optional
from buildflow.io.base import OutputRecord, RowRejection, SinkProvider, SinkRuntime
from buildflow.io.postgres.declarations import ENV_PREFIX, PostgresTable, mask_dsn
from buildflow.provisioning import Resource, ResourceState, require_ready
from buildflow.runtime.threads import BlockingWorker
from buildflow.schema import SchemaField, TableSchema, to_json

__all__ = [
    "PostgresTableProvider",
    "PostgresTableResource",
    "PostgresSink",
    "pg_type",
    "create_table_sql",
    "to_json",
]

log = logging.getLogger("buildflow.io.postgres")

META_COLUMNS = (
    ("_event_id", "text NOT NULL"),
    ("_row_index", "integer NOT NULL"),
    ("_written_at", "timestamptz NOT NULL"),
)

_SCALAR = {
    "STRING": "text",
    "INT64": "bigint",
    "FLOAT64": "double precision",
    "BOOL": "boolean",
    "BYTES": "bytea",
    "TIMESTAMP": "timestamptz",
    "DATE": "date",
}
# How format_type() (and information_schema) spell the types buildflow creates.
_CATALOG_NAME = {"timestamptz": "timestamp with time zone"}

# Each pooled connection of a sink has its own temporary staging table for COPY.
_STAGE = '"_buildflow_stage"'


def _psycopg() -> tuple[Any, Any]:
    """``(psycopg, psycopg_pool)``, imported on first use."""
    return (
        import_optional("psycopg", extra="postgres", needed_by="PostgresTable"),
        import_optional("psycopg_pool", extra="postgres", needed_by="PostgresTable"),
    )


def q(ident: str) -> str:
    """Quote an identifier for PostgreSQL."""
    return '"' + ident.replace('"', '""') + '"'


def pg_type(f: SchemaField) -> str:
    """The PostgreSQL type of a schema field (without NOT NULL): RECORD or REPEATED -> ``jsonb``."""
    if f.field_type == "RECORD" or f.mode == "REPEATED":
        return "jsonb"
    return _SCALAR[f.field_type]


def _column_def(f: SchemaField) -> str:
    return f"{q(f.name)} {pg_type(f)}" + (" NOT NULL" if f.mode == "REQUIRED" else "")


def create_table_sql(schema_name: str, table: str, schema: TableSchema) -> str:
    """``CREATE TABLE`` for a row schema plus buildflow's metadata columns."""
    cols = [_column_def(f) for f in schema.fields]
    cols += [f"{q(n)} {t}" for n, t in META_COLUMNS]
    cols.append('PRIMARY KEY ("_event_id", "_row_index")')
    return f"CREATE TABLE {q(schema_name)}.{q(table)} (\n  " + ",\n  ".join(cols) + "\n)"


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


@dataclasses.dataclass(frozen=True)
class _Column:
    """A column as the catalog describes it."""

    name: str
    data_type: str  # format_type() spelling, e.g. "timestamp with time zone"
    nullable: bool
    has_default: bool

    def __str__(self) -> str:
        return self.data_type + ("" if self.nullable else " NOT NULL")


def _expected(f: SchemaField) -> _Column:
    t = pg_type(f)
    return _Column(f.name, _CATALOG_NAME.get(t, t), f.mode != "REQUIRED", False)


def _declared(f: SchemaField) -> str:
    """How a declared field reads in plan: ``INT64 REQUIRED (bigint NOT NULL)``;
    RECORD/REPEATED as ``JSONB``."""
    kind = "JSONB" if pg_type(f) == "jsonb" else f.field_type
    return f"{kind} {f.mode} ({_expected(f)})"


class _Target:
    """Where a table lives: a connection string (without its password), the password,
    schema and table name. Picklable; never prints the password."""

    def __init__(
        self,
        conninfo: str,
        password: str | None,
        shown_dsn: str,
        schema_name: str,
        table: str,
        connect_timeout_s: float,
    ) -> None:
        self.conninfo = conninfo
        self._password = password
        self.shown_dsn = shown_dsn
        self.schema_name = schema_name
        self.table = table
        self.connect_timeout_s = connect_timeout_s

    def __repr__(self) -> str:
        return f"_Target({self.full_name!r}, dsn={self.shown_dsn!r})"

    @property
    def full_name(self) -> str:
        return f"{self.schema_name}.{self.table}"

    @property
    def sql_name(self) -> str:
        return f"{q(self.schema_name)}.{q(self.table)}"

    def connect_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"connect_timeout": max(1, math.ceil(self.connect_timeout_s))}
        if self._password is not None:
            kwargs["password"] = self._password
        return kwargs

    def scrub(self, text: str) -> str:
        """``text`` with the password (as is and URL-encoded) replaced by ``***``."""
        pw = self._password
        if pw:
            for form in {pw, urllib.parse.quote(pw, safe=""), urllib.parse.quote_plus(pw)}:
                text = text.replace(form, "***")
        return text

    def describe_error(self, e: BaseException) -> str:
        return self.scrub(_one_line(e))

    @contextlib.contextmanager
    def connect(self) -> Iterator[Any]:
        """A short-lived autocommit connection (plan, query)."""
        psycopg, _ = _psycopg()
        try:
            con = psycopg.connect(self.conninfo, autocommit=True, **self.connect_kwargs())
        except psycopg.Error as e:
            raise ProvisioningError(
                f"cannot connect to PostgreSQL at {self.shown_dsn}: {self.describe_error(e)}"
            ) from None
        try:
            yield con
        finally:
            con.close()

    def existing_columns(self, con: Any) -> list[_Column] | None:
        """The table's columns, or None if there is no such table.

        Read from ``pg_catalog`` (``information_schema.columns`` hides the columns of a
        table the role holds no privilege on, which would make it look absent).
        """
        rows = con.execute(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod), NOT a.attnotnull, a.atthasdef "
            "FROM pg_catalog.pg_attribute a WHERE a.attrelid = to_regclass(%s) "
            "AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            (self.sql_name,),
        ).fetchall()
        return [_Column(r[0], r[1], bool(r[2]), bool(r[3])) for r in rows] or None

    def missing_privileges(self, con: Any) -> list[str]:
        """Which of SELECT, INSERT, UPDATE (all needed by the upsert) the role lacks on the table."""
        row = con.execute(
            "SELECT has_table_privilege(to_regclass(%s), 'SELECT'), "
            "has_table_privilege(to_regclass(%s), 'INSERT'), has_table_privilege(to_regclass(%s), 'UPDATE')",
            (self.sql_name,) * 3,
        ).fetchone()
        return [p for p, ok in zip(("SELECT", "INSERT", "UPDATE"), row) if not ok]


class PostgresTableResource(Resource):
    """A PostgreSQL table created from a row schema. ``destroy`` drops the table only
    (never its schema, which may hold other tables)."""

    kind = "table"

    def __init__(self, target: _Target, schema: TableSchema, protected: bool) -> None:
        self.target = target
        self.schema = schema
        self.protected = protected
        self.name = f"{target.full_name} ({target.shown_dsn})"

    def _sql_errors(self, what: str) -> contextlib.AbstractContextManager[None]:
        return _reraise_as_provisioning(self.target, f"table {self.name}: {what}")

    def diff(self, cols: list[_Column]) -> ResourceState:
        """Compare existing columns with the declared schema's (see the module docstring)."""
        by_name = {c.name: c for c in cols}
        meta = {n for n, _ in META_COLUMNS}
        conflicts: list[str] = []
        updates: list[str] = []
        missing_meta = sorted(meta - set(by_name))
        if missing_meta:
            conflicts.append(
                f"table was not created by buildflow: missing columns {missing_meta}; "
                "drop it or choose another table name"
            )
        declared_names = set()
        for f in self.schema.fields:
            declared_names.add(f.name)
            want = _expected(f)
            have = by_name.get(f.name)
            where = f"field {f.name!r}: declared {_declared(f)}"
            if have is None:
                line = f"{where}, table has no such field"
                (updates if want.nullable else conflicts).append(line)
            elif have.data_type != want.data_type:
                conflicts.append(f"{where}, table has {have}")
            elif have.nullable != want.nullable:
                # relaxing NOT NULL is safe in place; adding it may fail on existing rows
                (updates if want.nullable else conflicts).append(f"{where}, table has {have}")
        for c in cols:
            if c.name not in declared_names and c.name not in meta and not c.nullable and not c.has_default:
                conflicts.append(
                    f"field {c.name!r}: not declared, table has {c} (without a default, inserts would fail)"
                )
        return ResourceState(True, updates=tuple(updates), conflicts=tuple(conflicts))

    def inspect(self) -> ResourceState:
        with self.target.connect() as con, self._sql_errors("inspect"):
            cols = self.target.existing_columns(con)
            missing = self.target.missing_privileges(con) if cols is not None else []
            user = con.info.user
        if cols is None:
            return ResourceState(exists=False)
        state = self.diff(cols)
        if missing:
            state = dataclasses.replace(
                state,
                conflicts=(
                    *state.conflicts,
                    f"role {user!r} lacks {', '.join(missing)} on the table; grant it, e.g. "
                    f"GRANT SELECT, INSERT, UPDATE ON {self.target.sql_name} TO {q(user)}",
                ),
            )
        return state

    def create(self) -> None:
        with self.target.connect() as con, self._sql_errors("create"), con.transaction():
            con.execute(f"CREATE SCHEMA IF NOT EXISTS {q(self.target.schema_name)}")
            con.execute(create_table_sql(self.target.schema_name, self.target.table, self.schema))

    def update(self, state: ResourceState) -> None:
        """Add missing NULLABLE/REPEATED columns, drop NOT NULL where the schema relaxed it."""
        with self.target.connect() as con, self._sql_errors("update"), con.transaction():
            cols = {c.name: c for c in self.target.existing_columns(con) or []}
            for f in self.schema.fields:
                have = cols.get(f.name)
                if have is None and f.mode != "REQUIRED":
                    con.execute(f"ALTER TABLE {self.target.sql_name} ADD COLUMN {_column_def(f)}")
                elif have is not None and f.mode != "REQUIRED" and not have.nullable:
                    con.execute(f"ALTER TABLE {self.target.sql_name} ALTER COLUMN {q(f.name)} DROP NOT NULL")

    def delete(self) -> None:
        with self.target.connect() as con, self._sql_errors("delete"):
            con.execute(f"DROP TABLE IF EXISTS {self.target.sql_name}")


@contextlib.contextmanager
def _reraise_as_provisioning(target: _Target, what: str) -> Iterator[None]:
    psycopg, _ = _psycopg()
    try:
        yield
    except psycopg.Error as e:
        raise ProvisioningError(f"{what} failed: {target.describe_error(e)}") from None


def _record_converter(schema: TableSchema) -> Callable[[OutputRecord], tuple[Any, ...]]:
    """``record -> parameters``: the row's values in column order, then ``_event_id`` and
    ``_row_index``. RECORD/REPEATED values become JSON text (bound to ``jsonb`` columns).

    Raises (from the converter):
        ValueError: a FLOAT64 NaN or infinity inside a jsonb value (JSON cannot hold it).
    """
    names = schema.field_names()
    as_json = [pg_type(f) == "jsonb" for f in schema.fields]
    dumps = json.JSONEncoder(allow_nan=False, ensure_ascii=False, separators=(",", ":")).encode

    def convert(r: OutputRecord) -> tuple[Any, ...]:
        values = r.values
        out: list[Any] = []
        for name, is_json in zip(names, as_json):
            v = values.get(name)
            if is_json and v is not None:
                try:
                    v = dumps(to_json(v))
                except ValueError:
                    raise ValueError(
                        f"field {name!r} holds a FLOAT64 NaN or infinity, which a jsonb value cannot hold"
                    ) from None
            out.append(v)
        out.append(r.event_id)
        out.append(r.row_index)
        return tuple(out)

    return convert


class PostgresSink(SinkRuntime):
    """Upserts micro-batches into one table through a connection pool (see the module docstring).

    Every database call runs on the sink's own I/O thread (:class:`BlockingWorker`), never on
    the event loop.
    """

    def __init__(self, target: _Target, schema: TableSchema, pool_min_size: int, pool_max_size: int) -> None:
        self.target = target
        self.schema = schema
        self.pool_min_size = pool_min_size
        self.pool_max_size = pool_max_size
        self._pool: Any = None
        self._io = BlockingWorker(f"postgres-{target.table}")
        self._convert = _record_converter(schema)
        cols = [*schema.field_names(), "_event_id", "_row_index"]
        col_list = ", ".join(map(q, cols))
        all_cols = f"{col_list}, {q('_written_at')}"
        updates = ", ".join(f"{q(n)} = EXCLUDED.{q(n)}" for n in [*schema.field_names(), "_written_at"])
        on_conflict = f' ON CONFLICT ("_event_id", "_row_index") DO UPDATE SET {updates}'
        # the staging table has the target's column types but no constraints (not even
        # NOT NULL), lives as long as the connection, and is emptied by every commit
        self._create_stage_sql = (
            f"CREATE TEMP TABLE IF NOT EXISTS {_STAGE} ON COMMIT DELETE ROWS AS "
            f"SELECT {col_list} FROM {target.sql_name} WITH NO DATA"
        )
        self._copy_sql = f"COPY {_STAGE} ({col_list}) FROM STDIN"
        self._merge_sql = (
            f"INSERT INTO {target.sql_name} ({all_cols}) SELECT {col_list}, now() FROM {_STAGE}{on_conflict}"
        )
        self._row_sql = (
            f"INSERT INTO {target.sql_name} ({all_cols}) VALUES ("
            + ", ".join(["%s"] * len(cols))
            + f", now()){on_conflict}"
        )

    # -- the pool, on the I/O thread ---------------------------------------------------
    def _get_pool(self) -> Any:
        if self._pool is None:
            _, psycopg_pool = _psycopg()
            pool = psycopg_pool.ConnectionPool(
                self.target.conninfo,
                kwargs=self.target.connect_kwargs(),
                min_size=self.pool_min_size,
                max_size=self.pool_max_size,
                open=False,
                check=psycopg_pool.ConnectionPool.check_connection,
                name=f"buildflow-{self.target.full_name}",
                timeout=self.target.connect_timeout_s,
                reconnect_timeout=max(60.0, self.target.connect_timeout_s),
            )
            pool.open(wait=False)
            self._pool = pool
        return self._pool

    def _close_pool(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close(timeout=self.target.connect_timeout_s)

    # -- writing, on the I/O thread ----------------------------------------------------
    def _insert(self, cur: Any, rows: Sequence[tuple[Any, ...]]) -> None:
        """``COPY`` the rows into the staging table, then upsert them all with one
        ``INSERT ... SELECT ... ON CONFLICT DO UPDATE``: for 1000 rows this measured ~15%
        faster than ``executemany`` (pipelined) and ~2.5x faster than multi-row ``VALUES``.
        The staging table is made on the connection's first write (a no-op afterwards)."""
        cur.execute(self._create_stage_sql)
        with cur.copy(self._copy_sql) as copy:
            for row in rows:
                copy.write_row(row)
        cur.execute(self._merge_sql)

    def _write(self, records: Sequence[OutputRecord]) -> list[RowRejection] | None:
        psycopg, _ = _psycopg()
        rejected: list[RowRejection] = []
        # Last occurrence of a key wins: one INSERT ... ON CONFLICT DO UPDATE may not touch
        # a row twice, and the later row is the newer value.
        latest: dict[tuple[str, int], tuple[int, tuple[Any, ...]]] = {}
        for i, r in enumerate(records):
            try:
                latest[(r.event_id, r.row_index)] = (i, self._convert(r))
            except ValueError as e:
                rejected.append(RowRejection(i, str(e)))
        items = list(latest.values())
        if not items:
            return rejected or None
        try:
            with self._get_pool().connection() as conn:
                try:
                    with conn.transaction(), conn.cursor() as cur:
                        self._insert(cur, [p for _, p in items])
                except (psycopg.DataError, psycopg.IntegrityError):
                    rejected += self._write_row_by_row(conn, items)
        except (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn) as e:
            raise TransientSinkError(
                f"table {self.target.full_name} at {self.target.shown_dsn} is missing or lacks a "
                f"column ({self.target.describe_error(e)}); run `buildflow plan <app>` to create it"
            ) from None
        except (psycopg.OperationalError, psycopg.InterfaceError) as e:  # incl. PoolTimeout
            # Server down or restarted, network, timeout waiting for a connection: start
            # over with a fresh pool next time (see the module docstring).
            with contextlib.suppress(Exception):
                self._close_pool()
            raise TransientSinkError(
                f"PostgreSQL at {self.target.shown_dsn} is unavailable: {self.target.describe_error(e)}"
            ) from None
        except psycopg.Error as e:
            raise TransientSinkError(
                f"writing to {self.target.full_name} at {self.target.shown_dsn} failed: "
                f"{self.target.describe_error(e)}"
            ) from None
        rejected.sort(key=lambda r: r.index)
        return rejected or None

    def _write_row_by_row(self, conn: Any, items: list[tuple[int, tuple[Any, ...]]]) -> list[RowRejection]:
        """Insert each row under its own savepoint, in one transaction; return those refused."""
        psycopg, _ = _psycopg()
        rejected: list[RowRejection] = []
        sql = self._row_sql
        with conn.transaction(), conn.cursor() as cur:
            for i, params in items:
                try:
                    with conn.transaction():  # a savepoint
                        cur.execute(sql, params)
                except (psycopg.DataError, psycopg.IntegrityError) as e:
                    rejected.append(
                        RowRejection(i, f"PostgreSQL refused the row: {self.target.describe_error(e)}")
                    )
        if rejected:
            log.info(
                "%s: %d of %d rows refused by PostgreSQL, the others written",
                self.target.full_name,
                len(rejected),
                len(items),
            )
        return rejected

    async def write(self, records: Sequence[OutputRecord]) -> Sequence[RowRejection] | None:
        recs = list(records)
        return await self._io.run(lambda: self._write(recs))

    async def close(self) -> None:
        try:
            await self._io.run(self._close_pool)
        finally:
            self._io.stop()


class PostgresTableProvider(SinkProvider):
    """Binds :class:`PostgresTable` to its database (the same in every environment)."""

    concurrent_writers = True
    sql_dialect = "postgres"

    declaration: PostgresTable

    def resolved_dsn(self) -> str:
        """The DSN, read from the environment variable for ``dsn="env:NAME"``.

        Raises:
            ConfigurationError: the variable is not set or empty.
        """
        dsn = self.declaration.dsn
        if not dsn.startswith(ENV_PREFIX):
            return dsn
        name = dsn[len(ENV_PREFIX) :]
        value = os.environ.get(name, "")
        if not value.strip():
            raise ConfigurationError(
                f"{self.declaration.describe()}: environment variable {name} is not set (or empty); "
                "set it to a libpq connection string such as "
                "'postgresql://user:password@host:5432/dbname'."
            )
        return value

    def target(self) -> _Target:
        """Parse the DSN; the password is kept apart from the connection string.

        Raises:
            ConfigurationError: the DSN (or the variable it names) is not a valid libpq
                connection string; the message shows it with the password masked.
            MissingDependencyError: psycopg is not installed (the ``postgres`` extra).
        """
        psycopg, _ = _psycopg()
        from psycopg.conninfo import conninfo_to_dict, make_conninfo

        decl = self.declaration
        dsn = self.resolved_dsn()
        shown = f"{mask_dsn(dsn)} (from {decl.dsn})" if decl.dsn.startswith(ENV_PREFIX) else decl.masked_dsn
        try:
            params = conninfo_to_dict(dsn)
        except psycopg.Error as e:
            scrubbed = _scrub_parse_error(str(e), dsn)
            raise ConfigurationError(
                f"{decl.describe()}: invalid DSN {mask_dsn(dsn)!r}: {scrubbed}. Expected "
                "'postgresql://user:password@host:5432/dbname' or 'host=... dbname=... user=...'."
            ) from None
        password = params.pop("password", None)
        return _Target(
            make_conninfo("", **params),
            None if password is None else str(password),
            shown,
            decl.schema_name,
            decl.table_name,
            decl.connect_timeout_s,
        )

    def resources(self, schema: TableSchema) -> list[Resource]:
        return [PostgresTableResource(self.target(), schema, self.declaration.destroy_protection)]

    def open(self, schema: TableSchema) -> SinkRuntime:
        """Check that the table matches ``schema``, then return a sink (the pool opens on
        its first write).

        Raises:
            ResourceMissingError: the table does not exist (``plan`` was not applied).
            ProvisioningError: the server cannot be reached, or the table does not match.
        """
        target = self.target()
        require_ready(
            PostgresTableResource(target, schema, False),
            f"table {target.full_name}",
            f" at {target.shown_dsn}",
        )
        decl = self.declaration
        return PostgresSink(target, schema, decl.pool_min_size, decl.pool_max_size)

    def query(self, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Run ``sql`` on a fresh connection: (column names, rows). ``jsonb`` comes back
        as Python lists/dicts, ``timestamptz`` as aware datetimes.

        Raises:
            ProvisioningError: the server cannot be reached, or the query failed.
        """
        target = self.target()
        with target.connect() as con, _reraise_as_provisioning(target, "query"):
            cur = con.execute(sql)
            cols = [d.name for d in cur.description or []]
            return cols, [tuple(r) for r in cur.fetchall()] if cur.description else []


def _scrub_parse_error(message: str, dsn: str) -> str:
    """libpq's complaint about a DSN it cannot parse, without any part of the password:
    libpq quotes the fragments it echoes, so a quoted fragment of ``dsn`` that masking
    removes is replaced by ``***``."""
    masked = mask_dsn(dsn)

    def hide(m: re.Match[str]) -> str:
        fragment = m.group(1)
        return '"***"' if fragment and fragment in dsn and fragment not in masked else m.group(0)

    return re.sub(r'"([^"]*)"', hide, " ".join(message.split()))
