"""What nginx's workers spend a proxied request on, from a `perf record -g` of them.

nginx's own code is a fifth of its CPU; the rest is the kernel moving the request and the
response through two sockets and putting nginx to sleep and waking it for each event. Each
sample is put in the first category whose mark is in its call chain, in this order:

    sudo perf record -g -e cpu-clock -F 1999 -o nginx.perf \\
        -p "$(pgrep -d, -P "$(cat .run/nginx/nginx.pid)")" -- sleep 10   # while wrk runs
    uv run python -m loadtest.bench.nginx_perf nginx.perf [--requests N]

With `--requests` (what nginx served while perf recorded), each category also in µs of CPU
per request.
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


def samples(data: str) -> list[tuple[int, str]]:
    """Each sample's CPU in nanoseconds (its period) and call chain, from `perf script`."""
    output = subprocess.run(
        ["perf", "script", "-i", data, "-F", "period,ip,sym,dso"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    found = []
    for sample in output.split("\n\n"):
        period, _, chain = sample.strip().partition("\n")
        if chain:
            found.append((int(period), chain))
    return found


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
    parser.add_argument("--requests", type=int, help="requests served while perf recorded")
    args = parser.parse_args()
    found = samples(args.data)
    if not found:
        sys.exit(f"{args.data} holds no samples")
    nanoseconds: Counter[str] = Counter()
    for period, chain in found:
        nanoseconds[category(chain)] += period
    total = sum(nanoseconds.values())
    per_request = f" | µs/request (of {total / args.requests / 1000:.0f})" if args.requests else ""
    print(f"| nginx's workers, {len(found)} samples | share{per_request} |")
    print(f"| --- | ---:{' | ---:' if args.requests else ''} |")
    for name, spent in nanoseconds.most_common():
        cost = f" | {spent / args.requests / 1000:.1f}" if args.requests else ""
        print(f"| {name} | {spent / total:.0%}{cost} |")


if __name__ == "__main__":
    main()
