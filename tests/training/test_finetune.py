"""Fine-tuning a registry model (EfficientNet-Lite0, its real ImageNet weights) on a small
real folder-per-class data set (texture photos cut in tiles), locally and from a gs://
folder on the GCS fake with checkpoints in the bucket: the loss falls and the checkpoint
serves."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from infra.stack import Stack
from models import decode_image, load_model
from models.training.checkpoints import list_checkpoints
from models.training.config import parse_config
from models.training.evaluate import evaluate
from models.training.samples import TEXTURES, write_texture_folder
from models.training.train import train
from tests.training.helpers import example


def _finetune_config(data_path: str, output_dir: str, **train_overrides: Any) -> Any:
    data = example("finetune_folder.yaml")
    data["data"]["path"] = data_path
    data["image"]["size"] = 96  # smaller than the example's 128: the test's forward passes are cheap
    data["train"] |= {"epochs": 3, **train_overrides}
    data["output"] = {"dir": output_dir}
    return parse_config(data)


def test_finetuning_on_a_real_folder_per_class_set_lowers_the_loss_and_serves(tmp_path: Path) -> None:
    folder = tmp_path / "textures"
    paths = write_texture_folder(folder, tile=128)
    assert len(paths) == 48 and sorted(p.name for p in folder.iterdir()) == list(TEXTURES)
    config = _finetune_config(str(folder), str(tmp_path / "run"))
    result = train(config)
    losses = [h["train_loss"] for h in result.history]
    assert losses[-1] < losses[0], losses
    assert result.report is not None and result.report["split"] == "val"
    assert result.report["images"] == 12  # 4 of the 16 tiles of each class
    assert result.report["accuracy"] >= 0.75, result.report  # chance is 1/3

    assert result.model is not None
    model = load_model("checkpoint:" + result.model)
    assert model.labels == TEXTURES and model.preprocessing.crop_size == 96
    assert model.preprocessing.mean == (0.5, 0.5, 0.5)  # EfficientNet-Lite0's own normalisation
    # serving a validation tile's JPEG gives the offline evaluation's answer
    report, rows = evaluate(result.model, split="val")
    assert report["correct"] == result.report["correct"]
    for row in rows:
        image = decode_image((folder / row["name"]).read_bytes(), target_short_side=96)
        assert model.classify([image], top_k=1)[0][0].label == row["predicted"]


def test_training_reads_a_gcs_folder_and_checkpoints_into_the_bucket(
    stack_env: Stack, tmp_path: Path
) -> None:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    client = storage.Client(project="buildflow-local", credentials=AnonymousCredentials())
    bucket = client.create_bucket(f"training-{uuid.uuid4().hex[:8]}")
    try:
        for path in write_texture_folder(tmp_path / "textures", tile=128):
            bucket.blob(f"data/textures/{path.parent.name}/{path.name}").upload_from_filename(str(path))
        output = f"gs://{bucket.name}/runs/textures"
        config = _finetune_config(
            f"gs://{bucket.name}/data/textures", output, epochs=2, checkpoint_every_epochs=1
        )
        config = config.model_copy(
            update={"output": config.output.model_copy(update={"tensorboard_dir": str(tmp_path / "tb")})}
        )
        result = train(config, stop_after_epoch=1)
        assert [e for e, _ in list_checkpoints(output)] == [1]
        result = train(config, resume=True)  # resumes from the bucket
        assert result.resumed_from == f"{output}/checkpoints/epoch-0001.pt"
        names = {b.name for b in bucket.list_blobs(prefix="runs/textures/")}
        assert {
            "runs/textures/checkpoints/epoch-0001.pt",
            "runs/textures/checkpoints/epoch-0002.pt",
            "runs/textures/model.pt",
            "runs/textures/report/confusion_matrix.png",
            "runs/textures/report/report.json",
        } <= names
        assert any(n.startswith("runs/textures/tensorboard/events.out.tfevents") for n in names)
        model = load_model(f"checkpoint:{output}/model.pt")
        assert model.labels == TEXTURES
    finally:
        bucket.delete(force=True)
