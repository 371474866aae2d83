"""Tests for resultstore._celery_config and ``StoreSettings.from_celery``.

A Celery configuration becomes settings for the same Redis, TLS, Sentinel, key prefix and expiry
that Celery's own Redis backend uses: checked against a table, against the connection parameters
Celery 5.7's ``RedisBackend`` computes from the same configuration, and by round trips on real
servers (plain, TLS, Sentinel with passwords) where Celery writes and the store reads.
"""

from __future__ import annotations

import ssl
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import celery
import pytest

from resultstore import ResultStore, StoreSettings, states
from resultstore.testing import (
    RedisLauncher,
    RedisServer,
    RedisServerNotFoundError,
    SentinelGroup,
)
from support import attribute, clean_environment

pytestmark = [
    pytest.mark.timeout(60),
    # Celery 5.7's own backend calls redis-py's deprecated SETEX (celery/backends/redis.py).
    pytest.mark.filterwarnings("ignore:Call to deprecated setex:DeprecationWarning"),
]

PASSWORD = "hunter2-SECRET"
SENTINELS = "sentinel://h1:26379/0;sentinel://h2:26380/0"


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep RESULTSTORE_* variables of the machine out of these tests."""
    clean_environment(monkeypatch)


def _app(backend: str | None = None, **conf: Any) -> Any:
    app = celery.Celery("cfg", backend=backend, broker="memory://", set_as_current=False)
    app.conf.update(**conf)
    return app


# Each case: a Celery configuration (a plain mapping), then the expected settings attributes.
CASES: list[Any] = [
    pytest.param(
        {"result_backend": "redis://localhost:6379/0"},
        {
            "url": "redis://localhost:6379/0",
            "db": 0,
            "password": None,
            "ssl": None,
            "socket_timeout": 10.0,  # a missing key keeps resultstore's default
            "result_expires": timedelta(days=1),
        },
        id="minimal",
    ),
    pytest.param(
        {"result_backend": f"redis://:{PASSWORD}@cache:6380/2"},
        {"url": "redis://cache:6380/2", "password": PASSWORD, "db": 2},
        id="password-in-url",
    ),
    pytest.param(
        {"result_backend": "redis://cache/1", "redis_username": "app", "redis_password": PASSWORD},
        {"url": "redis://cache/1", "username": "app", "password": PASSWORD, "db": 1},
        id="redis_username-redis_password",
    ),
    pytest.param(
        {"result_backend": "redis://u:from-url@cache/1", "redis_password": "from-setting"},
        {"url": "redis://u@cache/1", "username": "u", "password": "from-url"},
        id="url-password-wins",
    ),
    pytest.param(
        {
            "result_backend": "redis",
            "redis_host": "cache",
            "redis_port": 6390,
            "redis_db": 4,
            "redis_password": PASSWORD,
        },
        {"url": "redis://cache:6390/4", "db": 4, "password": PASSWORD},
        id="alias-redis-host-port-db",
    ),
    pytest.param(
        {
            "result_backend": "rediss://cache:6380/0",
            "redis_backend_use_ssl": {
                "ssl_cert_reqs": "CERT_REQUIRED",
                "ssl_ca_certs": "/certs/ca.pem",
                "ssl_certfile": "/certs/client.pem",
                "ssl_keyfile": "/certs/client.key",
            },
        },
        {
            "target.kind": "tls",
            "ssl.cert_reqs": "required",
            "ssl.ca_certs": "/certs/ca.pem",
            "ssl.certfile": "/certs/client.pem",
            "ssl.keyfile": "/certs/client.key",
        },
        id="rediss-use-ssl-strings",
    ),
    pytest.param(
        {
            "result_backend": "rediss://cache:6380/0",
            "redis_backend_use_ssl": {"ssl_cert_reqs": ssl.CERT_NONE},
        },
        {"ssl.cert_reqs": "none", "ssl.ca_certs": None},
        id="use-ssl-CERT_NONE-constant",
    ),
    pytest.param(
        {
            "result_backend": "rediss://cache:6380/0",
            "redis_backend_use_ssl": {"ssl_cert_reqs": ssl.CERT_OPTIONAL},
        },
        {"ssl.cert_reqs": "optional"},
        id="use-ssl-CERT_OPTIONAL-constant",
    ),
    pytest.param(
        {
            "result_backend": "redis://cache:6380/3",
            "redis_backend_use_ssl": {"ssl_cert_reqs": "required", "ssl_ca_certs": "/ca.pem"},
        },
        {"url": "rediss://cache:6380/3", "target.kind": "tls", "ssl.ca_certs": "/ca.pem", "db": 3},
        id="redis-url-with-use-ssl-becomes-rediss",
    ),
    pytest.param(
        {"result_backend": "rediss://cache/0?ssl_cert_reqs=CERT_OPTIONAL&ssl_ca_certs=%2Fca.pem"},
        {"ssl.cert_reqs": "optional", "ssl.ca_certs": "/ca.pem"},
        id="rediss-query-options",
    ),
    pytest.param(
        {
            "result_backend": "redis://cache/0",
            "redis_max_connections": 7,
            "redis_socket_timeout": 2.5,
            "redis_socket_connect_timeout": 1.5,
            "redis_socket_keepalive": False,
            "redis_retry_on_timeout": True,
            "redis_backend_health_check_interval": 30,
            "redis_client_name": "web",
        },
        {
            "max_connections": 7,
            "socket_timeout": 2.5,
            "socket_connect_timeout": 1.5,
            "socket_keepalive": False,
            "retry_on_timeout": True,
            "health_check_interval": 30.0,
            "client_name": "web",
        },
        id="pool-and-socket-options",
    ),
    pytest.param(
        {
            "result_backend": "redis://cache/0",
            "redis_socket_timeout": None,
            "redis_socket_connect_timeout": None,
            "redis_max_connections": None,
        },
        {"socket_timeout": 10.0, "socket_connect_timeout": 5.0, "max_connections": 50},
        id="none-keeps-defaults",
    ),
    pytest.param(
        {
            "result_backend": f"sentinel://:{PASSWORD}@h1:26379/1;sentinel://h2:26380/1",
            "result_backend_transport_options": {
                "master_name": "mymaster",
                "min_other_sentinels": 1,
                "sentinel_kwargs": {"password": "sentinel-pw", "username": "sentinel-user"},
            },
        },
        {
            "url": "sentinel://h1:26379/1;sentinel://h2:26380/1",
            "target.kind": "sentinel",
            "target.hosts": (("h1", 26379), ("h2", 26380)),
            "master_name": "mymaster",
            "min_other_sentinels": 1,
            "password": PASSWORD,
            "db": 1,
            "sentinel_kwargs.username": "sentinel-user",
            "sentinel_kwargs.password": "sentinel-pw",
            "sentinel_kwargs.ssl": None,
        },
        id="sentinel-passwords",
    ),
    pytest.param(
        {
            "result_backend": SENTINELS,
            "redis_password": PASSWORD,
            "redis_backend_use_ssl": {
                "ssl_cert_reqs": "CERT_REQUIRED",
                "ssl_ca_certs": "/data.pem",
            },
            "result_backend_transport_options": {
                "master_name": "mymaster",
                "sentinel_kwargs": {
                    "ssl": True,
                    "ssl_cert_reqs": "CERT_REQUIRED",
                    "ssl_ca_certs": "/sentinel.pem",
                    "socket_timeout": 0.5,
                },
            },
        },
        {
            "url": SENTINELS,
            "password": PASSWORD,
            "ssl.ca_certs": "/data.pem",
            "sentinel_kwargs.ssl.cert_reqs": "required",
            "sentinel_kwargs.ssl.ca_certs": "/sentinel.pem",
            "sentinel_kwargs.socket_timeout": 0.5,
            "sentinel_kwargs.password": None,
        },
        id="sentinel-tls-both-sides",
    ),
    pytest.param(
        {
            "result_backend": "redis://cache/0",
            "result_backend_transport_options": {
                "master_name": "ignored",
                "global_keyprefix": "app",
            },
        },
        {"master_name": None, "global_keyprefix": "app_"},
        id="keyprefix-and-non-sentinel-master_name-ignored-like-celery",
    ),
    pytest.param(
        {
            "result_backend": "redis://cache/0",
            "result_backend_transport_options": {"global_keyprefix": "tenant:"},
        },
        {"global_keyprefix": "tenant:"},
        id="keyprefix-with-separator",
    ),
    pytest.param(
        {"result_backend": "redis://cache/0", "result_expires": 3600},
        {"result_expires": timedelta(hours=1), "result_failure_expires": timedelta(hours=1)},
        id="expires-seconds",
    ),
    pytest.param(
        {
            "result_backend": "redis://cache/0",
            "result_expires": timedelta(minutes=5),
            "result_failure_expires": timedelta(days=7),
        },
        {"result_expires": timedelta(minutes=5), "result_failure_expires": timedelta(days=7)},
        id="expires-timedelta-and-failure-expires",
    ),
    pytest.param(
        {"result_backend": "redis://cache/0", "result_expires": 90.7},
        {"result_expires": timedelta(seconds=90)},
        id="expires-whole-seconds-like-celery",
    ),
    pytest.param(
        {"result_backend": "redis://cache/0", "result_expires": None},
        {"result_expires": None, "result_failure_expires": None},
        id="expires-none-never",
    ),
    pytest.param(
        {"result_backend": "redis://cache/0", "result_expires": 0},
        {"result_expires": None},
        id="expires-zero-never",
    ),
    pytest.param(
        {"result_backend": "redis+socket:///run/redis.sock?virtual_host=3"},
        {"target.kind": "unix", "target.path": "/run/redis.sock", "db": 3},
        id="redis+socket",
    ),
    pytest.param(
        {"result_backend": "socket:///run/redis.sock"},
        {"target.kind": "unix", "target.path": "/run/redis.sock", "db": 0},
        id="socket",
    ),
    pytest.param(
        {
            "CELERY_RESULT_BACKEND": "redis://cache/5",
            "CELERY_TASK_RESULT_EXPIRES": 60,
            "CELERY_REDIS_MAX_CONNECTIONS": 9,
            "CELERY_REDIS_PASSWORD": PASSWORD,
            "CELERY_RESULT_BACKEND_TRANSPORT_OPTIONS": {"global_keyprefix": "old"},
        },
        {
            "url": "redis://cache/5",
            "result_expires": timedelta(minutes=1),
            "max_connections": 9,
            "password": PASSWORD,
            "global_keyprefix": "old_",
        },
        id="old-uppercase-names",
    ),
    pytest.param(
        {"CELERY_RESULT_BACKEND": "redis://cache/0", "CELERY_RESULT_EXPIRES": 120},
        {"result_expires": timedelta(minutes=2)},
        id="django-namespace",
    ),
    pytest.param(
        {"result_backend": "redis://cache/0", "result_serializer": "json"},
        {"url": "redis://cache/0"},
        id="json-serializer",
    ),
    pytest.param(
        {"result_backend": "redis://"},
        {"url": "redis://localhost", "target.hosts": (("localhost", 6379),)},
        id="bare-redis-url-uses-localhost",
    ),
    pytest.param(
        {"result_backend": f"redis://:{PASSWORD}@/1", "redis_host": "cache", "redis_port": 6380},
        {
            "url": "redis://cache:6380/1",
            "target.hosts": (("cache", 6380),),
            "db": 1,
            "password": PASSWORD,
        },
        id="url-without-host-uses-redis-host-and-port",
    ),
    pytest.param(
        {"result_backend": "rediss://:6390/2", "redis_host": "::1", "redis_port": 6380},
        {"url": "rediss://[::1]:6390/2", "target.hosts": (("::1", 6390),), "db": 2},
        id="url-port-wins-over-redis-port",
    ),
]


@pytest.mark.parametrize(("conf", "expected"), CASES)
def test_celery_config_becomes_settings(conf: dict[str, Any], expected: dict[str, Any]) -> None:
    """Each Celery configuration becomes the settings in the table; passwords stay secret."""
    settings = StoreSettings.from_celery(conf)
    for path, value in expected.items():
        assert attribute(settings, path) == value, path
    assert PASSWORD not in repr(settings)
    assert PASSWORD not in settings.url
    assert PASSWORD not in settings.model_dump_json()


ERRORS: list[Any] = [
    pytest.param({"result_backend": "rpc://"}, "rpc:// is not supported", id="rpc"),
    pytest.param(
        {"result_backend": "db+sqlite:///results.db"}, "db+sqlite:// is not supported", id="db"
    ),
    pytest.param(
        {"result_backend": f"db+postgresql://u:{PASSWORD}@db/x"},
        "db+postgresql:// is not supported",
        id="db-with-password",
    ),
    pytest.param({"result_backend": "cache+memory://"}, "Redis/Valkey", id="cache-memory"),
    pytest.param({"result_backend": "disabled"}, "'disabled' is not supported", id="disabled"),
    pytest.param(
        {"result_backend": f"user:{PASSWORD}@cache:6379/0"},
        "(not shown) is not supported",
        id="no-scheme-not-shown",
    ),
    pytest.param({"broker_url": "redis://cache/0"}, "no result_backend", id="no-backend"),
    pytest.param({"result_backend": object()}, "must be a url", id="not-a-string"),
    pytest.param(
        {"result_backend": "redis://cache:99999/0"}, "invalid Celery result_backend", id="bad-port"
    ),
    pytest.param(
        {"result_backend": "redis://cache/0", "result_serializer": "pickle"},
        "JSON results only",
        id="pickle-serializer",
    ),
    pytest.param(
        {"result_backend": "redis://cache/0", "redis_backend_credential_provider": "x.Provider"},
        "redis_backend_credential_provider is not supported",
        id="credential-provider",
    ),
    pytest.param(
        {"result_backend": "rediss://cache/0", "redis_backend_use_ssl": {"ssl_ciphers": "HIGH"}},
        "ssl_ciphers",
        id="unknown-ssl-option",
    ),
    pytest.param(
        {
            "result_backend": SENTINELS,
            "result_backend_transport_options": {
                "master_name": "m",
                "sentinel_kwargs": {"ssl_ca_certs": "/ca.pem"},
            },
        },
        "add ssl=True",
        id="sentinel-ssl-options-without-ssl",
    ),
    pytest.param(
        {
            "result_backend": SENTINELS,
            "result_backend_transport_options": {
                "master_name": "m",
                "sentinel_kwargs": {"db": 3},
            },
        },
        "does not support: db",
        id="sentinel-kwargs-unknown",
    ),
    pytest.param({"result_backend": SENTINELS}, "master_name", id="sentinel-without-master"),
    pytest.param(
        {"result_backend": "redis://cache/0", "result_expires": "soon"},
        "result_expires must be a number of seconds",
        id="bad-expires",
    ),
    pytest.param(
        {"result_backend": "redis://cache/0", "result_expires": -5},
        "expiry cannot be negative",
        id="negative-expires",
    ),
    pytest.param(
        {"result_backend": "redis+socket:///run/redis.sock", "redis_backend_use_ssl": True},
        "use rediss://",
        id="ssl-on-unix-socket",
    ),
]


@pytest.mark.parametrize(("conf", "fragment"), ERRORS)
def test_unusable_celery_config_is_a_clear_error(conf: dict[str, Any], fragment: str) -> None:
    """Configurations resultstore cannot honour raise a ValueError saying why, without secrets."""
    with pytest.raises(ValueError) as info:
        StoreSettings.from_celery(conf)
    assert fragment in str(info.value)
    assert PASSWORD not in str(info.value)


def test_from_celery_ignores_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Like from_url, the Celery configuration is the only source: RESULTSTORE_* is not read."""
    monkeypatch.setenv("RESULTSTORE_MAX_CONNECTIONS", "3")
    monkeypatch.setenv("RESULTSTORE_GLOBAL_KEYPREFIX", "env")
    settings = StoreSettings.from_celery({"result_backend": "redis://cache/0"})
    assert settings.max_connections == 50
    assert settings.global_keyprefix == ""


