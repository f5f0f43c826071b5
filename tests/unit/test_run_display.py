"""What ``buildflow run`` prints: every name readable at 80 columns, a node column for
replicas, no empty parentheses, a clock that never goes back, one "launch to first row"."""

from __future__ import annotations

import io
import time
from typing import Any

import pytest
from rich.console import Console

from buildflow.cli import run as run_cli
from buildflow.runtime.base import ProcessorStats, RunSummary

NAME = "a_rather_long_processor_name_for_80_columns"


def summary() -> RunSummary:
    p = ProcessorStats(name=NAME, events=11, rows=11, setup_calls=2, latencies_ms=[1182.0], replicas=2)
    p.first_row_at = time.time()
    p.per_replica = [
        {
            "replica": f"{NAME}-{i}",
            "state": "finished",
            "events": 5 + i,
            "rows": 5 + i,
            "dead_letters": 0,
            "model_loads": 1,
            "peak_rss_mb": 930.0,
            "node": "2cf3d01a" * 7,
        }
        for i in (1, 2)
    ]
    return RunSummary([p, ProcessorStats(name="image_classification", events=3)], 4.9, "signal", 974, 8)


@pytest.fixture
def printed(monkeypatch: pytest.MonkeyPatch) -> Any:
    buf = io.StringIO()
    monkeypatch.setattr(run_cli, "out", Console(file=buf, width=80, color_system=None))
    return buf


def test_the_summary_keeps_every_name_at_80_columns(printed: io.StringIO) -> None:
    run_cli._print_summary(summary(), launched_at=time.time() - 3)
    text = printed.getvalue()
    assert all(len(line) <= 80 for line in text.splitlines())
    assert NAME in text and "image_classification" in text and "…" not in text
    assert "node" in text and "2cf3d01a" in text  # the replica table's node column
    flat = " ".join(text.split())
    assert "launch to first row 3.0" in flat and "receive-to-row p50 1182 ms" in flat


def test_progress_line_clock_never_goes_back_and_has_no_empty_parentheses() -> None:
    line = run_cli._Progress(time.monotonic() - 3.8)
    s = ProcessorStats(name="p", events=10, replicas=2)  # replicas known, per-replica not yet
    first = line.text([s], 3.8).plain
    again = line.text([s], 0.6).plain  # the runtime's clock jumped back; ours does not
    assert "()" not in first and "model loads )" not in first
    assert float(first.split("s]")[0].strip("[ ")) <= float(again.split("s]")[0].strip("[ "))
