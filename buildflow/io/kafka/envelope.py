"""The Kafka wire formats shared by the source, the sink and ``buildflow produce``: the JSON
envelope of ``payload_format="json"`` and the lazily imported client library. Below the
provider and the producer, so neither imports the other for them."""

from __future__ import annotations

import base64
import datetime
import json
from typing import Any

from buildflow.extras import import_optional

__all__ = ["confluent_kafka_module", "encode_json_envelope"]


def confluent_kafka_module() -> Any:
    """The ``confluent_kafka`` package (with its ``admin`` submodule), imported on first use.

    Raises:
        MissingDependencyError: confluent-kafka is not installed (the ``kafka`` extra).
    """
    module = import_optional("confluent_kafka", extra="kafka", needed_by="KafkaTopic")
    # a submodule the package does not import itself
    import_optional("confluent_kafka.admin", extra="kafka", needed_by="KafkaTopic")
    return module


def encode_json_envelope(
    image_id: str, data: bytes, *, path: str | None = None, label: str | None = None
) -> bytes:
    """The JSON envelope payload format: ``{"image_id", "path", "label", "image_data", "timestamp"}``."""
    return json.dumps(
        {
            "image_id": image_id,
            "path": path or image_id,
            "label": label,
            "image_data": base64.b64encode(data).decode("ascii"),
            "timestamp": datetime.datetime.now(datetime.UTC).isoformat(),
        }
    ).encode()
