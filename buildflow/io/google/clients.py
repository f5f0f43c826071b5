"""Google Cloud clients for the ``gcp`` and ``emulator`` environments, and cloud errors
turned into one clear line with the fix.

* ``gcp``: Application Default Credentials (``gcloud auth application-default login`` or a
  service account); the project comes from the declaration, else from ADC.
* ``emulator``: the local stack (``python -m infra.stack start``) and the variables it
  prints: ``PUBSUB_EMULATOR_HOST``, ``STORAGE_EMULATOR_HOST``, ``BIGQUERY_EMULATOR_HOST``,
  ``BUILDFLOW_BIGQUERY_STORAGE_HOST`` (the BigQuery emulator's gRPC ``host:port``, for the
  Storage Write API), ``BUILDFLOW_GCS_EVENTS_TOPIC``. Anonymous credentials.

Clients are created lazily, once per process and environment (they are thread-safe), so
declarations and providers stay picklable.
"""

from __future__ import annotations

import functools
import os
import re
import threading
from pathlib import Path
from typing import Any

from buildflow.environment import Environment
from buildflow.errors import ConfigurationError, ProvisioningError
from buildflow.extras import import_optional

__all__ = [
    "pubsub_publisher",
    "pubsub_subscriber",
    "storage_client",
    "bigquery_client",
    "bigquery_write_client",
    "cloud_error_line",
    "require_emulator_env",
    "gcs_events_topic",
    "resolve_project",
    "adc_project",
    "project_number",
    "service_disabled_fix",
]

_LOCK = threading.Lock()
BIGQUERY_STORAGE_HOST_VAR = "BUILDFLOW_BIGQUERY_STORAGE_HOST"
"""``host:port`` of the BigQuery emulator's gRPC API (Storage Write), set by the local stack."""


def require_emulator_env(env: Environment, *names: str) -> None:
    """In ``emulator``, the stack's variables must be set; elsewhere they must not leak in.

    Raises:
        ConfigurationError: a variable is missing (emulator) or set (gcp).
    """
    if env.name == "emulator":
        missing = [n for n in names if not os.environ.get(n)]
        if missing:
            raise ConfigurationError(
                f"the emulator environment needs {', '.join(missing)}: start the local stack "
                'with `python -m infra.stack start` and run `eval "$(python -m infra.stack env)"`.'
            )
    elif env.name == "gcp":
        leaked = [n for n in names if os.environ.get(n)]
        if leaked:
            raise ConfigurationError(
                f"{', '.join(leaked)} is set, which would send the 'gcp' environment to an "
                "emulator; unset it (or use --env emulator)."
            )


EMULATOR_PROJECT = "buildflow-local"


def adc_project() -> str | None:
    """The project of Application Default Credentials (``google.auth.default()``: the
    ``GOOGLE_CLOUD_PROJECT`` variable, the service account's project or gcloud's
    ``core/project``), or None when there are no credentials or no project
    (https://google-auth.readthedocs.io/en/latest/reference/google.auth.html#google.auth.default)."""
    google_auth = _import("google.auth")
    try:
        _, project = google_auth.default()
    except google_auth.exceptions.DefaultCredentialsError:
        return None
    return str(project) if project else None


def resolve_project(declared: str | None, env: Environment, what: str, fix: str) -> str:
    """The project a declaration acts in: its own, else ``buildflow-local`` (emulator), else
    (``gcp``) the project of Application Default Credentials.

    Raises:
        ConfigurationError: no project in ``gcp``, or ``buildflow-local`` (the emulator's
            project) in ``gcp``; the message names ``what`` and ``fix``.
    """
    if env.name == "gcp" and declared == EMULATOR_PROJECT:
        raise ConfigurationError(
            f"{what}: project {declared!r} is the emulator's project, not a real one; set "
            "GCP_PROJECT (or project_id) to your project id in the 'gcp' environment."
        )
    if declared is not None:
        return declared
    if env.name == "emulator":
        return EMULATOR_PROJECT
    found = adc_project() if env.name == "gcp" else None
    if found is not None:
        return found
    raise ConfigurationError(
        f"{what}: {fix} in the {env.name!r} environment (Application Default Credentials name "
        "no project either: `gcloud config set project <id>` or set GOOGLE_CLOUD_PROJECT)."
    )


def project_number(env: Environment, project: str) -> str:
    """The number of ``project``, read from its Cloud Storage service agent's address,
    ``service-<number>@gs-project-accounts.iam.gserviceaccount.com``
    (https://cloud.google.com/storage/docs/getting-service-agent); needs
    ``resourcemanager.projects.get`` on the project."""
    email = str(storage_client(env, project).get_service_account_email(project=project))
    number = email.split("@", 1)[0].removeprefix("service-")
    if not number.isdigit():
        raise ProvisioningError(f"cannot read the number of project {project!r} from {email!r}")
    return number


