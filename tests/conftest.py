"""Session-wide fixtures. The local stack of Google Cloud fakes is started once per test
session, on free ports, only if a test asks for it (see tests/stack/fixtures.py)."""

from tests.postgres_fixture import postgres_server  # noqa: F401
from tests.ray_fixture import ray_runtime, ray_session  # noqa: F401
from tests.stack.fixtures import local_stack, stack_env  # noqa: F401
