"""Kafka: the :class:`KafkaTopic` declaration (source and sink) and its provider
(:mod:`buildflow.io.kafka.provider`, on confluent-kafka, imported only when an app uses it)."""

from buildflow.io.kafka.declarations import KafkaMessageEvent as KafkaMessageEvent
from buildflow.io.kafka.declarations import KafkaTopic as KafkaTopic

__all__ = ["KafkaTopic", "KafkaMessageEvent"]
