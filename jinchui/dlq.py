"""`jinchui dlq`: look into a topic's dead-letter queue and replay what was fixed.

The DLQ middleware (shared.kafka) writes the poison message's body unchanged to `<topic>.dlq`
with the reason, the error type, the original partition/offset/key and the consumer in headers.
Replaying republishes a record's body to the original topic with its original key. Which DLQ
records were replayed is remembered in the consumer group `jinchui-dlq-replay-<topic>`: its
committed offset per partition is the watermark below which every record was replayed, and
the commit metadata lists records replayed one by one above the watermark. So a record is
replayed once however often the command runs.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated

import typer
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import CoordinatorLoadInProgressError, CoordinatorNotAvailableError
from aiokafka.structs import OffsetAndMetadata
from rich.console import Console
from rich.table import Table

from shared.settings import Settings, get_settings
from shared.topics import DLQ_SUFFIX, dlq

app = typer.Typer(help="Inspect and replay dead-lettered messages.", no_args_is_help=True)

BODY_EXCERPT_CHARS = 80
MAX_REPLAY_BYTES = 2 * 1024 * 1024


@dataclass(frozen=True)
class DeadLetter:
    """One record of a `<topic>.dlq` topic, with the middleware's headers unpacked."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    body: bytes
    headers: dict[str, str]

    @property
    def ref(self) -> str:
        return f"{self.partition}:{self.offset}"

    @property
    def at(self) -> datetime:
        return datetime.fromtimestamp(self.timestamp_ms / 1000, UTC)

    @property
    def reason(self) -> str:
        return self.headers.get("dlq_reason", "")

    @property
    def error_type(self) -> str:
        return self.headers.get("dlq_error_type", "")

    @property
    def original_topic(self) -> str:
        return self.headers.get("dlq_original_topic") or self.topic.removesuffix(DLQ_SUFFIX)

    @property
    def original_key(self) -> str | None:
        return self.headers.get("dlq_original_key")

    @property
    def original_position(self) -> str:
        return f"{self.headers.get('dlq_partition', '?')}:{self.headers.get('dlq_offset', '?')}"

    @property
    def consumer(self) -> str:
        return self.headers.get("dlq_consumer", "")

    def excerpt(self, chars: int = BODY_EXCERPT_CHARS) -> str:
        text = self.body[: chars * 4].decode("utf-8", errors="replace")
        text = " ".join(text.split())
        suffix = f"… ({len(self.body):,} bytes)" if len(self.body) > chars else ""
        return text[:chars] + suffix


def dlq_topic_of(topic: str) -> str:
    """Accept either the main topic or its DLQ name."""
    return topic if topic.endswith(DLQ_SUFFIX) else dlq(topic)


def replay_group(topic: str) -> str:
    return f"jinchui-dlq-replay-{dlq_topic_of(topic).removesuffix(DLQ_SUFFIX)}"


