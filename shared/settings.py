"""Settings from the environment (prefix JINCHUI_), one object per process."""

from __future__ import annotations

from functools import lru_cache

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

SERVICES: tuple[str, ...] = ("registration", "scoring", "awards", "notifications")
DEFAULT_PORTS: dict[str, int] = {
    "registration": 8101,
    "scoring": 8102,
    "awards": 8103,
    "notifications": 8104,
}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="JINCHUI_", extra="ignore")

    kafka_bootstrap_servers: str = Field(
        default="127.0.0.1:9092",
        validation_alias=AliasChoices("JINCHUI_KAFKA_BOOTSTRAP_SERVERS", "KAFKA_BOOTSTRAP_SERVERS"),
    )
    mongodb_url: str = Field(
        default="mongodb://127.0.0.1:27017/?replicaSet=rs0",
        validation_alias=AliasChoices("JINCHUI_MONGODB_URL", "MONGODB_URL"),
    )
    # Tansu (the fallback broker) lacks idempotent producers; infra turns this off there.
    kafka_idempotence: bool = True
    # A database-name prefix lets several test runs share one mongod without colliding.
    mongodb_db_prefix: str = "jinchui"
    jwt_secret: str = Field(default="dev-only-secret-change-me-0123456789abcdef", min_length=32)
    jwt_issuer: str = "jinchui"
    jwt_ttl_seconds: int = 8 * 3600
    webhook_secret: str = Field(default="dev-only-webhook-secret-0123456789", min_length=16)
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 2525
    smtp_sender: str = "jinchui@localhost"
    max_body_bytes: int = 2 * 1024 * 1024
    # Bulk entry import (100,000 rows) needs more than the global JSON limit, on that route only.
    max_import_bytes: int = 32 * 1024 * 1024
    # Key of the HMAC that stores national ids hashed; the default is for development only.
    national_id_pepper: str = Field(default="dev-only-national-id-pepper-0123456789", min_length=16)
    max_batch_items: int = 5000
    log_level: str = "INFO"
    publicity_days: int = 7

    def database_name(self, service: str) -> str:
        return f"{self.mongodb_db_prefix}_{service}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