def gcs_events_topic(env: Environment) -> str:
    """The one topic the GCS fake publishes every bucket's events to (emulator only)."""
    require_emulator_env(env, "BUILDFLOW_GCS_EVENTS_TOPIC")
    return os.environ["BUILDFLOW_GCS_EVENTS_TOPIC"]


def _import(module: str) -> Any:
    """``module`` of the Google Cloud clients, imported on first use.

    Raises:
        MissingDependencyError: not installed; the message says to install ``buildflow[gcp]``.
    """
    return import_optional(module, extra="gcp", needed_by="the Google Cloud providers")


def _anonymous() -> Any:
    return _import("google.auth.credentials").AnonymousCredentials()


@functools.cache
def _client(kind: str, env_name: str, project: str | None) -> Any:
    if kind == "publisher":
        return _import("google.cloud.pubsub_v1").PublisherClient()
    if kind == "subscriber":
        return _import("google.cloud.pubsub_v1").SubscriberClient()
    if kind == "storage":
        storage = _import("google.cloud.storage")
        if env_name == "emulator":
            client = storage.Client(project=project or "buildflow-local", credentials=_anonymous())
        else:
            client = storage.Client(project=project)
        _widen_connection_pool(client._http)
        _skip_environment_lookups(client._http)
        return client
    if kind == "bigquery":
        bigquery = _import("google.cloud.bigquery")
        if env_name == "emulator":
            client_options = _import("google.api_core.client_options")
            return bigquery.Client(
                project=project or "buildflow-local",
                credentials=_anonymous(),
                client_options=client_options.ClientOptions(
                    api_endpoint=os.environ["BIGQUERY_EMULATOR_HOST"]
                ),
            )
        return bigquery.Client(project=project)
    if kind == "bigquery_write":
        storage_v1 = _import("google.cloud.bigquery_storage_v1")
        if env_name == "emulator":
            grpc = _import("grpc")
            transports = _import("google.cloud.bigquery_storage_v1.services.big_query_write.transports")
            channel = grpc.insecure_channel(os.environ[BIGQUERY_STORAGE_HOST_VAR])
            return storage_v1.BigQueryWriteClient(
                transport=transports.BigQueryWriteGrpcTransport(channel=channel)
            )
        return storage_v1.BigQueryWriteClient()
    raise ValueError(kind)


#: Connections kept open per host by the storage client's HTTP session: at least the
#: read-ahead's requests in flight (``Processor.read_ahead_requests``, 32), so that concurrent
#: downloads reuse connections instead of opening (and, past requests' default pool of 10,
#: discarding) one per read (https://requests.readthedocs.io/en/latest/api/#requests.adapters.HTTPAdapter).
STORAGE_CONNECTIONS = 64


def _widen_connection_pool(session: Any) -> None:
    adapters = _import("requests.adapters")
    for prefix in ("https://", "http://"):
        if type(session.get_adapter(prefix)) is adapters.HTTPAdapter:  # not a mutual-TLS one
            session.mount(prefix, adapters.HTTPAdapter(pool_connections=4, pool_maxsize=STORAGE_CONNECTIONS))


#: What requests reads from the environment on every request while a session's
#: ``trust_env`` is true (https://requests.readthedocs.io/en/latest/api/#requests.Session.trust_env,
#: ``Session.merge_environment_settings``): proxy variables (any ``<scheme>_proxy`` and
#: ``no_proxy``, either case), a netrc file for default authentication, and a CA bundle
#: (``REQUESTS_CA_BUNDLE``, else ``CURL_CA_BUNDLE``).
_ENV_CA_BUNDLES = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")


def _proxy_or_netrc_in_use() -> list[str]:
    """The proxy variables that are set, and the netrc file if one exists: the settings
    requests applies per request (by URL) that cannot be applied once per session."""
    found = [k for k, v in os.environ.items() if v and k.lower().endswith("_proxy")]
    netrc = os.environ.get("NETRC")
    candidates = [Path(netrc)] if netrc else [Path.home() / ".netrc", Path.home() / "_netrc"]
    return found + [str(c) for c in candidates if c.is_file()]


