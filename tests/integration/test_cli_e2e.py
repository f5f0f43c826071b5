"""The whole user session on the embedded default, through the real CLI, on real photos
with the real pretrained model: plan -> run --until-idle -> query -> destroy."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from models.labels import CAT_CLASS_INDICES, DOG_CLASS_INDICES
from models.samples import sample_photos
from tests.models.sample_images import decompression_bomb_png, truncated_jpeg

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
BUILDFLOW = [sys.executable, "-m", "buildflow.cli"]
BUCKET = "buildflow-images"
TABLE = "image_classification.predictions"
DEAD = "image_classification.buildflow_dead_letters"


def buildflow(
    *args: str,
    state: Path,
    input: str | None = None,
    cwd: Path = REPO,
    timeout: float = 240,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BUILDFLOW_LOG_LEVEL": "info", "COLUMNS": "200"}
    env.pop("BUILDFLOW_ENV", None)
    proc = subprocess.run(
        [*BUILDFLOW, *args, "--state-dir", str(state)],
        cwd=cwd,
        env=env,
        input=input if input is not None else "",
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"buildflow {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


def query(sql: str, state: Path, app: str = "main:app", cwd: Path = REPO) -> list[dict[str, Any]]:
    out = buildflow("query", app, sql, "--format", "json", state=state, cwd=cwd).stdout
    result: list[dict[str, Any]] = json.loads(out)
    return result


BAD_INPUTS = {
    "empty.jpg": (b"", "EmptyImageError"),
    "truncated.jpg": (truncated_jpeg(), "TruncatedImageError"),
    # seeded: some random prefixes ("BM", 1 in 65536) look like a BMP header
    "random.jpg": (random.Random(20261122).randbytes(4096), "UnsupportedImageError"),
    "notes.txt": (b"these are not the pixels you are looking for\n", "UnsupportedImageError"),
    "bomb.png": (decompression_bomb_png(), "ImageTooLargeError"),
}


def test_plan_run_query_destroy_on_real_photos(tmp_path: Path) -> None:
    state = tmp_path / "state"
    # plan asks, and creates nothing on "n"
    declined = buildflow("plan", "main:app", state=state, input="n\n", check=False)
    assert declined.returncode == 1 and "Nothing applied" in declined.stdout
    assert not (state / "buckets" / BUCKET).exists()

    first = buildflow("plan", "main:app", state=state, input="y\n")
    assert first.stdout.count("create") >= 4 and "Applied 4 change(s)" in first.stdout
    second = buildflow("plan", "main:app", state=state)
    assert "No changes" in second.stdout and "create" not in second.stdout

    bucket = state / "buckets" / BUCKET
    photos = sample_photos(require_darknet=True)
    for name, data in photos.items():
        (bucket / name).write_bytes(data)
    for name, (data, _) in BAD_INPUTS.items():
        (bucket / name).write_bytes(data)

    summary_path = tmp_path / "summary.json"
    run = buildflow("run", "main:app", "--until-idle", "--summary-json", str(summary_path), state=state)
    summary = json.loads(summary_path.read_text())
    assert summary["stop_reason"] == "until-idle"
    assert summary["events"] == len(photos) + len(BAD_INPUTS)
    assert summary["rows"] == len(photos) and summary["dead_letters"] == len(BAD_INPUTS)
    (proc,) = summary["processors"]
    assert proc["setup_calls"] == 1 and proc["metrics"]["model_loads"] == 1
    for name in BAD_INPUTS:  # a warning line per bad input
        assert f"dead-lettered {name}" in run.stderr

    rows = {r["image_name"]: r for r in query(f"SELECT * FROM {TABLE}", state)}
    assert set(rows) == set(photos)
    top = {n: [c["class_index"] for c in r["classifications"]] for n, r in rows.items()}
    assert set(top["chelsea.jpg"]) & set(CAT_CLASS_INDICES)
    assert rows["coffee.jpg"]["classifications"][0]["label"] == "espresso"
    assert top["dog.jpg"][0] in DOG_CLASS_INDICES
    for r in rows.values():
        assert len(r["classifications"]) == 5
        assert r["model"] == "efficientnet_lite0"
        assert r["event_id"] == f"{BUCKET}/{r['image_name']}#{r['_event_id'].split('#')[1]}"
        confs = [c["confidence"] for c in r["classifications"]]
        assert confs == sorted(confs, reverse=True) and 0 < sum(confs) <= 1.0001

    # the README's query command, verbatim
    readme = (REPO / "README.md").read_text()
    match = re.search(r'^buildflow query main:app "(.+)"$', readme, re.M)
    assert match, "README lost its query command"
    top1 = {r["image_name"]: r["top1"] for r in query(match.group(1), state)}
    assert top1["coffee.jpg"] == "espresso" and set(top1) == set(photos)

    # the documented UNNEST query works
    cats = query(
        f"SELECT image_name, c.label FROM {TABLE}, UNNEST(classifications) AS c WHERE c.label = 'espresso'",
        state,
    )
    assert [r["image_name"] for r in cats] == ["coffee.jpg"]

    dead = {r["object_name"]: r for r in query(f"SELECT * FROM {DEAD}", state)}
    assert set(dead) == set(BAD_INPUTS)
    for name, (_, error_type) in BAD_INPUTS.items():
        assert dead[name]["error_type"] == error_type, dead[name]
        assert dead[name]["reason"].startswith(error_type + ": ")

    # a second run finds nothing new: acked events are not re-processed
    again = tmp_path / "again.json"
    buildflow("run", "main:app", "--until-idle", "--summary-json", str(again), state=state)
    assert json.loads(again.read_text())["events"] == 0

    # destroy asks too, and deletes nothing without a yes (no answer on a pipe means no)
    kept = buildflow("destroy", "main:app", "--force", state=state, input="", check=False)
    assert kept.returncode != 0 and bucket.exists()
    # the shipped processor sets no force flags: results and photos need --force
    refused = buildflow("destroy", "main:app", state=state, input="y\n", check=False)
    assert refused.returncode == 1 and "destroy_protection=True" in refused.stdout and bucket.exists()
    gone = buildflow("destroy", "main:app", "--force", state=state, input="y\n")
    assert "Deleted 4 resource(s)" in gone.stdout
    assert not bucket.exists()
    assert "create" in buildflow("plan", "main:app", state=state, input="n\n", check=False).stdout


CONFLICT_APP = """
import dataclasses
import buildflow
from buildflow.io import BigQueryTable, GCSFileEvent, GCSFileStream

