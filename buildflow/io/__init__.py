"""Sources and sinks (declarations), and the event types they deliver."""

from buildflow.events import FileEvent as FileEvent
from buildflow.events import GCSFileEvent as GCSFileEvent
from buildflow.events import PubSubMessageEvent as PubSubMessageEvent
from buildflow.io.duckdb import DuckDBTable as DuckDBTable
from buildflow.io.gcp import BigQueryTable as BigQueryTable
from buildflow.io.gcp import GCSFileStream as GCSFileStream
from buildflow.io.kafka import KafkaMessageEvent as KafkaMessageEvent
from buildflow.io.kafka import KafkaTopic as KafkaTopic
from buildflow.io.postgres import PostgresTable as PostgresTable
from buildflow.io.pubsub import PubSubSubscription as PubSubSubscription

__all__ = [
    "GCSFileStream",
    "PubSubSubscription",
    "KafkaTopic",
    "KafkaMessageEvent",
    "BigQueryTable",
    "DuckDBTable",
    "PostgresTable",
    "FileEvent",
    "GCSFileEvent",
    "PubSubMessageEvent",
]
