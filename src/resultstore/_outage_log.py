"""Rate-limited warnings for one Pub/Sub link's outages.

Today's reconnect loop fails every 50 ms to 1 s while Redis is away; one WARNING per attempt
floods a log. :class:`OutageLog` writes the first failure of an outage, then a summary every
``every`` seconds, then "recovered after N s"; the attempts in between go to DEBUG. Every record
carries the ``extra`` fields ``node``, ``reason`` and ``event`` (``docs/observability.md``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Final

__all__ = ["SUMMARY_EVERY", "OutageLog"]

SUMMARY_EVERY: Final = 30.0
"""Seconds between the summaries of one outage."""


class OutageLog:
    """Logs one link's outages: first failure, periodic summaries, recovery.

    Args:
        logger: where the records go.
        node: the secret-free target (``Connector.describe()``), in every record's ``node``.
        every: seconds between summaries while the outage lasts.
        clock: monotonic seconds (tests pass their own).
    """

    def __init__(
        self,
        logger: logging.Logger,
        node: str,
        *,
        every: float = SUMMARY_EVERY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._node = node
        self._every = every
        self._clock = clock
        self._since: float | None = None
        self._last_summary = 0.0
        self._failures = 0

    @property
    def active(self) -> bool:
        """Whether an outage is being reported (a failure not yet followed by recovery)."""
        return self._since is not None

    def failed(self, event: str, message: str, reason: str) -> None:
        """One failure: ``message`` (a sentence) and ``reason`` (why), for event ``event``
        (``pubsub.lost``, ``pubsub.connect_failed``)."""
        now = self._clock()
        extra = {"node": self._node, "reason": reason, "event": event}
        self._failures += 1
        if self._since is None:
            self._since = self._last_summary = now
            self._logger.warning("%s (%s)", message, reason, extra=extra)
        elif now - self._last_summary >= self._every:
            self._last_summary = now
            extra["event"] = "pubsub.still_failing"
            self._logger.warning(
                "resultstore Pub/Sub connection still failing after %.0f s (%d failures); last: %s",
                now - self._since,
                self._failures,
                reason,
                extra=extra,
            )
        else:
            self._logger.debug("%s (%s)", message, reason, extra=extra)

    def recovered(self) -> None:
        """The link serves again: say after how long, once per outage."""
        if self._since is None:
            return
        seconds = self._clock() - self._since
        self._logger.warning(
            "resultstore Pub/Sub connection recovered after %.1f s (%d failures)",
            seconds,
            self._failures,
            extra={"node": self._node, "reason": "recovered", "event": "pubsub.recovered"},
        )
        self._since = None
        self._failures = 0
