"""Bootstrap of the scoring service: `create_app()` is what `jinchui serve scoring` runs."""

from __future__ import annotations

from fastapi import FastAPI

from shared.http import create_http_app
from shared.runtime import ServiceRuntime
from shared.settings import Settings

from .api import build_router
from .handlers import ScoringService, register_handlers
from .repository import INDEXES, ScoringRepository


def create_app(settings: Settings | None = None) -> FastAPI:
    runtime = ServiceRuntime("scoring", settings, indexes=INDEXES)
    service = ScoringService(runtime, ScoringRepository(runtime.db))
    register_handlers(runtime, service)
    app = create_http_app(
        runtime,
        [build_router(service)],
        title="Jinchui scoring",
        description="Judges stream marks; live standings; finalisation and appeals.",
    )
    app.state.scoring = service
    return app
