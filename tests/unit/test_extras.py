"""Each system's client library comes with an extra, and its absence is one clear error.

The library is made unimportable here by a ``None`` entry in ``sys.modules`` (what Python
itself reads as "import blocked"); tests/test_packaging.py does the same with a real venv
that lacks it.
"""

from __future__ import annotations

import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from buildflow.environment import Environment
from buildflow.errors import MissingDependencyError
from buildflow.extras import EXTRAS, import_optional, install_command, missing_modules, require_extra
from buildflow.io import BigQueryTable, HTTPEndpoint, KafkaTopic, PostgresTable, PubSubSubscription
from buildflow.io.base import SourceDeclaration
from buildflow.io.registry import PROVIDER_EXTRAS, sink_provider, source_provider

REPO = Path(__file__).resolve().parents[2]


def _block(monkeypatch: pytest.MonkeyPatch, *modules: str) -> None:
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)


def test_every_extra_is_declared_in_pyproject_and_installed_by_requirements() -> None:
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert set(EXTRAS) <= set(declared)
    assert set(PROVIDER_EXTRAS.values()) <= set(EXTRAS)
    (line,) = [x for x in (REPO / "requirements.txt").read_text().splitlines() if x.startswith("-e .[")]
    listed = set(line.removeprefix("-e .[").removesuffix("]").split(","))
    assert set(declared) <= listed, f"extras ./setup.sh would not install: {set(declared) - listed}"


@pytest.mark.parametrize(
    ("declaration", "env_name", "blocked", "extra"),
    [
        (lambda: KafkaTopic("127.0.0.1:9", "t"), "local", "confluent_kafka", "kafka"),
        (
            lambda: PostgresTable(dsn="postgresql://u@127.0.0.1:9/d", table="t"),
            "local",
            "psycopg_pool",
            "postgres",
        ),
        (lambda: BigQueryTable("my-project.images.predictions"), "gcp", "google.cloud.bigquery", "gcp"),
        (
            lambda: PubSubSubscription("my-project", "images-sub", "images"),
            "emulator",
            "google.cloud.pubsub_v1",
            "gcp",
        ),
        (lambda: HTTPEndpoint(route="/classify"), "local", "starlette", "http"),
    ],
)
def test_binding_a_declaration_names_the_extra_to_install(
    declaration: Callable[[], Any],
    env_name: str,
    blocked: str,
    extra: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _block(monkeypatch, blocked)
    decl = declaration()
    env = Environment(name=env_name, state_dir=tmp_path)  # type: ignore[arg-type]
    bind = source_provider if isinstance(decl, SourceDeclaration) else sink_provider
    with pytest.raises(MissingDependencyError) as e:
        bind(decl, env)
    assert f"run pip install 'buildflow[{extra}]'" in str(e.value)
    assert repr(blocked) in str(e.value)


def test_local_declarations_bind_without_any_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _block(monkeypatch, *(m for modules in EXTRAS.values() for m in modules if not m.startswith("google")))
    env = Environment(name="local", state_dir=tmp_path)
    assert sink_provider(BigQueryTable("images.predictions"), env) is not None  # DuckDB in local


def test_import_optional_and_require_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    assert import_optional("json", extra="kafka", needed_by="x").dumps(1) == "1"
    _block(monkeypatch, "confluent_kafka")
    with pytest.raises(
        MissingDependencyError, match=r"KafkaTopic needs 'confluent_kafka'.*buildflow\[kafka\]"
    ):
        import_optional("confluent_kafka", extra="kafka", needed_by="KafkaTopic")
    assert missing_modules(["json", "confluent_kafka", "no_such_parent.child"]) == [
        "confluent_kafka",
        "no_such_parent.child",
    ]
    with pytest.raises(MissingDependencyError, match=r"'confluent_kafka' is not installed"):
        require_extra("kafka", needed_by="KafkaTopic")
    assert install_command("gcp") == "pip install 'buildflow[gcp]'"
    with pytest.raises(ValueError, match="unknown extra 'kafak'"):
        install_command("kafak")
