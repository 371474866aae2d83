"""The Redis Cluster harness (`ClusterHarness`, the ``redis_cluster`` fixtures) on real nodes."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis
from redis.cluster import ClusterNode, RedisCluster

from resultstore._harness._cluster_view import SLOTS, disagreement, parse_nodes
from resultstore._harness._ports import (
    CLUSTER_BUS_OFFSET,
    MAX_CLUSTER_PORT,
    allocate_cluster_port,
    allocate_port,
)
from resultstore._harness._server import make_client
from resultstore.testing import (
    AUTH_PASSWORD,
    AUTH_USER,
    AUTH_USER_PASSWORD,
    ClusterHarness,
    RedisServer,
)

pytestmark = pytest.mark.timeout(120)

TAG = "{celery-task-meta-harness}"
"""A hash tag: every key with it lands in one slot."""


def owners_seen(cluster: ClusterHarness, slot: int) -> dict[int, int]:
    """Each running node's owner of `slot` (by port), from its own ``CLUSTER SLOTS``."""
    seen: dict[int, int] = {}
    for node in cluster.nodes:
        if not node.is_running():
            continue
        with node.client() as client:
            ranges: list[Any] = client.execute_command("CLUSTER", "SLOTS")
        seen[node.port] = next(int(r[2][1]) for r in ranges if r[0] <= slot <= r[1])
    return seen


def cluster_node(host: str, port: int) -> Any:
    """redis-py's (untyped) `ClusterNode`."""
    make: Callable[..., Any] = ClusterNode
    return make(host, port)


def role(node: RedisServer) -> list[Any]:
    """The node's ``ROLE`` reply."""
    with node.client() as client:
        reply: list[Any] = client.execute_command("ROLE")
    return reply


def other_primary(cluster: ClusterHarness, than: RedisServer) -> RedisServer:
    """A primary of `cluster` other than `than`."""
    return next(node for node in cluster.primaries if node is not than)


def write_tagged(node: RedisServer, count: int) -> None:
    """`count` keys ``{TAG}:k<i>`` = i on `node` (which must own the tag's slot)."""
    with node.client() as client:
        pipe = client.pipeline(transaction=False)
        for i in range(count):
            pipe.set(f"{TAG}:k{i}", i)
        pipe.execute()


