"""``buildflow backfill``: process the objects that were in a bucket before its
notifications existed."""

from __future__ import annotations

from typing import Annotated

import typer

from buildflow.cli._common import (
    AppArg,
    EnvOpt,
    LogOpt,
    StateOpt,
    YesOpt,
    cli,
    configure_logging,
    confirm,
    fail,
    load_app,
    out,
)
from buildflow.errors import BuildflowError


@cli.command("backfill")
def backfill_cmd(
    app: AppArg,
    env: EnvOpt = None,
    state_dir: StateOpt = None,
    yes: YesOpt = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only count the objects.")] = False,
    log_level: LogOpt = "warning",
) -> None:
    """Enqueue the objects already in each GCSFileStream bucket as upload events, with the
    event ids their notifications have (bucket/object#generation), so they are processed
    once, like new uploads. In local, nothing to do: every run lists the bucket folder."""
    from buildflow.io.google.gcs import GCSFileStreamProvider

    configure_logging(log_level)
    try:
        node = load_app(app)
        environment = node.environment(env, state_dir)
        bound = node.bind(environment)
        providers = {
            b.source.declaration.bucket_name: b.source
            for b in bound
            if isinstance(b.source, GCSFileStreamProvider)
        }
        if environment.name == "local" or not providers:
            out.print(
                "Nothing to backfill: "
                + (
                    "in local every run processes the files already in the bucket folder."
                    if environment.name == "local"
                    else "the app reads no GCSFileStream bucket."
                )
            )
            return
        counts = {name: p.backfill(dry_run=True) for name, p in providers.items()}
        for name, n in counts.items():
            out.print(f"gs://{name}: {n} object(s)", markup=False)
        if dry_run or not sum(counts.values()):
            return
        if not confirm(f"Enqueue {sum(counts.values())} object(s) as upload events?", yes):
            out.print("Nothing enqueued.")
            raise typer.Exit(1)
        for name, p in providers.items():
            n = p.backfill()
            out.print(f"gs://{name}: enqueued {n} object(s)", markup=False)
    except BuildflowError as e:
        raise fail(e) from e
