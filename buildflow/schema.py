"""Map a row dataclass to a BigQuery-style table schema, and rows to plain records.

This module is pure: it does no I/O and imports no cloud SDK (numpy is never imported
either; numpy scalars are recognised only when the caller has already imported numpy).

Mapping (:func:`schema_from_dataclass`), in BigQuery's standard SQL type names:

=====================================================  ==============================
Python annotation                                      BigQuery column
=====================================================  ==============================
``str``                                                ``STRING``
``int``                                                ``INT64``
``float``                                              ``FLOAT64``
``bool``                                               ``BOOL``
``bytes``                                              ``BYTES``
``datetime.datetime``                                  ``TIMESTAMP``
``datetime.date``                                      ``DATE``
a nested ``@dataclass``                                ``RECORD`` with its own fields
``X`` (no ``None``)                                    mode ``REQUIRED``
``Optional[X]`` / ``X | None``                         mode ``NULLABLE``
``list[X]``, ``List[X]``, ``Sequence[X]``,             mode ``REPEATED``
``tuple[X, ...]`` (also wrapped in ``Optional``)
=====================================================  ==============================

``Annotated[X, ...]`` and ``NewType`` wrappers are looked through, and a subclass of a
supported type maps like its base (an ``IntEnum`` is ``INT64``, a ``str``-mixin ``Enum``
is ``STRING``). ``dataclasses.field(metadata={"description": "..."})`` sets the column
description.

:func:`row_to_record` turns one row (a dataclass instance or a mapping) into a plain
``dict`` ready for a sink, validating every value against the schema.
:func:`diff_schemas` compares a declared schema with an existing table's.
"""

from __future__ import annotations

import base64
import collections.abc
import dataclasses
import datetime
import functools
import operator
import re
import sys
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, Literal, cast

from buildflow.errors import RowValidationError, SchemaError

__all__ = [
    "FieldType",
    "Mode",
    "SchemaDifference",
    "SchemaField",
    "TableSchema",
    "diff_schemas",
    "row_to_record",
    "schema_from_dataclass",
    "to_json",
]

FieldType = Literal["STRING", "INT64", "FLOAT64", "BOOL", "BYTES", "TIMESTAMP", "DATE", "RECORD"]
"""A column type, in BigQuery's standard SQL names."""

Mode = Literal["NULLABLE", "REQUIRED", "REPEATED"]
"""A column mode: ``REQUIRED`` (NOT NULL), ``NULLABLE``, or ``REPEATED`` (an ARRAY)."""

_FIELD_TYPES: tuple[FieldType, ...] = typing.get_args(FieldType)
_MODES: tuple[Mode, ...] = typing.get_args(Mode)

# Names the BigQuery REST API accepts or returns for the same types. Reading a table's
# schema back gives the legacy SQL names (INTEGER, FLOAT, BOOLEAN).
_TYPE_ALIASES: dict[str, FieldType] = {
    **{t: t for t in _FIELD_TYPES},
    "INTEGER": "INT64",
    "FLOAT": "FLOAT64",
    "BOOLEAN": "BOOL",
    "STRUCT": "RECORD",
}


