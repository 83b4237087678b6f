"""An app host lets only its proxy in: when gunicorn listens on a routable address
(GUNICORN_BIND), the `app` role, started as root, adds a host firewall rule that accepts that
port from the addresses of FORWARDED_ALLOW_IPS (the proxy: whose forwarded headers it trusts
is also who may connect) and from this host, and resets every other connection. So nothing
skips nginx's limits, its body size or its TLS to reach the app and its /metrics directly.

One iptables chain per port, `stack-app-<port>`, jumped to from INPUT; `down` removes both.
"""

import ipaddress
import shutil
import subprocess

from deploy.native.processes import fail, log

PREFIX = "stack-app-"


def _iptables(*argv: str, check: bool = True) -> bool:
    binary = shutil.which("iptables") or "/usr/sbin/iptables"
    result = subprocess.run([binary, "-w", *argv], capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        fail(f"iptables {' '.join(argv)}: {result.stderr.strip()}")
    return result.returncode == 0


def allowed_sources(forwarded_allow_ips: str | None) -> list[str]:
    """The proxy's addresses, from FORWARDED_ALLOW_IPS; none when it names no address."""
    sources = []
    for entry in (forwarded_allow_ips or "").replace(",", " ").split():
        try:
            sources.append(str(ipaddress.ip_network(entry, strict=False)))
        except ValueError:  # `*`, or a name: nothing to narrow to
            return []
    return sources


def admit_only(port: int, sources: list[str]) -> None:
    """Accept `port` from `sources` and this host only; reset the rest (IPv4)."""
    chain = f"{PREFIX}{port}"
    remove(port)
    _iptables("-N", chain)
    # This host itself, whichever of its addresses it uses (its own readiness check).
    _iptables("-A", chain, "-i", "lo", "-j", "ACCEPT")
    for source in sources:
        if ipaddress.ip_network(source).version == 4:
            _iptables("-A", chain, "-s", source, "-j", "ACCEPT")
    _iptables("-A", chain, "-p", "tcp", "-j", "REJECT", "--reject-with", "tcp-reset")
    _iptables("-I", "INPUT", "-p", "tcp", "--dport", str(port), "-j", chain)
    log(f"firewall: port {port} admits only {', '.join(sources)} and this host")


def remove(port: int) -> None:
    """The rule and chain `admit_only` added, if any."""
    chain = f"{PREFIX}{port}"
    while _iptables("-D", "INPUT", "-p", "tcp", "--dport", str(port), "-j", chain, check=False):
        pass
    _iptables("-F", chain, check=False)
    _iptables("-X", chain, check=False)
