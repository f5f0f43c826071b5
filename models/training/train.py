"""The training loop: epochs, evaluation, TensorBoard, checkpoints, resume, final report.

Reproducibility: before epoch ``e`` the global torch RNG (dropout) is seeded with
``(seed, e)``, and the epoch's shuffle and flips come from their own generator seeded the
same way (:func:`models.training.data.epoch_generator`). Model, optimizer and scheduler
state are restored from the checkpoint, so a run resumed after epoch ``e`` computes the
same epochs ``e+1..`` as an uninterrupted run with the same seed, on the same machine and
thread count (``tests/training/test_resume.py`` checks the weights agree to 1e-6).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from models import storage
from models.errors import ModelError

from .checkpoints import (
    checkpoint_uri,
    latest_checkpoint,
    model_uri,
    preprocessing_of,
    read_checkpoint,
    save_checkpoint,
)
from .config import AUTO_SCHEDULER_KWARGS, TrainingConfig
from .data import DataSplits, augment, batch_indices, epoch_generator, load_data
from .layers import BuiltModel, build_model, set_train_mode
from .report import build_report, compute_metrics, predict, write_report

__all__ = ["TrainResult", "train", "build_optimizer", "build_scheduler", "steps_per_epoch"]

log = logging.getLogger("models.training")


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What a :func:`train` call did.

    Attributes:
        epochs_completed: Epochs done in total (including those before a resume).
        resumed_from: The checkpoint it resumed from, or None.
        history: One entry per epoch: ``epoch``, ``train_loss``, ``lr``, ``epoch_s`` and,
            after an evaluation, ``val_loss``, ``val_accuracy``, ``val_precision_macro``,
            ``val_recall_macro``, ``val_f1_macro``.
        checkpoint: The last checkpoint written (URI), or None.
        model: ``<output.dir>/model.pt`` once training is complete, else None.
        report: The final report (see :func:`models.training.report.build_report`), once
            complete, else None.
        train_seconds: Wall time of the epochs run by this call (excluding data loading
            and the final report), seconds.
        stopped_early: True when ``stop_after_epoch`` stopped it before the last epoch.
    """

    epochs_completed: int
    resumed_from: str | None
    history: tuple[Mapping[str, Any], ...]
    checkpoint: str | None
    model: str | None
    report: Mapping[str, Any] | None
    train_seconds: float
    stopped_early: bool = False


def steps_per_epoch(train_images: int, batch_size: int) -> int:
    """Optimizer steps in one epoch (see :func:`models.training.data.batch_indices`)."""
    full, rest = divmod(train_images, batch_size)
    return full + (1 if rest >= 2 else 0)


def build_optimizer(config: TrainingConfig, built: BuiltModel) -> torch.optim.Optimizer:
    """``torch.optim.<name>(trainable parameters, lr=lr, **kwargs)``."""
    opt = config.train.optimizer
    cls = getattr(torch.optim, opt.name)
    optimizer: torch.optim.Optimizer = cls(built.trainable_parameters(), lr=opt.lr, **opt.kwargs)
    return optimizer


