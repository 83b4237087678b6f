"""Prometheus: the stack's scrape configuration and rules, and the client of its query API."""
