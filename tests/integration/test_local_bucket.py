"""The ``local`` GCSFileStream: a real folder, real inotify (watchfiles), a real SQLite ack
store. No sleeps for synchronisation: every wait is a bounded pull or poll."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import os
import re
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

from buildflow.environment import Environment
from buildflow.errors import DestroyProtectedError, ResourceMissingError
from buildflow.events import GCSFileEvent
from buildflow.io.base import Envelope
from buildflow.io.google.declarations import GCSFileStream
from buildflow.io.local import folder
from buildflow.io.local.folder import LocalBlobReader, LocalBucketProvider, LocalBucketSource
from buildflow.provisioning import apply, destroy, plan, plan_destroy

BUCKET = "photos"
T = TypeVar("T")

# Long enough for a watch event to arrive on a loaded machine; tests end as soon as the
# expected events are in, so this only matters when something is wrong.
DEADLINE_S = 5.0
# How long "nothing else arrives" is checked for, after a sentinel has shown that the
# watcher has caught up.
QUIET_S = 0.15


def run(coro: Coroutine[Any, Any, T], timeout_s: float = 20.0) -> T:
    """Run a coroutine on a fresh event loop, failing instead of hanging."""
    return asyncio.run(asyncio.wait_for(coro, timeout_s))


@pytest.fixture
def env(tmp_path: Path) -> Environment:
    return Environment(name="local", state_dir=tmp_path / "state")


def provider(env: Environment, **options: Any) -> LocalBucketProvider:
    """A provider whose bucket and ``proc`` subscription exist (created by plan/apply)."""
    p = LocalBucketProvider(GCSFileStream(bucket_name=BUCKET, **options), env)
    apply(plan(p.resources("proc")))
    return p


@contextlib.asynccontextmanager
async def opened(p: LocalBucketProvider, consumer: str = "proc") -> AsyncIterator[LocalBucketSource]:
    src = p.open(consumer)
    assert isinstance(src, LocalBucketSource)
    try:
        yield src
    finally:
        await src.close()


async def pull_until(
    src: LocalBucketSource, n: int, deadline_s: float = DEADLINE_S
) -> list[Envelope[GCSFileEvent]]:
    """Pull until ``n`` events arrived or the deadline passed; returns what arrived."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    out: list[Envelope[GCSFileEvent]] = []
    while len(out) < n:
        left = end - loop.time()
        if left <= 0:
            break
        out += await src.pull(n - len(out), min(left, 0.5))
    return out


async def pull_name(src: LocalBucketSource, name: str) -> list[Envelope[GCSFileEvent]]:
    """Pull until the object ``name`` arrived (a sentinel); returns everything pulled, then
    whatever else arrives within ``QUIET_S``."""
    loop = asyncio.get_running_loop()
    end = loop.time() + DEADLINE_S
    out: list[Envelope[GCSFileEvent]] = []
    while name not in names(out) and loop.time() < end:
        out += await src.pull(100, min(end - loop.time(), 0.5))
    assert name in names(out), f"{name!r} never arrived; got {names(out)}"
    out += await src.pull(100, QUIET_S)
    return out


