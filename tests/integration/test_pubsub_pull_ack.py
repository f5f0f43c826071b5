"""The unary-pull source (:class:`buildflow.io.google.pubsub.PubSubPullSource`, the
``emulator`` environment's) against a Subscriber gRPC server on 127.0.0.1 that holds an
empty ``Pull`` open, as Pub/Sub's long poll does: an ack or a nack reaches the server while
the next pull is still held, instead of queueing behind it (it did: the emulator benchmark
spent 1.5 s of 200 images' run in acks waiting for pulls)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from buildflow.environment import Environment

SUBSCRIPTION = "projects/p/subscriptions/s"


class HoldingSubscriber(grpc.GenericRpcHandler):
    """``Pull`` hands out the queued messages, or, with none queued, holds the call until
    ``release`` is set (10 s at most); ``Acknowledge`` and ``ModifyAckDeadline`` record their ack ids and
    whether a pull was being held when they arrived."""

    def __init__(self) -> None:
        self.queued: list[tuple[str, bytes]] = []
        self.held = threading.Event()
        self.release = threading.Event()
        self.held_pull_answered = threading.Event()
        self.acked: list[tuple[str, bool]] = []  # (ack id, a pull was held meanwhile)
        self.nacked: list[tuple[str, bool]] = []

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        from google.protobuf import empty_pb2
        from google.pubsub_v1 import types

        methods = {
            "Pull": (self.pull, types.PullRequest, types.PullResponse.serialize),
            "Acknowledge": (self.acknowledge, types.AcknowledgeRequest, empty_pb2.Empty.SerializeToString),
            "ModifyAckDeadline": (
                self.modify_ack_deadline,
                types.ModifyAckDeadlineRequest,
                empty_pb2.Empty.SerializeToString,
            ),
        }
        name = details.method.rsplit("/", 1)[-1]
        if not details.method.startswith("/google.pubsub.v1.Subscriber/") or name not in methods:
            return None
        fn, request_type, serialize = methods[name]
        return grpc.unary_unary_rpc_method_handler(
            fn, request_deserializer=request_type.deserialize, response_serializer=serialize
        )

    def _holding(self) -> bool:
        return self.held.is_set() and not self.held_pull_answered.is_set()

    def pull(self, request: Any, context: Any) -> Any:
        from google.pubsub_v1 import types

        if not self.queued:
            self.held.set()
            self.release.wait(10)
            self.held_pull_answered.set()
            return types.PullResponse()
        out, self.queued = self.queued, []
        return types.PullResponse(
            received_messages=[
                types.ReceivedMessage(
                    ack_id=ack_id, message=types.PubsubMessage(data=data, message_id=ack_id)
                )
                for ack_id, data in out
            ]
        )

    def acknowledge(self, request: Any, context: Any) -> Any:
        from google.protobuf import empty_pb2

        self.acked += [(a, self._holding()) for a in request.ack_ids]
        return empty_pb2.Empty()

    def modify_ack_deadline(self, request: Any, context: Any) -> Any:
        from google.protobuf import empty_pb2

        if request.ack_deadline_seconds == 0:
            self.nacked += [(a, self._holding()) for a in request.ack_ids]
        return empty_pb2.Empty()


@pytest.fixture
def subscriber(monkeypatch: pytest.MonkeyPatch) -> Iterator[HoldingSubscriber]:
    from google.pubsub_v1 import SubscriberClient
    from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcTransport

    import buildflow.io.google.pubsub as mod

    handler = HoldingSubscriber()
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    client = SubscriberClient(transport=SubscriberGrpcTransport(channel=channel))
    monkeypatch.setattr(mod, "pubsub_subscriber", lambda env: client)
    try:
        yield handler
    finally:
        handler.release.set()
        channel.close()
        server.stop(grace=None).wait(5)


def _envelope(received: Any) -> Any:
    from buildflow.io.base import Envelope

    m = received.message
    return Envelope(m.data, m.message_id, received.ack_id, datetime.datetime.now(datetime.UTC))


@pytest.mark.parametrize("settle", ["ack", "nack"])
def test_an_ack_or_nack_does_not_wait_behind_a_held_pull(
    subscriber: HoldingSubscriber, tmp_path: Path, settle: str
) -> None:
    from buildflow.io.google.pubsub import PubSubPullSource

    source = PubSubPullSource(Environment(name="emulator", state_dir=tmp_path), SUBSCRIPTION, 60, _envelope)
    subscriber.queued = [("m-1", b"one"), ("m-2", b"two")]

    async def scenario() -> None:
        first = await source.pull(10, 0.5)
        assert [e.event_id for e in first] == ["m-1", "m-2"]
        next_pull = asyncio.create_task(source.pull(10, 0.5))  # the server holds this one
        await asyncio.to_thread(subscriber.held.wait, 30)
        assert subscriber.held.is_set()
        await (source.ack(first) if settle == "ack" else source.nack(first))
        subscriber.release.set()
        assert await next_pull == []
        await source.close()

    asyncio.run(scenario())
    settled = subscriber.acked if settle == "ack" else subscriber.nacked
    assert settled == [("m-1", True), ("m-2", True)]  # both arrived while the pull was held
