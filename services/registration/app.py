"""Bootstrap of the registration service: `jinchui serve registration` runs `create_app`."""

from __future__ import annotations

from fastapi import FastAPI

from services.registration.api import IMPORT_PATH, build_router
from services.registration.handlers import RegistrationService
from services.registration.repository import INDEXES, RegistrationRepository
from shared import topics
from shared.events import EntryRegistered, EntryWithdrawn, EventPublished
from shared.http import create_http_app
from shared.runtime import ServiceRuntime
from shared.settings import Settings

DESCRIPTION = (
    "Unions register individual and team entries for competition events; the competition "
    "office defines competitions, events, unions and rosters. Publishes EventPublished, "
    "EntryRegistered and EntryWithdrawn on registration.entries (key: event id)."
)


def declare_publishers(runtime: ServiceRuntime) -> None:
    """For the AsyncAPI document: what this service publishes (the outbox relay sends it)."""
    for schema, title in (
        (EventPublished, "EventPublished"),
        (EntryRegistered, "EntryRegistered"),
        (EntryWithdrawn, "EntryWithdrawn"),
    ):
        runtime.broker.publisher(
            topics.REGISTRATION_ENTRIES,
            schema=schema,
            title=f"{topics.REGISTRATION_ENTRIES}:{title}",
            description=f"{title}, keyed by the competition event id",
        )


def build_service(settings: Settings | None = None) -> tuple[ServiceRuntime, RegistrationService]:
    runtime = ServiceRuntime("registration", settings, indexes=INDEXES)
    declare_publishers(runtime)
    return runtime, RegistrationService(runtime, RegistrationRepository(runtime.db))


def create_app(settings: Settings | None = None) -> FastAPI:
    runtime, service = build_service(settings)
    return create_http_app(
        runtime,
        [build_router(service)],
        title="Jinchui registration",
        description=DESCRIPTION,
        body_limits={IMPORT_PATH: runtime.settings.max_import_bytes},
    )
