"""Free loopback ports for the processes the test stack starts, drawn from outside the ephemeral range.

A port from ``bind(0)`` is an ephemeral one: the kernel hands the same range to every outgoing connection,
so a port picked now and bound by a server seconds later (KEDA's adapter binds after the operator's
certificate restart) can be taken by a client socket meanwhile ("bind: address already in use"). Ports
below the ephemeral range are only ever taken by listeners, so the window is gone in practice.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

_LOWEST = 10000
_RANDOM = random.SystemRandom()  # independent across forked and parallel processes
# Ports handed out by this process: several are often picked before any is bound (a cluster takes four).
_GIVEN: set[int] = set()


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(also_plus: int | None = None) -> int:
    """A loopback port that is free now (and, for Cluster, whose bus port ``port + also_plus`` is too)."""
    high = _ephemeral_low() - (also_plus or 0)
    for _ in range(200):
        if high - _LOWEST >= 1000:
            port = _RANDOM.randrange(_LOWEST, high)
        else:  # an ephemeral range reaching down to here: fall back to the kernel's pick
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = int(s.getsockname()[1])
        if port in _GIVEN or not port_free(port):
            continue
        if also_plus is None or (port + also_plus < 65536 and port_free(port + also_plus)):
            _GIVEN.add(port)
            return port
    raise RuntimeError("no free loopback port found")
