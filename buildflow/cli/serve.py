"""``buildflow serve``: run one processor of an app behind a synchronous predict endpoint."""

from __future__ import annotations

import time
from typing import Annotated

import typer
from rich.text import Text

from buildflow.cli._common import (
    AppArg,
    EnvOpt,
    LogOpt,
    StateOpt,
    check_servers,
    cli,
    configure_logging,
    err,
    explicit_env,
    fail,
    load_app,
)
from buildflow.cli._planned import check_planned
from buildflow.cli.run import _listen_endpoints, _print_summary, start_metrics
from buildflow.errors import BuildflowError, ConfigurationError
from buildflow.runtime.base import RunOptions


@cli.command("serve")
def serve_cmd(
    app: AppArg,
    processor: Annotated[
        str | None,
        typer.Option("--processor", help="Which processor to serve (default: the app's only one)."),
    ] = None,
    route: Annotated[str, typer.Option("--route", help="The path images are posted to.")] = "/classify",
    host: Annotated[
        str, typer.Option("--host", help="Address to listen on; off loopback needs --token.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port (0: a free one).")] = 8080,
    token: Annotated[
        str | None,
        typer.Option("--token", envvar="BUILDFLOW_HTTP_TOKEN", help="Access token every request must carry."),
    ] = None,
    max_upload_mb: Annotated[
        float, typer.Option("--max-upload-mb", min=0.001, help="Largest image accepted, MiB (413 above).")
    ] = 20.0,
    timeout_s: Annotated[
        float,
        typer.Option("--timeout-s", min=0.001, help="Seconds a request waits for its rows (504 after)."),
    ] = 60.0,
    metrics_port: Annotated[
        int | None,
        typer.Option("--metrics-port", min=0, max=65535, help="Serve Prometheus metrics (0: a free port)."),
    ] = None,
    metrics_host: Annotated[
        str, typer.Option("--metrics-host", help="Address of the metrics server.")
    ] = "127.0.0.1",
    drain_timeout_s: Annotated[
        float,
        typer.Option("--drain-timeout-s", help="Seconds in-flight requests get to finish after Ctrl-C."),
    ] = 30.0,
    env: EnvOpt = None,
    state_dir: StateOpt = None,
    log_level: LogOpt = "info",
) -> None:
    """Serve one processor over HTTP until Ctrl-C: POST an image to the route, get its rows.

    The processor's own source is replaced by an HTTPEndpoint; its sink and dead-letter
    destination stay (plan the app first). Same runtime as run: rows written before the
    answer, concurrent requests micro-batched, a bad image answered 422 and dead-lettered.
    """
    launched_at = time.time()
    configure_logging(log_level)
    from buildflow.io.http import HTTPEndpoint
    from buildflow.runtime.inprocess import InProcessRuntime

    try:
        node = load_app(app)
        names = [p.processor_name() for p in node.processors]
        if processor is None and len(names) != 1:
            raise ConfigurationError(
                f"app {node.name!r} has {len(names)} processors ({', '.join(names) or 'none'}); "
                "choose one with --processor NAME"
            )
        name = processor or names[0]
        if name not in names:
            raise ConfigurationError(
                f"app {node.name!r} has no processor {name!r}; it has: {', '.join(names)}"
            )
        endpoint = HTTPEndpoint(
            route=route,
            host=host,
            port=port,
            token=token,
            max_bytes=int(max_upload_mb * 1024 * 1024),
            timeout_s=timeout_s,
        )
        target = next(p for p in node.processors if p.processor_name() == name)
        # The instance's source() now returns the endpoint: binding checks the processor's
        # event type hint against HTTPRequestEvent as for any source.
        object.__setattr__(target, "source", lambda: endpoint)
        environment = node.environment(env, state_dir)
        check_planned(app, environment, node.app_dir, explicit=explicit_env(env), verb="serve")
        node.check()
        bound = [b for b in node.bind(environment) if b.name == name]
        check_servers(bound, environment)
    except BuildflowError as e:
        raise fail(e) from e
    err.print(
        f"serving {name} of {node.name!r} in {environment.name!r}: "
        f"{endpoint.describe()} -> {bound[0].spec.sink.describe()}; Ctrl-C to stop"
    )
    _listen_endpoints(bound)
    exporter, on_metrics = start_metrics(bound, metrics_port, metrics_host)
    try:
        summary = InProcessRuntime().run(
            bound, RunOptions(drain_timeout_s=drain_timeout_s), on_progress=on_metrics
        )
    except BuildflowError as e:
        raise fail(e) from e
    finally:
        if exporter is not None:
            exporter.stop()
    _print_summary(summary, launched_at)
    if summary.error:
        err.print(Text(f"error: {summary.error}", style="bold red"))
        raise typer.Exit(1)
    if summary.stop_reason == "hard-stop":
        raise typer.Exit(130)
