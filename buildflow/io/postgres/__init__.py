"""PostgreSQL: the :class:`PostgresTable` sink declaration and its provider
(:mod:`buildflow.io.postgres.provider`, on psycopg 3, imported only when an app uses it)."""

from buildflow.io.postgres.declarations import PostgresTable as PostgresTable
from buildflow.io.postgres.declarations import mask_dsn as mask_dsn

__all__ = ["PostgresTable", "mask_dsn"]
