//! The MCP tool layer against a real server (embedded broker, emulator
//! runners), through the client library: every tool over the protocol's own
//! newline-delimited JSON-RPC (what stdio carries), the runner's guard as the
//! gate, the one-supply scope, and the HTTP endpoints' Host/Origin/token
//! checks on raw HTTP.

mod common;

use std::net::SocketAddr;

use common::{TestServer, WAIT};
use pza_power_supply_client::{Client, ClientOptions, Status};
use pza_power_supply_mcp::{PowerSupplyTools, Scope};
use pza_toolkit::mqtt::probe_free_port;
use pza_toolkit::temp::TempDir;
use rmcp::ServiceExt as _;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, DuplexStream, Lines};
use tokio::io::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;

/// Room for the largest message of these tests in the in-memory pipe.
const PIPE_BYTES: usize = 256 * 1024;

const TOOLS: [&str; 7] = [
    "get_state",
    "list_power_supplies",
    "measure",
    "restart",
    "set_current",
    "set_output",
    "set_voltage",
];

const PSU: &str = r#"psu: { model: "emulator", measure_period_ms: 0, security_max_voltage: 30, security_max_current: 5 },
                    other: { model: "emulator", measure_period_ms: 0, security_max_voltage: 12 }"#;

/// An MCP client speaking the wire format by hand, so that the test sees
/// exactly what an assistant receives.
struct Peer {
    writer: WriteHalf<DuplexStream>,
    lines: Lines<BufReader<ReadHalf<DuplexStream>>>,
    next_id: u64,
}

