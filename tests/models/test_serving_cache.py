"""Serving from the export cache without torch (issue 19), and what keeps it honest.

A warm cache is made once for the module by a real first load in a child process (export,
agreement verdicts, backend speed measurement, serving manifest). Each check then starts
a fresh Python process, as a worker's ``setup()`` does, and reports what it imported and
what it predicted on the packaged real photos; the reference is the torch model in this
process. A changed weights file or a failing verdict must send the child back to the
torch path (torch imported), never to the stale export.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from models import ImageClassifier, Preprocessing, decode_image, load_model
from models.architectures import _efficientnet_lite0_weights
from models.onnx_backend import AGREEMENT_MAX_ABS_DIFF, default_threads
from models.preprocessing import IMAGENET_MEAN_STD, TF_MEAN_STD
from models.samples import sample_photos

REPO = Path(__file__).resolve().parents[2]

# A fresh process: load the default model as the processor's setup() does, classify the
# packaged photos, report the modules it imported and its top-1 per photo.
_CHILD = """
import json, sys
from models import BatchClassifier
from models.samples import sample_photos
options = json.loads(sys.argv[1])
photos = sample_photos()
with BatchClassifier.load("efficientnet_lite0", **options) as classifier:
    results = classifier.classify(list(photos.values()))
    model = classifier.model
print(json.dumps({
    "torch": "torch" in sys.modules,
    "torchvision": "torchvision" in sys.modules,
    "backend": model.backend,
    "has_module": model.module_loaded,
    "top1": {n: [r.predictions[0].index, r.predictions[0].confidence] for n, r in zip(photos, results)},
}))
"""


def _child(cache: Path, **options: object) -> dict[str, object]:
    env = {**os.environ, "BUILDFLOW_CACHE_DIR": str(cache)}
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(options)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _reference_top1(weights_path: str | None = None) -> dict[str, tuple[int, float]]:
    """Top-1 (class, probability) per packaged photo of the torch model, in this process."""
    model = load_model("efficientnet_lite0", backend="torch", weights_path=weights_path)
    side = model.preprocessing.resize_short_side
    photos = sample_photos()
    results = model.classify([decode_image(d, target_short_side=side) for d in photos.values()], top_k=1)
    return {name: (r[0].index, r[0].confidence) for name, r in zip(photos, results)}


@pytest.fixture(scope="module")
def warm_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache root warmed by one default load in a child process (which imports torch)."""
    root = tmp_path_factory.mktemp("serving-cache")
    first = _child(root)
    assert first["torch"] and first["has_module"]  # the cold start builds with torch
    assert len(list((root / "onnx").glob("*.serving.json"))) == 1
    return root


@pytest.mark.slow
def test_a_warm_cache_serves_without_torch_and_predicts_as_torch(warm_cache: Path) -> None:
    result = _child(warm_cache)
    assert result["torch"] is False and result["torchvision"] is False
    assert result["has_module"] is False and result["backend"] in ("onnxruntime", "openvino")
    reference = _reference_top1()
    top1 = result["top1"]
    assert isinstance(top1, dict) and set(top1) == set(reference) and len(reference) >= 5
    for name, (index, confidence) in reference.items():
        assert top1[name][0] == index, name
        assert abs(top1[name][1] - confidence) < AGREEMENT_MAX_ABS_DIFF, name