# --- a real Celery app's configuration ------------------------------------------------------


def test_app_conf_of_a_real_celery_app() -> None:
    """``app.conf`` works as the mapping, Celery's defaults included (120 s socket timeout)."""
    app = _app(f"redis://:{PASSWORD}@cache:6380/2")
    app.conf.update(
        redis_max_connections=20,
        redis_backend_use_ssl={"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_ca_certs": "/ca.pem"},
        result_backend_transport_options={"global_keyprefix": "svc"},
        result_expires=timedelta(hours=2),
    )
    try:
        settings = StoreSettings.from_celery(app.conf)
    finally:
        app.close()
    assert settings.url == "rediss://cache:6380/2"
    assert settings.password is not None
    assert settings.password.get_secret_value() == PASSWORD
    assert settings.db == 2
    assert settings.ssl is not None
    assert (settings.ssl.cert_reqs, settings.ssl.ca_certs) == ("required", "/ca.pem")
    assert settings.max_connections == 20
    assert settings.global_keyprefix == "svc_"
    assert settings.result_expires == timedelta(hours=2)
    assert settings.socket_timeout == 120.0  # Celery's default redis_socket_timeout
    assert settings.socket_keepalive is False  # Celery's default redis_socket_keepalive


def test_app_conf_with_old_setting_names() -> None:
    """An app configured with pre-4.0 upper-case names (config_from_object) works too."""
    app = celery.Celery("old", set_as_current=False)
    app.config_from_object(
        {
            "BROKER_URL": "memory://",
            "CELERY_RESULT_BACKEND": "redis://cache/7",
            "CELERY_TASK_RESULT_EXPIRES": 30,
            "CELERY_REDIS_MAX_CONNECTIONS": 4,
        }
    )
    try:
        settings = StoreSettings.from_celery(app.conf)
    finally:
        app.close()
    assert (settings.url, settings.db, settings.max_connections) == ("redis://cache/7", 7, 4)
    assert settings.result_expires == timedelta(seconds=30)


