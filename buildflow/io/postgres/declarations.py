"""The :class:`PostgresTable` declaration: a table in a PostgreSQL database, in any environment.

Declaration only: psycopg is imported by the provider (``buildflow.io.postgres.provider``),
on the worker.
"""

from __future__ import annotations

import dataclasses
import re

from buildflow.errors import ConfigurationError
from buildflow.io.base import DEAD_LETTER_TABLE_NAME, SinkDeclaration

__all__ = ["PostgresTable", "mask_dsn", "ENV_PREFIX"]

ENV_PREFIX = "env:"
"""``dsn="env:NAME"`` reads the connection string from environment variable ``NAME``."""

# PostgreSQL truncates identifiers to 63 bytes (NAMEDATALEN - 1); buildflow quotes them.
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# URI form: libpq takes everything before the first '@' (not crossing a '/') as user info.
_URI_USERINFO = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^@/:]*):(?P<pw>[^@/]*)@")
_URI_PASSWORD_PARAM = re.compile(r"(?P<sep>[?&])password=[^&]*", re.IGNORECASE)
# keyword/value form: password=secret, password = 'it''s secret', password='a b\' c'
_KV_PASSWORD = re.compile(
    r"(?P<key>(?:^|\s)password\s*=\s*)(?:'(?:\\.|''|[^'\\])*'|[^\s']\S*|'.*)", re.IGNORECASE
)


def mask_dsn(dsn: str) -> str:
    """``dsn`` with any password replaced by ``***``, for messages and logs.

    Handles both libpq forms: ``postgresql://user:secret@host/db`` gives
    ``postgresql://user:***@host/db`` (a ``?password=`` parameter is masked too), and
    ``host=h password=secret`` gives ``host=h password=***``. An ``env:NAME`` reference
    holds no secret and is returned as is.
    """
    if dsn.startswith(ENV_PREFIX):
        return dsn
    if "://" in dsn:
        out = _URI_USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:***@", dsn, count=1)
        return _URI_PASSWORD_PARAM.sub(lambda m: f"{m['sep']}password=***", out)
    return _KV_PASSWORD.sub(lambda m: f"{m['key']}***", dsn)


@dataclasses.dataclass(frozen=True, repr=False)
class PostgresTable(SinkDeclaration):
    """A PostgreSQL table whose columns are the processor's row dataclass.

    ``plan`` creates the table (and its schema) from the row dataclass: STRING -> ``text``,
    INT64 -> ``bigint``, FLOAT64 -> ``double precision``, BOOL -> ``boolean``, BYTES ->
    ``bytea``, TIMESTAMP -> ``timestamptz``, DATE -> ``date``; a RECORD or REPEATED field
    is one ``jsonb`` column (the value as JSON: timestamps and dates as ISO 8601 strings,
    bytes as base64). REQUIRED fields are ``NOT NULL``. buildflow adds ``_event_id``,
    ``_row_index`` (the primary key) and ``_written_at``. Rows are upserted on
    ``(_event_id, _row_index)``: a redelivered event overwrites its rows, never duplicates them.

    Args:
        dsn: A libpq connection string, ``postgresql://user:password@host:5432/db`` or
            ``host=... dbname=... user=...``; or ``"env:NAME"`` to read it from environment
            variable ``NAME`` when the sink is opened (at ``plan``/``run`` time), so no
            credential is written in the app. Without a password in the DSN, libpq's own
            ``PGPASSWORD`` / ``~/.pgpass`` apply. The password is never shown: ``describe()``,
            ``repr()``, messages and logs print ``postgresql://user:***@host/db``.
        table: ``schema.table`` or ``table`` (schema ``public``): letters, digits and ``_``,
            not starting with a digit, at most 63 characters each. Names are quoted, so
            their case is kept.
        destroy_protection: ``destroy`` refuses to drop the table (and its dead-letter
            table) unless run with ``--force``. On by default: tables hold results.
        pool_min_size: Connections the sink's pool keeps open (0 or more).
        pool_max_size: Most connections the sink's pool opens (at least 1, at least
            ``pool_min_size``).
        connect_timeout_s: How long a write waits for a connection before it fails as a
            transient error (retried by the runtime), and libpq's ``connect_timeout``
            (seconds, at least 1).

    Raises:
        ConfigurationError: a value is invalid.
    """

    dsn: str
    table: str
    destroy_protection: bool = True
    pool_min_size: int = 1
    pool_max_size: int = 4
    connect_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if not isinstance(self.dsn, str) or not self.dsn.strip():
            raise ConfigurationError(
                f"PostgresTable: invalid dsn {self._masked_dsn()!r}: expected a libpq connection "
                "string such as 'postgresql://user:password@host:5432/dbname', or 'env:NAME' to "
                "read it from an environment variable."
            )
        if self.dsn.startswith(ENV_PREFIX) and not _ENV_NAME.match(self.dsn[len(ENV_PREFIX) :]):
            raise ConfigurationError(
                f"PostgresTable: invalid dsn {self.dsn!r}: after 'env:' comes the name of an "
                "environment variable (letters, digits and '_'), e.g. 'env:DATABASE_URL'."
            )
        parts = self.table.split(".") if isinstance(self.table, str) else []
        if len(parts) not in (1, 2) or not all(_IDENT.match(p) for p in parts):
            raise ConfigurationError(
                f"PostgresTable: invalid table {self.table!r}: expected 'schema.table' or "
                "'table' made of letters, digits and '_' (not starting with a digit, at most "
                "63 characters each)."
            )
        for name in ("pool_min_size", "pool_max_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigurationError(f"PostgresTable: {name}={value!r} is not an int.")
        if self.pool_min_size < 0 or self.pool_max_size < 1 or self.pool_max_size < self.pool_min_size:
            raise ConfigurationError(
                f"PostgresTable: pool_min_size={self.pool_min_size!r}, pool_max_size="
                f"{self.pool_max_size!r}: need 0 <= pool_min_size <= pool_max_size and "
                "pool_max_size >= 1."
            )
        if (
            isinstance(self.connect_timeout_s, bool)
            or not isinstance(self.connect_timeout_s, int | float)
            or not self.connect_timeout_s >= 1
        ):
            raise ConfigurationError(
                f"PostgresTable: connect_timeout_s={self.connect_timeout_s!r}: expected a number "
                "of seconds, at least 1."
            )

    def _masked_dsn(self) -> str:
        return mask_dsn(self.dsn) if isinstance(self.dsn, str) else repr(type(self.dsn))

    @property
    def masked_dsn(self) -> str:
        """The DSN with its password replaced by ``***`` (see :func:`mask_dsn`)."""
        return self._masked_dsn()

    @property
    def schema_name(self) -> str:
        return self.table.split(".")[0] if "." in self.table else "public"

    @property
    def table_name(self) -> str:
        return self.table.split(".")[-1]

    def describe(self) -> str:
        return f"PostgresTable({self.table!r}, dsn={self.masked_dsn!r})"

    def __repr__(self) -> str:
        return (
            f"PostgresTable(dsn={self.masked_dsn!r}, table={self.table!r}, "
            f"destroy_protection={self.destroy_protection!r}, pool_min_size={self.pool_min_size!r}, "
            f"pool_max_size={self.pool_max_size!r}, connect_timeout_s={self.connect_timeout_s!r})"
        )

    def dead_letter_sibling(self) -> PostgresTable:
        return dataclasses.replace(self, table=f"{self.schema_name}.{DEAD_LETTER_TABLE_NAME}")
