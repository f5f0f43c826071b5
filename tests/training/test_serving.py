"""Serving a checkpoint: the registry loads it by URI (local path or gs:// on the GCS fake)
with its class names and preprocessing; a processor serves it with one argument and writes
the message's true label beside the prediction."""

from __future__ import annotations

import dataclasses
import datetime
import uuid
from pathlib import Path

import pytest
import torch
from PIL import Image

from buildflow.io import KafkaMessageEvent, KafkaTopic
from buildflow.testing import BytesReader, run_processor
from infra.stack import Stack
from models import ImageClassifier, ModelError, decode_image, load_model
from models.datasets.fashion_mnist import fashion_mnist_png
from models.event_labels import true_label
from models.registry import load_checkpoint
from models.training.evaluate import evaluate
from models.training.train import TrainResult
from processors import FashionMNISTProcessor
from tests.training.helpers import REPO, needs_fashion_mnist


def _classify_pngs(model: ImageClassifier, start: int, end: int) -> list[str]:
    """The serving path: PNG bytes -> decode_image -> preprocessing -> model."""
    items = list(fashion_mnist_png("test", start, end))
    side = model.preprocessing.resize_short_side
    images = [decode_image(data, target_short_side=side) for _, data, _ in items]
    return [preds[0].label for preds in model.classify(images, top_k=1)]


def test_the_registry_loads_a_local_checkpoint_with_its_labels_and_preprocessing(
    tiny_run: TrainResult,
) -> None:
    assert tiny_run.model is not None
    model = load_model("checkpoint:" + tiny_run.model)
    assert isinstance(model, ImageClassifier)
    assert model.name == "checkpoint:" + tiny_run.model and not model.module.training
    assert model.labels[:2] == ("T-shirt/top", "Trouser") and len(model.labels) == 10
    pre = model.preprocessing
    assert (pre.grayscale, pre.channels, pre.crop_size, pre.mean, pre.std) == (
        True,
        1,
        28,
        (0.286,),
        (0.353,),
    )
    # served predictions (PNG -> decode -> luma) equal the offline evaluation on stored pixels
    report, rows = evaluate(tiny_run.model, start=0, end=200)
    assert _classify_pngs(model, 0, 200) == [r["predicted"] for r in rows]
    assert report["images"] == 200 and report["correct"] == sum(r["true"] == r["predicted"] for r in rows)
    # a full training checkpoint serves too, and gives the same answers
    assert tiny_run.checkpoint is not None
    assert _classify_pngs(load_checkpoint(tiny_run.checkpoint), 0, 50) == [r["predicted"] for r in rows[:50]]


def test_grayscale_models_take_colour_photos_as_luma(tiny_run: TrainResult) -> None:
    assert tiny_run.model is not None
    model = load_model("checkpoint:" + tiny_run.model)
    rgb = Image.new("RGB", (56, 40), (200, 10, 30))
    tensor = model.preprocess(rgb)
    assert tensor.shape == (1, 28, 28)
    luma = (200 * 19595 + 10 * 38470 + 30 * 7471 + 0x8000) >> 16  # Pillow's convert("L")
    assert torch.allclose(tensor, torch.full((1, 28, 28), (luma - 0.286 * 255) / (0.353 * 255)))
    with pytest.raises(ValueError, match=r"batch must be a \(N, 1, H, W\) tensor"):
        model.predict_proba(torch.zeros(1, 3, 28, 28))


def test_loading_errors_say_what_is_wrong(tmp_path: Path, tiny_run: TrainResult) -> None:
    with pytest.raises(ModelError, match="checkpoint '/nonexistent/model.pt' does not exist"):
        load_model("checkpoint:/nonexistent/model.pt")
    plain = tmp_path / "state_dict.pt"
    torch.save({"weight": torch.zeros(2)}, plain)
    with pytest.raises(ModelError, match="is not a training checkpoint of format"):
        load_model(f"checkpoint:{plain}")
    assert tiny_run.model is not None
    with pytest.raises(ModelError, match="brings its own weights, labels and classes"):
        load_model("checkpoint:" + tiny_run.model, weights_path=plain)


