"""The ``buildflow`` command: plan, run, serve, query, destroy, upload, produce.

One module per command group (:mod:`.provision`, :mod:`.run`, :mod:`.serve`, :mod:`.data`,
:mod:`.query`, :mod:`.backfill`, :mod:`.doctor`),
all registered on one Typer app (:data:`cli`) from :mod:`._common`.

Exit codes: 0 done; 1 a clear error (printed as one or a few lines, never a traceback
unless ``--log-level debug``); 2 bad usage; 130 stopped hard by a second Ctrl-C.
"""

from __future__ import annotations

from buildflow.cli import backfill as backfill
from buildflow.cli import data as data
from buildflow.cli import doctor as doctor
from buildflow.cli import provision as provision
from buildflow.cli import query as query
from buildflow.cli import run as run
from buildflow.cli import serve as serve
from buildflow.cli._common import cli as cli
from buildflow.cli._common import load_app as load_app

__all__ = ["main", "load_app", "cli"]


def main() -> None:
    """Entry point of the ``buildflow`` console script."""
    cli()
