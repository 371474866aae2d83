"""Tests for resultstore._health: liveness, the give-up clock and the detection budget.

Pure arithmetic on loop time: every test passes times in, none sleeps.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resultstore._health import HealthClock, Liveness, budget

# --- Liveness -----------------------------------------------------------------------------------


def liveness(now: float = 100.0) -> Liveness:
    return Liveness(interval=5.0, timeout=2.0, now=now)


def test_a_fresh_link_counts_as_just_read() -> None:
    alive = liveness()
    assert alive.last_read == 100.0
    assert not alive.ping_due(100.0)
    assert not alive.expired(1_000.0)  # no PING sent: nothing can expire


def test_a_ping_is_due_once_the_link_was_quiet_for_the_interval() -> None:
    alive = liveness()
    assert not alive.ping_due(104.9)
    assert alive.ping_due(105.0)
    assert alive.ping_due(200.0)


def test_a_ping_is_not_due_again_while_one_is_unanswered() -> None:
    alive = liveness()
    alive.on_ping_sent(105.0)
    assert not alive.ping_due(105.0)
    assert not alive.ping_due(111.0)


def test_the_link_expires_timeout_after_the_ping_not_after_the_last_read() -> None:
    alive = liveness()
    alive.on_ping_sent(110.0)  # sent late: the link was quiet for 10 s already
    assert not alive.expired(111.9)
    assert alive.expired(112.0)


def test_a_read_answers_the_ping_and_restarts_the_interval() -> None:
    alive = liveness()
    alive.on_ping_sent(105.0)
    alive.on_read(106.0)
    assert alive.last_read == 106.0
    assert not alive.expired(200.0)
    assert not alive.ping_due(110.9)
    assert alive.ping_due(111.0)


def test_any_read_postpones_the_next_ping() -> None:
    alive = liveness()
    alive.on_read(103.0)
    assert not alive.ping_due(105.0)
    assert alive.ping_due(108.0)


def test_the_deadline_is_the_next_moment_ping_due_or_expired_may_change() -> None:
    alive = liveness()
    assert alive.deadline() == 105.0  # the PING becomes due
    alive.on_ping_sent(106.0)
    assert alive.deadline() == 108.0  # the PING expires
    alive.on_read(107.0)
    assert alive.deadline() == 112.0


@given(
    start=st.integers(0, 10**6),
    interval=st.integers(1, 1000),
    timeout=st.integers(1, 1000),
    late=st.integers(0, 1000),
)
def test_ping_due_and_expired_change_exactly_at_the_deadline(
    start: int, interval: int, timeout: int, late: int
) -> None:
    """Whole seconds, so the arithmetic is exact: the owner sleeps until the deadline."""
    alive = Liveness(interval=interval, timeout=timeout, now=start)
    due = alive.deadline()
    assert not alive.ping_due(due - 0.5)
    assert alive.ping_due(due)
    alive.on_ping_sent(due + late)
    dead = alive.deadline()
    assert dead == due + late + timeout
    assert not alive.expired(dead - 0.5)
    assert alive.expired(dead)


# --- HealthClock --------------------------------------------------------------------------------


def test_none_means_healthy_and_never_an_outage() -> None:
    clock = HealthClock(limit=10.0)
    assert clock.observe(1_000_000.0, None) is False
    assert clock.outage is False


def test_an_unusable_period_shorter_than_the_limit_is_not_an_outage() -> None:
    clock = HealthClock(limit=10.0)
    assert clock.observe(109.9, 100.0) is False
    assert clock.outage is False


def test_the_outage_is_declared_once_when_the_limit_is_reached() -> None:
    clock = HealthClock(limit=10.0)
    assert clock.observe(110.0, 100.0) is True
    assert clock.outage is True
    assert clock.observe(111.0, 100.0) is False  # declared already: waiters are not failed twice
    assert clock.observe(500.0, 100.0) is False
    assert clock.outage is True


def test_health_clears_the_outage_and_a_later_outage_is_declared_again() -> None:
    clock = HealthClock(limit=10.0)
    clock.observe(110.0, 100.0)
    assert clock.observe(111.0, None) is False
    assert clock.outage is False
    assert clock.observe(125.0, 115.0) is True
    assert clock.outage is True


def test_a_recent_unusable_since_clears_the_outage() -> None:
    """The clock counts from the owner's since: a newer start is a new, shorter period."""
    clock = HealthClock(limit=10.0)
    clock.observe(110.0, 100.0)
    assert clock.observe(111.0, 105.0) is False
    assert clock.outage is False


# --- budget -------------------------------------------------------------------------------------


def test_budget_keeps_interval_and_timeout_within_a_quarter_of_the_clock() -> None:
    assert budget(30.0, 20.0, 40.0) == (10.0, 10.0)


def test_budget_keeps_smaller_values() -> None:
    assert budget(2.0, 3.0, 40.0) == (2.0, 3.0)
    assert budget(2.0, 30.0, 40.0) == (2.0, 10.0)


@pytest.mark.parametrize("reconnect_timeout", [0.4, 4.0, 40.0, 400.0])
def test_a_dead_link_is_detected_within_half_the_clock(reconnect_timeout: float) -> None:
    """Quiet for the interval, then unanswered for the timeout: at most half of the clock."""
    interval, timeout = budget(60.0, 60.0, reconnect_timeout)
    assert interval + timeout <= reconnect_timeout / 2
