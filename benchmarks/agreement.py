"""How far each fast path is from the reference, on distinct real photos: not timing.

* Backends: OpenVINO fp32 against ONNX Runtime fp32 (the same exported file).
* Precisions: bf16 (OpenVINO's inference precision hint; where the CPU has AMX or
  AVX512-BF16, else reported as not available) and int8 (the file
  :func:`models.quantization.quantized_file` makes, run on OpenVINO; measured even on a
  CPU without VNNI, where ``load_model`` would fall back to fp32) against fp32.
* Decode: the scaled JPEG decode (simplejpeg) against Pillow's path, both through the
  same preprocessing and the fp32 model: the share of photos whose top-1 class changes.

Each is reported as top-1 agreement, top-5 overlap and the largest probability difference
(:func:`models.quantization.compare`). The photos are :func:`models.samples.distinct_photos`
(seed 0, half ~500x375, half ~1350x900), none of them a calibration photo (seed 1).
Also prints an interleaved A/B ratio of decode + preprocessing per photo, Pillow vs
simplejpeg, in this process (a ratio, not a throughput: the machine may be shared).

    .venv/bin/python -m benchmarks.agreement [--photos 500] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Any

import numpy as np

__all__ = ["main", "measure"]


def measure(photos: int = 500, model_name: str = "efficientnet_lite0") -> dict[str, Any]:
    """The figures of the module docstring, as a dict (see :func:`main` for the keys)."""
    from models import decode_image, load_model
    from models.openvino_backend import OpenVinoSession, cpu_model_name, import_openvino, precision_support
    from models.quantization import compare, quantized_file, run_batched
    from models.samples import distinct_photos

    classifier = load_model(model_name, backend="onnxruntime")
    from models.onnx_backend import OnnxSession

    session = classifier.onnx_session
    assert isinstance(session, OnnxSession)
    pre = classifier.preprocessing
    side = pre.resize_short_side
    jpegs = [data for _, data in distinct_photos(photos, seed=0)]

    def prepare(decoder: str) -> tuple[np.ndarray, float]:
        t0 = time.perf_counter()
        arrays = [pre(decode_image(d, target_short_side=side, jpeg_decoder=decoder)).numpy() for d in jpegs]  # type: ignore[arg-type]
        return np.stack(arrays), time.perf_counter() - t0

    # Interleaved: pillow, simplejpeg, pillow, simplejpeg (the first pair warms up).
    times: dict[str, list[float]] = {"pillow": [], "auto": []}
    arrays: dict[str, np.ndarray] = {}
    for _ in range(2):
        for decoder in ("pillow", "auto"):
            arrays[decoder], seconds = prepare(decoder)
            times[decoder].append(seconds)
    fp32 = run_batched(session.run_array, arrays["pillow"])
    out: dict[str, Any] = {
        "photos": photos,
        "cpu": cpu_model_name(),
        "load_average": os.getloadavg()[0],
        "decode": {
            "simplejpeg_vs_pillow": compare(
                "decode", fp32, run_batched(session.run_array, arrays["auto"])
            ).__dict__,
            "decode_preprocess_speed_ratio": statistics.median(times["pillow"])
            / statistics.median(times["auto"]),
        },
    }
    ov = import_openvino()
    if ov is None:
        out["openvino"] = "not installed"
        return out
    reference = arrays["pillow"]
    shape = session.input_shape
    ov_fp32 = OpenVinoSession(ov, session.path, input_shape=shape)
    out["openvino_fp32_vs_onnxruntime_fp32"] = compare(
        "fp32", fp32, run_batched(ov_fp32.run, reference)
    ).__dict__
    precisions: dict[str, Any] = {}
    missing = precision_support("bf16")
    if missing is None:
        bf16 = OpenVinoSession(ov, session.path, input_shape=shape, precision="bf16")
        precisions["bf16"] = compare("bf16", fp32, run_batched(bf16.run, reference)).__dict__
    else:
        precisions["bf16"] = f"not measured: {missing}"
    int8 = OpenVinoSession(ov, quantized_file(session.path, pre), input_shape=shape, precision="int8")
    precisions["int8"] = compare("int8", fp32, run_batched(int8.run, reference)).__dict__
    precisions["int8_native"] = precision_support("int8") is None
    out["precision_vs_fp32"] = precisions
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, default=500)
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args(argv)
    result = measure(args.photos, args.model)
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
