"""Fixtures of the UI tests: ``buildflow run APP --ui --ui-port 0`` as a real subprocess on
a scratch state folder (planned first), stopped with SIGINT (the user's Ctrl-C) at the end."""

from __future__ import annotations

import dataclasses
import io
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
BUILDFLOW = [sys.executable, "-m", "buildflow.cli"]
TOY_APP = "tests.ui.toy_app:app"
DEADLINE_S = 20.0  # bounded waits; tests end as soon as the expected thing is there


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {**os.environ, "BUILDFLOW_LOG_LEVEL": "info", "COLUMNS": "200"}
    env.pop("BUILDFLOW_ENV", None)
    env.pop("BUILDFLOW_UI_TOKEN", None)
    return {**env, **(extra or {})}


def buildflow(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run one ``buildflow`` command to its end."""
    return subprocess.run(
        [*BUILDFLOW, *args], cwd=REPO, env=_env(env), capture_output=True, text=True, timeout=timeout
    )


@dataclasses.dataclass
class UiRun:
    """A running ``buildflow run --ui``: the page's URL, the state folder, all output so far."""

    url: str
    state: Path
    proc: subprocess.Popen[str]
    lines: list[str]
    reader: threading.Thread

    @property
    def output(self) -> str:
        return "".join(self.lines)

    @property
    def bucket(self) -> Path:
        (folder,) = (self.state / "buckets").iterdir()
        return folder

    def stop(self) -> int:
        """Ctrl-C (drain and exit), then wait; a kill if it hangs. Returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.reader.join(timeout=10)  # it ends at the end of the output
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode


def start_ui_run(
    app: str, state: Path, *options: str, env: dict[str, str] | None = None, timeout_s: float = 120
) -> UiRun:
    """Plan ``app`` (--yes) into ``state``, start ``run --ui``, and wait for its URL line."""
    planned = buildflow("plan", app, "--yes", "--state-dir", str(state), env=env, timeout=timeout_s)
    assert planned.returncode == 0, planned.stdout + planned.stderr
    proc = subprocess.Popen(
        [
            *BUILDFLOW,
            "run",
            app,
            "--ui",
            "--ui-port",
            "0",
            "--no-progress",
            "--state-dir",
            str(state),
            *options,
        ],
        cwd=REPO,
        env=_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    assert proc.stdout is not None
    stdout = proc.stdout
    reader = threading.Thread(target=lambda: lines.extend(iter(stdout.readline, "")), daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        m = re.search(r"^UI: (http://127\.0\.0\.1:\d+/)", "".join(lines), re.M)
        if m:
            return UiRun(m.group(1), state, proc, lines, reader)
        if proc.poll() is not None:
            reader.join(timeout=10)
            stdout.close()
            raise AssertionError(f"buildflow run --ui exited {proc.returncode}:\n{''.join(lines)}")
        time.sleep(0.05)
    proc.kill()
    proc.wait(timeout=10)
    reader.join(timeout=10)
    stdout.close()
    raise AssertionError(f"no 'UI: http://...' line within {timeout_s} s:\n{''.join(lines)}")


@pytest.fixture
def ui_runs() -> Iterator[Callable[..., UiRun]]:
    """A factory of :class:`UiRun` (see :func:`start_ui_run`); stops every one it started."""
    started: list[UiRun] = []

    def start(app: str, state: Path, *options: str, env: dict[str, str] | None = None) -> UiRun:
        run = start_ui_run(app, state, *options, env=env)
        started.append(run)
        return run

    yield start
    for run in started:
        run.stop()


def image_bytes(fmt: str = "JPEG", size: tuple[int, int] = (64, 32), color: str = "teal") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, fmt)
    return buf.getvalue()


def upload(run: UiRun, *files: tuple[str, bytes], **kwargs: Any) -> httpx.Response:
    parts = [("files", (name, data, "application/octet-stream")) for name, data in files]
    return httpx.post(run.url + "api/uploads", files=parts, timeout=30, **kwargs)


def wait_for(what: str, probe: Callable[[], Any], deadline_s: float = DEADLINE_S) -> Any:
    """Poll ``probe`` until it returns something truthy; fail after ``deadline_s``."""
    end = time.monotonic() + deadline_s
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {deadline_s} s waiting for {what}")
        time.sleep(0.1)
