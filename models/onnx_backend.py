"""Inference backends: torch eager, or ONNX Runtime on a model exported once and cached.

:func:`models.load_model` picks the backend (``backend="auto" | "torch" | "onnxruntime"``)
and calls :func:`open_onnx_session` for the ONNX Runtime one. The first time a model is
asked for on ONNX Runtime, it is exported with the TorchScript exporter of torch
(``torch.onnx.export(..., dynamo=False, opset_version=18)``: needs no package beyond torch;
the dynamo exporter would need ``onnxscript``), input ``(batch, C, crop, crop)`` with a
dynamic batch axis, into the cache folder (:func:`cache_dir`). The file name holds a hash
of everything the graph depends on (:func:`cache_key`), so a changed checkpoint exports
again; the file is written under a temporary name and renamed into place, under a
per-file lock, so processes that start together export once and never read a partial file.

Right after the export the exported model is checked against torch on the real photos
packaged with the project (:func:`models.samples.sample_photos`: scikit-image's photos and
Debian's darknet JPEGs): the top-1 class must agree on every photo and the softmax
probabilities differ by less than :data:`AGREEMENT_MAX_ABS_DIFF`. The measurement is
stored beside the ``.onnx`` file (``.agreement.json``, with the export time and the
versions), so it runs once per exported model, not at every start. ``backend="auto"``
uses ONNX Runtime only when that check passes; otherwise it logs a warning with the
measured difference and stays on torch.

Speed: ``python -m benchmarks.backends`` measures both backends, images/s by batch size.

Threads and streams: a batch is split into ``streams`` contiguous shards that run at once,
each a ``session.run`` on its own thread with ``intra_op_threads`` threads (one inter-op
thread). On the CPU the default is one stream per core (:func:`default_threads`) with
one thread each: independent single-threaded runs, the CPU plugin's "throughput streams" of
OpenVINO, have no per-operator fork/join between cores, so a decode thread that takes a core
for a moment delays one shard instead of stalling every parallel loop of the pass. Passing
``intra_op_threads`` alone gives one stream with that many threads, the layout for latency
at batch 1. Workers do not spin-wait after a run (``session.intra_op.allow_spinning = 0``):
spinning workers would keep the cores busy while the next micro-batch is being decoded.
Denormal floats are flushed to zero, as ``torch.set_flush_denormal(True)`` does on the torch
path.

Nothing here imports onnxruntime or torch at import time; torch is imported by what needs
it (the export, :func:`cache_key`, the agreement check, :meth:`OnnxSession.logits`), never
by :meth:`OnnxSession.run_array` or :func:`stream_layout`.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import importlib.metadata
import json
import logging
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from .errors import ModelError
from .preprocessing import Preprocessing, decode_image

if TYPE_CHECKING:
    import torch

__all__ = [
    "AGREEMENT_MAX_ABS_DIFF",
    "Agreement",
    "Backend",
    "OnnxSession",
    "cache_dir",
    "cache_key",
    "check_agreement",
    "open_onnx_session",
    "stream_layout",
]

logger = logging.getLogger(__name__)

Backend = Literal["auto", "torch", "onnxruntime"]

#: Largest ``max |p_onnx - p_torch|`` (softmax probabilities) for which "auto" picks ONNX
#: Runtime. Measured with torch 2.14.1 / onnxruntime 1.31.1 on the packaged photos:
#: EfficientNet-Lite0 ~1e-6, a random-initialised MobileNetV2 ~1e-8.
AGREEMENT_MAX_ABS_DIFF = 1e-3

OPSET_VERSION = 18
# Bump when the export or the agreement check changes, to invalidate every cached file.
_CACHE_FORMAT = 1
_INPUT_NAME = "input"
_OUTPUT_NAME = "logits"


def cache_dir() -> Path:
    """Folder of the exported models: ``$BUILDFLOW_CACHE_DIR/onnx`` when that variable is
    set, else ``$XDG_CACHE_HOME/buildflow/onnx``, else ``~/.cache/buildflow/onnx``.

    Not created here (the first export creates it).
    """
    root = os.environ.get("BUILDFLOW_CACHE_DIR")
    if root:
        return Path(root) / "onnx"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "buildflow" / "onnx"


def cache_key(module: torch.nn.Module, input_shape: tuple[int, ...], onnxruntime_version: str = "") -> str:
    """SHA-256 (hex) of what an exported graph depends on.

    Covers: every state_dict entry (name, dtype, shape and bytes, in the standard memory
    format, so channels-last weights hash like contiguous ones), the module's class and
    ``repr`` (its layer structure), the input shape ``(C, H, W)`` or ``(1, C, H, W)``, the
    torch, onnx (when installed) and onnxruntime versions, the opset and a cache format
    number. Changing any weight changes the key. (:func:`models.serving_cache.manifest_key`
    is the torch-free key that finds this file again; it covers the same inputs.)
    """
    import torch

    digest = hashlib.sha256()
    kind = type(module)
    header = {
        "format": _CACHE_FORMAT,
        "architecture": f"{kind.__module__}.{kind.__qualname__}",
        "input_shape": list(input_shape),
        "torch": torch.__version__,
        "onnx": _onnx_version(),
        "onnxruntime": onnxruntime_version,
        "opset": OPSET_VERSION,
    }
    digest.update(json.dumps(header, sort_keys=True).encode())
    digest.update(repr(module).encode())
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"\n{name}:{t.dtype}:{tuple(tensor.shape)}\n".encode())
        digest.update(t.view(torch.uint8).numpy().data)
    return digest.hexdigest()


@dataclass(frozen=True)
class Agreement:
    """How closely an exported model matches torch on the real photos.

    Attributes:
        photos: File names of the photos compared (e.g. ``"chelsea.jpg"``).
        top1_agree: Photos whose most probable class is the same on both backends.
        max_abs_diff: Largest ``|p_onnx - p_torch|`` over all photos and classes
            (softmax probabilities, 0..1).
    """

    photos: tuple[str, ...]
    top1_agree: int
    max_abs_diff: float

    def passes(self, tolerance: float | None = None) -> bool:
        """Top-1 equal on every photo and ``max_abs_diff < tolerance`` (default
        :data:`AGREEMENT_MAX_ABS_DIFF`, read at call time)."""
        limit = AGREEMENT_MAX_ABS_DIFF if tolerance is None else tolerance
        return len(self.photos) > 0 and self.top1_agree == len(self.photos) and self.max_abs_diff < limit

    def describe(self) -> str:
        """E.g. ``"top-1 agrees on 11/11 photos, max |p_onnx - p_torch| = 2.1e-06"``."""
        return (
            f"top-1 agrees on {self.top1_agree}/{len(self.photos)} photos, "
            f"max |p_onnx - p_torch| = {self.max_abs_diff:.2g}"
        )


class OnnxSession:
    """An ONNX Runtime session over one exported model (thread-safe: ``run`` may be called
    from several threads at once).

    Attributes:
        path: The ``.onnx`` file.
        input_shape: ``(C, H, W)`` the graph takes (the batch axis is free).
        providers: Execution providers in use, e.g. ``["CPUExecutionProvider"]``.
        intra_op_threads: Threads of one run (of one stream).
        streams: Shards a batch is split into, run at the same time (see the module
            docstring); a batch of ``N < streams`` images runs as ``N`` shards of one.
        exported: True when this load exported the file (False: taken from the cache).
        agreement: The check against torch stored with the file, or None when it could
            not run (no photos installed).
    """

    def __init__(
        self,
        ort: ModuleType,
        path: Path,
        *,
        input_shape: tuple[int, int, int],
        device: Literal["cpu", "cuda"],
        intra_op_threads: int,
        streams: int = 1,
    ) -> None:
        if streams < 1:
            raise ValueError(f"streams must be at least 1, got {streams!r}")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only: loading prints nothing
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.set_denormal_as_zero", "1")
        providers = ["CPUExecutionProvider"]
        if device == "cuda":
            providers.insert(0, "CUDAExecutionProvider")
        self._session: Any = ort.InferenceSession(str(path), options, providers=providers)
        self.path = path
        self.input_shape = input_shape
        self.providers: list[str] = list(self._session.get_providers())
        self.intra_op_threads = intra_op_threads
        self.streams = streams
        # The caller's thread runs the first shard; the others run on this pool.
        self._pool = (
            concurrent.futures.ThreadPoolExecutor(streams - 1, thread_name_prefix="onnx-stream")
            if streams > 1
            else None
        )
        self.exported = False
        self.agreement: Agreement | None = None

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """Logits of a float32 batch ``(N, C, H, W)`` (``(C, H, W) == input_shape``; any
        device, any memory format) as a float32 CPU tensor ``(N, classes)``.

        Raises:
            ValueError: The batch's ``(C, H, W)`` is not :attr:`input_shape`.
        """
        import torch

        if tuple(batch.shape[1:]) != self.input_shape:
            raise ValueError(
                f"the ONNX Runtime backend takes (N, {', '.join(map(str, self.input_shape))}) "
                f"batches (the exported input size), got shape {tuple(batch.shape)}; "
                "preprocess images with the classifier's preprocessing"
            )
        return torch.from_numpy(self.run_array(batch.detach().to("cpu", torch.float32).contiguous().numpy()))

    def run_array(self, array: np.ndarray) -> np.ndarray:
        """:meth:`logits` of a float32 NumPy batch ``(N, C, H, W)``, as float32 ``(N, classes)``
        (the interface of :meth:`models.openvino_backend.OpenVinoSession.run`).

        Raises:
            ValueError: The batch is empty or its ``(C, H, W)`` is not :attr:`input_shape`.
        """
        if array.ndim != 4 or tuple(array.shape[1:]) != self.input_shape:
            raise ValueError(
                f"the ONNX Runtime backend takes (N, {', '.join(map(str, self.input_shape))}) "
                f"batches (the exported input size), got shape {tuple(array.shape)}"
            )
        if array.shape[0] == 0:
            raise ValueError("batch is empty: need at least one image")
        array = np.ascontiguousarray(array, dtype=np.float32)
        if self._pool is None or array.shape[0] == 1:
            return self._run(array)
        shards = np.array_split(array, min(self.streams, array.shape[0]))
        rest = [self._pool.submit(self._run, shard) for shard in shards[1:]]
        outs = [self._run(shards[0])] + [f.result() for f in rest]
        return np.concatenate(outs)

    def _run(self, array: np.ndarray) -> np.ndarray:
        (out,) = self._session.run([_OUTPUT_NAME], {_INPUT_NAME: array})
        result: np.ndarray = out
        return result


def _import_onnxruntime() -> ModuleType | None:
    """The ``onnxruntime`` module, or None when it is not installed (tests replace this)."""
    try:
        import onnxruntime
    except ImportError:
        return None
    module: ModuleType = onnxruntime
    return module


def _onnx_version() -> str:
    """The installed onnx version, from its package metadata ("" when not installed):
    importing onnx only for its version would cost about 1 s at every model load."""
    try:
        return importlib.metadata.version("onnx")
    except importlib.metadata.PackageNotFoundError:
        return ""


def open_onnx_session(
    name: str,
    module: torch.nn.Module,
    preprocessing: Preprocessing,
    *,
    backend: Backend,
    device: Literal["cpu", "cuda"],
    intra_op_threads: int | None,
    auto_eligible: bool,
    streams: int | None = None,
) -> OnnxSession | None:
    """The ONNX Runtime session :func:`models.load_model` should use, or None for torch.

    Args:
        name: Model name, for messages and the cache file name.
        module: The loaded module, in eval mode, on ``device``.
        preprocessing: Its preprocessing (input size; preprocesses the check's photos).
        backend: ``"torch"`` returns None at once. ``"onnxruntime"`` exports (or reuses
            the cached export) and returns its session; a failed agreement check only
            logs a warning. ``"auto"`` returns the session only when onnxruntime is
            installed, the model is ``auto_eligible`` and the stored agreement check
            passes; otherwise it logs why (a warning) and returns None.
        device: ``"cuda"`` needs onnxruntime's ``CUDAExecutionProvider`` (package
            ``onnxruntime-gpu``).
        intra_op_threads: Threads of one run (of each stream); see :func:`stream_layout`.
        auto_eligible: Whether ``"auto"`` may pick ONNX Runtime for this model (the
            built-in architectures; custom factories and checkpoints stay on torch unless
            ``"onnxruntime"`` is asked for).
        streams: Shards a batch runs as, at the same time; see :func:`stream_layout`.

    Raises:
        ModelError: ``backend="onnxruntime"`` and onnxruntime is not installed, has no
            CUDA provider for ``device="cuda"``, or the export fails; ``intra_op_threads``
            or ``streams`` below 1; unknown ``backend``.
    """
    if backend not in ("auto", "torch", "onnxruntime"):
        raise ModelError(f"unknown backend {backend!r}; use 'auto', 'torch' or 'onnxruntime'")
    streams, threads = stream_layout(device, intra_op_threads, streams)
    if backend == "torch" or (backend == "auto" and not auto_eligible):
        return None
    explicit = backend == "onnxruntime"
    ort = _import_onnxruntime()
    if ort is None:
        if explicit:
            raise ModelError(
                f"backend 'onnxruntime' for model {name!r} needs the onnxruntime package; "
                "run pip install onnxruntime onnx to fix it, or pass backend='torch'"
            )
        logger.warning(
            "model %r runs on torch: onnxruntime is not installed (pip install onnxruntime onnx "
            "makes CPU inference several times faster)",
            name,
        )
        return None
    if device == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
        if explicit:
            raise ModelError(
                f"backend 'onnxruntime' with device 'cuda' needs onnxruntime's CUDAExecutionProvider "
                f"(available: {', '.join(ort.get_available_providers())}); run pip install "
                "onnxruntime-gpu to fix it, or pass backend='torch'"
            )
        logger.info("model %r runs on torch: onnxruntime has no CUDAExecutionProvider here", name)
        return None
    try:
        session = _cached_session(
            name, module, preprocessing, ort, device=device, threads=threads, streams=streams
        )
    except Exception as e:
        if explicit:
            if isinstance(e, ModelError):
                raise
            raise ModelError(f"exporting model {name!r} to ONNX failed: {e!r}; pass backend='torch'") from e
        logger.warning("model %r runs on torch: exporting it to ONNX failed: %r", name, e)
        return None
    agreement = session.agreement
    if agreement is None:
        reason = (
            "no real photos to check it on (install scikit-image, or Debian's darknet "
            "package, so the check can run)"
        )
        if explicit:
            logger.warning("model %r on onnxruntime without the agreement check: %s", name, reason)
            return session
        logger.warning("model %r runs on torch: onnxruntime not checked against torch: %s", name, reason)
        return None
    if not agreement.passes():
        message = (
            "onnxruntime does not agree with torch on the real photos: %s (need top-1 equal on every "
            "photo and a difference below %.1g)"
        )
        if explicit:
            logger.warning(
                "model %r on onnxruntime although " + message,
                name,
                agreement.describe(),
                AGREEMENT_MAX_ABS_DIFF,
            )
            return session
        logger.warning(
            "model %r runs on torch: " + message, name, agreement.describe(), AGREEMENT_MAX_ABS_DIFF
        )
        return None
    logger.info("model %r on onnxruntime (%s; %s)", name, session.path.name, agreement.describe())
    return session


def stream_layout(
    device: Literal["cpu", "cuda"], intra_op_threads: int | None, streams: int | None
) -> tuple[int, int]:
    """``(streams, intra_op_threads)`` of an ONNX Runtime session from what was asked for.

    ``cores`` is :func:`default_threads` (the cores torch would use). Neither given: on
    the CPU ``(cores, 1)``, one single-threaded stream per core (the throughput layout;
    see the module docstring); on CUDA ``(1, cores)``, the GPU runs the graph. Only
    ``intra_op_threads``: ``(1, intra_op_threads)``. Only ``streams``:
    ``(streams, max(1, cores // streams))``. Both: as given.

    Raises:
        ModelError: ``intra_op_threads`` or ``streams`` is not a whole number >= 1.
    """
    for what, value in (("intra_op_threads", intra_op_threads), ("streams", streams)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ModelError(f"{what} must be a whole number of at least 1, got {value!r}")
    cores = default_threads()
    if streams is None:
        if intra_op_threads is not None:
            return 1, intra_op_threads
        return (cores, 1) if device == "cpu" else (1, cores)
    return streams, intra_op_threads or max(1, cores // streams)


def default_threads() -> int:
    """The threads torch uses for one operator, without importing torch.

    ``torch.get_num_threads()`` when torch is already imported (so a process that called
    ``torch.set_num_threads`` keeps its choice); otherwise torch's own default, computed
    as torch 2.14 does on Linux (measured: ``OMP_NUM_THREADS=3`` on 2 cores gives 2,
    ``taskset -c 0`` gives 1): ``$OMP_NUM_THREADS`` (else ``$MKL_NUM_THREADS``), a
    positive integer, capped at the machine's physical cores; when neither is set, the
    physical cores among the CPUs this process may run on (``os.sched_getaffinity``).
    Physical cores are distinct ``physical id``/``core id`` pairs of ``/proc/cpuinfo``
    (the CPU count where that file has none). Always >= 1.
    """
    torch = sys.modules.get("torch")
    if torch is not None and hasattr(torch, "get_num_threads"):
        return int(torch.get_num_threads())
    cores = _physical_cores()
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        with contextlib.suppress(ValueError):
            value = int(os.environ.get(variable, ""))
            if value > 0:
                return min(value, len(set(cores.values())) or value)
    try:
        allowed = os.sched_getaffinity(0)
    except (AttributeError, OSError):
        allowed = set(cores)
    return len({cores[cpu] for cpu in allowed if cpu in cores}) or len(allowed) or os.cpu_count() or 1


def _physical_cores() -> dict[int, tuple[str, str]]:
    """Logical CPU number -> its ``(physical id, core id)`` from ``/proc/cpuinfo``
    (empty where the file has no such fields)."""
    cores: dict[int, tuple[str, str]] = {}
    processor: int | None = None
    physical = ""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "processor":
                processor, physical = int(value), ""
            elif key == "physical id":
                physical = value.strip()
            elif key == "core id" and processor is not None:
                cores[processor] = (physical, value.strip())
    return cores


def _cached_session(
    name: str,
    module: torch.nn.Module,
    preprocessing: Preprocessing,
    ort: ModuleType,
    *,
    device: Literal["cpu", "cuda"],
    threads: int,
    streams: int = 1,
) -> OnnxSession:
    """Export ``module`` unless cached, open its session, check it unless checked."""
    import torch

    side = preprocessing.crop_size
    input_shape = (preprocessing.channels, side, side)
    key = cache_key(module, input_shape, str(ort.__version__))
    folder = cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    stem = "".join(c if c.isalnum() or c in "_-." else "_" for c in name)[:48] + "-" + key[:24]
    onnx_path = folder / f"{stem}.onnx"
    verdict_path = folder / f"{stem}.agreement.json"
    export_s: float | None = None

    def export() -> None:
        nonlocal export_s
        t0 = time.perf_counter()
        _export_atomically(module, onnx_path, (1, *input_shape))
        export_s = time.perf_counter() - t0
        verdict_path.unlink(missing_ok=True)
        logger.info("exported model %r to %s in %.1f s", name, onnx_path, export_s)

    def open_session() -> OnnxSession:
        return OnnxSession(
            ort, onnx_path, input_shape=input_shape, device=device, intra_op_threads=threads, streams=streams
        )

    with _file_lock(folder / f"{stem}.lock"):
        if not onnx_path.exists():
            export()
        try:
            session = open_session()
        except Exception:
            if export_s is not None:
                raise
            # A damaged cache file (e.g. truncated by hand): export it again, once.
            logger.warning("cached ONNX file %s cannot be loaded; exporting %r again", onnx_path, name)
            export()
            session = open_session()
        agreement = _read_agreement(verdict_path)
        if agreement is None:
            agreement = check_agreement(module, session, preprocessing, device=device)
            if agreement is not None:
                record = asdict(agreement) | {
                    "passes": agreement.passes(),
                    "tolerance": AGREEMENT_MAX_ABS_DIFF,
                    "export_s": export_s,
                    "torch": torch.__version__,
                    "onnxruntime": str(ort.__version__),
                }
                _write_atomically(verdict_path, json.dumps(record, indent=1).encode())
    session.exported = export_s is not None
    session.agreement = agreement
    return session


def _export(module: torch.nn.Module, path: Path, input_shape: tuple[int, ...]) -> None:
    """``torch.onnx.export`` of ``module`` to ``path``: opset 18, input ``input``
    ``input_shape`` with a dynamic batch axis, output ``logits``."""
    import torch

    device = next((p.device for p in module.parameters()), torch.device("cpu"))
    dummy = torch.zeros(*input_shape, device=device)
    with warnings.catch_warnings():
        # The TorchScript exporter warns that it is deprecated and about constant folding.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (dummy,),
            str(path),
            input_names=[_INPUT_NAME],
            output_names=[_OUTPUT_NAME],
            dynamic_axes={_INPUT_NAME: {0: "batch"}, _OUTPUT_NAME: {0: "batch"}},
            opset_version=OPSET_VERSION,
            do_constant_folding=True,
            dynamo=False,
        )


def _export_atomically(module: torch.nn.Module, path: Path, input_shape: tuple[int, ...]) -> None:
    """Export into a temporary file beside ``path``, check it (with onnx, when installed),
    then rename it to ``path`` (atomic on one file system)."""
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        _export(module, tmp, input_shape)
        with contextlib.suppress(ImportError):
            import onnx

            onnx.checker.check_model(str(tmp))
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; the cache may be shared
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_atomically(path: Path, data: bytes) -> None:
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, path)
    finally:
        Path(tmp_name).unlink(missing_ok=True)


def _read_agreement(path: Path) -> Agreement | None:
    try:
        raw = json.loads(path.read_text())
        return Agreement(tuple(raw["photos"]), int(raw["top1_agree"]), float(raw["max_abs_diff"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Exclusive ``flock`` on ``path`` (POSIX); elsewhere no lock (the rename still keeps
    files whole, two processes may just both export)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(path, "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _real_photos() -> dict[str, bytes]:
    """The packaged real photos (see :mod:`models.samples`); darknet's alone when
    scikit-image is not installed; ``{}`` when neither is."""
    from .samples import DARKNET_DIR, sample_photos

    try:
        return sample_photos()
    except ImportError:
        return {p.name: p.read_bytes() for p in sorted(DARKNET_DIR.glob("*.jpg"))}


def check_agreement(
    module: torch.nn.Module,
    session: OnnxSession,
    preprocessing: Preprocessing,
    *,
    device: Literal["cpu", "cuda"] = "cpu",
) -> Agreement | None:
    """Compare ``session`` with ``module`` on the packaged real photos.

    Each photo is decoded (:func:`models.decode_image`) and preprocessed with
    ``preprocessing``; all go through both backends as one batch; softmax probabilities
    are compared.

    Returns:
        The :class:`Agreement`, or None when no photo is installed.
    """
    import torch

    images = {}
    for photo, data in _real_photos().items():
        with contextlib.suppress(ValueError):
            images[photo] = decode_image(data, target_short_side=preprocessing.resize_short_side)
    if not images:
        return None
    batch = preprocessing.batch(list(images.values()))
    torch.set_flush_denormal(True)
    with torch.inference_mode():
        p_torch = torch.softmax(module(batch.to(device)).float(), dim=1).cpu()
    p_onnx = torch.softmax(session.logits(batch).float(), dim=1)
    top1 = int((p_torch.argmax(dim=1) == p_onnx.argmax(dim=1)).sum())
    diff = float((p_torch - p_onnx).abs().max())
    return Agreement(tuple(images), top1, diff)
