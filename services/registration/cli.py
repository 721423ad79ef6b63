"""`jinchui registration import FILE`: upload a CSV/JSON file of entries with a progress bar
and show the per-row error report as a table."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from services.registration.bulk import ImportMode
from shared.auth import Role, issue_token
from shared.settings import DEFAULT_PORTS, get_settings

UPLOAD_CHUNK_BYTES = 64 * 1024
SHOWN_ERRORS = 50

app = typer.Typer(help="Registration tools for union officers.", no_args_is_help=True)


@app.callback()
def registration() -> None:
    """Registration tools for union officers and the competition office."""


def _chunks(data: bytes, advance: Any) -> Iterator[bytes]:
    for start in range(0, len(data), UPLOAD_CHUNK_BYTES):
        piece = data[start : start + UPLOAD_CHUNK_BYTES]
        yield piece
        advance(len(piece))


def import_file(
    path: Path,
    *,
    url: str,
    token: str,
    mode: ImportMode = ImportMode.ALL_OR_NOTHING,
    file_format: str | None = None,
    console: Console | None = None,
    timeout_s: float = 600.0,
) -> tuple[int, dict[str, Any]]:
    """Upload `path` to POST /entries/import in chunks, drawing progress; return the answer."""
    console = console or Console()
    data = path.read_bytes()
    chosen = file_format or ("json" if path.suffix.lower() == ".json" else "csv")
    content_type = "application/json" if chosen == "json" else "text/csv"
    with Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=console,
        transient=False,
    ) as progress:
        task = progress.add_task(f"uploading {path.name}", total=len(data))

        def advance(n: int) -> None:
            progress.update(task, advance=n)
            if progress.tasks[task].completed >= len(data):
                progress.update(task, description="server validating and storing")

        with httpx.Client(base_url=url, timeout=timeout_s) as client:
            response = client.post(
                "/entries/import",
                params={"mode": mode.value, "format": chosen},
                content=_chunks(data, advance),
                headers={
                    "Authorization": f"Bearer {token}",
                    "Content-Type": content_type,
                    "Content-Length": str(len(data)),
                },
            )
        progress.update(task, description=f"uploaded {path.name}", completed=len(data))
    try:
        body: dict[str, Any] = response.json()
    except ValueError:
        body = {"error": {"rule": "http", "field": None, "reason": response.text[:500]}}
    return response.status_code, body


def render_report(console: Console, status: int, body: dict[str, Any]) -> None:
    if "error" in body:
        error = body["error"]
        console.print(
            f"[red]HTTP {status} {error.get('rule')}[/red] ({error.get('field')}): "
            f"{error.get('reason')}"
        )
        return
    console.print(
        f"[bold]{body['rows']}[/bold] rows · [green]{body['accepted']} accepted[/green] · "
        f"[red]{body['rejected']} rejected[/red] · mode {body['mode']}"
    )
    errors = body.get("errors", [])
    if errors:
        table = Table(title="Rejected rows", show_lines=False)
        table.add_column("row", justify="right")
        table.add_column("field")
        table.add_column("rule")
        table.add_column("reason")
        for error in errors[:SHOWN_ERRORS]:
            table.add_row(str(error["row"]), error["field"], error["rule"], error["reason"])
        console.print(table)
        if len(errors) > SHOWN_ERRORS:
            console.print(f"… and {len(errors) - SHOWN_ERRORS} more (use --json for all)")


@app.command("import")
def import_command(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="CSV or JSON file")],
    url: Annotated[str, typer.Option(help="registration service base URL")] = (
        f"http://127.0.0.1:{DEFAULT_PORTS['registration']}"
    ),
    token: Annotated[str | None, typer.Option(help="bearer token (else one is issued)")] = None,
    union: Annotated[
        str | None, typer.Option(help="issue a union-officer token for this union")
    ] = None,
    mode: Annotated[ImportMode, typer.Option(help="all_or_nothing or valid_rows_only")] = (
        ImportMode.ALL_OR_NOTHING
    ),
    file_format: Annotated[
        str | None, typer.Option("--format", help="csv or json (default: from the extension)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the raw answer as JSON")] = False,
) -> None:
    """Bulk-register entries from FILE; shows upload progress and the per-row error report."""
    console = Console()
    if token is None:
        settings = get_settings()
        token = issue_token(
            settings,
            subject=f"cli-{union}" if union else "cli-admin",
            role=Role.UNION_OFFICER if union else Role.ADMIN,
            scopes=[f"union:{union}"] if union else ["*"],
            ttl=timedelta(hours=1),
        )
    status, body = import_file(
        file, url=url, token=token, mode=mode, file_format=file_format, console=console
    )
    if as_json:
        console.print_json(data=body)
    else:
        render_report(console, status, body)
    if status >= 400 or body.get("rejected"):
        raise typer.Exit(1 if status >= 400 else 2)
