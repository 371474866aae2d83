"""Who waits for what: task channel -> waiting futures and watcher queues. No I/O.

The registry is shared by every backend. A backend tells it what arrived (``deliver``) and learns
from it when a channel gains its first or loses its last interest (the ``on_join``/``on_leave``
callbacks), which is when the Redis backend subscribes or unsubscribes.

Delivery rules:

* ``wait_for`` futures resolve on the first READY result, whether it came from a message or a
  check (a GET after the subscription was confirmed); non-ready states never reach them.
* Watchers see every update. A check result reaches a watcher only if the check was sent on the
  current connection (epoch), the watcher registered before it was sent, and the watcher has been
  given nothing yet in this epoch: whatever it was given first is at least as new, and later
  writes arrive as messages. Identical consecutive payloads are shown once.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import Final

from ._codec import decode_result
from ._exceptions import PayloadDecodeError
from ._meta import ResultMeta
from ._states import READY_STATES

__all__ = ["Registry", "Watcher"]


class Watcher:
    """One ``watch()`` consumer: a queue of metas (or an exception) and its delivery bookkeeping."""

    __slots__ = ("_event", "_items", "epoch", "last_payload", "seq")

    def __init__(self, seq: int) -> None:
        self.seq = seq
        self.epoch = -1  # the registry epoch of the last message this watcher saw
        self.last_payload: bytes | None = None
        self._items: deque[ResultMeta | BaseException] = deque()
        self._event = asyncio.Event()

    def push(self, item: ResultMeta | BaseException) -> None:
        """Queue an item for the consumer."""
        self._items.append(item)
        self._event.set()

    async def next(self) -> ResultMeta:
        """The next update; raises the exception the registry queued, if that comes next."""
        while not self._items:
            self._event.clear()
            await self._event.wait()
        item = self._items.popleft()
        if isinstance(item, BaseException):
            raise item
        return item


class _Entry:
    __slots__ = ("created", "task_id", "waiters", "watchers")

    def __init__(self, task_id: str, created: float) -> None:
        self.task_id = task_id
        self.created = created
        self.waiters: list[asyncio.Future[ResultMeta]] = []
        self.watchers: list[Watcher] = []


JoinHook = Callable[[bytes, bool], None]
"""Called with (channel, is_new_channel) after a waiter or watcher registered."""
LeaveHook = Callable[[bytes], None]
"""Called with the channel after its last waiter or watcher left."""

ErrorFactory = Callable[[str], BaseException]
"""Makes the exception given to one failed waiter or watcher, from the task id."""

_PENDING_PAYLOAD: Final = b""


class Registry:
    """Task channels and their waiters; delivers decoded results to them."""

    def __init__(self, on_join: JoinHook, on_leave: LeaveHook, *, max_size: int) -> None:
        self._max_size = max_size
        self._entries: dict[bytes, _Entry] = {}
        self._on_join = on_join
        self._on_leave = on_leave
        self.seq = 0
        """Counts registrations; a check records it when sent (see the module docstring)."""
        self.epoch = 0
        """Bumped by the backend when a new Pub/Sub connection starts."""

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, channel: object) -> bool:
        return channel in self._entries

    def channels(self) -> list[bytes]:
        """Every channel somebody waits on."""
        return list(self._entries)

    def counts(self) -> tuple[int, int]:
        """(waiters, watchers) over all channels."""
        waiters = watchers = 0
        for entry in self._entries.values():
            waiters += len(entry.waiters)
            watchers += len(entry.watchers)
        return waiters, watchers

    def _join(self, channel: bytes, task_id: str) -> _Entry:
        entry = self._entries.get(channel)
        if entry is None:
            entry = self._entries[channel] = _Entry(task_id, time.monotonic())
        return entry

    def add_waiter(self, channel: bytes, task_id: str) -> asyncio.Future[ResultMeta]:
        """Register a ``wait_for`` future on ``channel``; undo with :meth:`remove_waiter`."""
        new = channel not in self._entries
        entry = self._join(channel, task_id)
        fut: asyncio.Future[ResultMeta] = asyncio.get_running_loop().create_future()
        entry.waiters.append(fut)
        self.seq += 1
        self._on_join(channel, new)
        return fut

    def remove_waiter(self, channel: bytes, fut: asyncio.Future[ResultMeta]) -> None:
        """Forget a waiter; the channel's last leaver triggers ``on_leave``. Idempotent."""
        entry = self._entries.get(channel)
        if entry is not None and fut in entry.waiters:
            entry.waiters.remove(fut)
            self._drop_if_empty(channel, entry)

    def add_watcher(self, channel: bytes, task_id: str) -> Watcher:
        """Register a watcher on ``channel``; undo with :meth:`remove_watcher`."""
        new = channel not in self._entries
        entry = self._join(channel, task_id)
        self.seq += 1
        watcher = Watcher(self.seq)
        entry.watchers.append(watcher)
        self._on_join(channel, new)
        return watcher

    def remove_watcher(self, channel: bytes, watcher: Watcher) -> None:
        """Forget a watcher. Idempotent."""
        entry = self._entries.get(channel)
        if entry is not None and watcher in entry.watchers:
            entry.watchers.remove(watcher)
            self._drop_if_empty(channel, entry)

    def _drop_if_empty(self, channel: bytes, entry: _Entry) -> None:
        if not entry.waiters and not entry.watchers:
            del self._entries[channel]
            self._on_leave(channel)

    def watched(self, channel: bytes) -> bool:
        """Whether ``channel`` has watchers."""
        entry = self._entries.get(channel)
        return entry is not None and bool(entry.watchers)

    def deliver(
        self,
        channel: bytes,
        payload: bytes | None,
        *,
        check: tuple[int, int] | None = None,
        waiters: bool = True,
        watchers: bool = True,
    ) -> None:
        """Hand a payload that arrived for ``channel`` to its waiters and watchers.

        Args:
            payload: the stored or published bytes; ``None`` for a missing key (PENDING).
            check: ``None`` for a Pub/Sub message; for a check result, the registry's
                ``(seq, epoch)`` when the check was sent.
            waiters, watchers: whom to tell (a check reaches them at different moments).
        """
        entry = self._entries.get(channel)
        if entry is None or (payload is None and not (watchers and entry.watchers)):
            return  # nobody to tell, or only waiters, who ignore PENDING
        try:
            meta = decode_result(entry.task_id, payload, max_size=self._max_size)
        except Exception as exc:  # nothing a publisher sends may stop the reader
            message = str(exc) if isinstance(exc, PayloadDecodeError) else f"undecodable: {exc!r}"
            self._fail_entry(entry, lambda task_id: PayloadDecodeError(message, task_id=task_id))
            return
        if waiters and entry.waiters and meta.status in READY_STATES:
            for fut in entry.waiters:
                if not fut.done():
                    fut.set_result(meta)
        if watchers and entry.watchers:
            epoch = self.epoch
            if check is not None and check[1] != epoch:
                return  # a check from an earlier connection may be older than what is coming
            raw = _PENDING_PAYLOAD if payload is None else payload
            for watcher in entry.watchers:
                if check is not None and (watcher.seq > check[0] or watcher.epoch == epoch):
                    continue
                watcher.epoch = epoch
                if raw != watcher.last_payload:
                    watcher.last_payload = raw
                    watcher.push(meta)

    def rewind_watchers(self, channel: bytes) -> None:
        """Let the next check reach this channel's watchers again.

        For a channel that was unsubscribed while they watched: writes in that gap reached
        nobody, so the check after the resubscribe is news, whatever they were given before.
        """
        entry = self._entries.get(channel)
        if entry is not None:
            for watcher in entry.watchers:
                watcher.epoch = -1

    def fail(self, channel: bytes, make_exc: ErrorFactory) -> None:
        """Fail every waiter and watcher of one channel with a fresh ``make_exc(task_id)`` each."""
        entry = self._entries.get(channel)
        if entry is not None:
            self._fail_entry(entry, make_exc)

    def fail_where(self, make_exc: ErrorFactory, predicate: Callable[[float], bool]) -> int:
        """Fail the channels whose creation time satisfies ``predicate``; returns how many."""
        failed = 0
        for entry in list(self._entries.values()):
            if predicate(entry.created):
                self._fail_entry(entry, make_exc)
                failed += 1
        return failed

    @staticmethod
    def _fail_entry(entry: _Entry, make_exc: ErrorFactory) -> None:
        # One exception object per receiver: a shared one would grow its traceback at every raise.
        for fut in entry.waiters:
            if not fut.done():
                fut.set_exception(make_exc(entry.task_id))
        for watcher in entry.watchers:
            watcher.push(make_exc(entry.task_id))
