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

from pydantic import ValidationError
from pydantic_settings import SettingsError
from redis.exceptions import RedisError

from .._exceptions import ResultTimeout, StoreConnectionError
from .._settings import StoreSettings
from .._translate import classify as error_kind
from .._translate import explain
from .._url import parse_url, redact_url

__all__ = [
    "CliError",
    "ExitCode",
    "UsageError",
    "classify",
    "one_line",
    "settings_secrets",
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
    """An error the command reports as ``resultstore: error: <message>`` with ``code``."""

    def __init__(self, message: str, code: ExitCode = ExitCode.ERROR) -> None:
        super().__init__(message)
        self.code = code


class UsageError(CliError):
    """The command line is invalid."""

    def __init__(self, message: str) -> None:
        super().__init__(message, ExitCode.USAGE)


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


def classify(exc: BaseException) -> tuple[ExitCode, str]:
    """The exit code and the one-line message (not yet scrubbed) for ``exc``."""
    if isinstance(exc, CliError):
        return exc.code, str(exc)
    if isinstance(exc, ResultTimeout):
        return ExitCode.TIMEOUT, str(exc)
    if isinstance(exc, ValidationError):
        return ExitCode.USAGE, _validation_message(exc)
    if isinstance(exc, SettingsError):
        # pydantic-settings' message quotes the variable's value, which may hold a password
        return ExitCode.USAGE, f"invalid settings: {_settings_error_message(exc)}"
    # Not bare OSError: the store wraps connection errors in StoreConnectionError, and any
    # other OSError is local (say, stdout on a full disk), not an unreachable server.
    if isinstance(exc, StoreConnectionError):
        return ExitCode.UNREACHABLE, str(exc)
    if isinstance(exc, RedisError):  # the store translates these; classified as it would
        refused = error_kind(exc) == "refused"
        return (ExitCode.ERROR if refused else ExitCode.UNREACHABLE), explain(exc)
    text = str(exc)
    return ExitCode.ERROR, f"{type(exc).__name__}: {text}" if text else type(exc).__name__


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
