"""Exit codes, and every error turned into one secret-free line.

Each error the command can meet maps to one exit code (the table is in ``resultstore -h``), with
the store's own classification (``_translate.py``); the store's :class:`Scrubber`, given every
password the command knows of (:func:`url_secrets`, :func:`settings_secrets`), hides them in what
it prints.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Final

from pydantic import ValidationError
from pydantic_settings import SettingsError
from redis.exceptions import RedisError

from .._exceptions import ResultStoreError, ResultTimeout, StoreConnectionError
from .._settings import StoreSettings
from .._translate import diagnose, explain
from .._url import parse_url, redact_url

__all__ = [
    "KIND_CODES",
    "CliError",
    "ExitCode",
    "Failure",
    "UsageError",
    "classify",
    "one_line",
    "settings_secrets",
    "tls_hint",
    "url_secrets",
]


class ExitCode(enum.IntEnum):
    """The command's exit codes."""

    OK = 0
    FAILURE = 1
    REVOKED = 2
    TIMEOUT = 3
    UNREACHABLE = 4
    USAGE = 5
    ERROR = 6
    INTERRUPTED = 130


class CliError(Exception):
    """An error the command reports as ``resultstore: error: <message>``, of ``kind`` (a key
    of :data:`KIND_CODES`, which gives its exit code)."""

    def __init__(self, message: str, kind: str = "error") -> None:
        super().__init__(message)
        self.kind = kind


class UsageError(CliError):
    """The command line is invalid (``settings``: the settings it names are)."""

    def __init__(self, message: str, *, settings: bool = False) -> None:
        super().__init__(message, "settings" if settings else "usage")


def _validation_message(exc: ValidationError) -> str:
    """Pydantic's errors on one line: ``field: message; ...`` (inputs are never shown)."""
    parts: list[str] = []
    for error in exc.errors(include_url=False, include_input=False):
        msg = str(error["msg"]).removeprefix("Value error, ")
        field = ".".join(str(item) for item in error["loc"])
        parts.append(f"`{field}`: {msg}" if field and f"`{field}`" not in msg else msg)
    return "invalid settings: " + "; ".join(parts)


_SETTINGS_SOURCE_RE = re.compile(r'error parsing value for field "([^"]+)" from source "([^"]+)"')


def _settings_error_message(exc: SettingsError) -> str:
    """Which field and source failed to parse, never the value itself."""
    match = _SETTINGS_SOURCE_RE.search(str(exc))
    if match is None:
        return "an environment variable could not be parsed"
    return f"`{match[1]}` from {match[2]} could not be parsed"


# _translate's diagnosis -> the command's kind of error
_REASON_KINDS: Final = {
    "credentials": "credentials",
    "sentinel-credentials": "credentials",
    "handshake": "credentials",
    "tls-verify": "tls",
    "tls": "tls",
    "tls-files": "settings",
    "permission": "refused",
    "reply": "refused",
    "busy": "unreachable",
    "socket": "unreachable",
    "unreachable": "unreachable",
}
KIND_CODES: Final = {
    "usage": ExitCode.USAGE,
    "settings": ExitCode.USAGE,
    "timeout": ExitCode.TIMEOUT,
    "credentials": ExitCode.UNREACHABLE,
    "tls": ExitCode.UNREACHABLE,
    "unreachable": ExitCode.UNREACHABLE,
    "refused": ExitCode.ERROR,
    "error": ExitCode.ERROR,
    "interrupted": ExitCode.INTERRUPTED,
}
"""Every kind of error the command reports (``kind`` under ``--json``), and its exit code."""


@dataclass(frozen=True, slots=True)
class Failure:
    """How the command reports an error: its kind, exit code and one-line message."""

    kind: str
    message: str

    @property
    def code(self) -> ExitCode:
        """The exit code of this kind of error."""
        return KIND_CODES[self.kind]


def classify(exc: BaseException) -> Failure:
    """The one classification of ``exc`` for every subcommand (message not yet scrubbed).

    A store error carries what ``_translate`` diagnosed, so a wrong password or a TLS failure
    is the same kind in ``ping`` as in ``get``; a TLS file that cannot be read is a settings
    error (exit 5), not an unreachable server.
    """
    if isinstance(exc, CliError):
        return Failure(exc.kind, str(exc))
    if isinstance(exc, ResultTimeout):
        return Failure("timeout", str(exc))
    if isinstance(exc, ValidationError):
        return Failure("settings", _validation_message(exc))
    if isinstance(exc, SettingsError):
        # pydantic-settings' message quotes the variable's value, which may hold a password
        return Failure("settings", f"invalid settings: {_settings_error_message(exc)}")
    if isinstance(exc, ResultStoreError) and exc._reason is not None:
        kind = _REASON_KINDS.get(exc._reason, "unreachable")
        if kind == "refused":
            return Failure(kind, f"{type(exc).__name__}: {exc}")
        return Failure(kind, str(exc))
    # Not bare OSError: the store wraps connection errors in StoreConnectionError, and any
    # other OSError is local (say, stdout on a full disk), not an unreachable server.
    if isinstance(exc, StoreConnectionError):
        return Failure("unreachable", str(exc))
    if isinstance(exc, RedisError):  # the store translates these; classified as it would
        return Failure(_REASON_KINDS.get(diagnose(exc), "unreachable"), explain(exc))
    text = str(exc)
    return Failure("error", f"{type(exc).__name__}: {text}" if text else type(exc).__name__)


def tls_hint(failure: Failure, settings: StoreSettings | None) -> Failure:
    """An unreachable-by-timeout error on a TLS connection, with the likely cause added:
    a plain server never answers a TLS handshake, so ``rediss://`` to it times out."""
    timed_out = "timeout" in failure.message.lower() or "timed out" in failure.message.lower()
    if failure.kind != "unreachable" or not timed_out or settings is None or settings.ssl is None:
        return failure
    hint = (
        "; TLS is on (rediss:// or ssl settings) and the server never answered the TLS"
        " handshake: does this port speak TLS? (a plain server needs redis://)"
    )
    return Failure(failure.kind, failure.message + hint)


_SPACES_RE = re.compile(r"\s+")


def one_line(text: str) -> str:
    """``text`` on one line: every run of whitespace becomes one space."""
    return _SPACES_RE.sub(" ", text).strip()


def url_secrets(texts: Iterable[str | None]) -> Iterator[str]:
    """The password of each text that is (or ends in, after ``=``) a URL.

    For a URL that does not parse, what :func:`redact_url` hides (more than the password rather
    than less).
    """
    for text in texts:
        if not text or "@" not in text:
            continue
        for candidate in {text, text.partition("=")[2]}:
            try:
                password = parse_url(candidate).password
            except ValueError:
                password = None
            if password:
                yield password
            for part in candidate.split(";"):
                redacted = redact_url(part)
                if redacted != part:
                    yield _hidden(part, redacted)


def _hidden(text: str, redacted: str) -> str:
    """The span of ``text`` that ``redacted`` replaced (one ``***``)."""
    head = _same(text, redacted)
    tail = _same(text[head:][::-1], redacted[head:][::-1])
    return text[head : len(text) - tail]


def _same(a: str, b: str) -> int:
    """How many leading characters ``a`` and ``b`` share."""
    pairs = enumerate(zip(a, b, strict=False))
    return next((i for i, (x, y) in pairs if x != y), min(len(a), len(b)))


def settings_secrets(settings: StoreSettings) -> Iterator[str]:
    """The passwords of ``settings`` (data nodes and sentinels)."""
    for secret in (settings.password, settings.sentinel_kwargs.password):
        if secret is not None:
            yield secret.get_secret_value()
