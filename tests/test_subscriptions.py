"""Tests for resultstore._subscriptions: the transition table, row by row, without a server.

The unit tests follow the table of the module docstring, one row each, then the illegal
transitions and the byte bounds. ``SubscriptionsMachine`` drives random sequences against a model
Redis server (it answers the oldest written command, refuses forbidden channels with NOPERM and
publishes on the channels it holds) and checks the machine's states, commands and health against a
model after every step, and convergence whenever the link goes quiet.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from resultstore._subscriptions import (
    ChannelState,
    Command,
    LinkError,
    ProtocolViolation,
    Subscriptions,
    confirmation_size,
)

A = b"celery-task-meta-a"
B = b"celery-task-meta-b"
C = b"celery-task-meta-c"
F = b"celery-task-meta-forbidden"

SUBSCRIBE = b"SUBSCRIBE"
UNSUBSCRIBE = b"UNSUBSCRIBE"
PING = b"PING"


def link(*, batch_bytes: int = 512 * 1024, window_bytes: int = 2 * 1024 * 1024) -> Subscriptions:
    """A machine whose link is up."""
    subs = Subscriptions(batch_bytes=batch_bytes, window_bytes=window_bytes)
    subs.link_up()
    return subs


def sent(commands: list[Command]) -> list[tuple[bytes, list[bytes]]]:
    """What was written, as (name, args) pairs."""
    return [(command.name, command.args) for command in commands]


def confirm(subs: Subscriptions, *channels: bytes, now: float = 0.0) -> None:
    """Want ``channels`` and have the server confirm them: each ends CHECKING."""
    for channel in channels:
        subs.want(channel, now)
    for command in subs.commands():
        assert command.name == SUBSCRIBE
        for channel in command.args:
            assert subs.on_subscribed(channel)


def settle(subs: Subscriptions, *channels: bytes, now: float = 0.0) -> None:
    """Want ``channels``, have them confirmed and their keys read: each ends SUBSCRIBED."""
    confirm(subs, *channels, now=now)
    for channel in channels:
        subs.on_checked(channel, subs.ticket())


def unsubscribing(subs: Subscriptions, channel: bytes) -> None:
    """A settled ``channel`` nobody wants any more, its UNSUBSCRIBE written."""
    settle(subs, channel)
    subs.unwant(channel)
    assert sent(subs.commands()) == [(UNSUBSCRIBE, [channel])]


# --- the transition table, row by row -------------------------------------------------------


def test_want_of_an_absent_channel_queues_a_subscribe_for_the_next_commands() -> None:
    subs = link()
    assert subs.want(A, 1.0) is False  # no check: nothing is confirmed yet
    assert subs.state(A) is None
    assert subs.pending_output
    assert subs.healthy is False
    assert subs.unsettled_since() == 1.0
    assert sent(subs.commands()) == [(SUBSCRIBE, [A])]


def test_want_while_down_is_subscribed_once_the_link_is_up() -> None:
    subs = Subscriptions()
    assert subs.want(A, 1.0) is False
    assert subs.commands() == []
    assert subs.healthy is False
    subs.link_up()
    assert sent(subs.commands()) == [(SUBSCRIBE, [A])]


def test_unwant_of_a_queued_channel_drops_it_from_the_outbox() -> None:
    subs = link()
    subs.want(A, 1.0)
    subs.unwant(A)
    assert subs.commands() == []
    assert subs.state(A) is None
    assert subs.healthy is True
    assert subs.unsettled_since() is None


def test_commands_batch_queued_channels_into_one_subscribe_and_mark_them_subscribing() -> None:
    subs = link()
    for channel in (A, B, C):
        subs.want(channel, 1.0)
    [command] = subs.commands()
    assert (command.name, command.args) == (SUBSCRIBE, [A, B, C])
    assert command.size == sum(map(confirmation_size, (A, B, C)))
    assert all(subs.state(channel) is ChannelState.SUBSCRIBING for channel in (A, B, C))
    assert subs.inflight == 1
    assert subs.commands() == []  # written once, not again


def test_commands_return_nothing_while_the_link_is_down() -> None:
    subs = Subscriptions()
    subs.want(A, 1.0)
    assert subs.pending_output is False
    assert subs.commands() == []


@pytest.mark.parametrize("interest", [[True], [False], [False, True]])
def test_want_or_unwant_of_a_subscribing_channel_waits_for_its_confirmation(
    interest: list[bool],
) -> None:
    subs = link()
    subs.want(A, 1.0)
    subs.commands()
    for wanted in interest:
        if wanted:
            assert subs.want(A, 2.0) is False  # no check before the confirmation
        else:
            subs.unwant(A)
    assert subs.state(A) is ChannelState.SUBSCRIBING
    assert subs.commands() == []


def test_confirmation_of_a_wanted_channel_asks_for_a_check() -> None:
    subs = link()
    subs.want(A, 1.0)
    subs.commands()
    assert subs.on_subscribed(A) is True
    assert subs.state(A) is ChannelState.CHECKING
    assert subs.confirmed() == 1
    assert subs.inflight == 0
    assert subs.healthy is False  # confirmed, not read yet
    assert subs.unsettled_since() == 1.0
    assert subs.commands() == []


def test_confirmation_of_an_unwanted_channel_queues_its_unsubscribe_without_a_check() -> None:
    subs = link()
    subs.want(A, 1.0)
    subs.commands()
    subs.unwant(A)
    assert subs.on_subscribed(A) is False
    assert subs.state(A) is ChannelState.SUBSCRIBED
    assert subs.healthy is True
    assert sent(subs.commands()) == [(UNSUBSCRIBE, [A])]
    assert subs.state(A) is ChannelState.UNSUBSCRIBING
    assert subs.confirmed() == 0


def test_noperm_on_a_batch_queues_each_wanted_channel_to_be_subscribed_alone() -> None:
    subs = link()
    for channel in (A, F, B):
        subs.want(channel, 1.0)
    subs.commands()
    assert subs.on_refused(permission=True, reason="NOPERM") == []  # nobody fails yet
    assert [subs.state(channel) for channel in (A, F, B)] == [None, None, None]
    assert subs.inflight == 0
    assert sent(subs.commands()) == [(SUBSCRIBE, [A]), (SUBSCRIBE, [F]), (SUBSCRIBE, [B])]


def test_noperm_on_a_batch_drops_the_channels_nobody_wants_any_more() -> None:
    subs = link()
    for channel in (A, F, B):
        subs.want(channel, 1.0)
    subs.commands()
    subs.unwant(B)
    assert subs.on_refused(permission=True, reason="NOPERM") == []
    assert sent(subs.commands()) == [(SUBSCRIBE, [A]), (SUBSCRIBE, [F])]


def test_noperm_on_a_lone_channel_fails_it_and_stops_counting_it_against_health() -> None:
    subs = link()
    subs.want(F, 1.0)
    subs.commands()
    assert subs.on_refused(permission=True, reason="NOPERM") == [F]
    assert subs.state(F) is None
    assert subs.commands() == []  # not retried on this link
    assert subs.healthy is True
    assert subs.unsettled_since() is None


def test_noperm_on_a_batch_retries_each_alone_and_fails_only_the_forbidden_channel() -> None:
    subs = link()
    for channel in (A, F, B):
        subs.want(channel, 1.0)
    subs.commands()
    subs.on_refused(permission=True, reason="NOPERM")
    subs.commands()  # SUBSCRIBE A; SUBSCRIBE F; SUBSCRIBE B
    assert subs.on_subscribed(A) is True
    assert subs.on_refused(permission=True, reason="NOPERM") == [F]
    assert subs.on_subscribed(B) is True
    subs.on_checked(A, subs.ticket())
    subs.on_checked(B, subs.ticket())
    assert [subs.state(channel) for channel in (A, F, B)] == [
        ChannelState.SUBSCRIBED,
        None,
        ChannelState.SUBSCRIBED,
    ]
    assert subs.healthy is True
    assert subs.confirmed() == 2


def test_noperm_on_an_unwanted_lone_channel_fails_nobody() -> None:
    subs = link()
    subs.want(F, 1.0)
    subs.commands()
    subs.unwant(F)
    assert subs.on_refused(permission=True, reason="NOPERM") == []
    assert subs.commands() == []


def test_a_refused_channel_wanted_again_is_retried() -> None:
    subs = link()
    subs.want(F, 1.0)
    subs.commands()
    subs.on_refused(permission=True, reason="NOPERM")
    assert subs.want(F, 2.0) is False
    assert subs.healthy is False
    assert sent(subs.commands()) == [(SUBSCRIBE, [F])]


def test_a_refusal_other_than_noperm_raises_link_error() -> None:
    subs = link()
    subs.want(A, 1.0)
    subs.commands()
    with pytest.raises(LinkError, match="BUSY"):
        subs.on_refused(permission=False, reason="BUSY Redis is busy running a script")


def test_a_completed_check_settles_the_channel() -> None:
    subs = link()
    confirm(subs, A, now=1.0)
    subs.on_checked(A, subs.ticket())
    assert subs.state(A) is ChannelState.SUBSCRIBED
    assert subs.healthy is True
    assert subs.unsettled_since() is None


def test_a_check_asked_on_an_earlier_link_settles_nothing() -> None:
    subs = link()
    confirm(subs, A, now=1.0)
    stale = subs.ticket()
    subs.link_lost(2.0)
    subs.link_up()
    confirm(subs, now=3.0)  # A is queued again: confirmed on the new link
    assert subs.state(A) is ChannelState.CHECKING
    subs.on_checked(A, stale)
    assert subs.state(A) is ChannelState.CHECKING
    assert subs.healthy is False


def test_a_check_of_a_channel_that_moved_on_is_ignored() -> None:
    subs = link()
    unsubscribing(subs, A)
    subs.on_checked(A, subs.ticket())
    assert subs.state(A) is ChannelState.UNSUBSCRIBING


def test_want_of_a_checking_channel_asks_for_another_check() -> None:
    subs = link()
    confirm(subs, A, now=1.0)
    assert subs.want(A, 2.0) is True
    assert subs.state(A) is ChannelState.CHECKING
    assert subs.unsettled_since() == 1.0  # unsettled since the first want still
    assert subs.commands() == []


def test_want_of_a_subscribed_channel_asks_for_a_check_and_stays_settled() -> None:
    """A newcomer on a settled channel gets a read of its own, but the channel stays settled:
    its health is its confirmation's read (a hot id joined again and again would otherwise never
    settle, and the health clock would declare a false outage)."""
    subs = link()
    settle(subs, A)
    assert subs.want(A, 5.0) is True
    assert subs.state(A) is ChannelState.SUBSCRIBED
    assert subs.healthy is True
    assert subs.unsettled_since() is None
    assert subs.commands() == []


def test_a_hot_channel_settles_with_the_round_after_its_confirmation() -> None:
    """Joins while the confirmation's read is under way ask for more reads, but the first read
    that started after the confirmation settles the channel."""
    subs = link()
    confirm(subs, A, now=1.0)
    first_round = subs.ticket()
    for now in (2.0, 3.0, 4.0):
        assert subs.want(A, now) is True
    subs.on_checked(A, first_round)
    assert subs.state(A) is ChannelState.SUBSCRIBED
    assert subs.healthy is True


@pytest.mark.parametrize("state", [ChannelState.CHECKING, ChannelState.SUBSCRIBED])
def test_unwant_of_a_confirmed_channel_queues_its_unsubscribe(state: ChannelState) -> None:
    subs = link()
    confirm(subs, A)
    if state is ChannelState.SUBSCRIBED:
        subs.on_checked(A, subs.ticket())
    subs.unwant(A)
    assert subs.state(A) is state
    assert subs.confirmed() == 1  # not asked to drop it yet
    assert subs.healthy is True
    [command] = subs.commands()
    assert (command.name, command.args) == (UNSUBSCRIBE, [A])
    assert command.size == confirmation_size(A)
    assert subs.state(A) is ChannelState.UNSUBSCRIBING
    assert subs.confirmed() == 0


def test_unwant_then_want_before_the_unsubscribe_is_written_keeps_the_subscription() -> None:
    subs = link()
    settle(subs, A)
    subs.unwant(A)
    assert subs.want(A, 2.0) is True  # the newcomer still needs a read
    assert subs.commands() == []
    assert subs.state(A) is ChannelState.SUBSCRIBED  # still settled


def test_unsubscribe_confirmation_of_an_unwanted_channel_forgets_it() -> None:
    subs = link()
    unsubscribing(subs, A)
    assert subs.on_unsubscribed(A) is False
    assert subs.state(A) is None
    assert subs.inflight == 0
    assert subs.commands() == []


def test_unsubscribe_confirmation_of_a_channel_wanted_again_subscribes_it_and_rewinds() -> None:
    subs = link()
    unsubscribing(subs, A)
    assert subs.want(A, 2.0) is False  # no check: the subscription is going away
    assert subs.state(A) is ChannelState.UNSUBSCRIBING
    assert subs.on_unsubscribed(A) is True
    assert subs.state(A) is None
    assert sent(subs.commands()) == [(SUBSCRIBE, [A])]
    assert subs.on_subscribed(A) is True


def test_link_lost_forgets_the_server_side_and_queues_every_wanted_channel_again() -> None:
    subs = link()
    settle(subs, A, B)
    subs.want(C, 3.0)
    subs.commands()
    subs.ping(b"token")
    generation = subs.generation
    subs.link_lost(2.0)
    assert subs.generation == generation + 1
    assert [subs.state(channel) for channel in (A, B, C)] == [None, None, None]
    assert subs.connected is False
    assert subs.healthy is False
    assert subs.inflight == 0
    assert subs.confirmed() == 0
    assert subs.unsettled_since() == 2.0  # settled ones count from the last good moment
    assert subs.commands() == []
    subs.link_up()
    [command] = subs.commands()
    assert (command.name, sorted(command.args)) == (SUBSCRIBE, [A, B, C])


def test_link_lost_keeps_an_older_unsettled_time_and_orders_oldest_first() -> None:
    subs = link()
    settle(subs, A)
    subs.want(B, 1.0)  # unsettled since 1.0, older than the last good moment
    subs.link_lost(5.0)
    assert subs.unsettled_since() == 1.0
    subs.unwant(B)
    assert subs.unsettled_since() == 5.0


def test_link_lost_forgets_refusals() -> None:
    subs = link()
    subs.want(F, 1.0)
    subs.commands()
    subs.on_refused(permission=True, reason="NOPERM")
    subs.link_lost(2.0)
    assert subs.unsettled_since() == 2.0
    subs.link_up()
    assert sent(subs.commands()) == [(SUBSCRIBE, [F])]


def test_a_link_without_wanted_channels_is_healthy_only_while_up() -> None:
    subs = Subscriptions()
    assert subs.healthy is False
    subs.link_up()
    assert subs.healthy is True
    subs.link_lost(1.0)
    assert subs.healthy is False
    assert subs.unsettled_since() is None


def test_pong_answers_its_ping_with_its_token() -> None:
    subs = link()
    liveness = subs.ping()
    barrier = subs.ping(b"resultstore-1")
    assert (liveness.name, liveness.args, liveness.size) == (PING, [], 0)
    assert (barrier.name, barrier.args) == (PING, [b"resultstore-1"])
    assert subs.inflight == 2
    assert subs.on_pong(b"") == b""
    assert subs.on_pong(b"resultstore-1") == b"resultstore-1"
    assert subs.inflight == 0


def test_ping_on_a_link_that_is_down_is_a_protocol_violation() -> None:
    with pytest.raises(ProtocolViolation):
        Subscriptions().ping()


@pytest.mark.parametrize(
    "state", [ChannelState.CHECKING, ChannelState.SUBSCRIBED, ChannelState.UNSUBSCRIBING]
)
def test_a_message_on_a_confirmed_channel_is_legal(state: ChannelState) -> None:
    subs = link()
    if state is ChannelState.UNSUBSCRIBING:
        unsubscribing(subs, A)
    else:
        confirm(subs, A)
        if state is ChannelState.SUBSCRIBED:
            subs.on_checked(A, subs.ticket())
    assert subs.state(A) is state
    subs.on_message(A)


# --- illegal transitions ------------------------------------------------------------------------


def test_a_confirmation_nothing_asked_for_is_a_protocol_violation() -> None:
    subs = link()
    with pytest.raises(ProtocolViolation, match="nothing"):
        subs.on_subscribed(A)
    with pytest.raises(ProtocolViolation):
        subs.on_unsubscribed(A)
    with pytest.raises(ProtocolViolation):
        subs.on_pong(b"")
    with pytest.raises(ProtocolViolation):
        subs.on_refused(permission=True, reason="NOPERM")


def test_a_reply_to_a_command_that_is_not_due_is_a_protocol_violation() -> None:
    subs = link()
    subs.ping()
    subs.want(A, 1.0)
    subs.commands()
    with pytest.raises(ProtocolViolation, match="PING was due"):
        subs.on_subscribed(A)  # the PONG comes first


def test_a_reply_from_an_earlier_link_is_a_protocol_violation() -> None:
    subs = link()
    subs.want(A, 1.0)
    subs.commands()
    subs.link_lost(1.0)
    subs.link_up()
    with pytest.raises(ProtocolViolation):
        subs.on_subscribed(A)


def test_an_out_of_order_confirmation_is_a_protocol_violation() -> None:
    subs = link()
    subs.want(A, 1.0)
    subs.want(B, 1.0)
    subs.commands()
    with pytest.raises(ProtocolViolation, match="out of order"):
        subs.on_subscribed(B)


def test_an_out_of_order_unsubscribe_confirmation_is_a_protocol_violation() -> None:
    subs = link()
    settle(subs, A, B)
    subs.unwant(A)
    subs.unwant(B)
    subs.commands()
    with pytest.raises(ProtocolViolation, match="out of order"):
        subs.on_unsubscribed(B)


def test_a_pong_with_the_wrong_token_is_a_protocol_violation() -> None:
    subs = link()
    subs.ping(b"resultstore-1")
    with pytest.raises(ProtocolViolation):
        subs.on_pong(b"resultstore-2")


@pytest.mark.parametrize("state", [None, ChannelState.SUBSCRIBING])
def test_a_message_on_an_unsubscribed_channel_is_a_protocol_violation(
    state: ChannelState | None,
) -> None:
    subs = link()
    if state is ChannelState.SUBSCRIBING:
        subs.want(A, 1.0)
        subs.commands()
    assert subs.state(A) is state
    with pytest.raises(ProtocolViolation, match="not subscribed"):
        subs.on_message(A)


def test_a_message_after_the_unsubscribe_confirmation_is_a_protocol_violation() -> None:
    subs = link()
    unsubscribing(subs, A)
    subs.on_unsubscribed(A)
    with pytest.raises(ProtocolViolation):
        subs.on_message(A)


def test_an_error_reply_in_the_middle_of_a_subscribe_is_a_protocol_violation() -> None:
    subs = link()
    subs.want(A, 1.0)
    subs.want(B, 1.0)
    subs.commands()
    subs.on_subscribed(A)
    with pytest.raises(ProtocolViolation, match="middle"):
        subs.on_refused(permission=True, reason="NOPERM")


@pytest.mark.parametrize("head", ["ping", "unsubscribe"])
def test_an_error_reply_to_anything_but_subscribe_is_a_protocol_violation(head: str) -> None:
    subs = link()
    if head == "ping":
        subs.ping()
    else:
        unsubscribing(subs, A)
    with pytest.raises(ProtocolViolation):
        subs.on_refused(permission=False, reason="ERR")


# --- byte bounds --------------------------------------------------------------------------------

LONG = [b"celery-task-meta-%04d-" % i + b"x" * 4096 for i in range(64)]


def test_with_long_channel_names_commands_stay_within_batch_and_window_bytes() -> None:
    batch_bytes, window_bytes = 16 * 1024, 40 * 1024
    subs = link(batch_bytes=batch_bytes, window_bytes=window_bytes)
    for channel in LONG:
        subs.want(channel, 1.0)
    first = subs.commands()
    assert len(first) > 1
    for command in first:
        assert command.size == sum(map(confirmation_size, command.args))
        assert command.size <= batch_bytes
    assert sum(command.size for command in first) <= window_bytes
    assert sum(command.size for command in first) > window_bytes - confirmation_size(LONG[0])
    written = [channel for command in first for channel in command.args]
    assert written == LONG[: len(written)]
    assert subs.commands() == []  # the window is full

    for channel in first[0].args:  # the oldest command is answered: its bytes are free again
        subs.on_subscribed(channel)
    second = subs.commands()
    assert second
    assert [channel for command in second for channel in command.args] == LONG[
        len(written) : len(written) + sum(len(command.args) for command in second)
    ]
    in_flight = sum(command.size for command in first[1:] + second)
    assert in_flight <= window_bytes


def test_after_confirmations_free_the_window_the_rest_goes_out() -> None:
    subs = link(batch_bytes=16 * 1024, window_bytes=40 * 1024)
    for channel in LONG:
        subs.want(channel, 1.0)
    written: list[bytes] = []
    while commands := subs.commands():
        for command in commands:
            written += command.args
            for channel in command.args:
                subs.on_subscribed(channel)
    assert written == LONG
    assert subs.confirmed() == len(LONG)


def test_a_channel_larger_than_the_window_goes_out_alone_when_nothing_is_in_flight() -> None:
    huge = b"celery-task-meta-" + b"h" * 8192
    subs = link(batch_bytes=1024, window_bytes=4096)
    subs.want(huge, 1.0)
    subs.want(A, 1.0)
    assert sent(subs.commands()) == [(SUBSCRIBE, [huge])]
    assert subs.commands() == []  # A waits: the window is over-full
    subs.on_subscribed(huge)
    assert sent(subs.commands()) == [(SUBSCRIBE, [A])]


def test_a_channel_larger_than_the_window_waits_while_something_is_in_flight() -> None:
    huge = b"celery-task-meta-" + b"h" * 8192
    subs = link(batch_bytes=1024, window_bytes=4096)
    subs.want(A, 1.0)
    subs.commands()
    subs.want(huge, 1.0)
    assert subs.commands() == []
    subs.on_subscribed(A)
    assert sent(subs.commands()) == [(SUBSCRIBE, [huge])]


def test_a_batch_holds_at_most_batch_channels_channels() -> None:
    subs = Subscriptions(batch_channels=2)
    subs.link_up()
    for channel in (A, B, C):
        subs.want(channel, 1.0)
    assert sent(subs.commands()) == [(SUBSCRIBE, [A, B]), (SUBSCRIBE, [C])]


def test_unsubscribes_are_batched_and_bounded_like_subscribes() -> None:
    subs = link(batch_bytes=16 * 1024, window_bytes=40 * 1024)
    for channel in LONG[:6]:
        subs.want(channel, 1.0)
    for command in subs.commands():
        for channel in command.args:
            subs.on_subscribed(channel)
    for channel in LONG[:6]:
        subs.unwant(channel)
    commands = subs.commands()
    assert {command.name for command in commands} == {UNSUBSCRIBE}
    assert all(command.size <= 16 * 1024 for command in commands)
    assert [channel for command in commands for channel in command.args] == LONG[:6]


# --- found by these tests, fixed since ---------------------------------------------------------


def test_a_check_from_before_a_resubscribe_does_not_settle_the_new_subscription() -> None:
    """A read asked before an UNSUBSCRIBE settles nothing of the next SUBSCRIBE on the link."""
    subs = link()
    confirm(subs, A)  # check #1 asked
    asked = subs.ticket()
    subs.unwant(A)
    subs.commands()  # UNSUBSCRIBE A
    subs.on_unsubscribed(A)
    subs.want(A, 2.0)
    subs.commands()  # SUBSCRIBE A
    assert subs.on_subscribed(A) is True  # check #2 asked: only it reads after this confirmation
    subs.on_checked(A, asked)  # check #1, read before the subscription existed, completes
    assert subs.state(A) is ChannelState.CHECKING
    assert subs.healthy is False


def test_pending_output_is_false_while_the_window_has_no_room_for_the_next_channel() -> None:
    """The owner's writer is not woken for a channel that cannot go out yet."""
    huge = b"celery-task-meta-" + b"h" * 8192
    subs = link(batch_bytes=1024, window_bytes=4096)
    subs.want(A, 1.0)
    subs.commands()  # A in flight
    subs.want(huge, 2.0)  # waits for A's confirmation: larger than the room left
    assert subs.commands() == []
    assert subs.pending_output is False


