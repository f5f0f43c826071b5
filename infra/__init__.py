"""Infrastructure for buildflow: the local stack of Google Cloud fakes (``infra.stack``)."""
