"""A model-free app for the 10,000-event fault test: each file of the bucket ``FAULT_BUCKET``
becomes one row (its name, size and SHA-256) in ``faults.digests``, so the run measures the
framework (source, batching, sink, acks), not the model."""

from __future__ import annotations

import dataclasses
import hashlib
import os

import buildflow
from buildflow import Node
from buildflow.io import BigQueryTable, FileEvent, GCSFileStream

TABLE_ID = "buildflow-local.faults.digests"


@dataclasses.dataclass
class FileDigest:
    name: str
    size: int
    sha256: str


class Digest(buildflow.Processor):
    max_batch_size = 256

    def source(self) -> GCSFileStream:
        return GCSFileStream(bucket_name=os.environ.get("FAULT_BUCKET", "fault-files"), force_destroy=True)

    def sink(self) -> BigQueryTable:
        return BigQueryTable(table_id=TABLE_ID, destroy_protection=False)

    def process(self, event: FileEvent) -> FileDigest:
        data = event.blob
        return FileDigest(event.name, len(data), hashlib.sha256(data).hexdigest())


app = Node()
app.add(Digest())
