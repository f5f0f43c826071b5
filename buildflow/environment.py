"""Environments: where the same ``main.py`` runs.

* ``local`` (the default): everything embedded, no servers. A bucket is a folder, a table
  is a DuckDB table; state lives under ``.buildflow/local/`` beside ``main.py``.
* ``emulator``: real local servers that speak the GCP and Kafka protocols.
* ``gcp``: a real project, through Application Default Credentials.

The environment is chosen by ``--env`` or ``BUILDFLOW_ENV``; the state directory by
``--state-dir`` or ``BUILDFLOW_STATE_DIR``.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Literal, cast, get_args

from buildflow.errors import ConfigurationError

__all__ = ["EnvName", "Environment", "ENV_NAMES"]

EnvName = Literal["local", "emulator", "gcp"]
ENV_NAMES: tuple[str, ...] = get_args(EnvName)


@dataclasses.dataclass(frozen=True)
class Environment:
    """An environment bound to a state directory. Frozen and picklable.

    Attributes:
        name: ``local``, ``emulator`` or ``gcp``.
        state_dir: Where local state lives (bucket folders, the DuckDB warehouse, ack
            stores). Default ``<app dir>/.buildflow/<name>``.
    """

    name: EnvName
    state_dir: Path

    @classmethod
    def resolve(
        cls,
        name: str | None = None,
        *,
        app_dir: str | os.PathLike[str] | None = None,
        state_dir: str | os.PathLike[str] | None = None,
    ) -> Environment:
        """Pick the environment from the argument, then ``BUILDFLOW_ENV``, then ``local``.

        Raises:
            ConfigurationError: the name is not one of ``local``, ``emulator``, ``gcp``.
        """
        chosen = name or os.environ.get("BUILDFLOW_ENV") or "local"
        if chosen not in ENV_NAMES:
            raise ConfigurationError(
                f"unknown environment {chosen!r}; valid environments: "
                f"{', '.join(map(repr, ENV_NAMES))} (set with --env or BUILDFLOW_ENV)."
            )
        base = Path(app_dir) if app_dir is not None else Path.cwd()
        explicit = state_dir or os.environ.get("BUILDFLOW_STATE_DIR")
        path = Path(explicit) if explicit else base / ".buildflow" / chosen
        if not path.is_absolute():
            path = base / path
        return cls(name=cast(EnvName, chosen), state_dir=path.resolve())

    @property
    def warehouse_path(self) -> Path:
        """The DuckDB file that holds the ``local`` environment's tables."""
        return self.state_dir / "warehouse.duckdb"

    @property
    def buckets_dir(self) -> Path:
        """The folder that holds the ``local`` environment's buckets, one folder each."""
        return self.state_dir / "buckets"

    @property
    def subscriptions_dir(self) -> Path:
        """The folder that holds the ``local`` environment's ack stores."""
        return self.state_dir / "subscriptions"
