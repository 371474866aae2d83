"""Admin connections to the nodes of a harness cluster, and the waits on their agreement."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ._cluster_view import SLOTS, NodeEntry, View, disagreement, parse_nodes
from ._sentinel import wait_until
from ._server import RedisServer

if TYPE_CHECKING:
    import redis

__all__ = ["ClusterAdmin"]

_MIGRATE_BATCH = 100
_MIGRATE_TIMEOUT_MS = "5000"


def _text(reply: Any) -> str:
    return reply.decode() if isinstance(reply, bytes) else str(reply)


class ClusterAdmin:
    """Runs the harness's admin commands on the nodes, one cached connection per node.

    Connections retry once on a connection error (a node restarted since the last command)
    and return bytes, so that keys of any encoding survive ``GETKEYSINSLOT``/``MIGRATE``.
    """

    def __init__(self, nodes: Sequence[RedisServer]) -> None:
        self._nodes = tuple(nodes)
        self._clients: dict[int, redis.Redis] = {}
        self._ids: dict[int, str] = {}

    def call(self, node: RedisServer, *args: str | bytes | int) -> Any:
        """Send one command to `node`; the reply as redis-py gives it (bytes, not str)."""
        send: Callable[..., Any] = self._client(node).execute_command
        return send(*args)

    def node_id(self, node: RedisServer) -> str:
        """The cluster id of `node` (asked once: it survives restarts in nodes.conf)."""
        if node.port not in self._ids:
            self._ids[node.port] = _text(self.call(node, "CLUSTER", "MYID"))
        return self._ids[node.port]

    def node(self, node_id: str) -> RedisServer:
        """The node whose cluster id is `node_id`."""
        for node in self._nodes:
            if self.node_id(node) == node_id:
                return node
        raise LookupError(f"no node of this cluster has the id {node_id}")

    def form(self, primaries: int, replicas_per_primary: int, deadline: float) -> None:
        """Turn the fresh nodes into one cluster: slots, MEET, REPLICATE; wait until settled.

        The first `primaries` nodes share the slots evenly; the others replicate them in turn.
        """
        for epoch, node in enumerate(self._nodes, 1):
            self.node_id(node)
            # Distinct epochs up front: no collision to resolve by gossip.
            self.call(node, "CLUSTER", "SET-CONFIG-EPOCH", str(epoch))
        for index, node in enumerate(self._nodes[:primaries]):
            first, end = SLOTS * index // primaries, SLOTS * (index + 1) // primaries
            self.call(node, "CLUSTER", "ADDSLOTS", *range(first, end))
        for node in self._nodes[1:]:
            self.call(self._nodes[0], "CLUSTER", "MEET", node.host, str(node.port))
        for index, replica in enumerate(self._nodes[primaries:]):
            primary = self._nodes[index // max(replicas_per_primary, 1)]
            primary_id = self.node_id(primary)
            if primary is not self._nodes[0]:
                # Met directly, the replica knows its primary after one handshake, sooner
                # than by gossip through the first node.
                self.call(replica, "CLUSTER", "MEET", primary.host, str(primary.port))

            def replicate(replica: RedisServer = replica, primary_id: str = primary_id) -> bool:
                # "Unknown node" until gossip has told the replica about its primary.
                self.call(replica, "CLUSTER", "REPLICATE", primary_id)
                return True

            wait_until(replicate, timeout=_left(deadline), what=f"{replica.port} to replicate")
        self.wait_settled(deadline, what="the cluster to form")

    def move_keys(
        self, slot: int, source: RedisServer, target: RedisServer, password: str | None
    ) -> int:
        """MIGRATE the keys of `slot` from `source` to `target` in batches; return how many."""
        auth = () if password is None else ("AUTH", password)
        moved = 0
        while keys := self.call(source, "CLUSTER", "GETKEYSINSLOT", str(slot), _MIGRATE_BATCH):
            self.call(
                source,
                *("MIGRATE", target.host, str(target.port), "", "0", _MIGRATE_TIMEOUT_MS),
                *auth,
                "KEYS",
                *keys,
            )
            moved += len(keys)
        return moved

    def view(self) -> View:
        """The topology as the first running node that answers sees it."""
        import redis

        errors: list[str] = []
        for node in self._nodes:
            if not node.is_running():
                continue
            try:
                return View(parse_nodes(_text(self.call(node, "CLUSTER", "NODES"))))
            except (redis.RedisError, OSError) as exc:
                errors.append(f"{node.port}: {exc!r}")
        raise RuntimeError(f"no running cluster node answered CLUSTER NODES: {errors}")

    def linked_replica(self, primary: RedisServer, deadline: float) -> RedisServer:
        """Wait until a running replica of `primary` has finished its sync; return it.

        Raises:
            ValueError: `primary` is not a primary, or has no running replica.
        """
        view, primary_id = self.view(), self.node_id(primary)
        if not view.entries[primary_id].is_primary:
            raise ValueError(f"{primary!r} is not a primary")
        replicas = [
            self.node(entry.node_id)
            for entry in view.entries.values()
            if entry.primary_id == primary_id
        ]
        running = [replica for replica in replicas if replica.is_running()]
        if not running:
            raise ValueError(f"{primary!r} has no running replica")

        def linked() -> RedisServer | None:
            for replica in running:
                info = self._client(replica).info("replication")
                if info.get("master_link_status") == "up":
                    return replica
            return None

        what = f"a replica of {primary.port} to finish its sync"
        return wait_until(linked, timeout=_left(deadline), what=what, interval=0.02)

    def wait_settled(
        self,
        deadline: float,
        *,
        what: str,
        until: Callable[[View], str | None] | None = None,
    ) -> None:
        """Poll until the running nodes agree on one healthy topology and `until` is met.

        `until` gets the agreed view and returns None when satisfied, else what is missing.

        Raises:
            TimeoutError: not by `deadline`; the message says what was still off.
        """
        last = "no node answered yet"

        def settled() -> bool:
            nonlocal last
            reason, view = self._poll()
            if reason is None and view is not None and until is not None:
                reason = until(view)
            last = reason or ""
            return reason is None

        try:
            wait_until(settled, timeout=_left(deadline), what=what, interval=0.02)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}; still: {last}") from None

    def wait_promoted(
        self, old: RedisServer, candidates: Sequence[RedisServer], deadline: float
    ) -> RedisServer:
        """Wait until one of `candidates` serves the slots of `old` and all nodes agree; return it.

        Also waits, while `old` runs, until it replicates its replacement.
        """
        old_id = self.node_id(old)
        slots = self.view().entries[old_id].slots
        wanted = {self.node_id(node) for node in candidates}
        promoted: list[str] = []

        def done(view: View) -> str | None:
            owners = {view.owner(first).node_id for first, _ in slots}
            if len(owners) != 1 or not owners <= wanted:
                return f"the slots of {old_id[:8]} are not on one of its replicas yet"
            if old.is_running() and view.entries[old_id].primary_id not in owners:
                return f"{old_id[:8]} does not replicate its replacement yet"
            promoted[:] = owners
            return None

        what = f"a replica of {old.port} to take over its {len(slots)} slot ranges"
        self.wait_settled(deadline, what=what, until=done)
        return self.node(promoted[0])

    def close(self) -> None:
        """Close every admin connection (idempotent)."""
        clients, self._clients = self._clients, {}
        for client in clients.values():
            client.close()

    def _poll(self) -> tuple[str | None, View | None]:
        views: dict[str, dict[str, NodeEntry]] = {}
        for node in self._nodes:
            if not node.is_running():
                continue
            pipe = self._client(node).pipeline(transaction=False)
            queue: Callable[..., Any] = pipe.execute_command
            queue("CLUSTER", "NODES")
            queue("CLUSTER", "INFO")
            pipe.info("replication")
            nodes, info, replication = pipe.execute()
            if "cluster_state:ok" not in _text(info):
                return f"{node.port} says cluster_state is not ok", None
            if replication.get("role") == "slave":
                link = replication.get("master_link_status")
                if link != "up":
                    return f"replica {node.port} has master_link_status {link}", None
            views[self.node_id(node)] = parse_nodes(_text(nodes))
        reason = disagreement(views, list(views))
        if reason is not None or not views:
            return reason or "no node runs", None
        return None, View(next(iter(views.values())))

    def _client(self, node: RedisServer) -> redis.Redis:
        client = self._clients.get(node.port)
        if client is None:
            from redis.backoff import NoBackoff
            from redis.retry import Retry

            client = node.client(decode_responses=False, retry=Retry(NoBackoff(), 1))
            self._clients[node.port] = client
        return client


def _left(deadline: float) -> float:
    return max(deadline - time.monotonic(), 0.0)
