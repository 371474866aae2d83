"""Exit codes, and every error turned into one secret-free line.

Each error the command can meet maps to one exit code (the table is in ``resultstore -h``);
:class:`Scrubber` removes every password the command knows of from what it prints.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable

from pydantic import ValidationError
from pydantic_settings import SettingsError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .._exceptions import ResultTimeout, StoreConnectionError
from .._settings import StoreSettings
from .._url import parse_url

__all__ = ["CliError", "ExitCode", "Scrubber", "UsageError", "classify"]


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
    if isinstance(exc, StoreConnectionError | RedisConnectionError | RedisTimeoutError):
        return ExitCode.UNREACHABLE, str(exc) or type(exc).__name__
    if isinstance(exc, RedisError):
        return ExitCode.ERROR, f"Redis replied with an error: {exc}"
    text = str(exc)
    return ExitCode.ERROR, f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# scheme://user:password@ -> scheme://user:***@, for URL-shaped text nobody parsed
_URL_USERINFO_RE = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s/@:]*:)[^\s@]+@")
_SPACES_RE = re.compile(r"\s+")


class Scrubber:
    """Replaces every password the command was given with ``***`` in what it prints."""

    def __init__(self) -> None:
        self._secrets: set[str] = set()

    def add(self, secret: str | None) -> None:
        """Hide ``secret`` from now on (empty values are ignored)."""
        if secret:
            self._secrets.add(secret)

    def add_urls(self, texts: Iterable[str | None]) -> None:
        """Hide the password of each text that is (or ends in, after ``=``) a URL."""
        for text in texts:
            if not text or "@" not in text:
                continue
            for candidate in {text, text.partition("=")[2]}:
                try:
                    self.add(parse_url(candidate).password)
                except ValueError:
                    # Unparsable: hide from the first ':' after "scheme://" to the last '@',
                    # as redact_url does: more than the password rather than less.
                    start = candidate.find("://")
                    colon = candidate.find(":", start + 3 if start != -1 else 0)
                    at = candidate.rfind("@")
                    if -1 < colon < at:
                        self.add(candidate[colon + 1 : at])

    def add_settings(self, settings: StoreSettings) -> None:
        """Hide the passwords of ``settings`` (data nodes and sentinels)."""
        for secret in (settings.password, settings.sentinel_kwargs.password):
            if secret is not None:
                self.add(secret.get_secret_value())

    def __call__(self, text: str) -> str:
        """``text`` on one line, without any known password or URL password."""
        text = _SPACES_RE.sub(" ", text).strip()
        for secret in sorted(self._secrets, key=len, reverse=True):
            text = text.replace(secret, "***")
        return _URL_USERINFO_RE.sub(r"\1***@", text)
