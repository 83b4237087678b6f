"""PostgreSQL: the per-process engine and pool, and the declarative base of every table."""
