//! The cost of MCP on a `set_voltage`: the same command as a plain
//! client-library call, as an MCP tool call on an in-memory pipe (what stdio
//! carries, without the process boundary), and as an MCP tool call over
//! streamable HTTP on the loopback (one kept-alive connection, one session).
//! Interleaved rounds, so that the three see the same conditions; medians and
//! p99, and each as a ratio to the plain call of the same run.
//!
//! `cargo run --release -p pza-power-supply --example mcp_latency -- [ROUNDS]`

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pza_power_supply::config;
use pza_power_supply::drivers::DriverFactory;
use pza_power_supply::server::{Server, ServerOptions};
use pza_power_supply_client::{Client, ClientOptions, Status};
use pza_power_supply_mcp::{PowerSupplyTools, Scope};
use pza_toolkit::mqtt::probe_free_port;
use rmcp::ServiceExt as _;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const DEFAULT_ROUNDS: usize = 1000;
const WARM_UP: usize = 50;
/// Room for the largest message in the in-memory pipe.
const PIPE_BYTES: usize = 256 * 1024;
/// The end of a chunked HTTP body.
const LAST_CHUNK: &[u8] = b"\r\n0\r\n\r\n";
const READ_BUFFER: usize = 16 * 1024;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let rounds = match std::env::args().nth(1) {
        Some(n) => n
            .parse()
            .map_err(|_| anyhow::anyhow!("ROUNDS: not a number: {n}"))?,
        None => DEFAULT_ROUNDS,
    };
    let broker_port = probe_free_port()?;
    let mcp_port = probe_free_port()?;
    let text = format!(
        r#"{{ broker: {{ tcp: {{ addr: "127.0.0.1", port: {broker_port} }} }},
             mcp: {{ enable: true, port: {mcp_port} }},
             runners: {{ psu: {{ model: "emulator", measure_period_ms: 0 }} }} }}"#
    );
    let factory = DriverFactory::with_builtin_models();
    let config = config::parse(Path::new("bench.json5"), &text, &factory)?;
    let server = Server::start(
        config,
        Arc::new(tokio::sync::Mutex::new(factory)),
        ServerOptions::default(),
    )
    .await?;
    let client = Client::connect(ClientOptions::new("127.0.0.1", broker_port)).await?;
    let psu = client.power_supply("psu");
    let mut updates = psu.watch();
    while psu.snapshot().await.ok().and_then(|s| s.status) != Some(Status::Running) {
        updates.next().await;
    }

    let mut pipe = Pipe::start(PowerSupplyTools::new(client.clone(), Scope::All)).await?;
    let mut http = Http::start(mcp_port).await?;

    let mut plain = Vec::with_capacity(rounds);
    let mut over_pipe = Vec::with_capacity(rounds);
    let mut over_http = Vec::with_capacity(rounds);
    for i in 0..WARM_UP + rounds {
        // Alternate values, so that every command changes the setpoint.
        let volts = if i % 2 == 0 { 1.0 } else { 2.0 };
        let args = json!({"device": "psu", "volts": volts});

        let t = Instant::now();
        psu.set_voltage(volts).await?;
        let a = t.elapsed();

        let t = Instant::now();
        pipe.set_voltage(&args).await?;
        let b = t.elapsed();

        let t = Instant::now();
        http.set_voltage(&args).await?;
        let c = t.elapsed();
        if i >= WARM_UP {
            plain.push(a);
            over_pipe.push(b);
            over_http.push(c);
        }
    }
    let base = summary(&mut plain);
    println!("set_voltage, {rounds} interleaved rounds ({WARM_UP} warm-up rounds left out)");
    println!(
        "{:<34} {:>10} {:>10} {:>14}",
        "path", "median", "p99", "median ratio"
    );
    for (name, samples) in [
        ("client library (baseline)", &mut plain),
        ("MCP tool call, in-memory pipe", &mut over_pipe),
        ("MCP tool call, streamable HTTP", &mut over_http),
    ] {
        let (median, p99) = summary(samples);
        println!(
            "{name:<34} {:>10} {:>10} {:>13.2}x",
            format!("{:.0} us", median.as_secs_f64() * 1e6),
            format!("{:.0} us", p99.as_secs_f64() * 1e6),
            median.as_secs_f64() / base.0.as_secs_f64()
        );
    }
    server.shutdown().await?;
    Ok(())
}

fn summary(samples: &mut [Duration]) -> (Duration, Duration) {
    samples.sort_unstable();
    let at = |p: f64| samples[((samples.len() - 1) as f64 * p).round() as usize];
    (at(0.5), at(0.99))
}

