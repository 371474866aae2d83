"""Translate a Celery app's configuration into ``StoreSettings`` arguments (pure: no I/O, no redis).

``StoreSettings.from_celery(app.conf)`` calls :func:`celery_settings` and passes the result to
``StoreSettings.from_url``. The keys read, and what they become (Celery 5.7's Redis backend,
``celery/backends/redis.py``, reads the same keys)::

    result_backend                    url (redis, rediss, sentinel, redis+socket, socket, unix);
                                      the bare alias "redis" builds the url from redis_host,
                                      redis_port, redis_db
    redis_backend_use_ssl             ssl (ssl_cert_reqs, ssl_ca_certs, ssl_certfile, ssl_keyfile,
                                      ssl_check_hostname); with a redis:// url it switches to
                                      rediss://, as Celery connects over TLS then too
    redis_username, redis_password    username, password (the url's own ones win, as in Celery)
    redis_max_connections             max_connections
    redis_socket_timeout              socket_timeout
    redis_socket_connect_timeout      socket_connect_timeout
    redis_socket_keepalive            socket_keepalive
    redis_retry_on_timeout            retry_on_timeout
    redis_backend_health_check_interval  health_check_interval
    redis_client_name                 client_name
    result_backend_transport_options  master_name, sentinel_kwargs, min_other_sentinels (sentinel
                                      urls only, as in Celery), global_keyprefix
    result_expires                    result_expires (seconds or timedelta, cut to whole seconds as
                                      Celery does; None or 0: no expiry)
    result_failure_expires            result_failure_expires (None: same as result_expires)
    result_serializer                 checked: resultstore reads and writes JSON only

Each key is also looked up under Celery's old upper-case name (``CELERY_RESULT_BACKEND``,
``CELERY_TASK_RESULT_EXPIRES``, ``CELERY_REDIS_MAX_CONNECTIONS``...) and with the ``CELERY_``
namespace of Django projects (``CELERY_RESULT_EXPIRES``); ``app.conf`` resolves those itself.
A key that is missing or ``None`` keeps resultstore's default (``result_expires`` excepted:
``None`` means no expiry). Note that ``app.conf`` carries Celery's defaults, so a store built from
it gets Celery's ``redis_socket_timeout`` of 120 s and keepalive off. Celery's connect timeout
default (``None``, wait forever) is not copied: resultstore keeps its 5 s.

Every error is a ``ValueError`` (a wrong type too, as pydantic's errors are) that names the Celery
setting and never shows a password.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import timedelta
from typing import Any, Final

from resultstore._url import parse_url

__all__ = ["celery_settings"]

_MISSING: Final[Any] = object()
# Celery's pre-4.0 names of the settings read here (celery.app.defaults._TO_OLD_KEY).
_OLD_NAMES: Final = {"result_expires": "CELERY_TASK_RESULT_EXPIRES"}
_REDIS_SCHEMES: Final = frozenset({"redis", "rediss", "sentinel", "socket", "redis+socket", "unix"})
_NAME_RE: Final = re.compile(r"[a-z][a-z0-9+.\-]{0,29}")
_SUPPORTED: Final = "redis://, rediss://, sentinel://, redis+socket:// or socket://"
# Celery's redis_* setting -> the StoreSettings field it fills (None values keep our default).
_PLAIN_OPTIONS: Final = {
    "redis_max_connections": "max_connections",
    "redis_socket_timeout": "socket_timeout",
    "redis_socket_connect_timeout": "socket_connect_timeout",
    "redis_socket_keepalive": "socket_keepalive",
    "redis_retry_on_timeout": "retry_on_timeout",
    "redis_backend_health_check_interval": "health_check_interval",
    "redis_client_name": "client_name",
}
_TLS_KEYS: Final = {
    "ssl_cert_reqs": "cert_reqs",
    "ssl_ca_certs": "ca_certs",
    "ssl_certfile": "certfile",
    "ssl_keyfile": "keyfile",
    "ssl_check_hostname": "check_hostname",
}
_SENTINEL_KEYS: Final = frozenset(
    {"username", "password", "socket_timeout", "socket_connect_timeout", "ssl", *_TLS_KEYS}
)


def celery_settings(conf: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """The url and keyword options for ``StoreSettings.from_url``, read from a Celery config.

    Args:
        conf: ``app.conf`` of a Celery app, or any mapping of Celery setting names.

    Raises:
        ValueError: no result backend, a backend that is not Redis/Valkey, or a setting that
            resultstore cannot honour; the message names the setting and the fix.
    """
    url = _backend_url(conf)
    options: dict[str, Any] = {}
    for celery_name, field in _PLAIN_OPTIONS.items():
        if (value := _get(conf, celery_name)) is not None:
            options[field] = value
    if _get(conf, "redis_backend_credential_provider") is not None:
        raise ValueError(
            "redis_backend_credential_provider is not supported by resultstore; give"
            " redis_username and redis_password (or put them in result_backend) instead"
        )
    _check_serializer(conf)

    use_ssl = _get(conf, "redis_backend_use_ssl")
    if use_ssl:
        options["ssl"] = _tls(use_ssl, "redis_backend_use_ssl")
        if url[:8].lower() == "redis://":  # Celery connects over TLS then: so do we
            url = "rediss://" + url[8:]

    try:
        target = parse_url(url)
    except ValueError as exc:
        raise ValueError(f"invalid Celery result_backend: {exc}") from None
    # The url's user name and password win over redis_username/redis_password (Celery's rule).
    if target.username is None and (username := _get(conf, "redis_username")) is not None:
        options["username"] = username
    if target.password is None and (password := _get(conf, "redis_password")) is not None:
        options["password"] = password

    transport = _get(conf, "result_backend_transport_options")
    if transport is not None:
        options.update(_transport_options(transport, sentinel=target.kind == "sentinel"))
    for name in ("result_expires", "result_failure_expires"):
        value = _get(conf, name)
        if value is not _MISSING and (value is not None or name == "result_expires"):
            options[name] = _expires(value, name)
    return url, options


def _get(conf: Mapping[str, Any], name: str) -> Any:
    """The value of setting ``name`` under its new, Django-namespaced or old name.

    A name holding ``None`` gives way to another name holding a value. An absent
    ``result_expires`` gives ``_MISSING`` (there ``None`` means no expiry), other absent
    settings ``None``. ``get`` rather than ``in``: ``key in app.conf`` can be False for a
    setting Celery has not loaded yet.
    """
    found: Any = _MISSING
    for key in (name, f"CELERY_{name.upper()}", _OLD_NAMES.get(name)):
        value = _MISSING if key is None else conf.get(key, _MISSING)
        if value is not _MISSING:
            if value is not None:
                return value
            found = None
    if found is _MISSING and not (name.startswith("result_") and name.endswith("expires")):
        return None
    return found


def _backend_url(conf: Mapping[str, Any]) -> str:
    backend = _get(conf, "result_backend")
    if backend is None or backend == "":
        raise ValueError(
            "the Celery configuration has no result_backend; set result_backend to the Redis"
            " url the workers store results in, like redis://localhost:6379/0"
        )
    if not isinstance(backend, str):
        raise ValueError(  # noqa: TRY004 - every configuration error is a ValueError
            f"Celery result_backend must be a url, not a {type(backend).__name__}; resultstore"
            f" reads Redis/Valkey result backends only ({_SUPPORTED})"
        )
    backend = backend.strip()
    scheme, sep, _ = backend.partition("://")
    scheme = scheme.lower() if sep else backend.lower()
    if not sep and scheme in ("redis", "rediss"):
        return _url_from_parts(conf, scheme)
    if not sep or scheme not in _REDIS_SCHEMES:
        # Named only when it looks like a backend name: a mangled url may hold a password.
        named = _NAME_RE.fullmatch(scheme) is not None
        shown = "(not shown)" if not named else f"{scheme}://" if sep else repr(scheme)
        raise ValueError(
            f"the Celery result backend {shown} is not supported: resultstore reads"
            f" Redis/Valkey result backends only; set result_backend to a {_SUPPORTED} url"
        )
    if scheme in ("redis", "rediss"):
        return _with_default_host(conf, backend, len(scheme) + 3)
    return backend


def _with_default_host(conf: Mapping[str, Any], url: str, start: int) -> str:
    """``url`` with Celery's ``redis_host`` (``localhost``) filled in when it names no host,
    and ``redis_port`` when it names no port either: ``redis://`` and ``redis://:pw@/1`` work
    in Celery, which falls back to those settings."""
    end = min(
        (i for i in (url.find("/", start), url.find("?", start)) if i != -1), default=len(url)
    )
    at = url.rfind("@", start, end)
    host_start = at + 1 if at != -1 else start
    hostport = url[host_start:end]
    if hostport and not hostport.startswith(":"):
        return url
    host = str(_get(conf, "redis_host") or "localhost")
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    port = _get(conf, "redis_port")
    if not hostport and port:
        hostport = f":{port}"
    return f"{url[:host_start]}{host}{hostport}{url[end:]}"


def _url_from_parts(conf: Mapping[str, Any], scheme: str) -> str:
    """Celery's ``result_backend = "redis"`` with ``redis_host``, ``redis_port``, ``redis_db``."""
    host = str(_get(conf, "redis_host") or "localhost")
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    port = _get(conf, "redis_port") or 6379
    db = _get(conf, "redis_db") or 0
    return f"{scheme}://{host}:{port}/{db}"


