"""End to end: ``buildflow run`` of an app whose source is an :class:`~buildflow.io.HTTPEndpoint`,
as a real subprocess, asked by a real HTTP client (httpx).

The mechanics run on a model-free app (:mod:`tests.integration.http_toy_app`): its batches cost
200 ms, as a model's would, so concurrent requests queue behind a batch and form the next
micro-batch, and every row records the size of its micro-batch. One test runs the shipped
:class:`processors.ImageClassificationProcessor` on real photos. Those run the CLI and are
marked slow; two in-process tests (a sink whose write the test holds open) are not.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import io
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

import buildflow
from buildflow.environment import Environment
from buildflow.events import FileEvent
from buildflow.io import DuckDBTable, HTTPEndpoint
from buildflow.io.base import OutputRecord, SinkRuntime
from buildflow.io.local.duckdb_sink import DuckDBTableProvider
from buildflow.io.registry import sink_provider, source_provider
from buildflow.processor import inspect_processor
from buildflow.runtime.base import BoundProcessor, RunOptions
from buildflow.runtime.inprocess import InProcessRuntime
from buildflow.schema import TableSchema
from buildflow.testing import InMemorySink, InMemorySinkProvider

REPO = Path(__file__).resolve().parents[2]
BUILDFLOW = [sys.executable, "-m", "buildflow.cli"]
TOY_APP = "tests/integration/http_toy_app.py:app"
TOKEN = "s3cret-token-for-the-endpoint"


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {**os.environ, "BUILDFLOW_LOG_LEVEL": "info", "COLUMNS": "200"}
    for k in ("BUILDFLOW_ENV", "BUILDFLOW_HTTP_TOKEN"):
        env.pop(k, None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return {**env, **(extra or {})}


@dataclasses.dataclass
class EndpointRun:
    """A running ``buildflow run`` with an endpoint: its URL, state folder, output so far."""

    url: str
    state: Path
    proc: subprocess.Popen[str]
    lines: list[str]
    reader: threading.Thread

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def stop(self) -> int:
        """Ctrl-C (drain and exit), then wait; a kill if it hangs. Returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.reader.join(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode


def _plan(app: str, state: Path, env: dict[str, str] | None = None) -> None:
    planned = subprocess.run(
        [*BUILDFLOW, "plan", app, "--yes", "--state-dir", str(state)],
        cwd=REPO,
        env=_env(env),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert planned.returncode == 0, planned.stdout + planned.stderr


def _start(
    app: str,
    state: Path,
    env: dict[str, str] | None = None,
    command: tuple[str, ...] = ("run", "--no-progress"),
) -> EndpointRun:
    timeout_s = 180
    proc = subprocess.Popen(
        [*BUILDFLOW, command[0], app, *command[1:], "--state-dir", str(state)],
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
    run = EndpointRun("", state, proc, lines, reader)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = run.output
        m = re.search(r"^endpoint: (http://127\.0\.0\.1:\d+/\S+)", text, re.M)
        if m and re.search(r"ready: setup\(\) took", text):  # the model is loaded: requests flow
            run.url = m.group(1)
            return run
        if proc.poll() is not None:
            run.stop()
            raise AssertionError(f"buildflow run exited {proc.returncode}:\n{run.output}")
        time.sleep(0.05)
    run.stop()
    raise AssertionError(f"no endpoint ready within {timeout_s} s:\n{run.output}")


@pytest.fixture
def endpoint_runs(tmp_path: Path) -> Iterator[Callable[..., EndpointRun]]:
    """Plan and start an app (``buildflow run``); every run started is stopped at the end."""
    started: list[EndpointRun] = []

    def start(
        app: str = TOY_APP,
        env: dict[str, str] | None = None,
        command: tuple[str, ...] = ("run", "--no-progress"),
    ) -> EndpointRun:
        state = tmp_path / f"state{len(started)}"
        _plan(app, state, env)
        run = _start(app, state, env, command)
        started.append(run)
        return run

    yield start
    for run in started:
        run.stop()


def image_bytes(size: tuple[int, int], fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, "teal").save(buf, fmt)
    return buf.getvalue()


def _query(state: Path, table: str, sql: str) -> list[tuple[Any, ...]]:
    """Read the run's DuckDB warehouse (while it runs: the sink lets readers in between writes)."""
    provider = DuckDBTableProvider(DuckDBTable(table), Environment(name="local", state_dir=state))
    return provider.query(sql)[1]


async def _post_all(url: str, bodies: list[tuple[bytes, str]], **kwargs: Any) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=60, **kwargs) as client:
        return list(
            await asyncio.gather(
                *(client.post(url, content=b, headers={"content-type": t}) for b, t in bodies)
            )
        )


@pytest.mark.slow  # runs the CLI end to end (no model)
def test_concurrent_requests_get_their_own_rows_micro_batched_written_before_the_answer(
    endpoint_runs: Callable[..., EndpointRun],
) -> None:
    run = endpoint_runs()
    truncated = image_bytes((50, 50))[:300]  # a JPEG header, then nothing: Pillow cannot decode it
    sizes = [(20 + i, 40 - i) for i in range(24)]
    bodies = [(image_bytes(s), "image/jpeg") for s in sizes]
    bodies.insert(7, (truncated, "image/jpeg"))
    responses = asyncio.run(_post_all(run.url, bodies))

    bad = responses.pop(7)
    assert bad.status_code == 422, bad.text
    failure = bad.json()
    assert failure["stage"] == "process" and failure["error_type"] == "OSError", failure
    assert failure["dead_letter"]["event_id"] == failure["event_id"] and failure["detail"]

    for (w, h), r in zip(sizes, responses):
        assert r.status_code == 200, r.text
        (row,) = r.json()["rows"]
        assert (row["width"], row["height"]) == (w, h)  # its own image's row, not a neighbour's
        assert row["event_id"] == r.json()["event_id"]
    batch_sizes = [r.json()["rows"][0]["batch_size"] for r in responses]
    assert max(batch_sizes) > 1, batch_sizes  # requests waiting behind a batch went together
    # Every answer came after its row was written: the sink has them all now, once each.
    ids = [r.json()["event_id"] for r in responses]
    written = _query(run.state, "http_toy.shapes", "SELECT event_id, width, height FROM http_toy.shapes")
    assert sorted(written) == sorted((i, w, h) for i, (w, h) in zip(ids, sizes))
    dead = _query(
        run.state,
        "http_toy.buildflow_dead_letters",
        "SELECT event_id, stage, error_type FROM http_toy.buildflow_dead_letters",
    )
    assert dead == [(failure["event_id"], "process", "OSError")]
    assert run.stop() == 0, run.output


@pytest.mark.slow  # runs the CLI end to end (no model)
def test_multipart_raw_body_and_the_guards(endpoint_runs: Callable[..., EndpointRun]) -> None:
    run = endpoint_runs(env={"HTTP_TOY_MAX_BYTES": "5000"})
    small = image_bytes((30, 10), "PNG")
    # multipart/form-data, one file part: its name is the event's
    r = httpx.post(run.url, files={"image": ("../../etc/cat.png", small, "image/png")}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["rows"][0]["image_name"] == "cat.png"
    # a raw body sent as application/octet-stream is sniffed
    r = httpx.post(run.url, content=small, headers={"content-type": "application/octet-stream"}, timeout=30)
    assert r.status_code == 200 and r.json()["rows"][0]["label"] == "landscape", r.text
    # 415: a non-image content type, or bytes that are no image
    r = httpx.post(run.url, content=b"hello", headers={"content-type": "text/plain"}, timeout=30)
    assert r.status_code == 415 and "not an image" in r.json()["detail"], r.text
    r = httpx.post(run.url, content=b"GIF-but-not" * 10, headers={"content-type": "image/gif"}, timeout=30)
    assert r.status_code == 415, r.text
    # 413: over max_bytes, with a length or chunked (no length)
    big = image_bytes((400, 400), "BMP")
    assert len(big) > 5000
    r = httpx.post(run.url, content=big, headers={"content-type": "image/bmp"}, timeout=30)
    assert r.status_code == 413, r.text
    r = httpx.post(
        run.url, content=iter([big[:4000], big[4000:]]), headers={"content-type": "image/bmp"}, timeout=30
    )
    assert r.status_code == 413, r.text
    # 400: two files in one request
    r = httpx.post(
        run.url, files=[("a", ("a.png", small, "image/png")), ("b", ("b.png", small, "image/png"))]
    )
    assert r.status_code == 400 and "exactly one image" in r.json()["detail"], r.text
    # loopback bind: another Host name is refused (DNS rebinding), as is another Origin
    r = httpx.post(run.url, content=small, headers={"content-type": "image/png", "host": "evil.example"})
    assert r.status_code == 403, r.text
    r = httpx.post(
        run.url, content=small, headers={"content-type": "image/png", "origin": "http://evil.example"}
    )
    assert r.status_code == 403, r.text
    r = httpx.post(run.url, content=small, headers={"content-type": "image/png", "idempotency-key": "a b"})
    assert r.status_code == 400 and "'a b'" in r.json()["detail"], r.text
    # an Idempotency-Key names the event: a retried request updates its row instead of adding one
    key = {"content-type": "image/png", "idempotency-key": "order-17"}
    first = httpx.post(run.url, content=small, headers=key, timeout=30)
    again = httpx.post(run.url, content=small, headers=key, timeout=30)
    assert first.json()["event_id"] == again.json()["event_id"] == "/classify#order-17"
    rows = _query(
        run.state,
        "http_toy.shapes",
        "SELECT count(*) FROM http_toy.shapes WHERE event_id = '/classify#order-17'",
    )
    assert rows == [(1,)]
    rejected = _query(
        run.state, "http_toy.buildflow_dead_letters", "SELECT count(*) FROM http_toy.buildflow_dead_letters"
    )
    assert rejected == [(0,)]  # refused requests are the client's to fix: no dead letters
    assert httpx.get(run.url.rsplit("/", 1)[0] + "/healthz").json() == {"status": "ok"}


@pytest.mark.slow  # runs the CLI end to end (no model)
def test_token(endpoint_runs: Callable[..., EndpointRun]) -> None:
    run = endpoint_runs(env={"BUILDFLOW_HTTP_TOKEN": TOKEN})
    body = image_bytes((8, 8))
    for headers in ({}, {"authorization": "Bearer wrong-token-wrong-token"}):
        r = httpx.post(run.url, content=body, headers={"content-type": "image/jpeg", **headers}, timeout=30)
        assert r.status_code == 401 and "access token" in r.json()["detail"], r.text
    for headers in ({"authorization": f"Bearer {TOKEN}"}, {"x-buildflow-token": TOKEN}):
        r = httpx.post(run.url, content=body, headers={"content-type": "image/jpeg", **headers}, timeout=30)
        assert r.status_code == 200 and r.json()["rows"][0]["label"] == "square", r.text


@pytest.mark.slow  # runs the CLI end to end (no model)
def test_off_loopback_needs_a_token_and_ray_is_refused(tmp_path: Path) -> None:
    _plan(TOY_APP, tmp_path)
    r = subprocess.run(
        [*BUILDFLOW, "run", TOY_APP, "--no-progress", "--state-dir", str(tmp_path)],
        cwd=REPO,
        env=_env({"HTTP_TOY_HOST": "0.0.0.0"}),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 1, r.stdout + r.stderr
    assert "'0.0.0.0', which is not a loopback address, without an access token" in r.stderr, r.stderr
    assert "BUILDFLOW_HTTP_TOKEN" in r.stderr
    r = subprocess.run(
        [*BUILDFLOW, "run", TOY_APP, "--runtime", "ray", "--no-progress", "--state-dir", str(tmp_path)],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 1, r.stdout + r.stderr
    assert "ray runtime does not support yet" in " ".join(r.stderr.split()), r.stderr


@pytest.mark.slow  # runs the CLI end to end (no model)
def test_buildflow_serve_puts_an_apps_processor_behind_an_endpoint(
    endpoint_runs: Callable[..., EndpointRun],
) -> None:
    """``buildflow serve`` on an app whose processor reads a bucket: the same processor and sink,
    an HTTPEndpoint instead of the bucket."""
    run = endpoint_runs("tests.ui.toy_app:app", command=("serve", "--port", "0", "--route", "/shapes"))
    assert run.url.endswith("/shapes")
    r = httpx.post(run.url, files={"file": ("wide.jpg", image_bytes((60, 20)), "image/jpeg")}, timeout=30)
    assert r.status_code == 200, r.text
    (row,) = r.json()["rows"]
    assert row["image_name"] == "wide.jpg" and row["classifications"][0]["label"] == "landscape"
    written = _query(run.state, "ui_toy.shapes", "SELECT event_id FROM ui_toy.shapes")
    assert written == [(r.json()["event_id"],)]
    assert not list((run.state / "buckets").rglob("*.jpg"))  # nothing went through the bucket
    assert run.stop() == 0, run.output
    assert "serving shapes of 'ui-toy'" in run.output


@pytest.mark.slow
def test_the_shipped_model_answers_with_its_classifications(
    endpoint_runs: Callable[..., EndpointRun],
) -> None:
    from models.labels import CAT_CLASS_INDICES
    from models.samples import sample_photos

    run = endpoint_runs("tests/integration/http_model_app.py:app")
    photos = sample_photos()
    names = ["chelsea.jpg", "coffee.jpg"] * 4
    truncated = photos["coffee.jpg"][:2000]
    responses = asyncio.run(
        _post_all(run.url, [(photos[n], "image/jpeg") for n in names] + [(truncated, "image/jpeg")])
    )
    bad = responses.pop()
    assert bad.status_code == 422 and bad.json()["stage"] == "process", bad.text
    for name, r in zip(names, responses):
        assert r.status_code == 200, r.text
        (row,) = r.json()["rows"]
        top = row["classifications"][0]
        if name == "chelsea.jpg":
            assert top["class_index"] in CAT_CLASS_INDICES, row
        else:
            assert top["label"] == "espresso", row
        assert row["model"] == "efficientnet_lite0" and row["event_id"] == r.json()["event_id"]
    ids = sorted(r.json()["event_id"] for r in responses)
    written = _query(
        run.state, "http_model.predictions", "SELECT event_id FROM http_model.predictions ORDER BY event_id"
    )
    assert [w[0] for w in written] == ids
    dead = _query(
        run.state,
        "http_model.buildflow_dead_letters",
        "SELECT event_id FROM http_model.buildflow_dead_letters",
    )
    assert dead == [(bad.json()["event_id"],)]
    assert run.stop() == 0, run.output


@dataclasses.dataclass
class _Size:
    event_id: str
    width: int


class _GatedSink(SinkRuntime):
    """Writes only once the test opens the gate (the other side of the code under test)."""

    def __init__(self, entered: threading.Event, gate: threading.Event) -> None:
        self.entered, self.gate = entered, gate

    async def write(self, records: Sequence[OutputRecord]) -> None:
        self.entered.set()
        await asyncio.to_thread(self.gate.wait, 30)


class _GatedSinkProvider(InMemorySinkProvider):
    def __init__(self, entered: threading.Event, gate: threading.Event, env: Environment) -> None:
        super().__init__(InMemorySink("gated"), env)
        self.entered, self.gate = entered, gate

    def open(self, schema: TableSchema) -> SinkRuntime:
        return _GatedSink(self.entered, self.gate)


class _Sizes(buildflow.Processor):
    def source(self) -> HTTPEndpoint:
        return HTTPEndpoint(route="/size", port=0)

    def sink(self) -> InMemorySink:
        return InMemorySink("sizes")

    def process(self, event: FileEvent) -> _Size:
        with Image.open(io.BytesIO(event.blob)) as im:
            return _Size(event.event_id, im.size[0])


@dataclasses.dataclass
class _GatedRun:
    """An in-process run of :class:`_Sizes` whose sink writes only once ``gate`` is set."""

    runtime: InProcessRuntime
    runner: threading.Thread
    url: str
    entered: threading.Event
    gate: threading.Event
    pool: concurrent.futures.ThreadPoolExecutor

    def post(self, width: int) -> concurrent.futures.Future[httpx.Response]:
        body = image_bytes((width, 10))
        headers = {"content-type": "image/jpeg"}
        return self.pool.submit(httpx.post, self.url, content=body, headers=headers, timeout=60)


@pytest.fixture
def gated_run(tmp_path: Path) -> Iterator[_GatedRun]:
    spec = inspect_processor(_Sizes())
    env = Environment(name="local", state_dir=tmp_path)
    entered, gate = threading.Event(), threading.Event()
    source = source_provider(spec.source, env)
    bound = BoundProcessor(
        spec, source, _GatedSinkProvider(entered, gate, env), sink_provider(InMemorySink("dl"), env)
    )
    url = source.listen()  # type: ignore[attr-defined]
    runtime = InProcessRuntime()
    runner = threading.Thread(target=runtime.run, args=([bound], RunOptions(handle_signals=False)))
    runner.start()
    pool = concurrent.futures.ThreadPoolExecutor(4)
    try:
        health = url.rsplit("/", 1)[0] + "/healthz"
        deadline = time.monotonic() + 30
        while True:  # bounded poll: the server starts when the run opens the source
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(health, timeout=5).status_code == 200:
                    break
            assert runner.is_alive() and time.monotonic() < deadline, "the endpoint did not start"
            time.sleep(0.05)
        yield _GatedRun(runtime, runner, url, entered, gate, pool)
    finally:
        gate.set()
        runtime.request_stop()
        runner.join(30)
        pool.shutdown()
    assert not runner.is_alive()


def test_a_request_is_answered_only_after_its_rows_are_written(gated_run: _GatedRun) -> None:
    """The sink's write is held open; the request must wait for it."""
    answer = gated_run.post(33)
    assert gated_run.entered.wait(30), "the sink was never written to"
    with pytest.raises(concurrent.futures.TimeoutError):
        answer.result(timeout=0.5)  # the row is not written yet: no answer
    gated_run.gate.set()
    r = answer.result(timeout=30)
    assert r.status_code == 200 and r.json()["rows"][0]["width"] == 33, r.text


def test_a_hard_stop_answers_what_it_did_not_write_with_503(gated_run: _GatedRun) -> None:
    answer = gated_run.post(21)
    assert gated_run.entered.wait(30), "the sink was never written to"
    gated_run.runtime.request_stop(hard=True)  # as a second Ctrl-C: the write never finishes
    r = answer.result(timeout=30)
    assert r.status_code == 503 and "stopped before this image was processed" in r.json()["detail"], r.text
    assert r.headers["retry-after"] == "5"
