"""The exception hierarchy of buildflow.

Every error the framework raises on purpose derives from :class:`BuildflowError`, so
callers can catch one type. Messages say what happened, show the bad value with ``!r``,
list what would have been valid, and say how to fix it.
"""

from __future__ import annotations

__all__ = [
    "BuildflowError",
    "ConfigurationError",
    "SchemaError",
    "RowValidationError",
    "ProcessorDefinitionError",
    "EnvironmentNotSupportedError",
    "ProvisioningError",
    "ResourceConflictError",
    "DestroyProtectedError",
    "ResourceMissingError",
    "AppLoadError",
    "MissingDependencyError",
    "TransientSinkError",
    "RowRejectedError",
    "PipelineStageError",
    "QueryError",
    "EnvironmentMismatchError",
    "ServiceUnreachableError",
    "ResourceGoneError",
    "ObjectOverwrittenError",
    "UnknownDatasetError",
]


class BuildflowError(Exception):
    """Root of every error raised on purpose by buildflow."""


class ConfigurationError(BuildflowError):
    """A declaration, option or environment variable has an invalid value."""


class SchemaError(BuildflowError):
    """A row dataclass cannot be mapped to a table schema (raised at plan time)."""


class RowValidationError(BuildflowError):
    """A row returned by ``process`` does not match its declared schema.

    Raised per event; the runtime dead-letters that event and goes on.
    """


class ProcessorDefinitionError(BuildflowError):
    """A processor is malformed: missing methods, missing or wrong type hints."""


class EnvironmentNotSupportedError(BuildflowError):
    """A declaration has no provider in the selected environment."""


class ProvisioningError(BuildflowError):
    """Creating, inspecting or deleting a resource failed."""


class ResourceConflictError(ProvisioningError):
    """An existing resource differs from the declaration in a way ``plan`` will not change."""


class DestroyProtectedError(ProvisioningError):
    """``destroy`` was asked to delete a resource declared with ``destroy_protection=True``."""


class ResourceMissingError(ProvisioningError):
    """``run`` found that a declared resource does not exist (``plan`` was not applied)."""


class AppLoadError(BuildflowError):
    """``module:attribute`` could not be imported or is not a :class:`buildflow.Node`."""


class MissingDependencyError(BuildflowError):
    """An optional dependency is not installed; the message gives the install command."""


class TransientSinkError(BuildflowError):
    """A sink write failed in a way that may succeed on retry (lock held, server down)."""


class RowRejectedError(BuildflowError):
    """A sink refused a row for good (e.g. a BigQuery ``insertErrors`` entry); the event is
    dead-lettered with the sink's reason."""


class PipelineStageError(BuildflowError):
    """A stage of a running pipeline failed for good (a source's pull or ack raised an
    error it does not retry itself): the run stops with ``stop_reason="error"`` and this
    message in ``RunSummary.error``; events not acked are delivered again next run."""


class QueryError(BuildflowError):
    """``buildflow query`` could not translate or run the SQL (a syntax error, a table
    that does not exist); the message names the tables that do."""


class EnvironmentMismatchError(ConfigurationError):
    """``run`` (or ``query``) was asked for another environment than the one the app was
    planned in; the message gives the command for the planned one."""


class ServiceUnreachableError(ProvisioningError):
    """A server the environment points at (an emulator, a Kafka broker) does not accept
    connections; the message names its ``host:port`` and how to start or point at one."""


class ResourceGoneError(ResourceMissingError, TransientSinkError):
    """A resource a running app reads or writes was deleted under it (a subscription, a
    table, a bucket folder: typically by ``buildflow destroy``). A sink write that raises it
    is retried for a short grace (a table may be reported missing for a moment after it is
    created), then the run stops with this one line; nothing unwritten is acked."""


class ObjectOverwrittenError(BuildflowError, FileNotFoundError):
    """The object generation an upload event names was overwritten (or deleted) before the
    event was processed: a newer generation raised its own event, so the runtime skips this
    one with a log line instead of dead-lettering it."""


class UnknownDatasetError(ConfigurationError):
    """No data set of the name asked for is registered (:mod:`buildflow.datasets`); the
    message lists the registered ones."""
