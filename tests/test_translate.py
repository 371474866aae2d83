"""The error boundary (`_translate.py`): what kind each redis-py/OS failure is, the error and
message a caller gets, and no password in any message, chained cause or log record.

Failures a server can produce are produced by real servers (missing TLS files and Unix socket,
refused TCP, wrong credentials, a server without AUTH, certificates, ACLs, BUSY); the rare error
replies (MASTERDOWN, TRYAGAIN, ...) go through redis-py's own reply parser.
"""

from __future__ import annotations

import asyncio
import io
import logging
import ssl
import threading
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, NoReturn

import anyio
import pytest
import redis
import redis.exceptions
from redis._parsers.base import BaseParser

from resultstore import (
    PermissionDeniedError,
    ResultStore,
    ResultStoreError,
    StoreConnectionError,
    StoreSettings,
)
from resultstore._connection import Connector
from resultstore._secrets import Scrubber, SecretFilter
from resultstore._translate import (
    classify,
    is_config_error,
    map_exceptions,
    translate,
)
from resultstore.testing import AUTH_USER, AUTH_USER_PASSWORD, RedisLauncher, RedisServer

pytestmark = pytest.mark.timeout(60)

PASSWORD = "Pa55-the-password-4d1e"
NO_AUTH = {"rename-command": 'AUTH ""'}  # a server that answers AUTH "unknown command"


def reply(text: str) -> redis.exceptions.ResponseError:
    """An error reply as redis-py's parser turns it into an exception."""
    error: redis.exceptions.ResponseError = BaseParser.parse_error(text)  # type: ignore[no-untyped-call]
    return error


def throw(exc: BaseException, cause: BaseException | None = None) -> NoReturn:
    raise exc from cause


def chained(outer: BaseException, cause: BaseException) -> BaseException:
    """``outer`` raised from ``cause``, as redis-py wraps OS and TLS errors."""
    try:
        throw(outer, cause)
    except BaseException as exc:
        return exc


async def raised(work: Callable[[], Awaitable[Any]]) -> BaseException:
    """The exception ``work()`` raises (it must raise)."""
    try:
        await work()
    except Exception as exc:
        return exc
    raise AssertionError("expected an exception")


@asynccontextmanager
async def connector(url: str, **options: Any) -> AsyncIterator[Connector]:
    made = Connector(StoreSettings.from_url(url, **options))
    try:
        yield made
    finally:
        await made.aclose()


async def connect_error(url: str, **options: Any) -> BaseException:
    """What the multiplexer meets: the error of opening a Pub/Sub connection."""
    async with connector(url, **options) as made:
        return await raised(made.open_pubsub)


async def get_error(url: str, **options: Any) -> BaseException:
    async with ResultStore.from_url(url, **options) as store:
        return await raised(lambda: store.get("t"))


# -- classification, from error replies and OS errors ------------------------------------------


@pytest.mark.parametrize(
    "exc",
    [
        reply("LOADING Redis is loading the dataset in memory"),
        reply("BUSY Redis is busy running a script. You can only call SCRIPT KILL."),
        reply("MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'."),
        reply("READONLY You can't write against a read only replica."),
        # Redis 6.2 wraps it when the write is a script's (the store's writes are):
        reply(
            "Error running script (call to f_d1da82045a58616955469d3cbf45d58c8b11fd3c): "
            "@user_script:5: @user_script: 5: -READONLY You can't write against a read only "
            "replica."
        ),
        reply("TRYAGAIN Multiple keys request during rehashing of slot"),
        reply("CLUSTERDOWN The cluster is down"),
        redis.exceptions.TimeoutError("Timeout reading from 127.0.0.1:6379"),
        redis.exceptions.ConnectionError("Connection closed by server."),
        TimeoutError(),
        ConnectionResetError(104, "Connection reset by peer"),
        BrokenPipeError(32, "Broken pipe"),
        chained(redis.exceptions.ConnectionError("Error 1"), ssl.SSLEOFError(8, "EOF")),
    ],
    ids=lambda exc: type(exc).__name__ + ":" + str(exc)[:12],
)
def test_passing_failures_are_outages(exc: BaseException) -> None:
    """Redis away, restarting, loading, busy or failing over: retry, and say it is unreachable
    or cannot serve now (StoreConnectionError)."""
    assert classify(exc) == "outage"
    assert not is_config_error(exc)
    assert type(translate(exc, "GET", "tcp h:1")) is StoreConnectionError


