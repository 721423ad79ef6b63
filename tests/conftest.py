"""Fixtures every test area shares: one real Kafka broker and one MongoDB replica set.

Where they come from, in this order:
  1. KAFKA_BOOTSTRAP_SERVERS and MONGODB_URL in the environment: used as they are.
  2. A Docker engine answers: testcontainers (Kafka in KRaft mode, MongoDB as replica set).
  3. Otherwise jinchui.infra starts a local Kafka and mongod in a temporary state folder.
Servers started here are stopped at the end of the session. Area-specific fixtures belong in
tests/<area>/conftest.py, not here.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from jinchui.infra import initiate_replica_set, run_coro, start_infra
from shared.kafka_admin import ensure_topics
from shared.settings import Settings, get_settings
from shared.topics import ALL_TOPICS

DOCKER_KAFKA_IMAGE = "confluentinc/cp-kafka:7.9.0"  # Kafka 3.9 in KRaft mode
DOCKER_MONGO_IMAGE = "mongo:7.0"


@dataclass(frozen=True)
class Infra:
    kafka_bootstrap: str
    mongodb_url: str
    kafka_idempotence: bool
    # "kafka" or "tansu" (started locally), "external" (env), "testcontainers" (Docker)
    flavour: str
    # The local state folder when jinchui.infra started the servers, so fault-injection tests
    # can call jinchui.infra.restart_kafka / restart_mongo; None otherwise.
    state_dir: Path | None = None

    def settings(self, **overrides: Any) -> Settings:
        """Service settings pointing at these servers (e.g. `mongodb_db_prefix=...`)."""
        return Settings(
            kafka_bootstrap_servers=self.kafka_bootstrap,
            mongodb_url=self.mongodb_url,
            kafka_idempotence=self.kafka_idempotence,
            **overrides,
        )


def _docker_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        result = subprocess.run(["docker", "info"], capture_output=True, timeout=5, check=False)
    except subprocess.TimeoutExpired:
        return False
    return result.returncode == 0


def _start_containers(stack: contextlib.ExitStack) -> Infra:
    from testcontainers.community.kafka import KafkaContainer
    from testcontainers.core.container import DockerContainer

    kafka = (
        KafkaContainer(DOCKER_KAFKA_IMAGE)
        .with_kraft()
        .with_env("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "1")
        .with_env("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "1")
    )
    kafka.start(timeout=120)
    stack.callback(kafka.stop)

    # The stock MongoDbContainer enables auth, which a replica set would only accept with a
    # key file; a plain mongod with --replSet is what the services need.
    mongo = (
        DockerContainer(DOCKER_MONGO_IMAGE)
        .with_command("--replSet rs0 --bind_ip_all")
        .with_exposed_ports(27017)
    )
    mongo.start()
    stack.callback(mongo.stop)
    address = f"{mongo.get_container_host_ip()}:{mongo.get_exposed_port(27017)}"
    # The member is recorded as the container's own address, which the host cannot reach, so
    # clients connect directly (transactions and change streams work on a direct primary).
    mongodb_url = f"mongodb://{address}/?directConnection=true"
    initiate_replica_set(mongodb_url, "localhost:27017", timeout_s=60)
    return Infra(kafka.get_bootstrap_server(), mongodb_url, True, "testcontainers")


def _resolve_infra(stack: contextlib.ExitStack, state_dir: Path) -> Infra:
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    mongodb_url = os.environ.get("MONGODB_URL")
    if bootstrap and mongodb_url:
        idempotence = os.environ.get("JINCHUI_KAFKA_IDEMPOTENCE", "true").lower() != "false"
        return Infra(bootstrap, mongodb_url, idempotence, "external")
    if _docker_answers():
        return _start_containers(stack)
    # Starts only what the environment does not name already.
    handle = start_infra(state_dir, create_topics=False)
    stack.callback(handle.stop)
    return Infra(
        handle.kafka_bootstrap,
        handle.mongodb_url,
        handle.kafka_idempotence,
        handle.flavour,
        state_dir=handle.state_dir,
    )


@pytest.fixture(scope="session")
def infra(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Infra]:
    """Real Kafka + MongoDB for the session; the environment points subprocesses at them."""
    with contextlib.ExitStack() as stack:
        resolved = _resolve_infra(stack, tmp_path_factory.mktemp("infra"))
        run_coro(lambda: ensure_topics(resolved.kafka_bootstrap, ALL_TOPICS))
        environment = pytest.MonkeyPatch()
        stack.callback(environment.undo)
        environment.setenv("KAFKA_BOOTSTRAP_SERVERS", resolved.kafka_bootstrap)
        environment.setenv("MONGODB_URL", resolved.mongodb_url)
        environment.setenv(
            "JINCHUI_KAFKA_IDEMPOTENCE", "true" if resolved.kafka_idempotence else "false"
        )
        stack.callback(get_settings.cache_clear)
        get_settings.cache_clear()
        yield resolved


@pytest.fixture
def db_prefix() -> str:
    """A fresh database-name prefix, so each test's databases are its own."""
    return "t" + uuid.uuid4().hex[:8]


@pytest.fixture
async def mongo_client(infra: Infra) -> AsyncIterator[AsyncMongoClient[dict[str, Any]]]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(infra.mongodb_url)
    try:
        yield client
    finally:
        await client.close()
