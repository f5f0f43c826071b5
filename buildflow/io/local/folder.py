"""``GCSFileStream`` in the ``local`` environment: a folder watched for new files.

The bucket ``b`` is the folder ``<state dir>/buckets/b/``. Copying a file into it is an
upload. Semantics, matching a GCS bucket with an OBJECT_FINALIZE subscription:

* Every regular file under the folder is an object; its name is its path relative to the
  folder (``/``-separated). Its generation is the file's ``st_mtime_ns``, so the event id
  ``<bucket>/<name>#<generation>`` is stable for one upload and new for an overwrite.
* Every object not yet acked by this processor is an event: files copied in while the run
  was stopped are picked up at start (the backlog), new ones as they land (watchfiles,
  i.e. inotify, or polling with ``BUILDFLOW_FORCE_POLLING=1``).
* A file counts as uploaded as soon as no process has it open for writing (on Linux: a
  read lease, ``fcntl(2)`` ``F_SETLEASE``, is granted only then), or else once it has not
  changed for ``BUILDFLOW_LOCAL_SETTLE_MS`` (default 25 ms; where leases are unavailable:
  another OS, a file system without them, a file another user owns). For large or slow
  writes, write to a hidden name (``.name``) or one ending in ``.tmp``/``.part``/``~`` and
  rename it into place: such names are ignored.
* Acks are kept per processor in ``<state dir>/subscriptions/<bucket>.<processor>.sqlite3``
  (the subscription): an acked upload is never delivered again to that processor.
* Symbolic links and anything resolving outside the folder are ignored: the local bucket
  never reads outside its root.
* A file whose name is not valid UTF-8 (Cloud Storage object names are UTF-8) is
  dead-lettered, named with ``\\xNN`` escapes for its bad bytes; rename it to have it
  processed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import datetime
import errno
import logging
import mimetypes
import os
import secrets
import shutil
import sqlite3
import stat
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from buildflow.errors import ResourceGoneError
from buildflow.events import BlobReader, GCSFileEvent
from buildflow.io.base import Envelope, SourceProvider, SourceRuntime
from buildflow.io.google.declarations import GCSFileStream
from buildflow.provisioning import CreatedLedger, Resource, ResourceState, label_keep_reasons
from buildflow.runtime.threads import BlockingWorker

__all__ = ["LocalBucketProvider", "LocalBucketSource", "LocalBlobReader"]

log = logging.getLogger("buildflow.io.local")

_IGNORED_SUFFIXES = (".tmp", ".part", "~", ".crdownload", ".swp")


def _settle_s() -> float:
    return int(os.environ.get("BUILDFLOW_LOCAL_SETTLE_MS", "25")) / 1000


try:
    import fcntl
    import signal

    _LEASES = hasattr(fcntl, "F_SETLEASE") and hasattr(fcntl, "F_SETSIG")
except ImportError:  # not a POSIX system
    _LEASES = False


def _writer_closed(path: Path) -> bool:
    """Whether no process has ``path`` open for writing, so the writer is done with it.

    Linux grants a read lease (``fcntl(2)``, ``F_SETLEASE`` ``F_RDLCK``) only on a file that
    no process has open for writing, else fails with ``EAGAIN``; the lease is released at
    once. False when it cannot tell (no leases here, a file system without them, a file of
    another user: ``EACCES``), and the settle time decides. A write-open of the file in the
    microseconds the lease is held would break it: the kernel then signals the holder,
    with ``SIGIO`` by default (whose default action ends the process), so the lease asks
    for ``SIGURG`` instead, which is ignored unless a handler is installed (signal(7)).
    """
    if not _LEASES:
        return False
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.fcntl(fd, fcntl.F_SETSIG, signal.SIGURG)
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
    except OSError:  # EAGAIN: open for writing; EACCES, EINVAL: cannot tell
        return False
    else:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
        return True
    finally:
        os.close(fd)


def _ignored(rel: str) -> bool:
    return any(p.startswith(".") for p in rel.split("/")) or rel.endswith(_IGNORED_SUFFIXES)


def _utf8(name: str) -> str:
    """``name`` as valid UTF-8 text. ``os`` gives the bytes of a file name that is not UTF-8
    as lone surrogates (PEP 383), which no sink can store; they become ``\\xNN`` escapes."""
    try:
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate that stands for no byte (not from os)
        return name.encode("utf-8", "backslashreplace").decode("utf-8")


def _name_problem(name: str) -> str | None:
    """Why ``name`` cannot be written as an object of a local bucket, or None."""
    if not name:
        return "it is empty"
    if "\0" in name:
        return "it contains a NUL character"
    if _utf8(name) != name:
        return "it is not valid UTF-8"
    if name.startswith("/"):
        return "it is an absolute path; object names are relative to the bucket"
    parts = name.split("/")
    if ".." in parts:
        return "it has a '..' component (object names may not climb out of a folder)"
    if "" in parts or "." in parts:
        return "it has an empty or '.' component, so the file would get another name"
    if _ignored(name):
        return (
            "the local bucket ignores hidden names and names ending in "
            f"{', '.join(_IGNORED_SUFFIXES)} (they mark uploads in progress)"
        )
    return None


@dataclasses.dataclass(frozen=True)
class LocalBlobReader(BlobReader):
    """Reads a file of a local bucket. Refuses paths that resolve outside the bucket."""

    root: str
    name: str

    def read(self) -> bytes:
        root = Path(self.root).resolve()
        path = (root / self.name).resolve()
        if not path.is_relative_to(root) or (root / self.name).is_symlink():
            raise PermissionError(f"object {self.name!r} resolves outside bucket root {str(root)!r}")
        return path.read_bytes()


@dataclasses.dataclass(frozen=True)
class _Object:
    name: str
    generation: int
    size: int
    #: no process had the file open for writing when it was examined (see ``_writer_closed``)
    closed: bool = dataclasses.field(default=False, compare=False)

    def event_id(self, bucket: str) -> str:
        return GCSFileEvent.make_event_id(bucket, _utf8(self.name), self.generation)


class _AckStore:
    """The subscription: a SQLite file of acked event ids."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS acked (event_id TEXT PRIMARY KEY, acked_at TEXT NOT NULL)"
        )

    def load(self) -> set[str]:
        return {r[0] for r in self._db.execute("SELECT event_id FROM acked")}

    def add(self, event_ids: Sequence[str]) -> None:
        now = datetime.datetime.now(datetime.UTC).isoformat()
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT OR IGNORE INTO acked VALUES (?, ?)", [(e, now) for e in event_ids])

    def close(self) -> None:
        self._db.close()


