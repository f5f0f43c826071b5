"""The contracts between declarations, providers and the runtime.

Three layers, kept apart so the same processor can run in-process today and in a
distributed engine's workers tomorrow:

* A **declaration** (:class:`SourceDeclaration`, :class:`SinkDeclaration`) is what a user
  writes in ``source()`` / ``sink()``: a small, frozen, picklable description such as
  ``GCSFileStream(bucket_name="photos")``. It imports no SDK.
* A **provider** is that declaration bound to an environment (``local``, ``emulator``,
  ``gcp``). It lists the resources ``plan`` manages and opens live clients. Providers are
  picklable too: they are built from the declaration and the environment only.
* A **runtime handle** (:class:`SourceRuntime`, :class:`SinkRuntime`) is the live client,
  opened on the worker that runs the processor.
"""

from __future__ import annotations

import dataclasses
import datetime
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

if TYPE_CHECKING:
    from buildflow.environment import Environment
    from buildflow.provisioning import Resource
    from buildflow.schema import TableSchema

__all__ = [
    "SourceDeclaration",
    "SinkDeclaration",
    "SourceProvider",
    "SinkProvider",
    "SourceRuntime",
    "SinkRuntime",
    "Envelope",
    "OutputRecord",
    "DeadLetterRow",
    "RowRejection",
    "EventOutcome",
    "DEAD_LETTER_TABLE_NAME",
]

E = TypeVar("E")

#: The table beside a sink table that holds its dead letters (same dataset or schema).
DEAD_LETTER_TABLE_NAME = "buildflow_dead_letters"


class SourceDeclaration(ABC):
    """A frozen, picklable description of where events come from.

    Subclasses are frozen dataclasses. ``event_type`` is the class of the events the
    source delivers to ``process``; it is checked against the processor's type hint at
    plan time.
    """

    event_type: ClassVar[type]

    @abstractmethod
    def describe(self) -> str:
        """One line for ``plan`` and the progress line, e.g. ``GCSFileStream(bucket='x')``."""


class SinkDeclaration(ABC):
    """A frozen, picklable description of where rows go."""

    @abstractmethod
    def describe(self) -> str:
        """One line for ``plan`` and the run summary."""

    @abstractmethod
    def dead_letter_sibling(self) -> SinkDeclaration:
        """The default dead-letter destination beside this sink (same kind, same place)."""


@dataclasses.dataclass(frozen=True)
class Envelope(Generic[E]):
    """One event as it travels through the runtime.

    Attributes:
        event: The decoded event handed to ``process`` (e.g. a ``GCSFileEvent``).
        event_id: Stable id of the event at its source (``bucket/object#generation``,
            a Pub/Sub message id, ``topic/partition/offset``). Rows and dead letters
            carry it so a re-delivered event is recognised.
        ack_id: Opaque handle the source needs to ack or nack this event.
        received_at: When the runtime received the event (UTC), for latency figures.
        attempt: Delivery attempt, 1 for the first.
        object_name: What the event is about, for logs and dead letters (an object name,
            a message id); None if nothing better than the event id exists.
        error: Set by the source when the message could not be decoded into an event
            (malformed payload, missing attributes): the runtime dead-letters it without
            calling ``process``, and the stream goes on. ``event`` is then the raw message.
    """

    event: E
    event_id: str
    ack_id: Any
    received_at: datetime.datetime
    attempt: int = 1
    object_name: str | None = None
    error: Exception | None = None


@dataclasses.dataclass(frozen=True)
class OutputRecord:
    """A validated row on its way to a sink.

    Attributes:
        event_id: The source event's stable id.
        row_index: Position of this row among the rows ``process`` returned for the event
            (0 for a single row). ``(event_id, row_index)`` is the row's idempotency key.
        values: The row as a plain dict (see :func:`buildflow.schema.row_to_record`).
    """

    event_id: str
    row_index: int
    values: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class RowRejection:
    """A row the sink refused for good (e.g. BigQuery's per-row ``insertErrors``).

    Attributes:
        index: Position of the row in the batch passed to :meth:`SinkRuntime.write`.
        reason: Why, as the sink said it.
    """

    index: int
    reason: str


@dataclasses.dataclass(frozen=True)
class EventOutcome:
    """What became of one event, for a source that answers its sender (see
    :attr:`SourceRuntime.wants_outcomes`).

    Attributes:
        event_id: The event's id (:attr:`Envelope.event_id`).
        rows: The rows written to the sink for it, as :attr:`OutputRecord.values`, in
            ``row_index`` order; empty when ``process`` returned None or the event failed.
        dead_letter: Its dead-letter record (a :class:`DeadLetterRow` as a dict) when it
            failed, written to the dead-letter sink; else None.
    """

    event_id: str
    rows: list[dict[str, Any]]
    dead_letter: dict[str, Any] | None = None


@dataclasses.dataclass
class DeadLetterRow:
    """What is recorded for an event that could not be processed.

    Written to the processor's dead-letter destination (by default the table
    ``buildflow_dead_letters`` beside the sink table). The event is acked only after this
    record is written, so nothing is lost.
    """

    event_id: str
    processor: str
    source: str
    object_name: str | None
    reason: str
    error_type: str
    stage: str
    attempts: int
    failed_at: datetime.datetime
    errors: list[str] = dataclasses.field(default_factory=list)


