"""The subscription state machine of one Pub/Sub link: sans-IO, no asyncio, no redis.

The owner (the multiplexer) feeds it events and carries out what it answers; it never touches a
socket itself, so every rule below is tested without a server (``tests/test_subscriptions.py``).

Each channel has a server-side state (absent means the server holds no subscription) and,
independently, whether somebody wants it. Commands written to the link are tracked in order,
because Redis answers them in order (messages may come between, replies never overtake each other),
so every reply is matched to the command it belongs to; anything else is a protocol violation.

Transition table (``-`` = absent; *queued* = waiting in the outbox for the next ``commands()``)::

    state          event                     next state      action out
    -------------  ------------------------  --------------  ------------------------------------
    -              want                      - (queued)      SUBSCRIBE at the next commands()
    - (queued)     unwant                    -               dropped from the outbox
    - (queued)     commands()                SUBSCRIBING     SUBSCRIBE sent (batched, in bytes)
    SUBSCRIBING    want / unwant             SUBSCRIBING     none (the confirmation decides)
    SUBSCRIBING    confirmed, wanted         CHECKING        check (read the key)
    SUBSCRIBING    confirmed, unwanted       SUBSCRIBED      queued for UNSUBSCRIBE
    SUBSCRIBING    refused (NOPERM, batch)   - (queued)      each channel retried alone
    SUBSCRIBING    refused (NOPERM, alone)   - (refused)     fail the channel's waiters
    SUBSCRIBING    refused (other error)     raises LinkError: the owner rebuilds the link
    CHECKING       checked (a later round)   SUBSCRIBED      none (settled)
    CHECKING       want                      CHECKING        check again (a newcomer needs a read)
    SUBSCRIBED     want                      SUBSCRIBED      check (a newcomer needs a read; still
                                                             settled)
    CHECKING /
    SUBSCRIBED     unwant                    same (queued)   UNSUBSCRIBE at the next commands()
    UNSUBSCRIBING  unsubscribed, unwanted    -               none
    UNSUBSCRIBING  unsubscribed, wanted      - (queued)      SUBSCRIBE again; rewind watchers
    any            link lost                 -               every wanted channel queued again
    any            a reply nothing asked for raises ProtocolViolation (the owner drops the link)
    -, SUBSCRIBING message                   raises ProtocolViolation (no subscription yet)

Health: the link is healthy when it is up and every wanted channel is SUBSCRIBED (confirmed and
read); a channel refused by an ACL is not counted (its waiters were failed). The owner's health
clock (``_health.py``) counts from the last moment the link was seen healthy.

Batches are bounded in bytes: the confirmations of one command stay under ``batch_bytes``, and the
confirmations of every command in flight under ``window_bytes``, so whatever the task id length,
the server's Pub/Sub output buffer (8 MB soft, 32 MB hard by default) never fills with our
confirmations.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

__all__ = [
    "ChannelState",
    "Command",
    "LinkError",
    "ProtocolViolation",
    "Subscriptions",
    "confirmation_size",
]


class ChannelState(enum.Enum):
    """What the server holds for one channel on this link (absent: nothing)."""

    SUBSCRIBING = "subscribing"
    """SUBSCRIBE sent; its confirmation is due."""
    CHECKING = "checking"
    """Confirmed; the read of its key is due or under way."""
    SUBSCRIBED = "subscribed"
    """Confirmed and read: settled."""
    UNSUBSCRIBING = "unsubscribing"
    """UNSUBSCRIBE sent; its confirmation is due."""


class ProtocolViolation(Exception):
    """A reply or message that no command of ours explains: the link cannot be trusted."""


class LinkError(Exception):
    """The server refused a command for a passing reason (BUSY, LOADING, an unknown command):
    the link must be rebuilt; the health clock decides when waiters give up."""


@dataclass(slots=True)
class Command:
    """One command written to the link, and what its replies must be."""

    name: bytes
    """``SUBSCRIBE``, ``UNSUBSCRIBE`` or ``PING``."""
    args: list[bytes]
    """Channels, or the PING token (an empty list for a liveness PING)."""
    size: int = 0
    """Estimated bytes of the server's confirmations (counted against the window)."""
    answered: int = field(default=0, repr=False)
    """Replies read so far."""


_CONFIRMATION_OVERHEAD: Final = 48


def confirmation_size(channel: bytes) -> int:
    """Bytes of one ``subscribe``/``unsubscribe`` confirmation for ``channel`` (an upper bound)."""
    return len(channel) + _CONFIRMATION_OVERHEAD


