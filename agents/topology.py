"""Topic names and their creation.

All topics are keyed by order id and share one partition count, so one
order's events stay ordered within each topic and the tracker's table is
co-partitioned with every topic it reads.
"""

from __future__ import annotations

import logging

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from config import Settings

log = logging.getLogger(__name__)

ORDER_COMMANDS = "order-commands"
ORDER_EVENTS = "order-events"
INVENTORY_EVENTS = "inventory-events"
PAYMENT_EVENTS = "payment-events"
SAGA_EVENTS = "saga-events"
DEAD_LETTERS = "dead-letters"

ALL = (ORDER_COMMANDS, ORDER_EVENTS, INVENTORY_EVENTS, PAYMENT_EVENTS, SAGA_EVENTS, DEAD_LETTERS)


async def create_topics(settings: Settings, bootstrap: str) -> list[str]:
    """Create every OMS topic that does not exist yet; return the ones created."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [settings.topic(t) for t in ALL if settings.topic(t) not in existing]
        if wanted:
            try:
                await admin.create_topics(
                    [NewTopic(t, settings.partitions, settings.replication_factor) for t in wanted]
                )
            except TopicAlreadyExistsError:
                log.info("topics created concurrently by another process")
        return wanted
    finally:
        await admin.close()
