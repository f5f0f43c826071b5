"""The processor contract.

A processor declares where events come from (:meth:`Processor.source`), where rows go
(:meth:`Processor.sink`), loads what it needs once per worker (:meth:`Processor.setup`),
and maps events to rows, one at a time (:meth:`Processor.process`) or a micro-batch at a
time (:meth:`Processor.process_batch`). The type hints drive the plumbing: the argument
type must match the source's event type, and the dataclass in the return type is the
table schema. Both are checked when the app is planned or started, not when the first
event arrives.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import inspect
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Union

from buildflow.errors import ProcessorDefinitionError, SchemaError
from buildflow.io.base import SinkDeclaration, SourceDeclaration
from buildflow.metrics import NULL_METRICS, Metrics
from buildflow.schema import TableSchema, schema_from_dataclass

__all__ = ["Processor", "FunctionProcessor", "ProcessorSpec", "inspect_processor"]


class Processor:
    """Base class of a stateful processor.

    Subclasses implement :meth:`source`, :meth:`sink` and one of :meth:`process` /
    :meth:`process_batch`; a subclass with neither fails when the class is defined.

    Class attributes (override per processor):
        name: Shown in plans and summaries; names the processor's subscription / ack store.
            Default: the class name.
        max_batch_size: Largest micro-batch the runtime forms (events).
        max_batch_latency_ms: Longest the runtime waits, after the first event of a
            micro-batch arrives, for the batch to fill while the processor is busy with
            an earlier batch (milliseconds). When the processor is idle, the events
            already pulled go at once: waiting would only add latency, and batches grow
            by themselves under load (the events that arrive while a batch runs).
        max_attempts: Times ``process`` is tried for one event before it is dead-lettered
            with every attempt's error (1: no retry, for deterministic failures such as a
            corrupt image; raise it when processing calls a flaky service).
        retry_backoff_ms: Wait before the second attempt; doubles for each further one.
        read_ahead_requests / read_ahead_bytes: The payloads of file events (``event.blob``
            of a bucket upload, a Pub/Sub or Kafka ``gs://`` reference, a local file) are
            downloaded as soon as their micro-batch is pulled, ahead of ``process``, on
            I/O threads of the runtime: at most ``read_ahead_requests`` reads in flight
            (default 32) and ``read_ahead_bytes`` bytes read ahead and not yet processed
            (default 64 MiB). Set either to 0 for a processor that never reads ``blob``.
            See :mod:`buildflow.runtime.readahead`.

    Scale-out (read by the Ray runtime, ``buildflow run --runtime ray``; the in-process
    runtime runs one replica and ignores them):
        num_replicas: Replicas (Ray actors) to run, each with its own ``setup()``.
        min_replicas / max_replicas: Set both to let the runtime scale between them from
            the backlog (``num_replicas`` is then the starting count, clamped to the range).
        num_cpus / num_gpus: Ray resources one replica asks for (fractions allowed: Ray
            schedules by them, it does not pin threads).

    Example::

        class Classify(buildflow.Processor):
            def source(self):
                return buildflow.io.GCSFileStream(bucket_name="photos")

            def sink(self):
                return buildflow.io.BigQueryTable(table_id="demo.predictions")

            def setup(self):
                self.model = load_model()

            def process(self, event: GCSFileEvent) -> Row:
                ...
    """

    name: ClassVar[str | None] = None
    max_batch_size: ClassVar[int] = 32
    max_batch_latency_ms: ClassVar[int] = 50
    max_attempts: ClassVar[int] = 1
    retry_backoff_ms: ClassVar[int] = 100
    read_ahead_requests: ClassVar[int] = 32
    read_ahead_bytes: ClassVar[int] = 64 << 20
    num_replicas: ClassVar[int] = 1
    min_replicas: ClassVar[int | None] = None
    max_replicas: ClassVar[int | None] = None
    num_cpus: ClassVar[float] = 1.0
    num_gpus: ClassVar[float] = 0.0

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if inspect.isabstract(cls) or cls.__dict__.get("_abstract_processor", False):
            return
        if all(k.startswith("__") for k in cls.__dict__):
            # No body (yet): cloudpickle rebuilds a class defined in a function (how Ray
            # ships it to a replica) as an empty skeleton and fills it in afterwards.
            # An empty subclass written by hand is caught by inspect_processor instead.
            return
        _check_defines_process(cls)

    def source(self) -> SourceDeclaration:
        """Where events come from, e.g. ``GCSFileStream(bucket_name=...)``."""
        raise ProcessorDefinitionError(
            f"processor {type(self).__qualname__} does not define source(); return a source "
            "declaration such as buildflow.io.GCSFileStream(bucket_name=...)."
        )

    def sink(self) -> SinkDeclaration:
        """Where rows go, e.g. ``BigQueryTable(table_id=...)``."""
        raise ProcessorDefinitionError(
            f"processor {type(self).__qualname__} does not define sink(); return a sink "
            "declaration such as buildflow.io.BigQueryTable(table_id=...)."
        )

    def dead_letter(self) -> SinkDeclaration | None:
        """Where events that fail go. Default (None): the sink's dead-letter sibling, e.g.
        the table ``buildflow_dead_letters`` in the sink table's dataset."""
        return None

    def check(self) -> None:
        """Check what the processor will need, before anything is created or run: a file
        it will load, a setting it will read. ``buildflow plan`` and ``buildflow run``
        (and :meth:`buildflow.Node.run`) call it first, in the CLI's process, so that a
        missing model file is a one-line error at ``plan`` time rather than a traceback
        from ``setup()`` on a worker.

        Must be cheap (no model load) and must not change anything. The default does
        nothing.

        Raises:
            BuildflowError: (typically :class:`~buildflow.errors.ConfigurationError`)
                naming the bad value with ``!r`` and the fix.
        """

    def setup(self) -> None:
        """Load models and open clients. Called once per worker, in the worker thread,
        before the first event."""

    def teardown(self) -> None:
        """Release what :meth:`setup` took. Called once when the worker stops, also after
        a failure."""

    def prefetch(self, events: list[Any]) -> None:
        """Optional: start work on a micro-batch as soon as it is pulled, before its turn
        in :meth:`process_batch` (e.g. submit image decodes to a thread pool, so that
        decoding batch k+1 overlaps the model's inference on batch k).

        Called on the runtime's event loop thread, after :meth:`setup`, for every
        micro-batch, up to ``max_inflight_batches`` batches ahead of processing: it must
        not block (hand work to threads and return) and must not raise. Whatever it
        started is the processor's to collect in :meth:`process_batch`, which must still
        work for events that were never prefetched (retries, one-at-a-time isolation).
        The default does nothing.
        """

    def process(self, event: Any) -> Any:
        """Map one event to a row, a list of rows, or None (no row).

        An exception dead-letters this event (with the exception as its reason); the
        stream goes on.
        """
        raise NotImplementedError

    def process_batch(self, events: list[Any]) -> Sequence[Any]:
        """Map a micro-batch of events to one result per event, in order.

        Each result is what :meth:`process` may return (a row, a list of rows, or None),
        or an ``Exception`` instance to dead-letter that event alone. If this method
        raises, the runtime retries the events one at a time to find the bad one(s).
        The default calls :meth:`process` per event.
        """
        out: list[Any] = []
        for e in events:
            try:
                out.append(self.process(e))
            except Exception as exc:  # isolate the bad event; keep the rest
                out.append(exc)
        return out

    @property
    def metrics(self) -> Metrics:
        """Counters and timings reported in the run summary (e.g. ``model_loads``)."""
        return self.__dict__.get("_buildflow_metrics", NULL_METRICS)  # type: ignore[no-any-return]

    def processor_name(self) -> str:
        return self.name or type(self).__name__


class FunctionProcessor(Processor):
    """A processor made from a plain function by ``@app.processor(source=..., sink=...)``.

    The function takes one event (or, with ``batched=True``, a list of events) and
    returns what :meth:`Processor.process` (or :meth:`Processor.process_batch`) returns.
    """

    _abstract_processor = True

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        source: SourceDeclaration,
        sink: SinkDeclaration,
        dead_letter: SinkDeclaration | None = None,
        batched: bool = False,
        name: str | None = None,
        max_batch_size: int | None = None,
        max_batch_latency_ms: int | None = None,
    ) -> None:
        self.fn = fn
        self._source = source
        self._sink = sink
        self._dead_letter = dead_letter
        self.batched = batched
        self._name: str = name or str(getattr(fn, "__name__", "processor"))
        if max_batch_size is not None:
            self.max_batch_size = max_batch_size  # type: ignore[misc]
        if max_batch_latency_ms is not None:
            self.max_batch_latency_ms = max_batch_latency_ms  # type: ignore[misc]

    def processor_name(self) -> str:
        return self._name

    def source(self) -> SourceDeclaration:
        return self._source

    def sink(self) -> SinkDeclaration:
        return self._sink

    def dead_letter(self) -> SinkDeclaration | None:
        return self._dead_letter

    def process(self, event: Any) -> Any:
        if self.batched:
            return self.fn([event])[0]
        return self.fn(event)

    def process_batch(self, events: list[Any]) -> Sequence[Any]:
        if self.batched:
            return self.fn(events)  # type: ignore[no-any-return]
        return super().process_batch(events)


