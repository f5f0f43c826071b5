"""Checkpoints every epoch, and resume: a run stopped after epoch 1 and resumed from its
checkpoint ends where an uninterrupted run with the same seed ends.

Tolerance: model weights within 1e-6 (absolute) and metrics within 1e-9. On one machine
with a fixed thread count the two runs are bit-identical (seen: max difference 0.0); the
tolerance only leaves room for CPU kernels that reduce in a different order.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from models.errors import ModelError
from models.training.checkpoints import list_checkpoints, read_checkpoint
from models.training.data import DataSplits
from models.training.train import train
from tests.training.helpers import REPO, needs_fashion_mnist, tiny_fashion_config

pytestmark = needs_fashion_mnist

WEIGHT_TOLERANCE = 1e-6
METRIC_TOLERANCE = 1e-9


def _max_weight_difference(a: str, b: str) -> float:
    sa, sb = read_checkpoint(a).state_dict, read_checkpoint(b).state_dict
    assert sa.keys() == sb.keys()
    return max(float((sa[k].double() - sb[k].double()).abs().max()) for k in sa)


def _same_history(a: tuple[dict[str, float], ...], b: tuple[dict[str, float], ...]) -> None:
    assert len(a) == len(b)
    for ea, eb in zip(a, b):
        for key in ea.keys() - {"epoch_s"}:
            assert math.isclose(ea[key], eb[key], rel_tol=0, abs_tol=METRIC_TOLERANCE), (key, ea, eb)


def test_resumed_run_matches_uninterrupted_run(tmp_path: Path, tiny_data: DataSplits) -> None:
    whole = train(tiny_fashion_config(tmp_path / "whole"), data=tiny_data)
    assert whole.epochs_completed == 2 and whole.model is not None and whole.report is not None

    config = tiny_fashion_config(tmp_path / "killed")
    first = train(config, data=tiny_data, stop_after_epoch=1)
    assert first.stopped_early and first.model is None
    assert [e for e, _ in list_checkpoints(config.output.dir)] == [1]
    resumed = train(config, data=tiny_data, resume=True)
    assert resumed.resumed_from is not None and resumed.resumed_from.endswith("epoch-0001.pt")
    assert resumed.model is not None and resumed.report is not None

    assert _max_weight_difference(whole.model, resumed.model) <= WEIGHT_TOLERANCE
    _same_history(whole.history, resumed.history)  # type: ignore[arg-type]
    assert resumed.report["correct"] == whole.report["correct"]
    assert math.isclose(resumed.report["f1_macro"], whole.report["f1_macro"], abs_tol=METRIC_TOLERANCE)
    # the model learned something in two short epochs (10 classes: chance is 0.1)
    assert whole.report["accuracy"] > 0.5


def test_checkpoints_hold_what_resuming_and_serving_need(tmp_path: Path, tiny_data: DataSplits) -> None:
    config = tiny_fashion_config(tmp_path / "run")
    result = train(config, data=tiny_data)
    full = read_checkpoint(list_checkpoints(config.output.dir)[-1][1])
    assert (full.epoch, full.config) == (2, config)
    assert full.global_step == 2 * (461 // 64 + 1)
    assert full.class_names[0] == "T-shirt/top" and len(full.class_names) == 10
    assert full.optimizer is not None and full.optimizer["state"]
    assert full.scheduler is not None and full.scheduler["last_epoch"] == full.global_step
    assert full.preprocessing.grayscale and full.preprocessing.crop_size == 28
    assert [h["epoch"] for h in full.history] == [1, 2] and "val_accuracy" in full.history[-1]
    assert result.model is not None
    slim = read_checkpoint(result.model)
    assert slim.optimizer is None and slim.epoch == 2
    report = Path(config.output.dir) / "report"
    assert (report / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| T-shirt/top |" in (report / "report.md").read_text()
    assert list((Path(config.output.dir) / "tensorboard").glob("events.out.tfevents.*"))


def test_an_existing_run_is_never_overwritten_and_resumes_only_with_its_own_config(
    tmp_path: Path, tiny_data: DataSplits
) -> None:
    config = tiny_fashion_config(tmp_path / "run")
    train(config, data=tiny_data, stop_after_epoch=1)
    with pytest.raises(ModelError, match="already has checkpoints .*; pass --resume"):
        train(config, data=tiny_data)
    changed = tiny_fashion_config(tmp_path / "run", batch_size=32)
    with pytest.raises(ModelError, match=r"the config differs in train\.batch_size"):
        train(changed, data=tiny_data, resume=True)


@pytest.mark.slow
def test_the_cli_resumes_after_a_real_kill(tmp_path: Path, tiny_data: DataSplits) -> None:
    """SIGKILL the training command once its epoch-1 checkpoint is written (it is then in
    epoch 2, or writing its final model), resume it, and compare with an uninterrupted
    in-process run. Wherever the kill lands, the resumed run must end the same."""
    reference = train(tiny_fashion_config(tmp_path / "reference"), data=tiny_data)
    config = tiny_fashion_config(tmp_path / "killed")
    path = tmp_path / "killed.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    cmd = [sys.executable, "-m", "models.training", "train", str(path)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
    )
    assert proc.stderr is not None
    try:
        for line in proc.stderr:  # blocks until the child logs; no sleeps
            if "checkpoints/epoch-0001.pt" in line:
                break
        else:
            raise AssertionError(f"training exited (code {proc.wait()}) before its first checkpoint")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        proc.stderr.close()
    done = subprocess.run([*cmd, "--resume"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "resumed from" in done.stderr
    assert reference.model is not None
    killed_model = str(Path(config.output.dir) / "model.pt")
    assert _max_weight_difference(reference.model, killed_model) <= WEIGHT_TOLERANCE
    assert read_checkpoint(killed_model).epoch == 2
