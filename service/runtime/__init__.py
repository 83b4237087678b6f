"""What runs around the app in gunicorn: the worker class, the run directory, capacity."""
