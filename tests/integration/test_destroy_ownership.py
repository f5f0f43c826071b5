"""``destroy`` deletes only what this app's ``plan`` created: a bucket that existed before
``plan`` (with the user's objects in it) is kept, also with ``--force``, in ``local`` and in
``emulator``; ``backfill`` enqueues the objects that were in the bucket before ``plan`` with
their notification event ids, so ``run`` processes them in ``emulator`` as ``local`` does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.stack.clients import bq_client, bq_rows, gcs_client

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning")]

REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "buildflow.cli"]
PROJECT = "buildflow-local"
TABLE = f"{PROJECT}.image_classification.predictions"

SMALL_APP = """
import dataclasses, os
import buildflow
from buildflow.io import BigQueryTable, GCSFileEvent, GCSFileStream

@dataclasses.dataclass
class Row:
    name: str
    size: int

class Sizes(buildflow.Processor):
    name = "sizes"
    def source(self):
        return GCSFileStream(project_id="buildflow-local", bucket_name=os.environ["BUCKET_NAME"])
    def sink(self):
        return BigQueryTable(table_id="buildflow-local.ownership_" + os.environ["SUFFIX"] + ".sizes")
    def process(self, event: GCSFileEvent) -> Row:
        return Row(event.name, len(event.blob))

