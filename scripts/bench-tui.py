#!/usr/bin/env python3
"""Measures the terminal UI under load: its CPU use and its key-to-screen latency.

For each runner count N: mosquitto on a free port, `pza-power-supply run --no-tui` with N
emulator runners measuring every PERIOD ms (external broker: the embedded one hands a new
subscriber at most 100 retained messages), `pza-power-supply tui` in a private 80x24 tmux, and,
as the baseline of the same run, `mosquitto_sub -t 'power-supply/#'` receiving the same messages
into /dev/null. CPU is utime+stime from /proc/<pid>/stat over the window (per-second samples give
the median and p99). Latency: a key (j/k) is sent with tmux send-keys and the pane is read every
few ms until the selection marker has moved; the floor of that method is measured in the same
run with the same keys sent to `cat`.

Usage: scripts/bench-tui.py [--runners 10,100,500] [--period-ms 200] [--seconds 30]
       [--keys 40] [--bin target/release/pza-power-supply]
Linux only (/proc); needs mosquitto, mosquitto_sub, tmux.
"""

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        # The command name (field 2) may hold spaces: split after its ')'.
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def percentile(values, p):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


class Tmux:
    def __init__(self, tag):
        self.socket = f"pza-bench-tui-{tag}-{os.getpid()}"

    def run(self, *args, check=True):
        return subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True,
                              text=True, check=check)

    def screen(self):
        return self.run("capture-pane", "-p", "-t", "ui").stdout

    def kill(self):
        self.run("kill-server", check=False)


def wait_for(pred, what, timeout, tmux=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.1)
    screen = tmux.screen() if tmux else ""
    raise SystemExit(f"timed out waiting for {what}; the screen:\n{screen}")


def selected_row(screen):
    for i, line in enumerate(screen.splitlines()):
        if "▶" in line:
            return i, line
    return None


def key_latency(tmux, keys, moved):
    """Sends j/k `keys` times; the time until `moved(before, screen)` is true, in ms."""
    latencies = []
    for i in range(keys):
        before = tmux.screen()
        sent = time.monotonic()
        tmux.run("send-keys", "-t", "ui", "j" if i % 2 == 0 else "k")
        while True:
            if moved(before, tmux.screen()):
                latencies.append((time.monotonic() - sent) * 1000)
                break
            if time.monotonic() - sent > 5:
                latencies.append(5000.0)
                break
            time.sleep(0.002)
        time.sleep(0.05)
    return latencies


def floor_latency(args):
    """The method's own floor: the same keys to `cat`, which echoes them at once."""
    tmux = Tmux("floor")
    try:
        tmux.run("new-session", "-d", "-s", "ui", "-x", "80", "-y", "24", "exec cat")
        return key_latency(tmux, args.keys, lambda before, now: now.count("j") + now.count("k")
                           > before.count("j") + before.count("k"))
    finally:
        tmux.kill()


def selection_moved(before, now):
    a, b = selected_row(before), selected_row(now)
    return a is not None and b is not None and a[0] != b[0]


