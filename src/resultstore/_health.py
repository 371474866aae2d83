"""Liveness of a link and the give-up clock: pure arithmetic on loop time, no I/O, no asyncio.

``Liveness`` answers "is the other end still answering?": after ``interval`` without a read a
PING is due; ``timeout`` later without a read the link is dead. ``HealthClock`` answers "has the
store been unable to serve its waiters for longer than ``reconnect_timeout``?": it counts from the
last moment the link was healthy (up, every wanted channel confirmed and read), not from the last
TCP connect, so a link that connects but never becomes healthy still runs the clock out.

Detection fits inside the clock: :func:`budget` caps the ping interval and timeout at a quarter of
``reconnect_timeout`` each, so a healthy idle link is read (PONG) well within the limit and a dead
one is noticed, and given up on, within ``reconnect_timeout`` of its last answer.
"""

from __future__ import annotations

__all__ = ["HealthClock", "Liveness", "budget"]


def budget(
    ping_interval: float, ping_timeout: float, reconnect_timeout: float
) -> tuple[float, float]:
    """The ping interval and timeout actually used: at most a quarter of the clock each."""
    share = reconnect_timeout / 4
    return min(ping_interval, share), min(ping_timeout, share)


class Liveness:
    """When to PING a quiet link, and when a quiet link is dead."""

    __slots__ = ("_interval", "_last_read", "_ping_sent", "_timeout")

    def __init__(self, *, interval: float, timeout: float, now: float) -> None:
        self._interval = interval
        self._timeout = timeout
        self._last_read = now
        self._ping_sent: float | None = None

    @property
    def last_read(self) -> float:
        """When the link last delivered anything."""
        return self._last_read

    def on_read(self, now: float) -> None:
        """Something was read: the other end is alive."""
        self._last_read = now
        self._ping_sent = None

    def ping_due(self, now: float) -> bool:
        """Whether a liveness PING should be written now."""
        return self._ping_sent is None and now - self._last_read >= self._interval

    def on_ping_sent(self, now: float) -> None:
        """A liveness PING was written."""
        self._ping_sent = now

    def expired(self, now: float) -> bool:
        """Whether a PING went unanswered for ``timeout``: the link is dead."""
        return self._ping_sent is not None and now - self._ping_sent >= self._timeout

    def deadline(self) -> float:
        """The next moment ``ping_due`` or ``expired`` may change."""
        if self._ping_sent is not None:
            return self._ping_sent + self._timeout
        return self._last_read + self._interval


class HealthClock:
    """The give-up clock: runs out ``limit`` seconds after the store became unable to serve.

    The owner says since when (the older of: the longest-waiting unsettled channel, the moment
    the link last answered before it was lost); ``None`` means healthy. ``outage`` is True from
    the moment the clock is found run out until health is seen again: new waits fail at once
    meanwhile instead of waiting for their timeout.
    """

    __slots__ = ("limit", "outage")

    def __init__(self, *, limit: float) -> None:
        self.limit = limit
        self.outage = False

    def observe(self, now: float, unusable_since: float | None) -> bool:
        """Update the outage state; True exactly when an outage is declared by this call."""
        if unusable_since is None or now - unusable_since < self.limit:
            self.outage = False
            return False
        if self.outage:
            return False
        self.outage = True
        return True
