"""`RedisServer`: the handle of one server the harness started, and its errors."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote as urlquote

from ._tls import TLSFiles

if TYPE_CHECKING:
    import redis

__all__ = [
    "Backend",
    "RedisServer",
    "RedisServerNotFoundError",
    "RedisStartError",
    "execute",
    "make_client",
    "tls_query",
    "userinfo",
]

_STOP_TIMEOUT = 10.0
_IN_USE_MARKERS = ("Address already in use", "Could not create server TCP listening socket")


class RedisServerNotFoundError(RuntimeError):
    """Neither a `redis-server` binary nor a working Docker engine is available."""


class RedisStartError(RuntimeError):
    """A server did not start; the message carries the end of its log.

    Attributes:
        address_in_use: the port was taken by someone else (the launcher retries another).
    """

    def __init__(self, message: str, *, address_in_use: bool = False) -> None:
        super().__init__(message)
        self.address_in_use = address_in_use


class Backend(Protocol):
    """How a server runs: a child process, or a Docker container."""

    @property
    def pid(self) -> int | None: ...
    @property
    def server_pid(self) -> int | None: ...
    def start(self) -> None: ...
    def is_running(self) -> bool: ...
    def stop(self, timeout: float) -> None: ...
    def kill(self) -> None: ...
    def freeze(self) -> None: ...
    def thaw(self) -> None: ...
    def log(self) -> str: ...
    def output(self) -> str: ...
    def exit_description(self) -> str: ...
    def close(self) -> None: ...


def execute(client: redis.Redis, *args: str) -> Any:
    """Send a raw command (redis-py leaves `execute_command` untyped)."""
    send: Callable[..., Any] = client.execute_command
    return send(*args)


def userinfo(username: str | None, password: str | None) -> str:
    """The ``user:password@`` part of a URL, quoted ("" when both are None)."""
    if username is None and password is None:
        return ""
    auth = urlquote(username or "", safe="")
    if password is not None:
        auth += ":" + urlquote(password, safe="")
    return auth + "@"


def tls_query(tls: TLSFiles, *, client_cert: bool) -> str:
    """The URL query naming the CA (and the client certificate for mutual TLS)."""
    query = f"ssl_ca_certs={urlquote(tls.ca_cert)}"
    if client_cert:
        query += f"&ssl_certfile={urlquote(tls.client_cert)}"
        query += f"&ssl_keyfile={urlquote(tls.client_key)}"
    return query


def make_client(
    *,
    host: str,
    port: int,
    password: str | None,
    tls: TLSFiles | None,
    client_cert: bool,
    **kwargs: Any,
) -> redis.Redis:
    """A sync redis-py client without hidden retries (a failure shows at once)."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "password": password,
        "decode_responses": True,
        "socket_timeout": 5.0,
        "socket_connect_timeout": 5.0,
        "retry": Retry(NoBackoff(), 0),
    }
    if tls is not None:
        options.update(ssl=True, ssl_ca_certs=tls.ca_cert)
        if client_cert:
            options.update(ssl_certfile=tls.client_cert, ssl_keyfile=tls.client_key)
    options.update(kwargs)
    return redis.Redis(**options)


