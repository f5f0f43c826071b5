"""The true class a message says its image has, for labelled streams (accuracy measured as a
query over the result table).

Imports nothing beyond the standard library: processors call it on every event, and
``plan`` imports processors without the model layer's torch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["true_label"]


def true_label(event: Any) -> str | None:
    """The true class a message says its image has, or None.

    Looked up, in order: ``event.label`` (:class:`buildflow.io.KafkaMessageEvent`: the JSON
    envelope's ``label``, else the ``label`` header), the ``label`` entry of
    ``event.metadata`` (Pub/Sub attributes, Kafka headers), and the ``label`` custom
    metadata of a GCS object (``event.object_metadata``, ``x-goog-meta-label``). Empty
    strings count as none.
    """
    label = getattr(event, "label", None)
    if label:
        return str(label)
    metadata = getattr(event, "metadata", None) or {}
    if metadata.get("label"):
        return str(metadata["label"])
    object_metadata = getattr(event, "object_metadata", None) or {}
    return str(object_metadata["label"]) if object_metadata.get("label") else None
