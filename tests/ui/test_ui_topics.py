"""Uploads from the page into topic sources go through the project's producer
(``buildflow.producer``): a Kafka topic on the local stack's broker (tansu), and a Pub/Sub
topic on its Pub/Sub fake. The rows come back through the UI's API like a bucket's."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.ui.conftest import UiRun, image_bytes, upload, wait_for

pytestmark = pytest.mark.slow

APP = """
import os
from buildflow import Node
from buildflow.io import DuckDBTable, KafkaTopic, PubSubSubscription
from tests.ui.toy_app import shapes

if os.environ["UI_SOURCE"] == "kafka":
    source = KafkaTopic(
        os.environ["KAFKA_BOOTSTRAP_SERVERS"],
        os.environ["UI_TOPIC"],
        consumer_config={"session.timeout.ms": "6000", "heartbeat.interval.ms": "1000"},
    )
else:
    source = PubSubSubscription(
        project_id="buildflow-local", subscription=os.environ["UI_TOPIC"], topic=os.environ["UI_TOPIC"]
    )
app = Node(name="ui-topics")
app.processor(source=source, sink=DuckDBTable(table="ui_topics.shapes"))(shapes)
"""


@pytest.mark.parametrize("kind", ["kafka", "pubsub"])
def test_page_uploads_are_produced_to_the_topic(
    kind: str, tmp_path: Path, local_stack: Any, ui_runs: Callable[..., UiRun]
) -> None:
    app = tmp_path / "topic_app.py"
    app.write_text(APP)
    env = {
        **local_stack.env,
        "UI_SOURCE": kind,
        "UI_TOPIC": f"ui-{kind}-{uuid.uuid4().hex[:8]}",
        "BUILDFLOW_ENV": "local" if kind == "kafka" else "emulator",
    }
    run = ui_runs(f"{app}:app", tmp_path / "state", env=env)
    (proc,) = httpx.get(run.url + "api/config").json()["processors"]
    assert proc["delivery"] == "producer"
    r = upload(run, ("wide.jpg", image_bytes("JPEG", (40, 20))), ("tall.png", image_bytes("PNG", (20, 40))))
    assert r.status_code == 201, r.text
    assert all(kind in u["where"].lower() or "topic" in u["where"].lower() for u in r.json()["uploaded"])

    def rows() -> dict[str, Any]:
        cards = {c["name"]: c for c in httpx.get(run.url + "api/rows").json()["rows"]}
        return cards if {"wide.jpg", "tall.png"} <= set(cards) else {}

    cards = wait_for(f"rows from the {kind} topic", rows, deadline_s=60)
    assert cards["wide.jpg"]["labels"][0]["label"] == "landscape"
    assert cards["tall.png"]["labels"][0]["label"] == "portrait"
    # a topic cannot be read back: the thumbnail is the one made at upload
    assert httpx.get(run.url + "api/thumbnails/wide.jpg").status_code == 200