def test_app_without_a_result_backend() -> None:
    """A Celery app without a result backend gets the "no result_backend" error."""
    app = _app()
    try:
        with pytest.raises(ValueError, match="no result_backend"):
            StoreSettings.from_celery(app.conf)
    finally:
        app.close()


AGREE: list[Any] = [
    pytest.param({"backend": "redis://cache:6380/2"}, id="tcp"),
    pytest.param(
        {
            "backend": "redis://u:pw@cache/1",
            "redis_max_connections": 5,
            "redis_socket_timeout": 3,
            "redis_retry_on_timeout": True,
            "redis_socket_keepalive": True,
            "redis_client_name": "x",
            "redis_backend_health_check_interval": 15,
            "result_expires": 77,
            "result_backend_transport_options": {"global_keyprefix": "k"},
        },
        id="options",
    ),
    pytest.param(
        {"backend": "redis", "redis_host": "cache", "redis_port": 6390, "redis_db": 4},
        id="alias",
    ),
    pytest.param(
        {
            "backend": "rediss://cache:6380/0?ssl_cert_reqs=CERT_REQUIRED",
            "redis_backend_use_ssl": {"ssl_ca_certs": "/ca.pem", "ssl_certfile": "/c.pem"},
        },
        id="tls",
    ),
    pytest.param(
        {
            "backend": "redis://cache/0",
            "redis_backend_use_ssl": {"ssl_cert_reqs": ssl.CERT_NONE},
        },
        id="redis-url-with-use-ssl",
    ),
    pytest.param({"backend": "redis+socket:///run/redis.sock?virtual_host=2"}, id="socket"),
    pytest.param({"backend": "redis://:pw@/1"}, id="url-without-host"),
    pytest.param(
        {"backend": "redis://:pw@/2", "redis_host": "cache", "redis_port": 6380},
        id="url-without-host-with-redis-host",
    ),
    pytest.param(
        {
            "backend": "sentinel://:pw@h1:26379/1;sentinel://:pw@h2:26380/1",
            "result_backend_transport_options": {"master_name": "m"},
        },
        id="sentinel",
    ),
]


