"""plan / apply / destroy: the diff between what an app declares and what exists.

Each provider lists :class:`Resource` objects. ``plan`` inspects every one and says what it
would do (create / update / no change / conflict); ``apply`` does it; ``destroy`` deletes
what the app manages, honouring ``destroy_protection``. No external IaC binary: resources
use the same client libraries the runtime uses.

Ownership: what ``plan`` creates carries the labels ``managed-by=buildflow`` and
``buildflow-app=<app>`` (:func:`managed_labels`; Cloud Storage buckets, BigQuery datasets and
tables, Pub/Sub topics and subscriptions all take labels), or, where the server keeps no
labels (a ``local`` folder, the GCS emulator), an entry in the state folder's ledger
(:class:`CreatedLedger`). ``destroy``, even with ``--force``, deletes only resources whose
labels (or ledger entry) name this app; every other one is listed as ``kept`` with the
reason (:meth:`Resource.keep_reasons`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Literal

from buildflow.errors import (
    DestroyProtectedError,
    ProvisioningError,
    ResourceConflictError,
    ResourceMissingError,
)

__all__ = [
    "Resource",
    "ResourceState",
    "Change",
    "Action",
    "plan",
    "apply",
    "plan_destroy",
    "destroy",
    "unique",
    "require_ready",
    "managed_labels",
    "label_keep_reasons",
    "CreatedLedger",
    "MANAGED_BY",
    "APP_LABEL",
]

Action = Literal["create", "update", "no change", "conflict", "delete", "absent", "protected", "kept"]

MANAGED_BY = "managed-by"
"""Label key set to ``buildflow`` on every resource ``plan`` creates."""
APP_LABEL = "buildflow-app"
"""Label key set to the app's name (:func:`label_value`) on every resource ``plan`` creates."""


def label_value(text: str) -> str:
    """``text`` as a label value: lowercase letters, digits, ``_`` and ``-``, at most 63
    characters (the rule shared by Cloud Storage, BigQuery and Pub/Sub labels:
    https://cloud.google.com/resource-manager/docs/labels-overview#requirements)."""
    return re.sub(r"[^a-z0-9_-]", "-", text.lower())[:63]


def managed_labels(app: str | None) -> dict[str, str]:
    """The labels ``plan`` puts on what it creates: ``{"managed-by": "buildflow",
    "buildflow-app": <app>}`` (the app label only when the app is known)."""
    labels = {MANAGED_BY: "buildflow"}
    if app:
        labels[APP_LABEL] = label_value(app)
    return labels


def label_keep_reasons(labels: Mapping[str, str] | None, app: str | None) -> list[str]:
    """Why ``destroy`` must keep a resource carrying ``labels``: not created by buildflow
    (no ``managed-by=buildflow``), or created by another app. Empty: this app's own."""
    labels = dict(labels or {})
    if labels.get(MANAGED_BY) != "buildflow":
        return [
            "not created by buildflow's `plan` (it existed before): destroy deletes only what plan created"
        ]
    owner = labels.get(APP_LABEL)
    if app and owner and owner != label_value(app):
        return [f"created by app {owner!r}, not {label_value(app)!r}"]
    return []


