"""The notes domain: a small CRUD resource with optimistic concurrency."""
