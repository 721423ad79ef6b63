"""`jinchui replay SERVICE`: rebuild a service's derived state from the topics.

With the service stopped, its consumer groups (`<prefix>-<service>-<purpose>`) are moved back
to the beginning of every input partition, its `processed_events` and the collections it
declares as derived are cleared; on the next start it consumes everything again.

What a service may call "derived" is its own declaration, `DERIVED_COLLECTIONS` in
`services/<name>/repository.py`; without it replay refuses, since clearing the wrong
collection would lose facts that exist nowhere else. What replay means per service:
- registration: the source of truth (HTTP), it consumes nothing; nothing to rebuild.
- scoring: the roster (entries, events learnt from registration.entries) is derived; marks,
  panels, results are facts entered over HTTP and must stay.
- awards: event results and competition state can be rebuilt, but `awards` (the award_key
  unique index, certificate numbers) must stay: re-consuming a final result must find the
  award already standing and grant nothing twice.
- notifications: subscriptions are facts; `deliveries` hold the delivery_key of every message
  already sent and must stay so that replayed decisions send nothing again; the feed and the
  standings view can be rebuilt.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated

import typer
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import OffsetAndMetadata
from pymongo import AsyncMongoClient
from rich.console import Console

from jinchui.dlq import group_offsets
from shared.inbox import PROCESSED
from shared.mongo import Doc
from shared.settings import SERVICES, Settings, get_settings

app = typer.Typer(help="Rebuild a service's derived state from the topics.")

# Plumbing collections no replay touches (the outbox must keep its sequence and sent records).
PLUMBING = frozenset({"outbox", "counters", "leases", "audit", PROCESSED})


class ReplayRefused(RuntimeError):
    pass


@dataclass
class ReplayPlan:
    service: str
    groups: dict[str, list[TopicPartition]] = field(default_factory=dict)
    collections: tuple[str, ...] = ()
    declared: bool = True

    def describe(self) -> list[str]:
        lines = [f"service {self.service}:"]
        for group, tps in self.groups.items():
            parts = ", ".join(f"{tp.topic}[{tp.partition}]" for tp in tps)
            lines.append(f"  reset consumer group {group} to the beginning of {parts}")
        if not self.groups:
            lines.append("  no consumer group found: the service consumes nothing yet")
        lines.append(f"  clear {PROCESSED}")
        for name in self.collections:
            lines.append(f"  clear derived collection {name}")
        return lines


def derived_collections(service: str) -> tuple[str, ...] | None:
    """The service's own declaration, or None when it has none."""
    module = importlib.import_module(f"services.{service}.repository")
    declared = getattr(module, "DERIVED_COLLECTIONS", None)
    return None if declared is None else tuple(declared)


def group_prefix(settings: Settings, service: str) -> str:
    # ServiceRuntime.group_id(purpose) = f"{prefix}-{name}-{purpose}"
    return f"{settings.mongodb_db_prefix}-{service}-"


async def service_groups(
    admin: AIOKafkaAdminClient, settings: Settings, service: str
) -> dict[str, list[TopicPartition]]:
    prefix = group_prefix(settings, service)
    listed = await admin.list_consumer_groups()
    groups = sorted(str(g[0]) for g in listed if str(g[0]).startswith(prefix))
    found: dict[str, list[TopicPartition]] = {}
    for group in groups:
        offsets = await group_offsets(admin, group)
        found[group] = sorted(offsets, key=lambda tp: (tp.topic, tp.partition))
    return found


async def active_members(admin: AIOKafkaAdminClient, groups: Sequence[str]) -> dict[str, int]:
    """Members per group: a running service instance holds at least one."""
    if not groups:
        return {}
    members: dict[str, int] = {}
    for response in await admin.describe_consumer_groups(list(groups)):
        for described in response.groups:
            # (error_code, group_id, state, protocol_type, protocol, members, ...)
            members[str(described[1])] = len(described[5])
    return members


async def plan_replay(settings: Settings, service: str) -> ReplayPlan:
    if service not in SERVICES:
        raise ReplayRefused(f"unknown service {service!r}; choose from {', '.join(SERVICES)}")
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap_servers, request_timeout_ms=15_000
    )
    await admin.start()
    try:
        groups = await service_groups(admin, settings, service)
    finally:
        await admin.close()
    declared = derived_collections(service)
    if declared is None:
        client: AsyncMongoClient[Doc] = AsyncMongoClient(settings.mongodb_url)
        try:
            names = await client[settings.database_name(service)].list_collection_names()
        finally:
            await client.close()
        guess = tuple(sorted(n for n in names if n not in PLUMBING))
        return ReplayPlan(service, groups, guess, declared=False)
    overlap = PLUMBING & set(declared)
    if overlap:
        raise ReplayRefused(f"{service} declares plumbing collections as derived: {overlap}")
    return ReplayPlan(service, groups, declared)


async def execute_replay(settings: Settings, plan: ReplayPlan) -> None:
    """Reset the groups to the beginning and clear the derived state. The service is down."""
    if not plan.declared:
        raise ReplayRefused(
            f"services/{plan.service}/repository.py declares no DERIVED_COLLECTIONS: "
            "replay cannot tell derived state from facts"
        )
    bootstrap = settings.kafka_bootstrap_servers
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15_000)
    await admin.start()
    try:
        busy = {g: n for g, n in (await active_members(admin, list(plan.groups))).items() if n}
    finally:
        await admin.close()
    if busy:
        raise ReplayRefused(f"stop {plan.service} first: consumer groups still have members {busy}")
    for group, tps in plan.groups.items():
        if tps:
            await reset_group_to_beginning(bootstrap, group, tps)
    client: AsyncMongoClient[Doc] = AsyncMongoClient(settings.mongodb_url)
    try:
        db = client[settings.database_name(plan.service)]
        await db[PROCESSED].delete_many({})
        for name in plan.collections:
            await db[name].delete_many({})
    finally:
        await client.close()


async def reset_group_to_beginning(
    bootstrap: str, group: str, partitions: Sequence[TopicPartition]
) -> None:
    """Commit each partition's first available offset for `group` (it must have no members)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        consumer.assign(list(partitions))
        beginnings = await consumer.beginning_offsets(list(partitions))
        await consumer.commit({tp: OffsetAndMetadata(beginnings[tp], "") for tp in partitions})
    finally:
        await consumer.stop()


async def replay_service(settings: Settings, service: str, *, dry_run: bool = False) -> ReplayPlan:
    plan = await plan_replay(settings, service)
    if not dry_run:
        await execute_replay(settings, plan)
    return plan


@app.callback(invoke_without_command=True)
def replay(
    service: Annotated[str, typer.Argument(help=f"one of {', '.join(SERVICES)}")],
    dry_run: Annotated[bool, typer.Option(help="only print what would be done")] = False,
) -> None:
    """Rebuild SERVICE's derived state from the topics (stop the service first)."""
    console = Console()
    settings = get_settings()
    try:
        plan = asyncio.run(plan_replay(settings, service))
        for line in plan.describe():
            console.print(line)
        if not plan.declared:
            console.print(
                f"[red]refused: services/{service}/repository.py declares no "
                "DERIVED_COLLECTIONS (tuple of collection names); the list above is a guess "
                "of what would be cleared"
            )
            raise typer.Exit(2)
        if dry_run:
            return
        asyncio.run(execute_replay(settings, plan))
    except ReplayRefused as exc:
        console.print(f"[red]refused: {exc}")
        raise typer.Exit(2) from exc
    console.print(f"[green]{service} will rebuild its derived state when it starts")
