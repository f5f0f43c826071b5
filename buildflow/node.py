"""``Node``: the app, a set of processors that are planned, run and destroyed together."""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from buildflow.environment import Environment
from buildflow.errors import ConfigurationError, ProcessorDefinitionError
from buildflow.io.base import SinkDeclaration, SourceDeclaration
from buildflow.io.registry import sink_provider, source_provider
from buildflow.processor import FunctionProcessor, Processor, inspect_processor
from buildflow.provisioning import Resource, unique
from buildflow.runtime.base import BoundProcessor, RunOptions, RunSummary

__all__ = ["Node"]

F = TypeVar("F", bound=Callable[..., Any])


class Node:
    """An app: ``app = Node(); app.add(MyProcessor())``.

    Args:
        name: Shown in plans and summaries. Default: the folder of the defining file.
        app_dir: Where local state (``.buildflow/<env>/``) lives. Default: the folder of
            the file that created the Node (``main.py``'s folder).
    """

    def __init__(self, name: str | None = None, *, app_dir: str | os.PathLike[str] | None = None) -> None:
        if app_dir is None:
            caller = inspect.stack()[1].filename
            app_dir = Path(caller).resolve().parent if os.path.exists(caller) else Path.cwd()
        self.app_dir = Path(app_dir)
        self.name = name or self.app_dir.name
        self._processors: list[Processor] = []

    @property
    def processors(self) -> tuple[Processor, ...]:
        return tuple(self._processors)

    def add(self, processor: Processor) -> Processor:
        """Register a processor instance. Returns it.

        Raises:
            ProcessorDefinitionError: not a Processor, or its name is taken.
        """
        if isinstance(processor, type):
            raise ProcessorDefinitionError(
                f"app.add() got the class {processor.__qualname__}; pass an instance: "
                f"app.add({processor.__qualname__}())"
            )
        if not isinstance(processor, Processor):
            raise ProcessorDefinitionError(
                f"app.add() takes a buildflow.Processor instance, got {processor!r}"
            )
        name = processor.processor_name()
        if any(p.processor_name() == name for p in self._processors):
            raise ProcessorDefinitionError(
                f"a processor named {name!r} is already registered; give one a `name`."
            )
        self._processors.append(processor)
        return processor

    def processor(
        self,
        *,
        source: SourceDeclaration,
        sink: SinkDeclaration,
        dead_letter: SinkDeclaration | None = None,
        batched: bool = False,
        name: str | None = None,
        max_batch_size: int | None = None,
        max_batch_latency_ms: int | None = None,
    ) -> Callable[[F], F]:
        """Register a plain function as a processor::

            @app.processor(source=GCSFileStream(bucket_name="b"), sink=BigQueryTable(table_id="d.t"))
            def classify(event: GCSFileEvent) -> Row: ...

        With ``batched=True`` the function takes a list of events and returns one result
        per event. The function is returned unchanged.
        """

        def register(fn: F) -> F:
            self.add(
                FunctionProcessor(
                    fn,
                    source=source,
                    sink=sink,
                    dead_letter=dead_letter,
                    batched=batched,
                    name=name,
                    max_batch_size=max_batch_size,
                    max_batch_latency_ms=max_batch_latency_ms,
                )
            )
            return fn

        return register

    def environment(
        self, env: str | None = None, state_dir: str | os.PathLike[str] | None = None
    ) -> Environment:
        """Resolve an environment for this app (see :meth:`Environment.resolve`)."""
        return Environment.resolve(env, app_dir=self.app_dir, state_dir=state_dir)

    def bind(self, env: Environment) -> list[BoundProcessor]:
        """Check every processor and bind its declarations to ``env``.

        Raises:
            ProcessorDefinitionError, SchemaError, EnvironmentNotSupportedError.
        """
        if not self._processors:
            raise ProcessorDefinitionError(
                f"app {self.name!r} has no processors; register one with app.add(MyProcessor())."
            )
        bound = []
        for p in self._processors:
            spec = inspect_processor(p)
            bound.append(
                BoundProcessor(
                    spec=spec,
                    source=source_provider(spec.source, env),
                    sink=sink_provider(spec.sink, env),
                    dead_letter=sink_provider(spec.dead_letter, env),
                )
            )
        return bound

    def check(self) -> None:
        """Every processor's :meth:`~buildflow.Processor.check`: what they need before
        ``plan`` or ``run`` does anything.

        Raises:
            BuildflowError: the first processor's complaint.
        """
        for p in self._processors:
            p.check()

    def resources(self, env: Environment) -> list[Resource]:
        """Everything ``plan`` manages for this app in ``env``, each tagged with the app's
        name (``Resource.app``: what ``plan`` labels it with, and what ``destroy`` checks)."""
        resources = unique(r for b in self.bind(env) for r in b.resources())
        for r in resources:
            r.app = self.name
        _one_location(self.name, resources)
        return resources

    def run(
        self,
        *,
        env: str | None = None,
        state_dir: str | os.PathLike[str] | None = None,
        until_idle: bool = False,
        max_events: int | None = None,
        options: RunOptions | None = None,
    ) -> RunSummary:
        """Run the app in this process (what ``buildflow run`` does, without the CLI).

        Resources must exist: run ``buildflow plan`` first.
        """
        from buildflow.runtime.inprocess import InProcessRuntime

        opts = options or RunOptions(until_idle=until_idle, max_events=max_events)
        self.check()
        return InProcessRuntime().run(self.bind(self.environment(env, state_dir)), opts)


def _one_location(app: str, resources: list[Resource]) -> None:
    """One location per app: the declared ``location`` of its buckets and datasets must
    agree (data and compute in one place: no cross-region egress); those that declare none
    take it.

    Raises:
        ConfigurationError: two different locations are declared.
    """
    located = [r for r in resources if hasattr(r, "location")]
    declared = {str(r.location).upper(): r for r in located if getattr(r, "location", None)}
    if len(declared) > 1:
        listed = ", ".join(f"{r.kind} {r.name}: {loc!r}" for loc, r in sorted(declared.items()))
        raise ConfigurationError(
            f"app {app!r} declares more than one location ({listed}); declare one location "
            "for all its buckets and datasets (location=...), so data and processing stay in one place."
        )
    if declared:
        (location,) = declared
        for r in located:
            if not getattr(r, "location", None):
                r.location = location
