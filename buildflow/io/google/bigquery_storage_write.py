"""``BigQueryTable(write_mode="upsert" | "append")``: rows appended through the BigQuery
Storage Write API.

Requests
--------
Rows are protobuf messages ("Stream data using the Storage Write API", supported protocol
buffer data types: https://cloud.google.com/bigquery/docs/write-api#data_type_conversions)
whose proto2 ``DescriptorProto`` is built from the table schema (:func:`descriptor_proto`):
a RECORD is a nested message type declared inside the row message (the descriptor must be
self-contained: ``ProtoSchema.proto_descriptor``), a REPEATED column a ``repeated`` field,
TIMESTAMP an ``int64`` of microseconds since the Unix epoch, DATE an ``int32`` of days since
it. In ``upsert`` mode the message has one more field, the change-data-capture
pseudo-column ``_CHANGE_TYPE``, set to ``"UPSERT"`` on every row ("Stream table updates with
change data capture": https://cloud.google.com/bigquery/docs/change-data-capture).

Every request goes to the table's default stream
``projects/<p>/datasets/<d>/tables/<t>/streams/_default`` (CDC needs it; it is the
at-least-once stream, with no offsets) over one long-lived connection per sink: the
client's ``google.cloud.bigquery_storage_v1.writer.AppendRowsStream``, which sends the
writer schema with the first request of a connection and opens a new connection after the
RPC ends. ``write_stream`` is set on every request (the API allows it; the emulator needed
it before the patch in ``infra/patches/bqemulator.py``). A micro-batch is split into
requests of at most :data:`MAX_REQUEST_BYTES` of rows (AppendRows caps a request at 10 MB:
"Quotas and limits", Storage Write API: https://cloud.google.com/bigquery/quotas#write-api-limits),
sent back to back; :meth:`StorageWriteSink.write` returns, and the runtime acks the events,
only after every request was acknowledged.

Errors
------
* A request refused with ``row_errors`` appended none of its rows (``AppendRowsResponse``:
  "If a request failed due to corrupted rows, no rows in the batch will be appended"): the
  named rows come back as :class:`~buildflow.io.base.RowRejection` (their events are
  dead-lettered) and the others are sent again.
* ``INVALID_ARGUMENT`` without ``row_errors`` (the emulator's way of refusing a value): once
  the table is known to still match the declaration, the request is bisected like the
  MERGE path's, so each bad row is rejected alone.
* A row whose value cannot be encoded (wrong Python type, out of range) is rejected before
  anything is sent.
* ``NOT_FOUND`` (the table was deleted while running) is
  :class:`~buildflow.errors.ResourceGoneError`: the run stops (``plan`` creates it again).
* Everything else (connection lost, server unavailable, a timeout after
  :data:`APPEND_TIMEOUT_S`) is :class:`~buildflow.errors.TransientSinkError`: the
  connection is dropped, the runtime retries the batch, its events stay unacked.

A retried batch may append rows that an earlier, unacknowledged attempt appended too: that
is what the primary key (``upsert``) or the ``<table>_dedup`` view (``append``) collapse.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
from collections.abc import Mapping, Sequence
from typing import Any, Final

from buildflow.environment import Environment
from buildflow.errors import ProvisioningError, ResourceGoneError, TransientSinkError
from buildflow.io.base import OutputRecord, RowRejection, SinkRuntime
from buildflow.io.google.bigquery_tables import WRITE_TIME_FIELD, BigQueryTableResource, table_schema
from buildflow.io.google.clients import bigquery_write_client
from buildflow.io.google.declarations import BigQueryWriteMode
from buildflow.provisioning import require_ready
from buildflow.runtime.threads import BlockingWorker
from buildflow.schema import SchemaField, TableSchema

__all__ = [
    "ACK_POLL_S",
    "APPEND_TIMEOUT_S",
    "CHANGE_TYPE",
    "MAX_REQUEST_BYTES",
    "RowEncoder",
    "StorageWriteSink",
    "default_stream",
    "descriptor_proto",
]

log = logging.getLogger("buildflow.io.bigquery")

CHANGE_TYPE: Final = "_CHANGE_TYPE"
"""The CDC pseudo-column; ``upsert`` rows carry ``"UPSERT"``."""

MAX_REQUEST_BYTES: Final = 8_000_000
"""Serialized rows per AppendRows request (BigQuery allows 10 MB per request)."""

APPEND_TIMEOUT_S: Final = 60.0
"""How long one request may wait for its acknowledgement before the batch is retried."""

ACK_POLL_S: Final = (0.001, 0.02)
"""First and longest interval, in seconds, at which a write checks whether its request was
acknowledged. The acknowledgement is set on the append's future by the client's response
thread, but ``AppendRowsFuture.result()`` (a google-api-core ``PollingFuture``) notices it
only at its next poll, and the library's default polling (``DEFAULT_POLLING``: first wait
up to 1 s, growing 1.5x to 20 s) left every write waiting 0-1 s after its answer had
arrived (median ~0.4 s per append, measured against a trivial gRPC server)."""


def _ack_polling() -> Any:
    """google-api-core's polling of a future, at :data:`ACK_POLL_S` instead of its default."""
    from google.api_core.future import polling

    initial, maximum = ACK_POLL_S
    return polling.DEFAULT_POLLING.with_delay(initial=initial, maximum=maximum, multiplier=2.0)


