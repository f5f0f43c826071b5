"""One query dialect everywhere: BigQuery's GoogleSQL, translated for the engine of the sink.

``buildflow query`` takes GoogleSQL (what a BigQuery table is queried with in production) in
every environment. A sink whose engine speaks another dialect (DuckDB in ``local``,
PostgreSQL) gets the query translated by sqlglot (https://sqlglot.com, ``read="bigquery"``),
plus the fixes below where sqlglot's output would give a different answer than BigQuery:

* ``UNNEST(a) AS x WITH OFFSET AS o``: BigQuery's offset counts from 0. sqlglot writes
  DuckDB's ``WITH ORDINALITY``, which counts from 1; here it becomes a lateral subquery
  whose ``o`` is ``0 .. len(a) - 1``.
* ``LEFT JOIN UNNEST(a)`` needs no ``ON`` in GoogleSQL; the other engines get ``ON TRUE``.
* ``project.dataset.table`` (backticked or not): a DuckDB or PostgreSQL table is
  ``schema.table``, so the project is dropped: ``dataset.table``.

What sqlglot translates itself, and the tests check against both engines: ``a[OFFSET(i)]``
/ ``a[i]`` (0-based) and ``a[ORDINAL(i)]`` (1-based) become DuckDB's 1-based ``a[i + 1]``
/ ``a[i]``; ``SAFE_OFFSET`` / ``SAFE_ORDINAL`` the same (DuckDB returns NULL out of range,
as the SAFE forms do; the plain forms raise in BigQuery and give NULL here);
``ORDER BY x`` keeps BigQuery's NULLS FIRST; ``COUNTIF``, ``SAFE_DIVIDE``, ``FLOAT64``,
``ROUND``, ``TIMESTAMP_DIFF``... are rewritten to their equivalents.
"""

from __future__ import annotations

import itertools
import logging
from typing import TYPE_CHECKING, Any, cast

from buildflow.errors import BuildflowError, MissingDependencyError, QueryError

if TYPE_CHECKING:
    from buildflow.io.base import SinkProvider

__all__ = ["QUERY_DIALECT", "to_dialect", "run_query"]

log = logging.getLogger(__name__)

#: The dialect ``buildflow query`` reads, as sqlglot names it.
QUERY_DIALECT = "bigquery"


def to_dialect(sql: str, dialect: str) -> str:
    """Translate one GoogleSQL statement to ``dialect`` (a sqlglot dialect name:
    ``"duckdb"``, ``"postgres"``; ``"bigquery"`` returns ``sql`` unchanged).

    Raises:
        QueryError: the text is not valid GoogleSQL (the message shows sqlglot's reason
            and the position), or holds more than one statement.
        MissingDependencyError: sqlglot is not installed.
    """
    if dialect == QUERY_DIALECT:
        return sql
    try:
        import sqlglot
        from sqlglot import exp
    except ImportError as e:  # pragma: no cover - a core dependency
        raise MissingDependencyError("buildflow query needs sqlglot: pip install sqlglot") from e
    try:
        statements = [s for s in sqlglot.parse(sql, read=QUERY_DIALECT) if s is not None]
    except sqlglot.errors.ParseError as e:
        where = "".join(
            f"; line {d.get('line')}, column {d.get('col')}: "
            f"{d.get('start_context', '')}>>>{d.get('highlight', '')}<<<{d.get('end_context', '')}"
            for d in e.errors[:1]
        )
        reason = e.errors[0].get("description") if e.errors else str(e)
        raise QueryError(f"not valid GoogleSQL (BigQuery standard SQL): {reason}{where}") from e
    if len(statements) != 1:
        raise QueryError(f"expected one SQL statement, got {len(statements)}: {sql!r}")
    (tree,) = statements  # parsed afresh: the fixes below may change it in place
    names = (f"_unnest{i}" for i in itertools.count())
    for select in tree.find_all(exp.Select):
        _name_columns_as_bigquery(select)

    def fix(node: exp.Expression) -> exp.Expression:
        if isinstance(node, exp.Table) and node.args.get("catalog") is not None:
            node.set("catalog", None)  # project.dataset.table -> dataset.table
        elif isinstance(node, exp.Join) and isinstance(node.this, exp.Unnest):
            if node.side and node.args.get("on") is None and not node.args.get("using"):
                node.set("on", exp.true())  # LEFT JOIN UNNEST(a): GoogleSQL needs no ON
        elif dialect == "duckdb" and isinstance(node, exp.Unnest) and node.args.get("offset"):
            return cast("exp.Expression", _unnest_with_offset(node, next(names)))
        return node

    tree = tree.transform(fix)
    try:
        return tree.sql(dialect=dialect)
    except sqlglot.errors.SqlglotError as e:  # pragma: no cover - sqlglot's own limits
        raise QueryError(f"cannot translate the query to {dialect}: {e}") from e


