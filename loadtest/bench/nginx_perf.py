"""What nginx's workers spend a proxied request on, from a `perf record -g` of them.

nginx's own code is a fifth of its CPU; the rest is the kernel moving the request and the
response through two sockets and putting nginx to sleep and waking it for each event. Each
sample is put in the first category whose mark is in its call chain, in this order:

    sudo perf record -g -e cpu-clock -F 1999 -o nginx.perf \\
        -p "$(pgrep -d, -P "$(cat .run/nginx/nginx.pid)")" -- sleep 10   # while wrk runs
    uv run python -m loadtest.bench.nginx_perf nginx.perf
"""

import argparse
import subprocess
import sys
from collections import Counter

# (category, marks): a sample belongs to the first category one of whose marks (a kernel or
# nginx symbol, or a library's path) appears in its call chain.
CATEGORIES = (
    ("waiting for events: epoll_wait, sleeping, switching, waking", ("do_epoll_wait",)),
    ("client's TCP socket: receive and send (loopback delivery included)",
     ("tcp_sendmsg", "tcp_recvmsg", "tcp_v4_rcv")),
    ("upstream unix socket: send and receive", ("unix_stream",)),
    ("access log: write(2)", ("ext4_", "ksys_write")),
    ("upstream connection check: getsockopt(SO_ERROR)", ("getsockopt",)),
    ("request id: OpenSSL's random bytes, getpid", ("libcrypto", "getpid")),
    ("nginx's own code: parsing, proxying, the log line", ("/nginx)",)),
    ("libc", ("libc.so",)),
)  # fmt: skip


def samples(data: str) -> list[str]:
    """Each sample's call chain as one string, from `perf script`."""
    output = subprocess.run(
        ["perf", "script", "-i", data, "-F", "ip,sym,dso"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return [chain for chain in output.split("\n\n") if chain.strip()]


def category(chain: str) -> str:
    """The category a call chain belongs to."""
    for name, marks in CATEGORIES:
        if any(mark in chain for mark in marks):
            return name
    return "other kernel"


def main() -> None:
    """Command line: each category's share of the samples."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", help="perf.data of nginx's workers")
    args = parser.parse_args()
    chains = samples(args.data)
    if not chains:
        sys.exit(f"{args.data} holds no samples")
    counts = Counter(category(chain) for chain in chains)
    print(f"| nginx's workers, {len(chains)} samples | share |\n| --- | ---: |")
    for name, count in counts.most_common():
        print(f"| {name} | {count / len(chains):.0%} |")


if __name__ == "__main__":
    main()
