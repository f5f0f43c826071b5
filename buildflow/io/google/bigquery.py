"""``BigQueryTable`` on BigQuery (``gcp``) or the local BigQuery emulator (``emulator``).

Tables
------
``plan`` manages the dataset and the table: the row dataclass's columns plus two that
buildflow adds, ``_event_id STRING`` and ``_row_index INT64`` (NULLABLE, so that a table
created before they existed gets them as an in-place update). Together they are the
row's idempotency key. A schema that BigQuery can change in place (a new
NULLABLE/REPEATED column, REQUIRED relaxed to NULLABLE) is an update, anything else a
conflict reported by ``plan``, never a failed insert; ``run`` refuses a table that lacks
the key columns.

Writes: ``write_mode="merge"`` (default): exactly-once
------------------------------------------------------
Each micro-batch is ONE DML statement (a query job)::

    MERGE `p.d.t` AS T USING UNNEST(@rows) AS S
    ON T._event_id = S._event_id AND T._row_index = S._row_index
    WHEN NOT MATCHED THEN INSERT (<columns>) VALUES (S.<columns>)

``@rows`` is an ``ARRAY<STRUCT<...>>`` query parameter built with the client's
``ArrayQueryParameter``/``StructQueryParameter`` (see :func:`parameter_type` and
:func:`row_parameter`). A DML statement is atomic: it commits all of its rows or none.
So a batch that is written again, because its events were redelivered after a crash, a
``kill -9``, a lost ack or a redeploy, inserts nothing new, however long after the first
write it comes: the de-duplication is against the table itself, not against a cache.
Within one batch, the last row of a key wins. Two encodings keep every type
round-tripping identically on BigQuery and the emulator: BYTES travel as base64 STRING
parameters decoded with ``FROM_BASE64`` (the emulator stores a BYTES parameter's base64
text undecoded), and a NULLABLE RECORD as an array of zero or one struct (a STRUCT query
parameter cannot be NULL). Those conversions run in the ``USING`` subquery, since
BigQuery does not allow correlated subqueries in a ``MERGE``'s ``INSERT`` clause.

Why MERGE, of the three mechanisms BigQuery offers:

* **insertId** (legacy streaming, ``tabledata.insertAll``): de-duplication is best effort
  and only over a short window, about a minute ("Streaming data into BigQuery",
  best-effort de-duplication). A redelivery after a crash usually comes later than that
  (after the ack deadline, after a restart), and then the row is duplicated. The emulator
  does not de-duplicate insertIds at all.
* **Storage Write API with offsets** ("Introduction to the BigQuery Storage Write API",
  exactly-once delivery in application-created streams): a write at an offset that was
  already written is refused, but only within the same stream. A restarted runner opens
  a new stream, where the redelivered event's rows land again, unless the
  (stream, offset) of every event were persisted transactionally with the source's
  acks: that needs a state store this runtime does not have, and the emulator has no
  such API.
* **MERGE on the key** (chosen): idempotent across process restarts and redeliveries at
  any distance in time, with no state outside the table. Its costs: a query job per
  batch, about 1-2 s of latency on BigQuery (against ~100 ms for insertAll), the bytes
  of the key columns scanned (and billed) per statement, and BigQuery's limits on DML
  ("Quotas and limits", "Data manipulation language statements"; "Transform data with
  data manipulation language (DML)", "UPDATE, DELETE, MERGE DML concurrency"): per table,
  2 mutating statements run at a time, 20 more may queue (beyond that they fail), and at
  most 25 DML statements run every 10 seconds. A sink writes one batch at a time, so one
  runner stays under those limits, but its throughput is about
  ``max_batch_size / 1.5 s`` rows per second on BigQuery: raise ``max_batch_size`` (a
  MERGE carries up to :data:`MAX_PAYLOAD_BYTES`) or pick ``insert_id`` for more. Load
  jobs are not used: 1,500 load jobs per table per day ("Quotas and limits", "Load jobs")
  would not last a day of micro-batches. The one gap left: two runners writing the same
  event at the same moment (not a redelivery after a failure) could both find it missing.

``@rows`` is split into several MERGEs when its JSON would exceed
:data:`MAX_PAYLOAD_BYTES` (2 MB): BigQuery's "Quotas and limits" page, "Query jobs",
caps a request at 10 MB "including additional properties like query parameters".

Errors: a request, network, 5xx, 403 (quota, rate limit), 404 (table gone) or a timeout
raises :class:`~buildflow.errors.TransientSinkError` (the runtime retries the batch, the
events stay unacked); so do 400s that BigQuery gives for load (a concurrent update, too
many DML statements queued). Any other 400 for the whole statement is taken to be caused
by a row only when the table still matches the declared schema and can be read with
every column (else it is transient: run ``plan``): the batch is then bisected (halves
written separately, recursively), so every good row lands and each bad row comes back as
a :class:`~buildflow.io.base.RowRejection` with BigQuery's reason (its event is
dead-lettered). Client calls use a bounded retry (:data:`REQUEST_RETRY_S`) and timeouts:
the client would otherwise retry a 5xx for minutes (the emulator answers 500 to an
invalid TIMESTAMP in ``insertAll``).

``write_mode="insert_id"``: best effort, lowest latency
-------------------------------------------------------
Rows are streamed with ``insertAll`` (``insert_rows_json``) with the insertId
``<event_id>/<row_index>`` (hashed when longer than 128 characters), carrying
``_event_id`` and ``_row_index`` too, so duplicates can be removed at query time. Pick it
when seconds of latency matter more than a duplicate row after a crash, or when a DML
job per batch would hit the DML limits above. Per-row ``insertErrors`` are permanent:
those events are dead-lettered, and the batch's valid rows, which BigQuery then did not
insert either (reason ``stopped``), are sent again.
"""

