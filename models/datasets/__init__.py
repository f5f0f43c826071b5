"""The app's labelled data sets, registered with :mod:`buildflow.datasets` (through the
``buildflow.datasets`` entry points in pyproject.toml, and on import of the processors that
use them), so ``buildflow produce --dataset NAME`` and the page can publish them.

* :mod:`models.datasets.fashion_mnist`: Fashion-MNIST from its original IDX files.

Importing this package loads neither torch nor numpy.
"""
