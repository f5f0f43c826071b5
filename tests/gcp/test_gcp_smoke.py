"""The README's ``gcp`` walkthrough, end to end on a real Google Cloud project.

Runs only when ``BUILDFLOW_GCP_SMOKE_PROJECT`` names a project and Application Default
Credentials are present (skipped with that reason otherwise)::

    gcloud auth application-default login
    BUILDFLOW_GCP_SMOKE_PROJECT=my-project .venv/bin/python -m pytest tests/gcp -q

Everything it creates is named under one unique prefix (bucket ``bf-smoke-<id>``, dataset
``bf_smoke_<id>``) and removed at the end, also when a step fails. It costs cents: a few
Pub/Sub messages, a dozen small objects, a few MiB of BigQuery writes.

Steps: ``doctor`` (exit 0), ``plan --yes`` (bucket with labels and uniform access, topic,
subscription, notification, dataset, tables), a photo uploaded *before* ``run`` and
``backfill``, ``run`` with streaming pull while photos are uploaded, rows checked with
the BigQuery client, ``destroy --yes --force`` (everything plan created goes).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
PROJECT = os.environ.get("BUILDFLOW_GCP_SMOKE_PROJECT")


def _skip_reason() -> str | None:
    if not PROJECT:
        return "set BUILDFLOW_GCP_SMOKE_PROJECT=<project id> to run the real-project smoke test"
    try:
        import google.auth

        google.auth.default()
    except Exception as e:
        return (
            f"no Application Default Credentials ({type(e).__name__}): gcloud auth application-default login"
        )
    return None


pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or ""),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]


@pytest.fixture
def walkthrough_env() -> Iterator[dict[str, str]]:
    run_id = uuid.uuid4().hex[:10]
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PUBSUB_EMULATOR_HOST", "STORAGE_EMULATOR_HOST", "BIGQUERY_EMULATOR_HOST")
    }
    env |= {
        "BUILDFLOW_ENV": "gcp",
        "GCP_PROJECT": str(PROJECT),
        "BUCKET_NAME": f"bf-smoke-{run_id}",
        "BQ_DATASET": f"bf_smoke_{run_id}",
        "PYTHONPATH": str(REPO),
        "COLUMNS": "200",
    }
    yield env
    # clean up whatever a failed step left, plan's resources first, then the test's own
    subprocess.run(
        [sys.executable, "-m", "buildflow.cli", "destroy", "main:app", "--yes", "--force"],
        cwd=REPO,
        env=env,
        capture_output=True,
        timeout=600,
    )
    from google.cloud import bigquery, storage

    storage_client = storage.Client(project=PROJECT)
    for name in (env["BUCKET_NAME"],):
        bucket = storage_client.lookup_bucket(name)
        if bucket is not None:
            for blob in storage_client.list_blobs(name, versions=True):
                blob.delete()
            bucket.delete()
    bigquery.Client(project=PROJECT).delete_dataset(
        f"{PROJECT}.{env['BQ_DATASET']}", delete_contents=True, not_found_ok=True
    )


def cli(*args: str, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "buildflow.cli", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"buildflow {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


def test_readme_gcp_walkthrough_on_a_real_project(walkthrough_env: dict[str, str]) -> None:
    from google.cloud import bigquery, storage

    from models.samples import sample_photos

    env = walkthrough_env
    photos = sample_photos()
    cli("doctor", "main:app", env=env)
    planned = cli("plan", "main:app", "--yes", env=env)
    for kind in ("bucket", "topic", "subscription", "notification", "dataset", "table"):
        assert kind in planned.stdout
    bucket = storage.Client(project=PROJECT).get_bucket(env["BUCKET_NAME"])
    assert bucket.labels.get("managed-by") == "buildflow"
    assert bucket.iam_configuration.uniform_bucket_level_access_enabled
    first, *rest = sorted(photos)
    bucket.blob(first).upload_from_string(photos[first], content_type="image/jpeg")
    cli("backfill", "main:app", "--yes", env=env)

    run = subprocess.Popen(
        [sys.executable, "-m", "buildflow.cli", "run", "main:app"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    table = f"{PROJECT}.{env['BQ_DATASET']}.predictions"
    bq = bigquery.Client(project=PROJECT)
    try:
        for name in rest:
            bucket.blob(name).upload_from_string(photos[name], content_type="image/jpeg")
        deadline = time.monotonic() + 600
        got: dict[str, Any] = {}
        while time.monotonic() < deadline and len(got) < len(photos):
            assert run.poll() is None, run.communicate()
            got = {
                r["image_name"]: r["n"]
                for r in bq.query(
                    f"SELECT image_name, COUNT(*) AS n FROM `{table}` GROUP BY image_name"
                ).result()
            }
            time.sleep(5)  # a real service: poll politely
        assert set(got) == set(photos)
    finally:
        run.send_signal(signal.SIGINT)
        run.communicate(timeout=300)

    gone = cli("destroy", "main:app", "--yes", "--force", env=env)
    assert "Deleted" in gone.stdout
    assert storage.Client(project=PROJECT).lookup_bucket(env["BUCKET_NAME"]) is None