# --- the state machine against a model server ---------------------------------------------------

SHORT = (b"t-a", b"t-b", b"t-c", b"t-d")
MEDIUM = b"t-long-" + b"m" * 4096  # larger than a batch, fits the window
HUGE = b"t-huge-" + b"h" * 9000  # larger than the small window
ALPHABET = (*SHORT, MEDIUM, HUGE)
BOUNDS = [
    {"batch_bytes": 120, "window_bytes": 6000, "batch_channels": 3},  # two short ones a batch
    {"batch_bytes": 1, "window_bytes": 1, "batch_channels": 1},  # one channel at a time
    {"batch_bytes": 512 * 1024, "window_bytes": 2 * 1024 * 1024, "batch_channels": 10_000},
]
_CONFIRMED = (ChannelState.CHECKING, ChannelState.SUBSCRIBED)
CHANNEL = st.one_of(st.sampled_from(SHORT[:2]), st.sampled_from(ALPHABET))
"""Any channel, the first two more often: the interesting sequences repeat a channel."""


@dataclass
class Written:
    """A command as the server saw it, and how many of its replies the client has read."""

    name: bytes
    args: tuple[bytes, ...]
    read: int = 0

    def bytes_due(self) -> int:
        if self.name == PING:
            return 0
        return sum(map(confirmation_size, self.args[self.read :]))


