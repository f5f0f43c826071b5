"""The training configuration: a YAML or TOML file validated by pydantic models.

Every section forbids unknown keys, so a typo (``kernal_size``, ``epoch``) is an error that
names it instead of being ignored. Names of layers, optimizers and LR schedulers come from
allow-lists and their arguments are checked against the real ``torch`` signatures when the
file is loaded, before any data is read. A complete example, annotated, is
``models/training/configs/fashion_mnist_cnn.yaml``::

    name: fashion_mnist_cnn
    seed: 0
    data: {kind: fashion_mnist, val_fraction: 0.1}
    image: {size: 28, grayscale: true, mean: [0.286], std: [0.353]}
    augmentation: {hflip_p: 0.5}
    model:
      num_classes: 10
      layers:
        - {layer: Conv2d, args: {in_channels: 1, out_channels: 32, kernel_size: 3, padding: 1}}
        - {layer: ReLU}
        ...
    train:
      epochs: 10
      batch_size: 128
      optimizer: {name: AdamW, lr: 0.002, kwargs: {weight_decay: 0.05}}
      lr_schedulers: [{name: OneCycleLR, kwargs: {max_lr: 0.01}}]
      scheduler_interval: step
    output: {dir: runs/fashion_mnist_cnn}
"""

from __future__ import annotations

import inspect
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    ValidationError,
    field_validator,
    model_validator,
)

from models.errors import ModelError

__all__ = [
    "ConfigError",
    "apply_override",
    "LAYERS",
    "OPTIMIZERS",
    "SCHEDULERS",
    "FINETUNE_BASES",
    "FashionMNISTData",
    "FolderData",
    "ImageConfig",
    "AugmentationConfig",
    "LayerSpec",
    "FinetuneSpec",
    "ModelConfig",
    "OptimizerConfig",
    "SchedulerConfig",
    "TrainLoopConfig",
    "OutputConfig",
    "TrainingConfig",
    "load_config",
    "parse_config",
]


class ConfigError(ModelError):
    """A training configuration is invalid; the message names each bad key and value."""


# torch.nn layers a layer list may use (never an arbitrary importable name).
LAYERS = (
    "Conv2d",
    "BatchNorm1d",
    "BatchNorm2d",
    "GroupNorm",
    "LayerNorm",
    "ReLU",
    "ReLU6",
    "LeakyReLU",
    "ELU",
    "GELU",
    "SiLU",
    "Hardswish",
    "Mish",
    "Tanh",
    "Sigmoid",
    "MaxPool2d",
    "AvgPool2d",
    "AdaptiveAvgPool2d",
    "AdaptiveMaxPool2d",
    "ZeroPad2d",
    "Dropout",
    "Dropout2d",
    "Flatten",
    "Linear",
    "Identity",
)
OPTIMIZERS = ("SGD", "Adam", "AdamW", "RMSprop", "NAdam", "RAdam", "Adagrad")
SCHEDULERS = (
    "StepLR",
    "MultiStepLR",
    "ExponentialLR",
    "CosineAnnealingLR",
    "CosineAnnealingWarmRestarts",
    "LinearLR",
    "ConstantLR",
    "PolynomialLR",
    "OneCycleLR",
)
# Registry models that can be fine-tuned (their weights: see models.registry.load_model).
FINETUNE_BASES = ("efficientnet_lite0", "mobilenet_v2", "resnet50", "vgg16")
# Constructor arguments the trainer sets itself: never from the file.
_RESERVED = {"params", "optimizer", "lr", "last_epoch", "device", "dtype", "verbose"}
# Scheduler arguments filled in when absent: the length of the schedule in its intervals.
AUTO_SCHEDULER_KWARGS = {"OneCycleLR": ("total_steps", "max_lr"), "CosineAnnealingLR": ("T_max",)}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FashionMNISTData(_Section):
    """Fashion-MNIST from its original IDX files (Debian's ``dataset-fashion-mnist``).

    Training and validation come from the 60k training images (a stratified split);
    the final report is on the 10k test images.
    """

    kind: Literal["fashion_mnist"]
    root: str | None = Field(None, description="folder of the IDX files (default: Debian's)")
    train_limit: int | None = Field(None, ge=10, description="use only the first N training images")
    test_limit: int | None = Field(None, ge=1, description="report on only the first N test images")
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    split_seed: int | None = Field(None, description="seed of the train/validation split (default: seed)")


