"""deploy-check passes on the repository and names the problem in deliberately broken copies.

These run the real validators (kustomize, Kubernetes schemas, Strimzi CRD schemas generated
from Strimzi's published API model, the compose-spec schema) on copies under tmp_path."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jinchui import deploycheck
from jinchui.deploycheck import (
    Kustomize,
    ToolUnavailable,
    check_compose_structure,
    memory_bytes,
    strict_crd_schema,
)
from shared.topics import ALL_TOPICS

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".jinchui" / "cache"


def run_check(root: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = deploycheck.main(
        [
            "--path", str(root / "deploy" / "k8s"),
            "--compose", str(root / "docker-compose.yml"),
            "--dockerfile", str(root / "Dockerfile"),
            "--cache-dir", str(CACHE),
        ]
    )  # fmt: skip
    return code, capsys.readouterr().out


@pytest.fixture
def copy_of_repo(tmp_path: Path) -> Path:
    shutil.copytree(REPO / "deploy", tmp_path / "deploy")
    shutil.copy(REPO / "docker-compose.yml", tmp_path / "docker-compose.yml")
    shutil.copy(REPO / "Dockerfile", tmp_path / "Dockerfile")
    return tmp_path


def replace_once(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) >= 1, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def test_repository_passes(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run_check(REPO, capsys)
    assert code == 0, out
    assert out.rstrip().splitlines()[-1].endswith(" 0 failed")
    # Every topic was checked in both overlays.
    assert "topics" in out and "deploy-check: " in out


def test_deployment_with_wrong_field_type_fails(
    copy_of_repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    replace_once(
        copy_of_repo / "deploy/k8s/base/services/scoring.yaml", "replicas: 2", 'replicas: "two"'
    )
    code, out = run_check(copy_of_repo, capsys)
    assert code == 1
    assert "Deployment/scoring" in out and "replicas" in out and "'two'" in out
    assert out.rstrip().splitlines()[-1].startswith("deploy-check: ")


def test_missing_kafka_topic_fails(copy_of_repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    topics = copy_of_repo / "deploy/k8s/base/kafka/topics.yaml"
    documents = topics.read_text().split("\n---\n")
    kept = [d for d in documents if "topicName: scoring.marks.dlq\n" not in d]
    assert len(kept) == len(documents) - 1
    topics.write_text("\n---\n".join(kept))
    code, out = run_check(copy_of_repo, capsys)
    assert code == 1
    assert "no KafkaTopic for topic 'scoring.marks.dlq'" in out


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("  partitions: 12\n", "  partitions: 12\n  retentionDays: 30\n", "retentionDays"),
        ("  partitions: 12\n", '  partitions: "twelve"\n', "'twelve' is not of type 'integer'"),
        ("  partitions: 12\n", "  partitions: 0\n", "0 is less than the minimum of 1"),
    ],
)
def test_kafka_topic_with_invalid_spec_field_fails(
    copy_of_repo: Path, capsys: pytest.CaptureFixture[str], old: str, new: str, expected: str
) -> None:
    replace_once(copy_of_repo / "deploy/k8s/base/kafka/topics.yaml", old, new)
    code, out = run_check(copy_of_repo, capsys)
    assert code == 1
    assert "KafkaTopic/scoring-marks" in out and expected in out


def test_compose_depends_on_missing_service_fails(
    copy_of_repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    compose = copy_of_repo / "docker-compose.yml"
    replace_once(
        compose,
        "    depends_on:\n      mongo-init:\n        condition: service_completed_successfully\n",
        "    depends_on:\n      mongo-setup:\n        condition: service_completed_successfully\n",
    )
    code, out = run_check(copy_of_repo, capsys)
    assert code == 1
    assert "depends_on names 'mongo-setup', which is not a service" in out


def test_kafka_node_pool_without_broker_role_fails(
    copy_of_repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    replace_once(
        copy_of_repo / "deploy/k8s/overlays/prod/kafka-nodepools.yaml",
        "    - broker\n",
        "    - controller\n",
    )
    code, out = run_check(copy_of_repo, capsys)
    assert code == 1
    assert "no KafkaNodePool of cluster 'jinchui' has role 'broker'" in out


def test_library_kustomize_renders_like_the_default_engine() -> None:
    """The fallback for machines without kustomize/kubectl: kustomize's Go library."""
    try:
        by_library = Kustomize(CACHE, engine="pykustomize").build(REPO / "deploy/k8s/overlays/prod")
    except ToolUnavailable as error:
        pytest.skip(f"PyPI not reachable to fetch pykustomize: {error}")
    names = {(m["kind"], m["metadata"]["name"]) for m in by_library}
    assert ("KafkaNodePool", "broker") in names and ("KafkaNodePool", "controller") in names
    topics = {m["spec"]["topicName"] for m in by_library if m["kind"] == "KafkaTopic"}
    assert topics == set(ALL_TOPICS)
    if Kustomize(CACHE).engine != "pykustomize":
        default = Kustomize(CACHE).build(REPO / "deploy/k8s/overlays/prod")
        assert sorted(by_library, key=str) == sorted(default, key=str)


# --- pure helpers -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("quantity", "expected"),
    [("256Mi", 256 * 2**20), ("1Gi", 2**30), ("300M", 300 * 10**6), ("1048576", 2**20), (512, 512)],
)
def test_memory_bytes(quantity: str | int, expected: int) -> None:
    assert memory_bytes(quantity) == expected


@given(st.integers(min_value=0, max_value=10**6))
def test_memory_mebibytes_scale(mebibytes: int) -> None:
    assert memory_bytes(f"{mebibytes}Mi") == mebibytes * 2**20


def test_memory_bytes_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="quantity"):
        memory_bytes("lots")


def test_strict_crd_schema_rejects_unknown_fields_except_where_preserved() -> None:
    schema = strict_crd_schema(
        {
            "type": "object",
            "properties": {
                "spec": {"type": "object", "properties": {"a": {"type": "integer"}}},
                "config": {
                    "type": "object",
                    "x-kubernetes-preserve-unknown-fields": True,
                    "properties": {},
                },
                "port": {"x-kubernetes-int-or-string": True},
                "note": {"type": "string", "nullable": True},
            },
        }
    )
    assert schema["properties"]["spec"]["additionalProperties"] is False
    assert "additionalProperties" not in schema["properties"]["config"]
    assert schema["properties"]["port"]["anyOf"] == [{"type": "integer"}, {"type": "string"}]
    assert schema["properties"]["note"]["type"] == ["string", "null"]


def test_compose_cycle_and_missing_condition_are_reported() -> None:
    compose = {
        "services": {
            "a": {"depends_on": {"b": {"condition": "service_started"}}},
            "b": {"depends_on": ["a"]},
        }
    }
    problems = check_compose_structure(compose)
    assert any("cycle" in p and "a" in p and "b" in p for p in problems)
    assert "services.b.depends_on.a: give a condition" in problems
