"""One local Ray instance for the test session, started only when a test asks for it.

Started with ``address="local"`` (never a cluster that happens to run on the machine), 4
logical CPUs (Ray schedules by them; replicas in the tests ask for fractions), no
dashboard, and the repository as the job's working directory, so that the workers import
the test modules and the app as a cluster's workers would: from the uploaded copy.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def ray_session() -> Iterator[Any]:
    ray = pytest.importorskip("ray")
    from buildflow.runtime.ray_runtime import DEFAULT_EXCLUDES

    if ray.is_initialized():
        yield ray
        return
    ray.init(
        address="local",
        num_cpus=4,
        include_dashboard=False,
        namespace="buildflow-tests",
        runtime_env={"working_dir": str(REPO), "excludes": [*DEFAULT_EXCLUDES, "docs", "infra/*.tar*"]},
        log_to_driver=True,
    )
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture
def ray_runtime(ray_session: Any) -> Any:
    """A RayRuntime on the session's instance, with autoscaling quick enough for tests."""
    from buildflow.runtime.ray_runtime import Autoscaling, RayRuntime

    return RayRuntime(autoscaling=Autoscaling(interval_s=0.5, cooldown_s=1.0, scale_down_idle_s=2.0))