class FolderData(_Section):
    """A folder per class (``path/<class>/*.jpg``), local or ``gs://bucket/prefix``."""

    kind: Literal["folder"]
    path: str
    test_path: str | None = Field(None, description="a folder per class for the final report")
    val_fraction: float = Field(0.2, ge=0.0, lt=1.0)
    split_seed: int | None = None


class ImageConfig(_Section):
    """Model input: ``size`` x ``size`` pixels (resize short side, centre crop), 1 or 3
    channels, normalised ``(pixel / 255 - mean) / std``."""

    size: int = Field(ge=8, le=1024)
    grayscale: bool = False
    mean: tuple[float, ...] | None = Field(None, description="per channel, 0..1 scale")
    std: tuple[float, ...] | None = None

    @model_validator(mode="after")
    def _channels(self) -> ImageConfig:
        channels = 1 if self.grayscale else 3
        for key in ("mean", "std"):
            value = getattr(self, key)
            if value is not None and len(value) != channels:
                raise ValueError(
                    f"{key} has {len(value)} values, but grayscale={self.grayscale} images have "
                    f"{channels} channel(s): give {channels}"
                )
        if self.std is not None and min(self.std) <= 0:
            raise ValueError(f"std values must be positive, got {list(self.std)}")
        if (self.mean is None) != (self.std is None):
            raise ValueError("give both mean and std, or neither")
        return self


class AugmentationConfig(_Section):
    """Random flips of training images (never of validation or test images)."""

    hflip_p: float = Field(0.0, ge=0.0, le=1.0, description="probability of a horizontal flip")
    vflip_p: float = Field(0.0, ge=0.0, le=1.0, description="probability of a vertical flip")


def _check_kwargs(kind: str, name: str, cls: Any, kwargs: dict[str, Any], fixed: tuple[str, ...]) -> None:
    """Raise ValueError if ``kwargs`` are not keyword arguments of ``cls`` (naming them)."""
    params = inspect.signature(cls).parameters
    valid = [p for p in params if p not in _RESERVED and p not in ("self", "args", "kwargs")]
    for key in kwargs:
        if key in _RESERVED:
            raise ValueError(f"{kind} {name}: argument {key!r} is set by the trainer; remove it")
        if key not in valid:
            raise ValueError(f"{kind} {name} has no argument {key!r}; its arguments: {', '.join(valid)}")
    missing = [
        p
        for p, spec in params.items()
        if spec.default is inspect.Parameter.empty
        and spec.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        and p not in kwargs
        and p not in _RESERVED
        and p not in fixed
    ]
    if missing:
        raise ValueError(f"{kind} {name} needs argument(s) {', '.join(repr(m) for m in missing)}")


class LayerSpec(_Section):
    """One ``torch.nn`` layer of a layer list: ``{layer: Conv2d, args: {...}}``."""

    layer: str
    args: dict[str, JsonValue] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known(self) -> LayerSpec:
        if self.layer not in LAYERS:
            raise ValueError(f"unknown layer {self.layer!r}; allowed torch.nn layers: {', '.join(LAYERS)}")
        import torch.nn

        _check_kwargs("layer", self.layer, getattr(torch.nn, self.layer), self.args, ())
        return self


class FinetuneSpec(_Section):
    """Fine-tune a registry model: its pretrained weights, a new classifier head."""

    base: str
    weights_path: str | None = Field(
        None, description="state_dict file (default: efficientnet_lite0's bundled weights)"
    )
    freeze_backbone: bool = Field(True, description="train only the new head (backbone BatchNorm frozen)")

    @field_validator("base")
    @classmethod
    def _base(cls, value: str) -> str:
        if value not in FINETUNE_BASES:
            raise ValueError(f"unknown base model {value!r}; fine-tunable: {', '.join(FINETUNE_BASES)}")
        return value