@pytest.mark.parametrize(
    "exc",
    [
        reply("WRONGPASS invalid username-password pair or user is disabled."),
        reply("NOAUTH Authentication required."),
        reply("ERR wrong number of arguments for 'auth' command"),
        chained(
            redis.exceptions.ConnectionError("Error 1 connecting"),
            ssl.SSLCertVerificationError(1, "certificate verify failed"),
        ),
    ],
    ids=["wrongpass", "noauth", "auth-args", "cert-verify"],
)
def test_credentials_and_certificates_are_configuration_errors(exc: BaseException) -> None:
    """Waiting cannot fix a refused password or a certificate that does not verify."""
    assert classify(exc) == "config"
    assert is_config_error(exc)
    assert type(translate(exc, "GET", "tcp h:1")) is StoreConnectionError


def test_noperm_is_a_refusal_and_a_permission_error() -> None:
    """NOPERM: PermissionDeniedError (also a PermissionError), naming the fix."""
    exc = reply("NOPERM this user has no permissions to access one of the keys")
    assert classify(exc) == "refused"
    error = translate(exc, "GET", "tcp h:1")
    assert isinstance(error, PermissionDeniedError)
    assert isinstance(error, PermissionError)
    assert "no permissions" in str(error)
    assert "grant the user" in str(error)


@pytest.mark.parametrize(
    "text", ["WRONGTYPE Operation against a key holding the wrong kind of value", "OOM no memory"]
)
def test_other_error_replies_are_refusals(text: str) -> None:
    """Any other error reply is a plain ResultStoreError, not an outage."""
    exc = reply(text)
    assert classify(exc) == "refused"
    assert type(translate(exc, "SET", "tcp h:1")) is ResultStoreError


def test_map_exceptions_keeps_the_cause_and_lets_other_errors_through() -> None:
    """The redis-py error stays the cause (no secret in it); other errors pass unchanged."""
    cause = redis.exceptions.ConnectionError("Connection closed by server.")
    with (
        pytest.raises(StoreConnectionError, match=r"^GET failed: Redis unreachable") as info,
        map_exceptions("GET", "tcp h:1", scrub=Scrubber([PASSWORD])),
    ):
        raise cause
    assert info.value.__cause__ is cause
    with pytest.raises(KeyError), map_exceptions("GET", "tcp h:1"):
        raise KeyError("not ours")


def test_redis_py_attribute_error_is_a_lost_connection_and_ours_is_not() -> None:
    """redis-py raises AttributeError ("'NoneType' object has no attribute 'writelines'") when
    a connection is torn down under a call (seen under uvloop when aclose() meets a connect):
    that is a lost connection. An AttributeError from anywhere else is a bug and passes."""
    in_redis_py: dict[str, object] = {"__name__": "redis.asyncio.connection"}
    exec("def send(writer):\n    writer.writelines([b'x'])\n", in_redis_py)
    send = in_redis_py["send"]
    assert callable(send)
    with (
        pytest.raises(StoreConnectionError, match="closed under the call") as info,
        map_exceptions("GET", "tcp h:1"),
    ):
        send(None)
    assert isinstance(info.value.__cause__, AttributeError)
    with pytest.raises(AttributeError), map_exceptions("GET", "tcp h:1"):
        None.writelines  # type: ignore[attr-defined]  # noqa: B018  # our own bug


# -- real servers: the cases redis-py cannot tell apart by type ---------------------------------


async def test_missing_unix_socket_is_an_outage(redis_launcher: RedisLauncher) -> None:
    """A Unix socket that is gone (a server restarting) is an outage, not configuration: the
    multiplexer retries instead of failing every waiter."""
    server = redis_launcher.start(unixsocket=True)
    url = server.url
    server.stop()
    assert server.unixsocket is not None
    assert not await anyio.Path(server.unixsocket).exists()
    exc = await connect_error(url)
    assert classify(exc) == "outage"
    assert not is_config_error(exc)
    error = await get_error(url)
    assert isinstance(error, StoreConnectionError)
    assert "Redis unreachable (unix " in str(error)
    assert "the socket file does not exist" in str(error)