class CreatedLedger:
    """Which resources ``plan`` created, for servers that keep no labels (a ``local``
    bucket folder; the GCS emulator, fake-gcs-server, drops bucket labels): a JSON file
    ``{"<kind> <name>": "<app>"}`` in the environment's state folder."""

    FILE = "created-resources.json"

    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / self.FILE

    def _read(self) -> dict[str, dict[str, str]]:
        try:
            data = json.loads(self.path.read_text())
        except (FileNotFoundError, ValueError):
            return {}
        if not isinstance(data, dict):
            return {}
        return {str(k): v for k, v in data.items() if isinstance(v, dict)}

    def _write(self, data: dict[str, dict[str, str]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, self.path)

    def record(self, kind: str, name: str, app: str | None, identity: str = "") -> None:
        """Note that ``plan`` created ``kind name`` (``identity``) for ``app``."""
        data = self._read()
        data[f"{kind} {name}"] = {"app": label_value(app or ""), "id": identity}
        self._write(data)

    def forget(self, kind: str, name: str) -> None:
        """Drop the entry (after the resource was deleted)."""
        data = self._read()
        if data.pop(f"{kind} {name}", None) is not None:
            self._write(data)

    def labels(self, kind: str, name: str, identity: str = "") -> dict[str, str] | None:
        """The labels the entry stands for, or None when ``plan`` did not create this
        resource (no entry, or one for another resource of that name)."""
        entry = self._read().get(f"{kind} {name}")
        if entry is None or entry.get("id", "") != identity:
            return None
        return managed_labels(entry.get("app") or None)


@dataclasses.dataclass(frozen=True)
class ResourceState:
    """What :meth:`Resource.inspect` found.

    Attributes:
        exists: The resource exists.
        updates: Differences ``apply`` can make in place (e.g. adding a NULLABLE column).
        conflicts: Differences ``apply`` will not make (e.g. a column changed type).
    """

    exists: bool
    updates: tuple[str, ...] = ()
    conflicts: tuple[str, ...] = ()


class Resource(ABC):
    """One thing ``plan`` manages: a bucket, a table, a subscription, an ack store.

    Subclasses set ``kind`` (e.g. ``"table"``) and ``name`` (its full id), and
    ``protected`` when the declaration asked for ``destroy_protection``. ``app`` is the
    name of the app that declares it (set by :meth:`buildflow.Node.resources`); ``create``
    labels the resource with :meth:`labels`.
    """

    kind: str
    name: str
    protected: bool = False
    app: str | None = None

    def labels(self) -> dict[str, str]:
        """What ``create`` labels the resource with (:func:`managed_labels`)."""
        return managed_labels(self.app)

    @property
    def key(self) -> tuple[str, str]:
        return (self.kind, self.name)

    @abstractmethod
    def inspect(self) -> ResourceState:
        """Look at what exists. Raises ProvisioningError if it cannot be inspected."""

    @abstractmethod
    def create(self) -> None:
        """Create it as declared."""

    def update(self, state: ResourceState) -> None:
        """Apply ``state.updates`` in place. Only called when there are some."""
        raise ProvisioningError(f"{self.kind} {self.name}: in-place update is not supported")

    @abstractmethod
    def delete(self) -> None:
        """Delete it and everything in it. Only called for unprotected resources."""

    def delete_blockers(self) -> list[str]:
        """Reasons ``destroy`` must not delete this resource (besides protection); ``--force``
        overrides them."""
        return []

    def keep_reasons(self, deleting: frozenset[tuple[str, str]]) -> list[str]:
        """Reasons ``destroy`` keeps this existing resource even with ``--force``: it was not
        created by this app, or something outside this destroy still uses it. ``deleting``
        holds the keys of the resources this destroy deletes before this one (dependents
        come first). Default: none (resources whose ownership is not tracked)."""
        return []


@dataclasses.dataclass(frozen=True)
class Change:
    """A line of a plan: what will happen to one resource, and why."""

    resource: Resource
    action: Action
    details: tuple[str, ...] = ()


def unique(resources: Iterable[Resource]) -> list[Resource]:
    """Drop resources declared twice (e.g. two processors sharing a dead-letter table)."""
    seen: dict[tuple[str, str], Resource] = {}
    for r in resources:
        seen.setdefault(r.key, r)
    return list(seen.values())


def _inspect(resource: Resource) -> ResourceState:
    try:
        return resource.inspect()
    except ProvisioningError:
        raise
    except Exception as e:  # a client error: one clear line, not a traceback
        raise ProvisioningError(f"{resource.kind} {resource.name}: cannot inspect: {e}") from e


def require_ready(resource: Resource, name: str, where: str = "") -> None:
    """What ``run`` checks before opening a sink: the resource exists exactly as declared.

    Args:
        resource: The declared resource.
        name: How to name it in errors, e.g. ``"table ds.t"``.
        where: Where it was looked for, appended to "does not exist", e.g. ``" in 'w.duckdb'"``.

    Raises:
        ResourceMissingError: it does not exist (``plan`` was not applied).
        ProvisioningError: it cannot be inspected, or differs from the declaration.
    """
    state = _inspect(resource)
    if not state.exists:
        raise ResourceMissingError(f"{name} does not exist{where}; run `buildflow plan <app>` first.")
    if state.conflicts or state.updates:
        raise ProvisioningError(
            f"{name} does not match the row schema: "
            + "; ".join(state.conflicts + state.updates)
            + ". Run `buildflow plan <app>` to see and apply the changes."
        )


def plan(resources: Sequence[Resource]) -> list[Change]:
    """Diff declared resources against what exists.

    Returns one :class:`Change` per resource: ``create``, ``update``, ``no change`` or
    ``conflict``.
    """
    changes: list[Change] = []
    for r in unique(resources):
        state = _inspect(r)
        if not state.exists:
            changes.append(Change(r, "create"))
        elif state.conflicts:
            changes.append(Change(r, "conflict", state.conflicts))
        elif state.updates:
            changes.append(Change(r, "update", state.updates))
        else:
            changes.append(Change(r, "no change"))
    return changes


def apply(changes: Sequence[Change]) -> None:
    """Carry out a plan.

    Raises:
        ResourceConflictError: the plan has a conflict; nothing is changed.
        ProvisioningError: a create or update failed (the message names the resource).
    """
    conflicts = [c for c in changes if c.action == "conflict"]
    if conflicts:
        lines = [f"{c.resource.kind} {c.resource.name}: {d}" for c in conflicts for d in c.details]
        raise ResourceConflictError("the plan has conflicts; nothing was changed:\n  " + "\n  ".join(lines))
    for c in changes:
        try:
            if c.action == "create":
                c.resource.create()
            elif c.action == "update":
                c.resource.update(ResourceState(exists=True, updates=c.details))
        except ProvisioningError:
            raise
        except Exception as e:
            raise ProvisioningError(f"{c.resource.kind} {c.resource.name}: {c.action} failed: {e}") from e


def plan_destroy(resources: Sequence[Resource], *, force: bool = False) -> list[Change]:
    """What ``destroy`` would do: ``delete``, ``absent`` (nothing to do), ``kept`` (not
    this app's to delete, or still used by others: :meth:`Resource.keep_reasons`; never
    deleted, also not with ``--force``) or ``protected``.

    With ``force=True``, protected resources are deleted too.
    """
    changes: list[Change] = []
    deleting: set[tuple[str, str]] = set()
    for r in reversed(unique(resources)):
        state = _inspect(r)
        if not state.exists:
            changes.append(Change(r, "absent"))
            continue
        try:
            kept = tuple(r.keep_reasons(frozenset(deleting)))
        except ProvisioningError:
            raise
        except Exception as e:
            raise ProvisioningError(f"{r.kind} {r.name}: cannot check who owns it: {e}") from e
        if kept:
            changes.append(Change(r, "kept", kept))
        elif r.protected and not force:
            changes.append(Change(r, "protected", ("destroy_protection=True",)))
            deleting.add(r.key)
        else:
            blockers = () if force else tuple(r.delete_blockers())
            changes.append(Change(r, "protected" if blockers else "delete", blockers))
            deleting.add(r.key)
    return changes


def destroy(changes: Sequence[Change]) -> None:
    """Carry out a destroy plan.

    Raises:
        DestroyProtectedError: some resource is protected or blocked; nothing is deleted.
        ProvisioningError: a delete failed.
    """
    blocked = [c for c in changes if c.action == "protected"]
    if blocked:
        lines = [f"{c.resource.kind} {c.resource.name}: {', '.join(c.details)}" for c in blocked]
        raise DestroyProtectedError(
            "refusing to destroy; nothing was deleted:\n  "
            + "\n  ".join(lines)
            + "\nSet destroy_protection=False (or force_destroy=True for a bucket) on the "
            "declaration, or run destroy with --force."
        )
    for c in changes:
        if c.action == "delete":
            try:
                c.resource.delete()
            except ProvisioningError:
                raise
            except Exception as e:
                raise ProvisioningError(f"{c.resource.kind} {c.resource.name}: delete failed: {e}") from e
