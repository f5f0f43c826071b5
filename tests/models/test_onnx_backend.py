"""The ONNX Runtime backend: export once, cache by content, agree with torch on real photos.

Every test gets its own cache folder (``BUILDFLOW_CACHE_DIR``), so exports are counted
from zero. Agreement is measured on the packaged real photos (scikit-image's chelsea,
coffee, astronaut, rocket and Debian darknet's JPEGs); MobileNetV2's weights are random
(seeded, batch-norm statistics from the photos so its logits are not flat): agreement
between two runtimes does not depend on the weights being trained.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

import models.onnx_backend as onnx_backend
import models.registry
from models import ImageClassifier, ModelError, Preprocessing, decode_image, load_model
from models.labels import CAT_CLASS_INDICES
from models.samples import sample_photos
from tests.models import sample_images

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def no_openvino(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests are about ONNX Runtime: backend="auto" here chooses between torch and
    ONNX Runtime only (OpenVINO's part of "auto": tests/models/test_openvino_backend.py)."""
    import models.openvino_backend

    monkeypatch.setattr(models.openvino_backend, "import_openvino", lambda: None)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh export cache; returns the folder the .onnx files go to."""
    monkeypatch.setenv("BUILDFLOW_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "onnx"


@pytest.fixture
def exports(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Files exported in this process, in order (wraps the exporter; it writes a temporary
    file that is then renamed)."""
    done: list[Path] = []
    real = onnx_backend._export

    def counting(module: nn.Module, path: Path, input_shape: tuple[int, ...]) -> None:
        done.append(path)
        real(module, path, input_shape)

    monkeypatch.setattr(onnx_backend, "_export", counting)
    return done


@pytest.fixture
def checks(monkeypatch: pytest.MonkeyPatch) -> list[onnx_backend.Agreement | None]:
    """Agreement checks run in this process (wraps check_agreement)."""
    done: list[onnx_backend.Agreement | None] = []
    real = onnx_backend.check_agreement

    def counting(*args: object, **kwargs: object) -> onnx_backend.Agreement | None:
        result = real(*args, **kwargs)  # type: ignore[arg-type]
        done.append(result)
        return result

    monkeypatch.setattr(onnx_backend, "check_agreement", counting)
    return done


def _random_mobilenet_v2(path: Path, seed: int) -> Path:
    """Random MobileNetV2 weights whose logits are not flat.

    As initialised by torchvision, its logits on photos are ~1e-9 (every probability
    1/1000 to float precision), which would make the comparison vacuous. Its batch-norm
    statistics are therefore taken from the real photos, and the head drawn wider.
    """
    import torchvision

    torch.manual_seed(seed)
    module = torchvision.models.mobilenet_v2(weights=None)
    for bn in module.modules():
        if isinstance(bn, nn.BatchNorm2d):
            bn.momentum = None  # cumulative average over the one batch
            bn.reset_running_stats()
    preprocessing = models.registry.registered_preprocessing("mobilenet_v2")
    side = preprocessing.resize_short_side
    photos = [decode_image(d, target_short_side=side) for d in sample_photos().values()]
    module.train()
    with torch.no_grad():
        module(preprocessing.batch(photos))
    head = module.classifier[1]
    assert isinstance(head, nn.Linear)
    nn.init.normal_(head.weight, std=0.05)
    torch.save(module.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def mobilenet_weights(tmp_path_factory: pytest.TempPathFactory) -> Callable[[int], Path]:
    folder = tmp_path_factory.mktemp("mobilenet_v2")
    made: dict[int, Path] = {}

    def weights(seed: int) -> Path:
        if seed not in made:
            made[seed] = _random_mobilenet_v2(folder / f"seed{seed}.pth", seed)
        return made[seed]

    return weights


def _photo_batch(classifier: ImageClassifier) -> torch.Tensor:
    side = classifier.preprocessing.resize_short_side
    images = [decode_image(data, target_short_side=side) for data in sample_photos().values()]
    return classifier.preprocessing.batch(images)


def _assert_agrees_with_torch(onnx: ImageClassifier, torch_model: ImageClassifier) -> float:
    batch = _photo_batch(onnx)
    p_onnx, p_torch = onnx.predict_proba(batch), torch_model.predict_proba(batch)
    assert isinstance(p_onnx, torch.Tensor) and p_onnx.dtype == torch.float32
    assert p_onnx.device.type == "cpu" and p_onnx.shape == p_torch.shape == (len(batch), 1000)
    assert torch.equal(p_onnx.argmax(dim=1), p_torch.argmax(dim=1))
    assert float(p_torch.max(dim=1).values.min()) > 3 / 1000  # not flat: top-1 means something
    diff = float((p_onnx - p_torch).abs().max())
    assert diff < 1e-3
    assert p_onnx.sum(dim=1).sub(1).abs().max() < 1e-5
    return diff


def _tiny_module() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()


def test_cache_key_follows_weights_architecture_and_input_size() -> None:
    torch.manual_seed(0)
    module = _tiny_module()
    key = onnx_backend.cache_key(module, (3, 8, 8))
    assert key == onnx_backend.cache_key(module, (3, 8, 8))  # deterministic
    assert key == onnx_backend.cache_key(module.to(memory_format=torch.channels_last), (3, 8, 8))
    assert key != onnx_backend.cache_key(module, (3, 16, 16))
    assert key != onnx_backend.cache_key(module, (3, 8, 8), onnxruntime_version="0.0")
    head = module[3]
    assert isinstance(head, nn.Linear)
    with torch.no_grad():
        head.bias[0] += 1e-6  # one weight, slightly: another checkpoint
    assert key != onnx_backend.cache_key(module, (3, 8, 8))
    wider = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), *list(_tiny_module())[1:])
    wider.load_state_dict(module.state_dict())  # same weights, other architecture
    assert onnx_backend.cache_key(wider, (3, 8, 8)) != onnx_backend.cache_key(module, (3, 8, 8))


