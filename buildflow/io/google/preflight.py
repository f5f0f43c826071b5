"""``buildflow doctor``: does this app have what it needs in its environment?

``gcp`` (each check names the fix):

* credentials: Application Default Credentials found (``google.auth.default()``);
* project: each declaration's project, else ADC's; ``buildflow-local`` is refused;
* APIs: Pub/Sub, Cloud Storage, BigQuery and the BigQuery Storage API enabled on each
  project (Service Usage ``services.batchGet``,
  https://cloud.google.com/service-usage/docs/reference/rest/v1/services/batchGet); a
  disabled one gets its ``gcloud services enable ...`` line. Pub/Sub is not among the
  services a new project has enabled
  (https://cloud.google.com/service-usage/docs/enabled-service#default);
* billing: enabled (Cloud Billing ``projects.getBillingInfo``,
  https://cloud.google.com/billing/docs/reference/rest/v1/projects/getBillingInfo); the
  BigQuery sandbox allows no DML and no streaming
  (https://cloud.google.com/bigquery/docs/sandbox#limits);
* permissions: what ``plan`` and ``run`` need, tested for the current credentials on the
  project with ``projects.testIamPermissions``
  (https://cloud.google.com/resource-manager/reference/rest/v1/projects/testIamPermissions),
  each missing one named with the predefined role that grants it. Only project-level
  grants are seen: a grant on one bucket or dataset alone shows as missing.

``emulator``: each server of the local stack answers on its address. ``local``: nothing
to check.

A check the credentials may not run (e.g. no permission to read billing) is reported as
``unknown``, never as a failure.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from buildflow.environment import Environment

__all__ = [
    "Check",
    "REQUIRED_APIS",
    "PLAN_PERMISSIONS",
    "RUN_PERMISSIONS",
    "check_credentials",
    "check_apis",
    "check_billing",
    "check_permissions",
    "check_endpoints",
    "run_checks",
]

Status = Literal["ok", "fail", "unknown"]


@dataclasses.dataclass(frozen=True)
class Check:
    """One line of the doctor's report: what was checked, the result, and the fix."""

    what: str
    status: Status
    detail: str = ""
    fix: str = ""


#: APIs the ``gcp`` environment calls.
REQUIRED_APIS: tuple[str, ...] = (
    "pubsub.googleapis.com",
    "storage.googleapis.com",
    "bigquery.googleapis.com",
    "bigquerystorage.googleapis.com",
)

#: Permission -> the predefined role to grant on the project, for whoever runs ``plan``
#: (https://cloud.google.com/iam/docs/understanding-roles). ``pubsub.topics.setIamPolicy``:
#: plan grants the Cloud Storage service agent publisher on the notification topic;
#: ``resourcemanager.projects.get`` (in ``roles/browser``): reading that agent's address
#: (https://cloud.google.com/storage/docs/getting-service-agent).
PLAN_PERMISSIONS: Mapping[str, str] = {
    "storage.buckets.create": "roles/storage.admin",
    "storage.buckets.update": "roles/storage.admin",
    "resourcemanager.projects.get": "roles/browser",
    "pubsub.topics.create": "roles/pubsub.admin",
    "pubsub.topics.setIamPolicy": "roles/pubsub.admin",
    "pubsub.subscriptions.create": "roles/pubsub.admin",
    "bigquery.datasets.create": "roles/bigquery.dataEditor",
    "bigquery.tables.create": "roles/bigquery.dataEditor",
}

#: Permission -> role, for the principal ``run`` uses. ``bigquery.jobs.create``: a query
#: job (MERGE writes, the table probe, ``buildflow query``) "requires the
#: bigquery.jobs.create permission on the project"
#: (https://cloud.google.com/bigquery/docs/reference/rest/v2/jobs/insert).
RUN_PERMISSIONS: Mapping[str, str] = {
    "pubsub.subscriptions.consume": "roles/pubsub.subscriber",
    "storage.objects.get": "roles/storage.objectViewer",
    "bigquery.tables.get": "roles/bigquery.dataEditor",
    "bigquery.tables.updateData": "roles/bigquery.dataEditor",
    "bigquery.jobs.create": "roles/bigquery.jobUser",
}


def _error_text(response: Any) -> str:
    try:
        body = response.json()
        return str(body.get("error", {}).get("message") or body)[:200]
    except Exception:
        return f"HTTP {response.status_code}"


def check_credentials() -> tuple[Check, Any]:
    """ADC found? Returns the check and the credentials (None when missing)."""
    import google.auth
    from google.auth.exceptions import DefaultCredentialsError

    try:
        credentials, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
    except DefaultCredentialsError as e:
        return (
            Check(
                "credentials",
                "fail",
                str(e).split(". ")[0],
                "gcloud auth application-default login (or set GOOGLE_APPLICATION_CREDENTIALS "
                "to a service account key)",
            ),
            None,
        )
    who = getattr(credentials, "service_account_email", None) or type(credentials).__name__
    return Check("credentials", "ok", f"Application Default Credentials ({who})"), credentials


def check_apis(session: Any, project: str, apis: Iterable[str] = REQUIRED_APIS) -> Check:
    """Service Usage ``batchGet`` of ``apis`` on ``project``."""
    apis = list(apis)
    url = f"https://serviceusage.googleapis.com/v1/projects/{project}/services:batchGet"
    response = session.get(url, params={"names": [f"projects/{project}/services/{a}" for a in apis]})
    what = f"APIs enabled in {project}"
    if response.status_code != 200:
        return Check(
            what,
            "unknown",
            f"cannot read them: {_error_text(response)}",
            f"gcloud services enable serviceusage.googleapis.com --project {project}, or grant "
            "roles/serviceusage.serviceUsageConsumer",
        )
    state = {s["name"].rsplit("/", 1)[-1]: s.get("state") for s in response.json().get("services", [])}
    disabled = [a for a in apis if state.get(a) != "ENABLED"]
    if disabled:
        return Check(
            what,
            "fail",
            f"not enabled: {', '.join(disabled)}",
            f"gcloud services enable {' '.join(disabled)} --project {project}",
        )
    return Check(what, "ok", ", ".join(apis))


