"""`/metrics`: the Prometheus exposition, for an `ops` (or `admin`) token.

Prometheus scrapes it with the token in a file (`authorization: credentials_file`, see
deploy/prometheus/prometheus.yml). The figures come from the ledger
(`pipeline.stats.metrics`, which says how each is kept cheap) and from the broker
(`workers.queues`); one reading serves every scrape for `CACHE_FOR` seconds, so several
Prometheus servers (or people) looking at once cost the ledger one reading.

A broker that does not answer is reported (`labdispatch_broker_up 0`, no queue series),
never a failed scrape; so is a ledger that fails while reading (`labdispatch_ledger_up 0`,
the counters as last read, no gauges). A ledger that is down altogether also refuses the
token check, so the scrape itself fails: alert on `up` too.

Counters (`_total`) count since this API process's first scrape (when:
`labdispatch_counters_start_time_seconds`); query them with `rate` / `increase`. Each
metric, its labels and its meaning are listed in deploy/prometheus/README.md; in short:

- results: `labdispatch_results_{received,duplicate,rejected}_total{laboratory}`;
- deliveries: `labdispatch_deliveries_{delivered,read,failed}_total{laboratory,channel}`,
  `labdispatch_deliveries_unroutable_total{laboratory}`,
  `labdispatch_delivery_retries_total{laboratory,channel}`, and the histogram
  `labdispatch_delivery_latency_seconds{channel}` (received -> handed over);
- silence: `labdispatch_last_received_timestamp_seconds{laboratory}`;
- work waiting: `labdispatch_stage_waiting{stage}` and
  `labdispatch_stage_oldest_age_seconds{stage}` (route, seal, send; from the ledger),
  `labdispatch_retry_backlog{channel}`, `labdispatch_retry_due{channel}`,
  `labdispatch_queue_depth{queue}`, `labdispatch_queue_unacked` (from the broker);
- destinations: `labdispatch_circuit_open{destination}`,
  `labdispatch_circuit_state{destination,state}`, `labdispatch_circuit_failures{destination}`;
- certificates: `labdispatch_certificate_expiry_seconds{kind}` (recipient, signing),
  `labdispatch_certificates_expiring{kind,within="30d"}`,
  `labdispatch_signing_certificate_expiry_seconds{laboratory}`;
- itself: `labdispatch_ledger_up`, `labdispatch_broker_up`, `labdispatch_metrics_read_seconds`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime

from fastapi import APIRouter, Depends, Request, Response
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.registry import Collector
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from pipeline.access.tokens import Caller
from pipeline.db import utcnow
from pipeline.settings import Settings
from pipeline.stats.metrics import EXPIRY_WARNING, LedgerMeter, MetricsReading
from workers.api.auth import require, sessions_of
from workers.broker import BrokerUnavailable
from workers.queues import QueueDepths, queue_depths

logger = logging.getLogger(__name__)

router = APIRouter()

#: Seconds one reading serves every scrape (Prometheus scrapes every 15 s or more).
CACHE_FOR = 5.0
#: How long the broker may take to answer before it is reported down.
BROKER_TIMEOUT = 1.0

_WITHIN = f"{EXPIRY_WARNING.days}d"
_sources_lock = threading.Lock()


@router.get(
    "/metrics",
    response_class=Response,
    summary="Prometheus metrics (text exposition format)",
    responses={200: {"content": {"text/plain": {}}}},
)
def metrics(request: Request, caller: Caller = Depends(require("ops"))) -> Response:  # noqa: B008
    return Response(generate_latest(source_of(request)), media_type=CONTENT_TYPE_PLAIN_0_0_4)


def source_of(request: Request) -> MetricsSource:
    """The app's one source (its counters live as long as the process)."""
    state = request.app.state
    with _sources_lock:
        source: MetricsSource | None = getattr(state, "metrics", None)
        if source is None:
            source = MetricsSource(sessions_of(request), state.settings)
            state.metrics = source
    return source


QueueReader = Callable[[Settings], QueueDepths]