_EPOCH: Final = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
_EPOCH_DATE: Final = datetime.date(1970, 1, 1)
_MICROSECOND: Final = datetime.timedelta(microseconds=1)


def default_stream(table_id: str) -> str:
    """``projects/<p>/datasets/<d>/tables/<t>/streams/_default`` of ``p.d.t``."""
    project, dataset, table = table_id.split(".")
    return f"projects/{project}/datasets/{dataset}/tables/{table}/streams/_default"


def _scalar_type(field_type: str) -> int:
    from google.protobuf import descriptor_pb2

    fd = descriptor_pb2.FieldDescriptorProto
    types = {
        "STRING": fd.TYPE_STRING,
        "INT64": fd.TYPE_INT64,
        "FLOAT64": fd.TYPE_DOUBLE,
        "BOOL": fd.TYPE_BOOL,
        "BYTES": fd.TYPE_BYTES,
        "TIMESTAMP": fd.TYPE_INT64,  # microseconds since the epoch
        "DATE": fd.TYPE_INT32,  # days since the epoch
    }
    return int(types[field_type])


def _fill_descriptor(message: Any, fields: Sequence[SchemaField]) -> None:
    from google.protobuf import descriptor_pb2

    fd = descriptor_pb2.FieldDescriptorProto
    for number, f in enumerate(fields, 1):
        field = message.field.add(name=f.name, number=number)
        field.label = fd.LABEL_REPEATED if f.mode == "REPEATED" else fd.LABEL_OPTIONAL
        if f.field_type == "RECORD":
            nested = message.nested_type.add(name=f"{f.name}_record")
            _fill_descriptor(nested, f.fields)
            field.type = fd.TYPE_MESSAGE
            field.type_name = nested.name  # resolved in the enclosing message's scope
        else:
            field.type = _scalar_type(f.field_type)


def descriptor_proto(schema: TableSchema, *, change_type: bool, name: str = "BuildflowRow") -> Any:
    """The proto2 ``DescriptorProto`` of one row of ``schema``, self-contained.

    Fields are numbered from 1 in column order; every field is ``optional`` (a REQUIRED
    column's value is checked before encoding) or ``repeated``; RECORDs are nested message
    types named ``<column>_record``. With ``change_type``, a last field ``_CHANGE_TYPE``
    (string) carries the CDC change type.
    """
    from google.protobuf import descriptor_pb2

    message = descriptor_pb2.DescriptorProto(name=name)
    _fill_descriptor(message, schema.fields)
    if change_type:
        message.field.add(
            name=CHANGE_TYPE,
            number=len(schema.fields) + 1,
            label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL,
            type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
        )
    return message


