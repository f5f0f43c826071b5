"""Reading one object of a Cloud Storage bucket: what a GCS upload event, a Pub/Sub
``gs://`` reference and a Kafka ``reference`` record download. Below the sources that use
it, so none of them imports another."""

from __future__ import annotations

import dataclasses

from buildflow.environment import Environment
from buildflow.events import BlobReader
from buildflow.io.google.clients import storage_client

__all__ = ["GCSBlobReader"]


@dataclasses.dataclass(frozen=True)
class GCSBlobReader(BlobReader):
    """Downloads one generation of an object (so an overwrite never changes what an event
    reads); ``generation=None`` reads the live one."""

    env: Environment
    project: str | None
    bucket: str
    name: str
    generation: int | None

    def read(self) -> bytes:
        from google.api_core import exceptions

        blob = (
            storage_client(self.env, self.project)
            .bucket(self.bucket)
            .blob(self.name, generation=self.generation)
        )
        try:
            data: bytes = blob.download_as_bytes()
        except exceptions.NotFound as e:
            raise FileNotFoundError(
                f"gs://{self.bucket}/{self.name}"
                + (f"#{self.generation}" if self.generation is not None else "")
                + " does not exist"
            ) from e
        return data
