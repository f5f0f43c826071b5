"""Fixes to bqemulator 1.4.0's Storage Write API server (``grpc_api/write_servicer.py``, and
``storage/engine.py`` for the third).

Each keeps the emulator from failing (or hanging on) requests that real BigQuery serves;
none changes what it does with requests it already served.

1. **RECORD columns.** ``_table_arrow_schema`` builds the table's Arrow schema from each
   column's name, type and mode only, so a ``RECORD`` column becomes an empty ``struct<>``
   and every append to such a table fails (DuckDB: "Attempted to convert a STRUCT with no
   fields"). The patched function passes the sub-fields too, through the helper the REST
   ``insertAll`` route of the same release already uses (``_fields_raw_from_schema``).
2. **``write_stream`` in the first request only.** ``AppendRowsRequest.write_stream`` "must
   be provided ... in the first request to an AppendRows connection", and in later ones only
   when the connection switches tables or schemas (google.cloud.bigquery.storage.v1
   ``storage.proto``, as documented in google-cloud-bigquery-storage's ``types/storage.py``);
   the official Python helper (``google.cloud.bigquery_storage_v1.writer.AppendRowsStream``)
   sends it in the first request only. The server rebinds the connection to the empty name instead and answers
   ``NOT_FOUND: Stream not found``. The patched server keeps the stream it is bound to.
3. **A query while rows are appended hangs the server.** The REST API runs queries on the
   event loop's thread and the gRPC write servicer appends on its own thread pool, both
   through the engine's one ``DuckDBPyConnection``; DuckDB's Python API does not support one
   connection used by several threads at once ("DuckDBPyConnection is not thread-safe. If
   you want to use the same database from multiple threads, create a cursor for each
   thread", duckdb.org/docs/stable/guides/python/multiple_threads). Seen here: the main
   thread in ``execute`` and a write thread in ``unregister`` both waiting, forever, and the
   whole server with them. The patched append runs on a cursor of its own thread
   (``DuckDBEngine.dedicated_cursor``: same database, its own connection, ``TimeZone``
   set as the engine sets it); everything else is as before.

:func:`apply` is idempotent and refuses any other bqemulator version (the hunks would not
match): upgrading the pin means checking these fixes against the new release.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Final

__all__ = ["PACKAGE", "VERSION", "HUNKS", "PatchError", "apply", "digest", "is_applied"]

PACKAGE: Final = "bqemulator"
#: The release these hunks were written against (``infra.services.bigquery`` pins it).
VERSION: Final = "1.4.0"
_MARK: Final = "# buildflow patch"


class PatchError(RuntimeError):
    """The installed package is not the release a patch was written for, or its source
    differs from what the patch expects."""


@dataclasses.dataclass(frozen=True)
class Hunk:
    """Replace ``old`` by ``new`` (each must occur exactly once) in ``path`` (relative to
    site-packages)."""

    path: str
    old: str
    new: str


_SERVICER: Final = "bqemulator/grpc_api/write_servicer.py"
_ENGINE: Final = "bqemulator/storage/engine.py"

HUNKS: Final = (
    Hunk(
        _SERVICER,
        old="""    fields_raw = [
        {"name": f.name, "type": f.type, "mode": f.mode} for f in table_meta.schema_.fields
    ]
    return _build_arrow_schema(fields_raw)
""",
        new=f"""    from bqemulator.api.routes.tabledata import _fields_raw_from_schema

    {_MARK} 1: RECORD sub-fields (were dropped: a RECORD became an empty struct)
    return _build_arrow_schema(_fields_raw_from_schema(table_meta.schema_.fields))
""",
    ),
    Hunk(
        _SERVICER,
        old="""        if bound_ctx is not None and bound_ctx[0].name == stream_name:
            return bound_ctx
""",
        new=f"""        {_MARK} 2: write_stream is only required in a connection's first request
        if bound_ctx is not None and (not stream_name or bound_ctx[0].name == stream_name):
            return bound_ctx
""",
    ),
    Hunk(
        _ENGINE,
        old="""        if self._connection is None:
            raise InternalError("DuckDBEngine not started")
        return self._connection
