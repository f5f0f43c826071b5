"""The SQL and query parameters of ``BigQueryTable(write_mode="merge")``: one ``MERGE`` per
micro-batch whose rows travel as the ``ARRAY<STRUCT<...>>`` query parameter ``@rows``.

Two encodings keep every type round-tripping identically on BigQuery and the emulator:
BYTES travel as base64 STRING parameters decoded with ``FROM_BASE64`` (the emulator stores a
BYTES parameter's base64 text undecoded), and a NULLABLE RECORD as an array of zero or one
struct (a STRUCT query parameter cannot be NULL). Those conversions run in the ``USING``
subquery, since BigQuery does not allow correlated subqueries in a ``MERGE``'s ``INSERT``
clause. Pure functions: no I/O (``google.cloud.bigquery`` is imported for its parameter
classes only).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any

from buildflow.schema import SchemaField, TableSchema

__all__ = ["merge_sql", "parameter_type", "row_parameter", "payload_size", "quote"]


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


def payload_size(param: Any) -> int:
    """Bytes of ``param``'s value as JSON (what counts against BigQuery's request size)."""
    return len(json.dumps(param.to_api_repr()["parameterValue"], default=str))


# --- the MERGE statement -------------------------------------------------------------


def quote(name: str) -> str:
    """A column name in backquotes (names are ``[A-Za-z_][A-Za-z0-9_]*``: nothing to escape)."""
    return f"`{name}`"


_q = quote


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
