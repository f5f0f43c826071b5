"""google-cloud clients pointed at the local stack, for tests that check what a run wrote.

They read the stack's variables (``BIGQUERY_EMULATOR_HOST``, ``STORAGE_EMULATOR_HOST``), which
the ``stack_env`` fixture sets for the test; credentials are anonymous.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["bq_client", "gcs_client", "bq_rows"]

PROJECT = "buildflow-local"


def bq_client(project: str = PROJECT) -> Any:
    """A ``bigquery.Client`` of the stack's BigQuery fake."""
    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import bigquery

    return bigquery.Client(
        project=project,
        credentials=AnonymousCredentials(),
        client_options=ClientOptions(api_endpoint=os.environ["BIGQUERY_EMULATOR_HOST"]),
    )


def gcs_client(project: str = PROJECT) -> Any:
    """A ``storage.Client`` of the stack's GCS fake."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    return storage.Client(project=project, credentials=AnonymousCredentials())


def bq_rows(sql: str, project: str = PROJECT) -> list[dict[str, Any]]:
    """The rows of a query on the stack's BigQuery fake, as dicts."""
    client = bq_client(project)
    try:
        return [dict(r.items()) for r in client.query(sql).result()]
    finally:
        client.close()
