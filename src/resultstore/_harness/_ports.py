"""Free loopback TCP ports, never handed out twice in one process."""

from __future__ import annotations

import socket
import threading

__all__ = ["allocate_port"]


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
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                    sock.bind((host, 0))
                    port: int = sock.getsockname()[1]
                if port not in self._issued:
                    self._issued.add(port)
                    return port
        raise RuntimeError("could not find a free TCP port that was not already issued")


# Process-wide on purpose: the guarantee is "never twice in this process", whatever the
# number of launchers.
_REGISTRY = _PortRegistry()


def allocate_port(host: str = "127.0.0.1") -> int:
    """Return a free TCP port on `host` that this process has not issued before."""
    return _REGISTRY.allocate(host)
