"""``buildflow query``: SQL over the app's sink table."""

from __future__ import annotations

import csv
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
    fail,
    load_app,
    out,
)
from buildflow.errors import BuildflowError


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
    sql: Annotated[str, typer.Argument(help="SQL, e.g. 'SELECT * FROM image_classification.predictions'.")],
    env: EnvOpt = None,
    state_dir: StateOpt = None,
    processor: Annotated[
        str | None, typer.Option("--processor", help="Whose sink to query (default: the first processor's).")
    ] = None,
    fmt: Annotated[str, typer.Option("--format", help="table | json | csv")] = "table",
    log_level: LogOpt = "warning",
) -> None:
    """Query the results table (local: DuckDB SQL over the warehouse; the table of
    BigQueryTable('project.dataset.table') is dataset.table)."""
    configure_logging(log_level)
    try:
        node = load_app(app)
        chosen = choose_processor(node.bind(node.environment(env, state_dir)), processor)
        try:
            cols, rows = chosen.sink.query(sql)
        except BuildflowError:
            raise
        except Exception as e:
            raise BuildflowError(f"query failed: {e}") from e
    except BuildflowError as e:
        raise fail(e) from e
    if fmt == "json":
        out.print_json(json.dumps([dict(zip(cols, map(_jsonable, r))) for r in rows]))
    elif fmt == "csv":
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
