"""Free loopback TCP ports, never handed out twice in one process."""

from __future__ import annotations

import socket
import threading

__all__ = ["CLUSTER_BUS_OFFSET", "MAX_CLUSTER_PORT", "allocate_cluster_port", "allocate_port"]

CLUSTER_BUS_OFFSET = 10000
"""A cluster node listens for its peers on its port + 10000 (the cluster bus)."""
MAX_CLUSTER_PORT = 65535 - CLUSTER_BUS_OFFSET
"""The highest port a cluster node can take: its bus port must exist too."""


class _PortRegistry:
    """Asks the kernel for free ports and remembers every port it has issued.

    A port is free when the kernel hands it out, but nothing reserves it until a server binds
    it: remembering issued ports keeps two servers of this process from racing for the same
    one. Another process can still take it in between; the launcher retries on
    "Address already in use".
    """

    def __init__(self) -> None:
        self._issued: set[int] = set()
        self._lock = threading.Lock()

    def allocate(self, host: str) -> int:
        with self._lock:
            for _ in range(200):
                port = self._free_port(host)
                if port not in self._issued:
                    self._issued.add(port)
                    return port
        raise RuntimeError("could not find a free TCP port that was not already issued")

    def allocate_pair(self, host: str, offset: int) -> int:
        with self._lock:
            for _ in range(200):
                port = self._free_port(host)
                bus = port + offset
                if bus > 65535 or {port, bus} & self._issued or not _bindable(host, bus):
                    continue
                self._issued.update((port, bus))
                return port
        raise RuntimeError(f"could not find a free TCP port whose port + {offset} is free too")

    @staticmethod
    def _free_port(host: str) -> int:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port: int = sock.getsockname()[1]
        return port


def _bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


# Process-wide on purpose: the guarantee is "never twice in this process", whatever the
# number of launchers.
_REGISTRY = _PortRegistry()


def allocate_port(host: str = "127.0.0.1") -> int:
    """Return a free TCP port on `host` that this process has not issued before."""
    return _REGISTRY.allocate(host)


def allocate_cluster_port(host: str = "127.0.0.1") -> int:
    """Return a free port <= `MAX_CLUSTER_PORT` whose cluster bus port (+10000) is free too.

    Both ports count as issued: neither is handed out again by this process.
    """
    return _REGISTRY.allocate_pair(host, CLUSTER_BUS_OFFSET)
