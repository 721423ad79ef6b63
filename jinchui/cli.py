"""The `jinchui` command: infrastructure, services, tokens, the demo and the tools around them."""

from __future__ import annotations

import importlib
from typing import Annotated

import typer

from shared.auth import token_app
from shared.settings import DEFAULT_PORTS, SERVICES

app = typer.Typer(
    help="Jinchui (金锤): labour and skill competitions, from registration to awards.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(token_app, name="token")

# Sub-apps that live beside the code they drive; each module exposes `app`.
_SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "infra": ("jinchui.infra", "Start, stop and inspect the local Kafka and MongoDB."),
    "bench": ("jinchui.bench", "Measure the platform beside raw floors on this machine."),
    "db": ("jinchui.dbinit", "MongoDB housekeeping (indexes)."),
    "registration": ("services.registration.cli", "Registration tools: bulk import of entries."),
    "dlq": ("jinchui.dlq", "Inspect and replay dead-lettered messages."),
    "replay": ("jinchui.replay", "Rebuild a service's derived state from the topics."),
    "faults": ("jinchui.faults", "Fault injection: crashes, restarts, redelivery, poison."),
    "report": ("services.scoring.report", "Participation and pass rates of a competition."),
}
for _name, (_module, _help) in _SUBCOMMANDS.items():
    try:
        app.add_typer(importlib.import_module(_module).app, name=_name, help=_help)
    except ModuleNotFoundError as _exc:  # pragma: no cover - only while a module is missing
        if _exc.name != _module:
            raise


@app.command("asyncapi")
def asyncapi_command(
    out: Annotated[str, typer.Option(help="folder for <service>.json")] = "docs/asyncapi",
) -> None:
    """Write each service's generated AsyncAPI document (docs/asyncapi/<service>.json)."""
    from pathlib import Path

    from jinchui.asyncapi import main as write_documents

    write_documents(Path(out))


@app.command("demo")
def demo_command(
    as_json: Annotated[
        bool, typer.Option("--json", help="end with one JSON line of figures")
    ] = False,
    external: Annotated[
        bool, typer.Option(help="use KAFKA_BOOTSTRAP_SERVERS and MONGODB_URL, start nothing")
    ] = False,
) -> None:
    """Play a full scripted contest on the platform and show it as it happens."""
    from jinchui.demo import demo

    demo(as_json=as_json, external=external, state_dir=None)


@app.command()
def serve(
    service: Annotated[str, typer.Argument(help=f"one of {', '.join(SERVICES)}")],
    host: Annotated[str, typer.Option(help="address to bind")] = "127.0.0.1",
    port: Annotated[int | None, typer.Option(help="port (default per service)")] = None,
) -> None:
    """Run one service (HTTP API, Kafka consumers and outbox relay) until SIGTERM."""
    import uvicorn

    if service not in SERVICES:
        raise typer.BadParameter(f"unknown service {service!r}; choose from {SERVICES}")
    uvicorn.run(
        f"services.{service}.app:create_app",
        factory=True,
        host=host,
        port=port or DEFAULT_PORTS[service],
        log_level="warning",
        timeout_graceful_shutdown=10,
    )


def main() -> None:
    app()


if __name__ == "__main__":
    main()