_SUBSCRIBE: Final = b"SUBSCRIBE"
_UNSUBSCRIBE: Final = b"UNSUBSCRIBE"
_PING: Final = b"PING"
_CONFIRMED: Final = frozenset({ChannelState.CHECKING, ChannelState.SUBSCRIBED})
_MESSAGES_ALLOWED: Final = _CONFIRMED | {ChannelState.UNSUBSCRIBING}


class _Outbox:
    """Channels queued for the next ``commands()``: first in, first out, each once, with O(1)
    add, discard, peek and pop (a dict would make peeking after many pops O(n))."""

    __slots__ = ("_members", "_order")

    def __init__(self, channels: Iterable[bytes] = ()) -> None:
        self._members: set[bytes] = set()
        self._order: deque[bytes] = deque()
        for channel in channels:
            self.add(channel)

    def __bool__(self) -> bool:
        return bool(self._members)

    def __len__(self) -> int:
        return len(self._members)

    def __contains__(self, channel: object) -> bool:
        return channel in self._members

    def add(self, channel: bytes) -> None:
        if channel not in self._members:
            self._members.add(channel)
            self._order.append(channel)
            if len(self._order) > 2 * len(self._members) + 64:  # many discards: compact
                self._order = deque(c for c in dict.fromkeys(self._order) if c in self._members)

    def discard(self, channel: bytes) -> None:
        self._members.discard(channel)  # left in the order; skipped when it comes up
        if not self._members:
            self._members = set()  # give a large table back
            self._order.clear()

    def peek(self) -> bytes:
        while self._order[0] not in self._members:
            self._order.popleft()
        return self._order[0]

    def pop(self) -> bytes:
        channel = self.peek()
        self._order.popleft()
        self.discard(channel)
        return channel


