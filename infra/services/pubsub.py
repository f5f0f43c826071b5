"""The Pub/Sub fake: Google's ``pstest`` (cloud.google.com/go/pubsub/pstest 0.56.0, from
Debian's Go sources), served on a fixed port by our small Go main in
``infra/pubsub_emulator/main.go``.

Install: ``apt-get install golang-go golang-google-cloud-dev`` when missing (needs root), then
``go build`` in GOPATH mode into ``.buildflow/stack/bin/pubsub-emulator``, rebuilt when the Go
sources or the Go version change. Also the readiness probe and the creation of the topic that
receives GCS upload events, both with the official client over a plaintext channel.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any, Final

from infra.processes import HOST, REPO_ROOT, STACK_DIR, StackError, run

#: Where the built server (and its source stamp) lives; ``infra.stack`` locks installs beside it.
BUILD_DIR: Final = STACK_DIR / "bin"
SOURCE_DIR: Final = REPO_ROOT / "infra" / "pubsub_emulator"
_GOPATH: Final = Path("/usr/share/gocode")
_PSTEST_DIR: Final = _GOPATH / "src" / "cloud.google.com" / "go" / "pubsub" / "pstest"
_APT_PACKAGES: Final = ("golang-go", "golang-google-cloud-dev")

#: The client module the readiness probe imports, and the package that provides it.
CLIENT: Final = ("google.cloud.pubsub_v1", "google-cloud-pubsub")


def binary() -> Path:
    """Where :func:`ensure_built` leaves the server (it may not exist yet)."""
    return BUILD_DIR / "pubsub-emulator"


def _apt_missing() -> list[str]:
    missing = []
    for package in _APT_PACKAGES:
        done = subprocess.run(
            ["dpkg-query", "-W", "-f=${db:Status-Abbrev}", package], capture_output=True, text=True
        )
        if done.returncode != 0 or not done.stdout.startswith("ii"):
            missing.append(package)
    return missing


def ensure_apt_packages() -> None:
    """``apt-get install -y golang-go golang-google-cloud-dev`` unless both are installed and
    pstest's sources are there; ``StackError`` when not root (naming the ``sudo`` command)
    or not a Debian-like system. Retries once after ``apt-get update``."""
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
        run(cmd, "apt install of the Pub/Sub fake's Go sources", env)
    except StackError:
        run(["apt-get", "update"], "apt-get update", env)
        run(cmd, "apt install of the Pub/Sub fake's Go sources (after apt-get update)", env)
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
        env["GOCACHE"] = str(STACK_DIR / "go-cache")
    return env


def ensure_built() -> Path:
    """Build ``infra/pubsub_emulator`` into :func:`binary` unless the SHA-256 stamp beside it
    matches the Go sources and ``go version``; return the binary. Needs
    :func:`ensure_apt_packages` first and ``BUILD_DIR`` to exist."""
    built = binary()
    stamp = BUILD_DIR / "pubsub-emulator.sha256"
    go = _go()
    digest = hashlib.sha256()
    for source in sorted(SOURCE_DIR.glob("*.go")):
        digest.update(source.name.encode() + b"\0" + source.read_bytes() + b"\0")
    digest.update(subprocess.run([go, "version"], capture_output=True, text=True).stdout.encode())
    wanted = digest.hexdigest()
    if built.exists() and stamp.exists() and stamp.read_text().strip() == wanted:
        return built
    partial = built.with_name(built.name + ".partial")
    run(
        [go, "build", "-o", str(partial), "."],  # GOPATH mode refuses absolute package paths
        "go build of the Pub/Sub fake (infra/pubsub_emulator)",
        _go_env(),
        cwd=SOURCE_DIR,
    )
    partial.replace(built)
    stamp.write_text(wanted + "\n")
    return built


def command(server: Path, port: int, min_ack_deadline_secs: int | None = None) -> list[str]:
    """The server's argv: listen on ``127.0.0.1:port``; ``min_ack_deadline_secs`` lowers
    pstest's minimum ack deadline (10 s)."""
    argv = [str(server), "--addr", f"{HOST}:{port}"]
    if min_ack_deadline_secs is not None:
        argv += ["--min-ack-deadline", f"{min_ack_deadline_secs}s"]
    return argv


def publisher(port: int) -> Any:
    """A ``PublisherClient`` on a plaintext channel to the fake on ``port`` (close its
    ``transport`` when done); ``os.environ`` is not read or changed."""
    import grpc
    from google.cloud import pubsub_v1
    from google.pubsub_v1.services.publisher.transports.grpc import PublisherGrpcTransport

    # What the client does itself when PUBSUB_EMULATOR_HOST is set (a plaintext channel),
    # without touching os.environ.
    channel = grpc.insecure_channel(f"{HOST}:{port}")
    return pubsub_v1.PublisherClient(transport=PublisherGrpcTransport(channel=channel))


def probe(port: int, project: str) -> None:
    """Returns once the fake answers ``ListTopics`` of ``project`` (raises otherwise)."""
    client = publisher(port)
    try:
        list(client.list_topics(request={"project": f"projects/{project}"}, timeout=1.0, retry=None))
    finally:
        client.transport.close()


def create_topic(port: int, topic_path: str) -> None:
    """Create ``projects/P/topics/T`` on the fake unless it exists."""
    from google.api_core.exceptions import AlreadyExists

    client = publisher(port)
    try:
        with contextlib.suppress(AlreadyExists):
            client.create_topic(request={"name": topic_path}, timeout=5.0)
    finally:
        client.transport.close()
