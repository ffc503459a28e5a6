"""Replay a service's input by moving its consumer group's committed offsets.

A replay is harmless because every step claims its event id in the service's
inbox first: re-read events that were applied before are acknowledged and
skipped. Moving offsets is only safe while nobody in the group is consuming
(a live member would overwrite the new offsets with its next commit), so
:func:`replay` refuses while the group has members.

Broker notes (checked against Tansu, the embedded broker):

* ``DescribeGroups`` works, but Tansu never expires the member of a stopped
  consumer, not even after a clean shutdown: the group stays ``Stable`` with
  the dead member listed, and an offset commit from outside the group is then
  rejected (``UNKNOWN_MEMBER_ID``). ``evict_stale=True`` (CLI
  ``--evict-stale-members``) sends ``LeaveGroup`` for each listed member, then
  watches the group for one session timeout: a live worker would rejoin at its
  next heartbeat, and the replay is refused. Real Kafka expires dead members by
  itself after the session timeout, so it does not need the flag.
* ``ListOffsets`` by timestamp works for times inside a partition's history,
  but for a time after its last record Tansu answers offset 0 with timestamp
  -1 instead of "none"; both answers are read as "the end of the partition".
* ``OffsetFetch`` for all of a group's topics fails to decode on Tansu, so
  committed offsets are always fetched per partition.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.protocol.group import LeaveGroupRequest
from aiokafka.structs import OffsetAndMetadata

from agents.messaging import kafka
from agents.topology import service as service_named
from config import Settings


class ReplayRefused(RuntimeError):
    """The replay cannot run safely now; ``str(err)`` says why and what to do."""


@dataclass(frozen=True)
class Target:
    """Where to move the offsets: exactly one of the three is set."""

    earliest: bool = False
    offset: int | None = None
    time: datetime | None = None


@dataclass(frozen=True)
class PartitionPlan:
    """One partition of a replay: where the group is, where it goes, what is re-read."""

    topic: str
    partition: int
    current: int | None  # committed offset; None = never committed
    target: int
    end: int

    @property
    def reread(self) -> int:
        """Events the group will read again (0 when the target skips forward)."""
        start = self.current if self.current is not None else self.end
        # Faust on Tansu was seen committing end + 1 on an idle partition: clamp to the end.
        return max(0, min(start, self.end) - self.target)

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "reread": self.reread}


def service_sources(service: str, settings: Settings) -> list[str]:
    """Full names of the topics a service consumes (its entry in :mod:`agents.topology`)."""
    return [settings.topic(name) for name in service_named(service).sources]


async def group_members(settings: Settings, service: str) -> list[str]:
    """Member ids the broker lists for the service's consumer group."""
    admin = kafka.admin(settings)
    await admin.start()
    try:
        return await _members(admin, settings.app_id(service))
    finally:
        await admin.close()


async def _members(admin: AIOKafkaAdminClient, group: str) -> list[str]:
    response = (await admin.describe_consumer_groups([group]))[0]
    members: list[str] = []
    for _error, _group, _state, _ptype, _protocol, group_members_, *_ in response.groups:
        members += [member[0] for member in group_members_]
    return members


async def evict_stale_members(settings: Settings, service: str) -> list[str]:
    """Send ``LeaveGroup`` for every listed member, then refuse if any rejoins.

    Only for workers the operator has stopped (see the module notes on Tansu).
    Returns the evicted member ids.
    """
    group = settings.app_id(service)
    admin = kafka.admin(settings)
    await admin.start()
    try:
        evicted = await _members(admin, group)
        coordinator = await admin.find_coordinator(group)
        for member in evicted:
            await admin._send_request(LeaveGroupRequest(group, member), coordinator)  # noqa: SLF001
        deadline = time.monotonic() + settings.session_timeout_s
        while time.monotonic() < deadline:
            rejoined = await _members(admin, group)
            if rejoined:
                raise ReplayRefused(
                    _live_message(group, service, rejoined, rejoined_after_evict=True))
            await asyncio.sleep(0.2)
        return evicted
    finally:
        await admin.close()


def _live_message(
    group: str, service: str, members: list[str], *, rejoined_after_evict: bool
) -> str:
    what = "rejoined after eviction, so they are live" if rejoined_after_evict else "are listed"
    return (
        f"consumer group {group} has {len(members)} member(s) that {what}: "
        f"{', '.join(members)}. Stop every `oms worker {service}` process first (Ctrl-C "
        f"`oms up`, or stop the {service} containers), then run the replay again. On a broker "
        "that does not expire the members of stopped consumers (the embedded Tansu broker), "
        "add --evict-stale-members once the workers are stopped."
    )