def _check_serializer(conf: Mapping[str, Any]) -> None:
    serializer = _get(conf, "result_serializer")
    if serializer is not None and str(serializer).lower() not in ("json", "application/json"):
        raise ValueError(
            f"Celery result_serializer is {str(serializer)[:30]!r}, but resultstore reads and"
            " writes JSON results only; set result_serializer='json'"
        )


def _tls(value: Any, setting: str) -> dict[str, Any]:
    """Celery's ``ssl_*`` dict (or ``True``) as a ``TLSSettings`` dict."""
    if value is True:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"{setting} must be a dict of ssl_* options (or true)")  # noqa: TRY004
    unknown = sorted(str(k) for k in value if k not in _TLS_KEYS)
    if unknown:
        raise ValueError(
            f"{setting} has options resultstore does not support: {', '.join(unknown)};"
            f" use only {', '.join(_TLS_KEYS)}"
        )
    return {_TLS_KEYS[k]: v for k, v in value.items() if v is not None}


def _transport_options(options: Any, *, sentinel: bool) -> dict[str, Any]:
    if not isinstance(options, Mapping):
        raise ValueError("Celery result_backend_transport_options must be a dict")  # noqa: TRY004
    found: dict[str, Any] = {}
    if options.get("global_keyprefix"):
        found["global_keyprefix"] = options["global_keyprefix"]
    if not sentinel:  # Celery reads the sentinel options for sentinel:// backends only
        return found
    if options.get("master_name") is not None:
        found["master_name"] = options["master_name"]
    if options.get("min_other_sentinels") is not None:
        found["min_other_sentinels"] = options["min_other_sentinels"]
    if options.get("sentinel_kwargs"):
        found["sentinel_kwargs"] = _sentinel_kwargs(options["sentinel_kwargs"])
    return found


