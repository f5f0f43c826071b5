"""buildflow: declarative stream processors, planned, run and destroyed with one command.

import buildflow
from buildflow import Node

class Classify(buildflow.Processor):
    def source(self):
        return buildflow.io.GCSFileStream(bucket_name="photos")

    def sink(self):
        return buildflow.io.BigQueryTable(table_id="demo.predictions")

    def process(self, event: buildflow.io.GCSFileEvent) -> Row:
        ...

app = Node()
app.add(Classify())
"""

from buildflow import io as io
from buildflow.errors import BuildflowError as BuildflowError
from buildflow.events import GCSFileEvent as GCSFileEvent
from buildflow.metrics import Metrics as Metrics
from buildflow.node import Node as Node
from buildflow.processor import Processor as Processor
from buildflow.runtime.base import RunOptions as RunOptions
from buildflow.runtime.base import RunSummary as RunSummary

__version__ = "0.1.0"

__all__ = [
    "io",
    "Node",
    "Processor",
    "GCSFileEvent",
    "BuildflowError",
    "Metrics",
    "RunOptions",
    "RunSummary",
    "__version__",
]
