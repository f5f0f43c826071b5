"""Provisioning details of the ``gcp`` environment that no emulator serves, as request shapes
and against fakes of the far side only: the IAM binding merge, the IAM-propagation retry,
the bucket insert (labels, uniform bucket-level access), the project from ADC, the
``gcloud services enable`` fix, one location per app."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

import buildflow
from buildflow.environment import Environment
from buildflow.errors import ConfigurationError
from buildflow.io import BigQueryTable, GCSFileEvent, GCSFileStream
from buildflow.io.google.clients import resolve_project, service_disabled_fix
from buildflow.io.google.gcs import (
    PROPAGATION_DELAYS_S,
    GCSBucketResource,
    add_binding,
    create_notification,
)
from buildflow.provisioning import CreatedLedger, label_keep_reasons, label_value, managed_labels

GCP = Environment(name="gcp", state_dir=Path("/nonexistent"))


def test_add_binding_merges_into_the_existing_role_binding_without_duplicates() -> None:
    from google.iam.v1 import policy_pb2

    policy = policy_pb2.Policy()
    policy.bindings.add(role="roles/pubsub.publisher", members=["user:a@example.com"])
    policy.bindings.add(role="roles/pubsub.viewer", members=["user:b@example.com"])
    agent = "serviceAccount:service-1@gs-project-accounts.iam.gserviceaccount.com"
    assert add_binding(policy, "roles/pubsub.publisher", agent) is True
    assert add_binding(policy, "roles/pubsub.publisher", agent) is False  # a rerun changes nothing
    assert [(b.role, list(b.members)) for b in policy.bindings] == [
        ("roles/pubsub.publisher", ["user:a@example.com", agent]),
        ("roles/pubsub.viewer", ["user:b@example.com"]),
    ]
    fresh = policy_pb2.Policy()
    assert add_binding(fresh, "roles/pubsub.publisher", agent) is True
    assert [(b.role, list(b.members)) for b in fresh.bindings] == [("roles/pubsub.publisher", [agent])]


def _propagation_403() -> Exception:
    from google.api_core import exceptions

    return exceptions.Forbidden(
        "POST https://storage.googleapis.com/storage/v1/b/photos/notificationConfigs: The service "
        "account 'service-1@gs-project-accounts.iam.gserviceaccount.com' does not have permission "
        "to publish messages to the Cloud Pub/Sub topic '//pubsub.googleapis.com/projects/p/topics/t'"
    )


def test_notification_create_retries_the_propagation_403_with_backoff() -> None:
    slept: list[float] = []
    calls: list[int] = []

    def create() -> None:  # the far side: refuses twice while the grant propagates
        calls.append(1)
        if len(calls) <= 2:
            raise _propagation_403()

    create_notification(create, "gs://photos -> t", sleep=slept.append)
    assert len(calls) == 3 and slept == list(PROPAGATION_DELAYS_S[:2])
    assert (
        7 * 60 <= sum(PROPAGATION_DELAYS_S) <= 10 * 60
    )  # IAM: "typically 2 minutes ... 7 minutes or longer"


def test_notification_create_gives_up_after_the_schedule_and_never_retries_other_errors() -> None:
    from google.api_core import exceptions

    slept: list[float] = []

    def always_403() -> None:
        raise _propagation_403()

    with pytest.raises(exceptions.Forbidden, match="permission to publish"):
        create_notification(always_403, "n", delays_s=(1, 2, 3), sleep=slept.append)
    assert slept == [1, 2, 3]

    def other_403() -> None:
        raise exceptions.Forbidden("caller does not have storage.buckets.update")

    slept.clear()
    with pytest.raises(exceptions.Forbidden, match="storage.buckets.update"):
        create_notification(other_403, "n", sleep=slept.append)
    assert slept == []


def test_bucket_insert_carries_labels_uniform_access_and_location(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:9")  # no request is sent
    env = Environment(name="emulator", state_dir=Path("/nonexistent"))
    r = GCSBucketResource(env, "my-project", GCSFileStream(bucket_name="photos", location="EU"))
    r.app = "Image App"
    body = r.new_bucket()._properties  # what Client.create_bucket POSTs (plus location)
    assert body["labels"] == {"managed-by": "buildflow", "buildflow-app": "image-app"}
    assert body["iamConfiguration"]["uniformBucketLevelAccess"]["enabled"] is True
    assert r.location == "EU"


def test_labels_and_ownership_rules() -> None:
    assert label_value("My App.v2") == "my-app-v2" and len(label_value("x" * 100)) == 63
    assert label_keep_reasons(managed_labels("app"), "app") == []
    assert "existed before" in label_keep_reasons({}, "app")[0]
    assert "created by app 'other'" in label_keep_reasons(managed_labels("other"), "app")[0]


def test_ledger_entry_does_not_claim_a_newer_resource_of_the_same_name(tmp_path: Path) -> None:
    ledger = CreatedLedger(tmp_path)
    ledger.record("bucket", "gs://b", "app", "2026-01-01T00:00:00")
    assert ledger.labels("bucket", "gs://b", "2026-01-01T00:00:00") == managed_labels("app")
    assert ledger.labels("bucket", "gs://b", "2026-02-02T00:00:00") is None
    ledger.forget("bucket", "gs://b")
    assert ledger.labels("bucket", "gs://b", "2026-01-01T00:00:00") is None


def test_project_from_adc_and_the_emulator_project_refused_in_gcp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigurationError, match="emulator's project"):
        resolve_project("buildflow-local", GCP, "BigQueryTable('t')", "set it")
    # google.auth.default() reads an authorized-user file without a network call
    creds = tmp_path / "adc.json"
    creds.write_text(
        json.dumps({"type": "authorized_user", "client_id": "i", "client_secret": "s", "refresh_token": "r"})
    )
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(creds))
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "adc-project-1")
    assert resolve_project(None, GCP, "GCSFileStream", "set project_id") == "adc-project-1"
    assert resolve_project("declared-1", GCP, "GCSFileStream", "set project_id") == "declared-1"
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    monkeypatch.delenv("GOOGLE_CLOUD_PROJECT")
    with pytest.raises(ConfigurationError, match="set project_id"):
        resolve_project(None, GCP, "GCSFileStream", "set project_id")


def test_a_disabled_api_gets_the_gcloud_services_enable_line() -> None:
    message = (
        "403 Cloud Pub/Sub API has not been used in project my-proj-1 before or it is disabled. "
        "Enable it by visiting https://console.developers.google.com/apis/api/pubsub.googleapis.com/"
        "overview?project=my-proj-1 [reason: SERVICE_DISABLED]"
    )
    assert service_disabled_fix(message) == "gcloud services enable pubsub.googleapis.com --project my-proj-1"
    assert service_disabled_fix("403 caller lacks pubsub.topics.get") is None


@dataclasses.dataclass
class Row:
    n: int


def test_one_location_per_app(tmp_path: Path) -> None:
    def app_with(bucket_location: str | None, table_location: str | None) -> Any:
        class P(buildflow.Processor):
            name = "p"

            def source(self) -> GCSFileStream:
                return GCSFileStream(bucket_name="photos", project_id="proj-123", location=bucket_location)

            def sink(self) -> BigQueryTable:
                return BigQueryTable(table_id="proj-123.ds.t", location=table_location)

            def process(self, event: GCSFileEvent) -> Row:
                return Row(1)

        node = buildflow.Node(name="loc", app_dir=tmp_path)
        node.add(P())
        return node

    env = Environment(name="local", state_dir=tmp_path)
    with pytest.raises(ConfigurationError, match="more than one location"):
        app_with("EU", "US").resources(Environment(name="gcp", state_dir=tmp_path))
    gcp = Environment(name="gcp", state_dir=tmp_path)
    located = [r for r in app_with("EU", None).resources(gcp) if hasattr(r, "location")]
    assert {r.kind for r in located} >= {"bucket", "dataset"}
    assert {r.location for r in located} == {"EU"}  # type: ignore[attr-defined]
    assert app_with(None, None).resources(env)
    with pytest.raises(ConfigurationError, match="invalid location"):
        GCSFileStream(bucket_name="photos", location="not a place")
