"""A loaded image classifier and its results: :class:`ImageClassifier` (preprocess, run,
rank) and :class:`Prediction`, with the type names of devices and backends.

Made by :func:`models.load_model` and :func:`models.load_checkpoint` (:mod:`models.registry`);
nothing here builds, exports or loads a model. Inference runs on the classifier's backend:
torch eager (imported when used) or a session over the exported ONNX file (ONNX Runtime or
OpenVINO, NumPy in and out, no torch).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, overload

import numpy as np
from PIL import Image

from .errors import ModelError
from .onnx_backend import OnnxSession
from .preprocessing import Preprocessing

if TYPE_CHECKING:
    import torch

    from .backend_selection import Session

__all__ = ["ActiveBackend", "Backend", "Device", "ImageClassifier", "Prediction"]

_LAZY_MODULE_LOCK = threading.Lock()
"""Serialises the first build of a cache-served classifier's module."""

Device = Literal["cpu", "cuda"]
Backend = Literal["auto", "torch", "onnxruntime", "openvino"]
ActiveBackend = Literal["torch", "onnxruntime", "openvino"]


@dataclass(frozen=True)
class Prediction:
    """One class of a top-k result.

    Attributes:
        label: Class name, ``labels[index]``.
        confidence: Softmax probability of the class, 0..1.
        index: Class index in the model's output.
    """

    label: str
    confidence: float
    index: int


