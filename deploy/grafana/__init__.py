"""Grafana: the dashboard as code, and its provisioning."""
