"""`/metrics` through the real app: who may scrape it, and what a scrape says about a ledger
seeded by hand and the real broker (Redis), read back with Prometheus's own parser."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine
from sqlalchemy.orm import Session, sessionmaker

from pipeline.db import session_factory
from pipeline.delivery.breaker import CircuitBreaker
from pipeline.delivery.circuits import save_circuits
from pipeline.transports.base import Outcome
from tests.pipeline.stats.test_metrics import (
    delivery,
    failed,
    handed_over,
    message,
    rejection,
)
from tests.workers.api.conftest import Api
from workers.api.metrics import MetricsSource
from workers.queues import PRIORITY_SUFFIXES, STAGE_QUEUES

T0 = datetime(2026, 11, 28, 8, 0, tzinfo=UTC)
LAB = "LABO-M"
RELAY = "smtp://relay.example:25"
QUEUED = {"labdispatch.route": 3, "labdispatch.send": 2}

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
def queued(redis_url: str) -> Iterator[None]:
    client = redis.Redis.from_url(redis_url)
    keys = [queue + suffix for queue in STAGE_QUEUES for suffix in PRIORITY_SUFFIXES]
    client.delete(*keys)
    for queue, count in QUEUED.items():
        client.lpush(queue, *[b"{}"] * count)
    try:
        yield
    finally:
        client.delete(*keys)
        client.close()


@pytest.fixture
def clock() -> list[datetime]:
    return [T0 + timedelta(hours=1)]


@pytest.fixture
def source(api: Api, clock: list[datetime]) -> MetricsSource:
    """The app's metrics source, with the test's clock and no cache between scrapes."""
    made = MetricsSource(api.sessions, api.settings, clock=lambda: clock[0], cache_for=0.0)
    api.client.app.state.metrics = made  # type: ignore[attr-defined]
    return made


def scrape(api: Api, caller: str = "ops") -> Samples:
    response = api.client.get("/metrics", headers=api.auth(caller))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def names(samples: Samples) -> set[str]:
    return {name for name, _ in samples}


@pytest.mark.parametrize(
    ("caller", "status"),
    [("ops", 200), ("admin", 200), ("lab_a", 403), ("billing", 403), ("revoked", 401), (None, 401)],
)
def test_only_ops_and_admin_may_scrape(
    api: Api, source: MetricsSource, caller: str | None, status: int
) -> None:
    response = api.client.get("/metrics", headers=api.auth(caller))

    assert response.status_code == status
    if status == 200:
        assert "labdispatch_ledger_up 1.0" in response.text


def test_a_scrape_shows_the_ledger_and_the_broker_then_counts_exactly_what_was_added(
    api: Api, source: MetricsSource, clock: list[datetime], queued: None
) -> None:
    with api.sessions.begin() as session:
        earlier = message(session, LAB, T0)
        delivery(session, earlier, "mail")  # waits to be sealed
        message(session, LAB, T0 + timedelta(minutes=45), state="received")  # waits to be routed

    first = scrape(api)

    assert value(first, "labdispatch_ledger_up") == 1 and value(first, "labdispatch_broker_up") == 1
    assert value(first, "labdispatch_queue_depth", queue="labdispatch.route") == 3
    assert value(first, "labdispatch_queue_depth", queue="labdispatch.seal") == 0
    assert value(first, "labdispatch_queue_depth", queue="labdispatch.send") == 2
    assert value(first, "labdispatch_results_received_total", laboratory=LAB) == 0
    assert (
        value(first, "labdispatch_deliveries_delivered_total", laboratory=LAB, channel="mail") == 0
    )
    assert (
        value(first, "labdispatch_last_received_timestamp_seconds", laboratory=LAB)
        == (T0 + timedelta(minutes=45)).timestamp()
    )
    assert value(first, "labdispatch_stage_waiting", stage="route") == 1
    assert value(first, "labdispatch_stage_oldest_age_seconds", stage="route") == 15 * 60
    assert value(first, "labdispatch_stage_waiting", stage="seal") == 1
    assert value(first, "labdispatch_stage_oldest_age_seconds", stage="seal") == 60 * 60
    assert value(first, "labdispatch_stage_oldest_age_seconds", stage="send") == 0
    assert value(first, "labdispatch_counters_start_time_seconds") == clock[0].timestamp()

    # Three results and their fate, then a second scrape.
    later = T0 + timedelta(hours=2)
    with api.sessions.begin() as session:
        for n in range(3):
            result = message(session, LAB, later + timedelta(seconds=n))
            sent = delivery(session, result, "mail")
            if n < 2:
                handed_over(session, sent, later + timedelta(seconds=n + 90))  # 90 s
            else:
                failed(session, sent, later + timedelta(minutes=5))
        rejection(session, LAB, later)
    clock[0] = later + timedelta(minutes=10)

    second = scrape(api)

    assert value(second, "labdispatch_results_received_total", laboratory=LAB) == 3
    assert value(second, "labdispatch_results_rejected_total", laboratory=LAB) == 1
    assert (
        value(second, "labdispatch_deliveries_delivered_total", laboratory=LAB, channel="mail") == 2
    )
    assert value(second, "labdispatch_deliveries_failed_total", laboratory=LAB, channel="mail") == 1
    bucket = "labdispatch_delivery_latency_seconds_bucket"
    assert value(second, bucket, channel="mail", le="60.0") == 0
    assert value(second, bucket, channel="mail", le="120.0") == 2
    assert value(second, bucket, channel="mail", le="+Inf") == 2
    assert value(second, "labdispatch_delivery_latency_seconds_count", channel="mail") == 2
    assert value(
        second, "labdispatch_delivery_latency_seconds_sum", channel="mail"
    ) == pytest.approx(180.0, abs=0.01)
    assert (
        value(second, "labdispatch_last_received_timestamp_seconds", laboratory=LAB)
        == (later + timedelta(seconds=2)).timestamp()
    )


def test_breaker_transitions_are_shown_per_destination(
    api: Api, source: MetricsSource, clock: list[datetime]
) -> None:
    breaker = CircuitBreaker(failures=2, open_for=timedelta(minutes=1))
    for _ in range(2):
        breaker.record(RELAY, Outcome.TRANSIENT, T0 + timedelta(minutes=59, seconds=30))
    with api.sessions.begin() as session:
        save_circuits(session, breaker)

    opened = scrape(api)

    assert value(opened, "labdispatch_circuit_open", destination=RELAY) == 1
    assert value(opened, "labdispatch_circuit_state", destination=RELAY, state="open") == 1
    assert value(opened, "labdispatch_circuit_state", destination=RELAY, state="closed") == 0
    assert value(opened, "labdispatch_circuit_failures", destination=RELAY) == 2

    clock[0] += timedelta(minutes=1)  # the open period ran out: half-open
    assert (
        value(scrape(api), "labdispatch_circuit_state", destination=RELAY, state="half-open") == 1
    )

    breaker.record(RELAY, Outcome.ACCEPTED, clock[0])
    with api.sessions.begin() as session:
        save_circuits(session, breaker)
    closed = scrape(api)

    assert value(closed, "labdispatch_circuit_open", destination=RELAY) == 0
    assert value(closed, "labdispatch_circuit_state", destination=RELAY, state="closed") == 1


def test_a_broker_that_does_not_answer_is_reported_not_a_failed_scrape(
    api: Api, clock: list[datetime]
) -> None:
    settings = replace(
        api.settings, service=replace(api.settings.service, broker_url="redis://127.0.0.1:9/0")
    )
    api.client.app.state.metrics = MetricsSource(  # type: ignore[attr-defined]
        api.sessions, settings, clock=lambda: clock[0]
    )

    samples = scrape(api)

    assert value(samples, "labdispatch_broker_up") == 0
    assert value(samples, "labdispatch_ledger_up") == 1
    assert "labdispatch_queue_depth" not in names(samples)
    assert "labdispatch_stage_waiting" in names(samples)  # the ledger still speaks


def test_a_ledger_that_fails_while_reading_is_reported(api: Api, clock: list[datetime]) -> None:
    unreachable: sessionmaker[Session] = session_factory(
        create_engine(
            "postgresql+psycopg://nobody@127.0.0.1:9/none", connect_args={"connect_timeout": 1}
        )
    )
    api.client.app.state.metrics = MetricsSource(  # type: ignore[attr-defined]
        unreachable, api.settings, clock=lambda: clock[0]
    )

    samples = scrape(api)

    assert value(samples, "labdispatch_ledger_up") == 0
    assert value(samples, "labdispatch_broker_up") == 1
    assert not {"labdispatch_stage_waiting", "labdispatch_results_received_total"} & names(samples)


def test_one_reading_serves_the_scrapes_of_a_few_seconds(api: Api) -> None:
    # The app's own source (made at the first scrape), with its default cache.
    first = api.client.get("/metrics", headers=api.auth("ops")).text
    second = api.client.get("/metrics", headers=api.auth("admin")).text

    read_time = re.compile(r"^labdispatch_metrics_read_seconds (\S+)$", re.MULTILINE)
    assert read_time.findall(first) == read_time.findall(second) != []