def check_billing(session: Any, project: str) -> Check:
    """Cloud Billing ``getBillingInfo`` of ``project``."""
    response = session.get(f"https://cloudbilling.googleapis.com/v1/projects/{project}/billingInfo")
    what = f"billing of {project}"
    if response.status_code != 200:
        return Check(
            what,
            "unknown",
            f"cannot read it: {_error_text(response)}",
            f"check https://console.cloud.google.com/billing/linkedaccount?project={project}",
        )
    if not response.json().get("billingEnabled"):
        return Check(
            what,
            "fail",
            "no billing account: the BigQuery sandbox has no DML and no streaming, and buckets need billing",
            f"gcloud billing projects link {project} --billing-account <ACCOUNT_ID>",
        )
    return Check(what, "ok", "enabled")


def check_permissions(session: Any, project: str, needed: Mapping[str, str], who: str) -> Check:
    """``testIamPermissions`` of ``needed`` for the current credentials on ``project``."""
    url = f"https://cloudresourcemanager.googleapis.com/v1/projects/{project}:testIamPermissions"
    response = session.post(url, json={"permissions": sorted(needed)})
    what = f"permissions for {who} in {project}"
    if response.status_code != 200:
        return Check(what, "unknown", f"cannot test them: {_error_text(response)}")
    held = set(response.json().get("permissions", []))
    missing = sorted(p for p in needed if p not in held)
    if not missing:
        return Check(what, "ok", f"{len(needed)} permissions held")
    roles = sorted({needed[p] for p in missing})
    grants = "; ".join(
        f"gcloud projects add-iam-policy-binding {project} --member=<PRINCIPAL> --role={r}" for r in roles
    )
    return Check(what, "fail", f"missing: {', '.join(missing)}", grants)


def check_endpoints(env_vars: Mapping[str, str] | None = None, timeout_s: float = 2.0) -> list[Check]:
    """Each emulator variable set, and its server accepting connections."""
    from buildflow.endpoints import EMULATOR_ENDPOINT_VARS, host_port, unreachable

    env_vars = os.environ if env_vars is None else env_vars
    checks = []
    for var in EMULATOR_ENDPOINT_VARS:
        value = env_vars.get(var)
        if not value:
            checks.append(
                Check(
                    var,
                    "fail",
                    "not set",
                    'python -m infra.stack start && eval "$(python -m infra.stack env)"',
                )
            )
            continue
        hp = host_port(value, 80) or ("127.0.0.1", 80)
        reason = unreachable((var, *hp), timeout_s)
        where = f"{hp[0]}:{hp[1]}"
        if reason is None:
            checks.append(Check(var, "ok", f"{where} answers"))
        else:
            checks.append(Check(var, "fail", f"{where}: {reason}", "python -m infra.stack start"))
    return checks


def _projects(node: Any, env: Environment) -> tuple[list[str], list[Check]]:
    from buildflow.errors import BuildflowError

    projects: list[str] = []
    problems: list[Check] = []
    try:
        bound = node.bind(env)
    except BuildflowError as e:
        return [], [Check("app", "fail", str(e))]
    for b in bound:
        for provider in (b.source, b.sink):
            try:
                p = getattr(provider, "project", None) or getattr(provider.declaration, "project_id", None)
            except BuildflowError as e:
                problems.append(Check(f"project of {provider.declaration.describe()}", "fail", str(e)))
                continue
            if p and p not in projects:
                projects.append(p)
    return projects, problems


def run_checks(
    node: Any, env: Environment, session: Any = None, purpose: Literal["plan", "run", "all"] = "all"
) -> list[Check]:
    """Every check for ``node`` in ``env``; ``purpose`` picks whose permissions are tested
    (``plan``'s, ``run``'s or both). ``session`` (an ``AuthorizedSession``-like object
    with ``get``/``post``) defaults to one over the ADC credentials."""
    if env.name == "local":
        return [Check("environment", "ok", "local: nothing to check")]
    if env.name == "emulator":
        return check_endpoints()
    from buildflow.endpoints import EMULATOR_ENDPOINT_VARS

    checks: list[Check] = []
    leaked = [v for v in EMULATOR_ENDPOINT_VARS if os.environ.get(v)]
    if leaked:
        checks.append(
            Check("emulator variables", "fail", f"{', '.join(leaked)} set", f"unset {' '.join(leaked)}")
        )
    cred_check, credentials = check_credentials()
    checks.append(cred_check)
    projects, problems = _projects(node, env)
    checks += problems
    checks += [Check("project", "ok", p) for p in projects]
    if credentials is None:
        return checks
    if session is None:
        from google.auth.transport.requests import AuthorizedSession

        session = AuthorizedSession(credentials)  # type: ignore[no-untyped-call]
    for p in projects:
        checks.append(check_apis(session, p))
        checks.append(check_billing(session, p))
        if purpose in ("plan", "all"):
            checks.append(check_permissions(session, p, PLAN_PERMISSIONS, "plan"))
        if purpose in ("run", "all"):
            checks.append(check_permissions(session, p, RUN_PERMISSIONS, "run"))
    return checks
