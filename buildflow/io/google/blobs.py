"""Reading one object of a Cloud Storage bucket: what a GCS upload event, a Pub/Sub
``gs://`` reference and a Kafka ``reference`` record download. Below the sources that use
it, so none of them imports another."""

from __future__ import annotations

import dataclasses

from buildflow.environment import Environment
from buildflow.errors import ObjectOverwrittenError
from buildflow.events import BlobReader
from buildflow.io.google.clients import storage_client

__all__ = ["GCSBlobReader"]


@dataclasses.dataclass(frozen=True)
class GCSBlobReader(BlobReader):
    """Downloads one generation of an object (so an overwrite never changes what an event
    reads); ``generation=None`` reads the live one.

    Raises (from ``read``):
        ObjectOverwrittenError: the pinned generation is gone because the object was
            overwritten or deleted since (the runtime skips such an event with a log line).
        FileNotFoundError: the object does not exist.
    """

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
            if self.generation is not None:
                self._raise_if_overwritten(e)
            raise FileNotFoundError(
                f"gs://{self.bucket}/{self.name}"
                + (f"#{self.generation}" if self.generation is not None else "")
                + " does not exist"
            ) from e
        return data

    def _raise_if_overwritten(self, cause: BaseException) -> None:
        """A 404 on a pinned generation while the object has a newer live generation (or
        is gone): the upload was overwritten before it was processed."""
        live = storage_client(self.env, self.project).bucket(self.bucket).get_blob(self.name)
        if live is None or (live.generation is not None and int(live.generation) > int(self.generation or 0)):
            now = "deleted" if live is None else f"overwritten by generation {live.generation}"
            raise ObjectOverwrittenError(
                f"gs://{self.bucket}/{self.name}#{self.generation} was {now} before it was processed"
            ) from cause
