"""Which provider gives life to which declaration in which environment.

Providers are named by import path and imported only when used, so the core never
imports an SDK the app does not need. Binding checks first that the extra the provider's
client library comes with is installed (:data:`PROVIDER_EXTRAS`), so that a missing one is
one clear error at plan or run time, not an ImportError from deep inside a worker.
"""

from __future__ import annotations

import importlib
from typing import Any

from buildflow.environment import Environment
from buildflow.errors import EnvironmentNotSupportedError
from buildflow.extras import require_extra
from buildflow.io.base import SinkDeclaration, SinkProvider, SourceDeclaration, SourceProvider

__all__ = ["source_provider", "sink_provider", "PROVIDER_EXTRAS"]

_ANY = "*"

_SOURCES: dict[tuple[str, str], str] = {
    ("GCSFileStream", "local"): "buildflow.io.local.folder:LocalBucketProvider",
    ("GCSFileStream", "emulator"): "buildflow.io.google.gcs:GCSFileStreamProvider",
    ("GCSFileStream", "gcp"): "buildflow.io.google.gcs:GCSFileStreamProvider",
    ("PubSubSubscription", "emulator"): "buildflow.io.google.pubsub:PubSubSubscriptionProvider",
    ("PubSubSubscription", "gcp"): "buildflow.io.google.pubsub:PubSubSubscriptionProvider",
    ("KafkaTopic", _ANY): "buildflow.io.kafka.provider:KafkaSourceProvider",
    ("HTTPEndpoint", _ANY): "buildflow.io.http.provider:HTTPEndpointProvider",
    ("InMemorySource", _ANY): "buildflow.testing:InMemorySourceProvider",
}

_SINKS: dict[tuple[str, str], str] = {
    ("BigQueryTable", "local"): "buildflow.io.local.duckdb_sink:DuckDBTableProvider",
    ("BigQueryTable", "emulator"): "buildflow.io.google.bigquery:BigQueryTableProvider",
    ("BigQueryTable", "gcp"): "buildflow.io.google.bigquery:BigQueryTableProvider",
    ("DuckDBTable", _ANY): "buildflow.io.local.duckdb_sink:DuckDBTableProvider",
    ("PostgresTable", _ANY): "buildflow.io.postgres.provider:PostgresTableProvider",
    ("KafkaTopic", _ANY): "buildflow.io.kafka.provider:KafkaSinkProvider",
    ("InMemorySink", _ANY): "buildflow.testing:InMemorySinkProvider",
}

#: Provider package -> the extra of the distribution its client library comes with.
PROVIDER_EXTRAS: dict[str, str] = {
    "buildflow.io.google": "gcp",
    "buildflow.io.kafka": "kafka",
    "buildflow.io.postgres": "postgres",
    "buildflow.io.http": "http",
}


def _lookup(table: dict[tuple[str, str], str], declaration: Any, env: Environment) -> Any:
    kind = type(declaration).__name__
    path = table.get((kind, env.name)) or table.get((kind, _ANY))
    if path is None:
        supported = sorted(e for (k, e) in table if k == kind)
        raise EnvironmentNotSupportedError(
            f"{declaration.describe()} has no provider in the {env.name!r} environment; "
            f"it runs in: {', '.join(map(repr, supported)) or 'no environment'}. "
            "Choose one with --env or BUILDFLOW_ENV."
        )
    module, _, attr = path.partition(":")
    for package, extra in PROVIDER_EXTRAS.items():
        if module.startswith(package + "."):
            require_extra(extra, needed_by=f"{kind} in the {env.name!r} environment")
    return getattr(importlib.import_module(module), attr)


def source_provider(declaration: SourceDeclaration, env: Environment) -> SourceProvider:
    """Bind a source declaration to ``env``.

    Raises:
        EnvironmentNotSupportedError: no provider for this declaration in ``env``.
        MissingDependencyError: the provider's client library is not installed; the
            message names the extra to install.
    """
    cls = _lookup(_SOURCES, declaration, env)
    provider: SourceProvider = cls(declaration, env)
    return provider


def sink_provider(declaration: SinkDeclaration, env: Environment) -> SinkProvider:
    """Bind a sink declaration to ``env``.

    Raises:
        EnvironmentNotSupportedError: no provider for this declaration in ``env``.
        MissingDependencyError: the provider's client library is not installed; the
            message names the extra to install.
    """
    cls = _lookup(_SINKS, declaration, env)
    provider: SinkProvider = cls(declaration, env)
    return provider