async def plan(
    settings: Settings,
    service: str,
    target: Target,
    topics: Iterable[str] = (),
    partitions: Iterable[int] = (),
) -> list[PartitionPlan]:
    """Current and target offset of every chosen partition (changes nothing)."""
    consumer = _consumer(settings, service)
    await consumer.start()
    try:
        tps = await _partitions(consumer, settings, service, list(topics), list(partitions))
        return await _plan(consumer, tps, target)
    finally:
        await consumer.stop()


async def replay(
    settings: Settings,
    service: str,
    target: Target,
    topics: Iterable[str] = (),
    partitions: Iterable[int] = (),
    *,
    evict_stale: bool = False,
) -> list[PartitionPlan]:
    """Commit the target offsets for the service's group; refuse while it has members."""
    members = await group_members(settings, service)
    if members and not evict_stale:
        raise ReplayRefused(_live_message(settings.app_id(service), service, members,
                                          rejoined_after_evict=False))
    if members:
        await evict_stale_members(settings, service)
    consumer = _consumer(settings, service)
    await consumer.start()
    try:
        tps = await _partitions(consumer, settings, service, list(topics), list(partitions))
        plans = await _plan(consumer, tps, target)
        consumer.assign(tps)
        await consumer.commit(
            {TopicPartition(p.topic, p.partition): OffsetAndMetadata(p.target, "oms replay")
             for p in plans}
        )
        return plans
    finally:
        await consumer.stop()


async def lag(settings: Settings, service: str) -> dict[str, int]:
    """End offset minus committed offset per source partition (``topic[p]`` keys)."""
    plans = await plan(settings, service, Target(earliest=True))
    return {
        f"{p.topic}[{p.partition}]": p.end - (p.current if p.current is not None else 0)
        for p in plans
    }


def _consumer(settings: Settings, service: str) -> AIOKafkaConsumer:
    """A consumer in the service's group that never joins it (manual assignment)."""
    return kafka.consumer(settings, group_id=settings.app_id(service),  # the app id is the group
                          enable_auto_commit=False)


async def _partitions(
    consumer: AIOKafkaConsumer, settings: Settings, service: str, topics: list[str],
    partitions: list[int],
) -> list[TopicPartition]:
    sources = service_sources(service, settings)
    chosen = [settings.topic(t) if not t.startswith(settings.topic_prefix) else t for t in topics]
    unknown = sorted(set(chosen) - set(sources))
    if unknown:
        raise ValueError(f"{service} does not consume {', '.join(unknown)}; "
                         f"its sources are {', '.join(sources)}")
    tps: list[TopicPartition] = []
    for topic in chosen or sources:
        available = consumer.partitions_for_topic(topic) or set()
        if not available:
            await consumer._client.force_metadata_update()  # noqa: SLF001 - fresh client
            available = consumer.partitions_for_topic(topic) or set()
        for p in sorted(available):
            if not partitions or p in partitions:
                tps.append(TopicPartition(topic, p))
    if not tps:
        raise ValueError("no partitions selected")
    return tps


async def _plan(
    consumer: AIOKafkaConsumer, tps: list[TopicPartition], target: Target
) -> list[PartitionPlan]:
    begin = await consumer.beginning_offsets(tps)
    end = await consumer.end_offsets(tps)
    wanted = await _targets(consumer, tps, target, begin, end)
    plans = []
    for tp in tps:
        committed = await consumer.committed(tp)
        plans.append(PartitionPlan(tp.topic, tp.partition, committed, wanted[tp], end[tp]))
    return plans


async def _targets(
    consumer: AIOKafkaConsumer, tps: list[TopicPartition], target: Target,
    begin: dict[TopicPartition, int], end: dict[TopicPartition, int],
) -> dict[TopicPartition, int]:
    if target.earliest:
        return dict(begin)
    if target.offset is not None:
        return {tp: min(max(target.offset, begin[tp]), end[tp]) for tp in tps}
    if target.time is None:
        raise ValueError("choose one of earliest, offset or time")
    ms = int(target.time.timestamp() * 1000)
    found = await consumer.offsets_for_times({tp: ms for tp in tps})
    wanted = {}
    for tp in tps:
        hit = found.get(tp)
        # None (Kafka) or timestamp -1 (Tansu): no record at or after that time.
        wanted[tp] = end[tp] if hit is None or hit.timestamp < 0 else hit.offset
    return wanted
