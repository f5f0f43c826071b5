"""Framework overhead: a no-op processor over N in-memory events, microseconds per event.

Four runs of the real in-process runtime (micro-batching, worker thread, bounded queues,
ack after write, dead-letter plumbing), all in this process:

* ``process`` (one call per event) and ``process_batch`` (one call per micro-batch), each
* into the in-memory sink (the framework alone) and into a real DuckDB table (the local
  ``BigQueryTable``: one ``INSERT ... SELECT UNNEST(...)`` per micro-batch, the file kept
  open between writes).

The baseline in the same run is a bare Python loop calling the same ``process`` function
on the same events (what the user's code costs with no framework at all); the machine's
load average is printed beside the figures.

    .venv/bin/python -m benchmarks.framework_overhead --events 100000 [--batch 256] [--json out.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import buildflow
from buildflow.environment import Environment
from buildflow.io import BigQueryTable
from buildflow.io.registry import sink_provider
from buildflow.processor import inspect_processor
from buildflow.provisioning import apply, plan
from buildflow.runtime import BoundProcessor, RunOptions
from buildflow.runtime.inprocess import InProcessRuntime
from buildflow.testing import InMemorySink, InMemorySinkProvider, InMemorySource, InMemorySourceProvider


@dataclasses.dataclass(frozen=True)
class Tick:
    n: int


@dataclasses.dataclass
class Row:
    n: int


def _row(event: Tick) -> Row:
    return Row(event.n)


def make_processor(batch: int, batched: bool, table: str | None) -> buildflow.Processor:
    sink = BigQueryTable(table_id=table, destroy_protection=False) if table else InMemorySink("overhead")

    class PerEvent(buildflow.Processor):
        max_batch_size = batch
        max_batch_latency_ms = 5

        def source(self) -> InMemorySource:
            return InMemorySource((), event_type=Tick)

        def sink(self) -> Any:
            return sink

        def process(self, event: Tick) -> Row:
            return _row(event)

    class PerBatch(PerEvent):
        def process_batch(self, events: list[Tick]) -> list[Row]:  # type: ignore[override]
            return [_row(e) for e in events]

    return PerBatch() if batched else PerEvent()


def run_once(events: tuple[Tick, ...], batch: int, batched: bool, duckdb_dir: Path | None) -> dict[str, Any]:
    env = Environment(name="local", state_dir=duckdb_dir or Path(tempfile.mkdtemp()))
    table = "bench.overhead" if duckdb_dir else None
    processor = make_processor(batch, batched, table)
    spec = inspect_processor(processor)
    source = InMemorySourceProvider(InMemorySource(events, event_type=Tick), env)
    if table:
        decl = BigQueryTable(table_id=table, destroy_protection=False)
        sink: Any = sink_provider(decl, env)
        dead: Any = sink_provider(decl.dead_letter_sibling(), env)
    else:
        sink = InMemorySinkProvider(InMemorySink("overhead"), env)
        dead = InMemorySinkProvider(InMemorySink("overhead.dead"), env)
    bound = BoundProcessor(spec=spec, source=source, sink=sink, dead_letter=dead)
    apply(plan(bound.resources()))
    options = RunOptions(until_idle=True, idle_grace_ms=0, handle_signals=False, max_inflight_batches=2)
    t0 = time.perf_counter()
    summary = InProcessRuntime().run([bound], options)
    wall = time.perf_counter() - t0
    assert summary.error is None, summary.error
    assert summary.rows == len(events), (summary.rows, len(events))
    return {
        "mode": "process_batch" if batched else "process",
        "sink": "duckdb" if table else "in-memory",
        "events": summary.events,
        "wall_s": round(wall, 3),
        "us_per_event": round(wall / len(events) * 1e6, 2),
        "events_per_s": round(len(events) / wall),
    }


def bare_loop(events: tuple[Tick, ...]) -> float:
    """Microseconds per event of calling the processor function with no framework."""
    t0 = time.perf_counter()
    rows = [_row(e) for e in events]
    assert len(rows) == len(events)
    return (time.perf_counter() - t0) / len(events) * 1e6


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=256, help="max_batch_size of the processor")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)
    events = tuple(Tick(i) for i in range(args.events))
    load_before = os.getloadavg()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for batched in (False, True):
            for use_duckdb in (False, True):
                sub = Path(tmp) / f"{int(batched)}{int(use_duckdb)}"
                results.append(run_once(events, args.batch, batched, sub if use_duckdb else None))
    bare = bare_loop(events)
    load_after = os.getloadavg()
    print(f"framework overhead: {args.events} events, max_batch_size {args.batch}, cores {os.cpu_count()}")
    print(
        f"load average (1/5/15 min) before {load_before[0]:.2f}/{load_before[1]:.2f}/{load_before[2]:.2f}, "
        f"after {load_after[0]:.2f}/{load_after[1]:.2f}/{load_after[2]:.2f}"
    )
    print()
    print("| mode | sink | events | wall s | us/event | events/s |")
    print("|---|---|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r['mode']} | {r['sink']} | {r['events']} | {r['wall_s']} | {r['us_per_event']} | "
            f"{r['events_per_s']} |"
        )
    print(f"| bare loop (no framework) | - | {args.events} | - | {bare:.2f} | - |")
    if args.json:
        args.json.write_text(
            json.dumps(
                {"results": results, "bare_us_per_event": bare, "load": [load_before, load_after]}, indent=2
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