def _sentinel_kwargs(value: Any) -> dict[str, Any]:
    """redis-py's ``sentinel_kwargs`` (``password``, ``ssl=True``, ``ssl_*``...) as a
    ``SentinelSettings`` dict."""
    where = "result_backend_transport_options['sentinel_kwargs']"
    if not isinstance(value, Mapping):
        raise ValueError(f"{where} must be a dict")  # noqa: TRY004
    unknown = sorted(str(k) for k in value if k not in _SENTINEL_KEYS)
    if unknown:
        raise ValueError(
            f"{where} has options resultstore does not support: {', '.join(unknown)};"
            f" use only {', '.join(sorted(_SENTINEL_KEYS))}"
        )
    found = {k: v for k, v in value.items() if k != "ssl" and k not in _TLS_KEYS and v is not None}
    tls = {k: v for k, v in value.items() if k in _TLS_KEYS}
    if value.get("ssl"):
        found["ssl"] = _tls(tls, where)
    elif tls:
        raise ValueError(
            f"{where} has ssl_* options but not ssl=True; add ssl=True for TLS to the sentinels"
        )
    return found


def _expires(value: Any, setting: str) -> int | None:
    """Whole seconds, as Celery's Redis backend stores them (``None``: no expiry)."""
    if value is None:
        return None
    try:
        seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
        return int(seconds)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(
            f"Celery {setting} must be a number of seconds or a timedelta; fix {setting}"
        ) from None
