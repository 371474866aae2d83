"""The human layout of ``_human`` with rich's colours, and a spinner while waiting.

Needs rich (the ``cli`` extra); without it the command prints the same text plain
(``_human.PlainOutput``).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Sequence
from typing import TypeVar

from rich.console import Console
from rich.text import Text

from ._human import TICK, HumanOutput, Segment

__all__ = ["RichOutput"]

T = TypeVar("T")


class RichOutput(HumanOutput):
    """Human-readable output on stdout; the spinner goes to stderr, only when it is a terminal."""

    def __init__(self) -> None:
        # soft_wrap: a long result stays on one line (copy-paste, grep), never re-wrapped.
        self._out = Console(file=sys.stdout, soft_wrap=True, highlight=False, markup=False)
        self._err = Console(file=sys.stderr, soft_wrap=True, highlight=False, markup=False)

    def _print(self, segments: Sequence[Segment]) -> None:
        line = Text()
        for text, style in segments:
            line.append(text, style=style or "")
        self._out.print(line)
        self._out.file.flush()

    async def waiting(self, label: str, work: Awaitable[T]) -> T:
        """Await ``work`` under a spinner showing ``label`` and the elapsed seconds."""
        if not self._err.is_terminal:
            return await work
        loop = asyncio.get_running_loop()
        task = asyncio.ensure_future(work)
        start = loop.time()
        try:
            with self._err.status(Text(label), spinner="dots") as status:
                while not task.done():
                    await asyncio.wait({task}, timeout=TICK)
                    status.update(Text(f"{label} {loop.time() - start:.1f} s"))
            return task.result()
        finally:
            if not task.done():
                task.cancel()
                await asyncio.wait({task})
