"""A table deleted under a running app (``buildflow destroy`` in another terminal): the run
stops with one line, after a short grace (BigQuery may answer NotFound for a moment after
creating a table), and acks nothing it did not write."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path

import pytest

from buildflow.errors import ResourceGoneError
from buildflow.io.base import OutputRecord, RowRejection, SinkRuntime
from buildflow.runtime import inprocess
from buildflow.runtime.base import RunOptions
from buildflow.runtime.inprocess import InProcessRuntime
from buildflow.schema import TableSchema
from tests.unit.test_runtime import (
    FileSink,
    FileSinkProvider,
    LoggedSource,
    Named,
    Recorder,
    _bound,
    events,
)


class _GoneSink(SinkRuntime):
    def __init__(self, log: Recorder) -> None:
        self.log = log

    async def write(self, records: Sequence[OutputRecord]) -> Sequence[RowRejection] | None:
        self.log.append("gone")
        raise ResourceGoneError("table ds.rows no longer exists (deleted while running)")


class GoneSinkProvider(FileSinkProvider):
    def open(self, schema: TableSchema) -> SinkRuntime:
        assert isinstance(self.declaration, FileSink)
        return _GoneSink(self.declaration.log)


def test_a_deleted_table_stops_the_run_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(inprocess, "GONE_GRACE_S", 0.3)
    log, sink_log = Recorder(tmp_path / "log.jsonl"), Recorder(tmp_path / "sink.jsonl")
    bound = _bound(
        Named(),
        LoggedSource(tuple(events(4)), log=log),
        FileSink("gone", rows=Recorder(tmp_path / "rows.jsonl"), log=sink_log),
        FileSink("gone.dl", rows=Recorder(tmp_path / "dl.jsonl"), log=Recorder(tmp_path / "dl-log.jsonl")),
    )
    bound = dataclasses.replace(bound, sink=GoneSinkProvider(bound.sink.declaration, bound.sink.environment))
    opts = RunOptions(until_idle=True, idle_grace_ms=0, handle_signals=False, sink_retry_initial_ms=10)
    with caplog.at_level(logging.WARNING, logger="buildflow"):
        summary = InProcessRuntime().run([bound], opts)
    assert summary.stop_reason == "error"
    assert summary.error == "table ds.rows no longer exists (deleted while running)"
    assert len(sink_log.items()) >= 2  # retried during the grace, then given up
    assert not any(x.startswith("ack") for x in log.items())
    assert not any(r.exc_info for r in caplog.records)  # no traceback
    assert not any(r.levelno >= logging.ERROR for r in caplog.records)  # the summary says it once