from __future__ import annotations

import base64
import concurrent.futures
import dataclasses
import hashlib
import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from buildflow.environment import Environment
from buildflow.errors import (
    ProvisioningError,
    QueryError,
    ResourceGoneError,
    SchemaError,
    TransientSinkError,
)
from buildflow.io.base import OutputRecord, RowRejection, SinkProvider, SinkRuntime
from buildflow.io.google.clients import bigquery_client, cloud_error_line, resolve_project
from buildflow.io.google.declarations import BigQueryTable, BigQueryWriteMode
from buildflow.provisioning import Resource, ResourceState, label_keep_reasons, require_ready
from buildflow.runtime.threads import BlockingWorker
from buildflow.schema import SchemaField, TableSchema, diff_schemas, to_json

__all__ = [
    "BigQueryTableProvider",
    "META_FIELDS",
    "MAX_PAYLOAD_BYTES",
    "merge_sql",
    "parameter_type",
    "row_parameter",
    "table_schema",
    "to_json",
    "insert_id",
]

log = logging.getLogger("buildflow.io.bigquery")

META_FIELDS: tuple[SchemaField, ...] = (
    SchemaField(
        "_event_id", "STRING", "NULLABLE", description="buildflow: id of the source event (row key, 1/2)"
    ),
    SchemaField(
        "_row_index", "INT64", "NULLABLE", description="buildflow: row of the event, from 0 (row key, 2/2)"
    ),
)
"""The columns buildflow adds to every BigQuery table: the row's idempotency key."""

MAX_PAYLOAD_BYTES = 2_000_000
"""Largest ``@rows`` parameter (JSON bytes) of one MERGE; BigQuery allows a 10 MB request."""

REQUEST_RETRY_S = 20.0
"""How long the client retries one API call (5xx, connection errors) before giving up."""

REQUEST_TIMEOUT_S = 30.0
JOB_TIMEOUT_S = 120.0

# 400s that are not caused by a row (BigQuery error reasons and messages).
_TRANSIENT_REASONS = frozenset(
    {"backendError", "internalError", "rateLimitExceeded", "quotaExceeded", "jobRateLimitExceeded"}
)
_TRANSIENT_MESSAGES = ("could not serialize access", "too many dml statements", "exceeded rate limits")


def insert_id(record: OutputRecord) -> str:
    """``<event_id>/<row_index>``, or its SHA-256 when over BigQuery's 128-character limit."""
    raw = f"{record.event_id}/{record.row_index}"
    return raw if len(raw) <= 128 else hashlib.sha256(raw.encode()).hexdigest()