class Subscriptions:
    """Per-channel state of one Pub/Sub link: events in, commands and checks out.

    Args:
        batch_bytes: most confirmation bytes one (UN)SUBSCRIBE command may cause.
        window_bytes: most confirmation bytes of all (UN)SUBSCRIBE commands in flight.
        batch_channels: most channels in one command.
    """

    def __init__(
        self,
        *,
        batch_bytes: int = 512 * 1024,
        window_bytes: int = 2 * 1024 * 1024,
        batch_channels: int = 10_000,
    ) -> None:
        self._batch_bytes = batch_bytes
        self._window_bytes = window_bytes
        self._batch_channels = batch_channels
        self.connected = False
        self.generation = 0
        """Counts links."""
        self._serial = 0  # counts checks asked for, over every link
        self._asked: dict[bytes, int] = {}  # CHECKING channel -> serial of its latest check
        self._state: dict[bytes, ChannelState] = {}
        self._wanted: set[bytes] = set()
        # Wanted and not SUBSCRIBED (refusals excepted) -> since when, oldest first.
        self._unsettled: dict[bytes, float] = {}
        self._outbox = _Outbox()  # channels whose wanted-ness differs from the server
        self._alone: set[bytes] = set()  # from a batch an ACL refused: subscribed one per command
        self._inflight: deque[Command] = deque()
        self._inflight_bytes = 0

    # -- queries -----------------------------------------------------------------------------------

    def state(self, channel: bytes) -> ChannelState | None:
        """The channel's server-side state; ``None`` when the server holds no subscription."""
        return self._state.get(channel)

    @property
    def wanted(self) -> frozenset[bytes]:
        """Channels somebody wants."""
        return frozenset(self._wanted)

    def wants(self, channel: bytes) -> bool:
        """Whether somebody wants ``channel``."""
        return channel in self._wanted

    @property
    def healthy(self) -> bool:
        """Up, and every wanted channel confirmed and read."""
        return self.connected and not self._unsettled

    def unsettled_since(self) -> float | None:
        """Since when the longest-waiting wanted channel has lacked confirmation or its read."""
        return next(iter(self._unsettled.values()), None)

    def confirmed(self) -> int:
        """Channels the server confirmed and has not been asked to drop."""
        return sum(1 for state in self._state.values() if state in _CONFIRMED)

    @property
    def pending_output(self) -> bool:
        """Whether ``commands()`` may have something to send now (the next queued channel fits
        in the window)."""
        if not self._outbox or not self.connected:
            return False
        if not self._inflight:
            return True
        first = confirmation_size(self._outbox.peek())
        return self._inflight_bytes + first <= self._window_bytes

    def ticket(self) -> int:
        """Taken when a round of checks starts; handed back to ``on_checked``. A check settles a
        channel only if it was asked after the channel's latest confirmation (or re-check)."""
        return self._serial

    def _ask_check(self, channel: bytes) -> None:
        self._serial += 1
        self._asked[channel] = self._serial
        self._state[channel] = ChannelState.CHECKING

    @property
    def inflight(self) -> int:
        """Commands written and not fully answered."""
        return len(self._inflight)

    # -- events from the registry ------------------------------------------------------------------

    def want(self, channel: bytes, now: float) -> bool:
        """Somebody (first or another) registered interest in ``channel`` at time ``now``.

        Returns:
            True when the owner must read the key now: the channel is already confirmed on this
            link, so no confirmation will trigger the read the newcomer needs.
        """
        self._wanted.add(channel)
        state = self._state.get(channel)
        if state is ChannelState.SUBSCRIBED or state is ChannelState.CHECKING:
            # Confirmed on this link: the newcomer needs a read of its own (True), but the
            # channel's health is its confirmation's read, so a hot channel joined again and
            # again is not kept unsettled by every newcomer.
            self._outbox.discard(channel)  # an UNSUBSCRIBE not sent yet is no longer wanted
            if state is ChannelState.CHECKING:
                self._unsettled.setdefault(channel, now)
            return self.connected
        self._unsettled.setdefault(channel, now)
        if state is None:
            self._outbox.add(channel)
        return False

    def unwant(self, channel: bytes) -> None:
        """The last interest in ``channel`` left."""
        self._wanted.discard(channel)
        self._unsettled.pop(channel, None)
        self._alone.discard(channel)
        state = self._state.get(channel)
        if state is None:
            self._outbox.discard(channel)
        elif state is ChannelState.CHECKING or state is ChannelState.SUBSCRIBED:
            self._outbox.add(channel)

    # -- events from the link ----------------------------------------------------------------------

    def link_up(self) -> None:
        """A new connection is ready: every wanted channel must be subscribed on it."""
        self._reset()
        self.connected = True

    def link_lost(self, last_good: float) -> None:
        """The connection is gone: the server holds nothing of ours any more.

        Args:
            last_good: the last moment the link answered; channels that were settled count as
                unsettled from then on (detection is part of the outage).
        """
        self._reset()
        self.connected = False
        unsettled = self._unsettled
        for channel in self._wanted:
            unsettled.setdefault(channel, last_good)
        self._unsettled = dict(sorted(unsettled.items(), key=lambda item: item[1]))

    def _reset(self) -> None:
        self.generation += 1
        self._state.clear()
        self._inflight.clear()
        self._inflight_bytes = 0
        self._asked.clear()
        self._outbox = _Outbox(self._wanted)

    def commands(self) -> list[Command]:
        """The commands to write now (and record as in flight), within the byte window."""
        if not self.connected:
            return []
        out: list[Command] = []
        subs: list[bytes] = []
        unsubs: list[bytes] = []
        room = self._window_bytes - self._inflight_bytes
        outbox = self._outbox
        while outbox:
            channel = outbox.peek()
            size = confirmation_size(channel)
            if room < size and (out or subs or unsubs or self._inflight):
                break
            outbox.pop()
            state = self._state.get(channel)
            if channel in self._wanted:
                if state is not None:
                    continue  # wanted again before its UNSUBSCRIBE went out, or in flight
                if channel in self._alone:
                    out.append(self._record(_SUBSCRIBE, [channel]))
                else:
                    subs.append(channel)
                self._state[channel] = ChannelState.SUBSCRIBING
            elif state is ChannelState.CHECKING or state is ChannelState.SUBSCRIBED:
                unsubs.append(channel)
                self._state[channel] = ChannelState.UNSUBSCRIBING
                self._asked.pop(channel, None)
            else:
                continue
            room -= size
        out += self._batches(_SUBSCRIBE, subs)
        out += self._batches(_UNSUBSCRIBE, unsubs)
        return out

    def _batches(self, name: bytes, channels: list[bytes]) -> list[Command]:
        out = []
        batch: list[bytes] = []
        size = 0
        for channel in channels:
            one = confirmation_size(channel)
            if batch and (size + one > self._batch_bytes or len(batch) >= self._batch_channels):
                out.append(self._record(name, batch))
                batch, size = [], 0
            batch.append(channel)
            size += one
        if batch:
            out.append(self._record(name, batch))
        return out

    def _record(self, name: bytes, args: list[bytes]) -> Command:
        size = sum(map(confirmation_size, args)) if name != _PING else 0
        command = Command(name, args, size)
        self._inflight.append(command)
        self._inflight_bytes += size
        return command

    def ping(self, token: bytes = b"") -> Command:
        """A PING to write now; its PONG comes after everything the server queued before it."""
        if not self.connected:
            raise ProtocolViolation("PING on a link that is not up")
        return self._record(_PING, [token] if token else [])

    def _head(self, name: bytes, what: str) -> Command:
        if not self._inflight or self._inflight[0].name != name:
            expected = self._inflight[0].name.decode() if self._inflight else "nothing"
            raise ProtocolViolation(f"{what} while {expected} was due")
        return self._inflight[0]

    def _confirm(self, name: bytes, channel: bytes) -> None:
        """Match a confirmation to the head command (the hot path: one per message's
        subscription and one per unsubscription)."""
        inflight = self._inflight
        if not inflight or inflight[0].name != name:
            what = "an unsubscribe" if name == _UNSUBSCRIBE else "a subscribe"
            self._head(name, f"{what} confirmation of {channel!r}")  # raises
        command = inflight[0]
        if command.args[command.answered] != channel:
            raise ProtocolViolation(
                f"{name.decode().lower()} confirmation of {channel!r} out of order"
            )
        command.answered += 1
        self._inflight_bytes -= len(channel) + _CONFIRMATION_OVERHEAD
        if command.answered == len(command.args):
            inflight.popleft()

    def on_subscribed(self, channel: bytes) -> bool:
        """The server confirmed a SUBSCRIBE of ``channel``.

        Returns:
            True when the owner must read the key now (somebody still wants the channel).
        """
        self._confirm(_SUBSCRIBE, channel)
        self._alone.discard(channel)
        if channel in self._wanted:
            self._ask_check(channel)
            return True
        self._state[channel] = ChannelState.SUBSCRIBED
        self._outbox.add(channel)
        return False

    def on_unsubscribed(self, channel: bytes) -> bool:
        """The server confirmed an UNSUBSCRIBE of ``channel``.

        Returns:
            True when the channel was wanted again meanwhile: it is queued for a new SUBSCRIBE,
            and whatever was written in the gap reached nobody (watchers must take the next read
            as news).
        """
        self._confirm(_UNSUBSCRIBE, channel)
        state = self._state
        del state[channel]
        if not state:
            state.clear()  # give a large table back
        if channel in self._wanted:
            self._outbox.add(channel)
            return True
        return False

    def on_pong(self, token: bytes) -> bytes:
        """The server answered a PING; returns its token (empty for a liveness PING)."""
        command = self._head(_PING, "a PONG")
        expected = command.args[0] if command.args else b""
        if token != expected:
            raise ProtocolViolation(f"PONG {token!r} while PONG {expected!r} was due")
        self._inflight.popleft()
        return token

    def on_refused(self, *, permission: bool, reason: str) -> list[bytes]:
        """The server answered the head command with an error.

        Args:
            permission: the error is an ACL refusal (NOPERM), which retrying cannot fix.

        Returns:
            The channels whose waiters must fail (an ACL refused them, one by one).

        Raises:
            LinkError: a passing refusal (anything but NOPERM): rebuild the link and retry.
            ProtocolViolation: an error no command of ours explains.
        """
        command = self._head(_SUBSCRIBE, f"an error reply ({reason})")
        if command.answered:
            raise ProtocolViolation(f"an error reply ({reason}) in the middle of a SUBSCRIBE")
        if not permission:
            raise LinkError(f"Redis refused SUBSCRIBE: {reason}")
        self._inflight.popleft()
        self._inflight_bytes -= command.size
        for channel in command.args:
            del self._state[channel]
        wanted = [channel for channel in command.args if channel in self._wanted]
        if len(command.args) > 1:  # one forbidden channel refuses its batch: try each alone
            self._alone.update(wanted)
            for channel in wanted:
                self._outbox.add(channel)
            return []
        self._alone.difference_update(wanted)
        for channel in wanted:
            self._unsettled.pop(channel, None)
        return wanted

    def on_message(self, channel: bytes) -> None:
        """A message arrived on ``channel``; legal only on a confirmed subscription."""
        if self._state.get(channel) not in _MESSAGES_ALLOWED:
            raise ProtocolViolation(f"a message on {channel!r}, which is not subscribed")

    # -- events from the owner's reads -------------------------------------------------------------

    def on_checked(self, channel: bytes, ticket: int) -> None:
        """The read of ``channel``'s key, in the round that took ``ticket``, was delivered."""
        asked = self._asked.get(channel)
        if asked is None or asked > ticket or self._state.get(channel) is not ChannelState.CHECKING:
            return  # a round from before the latest confirmation, or the channel moved on
        del self._asked[channel]
        self._state[channel] = ChannelState.SUBSCRIBED
        self._unsettled.pop(channel, None)
        if not self._unsettled:
            self._unsettled.clear()  # give a large table back (and keep peeking at it O(1))
        if not self._asked:
            self._asked.clear()