def run_query(
    sink: SinkProvider, sql: str, *, native: bool = False
) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Run GoogleSQL ``sql`` (or, with ``native``, the engine's own SQL) on ``sink``'s
    store: (column names, rows). What ``buildflow query`` runs.

    Raises:
        QueryError: the sink has no SQL, the text is not valid GoogleSQL, or the engine
            refused it (a missing table: the message lists the tables there are).
    """
    engine = sink.sql_dialect
    if engine is None:
        raise QueryError(f"{sink.declaration.describe()} cannot be queried with SQL")
    text = sql if native else to_dialect(sql, engine)
    if text != sql:
        log.debug("%s SQL: %s", engine, text)
    try:
        return sink.query(text)
    except BuildflowError:
        raise
    except Exception as e:
        raise QueryError(f"query failed: {type(e).__name__}: {e}") from e


def _name_columns_as_bigquery(select: object) -> None:
    """Give a select's unnamed columns BigQuery's names: a field path ``a.b``, ``a[OFFSET(0)].b``
    is named ``b``; any other expression ``f0_``, ``f1_``... (numbered among the unnamed ones),
    where DuckDB would name the column after the expression's text."""
    from sqlglot import exp

    assert isinstance(select, exp.Select)
    anonymous = itertools.count()
    named: list[Any] = []
    for e in select.expressions:
        if isinstance(e, (exp.Alias, exp.Star, exp.Column)) or (
            isinstance(e, exp.Column) and isinstance(e.this, exp.Star)
        ):
            named.append(e)
        elif isinstance(e, exp.Dot) and e.name:
            named.append(exp.alias_(e, e.name, quoted=True))
        else:
            named.append(exp.alias_(e, f"f{next(anonymous)}_", quoted=False))
    select.set("expressions", named)


def _unnest_with_offset(node: object, alias: str) -> object:
    """``UNNEST(a) AS x WITH OFFSET AS o`` -> ``(SELECT UNNEST(a) AS x, UNNEST(range(len(a)))
    AS o) AS alias``: DuckDB zips the two unnests of one SELECT, and reads ``a`` from the
    tables before it in the FROM clause (a lateral join)."""
    from sqlglot import exp

    assert isinstance(node, exp.Unnest)
    (array,) = node.expressions
    table_alias = node.args.get("alias")
    columns = list(table_alias.columns) if table_alias is not None else []
    value = columns[0].name if columns else "value"
    offset = node.args["offset"]
    offset_name = offset.name if isinstance(offset, exp.Expression) and offset.name else "offset"
    select = exp.select(
        exp.alias_(exp.Explode(this=array.copy()), value, quoted=False),
        exp.alias_(
            exp.Explode(this=exp.func("range", exp.func("len", array.copy()))),
            offset_name,
            quoted=False,
        ),
    )
    return exp.Subquery(this=select, alias=exp.TableAlias(this=exp.to_identifier(alias)))
