"""The Ray runtime's servers: a source or a sink that only one process may open, shared by
every replica of a processor.

* :class:`SourceServer` (a Ray async actor) opens a source once (the local folder bucket,
  the in-memory test source: anything without ``SourceProvider.shared_consumers``) and hands
  events to the replicas as they pull, keeping which replica holds which un-acked event, so
  that nothing is lost or doubled and a dead replica's events are given back (nacked).
* :class:`SinkServer` opens a sink once (an embedded DuckDB file: one writing process at a
  time, no ``SinkProvider.concurrent_writers``) and writes the replicas' rows; writes stay
  idempotent on ``(event_id, row_index)``.

The ``Remote*`` classes are the replicas' side: a source/sink provider whose runtime calls
the server actor.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from buildflow.io.base import (
    Envelope,
    OutputRecord,
    RowRejection,
    SinkProvider,
    SinkRuntime,
    SourceProvider,
    SourceRuntime,
)
from buildflow.schema import TableSchema

__all__ = ["SourceServer", "SinkServer", "RemoteSourceProvider", "RemoteSinkProvider"]


class SourceServer:
    """Opens a source once and hands its events to replicas (a Ray async actor).

    Keeps, per un-acked event, the replica that pulled it, so that :meth:`release` can
    give a dead replica's events back. ``max_events`` (the run's limit) is applied here,
    over all replicas.
    """

    def __init__(
        self,
        provider: SourceProvider,
        consumer: str,
        max_events: int | None,
        expected_replicas: int = 1,
        fair_start_s: float = 60.0,
    ) -> None:
        self._provider = provider
        self._consumer = consumer
        self._source: SourceRuntime[Any] | None = None
        self._owner: dict[Any, tuple[str, Envelope[Any]]] = {}
        self._budget = max_events
        self._lock: asyncio.Lock | None = None
        self._pulled = 0
        # Fair start: nothing is handed out until the first `expected_replicas` replicas
        # have all asked (they are set up: models loaded), or `fair_start_s` after the
        # first asked, so that the first replica up does not take a whole backlog.
        self._expected = expected_replicas
        self._fair_start_s = fair_start_s
        self._seen: set[str] = set()
        self._first_ask: float | None = None

    async def _open(self) -> SourceRuntime[Any]:
        if self._lock is None:
            self._lock = asyncio.Lock()
        if self._source is None:
            self._source = self._provider.open(self._consumer)
        return self._source

    async def pull(self, replica: str, max_events: int, timeout_s: float) -> list[Envelope[Any]]:
        source = await self._open()
        assert self._lock is not None
        if len(self._seen) < self._expected:
            self._seen.add(replica)
            now = time.monotonic()
            self._first_ask = self._first_ask or now
            if len(self._seen) < self._expected and now - self._first_ask < self._fair_start_s:
                await asyncio.sleep(min(timeout_s, 0.05))
                return []
            self._expected = 0  # everyone is here (or waited long enough)
        async with self._lock:  # a source's pull is not re-entrant
            if self._budget is not None:
                max_events = min(max_events, self._budget)
                if max_events <= 0:
                    await asyncio.sleep(min(timeout_s, 0.05))
                    return []
            got = await source.pull(max_events, timeout_s)
            if self._budget is not None:
                self._budget -= len(got)
        self._pulled += len(got)
        for env in got:
            self._owner[env.ack_id] = (replica, env)
        return got

    def _take(self, replica: str, ack_ids: Sequence[Any]) -> list[Envelope[Any]]:
        out = []
        for a in ack_ids:
            owner = self._owner.get(a)
            if owner is not None and owner[0] == replica:
                del self._owner[a]
                out.append(owner[1])
        return out

    async def ack(self, replica: str, ack_ids: Sequence[Any]) -> None:
        envs = self._take(replica, ack_ids)
        if envs:
            await (await self._open()).ack(envs)

    async def nack(self, replica: str, ack_ids: Sequence[Any]) -> None:
        envs = self._take(replica, ack_ids)
        if envs:
            await (await self._open()).nack(envs)

    async def release(self, replica: str) -> int:
        """Give back (nack) every event ``replica`` pulled and did not ack: it died."""
        ids = [a for a, (r, _) in self._owner.items() if r == replica]
        await self.nack(replica, ids)
        return len(ids)

    async def backlog(self) -> int | None:
        return await (await self._open()).backlog()

    async def is_drained(self) -> bool:
        if self._owner:
            return False
        if self._budget is not None and self._budget <= 0:
            return True  # the run's limit is reached and everything pulled is acked
        return await (await self._open()).is_drained()

    async def status(self) -> dict[str, Any]:
        return {
            "backlog": await self.backlog(),
            "inflight": len(self._owner),
            "pulled": self._pulled,
            "exhausted": self._budget is not None and self._budget <= 0 and not self._owner,
        }

    async def close(self) -> None:
        if self._source is not None:
            await self._source.close()


class RemoteSource(SourceRuntime[Any]):
    """A replica's view of a :class:`SourceServer`."""

    def __init__(self, server: Any, replica: str) -> None:
        self._server = server
        self._replica = replica

    async def pull(self, max_events: int, timeout_s: float) -> list[Envelope[Any]]:
        got: list[Envelope[Any]] = await self._server.pull.remote(self._replica, max_events, timeout_s)
        return got

    async def ack(self, envelopes: Sequence[Envelope[Any]]) -> None:
        await self._server.ack.remote(self._replica, [e.ack_id for e in envelopes])

    async def nack(self, envelopes: Sequence[Envelope[Any]]) -> None:
        await self._server.nack.remote(self._replica, [e.ack_id for e in envelopes])

    async def backlog(self) -> int | None:
        n: int | None = await self._server.backlog.remote()
        return n

    async def is_drained(self) -> bool:
        drained: bool = await self._server.is_drained.remote()
        return drained


