"""Who waits for what: task channel -> waiting futures and watchers. No I/O.

The store creates the registry and hands it to its backend. The backend learns from it when a
channel gains interest or loses its last one (``attach``: that is when the Redis backend
subscribes or unsubscribes) and tells it what arrived: ``deliver_message`` for a Pub/Sub message,
``deliver_ready``/``deliver_check`` for the read of a key after a confirmation.

Delivery rules:

* ``wait_for`` futures resolve on the first READY result, whether it came from a message or a
  check; non-ready states never reach them.
* Watchers see updates in order, coalesced: a consumer slower than the producer finds the latest
  non-ready state, never a backlog (O(1) memory per watcher); a ready state or an error is never
  dropped and comes last. Identical consecutive payloads are shown once.
* A check result reaches a watcher only if the check was asked for on the current connection
  (``new_connection`` starts one), after the watcher registered, and the watcher has been given
  nothing yet on this connection: whatever it was given first is at least as new, and later
  writes arrive as messages.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Executor
from functools import partial
from typing import Final, NamedTuple

from ._codec import decode_result, needs_offload
from ._exceptions import PayloadDecodeError
from ._meta import ResultMeta
from ._states import READY_STATES

__all__ = ["CheckToken", "Decoded", "Registry", "Watcher", "needs_offload"]

Decoded = ResultMeta | PayloadDecodeError
"""A payload decoded ahead of delivery (off the event loop), or why it could not be."""


class Watcher:
    """One ``watch()`` consumer: the latest unread update and, at the end, a ready state or error.

    Holds at most two items whatever the producer does: a newer non-ready state replaces an
    unread older one; the final item (ready state or exception) is kept and ends the watch.
    """

    __slots__ = ("_event", "_final", "_latest", "epoch", "last_payload", "seq")

    def __init__(self, seq: int) -> None:
        self.seq = seq
        self.epoch = -1  # the registry epoch of the last update this watcher was given
        self.last_payload: bytes | None = None
        self._latest: ResultMeta | None = None
        self._final: ResultMeta | BaseException | None = None
        self._event = asyncio.Event()

    @property
    def finished(self) -> bool:
        """Whether the final item (ready state or error) has been queued."""
        return self._final is not None

    def push(self, item: ResultMeta | BaseException) -> None:
        """Queue an update, coalescing unread non-ready states; nothing after the final item."""
        if self._final is not None:
            return
        if isinstance(item, ResultMeta) and not item.ready:
            self._latest = item
        else:
            self._final = item
        self._event.set()

    async def next(self) -> ResultMeta:
        """The next update; raises the queued exception when that comes next."""
        while self._latest is None and self._final is None:
            self._event.clear()
            await self._event.wait()
        if self._latest is not None:
            item: ResultMeta | BaseException = self._latest
            self._latest = None
        else:
            assert self._final is not None
            item = self._final
        if isinstance(item, BaseException):
            raise item
        return item


Receiver = asyncio.Future[ResultMeta] | Watcher
"""A ``wait_for`` future or a ``watch`` consumer."""


class CheckToken(NamedTuple):
    """When a check (a read after a confirmation) was asked for."""

    seq: int
    """Registrations so far: watchers registered later are not served by this check."""
    epoch: int
    """The connection it was asked on: a check from an earlier one may be stale."""


class _Entry:
    __slots__ = ("task_id", "waiters", "watchers")

    def __init__(self, task_id: str) -> None:
        self.task_id = task_id
        self.waiters: list[asyncio.Future[ResultMeta]] = []
        # Most channels never get a watcher: the empty tuple until the first one (56 bytes less
        # per pending wait; ``add`` and ``remove`` are the only writers).
        self.watchers: list[Watcher] | tuple[()] = ()


ChannelHook = Callable[[bytes], None]
"""Called with a channel: on every registration (join), or when its last receiver left."""

ErrorFactory = Callable[[str], BaseException]
"""Makes the exception given to one failed waiter or watcher, from the task id."""

_PENDING_PAYLOAD: Final = b""


def _ignore(channel: bytes) -> None:
    """A hook for a backend that needs no notice."""


class Registry:
    """Task channels and their receivers; delivers decoded results to them."""

    def __init__(self, *, max_size: int, executor: Executor | None = None) -> None:
        self._max_size = max_size
        self._executor = executor
        self._entries: dict[bytes, _Entry] = {}
        self._on_join: ChannelHook = _ignore
        self._on_leave: ChannelHook = _ignore
        self._seq = 0
        self._epoch = 0

    def attach(self, *, on_join: ChannelHook, on_leave: ChannelHook) -> None:
        """Let one backend hear of every registration and of every channel's last leaver."""
        self._on_join = on_join
        self._on_leave = on_leave

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

    def task_id(self, channel: bytes) -> str | None:
        """The task id of ``channel``, while somebody waits on it."""
        entry = self._entries.get(channel)
        return None if entry is None else entry.task_id

    def watched(self, channel: bytes) -> bool:
        """Whether ``channel`` has watchers."""
        entry = self._entries.get(channel)
        return entry is not None and bool(entry.watchers)

    # -- registration: one path for wait_for, watch and as_completed ------------------------------

    def waiter(self, channel: bytes, task_id: str) -> asyncio.Future[ResultMeta]:
        """A new ``wait_for`` future on ``channel``, registered; undo with :meth:`remove`."""
        fut: asyncio.Future[ResultMeta] = asyncio.get_running_loop().create_future()
        self.add(channel, task_id, fut)
        return fut

    def watcher(self, channel: bytes, task_id: str) -> Watcher:
        """A new watcher on ``channel``, registered; undo with :meth:`remove`."""
        watcher = Watcher(self._seq + 1)
        self.add(channel, task_id, watcher)
        return watcher

    def add(self, channel: bytes, task_id: str, receiver: Receiver) -> None:
        """Register a receiver; the backend hears of it (``on_join``)."""
        entry = self._entries.get(channel)
        if entry is None:
            entry = self._entries[channel] = _Entry(task_id)
        if isinstance(receiver, Watcher):
            if entry.watchers:
                entry.watchers.append(receiver)
            else:
                entry.watchers = [receiver]
        else:
            entry.waiters.append(receiver)
        self._seq += 1
        self._on_join(channel)

    def remove(self, channel: bytes, receiver: Receiver) -> None:
        """Forget a receiver; the channel's last leaver triggers ``on_leave``. Idempotent."""
        entry = self._entries.get(channel)
        if entry is None:
            return
        receivers: list[asyncio.Future[ResultMeta]] | list[Watcher] | tuple[()]
        receivers = entry.watchers if isinstance(receiver, Watcher) else entry.waiters
        if receiver in receivers:
            receivers.remove(receiver)  # type: ignore[arg-type,union-attr]  # a list: it holds it
            if not entry.waiters and not entry.watchers:
                del self._entries[channel]
                self._on_leave(channel)

    # -- the connection's life -------------------------------------------------------------------

    @property
    def epoch(self) -> int:
        """Counts Pub/Sub connections (see ``new_connection``)."""
        return self._epoch

    def new_connection(self) -> None:
        """A new Pub/Sub connection starts: checks asked for before it are stale for watchers."""
        self._epoch += 1

    def check_token(self) -> CheckToken:
        """Taken when a check is asked for; handed back with its result to ``deliver_check``."""
        return CheckToken(self._seq, self._epoch)

    # -- delivery ----------------------------------------------------------------------------------

    async def decode_off_loop(self, channel: bytes, payload: bytes | None) -> Decoded | None:
        """Decode a payload that :func:`needs_offload` flags in a worker thread, so the event
        loop keeps running meanwhile; ``None`` when nobody waits on ``channel``. Hand the result
        to a ``deliver_*`` method as ``decoded``."""
        entry = self._entries.get(channel)
        if entry is None:
            return None
        work = partial(decode_result, entry.task_id, payload, max_size=self._max_size)
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, work)
        except PayloadDecodeError as exc:
            return exc

    def _decode(
        self, channel: bytes, payload: bytes | None, decoded: Decoded | None
    ) -> tuple[_Entry, ResultMeta] | None:
        entry = self._entries.get(channel)
        if entry is None:
            return None
        if decoded is None:
            try:
                decoded = decode_result(entry.task_id, payload, max_size=self._max_size)
            except Exception as exc:  # nothing a publisher sends may stop the reader
                decoded = exc if isinstance(exc, PayloadDecodeError) else None
                if decoded is None:
                    decoded = PayloadDecodeError(f"undecodable: {exc!r}", task_id=entry.task_id)
        if isinstance(decoded, PayloadDecodeError):
            message = str(decoded)
            self._fail_entry(entry, lambda task_id: PayloadDecodeError(message, task_id=task_id))
            return None
        return entry, decoded

    def deliver_message(
        self,
        channel: bytes,
        payload: bytes,
        decoded: Decoded | None = None,
        epoch: int | None = None,
    ) -> None:
        """A Pub/Sub message: to the waiters if ready, and to every watcher.

        ``decoded``: the payload decoded ahead (``decode_off_loop``); by default it is decoded
        here (the same for the other ``deliver_*`` methods). ``epoch``: the connection it
        arrived on, when it is delivered later (by default the current one): a message from an
        earlier connection must not make a watcher skip the current connection's check.
        """
        decoded_entry = self._decode(channel, payload, decoded)
        if decoded_entry is not None:
            entry, meta = decoded_entry
            _resolve(entry, meta)
            if epoch is None:
                epoch = self._epoch
            for watcher in entry.watchers:
                watcher.epoch = max(watcher.epoch, epoch)
                _show(watcher, payload, meta)

    def deliver_ready(
        self, channel: bytes, payload: bytes | None, decoded: Decoded | None = None
    ) -> bool:
        """A check result, to the waiters only (watchers get it later, see ``deliver_check``);
        True if it was ready and some waiter got it."""
        entry = self._entries.get(channel)
        if entry is None or payload is None or not entry.waiters:
            return False  # nobody waits, or PENDING, which waiters ignore
        decoded_entry = self._decode(channel, payload, decoded)
        return decoded_entry is not None and _resolve(*decoded_entry)

    def deliver_check(
        self,
        channel: bytes,
        payload: bytes | None,
        token: CheckToken,
        decoded: Decoded | None = None,
    ) -> None:
        """A check result, to the waiters and to the watchers it may reach (module docstring)."""
        entry = self._entries.get(channel)
        if entry is None:
            return
        if not entry.watchers or token.epoch != self._epoch:
            self.deliver_ready(channel, payload, decoded)
            return
        decoded_entry = self._decode(channel, payload, decoded)
        if decoded_entry is None:
            return
        entry, meta = decoded_entry
        _resolve(entry, meta)
        raw = _PENDING_PAYLOAD if payload is None else payload
        epoch = self._epoch
        for watcher in entry.watchers:
            if watcher.seq > token.seq or watcher.epoch == epoch:
                continue
            watcher.epoch = epoch
            _show(watcher, raw, meta)

    def rewind_watchers(self, channel: bytes) -> None:
        """Let the next check reach this channel's watchers again.

        For a channel that was unsubscribed while they watched: writes in that gap reached
        nobody, so the check after the resubscribe is news, whatever they were given before.
        """
        entry = self._entries.get(channel)
        if entry is not None:
            for watcher in entry.watchers:
                watcher.epoch = -1

    # -- failure -----------------------------------------------------------------------------------

    def fail(self, channel: bytes, make_exc: ErrorFactory) -> None:
        """Fail every waiter and watcher of one channel with a fresh ``make_exc(task_id)`` each."""
        entry = self._entries.get(channel)
        if entry is not None:
            self._fail_entry(entry, make_exc)

    def fail_all(self, make_exc: ErrorFactory) -> int:
        """Fail every waiter and watcher; returns how many channels had some."""
        entries = list(self._entries.values())
        for entry in entries:
            self._fail_entry(entry, make_exc)
        return len(entries)

    @staticmethod
    def _fail_entry(entry: _Entry, make_exc: ErrorFactory) -> None:
        # One exception object per receiver: a shared one would grow its traceback at every raise.
        for fut in entry.waiters:
            if not fut.done():
                fut.set_exception(make_exc(entry.task_id))
        for watcher in entry.watchers:
            if not watcher.finished:
                watcher.push(make_exc(entry.task_id))


def _resolve(entry: _Entry, meta: ResultMeta) -> bool:
    """Resolve the entry's waiters with a ready ``meta``; True if any was still waiting."""
    resolved = False
    if entry.waiters and meta.status in READY_STATES:
        for fut in entry.waiters:
            if not fut.done():
                fut.set_result(meta)
                resolved = True
    return resolved


def _show(watcher: Watcher, raw: bytes, meta: ResultMeta) -> None:
    if raw != watcher.last_payload:
        watcher.last_payload = raw
        watcher.push(meta)
