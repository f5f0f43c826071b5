"""A fast reachability check of the servers an environment points at.

The Google Cloud clients retry an unreachable server for minutes (BigQuery: 120 s before
``RetryError``) and a Kafka producer waits for ``message.timeout.ms``; a stopped local stack
with its variables still set then looks like a hang. :func:`preflight` opens one TCP
connection to each endpoint first (all at once, ``timeout_s`` each) and fails within a few
seconds naming the ``host:port`` that does not answer and the fix.
"""

from __future__ import annotations

import concurrent.futures
import os
import socket
from collections.abc import Iterable, Sequence
from urllib.parse import urlsplit

from buildflow.environment import Environment
from buildflow.errors import ServiceUnreachableError

__all__ = [
    "EMULATOR_ENDPOINT_VARS",
    "Endpoint",
    "preflight",
    "check_endpoints",
    "kafka_endpoints",
    "host_port",
    "unreachable",
]

#: The variables ``python -m infra.stack env`` prints that name a server of the emulator
#: environment (``host:port`` or ``http://host:port``).
EMULATOR_ENDPOINT_VARS = (
    "PUBSUB_EMULATOR_HOST",
    "STORAGE_EMULATOR_HOST",
    "BIGQUERY_EMULATOR_HOST",
    "BUILDFLOW_BIGQUERY_STORAGE_HOST",
)

STACK_FIX = (
    'start the local stack: `python -m infra.stack start && eval "$(python -m infra.stack env)"`, '
    "or set {what} to the address of the running server"
)

#: (what it is, e.g. ``PUBSUB_EMULATOR_HOST=127.0.0.1:8085``; host; port)
Endpoint = tuple[str, str, int]


def host_port(value: str, default_port: int) -> tuple[str, int] | None:
    """``host:port`` or ``scheme://host:port`` as ``(host, port)`` (``default_port``, or the
    scheme's, when none is given); None when ``value`` names no host."""
    value = value.strip()
    if not value:
        return None
    parts = urlsplit(value if "//" in value else f"//{value}")
    if not parts.hostname:
        return None
    try:
        port = parts.port
    except ValueError:
        return None
    if port is None:
        port = {"http": 80, "https": 443}.get(parts.scheme, default_port)
    return parts.hostname, port


def unreachable(endpoint: Endpoint, timeout_s: float) -> str | None:
    """Why nothing answers at ``endpoint``, or None when a TCP connection opens."""
    _, host, port = endpoint
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return None
    except TimeoutError:
        return f"no answer within {timeout_s:g} s"
    except OSError as e:
        return e.strerror or type(e).__name__


def check_endpoints(endpoints: Sequence[Endpoint], fix: str, timeout_s: float = 2.0) -> None:
    """Open a TCP connection to every endpoint, in parallel.

    Raises:
        ServiceUnreachableError: one line per endpoint that did not accept a connection,
            then ``fix``.
    """
    _raise_unreachable(endpoints, _probe(endpoints, timeout_s), fix)


def _probe(endpoints: Sequence[Endpoint], timeout_s: float) -> list[str | None]:
    if not endpoints:
        return []
    with concurrent.futures.ThreadPoolExecutor(len(endpoints)) as pool:
        return list(pool.map(lambda e: unreachable(e, timeout_s), endpoints))


def _raise_unreachable(endpoints: Sequence[Endpoint], why: Sequence[str | None], fix: str) -> None:
    bad = [
        f"{what}: nothing answers at {host}:{port} ({reason})"
        for (what, host, port), reason in zip(endpoints, why)
        if reason
    ]
    if bad:
        raise ServiceUnreachableError("; ".join(bad) + f". To fix: {fix}.")


def kafka_endpoints(bootstrap_servers: str) -> list[Endpoint]:
    """``host:port[,host:port]`` as endpoints (port 9092 when left out)."""
    found = []
    for server in bootstrap_servers.split(","):
        hp = host_port(server, 9092)
        if hp is not None:
            found.append((f"Kafka broker {server.strip()}", *hp))
    return found


def preflight(
    environment: Environment,
    kafka_servers: Iterable[str] = (),
    timeout_s: float = 2.0,
    variables: Sequence[str] = EMULATOR_ENDPOINT_VARS,
) -> None:
    """In ``emulator``, every server the stack's variables name must accept a TCP
    connection; in any environment, at least one bootstrap server of each Kafka cluster.

    Args:
        environment: The resolved environment.
        kafka_servers: ``bootstrap_servers`` strings of the app's Kafka sources and sinks.
        timeout_s: Per-connection timeout, seconds (all are tried at once).
        variables: Which of the emulator's variables to check (default: all four).

    Raises:
        ServiceUnreachableError: naming each ``host:port`` that does not answer and the fix
            (``python -m infra.stack start``, or the real server's address).
    """
    if environment.name == "emulator":
        endpoints: list[Endpoint] = []
        for var in variables:
            hp = host_port(os.environ.get(var, ""), 80)
            if hp is not None:
                endpoints.append((f"{var}={os.environ[var]}", *hp))
        what = " / ".join(e[0].split("=", 1)[0] for e in endpoints) or "the variables"
        check_endpoints(endpoints, STACK_FIX.format(what=what), timeout_s)
    for servers in dict.fromkeys(kafka_servers):
        check_kafka(servers, timeout_s)


def check_kafka(bootstrap_servers: str, timeout_s: float = 2.0) -> None:
    """At least one of ``bootstrap_servers`` must accept a TCP connection.

    Raises:
        ServiceUnreachableError: none does; names them and the fix.
    """
    endpoints = kafka_endpoints(bootstrap_servers)
    why = _probe(endpoints, timeout_s)
    if endpoints and all(why):
        _raise_unreachable(
            endpoints,
            why,
            "start a broker (the local stack has one: `python -m infra.stack start && "
            'eval "$(python -m infra.stack env)"`, then use $KAFKA_BOOTSTRAP_SERVERS), or give '
            "the running broker's host:port",
        )
