"""Which runtime and precision serve an exported model: ONNX Runtime or OpenVINO, fp32,
bf16 or int8.

:func:`open_session` is what :func:`models.load_model` calls once the torch module is
loaded. Its rules:

* Backend. ``"onnxruntime"`` / ``"openvino"`` are used as asked. ``"auto"`` considers
  ONNX Runtime (the export and its agreement check with torch,
  :func:`models.onnx_backend.open_onnx_session`) and, on the CPU when the ``openvino``
  package is installed, OpenVINO on the same file, checked against torch by the same rule
  (top-1 equal on every packaged photo, probabilities within
  :data:`models.onnx_backend.AGREEMENT_MAX_ABS_DIFF`; stored beside the file). When both
  pass, the faster one on this CPU is used: both are timed once (:func:`measure_speed`)
  and the result is stored in ``speed.json`` in the cache folder under the CPU model
  (:func:`models.openvino_backend.cpu_model_name`) and the model file, so later starts
  only read it.
* Precision (OpenVINO only; ONNX Runtime and torch run fp32). ``"fp32"`` (default).
  ``"bf16"`` needs AMX or AVX512-BF16, ``"int8"`` VNNI or AMX-INT8
  (:func:`models.openvino_backend.precision_support`); without them it falls back to
  fp32 with a warning. Each reduced precision is compared with fp32 on 500 distinct real
  photos once (:mod:`models.quantization`; stored in ``precision.json``), and the figures
  are logged; ``"auto"`` uses the fastest precision whose top-1 agreement is at least
  :data:`models.quantization.MIN_TOP1_AGREEMENT`, else fp32 with a log line saying why.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Literal, cast

import numpy as np

from . import onnx_backend, openvino_backend, quantization
from .errors import ModelError
from .onnx_backend import AGREEMENT_MAX_ABS_DIFF, Agreement, OnnxSession
from .openvino_backend import OpenVinoSession, Precision
from .preprocessing import Preprocessing

if TYPE_CHECKING:
    import torch

__all__ = ["BACKENDS", "PRECISIONS", "Session", "measure_speed", "open_session"]

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "onnxruntime", "openvino")
PRECISIONS = ("fp32", "bf16", "int8", "auto")
Session = OnnxSession | OpenVinoSession
# Batch and rounds of the one-off speed measurement of "auto" (interleaved rounds, median).
_SPEED_BATCH = 32
_SPEED_ROUNDS = 3


def check_arguments(backend: str, precision: str) -> None:
    """Raise ModelError for an unknown backend or precision, or a reduced precision on a
    backend that runs fp32 only."""
    if backend not in BACKENDS:
        raise ModelError(f"unknown backend {backend!r}; use 'auto', 'torch', 'onnxruntime' or 'openvino'")
    if precision not in PRECISIONS:
        raise ModelError(f"unknown precision {precision!r}; use 'fp32', 'bf16', 'int8' or 'auto'")
    if precision in ("bf16", "int8") and backend in ("torch", "onnxruntime"):
        raise ModelError(
            f"precision {precision!r} runs on OpenVINO; backend {backend!r} runs fp32 only: pass "
            "backend='openvino' (or 'auto'), or precision='fp32'"
        )


def open_session(
    name: str,
    module: torch.nn.Module,
    preprocessing: Preprocessing,
    *,
    backend: str,
    precision: Precision,
    device: Literal["cpu", "cuda"],
    intra_op_threads: int | None,
    streams: int | None,
    auto_eligible: bool,
) -> Session | None:
    """The session :func:`models.load_model` should run, or None for torch (rules in the
    module docstring).

    Raises:
        ModelError: Unknown ``backend``/``precision``; a reduced precision with
            ``backend="torch"``/``"onnxruntime"``; ``backend="openvino"`` with
            ``device="cuda"`` or without the openvino package; errors of
            :func:`models.onnx_backend.open_onnx_session`.
    """
    check_arguments(backend, precision)
    if backend == "openvino" and device != "cpu":
        raise ModelError(
            "backend 'openvino' runs on the CPU here; pass device='cpu', or backend='onnxruntime'"
        )
    ort_backend: onnx_backend.Backend = "onnxruntime" if backend == "openvino" else backend  # type: ignore[assignment]
    onnx_session = onnx_backend.open_onnx_session(
        name,
        module,
        preprocessing,
        backend=ort_backend,
        device=device,
        intra_op_threads=intra_op_threads,
        auto_eligible=auto_eligible,
        streams=streams,
    )
    if onnx_session is None or backend == "onnxruntime" or device != "cpu":
        if precision in ("bf16", "int8") and onnx_session is None:
            logger.warning(
                "model %r runs fp32 on torch: precision %r needs the exported model", name, precision
            )
        return onnx_session
    ov = openvino_backend.import_openvino()
    if ov is None:
        if backend == "openvino":
            raise ModelError(
                f"backend 'openvino' for model {name!r} needs the openvino package; run pip install "
                "openvino to fix it, or pass backend='onnxruntime'"
            )
        if precision in ("bf16", "int8"):
            logger.warning(
                "model %r runs fp32 on onnxruntime: precision %r needs openvino (pip install openvino)",
                name,
                precision,
            )
        return onnx_session
    explicit = backend == "openvino"
    threads = intra_op_threads * (streams or 1) if intra_op_threads is not None else None
    ov_session = OpenVinoSession(
        ov, onnx_session.path, input_shape=onnx_session.input_shape, requests=streams, threads=threads
    )
    ov_session.agreement = _openvino_agreement(module, ov_session, preprocessing, ov)
    fp32: Session
    if explicit:
        if ov_session.agreement is not None and not ov_session.agreement.passes():
            logger.warning(
                "model %r on openvino although it does not agree with torch on the real photos: %s",
                name,
                ov_session.agreement.describe(),
            )
        fp32 = ov_session
    elif ov_session.agreement is None or not ov_session.agreement.passes():
        why = (
            "no real photos to check it on"
            if ov_session.agreement is None
            else ov_session.agreement.describe()
        )
        logger.info("model %r not on openvino: it does not agree with torch (%s)", name, why)
        fp32 = onnx_session
    else:
        speeds = cached_speed(
            onnx_session.path,
            {"onnxruntime": onnx_session.run_array, "openvino": ov_session.run},
            preprocessing,
        )
        fp32 = ov_session if faster_runtime(speeds) == "openvino" else onnx_session
        logger.info(
            "model %r on %s (measured on this CPU: onnxruntime %.0f img/s, openvino %.0f img/s; %s)",
            name,
            "openvino" if fp32 is ov_session else "onnxruntime",
            speeds["onnxruntime"],
            speeds["openvino"],
            ov_session.agreement.describe(),
        )
    if precision == "fp32":
        return fp32
    return _reduced(name, fp32, ov_session, preprocessing, ov, precision, requests=streams, threads=threads)


def _reduced(
    name: str,
    fp32: Session,
    ov_fp32: OpenVinoSession,
    preprocessing: Preprocessing,
    ov: object,
    precision: Precision,
    *,
    requests: int | None,
    threads: int | None,
) -> Session:
    """The session for ``precision`` (``"bf16"``, ``"int8"`` or ``"auto"``), or ``fp32``."""
    wanted: list[Literal["bf16", "int8"]] = ["bf16", "int8"] if precision == "auto" else [precision]  # type: ignore[list-item]
    candidates: dict[str, OpenVinoSession] = {}
    for p in wanted:
        missing = openvino_backend.precision_support(p)
        if missing is not None:
            log = logger.info if precision == "auto" else logger.warning
            log("model %r: precision %s not used, %s; running fp32", name, p, missing)
            continue
        path = ov_fp32.path if p == "bf16" else quantization.quantized_file(ov_fp32.path, preprocessing)
        session = OpenVinoSession(
            cast(ModuleType, ov),
            path,
            input_shape=ov_fp32.input_shape,
            precision=p,
            requests=requests,
            threads=threads,
        )
        agreement = _precision_agreement(ov_fp32, session, preprocessing)
        session.agreement = agreement
        if precision != "auto":
            if not agreement.passes():
                logger.warning(
                    "model %r on %s although %s (auto would need top-1 >= %.2f)",
                    name,
                    p,
                    agreement.describe(),
                    quantization.MIN_TOP1_AGREEMENT,
                )
            else:
                logger.info("model %r on %s (%s)", name, p, agreement.describe())
            return session
        if agreement.passes():
            candidates[p] = session
        else:
            logger.info(
                "model %r: precision %s not used, %s is below the %.2f top-1 agreement auto needs; "
                "running fp32",
                name,
                p,
                agreement.describe(),
                quantization.MIN_TOP1_AGREEMENT,
            )
    if not candidates:
        return fp32
    runs: dict[str, Callable[[np.ndarray], np.ndarray]] = {"fp32": _run_of(fp32)}
    runs.update({p: s.run for p, s in candidates.items()})
    speeds = cached_speed(ov_fp32.path, runs, preprocessing)
    best = max(runs, key=lambda k: speeds[k])
    logger.info(
        "model %r on precision %s (measured img/s: %s)",
        name,
        best,
        ", ".join(f"{k} {v:.0f}" for k, v in speeds.items()),
    )
    return fp32 if best == "fp32" else candidates[best]


def _run_of(session: Session) -> Callable[[np.ndarray], np.ndarray]:
    return session.run if isinstance(session, OpenVinoSession) else session.run_array


def openvino_verdict_path(onnx_path: Path, ov: object) -> Path:
    """Where the OpenVINO-vs-torch verdict of ``onnx_path`` is stored for the installed
    openvino module ``ov``: ``<stem>.openvino-<version>.agreement.json`` beside it."""
    version = str(getattr(ov, "__version__", "unknown")).split("-")[0]
    return onnx_path.with_name(f"{onnx_path.stem}.openvino-{version}.agreement.json")


def onnx_verdict_path(onnx_path: Path) -> Path:
    """Where the ONNX Runtime-vs-torch verdict of ``onnx_path`` is stored:
    ``<stem>.agreement.json`` beside it (written by :mod:`models.onnx_backend`)."""
    return onnx_path.with_name(f"{onnx_path.stem}.agreement.json")


def _openvino_agreement(
    module: torch.nn.Module, session: OpenVinoSession, preprocessing: Preprocessing, ov: object
) -> Agreement | None:
    """The OpenVINO-vs-torch check on the packaged photos, stored beside the file as
    ``<stem>.openvino-<version>.agreement.json`` (today's rule of the ONNX Runtime check)."""
    verdict = openvino_verdict_path(session.path, ov)
    version = str(getattr(ov, "__version__", "unknown")).split("-")[0]
    stored = onnx_backend._read_agreement(verdict)
    if stored is not None:
        return stored
    agreement = onnx_backend.check_agreement(module, session, preprocessing)  # type: ignore[arg-type]
    if agreement is not None:
        record = {
            **agreement.__dict__,
            "passes": agreement.passes(),
            "tolerance": AGREEMENT_MAX_ABS_DIFF,
            "openvino": version,
        }
        onnx_backend._write_atomically(verdict, json.dumps(record, indent=1).encode())
    return agreement


def _precision_agreement(
    fp32: OpenVinoSession, reduced: OpenVinoSession, preprocessing: Preprocessing
) -> quantization.PrecisionAgreement:
    """The reduced-vs-fp32 comparison on 500 real photos, stored in ``precision.json``
    beside the model under the file, precision and CPU model."""
    store = fp32.path.parent / "precision.json"
    key = f"{fp32.path.name}|{reduced.path.name}|{reduced.precision}|{openvino_backend.cpu_model_name()}"
    cached = quantization.read_cached(store, key)
    if cached is not None:
        return cached
    t0 = time.perf_counter()
    agreement = quantization.measure_agreement(reduced.precision, fp32.run, reduced.run, preprocessing)
    logger.info("measured %s in %.0f s", agreement.describe(), time.perf_counter() - t0)
    with onnx_backend._file_lock(fp32.path.parent / "precision.lock"):
        quantization.write_cached(store, key, agreement)
    return agreement


def measure_speed(
    runs: dict[str, Callable[[np.ndarray], np.ndarray]], batch: np.ndarray, rounds: int = _SPEED_ROUNDS
) -> dict[str, float]:
    """Images/s of each ``run`` on ``batch``: one warm-up call each, then ``rounds``
    interleaved rounds (every run once per round, so a busy moment of the machine hits all
    alike), median per run."""
    for run in runs.values():
        run(batch)
    seen: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(rounds):
        for key, run in runs.items():
            t0 = time.perf_counter()
            run(batch)
            seen[key].append(len(batch) / (time.perf_counter() - t0))
    return {k: statistics.median(v) for k, v in seen.items()}


def faster_runtime(speeds: dict[str, float]) -> Literal["onnxruntime", "openvino"]:
    """The runtime ``"auto"`` picks from measured img/s: OpenVINO when strictly faster."""
    return "openvino" if speeds["openvino"] > speeds["onnxruntime"] else "onnxruntime"


def speed_key(model_file: Path, runs: Iterable[str]) -> str:
    """The key of a measurement in ``speed.json``: CPU model, model file name and the
    sorted run names, ``|``-separated."""
    return f"{openvino_backend.cpu_model_name()}|{model_file.name}|{','.join(sorted(runs))}"


def read_speed(model_file: Path, runs: Iterable[str]) -> dict[str, float] | None:
    """The stored :func:`cached_speed` of ``runs`` on ``model_file``, or None when none is
    stored (or the file is unreadable)."""
    names = list(runs)
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        cached = json.loads((model_file.parent / "speed.json").read_text())[speed_key(model_file, names)]
        return {k: float(cached[k]) for k in names}
    return None


def cached_speed(
    model_file: Path, runs: dict[str, Callable[[np.ndarray], np.ndarray]], preprocessing: Preprocessing
) -> dict[str, float]:
    """:func:`measure_speed` of ``runs`` once per CPU model, model file and set of runs;
    stored in ``speed.json`` in the model's folder and read back on later starts."""
    store = model_file.parent / "speed.json"
    key = speed_key(model_file, runs)
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        cached = json.loads(store.read_text())[key]
        return {k: float(cached[k]) for k in runs}
    batch = _speed_batch(preprocessing)
    speeds = measure_speed(runs, batch)
    with onnx_backend._file_lock(model_file.parent / "speed.lock"):
        data: dict[str, object] = {}
        with contextlib.suppress(OSError, ValueError):
            loaded = json.loads(store.read_text())
            if isinstance(loaded, dict):
                data = loaded
        data[key] = speeds | {"measured_at": time.time(), "batch": len(batch)}
        fd, tmp = tempfile.mkstemp(dir=store.parent, prefix=".speed.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, indent=1)
            os.chmod(tmp, 0o644)
            os.replace(tmp, store)
        finally:
            Path(tmp).unlink(missing_ok=True)
    return speeds


def _speed_batch(preprocessing: Preprocessing) -> np.ndarray:
    """A batch of :data:`_SPEED_BATCH` preprocessed packaged photos (repeated as needed);
    zeros when no photo is installed (speed does not depend on the pixel values)."""
    side = preprocessing.crop_size
    shape = (_SPEED_BATCH, preprocessing.channels, side, side)
    photos: list[np.ndarray] = []
    from .preprocessing import decode_image

    for data in onnx_backend._real_photos().values():
        with contextlib.suppress(ValueError):
            photos.append(
                preprocessing(decode_image(data, target_short_side=preprocessing.resize_short_side)).numpy()
            )
    if not photos:
        return np.zeros(shape, np.float32)
    return np.stack([photos[i % len(photos)] for i in range(_SPEED_BATCH)]).astype(np.float32)