@pytest.mark.parametrize("missing", ["ssl_ca_certs", "ssl_certfile"])
async def test_missing_tls_file_is_a_configuration_error_naming_it(
    redis_mtls_server: RedisServer, tmp_path: Path, missing: str
) -> None:
    """A CA, certificate or key file that does not exist is configuration, and the message
    names the file and the setting."""
    assert redis_mtls_server.tls is not None
    tls = redis_mtls_server.tls
    files = {"ssl_ca_certs": tls.ca_cert, "ssl_certfile": tls.client_cert}
    files["ssl_keyfile"] = tls.client_key
    files[missing] = str(tmp_path / "absent.pem")
    query = "&".join(f"{name}={path}" for name, path in files.items())
    url = f"rediss://{redis_mtls_server.host}:{redis_mtls_server.port}/0?{query}"
    exc = await connect_error(url)
    assert classify(exc) == "config"
    error = await get_error(url)
    assert isinstance(error, StoreConnectionError)
    assert f"TLS file not found: {files[missing]} ({missing})" in str(error)


async def test_unverified_certificate_is_a_configuration_error(
    redis_tls_server: RedisServer,
) -> None:
    """A CA that did not sign the server's certificate: configuration, naming the setting.

    (A missing client certificate is configuration too when the server's TLS alert arrives;
    the server may also just reset the connection first, which reads as an outage.)
    """
    assert redis_tls_server.tls is not None
    url = (
        f"rediss://{redis_tls_server.host}:{redis_tls_server.port}/0"
        f"?ssl_ca_certs={redis_tls_server.tls.other_ca_cert}"
    )
    assert is_config_error(await connect_error(url))
    error = await get_error(url)
    assert isinstance(error, StoreConnectionError)
    assert "certificate verify failed" in str(error)
    assert "check ssl_ca_certs" in str(error)


async def test_refused_tcp_is_an_outage(redis_server: RedisServer) -> None:
    url = redis_server.url
    redis_server.stop()
    assert classify(await connect_error(url)) == "outage"
    assert "Redis unreachable (tcp " in str(await get_error(url))


async def test_wrong_password_is_a_configuration_error(redis_auth_server: RedisServer) -> None:
    url = redis_auth_server.url_for(password=PASSWORD)
    assert is_config_error(await connect_error(url))
    error = await get_error(url)
    assert "check the username and password" in str(error)
    assert PASSWORD not in str(error)


async def test_acl_refusal_is_permission_denied(redis_auth_server: RedisServer) -> None:
    url = redis_auth_server.url_for(username=AUTH_USER, password=AUTH_USER_PASSWORD)
    async with ResultStore.from_url(url, key_prefix="other-") as store:
        for work in (lambda: store.get("t"), lambda: store.set("t", 1)):
            error = await raised(work)
            assert isinstance(error, PermissionDeniedError)
            assert not isinstance(error, StoreConnectionError)


async def test_busy_server_is_an_outage(redis_launcher: RedisLauncher) -> None:
    """A script running past busy-reply-threshold (lua-time-limit, its name before Redis 7)
    makes Redis answer BUSY: it passes."""
    server = redis_launcher.start(extra_config={"lua-time-limit": "20"})
    running = threading.Event()

    def long_script() -> None:
        with server.client() as client:
            running.set()
            # Ends with SCRIPT KILL; the client then gets an error reply.
            with pytest.raises(redis.exceptions.ResponseError):
                client.eval("while true do end", 0)

    thread = threading.Thread(target=long_script)
    thread.start()
    try:
        running.wait(10)
        async with ResultStore.from_url(server.url) as store:
            error: BaseException | None = None
            for _ in range(200):  # until the script has run past the threshold
                try:
                    await store.get("t")
                except StoreConnectionError as exc:
                    error = exc
                    break
                await asyncio.sleep(0.01)
        assert error is not None
        assert "BUSY" in str(error)
        assert "cannot serve it now" in str(error)
        assert classify(error.__cause__ or error) == "outage"
    finally:
        with server.client() as admin:
            while True:
                try:
                    admin.script_kill()
                    break
                except redis.exceptions.ResponseError:  # not running yet
                    if not thread.is_alive():
                        break
        thread.join(10)


# -- secrets: a server that echoes the password ------------------------------------------------


@pytest.mark.parametrize("unix", [False, True], ids=["tcp", "unix"])
async def test_password_echoed_by_the_server_is_in_no_message(
    redis_launcher: RedisLauncher, unix: bool
) -> None:
    """A server without AUTH answers "unknown command 'AUTH', with args beginning with:
    '<password>'": get, set and forget fail (configuration: waiting cannot fix it) and the
    password is in none of their messages or reprs, nor in their printed tracebacks (the chain
    to redis-py's error, which quotes it, is cut)."""
    server = redis_launcher.start(extra_config=NO_AUTH, unixsocket=unix)
    url = server.url_for(password=PASSWORD)
    assert PASSWORD in str(await connect_error(url))  # what the boundary has to hide
    assert is_config_error(await connect_error(url))
    async with ResultStore.from_url(url) as store:
        for work in (lambda: store.get("t"), lambda: store.set("t", 1), lambda: store.forget("t")):
            error = await raised(work)
            assert isinstance(error, StoreConnectionError)
            assert "unknown command 'AUTH'" in str(error).replace("`", "'")  # 6.2: `AUTH`
            assert "Redis refused to set up the connection" in str(error)
            assert PASSWORD not in repr(error)
            assert PASSWORD not in "".join(traceback.format_exception(error))


