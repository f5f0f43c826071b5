"""The benchmark suite's smoke run (issue 9): seconds, asserting only that it produces its
table and plot. Figures are measured by the full run, not by tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_suite_smoke_produces_the_table_and_the_plot(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.suite", "--smoke", "--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    table = (tmp_path / "suite.md").read_text()
    header = (
        "| model | photos | backend | decode ceiling img/s | model ceiling img/s "
        "| shared-cores ceiling img/s | ours img/s |"
    )
    assert header in table
    # each photo set measured on its own, in both tables (throughput, components)
    assert table.count("| efficientnet_lite0 | small ~500x375 |") == 2, table
    assert table.count("| efficientnet_lite0 | large ~1350x900 |") == 2, table
    assert "framework overhead" in table
    assert "| backlog drain | images |" in table
    assert "| model | photos | decode ceilings img/s | model ceilings img/s (batch 16) |" in table
    assert "simplejpeg DCT-scaled" in table and "onnxruntime fp32" in table
    assert "load average" in table.splitlines()[0]
    assert (tmp_path / "suite.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
