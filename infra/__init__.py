"""Infrastructure for buildflow: the local stack of Google Cloud fakes and a Kafka broker.

``infra.stack`` is its API and command line; ``infra.processes`` runs and stops its servers;
``infra.services`` has one module per server; ``infra.patches`` fixes a server's sources.
"""