def next_message(pubsub: Any, timeout: float = 5.0) -> dict[str, Any]:
    """The next Pub/Sub message, within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message: dict[str, Any] | None = pubsub.get_message(timeout=0.1)
        if message is not None:
            return message
    raise AssertionError(f"no Pub/Sub message within {timeout} s")


def test_cluster_forms_agreed_and_close_leaves_no_process(redis_cluster: ClusterHarness) -> None:
    """3 primaries with a replica each, on ports whose bus port exists; every node knows all
    six and names the same owners; `close` leaves no process."""
    cluster = redis_cluster
    assert len(cluster.nodes) == 6
    assert all(node.port <= MAX_CLUSTER_PORT for node in cluster.nodes)
    primaries = cluster.primaries
    assert len(primaries) == 3
    assert all(len(cluster.replicas_of(primary)) == 1 for primary in primaries)
    for node in cluster.nodes:
        with node.client() as client:
            info = client.execute_command("CLUSTER", "INFO")
        assert "cluster_state:ok" in info
        assert "cluster_known_nodes:6" in info
        assert f"cluster_slots_ok:{SLOTS}" in info
    for slot in (0, 5461, 10923, SLOTS - 1):
        assert set(owners_seen(cluster, slot).values()) == {cluster.owner(slot).port}
    hosts = ",".join(f"127.0.0.1:{node.port}" for node in cluster.nodes)
    assert cluster.seed_url == f"redis+cluster://{hosts}"

    pids = [node.pid for node in cluster.nodes]
    cluster.close()
    assert not any(node.is_running() for node in cluster.nodes)
    for pid in pids:
        assert pid is not None
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_migrate_slot_moves_keys_live_and_every_node_agrees(redis_cluster: ClusterHarness) -> None:
    """Keys (more than one batch, TTLs kept) and the keys a writer adds during the move all end
    on the new owner; every node names it; the old owner answers MOVED."""
    cluster = redis_cluster
    slot = cluster.slot(TAG)
    source = cluster.owner(slot)
    target = other_primary(cluster, source)
    write_tagged(source, 250)
    with source.client() as client:
        client.set(f"{TAG}:ttl", "x", ex=300)

    # redis-py's sync cluster client follows the ASK redirections while the slot moves.
    writer = RedisCluster(
        startup_nodes=[cluster_node(node.host, node.port) for node in cluster.nodes],
        decode_responses=True,
    )
    acked: list[float] = []  # when each write i was acknowledged
    errors: list[BaseException] = []
    stop = threading.Event()

    def write() -> None:
        try:
            while not stop.is_set() or len(acked) < 100:
                writer.set(f"{TAG}:w{len(acked)}", len(acked))
                acked.append(time.monotonic())
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=write)
    thread.start()
    try:
        began = time.monotonic()
        moved = cluster.migrate_slot(slot, target)
        ended = time.monotonic()
    finally:
        stop.set()
        thread.join()
        writer.close()

    assert errors == []
    assert any(began < at < ended for at in acked)  # the writer ran during the move
    assert moved >= 251
    assert set(owners_seen(cluster, slot).values()) == {target.port}
    assert cluster.owner(slot) is target
    with target.client() as client:
        assert [client.get(f"{TAG}:k{i}") for i in range(250)] == [str(i) for i in range(250)]
        assert all(client.get(f"{TAG}:w{i}") == str(i) for i in range(len(acked)))
        assert 0 < client.ttl(f"{TAG}:ttl") <= 300
    with source.client() as client, pytest.raises(redis.exceptions.MovedError):
        client.get(f"{TAG}:k0")
    assert cluster.migrate_slot(slot, target) == 0  # already there
    with pytest.raises(ValueError, match="not a primary"):
        cluster.migrate_slot(slot, cluster.replicas_of(target)[0])


def test_failover_hands_the_slots_to_the_replica_with_the_data(
    redis_cluster: ClusterHarness,
) -> None:
    """A planned failover: the replica serves the slots everywhere, with the value; the old
    primary replicates it."""
    cluster = redis_cluster
    slot = cluster.slot(TAG)
    old = cluster.owner(slot)
    with old.client() as client:
        client.set(f"{TAG}:before", "failover")
    new = cluster.failover(old)

    assert new is not old
    assert set(owners_seen(cluster, slot).values()) == {new.port}
    with new.client() as client:
        assert client.get(f"{TAG}:before") == "failover"
    assert role(old)[0] == "slave"
    assert int(role(old)[2]) == new.port
    assert cluster.replicas_of(new) == [old]


def test_kill_promotes_a_replica_and_restart_brings_the_old_primary_back(
    redis_cluster: ClusterHarness,
) -> None:
    """SIGKILL of a primary: its replica serves the slots everywhere, with the value written
    (and WAITed for) before; restarted, the old primary rejoins as the new one's replica."""
    cluster = redis_cluster
    slot = cluster.slot(TAG)
    old = cluster.owner(slot)
    with old.client() as client:
        client.set(f"{TAG}:before", "kill")
        assert client.wait(1, 5000) == 1
    new = cluster.kill(old)

    assert not old.is_running()
    assert set(owners_seen(cluster, slot).values()) == {new.port}
    with new.client() as client:
        assert client.get(f"{TAG}:before") == "kill"

    cluster.restart(old)
    assert old.is_running()
    assert role(old)[0] == "slave"
    assert int(role(old)[2]) == new.port
    assert set(owners_seen(cluster, slot).values()) == {new.port}  # old's view included
    with old.client() as client:
        client.execute_command("READONLY")
        assert client.get(f"{TAG}:before") == "kill"


def test_restart_of_a_primary_keeps_its_slots_and_data(redis_cluster: ClusterHarness) -> None:
    """A primary stopped and started again (faster than a failover) still serves its slots,
    with its data (appendonly), and every node sees it connected."""
    cluster = redis_cluster
    slot = cluster.slot(TAG)
    primary = cluster.owner(slot)
    write_tagged(primary, 10)
    old_pid = primary.pid
    cluster.restart(primary)

    assert primary.pid != old_pid
    assert set(owners_seen(cluster, slot).values()) == {primary.port}
    with primary.client() as client:
        assert client.get(f"{TAG}:k9") == "9"
    node_id = cluster.node_id(primary)
    for node in cluster.nodes:
        with node.client() as client:
            entry = parse_nodes(client.execute_command("CLUSTER", "NODES"))[node_id]
        assert entry.healthy, (node.port, entry)


def test_tls_cluster_is_reachable_only_over_tls(redis_tls_cluster: ClusterHarness) -> None:
    """Every node speaks TLS only; replication, the bus and MIGRATE work over TLS."""
    cluster = redis_tls_cluster
    assert cluster.tls is not None
    assert cluster.seed_url.startswith("rediss+cluster://127.0.0.1:")
    assert f"ssl_ca_certs={cluster.tls.ca_cert}" in cluster.seed_url
    for node in cluster.nodes:
        with node.client(ssl=False) as plain, pytest.raises(redis.ConnectionError):
            plain.ping()
        with node.client() as client:
            assert client.ping()
    slot = cluster.slot(TAG)
    source = cluster.owner(slot)
    write_tagged(source, 3)
    target = other_primary(cluster, source)
    assert cluster.migrate_slot(slot, target) == 3
    with target.client() as client:
        assert client.get(f"{TAG}:k2") == "2"


