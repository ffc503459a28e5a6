"""The ``oms_`` Prometheus metrics, shared by every service.

Faust's own sensor (``faust.sensors.prometheus``) covers streams, commits and
rebalances; these add what the saga needs: outcomes, end-to-end time, handler
time, outbox backlog, lag and dead letters.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

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
HANDLER_SECONDS = Histogram(
    "oms_handler_seconds", "Step handler time", ["service", "event_type"],
    buckets=_LATENCY_BUCKETS,
)
EVENTS = Counter("oms_events", "Events consumed, by result", ["service", "event_type", "result"])
STEP_RETRIES = Counter("oms_step_retries", "Transient step failures retried", ["service", "error"])
DEAD_LETTERS = Counter("oms_dead_letters", "Messages sent to the dead-letter topic",
                       ["service", "reason"])
OUTBOX_BACKLOG = Gauge("oms_outbox_backlog", "Outbox rows not yet published", ["service"])
OUTBOX_PUBLISHED = Counter("oms_outbox_published", "Outbox rows published", ["service"])
CONSUMER_LAG = Gauge("oms_consumer_lag", "End offset minus committed position",
                     ["service", "topic", "partition"])
GATEWAY_CALLS = Counter("oms_gateway_calls", "Payment gateway calls by result",
                        ["operation", "result"])
