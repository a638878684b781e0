"""The bench's open-loop schedule, on a fake clock: slots follow the clock and never move,
a send that falls behind is recorded late and none is skipped, and the achieved rate says
whether the offered one was kept. (The real run through the stack: test_bench_run.py.)"""

from __future__ import annotations

import asyncio

import pytest

from pipeline.errors import ConfigurationError
from workers.bench.openloop import Offer, offer


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds


def run(items: int, rate: float, cost: dict[int, float], clock: FakeClock) -> tuple[Offer, list]:
    """Offer `items` at `rate`; sending item i takes cost.get(i, 0) seconds."""
    sent: list[tuple[int, float, float]] = []  # (item, slot, clock when the send began)

    async def send(item: int, slot: float) -> None:
        sent.append((item, slot, clock.now))
        clock.now += cost.get(item, 0.0)

    schedule = asyncio.run(offer(range(items), rate, send, clock=clock, sleep=clock.sleep))
    return schedule, sent


def test_each_item_goes_at_its_slot() -> None:
    clock = FakeClock()
    schedule, sent = run(5, 10.0, {}, clock)
    assert [item for item, _, _ in sent] == [0, 1, 2, 3, 4]
    assert [round(at - 100.0, 9) for _, _, at in sent] == [0.0, 0.1, 0.2, 0.3, 0.4]
    assert schedule.lateness == pytest.approx([0.0] * 5, abs=1e-9)
    assert schedule.late() == 0
    assert schedule.achieved_rate == pytest.approx(10.0)
    assert schedule.achieved


def test_a_slow_send_makes_the_next_ones_late_none_is_skipped_and_no_slot_moves() -> None:
    clock = FakeClock()
    schedule, sent = run(8, 10.0, {2: 0.35}, clock)
    # Every item was sent, in order, each with the slot the clock gave it at the start.
    assert [item for item, _, _ in sent] == list(range(8))
    assert [round(slot - 100.0, 9) for _, slot, _ in sent] == [i / 10 for i in range(8)]
    # Item 2 went out 0.35 s late; 3 and 4 went at once, behind; 5 caught up, 6 on time.
    assert [round(x, 9) for x in schedule.lateness] == [0, 0, 0.35, 0.25, 0.15, 0.05, 0, 0]
    assert schedule.late() == 4
    assert schedule.worst == pytest.approx(0.35)
    assert [round(at - 100.0, 9) for _, _, at in sent][3:] == [0.55, 0.55, 0.55, 0.6, 0.7]
    assert schedule.achieved  # the schedule was kept over the whole run


def test_a_sender_slower_than_the_rate_is_reported_as_not_achieving_it() -> None:
    clock = FakeClock()
    schedule, sent = run(20, 10.0, dict.fromkeys(range(20), 0.2), clock)
    assert len(sent) == 20  # all sent, none dropped to keep up
    assert schedule.sent == 20
    # A send is dated when it is done: even the first, 0.2 s in the writing, was late.
    assert schedule.late() == 20
    assert schedule.worst == pytest.approx(20 * 0.2 - 1.9)
    assert schedule.achieved_rate == pytest.approx(20 / (20 * 0.2), rel=0.05)
    assert not schedule.achieved


def test_the_rate_must_be_positive() -> None:
    clock = FakeClock()
    with pytest.raises(ConfigurationError, match="above 0"):
        run(1, 0.0, {}, clock)
