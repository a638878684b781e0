"""When to try a delivery again, and how long to wait: one small policy per channel kind.

The transport decides *whether* a failure may pass (`TRANSIENT`) or never will
(`PERMANENT`); the policy decides *when* and *until when*. A delivery is retried while both
budgets last — a number of attempts and an age since the first attempt — and is then dead,
with a notice to the laboratory so a result nobody received gets a phone call.

Backoff is exponential and capped: `min_backoff * multiplier ** (attempt - 1)`, never more
than `max_backoff`. Jitter is *proportional*, downward: the delay is drawn uniformly from
`[(1 - jitter) * base, base]`. Full jitter (uniform over `[0, base]`) spreads a herd best
but may retry a down relay almost at once, which is what backoff is there to stop; the
per-destination circuit breaker already holds a herd back, so a proportional spread that
keeps every delay within `jitter` of the ladder is enough, and keeps "next try in about
X" true for the operator reading the ledger. Downward, so `max_backoff` is a real bound.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta

from pipeline.transports.base import Outcome


@dataclass(frozen=True)
class RetryPolicy:
    """The retry budget and backoff of one channel kind.

    - `max_attempts`: attempts in all, the first included (1 = never retry).
    - `max_age`: no attempt starts later than this after the first one.
    - `min_backoff`: the wait after the first failed attempt.
    - `max_backoff`: the longest wait between two attempts.
    - `multiplier`: each wait is this many times the previous one, until `max_backoff`.
    - `jitter`: the fraction (0 to 1) of each wait drawn at random, downward.
    """

    max_attempts: int
    max_age: timedelta
    min_backoff: timedelta
    max_backoff: timedelta
    multiplier: float = 2.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, not {self.max_attempts}")
        if self.max_age <= timedelta(0):
            raise ValueError(f"max_age must be positive, not {self.max_age}")
        if not timedelta(0) < self.min_backoff <= self.max_backoff:
            raise ValueError(
                f"need 0 < min_backoff <= max_backoff, got {self.min_backoff} and "
                f"{self.max_backoff}"
            )
        if self.multiplier < 1:
            raise ValueError(f"multiplier must be at least 1, not {self.multiplier}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"jitter is a fraction between 0 and 1, not {self.jitter}")

    def base_delay(self, attempt: int) -> timedelta:
        """The wait after `attempt` failed attempts (1 = after the first), before jitter."""
        if attempt < 1:
            raise ValueError(f"attempt counts from 1, not {attempt}")
        try:
            factor = self.multiplier ** (attempt - 1)
        except OverflowError:
            return self.max_backoff
        seconds = self.min_backoff.total_seconds() * factor
        if seconds >= self.max_backoff.total_seconds():
            return self.max_backoff
        return timedelta(seconds=seconds)

    def delay(self, attempt: int, rng: random.Random | None = None) -> timedelta:
        """The wait after `attempt` failed attempts, jittered; pass a seeded `rng` to make
        it reproducible."""
        base = self.base_delay(attempt)
        draw = (rng or random).random()  # in [0, 1)
        return base * (1 - self.jitter * draw)

    def should_retry(
        self, outcome: Outcome, attempts: int, first_attempt_at: datetime, now: datetime
    ) -> bool:
        """Whether a delivery whose last attempt ended in `outcome` gets another one, after
        `attempts` attempts in all, the first at `first_attempt_at`. An accepted delivery has
        nothing to retry; a permanent refusal never changes its mind."""
        if outcome is not Outcome.TRANSIENT:
            return False
        return attempts < self.max_attempts and now - first_attempt_at < self.max_age


#: Per channel kind, as in the directory. A result undelivered after a day is announced to
#: the laboratory (dead + notice), which then reaches the clinician another way; the attempt
#: counts are safety nets sized to let the age limit decide under the default backoff.
DEFAULT_POLICIES: dict[str, RetryPolicy] = {
    # The relay: usually back within minutes (restart, greylisting: 4xx for ~5 min).
    # Waits 1, 2, 4, 8, 16 min, then every 24-30 min: 55-65 attempts fill the 24 h.
    "mail": RetryPolicy(
        max_attempts=80,
        max_age=timedelta(hours=24),
        min_backoff=timedelta(minutes=1),
        max_backoff=timedelta(minutes=30),
        multiplier=2.0,
        jitter=0.2,
    ),
    # A local or mounted disk: full or unwritable until someone acts; the check is cheap.
    # Waits 30 s doubling to 15 min (12-15 min with jitter): 100-125 attempts fill the 24 h.
    "mailbox": RetryPolicy(
        max_attempts=150,
        max_age=timedelta(hours=24),
        min_backoff=timedelta(seconds=30),
        max_backoff=timedelta(minutes=15),
        multiplier=2.0,
        jitter=0.2,
    ),
    # A remote API: 429 and 503 ask for patience (their Retry-After is kept in the evidence,
    # not read here). Waits 30 s doubling to 30 min (24-30 min): 55-65 attempts fill 24 h.
    "https": RetryPolicy(
        max_attempts=80,
        max_age=timedelta(hours=24),
        min_backoff=timedelta(seconds=30),
        max_backoff=timedelta(minutes=30),
        multiplier=2.0,
        jitter=0.2,
    ),
}