def test_the_registry_loads_a_checkpoint_from_the_gcs_fake(stack_env: Stack, tiny_run: TrainResult) -> None:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    assert tiny_run.model is not None
    client = storage.Client(project="buildflow-local", credentials=AnonymousCredentials())
    bucket = client.create_bucket(f"checkpoints-{uuid.uuid4().hex[:8]}")
    try:
        bucket.blob("runs/fashion/model.pt").upload_from_filename(tiny_run.model)
        uri = f"gs://{bucket.name}/runs/fashion/model.pt"
        remote = load_model(f"checkpoint:{uri}")
        local = load_model("checkpoint:" + tiny_run.model)
        assert remote.name == f"checkpoint:{uri}" and remote.labels == local.labels
        assert remote.preprocessing == local.preprocessing
        for (_, a), (_, b) in zip(remote.module.state_dict().items(), local.module.state_dict().items()):
            assert torch.equal(a, b)
        assert _classify_pngs(remote, 0, 20) == _classify_pngs(local, 0, 20)
        with pytest.raises(ModelError, match="does not exist"):
            load_model(f"checkpoint:gs://{bucket.name}/runs/missing.pt")
    finally:
        bucket.delete(force=True)


def _kafka_event(offset: int, data: bytes, label: str | None) -> KafkaMessageEvent:
    return KafkaMessageEvent(
        topic="fashion",
        partition=0,
        offset=offset,
        key=f"img{offset}",
        name=f"img{offset}",
        label=label,
        event_id=f"fashion/0/{offset}",
        event_time=datetime.datetime.now(datetime.UTC),
        metadata={"label": label} if label else {},
        reader=BytesReader(data),
    )


def test_the_processor_serves_the_checkpoint_with_true_labels(tiny_run: TrainResult) -> None:
    assert tiny_run.model is not None
    items = list(fashion_mnist_png("test", 0, 20))
    events = [_kafka_event(i, data, label) for i, (_, data, label) in enumerate(items)]
    events[3] = dataclasses.replace(events[3], label=None, metadata={})  # no true label
    events.append(_kafka_event(20, b"not an image", "Bag"))
    processor = FashionMNISTProcessor(
        checkpoint=tiny_run.model,
        table_id="fashion.predictions",
        source=KafkaTopic("127.0.0.1:1", "fashion"),  # replaced by the in-memory source
    )
    result = run_processor(processor, events)
    assert len(result.rows) == 20 and len(result.dead_letters) == 1
    rows = {r["event_id"]: r for r in result.rows}
    expected = _classify_pngs(load_model("checkpoint:" + tiny_run.model), 0, 20)
    for i, (_, _, label) in enumerate(items):
        row = rows[f"fashion/0/{i}"]
        assert row["predicted_label"] == expected[i]
        assert row["classifications"][0]["label"] == expected[i] and len(row["classifications"]) == 3
        if i == 3:
            assert row["true_label"] is None and row["correct"] is None
        else:
            assert row["true_label"] == label and row["correct"] == (label == expected[i])
    assert result.dead_letters[0]["event_id"] == "fashion/0/20"


def test_true_labels_come_from_kafka_pubsub_and_gcs_metadata() -> None:
    from buildflow.events import GCSFileEvent, PubSubMessageEvent
    from buildflow.testing import gcs_file_event

    now = datetime.datetime.now(datetime.UTC)
    assert true_label(_kafka_event(0, b"x", "Coat")) == "Coat"
    pubsub = PubSubMessageEvent(
        message_id="1", data=b"x", name="a.png", event_id="t/1", event_time=now, metadata={"label": "Bag"}
    )
    assert true_label(pubsub) == "Bag"
    gcs: GCSFileEvent = dataclasses.replace(gcs_file_event("a.png", b"x"), object_metadata={"label": "Dress"})
    assert true_label(gcs) == "Dress"
    assert true_label(gcs_file_event("b.png", b"x")) is None


@needs_fashion_mnist
def test_the_committed_fashion_mnist_checkpoint_is_over_90_percent_on_the_test_set() -> None:
    """models/training/artifacts/fashion_mnist_cnn.pt: the README's model (configs/
    fashion_mnist_cnn.yaml, 8 epochs); 0.9264 on the 10k test images when it was trained."""
    artifact = REPO / "models" / "training" / "artifacts" / "fashion_mnist_cnn.pt"
    report, _ = evaluate(str(artifact), split="test")
    assert report["images"] == 10_000 and report["epochs"] == 8
    assert report["accuracy"] >= 0.90, report["accuracy"]
    assert load_model(f"checkpoint:{artifact}").labels[-1] == "Ankle boot"
