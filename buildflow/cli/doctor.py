"""``buildflow doctor``: what the app needs in its environment, and the fix for what is
missing (the checks of :mod:`buildflow.io.google.preflight`)."""

from __future__ import annotations

from typing import Literal

import typer
from rich.table import Table
from rich.text import Text

from buildflow.cli._common import (
    AppArg,
    EnvOpt,
    LogOpt,
    StateOpt,
    cli,
    configure_logging,
    fail,
    load_app,
    out,
)
from buildflow.errors import BuildflowError, ConfigurationError
from buildflow.io.google.preflight import Check

_STYLE = {"ok": "green", "fail": "bold red", "unknown": "yellow"}


def print_checks(title: str, checks: list[Check]) -> None:
    table = Table(title=title, title_justify="left")
    for col in ("check", "result", "detail", "fix"):
        table.add_column(col, overflow="fold")
    for c in checks:
        table.add_row(c.what, Text(c.status, style=_STYLE[c.status]), c.detail, c.fix)
    out.print(table)


def preflight(node: object, environment: object, purpose: Literal["plan", "run"]) -> None:
    """The doctor's checks before ``plan`` or ``run`` act in ``gcp``.

    Raises:
        ConfigurationError: a check failed; the message lists each failure and its fix.
    """
    from buildflow.io.google.preflight import run_checks

    if getattr(environment, "name", None) != "gcp":
        return
    checks = run_checks(node, environment, purpose=purpose)  # type: ignore[arg-type]
    failed = [c for c in checks if c.status == "fail"]
    if failed:
        lines = [f"{c.what}: {c.detail}" + (f"\n    fix: {c.fix}" if c.fix else "") for c in failed]
        raise ConfigurationError(
            "the project is not ready (run `buildflow doctor <app>` for the full report):\n  "
            + "\n  ".join(lines)
        )


@cli.command("doctor")
def doctor_cmd(
    app: AppArg, env: EnvOpt = None, state_dir: StateOpt = None, log_level: LogOpt = "warning"
) -> None:
    """Check credentials, project, APIs, billing and permissions (gcp) or the stack's servers
    (emulator), and print the fix for each problem. Exit code 1 if a check failed."""
    from buildflow.io.google.preflight import run_checks

    configure_logging(log_level)
    try:
        node = load_app(app)
        environment = node.environment(env, state_dir)
        checks = run_checks(node, environment)
        print_checks(f"doctor for {node.name!r} in {environment.name!r}", checks)
        if any(c.status == "fail" for c in checks):
            out.print(Text("Some checks failed: see the fix column.", style="bold red"))
            raise typer.Exit(1)
        out.print(Text("Ready.", style="green"))
    except BuildflowError as e:
        raise fail(e) from e
