"""``buildflow query``: SQL over the app's sink table."""

from __future__ import annotations

import csv
import enum
import json
import sys
from typing import Annotated, Any

import typer
from rich.table import Table

from buildflow.cli._common import (
    AppArg,
    EnvOpt,
    LogOpt,
    StateOpt,
    choose_processor,
    cli,
    configure_logging,
    explicit_env,
    fail,
    load_app,
    out,
)
from buildflow.cli._planned import check_planned
from buildflow.errors import BuildflowError
from buildflow.sql import run_query


class Format(enum.StrEnum):
    """How ``buildflow query`` prints the result."""

    table = "table"
    json = "json"
    csv = "csv"


class Dialect(enum.StrEnum):
    """The SQL dialect of the query text."""

    googlesql = "googlesql"
    native = "native"


def _jsonable(v: Any) -> Any:
    if isinstance(v, (bytes, bytearray)):
        return f"<{len(v)} bytes>"
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if hasattr(v, "isoformat"):
        return v.isoformat()
    return v


@cli.command("query")
def query_cmd(
    app: AppArg,
    sql: Annotated[
        str,
        typer.Argument(
            help="GoogleSQL (BigQuery standard SQL) in every environment, e.g. "
            "'SELECT image_name, classifications[OFFSET(0)].label FROM image_classification.predictions'."
        ),
    ],
    env: EnvOpt = None,
    state_dir: StateOpt = None,
    processor: Annotated[
        str | None, typer.Option("--processor", help="Whose sink to query (default: the first processor's).")
    ] = None,
    fmt: Annotated[Format, typer.Option("--format", help="How to print the rows.")] = Format.table,
    dialect: Annotated[
        Dialect,
        typer.Option(
            "--dialect",
            help="googlesql: BigQuery's SQL, translated for the sink's engine; native: the "
            "engine's own SQL (DuckDB in local), passed through.",
        ),
    ] = Dialect.googlesql,
    log_level: LogOpt = "warning",
) -> None:
    """Query the sink's table in BigQuery's GoogleSQL, in every environment.

    In local the text is translated to DuckDB SQL (by sqlglot): the same rows everywhere.
    classifications[OFFSET(0)] is the first element in local, emulator and gcp alike.
    Table names: dataset.table or `project.dataset.table`.
    """
    configure_logging(log_level)
    try:
        node = load_app(app)
        environment = node.environment(env, state_dir)
        check_planned(app, environment, node.app_dir, explicit=explicit_env(env), verb="query")
        chosen = choose_processor(node.bind(environment), processor)
        cols, rows = run_query(chosen.sink, sql, native=dialect is Dialect.native)
    except BuildflowError as e:
        raise fail(e) from e
    if fmt is Format.json:
        out.print_json(json.dumps([dict(zip(cols, map(_jsonable, r))) for r in rows]))
    elif fmt is Format.csv:
        w = csv.writer(sys.stdout)
        w.writerow(cols)
        w.writerows(
            [[json.dumps(_jsonable(v)) if isinstance(v, (list, dict)) else v for v in r] for r in rows]
        )
    else:
        table = Table(show_lines=False)
        for c in cols:
            table.add_column(c, overflow="fold")
        for r in rows:
            table.add_row(
                *[json.dumps(_jsonable(v)) if isinstance(v, (list, dict)) else str(_jsonable(v)) for v in r]
            )
        out.print(table)
        out.print(f"{len(rows)} row(s)")
