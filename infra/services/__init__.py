"""The four servers of the local stack, one module each: how each is installed, the command
line and environment it is started with, and the readiness probe (one real call with the
official client) that ``infra.stack.start`` waits on.

* :mod:`infra.services.pubsub`: Google's pstest fake, built from Debian's Go sources.
* :mod:`infra.services.gcs`: fake-gcs-server, from a PyPI wheel.
* :mod:`infra.services.bigquery`: bqemulator in its own venv ``.venv-bq``, patched.
* :mod:`infra.services.kafka`: the tansu broker, from a PyPI wheel.

Each module has ``CLIENT`` (the client module its probe imports, and the package that
provides it), ``command(...)`` (the server's argv), ``probe(...)`` and its install step.
They build on :mod:`infra.processes` only, never on each other or on ``infra.stack``.
"""
