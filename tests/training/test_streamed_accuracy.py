"""The Fashion-MNIST streaming flow end to end, with the real CLI and the local stack's Kafka
broker: ``buildflow produce --dataset fashion-mnist`` publishes 300 test images with their true
class, the checkpoint processor classifies them, and the accuracy queried from the table
equals the offline evaluation of the same checkpoint on the same images, exactly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from infra.stack import Stack
from models.training.evaluate import evaluate
from models.training.train import TrainResult

pytestmark = pytest.mark.slow

CLI = [sys.executable, "-m", "buildflow.cli"]
IMAGES = 300

APP = """
import os
from buildflow import Node
from buildflow.io import KafkaTopic
from processors import FashionMNISTProcessor

app = Node()
app.add(FashionMNISTProcessor(
    checkpoint=os.environ["CHECKPOINT"],
    table_id="buildflow-local.fashion_mnist.predictions",
    source=KafkaTopic(
        os.environ["KAFKA_BOOTSTRAP_SERVERS"],
        os.environ["TOPIC"],
        payload_format=os.environ["FORMAT"],
        consumer_config={"session.timeout.ms": "6000", "heartbeat.interval.ms": "1000"},
    ),
))
"""


def _cli(cwd: Path, env: dict[str, str], *args: str) -> str:
    state = ("--state-dir", str(cwd / "state")) if args[0] in ("plan", "run", "query") else ()
    proc = subprocess.run(
        [*CLI, *args, *state], cwd=cwd, env=env, capture_output=True, text=True, timeout=300, input=""
    )
    assert proc.returncode == 0, (
        f"buildflow {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    )
    return proc.stdout


def _query(cwd: Path, env: dict[str, str], sql: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads(
        _cli(cwd, env, "query", "fashion_app:app", sql, "--format", "json")
    )
    return rows


# true label in a record header / in the JSON envelope; ``pixels``: the training API's
# payload (uint8 arrays as nested lists, true label in a header) read as ``json``
@pytest.mark.parametrize(("fmt", "images"), [("raw", IMAGES), ("json", IMAGES), ("pixels", 100)])
def test_streamed_accuracy_equals_offline_evaluation(
    local_stack: Stack, tiny_run: TrainResult, tmp_path: Path, fmt: str, images: int
) -> None:
    assert tiny_run.model is not None
    (tmp_path / "fashion_app.py").write_text(APP)
    topic = f"fashion-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        **local_stack.env,
        "CHECKPOINT": tiny_run.model,
        "TOPIC": topic,
        "FORMAT": "json" if fmt == "pixels" else fmt,
        "COLUMNS": "200",
    }
    env.pop("BUILDFLOW_ENV", None)
    _cli(tmp_path, env, "plan", "fashion_app:app", "--yes")
    sent = _cli(
        tmp_path,
        env,
        "produce",
        "--dataset",
        "fashion-mnist",
        "--start",
        "0",
        "--end",
        str(images),
        "--kafka",
        f"{env['KAFKA_BOOTSTRAP_SERVERS']}/{topic}",
        "--format",
        fmt,
    )
    assert f"sent {images} images" in sent
    _cli(tmp_path, env, "run", "fashion_app:app", "--until-idle")

    [streamed] = _query(
        tmp_path,
        env,
        "SELECT count(*) AS images, count(true_label) AS labelled, "
        "sum(CASE WHEN true_label = predicted_label THEN 1 ELSE 0 END) AS correct, "
        "avg(CAST(correct AS DOUBLE)) AS accuracy FROM fashion_mnist.predictions",
    )
    report, offline = evaluate(tiny_run.model, split="test", start=0, end=images)
    assert streamed["images"] == streamed["labelled"] == report["images"] == images
    assert streamed["correct"] == report["correct"]
    assert streamed["accuracy"] == report["accuracy"]
    # and image by image
    rows = _query(
        tmp_path, env, "SELECT image_name, true_label, predicted_label FROM fashion_mnist.predictions"
    )
    by_index = {int(r["image_name"].rsplit("/", 1)[1].removesuffix(".png")): r for r in rows}
    assert sorted(by_index) == list(range(images))
    for i, expected in enumerate(offline):
        assert (by_index[i]["true_label"], by_index[i]["predicted_label"]) == (
            expected["true"],
            expected["predicted"],
        )
