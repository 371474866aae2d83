"""Tests for resultstore._settings: URL merging, validation rules, environment, secrets."""

from __future__ import annotations

import ssl
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr, ValidationError

from resultstore._settings import SentinelSettings, StoreSettings, TLSSettings
from resultstore._url import redact_url
from support import URLISH, attribute, clean_environment

PASSWORD = "hunter2-SECRET"
SENTINEL = "sentinel://h1:26379/0;sentinel://h2:26380/0"


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep RESULTSTORE_* variables of the machine out of these tests."""
    clean_environment(monkeypatch)


# Each case: keyword arguments, then either the expected attribute values or an error fragment.
CASES: list[Any] = [
    pytest.param(
        {},
        {"url": "redis://localhost:6379/0", "db": 0, "target.hosts": (("localhost", 6379),)},
        id="defaults",
    ),
    pytest.param(
        {"url": "redis://user:pw@example.com:6380/3"},
        {
            "username": "user",
            "password": "pw",
            "db": 3,
            "url": "redis://user@example.com:6380/3",
            "target.kind": "tcp",
            "target.hosts": (("example.com", 6380),),
        },
        id="tcp-full",
    ),
    pytest.param(
        {"url": "redis://h"}, {"db": 0, "target.hosts": (("h", 6379),)}, id="tcp-default-port"
    ),
    pytest.param({"url": "REDIS://h/1"}, {"target.kind": "tcp", "db": 1}, id="scheme-any-case"),
    pytest.param(
        {"url": "redis://[::1]:7000/2"}, {"target.hosts": (("::1", 7000),), "db": 2}, id="ipv6"
    ),
    pytest.param(
        {"url": "redis://:p%40ss%3Aw%2Fd@h"},
        {"password": "p@ss:w/d", "url": "redis://h"},
        id="percent-encoded-password",
    ),
    pytest.param({"url": "redis://h?db=5"}, {"db": 5}, id="db-in-query"),
    pytest.param({"url": "redis://h/5?db=5"}, {"db": 5}, id="db-twice-same-value"),
    pytest.param(
        {
            "url": "redis://h?socket_timeout=2.5&socket_connect_timeout=1&socket_keepalive=false"
            "&retry_on_timeout=1&health_check_interval=15&max_connections=7&client_name=api"
        },
        {
            "socket_timeout": 2.5,
            "socket_connect_timeout": 1.0,
            "socket_keepalive": False,
            "retry_on_timeout": True,
            "health_check_interval": 15.0,
            "max_connections": 7,
            "client_name": "api",
        },
        id="query-options-converted",
    ),
    pytest.param(
        {"url": "rediss://h"},
        {"ssl.cert_reqs": "required", "ssl.verify_hostname": True, "target.kind": "tls"},
        id="rediss-default-required",
    ),
    pytest.param(
        {"url": "rediss://h?ssl_cert_reqs=CERT_REQUIRED"},
        {"ssl.cert_reqs": "required"},
        id="celery-CERT_REQUIRED",
    ),
    pytest.param(
        {"url": "rediss://h?ssl_cert_reqs=cert_none"},
        {"ssl.cert_reqs": "none", "ssl.verify_hostname": False},
        id="celery-cert_none-lower",
    ),
    pytest.param(
        {"url": "rediss://h?ssl_cert_reqs=Optional"},
        {"ssl.cert_reqs": "optional"},
        id="optional-any-case",
    ),
    pytest.param(
        {
            "url": "rediss://h?ssl_ca_certs=/ca.pem&ssl_certfile=/c.pem&ssl_keyfile=/k.pem"
            "&ssl_check_hostname=false"
        },
        {
            "ssl.ca_certs": "/ca.pem",
            "ssl.certfile": "/c.pem",
            "ssl.keyfile": "/k.pem",
            "ssl.check_hostname": False,
            "ssl.verify_hostname": False,
        },
        id="tls-files-from-url",
    ),
    pytest.param(
        {"url": "rediss://h", "ssl": {"ssl_cert_reqs": ssl.CERT_NONE, "ssl_ca_certs": "/ca.pem"}},
        {"ssl.cert_reqs": "none", "ssl.ca_certs": "/ca.pem"},
        id="celery-ssl-dict-with-ssl.CERT_NONE",
    ),
    pytest.param(
        {"url": "rediss://h?ssl_ca_certs=/ca.pem", "ssl": TLSSettings(certfile="/c.pem")},
        {"ssl.ca_certs": "/ca.pem", "ssl.certfile": "/c.pem", "ssl.cert_reqs": "required"},
        id="ssl-model-merged-with-url",
    ),
    pytest.param(
        {"url": "unix:///var/run/redis.sock?db=2"},
        {"target.kind": "unix", "target.path": "/var/run/redis.sock", "db": 2},
        id="unix",
    ),
    pytest.param(
        {"url": "socket:///tmp/r.sock?virtual_host=3"},
        {"target.kind": "unix", "db": 3},
        id="celery-socket-virtual-host",
    ),
    pytest.param(
        {"url": "redis+socket:///tmp/r%20x.sock"},
        {"target.path": "/tmp/r x.sock", "db": 0},
        id="celery-redis+socket",
    ),
    pytest.param(
        {"url": "sentinel://:pw@h1:26379/1;sentinel://h2:26380/1", "master_name": "mymaster"},
        {
            "target.hosts": (("h1", 26379), ("h2", 26380)),
            "db": 1,
            "password": "pw",
            "url": "sentinel://h1:26379/1;sentinel://h2:26380/1",
        },
        id="sentinel-semicolons",
    ),
    pytest.param(
        {"url": "sentinel://h1?master_name=m"},
        {"master_name": "m", "target.hosts": (("h1", 26379),)},
        id="sentinel-master-name-in-url",
    ),
    pytest.param(
        {"url": SENTINEL, "master_name": "m", "ssl": {"cert_reqs": "required"}},
        {"ssl.cert_reqs": "required"},
        id="sentinel-tls-to-data-nodes",
    ),
    pytest.param(
        {
            "url": SENTINEL,
            "master_name": "m",
            "sentinel_kwargs": {"password": "s", "ssl": {"ssl_ca_certs": "/ca.pem"}},
        },
        {"sentinel_kwargs.password": "s", "sentinel_kwargs.ssl.ca_certs": "/ca.pem", "ssl": None},
        id="sentinel-kwargs",
    ),
    pytest.param({"url": "memory://"}, {"is_memory": True}, id="memory"),
    pytest.param({"url": "memory:///"}, {"is_memory": True}, id="memory-trailing-slash"),
    pytest.param(
        {"result_expires": 0},
        {"result_expires": None, "result_failure_expires": None},
        id="expires-0-means-no-ttl",
    ),
    pytest.param(
        {"result_expires": 60.5},
        {
            "result_expires": timedelta(seconds=60.5),
            "result_failure_expires": timedelta(seconds=60.5),
        },
        id="expires-seconds-and-failure-follows",
    ),
    pytest.param(
        {"result_expires": timedelta(hours=2), "result_failure_expires": 0},
        {"result_expires": timedelta(hours=2), "result_failure_expires": None},
        id="failure-expires-0-means-no-ttl",
    ),
    pytest.param({"global_keyprefix": "app"}, {"global_keyprefix": "app_"}, id="keyprefix-add-_"),
    pytest.param({"global_keyprefix": "app:"}, {"global_keyprefix": "app:"}, id="keyprefix-colon"),
    pytest.param({"global_keyprefix": "app."}, {"global_keyprefix": "app."}, id="keyprefix-dot"),
    pytest.param({"global_keyprefix": ""}, {"global_keyprefix": ""}, id="keyprefix-empty"),
    pytest.param(
        {"url": "redis://:pw@h/2", "password": "pw", "db": 2},
        {"password": "pw", "db": 2},
        id="same-value-in-url-and-field",
    ),
    pytest.param({"max_connections": 5}, {"max_connections": 5}, id="keyword-argument"),
    pytest.param(
        {"db": 3},
        {"db": 3, "url": "redis://localhost:6379"},
        id="db-without-url-keeps-default-host",
    ),
    pytest.param({"url": "  redis://h/1 \n"}, {"url": "redis://h/1"}, id="whitespace-stripped"),
    # invalid
    pytest.param({"url": "redis://h?ssl_cert_reqs=required"}, "use rediss://", id="ssl-on-redis"),
    pytest.param({"url": "redis://h", "ssl": {}}, "use rediss://", id="ssl-field-on-redis"),
    pytest.param({"url": "unix:///s?ssl_ca_certs=/x"}, "use rediss://", id="ssl-on-unix"),
    pytest.param(
        {"url": SENTINEL + "?ssl_cert_reqs=none", "master_name": "m"},
        "`sentinel_kwargs.ssl`",
        id="ssl-query-on-sentinel",
    ),
    pytest.param({"url": "sentinel://a:1,b:2"}, "with ';'", id="sentinel-comma-hosts"),
    pytest.param({"url": "sentinel://a:1,sentinel://b:2"}, "with ';'", id="sentinel-comma-urls"),
    pytest.param({"url": SENTINEL}, "need master_name=", id="sentinel-without-master-name"),
    pytest.param({"master_name": "m"}, "only applies to sentinel", id="master-name-on-redis"),
    pytest.param(
        {"sentinel_kwargs": {"password": "x"}}, "only applies to sentinel", id="kwargs-on-redis"
    ),
    pytest.param({"url": "redis://h?colour=red"}, "unknown url option `colour`", id="unknown-key"),
    pytest.param({"url": "redis://h:abc"}, "1 to 65535", id="port-not-a-number"),
    pytest.param({"url": "redis://h:0"}, "1 to 65535", id="port-zero"),
    pytest.param({"url": "redis://h:65536"}, "1 to 65535", id="port-too-big"),
    pytest.param({"url": "redis://h:\u0661"}, "1 to 65535", id="port-arabic-digit"),
    pytest.param({"url": "redis://h/abc"}, "whole number", id="db-not-a-number"),
    pytest.param({"url": "redis://h/-1"}, "cannot be negative", id="db-negative"),
    pytest.param({"db": -1}, "greater than or equal to 0", id="db-field-negative"),
    pytest.param({"url": "redis://h/1?db=2"}, "give it once", id="db-twice-different"),
    pytest.param({"url": "redis://h?db=1&db=1"}, "given twice", id="repeated-key"),
    pytest.param({"url": "redis://:pw@:6379"}, "no host", id="empty-host"),
    pytest.param({"url": "redis://[::1"}, "closing ']'", id="ipv6-unclosed"),
    pytest.param(
        {"url": "redis://:pw@h", "password": "other"},
        "given in both url and `password`; give it once",
        id="password-conflict",
    ),
    pytest.param({"url": "redis://h/1", "db": 2}, "given in both url and `db`", id="db-conflict"),
    pytest.param(
        {"url": "redis://h?max_connections=3", "max_connections": 4},
        "given in both url and `max_connections`",
        id="option-conflict",
    ),
    pytest.param(
        {"url": "rediss://h?ssl_cert_reqs=none", "ssl": {"cert_reqs": "required"}},
        "given in both url and `ssl.cert_reqs`",
        id="ssl-conflict",
    ),
    pytest.param(
        {"url": "rediss://h?ssl_cert_reqs=maybe"}, "required, optional or none", id="bad-cert-reqs"
    ),
    pytest.param(
        {"url": "rediss://h", "ssl": {"cert_reqs": "maybe"}}, "fix ssl_cert_reqs", id="bad-ssl-dict"
    ),
    pytest.param(
        {"url": "rediss://h?ssl_cert_reqs=none&ssl_check_hostname=true"},
        "set cert_reqs=required",
        id="check-hostname-without-verification",
    ),
    pytest.param(
        {"url": "redis://h?socket_keepalive=maybe"}, "true or false", id="bad-bool-in-url"
    ),
    pytest.param(
        {"url": "redis://h?socket_timeout=-1"}, "seconds above 0", id="bad-timeout-in-url"
    ),
    pytest.param({"url": "memory://x"}, "exactly memory://", id="memory-with-host"),
    pytest.param({"url": "memory://", "ssl": {}}, "remove `ssl`", id="memory-with-ssl"),
    pytest.param({"url": "http://h"}, "use redis://", id="unsupported-scheme"),
    pytest.param({"url": "localhost:6379"}, "no scheme", id="no-scheme"),
    pytest.param({"url": "redis://h?virtual_host=1"}, "give the db as /N", id="vhost-on-tcp"),
    pytest.param({"url": "redis://a;redis://b"}, "only sentinel:// urls", id="semicolon-on-tcp"),
    pytest.param({"url": "redis://:p#w@h"}, "%23", id="hash-in-url"),
    pytest.param({"result_expires": -1}, "cannot be negative", id="expires-negative"),
    pytest.param({"key_prefix": ""}, "key_prefix", id="key-prefix-empty"),
    pytest.param({"max_connections": 0}, "max_connections", id="max-connections-zero"),
    pytest.param({"bogus": 1}, "bogus", id="unknown-field"),
]


@pytest.mark.parametrize(("kwargs", "expected"), CASES)
def test_settings_table(kwargs: dict[str, Any], expected: dict[str, object] | str) -> None:
    """Each URL form and option resolves to the documented values, or fails naming the fix."""
    if isinstance(expected, str):
        with pytest.raises(ValidationError) as info:
            StoreSettings(**kwargs)
        assert expected in str(info.value)
        return
    resolved = StoreSettings(**kwargs)
    for path, value in expected.items():
        assert attribute(resolved, path) == value, path


def test_table_has_at_least_40_cases() -> None:
    """The table covers at least 40 valid and invalid cases."""
    assert len(CASES) >= 40


def test_cert_reqs_spellings_normalise_to_the_word() -> None:
    """cert_reqs accepts the word, CERT_* in any case and ssl.VerifyMode members."""
    spellings: dict[object, str] = {
        "REQUIRED": "required",
        "cert_optional": "optional",
        "CERT_NONE": "none",
        ssl.CERT_REQUIRED: "required",
        ssl.CERT_OPTIONAL: "optional",
        ssl.CERT_NONE: "none",
    }
    for given_value, word in spellings.items():
        assert TLSSettings.model_validate({"ssl_cert_reqs": given_value}).cert_reqs == word


@pytest.mark.parametrize(
    ("kwargs", "count"),
    [
        pytest.param({"url": "rediss://h?ssl_cert_reqs=none"}, 1, id="none"),
        pytest.param({"url": "rediss://h?ssl_cert_reqs=optional"}, 1, id="optional"),
        pytest.param({"url": "rediss://h?ssl_cert_reqs=required"}, 0, id="required"),
        pytest.param({"url": "redis://h"}, 0, id="no-tls"),
        pytest.param(
            {
                "url": SENTINEL,
                "master_name": "m",
                "sentinel_kwargs": {"ssl": {"cert_reqs": "none"}},
            },
            1,
            id="sentinel-kwargs-none",
        ),
        pytest.param(
            {
                "url": SENTINEL,
                "master_name": "m",
                "ssl": {"cert_reqs": "optional"},
                "sentinel_kwargs": {"ssl": {"cert_reqs": "none"}},
            },
            2,
            id="both-unverified",
        ),
    ],
)
def test_security_warnings_name_the_mitm_risk(kwargs: dict[str, Any], count: int) -> None:
    """Each unverified TLS config gives one warning naming man-in-the-middle and the fix."""
    warnings = StoreSettings(**kwargs).security_warnings()
    assert len(warnings) == count
    for warning in warnings:
        assert "man-in-the-middle" in warning
        assert "ssl_cert_reqs=required" in warning
        assert "ssl_ca_certs" in warning


def test_security_warning_without_host_name_check() -> None:
    """Verified certificates without a host name check also warn about man-in-the-middle."""
    settings_ = StoreSettings(url="rediss://h?ssl_check_hostname=false")
    (warning,) = settings_.security_warnings()
    assert "man-in-the-middle" in warning
    assert "ssl_check_hostname=true" in warning


def test_environment_is_read_and_merged(monkeypatch: pytest.MonkeyPatch) -> None:
    """RESULTSTORE_* variables, nested ones included, fill the fields like keyword arguments."""
    monkeypatch.setenv("RESULTSTORE_URL", "rediss://h:7000/4?socket_timeout=2")
    monkeypatch.setenv("RESULTSTORE_PASSWORD", PASSWORD)
    monkeypatch.setenv("RESULTSTORE_SSL__CA_CERTS", "/ca.pem")
    monkeypatch.setenv("RESULTSTORE_SSL__CERT_REQS", "CERT_OPTIONAL")
    monkeypatch.setenv("RESULTSTORE_MAX_CONNECTIONS", "7")
    monkeypatch.setenv("RESULTSTORE_RESULT_EXPIRES", "3600")
    resolved = StoreSettings()
    assert resolved.target.hosts == (("h", 7000),)
    assert resolved.db == 4
    assert resolved.socket_timeout == 2.0
    assert resolved.password is not None
    assert resolved.password.get_secret_value() == PASSWORD
    assert resolved.ssl == TLSSettings(cert_reqs="optional", ca_certs="/ca.pem")
    assert resolved.max_connections == 7
    assert resolved.result_expires == timedelta(hours=1)
    assert StoreSettings(max_connections=3).max_connections == 3


def test_environment_sentinel_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sentinel options come from nested variables such as RESULTSTORE_SENTINEL_KWARGS__PASSWORD."""
    monkeypatch.setenv("RESULTSTORE_URL", SENTINEL)
    monkeypatch.setenv("RESULTSTORE_MASTER_NAME", "mymaster")
    monkeypatch.setenv("RESULTSTORE_SENTINEL_KWARGS__PASSWORD", PASSWORD)
    monkeypatch.setenv("RESULTSTORE_SENTINEL_KWARGS__SSL__CERT_REQS", "none")
    resolved = StoreSettings()
    assert resolved.master_name == "mymaster"
    assert resolved.sentinel_kwargs.password == SecretStr(PASSWORD)
    assert resolved.sentinel_kwargs.ssl == TLSSettings(cert_reqs="none")
    assert len(resolved.security_warnings()) == 1
    assert PASSWORD not in repr(resolved)


