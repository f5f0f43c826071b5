"""BigQuery datasets, tables and de-duplicating views as ``plan`` manages them, and the table
schema buildflow derives from a row dataclass.

Every table gets the row's columns plus :data:`META_FIELDS` (``_event_id``, ``_row_index``:
the row's idempotency key). Tables written through the Storage Write API
(``write_mode="upsert"`` or ``"append"``) also get :data:`WRITE_TIME_FIELD`
(``_written_at``), are partitioned by day on it and clustered by ``_event_id``
("Introduction to partitioned tables", "Introduction to clustered tables":
https://cloud.google.com/bigquery/docs/partitioned-tables,
https://cloud.google.com/bigquery/docs/clustered-tables). An ``upsert`` table declares
``PRIMARY KEY (_event_id, _row_index) NOT ENFORCED`` and ``max_staleness``, what BigQuery's
change data capture needs ("Stream table updates with change data capture",
https://cloud.google.com/bigquery/docs/change-data-capture). Both get the view
``<table>_dedup`` (:func:`dedup_view_sql`): one row per key, whatever was appended twice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from buildflow.environment import Environment
from buildflow.errors import SchemaError
from buildflow.io.google.bigquery_sql import quote as _q
from buildflow.io.google.clients import bigquery_client, cloud_error_line
from buildflow.io.google.declarations import STORAGE_WRITE_MODES, BigQueryWriteMode
from buildflow.provisioning import Resource, ResourceState, label_keep_reasons
from buildflow.schema import SchemaField, TableSchema, diff_schemas

__all__ = [
    "META_FIELDS",
    "WRITE_TIME_FIELD",
    "KEY_COLUMNS",
    "BigQueryDatasetResource",
    "BigQueryTableResource",
    "BigQueryViewResource",
    "dedup_view_id",
    "dedup_view_sql",
    "staleness_interval",
    "table_schema",
]

META_FIELDS: tuple[SchemaField, ...] = (
    SchemaField(
        "_event_id", "STRING", "NULLABLE", description="buildflow: id of the source event (row key, 1/2)"
    ),
    SchemaField(
        "_row_index", "INT64", "NULLABLE", description="buildflow: row of the event, from 0 (row key, 2/2)"
    ),
)
"""The columns buildflow adds to every BigQuery table: the row's idempotency key."""

KEY_COLUMNS: Final = ("_event_id", "_row_index")
"""The primary key of an ``upsert`` table (``PRIMARY KEY (...) NOT ENFORCED``)."""

WRITE_TIME_FIELD: Final = SchemaField(
    "_written_at",
    "TIMESTAMP",
    "NULLABLE",
    description="buildflow: when the sink wrote the row (partitioning column)",
)
"""Added to Storage Write API tables: when the row was appended; they are partitioned by
day on it, and the de-duplicating view keeps the latest row of a key by it."""

REQUEST_TIMEOUT_S = 30.0
JOB_TIMEOUT_S = 120.0


def table_schema(row_schema: TableSchema, write_mode: BigQueryWriteMode = "merge") -> TableSchema:
    """The BigQuery table's schema: the row's columns, then :data:`META_FIELDS`, then (for
    the Storage Write API modes ``upsert`` and ``append``) :data:`WRITE_TIME_FIELD`.

    Raises:
        SchemaError: the row already has a column named like one of them.
    """
    extra = META_FIELDS + ((WRITE_TIME_FIELD,) if write_mode in STORAGE_WRITE_MODES else ())
    names = {f.name.lower() for f in row_schema.fields}
    clash = [m.name for m in extra if m.name.lower() in names]
    if clash:
        raise SchemaError(
            f"the row has a column named {clash[0]!r}, which buildflow adds to every BigQuery "
            "table (the row key, or the write time); rename the field."
        )
    return TableSchema(row_schema.fields + extra, row_type=row_schema.row_type)


def staleness_interval(minutes: int) -> str:
    """``max_staleness`` as BigQuery's REST API takes it: the canonical INTERVAL string
    ``Y-M D H:M:S`` (``15`` -> ``"0-0 0 0:15:0"``)."""
    days, rest = divmod(int(minutes), 24 * 60)
    hours, mins = divmod(rest, 60)
    return f"0-0 {days} {hours}:{mins}:0"


def dedup_view_id(table_id: str) -> str:
    """``project.dataset.<table>_dedup``: the de-duplicating view of a table."""
    return f"{table_id}_dedup"


