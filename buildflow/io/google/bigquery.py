"""``BigQueryTable`` on BigQuery (``gcp``) or the local BigQuery emulator (``emulator``):
the provider, and the sink of the query-job write modes ``merge`` and ``insert_id``.

The parts live beside it, one responsibility each:

* :mod:`.bigquery_tables`: the dataset, the table (schema, partitioning, clustering,
  primary key) and the de-duplicating view that ``plan`` manages;
* :mod:`.bigquery_storage_write`: the default ``upsert`` and the ``append`` modes, rows
  appended through the Storage Write API;
* :mod:`.bigquery_sql`: the MERGE statement and its query parameters.

Tables
------
``plan`` manages the dataset and the table: the row dataclass's columns plus
``_event_id STRING`` and ``_row_index INT64`` (NULLABLE, so that a table created before
they existed gets them as an in-place update), the row's idempotency key; Storage Write
tables also ``_written_at TIMESTAMP`` and the view ``<table>_dedup``. A schema that
BigQuery can change in place (a new NULLABLE/REPEATED column, REQUIRED relaxed to
NULLABLE) is an update, anything else a conflict reported by ``plan``, never a failed
insert; ``run`` refuses a table that does not match.

``write_mode="merge"``: opt-in, small tables
--------------------------------------------
Each micro-batch is ONE DML statement (a query job)::

    MERGE `p.d.t` AS T USING UNNEST(@rows) AS S
    ON T._event_id = S._event_id AND T._row_index = S._row_index
    WHEN NOT MATCHED THEN INSERT (<columns>) VALUES (S.<columns>)

A DML statement is atomic, so a batch written again after a redelivery inserts nothing
new. Its costs grow with the table: on-demand pricing bills every MERGE for the key
columns of the whole target table, at least 10 MB per table referenced ("BigQuery
pricing", on-demand compute: https://cloud.google.com/bigquery/pricing#on_demand_pricing);
BigQuery runs 2 mutating DML statements per table at a time and queues 20 more ("Quotas
and limits": https://cloud.google.com/bigquery/quotas#data-manipulation-language-statements),
so replicas add no throughput; and two insert-only MERGEs of one key that overlap both
insert ("Transform data with DML", DML statement conflicts:
https://cloud.google.com/bigquery/docs/data-manipulation-language). A job that does not
finish within :data:`JOB_TIMEOUT_S` is therefore cancelled and waited for (up to
:data:`CANCEL_WAIT_S`) before the batch is retried: a job that completed anyway counts as
written, one still running keeps the batch from being sent again. ``@rows`` is split into
several MERGEs when its JSON would exceed :data:`MAX_PAYLOAD_BYTES` (2 MB; BigQuery caps a
query request at 10 MB "including additional properties like query parameters").

Errors: a request, network, 5xx, 403 (quota, rate limit) or a timeout raises
:class:`~buildflow.errors.TransientSinkError` (the runtime retries the batch, the events
stay unacked), and so do the 400s that BigQuery gives for load (a concurrent update, too
many DML statements queued); a 404 (the table was deleted while running) raises
:class:`~buildflow.errors.ResourceGoneError` (the run stops: ``plan`` creates it again).
Any other 400 for the whole statement is taken to be caused by a row only when the table
still matches the declared schema and can be read with every column (else it is transient:
run ``plan``): the batch is then bisected, so every good row lands and each bad row comes
back as a :class:`~buildflow.io.base.RowRejection` with BigQuery's reason (its event is
dead-lettered). Client calls use a bounded retry (:data:`REQUEST_RETRY_S`) and timeouts.

``write_mode="insert_id"``: legacy streaming
--------------------------------------------
Rows are streamed with ``insertAll`` (``insert_rows_json``) with the insertId
``<event_id>/<row_index>`` (hashed when longer than 128 characters), carrying
``_event_id`` and ``_row_index`` too, so duplicates can be removed at query time;
BigQuery drops a repeated insertId on a best-effort basis only, for about a minute
("Streaming data into BigQuery", best-effort de-duplication). Per-row ``insertErrors``
are permanent: those events are dead-lettered, and the batch's valid rows, which
BigQuery then did not insert either (reason ``stopped``), are sent again.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from buildflow.environment import Environment
from buildflow.errors import ProvisioningError, QueryError, ResourceGoneError, TransientSinkError
from buildflow.io.base import OutputRecord, RowRejection, SinkProvider, SinkRuntime
from buildflow.io.google.bigquery_sql import merge_sql, parameter_type, payload_size, row_parameter
from buildflow.io.google.bigquery_sql import quote as _q
from buildflow.io.google.bigquery_storage_write import StorageWriteSink
from buildflow.io.google.bigquery_tables import (
    JOB_TIMEOUT_S,
    META_FIELDS,
    REQUEST_TIMEOUT_S,
    BigQueryDatasetResource,
    BigQueryTableResource,
    BigQueryViewResource,
    table_schema,
)
from buildflow.io.google.clients import bigquery_client, resolve_project
from buildflow.io.google.declarations import STORAGE_WRITE_MODES, BigQueryTable, BigQueryWriteMode
from buildflow.provisioning import Resource, require_ready
from buildflow.runtime.threads import BlockingWorker
from buildflow.schema import TableSchema, to_json

__all__ = [
    "BigQuerySink",
    "BigQueryTableProvider",
    "BigQueryDatasetResource",
    "BigQueryTableResource",
    "BigQueryViewResource",
    "StorageWriteSink",
    "CANCEL_WAIT_S",
    "JOB_TIMEOUT_S",
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

MAX_PAYLOAD_BYTES = 2_000_000
"""Largest ``@rows`` parameter (JSON bytes) of one MERGE; BigQuery allows a 10 MB request."""

REQUEST_RETRY_S = 20.0
"""How long the client retries one API call (5xx, connection errors) before giving up."""

CANCEL_WAIT_S = 600.0
"""How long a timed-out MERGE job is waited for after ``jobs.cancel`` (cancellation is
asynchronous) before the batch is retried anyway."""

# 400s that are not caused by a row (BigQuery error reasons and messages).
_TRANSIENT_REASONS = frozenset(
    {"backendError", "internalError", "rateLimitExceeded", "quotaExceeded", "jobRateLimitExceeded"}
)
_TRANSIENT_MESSAGES = ("could not serialize access", "too many dml statements", "exceeded rate limits")


def insert_id(record: OutputRecord) -> str:
    """``<event_id>/<row_index>``, or its SHA-256 when over BigQuery's 128-character limit."""
    raw = f"{record.event_id}/{record.row_index}"
    return raw if len(raw) <= 128 else hashlib.sha256(raw.encode()).hexdigest()


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
    (``insert_id``); see the module docstring for the guarantees. The Storage Write
    modes are :class:`~buildflow.io.google.bigquery_storage_write.StorageWriteSink`."""

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
                    size = payload_size(payload)
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
        job = None
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
        except concurrent.futures.TimeoutError as e:
            if job is None or not self._cancelled(job):
                raise TransientSinkError(
                    f"MERGE into {self.table_id} did not finish within {JOB_TIMEOUT_S:.0f} s and was "
                    "cancelled; the batch is retried"
                ) from e
            log.info("MERGE into %s: job %s completed while being cancelled", self.table_id, job.job_id)
        except exceptions.BadRequest as e:
            if _is_transient_bad_request(e):
                raise TransientSinkError(f"MERGE into {self.table_id} failed: {_one_line(e)}") from e
            raise _RowsRejectedError(_one_line(e)) from e
        except exceptions.NotFound as e:
            raise _gone(self.table_id, e) from e
        except (exceptions.GoogleAPIError, OSError) as e:  # OSError includes TimeoutError
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

    def _cancelled(self, job: Any) -> bool:
        """Cancel a MERGE job that timed out and wait until it is DONE, so that the batch is
        never resubmitted while the first job may still insert (two insert-only MERGEs of
        one key that overlap both insert). Returns True when the job completed without an
        error after all (its rows are written), False when it was cancelled or failed.

        Raises:
            TransientSinkError: the job is still not DONE after :data:`CANCEL_WAIT_S`.
        """
        deadline = time.monotonic() + CANCEL_WAIT_S
        try:
            job.cancel(retry=self._retry(), timeout=REQUEST_TIMEOUT_S)
        except Exception as e:  # already done, or the request failed: poll anyway
            log.info("cancel of MERGE job %s into %s: %s", job.job_id, self.table_id, _one_line(e))
        delay = 0.5
        while True:
            try:
                job.reload(retry=self._retry(), timeout=REQUEST_TIMEOUT_S)
                if job.state == "DONE":
                    return job.error_result is None
            except Exception as e:
                log.info("polling MERGE job %s into %s: %s", job.job_id, self.table_id, _one_line(e))
            if time.monotonic() >= deadline:
                raise TransientSinkError(
                    f"MERGE job {job.job_id} into {self.table_id} timed out and is still not done "
                    f"{CANCEL_WAIT_S:.0f} s after it was cancelled; the batch is retried"
                )
            time.sleep(delay)  # polling a remote job: no event to wait on
            delay = min(delay * 2, 10.0)

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

    def _table(self, schema: TableSchema, protected: bool) -> BigQueryTableResource:
        d = self.declaration
        return BigQueryTableResource(
            self.environment,
            self.project,
            self.table_id,
            schema,
            protected,
            d.write_mode,
            d.max_staleness_minutes,
        )

    def resources(self, schema: TableSchema) -> list[Resource]:
        """The dataset, the table and, for the Storage Write modes, its ``_dedup`` view."""
        d, env = self.declaration, self.environment
        out: list[Resource] = [
            BigQueryDatasetResource(env, self.project, d.dataset_id, d.destroy_protection, d.location),
            self._table(schema, d.destroy_protection),
        ]
        if d.write_mode in STORAGE_WRITE_MODES:
            out.append(BigQueryViewResource(env, self.project, self.table_id, d.destroy_protection))
        return out

    def open(self, schema: TableSchema) -> SinkRuntime:
        """Open the sink once the table exists as declared (metadata only: no query job).

        Raises:
            ResourceMissingError, ProvisioningError: the table is missing or differs; run
                ``buildflow plan``.
        """
        require_ready(self._table(schema, False), f"table {self.table_id}")
        mode = self.declaration.write_mode
        if mode in STORAGE_WRITE_MODES:
            return StorageWriteSink(self.environment, self.project, self.table_id, schema, mode)
        return BigQuerySink(self.environment, self.project, self.table_id, schema, mode)

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
