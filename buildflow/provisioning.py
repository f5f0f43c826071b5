"""plan / apply / destroy: the diff between what an app declares and what exists.

Each provider lists :class:`Resource` objects. ``plan`` inspects every one and says what it
would do (create / update / no change / conflict); ``apply`` does it; ``destroy`` deletes
what the app manages, honouring ``destroy_protection``. No external IaC binary: resources
use the same client libraries the runtime uses.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
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
]

Action = Literal["create", "update", "no change", "conflict", "delete", "absent", "protected"]


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
    ``protected`` when the declaration asked for ``destroy_protection``.
    """

    kind: str
    name: str
    protected: bool = False

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
        """Reasons ``destroy`` must not delete this resource (besides protection)."""
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
    """What ``destroy`` would do: ``delete``, ``absent`` (nothing to do) or ``protected``.

    With ``force=True``, protected resources are deleted too.
    """
    changes: list[Change] = []
    for r in reversed(unique(resources)):
        state = _inspect(r)
        if not state.exists:
            changes.append(Change(r, "absent"))
        elif r.protected and not force:
            changes.append(Change(r, "protected", ("destroy_protection=True",)))
        else:
            blockers = () if force else tuple(r.delete_blockers())
            changes.append(Change(r, "protected" if blockers else "delete", blockers))
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
