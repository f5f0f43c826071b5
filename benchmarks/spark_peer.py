"""The peer of issue 9: the same decode + model + sink in PySpark Structured Streaming.

What a user of the Spark streaming classifier this project replaces would write: a
``binaryFile`` file stream over a folder of JPEGs -> an iterator pandas UDF that loads
EfficientNet-Lite0 once per Python worker (``models.load_model``), decodes with
``models.decode_image`` exactly as ``ImageClassificationProcessor`` does and classifies in
batches -> ``writeStream.foreachBatch`` appending each micro-batch into a local DuckDB
file, in a table shaped like ours (``image_classification.predictions``: the row schema of
``schemas.ImageClassificationRow`` plus ``_written_at``, the write's own clock).

    .venv/bin/python -m benchmarks.spark_peer --images 200 --rate 5 --count 100

Importable by ``benchmarks.suite``: :func:`run_spark_throughput` and :func:`run_spark_latency`
each start a fresh Spark JVM and stop it (JVM and Python workers) before returning.

Measured the way ``benchmarks.suite`` measures ours:

* throughput: N JPEGs already in the folder; images/s = N / (query start -> the insert of
  the last of the N rows has committed). Ours' run clock starts after setup() (model
  loaded), so the Python workers are started and load the model in a small batch job before
  the query starts (``warm_workers=False`` leaves that inside the first micro-batch: ~10 s
  more on 200 images here). Startup = SparkSession creation (JVM launch included) ->
  ``writeStream.start()`` returned, warm-up included; first row = from the same start of
  the clock to the first insert's commit, as ours' "launch to first row" includes imports
  and the model load.
* latency: the query runs on an empty folder, warmed up (``threads`` files at a time until
  every Python worker has loaded the model, as ours waits for setup()), then files
  are written under a hidden name and renamed into the folder at a fixed rate; drop-to-row
  latency = the row's ``_written_at`` (stamped in foreachBatch just before the batch's
  insert, as our DuckDB sink stamps it) - ``time.time()`` right after the rename.
  Percentiles are nearest-rank, as in ``benchmarks.suite``.

Spark settings (and why; the alternatives were measured on this 2-core machine):

* ``local[threads]`` (2): one task per core, as a single-machine Spark user would run it;
  driver bound to 127.0.0.1 (``SPARK_LOCAL_IP``).
* ``spark.sql.execution.arrow.pyspark.enabled=true``: Arrow for ``toPandas()`` in
  foreachBatch (pandas UDFs always use Arrow).
* ``spark.sql.execution.arrow.maxRecordsPerBatch=batch_size`` (32): each ``pd.Series`` the
  UDF receives holds at most one model batch.
* ``spark.python.worker.reuse=true`` (the default, stated): Python workers survive between
  tasks and micro-batches, so the model in a worker's module-level cache is reused;
  ``spark.executorEnv.PYTHONPATH`` = the repository, so the workers import that cache from
  this module.
* torch threads per Python worker = cores / tasks (1): ``threads`` tasks run at once, each in
  its own worker. torch's default (all cores in every worker) oversubscribes the cores:
  steady 19 images/s against 32 with one thread per worker.
* ``maxFilesPerTrigger = batch_size * threads`` (64) for throughput: a micro-batch is one
  model batch per core. 128 gave the same steady rate; all files in one trigger gives no row
  until everything is done.
* ``spark.sql.sources.parallelPartitionDiscovery.threshold=100000``: see the surprises.
* ``spark.sql.shuffle.partitions=threads`` (no shuffle in this query),
  ``spark.sql.adaptive.enabled=false`` (streaming ignores it, and warns),
  ``spark.ui.enabled=false``, ``spark.ui.showConsoleProgress=false``,
  ``spark.sql.session.timeZone=UTC``, log level WARN.
* Trigger: the default micro-batch trigger (the next batch starts as soon as the previous one
  is done). ``trigger(processingTime="100 milliseconds")`` measured the same (p50 0.86 and
  1.03 s against 0.98 and 0.83 s at 5 files/s): a micro-batch takes ~0.8 s, longer than the
  interval, so both run batches back to back. ``--trigger-ms`` runs the other one.
* No ``repartition``: spreading the files evenly over the cores costs a shuffle of the image
  bytes and gave no gain (``repartition=True`` to compare).

Spark surprises:

* A streaming ``binaryFile`` source needs its (fixed, documented) schema given with
  ``.schema(...)``; without it ``load()`` fails with "Schema must be specified when creating
  a streaming source DataFrame" (and PySpark's exception printed as
  ``<exception str() failed>``).
* Each micro-batch of more than 32 files listed them with a Spark job (parallel partition
  discovery over the batch's file paths): ``getBatch`` took ~650 ms of a ~2.4 s micro-batch;
  with the threshold raised, ~50 ms.
* An iterator pandas UDF's "load once" is per task, not per worker: without a module-level
  cache in an importable module the model would be reloaded in every micro-batch.
* Every checkpoint file (offsets and commits logs, two per micro-batch) is created by
  Hadoop's local file system, which without the native Hadoop library forks ``chmod`` for
  each: walCommit + commitOffsets ~60 + ~100 ms a micro-batch, a fixed cost in the latency.
* The file source packs files into partitions by size plus
  ``spark.sql.files.openCostInBytes`` (4 MB a file): 64 JPEGs of 0.05-0.3 MB make 3 tasks
  (31 + 32 + 1 files here), 2 files make 2 one-row tasks.
* ``spark.stop()`` stops the SparkContext and its Python workers but not the JVM PySpark
  launched (it lives until the Python process exits): :func:`_stop_spark` shuts the py4j
  gateway and waits for the JVM, so each measurement starts (and pays for) a fresh one and
  nothing is left running. Startup (JVM + SparkSession) is 7-10 s here.
* An empty file gives no row at all (the file scan skips zero-length files), where ours
  dead-letters it as ``EmptyImageError``; a file that is not an image fails in the UDF, which
  catches it per image and writes it to ``predictions_dead_letters``.
* Files are picked up by name once, possibly half-written: the dropper writes
  ``.name.jpg.part`` (hidden names are skipped by Spark's file index, and the glob filter
  skips ``.part``) and renames it into place.
"""

