"""Processors of the image-classification app."""

from processors.image_classification import ImageClassificationProcessor as ImageClassificationProcessor

__all__ = ["ImageClassificationProcessor"]