def test_cache_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BUILDFLOW_CACHE_DIR", str(tmp_path))
    assert onnx_backend.cache_dir() == tmp_path / "onnx"
    monkeypatch.delenv("BUILDFLOW_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert onnx_backend.cache_dir() == tmp_path / "xdg" / "buildflow" / "onnx"


def test_bad_backend_arguments_are_errors() -> None:
    with pytest.raises(
        ModelError, match="unknown backend 'tensorrt'; use 'auto', 'torch', 'onnxruntime' or 'openvino'"
    ):
        load_model("efficientnet_lite0", backend="tensorrt")  # type: ignore[arg-type]
    with pytest.raises(ModelError, match="intra_op_threads must be a whole number of at least 1, got 0"):
        load_model("efficientnet_lite0", intra_op_threads=0)
    with pytest.raises(ModelError, match="streams must be a whole number of at least 1, got 0"):
        load_model("efficientnet_lite0", streams=0)
    with pytest.raises(ModelError, match="streams must be a whole number of at least 1, got True"):
        load_model("efficientnet_lite0", streams=True)


def test_stream_layout_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    layout = onnx_backend.stream_layout
    assert layout("cpu", None, None) == (4, 1)  # throughput: a single-threaded stream per core
    assert layout("cuda", None, None) == (1, 4)  # the GPU runs the graph
    assert layout("cpu", 3, None) == (1, 3)  # threads alone: one stream
    assert layout("cpu", None, 2) == (2, 2) and layout("cpu", None, 8) == (8, 1)
    assert layout("cpu", 2, 3) == (3, 2)
    with pytest.raises(ModelError, match="streams must be a whole number of at least 1, got 1.5"):
        layout("cpu", None, 1.5)  # type: ignore[arg-type]


class _RecordingSession:
    """Delegates to the real ONNX Runtime session, recording each run's batch size and thread."""

    def __init__(self, real: object) -> None:
        self.real = real
        self.runs: list[tuple[int, int]] = []

    def run(self, outputs: list[str], feeds: dict[str, object]) -> object:
        import threading

        (array,) = feeds.values()
        self.runs.append((len(array), threading.get_ident()))  # type: ignore[arg-type]
        return self.real.run(outputs, feeds)  # type: ignore[attr-defined]


@pytest.mark.slow
def test_streams_split_a_batch_over_threads_with_the_same_results(cache: Path) -> None:
    one = load_model("efficientnet_lite0", backend="onnxruntime", intra_op_threads=2)
    two = load_model("efficientnet_lite0", backend="onnxruntime", streams=2, intra_op_threads=1)
    assert one.onnx_session is not None and two.onnx_session is not None
    assert (one.onnx_session.streams, two.onnx_session.streams) == (1, 2)
    spy = _RecordingSession(two.onnx_session._session)
    two.onnx_session._session = spy
    photos = [decode_image(data) for data in sample_photos().values()]
    x = torch.stack([two.preprocess(photos[i % len(photos)]) for i in range(16)])
    for n, shards in ((16, [8, 8]), (5, [3, 2]), (1, [1])):
        spy.runs.clear()
        expected = one.predict_proba(x[:n])
        got = two.predict_proba(x[:n])
        assert got.shape == (n, 1000)
        assert torch.allclose(got, expected, atol=1e-6), (got - expected).abs().max()
        assert sorted(size for size, _ in spy.runs) == sorted(shards)
        assert len({thread for _, thread in spy.runs}) == len(shards)  # each shard on its own thread


@pytest.mark.slow
def test_efficientnet_lite0_exports_once_agrees_with_torch_and_is_reused(
    cache: Path, exports: list[Path], checks: list[onnx_backend.Agreement | None]
) -> None:
    first = load_model("efficientnet_lite0", backend="onnxruntime")
    assert first.backend == "onnxruntime" and first.onnx_session is not None
    session = first.onnx_session
    assert session.exported and len(exports) == 1 and session.path.parent == cache
    assert exports[0].parent == cache and exports[0].name.endswith(".tmp")  # renamed into place
    assert session.providers == ["CPUExecutionProvider"]
    # the CPU default: one single-threaded stream per core
    assert (session.streams, session.intra_op_threads) == (torch.get_num_threads(), 1)
    assert [p.suffix for p in cache.glob("*.onnx")] == [".onnx"]
    assert not list(cache.glob("*.tmp")) and not list(cache.glob(".*.tmp"))
    # the check ran once, on every packaged photo, and its measurement is stored
    agreement = session.agreement
    assert agreement is not None and checks == [agreement] and agreement.passes()
    assert agreement.photos == tuple(sample_photos()) and agreement.top1_agree == len(agreement.photos)
    assert agreement.max_abs_diff < 1e-3
    stored = json.loads(session.path.with_suffix(".agreement.json").read_text())
    assert stored["top1_agree"] == agreement.top1_agree and stored["passes"] is True
    assert stored["export_s"] > 0
    mtime = session.path.stat().st_mtime_ns

    # a second load (the default, "auto") neither exports nor checks again
    second = load_model("efficientnet_lite0")
    assert second.backend == "onnxruntime" and second.onnx_session is not None
    assert second.onnx_session.path == session.path and not second.onnx_session.exported
    assert len(exports) == 1 and len(checks) == 1 and session.path.stat().st_mtime_ns == mtime
    assert second.load_latency_ms < first.load_latency_ms

    # same answers as torch on the real photos, same interface
    _assert_agrees_with_torch(second, load_model("efficientnet_lite0", backend="torch"))
    [predictions] = second.classify([sample_images.chelsea_image()], top_k=5)
    assert predictions[0].index in CAT_CLASS_INDICES
    with pytest.raises(ValueError, match=r"takes \(N, 3, 224, 224\) batches"):
        second.predict_proba(torch.zeros(1, 3, 200, 200))


@pytest.mark.slow
def test_random_mobilenet_v2_agrees_and_new_weights_export_again(
    cache: Path, exports: list[Path], mobilenet_weights: Callable[[int], Path]
) -> None:
    a = load_model(
        "mobilenet_v2", weights_path=mobilenet_weights(0), backend="onnxruntime", intra_op_threads=1
    )
    assert a.onnx_session is not None and a.onnx_session.intra_op_threads == 1
    assert a.onnx_session.agreement is not None and a.onnx_session.agreement.passes()
    _assert_agrees_with_torch(
        a, load_model("mobilenet_v2", weights_path=mobilenet_weights(0), backend="torch")
    )
    b = load_model("mobilenet_v2", weights_path=mobilenet_weights(1))  # another checkpoint
    assert b.backend == "onnxruntime" and b.onnx_session is not None
    assert b.onnx_session.path != a.onnx_session.path and b.onnx_session.exported
    assert len(exports) == 2 and len(list(cache.glob("*.onnx"))) == 2


@pytest.mark.slow
def test_auto_uses_torch_with_a_warning_when_onnxruntime_is_missing(
    cache: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    mobilenet_weights: Callable[[int], Path],
) -> None:
    monkeypatch.setattr(onnx_backend, "_import_onnxruntime", lambda: None)
    with caplog.at_level(logging.WARNING, logger="models.onnx_backend"):
        classifier = load_model("mobilenet_v2", weights_path=mobilenet_weights(0))
    assert classifier.backend == "torch" and classifier.onnx_session is None
    assert "onnxruntime is not installed" in caplog.text and "pip install onnxruntime" in caplog.text
    assert not cache.exists()  # nothing exported
    with pytest.raises(ModelError, match="needs the onnxruntime package; run pip install onnxruntime"):
        load_model("mobilenet_v2", weights_path=mobilenet_weights(0), backend="onnxruntime")


@pytest.mark.slow
def test_auto_uses_torch_with_a_warning_when_agreement_fails(
    cache: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    exports: list[Path],
    checks: list[onnx_backend.Agreement | None],
    mobilenet_weights: Callable[[int], Path],
) -> None:
    monkeypatch.setattr(onnx_backend, "AGREEMENT_MAX_ABS_DIFF", 0.0)  # nothing can pass
    with caplog.at_level(logging.WARNING, logger="models.onnx_backend"):
        classifier = load_model("mobilenet_v2", weights_path=mobilenet_weights(0))
    assert classifier.backend == "torch" and classifier.onnx_session is None
    assert "runs on torch: onnxruntime does not agree with torch" in caplog.text
    assert "max |p_onnx - p_torch| = " in caplog.text  # the measured difference
    # the measurement is stored: with the real tolerance the next load uses onnxruntime,
    # without exporting or checking again
    monkeypatch.setattr(onnx_backend, "AGREEMENT_MAX_ABS_DIFF", 1e-3)
    again = load_model("mobilenet_v2", weights_path=mobilenet_weights(0))
    assert again.backend == "onnxruntime"
    assert len(exports) == 1 and len(checks) == 1


@pytest.mark.slow
def test_auto_keeps_custom_models_on_torch(cache: Path) -> None:
    name = "tiny-onnx-test"
    models.registry.register_model(
        name, _tiny_module, preprocessing=Preprocessing(8, 8, (0.5,) * 3, (0.5,) * 3), labels=["a", "b", "c"]
    )
    try:
        assert load_model(name).backend == "torch"
        explicit = load_model(name, backend="onnxruntime")
        assert explicit.backend == "onnxruntime"
        x = torch.randn(2, 3, 8, 8)
        with torch.inference_mode():  # the factory's random weights: compare with its own module
            expected = torch.softmax(explicit.module(x), dim=1)
        torch.testing.assert_close(explicit.predict_proba(x), expected)
    finally:
        del models.registry._REGISTRY[name]


_EXPORT_ONE = """
import json, os, sys, time
from pathlib import Path
import torch
from torch import nn
from models import Preprocessing
from models import onnx_backend

ready = Path(sys.argv[1])
(ready / str(os.getpid())).touch()
deadline = time.monotonic() + 60
while len(list(ready.iterdir())) < 2 and time.monotonic() < deadline:  # start together
    time.sleep(0.01)
torch.manual_seed(0)
module = nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)).eval()
session = onnx_backend.open_onnx_session(
    "race", module, Preprocessing(32, 32, (0.5,) * 3, (0.5,) * 3),
    backend="onnxruntime", device="cpu", intra_op_threads=1, auto_eligible=False,
)
out = session.logits(torch.zeros(2, 3, 32, 32))
print(json.dumps({"exported": session.exported, "path": str(session.path), "shape": list(out.shape)}))
"""


@pytest.mark.slow
def test_two_processes_exporting_at_once_leave_one_valid_file(tmp_path: Path) -> None:
    import onnx
    import onnxruntime

    ready = tmp_path / "ready"
    ready.mkdir()
    env = {**os.environ, "BUILDFLOW_CACHE_DIR": str(tmp_path / "cache")}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _EXPORT_ONE, str(ready)],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        results.append(json.loads(out))
    assert sorted(r["exported"] for r in results) == [False, True]  # one exported, one reused
    assert results[0]["path"] == results[1]["path"] and results[0]["shape"] == [2, 5]
    folder = tmp_path / "cache" / "onnx"
    (onnx_file,) = folder.glob("*.onnx")
    assert str(onnx_file) == results[0]["path"]
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]
    onnx.checker.check_model(str(onnx_file))
    session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    assert session.run(None, {"input": torch.zeros(3, 3, 32, 32).numpy()})[0].shape == (3, 5)


@pytest.mark.slow
def test_the_processor_reports_its_backend(cache: Path) -> None:
    from buildflow.testing import gcs_file_event, run_processor
    from processors.image_classification import ImageClassificationProcessor

    processor = ImageClassificationProcessor(
        bucket_name="photos", table_id="demo.predictions", backend="onnxruntime"
    )
    result = run_processor(processor, [gcs_file_event("chelsea.jpg", sample_images.jpeg())])
    [row] = result.rows
    assert row["classifications"][0]["class_index"] in CAT_CLASS_INDICES
    [stats] = result.summary.processors
    assert stats.metrics["backend_onnxruntime"] == 1 and "backend_torch" not in stats.metrics