import argparse
import datetime
import os
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks.stats import percentiles

REPO = Path(__file__).resolve().parents[1]
MODEL_NAME = "efficientnet_lite0"
TOP_K = 5
TABLE = "image_classification.predictions"
INSTALL_HINT = "PySpark is not installed: run `pip install -e .[bench]` (pyspark>=4, pandas<3, pyarrow)"

__all__ = ["run_spark_throughput", "run_spark_latency", "main"]

# The Python worker's model cache: one classifier per worker process (spark.python.worker.reuse).
_WORKER_CACHE: dict[str, Any] = {}

_CREATE_SQL = f"""
CREATE SCHEMA IF NOT EXISTS image_classification;
CREATE TABLE IF NOT EXISTS {TABLE} (
  image_name VARCHAR NOT NULL,
  upload TIMESTAMPTZ NOT NULL,
  classifications STRUCT(label VARCHAR, confidence DOUBLE, class_index BIGINT)[],
  event_id VARCHAR NOT NULL,
  model VARCHAR NOT NULL,
  image_width BIGINT NOT NULL,
  image_height BIGINT NOT NULL,
  processing_ms DOUBLE NOT NULL,
  processed_at TIMESTAMPTZ NOT NULL,
  _written_at TIMESTAMPTZ NOT NULL,
  PRIMARY KEY (event_id)
);
CREATE TABLE IF NOT EXISTS {TABLE}_dead_letters (
  event_id VARCHAR NOT NULL, error VARCHAR NOT NULL, _written_at TIMESTAMPTZ NOT NULL
);
"""

_INSERT_SQL = f"""
INSERT INTO {TABLE}
SELECT regexp_extract(path, '[^/]+$'), upload, classifications, path, '{MODEL_NAME}',
       image_width, image_height, processing_ms, to_timestamp(processed_at_s), $written_at
FROM batch WHERE error IS NULL
ON CONFLICT DO NOTHING
"""


def _require_pyspark() -> None:
    """Raises ModuleNotFoundError, with the install command, if pyspark, pandas or pyarrow is missing."""
    try:
        import pandas  # noqa: F401
        import pyarrow  # noqa: F401
        import pyspark  # noqa: F401
    except ImportError as e:
        raise ModuleNotFoundError(f"{INSTALL_HINT} ({e})", name=e.name) from e


def _worker_classifier(torch_threads: int, backend: str | None) -> Any:
    """The classifier of this Python worker process, loaded on first use (runs on workers).

    ``backend``: passed to ``load_model`` when given; None keeps its default, as ours does.
    An ONNX Runtime session, if picked, runs ``torch.get_num_threads()`` threads."""
    if "model" not in _WORKER_CACHE:
        import torch

        from models import load_model

        torch.set_num_threads(torch_threads)
        kwargs = {} if backend is None else {"backend": backend}
        _WORKER_CACHE["model"] = load_model(MODEL_NAME, **kwargs)
    return _WORKER_CACHE["model"]