@dataclasses.dataclass
class Row:
    image_name: int          # was STRING in main.py's table
    note: str | None = None

class P(buildflow.Processor):
    name = "image_classification"
    def source(self):
        return GCSFileStream(bucket_name="buildflow-images")
    def sink(self):
        return BigQueryTable(table_id="buildflow-local.image_classification.predictions",
                             destroy_protection={protected})
    def process(self, event: GCSFileEvent) -> Row:
        return Row(image_name=event.size)

app = buildflow.Node()
app.add(P())
"""


def test_plan_reports_schema_conflict_and_destroy_honours_protection(tmp_path: Path) -> None:
    state = tmp_path / "state"
    buildflow("plan", "main:app", "--yes", state=state)
    (tmp_path / "conflict_app.py").write_text(CONFLICT_APP.format(protected=True))
    plan = buildflow("plan", "conflict_app:app", state=state, cwd=tmp_path, check=False)
    assert plan.returncode == 1
    assert "conflict" in plan.stdout
    assert "image_name" in plan.stdout and "INT64" in plan.stdout and "STRING" in plan.stdout
    assert "1 conflict(s)" in plan.stderr

    refused = buildflow("destroy", "conflict_app:app", "--yes", state=state, cwd=tmp_path, check=False)
    assert refused.returncode == 1
    assert "destroy_protection=True" in refused.stdout + refused.stderr
    assert "--force" in refused.stderr
    assert (state / "warehouse.duckdb").exists()
    assert query(f"SELECT count(*) AS n FROM {TABLE}", state)[0]["n"] == 0  # still there

    forced = buildflow("destroy", "conflict_app:app", "--yes", "--force", state=state, cwd=tmp_path)
    assert "Deleted" in forced.stdout
    after = buildflow("plan", "main:app", state=state, input="n\n", check=False)
    assert "create" in after.stdout and "image_classification.predictions" in after.stdout


def _acked(state: Path) -> int:
    db = state / "subscriptions" / f"{BUCKET}.image_classification.sqlite3"
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
            return int(con.execute("SELECT count(*) FROM acked").fetchone()[0])
    except sqlite3.Error:
        return 0


def test_sigterm_drains_then_restart_finishes_with_exactly_one_row_per_image(tmp_path: Path) -> None:
    state = tmp_path / "state"
    buildflow("plan", "main:app", "--yes", state=state)
    bucket = state / "buckets" / BUCKET
    photos = list(sample_photos().values())
    n = 120
    for i in range(n):
        (bucket / f"img_{i:04d}.jpg").write_bytes(photos[i % len(photos)])

    summary_path = tmp_path / "summary.json"
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.Popen(
        [*BUILDFLOW, "run", "main:app", "--state-dir", str(state), "--summary-json", str(summary_path)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while _acked(state) == 0:  # bounded poll: the first micro-batch is written and acked
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no event acked within 120 s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "draining" in err
    summary = json.loads(summary_path.read_text())
    assert summary["stop_reason"] == "signal"
    assert 0 < summary["events"] < n, "the drain stopped pulling before the backlog was done"
    written = query(f"SELECT count(*) AS n FROM {TABLE}", state)[0]["n"]
    assert written == summary["rows"] == summary["events"] == _acked(state)
    assert summary["processors"][0]["teardown_calls"] == 1

    buildflow("run", "main:app", "--until-idle", state=state)
    per_image = query(f"SELECT image_name, count(*) AS n FROM {TABLE} GROUP BY image_name", state)
    assert len(per_image) == n and all(r["n"] == 1 for r in per_image)


WALKTHROUGH_APP = """
# The BuildFlow 0.1 image-classification walkthrough, with only the model-loading lines
# changed (ImageAI's ResNet50 -> this repo's model registry).
import dataclasses
import os
import tempfile
from typing import List

