"""The project's settings, from the environment."""

import os

DATABASE_URL = os.environ.get(
    "DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/inventory"
)
API_KEY = os.environ.get("INVENTORY_API_KEY", "local-development-key")
