"""Tests for resultstore._url: pure parsing, redaction and password removal."""

from __future__ import annotations

import ast
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resultstore import _url
from resultstore._url import ParsedURL, parse_url, redact_url, remove_password
from support import URLISH

PASSWORD = "hunter2-SECRET"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        pytest.param(
            "redis://user:pw@example.com:6380/3?client_name=api",
            ParsedURL(
                "tcp", (("example.com", 6380),), None, 3, "user", "pw", {"client_name": "api"}
            ),
            id="tcp-full",
        ),
        pytest.param(
            "Redis://h", ParsedURL("tcp", (("h", 6379),), None, None, None, None, {}), id="tcp-bare"
        ),
        pytest.param(
            "rediss://[::1]:7000/2?ssl_cert_reqs=none",
            ParsedURL("tls", (("::1", 7000),), None, 2, None, None, {"ssl_cert_reqs": "none"}),
            id="tls-ipv6",
        ),
        pytest.param(
            "redis://:p%40s%2Fs%3Aw@h?DB=4",
            ParsedURL("tcp", (("h", 6379),), None, 4, None, "p@s/s:w", {}),
            id="percent-decoded-password-and-lowercased-key",
        ),
        pytest.param(
            "unix://u:pw@/tmp/r%20x.sock?db=1&socket_timeout=2",
            ParsedURL("unix", (), "/tmp/r x.sock", 1, "u", "pw", {"socket_timeout": "2"}),
            id="unix",
        ),
        pytest.param(
            "socket:///tmp/r.sock?virtual_host=5",
            ParsedURL("unix", (), "/tmp/r.sock", 5, None, None, {}),
            id="celery-socket-virtual-host",
        ),
        pytest.param(
            "sentinel://:pw@h1/1;sentinel://h2:26380/1?master_name=m",
            ParsedURL(
                "sentinel",
                (("h1", 26379), ("h2", 26380)),
                None,
                1,
                None,
                "pw",
                {"master_name": "m"},
            ),
            id="sentinel-parts-agree",
        ),
        pytest.param(
            "sentinel://:pa;ss@h1;sentinel://h2",
            ParsedURL("sentinel", (("h1", 26379), ("h2", 26379)), None, None, None, "pa;ss", {}),
            id="sentinel-semicolon-inside-password",
        ),
        pytest.param(
            " memory:/// ", ParsedURL("memory", (), None, None, None, None, {}), id="memory"
        ),
    ],
)
def test_parse_url_valid_forms(url: str, expected: ParsedURL) -> None:
    """Every documented URL form parses into its parts, with defaults and percent-decoding."""
    assert parse_url(url) == expected


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        pytest.param("", "the url is empty", id="empty"),
        pytest.param("localhost:6379", "start it with one of redis://", id="no-scheme"),
        pytest.param("http://h", "use redis://", id="unsupported-scheme"),
        pytest.param("redis://h:0", "1 to 65535", id="port-zero"),
        pytest.param("redis://h:65536", "1 to 65535", id="port-too-big"),
        pytest.param("redis://h:\u0661", "1 to 65535", id="port-arabic-digit"),
        pytest.param("redis://h:" + "9" * 5000, "1 to 65535", id="port-huge"),
        pytest.param("redis://[::1", "closing ']'", id="ipv6-unclosed"),
        pytest.param("redis://[nope]:1", "IPv6 address", id="ipv6-invalid"),
        pytest.param("redis://::1", "IPv6 hosts go in []", id="ipv6-without-brackets"),
        pytest.param("redis://h/\u0661", "whole number", id="db-arabic-digit"),
        pytest.param("redis://h?db=-2", "cannot be negative", id="db-negative"),
        pytest.param("redis://h/1?db=2", "give it once", id="db-twice"),
        pytest.param("redis://h?db=1&db=1", "given twice", id="repeated-key"),
        pytest.param("redis://h?db", "has no value", id="key-without-value"),
        pytest.param("redis://h?bogus=1", "unknown url option `bogus`", id="unknown-key"),
        pytest.param("redis://h?ssl_keyfile=/k", "use rediss:// for TLS", id="ssl-on-redis"),
        pytest.param("unix:///s?ssl_ca_certs=/c", "use rediss:// for TLS", id="ssl-on-unix"),
        pytest.param("unix://h/s", "unix:///path", id="unix-with-host"),
        pytest.param("unix://", "has no path", id="unix-without-path"),
        pytest.param("redis://h?virtual_host=1", "unix socket urls", id="virtual-host-on-tcp"),
        pytest.param("redis://h?master_name=m", "sentinel:// urls", id="master-name-on-tcp"),
        pytest.param("sentinel://a:1,b:2", "with ';'", id="sentinel-comma-hosts"),
        pytest.param("sentinel://a:1,sentinel://b:2", "with ';'", id="sentinel-comma-urls"),
        pytest.param(
            "sentinel://h1:26379/0,sentinel://h2:26379/0", "with ';'", id="sentinel-comma-db-urls"
        ),
        pytest.param(
            "sentinel://:pw@h1/0, sentinel://h2/0?master_name=m", "with ';'", id="comma-space-db"
        ),
        pytest.param("sentinel://a;redis://b", "must start with sentinel://", id="mixed-parts"),
        pytest.param("sentinel://a/1;sentinel://b/2", "disagree on the db", id="sentinel-db"),
        pytest.param("sentinel://a?ssl_cert_reqs=none", "sentinel_kwargs.ssl", id="ssl-sentinel"),
        pytest.param("redis://a;redis://b", "only sentinel:// urls", id="semicolon-on-tcp"),
        pytest.param("memory://x", "exactly memory://", id="memory-with-host"),
        pytest.param("redis://:p#w@h", "%23", id="hash"),
    ],
)
def test_parse_url_errors_name_the_fix(url: str, fragment: str) -> None:
    """Each malformed URL raises ValueError whose message contains the fix."""
    with pytest.raises(ValueError) as info:
        parse_url(url)
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        ("redis://user:pw@h:1/0", "redis://user:***@h:1/0"),
        ("redis://:pw@h", "redis://:***@h"),
        ("redis://user@h", "redis://user@h"),
        ("redis://h/0?client_name=a:b@c", "redis://h/0?client_name=a:b@c"),
        ("unix:///tmp/a@b.sock", "unix:///tmp/a@b.sock"),
        ("sentinel://:a@h1;sentinel://:a@h2", "sentinel://:***@h1;sentinel://:***@h2"),
        ("sentinel://:a@h1;sentinel://:b@h2", "sentinel://:***@h2"),
        ("redis://:pa/ss@h", "redis://:***@h"),
        ("redis://:pa?ss@h", "redis://:***@h"),
        ("redis://:pa#ss@h", "redis://:***@h"),
        ("redis://:pa;ss@h", "redis://:***@h"),
        (":pw@h", ":***@h"),
        ("x:pw@redis://h", "x:***@redis://h"),
        ("redis://:pw@h:0", "redis://:***@h:0"),
        ("", ""),
    ],
)
def test_redact_url_hides_every_password(url: str, redacted: str) -> None:
    """redact_url replaces passwords with *** and leaves password-free URLs unchanged."""
    assert redact_url(url) == redacted