@dataclass
class Server:
    """One connection's worth of Redis: answers the oldest written command, in order."""

    forbidden: frozenset[bytes]
    busy_next: bool = False
    written: deque[Written] = field(default_factory=deque)  # not processed yet
    wire: deque[tuple[str, bytes | tuple[bytes, ...]]] = field(default_factory=deque)
    held: set[bytes] = field(default_factory=set)

    def process(self) -> None:
        command = self.written.popleft()
        busy, self.busy_next = self.busy_next, False
        if command.name == PING:
            self.wire.append(("pong", command.args[0] if command.args else b""))
        elif command.name == SUBSCRIBE and busy:
            self.wire.append(("busy", command.args))
        elif command.name == SUBSCRIBE and self.forbidden.intersection(command.args):
            self.wire.append(("noperm", command.args))  # an ACL refuses the whole command
        elif command.name == SUBSCRIBE:
            for channel in command.args:
                self.held.add(channel)
                self.wire.append(("subscribe", channel))
        else:
            for channel in command.args:
                self.held.discard(channel)
                self.wire.append(("unsubscribe", channel))


class SubscriptionsMachine(RuleBasedStateMachine):
    """Random wants, link changes, server replies, messages and checks against a model."""

    def __init__(self) -> None:
        super().__init__()
        self.subs = Subscriptions()
        self.server = Server(frozenset())
        self.window = 0
        self.batch_bytes = 0
        self.batch_channels = 0
        self.now = 0
        self.tokens = 0
        # The model of the client side.
        self.connected = False
        self.generation = self.subs.generation
        self.wanted: set[bytes] = set()
        self.status: dict[bytes, ChannelState] = {}
        self.confirmed_on_link: set[bytes] = set()  # a confirmation read, not yet dropped
        self.refused: set[bytes] = set()  # refused alone on this link, not wanted since
        self.unsettled: dict[bytes, int] = {}
        self.checks: list[tuple[bytes, int]] = []  # asked, not completed: (channel, ticket)
        self.stamp: dict[bytes, int] = {}  # the ticket of each channel's latest check
        self.inflight: deque[Written] = deque()  # written, replies not all read

    @initialize(
        bounds=st.sampled_from(BOUNDS),
        forbidden=st.sets(st.sampled_from(ALPHABET), max_size=2),
        initially=st.lists(CHANNEL, max_size=4),
    )
    def configure(
        self, bounds: dict[str, int], forbidden: set[bytes], initially: list[bytes]
    ) -> None:
        """Some channels wanted before the first link is up."""
        self.subs = Subscriptions(**bounds)
        self.generation = self.subs.generation
        self.window = bounds["window_bytes"]
        self.batch_bytes = bounds["batch_bytes"]
        self.batch_channels = bounds["batch_channels"]
        self.server = Server(frozenset(forbidden))
        for channel in initially:
            self.want(channel)
        self.link_up()

    # -- the registry's side ---------------------------------------------------------------------

    @rule(channel=CHANNEL, wanted=st.booleans())
    def interest(self, channel: bytes, wanted: bool) -> None:
        """A first waiter arrives, or the last one leaves (one rule: swarm testing keeps both)."""
        if wanted:
            self.want(channel)
        else:
            self.unwant(channel)

    def want(self, channel: bytes) -> None:
        self.now += 1
        confirmed = self.status.get(channel) in _CONFIRMED
        check = self.subs.want(channel, self.now)
        assert check is (confirmed and self.connected)
        if check:
            assert channel in self.confirmed_on_link  # never a check before the confirmation
            self.checks.append((channel, self.subs.ticket()))  # a read for the newcomer
        self.wanted.add(channel)
        self.refused.discard(channel)
        if self.status.get(channel) is not ChannelState.SUBSCRIBED:  # settled stays settled
            self.unsettled.setdefault(channel, self.now)

    def unwant(self, channel: bytes) -> None:
        self.subs.unwant(channel)
        self.wanted.discard(channel)
        self.refused.discard(channel)
        self.unsettled.pop(channel, None)

    @precondition(lambda self: self.checks)
    @rule(data=st.data())
    def complete_check(self, data: st.DataObject) -> None:
        channel, ticket = self.checks.pop(data.draw(st.integers(0, len(self.checks) - 1)))
        self._checked(channel, ticket)

    def _ask(self, channel: bytes) -> None:
        """A check was asked for: the round that reads it takes its ticket now or later."""
        ticket = self.subs.ticket()
        self.stamp[channel] = ticket
        self.checks.append((channel, ticket))

    def _checked(self, channel: bytes, ticket: int) -> None:
        self.subs.on_checked(channel, ticket)
        current = self.status.get(channel) is ChannelState.CHECKING
        if current and ticket >= self.stamp[channel]:
            self.status[channel] = ChannelState.SUBSCRIBED
            self.unsettled.pop(channel, None)
        else:
            event("a check asked before the latest confirmation")

    # -- the link --------------------------------------------------------------------------------

    @precondition(lambda self: not self.connected)
    @rule()
    def link_up(self) -> None:
        self.subs.link_up()
        self._new_link()
        self.connected = True

    @precondition(lambda self: self.connected)
    @rule(back=st.integers(0, 3), rarely=st.integers(0, 3))
    def link_lost(self, back: int, rarely: int) -> None:
        if rarely == 0:  # a lost link resets everything: let the other rules run for a while
            self._link_lost(max(0, self.now - back))

    def _link_lost(self, last_good: int) -> None:
        self.subs.link_lost(last_good)
        self._new_link()
        self.connected = False
        for channel in self.wanted:
            self.unsettled.setdefault(channel, last_good)

    def _new_link(self) -> None:
        self.generation += 1
        assert self.subs.generation == self.generation
        self.status.clear()
        self.confirmed_on_link.clear()
        self.refused.clear()
        self.inflight.clear()
        self.server = Server(self.server.forbidden)

    @precondition(lambda self: self.connected)
    @rule()
    def write(self) -> None:
        self._write()

    def _write(self) -> list[Command]:
        idle = not self.inflight
        pending = self.subs.pending_output
        commands = self.subs.commands()
        assert pending or not commands  # the owner wakes its writer on pending_output
        seen: set[bytes] = set()
        for command in commands:
            assert command.name in (SUBSCRIBE, UNSUBSCRIBE)
            assert command.args
            assert not seen.intersection(command.args)
            seen.update(command.args)
            assert command.size == sum(map(confirmation_size, command.args))
            assert len(command.args) <= self.batch_channels
            assert command.size <= self.batch_bytes or len(command.args) == 1
            for channel in command.args:
                if command.name == SUBSCRIBE:  # only what is wanted and the server lacks
                    assert channel in self.wanted
                    assert channel not in self.status
                    assert channel not in self.server.held
                    self.status[channel] = ChannelState.SUBSCRIBING
                else:  # only what nobody wants and the server holds
                    assert channel not in self.wanted
                    assert self.status.get(channel) in _CONFIRMED
                    self.status[channel] = ChannelState.UNSUBSCRIBING
            self._written(command)
        due = sum(written.bytes_due() for written in self.inflight)
        if due > self.window:  # over the window: one channel larger than it, sent when idle
            event("a channel larger than the window in flight")
            subscriptions = [w for w in self.inflight if w.name != PING]
            assert len(subscriptions) == 1
            assert len(subscriptions[0].args) - subscriptions[0].read == 1
            if commands:
                assert idle
                assert len(commands) == 1
        return commands

    def _written(self, command: Command) -> None:
        written = Written(command.name, tuple(command.args))
        self.inflight.append(written)
        self.server.written.append(Written(command.name, tuple(command.args)))

    @precondition(lambda self: self.connected)
    @rule(token=st.booleans())
    def ping(self, token: bool) -> None:
        self.tokens += 1
        command = self.subs.ping(b"barrier-%d" % self.tokens if token else b"")
        assert command.name == PING
        assert command.size == 0
        self._written(command)

    # -- the server's side -----------------------------------------------------------------------

    @precondition(lambda self: self.server.written)
    @rule(busy=st.integers(0, 7))
    def server_answers(self, busy: int) -> None:
        self.server.busy_next = busy == 0  # BUSY, if the command is a SUBSCRIBE
        self.server.process()

    @rule(channel=CHANNEL)
    def publish(self, channel: bytes) -> None:
        if channel in self.server.held:
            self.server.wire.append(("message", channel))

    @precondition(lambda self: self.server.wire)
    @rule()
    def read_reply(self) -> None:
        self._read()

    def _read(self) -> None:
        kind, what = self.server.wire.popleft()
        if kind == "message":
            assert isinstance(what, bytes)
            self.subs.on_message(what)  # never a violation: the server holds the channel
            state = self.status.get(what)
            assert state in (*_CONFIRMED, ChannelState.UNSUBSCRIBING)
            event(f"message while {state}")
            return
        head = self.inflight[0]
        if kind == "busy":
            with pytest.raises(LinkError):
                self.subs.on_refused(permission=False, reason="BUSY")
            self._link_lost(self.now)  # the owner rebuilds the link
            return
        if kind == "noperm":
            assert isinstance(what, tuple)
            assert head.name == SUBSCRIBE
            assert head.args == what
            self.inflight.popleft()
            failed = self.subs.on_refused(permission=True, reason="NOPERM")
            event("NOPERM alone" if len(what) == 1 else "NOPERM on a batch")
            lone = [channel for channel in what if channel in self.wanted]
            assert failed == (lone if len(what) == 1 else [])
            assert self.server.forbidden.issuperset(failed)
            for channel in what:
                del self.status[channel]
            self.refused.update(failed)
            for channel in failed:
                self.unsettled.pop(channel, None)
            return
        assert isinstance(what, bytes)
        if kind == "pong":
            assert head.name == PING
            self.inflight.popleft()
            assert self.subs.on_pong(what) == what
            return
        assert head.args[head.read] == what
        head.read += 1
        if head.read == len(head.args):
            self.inflight.popleft()
        if kind == "subscribe":
            assert self.status.get(what) is ChannelState.SUBSCRIBING
            check = self.subs.on_subscribed(what)
            event(f"subscribe confirmation, wanted={check}")
            assert check is (what in self.wanted)  # one check per confirmation of a wanted one
            self.confirmed_on_link.add(what)
            if check:
                self.status[what] = ChannelState.CHECKING
                self._ask(what)
            else:
                self.status[what] = ChannelState.SUBSCRIBED
        else:
            assert self.status.get(what) is ChannelState.UNSUBSCRIBING
            assert self.subs.on_unsubscribed(what) is (what in self.wanted)
            event(f"unsubscribe confirmation, wanted={what in self.wanted}")
            del self.status[what]
            self.confirmed_on_link.discard(what)

    @precondition(lambda self: self.connected)
    @rule(channel=CHANNEL, publish=st.booleans())
    def round_trip(self, channel: bytes, publish: bool) -> None:
        """Write what is due, flip one channel's interest while it is in flight, read every
        reply (twice in a row on a channel: its UNSUBSCRIBE is answered once it is wanted again).
        """
        self._write()
        if publish:  # messages the server sends before it reads our commands
            for held in sorted(self.server.held):
                self.server.wire.append(("message", held))
        self.interest(channel, channel not in self.wanted)
        while self.server.written:
            self.server.process()
        while self.server.wire:
            self._read()

    # -- quiescence ------------------------------------------------------------------------------

    @precondition(lambda self: self.connected)
    @rule()
    def settle(self) -> None:
        """Drain everything; then the server holds exactly the wanted, permitted channels."""
        for _ in range(1000):
            if self.server.wire:
                self._read()
            elif self.server.written:
                self.server.process()
            elif self.checks:
                channel, ticket = self.checks.pop(0)
                self._checked(channel, ticket)
            elif not self._write():
                break
            if not self.connected:  # a BUSY the server answered: rebuild the link, go on
                self.link_up()
        else:
            raise AssertionError("no quiescence after 1000 steps")
        assert self.subs.inflight == 0
        assert not self.subs.pending_output
        assert self.server.held == self.wanted - self.server.forbidden
        for channel in self.wanted:  # never forgotten: confirmed and read, or refused
            if channel in self.server.forbidden:
                assert self.subs.state(channel) is None
                assert channel in self.refused
            else:
                assert self.subs.state(channel) is ChannelState.SUBSCRIBED
        for channel in set(ALPHABET) - self.wanted:
            assert self.subs.state(channel) is None
        assert self.subs.healthy is True
        assert self.subs.unsettled_since() is None
        assert self.subs.confirmed() == len(self.wanted - self.server.forbidden)

    def teardown(self) -> None:
        if not self.connected:
            self.link_up()
        self.settle()

    # -- invariants ------------------------------------------------------------------------------

    @invariant()
    def states_match_the_model(self) -> None:
        """Each channel's state follows the transition table."""
        for channel in ALPHABET:
            assert self.subs.state(channel) is self.status.get(channel)
        assert self.subs.wanted == self.wanted
        assert self.subs.connected is self.connected
        assert self.subs.inflight == len(self.inflight)
        assert self.subs.confirmed() == sum(state in _CONFIRMED for state in self.status.values())

    @invariant()
    def healthy_exactly_when_up_and_every_wanted_channel_is_read_or_refused(self) -> None:
        """Refused means refused on this link: a forbidden channel counts until its NOPERM is
        read (after quiescence: every wanted channel not forbidden is SUBSCRIBED)."""
        settled = all(
            self.status.get(channel) is ChannelState.SUBSCRIBED or channel in self.refused
            for channel in self.wanted
        )
        assert self.subs.healthy is (self.connected and settled)
        expected = {
            channel
            for channel in self.wanted
            if self.status.get(channel) is not ChannelState.SUBSCRIBED
            and channel not in self.refused
        }
        assert set(self.unsettled) == expected
        assert self.subs.unsettled_since() == min(self.unsettled.values(), default=None)

    @invariant()
    def in_flight_confirmations_stay_within_the_window(self) -> None:
        due = sum(written.bytes_due() for written in self.inflight)
        subscriptions = [w for w in self.inflight if w.name != PING]
        assert due <= self.window or (
            len(subscriptions) == 1 and len(subscriptions[0].args) - subscriptions[0].read == 1
        )


SubscriptionsMachine.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestSubscriptionsMachine = SubscriptionsMachine.TestCase
