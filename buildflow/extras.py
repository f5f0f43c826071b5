"""The optional parts of buildflow, the extra that installs each, and the error that names it.

``pip install buildflow`` gives the core (declarations, planning, the in-process runtime,
the ``local`` environment on folders and DuckDB). Each system's client library comes with
an extra of the distribution (pyproject.toml ``[project.optional-dependencies]``), and the
code that needs one imports it on first use through :func:`import_optional`, so a missing
library surfaces as a :class:`~buildflow.errors.MissingDependencyError` whose message is the
command that fixes it, e.g. ``run pip install 'buildflow[kafka]'``.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Iterable
from typing import Any

from buildflow.errors import MissingDependencyError

__all__ = ["EXTRAS", "import_optional", "install_command", "missing_modules", "require_extra"]

#: Extra -> the top-level modules it provides (imported by the code that needs them).
EXTRAS: dict[str, tuple[str, ...]] = {
    "gcp": (
        "google.cloud.storage",
        "google.cloud.pubsub_v1",
        "google.cloud.bigquery",
        "google.cloud.bigquery_storage_v1",
        "google.protobuf",
    ),
    "kafka": ("confluent_kafka",),
    "postgres": ("psycopg", "psycopg_pool"),
    "ray": ("ray",),
    "ui": ("fastapi", "uvicorn", "multipart", "PIL"),
    "http": ("starlette", "uvicorn", "python_multipart"),
    "app": ("torch", "torchvision", "PIL", "numpy", "onnxruntime", "onnx"),
    "train": ("pydantic", "yaml", "sklearn", "matplotlib", "tensorboard"),
}


def install_command(extra: str) -> str:
    """``pip install 'buildflow[EXTRA]'`` (quoted for POSIX shells, where ``[...]`` is a glob).

    Raises:
        ValueError: ``extra`` is not one of :data:`EXTRAS`.
    """
    if extra not in EXTRAS:
        raise ValueError(f"unknown extra {extra!r}; the extras are: {', '.join(sorted(EXTRAS))}")
    return f"pip install 'buildflow[{extra}]'"


def import_optional(module: str, *, extra: str, needed_by: str) -> Any:
    """Import ``module`` (from the ``extra`` of the distribution) for ``needed_by``.

    Args:
        module: dotted module name, e.g. ``"google.cloud.bigquery"``.
        extra: the extra that installs it, a key of :data:`EXTRAS`.
        needed_by: what needs it, for the message (e.g. ``"KafkaTopic"``).

    Raises:
        MissingDependencyError: the module (or one it imports) cannot be imported; the
            message names the missing module, what needs it, and the install command.
    """
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingDependencyError(
            f"{needed_by} needs {module!r}, which cannot be imported ({e}); run {install_command(extra)}"
        ) from e


def missing_modules(modules: Iterable[str]) -> list[str]:
    """Those of ``modules`` that are not installed (found without importing them; a
    dotted name's parent packages are imported)."""
    missing = []
    for name in modules:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # a parent package is missing (or has no spec)
            found = False
        if not found:
            missing.append(name)
    return missing


def require_extra(extra: str, *, needed_by: str) -> None:
    """Check that the modules of ``extra`` are installed, without importing them.

    Raises:
        MissingDependencyError: one or more are not; the message lists them and gives the
            install command.
    """
    missing = missing_modules(EXTRAS[extra])
    if missing:
        raise MissingDependencyError(
            f"{needed_by} needs the {extra!r} extra, and {', '.join(map(repr, missing))} "
            f"{'is' if len(missing) == 1 else 'are'} not installed; run {install_command(extra)}"
        )
