"""The training config: the example files load, and every bad key or value is an error that
names it (pydantic, extra="forbid", torch signatures checked at load time)."""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from models.training.config import ConfigError, FolderData, load_config, parse_config
from tests.training.helpers import CONFIGS, example


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    return repr(value)


def test_the_example_configs_are_valid() -> None:
    cnn = load_config(CONFIGS / "fashion_mnist_cnn.yaml")
    assert cnn.data.kind == "fashion_mnist" and cnn.image.grayscale and cnn.model.layers
    assert cnn.train.optimizer.name == "AdamW" and cnn.train.lr_schedulers[0].name == "OneCycleLR"
    finetune = load_config(CONFIGS / "finetune_folder.yaml")
    assert isinstance(finetune.data, FolderData)
    assert finetune.model.finetune is not None and finetune.model.finetune.base == "efficientnet_lite0"
    # no mean/std in the file: the base model's own (TF style for EfficientNet-Lite0)
    assert finetune.mean_std() == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def test_toml_gives_the_same_config_as_yaml(tmp_path: Path) -> None:
    data = example()
    lines = []
    for section, body in data.items():
        if isinstance(body, dict):
            lines.append(f"[{section}]")
            lines += [f"{k} = {_toml(v)}" for k, v in body.items()]
        else:
            lines.insert(0, f"{section} = {_toml(body)}")
    path = tmp_path / "cnn.toml"
    path.write_text("\n".join(lines) + "\n")
    assert tomllib.loads(path.read_text())["model"]["layers"][0]["layer"] == "Conv2d"
    assert load_config(path) == load_config(CONFIGS / "fashion_mnist_cnn.yaml")


def _set(data: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    data = copy.deepcopy(data)
    *parents, last = dotted.split(".")
    node: Any = data
    for p in parents:
        node = node[int(p)] if isinstance(node, list) else node[p]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return data


BAD = [
    # (dotted key to set, value, what the message must say)
    ("train.epoch", 3, "train.epoch: unknown key"),
    ("bacth_size", 3, "bacth_size: unknown key"),
    ("train.batch_size", 0, "train.batch_size: Input should be greater than or equal to 1 (got 0)"),
    ("train.epochs", "ten", "train.epochs: Input should be a valid integer"),
    ("augmentation.hflip_p", 1.5, "augmentation.hflip_p: Input should be less than or equal to 1 (got 1.5)"),
    ("image.mean", [0.5, 0.5, 0.5], "image: mean has 3 values, but grayscale=True images have 1 channel"),
    ("image.std", [0.0], "std values must be positive"),
    ("device", "tpu", "device: Input should be 'cpu' or 'cuda' (got 'tpu')"),
    ("data.kind", "imagenet", "data: Input tag 'imagenet' found using 'kind' does not match"),
    ("model.num_classes", 7, "Fashion-MNIST has 10 classes, but model.num_classes is 7"),
    (
        "model.layers.0.layer",
        "Conv3d",
        "model.layers.0: unknown layer 'Conv3d'; allowed torch.nn layers: Conv2d",
    ),
    ("model.layers.0.layer", "os.system", "unknown layer 'os.system'"),
    (
        "model.layers.0.args",
        {"in_channels": 1, "out_channels": 32, "kernal_size": 3},
        "model.layers.0: layer Conv2d has no argument 'kernal_size'; its arguments: in_channels, "
        "out_channels, kernel_size",
    ),
    (
        "model.layers.0.args",
        {"in_channels": 1},
        "layer Conv2d needs argument(s) 'out_channels', 'kernel_size'",
    ),
    ("model.layers.0.args", {"device": "cuda"}, "layer Conv2d: argument 'device' is set by the trainer"),
    (
        "model.finetune",
        {"base": "resnet50"},
        "model: give exactly one of 'layers' (a layer list) or 'finetune'",
    ),
    (
        "train.optimizer.name",
        "Adamax",
        "train.optimizer: unknown optimizer 'Adamax'; allowed: SGD, Adam, AdamW",
    ),
    ("train.optimizer.kwargs", {"momentun": 0.9}, "optimizer AdamW has no argument 'momentun'"),
    ("train.optimizer.lr", -1, "train.optimizer.lr: Input should be greater than 0"),
    ("train.lr_schedulers", [{"name": "Warmup"}], "unknown LR scheduler 'Warmup'"),
    ("train.lr_schedulers", [{"name": "StepLR"}], "LR scheduler StepLR needs argument(s) 'step_size'"),
    (
        "train.lr_schedulers",
        [{"name": "LinearLR"}, {"name": "CosineAnnealingLR"}],
        "lr_schedulers[0] (LinearLR) needs 'duration'",
    ),
    ("train.scheduler_interval", "batch", "train.scheduler_interval: Input should be 'epoch' or 'step'"),
    ("output", {}, "output.dir: Field required"),
    ("name", "my run", "name: String should match pattern"),
]


@pytest.mark.parametrize(("key", "value", "message"), BAD, ids=[b[0] + "=" + repr(b[1])[:20] for b in BAD])
def test_a_bad_key_or_value_is_an_error_naming_it(key: str, value: Any, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(_set(example(), key, value), "test.yaml")
    assert message in str(info.value), str(info.value)
    assert str(info.value).startswith("invalid training config test.yaml:")


def test_every_bad_key_is_listed_at_once(tmp_path: Path) -> None:
    data = _set(_set(example(), "train.epoch", 3), "augmentation.vflip", 0.5)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    lines = str(info.value).splitlines()
    assert lines[0] == f"invalid training config {str(path)!r}:"
    assert "  augmentation.vflip: unknown key (not allowed here; check its spelling)" in lines
    assert "  train.epoch: unknown key (not allowed here; check its spelling)" in lines


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("c.yaml", "train: [unclosed", "is not valid YAML"),
        ("c.toml", "train = [", "is not valid TOML"),
        ("c.yaml", "- a\n- b\n", "must be a mapping of sections, got list"),
        ("c.json", "{}", "use a .yaml, .yml or .toml file"),
    ],
)
def test_unreadable_files_are_clear_errors(tmp_path: Path, name: str, text: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path)
    with pytest.raises(ConfigError, match="cannot read training config"):
        load_config(tmp_path / "missing.yaml")


