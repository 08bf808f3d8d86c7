"""The real server binary on free ports, for the MCP tests: the embedded
broker, two emulated supplies, and the MCP HTTP server with a token."""

import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("PZA_POWER_SUPPLY_BIN", REPO / "target" / "debug" / "pza-power-supply"))
TOKEN = "test-token"
ALLOWED_ORIGIN = "http://localhost:6274"
# Upper bound for the server to start: it only turns a hang into a failure.
START_WAIT_S = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port}")


class Server:
    def __init__(self, broker_port: int, mcp_port: int, token: str | None):
        self.broker_port = broker_port
        self.mcp_port = mcp_port
        self.token = token
        self.url = f"http://127.0.0.1:{mcp_port}"

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}


TWO_SUPPLIES = """
        psu: { model: "emulator", measure_period_ms: 0,
               security_max_voltage: 30, security_max_current: 5 },
        other: { model: "emulator", measure_period_ms: 0, security_max_voltage: 12 },"""


def start(token: str | None, runners: str = TWO_SUPPLIES):
    if not BIN.exists():
        raise FileNotFoundError(f"{BIN}: build it first (cargo build -p pza-power-supply)")
    broker_port, mcp_port = free_port(), free_port()
    token_key = f'token: "{token}",' if token else ""
    config = f"""{{
      broker: {{ tcp: {{ addr: "127.0.0.1", port: {broker_port} }} }},
      mcp: {{ enable: true, port: {mcp_port}, {token_key}
             allowed_origins: ["{ALLOWED_ORIGIN}"] }},
      runners: {{ {runners} }},
    }}"""
    folder = tempfile.mkdtemp(prefix="pza-mcp-")
    path = Path(folder) / "config.json5"
    path.write_text(config)
    log = open(Path(folder) / "server.log", "w")
    process = subprocess.Popen([str(BIN), "run", "--config", str(path), "--no-tui"], stdout=log, stderr=log)
    server = Server(broker_port, mcp_port, token)
    try:
        wait_port(mcp_port, time.monotonic() + START_WAIT_S)
    except TimeoutError:
        process.kill()
        raise
    return process, server, log


def stop(process, log):
    process.terminate()
    try:
        code = process.wait(timeout=START_WAIT_S)
    finally:
        if process.poll() is None:
            process.kill()
        log.close()
    assert code == 0, f"the server exits cleanly on SIGTERM, not {code}"


@pytest.fixture(scope="module")
def server():
    process, server, log = start(TOKEN)
    yield server
    stop(process, log)


@pytest.fixture(scope="module")
def open_server():
    """No token: for the clients that cannot send one (stdio needs none)."""
    process, server, log = start(None)
    yield server
    stop(process, log)


@pytest.fixture(scope="module")
def default_server():
    """The default config's runner (`emulator`, 0..30 V), no token: for the README's commands."""
    process, server, log = start(None, 'emulator: { model: "emulator" },')
    yield server
    stop(process, log)