def table_schema(row_schema: TableSchema) -> TableSchema:
    """The BigQuery table's schema: the row's columns, then :data:`META_FIELDS`.

    Raises:
        SchemaError: the row already has a column named like one of them.
    """
    names = {f.name.lower() for f in row_schema.fields}
    clash = [m.name for m in META_FIELDS if m.name.lower() in names]
    if clash:
        raise SchemaError(
            f"the row has a column named {clash[0]!r}, which buildflow adds to every BigQuery "
            "table (the row key); rename the field."
        )
    return TableSchema(row_schema.fields + META_FIELDS, row_type=row_schema.row_type)


# --- query parameters ----------------------------------------------------------------


def _bq() -> Any:
    """``google.cloud.bigquery`` (imported on first use; typed loosely: parts are untyped).

    Raises:
        MissingDependencyError: not installed; the message says to install ``buildflow[gcp]``.
    """
    from buildflow.extras import import_optional

    return import_optional("google.cloud.bigquery", extra="gcp", needed_by="BigQueryTable")


def _param_scalar_type(f: SchemaField) -> str:
    return "STRING" if f.field_type == "BYTES" else f.field_type


def _struct_type(f: SchemaField, name: str | None = None) -> Any:
    return _bq().StructQueryParameterType(*(parameter_type(c) for c in f.fields), name=name)


def parameter_type(f: SchemaField) -> Any:
    """The query parameter type that carries the values of the column ``f``.

    ``ScalarQueryParameterType`` for a scalar (BYTES as a base64 STRING),
    ``StructQueryParameterType`` for a REQUIRED RECORD, and ``ArrayQueryParameterType``
    for a REPEATED field and for a NULLABLE RECORD (zero or one struct: a struct parameter
    cannot be NULL). :func:`merge_sql` turns these back into the column's type.
    """
    bq = _bq()
    if f.field_type == "RECORD":
        if f.mode == "REQUIRED":
            return _struct_type(f, f.name)
        return bq.ArrayQueryParameterType(_struct_type(f), name=f.name)
    if f.mode == "REPEATED":
        return bq.ArrayQueryParameterType(bq.ScalarQueryParameterType(_param_scalar_type(f)), name=f.name)
    return bq.ScalarQueryParameterType(_param_scalar_type(f), name=f.name)


def _scalar_value(f: SchemaField, value: Any) -> Any:
    if f.field_type == "BYTES" and value is not None:
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise TypeError(f"{f.name}: expected bytes, got {type(value).__name__}")
        return base64.b64encode(bytes(value)).decode("ascii")
    return value


def _struct_value(f: SchemaField, value: Any, name: str | None = None) -> Any:
    from google.cloud.bigquery import StructQueryParameter

    if not isinstance(value, Mapping):
        raise TypeError(f"{f.name}: expected a RECORD (mapping), got {type(value).__name__}")
    return StructQueryParameter(name, *(_field_value(c, value.get(c.name)) for c in f.fields))


def _field_value(f: SchemaField, value: Any) -> Any:
    from google.cloud.bigquery import ArrayQueryParameter, ScalarQueryParameter

    if f.field_type == "RECORD":
        if f.mode == "REQUIRED":
            return _struct_value(f, value, f.name)
        items = [] if value is None else (value if f.mode == "REPEATED" else [value])
        return ArrayQueryParameter(f.name, _struct_type(f), [_struct_value(f, v) for v in items])
    if f.mode == "REPEATED":
        return ArrayQueryParameter(f.name, _param_scalar_type(f), [_scalar_value(f, v) for v in value or ()])
    return ScalarQueryParameter(f.name, _param_scalar_type(f), _scalar_value(f, value))


def row_parameter(schema: TableSchema, values: Mapping[str, Any]) -> Any:
    """One row as a ``StructQueryParameter`` (an element of ``@rows``), in ``schema`` order.

    ``values`` is a row as :func:`buildflow.schema.row_to_record` gives it (plus the key
    columns when ``schema`` is a :func:`table_schema`); a missing key is NULL.

    Raises:
        TypeError: a RECORD is not a mapping or a BYTES value is not bytes.
    """
    from google.cloud.bigquery import StructQueryParameter

    return StructQueryParameter(None, *(_field_value(f, values.get(f.name)) for f in schema.fields))