@dataclass(frozen=True, eq=False)
class ImageClassifier:
    """A loaded classifier: module, class names and the preprocessing it expects.

    Made by :func:`load_model`, which checks that ``labels`` has one name per output
    class. Inference is thread-safe (the module is only run, never changed; an ONNX
    Runtime session may run from several threads).

    Attributes:
        name: Registry name the model was loaded as.
        module: The ``torch.nn.Module``, in eval mode, on ``device``; maps a float32
            ``(N, C, H, W)`` batch (``C = preprocessing.channels``: 3, or 1 for a
            grayscale model) to logits ``(N, len(labels))``. When the classifier was
            served from the export cache without torch (:mod:`models.serving_cache`), the
            module is built on first access (importing torch; the same module
            ``load_model(..., backend="torch")`` builds) and inference never needs it;
            :attr:`module_loaded` says whether it exists yet.
        labels: Class names in output-index order.
        preprocessing: How images must be prepared for ``module``.
        device: ``"cpu"`` or ``"cuda"``.
        load_latency_ms: Wall time of the :func:`load_model` call that made it (imports,
            build, weight loading, move to ``device``, one warm-up forward pass; the ONNX
            export and its agreement check when they ran), in milliseconds.
        backend: What :meth:`predict_proba` runs: ``"torch"`` (``module``, eager),
            ``"onnxruntime"`` or ``"openvino"`` (``onnx_session``, exported from ``module``).
        onnx_session: The session over the exported file when ``backend`` is not
            ``"torch"``: a :class:`models.onnx_backend.OnnxSession` (its ``path``,
            ``providers``, ``intra_op_threads``, ``streams`` and ``agreement`` with torch)
            or a :class:`models.openvino_backend.OpenVinoSession` (``path``, ``precision``,
            ``requests``, ``agreement``); else None.
        precision: What the session computes in: ``"fp32"``, ``"bf16"`` or ``"int8"``.
    """

    name: str
    module: torch.nn.Module = field(repr=False)
    labels: tuple[str, ...] = field(repr=False)
    preprocessing: Preprocessing
    device: Device
    load_latency_ms: float
    backend: ActiveBackend = "torch"
    onnx_session: Session | None = field(default=None, repr=False)
    precision: Literal["fp32", "bf16", "int8"] = "fp32"

    @property
    def module_loaded(self) -> bool:
        """Whether :attr:`module` exists (False only for a classifier served from the
        export cache whose module was never asked for: torch is then not imported)."""
        return "module" in self.__dict__

    if not TYPE_CHECKING:  # hidden from type checkers: other attributes stay checked

        def __getattr__(self, name: str) -> object:
            # Reached only for attributes not set: the module of a classifier served from
            # the export cache, built now from the build function kept for it.
            build = self.__dict__.get("_build_module") if name == "module" else None
            if build is None:
                raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
            with _LAZY_MODULE_LOCK:
                if "module" not in self.__dict__:
                    object.__setattr__(self, "module", build())
            return self.__dict__["module"]

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """Prepare one image: float32 tensor ``(C, crop, crop)``, RGB (or luma), normalised
        (imports torch; :meth:`preprocess_array` does not)."""
        return self.preprocessing(image)

    def preprocess_array(self, image: Image.Image) -> np.ndarray:
        """:meth:`preprocess` as a float32 NumPy array ``(C, crop, crop)``, equal bit for bit."""
        return self.preprocessing.array(image)

    def predict_proba(self, batch: torch.Tensor) -> torch.Tensor:
        """Class probabilities of a preprocessed batch.

        Runs on :attr:`backend`: the torch module under ``torch.inference_mode()``, or the
        ONNX Runtime session. Also sets ``torch.set_flush_denormal(True)`` on the calling
        thread (a per-thread CPU setting; see :func:`load_model`).

        Args:
            batch: Float32 tensor ``(N, C, H, W)`` from :attr:`preprocessing`
                (``C = preprocessing.channels``; any device; moved to :attr:`device`).
                On ONNX Runtime ``H = W = preprocessing.crop_size`` (the exported size)
                and ``N >= 1``.

        Returns:
            Float32 tensor ``(N, len(labels))`` on the CPU: softmax over the logits,
            each row sums to 1.

        Raises:
            ValueError: ``batch`` is not ``(N, C, H, W)`` (on ONNX Runtime: not
                ``(N, C, crop_size, crop_size)``, or empty).
            ModelError: The module does not return logits ``(N, len(labels))``.
        """
        import torch

        channels = self.preprocessing.channels
        if batch.ndim != 4 or batch.shape[1] != channels:
            raise ValueError(f"batch must be a (N, {channels}, H, W) tensor, got shape {tuple(batch.shape)}")
        torch.set_flush_denormal(True)
        if self.onnx_session is not None:
            logits = self.onnx_session.logits(batch)
        else:
            with torch.inference_mode():
                logits = self.module(batch.to(self.device))
        expected = (batch.shape[0], len(self.labels))
        if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != expected:
            got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise ModelError(f"model {self.name!r} returned {got}, expected logits of shape {expected}")
        return torch.softmax(logits.float(), dim=1).cpu()

    def predict_proba_array(self, batch: np.ndarray) -> np.ndarray:
        """:meth:`predict_proba` on NumPy: no torch on the ONNX Runtime and OpenVINO backends.

        Args:
            batch: Float32 array ``(N, C, crop_size, crop_size)``, ``N >= 1``, from
                :meth:`preprocess_array` (other float dtypes are converted).

        Returns:
            Float32 array ``(N, len(labels))``: softmax over the logits (computed in
            float32 as ``exp(x - max) / sum``), each row sums to 1.

        Raises:
            ValueError: ``batch`` is not ``(N, C, H, W)`` (on a session: not
                ``(N, C, crop_size, crop_size)``, or empty).
            ModelError: The model does not return logits ``(N, len(labels))``.
        """
        channels = self.preprocessing.channels
        if batch.ndim != 4 or batch.shape[1] != channels:
            raise ValueError(f"batch must be a (N, {channels}, H, W) array, got shape {tuple(batch.shape)}")
        if self.onnx_session is None:  # torch eager
            import torch

            return self.predict_proba(torch.from_numpy(np.ascontiguousarray(batch, np.float32))).numpy()
        session = self.onnx_session
        run = session.run_array if isinstance(session, OnnxSession) else session.run
        logits = run(np.ascontiguousarray(batch, dtype=np.float32))
        expected = (batch.shape[0], len(self.labels))
        if not isinstance(logits, np.ndarray) or logits.shape != expected:
            got = logits.shape if isinstance(logits, np.ndarray) else type(logits).__name__
            raise ModelError(f"model {self.name!r} returned {got}, expected logits of shape {expected}")
        return _softmax(logits)

    def top_k(self, probs: torch.Tensor | np.ndarray, k: int = 5) -> list[list[Prediction]]:
        """The ``k`` most probable classes of each row, most probable first.

        Ties are ordered by class index (stable sort), so results are deterministic.

        Args:
            probs: Tensor or NumPy array ``(N, len(labels))``, e.g. from
                :meth:`predict_proba` or :meth:`predict_proba_array`.
            k: Classes per row, at least 1; more than ``len(labels)`` gives all.

        Returns:
            ``N`` lists of ``min(k, len(labels))`` :class:`Prediction`.

        Raises:
            ValueError: ``probs`` has the wrong shape or ``k < 1``.
        """
        if probs.ndim != 2 or probs.shape[1] != len(self.labels):
            raise ValueError(f"probs must be (N, {len(self.labels)}), got shape {tuple(probs.shape)}")
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k!r}")
        array = probs if isinstance(probs, np.ndarray) else probs.detach().cpu().numpy()
        k = min(k, array.shape[1])
        indices = np.argsort(-array, axis=1, kind="stable")[:, :k]
        values = np.take_along_axis(array, indices, axis=1)
        return [
            [Prediction(self.labels[i], p, i) for p, i in zip(row_p, row_i)]
            for row_p, row_i in zip(values.tolist(), indices.tolist())
        ]

    @overload
    def classify(self, images: Image.Image, top_k: int = 5) -> list[Prediction]: ...

    @overload
    def classify(self, images: Sequence[Image.Image], top_k: int = 5) -> list[list[Prediction]]: ...

    def classify(
        self, images: Image.Image | Sequence[Image.Image], top_k: int = 5
    ) -> list[Prediction] | list[list[Prediction]]:
        """Preprocess, run and rank one image or a batch of images.

        Args:
            images: One PIL image, or a sequence of them (any size; RGB as
                :func:`models.decode_image` returns).
            top_k: Classes per image, at least 1.

        Returns:
            For one image, its list of ``top_k`` :class:`Prediction`, most probable first;
            for a sequence, one such list per image, in input order (``[]`` for none).

        Raises:
            ValueError: ``top_k < 1``.
            TypeError: ``images`` is neither a PIL image nor a sequence of them.
        """
        if isinstance(images, Image.Image):
            return self.classify([images], top_k=top_k)[0]
        if not isinstance(images, Sequence) or not all(isinstance(i, Image.Image) for i in images):
            raise TypeError(
                f"classify() takes a PIL image or a sequence of PIL images, got {type(images).__name__}; "
                "decode bytes first with models.decode_image(data)"
            )
        if len(images) == 0:
            return []
        batch = np.stack([self.preprocess_array(image) for image in images])
        return self.top_k(self.predict_proba_array(batch), k=top_k)


def _softmax(logits: np.ndarray) -> np.ndarray:
    """Row softmax of ``(N, classes)`` logits in float32: ``exp(x - max(x)) / sum``."""
    x = logits.astype(np.float32, copy=True)
    x -= x.max(axis=1, keepdims=True)
    np.exp(x, out=x)
    x /= x.sum(axis=1, keepdims=True)
    return x
