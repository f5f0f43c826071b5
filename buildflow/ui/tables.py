"""Reading a processor's results and dead letters through its sink's ``query()``.

The UI asks the sink provider (:meth:`buildflow.io.base.SinkProvider.query`) the way
``buildflow query`` does, in the sink's own SQL dialect. The queries run in a helper
process, as ``buildflow query`` from another terminal would: DuckDB lets one process open
a database file in one mode only, and the runtime's sink opens the warehouse read-write
for each micro-batch, so a read-only connection from the ``run`` process itself would
collide with it. Across processes the sink's lock-wait applies instead.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import datetime
import decimal
import multiprocessing
from collections.abc import Mapping, Sequence
from typing import Any

from buildflow.io.base import DeadLetterRow, SinkProvider
from buildflow.schema import SchemaField, TableSchema

__all__ = [
    "TableRef",
    "table_ref",
    "QueryRunner",
    "RowView",
    "jsonable",
    "latest_rows_sql",
    "dead_letters_sql",
    "DEAD_LETTER_COLUMNS",
]

DEAD_LETTER_COLUMNS = tuple(f.name for f in dataclasses.fields(DeadLetterRow))


def jsonable(v: Any) -> Any:
    """``v`` as JSON-able data: timestamps as ISO 8601 strings, bytes as ``<n bytes>``,
    decimals as floats, structs and arrays recursively."""
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, (bytes, bytearray, memoryview)):
        return f"<{len(v)} bytes>"
    if isinstance(v, Mapping):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if isinstance(v, decimal.Decimal):
        return float(v)
    if isinstance(v, (datetime.datetime, datetime.date, datetime.time)):
        return v.isoformat()
    return str(v)


@dataclasses.dataclass(frozen=True)
class TableRef:
    """How a sink's SQL names its table, and which column orders rows newest first.

    Attributes:
        sql_name: The table as the sink's SQL writes it (``"ds"."t"`` in DuckDB and
            PostgreSQL, ```p.ds.t``` in BigQuery).
        order_by: A column that grows with time (``_written_at`` where the sink adds it,
            else the schema's last TIMESTAMP column), or None to take rows in any order.
    """

    sql_name: str
    order_by: str | None


def _dq(ident: str) -> str:
    return '"' + ident.replace('"', '""') + '"'


def _last_timestamp(schema: TableSchema | None) -> str | None:
    names = [f.name for f in (schema.fields if schema else ()) if f.field_type == "TIMESTAMP"]
    return names[-1] if names else None


def table_ref(provider: SinkProvider, schema: TableSchema | None) -> TableRef | None:
    """The :class:`TableRef` of a SQL sink; None for sinks without SQL (Kafka, in-memory).

    ``schema`` is the row schema written there (None for a dead-letter table, which is
    ordered by ``failed_at``).
    """
    from buildflow.io.google.bigquery import BigQueryTableProvider
    from buildflow.io.local.duckdb_sink import DuckDBTableProvider
    from buildflow.io.postgres.provider import PostgresTableProvider

    newest = "failed_at" if schema is None else None
    if isinstance(provider, DuckDBTableProvider):
        t = provider.target()
        return TableRef(f"{_dq(t.schema_name)}.{_dq(t.table)}", newest or "_written_at")
    if isinstance(provider, PostgresTableProvider):
        pg = provider.declaration
        return TableRef(f"{_dq(pg.schema_name)}.{_dq(pg.table_name)}", newest or "_written_at")
    if isinstance(provider, BigQueryTableProvider):
        bq = provider.declaration
        name = f"`{provider.project}.{bq.dataset_id}.{bq.table_name}`"
        return TableRef(name, newest or _last_timestamp(schema))
    return None


def _sql_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def latest_rows_sql(ref: TableRef, limit: int) -> str:
    """``SELECT *`` of the ``limit`` newest rows (valid in DuckDB, BigQuery, PostgreSQL)."""
    order = f" ORDER BY {ref.order_by} DESC" if ref.order_by else ""
    return f"SELECT * FROM {ref.sql_name}{order} LIMIT {int(limit)}"


def dead_letters_sql(ref: TableRef, processor: str, limit: int) -> str:
    """The ``limit`` newest dead letters of ``processor`` (the table may be shared)."""
    cols = ", ".join(DEAD_LETTER_COLUMNS)
    order = f" ORDER BY {ref.order_by} DESC" if ref.order_by else ""
    return (
        f"SELECT {cols} FROM {ref.sql_name} WHERE processor = {_sql_string(processor)}"
        f"{order} LIMIT {int(limit)}"
    )


def _query(provider: SinkProvider, sql: str) -> list[dict[str, Any]]:
    """Runs in the helper process: the rows of ``sql`` as JSON-able dicts."""
    cols, rows = provider.query(sql)
    return [dict(zip(cols, (jsonable(v) for v in r))) for r in rows]


class QueryRunner:
    """Runs sink queries one at a time in a helper process (started on first use, by
    ``spawn``: a clean interpreter that never imports the app or its model)."""

    def __init__(self) -> None:
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None

    async def query(self, provider: SinkProvider, sql: str) -> list[dict[str, Any]]:
        """The rows of ``sql`` as dicts of JSON-able values.

        Raises:
            NotImplementedError: the sink cannot run SQL.
            Exception: whatever the sink's ``query`` raised (e.g. a missing table).
        """
        if self._pool is None:
            self._pool = concurrent.futures.ProcessPoolExecutor(
                max_workers=1, mp_context=multiprocessing.get_context("spawn")
            )
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, _query, provider, sql)
        except concurrent.futures.process.BrokenProcessPool:
            self._pool = None  # the helper died (e.g. killed): start a new one next time
            raise

    def close(self) -> None:
        """Stop the helper process."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def _parse_time(v: Any) -> datetime.datetime | None:
    if not isinstance(v, str):
        return None
    try:
        t = datetime.datetime.fromisoformat(v.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=datetime.UTC)


_NAME_FIELDS = ("image_name", "name", "object_name", "image_id", "file_name", "path")
_UPLOAD_FIELDS = ("upload", "uploaded_at", "event_time", "publish_time", "timestamp")
_WRITTEN_FIELDS = ("_written_at", "processed_at", "written_at")
_CONFIDENCE_NAMES = ("confidence", "score", "probability")


def _is_label_record(f: SchemaField) -> bool:
    sub = {s.name for s in f.fields}
    return f.field_type == "RECORD" and "label" in sub and bool(sub & set(_CONFIDENCE_NAMES))


class RowView:
    """Turns result rows into gallery cards, guided by the row schema.

    A card is ``{"key", "event_id", "name", "labels": [{"label", "confidence"}],
    "uploaded_at", "written_at", "latency_ms", "fields": {column: value}}``:

    * ``name``: the first of the columns image_name, name, object_name, image_id,
      file_name, path (the thumbnail is looked up by it);
    * ``labels``: the first REPEATED RECORD column with ``label`` and ``confidence``
      (or ``score``/``probability``) sub-fields, in stored (most likely first) order; else
      the scalar ``label`` and ``confidence`` columns;
    * ``latency_ms``: upload to row: the row's write time (``_written_at`` where the sink
      adds it, else ``processed_at``) minus its upload time (``upload``, ``event_time``...);
    * ``fields``: the other scalar columns, e.g. ``model`` or a ground-truth label.
    """

    def __init__(self, schema: TableSchema) -> None:
        names = {f.name: f for f in schema.fields}
        self.name_field = next((n for n in _NAME_FIELDS if n in names), None)
        self.labels_field = next(
            (f.name for f in schema.fields if f.mode == "REPEATED" and _is_label_record(f)), None
        )
        self.confidence_field = next((n for n in _CONFIDENCE_NAMES if n in names), None)
        self.upload_field = next(
            (n for n in _UPLOAD_FIELDS if n in names and names[n].field_type == "TIMESTAMP"), None
        )
        used = {self.name_field, self.labels_field, self.upload_field, "event_id", "label"}
        used.add(self.confidence_field)
        self.extra_fields = [
            f.name
            for f in schema.fields
            if f.name not in used and f.mode != "REPEATED" and f.field_type not in ("RECORD", "BYTES")
        ]

    def _labels(self, row: Mapping[str, Any]) -> list[dict[str, Any]]:
        if self.labels_field is not None:
            out = []
            for c in row.get(self.labels_field) or []:
                if isinstance(c, Mapping):
                    conf = next((c[k] for k in _CONFIDENCE_NAMES if k in c), None)
                    out.append({"label": c.get("label"), "confidence": conf})
            return out
        if "label" in row:
            conf = row.get(self.confidence_field) if self.confidence_field else None
            return [{"label": row["label"], "confidence": conf}]
        return []

    def card(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """One card from one row (a dict of JSON-able values, as :class:`QueryRunner` gives)."""
        event_id = row.get("_event_id") or row.get("event_id")
        uploaded = _parse_time(row.get(self.upload_field)) if self.upload_field else None
        written = next((t for t in (_parse_time(row.get(k)) for k in _WRITTEN_FIELDS) if t), None)
        latency = (written - uploaded).total_seconds() * 1000 if uploaded and written else None
        return {
            "key": f"{event_id}/{row.get('_row_index', 0)}",
            "event_id": event_id,
            "name": row.get(self.name_field) if self.name_field else None,
            "labels": self._labels(row),
            "uploaded_at": uploaded.isoformat() if uploaded else None,
            "written_at": written.isoformat() if written else None,
            "latency_ms": round(latency, 1) if latency is not None else None,
            "fields": {k: row.get(k) for k in self.extra_fields[:8]},
        }

    def cards(self, rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        return [self.card(r) for r in rows]
