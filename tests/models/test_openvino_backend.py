"""OpenVINO on the exported file, the one-off speed choice of backend="auto", and the
precision rules (bf16/int8 need the CPU's instructions; "auto" needs 0.99 top-1 agreement).

The export cache is one folder for the module (exported once); tests that count speed
measurements remove ``speed.json`` first. The CPU's instructions are forced with
``BUILDFLOW_CPU_FLAGS`` both ways (off, and on)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

import models.backend_selection as selection
import models.quantization as quantization
from models import ModelError, decode_image, load_model
from models.openvino_backend import OpenVinoSession, cpu_flags, cpu_model_name, precision_support
from models.samples import sample_photos

pytest.importorskip("openvino")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    folder = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BUILDFLOW_CACHE_DIR", str(folder))
        yield folder / "onnx"


@pytest.fixture
def speed_runs(monkeypatch: pytest.MonkeyPatch, cache: Path) -> list[list[str]]:
    """The run names of every speed measurement made in the test (the real measurement
    runs); speed.json is removed first so the test starts with nothing measured."""
    (cache / "speed.json").unlink(missing_ok=True)
    made: list[list[str]] = []
    real = selection.measure_speed

    def counting(
        runs: dict[str, Callable[[np.ndarray], np.ndarray]], batch: np.ndarray, rounds: int = 3
    ) -> dict[str, float]:
        made.append(sorted(runs))
        return real(runs, batch, rounds=1)

    monkeypatch.setattr(selection, "measure_speed", counting)
    return made


def _photo_batch(preprocessing: object) -> np.ndarray:
    pre = preprocessing
    images = [decode_image(d, target_short_side=pre.resize_short_side) for d in sample_photos().values()]  # type: ignore[attr-defined]
    return pre.batch(images).numpy()  # type: ignore[attr-defined, no-any-return]


def test_openvino_runs_the_exported_file_and_agrees_with_torch(cache: Path) -> None:
    ov = load_model("efficientnet_lite0", backend="openvino")
    ref = load_model("efficientnet_lite0", backend="torch")
    session = ov.onnx_session
    assert isinstance(session, OpenVinoSession) and ov.backend == "openvino" and ov.precision == "fp32"
    assert session.path.parent == cache and session.path.suffix == ".onnx"  # the ONNX Runtime export
    assert session.requests == session.streams >= 1
    assert session.agreement is not None and session.agreement.passes(), session.agreement
    assert list(cache.glob("*.openvino-*.agreement.json"))  # stored: not checked again at the next start
    batch = _photo_batch(ov.preprocessing)
    import torch

    p_ov, p_torch = ov.predict_proba(torch.from_numpy(batch)), ref.predict_proba(torch.from_numpy(batch))
    assert torch.equal(p_ov.argmax(1), p_torch.argmax(1))
    assert float((p_ov - p_torch).abs().max()) < 1e-3
    # Shards over the infer requests give what one whole-batch request gives.
    whole = session._compiled(batch)[0]
    assert np.abs(session.run(batch) - whole).max() < 1e-5
    with pytest.raises(ValueError, match="empty"):
        session.run(batch[:0])
    with pytest.raises(ValueError, match=r"\(N, 3, 224, 224\)"):
        session.run(np.zeros((1, 3, 32, 32), np.float32))


def test_auto_times_both_backends_once_per_cpu_and_model_file(
    cache: Path, speed_runs: list[list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    first = load_model("efficientnet_lite0")
    assert speed_runs == [["onnxruntime", "openvino"]]
    stored = json.loads((cache / "speed.json").read_text())
    (key,) = stored
    assert key.startswith(cpu_model_name()) and first.onnx_session is not None
    assert first.onnx_session.path.name in key
    faster = max(("onnxruntime", "openvino"), key=lambda k: stored[key][k])
    assert first.backend == faster
    second = load_model("efficientnet_lite0")  # read back, not measured again
    assert len(speed_runs) == 1 and second.backend == first.backend
    # Another CPU model: measured again.
    monkeypatch.setattr(selection.openvino_backend, "cpu_model_name", lambda: "Another CPU [0]")
    load_model("efficientnet_lite0")
    assert len(speed_runs) == 2


@pytest.mark.parametrize("winner", ["openvino", "onnxruntime"])
def test_auto_uses_the_faster_backend(cache: Path, winner: str, monkeypatch: pytest.MonkeyPatch) -> None:
    (cache / "speed.json").unlink(missing_ok=True)
    monkeypatch.setattr(
        selection, "measure_speed", lambda runs, batch: {k: (2.0 if k == winner else 1.0) for k in runs}
    )
    assert load_model("efficientnet_lite0").backend == winner
    (cache / "speed.json").unlink(missing_ok=True)


def test_cpu_flags_can_be_forced(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BUILDFLOW_CPU_FLAGS", "avx2, AMX_BF16")
    assert cpu_flags() == {"avx2", "amx_bf16"}
    assert precision_support("bf16") is None
    missing = precision_support("int8")
    assert missing is not None and "avx512_vnni" in missing
    monkeypatch.setenv("BUILDFLOW_CPU_FLAGS", "")
    assert cpu_flags() == frozenset() and precision_support("fp32") is None


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_reduced_precision_without_the_instructions_is_fp32_with_a_warning(
    cache: Path, precision: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("BUILDFLOW_CPU_FLAGS", "sse4_2 avx2 fma")
    with caplog.at_level(logging.WARNING, logger="models.backend_selection"):
        model = load_model("efficientnet_lite0", backend="openvino", precision=precision)  # type: ignore[arg-type]
    assert model.precision == "fp32" and model.backend == "openvino"
    assert f"precision {precision} not used, this CPU has none of the {precision} instructions" in caplog.text


def test_bf16_with_the_instructions_is_measured_against_fp32_and_used(
    cache: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Forced on: where the CPU has no bf16 OpenVINO still computes f32 (it says so), which
    # is enough to show the rule: measured once on real photos, then used.
    monkeypatch.setenv("BUILDFLOW_CPU_FLAGS", "avx2 avx512_bf16")
    monkeypatch.setattr(quantization, "AGREEMENT_PHOTOS", 12)
    measured: list[str] = []
    real = quantization.measure_agreement

    def counting(precision: str, *args: object, **kwargs: object) -> quantization.PrecisionAgreement:
        measured.append(precision)
        return real(precision, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(quantization, "measure_agreement", counting)
    with caplog.at_level(logging.INFO, logger="models.backend_selection"):
        model = load_model("efficientnet_lite0", backend="openvino", precision="bf16")
    assert model.precision == "bf16" and measured == ["bf16"]
    session = model.onnx_session
    assert isinstance(session, OpenVinoSession) and session.agreement.photos == 12
    assert "bf16 vs fp32 on 12 real photos: top-1 agreement" in caplog.text
    load_model("efficientnet_lite0", backend="openvino", precision="bf16")
    assert measured == ["bf16"]  # stored in precision.json


@pytest.mark.parametrize("top1, expected", [(0.985, "fp32"), (0.995, "bf16")])
def test_auto_precision_needs_99_percent_top1_agreement(
    cache: Path,
    top1: float,
    expected: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("BUILDFLOW_CPU_FLAGS", "avx2 amx_bf16")  # bf16 on, int8 off
    (cache / "precision.json").unlink(missing_ok=True)
    monkeypatch.setattr(
        quantization,
        "measure_agreement",
        lambda precision, *a, **k: quantization.PrecisionAgreement(precision, 500, top1, 0.99, 0.05),
    )
    monkeypatch.setattr(
        selection, "measure_speed", lambda runs, batch: {k: (2.0 if k == "bf16" else 1.0) for k in runs}
    )
    (cache / "speed.json").unlink(missing_ok=True)
    with caplog.at_level(logging.INFO, logger="models.backend_selection"):
        model = load_model("efficientnet_lite0", backend="openvino", precision="auto")
    assert model.precision == expected
    if expected == "fp32":
        assert "is below the 0.99 top-1 agreement auto needs; running fp32" in caplog.text
    (cache / "precision.json").unlink(missing_ok=True)
    (cache / "speed.json").unlink(missing_ok=True)


def test_bad_precision_arguments_are_errors() -> None:
    with pytest.raises(ModelError, match="unknown precision 'fp8'"):
        load_model("efficientnet_lite0", precision="fp8")  # type: ignore[arg-type]
    with pytest.raises(ModelError, match="precision 'int8' runs on OpenVINO"):
        load_model("efficientnet_lite0", backend="onnxruntime", precision="int8")
    with pytest.raises(ModelError, match="unknown backend 'tensorrt'"):
        load_model("efficientnet_lite0", backend="tensorrt")  # type: ignore[arg-type]


def test_compare_counts_top1_top5_and_the_largest_difference() -> None:
    ref = np.array([[3.0, 2.0, 1.0, 0.0, -1.0, -2.0], [0.0, 5.0, 1.0, 0.0, 0.0, 0.0]])
    same = quantization.compare("int8", ref, ref)
    assert (same.top1_agreement, same.top5_overlap, same.max_prob_diff) == (1.0, 1.0, 0.0)
    ref[1] = [0.5, 5.0, 1.0, 0.2, 0.1, -1.0]
    swapped = ref.copy()
    swapped[1] = [0.5, 1.0, 5.0, 0.2, -9.0, 0.1]  # top-1 changes; one of the top 5 leaves
    got = quantization.compare("int8", ref, swapped)
    assert got.top1_agreement == 0.5 and got.top5_overlap == pytest.approx(0.9)
    assert got.max_prob_diff > 0.5 and not got.passes()
