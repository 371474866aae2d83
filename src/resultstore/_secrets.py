"""Secrets stay secret: a scrubber for any text, and a logging filter that applies it.

A server may echo a password back (``unknown command 'AUTH', with args beginning with:
'<password>'``); every message and log record resultstore builds goes through :class:`Scrubber`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from typing import Final
from urllib.parse import quote

__all__ = ["MASK", "Scrubber", "SecretFilter"]

MASK: Final = "***"
# scheme://user:password@ -> scheme://user:***@, for URL-shaped text with an unknown password
_URL_USERINFO: Final = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s/@:]*:)[^\s@]+@")
_QUOTED: Final = re.compile(r"'([^'\r\n]+)'|\"([^\"\r\n]+)\"")
_MIN_PREFIX: Final = 8  # a shorter quoted prefix of a password gives little away
_WORD: Final = re.compile(r"\w")


def _token(text: str) -> str:
    """A pattern for ``text`` standing alone: not inside a longer word."""
    head = r"(?<!\w)" if _WORD.match(text[0]) else ""
    tail = r"(?!\w)" if _WORD.match(text[-1]) else ""
    return head + re.escape(text) + tail


class Scrubber:
    """Hides known secrets (passwords) in any text: ``scrub(text)``.

    A secret is hidden where it stands as a whole token, never inside a longer word (the
    password ``e`` leaves "Redis" alone); also percent-encoded, escaped as in a repr, with
    newlines turned to spaces, and as the truncated quoted prefix a server echoes
    (``unknown command 'AUTH', with args beginning with: '<first 128 characters>'``). The
    password of any ``scheme://user:password@`` in the text is hidden, known or not.
    """

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        self._secrets: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        for secret in secrets:
            self.add(secret)

    def add(self, secret: str | None) -> None:
        """Hide ``secret`` from now on (``None`` and ``""`` are ignored)."""
        if secret and secret not in self._secrets:
            self._secrets.add(secret)
            self._pattern = None

    def _compiled(self) -> re.Pattern[str]:
        if self._pattern is None:
            forms = {
                form
                for secret in self._secrets
                for form in (
                    secret,
                    quote(secret, safe=""),
                    repr(secret)[1:-1],
                    secret.replace("\r", " ").replace("\n", " "),
                )
                if form
            }
            ordered = sorted(forms, key=len, reverse=True)  # the longest form first
            self._pattern = re.compile("|".join(_token(form) for form in ordered))
        return self._pattern

    def _quoted_prefix(self, match: re.Match[str]) -> str:
        inner = match[1] if match[1] is not None else match[2]
        if len(inner) >= _MIN_PREFIX and any(s.startswith(inner) for s in self._secrets):
            return match[0].replace(inner, MASK)
        return match[0]

    def __call__(self, text: str) -> str:
        """``text`` with every known secret and every URL password replaced by ``***``."""
        if self._secrets:
            text = self._compiled().sub(MASK, text)
            text = _QUOTED.sub(self._quoted_prefix, text)
        return _URL_USERINFO.sub(rf"\1{MASK}@", text)


_FORMATTER: Final = logging.Formatter()
_EXTRA_TEXT: Final = ("reason", "node", "task_id")


class SecretFilter(logging.Filter):
    """A ``logging.Filter`` that scrubs every record it sees: message, arguments, exception
    and stack text (the exception is rendered to text, then scrubbed).

    Attach it to the ``resultstore`` logger for as long as the secrets are in use; a logger's
    filters see only records logged on that logger itself, not on its children.
    """

    def __init__(self, scrub: Callable[[str], str]) -> None:
        super().__init__()
        self._scrub = scrub

    def filter(self, record: logging.LogRecord) -> bool:
        """Scrub ``record`` in place; always keep it."""
        record.msg = self._scrub(record.getMessage())
        record.args = ()
        for field in _EXTRA_TEXT:  # the structured fields resultstore adds (``extra=``)
            value = record.__dict__.get(field)
            if isinstance(value, str):
                record.__dict__[field] = self._scrub(value)
        if record.exc_info:
            record.exc_text = _FORMATTER.formatException(record.exc_info)
            record.exc_info = None
        if record.exc_text:
            record.exc_text = self._scrub(record.exc_text)
        if record.stack_info:
            record.stack_info = self._scrub(record.stack_info)
        return True
