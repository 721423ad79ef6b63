"""`jinchui demo`: start everything, play a scripted contest, show it, stop what it started."""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from jinchui.client import Platform, Tokens
from jinchui.infra import kafka_answers, load_env, mongo_answers, start_infra
from jinchui.play import Player, PlayResult
from jinchui.scenario import Scenario, build_scenario
from jinchui.stack import Stack
from shared.events import utc_now
from shared.settings import SERVICES, Settings

AWARD_LABELS = {
    "may_day_labour_medal": "五一劳动奖章 May Day Labour Medal",
    "worker_pioneer": "工人先锋号 Worker Pioneer",
    "technical_expert": "技术能手 Technical Expert",
    "excellent_contestant": "优秀选手 Excellent Contestant",
    "organisation_award": "优秀组织奖 Organisation Award",
}


class RichReporter:
    def __init__(self, console: Console) -> None:
        self.console = console
        self._progress: Progress | None = None

    def step(self, title: str) -> None:
        self._end_progress()
        self.console.rule(f"[bold]{title}")

    def progress(self, label: str, total: int) -> Callable[[int], None]:
        self._end_progress()
        self._progress = Progress(
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
            transient=False,
        )
        self._progress.start()
        task = self._progress.add_task(label, total=total)
        progress = self._progress
        return lambda n: progress.advance(task, n)

    def _end_progress(self) -> None:
        if self._progress:
            self._progress.stop()
            self._progress = None

    def info(self, text: str) -> None:
        self._end_progress()
        self.console.print(f"  {text}")

    def feed_item(self, item: dict[str, Any]) -> None:
        self._end_progress()
        self.console.print(f"  [green]📣 {item.get('title', item)}[/green]")


def standings_table(scenario: Scenario, event: dict[str, Any], standings: dict[str, Any]) -> Table:
    names = {w.worker_id: w.name for w in scenario.workers.values()}
    table = Table(title=f"{event['name']} · standings", title_style="bold", show_lines=False)
    for column in ("rank", "entrant", "union", "theory", "practical", "total", "qualified"):
        table.add_column(
            column, justify="right" if column in ("theory", "practical", "total") else "left"
        )
    tie = set(scenario.tie_entries)
    for line in standings.get("lines", []):
        members = line.get("members") or []
        who = (
            line.get("team_name")
            or ", ".join(m.get("name", "") for m in members)
            or line["entry_id"]
        )
        if not members and line["entry_id"]:
            who = line.get("team_name") or names.get(line["entry_id"], line["entry_id"])
        components = line.get("components", {})
        marker = " [yellow](tie)[/yellow]" if line["entry_id"] in tie else ""
        table.add_row(
            str(line.get("rank")),
            f"{who}{marker}",
            str(line.get("union_name", line.get("union_id", ""))),
            str(components.get("theory", "")),
            str(components.get("practical", "")),
            f"[bold]{line.get('total')}[/bold]",
            "✔" if line.get("qualified") else "[red]✘[/red]",
        )
    return table


def pass_rate_chart(scenario: Scenario, result: PlayResult) -> Table:
    """Pass rate per union, as bars: what a federation publishes after a contest."""
    passed: dict[str, int] = {u: 0 for u in scenario.unions}
    entered: dict[str, int] = {u: 0 for u in scenario.unions}
    for standings in result.standings.values():
        for line in standings.get("lines", []):
            union_id = line.get("union_id")
            if union_id in entered:
                entered[union_id] += 1
                passed[union_id] += 1 if line.get("qualified") else 0
    table = Table(title="pass rate per union 合格率", title_style="bold")
    table.add_column("union")
    table.add_column("rate", justify="right")
    table.add_column("")
    for union_id, name in scenario.unions.items():
        rate = passed[union_id] / entered[union_id] if entered[union_id] else 0.0
        table.add_row(name, f"{rate:.0%}", "█" * round(rate * 30) + "░" * (30 - round(rate * 30)))
    return table


def awards_table(result: PlayResult) -> Table:
    table = Table(title="awards 即时授予", title_style="bold")
    for column in ("award", "recipient", "union", "rank", "certificate", "reason"):
        table.add_column(column)
    for award in sorted(result.awards, key=lambda a: (a["award_type"], a.get("rank") or 0)):
        recipient = award.get("recipient", {})
        reason = award.get("reason", {})
        facts = ", ".join(f"{k}={v}" for k, v in (reason.get("facts") or {}).items())
        status = "" if award.get("status", "granted") == "granted" else " [red](revoked)[/red]"
        table.add_row(
            AWARD_LABELS.get(award["award_type"], award["award_type"]) + status,
            recipient.get("name", ""),
            recipient.get("union_name", ""),
            str(award.get("rank") or ""),
            award.get("certificate_no", ""),
            f"{reason.get('rule', '')}: {facts}",
        )
    return table


