"""`SentinelGroup`: a master, one replica and three sentinels, and a reliable failover."""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from ._server import RedisServer, execute
from ._tls import TLSFiles

if TYPE_CHECKING:
    import redis

__all__ = ["SentinelGroup", "wait_until"]

T = TypeVar("T")


def wait_until(
    probe: Callable[[], T | None], *, timeout: float, what: str, interval: float = 0.05
) -> T:
    """Call `probe` until it returns something other than None (or False); return that.

    Redis errors and OS errors count as "not yet". Raises `TimeoutError` naming `what`, and
    the last error seen, after `timeout` seconds.
    """
    import redis

    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            value = probe()
        except (redis.RedisError, OSError) as exc:
            last_error = exc
        else:
            if value is not None and value is not False:
                return value
        if time.monotonic() > deadline:
            detail = f" (last error: {last_error!r})" if last_error else ""
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}{detail}")
        time.sleep(interval)


def _as_dict(reply: Any) -> dict[str, Any]:
    """A SENTINEL reply entry as a dict (RESP3 sends maps, RESP2 flat key/value lists)."""
    if isinstance(reply, dict):
        return {str(k): v for k, v in reply.items()}
    items = list(reply)
    return {str(items[i]): items[i + 1] for i in range(0, len(items) - 1, 2)}


@contextlib.contextmanager
def _connected(server: RedisServer) -> Iterator[redis.Redis]:
    with server.client(socket_timeout=2.0, socket_connect_timeout=2.0) as client:
        yield client


def _role(server: RedisServer) -> str:
    with _connected(server) as client:
        reply = execute(client, "ROLE")
    return str(reply[0])


class SentinelGroup:
    """A Sentinel-monitored master, one replica and three sentinels, started together.

    Create groups with `RedisLauncher.sentinel_group` (or the `redis_sentinel` fixture). The
    group is fully formed when returned: every sentinel sees the replica (link ok) and the two
    other sentinels, so `failover` works at once.

    Attributes:
        master: the node that is master now (swapped by `failover`).
        replica: the node that is replica now.
        sentinels: the three sentinels (plain TCP, even when the data nodes use TLS).
        master_name: the name the sentinels monitor.
        password: the data nodes' password (requirepass and masterauth), or None.
        sentinel_password: the sentinels' own requirepass, or None.
        tls: the certificates when the data nodes speak TLS, else None.
    """

    def __init__(
        self,
        *,
        master: RedisServer,
        replica: RedisServer,
        sentinels: list[RedisServer],
        master_name: str,
        password: str | None,
        sentinel_password: str | None,
        tls: TLSFiles | None,
    ) -> None:
        self.master = master
        self.replica = replica
        self.sentinels = sentinels
        self.master_name = master_name
        self.password = password
        self.sentinel_password = sentinel_password
        self.tls = tls

    def __repr__(self) -> str:
        ports = ",".join(str(s.port) for s in self.sentinels)
        return (
            f"<SentinelGroup {self.master_name!r} master={self.master.port} "
            f"replica={self.replica.port} sentinels={ports}>"
        )

    @property
    def nodes(self) -> list[RedisServer]:
        """Every server of the group: master, replica, then the sentinels."""
        return [self.master, self.replica, *self.sentinels]

    @property
    def url(self) -> str:
        """``sentinel://127.0.0.1:P1/0;sentinel://...`` (no password; pass it separately)."""
        return ";".join(f"sentinel://{s.host}:{s.port}/0" for s in self.sentinels)

    def master_address(self) -> tuple[str, int]:
        """The master's address as the first answering sentinel reports it."""
        errors: list[str] = []
        for sentinel in self.sentinels:
            try:
                address = self._reported_master(sentinel)
            except Exception as exc:
                errors.append(f"{sentinel.port}: {exc!r}")
            else:
                if address is not None:
                    return address
                errors.append(f"{sentinel.port}: unknown master name")
        raise RuntimeError(f"no sentinel reported the master of {self.master_name!r}: {errors}")

    def failover(self, timeout: float = 30.0) -> tuple[str, int]:
        """Force a failover and wait until it is complete everywhere.

        Sends SENTINEL FAILOVER, then waits until all three sentinels report the new master,
        that node answers ROLE master, and the old master (when its process still runs) has
        become its replica. Sentinel itself demotes a healthy old master only about 10 s later
        (its "+convert-to-slave" delay plus its 10 s INFO period), so once the sentinels
        agree the harness sends that REPLICAOF itself. Afterwards `master` and `replica` are
        swapped.

        Returns:
            The new master's ``(host, port)``.

        Raises:
            TimeoutError: the failover did not complete within `timeout` seconds.
        """
        deadline = time.monotonic() + timeout
        old, new = self.master, self.replica
        old_address = (old.host, old.port)

        def request() -> bool:
            with _connected(self.sentinels[0]) as client:
                execute(client, "SENTINEL", "FAILOVER", self.master_name)
            return True

        # NOGOODSLAVE or INPROG right after a topology change: ask again until accepted.
        wait_until(request, timeout=self._left(deadline), what="SENTINEL FAILOVER accepted")

        def agreed() -> tuple[str, int] | None:
            addresses = {self._reported_master(s) for s in self.sentinels}
            if len(addresses) != 1:
                return None
            (address,) = addresses
            if address is None or address == old_address or _role(new) != "master":
                return None
            return address

        address = wait_until(
            agreed, timeout=self._left(deadline), what="all sentinels to report the new master"
        )

        def demoted() -> bool:
            if _role(old) == "master":
                with _connected(old) as client:
                    execute(client, "REPLICAOF", new.host, str(new.port))
                    execute(client, "CONFIG", "REWRITE")
                return False
            return True

        if old.is_running():  # a killed or stopped old master is left as it is
            wait_until(demoted, timeout=self._left(deadline), what="the old master to be a replica")
        self.master, self.replica = new, old
        return address

    def wait_formed(self, timeout: float = 30.0) -> None:
        """Wait until every sentinel knows the master, a linked replica and both peers.

        Raises:
            TimeoutError: the group did not form within `timeout` seconds.
        """
        deadline = time.monotonic() + timeout
        expected = (self.master.host, self.master.port)

        def formed(sentinel: RedisServer) -> bool:
            if self._reported_master(sentinel) != expected:
                return False
            with _connected(sentinel) as client:
                master = _as_dict(execute(client, "SENTINEL", "MASTER", self.master_name))
                replicas = execute(client, "SENTINEL", "REPLICAS", self.master_name)
                peers = execute(client, "SENTINEL", "SENTINELS", self.master_name)
            flags = str(master.get("flags", "")).split(",")
            linked = [
                r
                for r in map(_as_dict, replicas)
                if str(r.get("master-link-status")) == "ok"
                and not {"s_down", "o_down", "disconnected"} & set(str(r.get("flags")).split(","))
            ]
            connected_peers = [
                p for p in map(_as_dict, peers) if "disconnected" not in str(p.get("flags"))
            ]
            return flags == ["master"] and len(linked) >= 1 and len(connected_peers) >= 2

        for sentinel in self.sentinels:
            wait_until(
                functools.partial(formed, sentinel),
                timeout=self._left(deadline),
                what=f"sentinel {sentinel.port} to see the whole group",
            )

    def _reported_master(self, sentinel: RedisServer) -> tuple[str, int] | None:
        with _connected(sentinel) as client:
            reply = execute(client, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name)
        return (str(reply[0]), int(reply[1])) if reply else None

    @staticmethod
    def _left(deadline: float) -> float:
        return max(deadline - time.monotonic(), 0.0)