def test_the_command_reports_a_bad_config_in_one_message_and_exits_1(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from models.training.__main__ import cli

    good = CliRunner().invoke(cli, ["check", str(CONFIGS / "fashion_mnist_cnn.yaml")])
    assert good.exit_code == 0, good.output
    assert "parameters: 104,426 (104,426 trainable)" in good.output

    data = _set(example(), "model.layers.8.args.in_channels", 32)  # the block before makes 64
    data["output"]["dir"] = str(tmp_path / "run")
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    for command in ("check", "train"):
        result = CliRunner().invoke(cli, [command, str(path)])
        assert result.exit_code == 1
        assert result.output.startswith("error: model.layers[8] (Conv2d(")
        assert (
            "in_channels=32" in result.output
            and "does not fit its input of shape (2, 64, 7, 7)" in result.output
        )
        assert "Traceback" not in result.output
    assert not (Path(data["output"]["dir"]) / "checkpoints").exists()


def test_set_overrides_keys_of_the_file_before_validation() -> None:
    path = CONFIGS / "fashion_mnist_cnn.yaml"
    cfg = load_config(path, ["train.epochs=1", "data.train_limit=1000", "data.val_fraction=0.02"])
    assert (cfg.train.epochs, cfg.data.train_limit, cfg.data.val_fraction) == (1, 1000, 0.02)  # type: ignore[union-attr]
    assert load_config(path).train.epochs == 8  # the file is unchanged
    with pytest.raises(ConfigError, match=r"train\.epochs.*got 'many'"):
        load_config(path, ["train.epochs=many"])  # validated like the file's own value
    with pytest.raises(ConfigError, match=r"use section\.key=value"):
        load_config(path, ["train.epochs"])
    with pytest.raises(ConfigError, match=r"'name' is 'fashion_mnist_cnn', not a section"):
        load_config(path, ["name.x=1"])
