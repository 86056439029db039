"""Loopback ports for private Ray nodes and Serve proxies, chosen so nothing collides.

Ray's fixed defaults (GCS 6379, dashboard 8265, agents 52365, client 10001, workers
10002-19999) are what other clusters on a shared machine use, so every port a node
opens is chosen here instead.
"""

from __future__ import annotations

import random
import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free on ``host`` a moment ago (the kernel's pick)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _port_range_free(lo: int, hi: int, host: str = "127.0.0.1") -> bool:
    for port in range(lo, hi + 1, 10):
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                return False
    return True


def worker_port_window(size: int = 200) -> tuple[int, int]:
    """A worker port range below Linux's ephemeral range and away from Ray's default
    (10002-19999) that other clusters on this machine use."""
    rng = random.Random()
    for _ in range(50):
        lo = rng.randrange(20_000, 32_000 - size)
        if _port_range_free(lo, lo + size - 1):
            return lo, lo + size - 1
    raise RuntimeError("no free worker port window found")


def node_ports(head: bool = False) -> dict[str, int]:
    """``ray start`` flag -> free port, for every port a node opens. ``head=True`` adds
    the head-only ones (GCS, Ray client server, dashboard); the GCS port is ``--port``."""
    flags = ["--node-manager-port", "--object-manager-port", "--dashboard-agent-listen-port",
             "--dashboard-agent-grpc-port", "--metrics-export-port", "--runtime-env-agent-port"]
    if head:
        flags = ["--port", "--ray-client-server-port", "--dashboard-port", *flags]
    return {flag: free_port() for flag in flags}


def port_flags(ports: dict[str, int]) -> list[str]:
    """``{"--port": 1234}`` -> ``["--port=1234"]``, for a ``ray start`` command line."""
    return [f"{flag}={port}" for flag, port in ports.items()]
