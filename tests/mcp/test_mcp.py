"""The MCP server with the official Python SDK: streamable HTTP on /mcp and
/power-supply/<name>, stdio, every tool, refusals as isError, and the
Host/Origin/token checks on raw HTTP."""

import http.client
import json
import time

import anyio
from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from conftest import ALLOWED_ORIGIN, BIN

TOOLS = {"list_power_supplies", "get_state", "set_voltage", "set_current", "set_output", "measure", "restart"}
# Upper bound for the runners to be Running after the server starts.
RUNNING_WAIT_S = 20.0


async def with_session(url, headers, body):
    async with create_mcp_http_client(headers=headers) as http_client:
        async with streamable_http_client(url, http_client=http_client) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                return await body(session)


def run(url, headers, body):
    return anyio.run(with_session, url, headers, body)


async def wait_running(session, names):
    deadline = time.monotonic() + RUNNING_WAIT_S
    while True:
        result = await session.call_tool("list_power_supplies", {})
        status = {p["name"]: p["status"] for p in result.structured_content["power_supplies"]}
        if all(status.get(n) == "Running" for n in names):
            return
        assert time.monotonic() < deadline, f"runners not Running: {status}"
        await anyio.sleep(0.05)


def text(result):
    return result.content[0].text


def test_tools_are_listed_with_typed_schemas(server):
    async def body(session):
        await wait_running(session, ["psu", "other"])
        return (await session.list_tools()).tools

    tools = {t.name: t for t in run(server.url + "/mcp", server.auth, body)}
    assert set(tools) == TOOLS
    for tool in tools.values():
        assert tool.output_schema["type"] == "object", tool.name
    volts = tools["set_voltage"].input_schema["properties"]["volts"]
    assert volts["type"] == "number" and "volts (V)" in volts["description"]
    assert set(tools["set_voltage"].input_schema["required"]) == {"device", "volts"}
    assert tools["set_current"].input_schema["properties"]["amps"]["type"] == "number"
    assert tools["set_output"].input_schema["properties"]["on"]["type"] == "boolean"
    assert "psu: 0..30 V" in tools["set_voltage"].description
    assert "other: 0..12 V" in tools["set_voltage"].description
    assert "psu: 0..5 A" in tools["set_current"].description


def test_every_tool_over_http(server):
    async def body(session):
        await wait_running(session, ["psu"])
        out = {}
        for name, args in [
            ("set_output", {"device": "psu", "on": False}),
            ("set_current", {"device": "psu", "amps": 0.25}),
            ("set_voltage", {"device": "psu", "volts": 6.5}),
            ("set_output", {"device": "psu", "on": True}),
            ("measure", {"device": "psu"}),
            ("get_state", {"device": "psu"}),
            ("list_power_supplies", {}),
            ("restart", {"device": "psu"}),
        ]:
            result = await session.call_tool(name, args)
            assert not result.is_error, f"{name}: {text(result)}"
            out.setdefault(name, []).append(result.structured_content)
        return out

    out = run(server.url + "/mcp", server.auth, body)
    assert out["set_output"] == [{"device": "psu", "on": False}, {"device": "psu", "on": True}]
    assert out["set_current"] == [{"device": "psu", "amps": 0.25}]
    assert out["set_voltage"] == [{"device": "psu", "volts": 6.5}]
    measured = out["measure"][0]
    assert measured["device"] == "psu" and measured["volts"] > 0 and measured["amps"] > 0
    state = out["get_state"][0]
    assert (state["status"], state["output"], state["volts"], state["amps"]) == ("Running", True, 6.5, 0.25)
    assert state["limits"] == {"min_volts": 0.0, "max_volts": 30.0, "min_amps": 0.0, "max_amps": 5.0}
    names = [p["name"] for p in out["list_power_supplies"][0]["power_supplies"]]
    assert names == ["other", "psu"]
    assert out["restart"][0]["status"] == "Running" and out["restart"][0]["restarts"] >= 1


def test_31_volts_on_a_30_volt_limit_is_refused_by_the_runner(server):
    async def body(session):
        await wait_running(session, ["psu"])
        before = await session.call_tool("set_voltage", {"device": "psu", "volts": 4})
        refused = await session.call_tool("set_voltage", {"device": "psu", "volts": 31})
        after = await session.call_tool("get_state", {"device": "psu"})
        unknown = await session.call_tool("measure", {"device": "nope"})
        bad = await session.call_tool("set_voltage", {"device": "psu", "volts": "high"})
        return before, refused, after, unknown, bad

    before, refused, after, unknown, bad = run(server.url + "/mcp", server.auth, body)
    assert not before.is_error
    assert refused.is_error
    assert text(refused) == "voltage 31 exceeds security_max_voltage 30"
    assert after.structured_content["volts"] == 4.0, "the refused value never reached the device"
    assert unknown.is_error and "`nope` is not on the broker" in text(unknown)
    assert bad.is_error and 'invalid type: string "high", expected `volts` as a number' in text(bad)