def _classify_udf(batch_size: int, torch_threads: int, backend: str | None) -> Any:
    """The iterator pandas UDF: ``content`` (image bytes) -> struct of the row's columns."""
    import pandas as pd
    from pyspark.sql.functions import pandas_udf

    schema = (
        "image_width BIGINT, image_height BIGINT, "
        "classifications ARRAY<STRUCT<label: STRING, confidence: DOUBLE, class_index: BIGINT>>, "
        "processing_ms DOUBLE, processed_at_s DOUBLE, worker_pid BIGINT, model_load_ms DOUBLE, "
        "backend STRING, error STRING"
    )

    @pandas_udf(schema)
    def classify(contents: Iterator[pd.Series]) -> Iterator[pd.DataFrame]:
        # Imported on the worker from the repository (spark.executorEnv.PYTHONPATH), so the
        # model cache outlives this task.
        import torch

        from benchmarks.spark_peer import _worker_classifier
        from models import DEFAULT_MAX_PIXELS, decode_image

        model = _worker_classifier(torch_threads, backend)
        model_backend = getattr(model, "backend", "torch")
        short_side = model.preprocessing.resize_short_side
        pid = os.getpid()
        for series in contents:
            out: list[dict[str, Any]] = []
            datas = list(series)
            for i in range(0, len(datas), batch_size):
                chunk = datas[i : i + batch_size]
                t0 = time.perf_counter()
                tensors, rows = [], []
                for data in chunk:
                    try:
                        image = decode_image(
                            bytes(data), max_pixels=DEFAULT_MAX_PIXELS, target_short_side=short_side
                        )
                        tensors.append(model.preprocess(image))
                        rows.append({"image_width": image.size[0], "image_height": image.size[1]})
                    except Exception as e:  # this image alone goes to the dead letters
                        rows.append({"error": f"{type(e).__name__}: {e}"})
                preds = iter(model.top_k(model.predict_proba(torch.stack(tensors)), TOP_K) if tensors else [])
                per_image_ms = (time.perf_counter() - t0) * 1000 / len(chunk)
                now = time.time()
                for row in rows:
                    if "error" not in row:
                        row["classifications"] = [
                            {"label": p.label, "confidence": p.confidence, "class_index": p.index}
                            for p in next(preds)
                        ]
                    out.append(
                        {
                            "image_width": 0,
                            "image_height": 0,
                            "classifications": None,
                            "error": None,
                            **row,
                            "processing_ms": per_image_ms,
                            "processed_at_s": now,
                            "worker_pid": pid,
                            "model_load_ms": model.load_latency_ms,
                            "backend": model_backend,
                        }
                    )
            yield pd.DataFrame(
                out,
                columns=[
                    "image_width",
                    "image_height",
                    "classifications",
                    "processing_ms",
                    "processed_at_s",
                    "worker_pid",
                    "model_load_ms",
                    "backend",
                    "error",
                ],
            )

    return classify


