"""OpenVINO inference on the ONNX file that :mod:`models.onnx_backend` exports.

OpenVINO (https://docs.openvino.ai) reads the same ``.onnx`` file as ONNX Runtime; nothing
is exported again. The file is compiled once per process and session for the ``"CPU"``
device with the ``THROUGHPUT`` performance hint (the plugin chooses as many "streams",
independent groups of cores, as suit the CPU, one per core on a small machine) and the
inference precision asked for (``INFERENCE_PRECISION_HINT``: ``f32``, or ``bf16`` on CPUs
with AMX or AVX512-BF16; OpenVINO would otherwise pick bf16 on its own on such CPUs, so
fp32 is asked for explicitly). The compiled blob is kept in OpenVINO's model cache
(``CACHE_DIR``: ``openvino-blobs/`` beside the ``.onnx`` file), so a later start imports
it instead of compiling again. An int8 model is a separate file, quantized from the fp32
one by :mod:`models.quantization`, compiled the same way.

A batch is split into as many contiguous shards as the compiled model has optimal infer
requests (``OPTIMAL_NUMBER_OF_INFER_REQUESTS``, the number of streams) and the shards run
on an :class:`openvino.AsyncInferQueue` of that many requests, so every stream works on
its own shard at once with no per-operator fork/join across cores (the layout
:mod:`models.onnx_backend` builds by hand with one single-threaded ONNX Runtime session
per core).

Nothing here imports openvino (or torch) at import time.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from .errors import ModelError

if TYPE_CHECKING:
    import torch

__all__ = [
    "Precision",
    "OpenVinoSession",
    "cpu_flags",
    "cpu_model_name",
    "import_openvino",
    "precision_support",
]

logger = logging.getLogger(__name__)

Precision = Literal["fp32", "bf16", "int8", "auto"]

#: CPU flags (as ``/proc/cpuinfo`` names them) with which OpenVINO's CPU plugin runs bf16
#: natively: AMX tiles or the AVX512-BF16 dot products (OpenVINO's documentation,
#: "CPU Device: Supported Inference Data Types").
BF16_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})
#: CPU flags with int8 dot-product instructions (VNNI or AMX-INT8). Without them int8
#: kernels multiply in pairs of AVX2 instructions and are rarely faster than fp32.
INT8_FLAGS = frozenset({"amx_int8", "avx512_vnni", "avx_vnni"})

_CPU_FLAGS_ENV = "BUILDFLOW_CPU_FLAGS"
_OV_PRECISION = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}


def cpu_flags() -> frozenset[str]:
    """The instruction-set flags of this CPU, lower case, as ``/proc/cpuinfo`` lists them.

    ``$BUILDFLOW_CPU_FLAGS`` (comma- or space-separated, may be empty) replaces what the
    CPU reports: e.g. ``BUILDFLOW_CPU_FLAGS=avx2`` makes an AMX machine behave as one
    without bf16 or int8 instructions. Where ``/proc/cpuinfo`` cannot be read (not Linux)
    the set is empty, so reduced precisions fall back to fp32.
    """
    forced = os.environ.get(_CPU_FLAGS_ENV)
    if forced is not None:
        return frozenset(f.lower() for f in forced.replace(",", " ").split())
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.lower().split())
    return frozenset()


def cpu_model_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``'s ``model name``, else ``platform.processor()``),
    followed by a short hash of :func:`cpu_flags`, so two VMs of the same model that expose
    different instructions are told apart. Keys the cached speed measurements."""
    import hashlib
    import platform

    name = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                name = value.strip()
                break
    except OSError:
        pass
    name = name or platform.processor() or platform.machine() or "unknown-cpu"
    flags = hashlib.sha256(" ".join(sorted(cpu_flags())).encode()).hexdigest()[:8]
    return f"{name} [{flags}]"


def precision_support(precision: Literal["fp32", "bf16", "int8"]) -> str | None:
    """None when this CPU runs ``precision`` natively; else the reason it does not (for
    the fallback warning)."""
    if precision == "fp32":
        return None
    flags = cpu_flags()
    needed = BF16_FLAGS if precision == "bf16" else INT8_FLAGS
    if flags & needed:
        return None
    return (
        f"this CPU has none of the {precision} instructions OpenVINO needs "
        f"({', '.join(sorted(needed))}; from /proc/cpuinfo or ${_CPU_FLAGS_ENV})"
    )


def import_openvino() -> ModuleType | None:
    """The ``openvino`` module, or None when it is not installed (tests replace this)."""
    try:
        import openvino
    except ImportError:
        return None
    module: ModuleType = openvino
    return module


_CORES: dict[int, Any] = {}
_CORES_LOCK = threading.Lock()


def _core(ov: ModuleType) -> Any:
    """One ``openvino.Core`` per process (it owns the plugins and their thread pools)."""
    with _CORES_LOCK:
        core = _CORES.get(id(ov))
        if core is None:
            core = _CORES[id(ov)] = ov.Core()
        return core