impl Peer {
    /// Serves `tools` on an in-memory pipe and completes the handshake.
    async fn start(tools: PowerSupplyTools) -> Peer {
        let (ours, theirs) = tokio::io::duplex(PIPE_BYTES);
        tokio::spawn(async move {
            let running = tools
                .serve(tokio::io::split(theirs))
                .await
                .expect("handshake");
            let _ = running.waiting().await;
        });
        let (reader, writer) = tokio::io::split(ours);
        let mut peer = Peer {
            writer,
            lines: BufReader::new(reader).lines(),
            next_id: 1,
        };
        let init = peer
            .request(
                "initialize",
                json!({"protocolVersion": "2025-06-18", "capabilities": {},
                       "clientInfo": {"name": "test", "version": "1"}}),
            )
            .await;
        assert_eq!(
            init["result"]["serverInfo"]["name"], "pza-power-supply",
            "{init}"
        );
        assert!(
            init["result"]["capabilities"]["tools"].is_object(),
            "{init}"
        );
        peer.send(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
            .await;
        peer
    }

    async fn send(&mut self, message: Value) {
        let mut line = message.to_string();
        line.push('\n');
        self.writer.write_all(line.as_bytes()).await.expect("write");
    }

    /// The response to one request (a `result` or an `error`).
    async fn request(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        self.send(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
            .await;
        tokio::time::timeout(WAIT, async {
            loop {
                let line = self.lines.next_line().await.expect("read").expect("open");
                let message: Value = serde_json::from_str(&line).expect("JSON line");
                if message["id"] == json!(id) {
                    return message;
                }
            }
        })
        .await
        .expect("an answer within the wait bound")
    }

    /// A tool call's result (a protocol error fails the test).
    async fn call(&mut self, tool: &str, arguments: Value) -> Value {
        let answer = self
            .request("tools/call", json!({"name": tool, "arguments": arguments}))
            .await;
        assert!(
            answer.get("error").is_none(),
            "{tool}: protocol error {answer}"
        );
        answer["result"].clone()
    }

    async fn tools(&mut self) -> Vec<Value> {
        let answer = self.request("tools/list", json!({})).await;
        answer["result"]["tools"]
            .as_array()
            .expect("a tool list")
            .clone()
    }
}

fn is_error(result: &Value) -> bool {
    result["isError"] == json!(true)
}

fn text(result: &Value) -> String {
    result["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

async fn client(server: &TestServer) -> Client {
    Client::connect(ClientOptions::new("127.0.0.1", server.port))
        .await
        .expect("client connects")
}

async fn wait_running(client: &Client, name: &str) {
    let psu = client.power_supply(name);
    let mut updates = psu.watch();
    if psu.snapshot().await.ok().and_then(|s| s.status) == Some(Status::Running) {
        return;
    }
    tokio::time::timeout(WAIT, async {
        while let Some(u) = updates.next().await {
            if u.snapshot.status == Some(Status::Running) {
                return;
            }
        }
    })
    .await
    .expect("runner reaches Running");
}

fn find<'a>(tools: &'a [Value], name: &str) -> &'a Value {
    tools
        .iter()
        .find(|t| t["name"] == name)
        .unwrap_or_else(|| panic!("tool {name} listed"))
}

#[tokio::test]
async fn tools_are_listed_with_typed_schemas_units_and_limits() {
    let server = TestServer::start(PSU).await;
    let client = client(&server).await;
    wait_running(&client, "psu").await;
    wait_running(&client, "other").await;
    let mut peer = Peer::start(PowerSupplyTools::new(client, Scope::All)).await;

    let tools = peer.tools().await;
    let mut names: Vec<&str> = tools.iter().filter_map(|t| t["name"].as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, TOOLS);
    for tool in &tools {
        assert!(
            tool["outputSchema"]["type"] == "object",
            "structured results: {tool}"
        );
        if tool["name"] != "list_power_supplies" {
            assert_eq!(
                tool["inputSchema"]["properties"]["device"]["type"], "string",
                "{tool}"
            );
            let required = tool["inputSchema"]["required"]
                .as_array()
                .expect("required");
            assert!(required.contains(&json!("device")), "{tool}");
        }
    }
    let set_voltage = find(&tools, "set_voltage");
    assert_eq!(
        set_voltage["inputSchema"]["properties"]["volts"]["type"],
        "number"
    );
    let volts_doc = set_voltage["inputSchema"]["properties"]["volts"]["description"]
        .as_str()
        .unwrap_or_default();
    assert!(volts_doc.contains("volts (V)"), "{volts_doc}");
    let description = set_voltage["description"].as_str().unwrap_or_default();
    assert!(
        description.contains("psu: 0..30 V") && description.contains("other: 0..12 V"),
        "{description}"
    );
    let set_current = find(&tools, "set_current");
    assert_eq!(
        set_current["inputSchema"]["properties"]["amps"]["type"],
        "number"
    );
    assert!(set_current["description"]
        .as_str()
        .unwrap_or_default()
        .contains("psu: 0..5 A"));
    assert_eq!(
        find(&tools, "set_output")["inputSchema"]["properties"]["on"]["type"],
        "boolean"
    );
    server.stop().await;
}

#[tokio::test]
async fn every_tool_reaches_the_runner_and_returns_what_it_read_back() {
    let server = TestServer::start(PSU).await;
    let client = client(&server).await;
    wait_running(&client, "psu").await;
    wait_running(&client, "other").await;
    let mut peer = Peer::start(PowerSupplyTools::new(client.clone(), Scope::All)).await;

    let list = peer.call("list_power_supplies", json!({})).await;
    assert!(!is_error(&list), "{list}");
    let supplies = list["structuredContent"]["power_supplies"]
        .as_array()
        .expect("a list")
        .clone();
    assert_eq!(supplies.len(), 2);
    assert_eq!(supplies[0]["name"], "other");
    assert_eq!(supplies[1]["name"], "psu");
    assert_eq!(supplies[1]["status"], "Running");
    assert_eq!(supplies[1]["limits"]["max_volts"], 30.0);

    let r = peer
        .call("set_current", json!({"device": "psu", "amps": 0.5}))
        .await;
    assert_eq!(
        r["structuredContent"],
        json!({"device": "psu", "amps": 0.5}),
        "{r}"
    );
    // The emulator keeps two decimals: the result is what the device read back.
    let r = peer
        .call("set_voltage", json!({"device": "psu", "volts": 5.004}))
        .await;
    assert_eq!(
        r["structuredContent"],
        json!({"device": "psu", "volts": 5.0}),
        "{r}"
    );
    let r = peer
        .call("set_output", json!({"device": "psu", "on": true}))
        .await;
    assert_eq!(
        r["structuredContent"],
        json!({"device": "psu", "on": true}),
        "{r}"
    );
    let m = peer.call("measure", json!({"device": "psu"})).await;
    assert!(!is_error(&m), "{m}");
    assert!(
        m["structuredContent"]["volts"].as_f64().unwrap_or(0.0) > 0.0,
        "{m}"
    );
    assert!(
        m["structuredContent"]["amps"].as_f64().unwrap_or(0.0) > 0.0,
        "{m}"
    );

    let state = peer.call("get_state", json!({"device": "psu"})).await;
    let s = &state["structuredContent"];
    assert_eq!(s["status"], "Running", "{state}");
    assert_eq!(s["output"], true);
    assert_eq!(s["volts"], 5.0);
    assert_eq!(s["amps"], 0.5);
    assert_eq!(s["limits"]["max_amps"], 5.0);
    // The same values, seen by another client of the broker: the tools went
    // through the runner.
    let seen = client
        .power_supply("psu")
        .snapshot()
        .await
        .expect("snapshot");
    assert_eq!(
        (seen.voltage, seen.current, seen.output),
        (Some(5.0), Some(0.5), Some(true))
    );

    let r = peer.call("restart", json!({"device": "psu"})).await;
    assert_eq!(r["structuredContent"]["status"], "Running", "{r}");
    assert_eq!(r["structuredContent"]["restarts"], 1, "{r}");
    server.stop().await;
}

#[tokio::test]
async fn the_runners_guard_refuses_31_volts_on_a_30_volt_limit() {
    let server = TestServer::start(PSU).await;
    let client = client(&server).await;
    wait_running(&client, "psu").await;
    let mut peer = Peer::start(PowerSupplyTools::new(client.clone(), Scope::All)).await;

    let ok = peer
        .call("set_voltage", json!({"device": "psu", "volts": 12}))
        .await;
    assert!(!is_error(&ok), "{ok}");
    let refused = peer
        .call("set_voltage", json!({"device": "psu", "volts": 31}))
        .await;
    assert!(is_error(&refused), "{refused}");
    // The server's own message, from the runner's limits guard.
    assert_eq!(text(&refused), "voltage 31 exceeds security_max_voltage 30");
    let refused = peer
        .call("set_current", json!({"device": "psu", "amps": -1}))
        .await;
    assert!(is_error(&refused), "{refused}");
    assert!(text(&refused).contains("security_min_current"), "{refused}");
    // Nothing reached the device.
    let state = peer.call("get_state", json!({"device": "psu"})).await;
    assert_eq!(state["structuredContent"]["volts"], 12.0, "{state}");
    assert_eq!(
        client
            .power_supply("psu")
            .snapshot()
            .await
            .expect("snapshot")
            .voltage,
        Some(12.0)
    );
    server.stop().await;
}

#[tokio::test]
async fn bad_calls_are_tool_errors_naming_the_problem() {
    let server = TestServer::start(PSU).await;
    let client = client(&server).await;
    wait_running(&client, "psu").await;
    let mut peer = Peer::start(PowerSupplyTools::new(client, Scope::All)).await;

    let r = peer.call("get_state", json!({"device": "nope"})).await;
    assert!(
        is_error(&r) && text(&r).contains("`nope` is not on the broker"),
        "{r}"
    );
    let r = peer
        .call("set_voltage", json!({"device": "nope", "volts": 1}))
        .await;
    assert!(is_error(&r) && text(&r).contains("nope"), "{r}");
    let r = peer.call("set_voltage", json!({"volts": 1})).await;
    assert!(is_error(&r) && text(&r).contains("missing `device`"), "{r}");
    let r = peer
        .call("set_voltage", json!({"device": "psu", "volts": "five"}))
        .await;
    assert!(
        is_error(&r)
            && text(&r).contains("invalid type: string \"five\", expected `volts` as a number"),
        "{r}"
    );
    let r = peer
        .call(
            "set_output",
            json!({"device": "psu", "on": true, "force": 1}),
        )
        .await;
    assert!(is_error(&r) && text(&r).contains("force"), "{r}");
    let unknown = peer
        .request("tools/call", json!({"name": "set_power", "arguments": {}}))
        .await;
    assert!(
        unknown["error"].is_object(),
        "an unknown tool is a protocol error: {unknown}"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_runner_not_running_is_refused_at_once() {
    let server = TestServer::start(
        r#"p: { model: "emulator", measure_period_ms: 0, faults: { panic_on_voltage: 13 },
               restart: { initial_delay_ms: 60000, jitter: 0 } }"#,
    )
    .await;
    let client = client(&server).await;
    wait_running(&client, "p").await;
    let mut peer = Peer::start(PowerSupplyTools::new(client.clone(), Scope::All)).await;

    let crash = peer
        .call("set_voltage", json!({"device": "p", "volts": 13}))
        .await;
    assert!(
        is_error(&crash) && text(&crash).contains("panic"),
        "{crash}"
    );
    let psu = client.power_supply("p");
    let mut updates = psu.watch();
    if psu.snapshot().await.ok().and_then(|s| s.status) != Some(Status::Restarting) {
        tokio::time::timeout(WAIT, async {
            while let Some(u) = updates.next().await {
                if u.snapshot.status == Some(Status::Restarting) {
                    return;
                }
            }
        })
        .await
        .expect("the runner waits for its restart");
    }
    let r = peer
        .call("set_voltage", json!({"device": "p", "volts": 1}))
        .await;
    assert!(is_error(&r), "{r}");
    assert!(text(&r).contains("is Restarting, not Running"), "{r}");
    assert!(text(&r).contains("panic_on_voltage"), "{r}");
    // `restart` brings it back now, without the 60 s backoff.
    let r = peer.call("restart", json!({"device": "p"})).await;
    assert_eq!(r["structuredContent"]["status"], "Running", "{r}");
    let r = peer
        .call("set_voltage", json!({"device": "p", "volts": 1}))
        .await;
    assert_eq!(r["structuredContent"]["volts"], 1.0, "{r}");
    server.stop().await;
}

#[tokio::test]
async fn one_supply_scope_takes_no_device_and_serves_only_it() {
    let server = TestServer::start(PSU).await;
    let client = client(&server).await;
    wait_running(&client, "psu").await;
    wait_running(&client, "other").await;
    let mut peer = Peer::start(PowerSupplyTools::new(client, Scope::One("other".into()))).await;

    let tools = peer.tools().await;
    assert_eq!(tools.len(), TOOLS.len());
    for tool in &tools {
        assert!(
            tool["inputSchema"]["properties"].get("device").is_none(),
            "{tool}"
        );
    }
    let description = find(&tools, "set_voltage")["description"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        description.contains("0..12 V") && !description.contains("30"),
        "{description}"
    );

    let list = peer.call("list_power_supplies", json!({})).await;
    let names: Vec<&Value> = list["structuredContent"]["power_supplies"]
        .as_array()
        .expect("list")
        .iter()
        .map(|p| &p["name"])
        .collect();
    assert_eq!(names, [&json!("other")]);
    let r = peer.call("set_voltage", json!({"volts": 3})).await;
    assert_eq!(
        r["structuredContent"],
        json!({"device": "other", "volts": 3.0}),
        "{r}"
    );
    let r = peer.call("set_voltage", json!({"volts": 13})).await;
    assert_eq!(
        text(&r),
        "voltage 13 exceeds security_max_voltage 12",
        "{r}"
    );
    let r = peer.call("get_state", json!({"device": "psu"})).await;
    assert!(
        is_error(&r) && text(&r).contains("serves only `other`"),
        "{r}"
    );
    server.stop().await;
}

/// One HTTP/1.1 exchange on a fresh connection: the status and the body.
async fn http(addr: SocketAddr, request: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut answer))
        .await
        .expect("an answer")
        .expect("read");
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("a status line: {answer}"));
    (status, answer)
}