async def read_topic(
    bootstrap: str, topic: str, *, timeout_s: float = 10.0
) -> list[tuple[int, int, int, bytes | None, bytes, list[tuple[str, bytes]]]]:
    """Every record of `topic` from the beginning to the current end, without a group.

    Returns (partition, offset, timestamp ms, key, value, headers) ordered by partition then
    offset. Reads until each partition's end offset taken at the start.
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
        fetch_max_bytes=8 * 1024 * 1024,
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic)
        if partitions is None:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        if not tps:
            return []
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        records: list[tuple[int, int, int, bytes | None, bytes, list[tuple[str, bytes]]]] = []
        pending = {tp for tp in tps if ends[tp] > await consumer.position(tp)}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while pending and loop.time() < deadline:
            batch = await consumer.getmany(*pending, timeout_ms=500)
            for tp, messages in batch.items():
                for m in messages:
                    if m.offset < ends[tp]:
                        records.append(
                            (
                                m.partition,
                                m.offset,
                                m.timestamp,
                                m.key,
                                m.value or b"",
                                list(m.headers or ()),
                            )
                        )
            for tp in list(pending):
                if await consumer.position(tp) >= ends[tp]:
                    pending.discard(tp)
        records.sort(key=lambda r: (r[0], r[1]))
        return records
    finally:
        await consumer.stop()


async def read_dead_letters(bootstrap: str, topic: str) -> list[DeadLetter]:
    name = dlq_topic_of(topic)
    return [
        DeadLetter(
            topic=name,
            partition=partition,
            offset=offset,
            timestamp_ms=ts,
            key=key,
            body=value,
            headers={k: v.decode("utf-8", errors="replace") for k, v in headers},
        )
        for partition, offset, ts, key, value, headers in await read_topic(bootstrap, name)
    ]


@dataclass
class ReplayState:
    """Per DLQ partition: the watermark and the replayed offsets above it."""

    watermarks: dict[int, int] = field(default_factory=dict)
    singles: dict[int, set[int]] = field(default_factory=dict)

    def replayed(self, letter: DeadLetter) -> bool:
        return letter.offset < self.watermarks.get(
            letter.partition, 0
        ) or letter.offset in self.singles.get(letter.partition, set())

    def mark(self, letter: DeadLetter) -> None:
        singles = self.singles.setdefault(letter.partition, set())
        singles.add(letter.offset)
        watermark = self.watermarks.get(letter.partition, 0)
        while watermark in singles:  # contiguous replays move the watermark up
            singles.discard(watermark)
            watermark += 1
        self.watermarks[letter.partition] = watermark

    def commit_value(self, partition: int) -> OffsetAndMetadata:
        singles = sorted(self.singles.get(partition, set()))
        return OffsetAndMetadata(
            self.watermarks.get(partition, 0), json.dumps(singles) if singles else ""
        )


async def group_offsets(
    admin: AIOKafkaAdminClient, group: str, timeout_s: float = 30.0
) -> dict[TopicPartition, OffsetAndMetadata]:
    """A group's committed offsets; waits while a fresh broker still creates its coordinator."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        try:
            return await admin.list_consumer_group_offsets(group)
        except (CoordinatorNotAvailableError, CoordinatorLoadInProgressError):
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.5)


async def load_replay_state(bootstrap: str, topic: str) -> ReplayState:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15_000)
    await admin.start()
    try:
        committed = await group_offsets(admin, replay_group(topic))
    finally:
        await admin.close()
    state = ReplayState()
    for tp, value in committed.items():
        if tp.topic != dlq_topic_of(topic) or value.offset < 0:
            continue
        state.watermarks[tp.partition] = value.offset
        if value.metadata:
            try:
                state.singles[tp.partition] = {int(o) for o in json.loads(value.metadata)}
            except (ValueError, TypeError):
                state.singles[tp.partition] = set()
    return state


@dataclass(frozen=True)
class ReplayOutcome:
    replayed: list[DeadLetter]
    skipped_already_replayed: list[DeadLetter]


class ReplayError(RuntimeError):
    pass


def select_letters(letters: Sequence[DeadLetter], offset: str | None) -> list[DeadLetter]:
    """`P:N` names one record; `N` alone must be unambiguous across partitions."""
    if offset is None:
        return list(letters)
    if ":" in offset:
        partition_text, offset_text = offset.split(":", 1)
        wanted = [
            d
            for d in letters
            if d.partition == int(partition_text) and d.offset == int(offset_text)
        ]
    else:
        wanted = [d for d in letters if d.offset == int(offset)]
        if len(wanted) > 1:
            refs = ", ".join(d.ref for d in wanted)
            raise ReplayError(f"offset {offset} exists in several partitions ({refs}); use P:N")
    if not wanted:
        raise ReplayError(f"no dead letter at offset {offset}")
    return wanted


async def replay_dead_letters(
    settings: Settings, topic: str, *, offset: str | None = None, replay_all: bool = False
) -> ReplayOutcome:
    """Republish the chosen DLQ records to their original topic, each at most once."""
    if offset is None and not replay_all:
        raise ReplayError("choose --offset P:N or --all")
    bootstrap = settings.kafka_bootstrap_servers
    name = dlq_topic_of(topic)
    letters = await read_dead_letters(bootstrap, name)
    chosen = select_letters(letters, offset)
    state = await load_replay_state(bootstrap, name)
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=settings.kafka_idempotence,
        max_request_size=MAX_REPLAY_BYTES,
    )
    # The group only records progress: partitions are assigned by hand, never subscribed.
    committer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=replay_group(name), enable_auto_commit=False
    )
    await producer.start()
    await committer.start()
    replayed: list[DeadLetter] = []
    skipped: list[DeadLetter] = []
    try:
        committer.assign(sorted({TopicPartition(name, d.partition) for d in chosen}))
        for letter in chosen:
            if state.replayed(letter):
                skipped.append(letter)
                continue
            key = letter.original_key.encode() if letter.original_key else None
            await producer.send_and_wait(
                letter.original_topic,
                letter.body,
                key=key,
                headers=replay_headers(letter),
            )
            state.mark(letter)
            tp = TopicPartition(name, letter.partition)
            await committer.commit({tp: state.commit_value(letter.partition)})
            replayed.append(letter)
    finally:
        await committer.stop()
        await producer.stop()
    return ReplayOutcome(replayed, skipped)