class SourceRuntime(ABC, Generic[E]):
    """A live source, opened on the worker. All methods are called on the event loop.

    Implementations must never block the loop: do I/O with ``asyncio.to_thread`` or an
    async client.

    ``wants_outcomes``: True for a request/response source (:class:`~buildflow.io.http.HTTPEndpoint`):
    the runtime then calls :meth:`settle` with each event's rows or dead-letter record once
    they are written, just before :meth:`ack`.
    """

    wants_outcomes: ClassVar[bool] = False

    @abstractmethod
    async def pull(self, max_events: int, timeout_s: float) -> list[Envelope[E]]:
        """Return up to ``max_events`` events, waiting at most ``timeout_s`` seconds.

        Returns an empty list when nothing arrived in time.
        """

    @abstractmethod
    async def ack(self, envelopes: Sequence[Envelope[E]]) -> None:
        """Mark events done; they are never delivered again."""

    async def settle(self, outcomes: Sequence[EventOutcome]) -> None:  # noqa: B027 - optional hook
        """What became of events whose rows or dead letters are now written (only called
        when :attr:`wants_outcomes` is True), right before they are acked."""

    @abstractmethod
    async def nack(self, envelopes: Sequence[Envelope[E]]) -> None:
        """Give events back for redelivery (after a failed sink write, or at a hard stop)."""

    @abstractmethod
    async def backlog(self) -> int | None:
        """Events waiting at the source, not yet pulled; None if the source cannot tell."""

    @abstractmethod
    async def is_drained(self) -> bool:
        """True when nothing is waiting and nothing pulled is still unacked.

        Used by ``run --until-idle``.
        """

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release clients and watchers."""


class SinkRuntime(ABC):
    """A live sink, opened on the worker."""

    @abstractmethod
    async def write(self, records: Sequence[OutputRecord]) -> Sequence[RowRejection] | None:
        """Write rows idempotently on ``(event_id, row_index)``.

        Returns:
            None when every row was written; otherwise the rows the sink refused for good
            (all others were written). The events of refused rows are dead-lettered.

        Raises:
            TransientSinkError: the write may succeed if retried (lock held, server down).
            Exception: anything else is treated as a failure of the whole batch and is
                retried as well; the runtime never acks events whose rows were not written.
        """

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Flush and release clients."""


class SourceProvider(ABC):
    """A source declaration bound to an environment. Picklable.

    ``shared_consumers``: True when several processes may open the source for the same
    consumer at once and the service spreads the events over them (a Pub/Sub
    subscription, a Kafka consumer group). Otherwise a scale-out runtime opens it once
    and hands its events to the replicas. A provider may set it per declaration (a Kafka
    topic read by explicit partition assignment is not shared).

    ``answers_senders``: True when the source answers each event's sender with its
    outcome (an HTTP request waits for its rows); such a source runs in the in-process
    runtime only.
    """

    shared_consumers: bool = False
    #: True when the source answers each event's sender with its outcome (an HTTP request
    #: waits for its rows): such a source runs in the in-process runtime only.
    answers_senders: ClassVar[bool] = False

    def __init__(self, declaration: SourceDeclaration, environment: Environment) -> None:
        self.declaration = declaration
        self.environment = environment

    @abstractmethod
    def resources(self, consumer: str) -> list[Resource]:
        """Resources ``plan`` creates for this source, for the consumer named ``consumer``
        (the processor: it gets its own subscription / consumer group / ack store)."""

    @abstractmethod
    def open(self, consumer: str) -> SourceRuntime[Any]:
        """Open the live source on the current worker."""

    def upload(self, name: str, data: bytes, content_type: str | None = None) -> str:
        """Put one object into the source the way a user would (``buildflow upload``):
        returns where it went (e.g. ``gs://bucket/name``).

        Raises:
            NotImplementedError: this source cannot be written to.
        """
        raise NotImplementedError(f"{self.declaration.describe()} does not support upload")


class SinkProvider(ABC):
    """A sink declaration bound to an environment. Picklable.

    ``concurrent_writers``: True when several processes may write at once (BigQuery,
    PostgreSQL, Kafka). Otherwise (an embedded DuckDB file: one writing process at a
    time) a scale-out runtime opens it once and sends the replicas' rows to it.

    ``sql_dialect``: the SQL dialect :meth:`query` takes, as sqlglot names it
    (``"bigquery"``, ``"duckdb"``, ``"postgres"``), or None when the sink has no SQL.
    ``buildflow query`` translates GoogleSQL to it (:mod:`buildflow.sql`).
    """

    concurrent_writers: ClassVar[bool] = False
    sql_dialect: ClassVar[str | None] = None

    def __init__(self, declaration: SinkDeclaration, environment: Environment) -> None:
        self.declaration = declaration
        self.environment = environment

    @abstractmethod
    def resources(self, schema: TableSchema) -> list[Resource]:
        """Resources ``plan`` creates for this sink, given the row schema."""

    @abstractmethod
    def open(self, schema: TableSchema) -> SinkRuntime:
        """Open the live sink on the current worker."""

    @abstractmethod
    def query(self, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Run a query, in :attr:`sql_dialect`, against the sink's store (for ``buildflow
        query``): (columns, rows)."""
