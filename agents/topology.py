"""Who reads and writes what, as data: the topics and each service's place in the saga.

Every topic is keyed by order id and all share one partition count, so one
order's events stay ordered within each topic and the tracker's table is
co-partitioned with every topic it reads. The services' wiring, ``oms
replay``, the web views and the README's tables all read :data:`SERVICES`;
nothing else lists a service's topics.
"""

from __future__ import annotations

from dataclasses import dataclass

ORDER_COMMANDS = "order-commands"
ORDER_EVENTS = "order-events"
INVENTORY_EVENTS = "inventory-events"
PAYMENT_EVENTS = "payment-events"
SAGA_EVENTS = "saga-events"
DEAD_LETTERS = "dead-letters"
DEAD_LETTERS_REDRIVEN = "dead-letters-redriven"
"""Ledger of re-driven dead letters (one partition; created on the first redrive)."""

TOPICS = (ORDER_COMMANDS, ORDER_EVENTS, INVENTORY_EVENTS, PAYMENT_EVENTS, SAGA_EVENTS,
          DEAD_LETTERS)
"""The topics ``oms init`` creates, short names (``Settings.topic`` adds the prefix)."""


@dataclass(frozen=True)
class Service:
    """One Faust app: what it consumes, what it emits, and where it is wired."""

    name: str
    sources: tuple[str, ...]
    """Topics it consumes (its consumer group is ``Settings.app_id(name)``)."""
    outputs: tuple[str, ...]
    """Topics it writes: through its outbox, or (the tracker) directly."""
    handles: frozenset[str]
    """Envelope types it acts on; any other type on its sources is skipped."""
    database: bool
    """Owns a PostgreSQL database (``oms_<name>``); the tracker keeps a Faust table."""
    app: str
    """``module:function`` that builds its Faust app."""


ORDERS = Service(
    "orders",
    sources=(ORDER_COMMANDS, INVENTORY_EVENTS, PAYMENT_EVENTS),
    outputs=(ORDER_EVENTS,),
    handles=frozenset({"PlaceOrder", "CancelOrder", "PaymentCompleted", "InventoryRejected",
                       "PaymentFailed"}),
    database=True,
    app="agents.orders.app:build",
)
INVENTORY = Service(
    "inventory",
    sources=(ORDER_EVENTS,),
    outputs=(INVENTORY_EVENTS,),
    handles=frozenset({"OrderCreated", "OrderConfirmed", "OrderCancelled"}),
    database=True,
    app="agents.inventory.app:build",
)
PAYMENTS = Service(
    "payments",
    sources=(INVENTORY_EVENTS, ORDER_EVENTS),
    outputs=(PAYMENT_EVENTS,),
    handles=frozenset({"InventoryReserved", "OrderCancelled"}),
    database=True,
    app="agents.payments.app:build",
)
ORCHESTRATOR = Service(
    "orchestrator",
    sources=(ORDER_COMMANDS, ORDER_EVENTS, SAGA_EVENTS),
    outputs=(ORDER_COMMANDS, SAGA_EVENTS),
    # what its decisions need: a saga starts, ends, or is past its deadline; the steps
    # between are read from the services (GET /events/{order_id}/) when the console asks
    handles=frozenset({"PlaceOrder", "OrderConfirmed", "OrderCancelled", "CancelRejected",
                       "SagaTimedOut"}),
    database=False,
    app="agents.orchestrator.app:build",
)

SERVICES: dict[str, Service] = {s.name: s for s in (ORDERS, INVENTORY, PAYMENTS, ORCHESTRATOR)}
"""By name, in the order of ``config.SERVICES`` (which fixes the web ports)."""


def service(name: str) -> Service:
    """The service called ``name``; ValueError naming the known ones otherwise."""
    try:
        return SERVICES[name]
    except KeyError:
        raise ValueError(f"unknown service {name!r}; one of {', '.join(SERVICES)}") from None