def _payload_size(param: Any) -> int:
    return len(json.dumps(param.to_api_repr()["parameterValue"], default=str))


# --- the MERGE statement -------------------------------------------------------------


def _q(name: str) -> str:
    return f"`{name}`"  # column names are [A-Za-z_][A-Za-z0-9_]*: nothing to escape


def _needs_conversion(f: SchemaField) -> bool:
    if f.field_type == "BYTES":
        return True
    if f.field_type == "RECORD":
        return f.mode == "NULLABLE" or any(_needs_conversion(c) for c in f.fields)
    return False


def _value_sql(f: SchemaField, ref: str, depth: int) -> str:
    """SQL that turns the parameter value at ``ref`` (see :func:`parameter_type`) back into
    a value of the column ``f``; arrays keep their order (``WITH OFFSET``)."""
    if not _needs_conversion(f):
        return ref
    v, o = f"_v{depth}", f"_o{depth}"
    if f.field_type == "BYTES":
        if f.mode == "REPEATED":
            return f"ARRAY(SELECT FROM_BASE64({v}) FROM UNNEST({ref}) AS {v} WITH OFFSET AS {o} ORDER BY {o})"
        return f"FROM_BASE64({ref})"
    if f.mode == "REQUIRED":
        return f"STRUCT({_fields_sql(f, ref, depth)})"
    parts = _fields_sql(f, v, depth)
    if f.mode == "REPEATED":
        return f"ARRAY(SELECT AS STRUCT {parts} FROM UNNEST({ref}) AS {v} WITH OFFSET AS {o} ORDER BY {o})"
    return f"(SELECT AS STRUCT {parts} FROM UNNEST({ref}) AS {v})"  # NULLABLE: 0 or 1 struct


def _fields_sql(f: SchemaField, base: str, depth: int) -> str:
    return ", ".join(f"{_value_sql(c, f'{base}.{_q(c.name)}', depth + 1)} AS {_q(c.name)}" for c in f.fields)


def merge_sql(table_id: str, schema: TableSchema) -> str:
    """The MERGE that inserts the rows of ``@rows`` whose ``(_event_id, _row_index)`` the
    table does not hold yet. ``schema`` is the table's (:func:`table_schema`)."""
    cols = [f.name for f in schema.fields]
    if any(_needs_conversion(f) for f in schema.fields):
        exprs = ", ".join(f"{_value_sql(f, 'S.' + _q(f.name), 0)} AS {_q(f.name)}" for f in schema.fields)
        source = f"(SELECT {exprs} FROM UNNEST(@rows) AS S)"
    else:
        source = "UNNEST(@rows)"
    return (
        f"MERGE `{table_id}` AS T USING {source} AS S "
        "ON T.`_event_id` = S.`_event_id` AND T.`_row_index` = S.`_row_index` "
        f"WHEN NOT MATCHED THEN INSERT ({', '.join(map(_q, cols))}) "
        f"VALUES ({', '.join('S.' + _q(c) for c in cols)})"
    )


# --- resources -----------------------------------------------------------------------


class BigQueryDatasetResource(Resource):
    """A dataset. ``destroy`` deletes it only when empty: other tables are never dropped."""

    kind = "dataset"

    def __init__(
        self, env: Environment, project: str, dataset: str, protected: bool, location: str | None = None
    ) -> None:
        self.env = env
        self.project = project
        self.dataset = dataset
        self.protected = protected
        self.location = location
        self.name = f"{project}.{dataset}"

    def inspect(self) -> ResourceState:
        try:
            bigquery_client(self.env, self.project).get_dataset(self.name)
        except Exception as e:
            if type(e).__name__ == "NotFound":
                return ResourceState(exists=False)
            raise cloud_error_line(f"dataset {self.name}", e) from e
        return ResourceState(exists=True)

    def create(self) -> None:
        from google.cloud import bigquery

        dataset = bigquery.Dataset(self.name)
        dataset.labels = self.labels()
        if self.location:
            dataset.location = self.location
        try:
            bigquery_client(self.env, self.project).create_dataset(dataset, exists_ok=True)
        except Exception as e:
            raise cloud_error_line(f"dataset {self.name}: create", e) from e

    def keep_reasons(self, deleting: frozenset[tuple[str, str]]) -> list[str]:
        return label_keep_reasons(
            bigquery_client(self.env, self.project).get_dataset(self.name).labels, self.app
        )

    def delete(self) -> None:
        client = bigquery_client(self.env, self.project)
        try:
            if list(client.list_tables(self.name, max_results=1)):
                return  # holds tables this app does not manage: keep it
            client.delete_dataset(self.name, not_found_ok=True)
        except Exception as e:
            raise cloud_error_line(f"dataset {self.name}: delete", e) from e