async def poll(check: Callable[[], Awaitable[bool]], deadline_s: float = DEADLINE_S) -> None:
    """Wait until ``check()`` is true (bounded)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    while not await check():
        assert loop.time() < end, "condition not met before the deadline"
        await asyncio.sleep(0.005)


def names(envs: list[Envelope[GCSFileEvent]]) -> list[str]:
    return sorted(e.event.name for e in envs)


def put(root: Path, name: str, data: bytes) -> Path:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def event_id(root: Path, name: str) -> str:
    return f"{BUCKET}/{name}#{os.stat(root / name).st_mtime_ns}"


# --- delivery ---------------------------------------------------------------------------


def test_backlog_is_delivered_with_stable_ids_blob_and_notification_metadata(env: Environment) -> None:
    p = provider(env)
    put(p.bucket_dir, "a.jpg", b"AAA")
    put(p.bucket_dir, "sub/deeper/x.png", b"XX")
    expected = {n: event_id(p.bucket_dir, n) for n in ("a.jpg", "sub/deeper/x.png")}

    async def main() -> list[Envelope[GCSFileEvent]]:
        async with opened(p) as src:
            return await pull_until(src, 2)

    got = {e.event.name: e for e in run(main())}
    assert set(got) == set(expected)
    for name, env_ in got.items():
        ev = env_.event
        mtime_ns = os.stat(p.bucket_dir / name).st_mtime_ns
        assert env_.event_id == ev.event_id == env_.ack_id == expected[name]
        assert env_.object_name == name and env_.attempt == 1
        assert ev.bucket_name == BUCKET and ev.generation == mtime_ns
        assert ev.uri == f"gs://{BUCKET}/{name}"
        event_time = datetime.datetime.fromtimestamp(mtime_ns / 1e9, tz=datetime.UTC)
        assert ev.event_time == event_time
        assert ev.metadata["bucketId"] == BUCKET
        assert ev.metadata["objectId"] == name
        assert ev.metadata["objectGeneration"] == str(mtime_ns)
        assert ev.metadata["eventType"] == "OBJECT_FINALIZE"
        assert ev.metadata["eventTime"] == event_time.isoformat().replace("+00:00", "Z")
    assert got["a.jpg"].event.blob == b"AAA" and got["a.jpg"].event.size == 3
    assert got["a.jpg"].event.content_type == "image/jpeg"
    assert got["sub/deeper/x.png"].event.read_bytes() == b"XX"
    assert got["sub/deeper/x.png"].event.content_type == "image/png"


def test_files_landing_after_start_are_delivered(env: Environment, tmp_path: Path) -> None:
    p = provider(env)
    root = p.bucket_dir

    async def main() -> list[Envelope[GCSFileEvent]]:
        async with opened(p) as src:
            assert await src.pull(10, 0.0) == []  # starts the watch; the bucket is empty
            put(root, "new.jpg", b"n")
            got = await pull_until(src, 1)
            # A new folder with a file written straight away, and a whole folder moved in:
            # its files raise no events of their own, the folder is listed when it appears.
            put(root, "fresh/y.jpg", b"y")
            outside = tmp_path / "upload"
            put(outside, "m1.jpg", b"1")
            put(outside, "deep/m2.jpg", b"2")
            os.rename(outside, root / "moved")
            got += await pull_until(src, 3)
            got += await src.pull(10, QUIET_S)
            return got

    got = run(main())
    assert names(got) == ["fresh/y.jpg", "moved/deep/m2.jpg", "moved/m1.jpg", "new.jpg"]
    assert {e.event.name: e.event.blob for e in got}["moved/deep/m2.jpg"] == b"2"


@pytest.mark.parametrize("leases", [True, False], ids=["writer-lease", "settle-time-only"])
def test_a_file_written_in_chunks_is_delivered_once_complete(
    env: Environment, monkeypatch: pytest.MonkeyPatch, leases: bool
) -> None:
    # Chunks land every ~20 ms for ~100 ms; a settle time well above the gap between
    # chunks makes "unchanged for the settle time" mean "the writer is done" where the
    # open writer cannot be seen (no leases: another OS or file system).
    monkeypatch.setenv("BUILDFLOW_LOCAL_SETTLE_MS", "250")
    if not leases:
        monkeypatch.setattr(folder, "_LEASES", False)
    p = provider(env)
    chunks = [bytes([i]) * 10_000 for i in range(6)]
    finished = threading.Event()

    def slow_writer() -> float:
        with open(p.bucket_dir / "big.jpg", "wb") as f:
            for chunk in chunks:
                f.write(chunk)
                f.flush()
                time.sleep(0.02)  # a slow uploader, not synchronisation
        finished.set()
        return time.monotonic()

    async def main() -> tuple[list[Envelope[GCSFileEvent]], float, float]:
        async with opened(p) as src:
            assert await src.pull(10, 0.0) == []
            writer = asyncio.create_task(asyncio.to_thread(slow_writer))
            early: list[Envelope[GCSFileEvent]] = []
            while not finished.is_set():  # nothing may be delivered while it is written
                early += await src.pull(10, 0.01)
            assert early == []
            done_at = await writer
            got = await pull_until(src, 1)
            arrived_at = time.monotonic()
            got += await src.pull(10, 0.4)  # longer than the settle time: no second event
            return got, done_at, arrived_at

    got, done_at, arrived_at = run(main())
    assert len(got) == 1, [e.event_id for e in got]
    ev = got[0].event
    assert ev.blob == b"".join(chunks) and ev.size == 60_000
    assert ev.event_id == event_id(p.bucket_dir, "big.jpg")
    if not leases:
        assert arrived_at - done_at >= 0.2  # it waited for the file to settle


@pytest.mark.skipif(not folder._LEASES, reason="file leases (fcntl F_SETLEASE) are Linux only")
def test_a_closed_file_is_delivered_without_waiting_for_the_settle_time(
    env: Environment, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BUILDFLOW_LOCAL_SETTLE_MS", "60000")  # a minute: only the lease can admit it
    p = provider(env)

    async def main() -> list[Envelope[GCSFileEvent]]:
        async with opened(p) as src:
            assert await src.pull(10, 0.0) == []
            put(p.bucket_dir, "written.jpg", b"complete")  # opened, written, closed
            tmp = put(p.bucket_dir, ".upload.jpg", b"renamed")
            os.rename(tmp, p.bucket_dir / "renamed.jpg")
            return await pull_until(src, 2)

    got = run(main())
    assert {e.event.name: e.event.blob for e in got} == {
        "written.jpg": b"complete",
        "renamed.jpg": b"renamed",
    }


@pytest.mark.skipif(not folder._LEASES, reason="file leases (fcntl F_SETLEASE) are Linux only")
def test_writer_closed_sees_an_open_writer_and_its_close(tmp_path: Path) -> None:
    path = tmp_path / "f.jpg"
    with open(path, "wb") as f:
        f.write(b"part")
        f.flush()
        assert not folder._writer_closed(path)
    assert folder._writer_closed(path)
    with open(path, "rb"):  # readers do not count
        assert folder._writer_closed(path)
    assert not folder._writer_closed(tmp_path / "missing.jpg")


def test_a_hidden_upload_renamed_into_place_is_delivered_once(env: Environment) -> None:
    p = provider(env)

    async def main() -> list[Envelope[GCSFileEvent]]:
        async with opened(p) as src:
            assert await src.pull(10, 0.0) == []
            tmp = put(p.bucket_dir, ".upload.jpg", b"partial")
            with open(tmp, "ab") as f:
                f.write(b"+rest")
            os.rename(tmp, p.bucket_dir / "done.jpg")
            return await pull_name(src, "done.jpg")

    got = run(main())
    assert names(got) == ["done.jpg"]
    assert got[0].event.blob == b"partial+rest"


# --- acks, nacks, redelivery ------------------------------------------------------------


def test_acks_persist_per_consumer_and_unacked_events_come_back(env: Environment) -> None:
    p = provider(env)
    for n in ("a.jpg", "b.jpg", "c.jpg"):
        put(p.bucket_dir, n, n.encode())

    async def first_run() -> None:
        async with opened(p) as src:
            got = sorted(await pull_until(src, 3), key=lambda e: e.event.name)
            assert names(got) == ["a.jpg", "b.jpg", "c.jpg"]
            await src.ack(got[:2])  # c.jpg is pulled but never acked

    async def second_run(consumer: str) -> tuple[list[str], int | None]:
        async with opened(p, consumer) as src:
            got = await pull_until(src, 3, deadline_s=0.3)
            return names(got), await src.backlog()

    run(first_run())
    assert p.ack_store_path("proc").is_file()
    assert run(second_run("proc")) == (["c.jpg"], 0)
    # Another processor has its own subscription (created on first use) and gets everything.
    assert run(second_run("other")) == (["a.jpg", "b.jpg", "c.jpg"], 0)
    with contextlib.closing(sqlite3.connect(p.ack_store_path("proc"))) as db:
        acked = sorted(r[0] for r in db.execute("SELECT event_id FROM acked"))
    assert acked == sorted(event_id(p.bucket_dir, n) for n in ("a.jpg", "b.jpg"))


def test_nack_gives_events_back_for_redelivery(env: Environment) -> None:
    p = provider(env)
    for n in ("a.jpg", "b.jpg"):
        put(p.bucket_dir, n, b"x")

    async def main() -> None:
        async with opened(p) as src:
            first = await pull_until(src, 2)
            assert await src.pull(10, 0.0) == []
            await src.nack(first)
            again = await src.pull(10, 0.0)
            assert [e.event_id for e in again] == [e.event_id for e in first]  # same order
            await src.nack(again[1:])
            await src.ack(again[:1])
            last = await src.pull(10, 0.0)
            assert [e.event_id for e in last] == [again[1].event_id]
            await src.ack(last)
            assert await src.is_drained()

    run(main())


def test_an_overwrite_after_ack_is_a_new_event(env: Environment) -> None:
    p = provider(env)
    path = put(p.bucket_dir, "a.jpg", b"v1")

    async def main() -> list[Envelope[GCSFileEvent]]:
        async with opened(p) as src:
            [first] = await pull_until(src, 1)
            await src.ack([first])
            old = os.stat(path).st_mtime_ns
            path.write_bytes(b"version 2")
            if os.stat(path).st_mtime_ns == old:  # same coarse clock tick: make it a new one
                os.utime(path, ns=(old, old + 1))
            got = await pull_name(src, "a.jpg")
            return [first, *got]

    first, *rest = run(main())
    assert len(rest) == 1
    assert rest[0].event_id != first.event_id
    assert rest[0].event_id == event_id(p.bucket_dir, "a.jpg")
    assert rest[0].event.blob == b"version 2"
    assert rest[0].event.generation > first.event.generation


# --- what is not an object --------------------------------------------------------------


def test_hidden_temporary_and_symlinked_files_are_never_delivered(env: Environment, tmp_path: Path) -> None:
    p = provider(env)
    root = p.bucket_dir
    outside = tmp_path / "outside"
    put(outside, "secret.jpg", b"secret")

    def make_ignored(tag: str) -> None:
        for name in (f".{tag}.jpg", f"{tag}.tmp", f"{tag}.part", f"{tag}.jpg~", f".cache/{tag}.jpg"):
            put(root, name, b"x")
        put(root, f"sub/.hidden/{tag}.jpg", b"x")
        os.symlink(outside / "secret.jpg", root / f"out-{tag}.jpg")  # points outside the root
        os.symlink(root / "real.jpg", root / f"in-{tag}.jpg")  # points inside the root
        os.symlink(outside, root / f"dirlink-{tag}")  # a folder outside the root

    put(root, "real.jpg", b"real")
    make_ignored("backlog")

    async def main() -> list[Envelope[GCSFileEvent]]:
        async with opened(p) as src:
            got = await pull_name(src, "real.jpg")
            make_ignored("live")
            put(root, "sentinel.jpg", b"s")  # written last: once it is in, the rest were seen
            got += await pull_name(src, "sentinel.jpg")
            assert await src.backlog() == 0
            return got

    assert names(run(main())) == ["real.jpg", "sentinel.jpg"]


def test_prefix_and_content_type_filters_skip_objects(env: Environment) -> None:
    p = provider(env, prefix="in/", content_types=("image/",))
    for name in ("in/a.jpg", "in/notes.txt", "in/data.bin", "out/b.jpg", "c.jpg"):
        put(p.bucket_dir, name, b"x")

    async def main() -> list[Envelope[GCSFileEvent]]:
        async with opened(p) as src:
            got = await pull_name(src, "in/a.jpg")
            for name in ("in/live.txt", "out/live.jpg"):
                put(p.bucket_dir, name, b"x")
            put(p.bucket_dir, "in/live.png", b"x")
            return got + await pull_name(src, "in/live.png")

    assert names(run(main())) == ["in/a.jpg", "in/live.png"]


def test_blob_reader_refuses_names_outside_the_root(tmp_path: Path) -> None:
    root = tmp_path / "bucket"
    put(root, "ok.jpg", b"ok")
    put(tmp_path, "x", b"secret")
    os.symlink(tmp_path / "x", root / "link.jpg")
    assert LocalBlobReader(str(root), "ok.jpg").read() == b"ok"
    for name in ("../x", "sub/../../x", str(tmp_path / "x"), "link.jpg"):
        with pytest.raises(PermissionError, match="outside bucket root"):
            LocalBlobReader(str(root), name).read()
    with pytest.raises(FileNotFoundError):
        LocalBlobReader(str(root), "gone.jpg").read()


# --- backlog and drain ------------------------------------------------------------------


def test_backlog_and_is_drained_follow_pending_unsettled_and_inflight(
    env: Environment, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = provider(env)
    for name in ("a.jpg", "b.jpg"):  # copied in while the run was stopped: long settled
        path = put(p.bucket_dir, name, b"x")
        os.utime(path, (time.time() - 60, time.time() - 60))

    async def main() -> None:
        async with opened(p) as src:
            assert not await src.is_drained()  # not started: it cannot know yet
            await src.start()
            assert await src.backlog() == 2 and not await src.is_drained()
            one = await src.pull(1, 0.0)
            assert await src.backlog() == 1
            two = await src.pull(5, 0.0)
            assert len(one) == len(two) == 1
            assert await src.backlog() == 0
            assert not await src.is_drained()  # pulled, not acked
            await src.ack(one + two)
            assert await src.is_drained()

            # A file still being written (open, changed within the settle time) counts as
            # backlog, and the source is not drained.
            monkeypatch.setenv("BUILDFLOW_LOCAL_SETTLE_MS", "10000")
            with open(p.bucket_dir / "slow.jpg", "wb") as writer:
                writer.write(b"s")
                writer.flush()

                async def seen() -> bool:
                    return await src.backlog() == 1

                await poll(seen)
                assert not await src.is_drained()
                assert await src.pull(5, 0.0) == []

    run(main())


# --- resources ----------------------------------------------------------------------------


def test_bucket_resource_plan_create_inspect_delete(env: Environment) -> None:
    p = LocalBucketProvider(GCSFileStream(bucket_name=BUCKET), env)
    bucket, sub = p.resources("proc")
    assert (bucket.kind, bucket.name) == ("bucket", BUCKET)
    assert (sub.kind, sub.name) == ("subscription", f"{BUCKET}.proc")
    assert [c.action for c in plan([bucket, sub])] == ["create", "create"]
    with pytest.raises(ResourceMissingError, match="buildflow plan"):
        p.open("proc")

    apply(plan([bucket, sub]))
    assert p.bucket_dir.is_dir() and p.ack_store_path("proc").is_file()
    assert bucket.inspect().exists and sub.inspect().exists
    assert [c.action for c in plan([bucket, sub])] == ["no change", "no change"]

    # Non-empty and force_destroy=False: destroy refuses and deletes nothing.
    put(p.bucket_dir, "sub/a.jpg", b"a")
    assert bucket.delete_blockers() == ["bucket holds 1 objects and force_destroy=False"]
    changes = plan_destroy([bucket, sub])
    assert {c.resource.kind: c.action for c in changes} == {"bucket": "protected", "subscription": "delete"}
    with pytest.raises(DestroyProtectedError, match="force_destroy=True"):
        destroy(changes)
    assert p.bucket_dir.is_dir() and p.ack_store_path("proc").is_file()

    # --force (or force_destroy=True) deletes both, files and all.
    destroy(plan_destroy([bucket, sub], force=True))
    assert not p.bucket_dir.exists() and not p.ack_store_path("proc").exists()
    assert not bucket.inspect().exists and not sub.inspect().exists
    assert [c.action for c in plan_destroy([bucket, sub])] == ["absent", "absent"]

    forced = LocalBucketProvider(GCSFileStream(bucket_name=BUCKET, force_destroy=True), env)
    [fbucket, _] = forced.resources("proc")
    fbucket.create()
    put(p.bucket_dir, "a.jpg", b"a")
    assert fbucket.delete_blockers() == []
    destroy(plan_destroy([fbucket]))
    assert not p.bucket_dir.exists()


def test_bucket_path_that_is_a_file_is_a_conflict(env: Environment) -> None:
    p = LocalBucketProvider(GCSFileStream(bucket_name=BUCKET), env)
    put(env.buckets_dir, BUCKET, b"not a folder")
    [change] = plan(p.resources("proc")[:1])
    assert change.action == "conflict"
    assert "is not a folder" in change.details[0]


def test_subscription_resource_create_and_delete_with_wal_files(env: Environment) -> None:
    p = provider(env)
    put(p.bucket_dir, "a.jpg", b"a")
    [_, sub] = p.resources("proc")

    async def ack_all() -> None:
        async with opened(p) as src:
            await src.ack(await pull_until(src, 1))

    run(ack_all())
    sidecars = [Path(f"{p.ack_store_path('proc')}{s}") for s in ("-wal", "-shm")]
    for path in sidecars:  # leftovers of a hard stop; delete removes them too
        path.touch()
    sub.delete()
    assert not sub.inspect().exists
    assert not any(path.exists() for path in sidecars)
    sub.create()
    assert sub.inspect().exists

    async def redelivered() -> list[str]:
        async with opened(p) as src:
            return names(await pull_until(src, 1))

    assert run(redelivered()) == ["a.jpg"]  # a fresh subscription has no acks


# --- hostile names ----------------------------------------------------------------------


def test_upload_refuses_names_outside_or_not_fitting_the_bucket_and_writes_nothing(
    env: Environment, tmp_path: Path
) -> None:
    from buildflow.errors import ConfigurationError

    p = provider(env)
    root = p.bucket_dir
    outside = tmp_path / "outside"
    put(outside, "secret.jpg", b"secret")
    os.symlink(outside, root / "dirlink")
    os.symlink(outside / "secret.jpg", root / "link.jpg")
    refused = {
        "": "empty",
        "../x.jpg": "'..' component",
        "sub/../x.jpg": "'..' component",
        str(tmp_path / "abs.jpg"): "absolute path",
        "a//b.jpg": "empty or '.' component",
        "./a.jpg": "empty or '.' component",
        "sub/": "empty or '.' component",
        "nul\0.jpg": "NUL",
        "bad\udcff.jpg": "not valid UTF-8",
        ".hidden.jpg": "ignores hidden names",
        "x.jpg.part": "ignores hidden names",
        "dirlink/x.jpg": "outside the bucket folder",
        "link.jpg": "outside the bucket folder",
        "d" * 256 + "/x.jpg": "too long",
        "x" * 252 + ".jpg": "too long",
    }

    def snapshot() -> dict[str, bytes]:
        return {str(q): q.read_bytes() for q in tmp_path.rglob("*") if q.is_file() and not q.is_symlink()}

    before = snapshot()
    for name, why in refused.items():
        with pytest.raises(ConfigurationError, match=re.escape(why)) as info:
            p.upload(name, b"data")
        assert "refused" in str(info.value) or "too long" in str(info.value)
    assert snapshot() == before  # nothing written, not even a temporary file
    # The longest name a component can have (255 bytes) fits, UTF-8 included.
    for name in ("x" * 251 + ".jpg", "é" * 124 + "猫.jpg", "café/猫 ☕.jpg"):
        assert len(name.split("/")[-1].encode()) in (255, len("猫 ☕.jpg".encode()))
        assert p.upload(name, b"ok") == str(root / name)
        assert (root / name).read_bytes() == b"ok"
    assert (outside / "secret.jpg").read_bytes() == b"secret"
    assert sorted(q.name for q in root.iterdir() if q.name.startswith(".")) == []  # no temp left


def test_a_file_name_that_is_not_utf8_is_dead_lettered_and_the_watch_goes_on(env: Environment) -> None:
    p = provider(env)
    root = os.fsencode(p.bucket_dir)
    with open(os.path.join(root, b"backlog-caf\xe9.jpg"), "wb") as f:
        f.write(b"x")

    async def main() -> list[Envelope[GCSFileEvent]]:
        async with opened(p) as src:
            got = await pull_until(src, 1)
            # watchfiles cannot decode this name: its watch fails, with the other changes
            # it had; the source must watch again and find both.
            with open(os.path.join(root, b"live-\xff.jpg"), "wb") as f:
                f.write(b"y")
            put(p.bucket_dir, "sentinel.jpg", b"s")
            got += await pull_name(src, "sentinel.jpg")
            put(p.bucket_dir, "after.jpg", b"a")  # the new watch sees new files
            got += await pull_name(src, "after.jpg")
            await src.ack(got)
            assert await src.is_drained()
            return got

    got = {e.event.name: e for e in run(main())}
    assert sorted(got) == ["after.jpg", "backlog-caf\\xe9.jpg", "live-\\xff.jpg", "sentinel.jpg"]
    for name in ("backlog-caf\\xe9.jpg", "live-\\xff.jpg"):
        env_ = got[name]
        assert isinstance(env_.error, ValueError) and "not valid UTF-8" in str(env_.error)
        assert env_.event_id.startswith(f"{BUCKET}/{name}#") and env_.object_name == name
        env_.event_id.encode()  # storable: no lone surrogates
    assert got["sentinel.jpg"].error is None and got["after.jpg"].event.blob == b"a"
