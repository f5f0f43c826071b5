"""Duplicates in BigQuery after a ``kill -9`` and redelivery, per ``BigQueryTable.write_mode``.

The case every at-least-once pipeline meets: a write reaches the warehouse and commits,
but the runner dies before it hears back, so the events are never acked and come back.
For each mode, through the local emulator stack (started and stopped by the script):

1. ``plan`` an app (the image classifier, GCSFileStream with a 10 s ack deadline, the
   BigQueryTable in that write mode) and upload the first half of N photos;
2. ``buildflow run``, its BigQuery writes sent through a holding TCP proxy
   (:class:`benchmarks.holding_proxy.HoldingProxy`), until every photo of the first half
   has its row;
3. arm the proxy and upload the second half: the runner's next write (a ``MERGE`` job,
   or an AppendRows request in the Storage Write modes) reaches the server, and from then
   on no answer reaches the runner; wait until the server shows that write's rows;
4. ``kill -9`` the runner: its events were written but never acked (no timing involved:
   the write cannot happen before the proxy is armed, and its answer cannot arrive);
5. ``buildflow run --until-idle`` again (as often as needed, until every upload has its
   row and a run that started after the dead runner's leases expired found nothing more):
   Pub/Sub redelivers every event the dead runner had not acked;
6. count rows and distinct ``(_event_id, _row_index)`` in BigQuery, as users are told to
   query: the table for ``merge`` and ``insert_id``, the ``<table>_dedup`` view for the
   Storage Write modes ``upsert`` and ``append`` (bqemulator applies no CDC upserts, so
   the raw table keeps both copies of a rewritten row; ``raw rows`` counts them).

In the Storage Write modes the runner's writes go to the server's gRPC port, which is
the one proxied then; the restarted runs talk to the server directly.

Columns: ``events`` (uploads), ``at kill`` (uploads with a row when the runner was
killed), ``rewritten`` (rows the restarted runs wrote for events that already had their
row: redeliveries of written, unacked events), ``rows``, ``duplicates`` (rows - distinct
keys) and ``lost`` (uploads without a row). The emulator ignores insertIds, so in
``insert_id`` mode every rewritten row is a duplicate; BigQuery would drop those only
within its ~1 minute best-effort window, and a restart after a crash often takes longer.

    .venv/bin/python -m benchmarks.bigquery_redelivery --images 64 --modes upsert,merge,insert_id
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "buildflow.cli"]
ACK_DEADLINE_S = 10  # the smallest GCSFileStream allows: redelivery comes 10 s after a crash

APP = f"""
import os
from buildflow import Node
from buildflow.io import BigQueryTable, GCSFileStream
from processors import ImageClassificationProcessor


class Classifier(ImageClassificationProcessor):
    def sink(self) -> BigQueryTable:
        return BigQueryTable(
            table_id=os.environ["TABLE_ID"], destroy_protection=False, write_mode=os.environ["WRITE_MODE"]
        )


app = Node()
app.add(Classifier(
    bucket_name=os.environ["BUCKET_NAME"],
    table_id=os.environ["TABLE_ID"],
    source=GCSFileStream(
        project_id=os.environ["GCP_PROJECT"],
        bucket_name=os.environ["BUCKET_NAME"],
        ack_deadline_secs={ACK_DEADLINE_S},
        force_destroy=True,
    ),
))
"""


@dataclasses.dataclass
class Outcome:
    """What one kill -9 scenario left in BigQuery (see the module docstring)."""

    mode: str
    events: int
    rows_at_kill: int
    rewritten: int
    rows: int
    distinct: int
    raw_rows: int
    duplicates: int
    lost: int
    restarts: int
    seconds: float


def _wait_for(predicate: Callable[[], bool], what: str, timeout: float, proc: Any = None) -> bool:
    """Poll ``predicate`` every 0.2 s for up to ``timeout`` s; False if it never held."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the runner exited early (rc {proc.returncode}) while waiting for {what}")
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)
    return True


#: What bqemulator 1.4.0 answers (HTTP 400) when a query and an append use its one DuckDB
#: connection at the same moment: the query did not run, nothing is wrong with it.
_EMULATOR_RACE = "pending query result"


