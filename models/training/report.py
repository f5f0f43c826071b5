"""Evaluation: predictions, metrics (scikit-learn), the final report and its confusion matrix.

Metrics are scikit-learn's: ``accuracy_score``; ``precision_recall_fscore_support`` with
``average="macro"`` (the unweighted mean over the classes that occur among the true or
the predicted labels, scikit-learn's default; a class never predicted counts as precision
0, ``zero_division=0``) and per class (all classes); ``confusion_matrix`` (rows: true
class, columns: predicted class).
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from models import storage
from models.preprocessing import Preprocessing

from .data import ImageSet, batch_indices

__all__ = ["Predictions", "predict", "compute_metrics", "confusion_png", "build_report", "write_report"]


class Predictions:
    """Predicted and true class indices of an :class:`ImageSet`, and the mean loss."""

    def __init__(self, predicted: np.ndarray, true: np.ndarray, loss: float) -> None:
        self.predicted = predicted
        self.true = true
        self.loss = loss

    @property
    def correct(self) -> int:
        return int((self.predicted == self.true).sum())


def predict(
    module: torch.nn.Module,
    images: ImageSet,
    preprocessing: Preprocessing,
    *,
    batch_size: int,
    device: str = "cpu",
) -> Predictions:
    """Run ``module`` (in eval mode, restored afterwards) over ``images`` in order.

    Inputs are :meth:`Preprocessing.normalise` of the stored pixels: what serving computes.
    The predicted class is the first maximum of the logits (``argmax``), as the registry's
    top-k (a stable sort) picks it.
    """
    was_training = module.training
    module.eval()
    preds: list[torch.Tensor] = []
    loss_sum = 0.0
    with torch.inference_mode():
        for idx in batch_indices(len(images), batch_size):
            x = preprocessing.normalise(images.pixels[idx]).to(device)
            y = images.labels[idx].to(device)
            logits = module(x).float()
            loss_sum += float(torch.nn.functional.cross_entropy(logits, y, reduction="sum"))
            preds.append(torch.softmax(logits, dim=1).argmax(dim=1).cpu())
    module.train(was_training)
    predicted = torch.cat(preds).numpy() if preds else np.empty(0, dtype=np.int64)
    return Predictions(predicted, images.labels.numpy(), loss_sum / max(1, len(images)))


def compute_metrics(true: np.ndarray, predicted: np.ndarray, num_classes: int) -> dict[str, float]:
    """``accuracy``, ``precision_macro``, ``recall_macro``, ``f1_macro`` (scikit-learn; macro
    over the classes present, see the module docstring; ``num_classes`` bounds the indices)."""
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    if len(true) and max(int(true.max()), int(predicted.max())) >= num_classes:
        raise ValueError(f"class indices must be below num_classes={num_classes}")
    p, r, f, _ = precision_recall_fscore_support(true, predicted, average="macro", zero_division=0)
    return {
        "accuracy": float(accuracy_score(true, predicted)),
        "precision_macro": float(p),
        "recall_macro": float(r),
        "f1_macro": float(f),
    }


def build_report(
    true: np.ndarray, predicted: np.ndarray, class_names: Sequence[str], **extra: Any
) -> dict[str, Any]:
    """Overall and per-class metrics and the confusion matrix, as JSON-able data."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    labels = list(range(len(class_names)))
    p, r, f, support = precision_recall_fscore_support(
        true, predicted, labels=labels, average=None, zero_division=0
    )
    return {
        **extra,
        "images": int(len(true)),
        "correct": int((true == predicted).sum()),
        **compute_metrics(true, predicted, len(class_names)),
        "per_class": [
            {
                "class": name,
                "precision": float(p[i]),
                "recall": float(r[i]),
                "f1": float(f[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(class_names)
        ],
        "class_names": list(class_names),
        "confusion_matrix": confusion_matrix(true, predicted, labels=labels).tolist(),
    }


def confusion_png(matrix: Sequence[Sequence[int]], class_names: Sequence[str], title: str) -> bytes:
    """A PNG of the confusion matrix: counts in the cells, colour by the fraction of the
    true class (row), true classes down, predicted across."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cm = np.asarray(matrix, dtype=np.int64)
    rows = cm.sum(axis=1, keepdims=True)
    frac = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=np.float64), where=rows > 0)
    n = len(class_names)
    side = max(4.0, 0.65 * n + 2.5)
    fig = Figure(figsize=(side, side * 0.9), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.imshow(frac, cmap="Blues", vmin=0.0, vmax=1.0)
    for i in range(n):
        for j in range(n):
            if cm[i, j]:
                ax.text(
                    j,
                    i,
                    str(cm[i, j]),
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if frac[i, j] > 0.5 else "black",
                )
    ax.set_xticks(range(n), labels=list(class_names), rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), labels=list(class_names), fontsize=8)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _markdown(report: Mapping[str, Any]) -> str:
    lines = [
        f"# {report.get('title', 'evaluation')}",
        "",
        f"{report['images']} images, {report['correct']} correct: accuracy {report['accuracy']:.4f}, "
        f"macro precision {report['precision_macro']:.4f}, recall {report['recall_macro']:.4f}, "
        f"F1 {report['f1_macro']:.4f}.",
        "",
        "| class | precision | recall | F1 | support |",
        "|---|---:|---:|---:|---:|",
    ]
    for c in report["per_class"]:
        lines.append(
            f"| {c['class']} | {c['precision']:.4f} | {c['recall']:.4f} | {c['f1']:.4f} | {c['support']} |"
        )
    lines += ["", "![confusion matrix](confusion_matrix.png)", ""]
    return "\n".join(lines)


def write_report(report: Mapping[str, Any], folder: str) -> dict[str, str]:
    """Write ``report.json``, ``report.md`` and ``confusion_matrix.png`` into ``folder``
    (local or ``gs://``); returns their URIs by kind."""
    uris = {
        "json": storage.join(folder, "report.json"),
        "markdown": storage.join(folder, "report.md"),
        "confusion_matrix": storage.join(folder, "confusion_matrix.png"),
    }
    storage.write_bytes(uris["json"], json.dumps(report, indent=2).encode())
    storage.write_bytes(uris["markdown"], _markdown(report).encode())
    png = confusion_png(report["confusion_matrix"], report["class_names"], str(report.get("title", "")))
    storage.write_bytes(uris["confusion_matrix"], png)
    return uris
