"""Google Cloud: the declarations :class:`GCSFileStream`, :class:`BigQueryTable` and
:class:`PubSubSubscription` (no SDK imported), and their providers for the ``emulator`` and
``gcp`` environments (:mod:`.gcs`, :mod:`.pubsub`, :mod:`.bigquery`, on the official
google-cloud-* clients, imported only when an app uses them)."""

from buildflow.io.google.declarations import BigQueryTable as BigQueryTable
from buildflow.io.google.declarations import GCSFileStream as GCSFileStream
from buildflow.io.google.declarations import PubSubSubscription as PubSubSubscription

__all__ = ["GCSFileStream", "BigQueryTable", "PubSubSubscription"]