def _read_retrying(query: Callable[[], list[Any]], attempts: int = 5) -> list[Any]:
    """``query()``, run again (up to ``attempts`` times, 0.2 s apart) while the emulator
    answers with its connection race (:data:`_EMULATOR_RACE`); any other error is raised."""
    from google.api_core import exceptions

    for attempt in range(attempts):
        try:
            return query()
        except exceptions.BadRequest as e:
            if _EMULATOR_RACE not in str(e) or attempt == attempts - 1:
                raise
            time.sleep(0.2)  # the race is over once the append's INSERT is
    raise AssertionError("unreachable")


def run_scenario(
    mode: str,
    *,
    env: dict[str, str],
    workdir: Path,
    project: str = "buildflow-local",
    images: int = 64,
    log: Callable[[str], None] = lambda s: None,
) -> Outcome:
    """Run the kill -9 scenario (module docstring) for one write mode; ``env`` holds the
    stack's variables.

    Raises:
        RuntimeError: a step did not happen within its bound (each is named), or a CLI
            command failed.
    """
    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import bigquery, storage

    from benchmarks.holding_proxy import HoldingProxy
    from buildflow.endpoints import host_port
    from models.samples import sample_photos

    t0 = time.monotonic()
    suffix = f"{os.getpid()}{time.monotonic_ns() % 10**8}"
    bucket_name = f"redelivery-{mode.replace('_', '-')}-{suffix}"
    table = f"{project}.redelivery_{mode}_{suffix}.predictions"
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "redelivery_app.py").write_text(APP)
    run_env = {
        **os.environ,
        **env,
        "BUILDFLOW_ENV": "emulator",
        "GCP_PROJECT": project,
        "BUCKET_NAME": bucket_name,
        "TABLE_ID": table,
        "WRITE_MODE": mode,
        "COLUMNS": "200",
    }

    def cli(*args: str) -> None:
        proc = subprocess.run(
            [*CLI, *args], cwd=workdir, env=run_env, capture_output=True, text=True, timeout=240
        )
        if proc.returncode != 0:
            what = f"buildflow {' '.join(args)} exited {proc.returncode}"
            raise RuntimeError(f"{what}:\n{proc.stdout}\n{proc.stderr}")

    bq = bigquery.Client(
        project=project,
        credentials=AnonymousCredentials(),
        client_options=ClientOptions(api_endpoint=env["BIGQUERY_EMULATOR_HOST"]),
    )

    storage_write = mode in ("upsert", "append")
    source = f"{table}_dedup" if storage_write else table

    def read(sql: str) -> list[Any]:
        return _read_retrying(lambda: list(bq.query(sql).result()))

    def keys(of: str = source) -> list[tuple[str, int]]:
        return [(r[0], r[1]) for r in read(f"SELECT _event_id, _row_index FROM `{of}`")]

    def uploads_with_rows() -> int:
        return len({k[0] for k in keys()})

    def raw_count() -> int:
        return int(read(f"SELECT COUNT(*) FROM `{table}`")[0][0])

    cli("plan", "redelivery_app:app", "--yes")
    try:
        gcs = storage.Client(
            project=project,
            credentials=AnonymousCredentials(),
            client_options=ClientOptions(api_endpoint=env["STORAGE_EMULATOR_HOST"]),
        )
        bucket = gcs.bucket(bucket_name)
        photos = list(sample_photos().items())

        def upload(first: int, last: int) -> None:
            for i in range(first, last):
                name, data = photos[i % len(photos)]
                bucket.blob(f"p{i:04d}_{name}").upload_from_string(data, content_type="image/jpeg")

        half = images // 2
        upload(0, half)
        log(f"{mode}: {half} uploads")

        variable = "BUILDFLOW_BIGQUERY_STORAGE_HOST" if storage_write else "BIGQUERY_EMULATOR_HOST"
        upstream = host_port(env[variable], 80)
        if upstream is None:
            raise RuntimeError(f"{variable}={env[variable]!r} names no host:port")
        marker = b"/streams/_default" if storage_write else b"MERGE "
        proxy = HoldingProxy(*upstream, marker=marker).start()
        address = proxy.address if storage_write else f"http://{proxy.address}"
        try:
            with open(workdir / f"run-{mode}.log", "w") as out:
                runner = subprocess.Popen(
                    [*CLI, "run", "redelivery_app:app", "--log-level", "info"],
                    cwd=workdir,
                    env={**run_env, variable: address},
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            try:
                if not _wait_for(lambda: uploads_with_rows() >= half, "the first half's rows", 240, runner):
                    raise RuntimeError(f"the first {half} uploads did not all get their row within 240 s")
                proxy.arm()
                at_arm = raw_count()
                upload(half, images)
                log(f"{mode}: {images - half} more uploads, the proxy armed")
                if not _wait_for(proxy.caught.is_set, "a write", 240, runner):
                    raise RuntimeError("no write of the second half reached the proxy within 240 s")
                if not _wait_for(lambda: raw_count() > at_arm, "the held write's rows", 120, runner):
                    raise RuntimeError("the server did not apply the held write within 120 s")
                # The write is applied; its answer is held by the proxy: the runner never acks.
            finally:
                runner.kill()  # SIGKILL: no drain, no nack
                runner.wait(timeout=60)
        finally:
            proxy.close()
        killed = time.monotonic()
        before = uploads_with_rows()
        log(f"{mode}: killed; {before} uploads have their row")

        # Restart until every upload has its row and a run that began after the dead
        # runner's leases expired (the ack deadline after the kill) found nothing more.
        restarts, rewritten_total = 0, 0
        deadline = time.monotonic() + 240
        while True:
            started = time.monotonic()
            summary = workdir / f"summary-{mode}-{restarts}.json"
            cli("run", "redelivery_app:app", "--until-idle", "--summary-json", str(summary))
            restarts += 1
            rewritten_total += json.loads(summary.read_text())["rows"]
            covered = uploads_with_rows() >= images
            done = covered and started > killed + ACK_DEADLINE_S + 1
            if done or time.monotonic() > deadline:
                break
        got = keys()
        raw = len(keys(table))
    finally:
        subprocess.run(
            [*CLI, "destroy", "redelivery_app:app", "--yes", "--force"],
            cwd=workdir,
            env=run_env,
            capture_output=True,
            timeout=240,
        )
    distinct = len(set(got))
    events_with_rows = len({k[0] for k in got})
    return Outcome(
        mode=mode,
        events=images,
        rows_at_kill=before,
        rewritten=rewritten_total - (images - before),
        rows=len(got),
        distinct=distinct,
        raw_rows=raw,
        duplicates=len(got) - distinct,
        lost=images - events_with_rows,
        restarts=restarts,
        seconds=time.monotonic() - t0,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--modes", default="upsert,merge,insert_id")
    args = parser.parse_args()

    from infra import stack as stack_mod

    outcomes: list[Outcome] = []
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "stack"
        stack = stack_mod.start(state_dir=state)
        try:
            load0 = os.getloadavg()[0]
            for mode in args.modes.split(","):
                outcomes.append(
                    run_scenario(
                        mode,
                        env=dict(stack.env),
                        workdir=Path(tmp) / mode,
                        project=stack.project,
                        images=args.images,
                        log=lambda s: print(s, file=sys.stderr, flush=True),
                    )
                )
            load1 = os.getloadavg()[0]
        finally:
            stack_mod.stop(state)

    print(
        f"| write_mode ({os.cpu_count()} CPUs, emulator stack) | events | at kill | rewritten "
        "| rows | raw rows | duplicates | lost | restarts | seconds |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for o in outcomes:
        print(
            f"| {o.mode} | {o.events} | {o.rows_at_kill} | {o.rewritten} | {o.rows} | {o.raw_rows} "
            f"| {o.duplicates} | {o.lost} | {o.restarts} | {o.seconds:.0f} |"
        )
    print(f"\n1-min load average before / after: {load0:.2f} / {load1:.2f}")


if __name__ == "__main__":
    main()
