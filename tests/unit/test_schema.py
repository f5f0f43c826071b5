"""Unit tests for buildflow.schema: dataclass -> schema, row -> record, schema diffs.

This module uses ``from __future__ import annotations`` on purpose: every dataclass
below has string annotations, which ``schema_from_dataclass`` must resolve.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import math
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, NewType, Optional, Union

import numpy as np
import pytest

from buildflow.errors import BuildflowError, RowValidationError, SchemaError
from buildflow.schema import (
    SchemaDifference,
    SchemaField,
    TableSchema,
    diff_schemas,
    row_to_record,
    schema_from_dataclass,
)

UTC = datetime.timezone.utc  # noqa: UP017 (explicit for readers)

# --------------------------------------------------------------------------------------
# Row dataclasses (module level, so string annotations resolve)
# --------------------------------------------------------------------------------------


@dataclass
class Scalars:
    s: str
    i: int
    f: float
    b: bool
    raw: bytes
    ts: datetime.datetime
    d: datetime.date


@dataclass
class Nullables:
    a: Optional[int]  # noqa: UP045 (testing the typing.Optional spelling)
    b: str | None
    c: Union[float, None]  # noqa: UP007 (testing the typing.Union spelling)
    d: None | bool


@dataclass
class Repeateds:
    a: list[int]
    b: typing.List[str]  # noqa: UP006 (testing the typing.List spelling)
    c: typing.Sequence[float]
    d: Sequence[bytes]
    e: tuple[bool, ...]
    f: Optional[list[int]]  # noqa: UP045
    g: list[str] | None


@dataclass
class Classification:
    label: str
    confidence: float


@dataclass
class Box:
    x: int
    y: int


@dataclass
class ImageRow:
    image_name: str
    classifications: list[Classification]
    upload: datetime.datetime
    box: Optional[Box] = None  # noqa: UP045
    tags: list[str] = field(default_factory=list)
    note: str | None = None


Meters = NewType("Meters", float)


class Color(str, enum.Enum):  # noqa: UP042 (str() of this gives "Color.RED")
    RED = "red"


class Level(enum.IntEnum):
    LOW = 1


@dataclass
class Wrapped:
    a: Annotated[int, "some metadata"]
    b: Annotated[Optional[str], "x"]  # noqa: UP045
    c: Optional[Annotated[list[Annotated[float, "y"]], "z"]]  # noqa: UP045
    d: Meters
    e: Color
    f: Level
    described: str = field(default="", metadata={"description": "A described column."})


@dataclass
class Node:
    name: str
    children: list[Node]


@dataclass
class Ping:
    pong: Optional[Pong]  # noqa: UP045


@dataclass
class Pong:
    ping: Ping


@dataclass
class Empty:
    pass


@dataclass
class HasEmpty:
    inner: Empty


@dataclass
class Inner:
    value: float


@dataclass
class Outer:
    items: list[Middle]


@dataclass
class Middle:
    inner: Inner
    weights: list[float]


# --------------------------------------------------------------------------------------
# schema_from_dataclass: mapping
# --------------------------------------------------------------------------------------


def test_scalar_types_map_to_bigquery_types_and_are_required() -> None:
    schema = schema_from_dataclass(Scalars)
    assert [(f.name, f.field_type, f.mode) for f in schema.fields] == [
        ("s", "STRING", "REQUIRED"),
        ("i", "INT64", "REQUIRED"),
        ("f", "FLOAT64", "REQUIRED"),
        ("b", "BOOL", "REQUIRED"),
        ("raw", "BYTES", "REQUIRED"),
        ("ts", "TIMESTAMP", "REQUIRED"),
        ("d", "DATE", "REQUIRED"),
    ]
    assert schema.row_type is Scalars
    assert schema.field_names() == ("s", "i", "f", "b", "raw", "ts", "d")


def test_optional_spellings_map_to_nullable() -> None:
    schema = schema_from_dataclass(Nullables)
    assert [(f.field_type, f.mode) for f in schema.fields] == [
        ("INT64", "NULLABLE"),
        ("STRING", "NULLABLE"),
        ("FLOAT64", "NULLABLE"),
        ("BOOL", "NULLABLE"),
    ]


def test_sequence_spellings_map_to_repeated_and_optional_list_is_repeated() -> None:
    schema = schema_from_dataclass(Repeateds)
    assert [(f.name, f.field_type, f.mode) for f in schema.fields] == [
        ("a", "INT64", "REPEATED"),
        ("b", "STRING", "REPEATED"),
        ("c", "FLOAT64", "REPEATED"),
        ("d", "BYTES", "REPEATED"),
        ("e", "BOOL", "REPEATED"),
        ("f", "INT64", "REPEATED"),
        ("g", "STRING", "REPEATED"),
    ]


def test_nested_dataclasses_map_to_records_in_field_order() -> None:
    schema = schema_from_dataclass(ImageRow)
    assert schema.fields == (
        SchemaField("image_name", "STRING"),
        SchemaField(
            "classifications",
            "RECORD",
            "REPEATED",
            (SchemaField("label", "STRING"), SchemaField("confidence", "FLOAT64")),
        ),
        SchemaField("upload", "TIMESTAMP"),
        SchemaField(
            "box",
            "RECORD",
            "NULLABLE",
            (SchemaField("x", "INT64"), SchemaField("y", "INT64")),
        ),
        SchemaField("tags", "STRING", "REPEATED"),
        SchemaField("note", "STRING", "NULLABLE"),
    )


def test_deeply_nested_records() -> None:
    schema = schema_from_dataclass(Outer)
    (items,) = schema.fields
    assert (items.field_type, items.mode) == ("RECORD", "REPEATED")
    inner, weights = items.fields
    assert inner == SchemaField("inner", "RECORD", "REQUIRED", (SchemaField("value", "FLOAT64"),))
    assert weights == SchemaField("weights", "FLOAT64", "REPEATED")


def test_annotated_newtype_enum_subclasses_and_description() -> None:
    schema = schema_from_dataclass(Wrapped)
    assert [(f.name, f.field_type, f.mode, f.description) for f in schema.fields] == [
        ("a", "INT64", "REQUIRED", None),
        ("b", "STRING", "NULLABLE", None),
        ("c", "FLOAT64", "REPEATED", None),
        ("d", "FLOAT64", "REQUIRED", None),
        ("e", "STRING", "REQUIRED", None),
        ("f", "INT64", "REQUIRED", None),
        ("described", "STRING", "REQUIRED", "A described column."),
    ]


def test_non_future_annotations_and_string_annotations() -> None:
    # Built without string annotations at all (real type objects), and with explicit
    # string annotations: both resolve the same way.
    real = dataclasses.make_dataclass("Real", [("a", int), ("b", Optional[str])])  # noqa: UP045
    strings = dataclasses.make_dataclass("Strings", [("a", "int"), ("b", "Optional[str]")])
    strings.__module__ = __name__
    assert schema_from_dataclass(real) == schema_from_dataclass(strings)
    assert schema_from_dataclass(real).describe() == "a INT64 NOT NULL, b STRING"


def test_results_are_cached_per_type() -> None:
    assert schema_from_dataclass(ImageRow) is schema_from_dataclass(ImageRow)


def test_table_schema_equality_ignores_row_type_and_is_hashable() -> None:
    from_type = schema_from_dataclass(Box)
    plain = TableSchema(fields=(SchemaField("x", "INT64"), SchemaField("y", "INT64")))
    assert from_type == plain
    assert hash(from_type) == hash(plain)
    assert plain.row_type is None


def test_describe_is_a_compact_ddl_line() -> None:
    assert schema_from_dataclass(ImageRow).describe() == (
        "image_name STRING NOT NULL, "
        "classifications ARRAY<STRUCT<label STRING NOT NULL, confidence FLOAT64 NOT NULL>>, "
        "upload TIMESTAMP NOT NULL, "
        "box STRUCT<x INT64 NOT NULL, y INT64 NOT NULL>, "
        "tags ARRAY<STRING>, "
        "note STRING"
    )


# --------------------------------------------------------------------------------------
# schema_from_dataclass: errors
# --------------------------------------------------------------------------------------


def _schema_error(row_type: Any) -> str:
    with pytest.raises(SchemaError) as info:
        schema_from_dataclass(row_type)
    assert isinstance(info.value, BuildflowError)
    return str(info.value)


def test_error_not_a_dataclass() -> None:
    class Plain:
        a: int

    message = _schema_error(Plain)
    assert "Plain" in message
    assert "decorate it with @dataclasses.dataclass" in message


def test_error_dataclass_instance_instead_of_class() -> None:
    message = _schema_error(Box(1, 2))
    assert "instance" in message
    assert "type(row)" in message


@dataclass
class ListOfLists:
    grid: list[list[int]]


@dataclass
class ListOfOptional:
    scores: list[Optional[float]]  # noqa: UP045


@dataclass
class HasDict:
    attrs: dict[str, str]


@dataclass
class HasBareDict:
    attrs: dict  # type: ignore[type-arg]


@dataclass
class HasAny:
    payload: Any


@dataclass
class HasUnion:
    value: int | str


@dataclass
class HasOptionalUnion:
    value: Optional[Union[int, str]]  # noqa: UP007, UP045


@dataclass
class HasBareList:
    tags: list  # type: ignore[type-arg]


@dataclass
class HasBareTypingList:
    tags: typing.List  # type: ignore[type-arg]  # noqa: UP006


@dataclass
class HasFixedTuple:
    point: tuple[int, int]


@dataclass
class HasSet:
    tags: set[str]


class PlainEnum(enum.Enum):
    A = 1


@dataclass
class HasNestedBad:
    classifications: list[BadClassification]


@dataclass
class BadClassification:
    label: str
    confidence: dict[str, float]


@pytest.mark.parametrize(
    ("row_type", "path", "annotation", "expected"),
    [
        (
            ListOfLists,
            "ListOfLists.grid",
            "list[list[int]]",
            "wrap the inner list in a dataclass",
        ),
        (ListOfOptional, "ListOfOptional.scores", "float", "arrays cannot hold NULL"),
        (HasDict, "HasDict.attrs", "dict[str, str]", "no map type"),
        (HasBareDict, "HasBareDict.attrs", "<class 'dict'>", "no map type"),
        (HasAny, "HasAny.payload", "typing.Any", "concrete type"),
        (HasUnion, "HasUnion.value", "int | str", "exactly one type"),
        (
            HasOptionalUnion,
            "HasOptionalUnion.value",
            "typing.Union",
            "exactly one type",
        ),
        (HasBareList, "HasBareList.tags", "<class 'list'>", "e.g. list[str]"),
        (HasBareTypingList, "HasBareTypingList.tags", "typing.List", "e.g. list[str]"),
        (HasFixedTuple, "HasFixedTuple.point", "tuple[int, int]", "tuple[X, ...]"),
        (HasSet, "HasSet.tags", "set[str]", "not a supported type"),
        (
            HasNestedBad,
            "HasNestedBad.classifications.confidence",
            "dict[str, float]",
            "(in dataclass BadClassification)",
        ),
    ],
)
def test_error_unsupported_annotations(row_type: type, path: str, annotation: str, expected: str) -> None:
    message = _schema_error(row_type)
    assert path in message
    assert annotation in message
    assert expected in message
    assert "To fix it" in message
    assert "Supported annotations: str, int, float" in message


def test_error_recursive_dataclass() -> None:
    message = _schema_error(Node)
    assert "Node.children" in message
    assert "Node -> Node" in message
    assert "cycle" in message


def test_error_mutually_recursive_dataclasses() -> None:
    message = _schema_error(Ping)
    assert "Ping.pong.ping" in message
    assert "Ping -> Pong -> Ping" in message


def test_error_dataclass_with_no_fields() -> None:
    assert "no fields" in _schema_error(Empty)
    message = _schema_error(HasEmpty)
    assert "HasEmpty.inner" in message
    assert "no fields" in message
    assert "add a field" in message


@dataclass
class BadName:
    naïve: int


@dataclass
class ReservedName:
    _partitiontime: int


@dataclass
class CaseClash:
    Name: str
    name: str


@dataclass
class NestedCaseClash:
    box: CaseClash


def test_error_invalid_column_names() -> None:
    message = _schema_error(BadName)
    assert "BadName.naïve" in message
    assert "[A-Za-z_][A-Za-z0-9_]{0,299}" in message
    assert "Rename the field" in message

    long_row = dataclasses.make_dataclass("LongName", [("a" * 301, int)])
    assert "not a valid BigQuery column name" in _schema_error(long_row)
    ok_row = dataclasses.make_dataclass("MaxName", [("a" * 300, int)])
    assert schema_from_dataclass(ok_row).field_names() == ("a" * 300,)

    message = _schema_error(ReservedName)
    assert "'_PARTITION'" in message
    assert "reserves" in message


def test_error_duplicate_names_case_insensitively() -> None:
    message = _schema_error(CaseClash)
    assert "'Name' and 'name'" in message
    assert "case-insensitive" in message
    assert "rename one" in message
    assert "NestedCaseClash.box" in _schema_error(NestedCaseClash)


def test_error_unresolvable_annotation() -> None:
    @dataclass
    class LocalInner:
        a: int

    @dataclass
    class LocalOuter:
        inner: LocalInner  # a string annotation naming a function-local class

    message = _schema_error(LocalOuter)
    assert "LocalOuter" in message
    assert "LocalInner" in message
    assert "module level" in message


def test_error_non_string_description() -> None:
    row = dataclasses.make_dataclass("Desc", [("a", int, field(metadata={"description": 3}))])
    message = _schema_error(row)
    assert "Desc.a" in message
    assert "description" in message


def test_error_plain_enum_is_unsupported() -> None:
    row = dataclasses.make_dataclass("HasEnum", [("e", PlainEnum)])
    message = _schema_error(row)
    assert "HasEnum.e" in message
    assert "for an enum" in message


# --------------------------------------------------------------------------------------
# SchemaField / TableSchema api_repr
# --------------------------------------------------------------------------------------


def test_field_to_api_repr_omits_empty_fields_and_description() -> None:
    assert SchemaField("a", "INT64").to_api_repr() == {
        "name": "a",
        "type": "INT64",
        "mode": "REQUIRED",
    }
    record = SchemaField("r", "RECORD", "REPEATED", (SchemaField("x", "BOOL"),), "doc")
    assert record.to_api_repr() == {
        "name": "r",
        "type": "RECORD",
        "mode": "REPEATED",
        "fields": [{"name": "x", "type": "BOOL", "mode": "REQUIRED"}],
        "description": "doc",
    }


def test_from_api_repr_normalises_legacy_names_and_default_mode() -> None:
    schema = TableSchema.from_api_repr(
        [
            {"name": "i", "type": "INTEGER"},
            {"name": "f", "type": "FLOAT", "mode": "REQUIRED"},
            {"name": "b", "type": "BOOLEAN", "mode": "repeated"},
            {
                "name": "s",
                "type": "STRUCT",
                "mode": "NULLABLE",
                "fields": [{"name": "t", "type": "timestamp", "policyTags": {}}],
                "description": "d",
            },
        ]
    )
    assert schema.fields == (
        SchemaField("i", "INT64", "NULLABLE"),
        SchemaField("f", "FLOAT64", "REQUIRED"),
        SchemaField("b", "BOOL", "REPEATED"),
        SchemaField("s", "RECORD", "NULLABLE", (SchemaField("t", "TIMESTAMP", "NULLABLE"),), "d"),
    )


def test_api_repr_round_trip() -> None:
    schema = schema_from_dataclass(Wrapped)
    assert TableSchema.from_api_repr(schema.to_api_repr()) == schema
    image = schema_from_dataclass(ImageRow)
    assert TableSchema.from_api_repr(image.to_api_repr()) == image


def test_from_api_repr_errors() -> None:
    with pytest.raises(SchemaError, match=r"'n'.*unsupported BigQuery type 'NUMERIC'"):
        SchemaField.from_api_repr({"name": "n", "type": "NUMERIC"})
    with pytest.raises(SchemaError, match="'name' and 'type'"):
        SchemaField.from_api_repr({"type": "STRING"})
    with pytest.raises(SchemaError, match="unsupported mode"):
        SchemaField.from_api_repr({"name": "n", "type": "STRING", "mode": "OPTIONAL"})


def test_schema_field_validation() -> None:
    with pytest.raises(SchemaError, match="unsupported type 'INT'"):
        SchemaField("a", "INT")  # type: ignore[arg-type]
    with pytest.raises(SchemaError, match="unsupported mode 'OPTIONAL'"):
        SchemaField("a", "INT64", "OPTIONAL")  # type: ignore[arg-type]
    with pytest.raises(SchemaError, match="needs at least one sub-field"):
        SchemaField("a", "RECORD")
    with pytest.raises(SchemaError, match="only a RECORD has sub-fields"):
        SchemaField("a", "STRING", fields=(SchemaField("b", "STRING"),))
    coerced = SchemaField("r", "RECORD", fields=[SchemaField("b", "STRING")])  # type: ignore[arg-type]
    assert isinstance(coerced.fields, tuple)
    hash(coerced)


# --------------------------------------------------------------------------------------
# row_to_record: happy paths
# --------------------------------------------------------------------------------------


def test_row_to_record_scalars() -> None:
    ts = datetime.datetime(2024, 5, 1, 12, 30, tzinfo=UTC)
    row = Scalars("x", 3, 1.5, True, b"\x00", ts, datetime.date(2024, 5, 1))
    assert row_to_record(row, schema_from_dataclass(Scalars)) == {
        "s": "x",
        "i": 3,
        "f": 1.5,
        "b": True,
        "raw": b"\x00",
        "ts": ts,
        "d": datetime.date(2024, 5, 1),
    }


def test_row_to_record_nested_and_repeated() -> None:
    row = ImageRow(
        image_name="cat.jpg",
        classifications=[Classification("cat", 0.9), Classification("dog", 0.1)],
        upload=datetime.datetime(2024, 1, 1, tzinfo=UTC),
        box=Box(1, 2),
        tags=["a"],
    )
    record = row_to_record(row, schema_from_dataclass(ImageRow))
    assert record == {
        "image_name": "cat.jpg",
        "classifications": [
            {"label": "cat", "confidence": 0.9},
            {"label": "dog", "confidence": 0.1},
        ],
        "upload": datetime.datetime(2024, 1, 1, tzinfo=UTC),
        "box": {"x": 1, "y": 2},
        "tags": ["a"],
        "note": None,
    }
    assert list(record) == list(schema_from_dataclass(ImageRow).field_names())


def test_row_to_record_accepts_mappings_and_missing_nullable_keys() -> None:
    schema = schema_from_dataclass(ImageRow)
    record = row_to_record(
        {
            "image_name": "a",
            "classifications": ({"label": "x", "confidence": 1},),
            "upload": datetime.datetime(2024, 1, 1, tzinfo=UTC),
        },
        schema,
    )
    assert record["classifications"] == [{"label": "x", "confidence": 1.0}]
    assert type(record["classifications"][0]["confidence"]) is float
    assert record["box"] is None
    assert record["tags"] == []
    assert record["note"] is None


def test_row_to_record_repeated_none_is_empty_list_and_tuple_is_list() -> None:
    schema = schema_from_dataclass(Repeateds)
    values: dict[str, Any] = {
        "a": (1, 2),
        "b": [],
        "c": [1.0],
        "d": [bytearray(b"x")],
        "e": (True,),
        "f": None,
        "g": None,
    }
    row = Repeateds(**values)
    record = row_to_record(row, schema)
    assert record == {
        "a": [1, 2],
        "b": [],
        "c": [1.0],
        "d": [b"x"],
        "e": [True],
        "f": [],
        "g": [],
    }
    assert type(record["d"][0]) is bytes


def test_row_to_record_lenient_conversions() -> None:
    schema = schema_from_dataclass(Wrapped)
    record = row_to_record(
        Wrapped(a=Level.LOW, b=None, c=None, d=Meters(2.0), e=Color.RED, f=Level.LOW),
        schema,
    )
    assert record == {
        "a": 1,
        "b": None,
        "c": [],
        "d": 2.0,
        "e": "red",
        "f": 1,
        "described": "",
    }
    assert type(record["a"]) is int
    assert type(record["e"]) is str


def test_string_column_accepts_datetime_and_date_as_iso_8601() -> None:
    schema = TableSchema((SchemaField("upload", "STRING"), SchemaField("day", "STRING")))
    record = row_to_record(
        {
            "upload": datetime.datetime(2024, 5, 1, 8, 0, 1),
            "day": datetime.date(2024, 5, 1),
        },
        schema,
    )
    assert record == {"upload": "2024-05-01T08:00:01", "day": "2024-05-01"}


def test_bytes_accepts_bytearray_and_memoryview() -> None:
    schema = TableSchema((SchemaField("a", "BYTES"), SchemaField("b", "BYTES")))
    record = row_to_record({"a": bytearray(b"ab"), "b": memoryview(b"cd")}, schema)
    assert record == {"a": b"ab", "b": b"cd"}
    assert type(record["a"]) is bytes
    assert type(record["b"]) is bytes


def test_float_accepts_int_nan_and_inf() -> None:
    schema = TableSchema(
        (
            SchemaField("a", "FLOAT64"),
            SchemaField("b", "FLOAT64"),
            SchemaField("c", "FLOAT64"),
        )
    )
    record = row_to_record({"a": 2, "b": math.nan, "c": -math.inf}, schema)
    assert record["a"] == 2.0
    assert type(record["a"]) is float
    assert math.isnan(record["b"])
    assert record["c"] == -math.inf


def test_int64_range_bounds_are_inclusive() -> None:
    schema = TableSchema((SchemaField("a", "INT64"), SchemaField("b", "INT64")))
    record = row_to_record({"a": -(2**63), "b": 2**63 - 1}, schema)
    assert record == {"a": -(2**63), "b": 2**63 - 1}


def test_naive_timestamp_is_taken_as_utc() -> None:
    schema = TableSchema((SchemaField("t", "TIMESTAMP"),))
    record = row_to_record({"t": datetime.datetime(2024, 5, 1, 12, 0)}, schema)
    assert record["t"] == datetime.datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    assert record["t"].tzinfo is UTC


def test_aware_timestamp_is_converted_to_utc() -> None:
    schema = TableSchema((SchemaField("t", "TIMESTAMP"),))
    plus_two = datetime.timezone(datetime.timedelta(hours=2))
    record = row_to_record({"t": datetime.datetime(2024, 5, 1, 12, 0, tzinfo=plus_two)}, schema)
    assert record["t"].tzinfo is UTC
    assert (record["t"].hour, record["t"].minute) == (10, 0)


def test_numpy_scalars_and_arrays() -> None:
    schema = TableSchema(
        (
            SchemaField("i", "INT64"),
            SchemaField("f", "FLOAT64"),
            SchemaField("g", "FLOAT64"),
            SchemaField("h", "FLOAT64"),
            SchemaField("b", "BOOL"),
            SchemaField("v", "FLOAT64", "REPEATED"),
            SchemaField("w", "INT64", "REPEATED"),
            SchemaField("s", "STRING"),
        )
    )
    record = row_to_record(
        {
            "i": np.int64(7),
            "f": np.float32(0.5),
            "g": np.float64(0.25),
            "h": np.int32(3),
            "b": np.bool_(True),
            "v": np.array([0.5, 1.5], dtype=np.float32),
            "w": [np.uint8(1), np.int16(2)],
            "s": np.str_("x"),
        },
        schema,
    )
    assert record == {
        "i": 7,
        "f": 0.5,
        "g": 0.25,
        "h": 3.0,
        "b": True,
        "v": [0.5, 1.5],
        "w": [1, 2],
        "s": "x",
    }
    assert [type(record[k]) for k in ("i", "f", "g", "h", "b", "s")] == [
        int,
        float,
        float,
        float,
        bool,
        str,
    ]
    assert [type(x) for x in record["v"] + record["w"]] == [float, float, int, int]


def test_converter_is_built_once_per_schema() -> None:
    from buildflow import schema as schema_module

    schema = schema_from_dataclass(Box)
    assert schema_module._converter_for(schema) is schema_module._converter_for(schema)
    equal = TableSchema(schema.fields)
    assert schema_module._converter_for(equal) is schema_module._converter_for(schema)


# --------------------------------------------------------------------------------------
# row_to_record: validation errors
# --------------------------------------------------------------------------------------


def _row_error(row: object, schema: TableSchema) -> str:
    with pytest.raises(RowValidationError) as info:
        row_to_record(row, schema)
    assert isinstance(info.value, BuildflowError)
    return str(info.value)


def _image_row(**changes: Any) -> ImageRow:
    row = ImageRow(
        image_name="cat.jpg",
        classifications=[Classification("a", 0.1), Classification("b", 0.2)],
        upload=datetime.datetime(2024, 1, 1, tzinfo=UTC),
    )
    return dataclasses.replace(row, **changes)


def test_error_path_into_repeated_record() -> None:
    row = _image_row(
        classifications=[
            Classification("a", 0.1),
            Classification("b", 0.2),
            Classification("c", "high"),  # type: ignore[arg-type]
        ]
    )
    message = _row_error(row, schema_from_dataclass(ImageRow))
    assert message.startswith("invalid ImageRow: field 'classifications[2].confidence'")
    assert "expected FLOAT64" in message
    assert "'high'" in message
    assert "of type str" in message


def test_error_required_none() -> None:
    message = _row_error(_image_row(image_name=None), schema_from_dataclass(ImageRow))
    assert "field 'image_name'" in message
    assert "REQUIRED" in message
    assert "Optional" in message


def test_error_required_record_none_in_array() -> None:
    row = _image_row(classifications=[Classification("a", 0.1), None])
    message = _row_error(row, schema_from_dataclass(ImageRow))
    assert "field 'classifications[1]'" in message
    assert "cannot hold NULL" in message


def test_error_none_in_scalar_array() -> None:
    message = _row_error(_image_row(tags=["a", None]), schema_from_dataclass(ImageRow))
    assert "field 'tags[1]'" in message
    assert "cannot hold NULL" in message


def test_error_string_is_not_an_array() -> None:
    message = _row_error(_image_row(tags="abc"), schema_from_dataclass(ImageRow))
    assert "field 'tags'" in message
    assert "ARRAY<STRING>" in message
    assert "'abc'" in message


def test_error_record_of_wrong_shape() -> None:
    schema = schema_from_dataclass(ImageRow)
    message = _row_error(_image_row(box=3), schema)
    assert "field 'box'" in message
    assert "expected RECORD" in message
    assert "of type int" in message

    message = _row_error(_image_row(box={"x": 1, "y": 2, "z": 3}), schema)
    assert "field 'box'" in message
    assert "unknown keys ['z']" in message

    message = _row_error(_image_row(box=Classification("a", 1.0)), schema)
    assert "field 'box'" in message
    assert "Classification" in message
    assert "missing: ['x', 'y']" in message


def test_error_unknown_top_level_keys() -> None:
    message = _row_error({"x": 1, "y": 2, "colour": "red"}, schema_from_dataclass(Box))
    assert "invalid Box: the row itself" in message
    assert "unknown keys ['colour']" in message


def test_error_row_is_not_a_record() -> None:
    message = _row_error(42, schema_from_dataclass(Box))
    assert "the row itself" in message
    assert "dataclass instance or a mapping" in message


def test_error_label_without_row_type() -> None:
    schema = TableSchema((SchemaField("a", "INT64"),))
    assert _row_error({"a": "1"}, schema).startswith("invalid row: field 'a'")


@pytest.mark.parametrize(
    ("field_type", "value", "expected"),
    [
        ("STRING", 5, "expected STRING"),
        ("STRING", b"x", "expected STRING"),
        ("INT64", True, "expected INT64"),
        ("INT64", np.bool_(True), "expected INT64"),
        ("INT64", 1.0, "expected INT64"),
        ("INT64", "1", "expected INT64"),
        ("INT64", 2**63, "outside the INT64 range"),
        ("INT64", -(2**63) - 1, "outside the INT64 range"),
        ("INT64", np.uint64(2**64 - 1), "outside the INT64 range"),
        ("FLOAT64", False, "expected FLOAT64"),
        ("FLOAT64", "1.0", "expected FLOAT64"),
        ("FLOAT64", 10**400, "too large for a float"),
        ("BOOL", 1, "expected BOOL"),
        ("BOOL", "true", "expected BOOL"),
        ("BYTES", "x", "expected BYTES"),
        ("TIMESTAMP", datetime.date(2024, 1, 1), "expected TIMESTAMP"),
        ("TIMESTAMP", "2024-01-01T00:00:00Z", "expected TIMESTAMP"),
        ("DATE", datetime.datetime(2024, 1, 1), "pass value.date()"),
        ("DATE", "2024-01-01", "expected DATE"),
    ],
)
def test_error_wrong_scalar_types(field_type: Any, value: object, expected: str) -> None:
    schema = TableSchema((SchemaField("col", field_type, "NULLABLE"),))
    message = _row_error({"col": value}, schema)
    assert "field 'col'" in message
    assert expected in message


def test_error_message_shows_python_type_and_truncates_repr() -> None:
    schema = TableSchema((SchemaField("col", "INT64"),))
    message = _row_error({"col": "x" * 500}, schema)
    assert "'" + "x" * 76 + "..." in message
    assert "x" * 100 not in message
    assert "of type str" in message
    message = _row_error({"col": np.float32(1.5)}, schema)
    assert "of type numpy.float32" in message


def test_error_path_through_nested_records_and_arrays() -> None:
    row = Outer(items=[Middle(Inner(1.0), [1.0]), Middle(Inner(1.0), [1.0, "x"])])  # type: ignore[list-item]
    message = _row_error(row, schema_from_dataclass(Outer))
    assert "field 'items[1].weights[1]'" in message
    row = Outer(items=[Middle(Inner(None), [])])  # type: ignore[arg-type]
    assert "field 'items[0].inner.value'" in _row_error(row, schema_from_dataclass(Outer))


# --------------------------------------------------------------------------------------
# diff_schemas
# --------------------------------------------------------------------------------------


def _schema(*fields: SchemaField) -> TableSchema:
    return TableSchema(fields=fields)


def test_diff_identical_is_empty_and_legacy_names_match() -> None:
    declared = schema_from_dataclass(ImageRow)
    assert diff_schemas(declared, declared) == []
    api = declared.to_api_repr()
    api[0]["name"] = "IMAGE_NAME"  # BigQuery names are case-insensitive
    api[3]["fields"][0]["type"] = "INTEGER"
    assert diff_schemas(declared, TableSchema.from_api_repr(api)) == []


def test_diff_missing_in_existing() -> None:
    existing = _schema(SchemaField("a", "STRING"))
    declared = _schema(
        SchemaField("a", "STRING"),
        SchemaField("b", "INT64", "NULLABLE"),
        SchemaField("c", "INT64", "REPEATED"),
        SchemaField("d", "INT64", "REQUIRED"),
    )
    diffs = diff_schemas(declared, existing)
    assert diffs == [
        SchemaDifference("b", "missing_in_existing", "INT64 NULLABLE", None),
        SchemaDifference("c", "missing_in_existing", "INT64 REPEATED", None),
        SchemaDifference("d", "missing_in_existing", "INT64 REQUIRED", None),
    ]
    assert [d.is_compatible_update() for d in diffs] == [True, True, False]
    assert str(diffs[0]) == "field 'b': declared INT64 NULLABLE, table has no such field"


def test_diff_extra_in_existing_is_a_conflict() -> None:
    diffs = diff_schemas(
        _schema(SchemaField("a", "STRING")),
        _schema(SchemaField("a", "STRING"), SchemaField("old", "BOOL", "NULLABLE")),
    )
    assert diffs == [SchemaDifference("old", "extra_in_existing", None, "BOOL NULLABLE")]
    assert not diffs[0].is_compatible_update()
    assert str(diffs[0]) == "field 'old': not declared, table has BOOL NULLABLE"


def test_diff_type_changed_is_a_conflict() -> None:
    diffs = diff_schemas(
        _schema(SchemaField("upload", "TIMESTAMP")),
        _schema(SchemaField("upload", "STRING")),
    )
    assert diffs == [SchemaDifference("upload", "type_changed", "TIMESTAMP REQUIRED", "STRING REQUIRED")]
    assert not diffs[0].is_compatible_update()
    assert str(diffs[0]) == "field 'upload': declared TIMESTAMP REQUIRED, table has STRING REQUIRED"


@pytest.mark.parametrize(
    ("declared_mode", "existing_mode", "compatible"),
    [
        ("NULLABLE", "REQUIRED", True),
        ("REQUIRED", "NULLABLE", False),
        ("REPEATED", "NULLABLE", False),
        ("NULLABLE", "REPEATED", False),
        ("REPEATED", "REQUIRED", False),
    ],
)
def test_diff_mode_changed(declared_mode: Any, existing_mode: Any, compatible: bool) -> None:
    diffs = diff_schemas(
        _schema(SchemaField("a", "INT64", declared_mode)),
        _schema(SchemaField("a", "INT64", existing_mode)),
    )
    assert diffs == [
        SchemaDifference("a", "mode_changed", f"INT64 {declared_mode}", f"INT64 {existing_mode}")
    ]
    assert diffs[0].is_compatible_update() is compatible


def test_diff_recurses_into_records_with_dotted_paths() -> None:
    declared = schema_from_dataclass(ImageRow)
    existing = TableSchema.from_api_repr(
        [
            {"name": "image_name", "type": "STRING", "mode": "REQUIRED"},
            {
                "name": "classifications",
                "type": "RECORD",
                "mode": "REPEATED",
                "fields": [
                    {"name": "label", "type": "STRING", "mode": "REQUIRED"},
                    {"name": "confidence", "type": "STRING", "mode": "REQUIRED"},
                    {"name": "source", "type": "STRING"},
                ],
            },
            {"name": "upload", "type": "TIMESTAMP", "mode": "REQUIRED"},
            {"name": "box", "type": "STRING"},
            {"name": "tags", "type": "STRING", "mode": "REPEATED"},
        ]
    )
    diffs = diff_schemas(declared, existing)
    assert diffs == [
        SchemaDifference(
            "classifications.confidence",
            "type_changed",
            "FLOAT64 REQUIRED",
            "STRING REQUIRED",
        ),
        SchemaDifference("classifications.source", "extra_in_existing", None, "STRING NULLABLE"),
        SchemaDifference("box", "type_changed", "RECORD NULLABLE", "STRING NULLABLE"),
        SchemaDifference("note", "missing_in_existing", "STRING NULLABLE", None),
    ]
    assert [d.is_compatible_update() for d in diffs] == [False, False, False, True]


def test_diff_nested_field_added_to_existing_record_is_compatible() -> None:
    declared = _schema(
        SchemaField(
            "r",
            "RECORD",
            "NULLABLE",
            (SchemaField("x", "INT64"), SchemaField("y", "INT64", "NULLABLE")),
        )
    )
    existing = _schema(SchemaField("r", "RECORD", "REQUIRED", (SchemaField("x", "INT64"),)))
    diffs = diff_schemas(declared, existing)
    assert diffs == [
        SchemaDifference("r", "mode_changed", "RECORD NULLABLE", "RECORD REQUIRED"),
        SchemaDifference("r.y", "missing_in_existing", "INT64 NULLABLE", None),
    ]
    assert all(d.is_compatible_update() for d in diffs)


def test_numpy_arrays_for_repeated_columns() -> None:
    schema = TableSchema((SchemaField("v", "FLOAT64", "REPEATED"), SchemaField("w", "INT64", "REPEATED")))
    record = row_to_record({"v": np.arange(3), "w": np.array([1, 2], dtype=np.int8)}, schema)
    assert record == {"v": [0.0, 1.0, 2.0], "w": [1, 2]}
    assert [type(x) for x in record["v"] + record["w"]] == [float, float, float, int, int]
    message = _row_error({"v": np.zeros((2, 2)), "w": []}, schema)
    assert "field 'v'" in message
    assert "ARRAY<FLOAT64>" in message
    message = _row_error({"v": [], "w": np.array([1, 2**63], dtype=np.uint64)}, schema)
    assert "field 'w[1]'" in message
    assert "outside the INT64 range" in message
