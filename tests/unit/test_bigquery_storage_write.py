"""The exact shape of what the BigQuery Storage Write sink and ``plan`` send, where no
emulator can check the behaviour: the protobuf descriptor and rows (with the CDC
``_CHANGE_TYPE`` pseudo-column), ``write_stream`` on every request, the table's
partitioning, clustering, primary key and ``max_staleness``, and the de-duplicating
view's SQL. bqemulator ignores ``_CHANGE_TYPE``, primary keys and ``max_staleness``
(README: "What the emulator cannot check")."""

from __future__ import annotations

import dataclasses
import datetime
from pathlib import Path

import pytest

from buildflow.environment import Environment
from buildflow.errors import ConfigurationError
from buildflow.io import BigQueryTable
from buildflow.io.base import OutputRecord
from buildflow.io.google.bigquery import BigQueryTableProvider
from buildflow.io.google.bigquery_storage_write import (
    RowEncoder,
    StorageWriteSink,
    default_stream,
    descriptor_proto,
)
from buildflow.io.google.bigquery_tables import (
    BigQueryTableResource,
    BigQueryViewResource,
    dedup_view_sql,
    staleness_interval,
    table_schema,
)
from buildflow.schema import row_to_record, schema_from_dataclass

TABLE = "proj-ect.ds.rows"


@dataclasses.dataclass
class Part:
    label: str
    blob: bytes | None
    tags: list[str]


@dataclasses.dataclass
class Meta:
    key: str
    on_date: datetime.date | None


@dataclasses.dataclass
class Row:
    name: str
    taken_at: datetime.datetime
    score: float
    ok: bool | None
    parts: list[Part]
    meta: Meta | None


SCHEMA = schema_from_dataclass(Row)
ROW = Row(
    name="a",
    taken_at=datetime.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=datetime.UTC),
    score=1.5,
    ok=None,
    parts=[Part("cat", b"\xfe", ["x", "y"]), Part("dog", None, [])],
    meta=Meta("m", datetime.date(2020, 2, 29)),
)


def env(tmp_path: Path) -> Environment:
    return Environment(name="gcp", state_dir=tmp_path)


def test_descriptor_is_proto2_self_contained_with_nested_repeated_records_and_change_type() -> None:
    from google.protobuf import descriptor_pb2

    fd = descriptor_pb2.FieldDescriptorProto
    d = descriptor_proto(table_schema(SCHEMA, "upsert"), change_type=True)
    fields = {f.name: f for f in d.field}
    assert [f.name for f in d.field] == [
        "name",
        "taken_at",
        "score",
        "ok",
        "parts",
        "meta",
        "_event_id",
        "_row_index",
        "_written_at",
        "_CHANGE_TYPE",
    ]
    assert [f.number for f in d.field] == list(range(1, 11))
    assert fields["taken_at"].type == fd.TYPE_INT64  # TIMESTAMP: microseconds since the epoch
    assert fields["score"].type == fd.TYPE_DOUBLE and fields["ok"].type == fd.TYPE_BOOL
    assert fields["_CHANGE_TYPE"].type == fd.TYPE_STRING
    assert fields["parts"].label == fd.LABEL_REPEATED and fields["parts"].type == fd.TYPE_MESSAGE
    assert fields["meta"].label == fd.LABEL_OPTIONAL and fields["meta"].type_name == "meta_record"
    nested = {n.name: n for n in d.nested_type}
    assert set(nested) == {"parts_record", "meta_record"}
    tags = {f.name: f for f in nested["parts_record"].field}["tags"]
    assert tags.label == fd.LABEL_REPEATED and tags.type == fd.TYPE_STRING
    on_date = {f.name: f for f in nested["meta_record"].field}["on_date"]
    assert on_date.type == fd.TYPE_INT32  # DATE: days since the epoch
    # the append mode sends no CDC pseudo-column
    assert "_CHANGE_TYPE" not in [f.name for f in descriptor_proto(SCHEMA, change_type=False).field]


def test_a_row_encodes_to_the_values_bigquery_expects() -> None:
    from google.protobuf import descriptor_pool, message_factory
    from google.protobuf.descriptor_pb2 import FileDescriptorProto

    schema = table_schema(SCHEMA, "upsert")
    encoder = RowEncoder(schema, change_type="UPSERT")
    values = {
        **row_to_record(ROW, SCHEMA),
        "_event_id": "ev",
        "_row_index": 3,
        "_written_at": datetime.datetime(1970, 1, 2, tzinfo=datetime.UTC),
    }
    # decode with a pool built only from the descriptor that travels in the request
    pool = descriptor_pool.DescriptorPool()
    file = FileDescriptorProto(name="x.proto", syntax="proto2")
    file.message_type.add().CopyFrom(encoder.descriptor)
    pool.Add(file)
    cls = message_factory.GetMessageClass(pool.FindMessageTypeByName(encoder.descriptor.name))
    msg = cls.FromString(encoder.encode(values))
    assert msg.name == "a" and msg.score == 1.5 and not msg.HasField("ok")
    assert msg.taken_at == 1714979289123456  # 2024-05-06T07:08:09.123456Z in microseconds
    assert msg._written_at == 86_400_000_000
    assert [(p.label, p.blob, list(p.tags)) for p in msg.parts] == [
        ("cat", b"\xfe", ["x", "y"]),
        ("dog", b"", []),
    ]
    assert not msg.parts[1].HasField("blob")  # NULL stays NULL, not b""
    assert msg.meta.on_date == (datetime.date(2020, 2, 29) - datetime.date(1970, 1, 1)).days
    assert msg._CHANGE_TYPE == "UPSERT"
    assert (msg._event_id, msg._row_index) == ("ev", 3)


