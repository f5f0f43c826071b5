"""The Fashion-MNIST streaming flow's processor: a checkpoint classifier named ``fashion_mnist``.

    from buildflow import Node
    from buildflow.io import KafkaTopic
    from processors import FashionMNISTProcessor

    app = Node()
    app.add(FashionMNISTProcessor(
        checkpoint="runs/fashion_mnist_cnn/model.pt",          # or gs://bucket/prefix/model.pt
        table_id="buildflow-local.fashion_mnist.predictions",
        source=KafkaTopic("127.0.0.1:9092", "fashion"),
    ))

Images come from ``buildflow produce --dataset fashion-mnist --start 0 --end 1000 --kafka ...``
(or ``--pubsub``, or the page's data set form) with their true class as the ``label``; see
:class:`processors.checkpoint_classification.CheckpointClassificationProcessor` for the rows.
"""

from __future__ import annotations

from buildflow.datasets import register
from models.datasets.fashion_mnist import FASHION_MNIST
from processors.checkpoint_classification import CheckpointClassificationProcessor

__all__ = ["FashionMNISTProcessor"]

register(FASHION_MNIST)  # an app using this processor offers Fashion-MNIST on its page


class FashionMNISTProcessor(CheckpointClassificationProcessor):
    """:class:`CheckpointClassificationProcessor` named ``fashion_mnist`` (its consumer group
    and subscription are ``...-fashion_mnist``)."""

    name = "fashion_mnist"
    dataset = "fashion-mnist"  # the page's data set form preselects it
