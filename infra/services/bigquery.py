"""The BigQuery fake: bqemulator 1.4.0 (DuckDB-backed, REST + gRPC) in its own venv
``.venv-bq``, with the fixes of ``infra/patches/bqemulator.py`` to its Storage Write API.

Install: the venv with pinned requirements, DuckDB's spatial extension imported from its
wheel (DuckDB would otherwise try to download it at start and exit: no network here), and
the patch, checked at every install. Also the server's command line and environment, and its
readiness probe.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from infra.processes import HOST, REPO_ROOT, StackError, log, run

#: bqemulator's own venv (about 580 MB), shared by every checkout that uses this folder.
VENV: Final = REPO_ROOT / ".venv-bq"
#: What the venv gets; part of its install stamp.
REQUIREMENTS: Final = (
    "bqemulator==1.4.0",
    "duckdb==1.5.5",
    "duckdb-extensions",
    "duckdb-extension-spatial==1.5.5",
    "numpy",
)
#: Run once with the venv's Python at install; part of its install stamp.
EXTENSION_SNIPPET: Final = "from duckdb_extensions import import_extension; import_extension('spatial')"

#: The client module the readiness probe imports, and the package that provides it.
CLIENT: Final = ("google.cloud.bigquery", "google-cloud-bigquery")


def binary() -> Path:
    """The ``bqemulator`` script of the venv (it may not exist yet)."""
    return VENV / "bin" / "bqemulator"


def site_packages() -> Path:
    """The venv's site-packages folder; ``StackError`` when it has none."""
    found = sorted((VENV / "lib").glob("python3*/site-packages"))
    if not found:
        raise StackError(f"no site-packages folder in {VENV}/lib; delete {VENV} and install again")
    return found[-1]


def ensure_patched() -> None:
    """Apply ``infra/patches/bqemulator.py`` to the venv's bqemulator (idempotent);
    ``StackError`` when the patch does not fit the installed release."""
    from infra.patches import bqemulator as patch

    site = site_packages()
    try:
        done = patch.apply(site)
    except patch.PatchError as exc:
        raise StackError(f"bigquery: {exc}") from exc
    for hunk in done:
        log.info("bqemulator patched: %s", hunk)


def ensure_venv() -> Path:
    """The bqemulator venv with its pinned requirements, DuckDB's spatial extension and
    ``infra/patches/bqemulator.py`` applied; returns :func:`binary`. The stamp file records
    the first two; the patch is checked in the files themselves every time (a few file reads,
    idempotent), so a reinstalled, unpatched bqemulator is patched again, and a venv shared by
    checkouts with and without the patch keeps one stamp (the patch only adds fixes)."""
    python = VENV / "bin" / "python"
    server = binary()
    stamp = VENV / ".buildflow-installed"
    wanted = json.dumps({"requirements": list(REQUIREMENTS), "extension": EXTENSION_SNIPPET})
    if server.exists() and stamp.exists() and stamp.read_text() == wanted:
        ensure_patched()
        return server
    if not python.exists():
        run([sys.executable, "-m", "venv", str(VENV)], "venv for bqemulator")
    run(
        [str(python), "-m", "pip", "install", "-q", *REQUIREMENTS],
        "pip install of bqemulator (about 580 MB)",
    )
    run([str(python), "-c", EXTENSION_SNIPPET], "import of DuckDB's spatial extension")
    if not server.exists():
        raise StackError(f"bqemulator installed into {VENV} but {server} does not exist")
    ensure_patched()
    stamp.write_text(wanted)
    return server


def command(server: Path, rest_port: int, grpc_port: int, project: str) -> list[str]:
    """The server's argv: REST on ``rest_port``, gRPC (Storage Read/Write) on ``grpc_port``,
    both on 127.0.0.1, ``--ephemeral`` (in memory), default project ``project``."""
    return [
        str(server),
        "start",
        "--rest-host",
        HOST,
        "--rest-port",
        str(rest_port),
        "--grpc-host",
        HOST,
        "--grpc-port",
        str(grpc_port),
        "--ephemeral",
        "--project",
        project,
    ]


def environment() -> Mapping[str, str]:
    """The caller's environment without ``PYTHONPATH``, ``PYTHONHOME`` and ``VIRTUAL_ENV``,
    which would mix the caller's packages into the venv's."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}


def probe(port: int, project: str) -> None:
    """Returns once the REST API answers a dataset listing of ``project`` (raises otherwise)."""
    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import bigquery

    client = bigquery.Client(
        project=project,
        credentials=AnonymousCredentials(),
        client_options=ClientOptions(api_endpoint=f"http://{HOST}:{port}"),
    )
    try:
        list(client.list_datasets(timeout=1.0, retry=None))
    finally:
        client.close()
