"""``BigQueryTable`` on BigQuery (``gcp``) or the local BigQuery emulator (``emulator``).

``plan`` manages the dataset and the table (schema from the row dataclass); a schema that
BigQuery can change in place (a new NULLABLE/REPEATED column, REQUIRED relaxed to NULLABLE)
is an update, anything else a conflict reported by ``plan``, never a failed insert.

Rows are streamed with ``insertAll`` (``insert_rows_json``) with the insertId
``<event_id>/<row_index>`` (hashed when longer than 128 characters): BigQuery drops a row
whose insertId it saw in the last minute or so, best effort. Per-row ``insertErrors`` are
permanent: those events are dead-lettered. Request failures are transient and retried by
the runtime. (The emulator does not de-duplicate insertIds.)
"""

from __future__ import annotations

import base64
import datetime
import hashlib
from collections.abc import Sequence
from typing import Any

from buildflow.environment import Environment
from buildflow.errors import TransientSinkError
from buildflow.io.base import OutputRecord, RowRejection, SinkProvider, SinkRuntime
from buildflow.io.gcp import BigQueryTable
from buildflow.io.google.clients import bigquery_client, cloud_error_line, resolve_project
from buildflow.provisioning import Resource, ResourceState, require_ready
from buildflow.runtime.threads import BlockingWorker
from buildflow.schema import TableSchema, diff_schemas

__all__ = ["BigQueryTableProvider", "to_json", "insert_id"]


def to_json(value: Any) -> Any:
    """A row value as BigQuery's JSON wants it: TIMESTAMP/DATE as ISO 8601 strings, BYTES
    as base64, RECORD/REPEATED recursively."""
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_json(v) for v in value]
    if isinstance(value, (datetime.datetime, datetime.date)):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(value).decode("ascii")
    return value


def insert_id(record: OutputRecord) -> str:
    """``<event_id>/<row_index>``, or its SHA-256 when over BigQuery's 128-character limit."""
    raw = f"{record.event_id}/{record.row_index}"
    return raw if len(raw) <= 128 else hashlib.sha256(raw.encode()).hexdigest()


class BigQueryDatasetResource(Resource):
    """A dataset. ``destroy`` deletes it only when empty: other tables are never dropped."""

    kind = "dataset"

    def __init__(self, env: Environment, project: str, dataset: str, protected: bool) -> None:
        self.env = env
        self.project = project
        self.dataset = dataset
        self.protected = protected
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
        try:
            bigquery_client(self.env, self.project).create_dataset(self.name, exists_ok=True)
        except Exception as e:
            raise cloud_error_line(f"dataset {self.name}: create", e) from e

    def delete(self) -> None:
        client = bigquery_client(self.env, self.project)
        try:
            if list(client.list_tables(self.name, max_results=1)):
                return  # holds tables this app does not manage: keep it
            client.delete_dataset(self.name, not_found_ok=True)
        except Exception as e:
            raise cloud_error_line(f"dataset {self.name}: delete", e) from e


class BigQueryTableResource(Resource):
    """A table whose schema is the row dataclass's."""

    kind = "table"

    def __init__(
        self, env: Environment, project: str, table_id: str, schema: TableSchema, protected: bool
    ) -> None:
        self.env = env
        self.project = project
        self.name = table_id
        self.schema = schema
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
        try:
            self._client().create_table(bigquery.Table(self.name, schema=fields))
        except Exception as e:
            raise cloud_error_line(f"table {self.name}: create", e) from e

    def update(self, state: ResourceState) -> None:
        from google.cloud import bigquery

        table = self._existing()
        table.schema = [bigquery.SchemaField.from_api_repr(f) for f in self.schema.to_api_repr()]
        try:
            self._client().update_table(table, ["schema"])
        except Exception as e:
            raise cloud_error_line(f"table {self.name}: update", e) from e

    def delete(self) -> None:
        try:
            self._client().delete_table(self.name, not_found_ok=True)
        except Exception as e:
            raise cloud_error_line(f"table {self.name}: delete", e) from e


class BigQuerySink(SinkRuntime):
    """Streams rows with insertAll; see the module docstring for the guarantees."""

    def __init__(self, env: Environment, project: str, table_id: str) -> None:
        self.env = env
        self.project = project
        self.table_id = table_id
        self._io = BlockingWorker(f"bigquery-{table_id.rsplit('.', 1)[-1]}")

    def _write(self, records: Sequence[OutputRecord]) -> list[RowRejection]:
        from google.api_core import exceptions
        from google.api_core.retry import Retry

        rows = [to_json(r.values) for r in records]
        try:
            errors = bigquery_client(self.env, self.project).insert_rows_json(
                self.table_id,
                rows,
                row_ids=[insert_id(r) for r in records],
                retry=Retry(timeout=20),
                timeout=30,
            )
        except (exceptions.GoogleAPIError, OSError) as e:
            raise TransientSinkError(f"insert into {self.table_id} failed: {e}") from e
        return [
            RowRejection(int(err["index"]), "; ".join(x.get("message", str(x)) for x in err["errors"]))
            for err in errors
        ]

    async def write(self, records: Sequence[OutputRecord]) -> Sequence[RowRejection] | None:
        recs = list(records)
        return await self._io.run(lambda: self._write(recs)) or None

    async def close(self) -> None:
        self._io.stop()


class BigQueryTableProvider(SinkProvider):
    """Binds :class:`BigQueryTable` to ``gcp`` or ``emulator``."""

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
            BigQueryDatasetResource(env, self.project, d.dataset_id, d.destroy_protection),
            BigQueryTableResource(env, self.project, self.table_id, schema, d.destroy_protection),
        ]

    def open(self, schema: TableSchema) -> SinkRuntime:
        resource = BigQueryTableResource(self.environment, self.project, self.table_id, schema, False)
        require_ready(resource, f"table {self.table_id}")
        return BigQuerySink(self.environment, self.project, self.table_id)

    def query(self, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
        result = bigquery_client(self.environment, self.project).query(sql).result()
        cols = [f.name for f in result.schema]
        return cols, [tuple(row.values()) for row in result]
