"""``buildflow plan`` and ``buildflow destroy``."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.text import Text

from buildflow.cli._common import (
    AppArg,
    EnvOpt,
    LogOpt,
    StateOpt,
    YesOpt,
    check_servers,
    cli,
    configure_logging,
    confirm,
    display_path,
    err,
    fail,
    load_app,
    out,
    print_changes,
)
from buildflow.cli._planned import record_destroy, record_plan
from buildflow.cli.doctor import preflight
from buildflow.errors import BuildflowError
from buildflow.provisioning import apply, destroy, plan, plan_destroy


@cli.command("plan")
def plan_cmd(
    app: AppArg,
    env: EnvOpt = None,
    state_dir: StateOpt = None,
    yes: YesOpt = False,
    log_level: LogOpt = "info",
) -> None:
    """Show what the app declares against what exists (create / update / no change /
    conflict), then apply after confirmation."""
    configure_logging(log_level)
    try:
        node = load_app(app)
        environment = node.environment(env, state_dir)
        node.check()
        check_servers(node.bind(environment), environment)
        preflight(node, environment, "plan")  # gcp: credentials, APIs, billing, permissions
        changes = plan(node.resources(environment))
        where = display_path(environment.state_dir)
        print_changes(f"plan for {node.name!r} in {environment.name!r} ({where})", changes)
        conflicts = [c for c in changes if c.action == "conflict"]
        if conflicts:
            err.print(
                Text(
                    f"error: {len(conflicts)} conflict(s): the existing resources differ from the "
                    "declarations in ways plan will not change. Change the row dataclass back, use a "
                    "new table name, or destroy the old resource.",
                    style="bold red",
                )
            )
            raise typer.Exit(1)
        todo = [c for c in changes if c.action in ("create", "update")]
        if not todo:
            record_plan(app, environment, node.app_dir)
            out.print("No changes. Everything the app declares exists.")
            return
        if not confirm(f"Apply {len(todo)} change(s)?", yes):
            out.print("Nothing applied.")
            raise typer.Exit(1)
        apply(changes)
        record_plan(app, environment, node.app_dir)
        out.print(Text(f"Applied {len(todo)} change(s).", style="green"))
    except BuildflowError as e:
        raise fail(e) from e


@cli.command("destroy")
def destroy_cmd(
    app: AppArg,
    env: EnvOpt = None,
    state_dir: StateOpt = None,
    yes: YesOpt = False,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Also delete protected tables and non-empty buckets that this app created "
            "(never a resource it did not create).",
        ),
    ] = False,
    log_level: LogOpt = "info",
) -> None:
    """Delete what the app created. Refuses protected resources unless --force; keeps (and
    lists, with the reason) what it did not create or what other apps still use."""
    configure_logging(log_level)
    try:
        node = load_app(app)
        environment = node.environment(env, state_dir)
        changes = plan_destroy(node.resources(environment), force=force)
        print_changes(f"destroy {node.name!r} in {environment.name!r}", changes)
        if any(c.action == "protected" for c in changes):
            destroy(changes)  # raises DestroyProtectedError with the fix
        todo = [c for c in changes if c.action == "delete"]
        kept = [c for c in changes if c.action == "kept"]
        if kept:
            out.print(f"Keeping {len(kept)} resource(s) this app did not create or others still use.")
        if not todo:
            record_destroy(app, environment, node.app_dir)
            out.print("Nothing to destroy.")
            return
        if not confirm(f"Delete {len(todo)} resource(s) and everything in them?", yes):
            out.print("Nothing deleted.")
            raise typer.Exit(1)
        destroy(changes)
        record_destroy(app, environment, node.app_dir)
        out.print(Text(f"Deleted {len(todo)} resource(s).", style="green"))
    except BuildflowError as e:
        raise fail(e) from e