def replay_headers(letter: DeadLetter) -> list[tuple[str, bytes]]:
    headers = [
        ("content-type", b"application/json"),
        ("dlq_replayed_from", f"{letter.topic}:{letter.ref}".encode()),
    ]
    try:
        parsed = json.loads(letter.body)
    except ValueError:
        return headers
    if isinstance(parsed, dict):
        for name in ("event_type", "event_id"):
            if isinstance(parsed.get(name), str):
                headers.append((name, parsed[name].encode()))
    return headers


def dead_letter_table(name: str, letters: Sequence[DeadLetter], state: ReplayState) -> Table:
    table = Table(title=f"{name}: {len(letters)} dead letter(s)", title_style="bold")
    table.add_column("p:offset", justify="right")
    table.add_column("time (UTC)")
    table.add_column("reason", overflow="fold", max_width=50)
    table.add_column("error type")
    table.add_column("original p:offset", justify="right")
    table.add_column("consumer")
    table.add_column("body", overflow="fold", max_width=50)
    table.add_column("replayed")
    for d in letters:
        table.add_row(
            d.ref,
            d.at.strftime("%Y-%m-%d %H:%M:%S"),
            d.reason,
            d.error_type,
            d.original_position,
            d.consumer,
            d.excerpt(),
            "yes" if state.replayed(d) else "",
        )
    return table


async def _list(settings: Settings, topic: str) -> tuple[list[DeadLetter], ReplayState]:
    bootstrap = settings.kafka_bootstrap_servers
    letters = await read_dead_letters(bootstrap, topic)
    return letters, await load_replay_state(bootstrap, topic)


@app.command("list")
def list_command(
    topic: Annotated[str, typer.Argument(help="the topic (or its .dlq name)")],
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per line")] = False,
) -> None:
    """Show the dead letters of TOPIC with their reasons."""
    letters, state = asyncio.run(_list(get_settings(), topic))
    if as_json:
        for d in letters:
            print(
                json.dumps(
                    {
                        "ref": d.ref,
                        "at": d.at.isoformat(),
                        "reason": d.reason,
                        "error_type": d.error_type,
                        "original": d.original_position,
                        "consumer": d.consumer,
                        "replayed": state.replayed(d),
                        "body": d.excerpt(),
                    },
                    ensure_ascii=False,
                )
            )
        return
    Console().print(dead_letter_table(dlq_topic_of(topic), letters, state))


@app.command("replay")
def replay_command(
    topic: Annotated[str, typer.Argument(help="the topic (or its .dlq name)")],
    offset: Annotated[
        str | None, typer.Option(help="P:N (partition:offset) or N if unambiguous")
    ] = None,
    replay_all: Annotated[bool, typer.Option("--all", help="every not yet replayed")] = False,
) -> None:
    """Republish dead letters to their original topic with their original key, once each."""
    console = Console()
    try:
        outcome = asyncio.run(
            replay_dead_letters(get_settings(), topic, offset=offset, replay_all=replay_all)
        )
    except ReplayError as exc:
        console.print(f"[red]{exc}")
        raise typer.Exit(2) from exc
    for d in outcome.replayed:
        console.print(f"replayed {d.topic} {d.ref} → {d.original_topic} key={d.original_key}")
    for d in outcome.skipped_already_replayed:
        console.print(f"[yellow]skipped {d.topic} {d.ref}: replayed before")
    console.print(
        f"{len(outcome.replayed)} replayed, {len(outcome.skipped_already_replayed)} skipped"
    )