@pytest.mark.slow
def test_changed_weights_are_not_served_from_the_old_export(warm_cache: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    shutil.copytree(warm_cache, cache)
    weights = tmp_path / "weights.pth"
    shutil.copyfile(_efficientnet_lite0_weights(), weights)
    # Same bytes under another path: the same model, served from the cache.
    assert _child(cache, weights_path=str(weights))["torch"] is False
    # The same weights written again by torch.save: other bytes, so the torch path runs
    # once (same state_dict: same export) and writes a manifest for these bytes.
    state = torch.load(weights, weights_only=True)
    torch.save(state, weights)
    assert _child(cache, weights_path=str(weights))["torch"] is True
    assert _child(cache, weights_path=str(weights))["torch"] is False
    # New weights in the same file, same size and mtime: only the content tells.
    stat = weights.stat()
    bias = next(k for k in state if k.endswith("bias") and state[k].shape == (1000,))
    state[bias] = torch.zeros(1000)
    state[bias][1] = 100.0  # every photo is now a goldfish
    torch.save(state, weights)
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert weights.stat().st_size == stat.st_size
    result = _child(cache, weights_path=str(weights))
    assert result["torch"] is True and result["has_module"] is True
    top1 = result["top1"]
    assert isinstance(top1, dict) and {v[0] for v in top1.values()} == {1}


@pytest.mark.slow
def test_a_failed_verdict_is_not_served(warm_cache: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    shutil.copytree(warm_cache, cache)
    [manifest] = (cache / "onnx").glob("*.serving.json")
    for name in json.loads(manifest.read_text())["verdicts"]:
        verdict = cache / "onnx" / name
        record = json.loads(verdict.read_text())
        record["max_abs_diff"] = 0.5  # as if the export disagreed with torch
        verdict.write_text(json.dumps(record))
    result = _child(cache)
    assert result["torch"] is True and result["has_module"] is True
    assert result["backend"] == "torch"  # "auto" refuses an export that does not agree
    reference = _reference_top1()
    top1 = result["top1"]
    assert isinstance(top1, dict) and {n: v[0] for n, v in top1.items()} == {
        n: v[0] for n, v in reference.items()
    }


@pytest.mark.slow
@pytest.mark.parametrize("winner", ["openvino", "onnxruntime"])
def test_a_changed_speed_choice_is_not_served_then_the_new_one_is(
    warm_cache: Path, tmp_path: Path, winner: str
) -> None:
    pytest.importorskip("openvino")
    cache = tmp_path / "cache"
    shutil.copytree(warm_cache, cache)
    [manifest] = (cache / "onnx").glob("*.serving.json")
    before = json.loads(manifest.read_text())["backend"]
    if json.loads(manifest.read_text())["speed_runs"] is None:
        pytest.skip("OpenVINO did not agree with torch here: no speed choice to change")
    speed = cache / "onnx" / "speed.json"
    stored = json.loads(speed.read_text())
    for entry in stored.values():  # as if measured again: `winner` is now the faster
        entry.update({"onnxruntime": 1.0, "openvino": 1.0, winner: 2.0})
    speed.write_text(json.dumps(stored))
    first = _child(cache)
    assert first["backend"] == winner
    assert first["torch"] is (before != winner)  # a stale choice goes through torch
    second = _child(cache)
    assert second["backend"] == winner and second["torch"] is False and second["torchvision"] is False
    reference = _reference_top1()
    top1 = second["top1"]
    assert isinstance(top1, dict) and {n: v[0] for n, v in top1.items()} == {
        n: v[0] for n, v in reference.items()
    }


@pytest.mark.parametrize(
    "preprocessing",
    [
        Preprocessing(256, 224, TF_MEAN_STD[0], TF_MEAN_STD[1]),
        Preprocessing(256, 224, IMAGENET_MEAN_STD[0], IMAGENET_MEAN_STD[1], interpolation="bicubic"),
        Preprocessing(36, 28, (0.2860,), (0.3530,), grayscale=True),
    ],
    ids=["tf", "imagenet-bicubic", "grayscale"],
)
def test_numpy_preprocessing_equals_the_torch_path_bit_for_bit(preprocessing: Preprocessing) -> None:
    images = [
        decode_image(d, target_short_side=preprocessing.resize_short_side) for d in sample_photos().values()
    ]
    assert len(images) >= 5
    for image in images:
        ours = preprocessing.array(image)
        assert ours.dtype == np.float32 and ours.flags.c_contiguous
        assert ours.shape == (preprocessing.channels, preprocessing.crop_size, preprocessing.crop_size)
        assert np.array_equal(ours, preprocessing(image).numpy())
        assert np.array_equal(preprocessing.pixels_array(image), preprocessing.pixels(image).numpy())
    assert np.array_equal(preprocessing.batch_array(images), preprocessing.batch(images).numpy())
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (4, preprocessing.channels, 5, 7), dtype=np.uint8)
    assert np.array_equal(
        preprocessing.normalise_array(pixels), preprocessing.normalise(torch.from_numpy(pixels)).numpy()
    )


def test_top_k_on_numpy_orders_like_torch_ties_by_index() -> None:
    labels = tuple(f"c{i}" for i in range(6))
    model = ImageClassifier("ties", torch.nn.Identity(), labels, Preprocessing(), "cpu", 0.0)
    probs = np.array([[0.1, 0.3, 0.1, 0.3, 0.2, 0.0], [0.0, 0.0, 0.5, 0.0, 0.5, 0.0]], np.float32)
    ours = model.top_k(probs, k=4)
    assert ours == model.top_k(torch.from_numpy(probs), k=4)  # torch.sort(stable=True) ranks
    assert [p.index for p in ours[0]] == [1, 3, 4, 0]
    assert [p.index for p in ours[1]] == [2, 4, 0, 1]


def test_softmax_on_numpy_matches_torch() -> None:
    from models.classifier import _softmax

    logits = np.random.default_rng(1).normal(0, 8, (3, 1000)).astype(np.float32)
    expected = torch.softmax(torch.from_numpy(logits), dim=1).numpy()
    np.testing.assert_allclose(_softmax(logits), expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("omp", [None, "1", "64"])
@pytest.mark.parametrize("one_cpu", [False, True], ids=["all-cpus", "taskset-one-cpu"])
def test_default_threads_without_torch_equals_torch_get_num_threads(omp: str | None, one_cpu: bool) -> None:
    """The decode pool and the ONNX Runtime streams size themselves as the torch path did."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    if omp is not None:
        env["OMP_NUM_THREADS"] = omp
    code = (
        "import os, sys\n"
        f"if {one_cpu}: os.sched_setaffinity(0, {{min(os.sched_getaffinity(0))}})\n"
        "from models.onnx_backend import default_threads\n"
        "n = default_threads()\n"
        "assert 'torch' not in sys.modules\n"
        "import torch\n"
        "print(n, torch.get_num_threads())\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    ours, torchs = proc.stdout.split()
    assert ours == torchs
    if omp == "1":
        assert ours == "1"
    assert default_threads() == torch.get_num_threads()  # torch imported here: its own count


@pytest.mark.slow
def test_the_module_of_a_cached_classifier_is_built_on_first_access(
    warm_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BUILDFLOW_CACHE_DIR", str(warm_cache))
    cached = load_model("efficientnet_lite0")
    assert cached.onnx_session is not None and not cached.module_loaded
    module = cached.module
    assert cached.module_loaded and cached.module is module and not module.training
    reference = load_model("efficientnet_lite0", backend="torch").module.state_dict()
    ours = module.state_dict()
    assert ours.keys() == reference.keys()
    assert all(torch.equal(ours[k], reference[k]) for k in ours)