class RedisServer:
    """Handle of one redis-server (or sentinel) started by a `RedisLauncher`.

    Create servers with `RedisLauncher.start` (or the pytest fixtures), not directly. The
    launcher owns the process: it dies with the launcher, the test session, or this process.

    Attributes:
        host: the address the server listens on (``"127.0.0.1"`` for the binary).
        port: the port clients use (the TLS port when `tls` is set); kept across `restart`.
        unixsocket: path of the Unix socket, or None.
        password: password of the ``default`` user, or None.
        tls: the certificates when clients must speak TLS, else None.
        tls_auth_clients: clients must present a certificate (mutual TLS).
        data_dir: the server's own directory (config, log, AOF).
        role: ``"redis"``, ``"master"``, ``"replica"`` or ``"sentinel"`` (labels only).
    """

    def __init__(
        self,
        *,
        backend: Backend,
        port: int,
        data_dir: Path,
        host: str = "127.0.0.1",
        password: str | None = None,
        unixsocket: str | None = None,
        tls: TLSFiles | None = None,
        tls_auth_clients: bool = False,
        role: str = "redis",
        startup_timeout: float = 20.0,
    ) -> None:
        self._backend = backend
        self.host = host
        self.port = port
        self.data_dir = data_dir
        self.password = password
        self.unixsocket = unixsocket
        self.tls = tls
        self.tls_auth_clients = tls_auth_clients
        self.role = role
        self.startup_timeout = startup_timeout

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        tls = " tls" if self.tls else ""
        return f"<RedisServer {self.role} {self.host}:{self.port}{tls} pid={self.pid} {state}>"

    @property
    def pid(self) -> int | None:
        """Pid of the current (or last) process; for Docker, the container's main pid."""
        return self._backend.pid

    @property
    def url(self) -> str:
        """A URL that `StoreSettings` accepts; same as `url_for()` with its defaults."""
        return self.url_for()

    def url_for(
        self,
        *,
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
        unix: bool | None = None,
    ) -> str:
        """Build a URL for this server.

        Args:
            db: the database number.
            username: an ACL user; `password` is then that user's password.
            password: overrides the server's `password` (used when both are None).
            unix: use the Unix socket (default: when the server has one).

        Returns:
            ``redis://[user][:pass]@127.0.0.1:PORT/DB``; with TLS ``rediss://...`` with
            ``ssl_ca_certs`` (and ``ssl_certfile``/``ssl_keyfile`` for mutual TLS); for the
            socket ``unix://[[user]:pass@]/path?db=DB``.
        """
        if username is None and password is None:
            password = self.password
        auth = userinfo(username, password)
        if unix if unix is not None else self.unixsocket is not None:
            if self.unixsocket is None:
                raise ValueError(f"{self!r} has no Unix socket")
            return f"unix://{auth}{urlquote(self.unixsocket)}?db={db}"
        if self.tls is None:
            return f"redis://{auth}{self.host}:{self.port}/{db}"
        query = tls_query(self.tls, client_cert=self.tls_auth_clients)
        return f"rediss://{auth}{self.host}:{self.port}/{db}?{query}"

    def client(self, **kwargs: Any) -> redis.Redis:
        """A sync admin client: default user and password, TLS set up, decoded responses.

        It never retries by itself and times out after 5 s; `kwargs` override any
        `redis.Redis` argument (e.g. ``db=3`` or ``socket_timeout=0.5``). Close it when done.
        """
        return make_client(
            host=self.host,
            port=self.port,
            password=self.password,
            tls=self.tls,
            client_cert=self.tls is not None,
            **kwargs,
        )

    def is_running(self) -> bool:
        """True while the process exists (a frozen server counts as running)."""
        return self._backend.is_running()

    def stop(self) -> None:
        """Shut down with SIGTERM and wait (SIGKILL after 10 s). No-op when not running."""
        self._backend.stop(_STOP_TIMEOUT)

    def kill(self) -> None:
        """SIGKILL and wait: no shutdown, no final AOF write. No-op when not running."""
        self._backend.kill()

    def freeze(self) -> None:
        """SIGSTOP: connections stay open but nothing is answered, until `thaw`."""
        self._backend.freeze()

    def thaw(self) -> None:
        """SIGCONT: a frozen server answers again."""
        self._backend.thaw()

    def restart(self) -> None:
        """Stop if running, then start again on the same port with the same data directory.

        With ``appendonly=True`` the data survives. Returns once the server answers PING.

        Raises:
            RedisStartError: the server did not come back.
        """
        self.stop()
        self.start()

    def start(self) -> None:
        """Start a stopped server and wait until it answers PING (LOADING is waited out).

        Raises:
            RedisStartError: it exited or did not answer within `startup_timeout`.
        """
        if self.is_running():
            raise RuntimeError(f"{self!r} is already running")
        offset = len(self._backend.log())
        self._backend.start()
        self._wait_ready(offset)

    def log(self) -> str:
        """The server's whole log text."""
        return self._backend.log()

    def log_tail(self, lines: int = 60) -> str:
        """The last `lines` lines of the log (and of stdout/stderr, where config errors go)."""
        text = self._backend.log() + self._backend.output()
        return "\n".join(text.splitlines()[-lines:])

    def close(self) -> None:
        """Kill the server and release what it holds (containers are removed)."""
        self._backend.close()

    def _is_ours(self, client: redis.Redis) -> bool:
        """False when another process's server answered on our port (we lost the bind race)."""
        expected = self._backend.server_pid
        return expected is None or client.info("server").get("process_id") == expected

    def _wait_ready(self, log_offset: int) -> None:
        import redis

        deadline = time.monotonic() + self.startup_timeout
        delay = 0.005
        while True:
            if not self._backend.is_running():
                new_log = self._backend.log()[log_offset:] + self._backend.output()
                raise RedisStartError(
                    f"{self.role} on port {self.port} exited while starting "
                    f"({self._backend.exit_description()}); log tail:\n{self.log_tail(30)}",
                    address_in_use=any(marker in new_log for marker in _IN_USE_MARKERS),
                )
            try:
                with self.client(socket_timeout=1.0, socket_connect_timeout=1.0) as client:
                    client.ping()
                    if self._is_ours(client):
                        return
            except redis.BusyLoadingError:
                pass  # loading the AOF/RDB: up, but not ready yet
            except (redis.AuthenticationError, redis.ResponseError):
                return  # it answered: the server is up (extra_config changed the users)
            except (redis.ConnectionError, redis.TimeoutError, OSError):
                pass
            if time.monotonic() > deadline:
                self._backend.kill()
                raise RedisStartError(
                    f"{self.role} on port {self.port} did not answer PING within "
                    f"{self.startup_timeout} s; log tail:\n{self.log_tail(30)}"
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.1)
