"""``buildflow run``: the live progress line, the run summary, the web UI of ``--ui``."""

from __future__ import annotations

import faulthandler
import json
import signal
import sys
import time
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
    check_servers,
    cli,
    configure_logging,
    err,
    explicit_env,
    fail,
    load_app,
    log,
    out,
)
from buildflow.cli._planned import check_planned
from buildflow.errors import BuildflowError
from buildflow.runtime.base import BoundProcessor, ProcessorStats, RunOptions, RunSummary


class _Progress:
    """Formats the live progress line; the rate is over the last few seconds (EWMA).

    The clock is the command's own (seconds since ``buildflow run`` started), in both
    runtimes: it never goes back, whatever clock a runtime reports progress with.
    """

    def __init__(self, launched: float | None = None) -> None:
        self._launched = time.monotonic() if launched is None else launched
        self._last: dict[str, tuple[float, int]] = {}
        self._rate: dict[str, float] = {}

    def text(self, stats: list[ProcessorStats], _runtime_elapsed: float = 0.0) -> Text:
        elapsed = time.monotonic() - self._launched
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
                + (f", replicas {s.replicas}" if s.replicas is not None else "")
                + (
                    " (model loads " + "+".join(str(int(r["model_loads"] or 0)) for r in s.per_replica) + ")"
                    if s.replicas is not None and s.per_replica
                    else ""
                )
            )
        return Text(f"[{elapsed:6.1f}s] " + " | ".join(parts))


def _fitted(title: str, columns: list[tuple[str, str]], rows: list[list[str]]) -> list[Table]:
    """One table of ``rows``, or, when it would not fit the console's width, one table per
    distinct first column value (e.g. the processor) with that value as its title: a name is
    never cut to ``process…`` (titles wrap; cells would be cut)."""

    def table(t: str | None, cols: list[tuple[str, str]], body: list[list[str]]) -> Table:
        tab = Table(title=t, title_justify="left")
        for name, justify in cols:
            tab.add_column(name, justify=justify, overflow="fold")  # type: ignore[arg-type]
        for r in body:
            tab.add_row(*r)
        return tab

    whole = table(title, columns, rows)
    if out.measure(whole, options=out.options.update(max_width=10_000)).maximum <= out.width:
        return [whole]
    keys = list(dict.fromkeys(r[0] for r in rows))
    stacked = [
        table(f"{title}: {columns[0][0]} {k}", columns[1:], [r[1:] for r in rows if r[0] == k]) for k in keys
    ]
    return stacked


def _print_summary(summary: RunSummary, launched_at: float | None = None) -> None:
    """The run summary: a table of processors, one of replicas (scale-out runtimes), and a
    line of totals. ``launched_at``: wall clock (epoch s) of the command's start, the origin
    of "launch to first row" in every runtime."""
    cols = [("processor", "left")] + [
        (c, "right")
        for c in ("events", "rows", "dead letters", "setup calls", "model loads", "p50 ms", "p95 ms")
    ]
    rows = []
    for s in summary.processors:
        p50, p95 = s.latency_percentile_ms(50), s.latency_percentile_ms(95)
        loads = s.metrics.get("model_loads")
        rows.append(
            [
                s.name,
                str(s.events),
                str(s.rows),
                str(s.dead_letters),
                str(s.setup_calls),
                str(int(loads)) if loads is not None else "-",
                f"{p50:.0f}" if p50 is not None else "-",
                f"{p95:.0f}" if p95 is not None else "-",
            ]
        )
    for t in _fitted(f"run summary (stopped: {summary.stop_reason})", cols, rows):
        out.print(t)
    replicas = [(s.name, r) for s in summary.processors for r in s.per_replica]
    if replicas:
        rcols = [("processor", "left"), ("replica", "left"), ("state", "left"), ("node", "left")] + [
            (c, "right") for c in ("events", "rows", "dead letters", "model loads", "peak RSS MB")
        ]
        rrows = [
            [
                name,
                str(r["replica"]).removeprefix(f"{name}-"),
                str(r["state"]),
                _short_node(r.get("node")),
                str(r["events"]),
                str(r["rows"]),
                str(r["dead_letters"]),
                str(int(r["model_loads"] or 0)),
                f"{r.get('peak_rss_mb', 0):.0f}",
            ]
            for name, r in replicas
        ]
        for t in _fitted("replicas", rcols, rrows):
            out.print(t)
    firsts = [p.first_row_at for p in summary.processors if p.first_row_at is not None]
    first_row = f"{max(0.0, min(firsts) - launched_at):.2f} s" if firsts and launched_at is not None else "-"
    lat = sorted(x for p in summary.processors for x in p.latencies_ms)
    lat_p50 = f"{lat[(len(lat) - 1) // 2]:.0f} ms" if lat else "-"
    busy = summary.busy_events_per_s
    busy_s = f" ({busy:.1f}/s until the last write)" if busy is not None else ""
    out.print(
        f"elapsed {summary.elapsed_s:.2f} s, {summary.events_per_s:.1f} events/s{busy_s}, launch to first "
        f"row {first_row}, receive-to-row p50 {lat_p50}, peak RSS {summary.peak_rss_mb:.0f} MB, max "
        f"event-loop lag {summary.loop_lag_max_ms:.0f} ms"
    )