def _scalar(f: SchemaField, value: Any) -> Any:
    if f.field_type == "TIMESTAMP":
        if not isinstance(value, datetime.datetime) or value.tzinfo is None:
            raise TypeError(f"{f.name}: expected a timezone-aware datetime, got {value!r}")
        return (value - _EPOCH) // _MICROSECOND
    if f.field_type == "DATE":
        if isinstance(value, datetime.datetime) or not isinstance(value, datetime.date):
            raise TypeError(f"{f.name}: expected a date, got {value!r}")
        return (value - _EPOCH_DATE).days
    if f.field_type == "BYTES" and isinstance(value, bytearray | memoryview):
        return bytes(value)
    return value


def _fill_message(message: Any, fields: Sequence[SchemaField], values: Mapping[str, Any]) -> None:
    for f in fields:
        value = values.get(f.name)
        if value is None:
            if f.mode == "REQUIRED":
                raise ValueError(f"{f.name}: a REQUIRED column is None")
            continue
        if f.field_type == "RECORD":
            if f.mode == "REPEATED":
                target = getattr(message, f.name)
                for item in value:
                    if not isinstance(item, Mapping):
                        raise TypeError(f"{f.name}: expected a RECORD (mapping), got {type(item).__name__}")
                    _fill_message(target.add(), f.fields, item)
            else:
                if not isinstance(value, Mapping):
                    raise TypeError(f"{f.name}: expected a RECORD (mapping), got {type(value).__name__}")
                sub = getattr(message, f.name)
                sub.SetInParent()  # present even when every sub-field is NULL
                _fill_message(sub, f.fields, value)
        elif f.mode == "REPEATED":
            getattr(message, f.name).extend(_scalar(f, v) for v in value)
        else:
            setattr(message, f.name, _scalar(f, value))


class RowEncoder:
    """Serializes rows of a table schema as the messages of :func:`descriptor_proto`."""

    def __init__(self, schema: TableSchema, *, change_type: str | None) -> None:
        from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

        self.schema = schema
        self.change_type = change_type
        self.descriptor = descriptor_proto(schema, change_type=change_type is not None)
        pool = descriptor_pool.DescriptorPool()
        file = descriptor_pb2.FileDescriptorProto(name="buildflow_row.proto", syntax="proto2")
        file.message_type.add().CopyFrom(self.descriptor)
        pool.Add(file)
        self._cls = message_factory.GetMessageClass(pool.FindMessageTypeByName(self.descriptor.name))

    def encode(self, values: Mapping[str, Any]) -> bytes:
        """One row as serialized protobuf.

        Raises:
            TypeError, ValueError: a value does not fit its column (wrong type, out of
                range, None in a REQUIRED column).
        """
        message = self._cls()
        _fill_message(message, self.schema.fields, values)
        if self.change_type is not None:
            setattr(message, CHANGE_TYPE, self.change_type)
        data: bytes = message.SerializeToString()
        return data


@dataclasses.dataclass(frozen=True)
class _Row:
    index: int  # in the batch passed to write()
    data: bytes
    key: str


@dataclasses.dataclass
class _Outcome:
    """What became of one AppendRows request: acknowledged (neither field set), refused
    for the rows in ``rejected`` (``row_errors``), or refused as a whole (``invalid``)."""

    rejected: list[RowRejection] = dataclasses.field(default_factory=list)
    invalid: str | None = None