def test_values_that_do_not_fit_are_refused_before_sending() -> None:
    encoder = RowEncoder(table_schema(SCHEMA, "append"), change_type=None)
    good = row_to_record(ROW, SCHEMA)
    for bad in ({"taken_at": "2024-01-01"}, {"name": None}, {"parts": [1]}, {"meta": "x"}):
        with pytest.raises((TypeError, ValueError)):
            encoder.encode({**good, **bad})


def test_every_request_names_the_default_stream_and_the_first_carries_the_schema(tmp_path: Path) -> None:
    sink = StorageWriteSink(env(tmp_path), "proj-ect", TABLE, SCHEMA, "upsert")
    try:
        rows, rejected = sink._rows([OutputRecord("ev", 0, row_to_record(ROW, SCHEMA))])
        assert rejected == []
        request = sink._request(rows)
        assert request.write_stream == default_stream(TABLE)
        assert request.write_stream == "projects/proj-ect/datasets/ds/tables/rows/streams/_default"
        assert not request._pb.HasField("offset")  # the default stream takes no offsets
        assert len(request.proto_rows.rows.serialized_rows) == 1
        assert sink.encoder.change_type == "UPSERT"
        assert sink.encoder.descriptor.field[-1].name == "_CHANGE_TYPE"
    finally:
        sink._io.stop()


def test_batches_are_split_into_requests_under_the_size_limit(tmp_path: Path) -> None:
    sink = StorageWriteSink(env(tmp_path), "proj-ect", TABLE, SCHEMA, "append", max_request_bytes=500)
    try:
        recs = [OutputRecord(f"ev{i}", 0, row_to_record(ROW, SCHEMA)) for i in range(20)]
        rows, _ = sink._rows(recs)
        chunks = sink._chunks(rows)
        assert len(chunks) > 1 and [r.index for c in chunks for r in c] == list(range(20))
        assert all(sum(len(r.data) for r in c) <= 500 for c in chunks)
    finally:
        sink._io.stop()


def test_upsert_table_is_partitioned_clustered_and_keyed(tmp_path: Path) -> None:
    table = BigQueryTableResource(env(tmp_path), "proj-ect", TABLE, SCHEMA, True, "upsert", 15)._table()
    api = table.to_api_repr()
    assert api["timePartitioning"] == {"type": "DAY", "field": "_written_at"}
    assert api["clustering"] == {"fields": ["_event_id"]}
    assert api["tableConstraints"] == {"primaryKey": {"columns": ["_event_id", "_row_index"]}}
    assert api["maxStaleness"] == "0-0 0 0:15:0"
    assert [f["name"] for f in api["schema"]["fields"]][-3:] == ["_event_id", "_row_index", "_written_at"]


def test_append_table_has_no_primary_key_and_merge_table_keeps_its_old_layout(tmp_path: Path) -> None:
    append = BigQueryTableResource(env(tmp_path), "proj-ect", TABLE, SCHEMA, True, "append", 15)
    api = append._table().to_api_repr()
    assert "tableConstraints" not in api and api.get("maxStaleness") is None
    assert api["timePartitioning"]["field"] == "_written_at"
    merge = (
        BigQueryTableResource(env(tmp_path), "proj-ect", TABLE, SCHEMA, True, "merge")._table().to_api_repr()
    )
    assert "timePartitioning" not in merge and "_written_at" not in str(merge["schema"])


def test_staleness_interval_is_the_canonical_interval_string() -> None:
    assert staleness_interval(15) == "0-0 0 0:15:0"
    assert staleness_interval(90) == "0-0 0 1:30:0"
    assert staleness_interval(60 * 24 + 1) == "0-0 1 0:1:0"


def test_dedup_view_keeps_the_latest_row_per_key() -> None:
    assert dedup_view_sql(TABLE) == (
        "SELECT * FROM `proj-ect.ds.rows` WHERE TRUE QUALIFY ROW_NUMBER() OVER "
        "(PARTITION BY `_event_id`, `_row_index` ORDER BY `_written_at` DESC) = 1"
    )


def test_plan_manages_a_view_for_the_storage_write_modes_only(tmp_path: Path) -> None:
    def kinds(mode: str) -> list[str]:
        p = BigQueryTableProvider(BigQueryTable(TABLE, write_mode=mode), env(tmp_path))  # type: ignore[arg-type]
        return [r.kind for r in p.resources(SCHEMA)]

    assert kinds("upsert") == kinds("append") == ["dataset", "table", "view"]
    assert kinds("merge") == kinds("insert_id") == ["dataset", "table"]
    p = BigQueryTableProvider(BigQueryTable(TABLE), env(tmp_path))
    view = p.resources(SCHEMA)[-1]
    assert isinstance(view, BigQueryViewResource) and view.name == f"{TABLE}_dedup"


def test_declaration_defaults_to_upsert_and_validates_staleness() -> None:
    t = BigQueryTable("d.t")
    assert (t.write_mode, t.max_staleness_minutes) == ("upsert", 15)
    assert t.describe() == "BigQueryTable('d.t')"
    assert BigQueryTable("d.t", write_mode="merge").describe() == "BigQueryTable('d.t', write_mode='merge')"
    sibling = BigQueryTable(
        "p-roject.d.t", write_mode="append", max_staleness_minutes=None
    ).dead_letter_sibling()
    assert (sibling.write_mode, sibling.max_staleness_minutes) == ("append", None)
    for bad in (-1, 1.5, True, "15"):
        with pytest.raises(ConfigurationError, match="max_staleness_minutes"):
            BigQueryTable("d.t", max_staleness_minutes=bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError) as info:
        BigQueryTable("d.t", write_mode="upsertt")  # type: ignore[arg-type]
    assert "'upsertt'" in str(info.value) and "'upsert'" in str(info.value) and "'merge'" in str(info.value)
