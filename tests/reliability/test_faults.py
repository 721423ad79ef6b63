"""The short fault suite in-process: crashes, SIGTERMs, a Kafka and a mongod restart,
redelivery and poison messages during a contest, then exactly-once effects.

It starts its own Kafka and mongod (jinchui.infra, own state folder and ports) even when the
session's `infra` exists: restarting servers other tests use would break them.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.console import Console

from jinchui.faults import run_faults

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]


async def test_short_fault_suite_keeps_every_effect_exactly_once(tmp_path: Path) -> None:
    report = await run_faults(
        short=True,
        state_dir=tmp_path / "infra",
        log_dir=tmp_path / "logs",
        console=Console(stderr=True, width=160),
    )
    failed = [(s.name, s.detail) for s in report.scenarios if not s.passed]
    assert not failed, failed
    names = {s.name for s in report.scenarios}
    for service in ("registration", "scoring", "awards", "notifications"):
        assert any(n.startswith(f"kill -9 {service}") for n in names), names
        assert any(n.startswith(f"SIGTERM {service}") for n in names), names
    assert any(n.startswith("restart Kafka") for n in names)
    assert any(n.startswith("restart mongod") for n in names)
    assert report.accepted_marks > 0
    assert report.lost_marks == 0
    assert report.duplicate_marks == 0
    assert report.duplicate_awards == 0
    assert report.awards > 0
    assert report.duplicate_notifications == 0
    assert report.poison_sent > 0
    assert report.poison_in_dlq == report.poison_sent