class LocalBucketSource(SourceRuntime[GCSFileEvent]):
    """The live local bucket source. See the module docstring for semantics."""

    def __init__(self, decl: GCSFileStream, root: Path, ack_path: Path) -> None:
        self.decl = decl
        self.root = root.resolve()
        self.ack_path = ack_path
        self._io = BlockingWorker(f"bucket-{decl.bucket_name}")
        self._acked: set[str] = set()
        self._pending: collections.OrderedDict[str, _Object] = collections.OrderedDict()
        self._pending_ids: dict[str, str] = {}  # object name -> its queued event id
        self._inflight: dict[str, _Object] = {}
        self._unsettled: dict[str, float] = {}
        self._arrived = asyncio.Event()
        self._store: _AckStore | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._stop_watch = asyncio.Event()
        self._relisting: asyncio.Future[None] | None = None
        self._started = False

    # -- discovery ---------------------------------------------------------------
    def _stat(self, rel: str, probe_writer: bool = False) -> _Object | None:
        """Stat one candidate object (blocking). None if it is not an object. With
        ``probe_writer``, a file younger than the settle time is also checked for an open
        writer (``_Object.closed``)."""
        if _ignored(rel):
            return None
        path = self.root / rel
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return None
        if not stat.S_ISREG(st.st_mode):
            return None  # directories, symlinks, sockets: not objects
        if not path.resolve().is_relative_to(self.root):
            return None
        young = time.time_ns() - st.st_mtime_ns < _settle_s() * 1e9
        closed = probe_writer and young and _writer_closed(path)
        return _Object(rel, st.st_mtime_ns, st.st_size, closed)

    def _scan(self, under: str = "") -> list[_Object]:
        """List the objects under the folder ``under`` (relative; default the root)."""
        found: list[_Object] = []
        for dirpath, dirnames, filenames in os.walk(self.root / under, followlinks=False):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            base = Path(dirpath).relative_to(self.root)
            for f in sorted(filenames):
                rel = (base / f).as_posix()
                obj = self._stat(rel[2:] if rel.startswith("./") else rel)
                if obj is not None:
                    found.append(obj)
        return found

    def _examine(self, rels: Sequence[str]) -> list[tuple[str, _Object | None]]:
        """Stat changed paths (blocking). A changed folder is listed whole: a folder moved
        or copied in raises one event for itself and none for the files already inside
        it (its inotify watch is added only after it appears)."""
        out: list[tuple[str, _Object | None]] = []
        for rel in rels:
            if not _ignored(rel):
                try:
                    is_dir = stat.S_ISDIR(os.lstat(self.root / rel).st_mode)
                except OSError:
                    is_dir = False
                if is_dir:
                    out.extend((o.name, o) for o in self._scan(rel))
                    continue
            out.append((rel, self._stat(rel, probe_writer=True)))
        return out

    def _wanted(self, obj: _Object) -> bool:
        if self.decl.prefix and not obj.name.startswith(self.decl.prefix):
            log.debug("skipping %s: outside prefix %r", obj.name, self.decl.prefix)
            return False
        if self.decl.content_types:
            ctype = mimetypes.guess_type(obj.name)[0] or "application/octet-stream"
            if not ctype.startswith(tuple(self.decl.content_types)):
                log.debug("skipping %s: content type %s", obj.name, ctype)
                return False
        return True

    def _offer(self, obj: _Object) -> None:
        """Queue an object as an event unless acked, queued or in flight already."""
        eid = obj.event_id(self.decl.bucket_name)
        if eid in self._acked or eid in self._inflight or eid in self._pending:
            return
        if not self._wanted(obj):
            return
        # A newer generation of a queued name replaces the older one.
        old_id = self._pending_ids.get(obj.name)
        if old_id is not None:
            self._pending.pop(old_id, None)
        self._pending[eid] = obj
        self._pending_ids[obj.name] = eid
        self._arrived.set()

    async def _consider(self, rels: Sequence[str]) -> None:
        """Stat changed paths, then admit them."""
        self._admit(await self._io.run(lambda: self._examine(rels)))

    def _recheck(self, rel: str) -> None:
        asyncio.ensure_future(self._consider([rel]))

    def _admit(self, found: Sequence[tuple[str, _Object | None]]) -> None:
        """Queue settled objects; re-check the ones still being written later."""
        now = datetime.datetime.now().timestamp()
        settle = _settle_s()
        for rel, obj in found:
            if obj is None:
                self._unsettled.pop(rel, None)
                continue
            age = now - obj.generation / 1e9
            if age < settle and not obj.closed:
                self._unsettled[rel] = now
                asyncio.get_running_loop().call_later(settle - age + 0.002, self._recheck, rel)
            else:
                self._unsettled.pop(rel, None)
                self._offer(obj)

    async def _watch(self) -> None:
        """Watch the folder. If the watch fails (watchfiles gives up on a change to a file
        whose name is not UTF-8, and drops the other changes it had), watch again and list
        the folder for what was missed, instead of silently watching nothing more."""
        failures = 0
        while not self._stop_watch.is_set():
            try:
                await self._watch_changes(relist=failures > 0)
                return
            except Exception as e:  # an ExceptionGroup from watchfiles' task group, mostly
                failures += 1
                errors = e.exceptions if isinstance(e, BaseExceptionGroup) else (e,)
                log.warning(
                    "bucket %s: the folder watch failed (%s); watching again and listing the folder",
                    self.decl.bucket_name,
                    "; ".join(f"{type(x).__name__}: {x}" for x in errors),
                )
                await asyncio.sleep(min(0.01 * 2**failures, 1.0))  # backoff if it keeps failing

    async def _relist(self) -> None:
        self._admit([(o.name, o) for o in await self._io.run(self._scan)])

    async def _watch_changes(self, relist: bool) -> None:
        import watchfiles

        force_polling = os.environ.get("BUILDFLOW_FORCE_POLLING") == "1" or None
        if relist:  # runs once awatch below has started its watcher (it does before awaiting)
            self._relisting = asyncio.ensure_future(self._relist())
        async for changes in watchfiles.awatch(
            self.root,
            stop_event=self._stop_watch,
            # Yield changes 5 ms after the last one (step), within 30 ms of the first
            # (debounce): the writer check and the settle time, not the watch, decide when
            # a file is complete. The watcher wakes every step: 5 ms costs ~0.9% of a core
            # while idle (10 ms: ~0.6%) and halves the drop-to-pull time (17 -> 9 ms p50).
            step=5,
            debounce=30,
            recursive=True,
            force_polling=force_polling,
            poll_delay_ms=50,
            rust_timeout=500,
            yield_on_timeout=False,
            watch_filter=None,
        ):
            rels = []
            for change, p in changes:
                if change == watchfiles.Change.deleted:
                    continue
                try:
                    rels.append(Path(p).relative_to(self.root).as_posix())
                except ValueError:
                    continue
            if rels:
                await self._consider(sorted(set(rels)))

    async def start(self) -> None:
        """Load acks, start watching, then list the backlog (watch first: no gap)."""
        self.root.mkdir(parents=True, exist_ok=True)
        self._store = await self._io.run(lambda: _AckStore(self.ack_path))
        store = self._store
        self._acked = await self._io.run(store.load)
        self._watcher = asyncio.create_task(self._watch(), name=f"watch-{self.decl.bucket_name}")
        await asyncio.sleep(0)
        self._admit([(o.name, o) for o in await self._io.run(self._scan)])
        self._started = True

    # -- SourceRuntime -------------------------------------------------------------
    def _envelope(self, eid: str, obj: _Object) -> Envelope[GCSFileEvent]:
        when = datetime.datetime.fromtimestamp(obj.generation / 1e9, tz=datetime.UTC)
        bucket = self.decl.bucket_name
        name = _utf8(obj.name)
        event = GCSFileEvent(
            bucket_name=bucket,
            name=name,
            generation=obj.generation,
            size=obj.size,
            content_type=mimetypes.guess_type(name)[0],
            event_time=when,
            event_id=eid,
            metadata=GCSFileEvent.notification_attributes(bucket, name, obj.generation, when),
            reader=LocalBlobReader(str(self.root), obj.name),
        )
        error = None
        if name != obj.name:  # a sink cannot store the name, nor could GCS: dead-letter it
            error = ValueError(
                f"object name {name!r} is not valid UTF-8 (Cloud Storage object names are UTF-8 "
                "text); rename the file"
            )
        return Envelope(
            event=event,
            event_id=eid,
            ack_id=eid,
            received_at=datetime.datetime.now(datetime.UTC),
            object_name=name,
            error=error,
        )

    async def pull(self, max_events: int, timeout_s: float) -> list[Envelope[GCSFileEvent]]:
        if not self._started:
            await self.start()
        if not self._pending:
            if not self.root.is_dir():
                raise ResourceGoneError(
                    f"bucket folder {str(self.root)!r} no longer exists (deleted while running, e.g. "
                    "by `buildflow destroy`): the run stops; `buildflow plan <app>` creates it again"
                )
            self._arrived.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), max(0.0, timeout_s))
        out: list[Envelope[GCSFileEvent]] = []
        while self._pending and len(out) < max_events:
            eid, obj = self._pending.popitem(last=False)
            if self._pending_ids.get(obj.name) == eid:
                del self._pending_ids[obj.name]
            self._inflight[eid] = obj
            out.append(self._envelope(eid, obj))
        return out

    async def ack(self, envelopes: Sequence[Envelope[GCSFileEvent]]) -> None:
        ids = [e.ack_id for e in envelopes]
        store = self._store
        assert store is not None
        await self._io.run(lambda: store.add(ids))
        for eid in ids:
            self._inflight.pop(eid, None)
            self._acked.add(eid)

    async def nack(self, envelopes: Sequence[Envelope[GCSFileEvent]]) -> None:
        for e in reversed(envelopes):
            obj = self._inflight.pop(e.ack_id, None)
            if obj is not None and obj.name not in self._pending_ids:  # unless a newer one waits
                self._pending[e.ack_id] = obj
                self._pending.move_to_end(e.ack_id, last=False)
                self._pending_ids[obj.name] = e.ack_id
        self._arrived.set()

    async def backlog(self) -> int | None:
        return len(self._pending) + len(self._unsettled)

    async def is_drained(self) -> bool:
        relisted = self._relisting is None or self._relisting.done()
        return self._started and relisted and not self._pending and not self._inflight and not self._unsettled

    async def close(self) -> None:
        self._stop_watch.set()
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._watcher
        if self._relisting is not None:
            self._relisting.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._relisting
        if self._store is not None:
            store = self._store
            await self._io.run(store.close)
        self._io.stop()


