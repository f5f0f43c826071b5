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
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from buildflow.errors import AppLoadError, BuildflowError
from buildflow.node import Node
from buildflow.provisioning import Change
from buildflow.runtime.base import BoundProcessor

#: The order ``buildflow --help`` lists the commands in: a user's first session top to bottom.
#: Commands not listed here follow in the order they were registered.
COMMAND_ORDER: tuple[str, ...] = ("plan", "run", "serve", "upload", "produce", "query", "destroy")


def plain_help(command: Any) -> Any:
    """Escape Rich markup in the help strings of ``command`` (a Click command as Typer
    builds it: its own help and its options' and arguments'), once, so that they render as
    written. Typer reads help as Rich markup, where ``pip install 'buildflow[ray]'`` would
    lose ``[ray]`` as a style tag. Returns ``command``, changed in place."""
    if not getattr(command, "_buildflow_plain_help", False):
        for attr in ("help", "short_help", "epilog"):
            text = getattr(command, attr, None)
            if text:
                setattr(command, attr, escape(text))
        for param in command.params:
            text = getattr(param, "help", None)
            if text:
                param.help = escape(text)
        command._buildflow_plain_help = True
    return command


class _OrderedGroup(typer.core.TyperGroup):
    """Lists the commands in :data:`COMMAND_ORDER`; every help string is plain text (no
    Rich markup: :func:`plain_help`), whichever module registers the command."""

    def list_commands(self, ctx: Any) -> list[str]:
        names = list(super().list_commands(ctx))
        rank = {n: i for i, n in enumerate(COMMAND_ORDER)}
        return sorted(names, key=lambda n: (rank.get(n, len(rank)), names.index(n)))

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        command = super().get_command(ctx, cmd_name)
        return None if command is None else plain_help(command)

    def format_help(self, ctx: Any, formatter: Any) -> None:
        plain_help(self)
        super().format_help(ctx, formatter)


cli = typer.Typer(
    name="buildflow",
    help="Plan, run, query and destroy buildflow apps.",
    cls=_OrderedGroup,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _width(tty: bool) -> int | None:
    """On a terminal: its width (or $COLUMNS). Not on one (pipes, CI, logs): $COLUMNS if
    set, else 140, wide enough that tables and log lines don't wrap."""
    columns = os.environ.get("COLUMNS", "")
    if tty:
        return None
    return int(columns) if columns.isdigit() and int(columns) > 0 else 140


out = Console(width=_width(sys.stdout.isatty()))
err = Console(stderr=True, width=_width(sys.stderr.isatty()))
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


def check_servers(bound: list[BoundProcessor], environment: Any) -> None:
    """The fast reachability check (:func:`buildflow.endpoints.preflight`) of the servers
    the environment and the app's Kafka sources and sinks point at."""
    from buildflow.endpoints import preflight

    decls = [d.declaration for b in bound for d in (b.source, b.sink, b.dead_letter)]
    preflight(environment, [str(d.bootstrap_servers) for d in decls if hasattr(d, "bootstrap_servers")])


def explicit_env(env: str | None) -> bool:
    """Whether the environment was chosen (``--env`` or ``BUILDFLOW_ENV``), not defaulted."""
    return bool(env or os.environ.get("BUILDFLOW_ENV"))


def configure_logging(level: str) -> None:
    from rich.logging import RichHandler

    handler = RichHandler(console=err, show_path=False, rich_tracebacks=level.lower() == "debug")
    logging.basicConfig(level=level.upper(), format="%(message)s", handlers=[handler], force=True)
    for noisy in ("watchfiles", "asyncio", "sqlglot"):
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
        nodes = [n for n, v in vars(module).items() if isinstance(v, Node) and not n.startswith("_")]
        what = f"has no {attr!r}" if app is None else f"has {attr!r}, a {type(app).__name__}"
        if nodes:
            found = ", ".join(f"{n!r}, a buildflow.Node" for n in nodes)
            fix = f"use {module_name}:{nodes[0]}"
        else:
            found, fix = "no buildflow.Node", "define `app = Node()` in that module"
        raise AppLoadError(f"{module_name} {what}; {module_name} has {found}: {fix}")
    return app


def display_path(path: Path, cwd: Path | None = None) -> str:
    """``path`` as a user would type it here: relative to ``cwd`` (default: the current
    directory) when it lies inside it, e.g. ``.buildflow/local``; absolute otherwise."""
    here = (cwd or Path.cwd()).resolve()
    resolved = Path(path).resolve()
    if resolved == here:
        return "."
    if resolved.is_relative_to(here):
        return str(resolved.relative_to(here))
    return str(resolved)


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