def test_environment_conflict_names_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    """A password in RESULTSTORE_URL and a different RESULTSTORE_PASSWORD is an error."""
    monkeypatch.setenv("RESULTSTORE_URL", f"redis://:{PASSWORD}@h")
    monkeypatch.setenv("RESULTSTORE_PASSWORD", "other")
    with pytest.raises(ValidationError) as info:
        StoreSettings()
    assert "`password`" in str(info.value)
    assert PASSWORD not in str(info.value)


def test_secrets_never_shown_by_a_valid_settings() -> None:
    """repr, str, model_dump_json and url never contain the passwords."""
    resolved = StoreSettings(
        url=f"sentinel://user:{PASSWORD}@h1;sentinel://h2?master_name=m",
        sentinel_kwargs=SentinelSettings(password=SecretStr(PASSWORD + "2")),
    )
    assert resolved.password == SecretStr(PASSWORD)
    assert resolved.username == "user"
    for text in (
        repr(resolved),
        str(resolved),
        resolved.model_dump_json(),
        str(resolved.model_dump(mode="json")),
        resolved.url,
        repr(resolved.target),
    ):
        assert PASSWORD not in text
    assert resolved.url == "sentinel://user@h1;sentinel://h2?master_name=m"


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"url": f"redis://:{PASSWORD}@h?bogus=1"}, id="unknown-key"),
        pytest.param({"url": f"redis://:{PASSWORD}@h:99999"}, id="bad-port"),
        pytest.param({"url": f"redis://:{PASSWORD}@h/x"}, id="bad-db"),
        pytest.param({"url": f"redis://:{PASSWORD}@h?ssl_cert_reqs=none"}, id="ssl-on-redis"),
        pytest.param({"url": f"redis://:{PASSWORD}/x@h"}, id="unencoded-slash"),
        pytest.param({"url": f"redis://:{PASSWORD}#x@h"}, id="unencoded-hash"),
        pytest.param({"url": f"sentinel://:{PASSWORD}@a,b"}, id="sentinel-comma"),
        pytest.param({"url": f"sentinel://:{PASSWORD}@a"}, id="sentinel-no-master"),
        pytest.param({"url": f"redis://:{PASSWORD}@h", "password": "x"}, id="conflict"),
        pytest.param({"url": f"redis://:{PASSWORD}@h", "max_connections": 0}, id="field-error"),
        pytest.param({"url": "redis://h", "password": [PASSWORD]}, id="password-wrong-type"),
        pytest.param(
            {"url": SENTINEL, "master_name": "m", "sentinel_kwargs": {"password": [PASSWORD]}},
            id="sentinel-password-wrong-type",
        ),
        pytest.param({"url": "redis://h", "sentinel_kwargs": {"password": PASSWORD}}, id="kwargs"),
    ],
)
def test_secrets_never_shown_in_validation_errors(kwargs: dict[str, Any]) -> None:
    """No ValidationError text (str, repr, errors()) contains the password."""
    with pytest.raises(ValidationError) as info:
        StoreSettings(**kwargs)
    error = info.value
    for text in (str(error), repr(error), str(error.errors()), error.json()):
        assert PASSWORD not in text


