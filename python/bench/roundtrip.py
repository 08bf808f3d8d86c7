"""Round trip of ``set_voltage`` from Python, against a bare paho echo through the same broker.

Starts the server binary with its embedded broker on a free port and one emulator runner (no
periodic measurements), then measures four series in the same run, interleaved in blocks so that
slow drifts of the machine hit all of them alike:

- ``pza set_voltage``: ``PowerSupply.set_voltage`` (publish the command, wait for the read-back);
- ``pza set_voltage, Nagle on``: the same with ``Client(tcp_nodelay=False)``;
- ``paho echo``: the baseline, a paho client publishing a message that another paho client
  republishes from its ``on_message`` callback, both at QoS 1 like the server: the floor of any
  request/reply from Python through that broker;
- ``paho echo, Nagle on``: the same without ``TCP_NODELAY``.

Prints the machine facts, then median and p99 (nearest rank) of each series and their ratio to
the baseline's. Timings only: nothing here asserts a speed.

    cargo build --release -p pza-power-supply
    target/py-venv/bin/python python/bench/roundtrip.py --server-bin target/release/pza-power-supply
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from importlib import metadata
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from pza_power_supply import Client, PzaError

REPO = Path(__file__).resolve().parents[2]
RUNNER = "bench"
# Bound on any single wait: only turns a hang into a failure.
WAIT_S = 10.0
START_TIMEOUT_S = 60.0
BLOCK = 50  # samples of one series before the next series takes its turn


def nearest_rank(sorted_values: List[float], fraction: float) -> float:
    rank = math.ceil(fraction * len(sorted_values))
    return sorted_values[min(max(rank, 1), len(sorted_values)) - 1]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_server(binary: Path, directory: Path) -> Tuple[subprocess.Popen, int]:
    port = free_port()
    config = directory / "bench.json5"
    config.write_text(
        f'{{ broker: {{ use_builtin: true, tcp: {{ addr: "127.0.0.1", port: {port} }} }},'
        f'   runners: {{ "{RUNNER}": {{ model: "emulator", measure_period_ms: 0 }} }} }}'
    )
    log = open(directory / "server.log", "wb")
    process = subprocess.Popen(
        [str(binary), "run", "--config", str(config), "--no-tui", "--no-mcp"],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited with {process.returncode}; see {directory / 'server.log'}")
        try:
            with Client("127.0.0.1", port, timeout=2.0) as client:
                client.power_supply(RUNNER).wait_for_status("Running", timeout=START_TIMEOUT_S)
            return process, port
        except PzaError:
            time.sleep(0.05)  # not listening yet
    raise SystemExit("the server did not become ready")


class PahoEcho:
    """Two bare paho clients: a pinger, and an echo republishing each request from its callback."""

    def __init__(self, port: int, nodelay: bool) -> None:
        tag = uuid.uuid4().hex[:8]
        self.request = f"bench-echo/{tag}/request"
        self.reply = f"bench-echo/{tag}/reply"
        self._arrived = threading.Event()
        self.echo = self._connect(port, nodelay, f"echo-{tag}", [self.request], self._on_request)
        self.pinger = self._connect(port, nodelay, f"pinger-{tag}", [self.reply], self._on_reply)

    @staticmethod
    def _connect(
        port: int, nodelay: bool, client_id: str, topics: List[str], on_message: Callable
    ) -> mqtt.Client:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
        if nodelay:
            client.on_socket_open = lambda c, u, sock: sock.setsockopt(
                socket.IPPROTO_TCP, socket.TCP_NODELAY, 1
            )
        subscribed = threading.Event()
        client.on_subscribe = lambda *args: subscribed.set()
        client.on_message = on_message
        client.connect("127.0.0.1", port)
        client.loop_start()
        client.subscribe([(t, 1) for t in topics])
        if not subscribed.wait(WAIT_S):
            raise SystemExit("paho echo: no SUBACK")
        return client

    def _on_request(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        client.publish(self.reply, message.payload, qos=1)

    def _on_reply(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        self._arrived.set()

    def round_trip(self, value: float) -> None:
        self._arrived.clear()
        self.pinger.publish(self.request, f'{{"pza_id":"x","voltage":"{value}"}}', qos=1)
        if not self._arrived.wait(WAIT_S):
            raise SystemExit("paho echo: no reply")

    def close(self) -> None:
        for client in (self.pinger, self.echo):
            client.disconnect()
            client.loop_stop()


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except (AttributeError, OSError):  # not on Windows
        return "n/a"


def machine_facts(binary: Path) -> List[str]:
    return [
        f"date: {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}",
        f"cpus: {os.cpu_count()}, {platform.machine()}, {platform.system()} {platform.release()}",
        f"python {platform.python_version()}, paho-mqtt {metadata.version('paho-mqtt')}",
        f"server: {binary}",
        f"load average: {load_average()}",
        f"command: {' '.join([Path(sys.executable).name, *sys.argv])}",
    ]


def main() -> int:
    default_bin = os.environ.get(
        "PZA_POWER_SUPPLY_BIN", str(REPO / "target" / "release" / "pza-power-supply")
    )
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server-bin", default=default_bin, help=f"server binary (default {default_bin})")
    parser.add_argument("--count", type=int, default=1000, help="samples per series (default 1000)")
    args = parser.parse_args()
    binary = Path(args.server_bin)
    if not binary.is_file():
        raise SystemExit(f"{binary} not found: cargo build --release -p pza-power-supply")

    facts = machine_facts(binary)
    with tempfile.TemporaryDirectory() as tmp:
        process, port = start_server(binary, Path(tmp))
        try:
            results = measure(port, args.count)
        finally:
            process.terminate()
            process.wait(WAIT_S)
    facts.append(f"load average after: {load_average()}")
    print("\n".join(facts))
    report(results)
    return 0


def measure(port: int, count: int) -> Dict[str, List[float]]:
    fast = Client("127.0.0.1", port)
    slow = Client("127.0.0.1", port, tcp_nodelay=False)
    echo_fast = PahoEcho(port, nodelay=True)
    echo_slow = PahoEcho(port, nodelay=False)
    psu_fast = fast.power_supply(RUNNER)
    psu_slow = slow.power_supply(RUNNER)
    series: Dict[str, Callable[[float], object]] = {
        "paho echo (baseline)": echo_fast.round_trip,
        "pza set_voltage": psu_fast.set_voltage,
        "paho echo, Nagle on": echo_slow.round_trip,
        "pza set_voltage, Nagle on": psu_slow.set_voltage,
    }
    samples: Dict[str, List[float]] = {name: [] for name in series}
    names = list(series)
    try:
        for name in names:  # warm-up: connections, caches, the runner's first commands
            for i in range(20):
                series[name](5.0 + (i % 2))
        block = 0
        while min(len(s) for s in samples.values()) < count:
            # Rotate which series goes first, so none always follows the same one.
            order = names[block % len(names) :] + names[: block % len(names)]
            for name in order:
                run = series[name]
                for i in range(min(BLOCK, count - len(samples[name]))):
                    value = 5.0 + (i % 2)
                    start = time.perf_counter()
                    run(value)
                    samples[name].append(time.perf_counter() - start)
            block += 1
    finally:
        echo_fast.close()
        echo_slow.close()
        fast.close()
        slow.close()
    return samples


def report(samples: Dict[str, List[float]]) -> None:
    base = sorted(samples["paho echo (baseline)"])
    base_median, base_p99 = nearest_rank(base, 0.5), nearest_rank(base, 0.99)
    print()
    print("| series | n | median ms | p99 ms | median / baseline | p99 / baseline |")
    print("|---|---|---|---|---|---|")
    for name, values in samples.items():
        ordered = sorted(values)
        median, p99 = nearest_rank(ordered, 0.5), nearest_rank(ordered, 0.99)
        print(
            f"| {name} | {len(ordered)} | {median * 1e3:.3f} | {p99 * 1e3:.3f} "
            f"| {median / base_median:.2f} | {p99 / base_p99:.2f} |"
        )


if __name__ == "__main__":
    sys.exit(main())
