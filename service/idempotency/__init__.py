"""Idempotency-Key: a retried write answers with its first outcome instead of writing again."""
