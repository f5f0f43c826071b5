"""A MERGE job that times out is cancelled and waited for before the batch is retried:
two insert-only MERGEs of one key that overlap both insert ("Transform data with DML").
A fake client stands in for BigQuery: the emulator runs DML synchronously, so it never
times out."""

from __future__ import annotations

import asyncio
import concurrent.futures
from pathlib import Path
from typing import Any

import pytest

import buildflow.io.google.bigquery as mod
from buildflow.environment import Environment
from buildflow.errors import TransientSinkError
from buildflow.io.base import OutputRecord
from buildflow.io.google.bigquery import BigQuerySink
from buildflow.schema import SchemaField, TableSchema

SCHEMA = TableSchema((SchemaField("name", "STRING"),))


class Job:
    def __init__(self, finishes_ok: bool) -> None:
        self.job_id = "job-1"
        self.state = "RUNNING"
        self.error_result: Any = None
        self.num_dml_affected_rows = 1
        self.calls: list[str] = []
        self.finishes_ok = finishes_ok

    def result(self, **kw: Any) -> None:
        self.calls.append("result")
        raise concurrent.futures.TimeoutError()

    def cancel(self, **kw: Any) -> bool:
        self.calls.append("cancel")
        return True

    def reload(self, **kw: Any) -> None:
        self.calls.append("reload")
        self.state = "DONE"
        self.error_result = None if self.finishes_ok else {"reason": "stopped"}


@pytest.mark.parametrize("finishes_ok", [True, False])
def test_a_timed_out_merge_is_cancelled_and_awaited_before_a_retry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, finishes_ok: bool
) -> None:
    job = Job(finishes_ok)
    submitted: list[str] = []

    class Client:
        def query(self, sql: str, **kw: Any) -> Job:
            submitted.append(sql)
            return job

    monkeypatch.setattr(mod, "bigquery_client", lambda env, project: Client())
    env = Environment(name="emulator", state_dir=tmp_path)
    sink = BigQuerySink(env, "proj-ect", "proj-ect.d.t", SCHEMA, "merge")
    try:
        if finishes_ok:  # completed while being cancelled: written, nothing to retry
            assert asyncio.run(sink.write([OutputRecord("ev", 0, {"name": "a"})])) is None
        else:
            with pytest.raises(TransientSinkError, match="was cancelled"):
                asyncio.run(sink.write([OutputRecord("ev", 0, {"name": "a"})]))
    finally:
        asyncio.run(sink.close())
    assert len(submitted) == 1
    assert job.calls == ["result", "cancel", "reload"] and job.state == "DONE"