""",
        new=f"""        if self._connection is None:
            raise InternalError("DuckDBEngine not started")
        {_MARK} 3: inside dedicated_cursor() a thread uses a connection of its own
        own = getattr(_BUILDFLOW_THREAD, "active", None)
        return own if own is not None else self._connection

    @contextlib.contextmanager
    def dedicated_cursor(self):
        \"\"\"{_MARK} 3: this thread's engine calls go to a cursor of its own in the block.\"\"\"
        if self._connection is None:
            raise InternalError("DuckDBEngine not started")
        cursors = _BUILDFLOW_THREAD.__dict__.setdefault("cursors", {{}})
        own = cursors.get(id(self._connection))
        if own is None:
            own = self._connection.cursor()
            own.execute("SET TimeZone = 'UTC'")
            cursors[id(self._connection)] = own
        before = getattr(_BUILDFLOW_THREAD, "active", None)
        _BUILDFLOW_THREAD.active = own
        try:
            yield own
        finally:
            _BUILDFLOW_THREAD.active = before
""",
    ),
    Hunk(
        _ENGINE,
        old="""_log = get_logger(__name__)
""",
        new=f"""_log = get_logger(__name__)  {_MARK} 3: and the three lines below

import contextlib  # {_MARK} 3
import threading  # {_MARK} 3

_BUILDFLOW_THREAD = threading.local()  # {_MARK} 3: per-thread cursors of dedicated_cursor()
""",
    ),
    Hunk(
        _SERVICER,
        old="""        with self._write_lock:
            self._ctx.engine.connection.register(reg_name, rows)
""",
        new=f"""        {_MARK} 3: the append on this thread's own cursor, never the event loop's connection
        with self._write_lock, self._ctx.engine.dedicated_cursor():
            self._ctx.engine.connection.register(reg_name, rows)
""",
    ),
)


def digest() -> str:
    """SHA-256 of the release and the hunks: names this patch. Not part of the venv's install
    stamp: ``infra.services.bigquery`` checks the files themselves at every install."""
    h = hashlib.sha256(VERSION.encode())
    for hunk in HUNKS:
        h.update(b"\0".join(s.encode() for s in (hunk.path, hunk.old, hunk.new)) + b"\1")
    return h.hexdigest()


def installed_version(site_packages: Path) -> str | None:
    """The version of bqemulator installed in ``site_packages`` (from its dist-info)."""
    for meta in sorted(site_packages.glob(f"{PACKAGE}-*.dist-info/METADATA")):
        for line in meta.read_text(errors="replace").splitlines():
            if line.startswith("Version:"):
                return line.split(":", 1)[1].strip()
    return None


def _check_version(site_packages: Path) -> None:
    found = installed_version(site_packages)
    if found != VERSION:
        raise PatchError(
            f"the bqemulator patch is written for {PACKAGE}=={VERSION}, but {site_packages} has "
            f"{found or 'no ' + PACKAGE}; reinstall the pinned release (python -m infra.stack install) "
            "or port infra/patches/bqemulator.py to the new one"
        )


def is_applied(site_packages: Path) -> bool:
    """Every hunk's new text is in place (and no old text is left)."""
    _check_version(site_packages)
    for hunk in HUNKS:
        text = (site_packages / hunk.path).read_text()
        if hunk.new not in text or hunk.old in text:
            return False
    return True


def apply(site_packages: Path) -> list[str]:
    """Apply the hunks not applied yet; return their descriptions (empty: nothing to do).

    Raises:
        PatchError: another bqemulator version, or a hunk's old text is not found exactly
            once (the file was changed by something else).
    """
    _check_version(site_packages)
    done: list[str] = []
    for i, hunk in enumerate(HUNKS, 1):
        path = site_packages / hunk.path
        text = path.read_text()
        if hunk.new in text and hunk.old not in text:
            continue
        if text.count(hunk.old) != 1:
            raise PatchError(
                f"{path}: hunk {i} of the bqemulator patch does not match (found its text "
                f"{text.count(hunk.old)} times, expected once); reinstall {PACKAGE}=={VERSION}"
            )
        partial = path.with_name(path.name + ".buildflow-partial")
        partial.write_text(text.replace(hunk.old, hunk.new))
        partial.replace(path)
        done.append(f"{hunk.path}: hunk {i}")
    return done