def dedup_view_sql(table_id: str) -> str:
    """The de-duplicating view's query: the latest row (by ``_written_at``) of each
    ``(_event_id, _row_index)``.

    ``QUALIFY`` filters on a window function's result ("Query syntax", QUALIFY clause:
    https://cloud.google.com/bigquery/docs/reference/standard-sql/query-syntax#qualify_clause);
    the ``WHERE TRUE`` keeps it valid where QUALIFY needs a WHERE, GROUP BY or HAVING.
    """
    return (
        f"SELECT * FROM `{table_id}` WHERE TRUE "
        "QUALIFY ROW_NUMBER() OVER (PARTITION BY `_event_id`, `_row_index` ORDER BY `_written_at` DESC) = 1"
    )


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
    """A table whose schema is :func:`table_schema` of the row's, laid out for its
    ``write_mode`` (see the module docstring).

    Args:
        write_mode: Decides the extra column, the partitioning, clustering and (``upsert``)
            the primary key and ``max_staleness``.
        max_staleness_minutes: The ``upsert`` table's ``max_staleness`` (None: not set).
    """

    kind = "table"

    def __init__(
        self,
        env: Environment,
        project: str,
        table_id: str,
        schema: TableSchema,
        protected: bool,
        write_mode: BigQueryWriteMode = "merge",
        max_staleness_minutes: int | None = None,
    ) -> None:
        self.env = env
        self.project = project
        self.name = table_id
        self.row_schema = schema
        self.write_mode = write_mode
        self.schema = table_schema(schema, write_mode)
        self.protected = protected
        self.max_staleness = (
            staleness_interval(max_staleness_minutes)
            if write_mode == "upsert" and max_staleness_minutes is not None
            else None
        )

    def _client(self) -> Any:
        return bigquery_client(self.env, self.project)

    def _existing(self) -> Any:
        try:
            return self._client().get_table(self.name)
        except Exception as e:
            if type(e).__name__ == "NotFound":
                return None
            raise cloud_error_line(f"table {self.name}", e) from e

    def _layout_updates(self, table: Any) -> list[str]:
        """What an ``upsert`` table lacks for change data capture (made in place by
        :meth:`update`). Not checked in ``emulator``: bqemulator accepts a table's
        ``tableConstraints`` and ``maxStaleness`` but does not keep them."""
        if self.write_mode != "upsert" or self.env.name == "emulator":
            return []
        out = []
        constraints = table.table_constraints
        pk = constraints.primary_key.columns if constraints and constraints.primary_key else None
        if list(pk or ()) != list(KEY_COLUMNS):
            out.append(f"primary key: {pk!r} -> PRIMARY KEY ({', '.join(KEY_COLUMNS)}) NOT ENFORCED")
        if self.max_staleness is not None and table.max_staleness != self.max_staleness:
            out.append(f"max_staleness: {table.max_staleness!r} -> {self.max_staleness!r}")
        return out

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
        updates += self._layout_updates(table)
        return ResourceState(True, updates=tuple(updates), conflicts=tuple(conflicts))

    def _table(self) -> Any:
        from google.cloud import bigquery

        fields = [bigquery.SchemaField.from_api_repr(f) for f in self.schema.to_api_repr()]
        table = bigquery.Table(self.name, schema=fields)
        table.labels = self.labels()
        if self.write_mode in STORAGE_WRITE_MODES:
            table.time_partitioning = bigquery.TimePartitioning(
                type_=bigquery.TimePartitioningType.DAY, field=WRITE_TIME_FIELD.name
            )
            table.clustering_fields = ["_event_id"]
        if self.write_mode == "upsert":
            table.table_constraints = bigquery.table.TableConstraints(
                primary_key=bigquery.table.PrimaryKey(list(KEY_COLUMNS)), foreign_keys=None
            )
            table.max_staleness = self.max_staleness
        return table

    def create(self) -> None:
        try:
            self._client().create_table(self._table())
        except Exception as e:
            raise cloud_error_line(f"table {self.name}: create", e) from e

    def update(self, state: ResourceState) -> None:
        """Add the missing NULLABLE/REPEATED columns (e.g. ``_event_id``/``_row_index`` to a
        table made before they existed) and relax REQUIRED ones, keeping every other column;
        for ``upsert``, set the primary key and ``max_staleness``. Partitioning and
        clustering are set at creation only (BigQuery cannot partition an existing table).

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
        props = ["schema"]
        if self._layout_updates(table):
            wanted = self._table()
            table.table_constraints = wanted.table_constraints
            table.max_staleness = wanted.max_staleness
            props += ["table_constraints", "max_staleness"]
        try:
            self._client().update_table(table, props)
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


class BigQueryViewResource(Resource):
    """The de-duplicating view of a table (:func:`dedup_view_sql`), created after it."""

    kind = "view"

    def __init__(self, env: Environment, project: str, table_id: str, protected: bool) -> None:
        self.env = env
        self.project = project
        self.table_id = table_id
        self.name = dedup_view_id(table_id)
        self.sql = dedup_view_sql(table_id)
        self.protected = protected

    def _client(self) -> Any:
        return bigquery_client(self.env, self.project)

    def inspect(self) -> ResourceState:
        try:
            view = self._client().get_table(self.name)
        except Exception as e:
            if type(e).__name__ == "NotFound":
                return ResourceState(exists=False)
            raise cloud_error_line(f"view {self.name}", e) from e
        if view.table_type != "VIEW":
            return ResourceState(True, conflicts=(f"{self.name} is a {view.table_type}, not a view",))
        # bqemulator does not return a view's query (None): nothing to compare there
        if view.view_query is not None and " ".join(view.view_query.split()) != self.sql:
            return ResourceState(True, updates=("query: -> the de-duplicating query",))
        return ResourceState(exists=True)

    def create(self) -> None:
        from google.cloud import bigquery

        view = bigquery.Table(self.name)
        view.view_query = self.sql
        view.labels = self.labels()
        try:
            self._client().create_table(view)
        except Exception as e:
            raise cloud_error_line(f"view {self.name}: create", e) from e

    def update(self, state: ResourceState) -> None:
        view = self._client().get_table(self.name)
        view.view_query = self.sql
        try:
            self._client().update_table(view, ["view_query"])
        except Exception as e:
            raise cloud_error_line(f"view {self.name}: update", e) from e

    def keep_reasons(self, deleting: frozenset[tuple[str, str]]) -> list[str]:
        try:
            view = self._client().get_table(self.name)
        except Exception as e:
            if type(e).__name__ == "NotFound":
                return []
            raise cloud_error_line(f"view {self.name}", e) from e
        return label_keep_reasons(view.labels, self.app)

    def delete(self) -> None:
        try:
            self._client().delete_table(self.name, not_found_ok=True)
        except Exception as e:
            raise cloud_error_line(f"view {self.name}: delete", e) from e
