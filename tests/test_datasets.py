"""The data set registry (:mod:`buildflow.datasets`): the framework knows no data set; apps
register theirs by entry point or on import, and ``buildflow produce --dataset`` publishes
whatever is registered.

The entry-point tests declare ``toy-shapes`` (:data:`tests.ui.toy_app.TOY_SHAPES`) in a
distribution of their own: a ``*.dist-info`` folder with an ``entry_points.txt`` on the
child's ``PYTHONPATH``, the way an installed app declares it
(https://packaging.python.org/en/latest/specifications/entry-points/).
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import re
import subprocess
import sys
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from buildflow import datasets
from buildflow.datasets import Dataset, Example, get_dataset, parse_dataset_spec, register
from buildflow.errors import ConfigurationError, UnknownDatasetError
from infra.stack import Stack
from tests.repo_files import REPO, repository_files
from tests.ui.toy_app import TOY_SHAPES, toy_shape_png

CLI = [sys.executable, "-m", "buildflow.cli"]


def _numbers(split: str, start: int, end: int) -> Iterator[Example]:
    for i in range(start, end):
        yield Example(f"n/{split}/{i}", str(i).encode(), "even" if i % 2 == 0 else "odd")


NUMBERS = Dataset(name="numbers", title="Numbers", splits={"a": 3, "b": 5}, examples=_numbers)


@pytest.fixture
def numbers() -> Iterator[Dataset]:
    register(NUMBERS)
    yield NUMBERS
    datasets.unregister("numbers")


def test_a_registered_data_set_reads_by_split_and_range(numbers: Dataset) -> None:
    dataset, split = parse_dataset_spec("numbers")
    assert dataset is numbers and split == "a"  # the first split is the default
    assert parse_dataset_spec("numbers:b") == (numbers, "b")
    assert [e.name for e in numbers.read("b", 2, 4)] == ["n/b/2", "n/b/3"]
    assert [e.label for e in numbers.read("b", 3)] == ["odd", "even"]  # to the end of the split
    with pytest.raises(ConfigurationError, match=r"no split 'c'; use one of numbers:a, numbers:b"):
        parse_dataset_spec("numbers:c")
    for start, end in ((2, 2), (0, 4), (-1, 2)):
        with pytest.raises(ConfigurationError, match=r"give 0 <= start < end <= 3"):
            numbers.read("a", start, end)


def test_unknown_and_clashing_names_are_clear_errors(numbers: Dataset) -> None:
    with pytest.raises(
        UnknownDatasetError, match=r"no data set 'nope' is registered; registered: .*numbers \(a: 3, b: 5\)"
    ):
        get_dataset("nope")
    register(NUMBERS)  # the same one again: a no-op
    other = Dataset(name="numbers", title="Other", splits={"x": 1}, examples=_numbers)
    with pytest.raises(ConfigurationError, match=r"a different data set is already registered as 'numbers'"):
        register(other)
    assert get_dataset("numbers") is NUMBERS
    # the declaring module executed twice (loaded under two names): same fields, same reader code
    namespace: dict = {}
    exec(compile(inspect.getsource(_numbers), __file__, "exec"), globals() | namespace, namespace)
    again = dataclasses.replace(NUMBERS, examples=namespace["_numbers"])
    assert again.examples is not NUMBERS.examples and register(again) is again
    # the same fields with another reader is a different data set
    with pytest.raises(ConfigurationError, match=r"a different data set is already registered"):
        register(dataclasses.replace(NUMBERS, examples=lambda split, start, end: iter(())))
    for bad in ("Numbers", "a b", ""):
        with pytest.raises(ConfigurationError, match="lower case letters, digits"):
            Dataset(name=bad, title="x", splits={"a": 1}, examples=_numbers)
    with pytest.raises(ConfigurationError, match="at least one split"):
        Dataset(name="empty", title="x", splits={}, examples=_numbers)


def test_the_framework_names_no_data_set() -> None:
    """buildflow/ is generic: a data set (its name, its files) lives with the app's models."""
    words = re.compile(r"fashion|mnist|cifar|imagenet", re.IGNORECASE)
    hits = [
        f"{path}:{n}: {line.strip()}"
        for path in repository_files()
        if path.startswith("buildflow/")
        and path.endswith((".py", ".js", ".html", ".css"))
        and not path.endswith(".min.js")
        for n, line in enumerate((REPO / path).read_text(encoding="utf-8").splitlines(), 1)
        if words.search(line)
    ]
    assert not hits, "buildflow/ mentions a specific data set:\n" + "\n".join(hits)