import buildflow
from buildflow import Node

GCP_PROJECT = "buildflow-walkthrough"
BUCKET_NAME = "walkthrough-bucket"


@dataclasses.dataclass
class Classification:
    classification: str
    confidence: float


@dataclasses.dataclass
class ImageClassificationRow:
    image_name: str
    upload: str
    classifications: List[Classification]


app = Node()


class ImageClassificationProcessor(buildflow.Processor):
    def source(self):
        return buildflow.io.GCSFileStream(
            project_id=GCP_PROJECT,
            bucket_name=BUCKET_NAME,
            force_destroy=True,
        )

    def sink(self):
        return buildflow.io.BigQueryTable(
            table_id=f"{GCP_PROJECT}.launchflow_walkthrough.image_classification",
            destroy_protection=False,
        )

    def setup(self):
        from models import load_model                      # changed: model loading
        self.prediction = load_model("efficientnet_lite0")  # changed: model loading

    def process(
        self, gcs_file_event: buildflow.io.GCSFileEvent
    ) -> ImageClassificationRow:
        with tempfile.TemporaryDirectory() as td:
            file_path = os.path.join(td, gcs_file_event.metadata["objectId"])
            with open(file_path, "wb") as f:
                f.write(gcs_file_event.blob)
            from models import decode_image                                 # changed
            with open(file_path, "rb") as f:                                # changed
                top = self.prediction.classify([decode_image(f.read())])[0]  # changed
            predictions = [p.label for p in top]                            # changed
            probabilities = [p.confidence for p in top]                     # changed
        classifications = []
        for predicition, probability in zip(predictions, probabilities):
            classifications.append(Classification(predicition, probability))
        return ImageClassificationRow(
            image_name=gcs_file_event.metadata["objectId"],
            upload=gcs_file_event.metadata["eventTime"],
            classifications=classifications,
        )


app.add(ImageClassificationProcessor())

if __name__ == "__main__":
    app.run()
"""


def test_original_walkthrough_code_runs_with_only_model_loading_changed(tmp_path: Path) -> None:
    (tmp_path / "walkthrough.py").write_text(textwrap.dedent(WALKTHROUGH_APP))
    state = tmp_path / "state"
    buildflow("plan", "walkthrough:app", "--yes", state=state, cwd=tmp_path)
    (state / "buckets" / "walkthrough-bucket" / "coffee.jpg").write_bytes(sample_photos()["coffee.jpg"])
    buildflow("run", "walkthrough:app", "--until-idle", state=state, cwd=tmp_path)
    (row,) = query(
        "SELECT * FROM launchflow_walkthrough.image_classification",
        state,
        app="walkthrough:app",
        cwd=tmp_path,
    )
    assert row["image_name"] == "coffee.jpg"
    assert row["upload"].endswith("Z")  # the notification's eventTime, RFC 3339
    assert row["classifications"][0]["classification"] == "espresso"
    buildflow("destroy", "walkthrough:app", "--yes", state=state, cwd=tmp_path)