const INITIALIZE: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}"#;

fn post(path: &str, headers: &[&str]) -> String {
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nConnection: close\r\nContent-Length: {}\r\n",
        INITIALIZE.len()
    );
    for h in headers {
        request.push_str(h);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    request.push_str(INITIALIZE);
    request
}

#[tokio::test]
async fn http_checks_host_origin_and_token_on_every_endpoint() {
    let mcp_port = probe_free_port().expect("a free port");
    let mut server = TestServer::start_with(
        PSU,
        &format!(
            r#"mcp: {{ enable: true, port: {mcp_port}, token: "s3cret",
                      allowed_hosts: ["bench.lab"], allowed_origins: ["http://localhost:6274"] }},"#
        ),
    )
    .await;
    let running = server.take();
    let addr = running.mcp_addr().expect("MCP serves");
    assert_eq!(addr.port(), mcp_port);
    let client = Client::connect(ClientOptions::new("127.0.0.1", server.port))
        .await
        .expect("client");
    wait_running(&client, "psu").await;
    let host = format!("Host: 127.0.0.1:{mcp_port}");
    let auth = "Authorization: Bearer s3cret";

    for path in ["/mcp", "/power-supply/psu"] {
        let (status, body) = http(addr, &post(path, &[&host, auth])).await;
        assert_eq!(status, 200, "{path}: {body}");
        assert!(body.contains("\"serverInfo\""), "{body}");
        let (status, _) = http(addr, &post(path, &["Host: bench.lab:80", auth])).await;
        assert_eq!(status, 200, "{path}: an allowed host");
        let (status, _) = http(
            addr,
            &post(path, &[&host, auth, "Origin: http://localhost:6274"]),
        )
        .await;
        assert_eq!(status, 200, "{path}: an allowed origin");

        let (status, body) = http(addr, &post(path, &["Host: evil.example", auth])).await;
        assert_eq!(status, 403, "{path}: {body}");
        assert!(
            body.contains("Host \"evil.example\" is not allowed"),
            "{body}"
        );
        let (status, body) = http(
            addr,
            &post(path, &[&host, auth, "Origin: http://evil.example"]),
        )
        .await;
        assert_eq!(status, 403, "{path}: {body}");
        assert!(body.contains("Origin"), "{body}");
        let (status, body) = http(addr, &post(path, &[&host])).await;
        assert_eq!(status, 401, "{path}: {body}");
        assert!(
            body.to_ascii_lowercase()
                .contains("www-authenticate: bearer"),
            "{body}"
        );
        let (status, _) = http(addr, &post(path, &[&host, "Authorization: Bearer wrong"])).await;
        assert_eq!(status, 401, "{path}");
    }
    let (status, body) = http(addr, &post("/power-supply/nope", &[&host, auth])).await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("`nope` is not on the broker"), "{body}");

    // An open session does not hold the shutdown up.
    tokio::time::timeout(WAIT, running.shutdown())
        .await
        .expect("shutdown within the wait bound")
        .expect("clean shutdown");
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "the MCP port is closed"
    );
}

