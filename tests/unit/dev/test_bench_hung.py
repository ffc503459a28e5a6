"""``oms bench --hung-every N``: which orders hang, and whose latency the percentiles are."""

from __future__ import annotations

import uuid

from agents.dev.bench import BenchConfig, OrderWatch, bench_order, load_summary
from config import Settings
from schemas.codec import encode, new_envelope
from schemas.oms_pb2 import OrderCancelled, OrderConfirmed


def test_every_nth_order_pays_with_the_hanging_token() -> None:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    cfg = BenchConfig(hung_every=15)
    tokens = [bench_order(i, settings, "demo", hung=cfg.hung(i)).place_order.payment_token
              for i in range(30)]
    hung = [i for i, token in enumerate(tokens) if token == settings.gateway_timeout_token]
    assert hung == [0, 15]
    assert BenchConfig().hung(0) is False


def test_the_percentiles_leave_the_hung_orders_out() -> None:
    watch = OrderWatch(total=3)
    a, b, h = (str(uuid.uuid4()) for _ in range(3))
    for order_id in (a, b, h):
        watch.record_sent(order_id, 0.0, hung=order_id == h)
    for order_id, body, at in ((a, OrderConfirmed(), 0.1), (b, OrderConfirmed(), 0.2),
                               (h, OrderCancelled(), 30.0)):
        watch.observe(order_id.encode(), encode(new_envelope(order_id, body, producer="t")), at)
    summary = load_summary(watch, BenchConfig(hung_every=3, rate=1.0))
    assert summary["finished"] == 3 and summary["hung_orders"] == 1
    assert summary["max_ms"] == 200.0 and summary["hung_max_ms"] == 30_000.0
