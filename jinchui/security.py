"""`make security`: run the security suite (tests/security) and end with `N passed, N failed`.

The suite is also part of the normal `pytest` run (`make test`); this runner exists so the
security verdict is one line a person or a CI step can read. The counts come from the pytest
session itself (a small plugin), not from parsing its text output.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

SUITE = Path(__file__).resolve().parent.parent / "tests" / "security"


@dataclass
class Tally:
    """One outcome per test: a failure in setup, call or teardown makes the test failed."""

    outcomes: dict[str, str] = field(default_factory=dict)

    def pytest_runtest_logreport(self, report: Any) -> None:
        if report.failed:
            self.outcomes[report.nodeid] = "failed"
        elif self.outcomes.get(report.nodeid) == "failed":
            return
        elif report.skipped:
            self.outcomes[report.nodeid] = "skipped"
        elif report.when == "call" and report.passed:
            self.outcomes[report.nodeid] = "passed"

    def count(self, outcome: str) -> int:
        return sum(1 for found in self.outcomes.values() if found == outcome)

    def summary(self) -> str:
        line = f"{self.count('passed')} passed, {self.count('failed')} failed"
        skipped = self.count("skipped")
        return line + (f" ({skipped} skipped)" if skipped else "")


def main(argv: list[str] | None = None) -> int:
    tally = Tally()
    args = [str(SUITE), "-q", "-ra", "-p", "no:cacheprovider", *(argv or sys.argv[1:])]
    code = pytest.main(args, plugins=[tally])
    print(tally.summary(), flush=True)
    return int(code)


if __name__ == "__main__":
    raise SystemExit(main())
