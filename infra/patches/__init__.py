"""Source patches that the local stack applies to its third-party servers at install
(``infra.services.bigquery`` applies :mod:`infra.patches.bqemulator`).

Each patch names the exact release it was written against and is applied only to that
release (text replacement, idempotent); see :mod:`infra.patches.bqemulator`.
"""
