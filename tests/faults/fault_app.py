"""The image-classification app the fault tests run, with its source and sink chosen by
environment variables, and a log of every event it processes (to count reprocessing).

- ``FAULT_SOURCE``: ``bucket`` (default; ``GCSFileStream`` of ``FAULT_BUCKET``) or
  ``kafka`` (``KafkaTopic`` ``FAULT_TOPIC`` on ``KAFKA_BOOTSTRAP_SERVERS``, raw payloads).
- ``FAULT_SINK``: ``table`` (default; ``BigQueryTable``: DuckDB in ``local``, BigQuery in
  ``emulator``) or ``postgres`` (``PostgresTable`` ``FAULT_PG_TABLE`` at the DSN in
  ``FAULT_PG_DSN``).
- ``FAULT_PROCESS_LOG``: a file that gets one line per event processed: its event id.
- ``FAULT_SLOW_S``: seconds each batch takes at least (a processor slower than its lease);
  ``FAULT_ACK_DEADLINE``: the subscription's ack deadline (``GCSFileStream``, default 60 s).

Run from the repository root: ``buildflow run tests.faults.fault_app:app``.
"""

from __future__ import annotations

import os
import time

from buildflow import Node
from buildflow.io import BigQueryTable, FileEvent, GCSFileStream, KafkaTopic, PostgresTable
from buildflow.io.base import SinkDeclaration, SourceDeclaration
from processors import ImageClassificationProcessor
from schemas import ImageClassificationRow

TABLE_ID = "buildflow-local.faults.predictions"
POSTGRES_TABLE = os.environ.get("FAULT_PG_TABLE", "fault_predictions")


class FaultProcessor(ImageClassificationProcessor):
    """The app's processor; logs the event id of everything it processes."""

    def source(self) -> SourceDeclaration:
        if os.environ.get("FAULT_SOURCE", "bucket") == "kafka":
            return KafkaTopic(
                bootstrap_servers=os.environ["KAFKA_BOOTSTRAP_SERVERS"],
                topic=os.environ["FAULT_TOPIC"],
                payload_format="raw",
                consumer_config={"session.timeout.ms": "6000", "heartbeat.interval.ms": "1000"},
            )
        return GCSFileStream(
            bucket_name=os.environ.get("FAULT_BUCKET", "fault-images"),
            force_destroy=True,
            ack_deadline_secs=int(os.environ.get("FAULT_ACK_DEADLINE", "60")),
        )

    def sink(self) -> SinkDeclaration:
        if os.environ.get("FAULT_SINK", "table") == "postgres":
            return PostgresTable(
                dsn="env:FAULT_PG_DSN", table=POSTGRES_TABLE, destroy_protection=False, connect_timeout_s=2
            )
        return BigQueryTable(table_id=TABLE_ID, destroy_protection=False)

    def process_batch(self, events: list[FileEvent]) -> list[ImageClassificationRow | Exception]:
        log_path = os.environ.get("FAULT_PROCESS_LOG")
        if log_path:
            with open(log_path, "a", encoding="utf-8") as f:
                f.write("".join(f"{e.event_id}\n" for e in events))
        slow_s = float(os.environ.get("FAULT_SLOW_S", "0"))
        started = time.monotonic()
        rows = super().process_batch(events)
        time.sleep(max(0.0, slow_s - (time.monotonic() - started)))  # the fault: a slow model
        return rows


app = Node()
app.add(FaultProcessor(bucket_name="unused", table_id=TABLE_ID))