class MetricsSource(Collector):
    """Readings of the ledger and the broker, as metric families; a reading is reused for
    `CACHE_FOR` seconds, and readings never overlap."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        settings: Settings,
        *,
        clock: Callable[[], datetime] = utcnow,
        queues: QueueReader | None = None,
        cache_for: float = CACHE_FOR,
    ) -> None:
        self.sessions = sessions
        self.settings = settings
        self.clock = clock
        self.queues = queues or (lambda s: queue_depths(s, timeout=BROKER_TIMEOUT))
        self.cache_for = cache_for
        self.meter = LedgerMeter(settings.signing)
        self._lock = threading.Lock()
        self._families: list[Metric] = []
        self._read_at: float | None = None
        self._last: MetricsReading | None = None

    def describe(self) -> Iterable[Metric]:
        return []  # registering must not read the ledger

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            if self._read_at is None or time.monotonic() - self._read_at >= self.cache_for:
                self._families = self._read()
                self._read_at = time.monotonic()
            families = self._families
        yield from families

    def _read(self) -> list[Metric]:
        started = time.perf_counter()
        now = self.clock()
        ledger_up = True
        try:
            self._last = self.meter.read(self.sessions, now)
        except SQLAlchemyError as error:
            logger.warning("metrics: the ledger could not be read (%s)", type(error).__name__)
            ledger_up = False
        try:
            queues: QueueDepths | None = self.queues(self.settings)
        except BrokerUnavailable:
            queues = None
        families = families_of(self._last if ledger_up else None, self._last, queues, now)
        families.append(_gauge("ledger_up", "1 when the ledger was read", value=int(ledger_up)))
        families.append(
            _gauge("broker_up", "1 when the broker answered", value=int(queues is not None))
        )
        families.append(
            _gauge(
                "metrics_read_seconds",
                "how long the last reading of ledger and broker took",
                value=time.perf_counter() - started,
            )
        )
        return families


def families_of(
    reading: MetricsReading | None,
    last: MetricsReading | None,
    queues: QueueDepths | None,
    now: datetime,
) -> list[Metric]:
    """The metric families of a reading; `last` gives the counters when the ledger could not
    be read this time (they stay where they were rather than vanish)."""
    families: list[Metric] = []
    if last is not None:
        families += _counter_families(last)
    if reading is not None:
        families += _gauge_families(reading, now)
    if queues is not None:
        depth = GaugeMetricFamily(
            "labdispatch_queue_depth", "tasks waiting in a stage queue", labels=["queue"]
        )
        for queue, count in sorted(queues.depths.items()):
            depth.add_metric([queue], count)
        families.append(depth)
        families.append(
            _gauge("queue_unacked", "tasks taken by a worker, not acknowledged", queues.unacked)
        )
    return families


def _counter_families(reading: MetricsReading) -> list[Metric]:
    counters = reading.counters
    families: list[Metric] = []
    for name, documentation, by_lab in (
        ("results_received", "new results recorded", counters.received),
        ("results_duplicate", "identical resends, not delivered again", counters.duplicates),
        ("results_rejected", "results refused at intake", counters.rejected),
        ("deliveries_unroutable", "deliveries to unknown recipients", counters.unroutable),
    ):
        family = CounterMetricFamily(f"labdispatch_{name}", documentation, labels=["laboratory"])
        for lab, count in sorted(by_lab.items()):
            family.add_metric([lab], count)
        families.append(family)
    for name, documentation, by_channel in (
        ("deliveries_delivered", "deliveries handed over", counters.delivered),
        ("deliveries_read", "deliveries the recipient displayed", counters.read),
        ("deliveries_failed", "deliveries given up", counters.failed),
        ("delivery_retries", "retries scheduled", counters.retried),
    ):
        family = CounterMetricFamily(
            f"labdispatch_{name}", documentation, labels=["laboratory", "channel"]
        )
        for (lab, channel), count in sorted(by_channel.items()):
            family.add_metric([lab, channel], count)
        families.append(family)
    latency = HistogramMetricFamily(
        "labdispatch_delivery_latency_seconds",
        "time from a result's reception to a delivery's hand-over",
        labels=["channel"],
    )
    for channel, histogram in sorted(counters.latency.items()):
        latency.add_metric(
            [channel],
            [(_le(bound), count) for bound, count in histogram.cumulative()],
            histogram.total_seconds,
        )
    families.append(latency)
    last_received = GaugeMetricFamily(
        "labdispatch_last_received_timestamp_seconds",
        "when the laboratory's latest result was received",
        labels=["laboratory"],
    )
    for lab, at in sorted(counters.last_received.items()):
        last_received.add_metric([lab], at.timestamp())
    families.append(last_received)
    families.append(
        _gauge(
            "counters_start_time_seconds",
            "when this process's counters started",
            counters.started_at.timestamp(),
        )
    )
    return families


def _gauge_families(reading: MetricsReading, now: datetime) -> list[Metric]:
    families: list[Metric] = []
    waiting = GaugeMetricFamily(
        "labdispatch_stage_waiting", "work waiting at a stage, from the ledger", labels=["stage"]
    )
    oldest = GaugeMetricFamily(
        "labdispatch_stage_oldest_age_seconds",
        "age of the oldest work waiting at a stage (0 when none)",
        labels=["stage"],
    )
    for stage in reading.stages:
        waiting.add_metric([stage.stage], stage.waiting)
        oldest.add_metric([stage.stage], stage.oldest_age_seconds or 0.0)
    families += [waiting, oldest]

    retrying = GaugeMetricFamily(
        "labdispatch_retry_backlog", "deliveries retrying", labels=["channel"]
    )
    due = GaugeMetricFamily(
        "labdispatch_retry_due", "deliveries retrying whose next try is due", labels=["channel"]
    )
    for channel, backlog in sorted(reading.retries.items()):
        retrying.add_metric([channel], backlog.retrying)
        due.add_metric([channel], backlog.due)
    families += [retrying, due]

    circuit_open = GaugeMetricFamily(
        "labdispatch_circuit_open",
        "1 while the destination's circuit is open or half-open",
        labels=["destination"],
    )
    circuit_state = GaugeMetricFamily(
        "labdispatch_circuit_state",
        "1 for the destination circuit's state",
        labels=["destination", "state"],
    )
    failures = GaugeMetricFamily(
        "labdispatch_circuit_failures",
        "transient failures in a row that last opened the circuit",
        labels=["destination"],
    )
    for circuit in reading.circuits:
        circuit_open.add_metric([circuit.destination], int(circuit.state != "closed"))
        for state in ("closed", "open", "half-open"):
            circuit_state.add_metric([circuit.destination, state], int(circuit.state == state))
        failures.add_metric([circuit.destination], circuit.failures)
    families += [circuit_open, circuit_state, failures]

    certificates = reading.certificates
    expiry = GaugeMetricFamily(
        "labdispatch_certificate_expiry_seconds",
        "seconds until the earliest end among the certificates in use (negative: ended)",
        labels=["kind"],
    )
    expiring = GaugeMetricFamily(
        "labdispatch_certificates_expiring",
        "certificates in use ending within the period",
        labels=["kind", "within"],
    )
    for horizon in certificates.horizons:
        if horizon.earliest is not None:
            expiry.add_metric([horizon.kind], (horizon.earliest - now).total_seconds())
        expiring.add_metric([horizon.kind, _WITHIN], horizon.expiring)
    signing = GaugeMetricFamily(
        "labdispatch_signing_certificate_expiry_seconds",
        "seconds until a laboratory signing certificate (or its chain) ends",
        labels=["laboratory"],
    )
    for certificate in certificates.signing:
        signing.add_metric([certificate.laboratory], (certificate.not_after - now).total_seconds())
    families += [expiry, expiring, signing]
    return families


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"labdispatch_{name}", documentation, value=value)


def _le(bound: float) -> str:
    """A bucket's upper bound as Prometheus writes it ("60.0", "+Inf")."""
    return "+Inf" if bound == float("inf") else repr(float(bound))
