"""Entry point: parse the command line, build the settings, run, report errors in one line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Final, NoReturn

from .._secrets import Scrubber
from .._settings import StoreSettings
from .._store import ResultStore
from ._commands import COMMANDS, Request
from ._errors import (
    ExitCode,
    Failure,
    classify,
    one_line,
    settings_secrets,
    tls_hint,
    url_secrets,
)
from ._human import PlainOutput
from ._parser import parse_args
from ._ping import ping
from ._render import JsonOutput, Output

__all__ = ["main", "run"]

_PROG: Final = "resultstore"
_CLI_WRITE_TIMEOUT: Final = 3.0  # seconds set/forget retry an outage (RESULTSTORE_WRITE_TIMEOUT)


class _OneLineFormatter(logging.Formatter):
    """``resultstore: warning: <message>``: one scrubbed line, never a traceback."""

    def __init__(self, scrub: Scrubber) -> None:
        super().__init__()
        self._scrub = scrub

    def format(self, record: logging.LogRecord) -> str:
        return f"{_PROG}: {record.levelname.lower()}: {one_line(self._scrub(record.getMessage()))}"


@contextmanager
def _one_line_logging(scrub: Scrubber) -> Iterator[None]:
    """Send the library's warnings (say, unverified TLS) to stderr as single lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLineFormatter(scrub))
    handler.setLevel(logging.WARNING)
    logger = logging.getLogger("resultstore")
    propagate, logger.propagate = logger.propagate, False
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def _settings(args: argparse.Namespace) -> StoreSettings:
    """``--url`` and ``--master-name`` over the ``RESULTSTORE_*`` environment variables."""
    options: dict[str, Any] = {}
    if args.url is not None:
        options["url"] = args.url
    if args.master_name is not None:
        options["master_name"] = args.master_name
    if "RESULTSTORE_WRITE_TIMEOUT" not in os.environ:
        options["write_timeout"] = _CLI_WRITE_TIMEOUT  # a shell command fails fast
    return StoreSettings(**options)


def _output(json_lines: bool) -> Output:
    """JSON lines; else colours and a spinner with rich (the ``cli`` extra), plain text without."""
    if json_lines:
        return JsonOutput()
    try:
        from ._rich import RichOutput
    except ImportError:
        return PlainOutput()
    return RichOutput()


async def _dispatch(settings: StoreSettings, output: Output, args: argparse.Namespace) -> int:
    if args.command == "ping":
        output.ping(await ping(settings))
        return ExitCode.OK
    request = Request(
        task_id=args.task_id,
        value=getattr(args, "value", ""),
        state=getattr(args, "state", "SUCCESS"),
        expires=getattr(args, "expires", None),
        timeout=args.timeout,
        force=getattr(args, "force", False),
    )
    async with ResultStore(settings) as store:
        return await COMMANDS[args.command](store, output, request)


def _report(scrub: Scrubber, failure: Failure, json_lines: bool) -> int:
    """Say what failed, in one scrubbed line: on stderr, or under ``--json`` as a JSON object
    on stdout (``{"error", "kind", "exit_code"}``); return the exit code."""
    message = one_line(scrub(failure.message))
    try:
        if json_lines:
            JsonOutput().error(failure.code, failure.kind, message)
        else:
            sys.stderr.write(f"{_PROG}: error: {message}\n")
            sys.stderr.flush()
    except OSError:  # the stream is gone; the exit code still tells
        pass
    return failure.code


def _wants_json(argv: Sequence[str]) -> bool:
    """Whether ``--json`` is on the command line (known before, or without, parsing it)."""
    return "--json" in argv[: argv.index("--")] if "--" in argv else "--json" in argv


def run(argv: Sequence[str] | None = None) -> int:
    """Run the command and return its exit code; every error is reported on one line.

    Args:
        argv: the arguments without the program name (default: ``sys.argv[1:]``).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    scrub = Scrubber(url_secrets([*argv, os.environ.get("RESULTSTORE_URL")]))
    scrub.add(os.environ.get("RESULTSTORE_PASSWORD"))
    json_lines = _wants_json(argv)
    settings: StoreSettings | None = None
    try:
        with _one_line_logging(scrub):
            args = parse_args(argv)
            settings = _settings(args)
            for secret in settings_secrets(settings):
                scrub.add(secret)
            return asyncio.run(_dispatch(settings, _output(args.json), args))
    except KeyboardInterrupt:
        return _report(scrub, Failure("interrupted", "interrupted"), json_lines)
    except BrokenPipeError:  # stdout closed early (say, `| head -1`): not an error to report
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return ExitCode.OK
    except Exception as exc:
        return _report(scrub, tls_hint(classify(exc), settings), json_lines)


def main() -> NoReturn:
    """Entry point of the ``resultstore`` console script."""
    sys.exit(run())