# --------------------------------------------------------------------------------------
# Schema objects
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SchemaField:
    """One column (or one field of a RECORD column) of a table schema.

    Attributes:
        name: The column name, e.g. ``"image_name"``.
        field_type: The BigQuery type, e.g. ``"FLOAT64"``; ``"RECORD"`` for a struct.
        mode: ``"REQUIRED"`` (the default: NOT NULL), ``"NULLABLE"`` or ``"REPEATED"``.
        fields: The sub-fields of a ``RECORD``; empty for every other type.
        description: The column description, or ``None``.

    Raises:
        SchemaError: ``field_type`` or ``mode`` is not one of the values above, a
            ``RECORD`` has no sub-fields, or a non-``RECORD`` has some.
    """

    name: str
    field_type: FieldType
    mode: Mode = "REQUIRED"
    fields: tuple[SchemaField, ...] = ()
    description: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.fields, tuple):
            # Accept any iterable (e.g. a list) but store a tuple, so the field is hashable.
            object.__setattr__(self, "fields", tuple(self.fields))
        if self.field_type not in _FIELD_TYPES:
            raise SchemaError(
                f"field {self.name!r}: unsupported type {self.field_type!r}; "
                f"expected one of {', '.join(_FIELD_TYPES)}."
            )
        if self.mode not in _MODES:
            raise SchemaError(
                f"field {self.name!r}: unsupported mode {self.mode!r}; expected one of {', '.join(_MODES)}."
            )
        if self.field_type == "RECORD" and not self.fields:
            raise SchemaError(
                f"field {self.name!r}: a RECORD needs at least one sub-field; "
                "pass fields=(SchemaField(...), ...)."
            )
        if self.field_type != "RECORD" and self.fields:
            raise SchemaError(
                f"field {self.name!r}: only a RECORD has sub-fields, but this field is "
                f"{self.field_type}; use field_type='RECORD' or drop fields."
            )

    def to_api_repr(self) -> dict[str, Any]:
        """Return the BigQuery REST ``TableFieldSchema`` of this field.

        Returns:
            ``{"name": ..., "type": ..., "mode": ...}``, plus ``"fields"`` (a list of
            the same shape) when the field is a RECORD and ``"description"`` when set.
            Types use the standard SQL names (``INT64``, not ``INTEGER``), which the
            API accepts.
        """
        out: dict[str, Any] = {
            "name": self.name,
            "type": self.field_type,
            "mode": self.mode,
        }
        if self.fields:
            out["fields"] = [f.to_api_repr() for f in self.fields]
        if self.description is not None:
            out["description"] = self.description
        return out

    @classmethod
    def from_api_repr(cls, d: Mapping[str, Any]) -> SchemaField:
        """Build a field from a BigQuery REST ``TableFieldSchema`` dict.

        Args:
            d: ``{"name", "type", "mode"?, "fields"?, "description"?}``. Legacy type
                names are normalised (``INTEGER`` -> ``INT64``, ``FLOAT`` -> ``FLOAT64``,
                ``BOOLEAN`` -> ``BOOL``, ``STRUCT`` -> ``RECORD``); type and mode are
                case-insensitive; a missing mode means ``NULLABLE`` (BigQuery's
                default). Other keys (``policyTags``, ``maxLength``, ...) are ignored.

        Raises:
            SchemaError: ``name`` or ``type`` is missing, or the type or mode is one this
                module does not support (e.g. ``NUMERIC``, ``JSON``, ``GEOGRAPHY``).
        """
        try:
            name = d["name"]
            raw_type = d["type"]
        except (KeyError, TypeError):
            raise SchemaError(
                f"invalid TableFieldSchema {d!r}: expected a mapping with at least 'name' and 'type' keys."
            ) from None
        field_type = _TYPE_ALIASES.get(str(raw_type).upper())
        if field_type is None:
            raise SchemaError(
                f"field {name!r}: unsupported BigQuery type {raw_type!r}; buildflow maps "
                f"only {', '.join(_FIELD_TYPES)} (and their legacy names INTEGER, FLOAT, "
                "BOOLEAN, STRUCT)."
            )
        mode = str(d.get("mode") or "NULLABLE").upper()
        if mode not in _MODES:
            raise SchemaError(
                f"field {name!r}: unsupported mode {d.get('mode')!r}; expected one of {', '.join(_MODES)}."
            )
        return cls(
            name=name,
            field_type=field_type,
            mode=mode,
            fields=tuple(cls.from_api_repr(f) for f in d.get("fields") or ()),
            description=d.get("description"),
        )


@dataclasses.dataclass(frozen=True)
class TableSchema:
    """The schema of a table: its top-level columns, in order.

    Attributes:
        fields: The columns.
        row_type: The dataclass the schema was derived from, or ``None`` when it was
            built otherwise (e.g. read from an existing table). Not part of equality.
    """

    fields: tuple[SchemaField, ...]
    row_type: type | None = dataclasses.field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.fields, tuple):
            object.__setattr__(self, "fields", tuple(self.fields))

    def field_names(self) -> tuple[str, ...]:
        """Return the top-level column names, in order."""
        return tuple(f.name for f in self.fields)

    def to_api_repr(self) -> list[dict[str, Any]]:
        """Return the BigQuery REST ``TableSchema.fields`` list (see :meth:`SchemaField.to_api_repr`)."""
        return [f.to_api_repr() for f in self.fields]

    @classmethod
    def from_api_repr(cls, fields: collections.abc.Iterable[Mapping[str, Any]]) -> TableSchema:
        """Build a schema from a BigQuery REST ``TableSchema.fields`` list.

        Raises:
            SchemaError: as :meth:`SchemaField.from_api_repr`.
        """
        return cls(fields=tuple(SchemaField.from_api_repr(f) for f in fields))

    def describe(self) -> str:
        """Return a compact one-line, DDL-like rendering of the schema.

        ``REQUIRED`` is shown as ``NOT NULL``, ``REPEATED`` as ``ARRAY<...>`` and
        ``RECORD`` as ``STRUCT<...>``, e.g.
        ``image_name STRING NOT NULL, classifications ARRAY<STRUCT<label STRING NOT NULL,
        confidence FLOAT64 NOT NULL>>, note STRING``.
        """
        return ", ".join(_describe_field(f) for f in self.fields)


def _describe_field(f: SchemaField) -> str:
    if f.field_type == "RECORD":
        base = "STRUCT<" + ", ".join(_describe_field(c) for c in f.fields) + ">"
    else:
        base = f.field_type
    if f.mode == "REPEATED":
        return f"{f.name} ARRAY<{base}>"
    if f.mode == "REQUIRED":
        return f"{f.name} {base} NOT NULL"
    return f"{f.name} {base}"


