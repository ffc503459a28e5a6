"""The ``oms_`` Prometheus metrics, shared by every service.

Faust's own sensor (``faust.sensors.prometheus``) covers streams, commits and
rebalances; these add what the saga needs: outcomes, end-to-end time, handler
time, outbox backlog, lag and dead letters. The compose dashboard queries these
exact names. Two gauges have no event to hang on, so each worker samples them
on a timer (:func:`install_lag_gauge`, :func:`install_backlog_gauge`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Hashable, Mapping
from typing import Any, TypeVar

from aiokafka.errors import KafkaError
from faust.exceptions import ConsumerNotStarted
from faust.sensors.prometheus import FaustMetrics, PrometheusMonitor, setup_prometheus_sensors
from faust.types import TP, AppT, StreamT
from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

log = logging.getLogger(__name__)

_LATENCY_BUCKETS = (
    0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3,
    0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0,
)

ORDERS_PLACED = Counter("oms_orders_placed", "Orders accepted by the orders service")
ORDER_E2E = Histogram(
    "oms_order_e2e_seconds",
    "Placement to terminal order state, by outcome",
    ["outcome"],
    buckets=_LATENCY_BUCKETS,
)
SAGA_OUTCOMES = Counter("oms_saga_outcomes", "Finished sagas by outcome and reason",
                        ["outcome", "reason"])
TRACKER_UNREADABLE_ROWS = Counter(
    "oms_tracker_unreadable_rows",
    "Saga table rows the tracker cannot read (written by another version; skipped, logged once)",
)
TRACKER_SEND_FAILURES = Counter(
    "oms_tracker_send_failures",
    "Tracker sends (CancelOrder, SagaTimedOut) the broker did not take; the timer sends again",
    ["event_type"],
)
CONSOLE_PEER_FAILURES = Counter(
    "oms_console_peer_failures",
    "Tracker workers that did not answer another worker's cluster-wide list in time, by error",
    ["error"],
)
CONSOLE_SERVICE_FAILURES = Counter(
    "oms_console_service_failures",
    "Database services that did not answer a saga timeline's request for an order's events",
    ["service"],
)
HANDLER_SECONDS = Histogram(
    "oms_handler_seconds", "Step handler time", ["service", "event_type"],
    buckets=_LATENCY_BUCKETS,
)
BATCH_SIZE = Histogram(
    "oms_batch_size", "Events per step transaction", ["service"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)
EVENTS = Counter("oms_events", "Events consumed, by result", ["service", "event_type", "result"])
STEP_RETRIES = Counter("oms_step_retries", "Step failures retried (anything but bad input)",
                       ["service", "error"])
DEAD_LETTERS = Counter("oms_dead_letters", "Messages sent to the dead-letter topic",
                       ["service", "reason"])
DEAD_LETTERS_TRUNCATED = Counter("oms_dead_letters_truncated",
                                 "Dead letters the broker refused whole, published truncated",
                                 ["service"])
DEAD_LETTER_PUBLISH_RETRIES = Counter("oms_dead_letter_publish_retries",
                                      "Failed dead-letter publishes, retried", ["service", "error"])
OUTBOX_BACKLOG = Gauge("oms_outbox_backlog", "Outbox rows not yet published", ["service"])
OUTBOX_PUBLISHED = Counter("oms_outbox_published", "Outbox rows published", ["service"])
OUTBOX_PARKED = Counter("oms_outbox_parked", "Outbox rows the broker refused for good, set aside",
                        ["service"])
OUTBOX_PUBLISH_RETRIES = Counter("oms_outbox_publish_retries",
                                 "Outbox rows whose publish failed and will be retried",
                                 ["service", "error"])
CONSUMER_LAG = Gauge("oms_consumer_lag", "End offset minus committed position",
                     ["service", "topic", "partition"])
GATEWAY_CALLS = Counter("oms_gateway_calls", "Payment gateway calls by result",
                        ["operation", "result"])
GATEWAY_IN_FLIGHT = Gauge("oms_gateway_in_flight", "Payment gateway calls awaiting an answer")
PAYMENT_INTENTS = Gauge("oms_payment_intents",
                        "Charges and cancels recorded and not yet settled (in work or waiting)")
PAYMENT_INTENTS_TAKEN_OVER = Counter(
    "oms_payment_intents_taken_over",
    "Payment intents taken over from a caller that stopped renewing its lease")
PSP_CALLER_RETRIES = Counter("oms_psp_caller_retries",
                             "PSP caller failures retried, by stage (claim, psp, settle, order)",
                             ["stage", "error"])

LAG_INTERVAL_S = 2.0
BACKLOG_INTERVAL_S = 2.0

M = TypeVar("M", bound=MetricWrapperBase)


def memo_labels(metric: M) -> M:
    """``metric`` whose ``labels()`` returns each child from a dict after its first call.

    prometheus_client checks the label names and values and takes a lock on
    every ``labels()`` call; the sensors make several calls per event, so
    that is paid many times per order for the same few children. ``clear()``
    and ``remove()`` forget the memo with the children.
    """
    children: dict[Hashable, Any] = {}
    labels, clear, remove = metric.labels, metric.clear, metric.remove

    def memo(*values: Any, **named: Any) -> Any:
        key = values or tuple(named.items())
        child = children.get(key)
        if child is None:
            child = children[key] = labels(*values, **named)
        return child

    def forget(*values: Any) -> None:
        children.clear()
        (remove if values else clear)(*values)

    vars(metric).update(labels=memo, clear=forget, remove=forget)  # shadow the methods
    return metric


for _metric in list(globals().values()):  # every labelled oms_ metric above
    if isinstance(_metric, MetricWrapperBase) and _metric._labelnames:
        memo_labels(_metric)
del _metric


class FaustSensor(PrometheusMonitor):
    """Faust's Prometheus sensor, its per-event label work done once per stream and label.

    The same metrics under the same names; only the repeated lookups go:
    every labelled metric is memoised (:func:`memo_labels`), and a stream's
    label, a regular-expression rewrite of its name, is computed once.
    """

    def __init__(self, metrics: FaustMetrics, **kwargs: Any) -> None:
        for metric in metrics:  # a NamedTuple of the sensor's metrics
            if isinstance(metric, MetricWrapperBase) and metric._labelnames:
                memo_labels(metric)
        super().__init__(metrics, **kwargs)
        self._stream_labels: dict[StreamT, str] = {}

    def _stream_label(self, stream: StreamT) -> str:
        label = self._stream_labels.get(stream)
        if label is None:
            label = self._stream_labels[stream] = super()._stream_label(stream)
        return label


def install_faust_sensor(app: AppT, pattern: str = "/metrics") -> None:
    """Faust's Prometheus integration (its ``/metrics`` page) with :class:`FaustSensor`."""
    setup_prometheus_sensors(app, pattern=pattern)
    monitor = app.monitor
    assert isinstance(monitor, PrometheusMonitor)
    app.monitor = FaustSensor(monitor._metrics)


