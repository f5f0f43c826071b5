"""Reduced precision: the int8 model file, and how far a reduced precision is from fp32.

:func:`quantized_file` makes (once; cached beside the fp32 file) a static int8 copy of an
exported ``.onnx`` file with ONNX Runtime's quantizer
(``onnxruntime.quantization.quantize_static``, QDQ format, int8 weights per output channel,
uint8 activations; https://onnxruntime.ai/docs/performance/model-optimizations/quantization.html),
calibrated on real photos: :data:`CALIBRATION_PHOTOS` distinct crops of the packaged
photos (:func:`models.samples.distinct_photos`, seed :data:`CALIBRATION_SEED`), never on
random tensors. OpenVINO runs the QDQ file with int8 kernels.

:func:`measure_agreement` compares a reduced-precision session with the fp32 one on
:data:`AGREEMENT_PHOTOS` other distinct real photos (seed :data:`AGREEMENT_SEED`, so none is
a calibration photo): top-1 agreement, top-5 overlap and the largest probability
difference. ``precision="auto"`` uses a reduced precision only when its top-1 agreement
is at least :data:`MIN_TOP1_AGREEMENT`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .errors import ModelError
from .preprocessing import Preprocessing, decode_image

__all__ = [
    "AGREEMENT_PHOTOS",
    "AGREEMENT_SEED",
    "CALIBRATION_PHOTOS",
    "CALIBRATION_SEED",
    "MIN_TOP1_AGREEMENT",
    "PrecisionAgreement",
    "compare",
    "measure_agreement",
    "photo_arrays",
    "quantized_file",
]

logger = logging.getLogger(__name__)

#: Distinct real photos each reduced precision is compared with fp32 on.
AGREEMENT_PHOTOS = 500
AGREEMENT_SEED = 0
#: Distinct real photos the int8 activation ranges are calibrated on (other crops than
#: the agreement photos: another seed).
CALIBRATION_PHOTOS = 300
CALIBRATION_SEED = 1
#: Smallest top-1 agreement with fp32 for which ``precision="auto"`` uses a reduced precision.
MIN_TOP1_AGREEMENT = 0.99
# Bump when the quantizer settings change, to quantize every cached file again.
_QUANT_FORMAT = 1


@dataclass(frozen=True)
class PrecisionAgreement:
    """A reduced precision against fp32 on the same distinct real photos.

    Attributes:
        precision: ``"bf16"`` or ``"int8"``.
        photos: Photos compared.
        top1_agreement: Share (0..1) of photos whose most probable class is fp32's.
        top5_overlap: Mean share (0..1) of fp32's five most probable classes that are also
            among the reduced precision's five.
        max_prob_diff: Largest ``|p - p_fp32|`` over all photos and classes (softmax
            probabilities, 0..1).
    """

    precision: str
    photos: int
    top1_agreement: float
    top5_overlap: float
    max_prob_diff: float

    def passes(self) -> bool:
        """``top1_agreement >= MIN_TOP1_AGREEMENT`` (read at call time)."""
        return self.photos > 0 and self.top1_agreement >= MIN_TOP1_AGREEMENT

    def describe(self) -> str:
        """E.g. ``"int8 vs fp32 on 500 real photos: top-1 agreement 0.994, top-5 overlap 0.97, ..."``."""
        return (
            f"{self.precision} vs fp32 on {self.photos} real photos: top-1 agreement "
            f"{self.top1_agreement:.3f}, top-5 overlap {self.top5_overlap:.3f}, max probability "
            f"difference {self.max_prob_diff:.3f}"
        )


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    out: np.ndarray = e / e.sum(axis=1, keepdims=True)
    return out


def compare(precision: str, reference_logits: np.ndarray, logits: np.ndarray) -> PrecisionAgreement:
    """:class:`PrecisionAgreement` of ``logits`` against ``reference_logits`` (both ``(N, classes)``).

    Raises:
        ValueError: The shapes differ or are not 2-D.
    """
    if reference_logits.shape != logits.shape or logits.ndim != 2:
        raise ValueError(f"need two (N, classes) arrays, got {reference_logits.shape} and {logits.shape}")
    p_ref, p = _softmax(reference_logits), _softmax(logits)
    top1 = float(np.mean(p_ref.argmax(axis=1) == p.argmax(axis=1)))
    k = min(5, p.shape[1])
    ref5, got5 = np.argsort(-p_ref, axis=1)[:, :k], np.argsort(-p, axis=1)[:, :k]
    overlap = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(ref5.tolist(), got5.tolist())]))
    return PrecisionAgreement(precision, len(p), top1, overlap, float(np.abs(p - p_ref).max()))


def photo_arrays(preprocessing: Preprocessing, n: int, seed: int) -> np.ndarray:
    """``n`` distinct real photos (:func:`models.samples.distinct_photos`) decoded and
    preprocessed: float32 ``(n, C, crop, crop)``.

    Raises:
        ModelError: scikit-image (the photos' source) is not installed.
    """
    from .samples import distinct_photos

    try:
        photos = distinct_photos(n, seed)
    except ImportError as e:
        raise ModelError(
            "reduced precisions are calibrated and checked on real photos made from scikit-image's "
            "sample photos; run pip install scikit-image to fix it, or use precision='fp32'"
        ) from e
    side = preprocessing.resize_short_side
    return np.stack(
        [preprocessing(decode_image(data, target_short_side=side)).numpy() for _, data in photos]
    ).astype(np.float32)


def run_batched(run: Callable[[np.ndarray], np.ndarray], arrays: np.ndarray, batch: int = 32) -> np.ndarray:
    """``run`` over ``arrays`` in batches of ``batch``, outputs concatenated."""
    return np.concatenate([run(arrays[i : i + batch]) for i in range(0, len(arrays), batch)])


def measure_agreement(
    precision: str,
    reference: Callable[[np.ndarray], np.ndarray],
    reduced: Callable[[np.ndarray], np.ndarray],
    preprocessing: Preprocessing,
    *,
    photos: int | None = None,
) -> PrecisionAgreement:
    """Run the fp32 ``reference`` and the ``reduced`` precision (each: float32
    ``(N, C, H, W)`` -> logits ``(N, classes)``) on ``photos`` distinct real photos
    (default :data:`AGREEMENT_PHOTOS`, read at call time) and :func:`compare` them."""
    arrays = photo_arrays(preprocessing, AGREEMENT_PHOTOS if photos is None else photos, AGREEMENT_SEED)
    return compare(precision, run_batched(reference, arrays), run_batched(reduced, arrays))


def quantized_file(fp32_path: Path, preprocessing: Preprocessing) -> Path:
    """The int8 (QDQ) copy of ``fp32_path``, made on first use and cached beside it as
    ``<stem>.int8.onnx`` (written under a temporary name, then renamed).

    Raises:
        ModelError: onnxruntime's quantizer is missing or fails, or no real photos.
    """
    out = fp32_path.with_name(f"{fp32_path.stem}.int8-q{_QUANT_FORMAT}.onnx")
    if out.exists():
        return out
    try:
        from onnxruntime.quantization import (
            CalibrationDataReader,
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_static,
        )
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as e:
        raise ModelError(
            "precision 'int8' needs onnxruntime's quantizer; run pip install onnxruntime onnx to fix "
            "it, or use precision='fp32'"
        ) from e
    calibration = photo_arrays(preprocessing, CALIBRATION_PHOTOS, CALIBRATION_SEED)

    class _Photos(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self._it: Iterator[dict[str, np.ndarray]] = iter(
                {"input": calibration[i : i + 1]} for i in range(len(calibration))
            )

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=fp32_path.parent, prefix=".quantize-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        staged = Path(tmp) / "int8.onnx"
        try:
            quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
            quantize_static(
                str(prepared),
                str(staged),
                _Photos(),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                op_types_to_quantize=["Conv", "Gemm", "MatMul"],
            )
        except Exception as e:
            raise ModelError(
                f"quantizing {fp32_path.name} to int8 failed: {e!r}; use precision='fp32'"
            ) from e
        os.chmod(staged, 0o644)
        os.replace(staged, out)
    logger.info(
        "quantized %s to int8 in %.1f s (%d calibration photos)",
        out.name,
        time.perf_counter() - t0,
        len(calibration),
    )
    return out


def read_cached(path: Path, key: str) -> PrecisionAgreement | None:
    """The agreement stored under ``key`` in the JSON file ``path``, or None."""
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        raw = json.loads(path.read_text())[key]
        return PrecisionAgreement(
            str(raw["precision"]),
            int(raw["photos"]),
            float(raw["top1_agreement"]),
            float(raw["top5_overlap"]),
            float(raw["max_prob_diff"]),
        )
    return None


def write_cached(path: Path, key: str, agreement: PrecisionAgreement) -> None:
    """Store ``agreement`` under ``key`` in the JSON file ``path`` (read, update, atomic rename)."""
    data: dict[str, object] = {}
    with contextlib.suppress(OSError, ValueError):
        loaded = json.loads(path.read_text())
        if isinstance(loaded, dict):
            data = loaded
    data[key] = asdict(agreement)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
