"""A scripted contest: the district federation's 2026 skills competition, with a forklift
(individual) and a welding (team) event, four unions, six-judge panels, a tie and a judge's
conflict of interest. Deterministic (seeded), so every run tells the same story.

Pure data: the demo and the end-to-end test play it through the HTTP APIs.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘"
GIVEN = "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂英华建国志红文辉鹏飞宇浩然"

# Weights of the ISO 7064 MOD 11-2 check digit of the resident identity number.
_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"


def national_id(rng: random.Random) -> str:
    area = rng.choice(("120116", "120101", "120104", "120110"))
    birth = f"{rng.randint(1975, 2002)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}"
    body = f"{area}{birth}{rng.randint(0, 999):03d}"
    check = _ID_CHECK[sum(int(d) * w for d, w in zip(body, _ID_WEIGHTS, strict=True)) % 11]
    return body + check


@dataclass(frozen=True)
class Worker:
    worker_id: str
    name: str
    union_id: str
    employer: str
    job: str
    front_line: bool
    national_id: str


@dataclass(frozen=True)
class Judge:
    judge_id: str
    union_id: str


@dataclass(frozen=True)
class PlannedEntry:
    entry_id: str
    event_id: str
    union_id: str
    worker_ids: tuple[str, ...]
    team_name: str = ""
    theory: Decimal = Decimal("0")
    practical_base: Decimal = Decimal("0")


@dataclass(frozen=True)
class PlannedMark:
    mark_id: str
    event_id: str
    judge_id: str
    entry_id: str
    value: Decimal


@dataclass
class Scenario:
    competition_id: str
    competition_name: str
    year: int
    level: str
    opens_at: datetime
    closes_at: datetime
    starts_at: datetime
    unions: dict[str, str]
    workers: dict[str, Worker]
    events: list[dict[str, object]]
    judges: dict[str, list[Judge]]
    chief_judges: dict[str, str]
    entries: list[PlannedEntry]
    marks: list[PlannedMark]
    conflict_attempt: PlannedMark
    tie_entries: tuple[str, str]
    subscriptions: list[dict[str, object]] = field(default_factory=list)

    @property
    def entrant_count(self) -> int:
        return sum(len(e.worker_ids) for e in self.entries)


UNIONS = {
    "kfq": "开发区工会",
    "port": "港口集团工会",
    "mfg": "制造业工会",
    "trans": "交通运输工会",
}
EMPLOYERS = {
    "kfq": "天津开发区物流有限公司",
    "port": "天津港第二港埠公司",
    "mfg": "滨海重工机械厂",
    "trans": "滨海公交集团",
}


def build_scenario(
    now: datetime,
    *,
    tag: str = "demo",
    forklift_per_union: int = 8,
    welding_teams_per_union: int = 2,
    seed: int = 2026,
) -> Scenario:
    rng = random.Random(seed)
    cid = f"bh{now.year}-{tag}"
    forklift = f"{cid}-forklift"
    welding = f"{cid}-welding"
    unions = {f"{cid}-{k}": v for k, v in UNIONS.items()}
    employers = {f"{cid}-{k}": v for k, v in EMPLOYERS.items()}

    used_names: set[str] = set()

    def person_name() -> str:
        while True:
            name = rng.choice(SURNAMES) + "".join(
                rng.choice(GIVEN) for _ in range(rng.randint(1, 2))
            )
            if name not in used_names:
                used_names.add(name)
                return name

    workers: dict[str, Worker] = {}
    entries: list[PlannedEntry] = []
    for u_index, union_id in enumerate(unions):
        for i in range(forklift_per_union):
            wid = f"{union_id}-w{i + 1:02d}"
            # One office worker per union competes too: ineligible for the May Day medal.
            front_line = i != forklift_per_union - 1
            workers[wid] = Worker(
                wid,
                person_name(),
                union_id,
                employers[union_id],
                "叉车司机" if front_line else "仓储主管",
                front_line,
                national_id(rng),
            )
            theory = Decimal(rng.randint(52, 98))
            practical = Decimal(rng.randint(50, 95))
            entries.append(
                PlannedEntry(
                    f"{forklift}-{u_index}{i:02d}",
                    forklift,
                    union_id,
                    (wid,),
                    "",
                    theory,
                    practical,
                )
            )
        for t in range(welding_teams_per_union):
            members = []
            for m in range(3):
                wid = f"{union_id}-t{t + 1}m{m + 1}"
                workers[wid] = Worker(
                    wid,
                    person_name(),
                    union_id,
                    employers[union_id],
                    "焊工",
                    True,
                    national_id(rng),
                )
                members.append(wid)
            entries.append(
                PlannedEntry(
                    f"{welding}-{u_index}{t:02d}",
                    welding,
                    union_id,
                    tuple(members),
                    f"{UNIONS[union_id.rsplit('-', 1)[1]]}焊接{t + 1}队",
                    Decimal(rng.randint(58, 97)),
                    Decimal(rng.randint(55, 96)),
                )
            )

    # The tie: two forklift entries from different unions with identical marks everywhere.
    forklift_entries = [e for e in entries if e.event_id == forklift]
    first, second = forklift_entries[2], forklift_entries[forklift_per_union + 3]
    tie_theory, tie_practical = Decimal(84), Decimal(82)
    entries = [
        PlannedEntry(
            e.entry_id, e.event_id, e.union_id, e.worker_ids, e.team_name, tie_theory, tie_practical
        )
        if e.entry_id in (first.entry_id, second.entry_id)
        else e
        for e in entries
    ]
    # A clear winner per event keeps the story readable: the best practical is front-line.
    top = forklift_entries[0]
    entries = [
        PlannedEntry(
            e.entry_id, e.event_id, e.union_id, e.worker_ids, e.team_name, Decimal(96), Decimal(97)
        )
        if e.entry_id == top.entry_id
        else e
        for e in entries
    ]

    # Six judges per event: one from each union plus two from the federation's own pool.
    judges: dict[str, list[Judge]] = {}
    chief: dict[str, str] = {}
    for event_id, prefix in ((forklift, "fj"), (welding, "wj")):
        panel = [
            Judge(f"{event_id}-{prefix}{i + 1}", union_id) for i, union_id in enumerate(unions)
        ]
        panel += [
            Judge(f"{event_id}-{prefix}{len(unions) + k + 1}", f"{cid}-federation")
            for k in range(2)
        ]
        judges[event_id] = panel
        chief[event_id] = f"{event_id}-chief"

    marks: list[PlannedMark] = []
    for entry in entries:
        tie = entry.entry_id in (first.entry_id, second.entry_id)
        for judge in judges[entry.event_id]:
            if judge.union_id == entry.union_id:
                continue  # a judge never marks their own union's entry
            noise = 0 if tie else rng.randint(-4, 4)
            value = max(Decimal(0), min(Decimal(100), entry.practical_base + noise))
            marks.append(
                PlannedMark(
                    f"{judge.judge_id}:{entry.entry_id}",
                    entry.event_id,
                    judge.judge_id,
                    entry.entry_id,
                    value,
                )
            )

    own_union_judge = judges[forklift][0]
    own_entry = next(
        e for e in entries if e.event_id == forklift and e.union_id == own_union_judge.union_id
    )
    conflict = PlannedMark(
        f"{own_union_judge.judge_id}:{own_entry.entry_id}:coi",
        forklift,
        own_union_judge.judge_id,
        own_entry.entry_id,
        Decimal(99),
    )

    events: list[dict[str, object]] = [
        {
            "event_id": forklift,
            "name": "叉车司机竞赛",
            "trade": "叉车司机",
            "format": "individual",
            "quota_per_union": forklift_per_union + 2,
            "minimum_entrants": 10,
            "starts_at": (now + timedelta(hours=2)).isoformat(),
        },
        {
            "event_id": welding,
            "name": "焊工团体赛",
            "trade": "焊工",
            "format": "team",
            "team_min_size": 3,
            "team_max_size": 3,
            "quota_per_union": welding_teams_per_union + 1,
            "minimum_entrants": 3,
            "scheme": {
                "components": [
                    {"name": "theory", "weight": "0.3", "pass_mark": "60", "panel": False},
                    {"name": "practical", "weight": "0.7", "pass_mark": "60", "panel": True},
                ],
                "divergence_tolerance": "20",
                "team_marked_as_unit": True,
            },
            "starts_at": (now + timedelta(hours=2)).isoformat(),
        },
    ]
    return Scenario(
        competition_id=cid,
        competition_name=f"{now.year}年滨海新区职工职业技能大赛",
        year=now.year,
        level="district",
        opens_at=now - timedelta(days=1),
        closes_at=now + timedelta(hours=1),
        starts_at=now + timedelta(hours=2),
        unions=unions,
        workers=workers,
        events=events,
        judges=judges,
        chief_judges=chief,
        entries=entries,
        marks=marks,
        conflict_attempt=conflict,
        tie_entries=(first.entry_id, second.entry_id),
    )
