"""``python -m models.training``: train from a config, resume, evaluate a checkpoint.

    python -m models.training check models/training/configs/fashion_mnist_cnn.yaml
    python -m models.training train models/training/configs/fashion_mnist_cnn.yaml
    python -m models.training train models/training/configs/fashion_mnist_cnn.yaml --resume
    python -m models.training train models/training/configs/fashion_mnist_cnn.yaml --set train.epochs=2
    python -m models.training evaluate runs/fashion_mnist_cnn/model.pt --start 0 --end 1000
    python -m models.training sample-folder data/textures

Exit codes: 0 done; 1 a clear error (one message, no traceback); 2 bad usage.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from models.errors import ModelError

__all__ = ["cli", "main"]

cli = typer.Typer(
    name="python -m models.training",
    help="Train image classifiers from a config file; evaluate and serve their checkpoints.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _fail(e: Exception) -> typer.Exit:
    print(f"error: {e}", file=sys.stderr)
    return typer.Exit(1)


def _logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", force=True)


_SET_HELP = (
    "Override a config key, e.g. --set train.epochs=2 --set data.train_limit=2000 (value read as "
    "YAML; repeatable). A resumed run needs the same --set items."
)


@cli.command("check")
def check_cmd(
    config: Annotated[Path, typer.Argument(help="YAML or TOML training config.")],
    overrides: Annotated[list[str] | None, typer.Option("--set", help=_SET_HELP)] = None,
) -> None:
    """Validate a config and build its model (no data is read): layer shapes and parameters."""
    from .config import load_config
    from .layers import build_model, summary

    try:
        cfg = load_config(config, overrides or ())
        built = build_model(cfg, pretrained=False)
    except ModelError as e:
        raise _fail(e) from None
    print(f"{config}: valid ({cfg.name}: {cfg.data.kind} data, {cfg.model.num_classes} classes)")
    print(summary(cfg, built))


@cli.command("train")
def train_cmd(
    config: Annotated[Path, typer.Argument(help="YAML or TOML training config.")],
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from the newest checkpoint in output.dir.")
    ] = False,
    stop_after_epoch: Annotated[
        int | None, typer.Option("--stop-after-epoch", min=1, help="Stop after this epoch's checkpoint.")
    ] = None,
    overrides: Annotated[list[str] | None, typer.Option("--set", help=_SET_HELP)] = None,
) -> None:
    """Train (or resume) the model a config describes; prints one line per epoch."""
    from .config import load_config
    from .train import train

    _logging()
    t0 = time.perf_counter()
    try:
        result = train(load_config(config, overrides or ()), resume=resume, stop_after_epoch=stop_after_epoch)
    except ModelError as e:
        raise _fail(e) from None
    wall = time.perf_counter() - t0
    if result.stopped_early:
        print(f"stopped after epoch {result.epochs_completed}; continue with --resume ({wall:.0f} s)")
    else:
        print(
            f"done: {result.epochs_completed} epochs, {result.train_seconds:.0f} s of epochs in this run, "
            f"{wall:.0f} s wall; model {result.model}"
        )


@cli.command("evaluate")
def evaluate_cmd(
    checkpoint: Annotated[str, typer.Argument(help="Checkpoint: local path or gs://bucket/object.")],
    split: Annotated[
        str | None,
        typer.Option("--split", help="test | val | train (default: test if there is one, else val)."),
    ] = None,
    start: Annotated[int, typer.Option("--start", min=0, help="First image of the split.")] = 0,
    end: Annotated[int | None, typer.Option("--end", min=1, help="Image index to stop before.")] = None,
    data: Annotated[
        str | None, typer.Option("--data", help="Read the data from here (folder, or IDX folder) instead.")
    ] = None,
    out: Annotated[
        str | None, typer.Option("--out", help="Write report.json/.md and confusion_matrix.png here.")
    ] = None,
    predictions: Annotated[
        Path | None,
        typer.Option("--predictions", help="Write one JSON line per image: name, true, predicted."),
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", min=1, help="Default: eval_batch_size.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Evaluate a checkpoint, loaded as serving loads it, on its data set (or a range of it)."""
    from .evaluate import evaluate

    try:
        report, rows = evaluate(
            checkpoint, split=split, start=start, end=end, data=data, out=out, batch_size=batch_size
        )
    except ModelError as e:
        raise _fail(e) from None
    if predictions is not None:
        predictions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    if as_json:
        print(json.dumps({k: v for k, v in report.items() if k != "history"}, indent=2))
    else:
        print(
            f"{report['split']} images {start}..{start + report['images']}: "
            f"accuracy {report['accuracy']:.4f} ({report['correct']}/{report['images']}), "
            f"macro precision {report['precision_macro']:.4f}, "
            f"recall {report['recall_macro']:.4f}, F1 {report['f1_macro']:.4f}"
        )
        for c in report["per_class"]:
            print(
                f"  {c['class']:<12} precision {c['precision']:.3f} recall {c['recall']:.3f} f1 {c['f1']:.3f}"
            )


@cli.command("sample-folder")
def sample_folder_cmd(
    folder: Annotated[Path, typer.Argument(help="Where to write <class>/<tile>.jpg.")],
    tile: Annotated[int, typer.Option("--tile", min=16, max=512, help="Tile side, pixels.")] = 128,
) -> None:
    """Write a small real folder-per-class data set: texture photos (brick, grass, gravel) cut in tiles."""
    from .samples import write_texture_folder

    paths = write_texture_folder(folder, tile=tile)
    print(f"wrote {len(paths)} images of 3 classes to {folder}")


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
