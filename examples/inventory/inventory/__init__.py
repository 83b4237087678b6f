"""A small FastAPI project, written as such projects usually are, served by the stack as is."""