class RemoteSourceProvider(SourceProvider):
    def __init__(self, inner: SourceProvider, server: Any, replica: str) -> None:
        super().__init__(inner.declaration, inner.environment)
        self._inner = inner
        self._server = server
        self._replica = replica

    def resources(self, consumer: str) -> list[Any]:
        return self._inner.resources(consumer)

    def open(self, consumer: str) -> SourceRuntime[Any]:
        return RemoteSource(self._server, self._replica)


# -- the sink server and its client -----------------------------------------------------------
class SinkServer:
    """Opens a sink once and writes the replicas' rows (a Ray async actor), for sinks that
    allow one writing process only (an embedded DuckDB file)."""

    def __init__(self, provider: SinkProvider, schema: TableSchema) -> None:
        self._provider = provider
        self._schema = schema
        self._sink: SinkRuntime | None = None
        self._lock: asyncio.Lock | None = None

    async def write(self, records: list[OutputRecord]) -> Sequence[RowRejection] | None:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._sink is None:
                self._sink = self._provider.open(self._schema)
            return await self._sink.write(records)

    async def close(self) -> None:
        if self._sink is not None:
            await self._sink.close()


class RemoteSink(SinkRuntime):
    def __init__(self, server: Any) -> None:
        self._server = server

    async def write(self, records: Sequence[OutputRecord]) -> Sequence[RowRejection] | None:
        out: Sequence[RowRejection] | None = await self._server.write.remote(list(records))
        return out


class RemoteSinkProvider(SinkProvider):
    concurrent_writers = True

    def __init__(self, inner: SinkProvider, server: Any) -> None:
        super().__init__(inner.declaration, inner.environment)
        self._inner = inner
        self._server = server

    def resources(self, schema: TableSchema) -> list[Any]:
        return self._inner.resources(schema)

    def open(self, schema: TableSchema) -> SinkRuntime:
        return RemoteSink(self._server)

    def query(self, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
        return self._inner.query(sql)
