"""`RedisLauncher`: starts servers on free loopback ports and owns every one of them."""

from __future__ import annotations

import atexit
import functools
import itertools
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Literal

from ._capabilities import SERVER_ENV, ServerInfo, find_binary, probe
from ._cluster import ClusterHarness
from ._config import DataNodeConfig, SentinelConfig
from ._docker import ContainerBackend, docker_available
from ._ports import allocate_cluster_port, allocate_port
from ._process import ProcessBackend
from ._sentinel import SentinelGroup, wait_until
from ._server import RedisServer, RedisServerNotFoundError, RedisStartError
from ._tls import TLSFiles

__all__ = ["NOT_FOUND_MESSAGE", "ROOT_PREFIX", "RedisLauncher"]

NOT_FOUND_MESSAGE = (
    "redis-server not found: install it (Debian: apt-get install redis-server) or start Docker"
)
_BINARY_ONLY = (
    "{what} needs the redis-server binary (the Docker fallback runs plain TCP servers only): "
    "install it (Debian: apt-get install redis-server)"
)
_PORT_ATTEMPTS = 5
ROOT_PREFIX = "resultstore-redis-"
"""Temp roots are named ``resultstore-redis-<pid>-<random>``."""


class RedisLauncher:
    """Starts real redis-server processes on free loopback ports, and owns them.

    Everything it starts is killed by `close` (idempotent; also a context manager), at
    interpreter exit (`atexit`), and on Linux by the kernel when this process dies, even by
    SIGKILL (``PR_SET_PDEATHSIG``). Each server gets its own directory under one temporary
    root, removed by `close`. Without a `redis-server` binary on PATH it falls back to Docker
    containers (testcontainers), for plain TCP servers only. The constructor does no I/O.

    Args:
        redis_server: path of the binary (redis-server or valkey-server); default: the
            environment variable ``RESULTSTORE_TEST_SERVER``, else ``redis-server`` on PATH.
        docker_image: image of the Docker fallback.
        startup_timeout: seconds a server gets to answer PING after starting.
    """

    def __init__(
        self,
        *,
        redis_server: str | None = None,
        docker_image: str = "redis:7.0",
        startup_timeout: float = 20.0,
    ) -> None:
        self._binary = redis_server
        self._docker_image = docker_image
        self._startup_timeout = startup_timeout
        self._backend: Literal["binary", "docker"] | None = None
        self._info: ServerInfo | None = None
        self._servers: list[RedisServer] = []
        self._root: Path | None = None
        self._tls: TLSFiles | None = None
        self._names = itertools.count(1)
        self._lock = threading.RLock()
        self._closed = False
        self._atexit_registered = False

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._servers)} servers"
        return f"<RedisLauncher {self._backend or 'undecided'} {state}>"

    def __enter__(self) -> RedisLauncher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def backend(self) -> Literal["binary", "docker"]:
        """Which way servers run: the ``redis-server`` binary, else Docker (decided once).

        Raises:
            RedisServerNotFoundError: neither is available.
        """
        with self._lock:
            if self._backend is None:
                binary = find_binary(self._binary)
                wanted = self._binary or os.environ.get(SERVER_ENV, "").strip()
                if binary is None and wanted:
                    raise RedisServerNotFoundError(
                        f"server binary {wanted!r} not found or not executable "
                        f"({'redis_server argument' if self._binary else SERVER_ENV})"
                    )
                if binary is not None:
                    self._binary, self._backend = binary, "binary"
                elif docker_available():
                    self._backend = "docker"
                else:
                    raise RedisServerNotFoundError(NOT_FOUND_MESSAGE)
            return self._backend

    def server_info(self) -> ServerInfo | None:
        """Name, version and capabilities of the binary (probed once); None under Docker.

        Raises:
            RedisServerNotFoundError: no binary and no Docker.
        """
        if self.backend() != "binary":
            return None
        with self._lock:
            if self._info is None:
                assert self._binary is not None
                self._info = probe(self._binary)
            return self._info

    def require(self, capability: str) -> None:
        """Raise `ServerCapabilityError` when the server binary lacks `capability`.

        Capabilities: ``"tls"``, ``"sentinel"``, ``"sharded-pubsub"``.
        """
        info = self.server_info()
        if info is not None:
            info.require(capability)

    @property
    def servers(self) -> tuple[RedisServer, ...]:
        """Every server started so far (running or not), oldest first."""
        with self._lock:
            return tuple(self._servers)

    def tls_files(self) -> TLSFiles:
        """The launcher's certificates (one CA for all its TLS servers), made on first use."""
        with self._lock:
            if self._tls is None:
                self._tls = TLSFiles.generate(self._root_dir() / "tls")
            return self._tls

    def start(
        self,
        *,
        password: str | None = None,
        acl_users: Sequence[str] = (),
        unixsocket: bool = False,
        tls: bool = False,
        tls_auth_clients: bool = False,
        appendonly: bool = False,
        cluster_node_timeout: int | None = None,
        extra_config: Mapping[str, str] | None = None,
    ) -> RedisServer:
        """Start one redis-server on a free loopback port; return once it answers PING.

        Args:
            password: ``requirepass`` of the default user.
            acl_users: raw ACL rules, e.g. ``"user app on >secret ~celery-task-meta-* +@all"``
                (the leading ``user`` may be left out).
            unixsocket: also listen on a Unix socket (`RedisServer.url` then uses it).
            tls: listen with TLS only (``port 0`` + ``tls-port``), certificates from trustme.
            tls_auth_clients: require client certificates (mutual TLS); needs ``tls=True``.
            appendonly: ``appendonly yes`` (data survives `RedisServer.restart`);
                otherwise ``save ""``: nothing is persisted.
            cluster_node_timeout: make it a cluster node (``cluster-enabled yes``) with this
                ``cluster-node-timeout`` in milliseconds, alone until it meets others (see
                `cluster`); its port is at most 55535, so that its bus port (+10000) exists.
            extra_config: more redis.conf directives, ``{"maxmemory": "10mb"}``.

        Raises:
            RedisServerNotFoundError: no binary, and no Docker (or an option Docker lacks).
            ServerCapabilityError: ``tls=True`` on a binary built without TLS.
            RedisStartError: the server did not start; the message carries its log tail.
        """
        if tls_auth_clients and not tls:
            raise ValueError("tls_auth_clients=True needs tls=True")
        if tls:
            self.require("tls")
        node = functools.partial(
            DataNodeConfig,
            password=password,
            acl_users=tuple(acl_users),
            tls_auth_clients=tls_auth_clients,
            appendonly=appendonly,
            cluster_node_timeout=cluster_node_timeout,
            extra_config=dict(extra_config or {}),
        )
        if self.backend() == "docker":
            if tls or unixsocket or cluster_node_timeout is not None:
                what = "a TLS server" if tls else "a Unix socket server"
                what = "a cluster node" if cluster_node_timeout is not None else what
                raise RedisServerNotFoundError(_BINARY_ONLY.format(what=what))
            args = node(port=6379, data_dir=Path("/data")).container_args()
            return self._start_container(args, password)
        data_dir = self._new_dir("redis")
        files = self.tls_files() if tls else None
        socket_path = data_dir / "redis.sock" if unixsocket else None
        return self._launch(
            data_dir,
            lambda port: node(port=port, data_dir=data_dir, unixsocket=socket_path, tls=files),
            role="redis",
            password=password,
            unixsocket=None if socket_path is None else str(socket_path),
            tls=files,
            tls_auth_clients=tls_auth_clients,
            allocate=allocate_port if cluster_node_timeout is None else allocate_cluster_port,
        )

    def sentinel_group(
        self,
        *,
        master_name: str = "mymaster",
        password: str | None = None,
        sentinel_password: str | None = None,
        tls: bool = False,
        timeout: float = 30.0,
    ) -> SentinelGroup:
        """Start a master, a replica and three sentinels; return once the group is formed.

        Args:
            master_name: the name the sentinels monitor.
            password: data nodes' ``requirepass`` and ``masterauth``; sentinels get
                ``sentinel auth-pass``.
            sentinel_password: the sentinels' own ``requirepass``.
            tls: TLS on the data nodes only (sentinels keep a plain port for clients).
            timeout: seconds to wait for the group to form.

        Raises:
            RedisServerNotFoundError: no redis-server binary (Docker is not enough here).
            ServerCapabilityError: the binary cannot run Sentinel (or TLS, with ``tls=True``).
            RedisStartError: a node did not start.
            TimeoutError: the group did not form in time.
        """
        if self.backend() != "binary":
            raise RedisServerNotFoundError(_BINARY_ONLY.format(what="a Sentinel group"))
        self.require("sentinel")
        if tls:
            self.require("tls")
        files = self.tls_files() if tls else None
        deadline = time.monotonic() + timeout

        def data_node(role: str, replicaof: tuple[str, int] | None) -> RedisServer:
            data_dir = self._new_dir(role)
            return self._launch(
                data_dir,
                lambda port: DataNodeConfig(
                    port=port, data_dir=data_dir, password=password, tls=files, replicaof=replicaof
                ),
                role=role,
                password=password,
                tls=files,
            )

        master = data_node("master", None)
        replica = data_node("replica", (master.host, master.port))
        wait_until(
            lambda: replica_linked(replica),
            timeout=max(deadline - time.monotonic(), 0.0),
            what=f"replica {replica.port} to sync with master {master.port}",
        )

        def sentinel_node() -> RedisServer:
            data_dir = self._new_dir("sentinel")
            return self._launch(
                data_dir,
                lambda port: SentinelConfig(
                    port=port,
                    data_dir=data_dir,
                    master_name=master_name,
                    master_port=master.port,
                    password=password,
                    sentinel_password=sentinel_password,
                    tls=files,
                    tls_port=allocate_port() if files else None,
                ),
                role="sentinel",
                password=sentinel_password,
            )

        sentinels = [sentinel_node() for _ in range(3)]
        group = SentinelGroup(
            master=master,
            replica=replica,
            sentinels=sentinels,
            master_name=master_name,
            password=password,
            sentinel_password=sentinel_password,
            tls=files,
        )
        group.wait_formed(max(deadline - time.monotonic(), 0.0))
        return group

    def cluster(
        self,
        *,
        primaries: int = 3,
        replicas_per_primary: int = 1,
        tls: bool = False,
        password: str | None = None,
        acl_users: Sequence[str] = (),
        node_timeout: int = 1500,
        timeout: float = 30.0,
    ) -> ClusterHarness:
        """Start a Redis Cluster; return once every node agrees on it and replicas are synced.

        Args:
            primaries: primaries; they share the 16384 slots evenly, in order.
            replicas_per_primary: replicas of each primary.
            tls: TLS only, for clients, replication and the cluster bus.
            password: the default user's ``requirepass`` (and ``masterauth``).
            acl_users: raw ACL rules, as for `start`.
            node_timeout: ``cluster-node-timeout`` in ms: a killed primary is replaced after
                about twice that.
            timeout: seconds for the cluster to form.

        Raises:
            RedisServerNotFoundError: no redis-server binary (Docker is not enough here).
            ServerCapabilityError: ``tls=True`` on a binary built without TLS.
            RedisStartError: a node did not start.
            TimeoutError: the cluster did not form in time.
        """
        if self.backend() != "binary":
            raise RedisServerNotFoundError(_BINARY_ONLY.format(what="a cluster"))
        if primaries < 1 or replicas_per_primary < 0:
            raise ValueError("a cluster needs primaries >= 1 and replicas_per_primary >= 0")
        deadline = time.monotonic() + timeout
        nodes: list[RedisServer] = []
        try:
            while len(nodes) < primaries * (1 + replicas_per_primary):
                node = self.start(
                    tls=tls,
                    password=password,
                    acl_users=acl_users,
                    appendonly=True,  # a restarted primary keeps its data
                    cluster_node_timeout=node_timeout,
                )
                nodes.append(node)
            files = self.tls_files() if tls else None
            cluster = ClusterHarness(nodes, password=password, tls=files, node_timeout=node_timeout)
            cluster.form(primaries, replicas_per_primary, max(deadline - time.monotonic(), 0.0))
        except BaseException:
            for node in nodes:
                node.kill()
            raise
        return cluster

    def close(self) -> None:
        """Kill every server this launcher started and remove its directories (idempotent)."""
        with self._lock:
            servers, self._servers = self._servers, []
            self._closed = True
            root, self._root = self._root, None
            if self._atexit_registered:
                atexit.unregister(self.close)
                self._atexit_registered = False
        for server in servers:
            server.close()
        if root is not None:
            shutil.rmtree(root, ignore_errors=True)

    def _root_dir(self) -> Path:
        with self._lock:
            if self._closed:
                raise RuntimeError(f"{self!r} is closed")
            if self._root is None:
                self._root = Path(tempfile.mkdtemp(prefix=f"{ROOT_PREFIX}{os.getpid()}-"))
                _remove_stale_roots(self._root.parent)
            return self._root

    def _new_dir(self, kind: str) -> Path:
        path = self._root_dir() / f"{kind}-{next(self._names)}"
        path.mkdir()
        return path

    def _register(self, server: RedisServer) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError(f"{self!r} is closed")
            if not self._atexit_registered:
                atexit.register(self.close)
                self._atexit_registered = True
            self._servers.append(server)

    def _launch(
        self,
        data_dir: Path,
        config: Callable[[int], DataNodeConfig | SentinelConfig],
        *,
        role: str,
        password: str | None,
        unixsocket: str | None = None,
        tls: TLSFiles | None = None,
        tls_auth_clients: bool = False,
        allocate: Callable[[], int] = allocate_port,
    ) -> RedisServer:
        assert self._binary is not None
        sentinel = role == "sentinel"
        conf = data_dir / ("sentinel.conf" if sentinel else "redis.conf")
        argv = [self._binary, str(conf), *(["--sentinel"] if sentinel else [])]
        for attempt in range(1, _PORT_ATTEMPTS + 1):
            port = allocate()
            conf.write_text(config(port).render())
            server = RedisServer(
                backend=ProcessBackend(argv, cwd=data_dir, logfile=data_dir / "redis.log"),
                port=port,
                data_dir=data_dir,
                password=password,
                unixsocket=unixsocket,
                tls=tls,
                tls_auth_clients=tls_auth_clients,
                role=role,
                startup_timeout=self._startup_timeout,
            )
            self._register(server)
            try:
                server.start()
            except RedisStartError as exc:
                if not exc.address_in_use or attempt == _PORT_ATTEMPTS:
                    raise
                continue  # someone else took the port between allocation and bind
            return server
        raise AssertionError("unreachable")

    def _start_container(self, args: Sequence[str], password: str | None) -> RedisServer:
        port = allocate_port()
        server = RedisServer(
            backend=ContainerBackend(image=self._docker_image, host_port=port, args=args),
            port=port,
            data_dir=self._new_dir("container"),
            password=password,
            role="redis",
            startup_timeout=self._startup_timeout,
        )
        self._register(server)
        server.start()
        return server


def _remove_stale_roots(folder: Path) -> None:
    """Remove the temp roots of launchers whose process is gone (SIGKILLed sessions)."""
    for root in folder.glob(f"{ROOT_PREFIX}*"):
        owner = root.name.removeprefix(ROOT_PREFIX).split("-", 1)[0]
        if not owner.isdigit():
            continue
        try:
            os.kill(int(owner), 0)
        except ProcessLookupError:
            shutil.rmtree(root, ignore_errors=True)
        except OSError:
            pass  # exists, but not ours to signal


def replica_linked(replica: RedisServer) -> bool:
    """True when `replica` reports ``master_link_status:up``."""
    with replica.client(socket_timeout=2.0) as client:
        info = client.info("replication")
    return bool(info.get("master_link_status") == "up")