app = buildflow.Node(name="ownership")
app.add(Sizes())
"""


def cli(*args: str, env: dict[str, str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [*CLI, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=240, input=""
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"buildflow {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


@pytest.fixture
def small_app(tmp_path: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    suffix = f"{os.getpid()}_{time.monotonic_ns() % 10**9}"
    (tmp_path / "small_app.py").write_text(SMALL_APP)
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "BUCKET_NAME": f"bf-own-{suffix.replace('_', '-')}",
        "SUFFIX": suffix,
        "COLUMNS": "200",
    }
    yield tmp_path, env


def test_local_destroy_force_keeps_a_bucket_folder_that_existed_before_plan(
    small_app: tuple[Path, dict[str, str]],
) -> None:
    cwd, env = small_app
    env = {**env, "BUILDFLOW_ENV": "local"}
    bucket = cwd / ".buildflow" / "local" / "buckets" / env["BUCKET_NAME"]
    bucket.mkdir(parents=True)
    (bucket / "mine.jpg").write_bytes(b"the user's photo")
    planned = cli("plan", "small_app:app", "--yes", env=env, cwd=cwd)
    assert "no change" in planned.stdout  # the bucket folder
    gone = cli("destroy", "small_app:app", "--yes", "--force", env=env, cwd=cwd)
    assert "kept" in gone.stdout and "existed before" in gone.stdout
    assert (bucket / "mine.jpg").read_bytes() == b"the user's photo"
    # the ack store and the table plan created are gone
    assert "absent" in cli("destroy", "small_app:app", "--yes", "--force", env=env, cwd=cwd).stdout

    # a bucket folder plan created is deleted by destroy --force, files and all
    new_env = {**env, "BUCKET_NAME": env["BUCKET_NAME"] + "-new"}
    cli("plan", "small_app:app", "--yes", env=new_env, cwd=cwd)
    created = cwd / ".buildflow" / "local" / "buckets" / new_env["BUCKET_NAME"]
    (created / "a.jpg").write_bytes(b"a")
    cli("destroy", "small_app:app", "--yes", "--force", env=new_env, cwd=cwd)
    assert not created.exists()


@pytest.mark.slow
def test_emulator_backfill_then_destroy_force_keeps_the_users_bucket(
    stack_env: Any, small_app: tuple[Path, dict[str, str]]
) -> None:
    """A bucket with objects before ``plan``: plan lists it as "no change", ``backfill``
    enqueues its objects (their rows land once, with the notification event ids, also when
    backfilled twice), and ``destroy --force`` keeps the bucket and its objects while
    deleting the subscription, table and dataset plan created."""
    cwd, env = small_app
    env = {**env, **stack_env.env, "BUILDFLOW_ENV": "emulator"}
    name = env["BUCKET_NAME"]
    bucket = gcs_client().create_bucket(name)
    for obj, data in (("a.jpg", b"aaa"), ("dir/b.jpg", b"bbbbb")):
        bucket.blob(obj).upload_from_string(data, content_type="image/jpeg")
    generations = {b.name: b.generation for b in gcs_client().list_blobs(name)}

    planned = cli("plan", "small_app:app", "--yes", env=env, cwd=cwd)
    assert "no change" in planned.stdout
    assert "2 object(s)" in cli("backfill", "small_app:app", "--dry-run", env=env, cwd=cwd).stdout
    for _ in range(2):  # twice: idempotent
        assert "enqueued 2 object(s)" in cli("backfill", "small_app:app", "--yes", env=env, cwd=cwd).stdout
    summary = cwd / "summary.json"
    cli("run", "small_app:app", "--until-idle", "--summary-json", str(summary), env=env, cwd=cwd)
    table = f"{PROJECT}.ownership_{env['SUFFIX']}.sizes"
    got = {
        r["name"]: (r["size"], r["_event_id"])
        for r in bq_rows(f"SELECT name, size, _event_id FROM `{table}`")
    }
    assert got == {
        "a.jpg": (3, f"{name}/a.jpg#{generations['a.jpg']}"),
        "dir/b.jpg": (5, f"{name}/dir/b.jpg#{generations['dir/b.jpg']}"),
    }
    assert json.loads(summary.read_text())["dead_letters"] == 0

    gone = cli("destroy", "small_app:app", "--yes", "--force", env=env, cwd=cwd)
    assert "kept" in gone.stdout and "existed before" in gone.stdout
    assert sorted(b.name for b in gcs_client().list_blobs(name)) == ["a.jpg", "dir/b.jpg"]
    assert gcs_client().bucket(name).blob("a.jpg").download_as_bytes() == b"aaa"
    from google.cloud import pubsub_v1

    subs = [
        s.name
        for s in pubsub_v1.SubscriberClient().list_subscriptions(request={"project": f"projects/{PROJECT}"})
    ]
    assert not [s for s in subs if name in s]
    assert f"ownership_{env['SUFFIX']}" not in [d.dataset_id for d in bq_client().list_datasets()]
    bucket.delete(force=True)


@pytest.mark.slow
def test_emulator_destroy_force_deletes_a_bucket_plan_created(
    stack_env: Any, small_app: tuple[Path, dict[str, str]]
) -> None:
    cwd, env = small_app
    env = {**env, **stack_env.env, "BUILDFLOW_ENV": "emulator"}
    cli("plan", "small_app:app", "--yes", env=env, cwd=cwd)
    gcs_client().bucket(env["BUCKET_NAME"]).blob("x.jpg").upload_from_string(b"x")
    refused = cli("destroy", "small_app:app", "--yes", env=env, cwd=cwd, check=False)
    assert refused.returncode == 1 and "force_destroy" in refused.stdout + refused.stderr
    cli("destroy", "small_app:app", "--yes", "--force", env=env, cwd=cwd)
    assert gcs_client().lookup_bucket(env["BUCKET_NAME"]) is None


@pytest.mark.slow
def test_emulator_an_object_overwritten_before_processing_is_skipped_not_dead_lettered(
    stack_env: Any, small_app: tuple[Path, dict[str, str]]
) -> None:
    from buildflow.environment import Environment
    from buildflow.errors import ObjectOverwrittenError
    from buildflow.io.google.blobs import GCSBlobReader

    cwd, env = small_app
    env = {**env, **stack_env.env, "BUILDFLOW_ENV": "emulator"}
    cli("plan", "small_app:app", "--yes", env=env, cwd=cwd)
    blob = gcs_client().bucket(env["BUCKET_NAME"]).blob("x.jpg")
    blob.upload_from_string(b"first")
    first = gcs_client().bucket(env["BUCKET_NAME"]).get_blob("x.jpg").generation
    blob.upload_from_string(b"second, longer")
    reader = GCSBlobReader(Environment("emulator", cwd), PROJECT, env["BUCKET_NAME"], "x.jpg", first)
    with pytest.raises(ObjectOverwrittenError, match="overwritten by generation"):
        reader.read()

    summary = cwd / "summary.json"
    ran = cli("run", "small_app:app", "--until-idle", "--summary-json", str(summary), env=env, cwd=cwd)
    assert "skipped x.jpg" in ran.stderr.replace("\n", " ")
    got = json.loads(summary.read_text())
    assert (got["rows"], got["dead_letters"]) == (1, 0)
    table = f"{PROJECT}.ownership_{env['SUFFIX']}.sizes"
    assert [(r["name"], r["size"]) for r in bq_rows(f"SELECT name, size FROM `{table}`")] == [
        ("x.jpg", len(b"second, longer"))
    ]
    cli("destroy", "small_app:app", "--yes", "--force", env=env, cwd=cwd)
