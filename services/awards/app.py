"""Bootstrap of the awards service: `create_app()` is what `jinchui serve awards` runs.

The policies are loaded before anything starts: a broken policy file stops the service with a
`PolicyError` naming the file, the line and the field, rather than awarding under half a policy.
"""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import FastAPI

from services.awards.api import build_router
from services.awards.handlers import AwardsService, Policies, register_handlers
from services.awards.policy import DEFAULT_POLICY_DIR, PolicyError, load_policies
from services.awards.repository import INDEXES, AwardsRepository
from shared.http import create_http_app
from shared.logging import get_logger
from shared.runtime import ServiceRuntime
from shared.settings import Settings

POLICY_DIR_ENV = "JINCHUI_AWARD_POLICY_DIR"
log = get_logger(__name__)


def policy_directory(explicit: Path | str | None = None) -> Path:
    return Path(explicit or os.environ.get(POLICY_DIR_ENV) or DEFAULT_POLICY_DIR)


def load_service_policies(directory: Path) -> Policies:
    try:
        return load_policies(directory)
    except PolicyError as exc:
        log.error("awarding policy rejected; the service will not start", error=str(exc))
        raise


def create_app(
    settings: Settings | None = None, *, policy_dir: Path | str | None = None
) -> FastAPI:
    policies = load_service_policies(policy_directory(policy_dir))
    runtime = ServiceRuntime("awards", settings, indexes=INDEXES)
    repo = AwardsRepository(runtime.db)
    service = AwardsService(runtime, repo, policies)
    register_handlers(runtime, service)
    return create_http_app(
        runtime,
        [build_router(repo, service)],
        title="Jinchui awards",
        description="Immediate awarding (即时授予): final results in, award decisions out.",
    )