#[tokio::test]
async fn a_port_in_use_stops_the_start_up() {
    let taken = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let broker_port = probe_free_port().expect("a free port");
    let (factory, _) = common::factory();
    let config = common::parse_config(&common::config_text(
        broker_port,
        PSU,
        &format!("mcp: {{ enable: true, port: {port} }},"),
    ));
    let outcome = pza_power_supply::server::Server::start(
        config,
        std::sync::Arc::new(tokio::sync::Mutex::new(factory)),
        Default::default(),
    )
    .await;
    match outcome {
        Err(e) => assert!(
            e.to_string()
                .contains(&format!("mcp: cannot listen on 127.0.0.1:{port}")),
            "{e}"
        ),
        Ok(_) => panic!("a port in use is an error"),
    }
}

fn config_error(mcp: &str) -> String {
    let (factory, _) = common::factory();
    let text = common::config_text(1883, PSU, &format!("mcp: {{ {mcp} }},"));
    match pza_power_supply::config::parse(std::path::Path::new("test.json5"), &text, &factory) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("mcp: {{ {mcp} }} is accepted"),
    }
}

#[test]
fn mcp_config_keys_are_checked() {
    let config = common::parse_config(&common::config_text(
        1883,
        PSU,
        r#"mcp: { enable: true, host: "0.0.0.0", port: 8080, allowed_hosts: ["bench.lab"],
                  allowed_origins: ["http://localhost:6274"], token: "t" },"#,
    ));
    assert!(config.mcp.enable);
    assert_eq!(
        (config.mcp.host.as_str(), config.mcp.port),
        ("0.0.0.0", 8080)
    );
    assert_eq!(config.mcp.allowed_hosts, ["bench.lab"]);
    assert_eq!(config.mcp.allowed_origins, ["http://localhost:6274"]);
    assert_eq!(config.mcp.token.as_deref(), Some("t"));
    // `token: null` is "no token", as SPEC.md's example writes it.
    let config = common::parse_config(&common::config_text(1883, PSU, "mcp: { token: null },"));
    assert_eq!(config.mcp.token, None);
    assert_eq!(config.mcp.host, "127.0.0.1", "the loopback by default");

    for (mcp, key, why) in [
        (r#"host: "lab-pc""#, "mcp.host", "not an IP address"),
        (
            r#"allowed_hosts: ["a b"]"#,
            "mcp.allowed_hosts[0]",
            "not a host name",
        ),
        (
            r#"allowed_origins: ["localhost:6274"]"#,
            "mcp.allowed_origins[0]",
            "not an origin",
        ),
        (r#"token: "  ""#, "mcp.token", "must not be empty"),
        (r#"tokens: "x""#, "mcp", "tokens"),
        ("port: 70000", "mcp.port", ""),
        (
            r#"enable: true, allowed_hosts: null"#,
            "mcp.allowed_hosts",
            "null",
        ),
    ] {
        let e = config_error(mcp);
        assert!(e.contains(key) && e.contains(why), "{mcp}: {e}");
    }
}

#[test]
fn list_mcps_prints_the_urls() {
    let dir = TempDir::new("mcp-list").expect("a temp folder");
    let path = dir.join("config.json5");
    std::fs::write(
        &path,
        common::config_text(1883, PSU, "mcp: { enable: true, port: 50051 },"),
    )
    .expect("write config");
    let (factory, _) = common::factory();
    let args = pza_power_supply::cli::ListArgs {
        config: pza_power_supply::cli::ConfigArg { config: Some(path) },
        drivers: false,
        runners: false,
        mcps: true,
    };
    let out = pza_power_supply::cli::list(args, &factory).expect("list");
    assert_eq!(
        out,
        "mcps:\n  http://127.0.0.1:50051/mcp\n  http://127.0.0.1:50051/power-supply/other\n  http://127.0.0.1:50051/power-supply/psu\n"
    );
}