def _skip_environment_lookups(session: Any) -> None:
    """Turn off requests' per-request environment lookups (``trust_env``) where the same
    result can be had once: with ``trust_env`` on, every download scans ``os.environ``
    twice for proxy settings (``requests.utils.get_environ_proxies``), ~20% of the client's
    CPU per small object (cProfile, 200 downloads from the stack's GCS server). The CA
    bundle variable is applied to the session instead (``session.verify``), as requests
    would per request. When a proxy variable or a netrc file is in use (see
    :func:`_proxy_or_netrc_in_use`), ``trust_env`` stays on and nothing changes. The
    environment is read once, when the client is made."""
    if _proxy_or_netrc_in_use():
        return
    if session.verify is True:
        bundle = next((os.environ[k] for k in _ENV_CA_BUNDLES if os.environ.get(k)), None)
        if bundle:
            session.verify = bundle
    session.trust_env = False


def _get(kind: str, env: Environment, project: str | None, var: str) -> Any:
    require_emulator_env(env, var)
    with _LOCK:
        return _client(kind, env.name, project)


def pubsub_publisher(env: Environment) -> Any:
    """A ``pubsub_v1.PublisherClient`` (also the topic admin client)."""
    return _get("publisher", env, None, "PUBSUB_EMULATOR_HOST")


def pubsub_subscriber(env: Environment) -> Any:
    """A ``pubsub_v1.SubscriberClient`` (also the subscription admin client)."""
    return _get("subscriber", env, None, "PUBSUB_EMULATOR_HOST")


def storage_client(env: Environment, project: str | None) -> Any:
    """A ``storage.Client`` for ``project``."""
    return _get("storage", env, project, "STORAGE_EMULATOR_HOST")


def bigquery_client(env: Environment, project: str | None) -> Any:
    """A ``bigquery.Client`` for ``project``."""
    return _get("bigquery", env, project, "BIGQUERY_EMULATOR_HOST")


def bigquery_write_client(env: Environment) -> Any:
    """A ``bigquery_storage_v1.BigQueryWriteClient`` (Storage Write API, gRPC); in
    ``emulator`` over a plaintext channel to ``BUILDFLOW_BIGQUERY_STORAGE_HOST``."""
    return _get("bigquery_write", env, None, BIGQUERY_STORAGE_HOST_VAR)


_FIXES = {
    "PermissionDenied": "grant the credentials the role named in docs (README: 'IAM roles') or "
    "run `gcloud auth application-default login` with an account that has it",
    "Forbidden": "grant the credentials the role named in docs (README: 'IAM roles') or run "
    "`gcloud auth application-default login` with an account that has it",
    "Unauthorized": "run `gcloud auth application-default login` (no usable credentials)",
    "Unauthenticated": "run `gcloud auth application-default login` (no usable credentials)",
    "Conflict": "the name is taken (bucket names are global): choose another name",
    "AlreadyExists": "the name is taken: choose another name, or destroy the old resource",
    "TooManyRequests": "a quota was exceeded: wait and retry, or raise the quota",
    "ResourceExhausted": "a quota was exceeded: wait and retry, or raise the quota",
    "ServiceUnavailable": "the service (or emulator) is not reachable: check it is running",
    "DefaultCredentialsError": "run `gcloud auth application-default login`",
}


#: API of each Google Cloud host name an error may name.
_APIS = (
    "pubsub.googleapis.com",
    "storage.googleapis.com",
    "bigquery.googleapis.com",
    "bigquerystorage.googleapis.com",
)


def service_disabled_fix(message: str) -> str | None:
    """The ``gcloud services enable ...`` line for an API-disabled error (``SERVICE_DISABLED``,
    "... API has not been used in project ... or it is disabled"), else None."""
    text = str(message)
    if (
        "SERVICE_DISABLED" not in text
        and "has not been used in project" not in text
        and "is disabled" not in text
    ):
        return None
    apis = [a for a in _APIS if a in text] or [a for a in _APIS if a.split(".")[0] in text.lower()][:1]
    project = re.search(r"project[ =]+([a-z0-9-]+)", text)
    line = "gcloud services enable " + " ".join(apis or ["<api>.googleapis.com"])
    return line + (f" --project {project.group(1)}" if project else "")


def cloud_error_line(what: str, e: BaseException) -> ProvisioningError:
    """``<what>: <what the cloud said> (<fix>)`` as a ProvisioningError; no traceback. An
    API that is not enabled gets the ``gcloud services enable`` line as its fix."""
    name = type(e).__name__
    message = getattr(e, "message", None) or str(e)
    message = " ".join(str(message).split())[:300]
    fix = service_disabled_fix(str(e)) or _FIXES.get(name)
    return ProvisioningError(f"{what}: {name}: {message}" + (f" ({fix})" if fix else ""))