# --------------------------------------------------------------------------------------
# Dataclass -> schema
# --------------------------------------------------------------------------------------

_SCALAR_TYPES: dict[type, FieldType] = {
    str: "STRING",
    int: "INT64",
    float: "FLOAT64",
    bool: "BOOL",
    bytes: "BYTES",
    datetime.datetime: "TIMESTAMP",
    datetime.date: "DATE",
}

_SUPPORTED = (
    "str, int, float, bool, bytes, datetime.datetime, datetime.date, a nested "
    "@dataclass, Optional[X] / X | None, and list[X] / Sequence[X] / tuple[X, ...] of "
    "any of those"
)

# https://cloud.google.com/bigquery/docs/schemas#column_names
_COLUMN_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,299}")
_RESERVED_PREFIXES = (
    "_TABLE_",
    "_FILE_",
    "_PARTITION",
    "_ROW_TIMESTAMP",
    "__ROOT__",
    "_COLON_",
)

_SEQUENCE_ORIGINS: tuple[Any, ...] = (list, tuple, collections.abc.Sequence)
_MAPPING_ORIGINS: tuple[Any, ...] = (
    dict,
    collections.abc.Mapping,
    collections.abc.MutableMapping,
    collections.OrderedDict,
    collections.defaultdict,
)


@dataclasses.dataclass(frozen=True)
class _Ctx:
    """Where in the row dataclass a field is being mapped (for error messages)."""

    root: type
    owner: type
    path: tuple[str, ...]
    annotation: Any
    stack: tuple[type, ...]


def schema_from_dataclass(row_type: type) -> TableSchema:
    """Derive the table schema of a row dataclass.

    Type hints are resolved with ``typing.get_type_hints(..., include_extras=True)``, so
    ``from __future__ import annotations`` and string annotations work when the names
    they use are importable from the dataclass's module. Columns come in dataclass field
    order. See the module docstring for the mapping. ``Optional[list[X]]`` is
    ``REPEATED`` (BigQuery has no nullable arrays; :func:`row_to_record` writes ``None``
    as ``[]``). Results are cached per type, so calling this per batch is cheap.

    Args:
        row_type: A class decorated with ``@dataclasses.dataclass``.

    Returns:
        The schema, with ``row_type`` set.

    Raises:
        SchemaError: ``row_type`` is not a dataclass or has no fields; a field's
            annotation cannot be mapped (``dict``, ``Any``, a union of two non-None
            types, an unparameterised ``list``, a list of lists, a list of Optional, a
            fixed-length tuple, ...); the dataclasses refer to each other in a cycle; a
            field name is not a valid BigQuery column name; or two names differ only in
            case. The message names the dataclass and field and says how to fix it.
    """
    if not (isinstance(row_type, type) and dataclasses.is_dataclass(row_type)):
        if dataclasses.is_dataclass(row_type):
            raise SchemaError(
                f"schema_from_dataclass expects a dataclass class, got the instance "
                f"{_short_repr(row_type)}; pass type(row) or the class itself."
            )
        raise SchemaError(
            f"{row_type!r} is not a dataclass, so it cannot describe a table schema; "
            "decorate it with @dataclasses.dataclass (its fields become the columns)."
        )
    return _schema_from_dataclass_cached(row_type)


@functools.lru_cache(maxsize=1024)
def _schema_from_dataclass_cached(row_type: type) -> TableSchema:
    fields = _record_fields(row_type, root=row_type, path=(), stack=(row_type,))
    return TableSchema(fields=fields, row_type=row_type)


def _record_fields(
    tp: type, *, root: type, path: tuple[str, ...], stack: tuple[type, ...]
) -> tuple[SchemaField, ...]:
    where = ".".join((root.__qualname__, *path))
    nested = "" if tp is root else f" (dataclass {tp.__qualname__})"
    try:
        hints = typing.get_type_hints(tp, include_extras=True)
    except Exception as exc:  # NameError, TypeError from a bad string annotation, ...
        raise SchemaError(
            f"cannot resolve the type hints of {where}{nested}: {type(exc).__name__}: "
            f"{exc}. Every name used in an annotation must be importable from the "
            f"module {tp.__module__!r}; define the classes it refers to at module level "
            "(with `from __future__ import annotations`, classes defined inside a "
            "function cannot be resolved)."
        ) from exc

    dc_fields = dataclasses.fields(tp)
    if not dc_fields:
        raise SchemaError(
            f"{where}{nested} is a dataclass with no fields, and a BigQuery table or "
            "RECORD needs at least one column; add a field, or remove it from the row."
        )

    out: list[SchemaField] = []
    seen: dict[str, str] = {}
    for f in dc_fields:
        field_path = (*path, f.name)
        field_where = ".".join((root.__qualname__, *field_path))
        _check_column_name(f.name, field_where, nested)
        previous = seen.get(f.name.lower())
        if previous is not None:
            raise SchemaError(
                f"{where}{nested}: fields {previous!r} and {f.name!r} differ only in case, "
                "but BigQuery column names are case-insensitive; rename one of them."
            )
        seen[f.name.lower()] = f.name

        description = f.metadata.get("description") if f.metadata else None
        if description is not None and not isinstance(description, str):
            raise SchemaError(
                f"{field_where}: metadata['description'] must be a str, got "
                f"{_short_repr(description)}; use "
                "dataclasses.field(metadata={'description': '...'})."
            )
        ctx = _Ctx(root=root, owner=tp, path=field_path, annotation=hints[f.name], stack=stack)
        out.append(_field_from_annotation(f.name, hints[f.name], description, ctx))
    return tuple(out)


