"""`jinchui db init`: create every service's MongoDB indexes (a Kubernetes Job runs it once
per release; services also ensure their own indexes at start, so it is safe to repeat)."""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Sequence

import typer
from pymongo import IndexModel
from rich.console import Console

from shared.mongo import create_client, ensure_indexes, service_database
from shared.runtime import COMMON_INDEXES
from shared.settings import SERVICES, Settings, get_settings

app = typer.Typer(help="MongoDB housekeeping.", no_args_is_help=True)


def service_indexes(service: str) -> dict[str, Sequence[IndexModel]]:
    repository = importlib.import_module(f"services.{service}.repository")
    return {**COMMON_INDEXES, **getattr(repository, "INDEXES", {})}


async def init_databases(settings: Settings) -> dict[str, int]:
    client = create_client(settings)
    created: dict[str, int] = {}
    try:
        for service in SERVICES:
            indexes = service_indexes(service)
            await ensure_indexes(service_database(client, settings, service), indexes)
            created[service] = sum(len(models) for models in indexes.values())
    finally:
        await client.close()
    return created


@app.command("init")
def init() -> None:
    """Create the indexes of all four services' databases."""
    created = asyncio.run(init_databases(get_settings()))
    console = Console()
    for service, count in created.items():
        console.print(f"{service:<14} {count} indexes ensured")