@dataclasses.dataclass(frozen=True)
class ProcessorSpec:
    """What the framework learned from a processor's declarations and type hints."""

    name: str
    processor: Processor
    source: SourceDeclaration
    sink: SinkDeclaration
    dead_letter: SinkDeclaration
    row_type: type
    schema: TableSchema
    batched: bool
    max_batch_size: int
    max_batch_latency_ms: int


def _check_defines_process(cls: type[Processor]) -> None:
    if cls.process is Processor.process and cls.process_batch is Processor.process_batch:
        raise ProcessorDefinitionError(
            f"processor {cls.__qualname__} defines neither process(self, event) nor "
            "process_batch(self, events); define one of them."
        )


def _strip(tp: Any) -> list[Any]:
    """Members of a Union (or the type itself), without None and Exception types."""
    origin = typing.get_origin(tp)
    members = typing.get_args(tp) if origin in (Union, types.UnionType) else (tp,)
    return [
        m
        for m in members
        if m is not type(None) and not (isinstance(m, type) and issubclass(m, BaseException))
    ]


_SEQUENCES = (list, tuple, collections.abc.Sequence, collections.abc.Iterable, collections.abc.Iterator)


def _row_type_of(tp: Any, where: str, allow_list: bool = True) -> type:
    if typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    rows: list[type] = []
    for m in _strip(tp):
        if typing.get_origin(m) in _SEQUENCES and allow_list:
            args = typing.get_args(m)
            rows.append(_row_type_of(args[0] if args else Any, where, allow_list=False))
        elif isinstance(m, type) and dataclasses.is_dataclass(m):
            rows.append(m)
        else:
            raise ProcessorDefinitionError(
                f"{where}: return type {tp!r} does not name a row dataclass; annotate it as "
                "-> MyRow, -> MyRow | None or -> list[MyRow] where MyRow is a "
                "@dataclasses.dataclass."
            )
    distinct = list(dict.fromkeys(rows))
    if len(distinct) != 1:
        raise ProcessorDefinitionError(
            f"{where}: return type {tp!r} must name exactly one row dataclass "
            f"(found {len(distinct)}); one processor writes one table."
        )
    return distinct[0]