def infra_already_running(state_dir: Path | None) -> bool:
    """Kafka and MongoDB of this state folder answer already: leave them running afterwards."""
    env = load_env(state_dir)
    bootstrap, mongodb_url = env.get("KAFKA_BOOTSTRAP_SERVERS"), env.get("MONGODB_URL")
    return bool(
        bootstrap
        and mongodb_url
        and kafka_answers(bootstrap, timeout_s=2.0)
        and mongo_answers(mongodb_url, timeout_s=2.0)
    )


def running_services() -> dict[str, str] | None:
    """URLs of already running services (JINCHUI_<SERVICE>_URL), as under docker compose."""
    urls = {name: os.environ.get(f"JINCHUI_{name.upper()}_URL", "") for name in SERVICES}
    return urls if all(urls.values()) else None


async def run_demo(console: Console, *, external: bool, state_dir: Path | None) -> dict[str, Any]:
    console.print(Panel.fit("金锤 Jinchui · 即时授予 immediate awarding demo", style="bold red"))
    already_running = not external and infra_already_running(state_dir)
    with console.status("Starting Kafka and MongoDB…"):
        infra = start_infra(state_dir, console=console) if not external else None
    env = infra.env() if infra else {}
    settings = Settings(
        kafka_bootstrap_servers=env.get(
            "KAFKA_BOOTSTRAP_SERVERS", Settings().kafka_bootstrap_servers
        ),
        mongodb_url=env.get("MONGODB_URL", Settings().mongodb_url),
    )
    stamp = utc_now().strftime("%H%M%S")
    running = running_services() if external else None
    stack = None
    if running is None:
        stack = Stack.create(
            kafka_bootstrap=settings.kafka_bootstrap_servers,
            mongodb_url=settings.mongodb_url,
            kafka_idempotence=infra.kafka_idempotence if infra else settings.kafka_idempotence,
            db_prefix=f"demo{stamp}",
            log_dir=Path(tempfile.mkdtemp(prefix="jinchui-demo-")),
        )
    try:
        if stack is not None:
            with console.status("Starting the four services…"):
                stack.start()
            for name, service in stack.services.items():
                console.print(f"  {name:<14} {service.url}  (log {service.log_path})")
            urls = {name: s.url for name, s in stack.services.items()}
        else:
            assert running is not None
            urls = running
        console.print(
            f"  [bold]leadership page:[/bold] {urls['notifications']}/  "
            "(open it in a browser while the demo runs)"
        )
        platform = Platform(urls)
        scenario = build_scenario(utc_now(), tag=f"demo{stamp}")
        player = Player(
            platform,
            Tokens(settings),
            scenario,
            RichReporter(console),
            webhook_secret=settings.webhook_secret,
        )
        try:
            result = await player.play()
        finally:
            await platform.close()
        for event in scenario.events:
            console.print(
                standings_table(scenario, event, result.standings[str(event["event_id"])])
            )
        console.print(pass_rate_chart(scenario, result))
        console.print(awards_table(result))
        summary = result.summary()
        console.print(
            f"notifications delivered: {summary['notifications_delivered']} of "
            f"{summary['notifications_expected']} expected; webhooks received (signed): "
            f"{summary['webhooks_received']}; finalisation → notification "
            f"p50 {summary['finalisation_to_notification_ms']['p50']} ms, "
            f"max {summary['finalisation_to_notification_ms']['max']} ms"
        )
        return summary
    finally:
        if stack is not None:
            with console.status("Stopping services…"):
                stack.stop()
        if infra and infra.managed and not already_running:
            with console.status("Stopping Kafka and MongoDB…"):
                infra.stop()


def demo(
    as_json: Annotated[
        bool, typer.Option("--json", help="end with one JSON line of figures")
    ] = False,
    external: Annotated[
        bool, typer.Option(help="use KAFKA_BOOTSTRAP_SERVERS and MONGODB_URL, start nothing")
    ] = False,
    state_dir: Annotated[Path | None, typer.Option(help="infrastructure state folder")] = None,
) -> None:
    """Play a full scripted contest on the platform and show it as it happens."""
    console = Console(stderr=as_json)
    summary = asyncio.run(run_demo(console, external=external, state_dir=state_dir))
    if as_json:
        print(json.dumps(summary, ensure_ascii=False))
    ok = (
        summary["awards"]["may_day_labour_medal"] >= 1
        and summary["awards"]["worker_pioneer"] >= 1
        and summary["notifications_delivered"] >= summary["notifications_expected"] > 0
        and summary["conflict_of_interest_rejected"]
    )
    if not ok:
        raise typer.Exit(1)
