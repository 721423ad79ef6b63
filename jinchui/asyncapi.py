"""`jinchui asyncapi`: write each service's generated AsyncAPI document to docs/asyncapi/."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Annotated, Any

import typer

from shared.runtime import ServiceRuntime
from shared.settings import SERVICES, Settings

DOCS_DIR = Path(__file__).resolve().parents[1] / "docs" / "asyncapi"


def service_asyncapi(service: str) -> dict[str, Any]:
    """Build the service's app (nothing connects) and ask its runtime for the document."""
    module = importlib.import_module(f"services.{service}.app")
    # Fixed addresses: the document must not depend on where this machine's broker runs.
    app = module.create_app(
        Settings(
            kafka_bootstrap_servers="kafka:9092",
            mongodb_url="mongodb://mongo:27017/?replicaSet=rs0",
        )
    )
    runtime: ServiceRuntime = app.state.runtime
    document: dict[str, Any] = runtime.asyncapi_document(app.title, app.description)
    return document


def render(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, ensure_ascii=False, sort_keys=True) + "\n"


def main(
    out: Annotated[Path, typer.Option(help="folder for <service>.json")] = DOCS_DIR,
) -> None:
    """Write the AsyncAPI document of every service."""
    out.mkdir(parents=True, exist_ok=True)
    for service in SERVICES:
        path = out / f"{service}.json"
        path.write_text(render(service_asyncapi(service)))
        typer.echo(f"wrote {path}")