def _check_column_name(name: str, where: str, nested: str) -> None:
    if _COLUMN_NAME_RE.fullmatch(name) is None:
        raise SchemaError(
            f"{where}{nested}: {name!r} is not a valid BigQuery column name; a name must "
            "match [A-Za-z_][A-Za-z0-9_]{0,299} (ASCII letters, digits and underscores, "
            "not starting with a digit, at most 300 characters). Rename the field."
        )
    upper = name.upper()
    for prefix in _RESERVED_PREFIXES:
        if upper.startswith(prefix):
            raise SchemaError(
                f"{where}{nested}: column name {name!r} starts with the prefix {prefix!r}, "
                f"which BigQuery reserves (reserved: {', '.join(_RESERVED_PREFIXES)}). "
                "Rename the field."
            )


def _field_error(ctx: _Ctx, problem: str, fix: str) -> SchemaError:
    where = ".".join((ctx.root.__qualname__, *ctx.path))
    nested = "" if ctx.owner is ctx.root else f" (in dataclass {ctx.owner.__qualname__})"
    return SchemaError(
        f"cannot map field {where}{nested} with annotation {ctx.annotation!r} to a "
        f"BigQuery column: {problem}. To fix it, {fix}. Supported annotations: "
        f"{_SUPPORTED}."
    )


def _strip(tp: Any) -> Any:
    """Look through ``Annotated[X, ...]`` and ``NewType`` wrappers."""
    while True:
        if typing.get_origin(tp) is typing.Annotated:
            tp = typing.get_args(tp)[0]
        elif isinstance(tp, typing.NewType):
            tp = tp.__supertype__
        else:
            return tp


def _is_union(tp: Any) -> bool:
    origin = typing.get_origin(tp)
    return origin is typing.Union or origin is types.UnionType


def _sequence_item(tp: Any, ctx: _Ctx) -> Any | None:
    """Return X when ``tp`` is a supported sequence of X, None when it is no sequence."""
    origin = typing.get_origin(tp)
    if tp in _SEQUENCE_ORIGINS or (origin in _SEQUENCE_ORIGINS and not typing.get_args(tp)):
        raise _field_error(
            ctx,
            f"{tp!r} does not say what the array holds",
            "parameterise it, e.g. list[str] or list[float]",
        )
    if origin not in _SEQUENCE_ORIGINS:
        return None
    args = typing.get_args(tp)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return args[0]
        raise _field_error(
            ctx,
            f"{tp!r} is a fixed-length tuple, and BigQuery has no tuple type",
            "use tuple[X, ...] or list[X] for an array of one type, or a nested "
            "@dataclass (a RECORD) for named positions",
        )
    return args[0]


def _field_from_annotation(name: str, annotation: Any, description: str | None, ctx: _Ctx) -> SchemaField:
    tp = _strip(annotation)
    nullable = False
    while _is_union(tp):
        args = typing.get_args(tp)
        non_none = [a for a in args if a is not type(None)]
        if len(non_none) != 1:
            raise _field_error(
                ctx,
                f"the union {tp!r} has {len(non_none)} non-None types, but a column has exactly one type",
                "pick one type (Optional[X] is fine), or split the value into one Optional field per type",
            )
        nullable = nullable or len(non_none) < len(args)
        tp = _strip(non_none[0])

    item = _sequence_item(tp, ctx)
    if item is not None:
        item = _strip(item)
        if _is_union(item):
            if type(None) in typing.get_args(item):
                raise _field_error(
                    ctx,
                    f"the array items are {item!r}, but BigQuery arrays cannot hold NULL",
                    "make the items non-optional (drop None items before returning the "
                    "row), or wrap the item in a @dataclass with an Optional field",
                )
            raise _field_error(
                ctx,
                f"the array items are the union {item!r}, but an array holds one type",
                "pick one item type",
            )
        if _sequence_item(item, ctx) is not None:
            raise _field_error(
                ctx,
                f"the array items are themselves arrays ({item!r}), but BigQuery has no nested arrays",
                "wrap the inner list in a dataclass, e.g. `@dataclass class Inner: "
                "values: list[X]` and annotate the field list[Inner]",
            )
        field_type, sub = _element_type(item, ctx)
        return SchemaField(name, field_type, "REPEATED", sub, description)

    field_type, sub = _element_type(tp, ctx)
    return SchemaField(name, field_type, "NULLABLE" if nullable else "REQUIRED", sub, description)