def test_the_per_device_endpoint_serves_one_supply_without_a_device_argument(server):
    async def body(session):
        await wait_running(session, ["other"])
        tools = (await session.list_tools()).tools
        listed = await session.call_tool("list_power_supplies", {})
        ok = await session.call_tool("set_voltage", {"volts": 11})
        refused = await session.call_tool("set_voltage", {"volts": 13})
        return tools, listed, ok, refused

    tools, listed, ok, refused = run(server.url + "/power-supply/other", server.auth, body)
    assert {t.name for t in tools} == TOOLS
    for tool in tools:
        assert "device" not in tool.input_schema.get("properties", {}), tool.name
    assert "0..12 V" in next(t for t in tools if t.name == "set_voltage").description
    assert [p["name"] for p in listed.structured_content["power_supplies"]] == ["other"]
    assert ok.structured_content == {"device": "other", "volts": 11.0}
    assert refused.is_error and text(refused) == "voltage 13 exceeds security_max_voltage 12"


def test_stdio_serves_the_same_tools(open_server):
    params = StdioServerParameters(
        command=str(BIN),
        args=["mcp", "--stdio", "--broker", f"127.0.0.1:{open_server.broker_port}", "--device", "psu"],
        env={"RUST_LOG": "info"},
    )

    async def main():
        async with stdio_client(params) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                await wait_running(session, ["psu"])
                tools = (await session.list_tools()).tools
                ok = await session.call_tool("set_voltage", {"volts": 3.3})
                refused = await session.call_tool("set_voltage", {"volts": 31})
                measured = await session.call_tool("measure", {})
                return tools, ok, refused, measured

    tools, ok, refused, measured = anyio.run(main)
    assert {t.name for t in tools} == TOOLS
    assert all("device" not in t.input_schema.get("properties", {}) for t in tools)
    assert ok.structured_content == {"device": "psu", "volts": 3.3}
    assert refused.is_error and text(refused) == "voltage 31 exceeds security_max_voltage 30"
    assert measured.structured_content["device"] == "psu"


def test_stdio_serves_every_supply_without_device(open_server):
    params = StdioServerParameters(
        command=str(BIN), args=["mcp", "--stdio", "--broker", f"127.0.0.1:{open_server.broker_port}"]
    )

    async def main():
        async with stdio_client(params) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                await wait_running(session, ["psu", "other"])
                return await session.call_tool("get_state", {"device": "other"})

    state = anyio.run(main)
    assert state.structured_content["device"] == "other"
    assert state.structured_content["limits"]["max_volts"] == 12.0


INITIALIZE = json.dumps(
    {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}},
    }
)


def post(server, path, headers, body=INITIALIZE):
    connection = http.client.HTTPConnection("127.0.0.1", server.mcp_port, timeout=10)
    try:
        connection.putrequest("POST", path, skip_host=True)
        all_headers = {
            "Host": f"127.0.0.1:{server.mcp_port}",
            "Content-Type": "application/json",
            "Accept": "application/json, text/event-stream",
            "Content-Length": str(len(body.encode())),
        }
        all_headers.update(headers)
        for name, value in all_headers.items():
            connection.putheader(name, value)
        connection.endheaders(body.encode())
        response = connection.getresponse()
        return response.status, response.getheader("WWW-Authenticate"), response.read().decode()
    finally:
        connection.close()


def test_a_foreign_host_is_forbidden(server):
    for path in ["/mcp", "/power-supply/psu"]:
        status, _, body = post(server, path, {"Host": "attacker.example", **server.auth})
        assert status == 403 and "Host" in body, (path, status, body)
        status, _, _ = post(server, path, {"Host": f"localhost:{server.mcp_port}", **server.auth})
        assert status == 200, path


def test_an_origin_not_allowed_is_forbidden(server):
    for path in ["/mcp", "/power-supply/psu"]:
        status, _, body = post(server, path, {"Origin": "http://attacker.example", **server.auth})
        assert status == 403 and "Origin" in body, (path, status, body)
        status, _, _ = post(server, path, {"Origin": ALLOWED_ORIGIN, **server.auth})
        assert status == 200, path


def test_without_the_token_it_is_401(server):
    for path in ["/mcp", "/power-supply/psu"]:
        status, challenge, _ = post(server, path, {})
        assert (status, challenge) == (401, "Bearer"), path
        status, _, _ = post(server, path, {"Authorization": "Bearer wrong"})
        assert status == 401, path
        status, _, _ = post(server, path, server.auth)
        assert status == 200, path



def test_a_body_that_is_not_json_is_a_json_rpc_parse_error(server):
    bodies = {
        "garbage": "expected value at line 1 column 1",
        '{"jsonrpc":"2.0","id":2,"method":"tools/call",'
        '"params":{"name":"set_voltage","arguments":{"device":"psu","volts":1e400}}}': "number out of range",
        INITIALIZE[:-1]: "EOF while parsing",
    }
    for path in ["/mcp", "/power-supply/psu"]:
        for body, reason in bodies.items():
            status, _, answer = post(server, path, server.auth, body)
            assert status == 400, (path, body, status, answer)
            error = json.loads(answer)
            assert error["id"] is None and error["error"]["code"] == -32700, answer
            assert reason in error["error"]["message"], answer
        status, _, _ = post(server, path, server.auth)
        assert status == 200, path