@settings(
    max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(url=st.one_of(st.text(), URLISH))
def test_any_url_text_gives_settings_or_validation_error(url: str) -> None:
    """For any text as url: a valid StoreSettings or a pydantic ValidationError, nothing else."""
    assert isinstance(redact_url(url), str)
    try:
        resolved = StoreSettings(url=url)
    except ValidationError:
        return
    assert resolved.target.password is None
    assert isinstance(resolved.db, int)
    assert StoreSettings(**resolved.model_dump()) == resolved


@pytest.mark.parametrize(
    ("model", "kwargs"),
    [
        pytest.param(SentinelSettings, {"password": 987654321}, id="sentinel-password-int"),
        pytest.param(SentinelSettings, {"password": [PASSWORD]}, id="sentinel-password-list"),
        pytest.param(SentinelSettings, {"username": PASSWORD, "bogus": 1}, id="sentinel-extra"),
        pytest.param(SentinelSettings, {"passwd": PASSWORD}, id="sentinel-misspelt-password"),
        pytest.param(SentinelSettings, {"ssl": {"keyfile": [PASSWORD]}}, id="sentinel-nested-tls"),
        pytest.param(TLSSettings, {"keyfile": 987654321}, id="tls-keyfile-int"),
        pytest.param(TLSSettings, {"ssl_keyfile": [PASSWORD]}, id="tls-keyfile-list"),
        pytest.param(TLSSettings, {"key_password": PASSWORD}, id="tls-extra"),
        pytest.param(
            TLSSettings,
            {"keyfile": PASSWORD, "check_hostname": True, "cert_reqs": "none"},
            id="tls-model-check",
        ),
    ],
)
def test_sub_models_hide_inputs_in_validation_errors(
    model: type[SentinelSettings | TLSSettings], kwargs: dict[str, Any]
) -> None:
    """SentinelSettings and TLSSettings built directly hide every input, as StoreSettings does."""
    with pytest.raises(ValidationError) as info:
        model(**kwargs)
    error = info.value
    assert error.errors()
    for text in (str(error), repr(error), str(error.errors()), error.json()):
        assert PASSWORD not in text
        assert "987654321" not in text
    assert all(found["input"] == "<hidden>" for found in error.errors())
    assert error.__cause__ is None
    assert error.__context__ is None


def test_from_url_ignores_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """StoreSettings.from_url uses only its arguments, never RESULTSTORE_* variables."""
    monkeypatch.setenv("RESULTSTORE_PASSWORD", "from-env")
    monkeypatch.setenv("RESULTSTORE_MAX_CONNECTIONS", "2")
    resolved = StoreSettings.from_url("redis://:pw@h/1", max_connections=9)
    assert resolved.password == SecretStr("pw")
    assert (resolved.db, resolved.max_connections) == (1, 9)
    assert StoreSettings.from_url("redis://h").password is None


def test_from_url_errors_hide_inputs() -> None:
    """from_url raises ValidationError naming the fix, with no input (so no secret) in it."""
    with pytest.raises(ValidationError) as info:
        StoreSettings.from_url(f"redis://:{PASSWORD}@h", max_connections=0, password="x")
    assert "`password`" in str(info.value)
    assert PASSWORD not in info.value.json()
    assert PASSWORD not in str(info.value.errors())


def test_validated_settings_round_trip() -> None:
    """Feeding a validated settings' model_dump() back in gives equal settings."""
    for kwargs in (
        {"url": "rediss://u:pw@h:7000/3?ssl_cert_reqs=none&socket_timeout=2", "db": 3},
        {"url": SENTINEL + "?master_name=m", "sentinel_kwargs": {"password": "s"}},
        {"db": 4, "result_expires": 0},
        {"url": "memory://"},
    ):
        resolved = StoreSettings(**kwargs)
        assert StoreSettings(**resolved.model_dump()) == resolved


def test_settings_module_never_imports_redis() -> None:
    """_settings is pure configuration: its source never imports redis."""
    import ast
    from pathlib import Path

    from resultstore import _settings

    tree = ast.parse(Path(_settings.__file__).read_text(encoding="utf-8"))
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert "redis" not in {name.split(".")[0] for name in names}


def test_write_settings_from_keywords_environment_and_url(monkeypatch: pytest.MonkeyPatch) -> None:
    """wait_replicas, wait_replicas_timeout and write_timeout: keywords, RESULTSTORE_* variables
    and (the first two) URL query options; defaults 0, 1 s and None (reconnect_timeout)."""
    default = StoreSettings.from_url("redis://h/0")
    assert (default.wait_replicas, default.wait_replicas_timeout, default.write_timeout) == (
        0,
        1.0,
        None,
    )
    url = StoreSettings.from_url("redis://h/0?wait_replicas=2&wait_replicas_timeout=0.5")
    assert (url.wait_replicas, url.wait_replicas_timeout) == (2, 0.5)
    monkeypatch.setenv("RESULTSTORE_WAIT_REPLICAS", "1")
    monkeypatch.setenv("RESULTSTORE_WRITE_TIMEOUT", "4")
    env = StoreSettings()
    assert (env.wait_replicas, env.write_timeout) == (1, 4.0)
    with pytest.raises(ValidationError):
        StoreSettings.from_url("redis://h/0?wait_replicas=-1")
