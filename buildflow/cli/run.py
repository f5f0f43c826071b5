"""``buildflow run``: the live progress line, the run summary, the web UI of ``--ui``."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.live import Live
from rich.table import Table
from rich.text import Text

from buildflow.cli._common import (
    AppArg,
    EnvOpt,
    LogOpt,
    StateOpt,
    cli,
    configure_logging,
    err,
    fail,
    load_app,
    log,
    out,
)
from buildflow.errors import BuildflowError
from buildflow.runtime.base import BoundProcessor, ProcessorStats, RunOptions, RunSummary


class _Progress:
    """Formats the live progress line; the rate is over the last few seconds (EWMA)."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[float, int]] = {}
        self._rate: dict[str, float] = {}

    def text(self, stats: list[ProcessorStats], elapsed: float) -> Text:
        parts = []
        for s in stats:
            t0, n0 = self._last.get(s.name, (0.0, 0))
            if elapsed > t0:
                inst = (s.events - n0) / (elapsed - t0)
                self._rate[s.name] = 0.5 * inst + 0.5 * self._rate.get(s.name, inst)
            self._last[s.name] = (elapsed, s.events)
            loads = s.metrics.get("model_loads")
            parts.append(
                f"{s.name}: {s.events} events, {s.rows} rows, {s.dead_letters} dead-lettered, "
                f"{self._rate.get(s.name, 0.0):.1f} events/s, "
                f"backlog {s.backlog if s.backlog is not None else '?'}"
                + (f", model loads {int(loads)}" if loads is not None else "")
                + (
                    f", replicas {s.replicas} (model loads "
                    + "+".join(str(int(r["model_loads"] or 0)) for r in s.per_replica)
                    + ")"
                    if s.replicas is not None
                    else ""
                )
            )
        return Text(f"[{elapsed:6.1f}s] " + " | ".join(parts))


def _print_summary(summary: RunSummary) -> None:
    table = Table(title=f"run summary (stopped: {summary.stop_reason})", title_justify="left")
    for col in (
        "processor",
        "events",
        "rows",
        "dead letters",
        "setup calls",
        "model loads",
        "p50 ms",
        "p95 ms",
    ):
        table.add_column(col, justify="right" if col != "processor" else "left")
    for s in summary.processors:
        p50, p95 = s.latency_percentile_ms(50), s.latency_percentile_ms(95)
        loads = s.metrics.get("model_loads")
        table.add_row(
            s.name,
            str(s.events),
            str(s.rows),
            str(s.dead_letters),
            str(s.setup_calls),
            str(int(loads)) if loads is not None else "-",
            f"{p50:.0f}" if p50 is not None else "-",
            f"{p95:.0f}" if p95 is not None else "-",
        )
    out.print(table)
    replicas = [(s.name, r) for s in summary.processors for r in s.per_replica]
    if replicas:
        per = Table(title="replicas", title_justify="left")
        for col in (
            "processor",
            "replica",
            "state",
            "events",
            "rows",
            "dead letters",
            "model loads",
            "peak RSS MB",
        ):
            per.add_column(col, justify="left" if col in ("processor", "replica", "state") else "right")
        for name, r in replicas:
            per.add_row(
                name,
                str(r["replica"]),
                str(r["state"]),
                str(r["events"]),
                str(r["rows"]),
                str(r["dead_letters"]),
                str(int(r["model_loads"] or 0)),
                f"{r.get('peak_rss_mb', 0):.0f}",
            )
        out.print(per)
    first = f"{summary.first_row_s:.2f} s" if summary.first_row_s is not None else "-"
    busy = summary.busy_events_per_s
    busy_s = f" ({busy:.1f}/s until the last write)" if busy is not None else ""
    out.print(
        f"elapsed {summary.elapsed_s:.2f} s, {summary.events_per_s:.1f} events/s{busy_s}, first row after "
        f"{first}, peak RSS {summary.peak_rss_mb:.0f} MB, max event-loop lag "
        f"{summary.loop_lag_max_ms:.0f} ms"
    )


ProgressCallback = Callable[[list[ProcessorStats], float], None]


def _also(first: ProgressCallback | None, then: ProgressCallback) -> ProgressCallback:
    """``then``, preceded by ``first`` when there is one."""
    if first is None:
        return then

    def both(stats: list[ProcessorStats], elapsed: float) -> None:
        first(stats, elapsed)
        then(stats, elapsed)

    return both


def _start_ui(
    bound: list[BoundProcessor], on: bool, host: str, port: int, token: str | None, max_upload_mb: float
) -> tuple[Any, ProgressCallback | None]:
    """Start the web UI of ``run --ui``: (its server, the progress callback that feeds it),
    or (None, None) without ``--ui``."""
    if not on:
        return None, None
    try:
        from buildflow.ui import UiConfig, UiServer, UiState

        state = UiState()
        config = UiConfig(
            host=host, port=port, token=token, max_upload_bytes=int(max_upload_mb * 1024 * 1024)
        )
        server = UiServer(bound, state, config)
        url = server.start()
    except BuildflowError as e:
        raise fail(e) from e
    hint = "" if token is None else " (open it with ?token=<your token> once; the page keeps it)"
    err.print(f"UI: {url}{hint}", markup=False, soft_wrap=True)
    return server, state.update


