"""Memoised labels and the lean Faust sensor: the same samples, fewer lookups."""

from __future__ import annotations

import faust
from faust.sensors.prometheus import FaustMetrics, PrometheusMonitor
from faust.types import TP
from prometheus_client import CollectorRegistry, Counter, Gauge

from agents.observability import metrics


def test_a_memoised_child_is_the_one_the_metric_exposes() -> None:
    registry = CollectorRegistry()
    counter = metrics.memo_labels(Counter("memo_test", "test", ["a", "b"], registry=registry))
    first = counter.labels("x", "y")
    assert counter.labels("x", "y") is first
    first.inc(2)
    counter.labels(a="x", b="z").inc()
    assert registry.get_sample_value("memo_test_total", {"a": "x", "b": "y"}) == 2
    assert registry.get_sample_value("memo_test_total", {"a": "x", "b": "z"}) == 1


def test_clear_and_remove_forget_the_memo_with_the_children() -> None:
    registry = CollectorRegistry()
    gauge = metrics.memo_labels(Gauge("memo_gauge", "test", ["p"], registry=registry))
    gauge.labels("0").set(5)
    gauge.labels("1").set(6)
    gauge.remove("0")
    assert registry.get_sample_value("memo_gauge", {"p": "0"}) is None
    gauge.labels("0").set(7)  # a new child, exposed again
    assert registry.get_sample_value("memo_gauge", {"p": "0"}) == 7
    gauge.clear()
    assert registry.get_sample_value("memo_gauge", {"p": "1"}) is None
    gauge.labels("1").set(1)
    assert registry.get_sample_value("memo_gauge", {"p": "1"}) == 1


def test_the_oms_metrics_are_memoised() -> None:
    assert metrics.EVENTS.labels("s", "T", "applied") is metrics.EVENTS.labels("s", "T", "applied")


def test_the_faust_sensor_counts_what_faust_own_sensor_counts() -> None:
    registry = CollectorRegistry()
    sensor = metrics.FaustSensor(FaustMetrics.create(registry, "sensortest"))
    assert isinstance(sensor, PrometheusMonitor)
    tp = TP("orders", 3)
    sensor.track_tp_end_offset(tp, 10)
    sensor.track_tp_end_offset(tp, 12)
    assert registry.get_sample_value("sensortest_topic_partition_end_offset",
                                     {"topic": "orders", "partition": "3"}) == 12
    sensor.count("thing")
    sensor.count("thing", 2)
    assert registry.get_sample_value("sensortest_metrics_by_name", {"metric": "thing"}) == 3


def test_install_puts_the_lean_sensor_on_the_app() -> None:
    app = faust.App("sensor-install-test", broker="memory://", web_enabled=False)
    metrics.install_faust_sensor(app, pattern="/sensor-test-metrics")
    assert type(app.monitor) is metrics.FaustSensor
