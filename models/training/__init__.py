"""Train the image classifiers the pipeline serves, from a config file.

    python -m models.training train models/training/configs/fashion_mnist_cnn.yaml [--resume]
    python -m models.training evaluate runs/fashion_mnist_cnn/model.pt

Modules: :mod:`.config` (the pydantic config, YAML or TOML), :mod:`.layers` (layer-list
builder and fine-tuning), :mod:`.data` (Fashion-MNIST IDX files, folders per class, local or
``gs://``), :mod:`.train` (the loop), :mod:`.checkpoints`, :mod:`.report` (metrics and the
confusion matrix), :mod:`.evaluate`. A trained checkpoint is served with
``models.load_model("checkpoint:<path or gs://...>")``.

Importing this package imports neither torch nor pydantic; its modules do.
"""

__all__: list[str] = []