@pytest.mark.parametrize("conf", AGREE)
def test_celery_redis_backend_agrees(conf: dict[str, Any]) -> None:
    """Celery 5.7's own RedisBackend, built from the same configuration (no I/O), computes the
    same host, db, credentials, TLS options, pool and socket options, key prefix and expiry."""
    conf = dict(conf)
    app = _app(conf.pop("backend"), **conf)
    try:
        backend = app.backend
        settings = StoreSettings.from_celery(app.conf)
    finally:
        app.close()
    params = backend.connparams
    target = settings.target
    if target.kind == "sentinel":
        assert [(h["host"], h["port"]) for h in params["hosts"]] == list(target.hosts)
        assert settings.master_name == backend._transport_options["master_name"]
    elif target.kind == "unix":
        assert params["path"] == target.path
    else:
        assert (params["host"], params["port"]) == target.hosts[0]
    assert params["db"] == settings.db
    assert params.get("username") == settings.username
    password = settings.password.get_secret_value() if settings.password else None
    assert params.get("password") == password
    assert params["max_connections"] == (
        settings.max_connections if params["max_connections"] else None
    )
    assert params["socket_timeout"] == settings.socket_timeout
    assert params["retry_on_timeout"] == settings.retry_on_timeout
    assert params.get("socket_keepalive", False) == settings.socket_keepalive
    assert params.get("health_check_interval", 0) == settings.health_check_interval
    assert params["client_name"] == settings.client_name
    if settings.ssl is None:
        assert "ssl_cert_reqs" not in params
    else:
        assert params["ssl_cert_reqs"].name == f"CERT_{settings.ssl.cert_reqs.upper()}"
        for field in ("ca_certs", "certfile", "keyfile"):
            assert params.get(f"ssl_{field}") == getattr(settings.ssl, field)
    assert backend.task_keyprefix.decode() == settings.global_keyprefix + settings.key_prefix
    expires = settings.result_expires
    assert backend.expires == (int(expires.total_seconds()) if expires else None)