class LocalBucketResource(Resource):
    """The bucket folder. ``destroy`` deletes only a folder this app's ``plan`` created
    (recorded in the state folder's :class:`~buildflow.provisioning.CreatedLedger`); a
    folder that was there before is kept, files and all."""

    kind = "bucket"

    def __init__(self, decl: GCSFileStream, path: Path) -> None:
        self.decl = decl
        self.path = path
        self.name = decl.bucket_name

    def _ledger(self) -> CreatedLedger:
        return CreatedLedger(self.path.parent.parent)  # <state dir>/buckets/<name>

    def inspect(self) -> ResourceState:
        if self.path.exists() and not self.path.is_dir():
            return ResourceState(True, conflicts=(f"{self.path} exists and is not a folder",))
        return ResourceState(exists=self.path.is_dir())

    def create(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        self._ledger().record(self.kind, self.name, self.app, str(self.path.stat().st_ino))

    def keep_reasons(self, deleting: frozenset[tuple[str, str]]) -> list[str]:
        identity = str(self.path.stat().st_ino)
        return label_keep_reasons(self._ledger().labels(self.kind, self.name, identity), self.app)

    def delete_blockers(self) -> list[str]:
        if self.decl.force_destroy:
            return []
        n = sum(1 for p in self.path.rglob("*") if p.is_file())
        return [f"bucket holds {n} objects and force_destroy=False"] if n else []

    def delete(self) -> None:
        shutil.rmtree(self.path)
        self._ledger().forget(self.kind, self.name)


class LocalSubscriptionResource(Resource):
    """The processor's ack store (its subscription to the bucket)."""

    kind = "subscription"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = path.stem

    def inspect(self) -> ResourceState:
        return ResourceState(exists=self.path.exists())

    def create(self) -> None:
        _AckStore(self.path).close()

    def delete(self) -> None:
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(f"{self.path}{suffix}")


class LocalBucketProvider(SourceProvider):
    """Binds :class:`GCSFileStream` to the ``local`` environment."""

    declaration: GCSFileStream

    @property
    def bucket_dir(self) -> Path:
        return self.environment.buckets_dir / self.declaration.bucket_name

    def ack_store_path(self, consumer: str) -> Path:
        return self.environment.subscriptions_dir / f"{self.declaration.bucket_name}.{consumer}.sqlite3"

    def resources(self, consumer: str) -> list[Resource]:
        return [
            LocalBucketResource(self.declaration, self.bucket_dir),
            LocalSubscriptionResource(self.ack_store_path(consumer)),
        ]

    def upload(self, name: str, data: bytes, content_type: str | None = None) -> str:
        """Write ``data`` as object ``name``: to a hidden temporary file, then renamed into
        place, so the watcher never sees a half-written file.

        Raises:
            ConfigurationError: ``name`` is empty, absolute, has a ``..``, ``.`` or empty
                component, is not UTF-8, is a name the bucket ignores (hidden, ``.tmp``,
                ...), resolves outside the bucket folder (a symbolic link), or is too long
                for the file system (255 bytes a component on most). Nothing is written.
            ResourceMissingError: the bucket folder does not exist (run ``plan``).
            BuildflowError: the file cannot be written (e.g. a folder has that name).
        """
        from buildflow.errors import BuildflowError, ConfigurationError, ResourceMissingError

        root = self.bucket_dir.resolve()
        problem = _name_problem(name)
        target = (root / name).resolve() if problem is None else root
        if problem is None and not target.is_relative_to(root):
            problem = "it resolves outside the bucket folder (through a symbolic link)"
        if problem is not None:
            raise ConfigurationError(
                f"object name {name!r} refused: {problem}; nothing was written to bucket folder {str(root)!r}"
            )
        if not root.is_dir():
            raise ResourceMissingError(
                f"bucket folder {str(root)!r} does not exist; run `buildflow plan` first."
            )
        # A short temporary name: `.<name>.tmp` would not fit beside a 255-byte name.
        tmp = target.parent / f".upload-{os.getpid()}-{secrets.token_hex(4)}.tmp"
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(data)
            os.replace(tmp, target)
        except OSError as e:
            with contextlib.suppress(OSError):
                tmp.unlink()
            if e.errno == errno.ENAMETOOLONG:
                raise ConfigurationError(
                    f"object name {name!r} is too long for the local bucket's file system "
                    f"(at most {os.pathconf(root, 'PC_NAME_MAX')} bytes per '/'-separated part)"
                ) from e
            raise BuildflowError(f"cannot write object {name!r} to {str(target)!r}: {e.strerror}") from e
        return str(target)

    def open(self, consumer: str) -> SourceRuntime[Any]:
        from buildflow.errors import ResourceMissingError

        if not self.bucket_dir.is_dir():
            raise ResourceMissingError(
                f"bucket folder {str(self.bucket_dir)!r} does not exist; run "
                "`buildflow plan <app>` first to create it."
            )
        return LocalBucketSource(self.declaration, self.bucket_dir, self.ack_store_path(consumer))