class ModelConfig(_Section):
    """Either a layer list (a head ``Flatten -> Dropout -> Linear(num_classes)`` is appended)
    or ``finetune`` of a registry model."""

    num_classes: int = Field(ge=2)
    layers: list[LayerSpec] | None = None
    finetune: FinetuneSpec | None = None
    head_dropout: float = Field(0.0, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _one(self) -> ModelConfig:
        if (self.layers is None) == (self.finetune is None):
            raise ValueError("give exactly one of 'layers' (a layer list) or 'finetune' (a registry model)")
        if self.layers is not None and not self.layers:
            raise ValueError("'layers' is empty; list at least one layer")
        return self


class OptimizerConfig(_Section):
    """A ``torch.optim`` optimizer: ``{name: SGD, lr: 0.1, kwargs: {momentum: 0.9}}``."""

    name: str = "AdamW"
    lr: float = Field(gt=0.0)
    kwargs: dict[str, JsonValue] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known(self) -> OptimizerConfig:
        if self.name not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.name!r}; allowed: {', '.join(OPTIMIZERS)}")
        import torch.optim

        _check_kwargs("optimizer", self.name, getattr(torch.optim, self.name), self.kwargs, ())
        return self


class SchedulerConfig(_Section):
    """One ``torch.optim.lr_scheduler`` of the chain.

    ``duration``: how many intervals (epochs or steps, see ``scheduler_interval``) it runs
    before the next one of a ``sequential`` chain takes over; needed for all but the last.
    ``OneCycleLR``'s ``total_steps`` and ``max_lr`` (the optimizer's lr) and
    ``CosineAnnealingLR``'s ``T_max`` default to the scheduler's length.
    """

    name: str
    kwargs: dict[str, JsonValue] = Field(default_factory=dict)
    duration: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _known(self) -> SchedulerConfig:
        if self.name not in SCHEDULERS:
            raise ValueError(f"unknown LR scheduler {self.name!r}; allowed: {', '.join(SCHEDULERS)}")
        import torch.optim.lr_scheduler

        cls = getattr(torch.optim.lr_scheduler, self.name)
        fixed = AUTO_SCHEDULER_KWARGS.get(self.name, ())
        _check_kwargs("LR scheduler", self.name, cls, self.kwargs, fixed)
        if self.name == "OneCycleLR" and {"epochs", "steps_per_epoch"} & set(self.kwargs):
            raise ValueError("OneCycleLR: give total_steps (or nothing: the schedule's length), not epochs")
        return self


class TrainLoopConfig(_Section):
    """Epochs, batches, optimizer, LR schedule, evaluation and checkpoint frequency."""

    epochs: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    eval_batch_size: int = Field(512, ge=1)
    eval_every_epochs: int = Field(1, ge=1, description="validate every N epochs (and after the last)")
    checkpoint_every_epochs: int = Field(1, ge=1, description="checkpoint every N epochs (and the last)")
    optimizer: OptimizerConfig
    lr_schedulers: list[SchedulerConfig] = Field(default_factory=list)
    scheduler_interval: Literal["epoch", "step"] = "epoch"
    scheduler_chain: Literal["sequential", "chained"] = Field(
        "sequential", description="sequential: one after another (SequentialLR); chained: all at once"
    )
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    grad_clip_norm: float | None = Field(None, gt=0.0)

    @model_validator(mode="after")
    def _chain(self) -> TrainLoopConfig:
        if self.scheduler_chain == "sequential":
            for i, s in enumerate(self.lr_schedulers[:-1]):
                if s.duration is None:
                    raise ValueError(
                        f"lr_schedulers[{i}] ({s.name}) needs 'duration' (intervals before the next "
                        "scheduler of the sequential chain starts)"
                    )
        return self


class OutputConfig(_Section):
    """Where checkpoints, TensorBoard logs and the report go."""

    dir: str = Field(description="local folder or gs://bucket/prefix")
    tensorboard_dir: str | None = Field(
        None, description="local folder (default: <dir>/tensorboard, or runs/<name>/tensorboard for gs://)"
    )


