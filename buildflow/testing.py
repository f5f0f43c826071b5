"""A public test harness: run a processor over in-memory events, get its rows back.

    from buildflow.testing import run_processor, gcs_file_event

    result = run_processor(MyProcessor(), [gcs_file_event("cat.jpg", jpeg_bytes)])
    assert result.rows[0]["image_name"] == "cat.jpg"
    assert result.dead_letters == []

It runs the real in-process runtime (micro-batching, dead-lettering, ack-after-write),
with an in-memory source and sink in place of the processor's declared ones, so tests need
no files, servers or ``plan``.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import itertools
import threading
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

from buildflow.environment import Environment
from buildflow.events import BlobReader, GCSFileEvent
from buildflow.io.base import (
    Envelope,
    OutputRecord,
    SinkDeclaration,
    SinkProvider,
    SinkRuntime,
    SourceDeclaration,
    SourceProvider,
    SourceRuntime,
)
from buildflow.processor import Processor, inspect_processor
from buildflow.provisioning import Resource
from buildflow.runtime.base import BoundProcessor, RunOptions, RunSummary, Runtime
from buildflow.schema import TableSchema

__all__ = [
    "InMemorySource",
    "InMemorySink",
    "CollectedSinkProvider",
    "RowCollector",
    "TestRun",
    "run_processor",
    "gcs_file_event",
    "BytesReader",
    "sink_rows",
]

_SINK_ROWS: dict[str, list[OutputRecord]] = collections.defaultdict(list)
# (event_id, row_index) of every row in _SINK_ROWS[name]: the sink's idempotence, O(1) a row.
_SINK_KEYS: dict[str, set[tuple[str, int]]] = collections.defaultdict(set)
_LOCK = threading.Lock()
_ids = itertools.count(1)


def sink_rows(name: str) -> list[OutputRecord]:
    """What :class:`InMemorySink` ``name`` has received so far (this process only)."""
    with _LOCK:
        return list(_SINK_ROWS[name])


@dataclasses.dataclass(frozen=True)
class BytesReader(BlobReader):
    """A blob held in memory."""

    in_memory: ClassVar[bool] = True

    data: bytes

    def read(self) -> bytes:
        return self.data


def gcs_file_event(
    name: str, data: bytes, *, bucket: str = "test-bucket", generation: int | None = None
) -> GCSFileEvent:
    """A :class:`GCSFileEvent` for ``data``, as the bucket source would deliver it."""
    gen = generation if generation is not None else next(_ids)
    now = datetime.datetime.now(datetime.UTC)
    return GCSFileEvent(
        bucket_name=bucket,
        name=name,
        generation=gen,
        size=len(data),
        content_type=None,
        event_time=now,
        event_id=GCSFileEvent.make_event_id(bucket, name, gen),
        metadata=GCSFileEvent.notification_attributes(bucket, name, gen, now),
        reader=BytesReader(data),
    )


@dataclasses.dataclass(frozen=True)
class InMemorySource(SourceDeclaration):
    """Delivers a fixed sequence of events, then is drained.

    ``event_type`` defaults to the events' common class (checked against ``process``'s
    type hint like any source's).
    """

    events: tuple[Any, ...]
    event_type: type = object  # type: ignore[misc]

    def __post_init__(self) -> None:
        object.__setattr__(self, "events", tuple(self.events))
        if self.event_type is object and self.events:
            types = {type(e) for e in self.events}
            if len(types) == 1:
                object.__setattr__(self, "event_type", types.pop())

    def describe(self) -> str:
        return f"InMemorySource({len(self.events)} events)"


@dataclasses.dataclass(frozen=True)
class InMemorySink(SinkDeclaration):
    """Keeps rows in this process, under ``name`` (see :func:`sink_rows`). Idempotent on
    ``(event_id, row_index)``, like every buildflow sink."""

    name: str = "memory"

    def describe(self) -> str:
        return f"InMemorySink({self.name!r})"

    def dead_letter_sibling(self) -> InMemorySink:
        return InMemorySink(f"{self.name}.dead_letters")


class _Source(SourceRuntime[Any]):
    def __init__(self, events: Sequence[Any]) -> None:
        self.pending: collections.deque[tuple[int, Any]] = collections.deque(enumerate(events))
        self.inflight: dict[int, Any] = {}
        self.acked: list[str] = []

    @staticmethod
    def _event_id(i: int, event: Any) -> str:
        return str(getattr(event, "event_id", None) or f"memory#{i}")

    async def pull(self, max_events: int, timeout_s: float) -> list[Envelope[Any]]:
        out: list[Envelope[Any]] = []
        now = datetime.datetime.now(datetime.UTC)
        while self.pending and len(out) < max_events:
            i, ev = self.pending.popleft()
            self.inflight[i] = ev
            out.append(Envelope(ev, self._event_id(i, ev), i, now, object_name=getattr(ev, "name", None)))
        if not out and timeout_s > 0:
            import asyncio

            await asyncio.sleep(min(timeout_s, 0.01))
        return out

    async def ack(self, envelopes: Sequence[Envelope[Any]]) -> None:
        for e in envelopes:
            self.inflight.pop(e.ack_id, None)
            self.acked.append(e.event_id)

    async def nack(self, envelopes: Sequence[Envelope[Any]]) -> None:
        for e in reversed(envelopes):
            ev = self.inflight.pop(e.ack_id)
            self.pending.appendleft((e.ack_id, ev))

    async def backlog(self) -> int | None:
        return len(self.pending)

    async def is_drained(self) -> bool:
        return not self.pending and not self.inflight


class _Sink(SinkRuntime):
    def __init__(self, name: str) -> None:
        self.name = name

    async def write(self, records: Sequence[OutputRecord]) -> None:
        with _LOCK:
            have, rows = _SINK_KEYS[self.name], _SINK_ROWS[self.name]
            for r in records:
                key = (r.event_id, r.row_index)
                if key not in have:
                    have.add(key)
                    rows.append(r)


class RowCollector:
    """Keeps the rows of :class:`InMemorySink` s written from other processes (as a Ray
    actor, for runs on the Ray runtime): the fake on the far side of the sink."""

    def __init__(self) -> None:
        self._rows: dict[str, list[OutputRecord]] = collections.defaultdict(list)
        self._keys: dict[str, set[tuple[str, int]]] = collections.defaultdict(set)

    def write(self, name: str, records: list[OutputRecord]) -> None:
        have, rows = self._keys[name], self._rows[name]
        for r in records:
            if (r.event_id, r.row_index) not in have:
                have.add((r.event_id, r.row_index))
                rows.append(r)

    def take(self, name: str) -> list[OutputRecord]:
        self._keys.pop(name, None)
        return self._rows.pop(name, [])


class _CollectedSink(SinkRuntime):
    def __init__(self, name: str, collector: Any) -> None:
        self.name = name
        self.collector = collector

    async def write(self, records: Sequence[OutputRecord]) -> None:
        await self.collector.write.remote(self.name, list(records))


class InMemorySourceProvider(SourceProvider):
    declaration: InMemorySource

    def resources(self, consumer: str) -> list[Resource]:
        return []

    def open(self, consumer: str) -> SourceRuntime[Any]:
        return _Source(self.declaration.events)


class InMemorySinkProvider(SinkProvider):
    declaration: InMemorySink

    def resources(self, schema: TableSchema) -> list[Resource]:
        return []

    def open(self, schema: TableSchema) -> SinkRuntime:
        return _Sink(self.declaration.name)

    def query(self, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
        raise NotImplementedError("InMemorySink cannot run SQL; use sink_rows(name)")


class CollectedSinkProvider(InMemorySinkProvider):
    """An :class:`InMemorySink` whose rows go to a :class:`RowCollector` actor, so that
    replicas in other processes can all write to it."""

    concurrent_writers = True

    def __init__(self, declaration: InMemorySink, environment: Environment, collector: Any) -> None:
        super().__init__(declaration, environment)
        self.collector = collector

    def open(self, schema: TableSchema) -> SinkRuntime:
        return _CollectedSink(self.declaration.name, self.collector)


@dataclasses.dataclass
class TestRun:
    """The outcome of :func:`run_processor`.

    Attributes:
        rows: Every row written, as plain dicts (see ``buildflow.schema.row_to_record``), in
            write order, with ``_event_id`` and ``_row_index`` added.
        dead_letters: Every dead-letter record, as dicts of ``DeadLetterRow`` fields.
        summary: The runtime's summary (events, setup calls, metrics, ...).
    """

    __test__: ClassVar[bool] = False  # not a pytest test class

    rows: list[dict[str, Any]]
    dead_letters: list[dict[str, Any]]
    summary: RunSummary


def run_processor(
    processor: Processor,
    events: Iterable[Any],
    *,
    options: RunOptions | None = None,
    runtime: Runtime | None = None,
) -> TestRun:
    """Run ``processor`` over ``events`` until they are all acked, and return what it
    wrote. ``setup`` and ``teardown`` are called as in a real run.

    Args:
        runtime: The runtime (default: a new ``InProcessRuntime``). With a
            ``RayRuntime`` (Ray initialised, e.g. by a test session), the rows of the
            replicas are gathered by a :class:`RowCollector` actor.

    Raises:
        ProcessorDefinitionError, SchemaError: the processor is malformed (as ``plan`` would).
    """
    spec = inspect_processor(processor)
    events = tuple(events)
    key = f"run-{next(_ids)}"
    env = Environment(name="local", state_dir=Environment.resolve("local").state_dir)
    src = InMemorySource(events, event_type=spec.source.event_type)
    from buildflow.runtime.inprocess import InProcessRuntime

    runtime = runtime or InProcessRuntime()
    collector: Any = None
    if not isinstance(runtime, InProcessRuntime):  # replicas in other processes
        import ray

        actor_class: Any = ray.remote(RowCollector)
        collector = actor_class.options(num_cpus=0).remote()

    def sink(name: str) -> SinkProvider:
        if collector is None:
            return InMemorySinkProvider(InMemorySink(name), env)
        return CollectedSinkProvider(InMemorySink(name), env, collector)

    bound = BoundProcessor(
        spec=spec,
        source=InMemorySourceProvider(src, env),
        sink=sink(key),
        dead_letter=sink(f"{key}.dead_letters"),
    )
    opts = options or RunOptions(until_idle=True, idle_grace_ms=0, handle_signals=False)
    summary = runtime.run([bound], opts)
    if collector is not None:
        import ray

        rows, dead = ray.get([collector.take.remote(key), collector.take.remote(f"{key}.dead_letters")])
        ray.kill(collector)
    else:
        with _LOCK:
            rows = _SINK_ROWS.pop(key, [])
            dead = _SINK_ROWS.pop(f"{key}.dead_letters", [])
            _SINK_KEYS.pop(key, None)
            _SINK_KEYS.pop(f"{key}.dead_letters", None)
    return TestRun(
        rows=[{**r.values, "_event_id": r.event_id, "_row_index": r.row_index} for r in rows],
        dead_letters=[r.values for r in dead],
        summary=summary,
    )
