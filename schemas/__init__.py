"""Row schemas of the image-classification app."""

from schemas.image_classification import Classification as Classification
from schemas.image_classification import ImageClassificationRow as ImageClassificationRow

__all__ = ["Classification", "ImageClassificationRow"]