@cli.command("run")
def run_cmd(
    app: AppArg,
    env: EnvOpt = None,
    state_dir: StateOpt = None,
    until_idle: Annotated[
        bool, typer.Option("--until-idle", help="Stop once every source is drained and every sink flushed.")
    ] = False,
    max_events: Annotated[
        int | None, typer.Option("--max-events", min=1, help="Stop after this many events, then drain.")
    ] = None,
    drain_timeout_s: Annotated[
        float, typer.Option("--drain-timeout-s", help="Seconds in-flight events get to finish after a stop.")
    ] = 30.0,
    summary_json: Annotated[
        Path | None, typer.Option("--summary-json", help="Also write the run summary as JSON to this file.")
    ] = None,
    progress: Annotated[
        bool, typer.Option("--progress/--no-progress", help="Live progress line (default: on a terminal).")
    ] = True,
    ui: Annotated[
        bool,
        typer.Option(
            "--ui", help="Also serve a web page: upload images, watch rows, metrics and dead letters live."
        ),
    ] = False,
    ui_host: Annotated[
        str, typer.Option("--ui-host", help="Address the page listens on; off loopback needs --ui-token.")
    ] = "127.0.0.1",
    ui_port: Annotated[int, typer.Option("--ui-port", help="Port of the page (0: a free one).")] = 8765,
    ui_token: Annotated[
        str | None,
        typer.Option(
            "--ui-token", envvar="BUILDFLOW_UI_TOKEN", help="Access token every page request must carry."
        ),
    ] = None,
    ui_max_upload_mb: Annotated[
        float, typer.Option("--ui-max-upload-mb", min=0.001, help="Largest file the page accepts, MiB.")
    ] = 20.0,
    runtime_name: Annotated[
        str,
        typer.Option(
            "--runtime",
            envvar="BUILDFLOW_RUNTIME",
            help="inprocess (default: one process) or ray (replicas on a Ray cluster; pip install "
            "'buildflow[ray]').",
        ),
    ] = "inprocess",
    address: Annotated[
        str | None,
        typer.Option(
            "--address",
            help="With --runtime ray: auto (the cluster `ray start` made here), ray://host:port or "
            "host:port. Default: a new local Ray instance, never an unrelated running cluster.",
        ),
    ] = None,
    replicas: Annotated[
        int | None,
        typer.Option(
            "--replicas",
            min=1,
            envvar="BUILDFLOW_REPLICAS",
            help="With --runtime ray: replicas of every processor (no autoscaling).",
        ),
    ] = None,
    log_level: LogOpt = "info",
) -> None:
    """Run the app until Ctrl-C (first: drain and exit; second: stop now)."""
    configure_logging(log_level)
    from buildflow.runtime.base import Runtime
    from buildflow.runtime.inprocess import InProcessRuntime

    try:
        node = load_app(app)
        environment = node.environment(env, state_dir)
        bound = node.bind(environment)
        from buildflow.cli.doctor import preflight

        preflight(node, environment, "run")  # gcp: credentials, APIs, billing, permissions
    except BuildflowError as e:
        raise fail(e) from e
    runtime: Runtime
    if runtime_name == "ray":
        from buildflow.runtime.ray_runtime import RayRuntime

        runtime = RayRuntime(address, working_dir=node.app_dir, replicas=replicas)
    elif runtime_name == "inprocess":
        if address is not None or replicas is not None:
            raise fail(BuildflowError("--address and --replicas need --runtime ray"))
        runtime = InProcessRuntime()
    else:
        raise fail(BuildflowError(f"unknown runtime {runtime_name!r}: use inprocess or ray"))
    options = RunOptions(until_idle=until_idle, max_events=max_events, drain_timeout_s=drain_timeout_s)
    err.print(
        f"running {node.name!r} in {environment.name!r}"
        + (" on ray" if runtime_name == "ray" else "")
        + ": "
        + ", ".join(f"{b.name} ({b.spec.source.describe()} -> {b.spec.sink.describe()})" for b in bound)
        + (" until idle" if until_idle else "; Ctrl-C to stop")
    )
    ui_server, on_ui = _start_ui(bound, ui, ui_host, ui_port, ui_token, ui_max_upload_mb)
    try:
        live_on = progress and err.is_terminal
        if live_on:
            line = _Progress()
            with Live(Text("starting..."), console=err, refresh_per_second=4, transient=False) as live:
                summary = runtime.run(
                    bound, options, on_progress=_also(on_ui, lambda s, t: live.update(line.text(s, t)))
                )
        elif progress:  # not a terminal (logs, CI): the same line, logged every 10 s
            line, last = _Progress(), [0.0]

            def log_progress(stats: list[ProcessorStats], elapsed: float) -> None:
                if elapsed - last[0] >= 10:
                    last[0] = elapsed
                    log.info("%s", line.text(stats, elapsed).plain)

            summary = runtime.run(bound, options, on_progress=_also(on_ui, log_progress))
        else:
            summary = runtime.run(bound, options, on_progress=on_ui)
    except BuildflowError as e:  # e.g. Ray missing or its cluster unreachable
        raise fail(e) from e
    finally:
        if ui_server is not None:
            ui_server.stop()
    _print_summary(summary)
    if summary_json is not None:
        summary_json.write_text(json.dumps(summary.to_dict(), indent=2, default=str))
    if summary.error:
        err.print(Text(f"error: {summary.error}", style="bold red"))
        raise typer.Exit(1)
    if summary.stop_reason == "hard-stop":
        raise typer.Exit(130)