def _hints(fn: Callable[..., Any], where: str) -> dict[str, Any]:
    try:
        return typing.get_type_hints(fn, include_extras=True)
    except Exception as e:
        raise ProcessorDefinitionError(f"{where}: cannot resolve type hints: {e}") from e


def inspect_processor(processor: Processor) -> ProcessorSpec:
    """Check a processor's declarations and type hints; derive its table schema.

    Raises:
        ProcessorDefinitionError: source()/sink() return something else than a
            declaration, a return type hint is missing or names no dataclass, or the
            event type hint does not match the source's event type.
        SchemaError: the row dataclass cannot be mapped to a table schema.
    """
    name = processor.processor_name()
    source = processor.source()
    sink = processor.sink()
    if not isinstance(source, SourceDeclaration):
        raise ProcessorDefinitionError(
            f"processor {name}: source() returned {source!r}, not a source declaration "
            "(e.g. buildflow.io.GCSFileStream(...))."
        )
    if not isinstance(sink, SinkDeclaration):
        raise ProcessorDefinitionError(
            f"processor {name}: sink() returned {sink!r}, not a sink declaration "
            "(e.g. buildflow.io.BigQueryTable(...))."
        )
    dead_letter = processor.dead_letter() or sink.dead_letter_sibling()

    if isinstance(processor, FunctionProcessor):
        fn: Callable[..., Any] = processor.fn
        batched = processor.batched
        where = f"processor function {name}()"
    else:
        _check_defines_process(type(processor))
        batched = type(processor).process_batch is not Processor.process_batch
        fn = processor.process_batch if batched else processor.process
        where = f"{type(processor).__qualname__}.{fn.__name__}()"

    hints = _hints(fn, where)
    if "return" not in hints:
        raise ProcessorDefinitionError(
            f"{where} has no return type hint; the returned dataclass is the table schema. "
            f"Annotate it, e.g. def {fn.__name__}(self, event: GCSFileEvent) -> MyRow"
            + (" (for a batch: -> list[MyRow | Exception])" if batched else "")
        )
    ret = hints["return"]
    if batched:
        origin = typing.get_origin(ret)
        if origin not in _SEQUENCES:
            raise ProcessorDefinitionError(
                f"{where}: a batched processor returns one result per event; annotate it "
                f"as -> list[MyRow | Exception], not {ret!r}."
            )
        args = typing.get_args(ret)
        row_type = _row_type_of(args[0] if args else Any, where)
    else:
        row_type = _row_type_of(ret, where)

    params = [p for p in inspect.signature(fn).parameters.values() if p.name != "self"]
    if params:
        ann = hints.get(params[0].name)
        if batched and ann is not None and typing.get_origin(ann) in _SEQUENCES:
            ann = (typing.get_args(ann) or (None,))[0]
        expected = source.event_type
        if isinstance(ann, type) and ann is not typing.Any and not issubclass(expected, ann):
            raise ProcessorDefinitionError(
                f"{where}: parameter {params[0].name!r} is annotated {ann.__name__}, but "
                f"{source.describe()} delivers {expected.__name__} events; annotate it as "
                f"{expected.__name__}."
            )
    try:
        schema = schema_from_dataclass(row_type)
    except SchemaError as e:
        raise SchemaError(f"processor {name}: {e}") from e
    if processor.max_batch_size < 1 or processor.max_batch_latency_ms < 0 or processor.max_attempts < 1:
        raise ProcessorDefinitionError(
            f"processor {name}: max_batch_size and max_attempts must be >= 1 and "
            f"max_batch_latency_ms >= 0 (got {processor.max_batch_size!r}, "
            f"{processor.max_attempts!r}, {processor.max_batch_latency_ms!r})."
        )
    lo, hi = processor.min_replicas, processor.max_replicas
    if (
        processor.num_replicas < 1
        or (lo is None) != (hi is None)
        or (lo is not None and hi is not None and not 1 <= lo <= hi)
        or processor.num_cpus < 0
        or processor.num_gpus < 0
    ):
        raise ProcessorDefinitionError(
            f"processor {name}: need num_replicas >= 1, min_replicas and max_replicas both set "
            f"(1 <= min <= max) or both unset, num_cpus >= 0 and num_gpus >= 0 (got "
            f"num_replicas={processor.num_replicas!r}, min_replicas={lo!r}, max_replicas={hi!r}, "
            f"num_cpus={processor.num_cpus!r}, num_gpus={processor.num_gpus!r})."
        )
    return ProcessorSpec(
        name=name,
        processor=processor,
        source=source,
        sink=sink,
        dead_letter=dead_letter,
        row_type=row_type,
        schema=schema,
        batched=batched,
        max_batch_size=processor.max_batch_size,
        max_batch_latency_ms=processor.max_batch_latency_ms,
    )
