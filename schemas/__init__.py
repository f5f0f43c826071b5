"""Row schemas of the image-classification app."""

from schemas.image_classification import Classification as Classification
from schemas.image_classification import ImageClassificationRow as ImageClassificationRow
from schemas.labelled_classification import LabelledClassificationRow as LabelledClassificationRow

__all__ = ["Classification", "ImageClassificationRow", "LabelledClassificationRow"]
