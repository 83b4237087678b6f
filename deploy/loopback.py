"""Which URLs name this machine: load and Prometheus queries go to loopback addresses only."""

import ipaddress
import urllib.parse


def loopback_only(url: str) -> str:
    """`url` if it names this machine; ValueError otherwise."""
    hostname = urllib.parse.urlsplit(url).hostname or ""
    try:
        loopback = hostname == "localhost" or ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        msg = f"load tests and Prometheus queries target loopback addresses only, not {url!r}"
        raise ValueError(msg)
    return url
