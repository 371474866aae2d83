"""The ``resultstore`` command: read, write and await task results from a shell.

Layers (imports only go down)::

    _main.py      entry point: parse, build settings, run, turn errors into one line + exit code
    _parser.py    argparse: options, help text, examples, the exit code table
    _commands.py  ping/get/set/wait/watch/forget on a ResultStore, printing through an Output
    _rich.py      the human output in colour, and the wait spinner (when rich is installed)
    _human.py     the human layout, plain text (no rich), the elapsed time while waiting
    _render.py    the Output protocol, JSON lines output (no rich), value formatting
    _ping.py      connection check: server version, TLS, topology, round trip
    _errors.py    exit codes, one line per error, the passwords the command knows of
"""

from __future__ import annotations

from ._main import main, run

__all__ = ["main", "run"]
