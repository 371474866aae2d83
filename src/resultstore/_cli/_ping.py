"""``resultstore ping``: what the command would connect to, and whether it answers."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any, Final

from redis.asyncio.sentinel import SentinelConnectionPool

from .._connection import Connector
from .._settings import StoreSettings

__all__ = ["PingReport", "ping"]

_PINGS: Final = 5
_TOPOLOGIES: Final = {"tcp": "standalone", "tls": "standalone", "unix": "unix socket"}


@dataclass(frozen=True, slots=True)
class PingReport:
    """The answer of ``resultstore ping``; never holds a secret.

    Attributes:
        topology: ``standalone``, ``unix socket``, ``sentinel`` or ``memory``.
        address: ``host:port``, the socket path, or for sentinel the master's current address.
        db: the database number.
        master_name: the sentinel master name, else None.
        sentinels: the sentinels' ``host:port`` (sentinel only).
        server: the server software (``redis``, ``valkey``); None for ``memory://``.
        version: the server's version; None for ``memory://``.
        tls: whether the data connection uses TLS.
        cert_reqs: TLS ``cert_reqs`` (``required``, ``optional``, ``none``); None without TLS.
        check_hostname: whether TLS checks the server's host name; None without TLS.
        rtt_ms: the median PING round trip in milliseconds; None for ``memory://``.
    """

    topology: str
    address: str | None
    db: int
    master_name: str | None = None
    sentinels: tuple[str, ...] = ()
    server: str | None = None
    version: str | None = None
    tls: bool = False
    cert_reqs: str | None = None
    check_hostname: bool | None = None
    rtt_ms: float | None = None

    @property
    def verified(self) -> bool:
        """Whether TLS fully verifies the server: certificate required and host name checked."""
        return self.tls and self.cert_reqs == "required" and bool(self.check_hostname)


async def ping(settings: StoreSettings) -> PingReport:
    """Connect as a store with ``settings`` would, and measure the server.

    Sends ``INFO server`` (version) and then PING ``_PINGS`` times (median round trip).

    Raises:
        StoreConnectionError: the server is unreachable, refuses the password or the TLS
            handshake, or no sentinel knows the master.
        PermissionDeniedError: an ACL forbids INFO or PING.
        ResultStoreError: the server replied with another error.
    """
    target = settings.target
    db = settings.db or 0
    if target.kind == "memory":
        return PingReport(topology="memory", address=None, db=db)
    tls = settings.ssl
    connector = Connector(settings)
    try:
        with connector.map_exceptions("PING"):  # the store's own translation
            info, rtts, address = await _measure(connector)
    finally:
        await connector.aclose()
    server = str(info.get("server_name") or "redis")
    version = info.get(f"{server}_version") or info.get("redis_version")
    return PingReport(
        topology=_TOPOLOGIES.get(target.kind, target.kind),
        address=address,
        db=db,
        master_name=settings.master_name,
        sentinels=tuple(f"{h}:{p}" for h, p in target.hosts) if target.kind == "sentinel" else (),
        server=server,
        version=None if version is None else str(version),
        tls=tls is not None,
        cert_reqs=None if tls is None else tls.cert_reqs,
        check_hostname=None if tls is None else tls.verify_hostname,
        rtt_ms=round(statistics.median(rtts), 3),
    )


async def _measure(connector: Connector) -> tuple[dict[str, Any], list[float], str | None]:
    """``INFO server``, the PING round trips in ms, and the address of the node answering."""
    target = connector.settings.target
    client = connector.command_client()
    info: dict[str, Any] = await client.info("server")
    rtts: list[float] = []
    for _ in range(_PINGS):
        start = time.perf_counter()
        await client.ping()
        rtts.append((time.perf_counter() - start) * 1000)
    if target.kind == "sentinel":
        pool = client.connection_pool
        assert isinstance(pool, SentinelConnectionPool)
        host, port = await pool.get_master_address()  # type: ignore[no-untyped-call]
        return info, rtts, f"{host}:{port}"
    if target.kind == "unix":
        return info, rtts, target.path
    host, port = target.hosts[0]
    return info, rtts, f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
