"""What runs around the app: the native runner, Prometheus, Grafana."""
