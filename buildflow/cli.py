"""The ``buildflow`` command: plan, run, query, destroy.

Exit codes: 0 done; 1 a clear error (printed as one or a few lines, never a traceback
unless ``--log-level debug``); 2 bad usage; 130 stopped hard by a second Ctrl-C.
"""

from __future__ import annotations

import csv
import importlib
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from buildflow.errors import AppLoadError, BuildflowError
from buildflow.node import Node
from buildflow.provisioning import Change, apply, destroy, plan, plan_destroy
from buildflow.runtime.base import BoundProcessor, ProcessorStats, RunOptions, RunSummary

__all__ = ["main", "load_app", "cli"]

cli = typer.Typer(
    name="buildflow",
    help="Plan, run, query and destroy buildflow apps.",
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


def _configure_logging(level: str) -> None:
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


def _fail(e: BaseException) -> typer.Exit:
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
}


def _print_changes(title: str, changes: list[Change]) -> None:
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


def _confirm(question: str, yes: bool) -> bool:
    if yes:
        return True
    if not sys.stdin.isatty() and os.environ.get("BUILDFLOW_ASSUME_TTY") != "1":
        # Piped input: read one answer line, default No.
        out.print(f"{question} [y/N]: ", end="", markup=False)
        answer = sys.stdin.readline().strip().lower()
        out.print(answer, markup=False)
        return answer in ("y", "yes")
    return typer.confirm(question, default=False)


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
    _configure_logging(log_level)
    try:
        node = load_app(app)
        environment = node.environment(env, state_dir)
        changes = plan(node.resources(environment))
        _print_changes(f"plan for {node.name!r} in {environment.name!r} ({environment.state_dir})", changes)
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
            out.print("No changes. Everything the app declares exists.")
            return
        if not _confirm(f"Apply {len(todo)} change(s)?", yes):
            out.print("Nothing applied.")
            raise typer.Exit(1)
        apply(changes)
        out.print(Text(f"Applied {len(todo)} change(s).", style="green"))
    except BuildflowError as e:
        raise _fail(e) from e


@cli.command("destroy")
def destroy_cmd(
    app: AppArg,
    env: EnvOpt = None,
    state_dir: StateOpt = None,
    yes: YesOpt = False,
    force: Annotated[
        bool, typer.Option("--force", help="Also delete protected tables and non-empty buckets.")
    ] = False,
    log_level: LogOpt = "info",
) -> None:
    """Delete what the app manages. Refuses protected resources unless --force."""
    _configure_logging(log_level)
    try:
        node = load_app(app)
        environment = node.environment(env, state_dir)
        changes = plan_destroy(node.resources(environment), force=force)
        _print_changes(f"destroy {node.name!r} in {environment.name!r}", changes)
        if any(c.action == "protected" for c in changes):
            destroy(changes)  # raises DestroyProtectedError with the fix
        todo = [c for c in changes if c.action == "delete"]
        if not todo:
            out.print("Nothing to destroy.")
            return
        if not _confirm(f"Delete {len(todo)} resource(s) and everything in them?", yes):
            out.print("Nothing deleted.")
            raise typer.Exit(1)
        destroy(changes)
        out.print(Text(f"Deleted {len(todo)} resource(s).", style="green"))
    except BuildflowError as e:
        raise _fail(e) from e


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
        raise _fail(e) from e
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
    _configure_logging(log_level)
    from buildflow.runtime.base import Runtime
    from buildflow.runtime.inprocess import InProcessRuntime

    try:
        node = load_app(app)
        environment = node.environment(env, state_dir)
        bound = node.bind(environment)
    except BuildflowError as e:
        raise _fail(e) from e
    runtime: Runtime
    if runtime_name == "ray":
        from buildflow.runtime.ray_runtime import RayRuntime

        runtime = RayRuntime(address, working_dir=node.app_dir, replicas=replicas)
    elif runtime_name == "inprocess":
        if address is not None or replicas is not None:
            raise _fail(BuildflowError("--address and --replicas need --runtime ray"))
        runtime = InProcessRuntime()
    else:
        raise _fail(BuildflowError(f"unknown runtime {runtime_name!r}: use inprocess or ray"))
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
        raise _fail(e) from e
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


def _choose(bound: list[BoundProcessor], processor: str | None) -> BoundProcessor:
    """The processor named ``processor``, or the first one."""
    chosen = next((b for b in bound if processor in (None, b.name)), None)
    if chosen is None:
        raise AppLoadError(
            f"no processor named {processor!r}; processors: {', '.join(b.name for b in bound)}"
        )
    return chosen


