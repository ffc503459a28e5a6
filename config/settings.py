"""One settings object for all services.

Every value can come from the environment (prefix ``OMS_``) or a ``.env`` file.
Leaving the broker or database unset selects the embedded default: ``oms up``
then starts a Tansu broker and an embedded PostgreSQL and passes their
addresses to the workers through these same variables.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_serializer, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

SERVICES: tuple[str, ...] = ("orders", "inventory", "payments", "orchestrator")
"""The four Faust apps; ``orchestrator`` is the saga tracker."""

DATABASE_SERVICES: tuple[str, ...] = ("orders", "inventory", "payments")
"""Services that own a PostgreSQL database (the tracker keeps a Faust table)."""


class Settings(BaseSettings):
    """Configuration shared by the CLI, the workers and the tests."""

    model_config = SettingsConfigDict(
        env_prefix="OMS_", env_file=".env", extra="ignore", frozen=True
    )

    # --- Kafka -----------------------------------------------------------
    kafka_bootstrap: str | None = Field(
        default=None, description="host:port list; unset = start the embedded Tansu broker"
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: str | None = None
    topic_prefix: str = "oms."
    partitions: int = Field(default=4, ge=1, le=256)
    replication_factor: int = Field(default=1, ge=1)
    fetch_max_wait_ms: int = Field(
        default=20, ge=1, le=1500, description="consumer long-poll; bounds each saga hop's wait"
    )
    tracker_fetch_max_wait_ms: int = Field(
        default=200, ge=1, le=1500,
        description="the tracker's long-poll: it is off the orders' path, and a longer wait"
        " means fewer fetches and bigger batches (one table write per saga per batch)",
    )
    fetch_idle_wait_ms: int = Field(
        default=500, ge=1, le=1500,
        description="the long-poll once nothing has arrived for fetch_idle_after_s: an idle"
        " worker asks the broker a few times a second; the first record after it waits once",
    )
    fetch_idle_after_s: float = Field(
        default=2.0, gt=0, description="seconds without a record before the idle long-poll",
    )
    batch_max: int = Field(
        default=200, ge=1, description="events applied in one step transaction at most"
    )
    batch_wait_ms: float = Field(
        default=2.0, gt=0, description="how long a batch waits to fill; bounds the added latency"
    )
    table_standby_replicas: int = Field(
        default=0, ge=0,
        description="tracker table standbys; raise on Kafka for faster failover",
    )
    table_consistency_check: bool = Field(
        default=False,
        description="Faust's check that a table's read offset is not past the changelog"
        " highwater. It guards RocksDB files against wiped topics; the tracker's table is"
        " in memory, and Tansu's highwater can be one short of what was read (the check"
        " then crashes the worker on a rebalance with ConsistencyError).",
    )
    event_loop: Literal["uvloop", "aio"] = Field(
        default="uvloop", description="the workers' asyncio event loop (mode.loop.use)"
    )
    session_timeout_s: float = Field(
        default=6.0, gt=0, description="consumer session timeout; Tansu joins take about half of it"
    )

    # --- PostgreSQL -------------------------------------------------------
    database_url: SecretStr | None = Field(
        default=None,
        description="server URL without a database name; unset = embedded PostgreSQL",
    )
    database_prefix: str = Field(default="oms_", description="database name = prefix + service")
    outbox_retention_s: float = Field(
        default=3600.0, gt=0, description="published outbox rows are kept this long (audit)"
    )
    inbox_retention_s: float = Field(
        default=7 * 24 * 3600.0, gt=0,
        description="inbox rows (applied event ids) are kept this long; must exceed the"
        " topics' retention, else a replay from earliest could re-apply purged events",
    )
    db_connect_timeout_s: float = Field(
        default=10.0, gt=0, description="opening a PostgreSQL connection gives up after this"
    )
    db_command_timeout_s: float = Field(
        default=30.0, gt=0,
        description="any one statement gives up after this (the client cancels it), so a"
        " connection whose path died raises instead of hanging",
    )
    db_keepalives_idle_s: int = Field(
        default=30, ge=1,
        description="server-side TCP keepalive: seconds of silence before the first probe",
    )
    db_keepalives_interval_s: int = Field(
        default=10, ge=1, description="server-side TCP keepalive: seconds between probes"
    )
    db_keepalives_count: int = Field(
        default=3, ge=1, description="server-side TCP keepalive: unanswered probes before it"
        " drops the client's session (and any advisory lock the session held)",
    )
    db_tcp_user_timeout_s: float = Field(
        default=30.0, gt=0,
        description="server side: data unacknowledged this long drops the client's session",
    )
    relay_idle_timeout_s: float = Field(
        default=30.0, gt=1.0,
        description="the server ends an outbox relay's session that has said nothing this"
        " long (a live relay speaks every second), so its advisory lock passes to a standby"
        " even when the relay's network path died without a reset",
    )
    step_stuck_after_s: float = Field(
        default=5.0, gt=0,
        description="a batch failing (and being retried) this long makes /ready/ answer 503",
    )
    pool_min_size: int = Field(default=2, ge=1)
    pool_max_size: int = Field(default=10, ge=1)

    # --- Saga -------------------------------------------------------------
    saga_timeout_s: float = Field(default=30.0, gt=0)
    saga_retention_s: float = Field(
        default=120.0, gt=0,
        description="finished sagas keep their steps in the tracker table this long",
    )
    saga_memory_s: float = Field(
        default=3600.0, gt=0,
        description="finished sagas are remembered (without their steps) this long, so a late"
        " event for one (a compensation, a re-drive, a replay, a retried PlaceOrder) finds it"
        " finished instead of starting a saga that would run until its deadline",
    )

    # --- Payment gateway -----------------------------------------------------
    gateway_timeout_s: float = Field(
        default=2.0, gt=0,
        description="every PSP call's timeout; a charge not answered by then is recorded"
        " UNKNOWN, and the saga deadline's cancel then voids or refunds it",
    )
    psp_max_in_flight: int = Field(
        default=64, ge=1,
        description="orders whose PSP calls one payments worker makes at once; a hung call"
        " holds one of these and nobody else's order",
    )
    psp_lease_s: float = Field(
        default=5.0, gt=0,
        description="a payments worker renews the intents it works on; one not renewed for"
        " this long (its worker died) is taken over by another, which asks the PSP what it"
        " made of the request before charging",
    )

    # --- Payment gateway simulator ----------------------------------------
    gateway_latency_ms: float = Field(default=2.0, ge=0)
    gateway_decline_token: str = "tok_decline"
    gateway_timeout_token: str = Field(default="tok_timeout",
                                       description="a charge the simulator never answers")
    gateway_slow_token: str = Field(
        default="tok_slow",
        description="captures after gateway_slow_ms whether or not the caller still waits"
        " (a late charge)",
    )
    gateway_slow_ms: float = Field(default=10_000.0, ge=0)

    # --- Web / operators ----------------------------------------------------
    web_host: str = Field(
        default="127.0.0.1",
        description="host name other workers and table routes use to reach this worker",
    )
    web_bind: str | None = Field(
        default=None, description="interface to listen on (default web_host; containers 0.0.0.0)"
    )
    web_port_base: int = Field(
        default=6066, description="orders, inventory, payments, tracker in order"
    )
    admin_token: SecretStr | None = None
    console_peer_timeout_s: float = Field(
        default=2.0, gt=0,
        description="how long a tracker worker waits for each other worker's part of a"
        " cluster-wide console answer; one that is later is reported as not answering",
    )
    service_urls: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict,
        description="where the tracker reaches each database service's web API, as"
        " service=URL pairs separated by commas (orders=http://orders:6066,...); a service"
        " left out is looked for on web_host at its web port",
    )
    trace_ui_url: str = Field(
        default="", pattern=r"^$|^https?://.*\{trace_id\}",
        description="link to one trace in a tracing UI, with {trace_id} in it (compose:"
        " Jaeger's http://localhost:16686/trace/{trace_id}); empty = the console shows the"
        " trace id without a link",
    )

    # --- Observability --------------------------------------------------------
    otel_exporter: Literal["none", "otlp", "console", "memory", "jsonl"] = "none"
    otel_endpoint: str = "http://localhost:4317"

    # --- Fault injection (tests only; never set in production) -------------
    fault_relay_crash_after_publish: int = Field(
        default=0,
        ge=0,
        description="test-only: the outbox relay exits (code 137) after publishing its n-th"
        " batch and before marking it sent; 0 = off",
    )

    fault_drop_cancel_orders: int = Field(
        default=0,
        ge=0,
        description="test-only: the saga tracker loses its first n CancelOrder sends (as if the"
        " broker never got them); 0 = off",
    )

    # --- Embedded runtime -------------------------------------------------
    data_dir: str = Field(default=".oms", description="embedded PostgreSQL data and logs")

    def database_name(self, service: str) -> str:
        """Name of the database a service owns (``oms_orders`` by default)."""
        return f"{self.database_prefix}{service}"

    def dsn(self, service: str) -> str:
        """Connection URL of a service's own database."""
        return self.database_dsn(self.database_name(service))

    def database_dsn(self, database: str) -> str:
        """Connection URL of any database on the configured server."""
        if self.database_url is None:
            raise RuntimeError("OMS_DATABASE_URL is not set; start the stack with `oms up`")
        base, _, query = self.database_url.get_secret_value().partition("?")
        base = base.rstrip("/")
        dsn = f"{base}/{database}"
        return f"{dsn}?{query}" if query else dsn

    def redacted_database_url(self) -> str | None:
        """``database_url`` with any password replaced by ``***`` (for logs and banners)."""
        if self.database_url is None:
            return None
        return redact_url(self.database_url.get_secret_value())

    def topic(self, name: str) -> str:
        """Full topic name, e.g. ``topic('order-events') == 'oms.order-events'``."""
        return f"{self.topic_prefix}{name}"

    def app_id(self, service: str) -> str:
        """Faust app id = consumer group (``oms-orders``); namespaced like the topics."""
        return f"{self.topic_prefix.rstrip('.')}-{service}"

    def web_port(self, service: str) -> int:
        """Web port of a service's Faust app."""
        return self.web_port_base + SERVICES.index(service)

    def service_url(self, service: str) -> str:
        """Base URL of a database service's web API: ``service_urls``, else its web port on
        ``web_host`` (where this stack's first worker of the service listens)."""
        default = f"http://{self.web_host}:{self.web_port(service)}"
        return self.service_urls.get(service, default).rstrip("/")

    @field_validator("service_urls", mode="before")
    @classmethod
    def _parse_service_urls(cls, value: Any) -> Any:
        """``orders=http://a:6066,inventory=...`` (the environment's form) as a mapping."""
        if not isinstance(value, str):
            return value
        pairs = [item.strip() for item in value.split(",") if item.strip()]
        parsed: dict[str, str] = {}
        for pair in pairs:
            service, sep, url = (part.strip() for part in pair.partition("="))
            if not sep:
                raise ValueError(f"{pair!r} is not service=URL")
            parsed[service] = url
        return parsed

    @field_validator("service_urls")
    @classmethod
    def _check_service_urls(cls, value: dict[str, str]) -> dict[str, str]:
        """Only database services, each at an http(s) URL: a typo must not pass unnoticed."""
        for service, url in value.items():
            if service not in DATABASE_SERVICES:
                raise ValueError(f"{service!r} is not one of {', '.join(DATABASE_SERVICES)}")
            if not re.fullmatch(r"https?://[^\s/?#,]+/?", url):
                raise ValueError(f"{service}: {url!r} is not an http(s)://host:port URL")
        return value

    @field_serializer("service_urls")
    def _dump_service_urls(self, value: dict[str, str]) -> str:
        """The environment's form again, so a child process reads back the same mapping."""
        return ",".join(f"{service}={url}" for service, url in value.items())


def redact_url(url: str) -> str:
    """Mask the password of a ``scheme://user:password@host`` URL (query ``password=`` too)."""
    masked = re.sub(r"(://[^:/?#@]*:)[^/?#]*@", r"\1***@", url)
    return re.sub(r"(?i)([?&]password=)[^&]*", r"\1***", masked)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
