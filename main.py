"""The real-time image-classification app.

    buildflow plan main:app      # create the bucket and the results table
    buildflow run main:app       # classify every upload until Ctrl-C
    buildflow destroy main:app   # remove them

Settings (environment variables): ``GCP_PROJECT`` (default ``buildflow-local``; in
``gcp`` set it to your project), ``BUCKET_NAME`` (default ``buildflow-images``),
``BQ_DATASET`` (default ``image_classification``), ``MODEL_NAME`` (default
``efficientnet_lite0``), ``MODEL_WEIGHTS`` (state-dict file, for torchvision models),
``DECODE_THREADS`` (default: torch's thread count, the cores), ``INFERENCE_THREADS`` and
``INFERENCE_STREAMS`` (ONNX Runtime: threads per stream and streams a micro-batch is split
into; default one single-threaded stream per core, see ``models.load_model``).
"""

import os

from buildflow import Node
from processors import ImageClassificationProcessor

GCP_PROJECT = os.environ.get("GCP_PROJECT", "buildflow-local")
BUCKET_NAME = os.environ.get("BUCKET_NAME", "buildflow-images")
BQ_DATASET = os.environ.get("BQ_DATASET", "image_classification")

app = Node()
app.add(
    ImageClassificationProcessor(
        project_id=GCP_PROJECT,
        bucket_name=BUCKET_NAME,
        table_id=f"{GCP_PROJECT}.{BQ_DATASET}.predictions",
        model_name=os.environ.get("MODEL_NAME", "efficientnet_lite0"),
        weights_path=os.environ.get("MODEL_WEIGHTS"),
        decode_threads=int(os.environ["DECODE_THREADS"]) if "DECODE_THREADS" in os.environ else None,
        inference_threads=int(os.environ["INFERENCE_THREADS"]) if "INFERENCE_THREADS" in os.environ else None,
        inference_streams=int(os.environ["INFERENCE_STREAMS"]) if "INFERENCE_STREAMS" in os.environ else None,
    )
)

if __name__ == "__main__":
    app.run()