async def test_records_of_a_running_store_never_show_its_password(
    redis_launcher: RedisLauncher, caplog: pytest.LogCaptureFixture
) -> None:
    """While the store runs, its log records (here the Pub/Sub link's connect warnings, which
    quote the server's echo of the password) are scrubbed."""
    caplog.set_level(logging.DEBUG, logger="resultstore")
    server = redis_launcher.start(extra_config=NO_AUTH)
    async with ResultStore.from_url(server.url_for(password=PASSWORD)) as store:
        with pytest.raises(StoreConnectionError) as info:
            await store.wait_for("t", timeout=5)
        assert PASSWORD not in str(info.value)  # the waiter's error is scrubbed too
        assert "check the credentials" in str(info.value)  # configuration: it failed at once
    warnings = [r for r in caplog.records if r.name == "resultstore"]
    assert warnings
    assert PASSWORD not in caplog.text


# -- the scrubber -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("secret", "text", "scrubbed"),
    [
        pytest.param(
            "e",
            "Redis said: unknown command 'AUTH', with args beginning with: 'e' ",
            "Redis said: unknown command 'AUTH', with args beginning with: '***' ",
            id="short-only-whole-tokens",
        ),
        pytest.param("e", "AUTH e failed", "AUTH *** failed", id="short-between-spaces"),
        pytest.param("pass", "password passes pass.", "password passes ***.", id="inside-words"),
        pytest.param("p@ss:w/rd", "redis://:p%40ss%3Aw%2Frd@h/0", "redis://:***@h/0", id="url"),
        pytest.param("p@ss:w/rd", "AUTH p@ss:w/rd", "AUTH ***", id="symbols"),
        pytest.param("two\r\nlines", "echo 'two  lines' ", "echo '***' ", id="newlines"),
        pytest.param("back\\slash", "args ('back\\\\slash',)", "args ('***',)", id="repr"),
        pytest.param("s3", "redis://user:other@h:6379", "redis://user:***@h:6379", id="any-url"),
    ],
)
def test_scrubber_hides_whole_tokens_only(secret: str, text: str, scrubbed: str) -> None:
    assert Scrubber([secret])(text) == scrubbed


def test_scrubber_hides_the_truncated_prefix_a_server_echoes() -> None:
    """Redis quotes at most 128 characters of the arguments it echoes."""
    secret = "long-" + "x7" * 100
    text = f"unknown command 'AUTH', with args beginning with: 'user' '{secret[:120]}' "
    scrubbed = Scrubber([secret])(text)
    assert scrubbed == "unknown command 'AUTH', with args beginning with: 'user' '***' "
    assert Scrubber([secret])("'long'") == "'long'"  # a short quoted prefix gives little away


def test_scrubber_without_secrets_only_hides_url_passwords() -> None:
    scrub = Scrubber([None, ""])
    assert scrub("no secret here") == "no secret here"
    assert scrub("rediss://:pw@h") == "rediss://:***@h"


# -- the log filter -----------------------------------------------------------------------------


@contextmanager
def captured(logger: logging.Logger) -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    try:
        yield stream
    finally:
        logger.removeHandler(handler)


def test_secret_filter_scrubs_message_arguments_and_exception() -> None:
    logger = logging.getLogger("resultstore.test-secret-filter")
    logger.propagate = False
    secret_filter = SecretFilter(Scrubber([PASSWORD]))
    logger.addFilter(secret_filter)
    try:
        with captured(logger) as stream:
            logger.warning("Redis answered %r", f"unknown command, args '{PASSWORD}'")
            try:
                throw(RuntimeError(f"echo {PASSWORD}"))
            except RuntimeError:
                logger.exception("failed with %s", PASSWORD, stack_info=True)
    finally:
        logger.removeFilter(secret_filter)
        logger.propagate = True
    text = stream.getvalue()
    assert PASSWORD not in text
    assert "Redis answered" in text
    assert "RuntimeError: echo ***" in text
    assert "failed with ***" in text
