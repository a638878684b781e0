from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from pipeline.transports.base import Outcome
from pipeline.transports.retry import DEFAULT_POLICIES, RetryPolicy

POLICY = RetryPolicy(
    max_attempts=5,
    max_age=timedelta(hours=1),
    min_backoff=timedelta(seconds=10),
    max_backoff=timedelta(minutes=2),
    multiplier=2.0,
    jitter=0.25,
)
START = datetime(2026, 11, 28, 9, 30, tzinfo=UTC)


def test_backoff_doubles_from_the_minimum_and_stops_at_the_cap() -> None:
    seconds = [POLICY.base_delay(attempt).total_seconds() for attempt in range(1, 9)]

    assert seconds == [10, 20, 40, 80, 120, 120, 120, 120]


def test_backoff_never_decreases_and_never_passes_the_cap_even_far_out() -> None:
    delays = [POLICY.base_delay(attempt) for attempt in range(1, 5000, 7)]

    assert delays == sorted(delays)
    assert max(delays) == POLICY.max_backoff  # no overflow at attempt 4999


def test_jitter_draws_within_the_proportional_band_below_the_base() -> None:
    rng = random.Random(20261128)
    for attempt in range(1, 10):
        base = POLICY.base_delay(attempt)
        draws = [POLICY.delay(attempt, rng) for _ in range(200)]
        assert all(base * 0.75 <= draw <= base for draw in draws)
        assert max(draws) - min(draws) > base * 0.2  # it does spread


def test_a_seeded_rng_gives_the_same_delays() -> None:
    first = [POLICY.delay(n, random.Random(7)) for n in range(1, 6)]
    second = [POLICY.delay(n, random.Random(7)) for n in range(1, 6)]

    assert first == second


def test_without_jitter_the_delay_is_the_base() -> None:
    exact = RetryPolicy(
        max_attempts=3,
        max_age=timedelta(hours=1),
        min_backoff=timedelta(seconds=5),
        max_backoff=timedelta(seconds=60),
        jitter=0,
    )

    assert [exact.delay(n).total_seconds() for n in (1, 2, 3, 9)] == [5, 10, 20, 60]


def test_transient_failures_are_retried_until_the_attempts_run_out() -> None:
    decisions = [
        POLICY.should_retry(Outcome.TRANSIENT, attempts, START, START + timedelta(minutes=1))
        for attempts in range(1, 7)
    ]

    assert decisions == [True, True, True, True, False, False]


def test_transient_failures_are_retried_until_the_age_runs_out() -> None:
    assert POLICY.should_retry(Outcome.TRANSIENT, 2, START, START + timedelta(minutes=59))
    assert not POLICY.should_retry(Outcome.TRANSIENT, 2, START, START + timedelta(hours=1))


def test_a_permanent_refusal_is_never_retried_and_an_acceptance_needs_no_retry() -> None:
    assert not POLICY.should_retry(Outcome.PERMANENT, 1, START, START)
    assert not POLICY.should_retry(Outcome.ACCEPTED, 1, START, START)


@pytest.mark.parametrize(
    "changes",
    [
        {"max_attempts": 0},
        {"max_age": timedelta(0)},
        {"min_backoff": timedelta(0)},
        {"min_backoff": timedelta(minutes=5)},  # above max_backoff
        {"multiplier": 0.5},
        {"jitter": 1.5},
    ],
)
def test_nonsense_policies_are_refused(changes: dict[str, object]) -> None:
    values: dict[str, object] = {
        "max_attempts": 5,
        "max_age": timedelta(hours=1),
        "min_backoff": timedelta(seconds=10),
        "max_backoff": timedelta(minutes=2),
    }
    values.update(changes)
    with pytest.raises(ValueError):
        RetryPolicy(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["mail", "mailbox", "https"])
def test_default_policies_let_the_age_limit_decide(kind: str) -> None:
    """Even if every jitter draw is the shortest, the attempts last the whole age: a
    delivery dies at a predictable time, not after a burst of quick retries."""
    policy = DEFAULT_POLICIES[kind]
    shortest = sum(
        (policy.base_delay(n) * (1 - policy.jitter) for n in range(1, policy.max_attempts)),
        timedelta(0),
    )

    assert shortest >= policy.max_age
    assert policy.base_delay(1) <= timedelta(minutes=1)
    assert policy.max_backoff <= timedelta(minutes=30)