def _element_type(tp: Any, ctx: _Ctx) -> tuple[FieldType, tuple[SchemaField, ...]]:
    """Map a non-union, non-sequence annotation to (type, RECORD sub-fields)."""
    if isinstance(tp, type):
        if dataclasses.is_dataclass(tp):
            if tp in ctx.stack:
                cycle = " -> ".join(t.__qualname__ for t in (*ctx.stack, tp))
                raise _field_error(
                    ctx,
                    f"the dataclasses refer to each other in a cycle ({cycle}), and a "
                    "BigQuery schema must be a finite tree",
                    "break the cycle: store the nested value as a str field holding JSON, "
                    "or reference it by an id column",
                )
            sub = _record_fields(tp, root=ctx.root, path=ctx.path, stack=(*ctx.stack, tp))
            return "RECORD", sub
        for base in tp.__mro__:  # bool before int, datetime before date
            mapped = _SCALAR_TYPES.get(base)
            if mapped is not None:
                return mapped, ()

    origin = typing.get_origin(tp)
    if tp in _MAPPING_ORIGINS or origin in _MAPPING_ORIGINS:
        raise _field_error(
            ctx,
            f"{tp!r} is a mapping, and BigQuery has no map type",
            "use a nested @dataclass (a RECORD) for a fixed set of keys, a list of "
            "key/value dataclasses for open keys, or a str field holding JSON",
        )
    if tp is Any or tp is object:
        raise _field_error(
            ctx,
            f"{tp!r} says nothing about the column type",
            "annotate the field with a concrete type",
        )
    if tp is type(None):
        raise _field_error(ctx, "the annotation is only None", "annotate the field with Optional[X]")
    if origin is not None and isinstance(origin, type) and dataclasses.is_dataclass(origin):
        raise _field_error(
            ctx,
            f"{tp!r} is a parameterised generic dataclass",
            "use a non-generic @dataclass with concrete field types",
        )
    raise _field_error(
        ctx,
        f"{tp!r} is not a supported type",
        "annotate it with one of the supported types (for an enum, store its .value as "
        "str or int, or give the enum a str or int mixin)",
    )


# --------------------------------------------------------------------------------------
# Row -> record
# --------------------------------------------------------------------------------------

_Convert = Callable[[Any], Any]

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
_UTC = datetime.UTC
_REPR_LIMIT = 80