def _ddl_type(f: SchemaField) -> str:
    """The GoogleSQL type of a column, as DDL writes it (``ARRAY<STRUCT<a STRING>>``)."""
    if f.field_type == "RECORD":
        base = "STRUCT<" + ", ".join(f"{_q(c.name)} {_ddl_type(c)}" for c in f.fields) + ">"
    else:
        base = f.field_type
    return f"ARRAY<{base}>" if f.mode == "REPEATED" else base


def _merged_fields(declared: Sequence[Mapping[str, Any]], existing: Sequence[Mapping[str, Any]]) -> list[Any]:
    """The table's fields with the compatible updates made: declared fields it lacks are
    appended (also inside RECORDs) and REQUIRED is relaxed where declared NULLABLE. Fields
    it has that are not declared are kept (BigQuery cannot drop a column in place)."""
    by_name = {d["name"].lower(): d for d in declared}
    out: list[Any] = []
    seen: set[str] = set()
    for e in existing:
        field = dict(e)
        d = by_name.get(str(e["name"]).lower())
        if d is not None:
            seen.add(str(e["name"]).lower())
            if str(e.get("mode") or "NULLABLE").upper() == "REQUIRED" and d["mode"] == "NULLABLE":
                field["mode"] = "NULLABLE"
            if d.get("fields") and e.get("fields"):
                field["fields"] = _merged_fields(d["fields"], e["fields"])
        out.append(field)
    out += [dict(d) for d in declared if d["name"].lower() not in seen]
    return out


class BigQueryTableResource(Resource):
    """A table whose schema is the row dataclass's, plus :data:`META_FIELDS`."""

    kind = "table"

    def __init__(
        self, env: Environment, project: str, table_id: str, schema: TableSchema, protected: bool
    ) -> None:
        self.env = env
        self.project = project
        self.name = table_id
        self.row_schema = schema
        self.schema = table_schema(schema)
        self.protected = protected

    def _client(self) -> Any:
        return bigquery_client(self.env, self.project)

    def _existing(self) -> Any:
        try:
            return self._client().get_table(self.name)
        except Exception as e:
            if type(e).__name__ == "NotFound":
                return None
            raise cloud_error_line(f"table {self.name}", e) from e

    def inspect(self) -> ResourceState:
        table = self._existing()
        if table is None:
            return ResourceState(exists=False)
        existing = TableSchema.from_api_repr([f.to_api_repr() for f in table.schema])
        updates: list[str] = []
        conflicts: list[str] = []
        for d in diff_schemas(self.schema, existing):
            if d.kind == "extra_in_existing" and d.existing and "REQUIRED" not in d.existing:
                continue  # an extra NULLABLE column does not stop inserts
            (updates if d.is_compatible_update() else conflicts).append(str(d))
        return ResourceState(True, updates=tuple(updates), conflicts=tuple(conflicts))

    def create(self) -> None:
        from google.cloud import bigquery

        fields = [bigquery.SchemaField.from_api_repr(f) for f in self.schema.to_api_repr()]
        table = bigquery.Table(self.name, schema=fields)
        table.labels = self.labels()
        try:
            self._client().create_table(table)
        except Exception as e:
            raise cloud_error_line(f"table {self.name}: create", e) from e

    def update(self, state: ResourceState) -> None:
        """Add the missing NULLABLE/REPEATED columns (e.g. ``_event_id``/``_row_index`` to a
        table made before they existed) and relax REQUIRED ones, keeping every other column.

        In ``emulator``, new top-level columns are also added with ``ALTER TABLE ... ADD
        COLUMN IF NOT EXISTS``: bqemulator's ``tables.update`` changes only the table's
        metadata, and its DDL only the data (columns added inside a RECORD stay
        metadata-only there)."""
        from google.cloud import bigquery

        table = self._existing()
        if self.env.name == "emulator":
            have = {f.name.lower() for f in table.schema}
            for f in self.schema.fields:
                if f.name.lower() not in have and f.mode != "REQUIRED":
                    ddl = f"ALTER TABLE `{self.name}` ADD COLUMN IF NOT EXISTS {_q(f.name)} {_ddl_type(f)}"
                    try:
                        self._client().query(ddl).result(timeout=JOB_TIMEOUT_S)
                    except Exception as e:
                        raise cloud_error_line(f"table {self.name}: update", e) from e
        merged = _merged_fields(self.schema.to_api_repr(), [f.to_api_repr() for f in table.schema])
        table.schema = [bigquery.SchemaField.from_api_repr(f) for f in merged]
        try:
            self._client().update_table(table, ["schema"])
        except Exception as e:
            raise cloud_error_line(f"table {self.name}: update", e) from e

    def keep_reasons(self, deleting: frozenset[tuple[str, str]]) -> list[str]:
        table = self._existing()
        return [] if table is None else label_keep_reasons(table.labels, self.app)

    def delete(self) -> None:
        try:
            self._client().delete_table(self.name, not_found_ok=True)
        except Exception as e:
            raise cloud_error_line(f"table {self.name}: delete", e) from e


