"""Processors of the image-classification app."""

from processors.checkpoint_classification import (
    CheckpointClassificationProcessor as CheckpointClassificationProcessor,
)
from processors.fashion_mnist import FashionMNISTProcessor as FashionMNISTProcessor
from processors.image_classification import ImageClassificationProcessor as ImageClassificationProcessor

__all__ = ["ImageClassificationProcessor", "CheckpointClassificationProcessor", "FashionMNISTProcessor"]
