"""Interleaved A/B of ``ImageClassificationProcessor``: this checkout against a git revision.

The processor of ``--baseline`` (default ``main``) is read with ``git show`` into a temporary
module; both run the real in-process runtime (:func:`buildflow.testing.run_processor`) over
the same N real photos, alternating A, B / B, A round by round, so that a shared, noisy
machine slows both alike. Throughput of one run: images over the time from the first
``prefetch``/``process_batch`` call to the end of the last ``process_batch`` (model loading
and warm-up excluded). Prints each round and the median ratio new / baseline with its range.

    .venv/bin/python -m benchmarks.processor_ab --images 300 --rounds 5
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from schemas import ImageClassificationRow

REPO = Path(__file__).resolve().parents[1]


def _baseline_class(rev: str, folder: Path) -> type[Any]:
    source = subprocess.run(
        ["git", "show", f"{rev}:processors/image_classification.py"],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    path = folder / "baseline_image_classification.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("baseline_image_classification", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cls: type[Any] = module.ImageClassificationProcessor
    return cls


def _timed(cls: type[Any]) -> type[Any]:
    class Timed(cls):  # type: ignore[misc, valid-type]
        first: float | None = None
        last: float = 0.0

        def prefetch(self, events: list[Any]) -> None:
            self.first = self.first or time.perf_counter()
            super().prefetch(events)

        def process_batch(self, events: list[Any]) -> list[ImageClassificationRow | Exception]:
            self.first = self.first or time.perf_counter()
            out = super().process_batch(events)
            self.last = time.perf_counter()
            return out

    return Timed


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--baseline", default="main", help="git revision of the baseline processor")
    args = parser.parse_args()

    from buildflow.testing import gcs_file_event, run_processor
    from models.samples import sample_photos
    from processors.image_classification import ImageClassificationProcessor

    photos = list(sample_photos().items())
    events = [
        gcs_file_event(f"{i:04d}-{name}", data)
        for i, (name, data) in enumerate(photos[i % len(photos)] for i in range(args.images))
    ]
    with tempfile.TemporaryDirectory() as tmp:
        variants = {
            "baseline": _timed(_baseline_class(args.baseline, Path(tmp))),
            "new": _timed(ImageClassificationProcessor),
        }
        rates: dict[str, list[float]] = {"baseline": [], "new": []}
        top1: dict[str, dict[str, int]] = {}
        print(
            f"{args.images} photos, {args.rounds} rounds, load average {os.getloadavg()[0]:.2f}", flush=True
        )
        for r in range(args.rounds):
            order = ["baseline", "new"] if r % 2 == 0 else ["new", "baseline"]
            for name in order:
                processor = variants[name](bucket_name="bench", table_id="bench.predictions")
                result = run_processor(processor, events)
                assert len(result.rows) == args.images, result.dead_letters
                rates[name].append(args.images / (processor.last - processor.first))
                top1[name] = {
                    row["image_name"]: row["classifications"][0]["class_index"] for row in result.rows
                }
            ratio = rates["new"][-1] / rates["baseline"][-1]
            print(
                f"round {r + 1}: baseline {rates['baseline'][-1]:.1f} img/s, "
                f"new {rates['new'][-1]:.1f} img/s, new/baseline {ratio:.3f} (load {os.getloadavg()[0]:.2f})",
                flush=True,
            )
    assert top1["baseline"] == top1["new"], "the two processors disagree on a top-1 class"
    ratios = [n / b for n, b in zip(rates["new"], rates["baseline"])]
    base, new = statistics.median(rates["baseline"]), statistics.median(rates["new"])
    print(
        f"new/baseline: median {statistics.median(ratios):.3f} (range {min(ratios):.3f}-{max(ratios):.3f}); "
        f"median img/s baseline {base:.1f}, new {new:.1f}"
    )


if __name__ == "__main__":
    main()
