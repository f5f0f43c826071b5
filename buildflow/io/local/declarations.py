"""The :class:`DuckDBTable` declaration: a table in a local DuckDB file, in any environment."""

from __future__ import annotations

import dataclasses
import re

from buildflow.errors import ConfigurationError
from buildflow.io.base import DEAD_LETTER_TABLE_NAME, SinkDeclaration

__all__ = ["DuckDBTable"]

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


@dataclasses.dataclass(frozen=True)
class DuckDBTable(SinkDeclaration):
    """A table in a DuckDB database file.

    Args:
        table: ``schema.table`` or ``table`` (schema ``main``).
        database: Path of the database file; relative paths are resolved against the
            environment's state dir. Default: the environment's ``warehouse.duckdb``.
        destroy_protection: ``destroy`` refuses to drop the table unless ``--force``.
    """

    table: str
    database: str | None = None
    destroy_protection: bool = True

    def __post_init__(self) -> None:
        parts = self.table.split(".") if isinstance(self.table, str) else []
        if len(parts) not in (1, 2) or not all(_IDENT.match(p) for p in parts):
            raise ConfigurationError(
                f"DuckDBTable: invalid table {self.table!r}: expected 'schema.table' or "
                "'table' made of letters, digits and '_' (not starting with a digit)."
            )

    @property
    def schema_name(self) -> str:
        return self.table.split(".")[0] if "." in self.table else "main"

    @property
    def table_name(self) -> str:
        return self.table.split(".")[-1]

    def describe(self) -> str:
        return f"DuckDBTable({self.table!r})"

    def dead_letter_sibling(self) -> DuckDBTable:
        return DuckDBTable(
            table=f"{self.schema_name}.{DEAD_LETTER_TABLE_NAME}",
            database=self.database,
            destroy_protection=self.destroy_protection,
        )