def test_auth_cluster_refuses_a_wrong_password(redis_auth_cluster: ClusterHarness) -> None:
    """Without the password or with a wrong one, no node lets a client in; the ACL user gets in
    and stays confined; MIGRATE authenticates."""
    cluster = redis_auth_cluster
    node = cluster.nodes[0]
    for password in (None, "wrong"):
        client = make_client(
            host=node.host, port=node.port, password=password, tls=None, client_cert=False
        )
        with client, pytest.raises(redis.AuthenticationError):
            client.ping()
    assert f":{AUTH_PASSWORD}@" in cluster.seed_url
    assert f"{AUTH_USER}:{AUTH_USER_PASSWORD}@" in cluster.url_for(
        username=AUTH_USER, password=AUTH_USER_PASSWORD
    )
    key = "celery-task-meta-acl"  # what the ACL user may touch
    slot = cluster.slot(key)
    source = cluster.owner(slot)
    user = make_client(
        host=source.host,
        port=source.port,
        username=AUTH_USER,
        password=AUTH_USER_PASSWORD,
        tls=None,
        client_cert=False,
    )
    with user:
        user.set(key, "ok")
        with pytest.raises(redis.exceptions.NoPermissionError):
            user.get(f"{TAG}:k0")
    target = other_primary(cluster, source)
    assert cluster.migrate_slot(slot, target) == 1
    with target.client() as client:
        assert client.get(key) == "ok"


@pytest.mark.parametrize(
    "redis_cluster", [{"primaries": 2, "replicas_per_primary": 0}], indirect=True
)
def test_sharded_pubsub_on_the_owner_and_the_kick_of_a_slot_move(
    redis_cluster: ClusterHarness,
) -> None:
    """SSUBSCRIBE/SPUBLISH work on the channel's owner (another node answers MOVED); moving the
    slot ends the subscription with an unsolicited ``sunsubscribe``."""
    cluster = redis_cluster
    assert len(cluster.nodes) == 2
    assert cluster.replicas_of(cluster.nodes[0]) == []
    channel = f"{TAG}:channel"
    slot = cluster.slot(channel)
    owner = cluster.owner(slot)
    other = other_primary(cluster, owner)
    with owner.client() as subscriber, owner.client() as publisher:
        pubsub = subscriber.pubsub()
        pubsub.ssubscribe(channel)
        assert next_message(pubsub)["type"] == "ssubscribe"
        assert publisher.execute_command("PUBSUB", "SHARDNUMSUB", channel) == [channel, 1]
        assert publisher.spublish(channel, "hello") == 1
        message = next_message(pubsub)
        assert (message["type"], message["data"]) == ("smessage", "hello")
        with other.client() as client, pytest.raises(redis.exceptions.MovedError):
            client.spublish(channel, "elsewhere")

        cluster.migrate_slot(slot, other)
        kick = next_message(pubsub)
        assert (kick["type"], kick["channel"]) == ("sunsubscribe", channel)
        pubsub.close()


def test_disagreement_names_what_is_not_settled() -> None:
    """The settle check (no server): an unknown node, a failing node, uncovered slots, and
    views that differ are each reported; agreeing views are settled."""
    a, b = "a" * 40, "b" * 40
    text = (
        f"{a} 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-8191\n"
        f"{b} 127.0.0.1:7001@17001 master - 0 0 2 connected 8192-16383 [8192->-{a}]\n"
    )
    view = parse_nodes(text)
    assert view[a].myself
    assert (view[a].host, view[a].port, view[a].slots) == ("127.0.0.1", 7000, ((0, 8191),))
    assert view[b].slots == ((8192, 16383),)  # the migrating marker is not ownership
    assert disagreement({a: view, b: view}, [a, b]) is None
    assert "does not know" in str(disagreement({a: view}, [a, "c" * 40]))
    failing = parse_nodes(text.replace(" master -", " master,fail? -"))
    assert "fail?" in str(disagreement({a: failing}, [a, b]))
    half = parse_nodes(text.replace(" 8192-16383", ""))
    assert "8192 of 16384 slots" in str(disagreement({a: half}, [a, b]))
    moved = parse_nodes(text.replace("0-8191", "0-8190").replace("8192-16383", "8191-16383"))
    assert "disagree" in str(disagreement({a: view, b: moved}, [a, b]))


def test_cluster_ports_leave_room_for_the_bus_port() -> None:
    """A cluster port is at most 55535, its bus port (+10000) is free, and neither is issued
    again."""
    ports = [allocate_cluster_port() for _ in range(20)]
    assert all(port <= MAX_CLUSTER_PORT for port in ports)
    for port in ports:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port + CLUSTER_BUS_OFFSET))
    taken = set(ports) | {port + CLUSTER_BUS_OFFSET for port in ports}
    assert not taken & {allocate_port() for _ in range(200)}