# --- the sink ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Item:
    index: int  # in the batch passed to write()
    payload: Any  # StructQueryParameter (merge) or JSON row (insert_id)
    size: int
    row_id: str


class _RowsRejectedError(Exception):
    """BigQuery refused the whole statement with a 400 that may be caused by a row."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _one_line(e: BaseException) -> str:
    errors = getattr(e, "errors", None)
    if errors and isinstance(errors[0], Mapping) and errors[0].get("message"):
        text = str(errors[0]["message"])
    else:
        text = str(getattr(e, "message", None) or e)
    return " ".join(text.split())[:500]


def _is_transient_bad_request(e: BaseException) -> bool:
    reasons = {str(x.get("reason")) for x in getattr(e, "errors", None) or () if isinstance(x, Mapping)}
    text = str(getattr(e, "message", None) or e).lower()
    return bool(reasons & _TRANSIENT_REASONS) or any(m in text for m in _TRANSIENT_MESSAGES)


def _chunks(items: Sequence[_Item], limit: int) -> Iterator[list[_Item]]:
    """Consecutive runs of items whose sizes add up to at most ``limit`` (an item larger
    than that goes alone)."""
    chunk: list[_Item] = []
    size = 0
    for it in items:
        if chunk and size + it.size > limit:
            yield chunk
            chunk, size = [], 0
        chunk.append(it)
        size += it.size
    if chunk:
        yield chunk


class BigQuerySink(SinkRuntime):
    """Writes micro-batches with one MERGE each (``merge``) or ``insertAll``
    (``insert_id``); see the module docstring for the guarantees."""

    def __init__(
        self,
        env: Environment,
        project: str,
        table_id: str,
        schema: TableSchema,
        write_mode: BigQueryWriteMode = "merge",
        max_payload_bytes: int = MAX_PAYLOAD_BYTES,
    ) -> None:
        self.env = env
        self.project = project
        self.table_id = table_id
        self.row_schema = schema
        self.schema = table_schema(schema)
        self.write_mode = write_mode
        self.max_payload_bytes = max_payload_bytes
        self.sql = merge_sql(table_id, self.schema)
        self._io = BlockingWorker(f"bigquery-{table_id.rsplit('.', 1)[-1]}")

    # -- shared -------------------------------------------------------------------------
    def _retry(self) -> Any:
        from google.cloud import bigquery

        return bigquery.DEFAULT_RETRY.with_timeout(REQUEST_RETRY_S).with_delay(initial=0.2, maximum=2.0)

    def _items(self, records: Sequence[OutputRecord]) -> tuple[list[_Item], list[RowRejection]]:
        """One item per (event_id, row_index), the last row of a key winning, in batch order."""
        latest: dict[tuple[str, int], _Item] = {}
        rejected: list[RowRejection] = []
        for i, r in enumerate(records):
            values = {**r.values, "_event_id": r.event_id, "_row_index": r.row_index}
            try:
                if self.write_mode == "merge":
                    payload = row_parameter(self.schema, values)
                    size = _payload_size(payload)
                else:
                    payload = to_json(values)
                    size = len(json.dumps(payload, default=str))
            except (TypeError, ValueError, AttributeError) as e:
                rejected.append(RowRejection(i, f"cannot pass the row to BigQuery: {e}"))
                continue
            latest[(r.event_id, r.row_index)] = _Item(i, payload, size, insert_id(r))
        return sorted(latest.values(), key=lambda it: it.index), rejected

    def _write(self, records: Sequence[OutputRecord]) -> list[RowRejection]:
        items, rejected = self._items(records)
        for chunk in _chunks(items, self.max_payload_bytes):
            if self.write_mode == "merge":
                rejected += self._merge_isolating(chunk)
            else:
                rejected += self._insert_all(chunk)
        return sorted(rejected, key=lambda r: r.index)

    # -- merge ----------------------------------------------------------------------------
    def _merge(self, items: Sequence[_Item]) -> int:
        """Run one MERGE; return the number of rows it inserted.

        Raises:
            _RowsRejectedError: a 400 for the statement that may be caused by a row.
            TransientSinkError: anything else.
        """
        from google.api_core import exceptions
        from google.cloud import bigquery

        param = bigquery.ArrayQueryParameter("rows", "STRUCT", [it.payload for it in items])
        config = bigquery.QueryJobConfig(query_parameters=[param])
        try:
            job = bigquery_client(self.env, self.project).query(
                self.sql,
                job_config=config,
                retry=self._retry(),
                timeout=REQUEST_TIMEOUT_S,
                job_retry=None,
                api_method="QUERY",
            )
            job.result(retry=self._retry(), timeout=JOB_TIMEOUT_S, job_retry=None)
        except exceptions.BadRequest as e:
            if _is_transient_bad_request(e):
                raise TransientSinkError(f"MERGE into {self.table_id} failed: {_one_line(e)}") from e
            raise _RowsRejectedError(_one_line(e)) from e
        except exceptions.NotFound as e:
            raise _gone(self.table_id, e) from e
        except (exceptions.GoogleAPIError, OSError, concurrent.futures.TimeoutError) as e:
            raise TransientSinkError(f"MERGE into {self.table_id} failed: {_one_line(e)}") from e
        inserted = int(job.num_dml_affected_rows or 0)
        log.debug(
            "MERGE into %s: %d rows, %d inserted, %d already there",
            self.table_id,
            len(items),
            inserted,
            len(items) - inserted,
        )
        return inserted

    def _check_table(self) -> None:
        """After a 400: if the table no longer matches the schema or cannot be read with
        every column, the statement itself is at fault, not a row.

        Raises:
            TransientSinkError: the table is missing or differs from the declaration.
        """
        resource = BigQueryTableResource(self.env, self.project, self.table_id, self.row_schema, False)
        try:
            require_ready(resource, f"table {self.table_id}")
        except ProvisioningError as e:
            raise TransientSinkError(str(e)) from e
        # The metadata can match while the statement still cannot bind (the emulator's
        # schema updates, see BigQueryTableResource.update): read every column, no row.
        cols = ", ".join(_q(f.name) for f in self.schema.fields)
        probe = f"SELECT {cols} FROM `{self.table_id}` WHERE FALSE"
        try:
            bigquery_client(self.env, self.project).query(
                probe, retry=self._retry(), timeout=REQUEST_TIMEOUT_S, job_retry=None
            ).result(retry=self._retry(), timeout=JOB_TIMEOUT_S, job_retry=None)
        except Exception as e:
            raise TransientSinkError(
                f"table {self.table_id} does not take the rows ({_one_line(e)}); "
                "run `buildflow plan <app>` to see and apply the changes"
            ) from e

    def _merge_isolating(self, items: Sequence[_Item], checked: bool = False) -> list[RowRejection]:
        """MERGE the items; on a 400, bisect to write every good row and reject the bad."""
        try:
            self._merge(items)
            return []
        except _RowsRejectedError as e:
            if not checked:
                self._check_table()
            if len(items) == 1:
                log.info("%s: BigQuery refused a row of %s: %s", self.table_id, items[0].row_id, e.reason)
                return [RowRejection(items[0].index, f"BigQuery refused the row: {e.reason}")]
            mid = len(items) // 2
            return self._merge_isolating(items[:mid], True) + self._merge_isolating(items[mid:], True)

    # -- insert_id ------------------------------------------------------------------------
    def _insert_all(self, items: Sequence[_Item]) -> list[RowRejection]:
        from google.api_core import exceptions

        try:
            errors = bigquery_client(self.env, self.project).insert_rows_json(
                self.table_id,
                [it.payload for it in items],
                row_ids=[it.row_id for it in items],
                retry=self._retry(),
                timeout=REQUEST_TIMEOUT_S,
            )
        except exceptions.NotFound as e:
            raise _gone(self.table_id, e) from e
        except (exceptions.GoogleAPIError, OSError) as e:
            raise TransientSinkError(f"insert into {self.table_id} failed: {_one_line(e)}") from e
        # A request with an invalid row inserts nothing: the valid rows come back with the
        # reason "stopped". Those are sent again; the invalid ones are rejected.
        rejected: list[RowRejection] = []
        stopped: list[_Item] = []
        for err in errors:
            item = items[int(err["index"])]
            if all(x.get("reason") == "stopped" for x in err["errors"]):
                stopped.append(item)
            else:
                own = [x for x in err["errors"] if x.get("reason") != "stopped"]
                rejected.append(RowRejection(item.index, "; ".join(x.get("message", str(x)) for x in own)))
        if stopped and rejected:
            rejected += self._insert_all(stopped)
        elif stopped:
            raise TransientSinkError(f"insert into {self.table_id}: BigQuery stopped {len(stopped)} rows")
        return rejected

    # -- SinkRuntime ----------------------------------------------------------------------
    async def write(self, records: Sequence[OutputRecord]) -> Sequence[RowRejection] | None:
        recs = list(records)
        return await self._io.run(lambda: self._write(recs)) or None

    async def close(self) -> None:
        self._io.stop()


def _gone(table_id: str, e: BaseException) -> ResourceGoneError:
    return ResourceGoneError(
        f"table {table_id} no longer exists (deleted while running, e.g. by `buildflow destroy`): "
        f"the run stops; `buildflow plan <app>` creates it again ({_one_line(e)})"
    )


class BigQueryTableProvider(SinkProvider):
    """Binds :class:`BigQueryTable` to ``gcp`` or ``emulator``."""

    concurrent_writers = True
    sql_dialect = "bigquery"

    declaration: BigQueryTable

    @property
    def project(self) -> str:
        return resolve_project(
            self.declaration.project_id,
            self.environment,
            self.declaration.describe(),
            "use 'project.dataset.table'",
        )

    @property
    def table_id(self) -> str:
        d = self.declaration
        return f"{self.project}.{d.dataset_id}.{d.table_name}"

    def resources(self, schema: TableSchema) -> list[Resource]:
        d, env = self.declaration, self.environment
        return [
            BigQueryDatasetResource(env, self.project, d.dataset_id, d.destroy_protection, d.location),
            BigQueryTableResource(env, self.project, self.table_id, schema, d.destroy_protection),
        ]

    def open(self, schema: TableSchema) -> SinkRuntime:
        """Open the sink once the table exists with the row's columns and the key columns."""
        resource = BigQueryTableResource(self.environment, self.project, self.table_id, schema, False)
        require_ready(resource, f"table {self.table_id}")
        return BigQuerySink(
            self.environment, self.project, self.table_id, schema, self.declaration.write_mode
        )

    def query(self, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
        from google.api_core import exceptions as gexc

        try:
            result = bigquery_client(self.environment, self.project).query(sql).result()
        except gexc.NotFound as e:
            raise QueryError(
                f"{e.message}; run `buildflow plan <app>` to create the app's tables "
                f"(this one: {self.table_id})"
            ) from e
        except gexc.BadRequest as e:
            raise QueryError(f"query failed: {e.message}") from e
        cols = [f.name for f in result.schema]
        return cols, [tuple(row.values()) for row in result]
