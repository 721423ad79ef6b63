"""MongoDB plumbing: PyMongo's asyncio client (Motor's maintained successor) and transactions."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from decimal import Decimal
from typing import Any, TypeVar

from bson.codec_options import CodecOptions, TypeCodec, TypeRegistry
from bson.decimal128 import Decimal128
from pymongo import AsyncMongoClient, IndexModel
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.read_concern import ReadConcern
from pymongo.write_concern import WriteConcern

from shared.settings import Settings

T = TypeVar("T")
Doc = dict[str, Any]
Database = AsyncDatabase[Doc]
Session = AsyncClientSession


class _DecimalCodec(TypeCodec):
    """Store Decimal as Decimal128 so scores stay exact in the database."""

    python_type = Decimal
    bson_type = Decimal128

    def transform_python(self, value: Decimal) -> Decimal128:
        return Decimal128(value)

    def transform_bson(self, value: Decimal128) -> Decimal:
        return value.to_decimal()


CODEC_OPTIONS: CodecOptions[Doc] = CodecOptions(
    tz_aware=True, type_registry=TypeRegistry([_DecimalCodec()])
)


def create_client(settings: Settings, **kwargs: Any) -> AsyncMongoClient[Doc]:
    return AsyncMongoClient(
        settings.mongodb_url,
        tz_aware=True,
        uuidRepresentation="standard",
        type_registry=CODEC_OPTIONS.type_registry,
        serverSelectionTimeoutMS=10_000,
        **kwargs,
    )


def service_database(client: AsyncMongoClient[Doc], settings: Settings, service: str) -> Database:
    return client.get_database(settings.database_name(service), codec_options=CODEC_OPTIONS)


async def in_transaction(
    client: AsyncMongoClient[Doc],
    work: Callable[[Session], Awaitable[T]],
    *,
    one_at_a_time: asyncio.Lock | None = None,
) -> T:
    """Run `work` in one majority-committed transaction, retrying transient conflicts.

    `one_at_a_time`, when given, is held for the whole transaction, retries included."""
    async with one_at_a_time or contextlib.nullcontext():
        async with client.start_session() as session:
            return await session.with_transaction(
                work,
                read_concern=ReadConcern("snapshot"),
                write_concern=WriteConcern("majority"),
            )


async def ensure_indexes(db: Database, indexes: dict[str, Sequence[IndexModel]]) -> None:
    for collection, models in indexes.items():
        if models:
            await db[collection].create_indexes(list(models))


async def ping(client: AsyncMongoClient[Doc]) -> bool:
    try:
        await client.admin.command("ping")
    except Exception:
        return False
    return True
