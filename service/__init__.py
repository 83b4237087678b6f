"""The notes service: a FastAPI app built to run as many worker processes."""
