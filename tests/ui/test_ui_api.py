"""The UI's HTTP API against a real ``buildflow run --ui`` (a subprocess, on 127.0.0.1):
uploads into the local bucket, rows and dead letters through the DuckDB sink, metrics from
the runtime, the event stream, and the limits (size, content type, names, token, origin).

The app is tests/ui/toy_app.py: a model-free processor, so rows arrive in milliseconds.
Every wait is a bounded poll.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.ui.conftest import (
    DEADLINE_S,
    TOY_APP,
    UiRun,
    buildflow,
    image_bytes,
    start_ui_run,
    upload,
    wait_for,
)

pytestmark = pytest.mark.slow  # runs the CLI end to end (no model)

TOKEN = "test-token-0123456789abcdef"


def truncated_jpeg() -> bytes:
    full = image_bytes("JPEG", (400, 300), "orange")
    return full[: len(full) // 2]


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UiRun]:
    run = start_ui_run(TOY_APP, tmp_path_factory.mktemp("ui") / "state")
    yield run
    assert run.stop() == 0, run.output


def test_config_lists_the_processor_and_limits(toy: UiRun) -> None:
    config = httpx.get(toy.url + "api/config").json()
    (proc,) = config["processors"]
    assert proc["name"] == "shapes" and proc["delivery"] == "upload" and proc["rows_queryable"]
    assert proc["dataset"] is None  # the app's processor names none; the page offers all registered
    toy_shapes = next(d for d in config["datasets"] if d["name"] == "toy-shapes")
    assert toy_shapes["splits"] == {"test": 6, "train": 9} and toy_shapes["max_per_request"] == 5
    assert config["max_upload_bytes"] == 20 * 1024 * 1024
    assert "image/jpeg" in config["accept"] and "image/png" in config["accept"]


def test_page_and_vendored_chart_library_are_served_locally(toy: UiRun) -> None:
    page = httpx.get(toy.url)
    assert page.status_code == 200 and 'id="file-input"' in page.text
    assert "https://" not in page.text.split("<body>")[0]  # no CDN in <head>
    chart = httpx.get(toy.url + "static/chart.umd.min.js")
    assert chart.status_code == 200 and "Chart.js v4" in chart.text[:200]


def test_upload_goes_into_the_bucket_and_comes_back_as_rows_with_thumbnails(toy: UiRun) -> None:
    r = upload(toy, ("wide.jpg", image_bytes("JPEG", (64, 32))), ("tall.png", image_bytes("PNG", (20, 50))))
    assert r.status_code == 201, r.text
    uploaded = {u["name"]: u for u in r.json()["uploaded"]}
    assert set(uploaded) == {"wide.jpg", "tall.png"}
    assert uploaded["tall.png"]["content_type"] == "image/png"
    assert (toy.bucket / "wide.jpg").is_file() and (toy.bucket / "tall.png").is_file()

    def rows() -> dict[str, Any]:
        got = httpx.get(toy.url + "api/rows", params={"limit": 50}).json()["rows"]
        cards = {c["name"]: c for c in got}
        return cards if {"wide.jpg", "tall.png"} <= set(cards) else {}

    cards = wait_for("rows of both uploads", rows)
    assert [c["label"] for c in cards["wide.jpg"]["labels"]] == ["landscape", "64x32"]
    assert cards["tall.png"]["labels"][0] == {"label": "portrait", "confidence": 0.9}
    for c in cards.values():
        assert c["event_id"].startswith("ui-toy-images/")
        assert c["latency_ms"] is not None and 0 <= c["latency_ms"] < 60_000
        assert c["fields"]["model"] == "shape-of-the-image"

    thumb = httpx.get(toy.url + "api/thumbnails/wide.jpg")
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    with Image.open(io.BytesIO(thumb.content)) as im:
        assert im.size == (64, 32)  # never enlarged
    # a file copied into the bucket by hand: its thumbnail is read through the provider
    (toy.bucket / "by-hand.png").write_bytes(image_bytes("PNG", (300, 300)))
    hand = httpx.get(toy.url + "api/thumbnails/by-hand.png")
    assert hand.status_code == 200
    with Image.open(io.BytesIO(hand.content)) as im:
        assert max(im.size) <= 256


def test_metrics_report_the_runtime_counters(toy: UiRun) -> None:
    assert upload(toy, ("metrics.jpg", image_bytes())).status_code == 201

    def counted() -> dict[str, Any] | None:
        m: dict[str, Any] = httpx.get(toy.url + "api/metrics").json()
        return m if m["running"] and m["totals"]["rows"] >= 1 else None

    m = wait_for("a row in the metrics", counted)
    assert set(m) == {"running", "elapsed_s", "uploads", "uploads_refused", "totals", "processors", "history"}
    assert set(m["totals"]) == {"events", "rows", "dead_letters", "model_loads", "replicas", "backlog"}
    (p,) = m["processors"]
    assert p["name"] == "shapes" and p["replicas"] == 1 and p["setup_calls"] == 1
    assert p["events"] >= p["rows"] >= 1 and m["uploads"] >= 1
    assert p["latency_ms"]["p50"] is not None and p["latency_ms"]["p50"] <= p["latency_ms"]["p95"]
    assert m["history"] and set(m["history"][-1]) == {"t", "events_per_s", "p50_ms", "p95_ms"}


def test_event_stream_delivers_a_new_row(toy: UiRun) -> None:
    name = f"sse-{time.time_ns()}.jpg"
    seen: list[str] = []
    with httpx.stream("GET", toy.url + "api/events", timeout=httpx.Timeout(DEADLINE_S)) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        event = None
        uploaded = False
        deadline = time.monotonic() + DEADLINE_S
        for line in stream.iter_lines():
            assert time.monotonic() < deadline, f"no rows event with {name} in {DEADLINE_S} s; saw {seen}"
            if line.startswith("event: "):
                event = line[7:]
                seen.append(event)
            elif line.startswith("data: ") and event == "rows":
                names = [c["name"] for c in json.loads(line[6:])["rows"]]
                if name in names:
                    break
                if not uploaded:  # the stream is up and has sent the current rows: upload now
                    assert upload(toy, (name, image_bytes("JPEG", (10, 10)))).status_code == 201
                    uploaded = True
    assert seen[0] == "metrics" and "rows" in seen


def test_truncated_jpeg_is_accepted_and_dead_lettered_with_its_reason(toy: UiRun) -> None:
    r = upload(toy, ("broken.jpg", truncated_jpeg()))
    assert r.status_code == 201, r.text

    def dead() -> dict[str, Any] | None:
        got = httpx.get(toy.url + "api/dead-letters").json()["dead_letters"]
        return next((d for d in got if d["object_name"] == "broken.jpg"), None)

    d = wait_for("the dead letter of broken.jpg", dead)
    assert d["processor"] == "shapes" and d["stage"] == "process" and d["attempts"] == 1
    assert "truncated" in d["reason"].lower() and d["error_type"] == "OSError"
    assert httpx.get(toy.url + "api/thumbnails/broken.jpg").status_code == 404


@pytest.mark.parametrize(
    "name, data",
    [
        ("notes.txt", b"these are not the pixels you are looking for\n"),
        ("page.jpg", b"<html><script>alert(1)</script></html>"),
        ("doc.png", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n"),
        ("empty.jpg", b""),
    ],
)
def test_non_images_are_refused_with_415_and_nothing_is_written(toy: UiRun, name: str, data: bytes) -> None:
    before = files_under(toy.state)
    r = upload(toy, ("good.jpg", image_bytes()), (name, data))
    assert r.status_code == 415, r.text
    body = r.json()
    assert body["uploaded"] == [] and [x["file"] for x in body["refused"]] == [name]
    assert "not an image" in body["detail"]
    assert not {p for p in files_under(toy.state) - before if "buckets" in p.parts}


def test_names_are_reduced_to_safe_base_names_inside_the_bucket(toy: UiRun) -> None:
    outside = toy.state.parent
    before = files_under(outside)
    names = [
        "../../escaped.jpg",
        "/etc/passwd",
        "..\\..\\windows.jpg",
        "sub/dir/nested.jpg",
        ".hidden.jpg",
        "..",
        "bidi\u202egpj.jpg",
        "résumé photo.jpeg",
        "x" * 400 + ".jpg",
    ]
    r = upload(toy, *[(n, image_bytes("JPEG", (8, 8))) for n in names])
    assert r.status_code == 201, r.text
    got = [u["name"] for u in r.json()["uploaded"]]
    assert got[:8] == [
        "escaped.jpg",
        "passwd.jpg",
        "windows.jpg",
        "nested.jpg",
        "hidden.jpg",
        "upload.jpg",
        "bidigpj.jpg",
        "résumé photo.jpeg",
    ]
    assert len(got[8].encode()) <= 200 and got[8].endswith(".jpg")
    root = toy.bucket.resolve()
    new = files_under(outside) - before
    assert {p.name for p in new if p.resolve().parent == root} == set(got)
    # nothing else appeared anywhere, but the run's own bookkeeping (DuckDB, acks)
    stray = {p for p in new if p.resolve().parent != root and not p.name.startswith("warehouse")}
    assert not {p for p in stray if "subscriptions" not in p.parts}, stray


def test_raw_control_characters_in_a_file_name_are_dropped(toy: UiRun) -> None:
    # Browsers and httpx escape them (%0A); a hand-made request may not.
    data = image_bytes("JPEG", (8, 8))
    body = (
        b'--b\r\nContent-Disposition: form-data; name="files"; filename="bell\x07tab\tnul\x00.jpg"\r\n'
        b"Content-Type: image/jpeg\r\n\r\n" + data + b"\r\n--b--\r\n"
    )
    r = httpx.post(
        toy.url + "api/uploads", content=body, headers={"Content-Type": "multipart/form-data; boundary=b"}
    )
    assert r.status_code == 201, r.text
    assert r.json()["uploaded"][0]["name"] == "belltabnul.jpg"


def test_thumbnails_never_read_outside_the_bucket(toy: UiRun) -> None:
    secret = toy.state.parent / "secret.png"
    secret.write_bytes(image_bytes("PNG"))
    (toy.bucket / "link.png").symlink_to(secret)
    for path in ("..%2F..%2Fsecret.png", "%2Fetc%2Fpasswd", "a%2F..%2F..%2Fsecret.png"):
        r = httpx.get(toy.url + "api/thumbnails/" + path)
        assert r.status_code == 400, (path, r.status_code)
    assert httpx.get(toy.url + "api/thumbnails/link.png").status_code == 404  # symlink: refused
    assert httpx.get(toy.url + "api/thumbnails/missing.jpg").status_code == 404


def test_unknown_processor_and_bad_limits(toy: UiRun) -> None:
    r = httpx.get(toy.url + "api/rows", params={"processor": "nope"})
    assert r.status_code == 404 and "'shapes'" in r.json()["detail"]
    assert httpx.get(toy.url + "api/rows", params={"limit": 0}).status_code == 422
    assert httpx.post(toy.url + "api/uploads", data={"x": "1"}).status_code == 400


def test_other_hosts_and_cross_origin_posts_are_refused(toy: UiRun) -> None:
    # DNS rebinding: a loopback-bound UI answers only to loopback host names
    assert httpx.get(toy.url + "api/metrics", headers={"Host": "evil.example"}).status_code == 403
    # another site's page cannot make the browser upload here
    evil = upload(toy, ("x.jpg", image_bytes()), headers={"Origin": "http://evil.example"})
    assert evil.status_code == 403
    same = upload(toy, ("x.jpg", image_bytes()), headers={"Origin": toy.url.rstrip("/")})
    assert same.status_code == 201


def test_size_limit_413(tmp_path: Path, ui_runs: Callable[..., UiRun]) -> None:
    run = ui_runs(TOY_APP, tmp_path / "state", "--ui-max-upload-mb", "0.01")  # 10,485 bytes
    before = files_under(run.state)
    big = image_bytes("PNG", (8, 8)) + b"\0" * 11_000
    r = upload(run, ("small.jpg", image_bytes("JPEG", (8, 8))), ("big.png", big))
    assert r.status_code == 413, r.text
    assert r.json()["refused"] == [
        {"file": "big.png", "status": 413, "reason": "larger than the limit of 10485 bytes"}
    ]
    assert not {p for p in files_under(run.state) - before if "buckets" in p.parts}
    # a body larger than all files together could be is refused before it is read
    huge = httpx.post(
        run.url + "api/uploads",
        content=b"x" * (10485 * 32 + 64 * 1024 + 1),
        headers={"Content-Type": "multipart/form-data; boundary=x"},
    )
    assert huge.status_code == 413
    assert upload(run, ("small.jpg", image_bytes("JPEG", (8, 8)))).status_code == 201


def test_token_is_required_when_set(tmp_path: Path, ui_runs: Callable[..., UiRun]) -> None:
    run = ui_runs(TOY_APP, tmp_path / "state", env={"BUILDFLOW_UI_TOKEN": TOKEN})
    assert "?token=<your token>" in run.output and TOKEN not in run.output
    for path in ("", "api/metrics", "api/rows", "api/events", "static/ui.js", "api/thumbnails/x.jpg"):
        r = httpx.get(run.url + path)
        assert r.status_code == 401, path
        assert "token" in r.json()["detail"]
    assert (
        httpx.get(
            run.url + "api/metrics", headers={"Authorization": "Bearer wrong-token-0123456789"}
        ).status_code
        == 401
    )
    assert upload(run, ("x.jpg", image_bytes())).status_code == 401
    assert httpx.get(run.url + "api/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert httpx.get(run.url + "api/metrics", headers={"X-Buildflow-Token": TOKEN}).status_code == 200
    page = httpx.get(run.url, params={"token": TOKEN})
    assert page.status_code == 200
    cookie = page.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    with httpx.Client(cookies=page.cookies) as browser_like:
        assert browser_like.get(run.url + "api/metrics").status_code == 200
        r = browser_like.post(
            run.url + "api/uploads", files=[("files", ("t.jpg", image_bytes(), "image/jpeg"))]
        )
        assert r.status_code == 201


def test_off_loopback_without_token_refuses_to_start(tmp_path: Path) -> None:
    proc = buildflow(
        "run", TOY_APP, "--ui", "--ui-host", "0.0.0.0", "--state-dir", str(tmp_path / "state"), timeout=60
    )
    assert proc.returncode == 1
    assert "not a loopback address" in proc.stderr and "--ui-token" in proc.stderr
    assert "UI: http" not in proc.stderr
    short = buildflow(
        "run",
        TOY_APP,
        "--ui",
        "--ui-host",
        "0.0.0.0",
        "--ui-token",
        "short",
        "--state-dir",
        str(tmp_path / "state"),
        timeout=60,
    )
    assert short.returncode == 1 and "at least 16" in short.stderr


def test_the_data_set_form_publishes_a_registered_data_set_range(
    tmp_path: Path, ui_runs: Callable[..., UiRun]
) -> None:
    run = ui_runs("tests.ui.toy_app:labelled_app", tmp_path / "state")
    config = httpx.get(run.url + "api/config").json()
    (proc,) = config["processors"]
    assert proc["name"] == "labelled" and proc["dataset"] == "toy-shapes"
    assert "toy-shapes" in [d["name"] for d in config["datasets"]]
    page = httpx.get(run.url).text
    assert 'id="test-set-name"' in page
    url = run.url + "api/datasets/toy-shapes"
    for bad, status, says in (
        ({"start": 5, "end": 2}, 422, "give 0 <= start < end <= 6"),
        ({"start": 0, "end": 7}, 422, "give 0 <= start < end <= 6"),
        ({"split": "train", "start": 0, "end": 9}, 422, "at most 5 images"),
        ({"split": "val", "start": 0, "end": 1}, 422, "no split 'val'"),
        ({"start": "x", "end": 1}, 422, "send JSON"),
    ):
        r = httpx.post(url, json=bad)
        assert r.status_code == status and says in r.json()["detail"], (bad, r.text)
    unknown = httpx.post(run.url + "api/datasets/nope", json={"start": 0, "end": 1})
    assert unknown.status_code == 404 and "toy-shapes" in unknown.json()["detail"]

    r = httpx.post(url, json={"start": 1, "end": 4}, timeout=30)  # split: the first, test
    assert r.status_code == 201, r.text
    assert r.json()["sent"] == 3 and r.json()["split"] == "test"

    def rows() -> list[dict[str, Any]]:
        got: list[dict[str, Any]] = httpx.get(run.url + "api/rows").json()["rows"]
        return got if len(got) == 3 else []

    got = sorted(wait_for("3 toy-shapes rows", rows), key=lambda c: c["name"])
    assert [c["name"] for c in got] == [f"toy-shapes/test/{i:05d}.png" for i in (1, 2, 3)]
    assert [c["labels"][1]["label"] for c in got] == [f"{10 + i}x10" for i in (1, 2, 3)]
    thumb = httpx.get(run.url + "api/thumbnails/toy-shapes/test/00001.png")
    assert thumb.status_code == 200
