"""What the app tells operators: metrics across processes, logs, Server-Timing."""
