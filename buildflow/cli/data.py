"""``buildflow upload`` (into the app's source) and ``buildflow produce`` (a folder or a data
set to a Kafka or Pub/Sub topic)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from buildflow.cli._common import (
    AppArg,
    EnvOpt,
    LogOpt,
    StateOpt,
    choose_processor,
    cli,
    configure_logging,
    err,
    fail,
    load_app,
    out,
)
from buildflow.errors import BuildflowError


def _dataset_names() -> str:
    """The data sets the installed distributions declare (entry-point names only: nothing is
    imported for help), for ``--dataset``'s help."""
    from importlib.metadata import entry_points

    from buildflow.datasets import ENTRY_POINT_GROUP

    names = sorted({ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)})
    return ", ".join(names) if names else "none (an app registers them: see buildflow.datasets)"


@cli.command("upload")
def upload_cmd(
    app: AppArg,
    files: Annotated[
        list[Path], typer.Argument(help="Files to upload (their base names become object names).")
    ],
    env: EnvOpt = None,
    state_dir: StateOpt = None,
    processor: Annotated[
        str | None, typer.Option("--processor", help="Whose source (default: the first processor's).")
    ] = None,
    prefix: Annotated[str, typer.Option("--prefix", help="Prepended to each object name.")] = "",
    log_level: LogOpt = "warning",
) -> None:
    """Upload files into the app's source (local: the bucket folder; emulator/gcp: the GCS
    bucket), the way a user would."""
    import mimetypes

    configure_logging(log_level)
    try:
        node = load_app(app)
        chosen = choose_processor(node.bind(node.environment(env, state_dir)), processor)
        for f in files:
            try:
                data = f.read_bytes()
            except OSError as e:
                raise BuildflowError(f"cannot read {str(f)!r}: {e.strerror}") from e
            where = chosen.source.upload(prefix + f.name, data, mimetypes.guess_type(f.name)[0])
            out.print(f"uploaded {f} -> {where}", markup=False)
    except NotImplementedError as e:
        raise fail(e) from e
    except BuildflowError as e:
        raise fail(e) from e


@cli.command("produce")
def produce_cmd(
    folder: Annotated[
        Path | None, typer.Argument(help="Folder of images; sub-folder names become labels.")
    ] = None,
    kafka: Annotated[str | None, typer.Option("--kafka", help="HOST:PORT/TOPIC of a Kafka topic.")] = None,
    pubsub: Annotated[
        str | None, typer.Option("--pubsub", help="projects/P/topics/T of a Pub/Sub topic.")
    ] = None,
    fmt: Annotated[
        str,
        typer.Option(
            "--format",
            help="Payload: raw | json | pixels (the training API's uint8 arrays) | reference (Kafka).",
        ),
    ] = "raw",
    rate: Annotated[
        float | None,
        typer.Option("--rate", min=0.001, help="Images per second (default: as fast as possible)."),
    ] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Send at most this many.")] = None,
    dataset: Annotated[
        str | None,
        typer.Option(
            "--dataset",
            metavar="NAME[:SPLIT]",
            help=(
                "Publish examples of a registered data set (encoded images, true class as label) "
                "instead of a folder; SPLIT defaults to its first. Registered: "
                f"{_dataset_names()}."
            ),
        ),
    ] = None,
    start: Annotated[int, typer.Option("--start", min=0, help="First data set index sent.")] = 0,
    end: Annotated[
        int | None, typer.Option("--end", min=1, help="Data set index to stop before (default: all).")
    ] = None,
    log_level: LogOpt = "warning",
) -> None:
    """Publish a folder of images (recursively), or a registered data set's examples by index
    range (--dataset NAME[:SPLIT] --start 0 --end 1000), to a Kafka or Pub/Sub topic, with a
    progress bar."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from buildflow.endpoints import check_kafka, preflight
    from buildflow.environment import Environment
    from buildflow.io.kafka import KafkaTopic
    from buildflow.producer import (
        PRODUCE_FORMATS,
        KafkaProducerTarget,
        ProducerTarget,
        PubSubProducerTarget,
        produce,
        produce_items,
    )

    configure_logging(log_level)
    try:
        if (folder is None) == (dataset is None):
            raise BuildflowError("give exactly one of FOLDER or --dataset NAME[:SPLIT]")
        if fmt not in PRODUCE_FORMATS:
            raise BuildflowError(f"--format {fmt!r}: use one of {', '.join(PRODUCE_FORMATS)}")
        if dataset is not None and fmt == "reference":
            raise BuildflowError("--dataset sends image bytes: use --format raw, json or pixels")
        if dataset is not None:
            from buildflow.datasets import parse_dataset_spec

            data_set, split = parse_dataset_spec(dataset)
            size = data_set.splits[split]
            if limit is not None:
                end = min(end if end is not None else size, start + limit)
            examples = data_set.read(split, start, end)  # checks the range before connecting
        if (kafka is None) == (pubsub is None):
            raise BuildflowError(
                "give exactly one of --kafka HOST:PORT/TOPIC or --pubsub projects/P/topics/T"
            )
        target: ProducerTarget
        if kafka is not None:
            servers, _, topic = kafka.rpartition("/")
            if not servers or not topic:
                raise BuildflowError(f"--kafka {kafka!r}: expected HOST:PORT/TOPIC")
            check_kafka(servers)
            source_format = "json" if fmt == "pixels" else fmt
            target = KafkaProducerTarget(
                KafkaTopic(servers, topic, payload_format=source_format),  # type: ignore[arg-type]
                fmt=fmt,  # type: ignore[arg-type]
            )
        else:
            assert pubsub is not None
            if os.environ.get("PUBSUB_EMULATOR_HOST"):
                preflight(Environment("emulator", Path.cwd()), variables=("PUBSUB_EMULATOR_HOST",))
            target = PubSubProducerTarget(pubsub, fmt=fmt)  # type: ignore[arg-type]
        with Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err,
            disable=not err.is_terminal,
        ) as bar:
            what = f"{dataset} {start}..{end if end is not None else 'end'}"
            task = bar.add_task(f"producing {folder if folder is not None else what}", total=None)
            if folder is not None:
                sent = produce(
                    folder,
                    target,
                    rate=rate,
                    limit=limit,
                    on_sent=lambda n, total: bar.update(task, completed=n, total=total),
                )
            else:
                sent = produce_items(
                    examples,
                    target,
                    total=(end if end is not None else size) - start,
                    rate=rate,
                    on_sent=lambda n, total: bar.update(task, completed=n, total=total),
                )
        out.print(f"sent {sent} images to {kafka or pubsub}", markup=False)
    except RuntimeError as e:
        raise fail(e) from e
    except BuildflowError as e:
        raise fail(e) from e
