"""``buildflow doctor``'s checks: the exact requests to Service Usage, Cloud Billing and
Resource Manager (a fake of those services on the far side), what each answer becomes,
and the checks the stack can serve (its servers answer; a closed port fails)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from buildflow.io.google.preflight import (
    PLAN_PERMISSIONS,
    REQUIRED_APIS,
    RUN_PERMISSIONS,
    check_apis,
    check_billing,
    check_endpoints,
    check_permissions,
)

REPO = Path(__file__).resolve().parents[2]


class _Response:
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        self.status_code = status
        self._body = body

    def json(self) -> dict[str, Any]:
        return self._body


class FakeGoogleApis:
    """The far side: records each request and answers like the REST APIs do."""

    def __init__(self, enabled: set[str], billing: bool | None, held: set[str]) -> None:
        self.enabled, self.billing, self.held = enabled, billing, held
        self.requests: list[tuple[str, str, Any]] = []

    def get(self, url: str, params: dict[str, Any] | None = None) -> _Response:
        self.requests.append(("GET", url, params))
        if url.endswith("/services:batchGet"):
            names = (params or {})["names"]
            return _Response(
                200,
                {
                    "services": [
                        {
                            "name": n,
                            "state": "ENABLED" if n.rsplit("/", 1)[-1] in self.enabled else "DISABLED",
                        }
                        for n in names
                    ]
                },
            )
        if url.endswith("/billingInfo"):
            if self.billing is None:
                return _Response(403, {"error": {"message": "The caller does not have permission"}})
            return _Response(200, {"billingEnabled": self.billing} if self.billing else {})
        return _Response(404, {})

    def post(self, url: str, json: dict[str, Any]) -> _Response:  # noqa: A002
        self.requests.append(("POST", url, json))
        return _Response(200, {"permissions": sorted(p for p in json["permissions"] if p in self.held)})


def test_apis_check_asks_service_usage_and_prints_the_enable_line() -> None:
    fake = FakeGoogleApis(
        enabled={"storage.googleapis.com", "bigquery.googleapis.com"}, billing=True, held=set()
    )
    check = check_apis(fake, "my-proj-1")
    method, url, params = fake.requests[0]
    assert (method, url) == (
        "GET",
        "https://serviceusage.googleapis.com/v1/projects/my-proj-1/services:batchGet",
    )
    assert params == {"names": [f"projects/my-proj-1/services/{a}" for a in REQUIRED_APIS]}
    assert check.status == "fail"
    assert check.fix == (
        "gcloud services enable pubsub.googleapis.com bigquerystorage.googleapis.com --project my-proj-1"
    )
    fake.enabled |= set(REQUIRED_APIS)
    assert check_apis(fake, "my-proj-1").status == "ok"


def test_billing_check_fails_without_billing_and_is_unknown_when_unreadable() -> None:
    off = check_billing(FakeGoogleApis(set(), billing=False, held=set()), "p-123456")
    assert (
        off.status == "fail"
        and "sandbox" in off.detail
        and "gcloud billing projects link p-123456" in off.fix
    )
    on = FakeGoogleApis(set(), billing=True, held=set())
    assert check_billing(on, "p-123456").status == "ok"
    assert on.requests == [
        ("GET", "https://cloudbilling.googleapis.com/v1/projects/p-123456/billingInfo", None)
    ]
    unknown = check_billing(FakeGoogleApis(set(), billing=None, held=set()), "p-123456")
    assert unknown.status == "unknown" and "does not have permission" in unknown.detail


def test_permissions_check_names_the_role_for_each_missing_permission() -> None:
    held = set(RUN_PERMISSIONS) - {"bigquery.jobs.create", "storage.objects.get"}
    fake = FakeGoogleApis(set(), billing=True, held=held)
    check = check_permissions(fake, "p-123456", RUN_PERMISSIONS, "run")
    method, url, body = fake.requests[0]
    assert (method, url) == (
        "POST",
        "https://cloudresourcemanager.googleapis.com/v1/projects/p-123456:testIamPermissions",
    )
    assert body == {"permissions": sorted(RUN_PERMISSIONS)}
    assert check.status == "fail" and check.detail == "missing: bigquery.jobs.create, storage.objects.get"
    assert "--role=roles/bigquery.jobUser" in check.fix and "--role=roles/storage.objectViewer" in check.fix
    assert (
        check_permissions(
            FakeGoogleApis(set(), True, set(PLAN_PERMISSIONS)), "p-123456", PLAN_PERMISSIONS, "plan"
        ).status
        == "ok"
    )
    # a query job needs bigquery.jobs.create: the job-creator role is asked for wherever one runs
    assert RUN_PERMISSIONS["bigquery.jobs.create"] == "roles/bigquery.jobUser"


def test_endpoints_check_against_the_stack(stack_env: Any) -> None:
    checks = check_endpoints()
    assert [(c.what, c.status) for c in checks] == [
        ("PUBSUB_EMULATOR_HOST", "ok"),
        ("STORAGE_EMULATOR_HOST", "ok"),
        ("BIGQUERY_EMULATOR_HOST", "ok"),
        ("BUILDFLOW_BIGQUERY_STORAGE_HOST", "ok"),  # the Storage Write API's gRPC port
    ]
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    bad = check_endpoints({**os.environ, "PUBSUB_EMULATOR_HOST": f"127.0.0.1:{closed}"}, timeout_s=1)
    assert bad[0].status == "fail" and "infra.stack start" in bad[0].fix


def test_doctor_cli_without_credentials_in_gcp_says_how_to_log_in(tmp_path: Path) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if k
        not in (
            "PUBSUB_EMULATOR_HOST",
            "STORAGE_EMULATOR_HOST",
            "BIGQUERY_EMULATOR_HOST",
            "BUILDFLOW_BIGQUERY_STORAGE_HOST",
            "GOOGLE_CLOUD_PROJECT",
        )
    }
    env |= {
        "PYTHONPATH": str(REPO),
        "GOOGLE_APPLICATION_CREDENTIALS": str(tmp_path / "none.json"),
        "CLOUDSDK_CONFIG": str(tmp_path / "gcloud"),
        "NO_GCE_CHECK": "true",
        "GCP_PROJECT": "my-real-proj",
        "COLUMNS": "200",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "buildflow.cli", "doctor", "main:app", "--env", "gcp"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "credentials" in proc.stdout and "gcloud auth application-default login" in proc.stdout
    assert "my-real-proj" in proc.stdout