class _Sink:
    """foreachBatch target: appends each micro-batch to the DuckDB file (runs on the driver).

    The file is opened for each batch and closed after, as our DuckDB sink does; each batch
    records when its insert committed (driver clocks), for the throughput figures."""

    def __init__(self, db_path: Path) -> None:
        import duckdb

        self.db_path = db_path
        with duckdb.connect(str(db_path)) as con:
            con.execute(_CREATE_SQL)
        self.lock = threading.Lock()
        self.rows = 0
        self.dead_letters = 0
        self.batches = 0
        self.commits: list[tuple[float, int]] = []  # (time.monotonic() after commit, rows)
        self.worker_pids: set[int] = set()
        self.backends: set[str] = set()
        self.insert_ms: list[float] = []
        self.error: BaseException | None = None

    def __call__(self, batch_df: Any, batch_id: int) -> None:
        try:
            self._write(batch_df, batch_id)
        except BaseException as e:
            self.error = e
            raise

    def _write(self, batch_df: Any, batch_id: int) -> None:
        import duckdb

        pdf = batch_df.toPandas()  # runs the micro-batch: file read, UDF
        if pdf.empty:
            return
        pdf["upload"] = pdf["upload"].dt.tz_localize("UTC")
        written_at = datetime.datetime.now(datetime.UTC)
        t0 = time.monotonic()
        with duckdb.connect(str(self.db_path)) as con:
            con.register("batch", pdf)
            con.execute(_INSERT_SQL, {"written_at": written_at})
            bad = pdf[pdf["error"].notna()]
            if len(bad):
                con.register("bad", bad)
                con.execute(
                    f"INSERT INTO {TABLE}_dead_letters SELECT path, error, $w FROM bad", {"w": written_at}
                )
        done = time.monotonic()
        with self.lock:
            self.insert_ms.append((done - t0) * 1000)
            self.batches += 1
            self.rows += len(pdf) - len(bad)
            self.dead_letters += len(bad)
            self.commits.append((done, len(pdf)))
            self.worker_pids.update(int(p) for p in pdf["worker_pid"].unique())
            self.backends.update(str(b) for b in pdf["backend"].unique())

    def insert_stats(self) -> dict[str, float]:
        """Median and max wall time of the batches' DuckDB writes (open, insert, close), ms."""
        s = sorted(self.insert_ms) or [0.0]
        return {"insert_p50_ms": s[len(s) // 2], "insert_max_ms": s[-1]}

    def done(self) -> int:
        with self.lock:
            return self.rows + self.dead_letters


def _spark_session(threads: int, batch_size: int) -> Any:
    _require_pyspark()
    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")  # bind the driver to loopback only
    from pyspark.sql import SparkSession

    spark = (
        SparkSession.builder.master(f"local[{threads}]")
        .appName("buildflow-spark-peer")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", str(batch_size))
        .config("spark.python.worker.reuse", "true")
        .config("spark.executorEnv.PYTHONPATH", str(REPO))
        .config("spark.sql.shuffle.partitions", str(threads))
        .config("spark.sql.adaptive.enabled", "false")  # not used by streaming; silences a warning
        .config("spark.sql.sources.parallelPartitionDiscovery.threshold", "100000")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.session.timeZone", "UTC")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("WARN")
    return spark


def _stop_spark(spark: Any) -> None:
    """Stop the SparkContext (and its Python workers), then the JVM PySpark launched."""
    from pyspark import SparkContext

    spark.stop()
    gateway = SparkContext._gateway
    if gateway is None:
        return
    proc = getattr(gateway, "proc", None)
    try:
        gateway.shutdown()
    finally:
        SparkContext._gateway = None
        SparkContext._jvm = None
        if proc is not None:
            if proc.stdin is not None:
                proc.stdin.close()  # the JVM exits when its stdin closes
            try:
                proc.wait(timeout=30)
            except Exception:
                proc.kill()
                proc.wait(timeout=10)


def _start_query(
    spark: Any,
    folder: Path,
    work_dir: Path,
    sink: _Sink,
    *,
    batch_size: int,
    threads: int,
    max_files_per_trigger: int | None,
    trigger_ms: int | None,
    torch_threads: int | None,
    repartition: bool,
    backend: str | None,
) -> Any:
    from pyspark.sql import functions as F  # noqa: N812

    # A streaming file source needs its schema spelled out, even binaryFile's fixed one.
    reader = (
        spark.readStream.format("binaryFile")
        .schema("path STRING, modificationTime TIMESTAMP, length BIGINT, content BINARY")
        .option("pathGlobFilter", "*.jpg")
    )
    if max_files_per_trigger:
        reader = reader.option("maxFilesPerTrigger", str(max_files_per_trigger))
    files = reader.load(str(folder))
    classify = _classify_udf(batch_size, _torch_threads(torch_threads, threads), backend)
    if repartition:
        files = files.repartition(threads)
    rows = files.select(
        "path", F.col("modificationTime").alias("upload"), classify("content").alias("r")
    ).select("path", "upload", "r.*")
    writer = rows.writeStream.foreachBatch(sink).option("checkpointLocation", str(work_dir / "checkpoint"))
    if trigger_ms is not None:
        writer = writer.trigger(processingTime=f"{trigger_ms} milliseconds")
    return writer.start()


def _torch_threads(torch_threads: int | None, threads: int) -> int:
    return torch_threads or max(1, (os.cpu_count() or threads) // threads)


def _warm_workers(
    spark: Any,
    data: bytes,
    *,
    batch_size: int,
    threads: int,
    torch_threads: int | None,
    backend: str | None,
) -> tuple[set[int], float]:
    """Start ``threads`` Python workers and load the model in each (one task per worker, on
    one real image) with a batch job, before the streaming query starts: the equivalent of
    ours' setup(), which runs before its run clock starts. The query's tasks then reuse these
    workers (spark.python.worker.reuse). Returns the workers' pids and the longest
    ``load_model`` time among them (s)."""
    classify = _classify_udf(batch_size, _torch_threads(torch_threads, threads), backend)
    rdd = spark.sparkContext.parallelize([(bytearray(data),)] * threads, threads)
    df = spark.createDataFrame(rdd, "content BINARY")
    rows = df.select(classify("content").alias("r")).select("r.worker_pid", "r.model_load_ms").collect()
    return {r[0] for r in rows}, max(r[1] for r in rows) / 1000


def _wait_rows(query: Any, sink: _Sink, n: int, timeout_s: float) -> None:
    """Wait until ``n`` rows (and dead letters) are committed, polling every 20 ms."""
    deadline = time.monotonic() + timeout_s
    while sink.done() < n:
        if sink.error is not None or query.exception() is not None:
            raise RuntimeError(f"the Spark query failed: {sink.error or query.exception()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {sink.done()} of {n} rows after {timeout_s:.0f} s")
        time.sleep(0.02)


def _finish_query(query: Any, grace_s: float = 10.0) -> list[dict[str, Any]]:
    """Let the micro-batch in flight finish (its commit log is written after foreachBatch
    returns; stopping mid-write logs an InterruptedException), then return the query's
    ``recentProgress`` (its last 100 micro-batches)."""
    deadline = time.monotonic() + grace_s
    while query.isActive and query.status.get("isTriggerActive") and time.monotonic() < deadline:
        time.sleep(0.02)
    return list(query.recentProgress)


def _batch_durations_ms(progress: list[dict[str, Any]], after_batch_id: int = -1) -> dict[str, float]:
    """Median of each ``durationMs`` part (addBatch, walCommit, ...) over the micro-batches
    of ``progress`` (``query.recentProgress``) with input rows and ``batchId > after_batch_id``."""
    parts: dict[str, list[float]] = {}
    for p in progress:
        if p.get("numInputRows", 0) > 0 and p.get("batchId", -1) > after_batch_id:
            for k, v in p.get("durationMs", {}).items():
                parts.setdefault(k, []).append(float(v))
    return {k: sorted(v)[len(v) // 2] for k, v in parts.items()}


def _settings(spark: Any, query_opts: dict[str, Any]) -> dict[str, Any]:
    conf = spark.sparkContext.getConf()
    keys = (
        "spark.master",
        "spark.sql.execution.arrow.pyspark.enabled",
        "spark.sql.execution.arrow.maxRecordsPerBatch",
        "spark.python.worker.reuse",
        "spark.sql.shuffle.partitions",
        "spark.sql.sources.parallelPartitionDiscovery.threshold",
        "spark.ui.enabled",
    )
    return {**{k: conf.get(k) for k in keys}, **query_opts, "spark_version": spark.version}


def run_spark_throughput(
    images_dir: Path,
    work_dir: Path,
    *,
    batch_size: int = 32,
    threads: int = 2,
    max_files_per_trigger: int | None = None,
    torch_threads: int | None = None,
    backend: str | None = None,
    repartition: bool = False,
    warm_workers: bool = True,
    timeout_s: float = 600.0,
) -> dict[str, Any]:
    """Images/s of the Spark query over the ``*.jpg`` files already in ``images_dir``.

    Args:
        images_dir: Folder of N JPEG files (read, not changed).
        work_dir: Scratch folder (created; DuckDB file and checkpoint go there).
        batch_size: Images per model forward pass (and per Arrow batch).
        threads: Spark cores (``local[threads]``): concurrent tasks and Python workers.
        max_files_per_trigger: Files per micro-batch; default ``batch_size * threads``.
        torch_threads: torch threads per Python worker; default cores / ``threads``.
        backend: ``load_model(backend=...)`` in the workers; None: its default, as ours
            uses (``auto``: ONNX Runtime when installed and agreeing with torch).
        repartition: ``repartition(threads)`` the files before the UDF (measured: no gain).
        warm_workers: Start the Python workers and load the model (a small batch job)
            before the query starts, as ours' run clock starts after setup(); ``False``:
            worker start and model load fall inside the query's first micro-batch.
        timeout_s: Bound on waiting for all N rows.

    Returns:
        ``images`` (N, non-empty files), ``images_per_s`` (N / query start to the last
        commit), ``startup_s`` (SparkSession creation, JVM launch included, to query start;
        of which ``session_s`` JVM + SparkSession and ``warm_workers_s`` the warm-up, in
        which ``model_load_s`` is the longest ``load_model`` in a worker),
        ``first_row_s`` (SparkSession creation to the first insert's commit),
        ``query_to_first_row_s``, ``query_to_all_rows_s``, ``steady_images_per_s`` (rows
        after the first micro-batch / first to last commit), ``micro_batches``,
        ``python_workers`` (that wrote rows), ``model_loads``, ``backend`` (what
        ``load_model`` picked in the workers), ``rows``, ``dead_letters``,
        ``insert_p50_ms``/``insert_max_ms`` (DuckDB writes), ``batch_duration_ms`` (median
        ``durationMs`` parts of the micro-batches), ``first_batch_duration_ms``,
        ``load_before``/``load_after`` (1-min load average), ``settings``.

    Raises:
        ModuleNotFoundError: PySpark, pandas or pyarrow is missing (the message says how
            to install them).
        RuntimeError: The query failed. TimeoutError: not all rows within ``timeout_s``.
    """
    _require_pyspark()
    # Spark's file scan skips empty files (no row, no error): only the others are waited for.
    paths = sorted(p for p in images_dir.glob("*.jpg") if p.stat().st_size > 0)
    n = len(paths)
    if n == 0:
        raise ValueError(f"no non-empty *.jpg files in {images_dir}")
    work_dir.mkdir(parents=True, exist_ok=True)
    mfpt = max_files_per_trigger or batch_size * threads
    sink = _Sink(work_dir / "spark_peer.duckdb")
    load_before = os.getloadavg()[0]
    t0 = time.monotonic()
    spark = _spark_session(threads, batch_size)
    t_session = time.monotonic()
    try:
        warm_pids: set[int] = set()
        model_load_s = None
        if warm_workers:
            warm_pids, model_load_s = _warm_workers(
                spark,
                paths[0].read_bytes(),
                batch_size=batch_size,
                threads=threads,
                torch_threads=torch_threads,
                backend=backend,
            )
        t_warm = time.monotonic()
        query = _start_query(
            spark,
            images_dir,
            work_dir,
            sink,
            batch_size=batch_size,
            threads=threads,
            max_files_per_trigger=mfpt,
            trigger_ms=None,
            torch_threads=torch_threads,
            repartition=repartition,
            backend=backend,
        )
        t_query = time.monotonic()
        try:
            _wait_rows(query, sink, n, timeout_s)
            progress = _finish_query(query)
        finally:
            query.stop()
        settings = _settings(spark, {"maxFilesPerTrigger": mfpt, "trigger": "default"})
    finally:
        _stop_spark(spark)
    durations = _batch_durations_ms(progress)
    first_batch = dict(progress[0].get("durationMs", {})) if progress else {}
    first, first_rows = sink.commits[0]
    last = sink.commits[-1][0]
    return {
        "images": n,
        "images_per_s": n / (last - t_query),
        "startup_s": t_query - t0,
        "session_s": t_session - t0,
        "warm_workers_s": t_warm - t_session,
        "model_load_s": model_load_s,
        "first_row_s": first - t0,
        "query_to_first_row_s": first - t_query,
        "query_to_all_rows_s": last - t_query,
        "steady_images_per_s": (n - first_rows) / (last - first) if last > first else None,
        "micro_batches": sink.batches,
        "python_workers": len(sink.worker_pids),
        "model_loads": len(sink.worker_pids | warm_pids),
        "backend": ",".join(sorted(sink.backends)),
        "rows": sink.rows,
        "dead_letters": sink.dead_letters,
        **sink.insert_stats(),
        "batch_duration_ms": durations,
        "first_batch_duration_ms": first_batch,
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
        "settings": settings,
    }


def run_spark_latency(
    work_dir: Path,
    photos: list[bytes],
    *,
    rate_per_s: float,
    count: int,
    batch_size: int = 32,
    threads: int = 2,
    trigger_ms: int | None = None,
    torch_threads: int | None = None,
    backend: str | None = None,
    repartition: bool = False,
    timeout_s: float = 120.0,
) -> dict[str, Any]:
    """Drop-to-row latency of the running Spark query, files dropped at a fixed rate.

    Args:
        work_dir: Scratch folder (created): the watched folder, DuckDB file, checkpoint.
        photos: JPEG bytes, used in turn (cycled when ``count`` is larger).
        rate_per_s: Files dropped per second.
        count: Files dropped (and measured).
        batch_size, threads, torch_threads, backend, repartition: As for
            :func:`run_spark_throughput`.
        trigger_ms: ``trigger(processingTime=...)`` in ms; ``None``: the default trigger
            (next micro-batch as soon as the previous one is done), the faster one here.
        timeout_s: Bound on waiting for the warm-up rows and for the last row.

    Returns:
        ``rate_per_s``, ``p50_ms``, ``p95_ms``, ``p99_ms``, ``n`` (drop-to-row, ms),
        ``mean_ms``, ``max_ms``, ``micro_batches`` (of the measured drops),
        ``python_workers``, ``backend``, ``trigger``, ``insert_p50_ms``/``insert_max_ms``,
        ``batch_duration_ms`` (median parts of those micro-batches),
        ``load_before``/``load_after``.

    Raises:
        ModuleNotFoundError: PySpark, pandas or pyarrow is missing (the message says how
            to install them).
        RuntimeError: The query failed. TimeoutError: rows missing after ``timeout_s``.
    """
    _require_pyspark()
    if not photos or count < 1 or rate_per_s <= 0:
        raise ValueError(
            f"need photos, count >= 1 and rate_per_s > 0, got {len(photos)}, {count!r}, {rate_per_s!r}"
        )
    import duckdb

    work_dir.mkdir(parents=True, exist_ok=True)
    folder = work_dir / "drops"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir()
    sink = _Sink(work_dir / "spark_peer.duckdb")

    def drop(name: str, data: bytes) -> float:
        tmp = folder / f".{name}.part"
        tmp.write_bytes(data)
        os.rename(tmp, folder / name)
        return time.time()

    load_before = os.getloadavg()[0]
    spark = _spark_session(threads, batch_size)
    try:
        query = _start_query(
            spark,
            folder,
            work_dir,
            sink,
            batch_size=batch_size,
            threads=threads,
            max_files_per_trigger=None,
            trigger_ms=trigger_ms,
            torch_threads=torch_threads,
            repartition=repartition,
            backend=backend,
        )
        try:
            # Warm-up: `threads` files at once (one task each, as 2 small files make 2 tasks)
            # until every Python worker has started and loaded the model (its pid shows in a
            # row), before the clock starts; ours waits for setup() the same way.
            for round_ in range(5):
                for i in range(threads):
                    drop(f"warmup_{round_}_{i}.jpg", photos[i % len(photos)])
                _wait_rows(query, sink, (round_ + 1) * threads, timeout_s)
                if len(sink.worker_pids) >= threads:
                    break
            time.sleep(1.0)
            warm = sink.done()
            warm_batches = sink.batches
            dropped: dict[str, float] = {}
            period = 1.0 / rate_per_s
            start = time.monotonic()
            for i in range(count):
                wait = start + i * period - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                name = f"drop_{i:05d}.jpg"
                dropped[name] = drop(name, photos[i % len(photos)])
            _wait_rows(query, sink, warm + count, timeout_s)
            progress = _finish_query(query)
        finally:
            query.stop()
    finally:
        _stop_spark(spark)
    with duckdb.connect(str(work_dir / "spark_peer.duckdb"), read_only=True) as con:
        written = dict(con.execute(f"SELECT image_name, epoch(_written_at) FROM {TABLE}").fetchall())
    missing = sorted(set(dropped) - set(written))
    if missing:
        raise RuntimeError(f"{len(missing)} dropped files have no row (dead letters?): {missing[:5]}")
    lat = [(written[n] - dropped[n]) * 1000 for n in dropped]
    # Batch ids count every micro-batch from 0, the warm-up ones included.
    durations = _batch_durations_ms(progress, after_batch_id=warm_batches - 1)
    return {
        "rate_per_s": rate_per_s,
        **percentiles(lat),  # the same nearest-rank rule as ours
        "mean_ms": sum(lat) / len(lat),
        "max_ms": max(lat),
        "micro_batches": sink.batches - warm_batches,  # the measured drops' only
        "python_workers": len(sink.worker_pids),
        "backend": ",".join(sorted(sink.backends)),
        "trigger": "default" if trigger_ms is None else f"processingTime={trigger_ms} ms",
        **sink.insert_stats(),
        "batch_duration_ms": durations,
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=200, help="images for the throughput run")
    parser.add_argument("--rate", type=float, default=5.0, help="files dropped per second (latency)")
    parser.add_argument("--count", type=int, default=100, help="files dropped (latency); 0 skips it")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2, help="Spark cores: local[threads]")
    parser.add_argument("--max-files-per-trigger", type=int, default=None)
    parser.add_argument(
        "--trigger-ms", type=int, default=None, help="latency run: processingTime trigger (default trigger)"
    )
    parser.add_argument(
        "--backend",
        choices=["auto", "torch", "onnxruntime"],
        default=None,
        help="load_model(backend=...) in the workers (default: load_model's default, as ours)",
    )
    parser.add_argument("--json", action="store_true", help="also print the figures as JSON")
    args = parser.parse_args()
    try:
        _require_pyspark()
    except ModuleNotFoundError as e:
        sys.exit(str(e))
    import json
    import tempfile

    from benchmarks.images import distinct_jpegs

    images = distinct_jpegs(args.images)
    with tempfile.TemporaryDirectory(prefix="spark-peer-") as tmp:
        work = Path(tmp)
        img_dir = work / "images"
        img_dir.mkdir()
        for name, data in images:
            (img_dir / name).write_bytes(data)
        t = run_spark_throughput(
            img_dir,
            work / "throughput",
            batch_size=args.batch_size,
            threads=args.threads,
            max_files_per_trigger=args.max_files_per_trigger,
            backend=args.backend,
        )
        lat = None
        if args.count > 0:
            drops = distinct_jpegs(args.count, seed=1)
            lat = run_spark_latency(
                work / "latency",
                [d for _, d in drops],
                rate_per_s=args.rate,
                count=args.count,
                batch_size=args.batch_size,
                threads=args.threads,
                trigger_ms=args.trigger_ms,
                backend=args.backend,
            )
    s = t["settings"]
    rows = [
        (
            "images (distinct real JPEGs, ~500x375 and ~1350x900)",
            f"{t['images']} ({t['dead_letters']} dead letters)",
        ),
        ("images/s (query start to last row committed)", f"{t['images_per_s']:.1f}"),
        (
            "images/s after the first micro-batch",
            f"{t['steady_images_per_s']:.1f}" if t["steady_images_per_s"] else "-",
        ),
        (
            "startup: SparkSession creation (JVM launch) to query start",
            f"{t['startup_s']:.2f} s (JVM + SparkSession {t['session_s']:.2f} s, "
            f"worker warm-up {t['warm_workers_s']:.2f} s)",
        ),
        ("SparkSession creation to first row", f"{t['first_row_s']:.2f} s"),
        (
            "load_model in a Python worker (longest of the warm-up)",
            f"{t['model_load_s']:.2f} s" if t["model_load_s"] is not None else "-",
        ),
        (
            "query start to first row / to all rows",
            f"{t['query_to_first_row_s']:.2f} / {t['query_to_all_rows_s']:.2f} s",
        ),
        (
            "micro-batches / Python workers / model loads",
            f"{t['micro_batches']} / {t['python_workers']} / {t['model_loads']}",
        ),
        (
            "micro-batch median: total / addBatch (UDF + DuckDB) / DuckDB write",
            f"{t['batch_duration_ms'].get('triggerExecution', 0):.0f} / "
            f"{t['batch_duration_ms'].get('addBatch', 0):.0f} / {t['insert_p50_ms']:.0f} ms",
        ),
    ]
    if lat:
        rows.append(
            (
                f"drop-to-row p50 / p95 / p99 at {lat['rate_per_s']:g}/s, {lat['n']} files "
                f"({lat['trigger']} trigger)",
                f"{lat['p50_ms']:.0f} / {lat['p95_ms']:.0f} / {lat['p99_ms']:.0f} ms "
                f"(max {lat['max_ms']:.0f})",
            )
        )
        rows.append(
            (
                "latency run: micro-batches / median micro-batch / median addBatch",
                f"{lat['micro_batches']} / {lat['batch_duration_ms'].get('triggerExecution', 0):.0f} / "
                f"{lat['batch_duration_ms'].get('addBatch', 0):.0f} ms",
            )
        )
    rows.append(
        (
            "Spark settings",
            f"{s['spark.master']}, maxFilesPerTrigger {s['maxFilesPerTrigger']}, "
            f"arrow.maxRecordsPerBatch {s['spark.sql.execution.arrow.maxRecordsPerBatch']}, "
            f"batch {args.batch_size}, model backend {t['backend']}, Spark {s['spark_version']}",
        )
    )
    load_after = lat["load_after"] if lat else t["load_after"]
    rows.append(("1-min load average before / after", f"{t['load_before']:.2f} / {load_after:.2f}"))
    print(f"| PySpark peer ({os.cpu_count()} CPUs) | value |\n|---|---|")
    for k, v in rows:
        print(f"| {k} | {v} |")
    if args.json:
        print(json.dumps({"throughput": t, "latency": lat}, indent=2, default=str))


if __name__ == "__main__":
    main()