# --- round trips on real servers: Celery writes, the store reads ----------------------------


@pytest.fixture
def close_apps() -> Iterator[list[Any]]:
    """Celery apps to close (with their backend's connections) after the test."""
    apps: list[Any] = []
    yield apps
    for app in apps:
        app.backend.client.connection_pool.disconnect()
        app.close()


async def _celery_writes_store_reads(app: Any) -> None:
    """Celery's backend stores a result; a store built from ``app.conf`` reads and awaits it."""
    task_id = str(uuid.uuid4())
    app.backend.store_result(task_id, {"sum": 5}, states.SUCCESS)
    async with ResultStore(StoreSettings.from_celery(app.conf)) as store:
        meta = await store.wait_for(task_id, timeout=10)
        assert (meta.status, meta.result) == (states.SUCCESS, {"sum": 5})
        # and the other way round: what the store writes, Celery reads
        back = str(uuid.uuid4())
        await store.set(back, [1, 2])
    assert app.backend.get_task_meta(back)["result"] == [1, 2]


async def test_round_trip_on_a_real_server(
    redis_server: RedisServer, close_apps: list[Any]
) -> None:
    """Celery's backend and the store meet at the same key (global_keyprefix) with the same TTL."""
    app = _app(redis_server.url_for(db=3))
    app.conf.update(
        result_backend_transport_options={"global_keyprefix": "svc"}, result_expires=600
    )
    close_apps.append(app)
    await _celery_writes_store_reads(app)
    with redis_server.client(db=3) as admin:
        keys = admin.keys("*")
        assert len(keys) == 2
        assert all(k.startswith("svc_celery-task-meta-") for k in keys)
        assert all(0 < admin.ttl(k) <= 600 for k in keys)  # both writers used result_expires