class TrainingConfig(_Section):
    """A whole training run (see the module docstring for an example)."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
    seed: int = 0
    device: Literal["cpu", "cuda"] = "cpu"
    threads: int | None = Field(None, ge=1, description="torch.set_num_threads (default: torch's)")
    data: Annotated[FashionMNISTData | FolderData, Field(discriminator="kind")]
    image: ImageConfig
    augmentation: AugmentationConfig = Field(default_factory=lambda: AugmentationConfig.model_validate({}))
    model: ModelConfig
    train: TrainLoopConfig
    output: OutputConfig

    @model_validator(mode="after")
    def _consistent(self) -> TrainingConfig:
        if self.model.layers is not None and self.image.mean is None:
            raise ValueError("image.mean and image.std are needed for a layer list (e.g. [0.5] and [0.5])")
        if isinstance(self.data, FashionMNISTData) and self.model.num_classes != 10:
            raise ValueError(
                f"Fashion-MNIST has 10 classes, but model.num_classes is {self.model.num_classes}"
            )
        return self

    @property
    def split_seed(self) -> int:
        """Seed of the train/validation split."""
        return self.data.split_seed if self.data.split_seed is not None else self.seed

    def mean_std(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """The normalisation: ``image.mean``/``std``, else the fine-tuned model's own."""
        if self.image.mean is not None and self.image.std is not None:
            return self.image.mean, self.image.std
        from models.architectures import registered_preprocessing

        assert self.model.finetune is not None
        pre = registered_preprocessing(self.model.finetune.base)
        if self.image.grayscale:
            return (sum(pre.mean) / 3,), (sum(pre.std) / 3,)
        return pre.mean, pre.std


def _format(error: ValidationError, source: str) -> str:
    lines = []
    for e in error.errors():
        loc = ".".join(str(p) for p in e["loc"] if not str(p).startswith(("function-after", "tagged-union")))
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key (not allowed here; check its spelling)"
        value = e.get("input")
        shown = (
            ""
            if e["type"] in ("missing", "extra_forbidden") or isinstance(value, dict)
            else f" (got {value!r})"
        )
        lines.append(f"  {loc or '<top level>'}: {msg}{shown}")
    return f"invalid training config {source}:\n" + "\n".join(lines)


def parse_config(data: Any, source: str = "<dict>") -> TrainingConfig:
    """Validate a config mapping (e.g. the ``config`` stored in a checkpoint).

    Raises:
        ConfigError: The message lists every bad key as ``section.key: problem (got value)``.
    """
    try:
        return TrainingConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format(e, source)) from None


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> TrainingConfig:
    """Read and validate a ``.yaml``/``.yml`` or ``.toml`` config file.

    ``overrides``: ``section.key=value`` items (the command line's ``--set``) applied to the
    file's mapping before validation, in order; the value is read as YAML (``8``, ``0.5``,
    ``true``, ``[1, 2]``, ``{a: 1}``; anything else is a string), e.g.
    ``train.epochs=2`` or ``data.train_limit=2000``.

    Raises:
        ConfigError: The file is missing, not valid YAML/TOML, not a mapping, or invalid
            (every bad key named); an override is not ``key=value`` or goes through a key
            that is not a section.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read training config {str(path)!r}: {e.strerror or e}") from None
    if path.suffix not in (".toml", ".yaml", ".yml"):
        raise ConfigError(f"training config {str(path)!r}: use a .yaml, .yml or .toml file")
    try:
        if path.suffix == ".toml":
            data: Any = tomllib.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, ValueError) as e:
        raise ConfigError(
            f"training config {str(path)!r} is not valid {path.suffix[1:].upper()}: {e}"
        ) from None
    except Exception as e:  # yaml.YAMLError
        if type(e).__module__.startswith("yaml"):
            raise ConfigError(f"training config {str(path)!r} is not valid YAML: {e}") from None
        raise
    if not isinstance(data, dict):
        raise ConfigError(
            f"training config {str(path)!r} must be a mapping of sections, got {type(data).__name__}"
        )
    for item in overrides:
        apply_override(data, item)
    return parse_config(data, repr(str(path)) + (f" with --set {' '.join(overrides)}" if overrides else ""))


def apply_override(data: dict[str, Any], item: str) -> None:
    """Set ``data[a][b]... = value`` from ``"a.b...=value"`` (value read as YAML), in place.

    Raises:
        ConfigError: ``item`` has no ``=`` or an empty key, or a key on the way is not a mapping.
    """
    import yaml

    key, sep, raw = item.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(parts):
        raise ConfigError(f"--set {item!r}: use section.key=value, e.g. --set train.epochs=2")
    try:
        value = yaml.safe_load(raw) if raw.strip() else raw
    except Exception:  # yaml.YAMLError: take the text as it is
        value = raw
    node: Any = data
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            where = ".".join(parts[: i + 1])
            raise ConfigError(f"--set {item!r}: {where!r} is {child!r}, not a section with keys")
        node = child
    node[parts[-1]] = value
