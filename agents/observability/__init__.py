"""Tracing (OpenTelemetry), the oms_ Prometheus metrics and the health views.
May import config/, schemas/ and stores/; nothing else of agents/."""