def install_lag_gauge(app: AppT, service: str) -> None:
    """Refresh ``oms_consumer_lag`` for the partitions this worker owns every 2 s."""
    shown: set[tuple[str, str]] = set()

    async def consumer_lag() -> None:
        try:
            await sample_consumer_lag(app, service, shown)
        except Exception as exc:  # noqa: BLE001 - a failing timer would crash the worker
            log.warning("%s: consumer lag not sampled: %s: %s", service, type(exc).__name__, exc)

    app.timer(interval=LAG_INTERVAL_S, name=f"oms-{service}.consumer_lag")(consumer_lag)


async def sample_consumer_lag(app: AppT, service: str, shown: set[tuple[str, str]]) -> None:
    """Set the lag of every owned source partition; drop partitions no longer owned.

    Lag is the partition's high watermark minus the offset Faust last committed
    for the group (both "next offset" positions), so it reaches 0 only once
    everything read has been processed *and* committed. Changelog partitions are
    skipped: Faust never commits them, they are not work waiting.
    """
    consumer = app.consumer
    try:
        owned = [tp for tp in consumer.assignment() if tp.topic in app.topics.acking_topics]
        highwaters = await consumer.highwaters(*owned) if owned else {}
    except (ConsumerNotStarted, KafkaError) as exc:  # starting or rebalancing: try next tick
        log.debug("%s: consumer lag not sampled: %r", service, exc)
        return
    # Faust keeps what it committed per partition but has no public accessor for it
    committed: Mapping[TP, int | None] = getattr(consumer, "_committed_offset", {})
    current: set[tuple[str, str]] = set()
    for tp in owned:
        highwater = highwaters.get(tp)
        if highwater is None:
            continue
        labels = (tp.topic, str(tp.partition))
        CONSUMER_LAG.labels(service, *labels).set(max(highwater - (committed.get(tp) or 0), 0))
        current.add(labels)
    for gone in shown - current:
        CONSUMER_LAG.remove(service, *gone)
    shown.clear()
    shown.update(current)


def install_backlog_gauge(
    app: AppT, service: str, backlog: Callable[[], Awaitable[int]], ready: Callable[[], bool]
) -> None:
    """Refresh ``oms_outbox_backlog`` every 2 s once ``ready()`` (the pool is open)."""

    async def outbox_backlog() -> None:
        if not ready():
            return
        try:
            await backlog()  # sets the gauge itself
        except Exception as exc:  # noqa: BLE001 - a failing timer would crash the worker
            log.warning("%s: outbox backlog not sampled: %s: %s", service,
                        type(exc).__name__, exc)

    app.timer(interval=BACKLOG_INTERVAL_S, name=f"oms-{service}.outbox_backlog")(outbox_backlog)
