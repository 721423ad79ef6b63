"""The competition report as a chart, and the `jinchui report` command that fetches it.

The chart is drawn with matplotlib's Agg canvas through the object API (no pyplot state), so
it is safe to draw in a worker thread of the service. Union and event names are shown when a
CJK font is installed; otherwise their ids are, so the chart never shows empty boxes.
"""

from __future__ import annotations

import io
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

import typer

CJK_FONT_HINTS = ("CJK", "WenQuanYi", "Hei", "Song", "Noto Sans SC", "Source Han", "Droid Sans")


@lru_cache(maxsize=1)
def _cjk_font() -> str | None:
    from matplotlib import font_manager

    for font in font_manager.fontManager.ttflist:
        if any(hint in font.name for hint in CJK_FONT_HINTS):
            return str(font.name)
    return None


def render_report_png(report: dict[str, Any]) -> bytes:
    """Participation (entries, people) and pass rate per union and per event, as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    font = _cjk_font()
    unions = report.get("unions", [])
    events = report.get("events", [])

    def union_label(line: dict[str, Any]) -> str:
        return str(line["union_name"] if font else line["union_id"])

    def event_label(line: dict[str, Any]) -> str:
        return str(line["name"] if font else line["event_id"])

    figure = Figure(figsize=(11, 7), dpi=100)
    FigureCanvasAgg(figure)
    if font:
        figure.text(0, 0, "", fontfamily=font)  # warm the font cache once
    axes = figure.subplots(2, 2)
    _bars(
        axes[0][0],
        [union_label(u) for u in unions],
        [u["entries"] for u in unions],
        "Entries per union",
        "entries",
        font,
    )
    _bars(
        axes[0][1],
        [union_label(u) for u in unions],
        [float(Decimal(u["pass_rate"])) for u in unions],
        "Pass rate per union (%)",
        "%",
        font,
        limit=100,
    )
    _bars(
        axes[1][0],
        [event_label(e) for e in events],
        [e["people"] for e in events],
        "People per event",
        "people",
        font,
    )
    _bars(
        axes[1][1],
        [event_label(e) for e in events],
        [float(Decimal(e["pass_rate"])) for e in events],
        "Pass rate per event (%)",
        "%",
        font,
        limit=100,
    )
    totals = report.get("totals", {})
    figure.suptitle(
        f"Competition {report.get('competition_id')}: {totals.get('entries', 0)} entries, "
        f"{totals.get('people', 0)} people, pass rate {totals.get('pass_rate', '0.00')} %"
    )
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _bars(
    axes: Any,
    labels: list[str],
    values: list[float],
    title: str,
    unit: str,
    font: str | None,
    *,
    limit: float | None = None,
) -> None:
    positions = list(range(len(labels)))
    axes.bar(positions, values, color="#c0392b")
    axes.set_xticks(positions)
    axes.set_xticklabels(labels, rotation=30, ha="right", fontsize=8, fontfamily=font or None)
    axes.set_title(title)
    axes.set_ylabel(unit)
    if limit is not None:
        axes.set_ylim(0, limit)
    if not labels:
        axes.text(0.5, 0.5, "no data", ha="center", va="center", transform=axes.transAxes)


# --- CLI: `jinchui report COMPETITION_ID` --------------------------------------------------

app = typer.Typer(
    help="Participation and pass-rate report of a competition (from the scoring service).",
    invoke_without_command=True,
    no_args_is_help=True,
    # A group normally stops parsing options at its first argument (a sub-command name);
    # this one has no sub-commands, so `report C1 --out x.png` must parse like a command.
    context_settings={"allow_interspersed_args": True},
)


@app.callback(invoke_without_command=True)
def report_command(
    competition_id: Annotated[str, typer.Argument(help="the competition to report on")],
    url: Annotated[str, typer.Option(help="scoring service base URL")] = "http://127.0.0.1:8102",
    out: Annotated[Path, typer.Option(help="where to write the PNG chart")] = Path("report.png"),
) -> None:
    """Print the report as a table and write the chart (admin token from the settings)."""
    import httpx

    from shared.auth import Role, issue_token
    from shared.settings import get_settings

    token = issue_token(get_settings(), subject="report-cli", role=Role.ADMIN, scopes=["*"])
    headers = {"Authorization": f"Bearer {token}"}
    try:
        with httpx.Client(base_url=url, headers=headers, timeout=60.0) as client:
            response = client.get(f"/competitions/{competition_id}/report")
            if response.status_code != 200:
                typer.echo(f"scoring answered {response.status_code}: {response.text}", err=True)
                raise typer.Exit(1)
            report = response.json()
            chart = client.get(f"/competitions/{competition_id}/report.png")
            chart.raise_for_status()
    except httpx.HTTPError as exc:
        typer.echo(f"cannot reach the scoring service at {url}: {exc}", err=True)
        raise typer.Exit(1) from exc
    out.write_bytes(chart.content)
    typer.echo(format_report(report))
    typer.echo(f"chart written to {out}")


def format_report(report: dict[str, Any]) -> str:
    totals = report["totals"]
    lines = [
        f"Competition {report['competition_id']}: {totals['entries']} entries, "
        f"{totals['people']} people, {totals['qualified']} qualified, "
        f"pass rate {totals['pass_rate']} %",
        "",
        f"{'event':<30} {'entries':>8} {'people':>7} {'qualified':>9} {'pass %':>7}",
    ]
    for event in report["events"]:
        lines.append(
            f"{event['name'][:30]:<30} {event['entries']:>8} {event['people']:>7} "
            f"{event['qualified']:>9} {event['pass_rate']:>7}"
        )
    lines += ["", f"{'union':<30} {'entries':>8} {'people':>7} {'qualified':>9} {'pass %':>7}"]
    for union in report["unions"]:
        lines.append(
            f"{union['union_name'][:30]:<30} {union['entries']:>8} {union['people']:>7} "
            f"{union['qualified']:>9} {union['pass_rate']:>7}"
        )
    return "\n".join(lines)
