"""Scale-out on Ray: the same bound processors, replicated as Ray actors over a cluster.

    buildflow run main:app --runtime ray                         # a new local Ray instance
    buildflow run main:app --runtime ray --address auto          # the cluster `ray start` made
    buildflow run main:app --runtime ray --address ray://h:10001 # a remote cluster (Ray Client)

Each replica is a Ray actor that unpickles the processor, calls ``setup()`` once (one model
load per replica) and runs the in-process runtime's pipeline over its own clients: the
same micro-batching, ack after the sink write, per-event dead-lettering and drain.

* **Sources.** A source whose service spreads events over consumers by itself
  (``SourceProvider.shared_consumers``: a Pub/Sub subscription, a Kafka consumer group) is
  opened by every replica. Any other (the local folder bucket, the in-memory test source)
  is opened once, by a *source server* actor, which hands events to the replicas as they
  pull and keeps which replica holds which un-acked event: nothing is lost or doubled,
  and the events of a replica that dies are given back (nacked) for redelivery.
* **Sinks.** A sink that takes concurrent writers (``SinkProvider.concurrent_writers``:
  BigQuery, PostgreSQL) is opened by every replica; an embedded DuckDB file (one writing
  process at a time) is opened once, by a *sink server* actor, that writes the replicas'
  rows. Writes stay idempotent on ``(event_id, row_index)``, so a redelivered event never
  makes a second row.
* **Failures.** A replica that dies (its process exits, its node goes) is replaced; its
  un-acked events are redelivered by the source server or, for Pub/Sub and Kafka, by the
  service (ack deadline, group rebalance). A replica whose ``run`` raises fails the run.
* **Stopping.** SIGINT/SIGTERM in the driver: every replica drains (finishes what it
  pulled, writes, acks); a second signal, or the drain deadline, stops them now.
* **Autoscaling** between ``min_replicas`` and ``max_replicas`` (:class:`Autoscaling`):
  one replica more when the backlog would take longer than ``scale_up_drain_s`` to drain
  at the current rate and the cluster has the CPUs (keeping ``reserve_cpus`` free); one
  fewer after the backlog has been empty for ``scale_down_idle_s``; at most one change per
  ``cooldown_s`` so it does not flap.
* **Attaching.** Without an address a new local Ray instance is started and shut down
  at the end (``address="local"``: never an unrelated cluster found on the machine, nor
  ``RAY_ADDRESS``). Ray already initialised in this process (tests, notebooks) is used
  as it is.

Code reaches the workers as Ray ships it: the app's folder is the job's ``working_dir``
(uploaded; large and generated folders excluded), and the ``buildflow`` package must be
installed on every node (``pip install 'buildflow[ray]'``).

The parts: this module is the driver (connecting, starting replicas, the run loop, failures
and stopping); :mod:`buildflow.runtime.ray_replica` the replica actor;
:mod:`buildflow.runtime.ray_servers` the source and sink servers;
:mod:`buildflow.runtime.ray_scaling` replica groups and autoscaling;
:mod:`buildflow.runtime.ray_stats` the stats merged over replicas.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from buildflow.errors import BuildflowError, ConfigurationError
from buildflow.io.base import SinkProvider
from buildflow.runtime.base import (
    BoundProcessor,
    ProcessorStats,
    RunOptions,
    RunSummary,
    Runtime,
    StopReason,
)
from buildflow.runtime.inprocess import _peak_rss_mb
from buildflow.runtime.ray_replica import Replica
from buildflow.runtime.ray_scaling import Autoscaling, Member, ReplicaGroup, ask_stop, autoscale
from buildflow.runtime.ray_servers import (
    RemoteSinkProvider,
    RemoteSourceProvider,
    SinkServer,
    SourceServer,
)
from buildflow.runtime.ray_stats import merge_stats, run_clock_start
from buildflow.schema import TableSchema

__all__ = ["RayRuntime", "Autoscaling", "RayUnavailableError", "Replica", "SourceServer", "SinkServer"]

log = logging.getLogger(__name__)

#: Never uploaded with the working directory: virtual environments, VCS data, caches,
#: local state (the DuckDB files and buckets of ``local``), benchmark and training output.
DEFAULT_EXCLUDES = (
    ".venv",
    ".venv-*",
    ".git",
    ".buildflow",
    "**/__pycache__",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    "runs",
    "benchmarks/out",
    "*.egg-info",
)

#: Environment variables passed on to every replica (Ray workers on other nodes do not
#: inherit the driver's environment).
FORWARDED_ENV_PREFIXES = (
    "BUILDFLOW_",
    "PUBSUB_",
    "STORAGE_EMULATOR",
    "BIGQUERY_",
    "GOOGLE_",
    "GCP_",
    "KAFKA_",
    "MODEL_",
    "OMP_",
    "PGHOST",
    "PGPORT",
    "PGUSER",
    "PGPASSWORD",
    "PGDATABASE",
)


class RayUnavailableError(BuildflowError):
    """``--runtime ray`` without Ray installed, or a cluster that cannot be reached."""


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as e:
        raise RayUnavailableError(
            "the ray runtime needs Ray; install it with: pip install 'buildflow[ray]'"
        ) from e
    return ray


class RayRuntime(Runtime):
    """Runs each processor as replicas on a Ray cluster (see the module docstring).

    Args:
        address: ``None`` (a new local Ray instance, shut down at the end), ``"auto"``
            (the cluster started on this machine by ``ray start``), ``"ray://host:port"``
            (Ray Client) or a GCS address ``host:port``.
        working_dir: Folder uploaded to the cluster as the job's working directory (the
            app's folder: its modules must be importable on the workers). None: none.
        excludes: Patterns left out of the upload (default :data:`DEFAULT_EXCLUDES`).
        replicas: Replicas of every processor, overriding their ``num_replicas`` (and
            turning autoscaling off).
        autoscaling: When replica counts change (:class:`Autoscaling`).
        init_kwargs: More keyword arguments for ``ray.init`` (e.g. ``num_cpus``).

    Raises (from :meth:`run`):
        RayUnavailableError: Ray is not installed, or the cluster cannot be reached.
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        working_dir: str | os.PathLike[str] | None = None,
        excludes: Sequence[str] = DEFAULT_EXCLUDES,
        replicas: int | None = None,
        autoscaling: Autoscaling | None = None,
        init_kwargs: dict[str, Any] | None = None,
    ) -> None:
        if replicas is not None and replicas < 1:
            raise ValueError(f"replicas must be >= 1, got {replicas!r}")
        self.address = address
        self.working_dir = Path(working_dir) if working_dir is not None else None
        self.excludes = list(excludes)
        self.replicas = replicas
        self.autoscaling = autoscaling or Autoscaling()
        self.init_kwargs = dict(init_kwargs or {})
        self.connect_s: float | None = None  # how long ray.init took in the last run
        self._stop: tuple[StopReason, bool] | None = None
        self._stop_lock = threading.Lock()

    # -- public --------------------------------------------------------------------------
    def request_stop(self, reason: StopReason = "signal", *, hard: bool = False) -> None:
        """Drain and stop (``hard``: stop now), as SIGTERM would. Thread-safe."""
        with self._stop_lock:
            if self._stop is None or (hard and not self._stop[1]):
                self._stop = (reason, hard)

    def run(
        self,
        processors: Sequence[BoundProcessor],
        options: RunOptions,
        on_progress: Callable[[list[ProcessorStats], float], None] | None = None,
    ) -> RunSummary:
        for b in processors:
            if getattr(b.source, "answers_senders", False):
                raise ConfigurationError(
                    f"processor {b.name}: {b.spec.source.describe()} answers each request with its "
                    "rows, which the ray runtime does not support yet; run it with --runtime "
                    "inprocess (the default), or read from a topic or bucket on ray"
                )
        ray = _import_ray()
        with self._stop_lock:
            self._stop = None
        started_ray = self._connect(ray)
        installed: list[tuple[int, Any]] = []
        if options.handle_signals and threading.current_thread() is threading.main_thread():
            signals = [0]

            def on_signal(signum: int, frame: Any) -> None:
                signals[0] += 1
                name = signal.Signals(signum).name
                if signals[0] == 1:
                    log.warning("received %s: every replica drains (press Ctrl-C again to stop now)", name)
                    self.request_stop("signal")
                else:
                    log.warning("received %s again: stopping the replicas now", name)
                    self.request_stop("hard-stop", hard=True)

            for signum in (signal.SIGINT.value, signal.SIGTERM.value):
                installed.append((signum, signal.signal(signum, on_signal)))
        try:
            return self._run(ray, processors, options, on_progress)
        finally:
            for signum, old in installed:
                signal.signal(signum, old)
            if started_ray:
                ray.shutdown()

    # -- connecting ----------------------------------------------------------------------
    def _runtime_env(self) -> dict[str, Any]:
        env: dict[str, Any] = {
            "env_vars": {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV_PREFIXES)}
        }
        if self.working_dir is not None:
            env["working_dir"] = str(self.working_dir)
            env["excludes"] = self.excludes
        return env

    def _connect(self, ray: Any) -> bool:
        """Initialise Ray unless this process already has; True if this call did."""
        if ray.is_initialized():
            self.connect_s = 0.0
            return False
        address = self.address or "local"
        kwargs: dict[str, Any] = {
            "address": address,
            "runtime_env": self._runtime_env(),
            "namespace": "buildflow",
            **self.init_kwargs,
        }
        if address == "local":
            kwargs.setdefault("include_dashboard", False)
        # Ray's own INFO lines (instance started, package pushed) duplicate the log line below.
        kwargs.setdefault(
            "logging_level", logging.WARNING if not log.isEnabledFor(logging.DEBUG) else logging.INFO
        )
        t0 = time.monotonic()
        try:
            ray.init(**kwargs)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise RayUnavailableError(f"cannot start or reach Ray at {address!r}: {e}") from e
        self.connect_s = time.monotonic() - t0
        res = ray.cluster_resources()
        log.info(
            "ray: %s in %.1f s (%s CPUs, %s GPUs, %d nodes)",
            "started a local instance" if address == "local" else f"connected to {address}",
            self.connect_s,
            res.get("CPU", 0),
            res.get("GPU", 0),
            len([n for n in ray.nodes() if n.get("Alive")]),
        )
        return True

    # -- running ---------------------------------------------------------------------------
    def _group(self, ray: Any, bound: BoundProcessor, options: RunOptions) -> ReplicaGroup:
        p = bound.spec.processor
        if self.replicas is not None:
            lo = hi = target = self.replicas
        elif p.min_replicas is not None and p.max_replicas is not None:
            lo, hi = p.min_replicas, p.max_replicas
            target = min(max(p.num_replicas, lo), hi)
        else:
            lo = hi = target = p.num_replicas
        # servers are light (they move events and rows, not models): they reserve no CPU
        server_opts: dict[str, Any] = {"num_cpus": 0, "max_concurrency": 64}
        source_server = None
        if not bound.source.shared_consumers:
            source_server = (
                ray.remote(SourceServer)
                .options(**server_opts)
                .remote(bound.source, bound.name, options.max_events, expected_replicas=target)
            )

        def sink_server(provider: SinkProvider, schema: TableSchema) -> Any:
            if provider.concurrent_writers:
                return None
            return ray.remote(SinkServer).options(**server_opts).remote(provider, schema)

        from buildflow.io.base import DeadLetterRow
        from buildflow.schema import schema_from_dataclass

        return ReplicaGroup(
            bound=bound,
            source_server=source_server,
            sink_server=sink_server(bound.sink, bound.spec.schema),
            dl_server=sink_server(bound.dead_letter, schema_from_dataclass(DeadLetterRow)),
            min_replicas=lo,
            max_replicas=hi,
            target=target,
            num_cpus=p.num_cpus,
            num_gpus=p.num_gpus,
        )

    def _start_replica(self, ray: Any, g: ReplicaGroup, options: RunOptions) -> None:
        g.started += 1
        rid = f"{g.name}-{g.started}"
        bound = g.bound
        if g.source_server is not None:
            bound = dataclasses.replace(
                bound, source=RemoteSourceProvider(bound.source, g.source_server, rid)
            )
        if g.sink_server is not None:
            bound = dataclasses.replace(bound, sink=RemoteSinkProvider(bound.sink, g.sink_server))
        if g.dl_server is not None:
            bound = dataclasses.replace(bound, dead_letter=RemoteSinkProvider(bound.dead_letter, g.dl_server))
        opts = options
        if g.source_server is not None:
            opts = dataclasses.replace(options, max_events=None)  # the source server applies it
        elif options.max_events is not None:
            # every replica has its own client: split the limit (the first ones get the rest)
            share = options.max_events // g.target + (1 if g.started <= options.max_events % g.target else 0)
            opts = dataclasses.replace(options, max_events=max(1, share))
        actor = (
            ray.remote(Replica)
            .options(num_cpus=g.num_cpus, num_gpus=g.num_gpus, max_concurrency=4, max_restarts=0)
            .remote(bound, opts, rid)
        )
        g.members[rid] = Member(rid=rid, actor=actor, ref=actor.run.remote(), started=time.monotonic())
        g.nodes[rid] = actor.node.remote()
        g.last_change = time.monotonic()
        log.info("processor %s: started replica %s (%d running)", g.name, rid, len(g.members))

    def _run(
        self,
        ray: Any,
        processors: Sequence[BoundProcessor],
        options: RunOptions,
        on_progress: Callable[[list[ProcessorStats], float], None] | None,
    ) -> RunSummary:
        wall_start = time.time()
        groups = [self._group(ray, b, options) for b in processors]
        for g in groups:
            for _ in range(g.target):
                self._start_replica(ray, g, options)
        error: str | None = None
        stop_reason: StopReason | None = None
        hard_deadline: float | None = None
        last_progress = last_scale = time.monotonic()
        try:
            while any(g.members for g in groups):
                refs = [m.ref for g in groups for m in g.members.values()]
                done, _ = ray.wait(refs, num_returns=len(refs), timeout=0.2)
                for ref in done:
                    failed = self._collect(ray, groups, ref, options, stop_reason is not None)
                    error = error or failed
                if error and stop_reason is None:
                    stop_reason = "error"
                with self._stop_lock:
                    requested = self._stop
                if requested is not None and stop_reason is None:
                    stop_reason = requested[0]
                if stop_reason is None and options.max_events is not None and self._exhausted(ray, groups):
                    stop_reason = "max-events"
                if stop_reason is not None and hard_deadline is None:
                    hard_deadline = time.monotonic() + options.drain_timeout_s
                    for g in groups:
                        for m in g.members.values():
                            ask_stop(m)
                if hard_deadline is not None and any(g.members for g in groups):
                    late = time.monotonic() >= hard_deadline
                    if late or (requested is not None and requested[1]):
                        if late:
                            log.error(
                                "drain did not finish within %.1f s; stopping now", options.drain_timeout_s
                            )
                        if stop_reason != "error":
                            stop_reason = "hard-stop"
                        self._kill_all(ray, groups)
                        break
                now = time.monotonic()
                if now - last_progress >= options.progress_interval_s:
                    last_progress = now
                    self._poll(ray, groups)
                    if on_progress is not None:
                        on_progress(
                            [merge_stats(g) for g in groups],
                            time.time() - run_clock_start(groups, wall_start),
                        )
                if stop_reason is None and now - last_scale >= self.autoscaling.interval_s:
                    last_scale = now
                    for g in groups:
                        autoscale(
                            ray, g, self.autoscaling, functools.partial(self._start_replica, ray, g, options)
                        )
        finally:
            close_errors: list[str] = []
            for g in groups:
                for what, server in (
                    ("source", g.source_server),
                    ("sink", g.sink_server),
                    ("dead-letter sink", g.dl_server),
                ):
                    if server is not None:
                        try:
                            ray.get(server.close.remote(), timeout=30)
                        except Exception as e:  # a close that raises fails the run, as in-process
                            close_errors.append(
                                f"processor {g.name}: closing its {what} failed: {_first_line(e)}"
                            )
                        with contextlib.suppress(Exception):
                            ray.kill(server)
            if close_errors:
                log.error("%s", "; ".join(close_errors))
                error = "; ".join([*([error] if error else []), *close_errors])
        for g in groups:
            self._resolve_nodes(ray, g, timeout=1.0)
        stats = [merge_stats(g) for g in groups]
        if on_progress is not None:
            on_progress(stats, time.time() - run_clock_start(groups, wall_start))
        reasons = [s.stop_reason for g in groups for s in g.finished.values()]
        final: StopReason = stop_reason or (reasons[0] if reasons else "stopped")
        if "hard-stop" in reasons:  # a replica's own drain deadline passed: not a clean drain
            final = "hard-stop"
        if error:
            final = "error"
        return RunSummary(
            processors=stats,
            elapsed_s=time.time() - run_clock_start(groups, wall_start),
            stop_reason=final,
            # the job's memory: the driver plus every replica at its peak
            peak_rss_mb=_peak_rss_mb() + sum(sum(g.rss_mb.values()) for g in groups),
            loop_lag_max_ms=max(
                (s.loop_lag_max_ms for g in groups for s in g.finished.values()), default=0.0
            ),
            error=error,
        )

    # -- helpers ---------------------------------------------------------------------------
    def _collect(
        self, ray: Any, groups: list[ReplicaGroup], ref: Any, options: RunOptions, stopping: bool
    ) -> str | None:
        """A replica's run ended: keep its summary, or replace it if it died. Returns an
        error message when the run must fail."""
        for g in groups:
            for rid, m in list(g.members.items()):
                if m.ref != ref:
                    continue
                del g.members[rid]
                try:
                    summary, started_at, rss = ray.get(ref)
                except ray.exceptions.RayActorError as e:
                    if getattr(e, "actor_init_failed", False):
                        # the processor could not even be unpickled on the worker (a module
                        # missing there...): a replacement would fail the same way
                        return f"replica {rid} could not start: {_first_line(e)}"
                    g.died.append(rid)
                    # its counts as last polled (deliveries: its un-acked events come again)
                    g.stats.setdefault(rid, ProcessorStats(name=g.name))
                    if len(g.died) > max(3, 2 * g.max_replicas):
                        return f"processor {g.name}: {len(g.died)} replicas died; last: {_first_line(e)}"
                    given_back: Any = "its un-acked"
                    if g.source_server is not None:
                        given_back = ray.get(g.source_server.release.remote(rid))
                    replace = not stopping and not m.stopping
                    log.warning(
                        "processor %s: replica %s died (%s); %s events go back to the source%s",
                        g.name,
                        rid,
                        type(e).__name__,
                        given_back,
                        "; starting a replacement" if replace else "",
                    )
                    if replace:
                        self._start_replica(ray, g, options)
                    return None
                except Exception as e:  # the replica's run raised: a bug, fail the run
                    return f"replica {rid} failed: {type(e).__name__}: {e}"
                g.finished[rid] = summary
                if summary.processors:
                    g.stats[rid] = summary.processors[0]
                if started_at is not None:
                    g.started_at[rid] = started_at
                g.rss_mb[rid] = rss
                return f"replica {rid}: {summary.error}" if summary.error else None
        return None

    def _kill_all(self, ray: Any, groups: list[ReplicaGroup]) -> None:
        for g in groups:
            for rid, m in list(g.members.items()):
                with contextlib.suppress(Exception):
                    ray.kill(m.actor, no_restart=True)
                if g.source_server is not None:
                    with contextlib.suppress(Exception):
                        ray.get(g.source_server.release.remote(rid), timeout=10)
                del g.members[rid]

    def _exhausted(self, ray: Any, groups: list[ReplicaGroup]) -> bool:
        servers = [g.source_server for g in groups if g.source_server is not None]
        if not servers:
            return False
        try:
            return all(s["exhausted"] for s in ray.get([sv.status.remote() for sv in servers], timeout=5))
        except Exception:
            return False

    def _poll(self, ray: Any, groups: list[ReplicaGroup]) -> None:
        """Fetch every live replica's stats (one that does not answer in 2 s keeps its last)."""
        members = [(g, m) for g in groups for m in g.members.values()]
        refs = [m.actor.stats.remote() for _, m in members]
        ready = set(ray.wait(refs, num_returns=len(refs), timeout=2.0)[0]) if refs else set()
        for (g, m), ref in zip(members, refs):
            if ref not in ready:
                continue
            with contextlib.suppress(Exception):
                stats, started_at, rss = ray.get(ref)
                if stats is not None:
                    g.stats[m.rid] = stats
                if started_at is not None:
                    g.started_at[m.rid] = started_at
                g.rss_mb[m.rid] = rss
        for g in groups:
            self._resolve_nodes(ray, g)
            if g.source_server is not None:
                with contextlib.suppress(Exception):
                    g.backlog = ray.get(g.source_server.backlog.remote(), timeout=5)
            else:  # one subscription / consumer group: every replica sees the same backlog
                backlogs = [g.stats[r].backlog for r in g.members if r in g.stats]
                known = [b for b in backlogs if b is not None]
                g.backlog = max(known) if known else None

    @staticmethod
    def _resolve_nodes(ray: Any, g: ReplicaGroup, timeout: float = 0.0) -> None:
        for rid, node in list(g.nodes.items()):
            if isinstance(node, str):
                continue
            if ray.wait([node], timeout=timeout)[0]:
                try:
                    g.nodes[rid] = ray.get(node)
                except Exception:
                    g.nodes[rid] = "?"


def _first_line(e: BaseException) -> str:
    """The gist of a Ray error (its messages carry whole remote tracebacks)."""
    text = str(e).strip()
    for line in text.splitlines():
        if "Error:" in line and "Traceback" not in line:
            return line.strip()[:500]
    return (text.splitlines()[0] if text else type(e).__name__)[:500]
