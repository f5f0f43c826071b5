"""Labelled image data sets that ``buildflow produce`` and the web page can publish.

The framework knows no data set itself: an app registers its own, either

* by an entry point in the group :data:`ENTRY_POINT_GROUP` (``buildflow.datasets``) of its
  distribution, whose name is the data set's name and whose object is a :class:`Dataset`
  or a function of no arguments returning one (loaded on first use)::

      # pyproject.toml
      [project.entry-points."buildflow.datasets"]
      flowers = "my_app.data:FLOWERS"

* or by calling :func:`register` when its module is imported (a processor module does it,
  so the page of an app that uses that processor offers the data set).

Then ``buildflow produce --dataset flowers:test --start 0 --end 100 --kafka ...`` sends
images ``0..99`` of the split ``test``, each with its true class as the ``label``, and the
page's "publish a data set" form lists it. See https://packaging.python.org/en/latest/specifications/entry-points/
for entry points.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from importlib.metadata import entry_points
from typing import NamedTuple

from buildflow.errors import ConfigurationError, UnknownDatasetError

__all__ = [
    "ENTRY_POINT_GROUP",
    "Example",
    "Dataset",
    "register",
    "unregister",
    "registered",
    "get_dataset",
    "parse_dataset_spec",
    "describe_registered",
]

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "buildflow.datasets"
"""The entry-point group data sets are discovered in."""


class Example(NamedTuple):
    """One labelled image of a data set.

    Attributes:
        name: The object name it is published under, unique in the data set, e.g.
            ``flowers/test/00042.png`` (a path-like name: folders become prefixes).
        data: The encoded image (PNG, JPEG, ...: the data set's ``content_type``).
        label: The true class name, or None when unlabelled.
    """

    name: str
    data: bytes
    label: str | None


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A registered data set: its splits and how to read a range of one.

    Attributes:
        name: What users type (``--dataset NAME``): lower case letters, digits, ``-``, ``_``.
        title: One line for people, e.g. ``"Flowers (3,670 photos, 5 classes)"``.
        splits: Split name -> number of examples, in the order offered (the first one is
            the default split).
        examples: ``examples(split, start, end)`` yields examples ``start..end-1`` of
            ``split`` in index order. It may raise :class:`~buildflow.errors.BuildflowError`
            (files missing: say how to get them; a library missing).
        label_names: The class names in label order, when known.
        content_type: The MIME type of every example's ``data``.
        max_per_request: The most examples the page publishes per request.
    """

    name: str
    title: str
    splits: Mapping[str, int]
    examples: Callable[[str, int, int], Iterable[Example]] = dataclasses.field(repr=False)
    label_names: tuple[str, ...] = ()
    content_type: str = "image/png"
    max_per_request: int = 1000

    def __post_init__(self) -> None:
        if (
            not self.name
            or not all(c.isalnum() or c in "-_" for c in self.name)
            or self.name != self.name.lower()
        ):
            raise ConfigurationError(
                f"data set name {self.name!r}: use lower case letters, digits, '-' and '_' (e.g. 'flowers')"
            )
        if not self.splits or any(n < 1 for n in self.splits.values()):
            raise ConfigurationError(f"data set {self.name!r}: give at least one split of at least 1 example")

    @property
    def default_split(self) -> str:
        """The first split of :attr:`splits`."""
        return next(iter(self.splits))

    def read(self, split: str | None = None, start: int = 0, end: int | None = None) -> Iterable[Example]:
        """Examples ``start..end-1`` of ``split`` (default: :attr:`default_split`; ``end``
        None: to the end of the split).

        Raises:
            ConfigurationError: Unknown split, or an empty range or one outside the split.
        """
        split = self.default_split if split is None else split
        if split not in self.splits:
            raise ConfigurationError(
                f"data set {self.name!r} has no split {split!r}; "
                f"use one of {', '.join(map(repr, self.splits))}"
            )
        size = self.splits[split]
        end = size if end is None else end
        if not 0 <= start < end <= size:
            raise ConfigurationError(
                f"{self.name}:{split} range {start}..{end} is empty or outside 0..{size}; "
                f"give 0 <= start < end <= {size}"
            )
        return self.examples(split, start, end)


_lock = threading.Lock()
_registered: dict[str, Dataset] = {}
_broken: dict[str, str] = {}  # entry-point name -> why it did not load
_entry_points_loaded = False


def register(dataset: Dataset, *, replace: bool = False) -> Dataset:
    """Make ``dataset`` available under its name; returns it (usable as a module-level
    statement: ``FLOWERS = register(Dataset(...))``). Registering the same declaration
    again is a no-op: the same object, or an equal one whose ``examples`` reader has the same
    name and code (the module that declares it executed twice, e.g. loaded as ``main`` and
    as a copy under another name).

    Raises:
        ConfigurationError: Another data set is registered under that name and ``replace``
            is False.
    """
    with _lock:
        old = _registered.get(dataset.name)
        if old is not None and not _same_declaration(old, dataset) and not replace:
            raise ConfigurationError(
                f"a different data set is already registered as {dataset.name!r} ({old.title!r}); "
                "choose another name, or pass replace=True"
            )
        _registered[dataset.name] = dataset
        _broken.pop(dataset.name, None)
    return dataset


def _same_declaration(a: Dataset, b: Dataset) -> bool:
    if a is b or a == b:
        return True
    fields = ("name", "title", "label_names", "content_type", "max_per_request")
    if any(getattr(a, f) != getattr(b, f) for f in fields) or dict(a.splits) != dict(b.splits):
        return False
    code_a, code_b = getattr(a.examples, "__code__", None), getattr(b.examples, "__code__", None)
    return (
        code_a is not None
        and code_b is not None
        and getattr(a.examples, "__qualname__", None) == getattr(b.examples, "__qualname__", None)
        and code_a.co_code == code_b.co_code
        and code_a.co_consts == code_b.co_consts
    )


def unregister(name: str) -> None:
    """Forget the data set ``name`` (no error when there is none)."""
    with _lock:
        _registered.pop(name, None)


def _load_entry_points() -> None:
    global _entry_points_loaded
    with _lock:
        if _entry_points_loaded:
            return
        _entry_points_loaded = True
        found = list(entry_points(group=ENTRY_POINT_GROUP))
    for ep in found:
        if ep.name in _registered:
            continue
        try:
            obj = ep.load()
            dataset = obj() if callable(obj) and not isinstance(obj, Dataset) else obj
            if not isinstance(dataset, Dataset):
                raise TypeError(
                    f"{ep.value!r} is a {type(dataset).__name__}, not a buildflow.datasets.Dataset"
                )
            if dataset.name != ep.name:
                raise ValueError(f"{ep.value!r} is named {dataset.name!r}, the entry point {ep.name!r}")
            register(dataset)
        except Exception as e:  # one broken plug-in must not hide the others
            log.debug("entry point %s = %s did not load", ep.name, ep.value, exc_info=True)
            with _lock:
                _broken[ep.name] = f"entry point {ep.value!r} did not load: {type(e).__name__}: {e}"


def registered() -> dict[str, Dataset]:
    """Every registered data set by name (sorted), entry points loaded."""
    _load_entry_points()
    with _lock:
        return dict(sorted(_registered.items()))


def describe_registered() -> str:
    """One line per registered data set, ``name:split (size)``..., for help and errors."""
    sets = registered()
    if not sets:
        return (
            f"none (an app registers its data sets through the entry point group {ENTRY_POINT_GROUP!r} "
            "or buildflow.datasets.register())"
        )
    return "; ".join(
        f"{d.name} ({', '.join(f'{s}: {n:,}' for s, n in d.splits.items())})" for d in sets.values()
    )


def get_dataset(name: str) -> Dataset:
    """The data set registered as ``name``.

    Raises:
        UnknownDatasetError: None is (the message lists the registered ones, and why an
            entry point of that name did not load, if one did not).
    """
    sets = registered()
    if name in sets:
        return sets[name]
    with _lock:
        why = _broken.get(name)
    if why is not None:
        raise UnknownDatasetError(f"data set {name!r} is not available: {why}")
    raise UnknownDatasetError(f"no data set {name!r} is registered; registered: {describe_registered()}")


def parse_dataset_spec(spec: str) -> tuple[Dataset, str]:
    """``NAME`` or ``NAME:SPLIT`` -> the data set and the split (default: its first).

    Raises:
        UnknownDatasetError: No data set of that name.
        ConfigurationError: It has no such split (the message lists its splits).
    """
    name, _, split = spec.partition(":")
    dataset = get_dataset(name)
    split = split or dataset.default_split
    if split not in dataset.splits:
        raise ConfigurationError(
            f"data set {name!r} has no split {split!r}; use one of "
            f"{', '.join(f'{name}:{s}' for s in dataset.splits)}"
        )
    return dataset, split