class _InvalidValueError(Exception):
    """Internal: a value did not validate. ``path`` is built innermost-first."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        self.path: list[str] = []


def _short_repr(value: object) -> str:
    r = repr(value)
    return r if len(r) <= _REPR_LIMIT else r[: _REPR_LIMIT - 3] + "..."


def _type_name(value: object) -> str:
    t = type(value)
    return t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


def _invalid(expected: str, value: object) -> _InvalidValueError:
    if value is None:
        return _InvalidValueError(
            f"is REQUIRED (NOT NULL) but got None; expected {expected}. Set a value, or "
            "annotate the field Optional[...] to allow NULL"
        )
    return _InvalidValueError(f"expected {expected}, got {_short_repr(value)} of type {_type_name(value)}")


def _numpy() -> Any:
    # numpy values can only exist if numpy was imported, so never import it here.
    return sys.modules.get("numpy")


_EXPECT_STRING = "STRING (a str; a datetime or date is written as ISO 8601)"
_EXPECT_INT64 = "INT64 (an int or numpy integer, not bool)"
_EXPECT_FLOAT64 = "FLOAT64 (a float, int or numpy number, not bool)"
_EXPECT_BOOL = "BOOL (a bool or numpy.bool_)"
_EXPECT_BYTES = "BYTES (bytes, bytearray or memoryview)"
_EXPECT_TIMESTAMP = "TIMESTAMP (a datetime.datetime; naive values are taken as UTC)"
_EXPECT_DATE = "DATE (a datetime.date)"


def _to_string(v: Any) -> Any:
    if type(v) is str:
        return v
    if isinstance(v, str):
        return str.__str__(v)  # plain str of a subclass (str-mixin Enum, numpy.str_)
    if isinstance(v, datetime.date):  # also datetime.datetime
        return v.isoformat()
    raise _invalid(_EXPECT_STRING, v)


def _check_int64(i: int, v: Any) -> int:
    if _INT64_MIN <= i <= _INT64_MAX:
        return i
    raise _InvalidValueError(
        f"expected INT64, got {_short_repr(v)} of type {_type_name(v)}, which is outside "
        "the INT64 range [-2**63, 2**63 - 1]; use FLOAT64 (float) or STRING (str) for "
        "larger numbers"
    )


def _to_int64(v: Any) -> Any:
    if type(v) is int:
        return _check_int64(v, v)
    np = _numpy()
    if isinstance(v, bool) or (np is not None and isinstance(v, np.bool_)):
        raise _invalid(_EXPECT_INT64, v)
    try:
        i = operator.index(v)  # int subclasses (IntEnum), numpy integers
    except TypeError:
        raise _invalid(_EXPECT_INT64, v) from None
    return _check_int64(i, v)


def _to_float64(v: Any) -> Any:
    if type(v) is float:
        return v  # NaN and +-inf included: BigQuery accepts them
    if isinstance(v, bool):
        raise _invalid(_EXPECT_FLOAT64, v)
    if isinstance(v, (int, float)):  # int, int/float subclasses, numpy.float64
        try:
            return float(v)
        except OverflowError:
            raise _InvalidValueError(
                f"expected FLOAT64, got {_short_repr(v)} of type {_type_name(v)}, which "
                "is too large for a float"
            ) from None
    np = _numpy()
    if np is not None and isinstance(v, (np.floating, np.integer)):
        return float(v)
    raise _invalid(_EXPECT_FLOAT64, v)


def _to_bool(v: Any) -> Any:
    if type(v) is bool:
        return v
    np = _numpy()
    if np is not None and isinstance(v, np.bool_):
        return bool(v)
    raise _invalid(_EXPECT_BOOL, v)


def _to_bytes(v: Any) -> Any:
    if type(v) is bytes:
        return v
    if isinstance(v, (bytes, bytearray, memoryview)):
        return bytes(v)
    raise _invalid(_EXPECT_BYTES, v)


def _to_timestamp(v: Any) -> Any:
    if isinstance(v, datetime.datetime):
        if v.tzinfo is None or v.utcoffset() is None:
            return v.replace(tzinfo=_UTC)
        return v.astimezone(_UTC)
    raise _invalid(_EXPECT_TIMESTAMP, v)


def _to_date(v: Any) -> Any:
    if type(v) is datetime.date:
        return v
    if isinstance(v, datetime.datetime):
        raise _InvalidValueError(
            f"expected DATE (a datetime.date), got the datetime {_short_repr(v)}; a "
            "datetime is not silently truncated, because its date depends on the time "
            "zone: pass value.date() (after .astimezone(tz) for the zone you mean), or "
            "annotate the field datetime.datetime for a TIMESTAMP column"
        )
    if isinstance(v, datetime.date):
        return v
    raise _invalid(_EXPECT_DATE, v)


_SCALAR_CONVERTERS: dict[str, _Convert] = {
    "STRING": _to_string,
    "INT64": _to_int64,
    "FLOAT64": _to_float64,
    "BOOL": _to_bool,
    "BYTES": _to_bytes,
    "TIMESTAMP": _to_timestamp,
    "DATE": _to_date,
}


def _nullable(convert: _Convert) -> _Convert:
    def convert_nullable(v: Any) -> Any:
        if v is None:
            return None
        return convert(v)

    return convert_nullable


def _repeated(convert: _Convert, field_type: str) -> _Convert:
    expected = f"ARRAY<{field_type}> (a list, tuple or 1-D numpy array; None is written as [])"
    native_float = field_type == "FLOAT64"

    def convert_repeated(v: Any) -> Any:
        if type(v) is list or isinstance(v, (list, tuple)):
            items = v
        elif v is None:
            return []
        else:
            np = _numpy()
            if np is not None and isinstance(v, np.ndarray) and v.ndim == 1:
                items = v.tolist()  # plain Python scalars, converted faster below
                if native_float and v.dtype.kind == "f":
                    return items  # already Python floats (NaN/inf allowed): skip the loop
            else:
                raise _invalid(expected, v)
        try:
            return [convert(x) for x in items]
        except _InvalidValueError:
            pass
        # Slow path, only on failure: find the first bad item to report its index.
        for i, x in enumerate(items):
            if x is None:
                err = _InvalidValueError(
                    "an array item is None, but BigQuery arrays cannot hold NULL; drop "
                    "None items before returning the row"
                )
                err.path.append(f"[{i}]")
                raise err
            try:
                convert(x)
            except _InvalidValueError as exc:
                exc.path.append(f"[{i}]")
                raise
        raise AssertionError("unreachable: an item failed, then passed")

    return convert_repeated


def _record(fields: tuple[SchemaField, ...]) -> _Convert:
    converters = tuple((f.name, _field_converter(f)) for f in fields)
    names = frozenset(f.name for f in fields)
    expected_names = ", ".join(repr(f.name) for f in fields)
    expected = f"RECORD (a dataclass instance or a mapping with keys {expected_names})"
    # Dataclass types already checked to have exactly the expected field names.
    known_types: set[type] = set()

    def from_object(v: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, convert in converters:
            try:
                out[name] = convert(getattr(v, name))
            except _InvalidValueError as exc:
                exc.path.append(name)
                raise
        return out

    def convert_record(v: Any) -> Any:
        if type(v) in known_types:
            return from_object(v)
        if isinstance(v, Mapping):
            if not v.keys() <= names:
                unknown = sorted(str(k) for k in v.keys() - names)
                raise _InvalidValueError(
                    f"unknown keys {unknown}; expected only {expected_names} (a missing key is taken as None)"
                )
            out: dict[str, Any] = {}
            get = v.get
            for name, convert in converters:
                try:
                    out[name] = convert(get(name))
                except _InvalidValueError as exc:
                    exc.path.append(name)
                    raise
            return out
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            have = {f.name for f in dataclasses.fields(v)}
            if have != names:
                raise _InvalidValueError(
                    f"the {type(v).__qualname__} instance has fields {sorted(have)}, but "
                    f"the schema expects {sorted(names)} (missing: "
                    f"{sorted(names - have)}, unknown: {sorted(have - names)}); return "
                    "the row dataclass the schema was derived from"
                )
            known_types.add(type(v))
            return from_object(v)
        raise _invalid(expected, v)

    return convert_record


def _field_converter(f: SchemaField) -> _Convert:
    base = _record(f.fields) if f.field_type == "RECORD" else _SCALAR_CONVERTERS[f.field_type]
    if f.mode == "REPEATED":
        return _repeated(base, "STRUCT" if f.field_type == "RECORD" else f.field_type)
    if f.mode == "NULLABLE":
        return _nullable(base)
    return base  # REQUIRED: every converter rejects None


@functools.lru_cache(maxsize=256)
def _compile(fields: tuple[SchemaField, ...]) -> _Convert:
    return _record(fields)


# id(schema) -> (schema, converter): skips hashing the whole schema tree on every row.
# Holding the schema keeps its id from being reused by another object.
_CONVERTERS_BY_ID: dict[int, tuple[TableSchema, _Convert]] = {}
_CONVERTERS_BY_ID_MAX = 1024


def _converter_for(schema: TableSchema) -> _Convert:
    entry = _CONVERTERS_BY_ID.get(id(schema))
    if entry is not None and entry[0] is schema:
        return entry[1]
    convert = _compile(schema.fields)
    if len(_CONVERTERS_BY_ID) >= _CONVERTERS_BY_ID_MAX:
        _CONVERTERS_BY_ID.clear()
    _CONVERTERS_BY_ID[id(schema)] = (schema, convert)
    return convert


def row_to_record(row: object, schema: TableSchema) -> dict[str, Any]:
    """Validate one row against ``schema`` and convert it to a plain dict for a sink.

    The converter for a schema is built once and cached, so this is cheap per row.

    Args:
        row: A dataclass instance with exactly the schema's fields, or a mapping whose
            keys are column names (a missing key is taken as ``None``; unknown keys are
            an error). RECORD values may likewise be dataclass instances or mappings.
        schema: The table schema, usually from :func:`schema_from_dataclass`.

    Returns:
        ``{column: value}`` in schema order, where each value is:

        * STRING: ``str``. A ``datetime`` or ``date`` is accepted too and written with
          ``isoformat()`` (lenient, for rows like ``upload: str`` filled with a
          timestamp). Other types are rejected, never ``str()``-ed.
        * INT64: ``int`` (int, ``IntEnum``, numpy integers via ``operator.index``; not
          ``bool``), within ``[-2**63, 2**63 - 1]``.
        * FLOAT64: ``float`` (float, int, numpy floating or integer; not ``bool``).
          NaN and infinities pass through, as BigQuery accepts them.
        * BOOL: ``bool`` (bool or ``numpy.bool_``; not 0/1).
        * BYTES: ``bytes`` (from bytes, bytearray or memoryview).
        * TIMESTAMP: a UTC-aware ``datetime``: a naive datetime is taken to be UTC
          (``tzinfo=timezone.utc`` attached, clock unchanged); an aware one is converted
          to UTC. A ``date`` is rejected.
        * DATE: ``datetime.date``. A ``datetime`` is rejected rather than truncated,
          since its date depends on the time zone: pass ``value.date()``.
        * RECORD: a nested dict, converted the same way.
        * REPEATED: a ``list`` (from a list, tuple or 1-D numpy array; ``None`` gives
          ``[]``). Items may not be ``None``.
        * NULLABLE ``None``: ``None``. REQUIRED ``None`` is an error.

    Raises:
        RowValidationError: a value does not fit its column. The message gives the full
            path (e.g. ``classifications[2].confidence``), the expected type, the value
            with ``!r`` (truncated to 80 characters) and its Python type.
    """
    convert = _converter_for(schema)
    try:
        return cast(dict[str, Any], convert(row))
    except _InvalidValueError as exc:
        label = schema.row_type.__qualname__ if schema.row_type is not None else "row"
        path = "".join(
            seg if seg.startswith("[") or i == 0 else "." + seg for i, seg in enumerate(reversed(exc.path))
        )
        where = f"field {path!r}" if path else "the row itself"
        raise RowValidationError(f"invalid {label}: {where} {exc.message}.") from None


# --------------------------------------------------------------------------------------
# Schema diff
# --------------------------------------------------------------------------------------

DifferenceKind = Literal["missing_in_existing", "extra_in_existing", "type_changed", "mode_changed"]


@dataclasses.dataclass(frozen=True)
class SchemaDifference:
    """One difference between a declared schema and an existing table's schema.

    Attributes:
        path: Dotted path of the field, e.g. ``"classifications.confidence"``.
        kind: ``"missing_in_existing"`` (declared, not in the table),
            ``"extra_in_existing"`` (in the table, not declared), ``"type_changed"`` or
            ``"mode_changed"``.
        declared: ``"TYPE MODE"`` of the declared field (e.g. ``"FLOAT64 REQUIRED"``),
            or ``None`` for ``extra_in_existing``.
        existing: ``"TYPE MODE"`` of the table's field, or ``None`` for
            ``missing_in_existing``.
    """

    path: str
    kind: DifferenceKind
    declared: str | None
    existing: str | None

    def is_compatible_update(self) -> bool:
        """Return True when BigQuery can apply this change to the table in place.

        That is adding a ``NULLABLE`` or ``REPEATED`` field (``missing_in_existing``
        with a declared mode other than ``REQUIRED``), or relaxing a ``REQUIRED`` field
        to ``NULLABLE``. Every other difference is a conflict (see BigQuery's "Modifying
        table schemas": columns can be added and relaxed, not retyped or tightened).
        """
        declared_mode = _mode_of(self.declared)
        if self.kind == "missing_in_existing":
            return declared_mode is not None and declared_mode != "REQUIRED"
        if self.kind == "mode_changed":
            return _mode_of(self.existing) == "REQUIRED" and declared_mode == "NULLABLE"
        return False

    def __str__(self) -> str:
        where = f"field {self.path!r}"
        if self.kind == "missing_in_existing":
            return f"{where}: declared {self.declared}, table has no such field"
        if self.kind == "extra_in_existing":
            return f"{where}: not declared, table has {self.existing}"
        return f"{where}: declared {self.declared}, table has {self.existing}"


def _mode_of(type_mode: str | None) -> str | None:
    return None if type_mode is None else type_mode.rsplit(" ", 1)[-1]


def _type_mode(f: SchemaField) -> str:
    return f"{f.field_type} {f.mode}"


def diff_schemas(declared: TableSchema, existing: TableSchema) -> list[SchemaDifference]:
    """Compare a declared schema with an existing table's schema.

    Fields are matched by name case-insensitively (BigQuery column names are
    case-insensitive), recursively inside RECORDs of the same type. A field whose type
    differs gives one ``type_changed`` (its sub-fields are not compared); otherwise a
    mode difference gives ``mode_changed``. Descriptions and column order are ignored.

    Args:
        declared: The schema the code wants, e.g. from :func:`schema_from_dataclass`.
        existing: The table's current schema, e.g. from :meth:`TableSchema.from_api_repr`.

    Returns:
        The differences, declared fields first (in declared order, depth first), then
        each level's extra existing fields; empty when the schemas match.
    """
    out: list[SchemaDifference] = []
    _diff_fields(declared.fields, existing.fields, "", out)
    return out


def _diff_fields(
    declared: tuple[SchemaField, ...],
    existing: tuple[SchemaField, ...],
    prefix: str,
    out: list[SchemaDifference],
) -> None:
    existing_by_key = {f.name.lower(): f for f in existing}
    declared_keys = set()
    for d in declared:
        key = d.name.lower()
        declared_keys.add(key)
        path = prefix + d.name
        e = existing_by_key.get(key)
        if e is None:
            out.append(SchemaDifference(path, "missing_in_existing", _type_mode(d), None))
            continue
        if d.field_type != e.field_type:
            out.append(SchemaDifference(path, "type_changed", _type_mode(d), _type_mode(e)))
            continue
        if d.mode != e.mode:
            out.append(SchemaDifference(path, "mode_changed", _type_mode(d), _type_mode(e)))
        if d.field_type == "RECORD":
            _diff_fields(d.fields, e.fields, path + ".", out)
    for e in existing:
        if e.name.lower() not in declared_keys:
            out.append(SchemaDifference(prefix + e.name, "extra_in_existing", None, _type_mode(e)))


def to_json(value: Any) -> Any:
    """A row value (as :func:`row_to_record` gives it) as JSON-ready data, the way BigQuery's
    JSON API and PostgreSQL's ``jsonb`` take it: TIMESTAMP and DATE as ISO 8601 strings, BYTES
    as base64, RECORD (dict) and REPEATED (list) values recursively; anything else as is."""
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_json(v) for v in value]
    if isinstance(value, datetime.datetime | datetime.date):
        return value.isoformat()
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(value).decode("ascii")
    return value
