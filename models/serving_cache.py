"""Serve a built-in model from the export cache without importing torch.

:func:`models.load_model` exports a model to ONNX and checks it against torch once
(:mod:`models.onnx_backend`, :mod:`models.backend_selection`); the exported file's name
holds :func:`models.onnx_backend.cache_key`, a hash of the torch module, which needs torch
to compute. So that a later start finds that file without building the module, the load
that exported (or checked) it writes a *serving manifest* beside it: a small JSON file
named by :func:`manifest_key`, a hash computed from what identifies the model without
building it. A later :func:`models.load_model` with the same arguments reads the manifest
and opens the ONNX Runtime or OpenVINO session directly: NumPy, Pillow and the runtime
only, no torch or torchvision.

Which loads use it: built-in architectures (``efficientnet_lite0``, ``mobilenet_v2``,
``resnet50``, ``vgg16``) with ``backend="auto"``, ``precision="fp32"`` and
``device="cpu"``, the defaults. Any other request (a checkpoint, a custom model, an
explicit backend, a reduced precision, CUDA) takes the torch path as before.

The manifest key covers everything :func:`models.onnx_backend.cache_key` and the backend
choice depend on, so that it changes whenever the torch-side key or the choice would:

* the model name (the built-in architecture), the number of classes and the labels;
* the weights file: its SHA-256 and size (the bytes of the state_dict the torch key
  hashes; ~15 ms for EfficientNet-Lite0's 19 MB, ~0.4 s for VGG16's 530 MB);
* the input shape and preprocessing (resize, crop, mean, std, interpolation, channels);
* the installed versions (package metadata, nothing imported) of torch, torchvision,
  efficientnet-lite-pytorch, onnx, onnxruntime and openvino, the ONNX opset, the export
  cache format and this manifest's format, and the source of
  :mod:`models.architectures` (a changed layer definition changes the module's ``repr``);
* the CPU model and flags (:func:`models.openvino_backend.cpu_model_name`: the speed
  measurement that picked ONNX Runtime or OpenVINO is per CPU);
* the device, backend and precision asked for.

The manifest never serves a model whose check did not pass, and never a choice whose
grounds changed. It is written only after a load that chose ONNX Runtime or OpenVINO (so
every verdict it needs passed). It names the verdict files the choice rests on
(``<stem>.agreement.json``, and ``<stem>.openvino-<version>.agreement.json`` for
OpenVINO), and every read re-reads them and requires each to pass today's rule
(:meth:`models.onnx_backend.Agreement.passes`, with today's
:data:`~models.onnx_backend.AGREEMENT_MAX_ABS_DIFF`, which is also part of the key). It
holds the SHA-256 of every verdict file that existed when it was written (OpenVINO's
included when it lost): an edited or removed verdict invalidates it. When the choice
came from a speed measurement, the measurement must still be in ``speed.json`` and still
pick the same runtime (removing ``speed.json`` to measure again invalidates it). A
missing, unreadable or failing verdict, a missing or resized ONNX file, or a session that
fails to open makes :func:`open_cached` return None: the torch path then runs (export and
check as needed) and writes the manifest again if its choice allows.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from . import backend_selection, onnx_backend, openvino_backend
from .onnx_backend import Agreement, OnnxSession
from .openvino_backend import OpenVinoSession
from .preprocessing import Preprocessing

__all__ = ["CachedSession", "eligible", "manifest_key", "manifest_path", "open_cached", "write_manifest"]

logger = logging.getLogger(__name__)

# Bump when the manifest's content or key changes meaning.
_MANIFEST_FORMAT = 1
_VERSIONED_PACKAGES = ("torch", "torchvision", "efficientnet-lite-pytorch", "onnx", "onnxruntime", "openvino")


@dataclass(frozen=True)
class CachedSession:
    """A session opened from a serving manifest.

    Attributes:
        session: The ONNX Runtime or OpenVINO session over the cached file, its
            ``agreement`` set from the stored verdict.
        backend: ``"onnxruntime"`` or ``"openvino"``.
        manifest: The manifest file it was found by.
    """

    session: OnnxSession | OpenVinoSession
    backend: Literal["onnxruntime", "openvino"]
    manifest: Path


def eligible(*, built_in: bool, backend: str, precision: str, device: str) -> bool:
    """Whether a :func:`models.load_model` request may be served from a manifest (see the
    module docstring): a built-in architecture, ``backend="auto"``, ``precision="fp32"``,
    ``device="cpu"``."""
    return built_in and backend == "auto" and precision == "fp32" and device == "cpu"


def manifest_key(
    name: str,
    *,
    weights_path: str,
    labels: tuple[str, ...],
    preprocessing: Preprocessing,
    device: str,
    backend: str,
    precision: str,
) -> str:
    """SHA-256 (hex) of what the export and the backend choice of built-in model ``name``
    depend on, computed without torch (the list is in the module docstring).

    Args:
        name: The built-in model's name.
        weights_path: Its state_dict file (read whole, to hash it).
        labels: Class names in output order (their count is the number of classes).
        preprocessing: The model's preprocessing (its crop size is the input shape).
        device, backend, precision: As asked of :func:`models.load_model`.

    Raises:
        OSError: ``weights_path`` cannot be read.
    """
    with open(weights_path, "rb") as f:
        weights = hashlib.file_digest(f, "sha256").hexdigest()
    architectures = Path(__file__).with_name("architectures.py").read_bytes()
    header = {
        "format": _MANIFEST_FORMAT,
        "export_format": onnx_backend._CACHE_FORMAT,
        "opset": onnx_backend.OPSET_VERSION,
        "model": name,
        "weights_sha256": weights,
        "weights_size": Path(weights_path).stat().st_size,
        "num_classes": len(labels),
        "labels_sha256": hashlib.sha256("\n".join(labels).encode()).hexdigest(),
        "preprocessing": asdict(preprocessing),
        "versions": {p: _version(p) for p in _VERSIONED_PACKAGES},
        "architectures_sha256": hashlib.sha256(architectures).hexdigest(),
        "cpu": openvino_backend.cpu_model_name(),
        "tolerance": onnx_backend.AGREEMENT_MAX_ABS_DIFF,
        "device": device,
        "backend": backend,
        "precision": precision,
    }
    return hashlib.sha256(json.dumps(header, sort_keys=True).encode()).hexdigest()


def manifest_path(name: str, key: str) -> Path:
    """Where the manifest of ``name`` under ``key`` lives: the export cache folder
    (:func:`models.onnx_backend.cache_dir`), ``<name>-<key[:24]>.serving.json``."""
    return onnx_backend.cache_dir() / f"{_safe(name)}-{key[:24]}.serving.json"


def write_manifest(
    name: str,
    key: str,
    session: OnnxSession | OpenVinoSession,
    *,
    verdicts: list[Path],
    depends: list[Path],
    speed_runs: list[str] | None,
) -> Path | None:
    """Record that ``name`` under ``key`` is served by ``session`` (its backend and file).

    Args:
        name, key: The model and its :func:`manifest_key`.
        session: The session the torch path chose.
        verdicts: The agreement files that must still pass at each read.
        depends: Files (verdicts) whose content must not change; missing ones are skipped.
        speed_runs: The runs of the ``speed.json`` measurement the choice came from (e.g.
            ``["onnxruntime", "openvino"]``), or None when it came from no measurement.

    Written only when every verdict exists and passes and the measurement (if any) is
    stored and picks ``session``'s runtime; atomically (temporary file, then rename).
    Returns the manifest's path, or None when it was not written.
    """
    backend = "openvino" if isinstance(session, OpenVinoSession) else "onnxruntime"
    if speed_runs is not None:
        speeds = backend_selection.read_speed(session.path, speed_runs)
        if speeds is None or backend_selection.faster_runtime(speeds) != backend:
            return None
    for verdict in verdicts:
        agreement = onnx_backend._read_agreement(verdict)
        if agreement is None or not agreement.passes():
            logger.info("no serving manifest for %r: verdict %s missing or not passing", name, verdict)
            return None
    path = manifest_path(name, key)
    record = {
        "format": _MANIFEST_FORMAT,
        "key": key,
        "model": name,
        "backend": backend,
        "precision": getattr(session, "precision", "fp32"),
        "onnx_file": session.path.name,
        "onnx_size": session.path.stat().st_size,
        "input_shape": list(session.input_shape),
        "verdicts": [v.name for v in verdicts],
        "depends": {d.name: _sha256(d) for d in depends if d.exists()},
        "speed_runs": speed_runs,
        "written_at": time.time(),
    }
    with contextlib.suppress(OSError):
        onnx_backend._write_atomically(path, json.dumps(record, indent=1).encode())
        return path
    return None


def open_cached(
    name: str,
    key: str,
    *,
    input_shape: tuple[int, int, int],
    intra_op_threads: int | None,
    streams: int | None,
) -> CachedSession | None:
    """The session the manifest of ``name`` under ``key`` names, opened on the CPU, or None
    when there is no usable manifest (the rules are in the module docstring; the reason
    is logged at INFO, or WARNING when the session fails to open).

    Args:
        name: The built-in model's name.
        key: :func:`manifest_key` of the request.
        input_shape: ``(C, H, W)`` the model takes; must equal the manifest's.
        intra_op_threads, streams: As for :func:`models.load_model` (the session's layout;
            :func:`models.onnx_backend.stream_layout` for ONNX Runtime, infer requests and
            threads for OpenVINO as :func:`models.backend_selection.open_session` sets them).
    """
    path = manifest_path(name, key)
    try:
        record = json.loads(path.read_text())
        backend = record["backend"]
        onnx_file = path.parent / str(record["onnx_file"])
        verdict_files = [path.parent / str(v) for v in record["verdicts"]]
        ok = (
            record["format"] == _MANIFEST_FORMAT
            and record["key"] == key
            and backend in ("onnxruntime", "openvino")
            and record["precision"] == "fp32"
            and tuple(record["input_shape"]) == input_shape
            and onnx_file.stat().st_size == record["onnx_size"]
            and bool(verdict_files)
            and all(_sha256(path.parent / d) == h for d, h in dict(record["depends"]).items())
        )
        speed_runs = record["speed_runs"]
        if ok and speed_runs is not None:
            speeds = backend_selection.read_speed(onnx_file, list(speed_runs))
            ok = speeds is not None and backend_selection.faster_runtime(speeds) == backend
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not ok:
        logger.info("serving manifest %s does not match this request; loading with torch", path.name)
        return None
    agreements: list[Agreement] = []
    for verdict in verdict_files:
        agreement = onnx_backend._read_agreement(verdict)
        if agreement is None or not agreement.passes():
            logger.info(
                "serving manifest %s: verdict %s missing or not passing; loading with torch",
                path.name,
                verdict.name,
            )
            return None
        agreements.append(agreement)
    try:
        session: OnnxSession | OpenVinoSession
        if backend == "onnxruntime":
            ort = onnx_backend._import_onnxruntime()
            if ort is None:
                return None
            n_streams, threads = onnx_backend.stream_layout("cpu", intra_op_threads, streams)
            session = OnnxSession(
                ort,
                onnx_file,
                input_shape=input_shape,
                device="cpu",
                intra_op_threads=threads,
                streams=n_streams,
            )
        else:
            ov = openvino_backend.import_openvino()
            if ov is None:
                return None
            ov_threads = intra_op_threads * (streams or 1) if intra_op_threads is not None else None
            session = OpenVinoSession(
                ov, onnx_file, input_shape=input_shape, requests=streams, threads=ov_threads
            )
    except Exception as e:
        logger.warning("cached model %s cannot be opened (%r); loading %r with torch", onnx_file, e, name)
        return None
    session.agreement = agreements[-1]  # the chosen runtime's own check is listed last
    logger.info("model %r on %s from the export cache (%s)", name, backend, agreements[-1].describe())
    return CachedSession(session, backend, path)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return ""


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "_-." else "_" for c in name)[:48]
