"""The training API's pixel payloads on Pub/Sub (the local stack's fake), end to end with the
real CLI: ``buildflow produce --format pixels --pubsub`` publishes Fashion-MNIST test images
as ``{"data", "timestamp", "image": 28x28 uint8 lists}``, the checkpoint processor reads them
through ``PubSubSubscription(payload_format="json")``, and the streamed accuracy equals the
offline evaluation; malformed arrays are dead-lettered with their reason."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from infra.stack import Stack
from models.training.evaluate import evaluate
from models.training.train import TrainResult
from tests.stack.clients import bq_rows

pytestmark = pytest.mark.slow

CLI = [sys.executable, "-m", "buildflow.cli"]
PROJECT = "buildflow-local"
IMAGES = 40

APP = """
import os
from buildflow import Node
from buildflow.io import PubSubSubscription
from processors import FashionMNISTProcessor

app = Node()
app.add(FashionMNISTProcessor(
    checkpoint=os.environ["CHECKPOINT"],
    table_id="buildflow-local.%(dataset)s.predictions",
    source=PubSubSubscription(
        project_id="buildflow-local",
        subscription=os.environ["TOPIC"] + "-sub",
        topic=os.environ["TOPIC"],
        payload_format="json",
        max_pixels=28 * 28,
        ack_deadline_secs=10,
    ),
))
"""


def _cli(cwd: Path, env: dict[str, str], *args: str) -> str:
    state = ("--state-dir", str(cwd / "state")) if args[0] in ("plan", "run", "destroy") else ()
    proc = subprocess.run(
        [*CLI, *args, *state], cwd=cwd, env=env, capture_output=True, text=True, timeout=300, input=""
    )
    assert proc.returncode == 0, (
        f"buildflow {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    )
    return proc.stdout


def test_pixel_payloads_on_pubsub_stream_at_offline_accuracy_and_bad_arrays_are_dead_lettered(
    stack_env: Stack, tiny_run: TrainResult, tmp_path: Path
) -> None:
    from google.cloud import pubsub_v1

    assert tiny_run.model is not None
    dataset = f"pixels_{uuid.uuid4().hex[:8]}"
    (tmp_path / "pixels_app.py").write_text(APP % {"dataset": dataset})
    topic = f"pixels-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        **stack_env.env,
        "CHECKPOINT": tiny_run.model,
        "TOPIC": topic,
        "BUILDFLOW_ENV": "emulator",
        "COLUMNS": "200",
    }
    _cli(tmp_path, env, "plan", "pixels_app:app", "--yes")
    sent = _cli(
        tmp_path, env, "produce", "--dataset", "fashion-mnist", "--start", "0", "--end", str(IMAGES),
        "--pubsub", f"projects/{PROJECT}/topics/{topic}", "--format", "pixels",
    )  # fmt: skip
    assert f"sent {IMAGES} images" in sent

    bad = {
        "rank": [1, 2, 3],
        "range": [[0] * 27 + [300]] * 28,
        "ragged": [[0] * 28] * 27 + [[0] * 27],
        "size": [[0] * 28] * 29,
    }
    publisher = pubsub_v1.PublisherClient()
    path = publisher.topic_path(PROJECT, topic)
    futures = [
        publisher.publish(
            path,
            json.dumps({"data": "Payload data", "timestamp": 1.5, "image": image}).encode(),
            name=f"bad-{kind}",
        )
        for kind, image in bad.items()
    ]
    for f in futures:
        f.result(timeout=30)

    _cli(tmp_path, env, "run", "pixels_app:app", "--until-idle")

    [streamed] = bq_rows(
        "SELECT count(*) AS images, count(true_label) AS labelled, "
        "countif(true_label = predicted_label) AS correct "
        f"FROM `{PROJECT}.{dataset}.predictions`",
    )
    report, offline = evaluate(tiny_run.model, split="test", start=0, end=IMAGES)
    assert streamed["images"] == streamed["labelled"] == report["images"] == IMAGES
    assert streamed["correct"] == report["correct"]
    rows = bq_rows(f"SELECT image_name, predicted_label FROM `{PROJECT}.{dataset}.predictions`")
    predicted = {
        int(r["image_name"].rsplit("/", 1)[1].removesuffix(".png")): r["predicted_label"] for r in rows
    }
    assert predicted == {i: e["predicted"] for i, e in enumerate(offline)}

    dead = {
        r["object_name"]: r
        for r in bq_rows(
            "SELECT object_name, reason, error_type, stage "
            f"FROM `{PROJECT}.{dataset}.buildflow_dead_letters`",
        )
    }
    assert sorted(dead) == sorted(f"bad-{k}" for k in bad)
    assert all(r["error_type"] == "PayloadError" and r["stage"] == "decode" for r in dead.values())
    assert "rank 1" in dead["bad-rank"]["reason"]
    assert "value 300" in dead["bad-range"]["reason"] and "0..255" in dead["bad-range"]["reason"]
    assert "ragged" in dead["bad-ragged"]["reason"] and "row 27" in dead["bad-ragged"]["reason"]
    assert "over max_pixels=784" in dead["bad-size"]["reason"]
