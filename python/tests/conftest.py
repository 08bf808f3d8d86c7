"""Fixtures: the real pza-power-supply server binary, started on a free port with its embedded
broker and a few emulated power supplies, and clients of it.

The binary is ``$PZA_POWER_SUPPLY_BIN``, else ``target/debug/pza-power-supply`` of the repository
(``cargo build -p pza-power-supply`` makes it; ``scripts/test`` does).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator, List, Optional

import pytest

from pza_power_supply import Client, PzaError

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parents[2]
BINARY_ENV = "PZA_POWER_SUPPLY_BIN"
# Bounds on waits that normally take milliseconds: they only turn a hang into a failure.
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0
# A free port can be taken by another process between the probe and the server's bind.
START_ATTEMPTS = 3

# Limits of the "emulator" runner, which the refusal tests quote.
MAX_VOLTAGE = 30
MAX_CURRENT = 5

MAIN_RUNNERS = f"""
    "emulator": {{ model: "emulator",
                   security_max_voltage: {MAX_VOLTAGE}, security_max_current: {MAX_CURRENT} }},
    "psu-a": {{ model: "emulator" }},
    "psu-b": {{ model: "emulator" }},
    "limited": {{ model: "emulator", description: "12 V rail", security_min_voltage: 1,
                 security_max_voltage: 12, security_max_current: 2, measure_period_ms: 0 }},
    "failing": {{ model: "emulator", faults: {{ panic_on_voltage: 13 }}, restart: {{ max_retries: 0 }} }},
    "slow-restart": {{ model: "emulator", faults: {{ panic_on_voltage: 13 }},
                      restart: {{ initial_delay_ms: 600000, max_delay_ms: 600000, jitter: 0 }} }},
"""
MAIN_NAMES = ["emulator", "failing", "limited", "psu-a", "psu-b", "slow-restart"]

NAMESPACE = "bench-3"
USERNAME = "lab"
PASSWORD = "secret"
NS_NAMES = ["ns-psu"]


def server_binary() -> Path:
    configured = os.environ.get(BINARY_ENV)
    if configured:
        path = Path(configured)
    else:
        exe = "pza-power-supply.exe" if sys.platform == "win32" else "pza-power-supply"
        path = REPO / "target" / "debug" / exe
    if not path.is_file():
        pytest.fail(
            f"server binary {path} not found: build it with `cargo build -p pza-power-supply`, "
            f"or set {BINARY_ENV}"
        )
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class ServerProcess:
    """A running ``pza-power-supply run`` on a free port, its log in ``log_path``."""

    def __init__(self, process: subprocess.Popen, port: int, log_path: Path) -> None:
        self.process = process
        self.port = port
        self.log_path = log_path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        """SIGTERM (a graceful shutdown), then the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM if sys.platform != "win32" else signal.CTRL_BREAK_EVENT)
        try:
            return self.process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"server did not stop within {STOP_TIMEOUT_S} s:\n{self.log()}") from None


def start_server(
    directory: Path, runners: str, names: List[str], broker_extra: str = "", port: Optional[int] = None
) -> ServerProcess:
    """Starts the server binary with an embedded broker on ``port`` (default: a free one) and
    ``runners``, and returns once every runner of ``names`` is ``Running``."""
    binary = server_binary()
    directory.mkdir(parents=True, exist_ok=True)
    failure = ""
    fixed = port
    for attempt in range(START_ATTEMPTS):
        port = fixed or free_port()
        config = directory / f"config-{attempt}.json5"
        config.write_text(
            f'{{ broker: {{ use_builtin: true, tcp: {{ addr: "127.0.0.1", port: {port} }}, {broker_extra} }},'
            f"   runners: {{ {runners} }} }}"
        )
        log_path = directory / f"server-{attempt}.log"
        with open(log_path, "wb") as log:
            flags = subprocess.CREATE_NEW_PROCESS_GROUP if sys.platform == "win32" else 0
            process = subprocess.Popen(
                [str(binary), "run", "--config", str(config), "--no-tui", "--no-mcp"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                creationflags=flags,
            )
        server = ServerProcess(process, port, log_path)
        failure = wait_ready(server, names, broker_extra)
        if not failure:
            return server
        server.stop()
    pytest.fail(f"the server did not start ({START_ATTEMPTS} attempts): {failure}")


def wait_ready(server: ServerProcess, names: List[str], broker_extra: str) -> str:
    """Empty once every runner is Running; else why not."""
    deadline = time.monotonic() + START_TIMEOUT_S
    credentials = {"username": USERNAME, "password": PASSWORD} if "username" in broker_extra else {}
    namespace = NAMESPACE if "namespace" in broker_extra else None
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            return f"exited with {server.process.returncode}:\n{server.log()}"
        try:
            client = Client("127.0.0.1", server.port, namespace=namespace, timeout=2.0, **credentials)
        except PzaError:
            time.sleep(0.05)  # the broker is not listening yet: poll again
            continue
        with client:
            for name in names:
                client.power_supply(name).wait_for_status(
                    "Running", timeout=max(deadline - time.monotonic(), 0.1)
                )
        return ""
    return f"not accepting connections within {START_TIMEOUT_S} s:\n{server.log()}"


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The server with the runners of ``MAIN_RUNNERS``, no namespace, no login."""
    process = start_server(tmp_path_factory.mktemp("server"), MAIN_RUNNERS, MAIN_NAMES)
    yield process
    status = process.stop()
    if sys.platform != "win32":
        assert status == 0, f"server exited with {status} on SIGTERM:\n{process.log()}"


@pytest.fixture(scope="session")
def ns_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A second server, with namespace ``bench-3`` and a login."""
    process = start_server(
        tmp_path_factory.mktemp("ns-server"),
        '"ns-psu": { model: "emulator" },',
        NS_NAMES,
        broker_extra=f'namespace: "{NAMESPACE}", username: "{USERNAME}", password: "{PASSWORD}"',
    )
    yield process
    status = process.stop()
    if sys.platform != "win32":
        assert status == 0, f"server exited with {status} on SIGTERM:\n{process.log()}"


@pytest.fixture
def client(server: ServerProcess) -> Iterator[Client]:
    """A client of ``server`` with a short timeout, closed after the test."""
    with Client("127.0.0.1", server.port, timeout=5.0) as c:
        yield c


def wait_until(predicate, timeout: float = 10.0, what: Optional[str] = None) -> None:
    """Polls ``predicate`` until true; fails the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"not reached within {timeout} s: {what or predicate}")
        time.sleep(0.01)