def dump_stacks_on_sigusr1() -> bool:
    """Make ``kill -USR1 <pid>`` print every Python thread's stack to stderr and go on
    (Python's :mod:`faulthandler`; the role of a JVM's ``jstack``): what a run that looks
    stuck is waiting for. Not on Windows (no SIGUSR1). Returns whether it was registered."""
    usr1 = getattr(signal, "SIGUSR1", None)
    if usr1 is None:
        return False
    faulthandler.register(usr1, file=sys.stderr, all_threads=True, chain=False)
    return True


def _short_node(node: Any) -> str:
    """A Ray node id (56 hex digits) as its first 8, as ``ray status`` users know them."""
    return str(node)[:8] if node else "-"


ProgressCallback = Callable[[list[ProcessorStats], float], None]


def _also(first: ProgressCallback | None, then: ProgressCallback) -> ProgressCallback:
    """``then``, preceded by ``first`` when there is one."""
    if first is None:
        return then

    def both(stats: list[ProcessorStats], elapsed: float) -> None:
        first(stats, elapsed)
        then(stats, elapsed)

    return both


def _listen_endpoints(bound: list[BoundProcessor]) -> None:
    """Bind every ``HTTPEndpoint`` source now and print its URL, before the models load (a
    port in use or a missing token fails here, in one line)."""
    from buildflow.io.http.provider import HTTPEndpointProvider

    for b in bound:
        if isinstance(b.source, HTTPEndpointProvider):
            try:
                url = b.source.listen()
            except BuildflowError as e:
                raise fail(e) from e
            err.print(f"endpoint: {url} (POST an image; {b.name})", markup=False, soft_wrap=True)


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


def start_metrics(
    bound: list[BoundProcessor], port: int | None, host: str
) -> tuple[Any, ProgressCallback | None]:
    """Start the Prometheus metrics server of ``--metrics-port``: (the exporter, the progress
    callback that feeds it), or (None, None) without the option."""
    if port is None:
        return None, None
    from buildflow.prometheus import MetricsExporter

    exporter = MetricsExporter([b.name for b in bound])
    try:
        url = exporter.start(host, port)
    except BuildflowError as e:
        raise fail(e) from e
    err.print(f"metrics: {url}", markup=False, soft_wrap=True)
    return exporter, exporter.update


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
    no_progress: Annotated[
        bool,
        typer.Option(
            "--no-progress", help="No progress line (default: live on a terminal, else logged every 10 s)."
        ),
    ] = False,
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
    metrics_port: Annotated[
        int | None,
        typer.Option(
            "--metrics-port",
            min=0,
            max=65535,
            help="Serve Prometheus metrics at http://HOST:PORT/metrics (0: a free port).",
        ),
    ] = None,
    metrics_host: Annotated[
        str, typer.Option("--metrics-host", help="Address the metrics server listens on.")
    ] = "127.0.0.1",
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
    launched, launched_at = time.monotonic(), time.time()
    configure_logging(log_level)
    dump_stacks_on_sigusr1()
    progress = not no_progress
    from buildflow.runtime.base import Runtime
    from buildflow.runtime.inprocess import InProcessRuntime

    try:
        node = load_app(app)
        environment = node.environment(env, state_dir)
        check_planned(app, environment, node.app_dir, explicit=explicit_env(env))
        node.check()
        bound = node.bind(environment)
        check_servers(bound, environment)
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
    if runtime_name == "inprocess":
        _listen_endpoints(bound)
    ui_server, on_ui = _start_ui(bound, ui, ui_host, ui_port, ui_token, ui_max_upload_mb)
    try:
        exporter, on_metrics = start_metrics(bound, metrics_port, metrics_host)
    except BaseException:
        if ui_server is not None:
            ui_server.stop()
        raise
    if on_metrics is not None:
        on_ui = _also(on_ui, on_metrics)
    try:
        live_on = progress and err.is_terminal
        if live_on:
            line = _Progress(launched)
            with Live(Text("starting..."), console=err, refresh_per_second=4, transient=False) as live:
                summary = runtime.run(
                    bound, options, on_progress=_also(on_ui, lambda s, t: live.update(line.text(s, t)))
                )
        elif progress:  # not a terminal (logs, CI): the same line, logged every 10 s
            line, last = _Progress(launched), [0.0]

            def log_progress(stats: list[ProcessorStats], _: float) -> None:
                elapsed = time.monotonic() - launched
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
        if exporter is not None:
            exporter.stop()
    _print_summary(summary, launched_at)
    if summary_json is not None:
        summary_json.write_text(json.dumps(summary.to_dict(), indent=2, default=str))
    if summary.error:
        err.print(Text(f"error: {summary.error}", style="bold red"))
        raise typer.Exit(1)
    if summary.stop_reason == "hard-stop":
        raise typer.Exit(130)
