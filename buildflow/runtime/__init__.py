"""Runtimes: what runs bound processors. ``InProcessRuntime`` is the reference."""

from buildflow.runtime.base import BoundProcessor as BoundProcessor
from buildflow.runtime.base import RunOptions as RunOptions
from buildflow.runtime.base import RunSummary as RunSummary
from buildflow.runtime.base import Runtime as Runtime

__all__ = ["BoundProcessor", "RunOptions", "Runtime", "RunSummary"]
