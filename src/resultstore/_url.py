"""Pure parsing of resultstore connection URLs (no I/O, no redis, no pydantic).

Accepted forms (the scheme is case-insensitive)::

    redis://[user][:password]@host[:port][/db][?options]    TCP, port 6379 by default
    rediss://...                                            TLS
    unix:///path/redis.sock?db=N                            Unix socket; Celery's spellings
    socket:///path?virtual_host=N, redis+socket:///path      socket:// and redis+socket:// too
    sentinel://h1:26379/0;sentinel://h2:26379/0              Sentinel, parts separated by ';'
    memory://                                               in-process backend

Every error is a ``ValueError`` whose message says what is wrong and how to fix it, and never
contains the password.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal
from urllib.parse import unquote, unquote_plus

__all__ = ["ParsedURL", "parse_url", "redact_url", "remove_password"]

Kind = Literal["tcp", "tls", "unix", "sentinel", "memory"]

_SCHEMES: dict[str, Kind] = {
    "redis": "tcp",
    "rediss": "tls",
    "unix": "unix",
    "socket": "unix",
    "redis+socket": "unix",
    "sentinel": "sentinel",
    "memory": "memory",
}
_DEFAULT_PORTS = {"tcp": 6379, "tls": 6379, "sentinel": 26379}
_SSL_KEYS = {"ssl_cert_reqs", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_check_hostname"}
_KNOWN_KEYS = _SSL_KEYS | {"db", "virtual_host", "socket_timeout", "socket_connect_timeout"}
_KNOWN_KEYS |= {"socket_keepalive", "retry_on_timeout", "health_check_interval", "client_name"}
_KNOWN_KEYS |= {"max_connections", "master_name", "wait_replicas", "wait_replicas_timeout"}
_SCHEME_RE = re.compile(r"\s*([A-Za-z][A-Za-z0-9+.\-]*)://")
# A ';' starts a new part only when a scheme follows, so a ';' inside a password stays put.
_PART_SEP_RE = re.compile(r";(?=\s*[A-Za-z][A-Za-z0-9+.\-]*://)")
# A ',' followed by a scheme: sentinel urls joined with ',' instead of ';'.
_COMMA_URL_RE = re.compile(r",\s*[A-Za-z][A-Za-z0-9+.\-]*://")
_SAFE_KEY_RE = re.compile(r"[a-z0-9_.\-]{1,64}")
_BAD_HOST_CHARS = frozenset(' []@/?#;,\\"<>{}|^`%')
_SCHEME_HINT = "redis://, rediss://, unix://, socket://, redis+socket://, sentinel:// or memory://"
_SENTINEL_HINT = "separate sentinel urls with ';' like sentinel://h1:26379;sentinel://h2:26379"


@dataclass(frozen=True, slots=True)
class ParsedURL:
    """The parts of a connection URL.

    Attributes:
        kind: the transport: ``tcp``, ``tls``, ``unix``, ``sentinel`` or ``memory``.
        hosts: ``(host, port)`` pairs: one for tcp/tls, one or more sentinels, empty otherwise.
            IPv6 hosts are given without brackets.
        path: the Unix socket path (percent-decoded), else ``None``.
        db: the database number from ``/N``, ``?db=N`` or ``?virtual_host=N``; ``None`` if absent.
        username: the percent-decoded user name, or ``None``.
        password: the percent-decoded password, or ``None``. Never shown in any message.
        query: the other known query options (lower-cased keys, decoded values).
    """

    kind: Kind
    hosts: tuple[tuple[str, int], ...]
    path: str | None
    db: int | None
    username: str | None
    password: str | None
    query: Mapping[str, str]


def parse_url(url: str) -> ParsedURL:
    """Parse a resultstore connection URL.

    Args:
        url: one of the forms in this module's docstring; surrounding whitespace is ignored.

    Raises:
        ValueError: the URL is malformed; the message names the problem and the fix, never the
            password.
    """
    text = url.strip()
    if not text:
        raise ValueError("the url is empty; give one such as redis://localhost:6379/0")
    if "#" in text:
        raise ValueError("the url contains '#'; percent-encode it as %23 (say, in the password)")
    parts = _PART_SEP_RE.split(text)
    scheme, rest = _split_scheme(parts[0])
    kind = _SCHEMES.get(scheme)
    if kind is None:
        shown = scheme if len(scheme) <= 20 else scheme[:20] + "..."
        raise ValueError(f"url scheme {shown!r} is not supported; use {_SCHEME_HINT}")
    if len(parts) > 1 and kind != "sentinel":
        raise ValueError("only sentinel:// urls can be joined with ';'; give a single url")
    if kind == "memory":
        if rest.strip() not in ("", "/"):
            raise ValueError("memory:// takes no host, path or options; write exactly memory://")
        return ParsedURL("memory", (), None, None, None, None, MappingProxyType({}))
    if kind == "sentinel":
        return _parse_sentinel(parts)
    return _parse_single(kind, rest)


def _split_scheme(part: str) -> tuple[str, str]:
    match = _SCHEME_RE.match(part)
    if match is None:
        raise ValueError(f"the url has no scheme; start it with one of {_SCHEME_HINT}")
    return match.group(1).lower(), part[match.end() :]


def _netloc_end(rest: str) -> int:
    return min((i for i in (rest.find("/"), rest.find("?")) if i != -1), default=len(rest))


def _split_rest(rest: str) -> tuple[str | None, str | None, str, str, str]:
    """Split ``[user][:pass]@hostport/path?query`` into user, password, hostport, path, query."""
    end = _netloc_end(rest)
    netloc, (path, _, query) = rest[:end], rest[end:].partition("?")
    userinfo, _, hostport = netloc.rpartition("@")
    user, colon, password = userinfo.partition(":")
    password = unquote(password) if colon else ""
    return unquote(user) or None, password or None, hostport, path, query


def _parse_single(kind: Kind, rest: str) -> ParsedURL:
    username, password, hostport, path, query_text = _split_rest(rest)
    if kind != "unix":
        host = _host_port(hostport, _DEFAULT_PORTS[kind])
        query = _parse_query(query_text, kind, password)
        db = _one_db(_path_and_query_db(path, query))
        return ParsedURL(kind, (host,), None, db, username, password, MappingProxyType(query))
    if hostport:
        raise ValueError("unix socket urls take no host; write unix:///path/to/redis.sock")
    query = _parse_query(query_text, kind, password)
    socket_path = unquote(path)
    if socket_path in ("", "/"):
        raise ValueError("the unix socket url has no path; write unix:///path/to/redis.sock")
    db = _one_db([_db(query.pop(k), f"?{k}=") for k in ("db", "virtual_host") if k in query])
    return ParsedURL(kind, (), socket_path, db, username, password, MappingProxyType(query))


def _parse_sentinel(parts: list[str]) -> ParsedURL:
    hosts: list[tuple[str, int]] = []
    users: set[str] = set()
    passwords: set[str] = set()
    dbs: set[int] = set()
    query: dict[str, str] = {}
    for part in parts:
        scheme, rest = _split_scheme(part)
        if scheme != "sentinel":
            raise ValueError(
                f"each part of a sentinel url must start with sentinel://; {_SENTINEL_HINT}"
            )
        if _COMMA_URL_RE.search(rest):
            raise ValueError(f"sentinel urls cannot be separated by ','; {_SENTINEL_HINT}")
        username, password, hostport, path, query_text = _split_rest(rest)
        if "," in hostport:
            raise ValueError(f"sentinel nodes cannot be separated by ','; {_SENTINEL_HINT}")
        hosts.append(_host_port(hostport, _DEFAULT_PORTS["sentinel"]))
        part_query = _parse_query(query_text, "sentinel", password)
        users.update(filter(None, [username]))
        passwords.update(filter(None, [password]))
        dbs.update(_path_and_query_db(path, part_query))
        for key, value in part_query.items():
            if query.setdefault(key, value) != value:
                raise ValueError(
                    f"the sentinel urls disagree on `{key}`; give the same in every part"
                )
    for name, count in (("user name", len(users)), ("password", len(passwords)), ("db", len(dbs))):
        if count > 1:
            raise ValueError(
                f"the sentinel urls disagree on the {name}; give the same in every part"
            )
    username, password = next(iter(users), None), next(iter(passwords), None)
    db = next(iter(dbs), None)
    return ParsedURL(
        "sentinel", tuple(hosts), None, db, username, password, MappingProxyType(query)
    )


def _parse_query(text: str, kind: Kind, password: str | None) -> dict[str, str]:
    query: dict[str, str] = {}
    for item in filter(None, text.split("&")):
        raw_key, eq, raw_value = item.partition("=")
        key = unquote_plus(raw_key).strip().lower()
        secret = password and (key in password or password in key)
        shown = f"`{key}`" if _SAFE_KEY_RE.fullmatch(key) and not secret else "(not shown)"
        if key not in _KNOWN_KEYS:
            known = ", ".join(sorted(_KNOWN_KEYS))
            raise ValueError(f"unknown url option {shown}; remove it or use one of: {known}")
        if key in query:
            raise ValueError(f"url option {shown} is given twice; give it once")
        if not eq or not raw_value:
            raise ValueError(f"url option {shown} has no value; write {key}=<value> or remove it")
        _check_key_fits(key, kind)
        query[key] = unquote_plus(raw_value)
    return query


def _check_key_fits(key: str, kind: Kind) -> None:
    if key in _SSL_KEYS and kind == "sentinel":
        problem = (
            "cannot be used on sentinel urls; use the `ssl` setting for TLS to the data nodes"
            " and `sentinel_kwargs.ssl` for TLS to the sentinels"
        )
    elif key in _SSL_KEYS and kind != "tls":
        problem = "needs a TLS connection; use rediss:// for TLS"
    elif key == "virtual_host" and kind != "unix":
        problem = "only applies to unix socket urls; give the db as /N instead"
    elif key == "master_name" and kind != "sentinel":
        problem = "only applies to sentinel:// urls; remove it or use a sentinel url"
    else:
        return
    raise ValueError(f"url option `{key}` {problem}")


def _host_port(hostport: str, default_port: int) -> tuple[str, int]:
    host, colon, port_text = hostport.partition(":")
    if hostport.startswith("["):
        host, bracket, after = hostport[1:].partition("]")
        if not bracket:
            raise ValueError("the IPv6 host has no closing ']'; write it like [::1]:6379")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError("the host in [] is not an IPv6 address; write it like [::1]") from None
        if after and not after.startswith(":"):
            raise ValueError("unexpected text after the IPv6 host; write it like [::1]:6379")
        colon, port_text = after[:1], after[1:]
    elif not host:
        raise ValueError(
            "the url has no host; write one like redis://host:6379 (IPv6 hosts go in [])"
        )
    elif not host.isprintable() or not _BAD_HOST_CHARS.isdisjoint(host):
        raise ValueError(
            "the host contains characters that are not allowed; give a host name or IP address"
            " and percent-encode special characters in the user name or password"
        )
    if not colon:
        return host, default_port
    valid = port_text.isascii() and port_text.isdigit() and len(port_text) <= 5
    if not (valid and 1 <= int(port_text) <= 65535):
        raise ValueError("the port must be a number from 1 to 65535; fix it or leave it out")
    return host, int(port_text)


def _path_and_query_db(path: str, query: dict[str, str]) -> list[int]:
    dbs = [] if path in ("", "/") else [_db(path[1:], "path")]
    return dbs + ([_db(query.pop("db"), "?db=")] if "db" in query else [])


def _db(text: str, where: str) -> int:
    if text.isascii() and text.isdigit() and len(text) <= 9:
        return int(text)
    if text.startswith("-"):
        raise ValueError(f"the db in the url {where} cannot be negative; use a number 0 or more")
    raise ValueError(f"the db in the url {where} must be a whole number 0 or more, like /0")


def _one_db(dbs: list[int]) -> int | None:
    if len(set(dbs)) > 1:
        raise ValueError("the url gives the db twice with different values; give it once")
    return dbs[0] if dbs else None


def redact_url(url: str) -> str:
    """Return ``url`` with every password replaced by ``***``; never raises, whatever the text.

    A URL that :func:`parse_url` accepts keeps everything but its password(s). For any other text
    (say, a password holding an unencoded '/' or '?'), everything from the first ':' of the user
    info to the last '@' is hidden: more than the password rather than less.
    """
    try:
        try:
            parse_url(url)
        except ValueError:
            scheme = _SCHEME_RE.match(url)
            skip = scheme.end() - 3 if scheme else -1  # the ':' of a leading "scheme://"
            at = url.rfind("@")
            colon = next((i for i in range(at) if url[i] == ":" and i != skip), -1)
            return url if colon == -1 else f"{url[: colon + 1]}***{url[at:]}"
        return _replace_passwords(url, remove=False)
    except Exception:  # pragma: no cover - a last resort; the code above only slices strings
        return "<url not shown>"


def remove_password(url: str) -> str:
    """Return ``url`` without its password(s), keeping everything else (user name included).

    ``redis://:pw@host/0`` becomes ``redis://host/0``; ``redis://user:pw@host`` becomes
    ``redis://user@host``. Meant for URLs that :func:`parse_url` accepts.
    """
    return _replace_passwords(url.strip(), remove=True)


def _replace_passwords(url: str, *, remove: bool) -> str:
    """Hide or drop the password of each ';'-separated part, split exactly as parse_url does."""
    pieces: list[str] = []
    for part in _PART_SEP_RE.split(url):
        match = _SCHEME_RE.match(part)
        head = match.end() if match else 0
        at = part.rfind("@", head, head + _netloc_end(part[head:]))
        colon = part.find(":", head, at)
        if at == -1 or colon == -1 or colon + 1 == at:
            pieces.append(part)
        elif not remove:
            pieces.append(f"{part[: colon + 1]}***{part[at:]}")
        elif colon == head:  # no user name left: drop the whole "userinfo@"
            pieces.append(part[:head] + part[at + 1 :])
        else:
            pieces.append(part[:colon] + part[at:])
    return ";".join(pieces)