fn check(answer: &Value) -> anyhow::Result<()> {
    if answer["result"]["isError"] == json!(false)
        || answer["result"]["structuredContent"].is_object()
    {
        Ok(())
    } else {
        anyhow::bail!("unexpected answer: {answer}")
    }
}

/// The MCP wire format on an in-memory pipe.
struct Pipe {
    writer: tokio::io::WriteHalf<tokio::io::DuplexStream>,
    lines: tokio::io::Lines<BufReader<tokio::io::ReadHalf<tokio::io::DuplexStream>>>,
    next_id: u64,
}

impl Pipe {
    async fn start(tools: PowerSupplyTools) -> anyhow::Result<Pipe> {
        let (ours, theirs) = tokio::io::duplex(PIPE_BYTES);
        tokio::spawn(async move {
            if let Ok(running) = tools.serve(tokio::io::split(theirs)).await {
                let _ = running.waiting().await;
            }
        });
        let (reader, writer) = tokio::io::split(ours);
        let mut pipe = Pipe {
            writer,
            lines: BufReader::new(reader).lines(),
            next_id: 1,
        };
        pipe.request("initialize", initialize_params()).await?;
        pipe.send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
            .await?;
        Ok(pipe)
    }

    async fn send(&mut self, message: &Value) -> anyhow::Result<()> {
        let mut line = message.to_string();
        line.push('\n');
        self.writer.write_all(line.as_bytes()).await?;
        Ok(())
    }

    async fn request(&mut self, method: &str, params: Value) -> anyhow::Result<Value> {
        let id = self.next_id;
        self.next_id += 1;
        self.send(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
            .await?;
        loop {
            let line = self
                .lines
                .next_line()
                .await?
                .ok_or_else(|| anyhow::anyhow!("pipe closed"))?;
            let message: Value = serde_json::from_str(&line)?;
            if message["id"] == json!(id) {
                return Ok(message);
            }
        }
    }

    async fn set_voltage(&mut self, args: &Value) -> anyhow::Result<()> {
        let answer = self
            .request(
                "tools/call",
                json!({"name": "set_voltage", "arguments": args}),
            )
            .await?;
        check(&answer)
    }
}

fn initialize_params() -> Value {
    json!({"protocolVersion": "2025-06-18", "capabilities": {},
           "clientInfo": {"name": "mcp_latency", "version": "1"}})
}

/// Streamable HTTP by hand on one kept-alive connection.
struct Http {
    stream: TcpStream,
    port: u16,
    session: String,
    next_id: u64,
}

impl Http {
    async fn start(port: u16) -> anyhow::Result<Http> {
        let stream = TcpStream::connect(("127.0.0.1", port)).await?;
        stream.set_nodelay(true)?;
        let mut http = Http {
            stream,
            port,
            session: String::new(),
            next_id: 1,
        };
        let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": initialize_params()});
        let head = http.post(&init).await?;
        http.session = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .starts_with("mcp-session-id:")
                    .then(|| l["mcp-session-id:".len()..].trim().to_owned())
            })
            .ok_or_else(|| anyhow::anyhow!("no session id: {head}"))?;
        http.post(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
            .await?;
        Ok(http)
    }

    /// One POST; returns the whole response (head and body) as text.
    async fn post(&mut self, message: &Value) -> anyhow::Result<String> {
        let body = message.to_string();
        let session = if self.session.is_empty() {
            String::new()
        } else {
            format!(
                "Mcp-Session-Id: {}\r\nMcp-Protocol-Version: 2025-06-18\r\n",
                self.session
            )
        };
        let request = format!(
            "POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\n{session}Content-Length: {}\r\n\r\n{body}",
            self.port,
            body.len()
        );
        self.stream.write_all(request.as_bytes()).await?;
        let mut answer = Vec::new();
        let mut buffer = vec![0; READ_BUFFER];
        loop {
            let n = self.stream.read(&mut buffer).await?;
            if n == 0 {
                anyhow::bail!("connection closed");
            }
            answer.extend_from_slice(&buffer[..n]);
            let text = String::from_utf8_lossy(&answer);
            // A notification is answered 202 with an empty body.
            if text.starts_with("HTTP/1.1 202") && text.contains("\r\n\r\n") {
                return Ok(text.into_owned());
            }
            if answer.ends_with(LAST_CHUNK) {
                return Ok(text.into_owned());
            }
        }
    }

    async fn set_voltage(&mut self, args: &Value) -> anyhow::Result<()> {
        let id = self.next_id;
        self.next_id += 1;
        let text = self
            .post(&json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
                          "params": {"name": "set_voltage", "arguments": args}}))
            .await?;
        let data = text
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .find(|d| d.contains("\"result\""))
            .ok_or_else(|| anyhow::anyhow!("no result in: {text}"))?;
        check(&serde_json::from_str(data)?)
    }
}
