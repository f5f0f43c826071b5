"""Inference backends side by side: torch eager vs ONNX Runtime, images/s of the model alone.

The input is pre-decoded: the packaged real photos (:func:`models.samples.sample_photos`)
decoded and preprocessed once, stacked into batches, so only ``predict_proba`` is timed
(decode and preprocessing cost the same on both backends). Models: EfficientNet-Lite0 with
its real weights, MobileNetV2 with random weights (seed 0; speed does not depend on the
weights' values). Both backends run in this process, one after the other for each batch
size, and the machine's load average is printed beside the figures: compare the ratios,
which are measured minutes apart at most, rather than absolute numbers across runs.

    .venv/bin/python -m benchmarks.backends [--models efficientnet_lite0,mobilenet_v2]
        [--batches 1,8,32] [--images 64] [--threads N] [--json out.json]

:func:`model_ceiling` is the measurement, for other benchmarks to import.
"""

from __future__ import annotations

import argparse
import atexit
import functools
import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

if TYPE_CHECKING:
    import torch

    from models import ImageClassifier

__all__ = ["model_ceiling", "main"]

BackendName = Literal["auto", "torch", "onnxruntime"]


@functools.cache
def _random_weights(model_name: str) -> str:
    """A state_dict file of a torchvision architecture, random weights (seed 0)."""
    import torch
    import torchvision

    folder = Path(tempfile.mkdtemp(prefix="buildflow-backends-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    path = folder / f"{model_name}-random-seed0.pt"
    torch.manual_seed(0)
    torch.save(getattr(torchvision.models, model_name)(weights=None).state_dict(), path)
    return str(path)


@functools.cache
def _classifier(model_name: str, backend: str, intra_op_threads: int | None) -> ImageClassifier:
    from models import load_model

    weights = None if model_name == "efficientnet_lite0" else _random_weights(model_name)
    return load_model(
        model_name,
        weights_path=weights,
        backend=cast(BackendName, backend),
        intra_op_threads=intra_op_threads,
    )


@functools.cache
def _photo_tensors(model_name: str) -> tuple[torch.Tensor, ...]:
    """The packaged photos, decoded and preprocessed for ``model_name``: ``(C, H, W)`` each."""
    from models import decode_image
    from models.registry import registered_preprocessing
    from models.samples import sample_photos

    pre = registered_preprocessing(model_name)
    return tuple(
        pre(decode_image(data, target_short_side=pre.resize_short_side)) for data in sample_photos().values()
    )


def model_ceiling(
    model_name: str, backend: str, batch: int, n_images: int, *, intra_op_threads: int | None = None
) -> float:
    """Images/s of ``predict_proba`` alone, on pre-decoded tensors of real photos.

    Args:
        model_name: ``efficientnet_lite0`` (real weights) or a torchvision architecture
            (``mobilenet_v2``, ``resnet50``, ...; random weights, seed 0).
        backend: ``"torch"``, ``"onnxruntime"`` or ``"auto"`` (see ``models.load_model``).
            The model is loaded once per (model, backend, threads) and kept for later calls;
            a first ONNX Runtime load exports the model (cached on disk afterwards).
        batch: Images per ``predict_proba`` call, at least 1.
        n_images: Images timed, at least 1; rounded up to whole batches.
        intra_op_threads: Threads per forward pass (default: the backend's; for torch,
            setting it calls ``torch.set_num_threads``, process-wide).

    Returns:
        Images per second over the timed batches (one untimed warm-up batch first).

    Raises:
        ValueError: ``batch`` or ``n_images`` below 1.
        models.ModelError: The model or backend cannot be loaded.
    """
    import torch

    if batch < 1 or n_images < 1:
        raise ValueError(f"batch and n_images must be at least 1, got {batch!r} and {n_images!r}")
    classifier = _classifier(model_name, backend, intra_op_threads)
    photos = _photo_tensors(model_name)
    batches = math.ceil(n_images / batch)
    stacked = [
        torch.stack([photos[(b * batch + i) % len(photos)] for i in range(batch)]) for b in range(batches)
    ]
    classifier.predict_proba(stacked[0])  # warm-up: first run at this batch size allocates
    t0 = time.perf_counter()
    for x in stacked:
        classifier.predict_proba(x)
    return batches * batch / (time.perf_counter() - t0)


def _loadavg() -> str:
    try:
        return " / ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description="torch eager vs ONNX Runtime, images/s on pre-decoded tensors")
    ap.add_argument("--models", default="efficientnet_lite0,mobilenet_v2")
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--images", type=int, default=64, help="images timed per (model, backend, batch)")
    ap.add_argument("--threads", type=int, default=None, help="intra-op threads (default: torch's)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)

    import onnxruntime
    import torch

    from models import load_model

    model_names = [m for m in args.models.split(",") if m]
    batch_sizes = [int(b) for b in args.batches.split(",") if b]
    before = _loadavg()
    print(
        f"cores: {os.cpu_count()}, torch threads: {torch.get_num_threads()}, intra-op threads: "
        f"{args.threads or 'default'}; torch {torch.__version__}, onnxruntime {onnxruntime.__version__}"
    )
    print(f"load average (1/5/15 min) at start: {before}")
    results: dict[str, Any] = {"loadavg_start": before, "models": {}}
    for name in model_names:
        loads = {}
        for backend in ("torch", "onnxruntime"):
            t0 = time.perf_counter()
            c = _classifier(name, backend, args.threads)
            session = c.onnx_session
            loads[backend] = {
                "load_s": time.perf_counter() - t0,
                "exported": bool(session and session.exported),
                "agreement": session.agreement.describe() if session and session.agreement else None,
            }
        # the backend "auto" picks for this model (the agreement check is stored by now)
        auto = load_model(
            name, weights_path=None if name == "efficientnet_lite0" else _random_weights(name)
        ).backend
        rows = []
        for batch in batch_sizes:
            eager = model_ceiling(name, "torch", batch, args.images, intra_op_threads=args.threads)
            ort = model_ceiling(name, "onnxruntime", batch, args.images, intra_op_threads=args.threads)
            rows.append({"batch": batch, "torch": eager, "onnxruntime": ort, "ratio": ort / eager})
        results["models"][name] = {"loads": loads, "auto_backend": auto, "rows": rows}
        print(f"\n{name}: auto -> {auto}; {loads['onnxruntime']['agreement']}")
        print(
            f"  load: torch {loads['torch']['load_s']:.2f} s, onnxruntime "
            f"{loads['onnxruntime']['load_s']:.2f} s"
            + (" (exported and checked now)" if loads["onnxruntime"]["exported"] else " (cached export)")
        )
        print(f"  {'batch':>5}  {'torch img/s':>11}  {'onnxruntime img/s':>17}  {'ratio':>6}")
        for r in rows:
            print(f"  {r['batch']:>5}  {r['torch']:>11.1f}  {r['onnxruntime']:>17.1f}  {r['ratio']:>5.1f}x")
    results["loadavg_end"] = _loadavg()
    print(f"\nload average (1/5/15 min) at end: {results['loadavg_end']}")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
