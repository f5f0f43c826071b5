"""Source patches that ``infra.stack`` applies to the stack's third-party servers at install.

Each patch names the exact release it was written against and is applied only to that
release (text replacement, idempotent); see :mod:`infra.patches.bqemulator`.
"""
