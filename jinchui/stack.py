"""Run the four services as separate processes (as in production), wait until each is ready,
and stop them. The demo, the end-to-end test, the fault suite and the benchmark share this."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from shared.settings import SERVICES


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class ServiceProcess:
    name: str
    port: int
    log_path: Path
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "jinchui.cli", "serve", self.name, "--port", str(self.port)],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """kill -9: no graceful shutdown, as in a crash."""
        if self.process and self.alive():
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self, timeout: float = 15.0) -> None:
        if not self.process or not self.alive():
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(
                    f"{self.name} exited with {self.process.returncode if self.process else '?'}"
                    f"; see {self.log_path}:\n{tail(self.log_path)}"
                )
            try:
                response = httpx.get(f"{self.url}/readyz", timeout=2.0)
                if response.status_code == 200:
                    return
                last = response.text
            except httpx.HTTPError as exc:
                last = str(exc)
            time.sleep(0.2)
        raise TimeoutError(f"{self.name} not ready after {timeout}s: {last}\n{tail(self.log_path)}")


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@dataclass
class Stack:
    """The four services, sharing one Kafka, one MongoDB and one database prefix."""

    env: dict[str, str]
    log_dir: Path
    services: dict[str, ServiceProcess] = field(default_factory=dict)

    @classmethod
    def create(
        cls,
        *,
        kafka_bootstrap: str,
        mongodb_url: str,
        log_dir: Path,
        kafka_idempotence: bool = True,
        db_prefix: str = "jinchui",
        topic_prefix: str | None = None,
        extra_env: Mapping[str, str] | None = None,
        names: Iterable[str] = SERVICES,
    ) -> Stack:
        log_dir.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "MONGODB_URL": mongodb_url,
            "JINCHUI_KAFKA_IDEMPOTENCE": "true" if kafka_idempotence else "false",
            "JINCHUI_MONGODB_DB_PREFIX": db_prefix,
            # Its own topics too: a stack never reads another run's history on a shared broker.
            "JINCHUI_TOPIC_PREFIX": f"{db_prefix.lower()}."
            if topic_prefix is None
            else topic_prefix,
            **(extra_env or {}),
        }
        stack = cls(env=env, log_dir=log_dir)
        for name in names:
            stack.services[name] = ServiceProcess(
                name=name, port=free_port(), log_path=log_dir / f"{name}.log", env=env
            )
        return stack

    def url(self, name: str) -> str:
        return self.services[name].url

    def start(self, timeout: float = 90.0) -> None:
        for service in self.services.values():
            service.start()
        for service in self.services.values():
            service.wait_ready(timeout)

    def restart(self, name: str, *, hard: bool = True, timeout: float = 90.0) -> None:
        service = self.services[name]
        if hard:
            service.kill()
        else:
            service.stop()
        service.start()
        service.wait_ready(timeout)

    def stop(self) -> None:
        for service in self.services.values():
            if service.alive() and service.process:
                service.process.send_signal(signal.SIGTERM)
        for service in self.services.values():
            service.stop()

    def __enter__(self) -> Stack:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()
