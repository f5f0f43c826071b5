"""Sources and sinks (declarations), and the event types they deliver."""

from buildflow.events import GCSFileEvent as GCSFileEvent
from buildflow.io.duckdb import DuckDBTable as DuckDBTable
from buildflow.io.gcp import BigQueryTable as BigQueryTable
from buildflow.io.gcp import GCSFileStream as GCSFileStream

__all__ = ["GCSFileStream", "BigQueryTable", "DuckDBTable", "GCSFileEvent"]
