"""Sources and sinks (declarations), and the event types they deliver.

One package per system, each holding its declarations and its providers: :mod:`.google`
(GCS, Pub/Sub, BigQuery), :mod:`.kafka`, :mod:`.postgres`, :mod:`.local` (folders and
DuckDB), :mod:`.http` (a synchronous predict endpoint). Importing a declaration never
imports a client library."""

from buildflow.events import FileEvent as FileEvent
from buildflow.events import GCSFileEvent as GCSFileEvent
from buildflow.events import PubSubMessageEvent as PubSubMessageEvent
from buildflow.io.google import BigQueryTable as BigQueryTable
from buildflow.io.google import GCSFileStream as GCSFileStream
from buildflow.io.google import PubSubSubscription as PubSubSubscription
from buildflow.io.http import HTTPEndpoint as HTTPEndpoint
from buildflow.io.http import HTTPRequestEvent as HTTPRequestEvent
from buildflow.io.kafka import KafkaMessageEvent as KafkaMessageEvent
from buildflow.io.kafka import KafkaTopic as KafkaTopic
from buildflow.io.local import DuckDBTable as DuckDBTable
from buildflow.io.postgres import PostgresTable as PostgresTable

__all__ = [
    "GCSFileStream",
    "PubSubSubscription",
    "KafkaTopic",
    "KafkaMessageEvent",
    "HTTPEndpoint",
    "HTTPRequestEvent",
    "BigQueryTable",
    "DuckDBTable",
    "PostgresTable",
    "FileEvent",
    "GCSFileEvent",
    "PubSubMessageEvent",
]
