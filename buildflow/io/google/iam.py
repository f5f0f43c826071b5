"""IAM policy edits shared by the Cloud Storage and Pub/Sub providers (below both, so neither
imports the other for them)."""

from __future__ import annotations

from typing import Any

__all__ = ["add_binding"]


def add_binding(policy: Any, role: str, member: str) -> bool:
    """Add ``member`` to ``policy``'s binding for ``role`` (an IAM ``Policy`` message),
    creating the binding only if the role has none. Returns False when the member was
    already there (nothing to set), so a rerun never appends a duplicate binding."""
    for binding in policy.bindings:
        if binding.role == role and not binding.condition.expression:
            if member in binding.members:
                return False
            binding.members.append(member)
            return True
    policy.bindings.add(role=role, members=[member])
    return True