def build_scheduler(
    config: TrainingConfig, optimizer: torch.optim.Optimizer, steps: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """The LR scheduler chain, or None without schedulers.

    ``steps``: optimizer steps per epoch. The schedule's length in its intervals is
    ``epochs`` (``scheduler_interval: epoch``) or ``epochs * steps`` (``step``); each
    scheduler of a sequential chain gets its ``duration`` (the last: what is left), used
    for ``OneCycleLR.total_steps`` and ``CosineAnnealingLR.T_max`` when not given.
    """
    train = config.train
    if not train.lr_schedulers:
        return None
    total = train.epochs * (steps if train.scheduler_interval == "step" else 1)
    scheds: list[torch.optim.lr_scheduler.LRScheduler] = []
    used = 0
    for i, spec in enumerate(train.lr_schedulers):
        if train.scheduler_chain == "sequential":
            length = spec.duration if i < len(train.lr_schedulers) - 1 and spec.duration else total - used
            used += spec.duration or 0
        else:
            length = total
        kwargs: dict[str, Any] = dict(spec.kwargs)
        for key in AUTO_SCHEDULER_KWARGS.get(spec.name, ()):
            if key not in kwargs:
                kwargs[key] = train.optimizer.lr if key == "max_lr" else max(1, length)
        try:
            scheds.append(getattr(torch.optim.lr_scheduler, spec.name)(optimizer, **kwargs))
        except Exception as e:
            raise ModelError(f"train.lr_schedulers[{i}] ({spec.name}) cannot be built: {e}") from e
    if len(scheds) == 1:
        return scheds[0]
    if train.scheduler_chain == "chained":
        return torch.optim.lr_scheduler.ChainedScheduler(scheds, optimizer=optimizer)
    milestones, at = [], 0
    for spec in train.lr_schedulers[:-1]:
        at += spec.duration or 0
        milestones.append(at)
    if milestones[-1] >= total:
        raise ModelError(
            f"the sequential LR chain's durations add up to {milestones[-1]} {train.scheduler_interval}s, "
            f"but training has only {total}: shorten them"
        )
    return torch.optim.lr_scheduler.SequentialLR(optimizer, scheds, milestones=milestones)


def _lr(optimizer: torch.optim.Optimizer) -> float:
    return float(optimizer.param_groups[0]["lr"])


def _same_config(a: TrainingConfig, b: TrainingConfig) -> list[str]:
    """Dotted keys whose values differ between two configs."""

    def flat(d: Any, prefix: str = "") -> dict[str, Any]:
        if isinstance(d, dict):
            out: dict[str, Any] = {}
            for k, v in d.items():
                out |= flat(v, f"{prefix}{k}.")
            return out
        return {prefix.rstrip("."): d}

    fa, fb = flat(a.model_dump(mode="json")), flat(b.model_dump(mode="json"))
    return sorted(k for k in fa.keys() | fb.keys() if fa.get(k) != fb.get(k))


class _TensorBoard:
    """A SummaryWriter in a local folder; for a ``gs://`` output, its files are copied to
    ``<output.dir>/tensorboard/`` at every checkpoint."""

    def __init__(self, config: TrainingConfig, purge_step: int | None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        out = config.output
        if out.tensorboard_dir is not None:
            self.local = out.tensorboard_dir
        elif storage.is_gcs(out.dir):
            self.local = str(Path("runs") / config.name / "tensorboard")
        else:
            self.local = storage.join(out.dir, "tensorboard")
        self.remote = storage.join(out.dir, "tensorboard") if storage.is_gcs(out.dir) else None
        self.writer = SummaryWriter(self.local, purge_step=purge_step)

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        for k, v in values.items():
            self.writer.add_scalar(k, v, step)

    def sync(self) -> None:
        self.writer.flush()
        if self.remote is not None:
            root = Path(self.local)
            for f in sorted(root.rglob("*")):
                if f.is_file():
                    storage.write_bytes(
                        storage.join(self.remote, f.relative_to(root).as_posix()), f.read_bytes()
                    )

    def close(self) -> None:
        self.sync()
        self.writer.close()


def train(
    config: TrainingConfig,
    *,
    resume: bool = False,
    stop_after_epoch: int | None = None,
    data: DataSplits | None = None,
    progress: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train ``config`` (or resume it), evaluating, logging and checkpointing as it says.

    Args:
        config: A validated config.
        resume: Continue from the newest checkpoint in ``output.dir`` (its config must equal
            ``config``); without one, start from scratch.
        stop_after_epoch: Stop after this epoch (its checkpoint written), as a kill would;
            for tests and for splitting a long run.
        data: The data splits, if already loaded (else read from ``config.data``).
        progress: Called with a one-line message after every epoch (default: log INFO).

    Returns:
        A :class:`TrainResult`.

    Raises:
        ModelError: ``output.dir`` already has checkpoints and ``resume`` is False; the
            checkpoint's config differs; the device is unavailable; the data or model
            cannot be built (ConfigError, a subclass, for the layer list).
    """
    say = progress or log.info
    if config.device == "cuda" and not torch.cuda.is_available():
        raise ModelError("device 'cuda' requested but torch.cuda.is_available() is False; set device: cpu")
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    torch.set_flush_denormal(True)
    out_dir = config.output.dir
    existing = latest_checkpoint(out_dir)
    if existing is not None and not resume:
        raise ModelError(
            f"{out_dir!r} already has checkpoints (newest {existing}); pass --resume to continue "
            "that run, or set output.dir to a new folder"
        )
    device = config.device
    torch.manual_seed(config.seed)
    built = build_model(config, pretrained=existing is None, device=device)
    splits = data if data is not None else load_data(config)
    preprocessing = preprocessing_of(config)
    steps = steps_per_epoch(len(splits.train), config.train.batch_size)
    optimizer = build_optimizer(config, built)
    scheduler = build_scheduler(config, optimizer, steps)
    start_epoch, global_step = 0, 0
    history: list[dict[str, Any]] = []
    if existing is not None:
        ckpt = read_checkpoint(existing, device=device)
        diff = _same_config(config, ckpt.config)
        if diff:
            raise ModelError(
                f"cannot resume from {existing}: the config differs in {', '.join(diff)}; resume "
                "with the config it was trained with, or use a new output.dir"
            )
        if ckpt.optimizer is None:
            raise ModelError(f"cannot resume from {existing}: it holds no optimizer state")
        built.module.load_state_dict(ckpt.state_dict, strict=True)
        optimizer.load_state_dict(dict(ckpt.optimizer))
        if scheduler is not None and ckpt.scheduler is not None:
            scheduler.load_state_dict(dict(ckpt.scheduler))
        start_epoch, global_step = ckpt.epoch, ckpt.global_step
        history = [dict(h) for h in ckpt.history]
        say(f"resumed from {existing} (epoch {start_epoch}, step {global_step})")
    tb = _TensorBoard(config, purge_step=global_step if existing is not None else None)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=config.train.label_smoothing)
    epochs = config.train.epochs
    last_checkpoint: str | None = existing
    t_train = 0.0
    stopped = False
    try:
        for epoch in range(start_epoch + 1, epochs + 1):
            t0 = time.perf_counter()
            torch.manual_seed(config.seed * 1_000_003 + epoch)
            gen = epoch_generator(config.seed, epoch)
            set_train_mode(built)
            loss_sum, seen = 0.0, 0
            for idx in batch_indices(len(splits.train), config.train.batch_size, gen):
                pixels = augment(splits.train.pixels[idx], config.augmentation, gen)
                x = preprocessing.normalise(pixels).to(device)
                y = splits.train.labels[idx].to(device)
                loss = loss_fn(built.module(x), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if config.train.grad_clip_norm is not None:
                    torch.nn.utils.clip_grad_norm_(built.trainable_parameters(), config.train.grad_clip_norm)
                optimizer.step()
                global_step += 1
                loss_value = float(loss.detach())
                if not math.isfinite(loss_value):
                    raise ModelError(
                        f"training diverged: loss is {loss_value} at epoch {epoch}; lower the lr"
                    )
                loss_sum += loss_value * len(idx)
                seen += len(idx)
                if scheduler is not None and config.train.scheduler_interval == "step":
                    scheduler.step()
                if global_step % 50 == 0:
                    tb.scalars({"train/loss_step": loss_value, "train/lr": _lr(optimizer)}, global_step)
            lr = _lr(optimizer)
            if scheduler is not None and config.train.scheduler_interval == "epoch":
                scheduler.step()
            entry: dict[str, Any] = {"epoch": epoch, "train_loss": loss_sum / max(1, seen), "lr": lr}
            t_train += time.perf_counter() - t0
            if epoch % config.train.eval_every_epochs == 0 or epoch == epochs:
                if len(splits.val):
                    p = predict(
                        built.module,
                        splits.val,
                        preprocessing,
                        batch_size=config.train.eval_batch_size,
                        device=device,
                    )
                    m = compute_metrics(p.true, p.predicted, len(splits.class_names))
                    entry |= {"val_loss": p.loss} | {f"val_{k}": v for k, v in m.items()}
            entry["epoch_s"] = time.perf_counter() - t0
            history.append(entry)
            tb.scalars({f"epoch/{k}": v for k, v in entry.items() if k != "epoch"}, epoch)
            say(
                f"epoch {epoch}/{epochs}: "
                + ", ".join(f"{k} {v:.4g}" for k, v in entry.items() if k != "epoch")
            )
            if epoch % config.train.checkpoint_every_epochs == 0 or epoch == epochs:
                last_checkpoint = checkpoint_uri(out_dir, epoch)
                size = save_checkpoint(
                    last_checkpoint,
                    config=config,
                    class_names=splits.class_names,
                    module=built.module,
                    epoch=epoch,
                    global_step=global_step,
                    optimizer=optimizer,
                    scheduler=scheduler,
                    history=history,
                )
                tb.sync()
                say(f"checkpoint {last_checkpoint} ({size / 1e6:.2f} MB)")
            if stop_after_epoch is not None and epoch >= stop_after_epoch and epoch < epochs:
                stopped = True
                break
    finally:
        tb.close()
    if stopped:
        return TrainResult(
            history[-1]["epoch"] if history else start_epoch,
            existing,
            tuple(history),
            last_checkpoint,
            None,
            None,
            t_train,
            True,
        )
    final_epoch = history[-1]["epoch"] if history else start_epoch
    final_model = model_uri(out_dir)
    size = save_checkpoint(
        final_model,
        config=config,
        class_names=splits.class_names,
        module=built.module,
        epoch=final_epoch,
        global_step=global_step,
        history=history,
    )
    say(f"model {final_model} ({size / 1e6:.2f} MB)")
    which, images = splits.report
    p = predict(built.module, images, preprocessing, batch_size=config.train.eval_batch_size, device=device)
    report = build_report(
        p.true,
        p.predicted,
        splits.class_names,
        title=f"{config.name}: {which} set, epoch {final_epoch}",
        split=which,
        loss=p.loss,
        epochs=final_epoch,
        train_seconds_this_run=t_train,
        train_seconds_total=sum(float(h.get("epoch_s", 0.0)) for h in history),
        threads=torch.get_num_threads(),
        cpu_count=os.cpu_count(),
        history=history,
    )
    uris = write_report(report, storage.join(out_dir, "report"))
    say(
        f"{which} accuracy {report['accuracy']:.4f} ({report['correct']}/{report['images']}), "
        f"macro F1 {report['f1_macro']:.4f}; report {uris['markdown']}"
    )
    return TrainResult(final_epoch, existing, tuple(history), last_checkpoint, final_model, report, t_train)