async def test_round_trip_over_tls(redis_tls_server: RedisServer, close_apps: list[Any]) -> None:
    """``redis_backend_use_ssl`` with an ``ssl.CERT_REQUIRED`` constant and a CA file."""
    tls = redis_tls_server.tls
    assert tls is not None
    app = _app(f"rediss://{redis_tls_server.host}:{redis_tls_server.port}/0")
    app.conf.update(
        redis_backend_use_ssl={"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_ca_certs": tls.ca_cert}
    )
    close_apps.append(app)
    await _celery_writes_store_reads(app)


async def test_round_trip_through_sentinel_with_passwords(
    redis_launcher: RedisLauncher, close_apps: list[Any]
) -> None:
    """Data-node password (redis_password) and sentinel password (sentinel_kwargs) both apply."""
    try:
        group: SentinelGroup = redis_launcher.sentinel_group(
            password="data-pw", sentinel_password="sentinel-pw"
        )
    except RedisServerNotFoundError as exc:  # Docker only: no Sentinel group
        pytest.skip(str(exc))
    try:
        app = _app(group.url)
        app.conf.update(
            redis_password="data-pw",
            result_backend_transport_options={
                "master_name": group.master_name,
                "sentinel_kwargs": {"password": "sentinel-pw"},
            },
        )
        close_apps.append(app)
        await _celery_writes_store_reads(app)
    finally:
        for node in group.nodes:
            node.kill()
