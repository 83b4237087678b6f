"""Docker Compose: the pooler override file, and the settings only Compose reads."""
