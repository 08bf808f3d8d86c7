"""The MCP server with the MCP Inspector CLI (npm, installed in
tests/mcp-inspector by scripts/test): the commands the README gives."""

import json
import shlex
import subprocess

from conftest import BIN, REPO

INSPECTOR = REPO / "tests" / "mcp-inspector" / "node_modules" / ".bin" / "mcp-inspector"
# Upper bound for one Inspector run (node starts in about a second).
RUN_WAIT_S = 60


def inspector(*args):
    assert INSPECTOR.exists(), f"{INSPECTOR}: run `npm ci --prefix tests/mcp-inspector` (scripts/test does)"
    done = subprocess.run(
        [str(INSPECTOR), "--cli", *args], capture_output=True, text=True, timeout=RUN_WAIT_S
    )
    return done.returncode, done.stdout, done.stderr


def http_args(server, path):
    return [f"{server.url}{path}", "--transport", "http", "--header", f"Authorization: Bearer {server.token}"]


def test_inspector_lists_the_tools_over_http(server):
    code, out, err = inspector(*http_args(server, "/mcp"), "--method", "tools/list")
    assert code == 0, err
    names = {t["name"] for t in json.loads(out)["tools"]}
    assert names == {"list_power_supplies", "get_state", "set_voltage", "set_current", "set_output", "measure", "restart"}


def test_inspector_calls_set_voltage_and_sees_the_refusal(server):
    code, out, err = inspector(
        *http_args(server, "/mcp"), "--method", "tools/call", "--tool-name", "set_voltage",
        "--tool-arg", "device=psu", "volts=7.5",
    )
    assert code == 0, err
    assert json.loads(out)["structuredContent"] == {"device": "psu", "volts": 7.5}

    code, out, err = inspector(
        *http_args(server, "/mcp"), "--method", "tools/call", "--tool-name", "set_voltage",
        "--tool-arg", "device=psu", "volts=31",
    )
    result = json.loads(out)
    assert code != 0, "the Inspector exits non-zero on a tool error"
    assert result["isError"] is True
    assert result["content"][0]["text"] == "voltage 31 exceeds security_max_voltage 30"


def test_inspector_on_the_per_device_endpoint(server):
    code, out, err = inspector(
        *http_args(server, "/power-supply/other"), "--method", "tools/call", "--tool-name", "get_state"
    )
    assert code == 0, err
    state = json.loads(out)["structuredContent"]
    assert state["device"] == "other" and state["limits"]["max_volts"] == 12.0


def test_inspector_without_the_token_fails(server):
    code, out, err = inspector(f"{server.url}/mcp", "--transport", "http", "--method", "tools/list")
    assert code != 0
    # The 401 with "WWW-Authenticate: Bearer" makes it ask for credentials.
    assert "auth_required" in out + err, out + err


def test_inspector_over_stdio(open_server):
    code, out, err = inspector(
        str(BIN), "mcp", "--stdio", "--broker", f"127.0.0.1:{open_server.broker_port}", "--device", "psu",
        "--method", "tools/call", "--tool-name", "measure",
    )
    assert code == 0, err
    assert json.loads(out)["structuredContent"]["device"] == "psu"


def readme_commands():
    """The Inspector lines of the README's "Try it with the MCP Inspector"."""
    section = (REPO / "README.md").read_text().split("**Try it with the MCP Inspector**")[1].split("\n## ")[0]
    return [shlex.split(line)[1:] for line in section.splitlines() if line.startswith("$I --cli ")]


def test_the_readme_inspector_commands_work(default_server):
    commands = readme_commands()
    assert len(commands) == 5, commands
    outcomes = []
    for args in commands:
        args = [
            a.replace(":50051", f":{default_server.mcp_port}")
            .replace("127.0.0.1:1883", f"127.0.0.1:{default_server.broker_port}")
            .replace("target/release/pza-power-supply", str(BIN))
            for a in args
        ]
        assert args[0] == "--cli", args
        code, out, err = inspector(*args[1:])
        outcomes.append((code, out, err))
    # tools/list, 5 V, 31 V (refused: exit status 5), measure, stdio tools/list
    assert [code for code, _, _ in outcomes] == [0, 0, 5, 0, 0], outcomes
    assert json.loads(outcomes[1][1])["structuredContent"] == {"device": "emulator", "volts": 5.0}
    refused = json.loads(outcomes[2][1])
    assert refused["isError"] is True
    assert refused["content"][0]["text"] == "voltage 31 exceeds security_max_voltage 30"
    assert json.loads(outcomes[3][1])["structuredContent"]["device"] == "emulator"
    assert len(json.loads(outcomes[4][1])["tools"]) == 7
