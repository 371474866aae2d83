"""redis.conf text for the servers the harness starts."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from ._tls import TLSFiles

__all__ = ["DataNodeConfig", "SentinelConfig", "quote"]

_PLAIN = re.compile(r"[^\s\"'\\]+")


def quote(value: str | Path) -> str:
    """Quote one config argument the way redis.conf (sdssplitargs) reads it back."""
    text = str(value)
    if _PLAIN.fullmatch(text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _common(port: int, data_dir: Path) -> list[str]:
    return [
        "bind 127.0.0.1",
        "protected-mode no",
        "daemonize no",
        f"port {port}",
        f"dir {quote(data_dir)}",
        f"logfile {quote(data_dir / 'redis.log')}",
    ]


def _tls_files(tls: TLSFiles) -> list[str]:
    return [
        f"tls-cert-file {quote(tls.server_cert)}",
        f"tls-key-file {quote(tls.server_key)}",
        f"tls-ca-cert-file {quote(tls.ca_cert)}",
        # What this node presents when it connects out (replication, sentinel links).
        f"tls-client-cert-file {quote(tls.client_cert)}",
        f"tls-client-key-file {quote(tls.client_key)}",
    ]


def _cluster(node_timeout: int, *, tls: bool) -> list[str]:
    lines = [
        "cluster-enabled yes",
        "cluster-config-file nodes.conf",
        f"cluster-node-timeout {node_timeout}",
        # A replica always offers itself for promotion, however long its link was down,
        # and stays with the primary the harness gave it.
        "cluster-replica-validity-factor 0",
        "cluster-allow-replica-migration no",
    ]
    # The bus (and MIGRATE) speak TLS too; the bus port is then the tls-port + 10000.
    return [*lines, "tls-cluster yes"] if tls else lines


@dataclasses.dataclass(frozen=True, kw_only=True)
class DataNodeConfig:
    """Options of a (non-sentinel) redis-server; `render` turns them into redis.conf text."""

    port: int
    data_dir: Path
    password: str | None = None
    acl_users: Sequence[str] = ()
    unixsocket: Path | None = None
    tls: TLSFiles | None = None
    tls_auth_clients: bool = False
    appendonly: bool = False
    replicaof: tuple[str, int] | None = None
    cluster_node_timeout: int | None = None
    extra_config: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def render(self) -> str:
        """The redis.conf text."""
        if self.tls is None:
            lines = _common(self.port, self.data_dir)
        else:
            lines = [*_common(0, self.data_dir), f"tls-port {self.port}", *_tls_files(self.tls)]
            lines.append(f"tls-auth-clients {'yes' if self.tls_auth_clients else 'no'}")
            lines.append("tls-replication yes")
        if self.unixsocket is not None:
            lines += [f"unixsocket {quote(self.unixsocket)}", "unixsocketperm 700"]
        if self.password is not None:
            # masterauth too: after a failover this node replicates from its peer.
            lines += [f"requirepass {quote(self.password)}", f"masterauth {quote(self.password)}"]
        if self.acl_users:
            # Redis 7 starts new users with no channels; 6.2 with every channel, where a rule
            # like `&celery-task-meta-*` is an error. Same default everywhere (before the users).
            lines.append("acl-pubsub-default resetchannels")
        for rule in self.acl_users:
            lines.append(rule if rule.startswith("user ") else f"user {rule}")
        lines += ["appendonly yes"] if self.appendonly else ['save ""', "appendonly no"]
        # Redis 7 syncs replicas diskless after a 5 s delay (to batch replicas): no delay here.
        lines.append("repl-diskless-sync-delay 0")
        if self.replicaof is not None:
            lines.append(f"replicaof {self.replicaof[0]} {self.replicaof[1]}")
        if self.cluster_node_timeout is not None:
            lines += _cluster(self.cluster_node_timeout, tls=self.tls is not None)
        lines += [f"{key} {value}" for key, value in self.extra_config.items()]
        return "\n".join(lines) + "\n"

    def container_args(self) -> list[str]:
        """The options as ``redis-server`` arguments, for a container (TCP port 6379 only)."""
        args = ["--protected-mode", "no"]
        if self.password is not None:
            args += ["--requirepass", self.password, "--masterauth", self.password]
        for rule in self.acl_users:
            args += ["--user", *rule.removeprefix("user ").split()]
        args += ["--appendonly", "yes"] if self.appendonly else ["--save", "", "--appendonly", "no"]
        for key, value in self.extra_config.items():
            args += [f"--{key}", *value.split()]
        return args


@dataclasses.dataclass(frozen=True, kw_only=True)
class SentinelConfig:
    """Options of a `redis-server --sentinel`; `render` turns them into its config file."""

    port: int
    data_dir: Path
    master_name: str
    master_port: int
    password: str | None = None
    sentinel_password: str | None = None
    tls: TLSFiles | None = None
    tls_port: int | None = None

    def render(self) -> str:
        """The sentinel config text (Sentinel rewrites the file, so it must stay writable)."""
        name = self.master_name
        lines = _common(self.port, self.data_dir)
        if self.tls is not None:
            # With tls-replication, a sentinel talks TLS to every instance, other sentinels
            # included, and announces its tls-port: so sentinels also listen on TLS for their
            # peers, while clients keep the plain `port`.
            lines += [f"tls-port {self.tls_port}", *_tls_files(self.tls)]
            lines += ["tls-auth-clients no", "tls-replication yes"]
        if self.sentinel_password is not None:
            # Sentinels authenticate to each other with their own requirepass.
            lines.append(f"requirepass {quote(self.sentinel_password)}")
        lines += [
            "sentinel resolve-hostnames no",
            f"sentinel monitor {name} 127.0.0.1 {self.master_port} 2",
            f"sentinel down-after-milliseconds {name} 1000",
            f"sentinel failover-timeout {name} 5000",
            f"sentinel parallel-syncs {name} 1",
        ]
        if self.password is not None:
            lines.append(f"sentinel auth-pass {name} {quote(self.password)}")
        return "\n".join(lines) + "\n"
