"""What every command shares: the Typer app, the consoles, the common options, loading the
app, and printing errors and plans."""

from __future__ import annotations

import importlib
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
import typer.core
from rich.console import Console
from rich.table import Table
from rich.text import Text

from buildflow.errors import AppLoadError, BuildflowError
from buildflow.node import Node
from buildflow.provisioning import Change
from buildflow.runtime.base import BoundProcessor

#: The order ``buildflow --help`` lists the commands in: a user's first session top to bottom.
#: Commands not listed here follow in the order they were registered.
COMMAND_ORDER: tuple[str, ...] = ("plan", "run", "upload", "produce", "query", "destroy")


class _OrderedGroup(typer.core.TyperGroup):
    def list_commands(self, ctx: Any) -> list[str]:
        names = list(super().list_commands(ctx))
        rank = {n: i for i, n in enumerate(COMMAND_ORDER)}
        return sorted(names, key=lambda n: (rank.get(n, len(rank)), names.index(n)))


cli = typer.Typer(
    name="buildflow",
    help="Plan, run, query and destroy buildflow apps.",
    cls=_OrderedGroup,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Not on a terminal (pipes, CI, logs): wide enough that tables and log lines don't wrap.
out = Console(width=None if sys.stdout.isatty() else 140)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 140)
log = logging.getLogger("buildflow")

AppArg = Annotated[str, typer.Argument(help="The app as module:attribute, e.g. main:app.")]
EnvOpt = Annotated[
    str | None,
    typer.Option("--env", help="local | emulator | gcp (default: $BUILDFLOW_ENV or local)."),
]
StateOpt = Annotated[
    Path | None,
    typer.Option("--state-dir", help="Local state folder (default: .buildflow/<env> beside the app)."),
]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Apply without asking.")]
LogOpt = Annotated[
    str, typer.Option("--log-level", envvar="BUILDFLOW_LOG_LEVEL", help="debug | info | warning | error.")
]


def configure_logging(level: str) -> None:
    from rich.logging import RichHandler

    handler = RichHandler(console=err, show_path=False, rich_tracebacks=level.lower() == "debug")
    logging.basicConfig(level=level.upper(), format="%(message)s", handlers=[handler], force=True)
    for noisy in ("watchfiles", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def load_app(spec: str) -> Node:
    """Import ``module:attribute`` (or ``path/to/file.py:attribute``) and return the Node.

    The current directory is put on ``sys.path`` first, as ``python -m`` would.

    Raises:
        AppLoadError: the module cannot be imported or the attribute is not a Node.
    """
    module_name, _, attr = spec.partition(":")
    attr = attr or "app"
    if not module_name:
        raise AppLoadError(f"invalid app {spec!r}: expected module:attribute, e.g. main:app")
    if module_name.endswith(".py") or os.sep in module_name:
        path = Path(module_name).resolve()
        sys.path.insert(0, str(path.parent))
        module_name = path.stem
    elif os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except BuildflowError:
        raise
    except ModuleNotFoundError as e:
        if e.name == module_name:
            raise AppLoadError(
                f"cannot import {module_name!r} from {os.getcwd()!r}: no such module; run "
                "buildflow from the folder that holds it, or pass path/to/main.py:app"
            ) from e
        raise AppLoadError(f"importing {module_name!r} failed: {e}") from e
    except Exception as e:
        raise AppLoadError(f"importing {module_name!r} failed: {type(e).__name__}: {e}") from e
    app = getattr(module, attr, None)
    if not isinstance(app, Node):
        raise AppLoadError(
            f"{module_name}:{attr} is {type(app).__name__ if app is not None else 'missing'}, "
            "not a buildflow.Node; define `app = Node()` in that module"
        )
    return app


def fail(e: BaseException) -> typer.Exit:
    err.print(Text(f"error: {e}", style="bold red"))
    if log.isEnabledFor(logging.DEBUG):
        err.print_exception()
    return typer.Exit(1)


_ACTION_STYLE = {
    "create": "green",
    "update": "yellow",
    "no change": "dim",
    "conflict": "bold red",
    "delete": "red",
    "absent": "dim",
    "protected": "bold yellow",
    "kept": "cyan",
}


def print_changes(title: str, changes: list[Change]) -> None:
    table = Table(title=title, title_justify="left", show_lines=False)
    table.add_column("action")
    table.add_column("kind")
    table.add_column("resource", overflow="fold")
    table.add_column("detail", overflow="fold")
    for c in changes:
        table.add_row(
            Text(c.action, style=_ACTION_STYLE[c.action]),
            c.resource.kind,
            c.resource.name,
            "\n".join(c.details),
        )
    out.print(table)


def confirm(question: str, yes: bool) -> bool:
    if yes:
        return True
    if not sys.stdin.isatty() and os.environ.get("BUILDFLOW_ASSUME_TTY") != "1":
        # Piped input: read one answer line, default No.
        out.print(f"{question} [y/N]: ", end="", markup=False)
        answer = sys.stdin.readline().strip().lower()
        out.print(answer, markup=False)
        return answer in ("y", "yes")
    return typer.confirm(question, default=False)


def choose_processor(bound: list[BoundProcessor], processor: str | None) -> BoundProcessor:
    """The processor named ``processor``, or the first one."""
    chosen = next((b for b in bound if processor in (None, b.name)), None)
    if chosen is None:
        raise AppLoadError(
            f"no processor named {processor!r}; processors: {', '.join(b.name for b in bound)}"
        )
    return chosen
