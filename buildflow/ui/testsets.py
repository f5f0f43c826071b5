"""Labelled test sets the page can publish by index range (the original Flask demo's
"send Fashion-MNIST test images i..j" form).

The extension point: a processor opts in with a class attribute naming a test set of
:data:`TEST_SETS`::

    class MyFashionProcessor(buildflow.Processor):
        ui_test_set = "fashion-mnist"

(a processor named ``fashion_mnist``, such as ``processors.FashionMNISTProcessor``, has it
without saying so).
The page then shows a form for that processor; ``POST /api/test-sets/<name>`` with
``{"processor", "start", "end"}`` puts images ``start..end-1`` into the processor's source
(with their true labels, where the source carries labels: Kafka headers, Pub/Sub
attributes). Adding a data set is one more :class:`TestSet` in :data:`TEST_SETS`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence

from buildflow.runtime.base import BoundProcessor

__all__ = [
    "TestSet",
    "TEST_SETS",
    "TEST_SET_ATTRIBUTE",
    "BY_PROCESSOR_NAME",
    "find_test_set",
    "processors_with_test_sets",
]

TEST_SET_ATTRIBUTE = "ui_test_set"
"""The processor class attribute that names its test set."""


@dataclasses.dataclass(frozen=True)
class TestSet:
    """A test set: ``items(start, end)`` yields ``(object name, image bytes, true label)``
    for indices ``start..end-1`` of ``size``; at most ``max_per_request`` per request."""

    __test__ = False  # not a pytest test class

    name: str
    title: str
    size: int
    items: Callable[[int, int], Iterable[tuple[str, bytes, str]]]
    content_type: str = "image/png"
    max_per_request: int = 1000


def _fashion_mnist_test(start: int, end: int) -> Iterable[tuple[str, bytes, str]]:
    from buildflow.datasets import fashion_mnist_png

    return fashion_mnist_png("test", start, end)


TEST_SETS: dict[str, TestSet] = {
    "fashion-mnist": TestSet(
        name="fashion-mnist",
        title="Fashion-MNIST test set (10,000 images, 28x28)",
        size=10_000,
        items=_fashion_mnist_test,
    ),
}


BY_PROCESSOR_NAME: dict[str, str] = {"fashion_mnist": "fashion-mnist"}
"""Test sets of processors that do not name one: ``processors.FashionMNISTProcessor`` is
named ``fashion_mnist``."""


def find_test_set(bound: BoundProcessor) -> TestSet | None:
    """The test set ``bound``'s processor opts into (its ``ui_test_set`` attribute, else
    :data:`BY_PROCESSOR_NAME` by processor name), or None."""
    name = getattr(bound.spec.processor, TEST_SET_ATTRIBUTE, None) or BY_PROCESSOR_NAME.get(bound.name)
    return TEST_SETS.get(name) if isinstance(name, str) else None


def processors_with_test_sets(bound: Sequence[BoundProcessor]) -> list[tuple[BoundProcessor, TestSet]]:
    """The processors of an app that opt into a test set, with it."""
    return [(b, ts) for b in bound if (ts := find_test_set(b)) is not None]