def measure(n, args, folder):
    port = free_port()
    conf = os.path.join(folder, f"mosquitto-{n}.conf")
    with open(conf, "w") as f:
        f.write(f"listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 100000\n")
    runners = ",\n".join(
        f'"psu-{i:04}": {{ model: "emulator", measure_period_ms: {args.period_ms} }}'
        for i in range(n))
    config = os.path.join(folder, f"server-{n}.json5")
    with open(config, "w") as f:
        f.write("{ broker: { use_builtin: false, tcp: { addr: \"127.0.0.1\", port: %d } },\n"
                "  tui: { enable: false },\n  runners: { %s } }\n" % (port, runners))
    procs = []
    tmux = Tmux(n)
    try:
        procs.append(subprocess.Popen(["mosquitto", "-c", conf], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL))
        time.sleep(0.3)
        env = dict(os.environ, RUST_LOG="warn")
        env.pop("PZA_POWER_SUPPLY_CONFIG", None)
        server = subprocess.Popen([args.bin, "run", "--config", config, "--no-tui"], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(server)
        # The baseline's output, one line per message, also counts the messages really sent.
        sub_out = open(os.path.join(folder, f"sub-{n}.txt"), "w")
        sub = subprocess.Popen(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-t",
                                "power-supply/#"], stdout=sub_out)
        procs.append(sub)
        home = tempfile.mkdtemp(dir=folder)
        tmux.run("new-session", "-d", "-s", "ui", "-x", "80", "-y", "24",
                 f"exec env HOME={home} RUST_LOG=warn {args.bin} tui --broker 127.0.0.1:{port}")
        tui_pid = int(tmux.run("list-panes", "-t", "ui", "-F", "#{pane_pid}").stdout.strip())
        wait_for(lambda: f"Power supplies ({n})" in tmux.screen(),
                 f"{n} supplies on screen", 120, tmux)
        # Every runner Running: no row left in another status.
        wait_for(lambda: "Initializing" not in tmux.screen(), "runners Running", 120, tmux)
        time.sleep(2)

        running = subprocess.run(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-t",
                                  "power-supply/+/status", "-W", "2"],
                                 capture_output=True, text=True).stdout.count('"Running"')
        pids = {"tui": tui_pid, "mosquitto_sub": sub.pid, "server": server.pid}
        sub_out.flush()
        lines_before = sum(1 for _ in open(sub_out.name))
        start = {k: cpu_seconds(p) for k, p in pids.items()}
        last = dict(start)
        per_second = {k: [] for k in pids}
        t0 = time.monotonic()
        for s in range(args.seconds):
            time.sleep(max(0.0, t0 + s + 1 - time.monotonic()))
            for k, p in pids.items():
                now = cpu_seconds(p)
                per_second[k].append((now - last[k]) * 100)
                last[k] = now
        elapsed = time.monotonic() - t0
        cpu = {k: (last[k] - start[k]) / elapsed * 100 for k in pids}
        rate = (sum(1 for _ in open(sub_out.name)) - lines_before) / elapsed

        latencies = key_latency(tmux, args.keys, selection_moved)
        tmux.run("send-keys", "-t", "ui", "q")
        return cpu, per_second, latencies, running, rate
    finally:
        tmux.kill()
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runners", default="10,100,500")
    parser.add_argument("--period-ms", type=int, default=200)
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--keys", type=int, default=40)
    parser.add_argument("--bin", default="target/release/pza-power-supply")
    args = parser.parse_args()
    counts = [int(x) for x in args.runners.split(",")]
    print(f"measure_period_ms {args.period_ms}, CPU over {args.seconds} s, "
          f"{args.keys} keys; CPU in % of one core")
    print("| runners | msgs/s received | tui CPU (median, p99 of 1 s) | mosquitto_sub CPU (baseline) | "
          "ratio | server CPU | key→screen median | p99 |")
    print("|---|---|---|---|---|---|---|---|")
    floor = floor_latency(args)
    print(f"| floor: keys to `cat` in the same tmux (baseline) | | | | | | "
          f"{statistics.median(floor):.0f} ms | {percentile(floor, 99):.0f} ms |")
    with tempfile.TemporaryDirectory() as folder:
        for n in counts:
            cpu, per_second, lat, running, rate = measure(n, args, folder)
            ratio = cpu["tui"] / cpu["mosquitto_sub"] if cpu["mosquitto_sub"] > 0 else float("inf")
            print(f"| {n} ({running} Running) | {rate:,.0f} | {cpu['tui']:.1f}% "
                  f"({statistics.median(per_second['tui']):.1f}%, "
                  f"{percentile(per_second['tui'], 99):.1f}%) | "
                  f"{cpu['mosquitto_sub']:.1f}% | {ratio:.2f}× | {cpu['server']:.1f}% | "
                  f"{statistics.median(lat):.0f} ms | {percentile(lat, 99):.0f} ms |")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