class OpenVinoSession:
    """One OpenVINO compiled model over an ``.onnx`` file (thread-safe: calls are
    serialised; each call keeps every stream busy).

    Attributes:
        path: The ``.onnx`` file compiled (for int8: the quantized file).
        input_shape: ``(C, H, W)`` the graph takes (the batch axis is free).
        precision: ``"fp32"``, ``"bf16"`` (inference precision hint) or ``"int8"`` (a
            quantized file).
        requests: Infer requests in the queue, the plugin's optimal number for the
            ``THROUGHPUT`` hint (its stream count) unless ``requests`` was given.
        streams: ``NUM_STREAMS`` the plugin chose.
        threads: ``INFERENCE_NUM_THREADS`` the plugin uses in all.
        inference_precision: The precision the plugin reports it computes in (e.g.
            ``"<Type: 'float32'>"``; it silently keeps f32 where bf16 is not supported).
        providers: ``["OpenVINO CPU"]``, for messages (same attribute as
            :class:`models.onnx_backend.OnnxSession`).
        exported: Always False (OpenVINO never exports; the ONNX session did).
        agreement: Set by the caller: the check against torch on the packaged photos.
    """

    def __init__(
        self,
        ov: ModuleType,
        path: Path,
        *,
        input_shape: tuple[int, int, int],
        precision: Literal["fp32", "bf16", "int8"] = "fp32",
        requests: int | None = None,
        threads: int | None = None,
    ) -> None:
        if requests is not None and requests < 1:
            raise ValueError(f"requests must be at least 1, got {requests!r}")
        config: dict[str, Any] = {
            "PERFORMANCE_HINT": "THROUGHPUT",
            "INFERENCE_PRECISION_HINT": _OV_PRECISION[precision],
        }
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = threads
        if requests is not None:
            config["NUM_STREAMS"] = requests
        # OpenVINO's model cache: the compiled blob, keyed by OpenVINO on the model, the
        # config and the device, is stored beside the .onnx file and imported by later
        # starts (measured on 2 cores: compile 0.20 s -> 0.11 s for EfficientNet-Lite0).
        config["CACHE_DIR"] = str(path.parent / "openvino-blobs")
        self._compiled: Any = _core(ov).compile_model(str(path), "CPU", config)
        optimal = int(self._compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        self.path = path
        self.input_shape = input_shape
        self.precision = precision
        self.requests = requests or max(1, optimal)
        self.streams = int(self._compiled.get_property("NUM_STREAMS"))
        self.threads = int(self._compiled.get_property("INFERENCE_NUM_THREADS"))
        self.inference_precision = str(self._compiled.get_property("INFERENCE_PRECISION_HINT"))
        if precision == "bf16" and "bf16" not in self.inference_precision:
            logger.warning(
                "OpenVINO compiled %s in %s although bf16 was asked for: the CPU plugin found no "
                "bf16 support on this CPU",
                path.name,
                self.inference_precision,
            )
        self.providers = ["OpenVINO CPU"]
        self.exported = False
        self.agreement: Any = None
        self._queue: Any = ov.AsyncInferQueue(self._compiled, self.requests)
        self._queue.set_callback(_store_output)
        self._lock = threading.Lock()

    def run(self, array: np.ndarray) -> np.ndarray:
        """Logits of a float32 array ``(N, C, H, W)``, ``N >= 1``, as float32 ``(N, classes)``.

        Raises:
            ValueError: Wrong shape, or an empty batch.
        """
        if array.ndim != 4 or tuple(array.shape[1:]) != self.input_shape:
            raise ValueError(
                f"the OpenVINO backend takes (N, {', '.join(map(str, self.input_shape))}) "
                f"batches (the exported input size), got shape {tuple(array.shape)}; "
                "preprocess images with the classifier's preprocessing"
            )
        if array.shape[0] == 0:
            raise ValueError("batch is empty: need at least one image")
        array = np.ascontiguousarray(array, dtype=np.float32)
        shards = np.array_split(array, min(self.requests, array.shape[0]))
        outputs: list[np.ndarray | None] = [None] * len(shards)
        with self._lock:
            for i, shard in enumerate(shards):
                # share_inputs=False copies the shard into the request's own tensor.
                self._queue.start_async({0: shard}, (outputs, i), share_inputs=False)
            self._queue.wait_all()
        missing = [i for i, out in enumerate(outputs) if out is None]
        if missing:
            raise ModelError(f"OpenVINO returned no output for shards {missing} of {len(shards)}")
        return np.concatenate(outputs)  # type: ignore[arg-type]

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """:meth:`run` on a torch batch (any device, any memory format), as a float32 CPU
        tensor; the interface of :meth:`models.onnx_backend.OnnxSession.logits`."""
        import torch

        array = batch.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(self.run(array))


def _store_output(request: Any, userdata: tuple[list[np.ndarray | None], int]) -> None:
    outputs, index = userdata
    outputs[index] = np.array(request.get_output_tensor(0).data, dtype=np.float32, copy=True)
