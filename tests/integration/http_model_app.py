"""The shipped :class:`processors.ImageClassificationProcessor` behind an
:class:`~buildflow.io.HTTPEndpoint` on a free port, writing to the ``local`` warehouse (DuckDB),
for the endpoint's end-to-end test with the real model."""

from buildflow import Node
from buildflow.io import HTTPEndpoint
from processors import ImageClassificationProcessor

app = Node(name="http-model")
app.add(
    ImageClassificationProcessor(
        bucket_name="unused",
        table_id="buildflow-local.http_model.predictions",
        source=HTTPEndpoint(route="/classify", port=0),
    )
)