@pytest.mark.parametrize(
    ("url", "stripped"),
    [
        ("redis://user:pw@h:1/0?db=0", "redis://user@h:1/0?db=0"),
        ("redis://:pw@h", "redis://h"),
        ("unix:///tmp/x:y@z.sock", "unix:///tmp/x:y@z.sock"),
        ("sentinel://:a@h1;sentinel://u:a@h2", "sentinel://h1;sentinel://u@h2"),
        ("  redis://h  ", "redis://h"),
    ],
)
def test_remove_password_keeps_everything_else(url: str, stripped: str) -> None:
    """remove_password drops only the password (and an empty user info) from a valid URL."""
    assert remove_password(url) == stripped
    assert parse_url(stripped).password is None


@settings(max_examples=500, deadline=None)
@given(url=st.one_of(st.text(), URLISH))
def test_parse_url_raises_only_value_error(url: str) -> None:
    """For any string, parse_url returns a ParsedURL or raises ValueError; redact never raises."""
    try:
        parsed = parse_url(url)
    except ValueError:
        pass
    else:
        assert isinstance(parsed, ParsedURL)
    assert isinstance(redact_url(url), str)


_USERINFO_START = st.tuples(
    st.sampled_from(
        [
            "redis://",
            "rediss://",
            "unix://",
            "socket://",
            "sentinel://",
            "sentinel://h;sentinel://",
            "REDIS://",
            "memory://",
            "http://",
            "",
        ]
    ),
    st.from_regex(r"[A-Za-z0-9._~-]{0,6}", fullmatch=True),
).map("".join)


@settings(max_examples=500, deadline=None)
@given(start=_USERINFO_START, secret=st.text(max_size=8), after=URLISH, encode=st.booleans())
def test_messages_and_redaction_never_show_the_password(
    start: str, secret: str, after: str, encode: bool
) -> None:
    """A password in the user info, raw or percent-encoded and holding any characters, is never
    shown by redact_url nor by a parse_url error, whatever follows it."""
    password = PASSWORD + secret
    shown = quote(password, safe="") if encode else password
    url = f"{start}:{shown}@{after}"
    assert PASSWORD not in redact_url(url)
    message = ""
    try:
        parse_url(url)
    except ValueError as exc:
        message = str(exc)
    assert PASSWORD not in message


@settings(max_examples=300, deadline=None)
@given(
    user=st.text(max_size=5),
    secret=st.text(min_size=1, max_size=10),
    host=st.from_regex(r"[a-z][a-z0-9.\-]{0,10}", fullmatch=True),
    port=st.integers(1, 65535),
    db=st.integers(0, 15),
)
def test_valid_urls_round_trip(user: str, secret: str, host: str, port: int, db: int) -> None:
    """A percent-encoded URL parses back to its parts; redaction and removal hide the password."""
    url = f"redis://{quote(user, safe='')}:{quote(secret, safe='')}@{host}:{port}/{db}"
    parsed = parse_url(url)
    assert parsed.hosts == ((host, port),)
    assert (parsed.username, parsed.password, parsed.db) == (user or None, secret, db)
    assert redact_url(url) == f"redis://{quote(user, safe='')}:***@{host}:{port}/{db}"
    assert parse_url(remove_password(url)) == ParsedURL(
        "tcp", ((host, port),), None, db, user or None, None, {}
    )


def test_url_module_never_imports_redis_or_pydantic() -> None:
    """_url is pure: its source imports neither redis nor pydantic."""
    tree = ast.parse(Path(_url.__file__).read_text(encoding="utf-8"))
    imported = {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not {name.split(".")[0] for name in imported} & {
        "redis",
        "pydantic",
        "pydantic_settings",
    }
