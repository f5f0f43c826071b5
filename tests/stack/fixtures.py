"""Pytest fixtures for the local stack of Google Cloud fakes (``infra.stack``).

Use them from a conftest.py::

    from tests.stack.fixtures import local_stack, stack_env  # noqa: F401

``local_stack`` starts Pub/Sub, GCS and BigQuery fakes once per test session on free ports of
127.0.0.1 (installing what is missing on first use: about a minute cold) and stops them, by
PID, when the session ends. A conftest imports a session fixture into its own scope: import
it from a single conftest (the highest one that needs it) or each importing folder starts
its own stack.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from infra.stack import Stack, start, stop

__all__ = ["local_stack", "stack_env"]


@pytest.fixture(scope="session")
def local_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A running local stack (``infra.stack.Stack``) shared by the whole test session.

    Its state folder (PID files, ``logs/<service>.log``) is a pytest temporary folder; the
    server logs stay there after the session for post-mortems.
    """
    state_dir = tmp_path_factory.mktemp("local-stack")
    # a 1 s minimum ack deadline lets redelivery and lease-extension tests run in seconds
    stack = start(state_dir=state_dir, min_ack_deadline_secs=1)
    try:
        yield stack
    finally:
        stop(state_dir)


@pytest.fixture
def stack_env(local_stack: Stack, monkeypatch: pytest.MonkeyPatch) -> Stack:
    """``local_stack`` with its env vars (``Stack.env``) set for the duration of one test.

    With them, ``google.cloud.pubsub_v1.PublisherClient()``/``SubscriberClient()`` talk to the
    Pub/Sub fake and ``storage.Client(credentials=AnonymousCredentials(), project=...)`` to the
    GCS fake; BigQuery clients need ``client_options=ClientOptions(api_endpoint=stack.bigquery_url)``.
    """
    for name, value in local_stack.env.items():
        monkeypatch.setenv(name, value)
    return local_stack
