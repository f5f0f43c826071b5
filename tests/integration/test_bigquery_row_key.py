"""The BigQuery idempotence key is ``(_event_id, _row_index)``, not the event id alone
(issue 22, break 3), against the local stack's BigQuery server.

An event whose ``process`` returned several rows can be written partly: a batch's rows go
out in several requests (AppendRows requests of at most ``MAX_REQUEST_BYTES``, MERGEs of at
most ``MAX_PAYLOAD_BYTES``), and a crash or a failed request after the first ones leaves
some rows of the event in the table while the event itself is never acked. It is then
redelivered and written whole. Every ``(event, row_index)`` must then be there exactly once
as users are told to query: the ``<table>_dedup`` view for the Storage Write modes (where
CDC would merge on real BigQuery; bqemulator applies none, see the README), the table
itself for ``merge``. A key on the event id alone keeps one row per event (the view) or
skips the rows the first attempt did not write (MERGE). ``insert_id`` is left out: its
de-duplication is best effort by design (and bqemulator ignores insertIds).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from buildflow.environment import Environment
from buildflow.io import BigQueryTable
from buildflow.io.base import OutputRecord
from buildflow.io.google.bigquery import BigQueryTableProvider
from buildflow.provisioning import apply, plan
from buildflow.schema import row_to_record
from tests.integration.test_bigquery_sink import PROJECT, SCHEMA, bq, query, sample_rows

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]


@pytest.fixture
def env(stack_env: Any, tmp_path: Path) -> Environment:
    return Environment(name="emulator", state_dir=tmp_path)


@pytest.fixture
def dataset(stack_env: Any) -> Iterator[str]:
    name = f"rowkey_{os.getpid()}_{time.monotonic_ns() % 10**9}"
    yield name
    bq().delete_dataset(f"{PROJECT}.{name}", delete_contents=True, not_found_ok=True)


def multi_row_events() -> list[OutputRecord]:
    """Event ``a`` with three rows, ``b`` with two, ``c`` with one; each row names its
    event and index, so a row kept under the wrong key shows."""
    out = []
    for event, n in (("a", 3), ("b", 2), ("c", 1)):
        for i, row in enumerate(sample_rows()[:n]):
            values = row_to_record(row, SCHEMA)
            out.append(OutputRecord(event, i, {**values, "name": f"{event}#{i}"}))
    return out


@pytest.mark.parametrize("mode", ["upsert", "append", "merge"])
def test_an_event_written_partly_then_redelivered_whole_has_each_row_once(
    env: Environment, dataset: str, mode: str
) -> None:
    table_id = f"{PROJECT}.{dataset}.rows"
    p = BigQueryTableProvider(
        BigQueryTable(table_id=table_id, destroy_protection=False, write_mode=mode),  # type: ignore[arg-type]
        env,
    )
    apply(plan(p.resources(SCHEMA)))
    whole = multi_row_events()
    # what the crash left: the first request of the batch landed, with row 0 of a, row 1
    # of b and all of c (rows of one event do not always land together, nor in order)
    partly = [r for r in whole if (r.event_id, r.row_index) in {("a", 0), ("b", 1), ("c", 0)}]
    sink = p.open(SCHEMA)
    try:
        assert asyncio.run(sink.write(partly)) is None
        assert asyncio.run(sink.write(whole)) is None  # the redelivery, every row again
    finally:
        asyncio.run(sink.close())

    users_query = f"`{table_id}_dedup`" if mode in ("upsert", "append") else f"`{table_id}`"
    got = sorted(
        (r["_event_id"], r["_row_index"], r["name"])
        for r in query(f"SELECT _event_id, _row_index, name FROM {users_query}")
    )
    assert got == sorted((r.event_id, r.row_index, f"{r.event_id}#{r.row_index}") for r in whole)