@cli.command("upload")
def upload_cmd(
    app: AppArg,
    files: Annotated[
        list[Path], typer.Argument(help="Files to upload (their base names become object names).")
    ],
    env: EnvOpt = None,
    state_dir: StateOpt = None,
    processor: Annotated[
        str | None, typer.Option("--processor", help="Whose source (default: the first processor's).")
    ] = None,
    prefix: Annotated[str, typer.Option("--prefix", help="Prepended to each object name.")] = "",
    log_level: LogOpt = "warning",
) -> None:
    """Upload files into the app's source (local: the bucket folder; emulator/gcp: the GCS
    bucket), the way a user would."""
    import mimetypes

    _configure_logging(log_level)
    try:
        node = load_app(app)
        chosen = _choose(node.bind(node.environment(env, state_dir)), processor)
        for f in files:
            try:
                data = f.read_bytes()
            except OSError as e:
                raise BuildflowError(f"cannot read {str(f)!r}: {e.strerror}") from e
            where = chosen.source.upload(prefix + f.name, data, mimetypes.guess_type(f.name)[0])
            out.print(f"uploaded {f} -> {where}", markup=False)
    except NotImplementedError as e:
        raise _fail(e) from e
    except BuildflowError as e:
        raise _fail(e) from e


@cli.command("produce")
def produce_cmd(
    folder: Annotated[
        Path | None, typer.Argument(help="Folder of images; sub-folder names become labels.")
    ] = None,
    kafka: Annotated[str | None, typer.Option("--kafka", help="HOST:PORT/TOPIC of a Kafka topic.")] = None,
    pubsub: Annotated[
        str | None, typer.Option("--pubsub", help="projects/P/topics/T of a Pub/Sub topic.")
    ] = None,
    fmt: Annotated[str, typer.Option("--format", help="Kafka payload: raw | json | reference.")] = "raw",
    rate: Annotated[
        float | None,
        typer.Option("--rate", min=0.001, help="Images per second (default: as fast as possible)."),
    ] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Send at most this many.")] = None,
    fashion_mnist: Annotated[
        bool,
        typer.Option(
            "--fashion-mnist",
            help="Publish Fashion-MNIST images (PNG, true class name as label) instead of a folder.",
        ),
    ] = False,
    split: Annotated[str, typer.Option("--split", help="Fashion-MNIST split: test | train.")] = "test",
    start: Annotated[int, typer.Option("--start", min=0, help="First Fashion-MNIST index sent.")] = 0,
    end: Annotated[
        int | None, typer.Option("--end", min=1, help="Fashion-MNIST index to stop before (default: all).")
    ] = None,
    log_level: LogOpt = "warning",
) -> None:
    """Publish a folder of images (recursively), or Fashion-MNIST images by index range
    (--fashion-mnist --start 0 --end 1000), to a Kafka or Pub/Sub topic, with a progress bar."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from buildflow.io.kafka import KafkaTopic
    from buildflow.producer import (
        KafkaProducerTarget,
        ProducerTarget,
        PubSubProducerTarget,
        produce,
        produce_items,
    )

    _configure_logging(log_level)
    try:
        if (folder is None) != fashion_mnist:
            raise BuildflowError("give exactly one of FOLDER or --fashion-mnist")
        if split not in ("train", "test"):
            raise BuildflowError(f"--split {split!r}: use 'test' or 'train'")
        if fashion_mnist and fmt == "reference":
            raise BuildflowError("--fashion-mnist sends image bytes: use --format raw or json")
        if (kafka is None) == (pubsub is None):
            raise BuildflowError(
                "give exactly one of --kafka HOST:PORT/TOPIC or --pubsub projects/P/topics/T"
            )
        target: ProducerTarget
        if kafka is not None:
            servers, _, topic = kafka.rpartition("/")
            if not servers or not topic:
                raise BuildflowError(f"--kafka {kafka!r}: expected HOST:PORT/TOPIC")
            target = KafkaProducerTarget(KafkaTopic(servers, topic, payload_format=fmt))  # type: ignore[arg-type]
        else:
            assert pubsub is not None
            target = PubSubProducerTarget(pubsub)
        with Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err,
            disable=not err.is_terminal,
        ) as bar:
            what = f"Fashion-MNIST {split} {start}..{end if end is not None else 'end'}"
            task = bar.add_task(f"producing {folder if folder is not None else what}", total=None)
            if folder is not None:
                sent = produce(
                    folder,
                    target,
                    rate=rate,
                    limit=limit,
                    on_sent=lambda n, total: bar.update(task, completed=n, total=total),
                )
            else:
                from buildflow.datasets import fashion_mnist_png

                if limit is not None:
                    end = min(end, start + limit) if end is not None else start + limit
                sent = produce_items(
                    fashion_mnist_png("train" if split == "train" else "test", start, end),
                    target,
                    total=(end - start) if end is not None else None,
                    rate=rate,
                    on_sent=lambda n, total: bar.update(task, completed=n, total=total),
                )
        out.print(f"sent {sent} images to {kafka or pubsub}", markup=False)
    except RuntimeError as e:
        raise _fail(e) from e
    except BuildflowError as e:
        raise _fail(e) from e


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
    _configure_logging(log_level)
    try:
        node = load_app(app)
        chosen = _choose(node.bind(node.environment(env, state_dir)), processor)
        try:
            cols, rows = chosen.sink.query(sql)
        except BuildflowError:
            raise
        except Exception as e:
            raise BuildflowError(f"query failed: {e}") from e
    except BuildflowError as e:
        raise _fail(e) from e
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


def main() -> None:
    """Entry point of the ``buildflow`` console script."""
    cli()


if __name__ == "__main__":
    main()
