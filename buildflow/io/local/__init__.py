"""The embedded ``local`` environment: the :class:`DuckDBTable` declaration, the folder
bucket that gives ``GCSFileStream`` life (:mod:`.folder`) and the DuckDB sink
(:mod:`.duckdb_sink`)."""

from buildflow.io.local.declarations import DuckDBTable as DuckDBTable

__all__ = ["DuckDBTable"]