def test_the_declared_entry_points_load_their_data_sets() -> None:
    """Each ``buildflow.datasets`` entry point of pyproject.toml names an importable
    :class:`Dataset` of the same name (what an install of the wheel will discover)."""
    import importlib

    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["entry-points"]
    group = declared[datasets.ENTRY_POINT_GROUP]
    assert "fashion-mnist" in group
    for name, value in group.items():
        module, _, attr = value.partition(":")
        dataset = getattr(importlib.import_module(module), attr)
        assert isinstance(dataset, Dataset) and dataset.name == name


def _declare(tmp_path: Path, entry_points: dict[str, str]) -> dict[str, str]:
    """A child environment in which an installed distribution declares ``entry_points``."""
    dist = tmp_path / "site" / "toy_app_datasets-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-app-datasets\nVersion: 1.0\n")
    lines = "".join(f"{name} = {value}\n" for name, value in entry_points.items())
    (dist / "entry_points.txt").write_text(f"[{datasets.ENTRY_POINT_GROUP}]\n{lines}")
    path = [str(REPO), str(dist.parent), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, path)), "COLUMNS": "200"}


def test_produce_help_and_errors_list_the_registered_data_sets(tmp_path: Path) -> None:
    env = _declare(
        tmp_path, {"toy-shapes": "tests.ui.toy_app:TOY_SHAPES", "broken": "tests.no_such_module:X"}
    )
    help_text = subprocess.run(
        [*CLI, "produce", "--help"], env=env, capture_output=True, text=True, timeout=60
    )
    assert help_text.returncode == 0 and "toy-shapes" in help_text.stdout, help_text.stdout
    unknown = subprocess.run(
        [*CLI, "produce", "--dataset", "nope", "--kafka", "127.0.0.1:9/t"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert unknown.returncode == 1
    assert "no data set 'nope' is registered; registered: " in unknown.stderr
    assert "toy-shapes (test: 6, train: 9)" in unknown.stderr, unknown.stderr
    broken = subprocess.run(
        [*CLI, "produce", "--dataset", "broken", "--kafka", "127.0.0.1:9/t"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert broken.returncode == 1
    assert (
        "data set 'broken' is not available: entry point 'tests.no_such_module:X' did not load"
        in broken.stderr
    )
    bad_range = subprocess.run(
        [*CLI, "produce", "--dataset", "toy-shapes:train", "--start", "3", "--end", "10",
         "--kafka", "127.0.0.1:9/t"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert bad_range.returncode == 1 and "toy-shapes:train range 3..10" in bad_range.stderr, bad_range.stderr


def test_produce_publishes_an_entry_point_data_set_to_pubsub(stack_env: Stack, tmp_path: Path) -> None:
    from google.cloud import pubsub_v1

    env = {**_declare(tmp_path, {"toy-shapes": "tests.ui.toy_app:TOY_SHAPES"}), **stack_env.env}
    project, suffix = "buildflow-local", uuid.uuid4().hex[:8]
    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    topic = publisher.create_topic(name=f"projects/{project}/topics/toy-{suffix}").name
    sub = subscriber.create_subscription(
        name=f"projects/{project}/subscriptions/toy-{suffix}", topic=topic
    ).name
    try:
        r = subprocess.run(
            [*CLI, "produce", "--dataset", "toy-shapes:train", "--start", "2", "--end", "6", "--limit", "3",
             "--pubsub", topic],
            env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert r.returncode == 0 and "sent 3 images" in r.stdout, r.stdout + r.stderr
        got: dict[str, tuple[bytes, str]] = {}
        for _ in range(20):  # each pull waits for messages on the server side
            response = subscriber.pull(subscription=sub, max_messages=10, timeout=10)
            for m in response.received_messages:
                got[m.message.attributes["name"]] = (m.message.data, m.message.attributes["label"])
            if response.received_messages:
                subscriber.acknowledge(
                    subscription=sub, ack_ids=[m.ack_id for m in response.received_messages]
                )
            if len(got) == 3:
                break
    finally:
        subscriber.delete_subscription(subscription=sub)
        publisher.delete_topic(topic=topic)
    # examples 2..4 (--limit 3 of 2..5), bytes and true labels as the data set reads them
    assert got == {e.name: (e.data, e.label) for e in TOY_SHAPES.read("train", 2, 5)}
    assert got["toy-shapes/train/00002.png"] == (toy_shape_png("train", 2), "portrait")
