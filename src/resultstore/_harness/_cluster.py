"""`ClusterHarness`: a local Redis Cluster of real server processes, and its faults."""

from __future__ import annotations

import time
from collections.abc import Sequence

from ._cluster_admin import ClusterAdmin
from ._cluster_view import View
from ._server import RedisServer, tls_query, userinfo
from ._tls import TLSFiles

__all__ = ["ClusterHarness"]


class ClusterHarness:
    """A Redis Cluster of real server processes on loopback ports, and the faults tests need.

    Create one with `RedisLauncher.cluster` (or the ``redis_cluster`` fixtures); `close` kills
    its nodes. Every node runs with ``appendonly yes`` (a restarted primary keeps its data)
    and a short ``cluster-node-timeout``, so a killed primary is replaced within a few
    seconds. Each operation returns only once every running node agrees on the new topology,
    with ``cluster_state:ok`` everywhere and every replica linked (`wait_settled`): tests
    never race gossip. Nodes keep their port across restarts; roles change with failovers, so
    ask `primaries`, `owner` and `replicas_of` rather than remembering them. A primary that
    (re)starts serves only after Redis's 2 s "writable delay": forming a cluster, or restarting
    a primary, takes about 2 s.

    Attributes:
        nodes: every node, in creation order (the first ones started as the primaries).
        password: the ``default`` user's password on every node, or None.
        tls: the certificates when clients (and the cluster bus) speak TLS, else None.
        node_timeout: ``cluster-node-timeout`` in milliseconds.
    """

    def __init__(
        self,
        nodes: Sequence[RedisServer],
        *,
        password: str | None,
        tls: TLSFiles | None,
        node_timeout: int,
    ) -> None:
        self.nodes = tuple(nodes)
        self.password = password
        self.tls = tls
        self.node_timeout = node_timeout
        self._admin = ClusterAdmin(self.nodes)

    def __repr__(self) -> str:
        ports = ",".join(str(node.port) for node in self.nodes)
        return f"<ClusterHarness{' tls' if self.tls else ''} nodes={ports}>"

    def form(self, primaries: int, replicas_per_primary: int, timeout: float = 30.0) -> None:
        """Make one cluster of the fresh `nodes`: the first `primaries` share the slots evenly,
        the others replicate them in turn; return once it has settled (`wait_settled`).

        `RedisLauncher.cluster` starts the nodes and calls this.

        Raises:
            TimeoutError: the cluster did not form within `timeout` seconds.
        """
        if len(self.nodes) != primaries * (1 + replicas_per_primary):
            raise ValueError(
                f"{len(self.nodes)} nodes cannot be {primaries} primaries with "
                f"{replicas_per_primary} replicas each"
            )
        self._admin.form(primaries, replicas_per_primary, time.monotonic() + timeout)

    @property
    def primaries(self) -> list[RedisServer]:
        """The running primaries that serve slots, in slot order."""
        view = self._admin.view()
        serving = [e for e in view.entries.values() if e.is_primary and e.slots]
        serving.sort(key=lambda entry: entry.slots[0])
        return [self._admin.node(entry.node_id) for entry in serving]

    @property
    def seed_url(self) -> str:
        """``redis+cluster://host:port,...`` over every node (``rediss+cluster://`` for TLS).

        Authenticates as the default user with `password`; see `url_for`.
        """
        return self.url_for()

    def url_for(self, *, username: str | None = None, password: str | None = None) -> str:
        """A cluster URL with every node as a seed, as `username` (an ACL user) if given.

        With TLS it is ``rediss+cluster://...?ssl_ca_certs=...``.
        """
        if username is None and password is None:
            password = self.password
        auth = userinfo(username, password)
        hosts = ",".join(f"{node.host}:{node.port}" for node in self.nodes)
        if self.tls is None:
            return f"redis+cluster://{auth}{hosts}"
        return f"rediss+cluster://{auth}{hosts}?{tls_query(self.tls, client_cert=False)}"

    @staticmethod
    def slot(key: str | bytes) -> int:
        """The hash slot of `key` (hash tags included)."""
        from redis.crc import key_slot

        return key_slot(key.encode() if isinstance(key, str) else key)

    def node_id(self, node: RedisServer) -> str:
        """The cluster id of `node` (kept across restarts)."""
        return self._admin.node_id(node)

    def owner(self, slot: int) -> RedisServer:
        """The primary that serves `slot`, as a running node sees it."""
        return self._admin.node(self._admin.view().owner(slot).node_id)

    def replicas_of(self, primary: RedisServer) -> list[RedisServer]:
        """The nodes that replicate `primary` now (running or not)."""
        view = self._admin.view()
        primary_id = self.node_id(primary)
        return [
            self._admin.node(entry.node_id)
            for entry in view.entries.values()
            if entry.primary_id == primary_id
        ]

    def wait_settled(self, timeout: float = 30.0) -> None:
        """Wait until every running node agrees on one healthy topology.

        That is: all list every running node, healthy, with the same role, primary and slots;
        running primaries serve all 16384 slots; ``cluster_state:ok`` everywhere; every
        running replica has ``master_link_status:up``.

        Raises:
            TimeoutError: not within `timeout` seconds; the message says what was still off.
        """
        self._admin.wait_settled(time.monotonic() + timeout, what="the cluster to settle")

    def migrate_slot(self, slot: int, target: RedisServer, *, timeout: float = 30.0) -> int:
        """Move `slot`, keys included, to the primary `target`, live; return the keys moved.

        The usual resharding steps: ``SETSLOT IMPORTING`` on the target, ``MIGRATING`` on the
        owner, ``MIGRATE`` of the slot's keys in batches (clients meanwhile get ``ASK``),
        then ``SETSLOT NODE`` on the target, the owner and every other primary. Returns once
        all running nodes name `target` as the owner. Moving a slot to its owner does nothing.

        Raises:
            ValueError: `target` is not a primary.
            TimeoutError: not settled within `timeout` seconds.
        """
        deadline = time.monotonic() + timeout
        view = self._admin.view()
        source = self._admin.node(view.owner(slot).node_id)
        target_id = self.node_id(target)
        if not view.entries[target_id].is_primary:
            raise ValueError(f"{target!r} is not a primary")
        if source is target:
            return 0
        source_id, text = self.node_id(source), str(slot)
        self._admin.call(target, "CLUSTER", "SETSLOT", text, "IMPORTING", source_id)
        self._admin.call(source, "CLUSTER", "SETSLOT", text, "MIGRATING", target_id)
        moved = self._admin.move_keys(slot, source, target, self.password)
        others = [node for node in self.primaries if node not in (source, target)]
        for node in (target, source, *others):
            self._admin.call(node, "CLUSTER", "SETSLOT", text, "NODE", target_id)

        def moved_there(view: View) -> str | None:
            owner = view.owner(slot).node_id
            return None if owner == target_id else f"slot {slot} still on {owner[:8]}"

        self._admin.wait_settled(deadline, what=f"slot {slot} to move", until=moved_there)
        return moved

    def failover(self, primary: RedisServer, *, timeout: float = 30.0) -> RedisServer:
        """A planned failover: ``CLUSTER FAILOVER`` on a replica of `primary`; return it.

        Waits for the replica's first sync to finish first (before that it refuses), and
        after it until every node knows the new primary and the old one replicates it.

        Raises:
            ValueError: `primary` is not a primary or has no replica.
            TimeoutError: not complete within `timeout` seconds.
        """
        deadline = time.monotonic() + timeout
        replica = self._admin.linked_replica(primary, deadline)
        self._admin.call(replica, "CLUSTER", "FAILOVER")
        self._admin.wait_promoted(primary, [replica], deadline)
        return replica

    def kill(self, primary: RedisServer, *, timeout: float = 30.0) -> RedisServer:
        """SIGKILL `primary`; wait until a replica replaces it everywhere; return that replica.

        Before the kill, waits for a replica to have finished its sync (else nothing could
        replace it); after, until every running node agrees on the promoted replica. Use
        ``WAIT 1 <ms>`` first for writes that must survive. (A replica is killed with its own
        `RedisServer.kill`: nothing is to wait for.)

        Raises:
            ValueError: `primary` is not a primary, or has no running replica.
            TimeoutError: no promotion agreed within `timeout` seconds.
        """
        deadline = time.monotonic() + timeout
        self._admin.linked_replica(primary, deadline)
        candidates = self.replicas_of(primary)
        primary.kill()
        return self._admin.wait_promoted(primary, candidates, deadline)

    def restart(self, node: RedisServer, *, timeout: float = 30.0) -> None:
        """Stop `node` (SIGTERM) if it runs, start it again, and wait until it has rejoined.

        A primary that was replaced meanwhile comes back as a replica of its replacement.

        Raises:
            TimeoutError: the cluster did not settle within `timeout` seconds.
        """
        deadline = time.monotonic() + timeout
        node.stop()
        node.start()
        self._admin.wait_settled(deadline, what=f"node {node.port} to rejoin")

    def close(self) -> None:
        """Kill every node and close the admin connections (idempotent)."""
        for node in self.nodes:
            node.kill()
        self._admin.close()
