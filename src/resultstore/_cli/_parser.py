"""The command line: options, help text with examples, and the exit code table."""

from __future__ import annotations

import argparse
import math
import textwrap
from collections.abc import Sequence
from typing import Final, NoReturn

from .. import __version__
from ._errors import UsageError

__all__ = ["parse_args"]

_WIDTH: Final = 88

DESCRIPTION: Final = """\
Read, write and await Celery-compatible task results in Redis (or Valkey).

The connection comes from --url, else from RESULTSTORE_URL, else redis://localhost:6379/0;
the other RESULTSTORE_* variables (RESULTSTORE_PASSWORD, RESULTSTORE_SSL__CA_CERTS, ...) apply
too. URL forms: redis://[user][:password]@host[:port][/db], rediss://...?ssl_ca_certs=FILE (TLS),
unix:///path/redis.sock?db=N, sentinel://h1:26379;sentinel://h2:26379 (with --master-name).
The global options may also follow the command. Passwords are never printed."""

EXIT_CODES: Final = """\
exit codes:
  0    success; get: the task was read, also when it is PENDING; wait/watch: SUCCESS
  1    wait/watch: the task FAILED; set: a SUCCESS was already stored, nothing was written
  2    wait/watch: the task was REVOKED
  3    wait/watch: --timeout passed before the task was ready
  4    Redis not usable: unreachable (refused, lost, timed out, no sentinel master), or it
       refused the credentials or the TLS handshake
  5    invalid command line, URL or settings (also a TLS file that cannot be read)
  6    any other error (Redis refused the command, an undecodable stored value, ...)
  130  interrupted (Ctrl-C)
Under --json an error is one JSON object on stdout instead of a line on stderr:
  {"error": "<message>", "kind": "<kind>", "exit_code": N}, kind one of usage, settings (5),
  timeout (3), credentials, tls, unreachable (4), refused, error (6), interrupted (130)."""

EXAMPLES: Final = """\
examples:
  resultstore ping --url 'rediss://cache.internal:6380/0?ssl_ca_certs=/etc/ssl/ca.pem'
  resultstore --master-name mymaster --url 'sentinel://s1:26379;sentinel://s2:26379' ping
  resultstore set 6f1c2e '{"answer": 42}'
  resultstore set 6f1c2e '{"done": 3, "total": 10}' --state progress
  resultstore set 6f1c2e 'disk full' --state FAILURE
  resultstore get 6f1c2e
  resultstore wait 6f1c2e --timeout 30 && echo done
  resultstore --json watch 6f1c2e | jq -c '{status, result}'
  RESULTSTORE_URL='redis://:secret@cache:6379/1' resultstore forget 6f1c2e"""

_COMMANDS: Final = {
    "ping": (
        "check the connection",
        "Connect as the store would and show the server version, the topology (standalone,"
        " unix socket, sentinel master name and address), whether TLS is on and the server's"
        " certificate is verified (cert_reqs and host name check), and the median round trip"
        " of 5 PINGs.",
    ),
    "get": (
        "show a task's status and result",
        "Show the task's status and result; a task with nothing stored is PENDING (exit 0).",
    ),
    "set": (
        "store a result and publish it to waiters",
        "Store VALUE as the task's result and publish it, atomically. VALUE is parsed as JSON,"
        " else taken as text. With --state FAILURE, RETRY or REVOKED it is stored as an"
        " exception: Exception(VALUE), or a Celery exception object such as"
        ' \'{"exc_type": "ValueError", "exc_message": ["boom"], "exc_module": "builtins"}\'.'
        " A stored SUCCESS is never overwritten: then nothing is written and the exit code is 1.",
    ),
    "wait": (
        "wait until a task is ready, then show its result",
        "Wait until the task is SUCCESS, FAILURE or REVOKED (through Pub/Sub, no polling) and"
        " show it. A spinner with the elapsed time runs on stderr when it is a terminal."
        " Exit 0 on SUCCESS, 1 on FAILURE, 2 on REVOKED, 3 on --timeout, 4 when Redis is"
        " unreachable.",
    ),
    "watch": (
        "print each state change until the task is ready",
        "Print the task's current state, then one line per stored update (PROGRESS, STARTED,"
        " ...), and end at SUCCESS, FAILURE or REVOKED. Exit codes as for wait.",
    ),
    "forget": ("delete a task's stored result", "Delete the task's stored result."),
}


class _Parser(argparse.ArgumentParser):
    """Reports a bad command line as one line (UsageError) instead of exiting with code 2,
    which is REVOKED here."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see: {self.prog} -h)")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, 0 or more: {text!r}")
    return value


def _add_global_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """The global options; after the command (``suppress``) an absent one keeps its value."""
    group = parser.add_argument_group("global options")

    def default(value: object) -> object:
        return argparse.SUPPRESS if suppress else value

    group.add_argument(
        "--url",
        default=default(None),
        help="connection URL (default: $RESULTSTORE_URL, else redis://localhost:6379/0)",
    )
    group.add_argument(
        "--master-name", metavar="NAME", default=default(None), help="sentinel master name"
    )
    group.add_argument(
        "--json",
        action="store_true",
        default=default(False),
        help="machine output: one JSON object per line on stdout (does not need rich)",
    )
    group.add_argument(
        "--timeout",
        type=_seconds,
        metavar="SECONDS",
        default=default(None),
        help="wait, watch: give up after this long, exit 3 (default: wait until ready)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``resultstore`` parser, with one subparser per command."""
    parser = _Parser(
        prog="resultstore",
        description=DESCRIPTION,
        epilog=f"{EXIT_CODES}\n\n{EXAMPLES}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"resultstore {__version__}")
    _add_global_options(parser, suppress=False)
    commands = parser.add_subparsers(dest="command", title="commands", metavar="COMMAND")
    for name, (summary, description) in _COMMANDS.items():
        sub = commands.add_parser(
            name,
            help=summary,
            description=textwrap.fill(description, _WIDTH),
            epilog=EXIT_CODES if name in ("wait", "watch", "set", "get") else None,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        if name != "ping":
            sub.add_argument("task_id", metavar="ID", help="the task id")
        if name == "set":
            sub.add_argument("value", metavar="VALUE", help="the result: JSON, else text")
            sub.add_argument(
                "--state",
                default="SUCCESS",
                help="the state to store, in any case: SUCCESS (default), FAILURE, REVOKED,"
                " STARTED, RETRY, PROGRESS or another of Celery's; any other name needs --force",
            )
            sub.add_argument(
                "--force",
                action="store_true",
                help="store a --state that is not a known one, as given (its waiters wait until"
                " a ready state follows)",
            )
            sub.add_argument(
                "--expires",
                type=_seconds,
                metavar="SECONDS",
                help="time to live of this result; 0: never expires"
                " (default: the result_expires setting, 1 day)",
            )
        _add_global_options(sub, suppress=True)
    return parser


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parse ``argv`` (without the program name).

    Raises:
        UsageError: the command line is invalid (``-h`` exits with code 0, printing help).
    """
    args = build_parser().parse_args(argv)
    if args.command is None:
        raise UsageError(f"choose a command: {', '.join(_COMMANDS)} (see: resultstore -h)")
    if args.command == "set" and not args.state.strip():
        raise UsageError("argument --state: must not be empty")
    return args