class StorageWriteSink(SinkRuntime):
    """Appends micro-batches to a table's default stream (see the module docstring).

    Args:
        schema: The row schema (not the table's: the key and write-time columns are added).
        write_mode: ``"upsert"`` (rows carry ``_CHANGE_TYPE = 'UPSERT'``) or ``"append"``.
        max_request_bytes: Serialized rows per AppendRows request.
    """

    def __init__(
        self,
        env: Environment,
        project: str,
        table_id: str,
        schema: TableSchema,
        write_mode: BigQueryWriteMode = "upsert",
        max_request_bytes: int = MAX_REQUEST_BYTES,
    ) -> None:
        if write_mode not in ("upsert", "append"):
            raise ValueError(f"StorageWriteSink: write_mode {write_mode!r} is not 'upsert' or 'append'")
        self.env = env
        self.project = project
        self.table_id = table_id
        self.row_schema = schema
        self.write_mode = write_mode
        self.schema = table_schema(schema, write_mode)
        self.stream_name = default_stream(table_id)
        self.max_request_bytes = max_request_bytes
        self.encoder = RowEncoder(self.schema, change_type="UPSERT" if write_mode == "upsert" else None)
        self._stream: Any = None
        self._io = BlockingWorker(f"bigquery-write-{table_id.rsplit('.', 1)[-1]}")

    # -- the connection ---------------------------------------------------------------
    def _connection(self) -> Any:
        if self._stream is None:
            from google.cloud.bigquery_storage_v1 import types, writer

            template = types.AppendRowsRequest(
                write_stream=self.stream_name,
                proto_rows=types.AppendRowsRequest.ProtoData(
                    writer_schema=types.ProtoSchema(proto_descriptor=self.encoder.descriptor)
                ),
            )
            self._stream = writer.AppendRowsStream(bigquery_write_client(self.env), template)
        return self._stream

    def _drop_connection(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            try:
                stream.close()
            except Exception as e:  # already closed by the failure that brought us here
                log.debug("closing the AppendRows connection to %s: %s", self.table_id, e)

    def _request(self, rows: Sequence[_Row]) -> Any:
        from google.cloud.bigquery_storage_v1 import types

        return types.AppendRowsRequest(
            write_stream=self.stream_name,
            proto_rows=types.AppendRowsRequest.ProtoData(
                rows=types.ProtoRows(serialized_rows=[r.data for r in rows])
            ),
        )

    # -- writing --------------------------------------------------------------------------
    def _rows(self, records: Sequence[OutputRecord]) -> tuple[list[_Row], list[RowRejection]]:
        now = datetime.datetime.now(datetime.UTC)
        rows: list[_Row] = []
        rejected: list[RowRejection] = []
        for i, r in enumerate(records):
            values = {
                **r.values,
                "_event_id": r.event_id,
                "_row_index": r.row_index,
                WRITE_TIME_FIELD.name: now,
            }
            try:
                data = self.encoder.encode(values)
            except (TypeError, ValueError, AttributeError, OverflowError) as e:
                rejected.append(RowRejection(i, f"cannot pass the row to BigQuery: {e}"))
                continue
            rows.append(_Row(i, data, f"{r.event_id}/{r.row_index}"))
        return rows, rejected

    def _chunks(self, rows: Sequence[_Row]) -> list[list[_Row]]:
        chunks: list[list[_Row]] = []
        size = 0
        for row in rows:
            if not chunks or (size + len(row.data) > self.max_request_bytes and chunks[-1]):
                chunks.append([])
                size = 0
            chunks[-1].append(row)
            size += len(row.data)
        return chunks

    def _send_all(self, chunks: Sequence[Sequence[_Row]]) -> list[_Outcome]:
        """Send every chunk as one request, then wait for each acknowledgement.

        Raises:
            TransientSinkError: a request failed otherwise than for its rows (the
                connection is dropped; the next write opens a new one).
        """
        from google.api_core import exceptions
        from google.cloud.bigquery_storage_v1 import exceptions as bqs_exceptions

        connection = self._connection()
        try:
            futures = [connection.send(self._request(chunk)) for chunk in chunks]
        except (exceptions.GoogleAPIError, bqs_exceptions.StreamClosedError, ValueError) as e:
            self._drop_connection()
            raise self._failed(e) from e
        outcomes: list[_Outcome] = []
        failure: BaseException | None = None
        for chunk, future in zip(chunks, futures, strict=True):
            try:
                future.result(timeout=APPEND_TIMEOUT_S, polling=_ack_polling())
                outcomes.append(_Outcome())
            except exceptions.GoogleAPICallError as e:
                row_errors = list(getattr(getattr(e, "response", None), "row_errors", None) or ())
                if row_errors:
                    bad = {int(err.index): str(err.message) for err in row_errors}
                    outcomes.append(
                        _Outcome(
                            rejected=[
                                RowRejection(row.index, f"BigQuery refused the row: {bad[i]}")
                                for i, row in enumerate(chunk)
                                if i in bad
                            ]
                        )
                    )
                elif isinstance(e, exceptions.InvalidArgument):
                    outcomes.append(_Outcome(invalid=_one_line(e)))
                else:
                    failure = failure or e
                    outcomes.append(_Outcome())
            except Exception as e:  # a timeout, StreamClosedError, a transport error
                failure = failure or e
                outcomes.append(_Outcome())
        if failure is not None:
            self._drop_connection()
            raise self._failed(failure) from failure
        return outcomes

    def _failed(self, e: BaseException) -> TransientSinkError | ResourceGoneError:
        """The error a failed request raises: the table gone (NOT_FOUND) stops the run,
        anything else is retried."""
        from google.api_core import exceptions

        if isinstance(e, exceptions.NotFound):
            return ResourceGoneError(
                f"table {self.table_id} no longer exists (deleted while running, e.g. by "
                f"`buildflow destroy`): the run stops; `buildflow plan <app>` creates it again "
                f"({_one_line(e)})"
            )
        return TransientSinkError(f"append to {self.table_id} failed: {_one_line(e)}")

    def _check_table(self) -> None:
        """After INVALID_ARGUMENT: a table that no longer matches is at fault, not a row.

        Raises:
            TransientSinkError: the table is missing or differs from the declaration.
        """
        resource = BigQueryTableResource(
            self.env, self.project, self.table_id, self.row_schema, False, self.write_mode
        )
        try:
            require_ready(resource, f"table {self.table_id}")
        except ProvisioningError as e:
            raise TransientSinkError(str(e)) from e

    def _append(self, rows: Sequence[_Row], checked: bool = False) -> list[RowRejection]:
        """Append ``rows``; return the ones refused for good (all others landed).

        A request refused with ``row_errors`` or with INVALID_ARGUMENT appended none of its
        rows; every other request of the batch landed.
        """
        out: list[RowRejection] = []
        pending = list(rows)
        while pending:
            chunks = self._chunks(pending)
            pending = []
            for chunk, outcome in zip(chunks, self._send_all(chunks), strict=True):
                if outcome.invalid is not None:
                    if not checked:
                        self._check_table()
                        checked = True
                    if len(chunk) == 1:
                        log.info(
                            "%s: BigQuery refused the row of %s: %s",
                            self.table_id,
                            chunk[0].key,
                            outcome.invalid,
                        )
                        out.append(
                            RowRejection(chunk[0].index, f"BigQuery refused the row: {outcome.invalid}")
                        )
                    else:
                        mid = len(chunk) // 2
                        out += self._append(chunk[:mid], True) + self._append(chunk[mid:], True)
                elif outcome.rejected:
                    out += outcome.rejected
                    refused = {r.index for r in outcome.rejected}
                    pending += [row for row in chunk if row.index not in refused]
        return out

    def _write(self, records: Sequence[OutputRecord]) -> list[RowRejection]:
        rows, rejected = self._rows(records)
        if rows:
            rejected += self._append(rows)
        return sorted(rejected, key=lambda r: r.index)

    # -- SinkRuntime ----------------------------------------------------------------------
    async def write(self, records: Sequence[OutputRecord]) -> Sequence[RowRejection] | None:
        recs = list(records)
        return await self._io.run(lambda: self._write(recs)) or None

    async def close(self) -> None:
        await self._io.run(self._drop_connection)
        self._io.stop()


def _one_line(e: BaseException) -> str:
    text = str(getattr(e, "message", None) or e) or type(e).__name__
    return " ".join(text.split())[:500]
