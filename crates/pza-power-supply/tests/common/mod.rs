//! Shared test helpers: a server on a free port with the embedded broker, a
//! real MQTT client that waits for messages (never for fixed delays), and the
//! log events of the server under test, to wait for one of them.

#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use pza_power_supply::config::{self, ServerConfig};
use pza_power_supply::drivers::emulator::EmulatorModel;
use pza_power_supply::drivers::DriverFactory;
use pza_power_supply::server::{Server, ServerOptions};
use pza_toolkit::mqtt::probe_free_port;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::Value;
use tokio::sync::{mpsc, Mutex};

/// Upper bound for any single wait in tests: far above any normal latency,
/// it only turns a hang into a failure.
pub const WAIT: Duration = Duration::from_secs(15);

/// The test client's pause before its event loop tries the broker again:
/// the pace of a retry (rumqttc reconnects on the next poll), not a wait
/// for anything.
const RECONNECT_PAUSE: Duration = Duration::from_millis(50);

/// A port gives no notice when it starts accepting connections: it is tried
/// again this often, until the wait's own bound.
const ACCEPT_POLL: Duration = Duration::from_millis(20);

/// A server with the embedded broker on a free port.
pub struct TestServer {
    pub port: u16,
    pub emulator: Arc<EmulatorModel>,
    pub factory: Arc<Mutex<DriverFactory>>,
    server: Option<Server>,
}

/// Config text for a server on `port` with `runners` (a JSON5 object body)
/// and `extra` top-level keys.
pub fn config_text(port: u16, runners: &str, extra: &str) -> String {
    format!("{{ broker: {{ use_builtin: true, tcp: {{ addr: \"127.0.0.1\", port: {port} }} }}, {extra} runners: {{ {runners} }} }}")
}

/// A factory holding every built-in model, with the emulator kept at hand.
pub fn factory() -> (DriverFactory, Arc<EmulatorModel>) {
    let mut factory = DriverFactory::with_builtin_models();
    let emulator = Arc::new(EmulatorModel::new());
    factory.register(emulator.clone());
    (factory, emulator)
}

pub fn parse_config(text: &str) -> ServerConfig {
    let (factory, _) = factory();
    match config::parse(Path::new("test.json5"), text, &factory) {
        Ok(c) => c,
        Err(e) => panic!("test config rejected: {e}"),
    }
}

impl TestServer {
    /// Starts a server whose runners are `runners` (a JSON5 object body).
    pub async fn start(runners: &str) -> TestServer {
        Self::start_with(runners, "").await
    }

    /// Same, with `extra` top-level config keys (`restart: {...},`).
    pub async fn start_with(runners: &str, extra: &str) -> TestServer {
        let port = probe_free_port().expect("a free port");
        let (factory, emulator) = factory();
        let config = config::parse(
            Path::new("test.json5"),
            &config_text(port, runners, extra),
            &factory,
        )
        .unwrap_or_else(|e| panic!("test config rejected: {e}"));
        let factory = Arc::new(Mutex::new(factory));
        let server = Server::start(config, factory.clone(), ServerOptions::default())
            .await
            .expect("server starts");
        TestServer {
            port,
            emulator,
            factory,
            server: Some(server),
        }
    }

    /// Asks for the shutdown and waits until the server has stopped.
    pub async fn stop(mut self) {
        if let Some(server) = self.server.take() {
            tokio::time::timeout(WAIT, server.shutdown())
                .await
                .expect("shutdown within the wait bound")
                .expect("clean shutdown");
        }
    }

    /// Takes the server out, to drive its shutdown by hand.
    pub fn take(&mut self) -> Server {
        self.server.take().expect("server still there")
    }

    pub async fn client(&self) -> Client {
        Client::connect(self.port).await
    }
}

/// A message received by a `Client`.
#[derive(Debug, Clone)]
pub struct Message {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
}

impl Message {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.payload).unwrap_or_else(|e| {
            panic!(
                "{}: payload is not JSON ({e}): {:?}",
                self.topic,
                String::from_utf8_lossy(&self.payload)
            )
        })
    }
}

/// A real MQTT client (rumqttc) on the test broker.
pub struct Client {
    client: AsyncClient,
    messages: mpsc::UnboundedReceiver<Message>,
    subacks: mpsc::UnboundedReceiver<()>,
    pump: tokio::task::JoinHandle<()>,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.pump.abort();
    }
}

impl Client {
    pub async fn connect(port: u16) -> Client {
        let id = format!("test-{:08x}", rand::random::<u32>());
        let mut options = MqttOptions::new(id, "127.0.0.1", port);
        options.set_keep_alive(Duration::from_secs(30));
        options.set_max_packet_size(4 * 1024 * 1024, 4 * 1024 * 1024);
        let (client, mut eventloop) = AsyncClient::new(options, 1024);
        // Without it, a message written right after another waits for the
        // broker's delayed ACK (40 ms): tests would crawl.
        let mut network = rumqttc::NetworkOptions::new();
        network.set_tcp_nodelay(true);
        eventloop.set_network_options(network);
        let (messages_tx, messages) = mpsc::unbounded_channel();
        let (subacks_tx, subacks) = mpsc::unbounded_channel();
        let (connected_tx, connected) = tokio::sync::oneshot::channel();
        let pump = tokio::spawn(async move {
            let mut connected_tx = Some(connected_tx);
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        if let Some(tx) = connected_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let _ = messages_tx.send(Message {
                            topic: p.topic.clone(),
                            payload: p.payload.to_vec(),
                            retain: p.retain,
                        });
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = subacks_tx.send(());
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(RECONNECT_PAUSE).await,
                }
            }
        });
        tokio::time::timeout(WAIT, connected)
            .await
            .expect("connected in time")
            .expect("pump alive");
        Client {
            client,
            messages,
            subacks,
            pump,
        }
    }

    /// Connects once the broker on `port` accepts, trying for at most `limit`.
    pub async fn connect_until(port: u16, limit: Duration) -> Option<Client> {
        let deadline = tokio::time::Instant::now() + limit;
        while tokio::time::Instant::now() < deadline {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Some(Client::connect(port).await);
            }
            tokio::time::sleep(ACCEPT_POLL).await;
        }
        None
    }

    /// Subscribes at QoS 1 and waits for the broker's acknowledgement.
    pub async fn subscribe(&mut self, filter: &str) {
        self.client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .expect("subscribe queued");
        tokio::time::timeout(WAIT, self.subacks.recv())
            .await
            .expect("suback in time");
    }

    pub async fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.into())
            .await
            .expect("publish queued");
    }

    /// The next message before `deadline`, if any.
    pub async fn next_before(&mut self, deadline: tokio::time::Instant) -> Option<Message> {
        tokio::time::timeout_at(deadline, self.messages.recv())
            .await
            .ok()
            .flatten()
    }

    /// The next message, whatever its topic.
    pub async fn next(&mut self) -> Message {
        tokio::time::timeout(WAIT, self.messages.recv())
            .await
            .expect("a message within the wait bound")
            .expect("client alive")
    }

    /// Skips messages until one on `topic` satisfies `pred`; returns it and
    /// the messages skipped on the way. The whole wait is bounded by `WAIT`.
    pub async fn wait_for_collect(
        &mut self,
        topic: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> (Value, Vec<Message>) {
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut skipped = Vec::new();
        loop {
            let m = tokio::time::timeout_at(deadline, self.next())
                .await
                .unwrap_or_else(|_| {
                    panic!("no matching message on {topic} within {WAIT:?}; skipped: {skipped:?}")
                });
            if m.topic == topic {
                let v = m.json();
                if pred(&v) {
                    return (v, skipped);
                }
            }
            skipped.push(m);
        }
    }

    pub async fn wait_for(&mut self, topic: &str, pred: impl Fn(&Value) -> bool) -> Value {
        self.wait_for_collect(topic, pred).await.0
    }

    /// Waits for the status `status` of runner `runner`.
    pub async fn wait_status(&mut self, runner: &str, status: &str) -> Value {
        self.wait_for(&format!("power-supply/{runner}/status"), |v| {
            v["status"] == status
        })
        .await
    }

    /// Waits until every runner of `runners` has published `status`, in any order.
    pub async fn wait_all_status(&mut self, runners: &[&str], status: &str) {
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut missing: Vec<String> = runners
            .iter()
            .map(|r| format!("power-supply/{r}/status"))
            .collect();
        while !missing.is_empty() {
            let m = tokio::time::timeout_at(deadline, self.next())
                .await
                .unwrap_or_else(|_| panic!("{missing:?} not {status} within {WAIT:?}"));
            if serde_json::from_slice::<Value>(&m.payload).is_ok_and(|v| v["status"] == status) {
                missing.retain(|t| *t != m.topic);
            }
        }
    }

    /// Waits for a message carrying `pza_id` on any topic but a command topic
    /// (where the command itself is seen by a client subscribed to `#`).
    pub async fn wait_reply(&mut self, pza_id: &str) -> Message {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let m = tokio::time::timeout_at(deadline, self.next())
                .await
                .unwrap_or_else(|_| panic!("no reply with pza_id {pza_id} within {WAIT:?}"));
            if !m.topic.ends_with("/cmd")
                && serde_json::from_slice::<Value>(&m.payload).is_ok_and(|v| v["pza_id"] == pza_id)
            {
                return m;
            }
        }
    }
}

/// Whether `id` is a `pza_id` the server made itself (for a message that
/// answers no command, or a command whose id could not be read).
pub fn is_server_id(id: &Value) -> bool {
    id.as_str()
        .is_some_and(|id| id.starts_with(pza_power_supply::protocol::ids::SERVER_ID_PREFIX))
}

/// `value` with its `pza_id` replaced by `"srv"` once checked to be a
/// server-made one, so that the rest can be compared to a literal.
pub fn server_made(mut value: Value) -> Value {
    assert!(
        is_server_id(&value["pza_id"]),
        "not a server-made id: {value}"
    );
    value["pza_id"] = Value::String("srv".into());
    value
}

/// A subscriber to every topic of `runner`, waiting until it is `Running`.
pub async fn running_client(server: &TestServer, runner: &str) -> Client {
    let mut client = server.client().await;
    client.subscribe(&format!("power-supply/{runner}/#")).await;
    client.wait_status(runner, "Running").await;
    client
}

/// The log events of the servers run by the current test, kept in memory so
/// that the test can wait for one (a connection loss, a failed reconnection)
/// instead of sleeping for a guessed time.
///
/// The capture is installed for the current thread only: a `#[tokio::test]`
/// runs on one thread, and so do the tasks of the server it starts in
/// process, so each test sees its own server's events and no other test's.
pub struct LogCapture {
    lines: Arc<std::sync::Mutex<Vec<String>>>,
    /// How many events were captured; wakes the waiters.
    events: tokio::sync::watch::Receiver<usize>,
    _installed: tracing::subscriber::DefaultGuard,
}

/// The process-wide subscriber of a test binary that captures logs: it
/// records nothing, and answers "ask each time" for every call site.
///
/// Without it, tracing caches a call site's interest from the dispatchers
/// alive when the site is first reached; with a single capture alive (on
/// another test's thread), a site first reached by a test without a capture
/// would be cached as "never", and its events lost to every later capture.
struct AskEachTime;

impl tracing::Subscriber for AskEachTime {
    fn register_callsite(&self, _: &tracing::Metadata<'_>) -> tracing::subscriber::Interest {
        tracing::subscriber::Interest::sometimes()
    }
    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        // No level is filtered out before a thread's own subscriber is asked.
        Some(tracing::level_filters::LevelFilter::TRACE)
    }
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        false
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        // Never called: `enabled` is false.
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, _: &tracing::Event<'_>) {}
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// Formats each event into one line: level, target, message and fields.
struct CaptureLayer {
    lines: Arc<std::sync::Mutex<Vec<String>>>,
    events: tokio::sync::watch::Sender<usize>,
}

struct LineVisitor<'a>(&'a mut String);

impl tracing::field::Visit for LineVisitor<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write as _;
        // Writing to a String cannot fail.
        let _ = if field.name() == "message" {
            write!(self.0, " {value:?}")
        } else {
            write!(self.0, " {}={value:?}", field.name())
        };
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for CaptureLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let meta = event.metadata();
        let mut line = format!("{} {}:", meta.level(), meta.target());
        event.record(&mut LineVisitor(&mut line));
        self.lines
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(line);
        self.events.send_modify(|n| *n += 1);
    }
}

impl LogCapture {
    /// Captures every event (all levels) of this thread until dropped.
    pub fn install() -> LogCapture {
        use tracing_subscriber::layer::SubscriberExt as _;
        static GLOBAL: std::sync::Once = std::sync::Once::new();
        GLOBAL.call_once(|| {
            // Refused only if this test binary set a global subscriber of its
            // own; any global one keeps the interest cache asking each capture.
            let _ = tracing::subscriber::set_global_default(AskEachTime);
        });
        let lines = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (events_tx, events) = tokio::sync::watch::channel(0);
        let subscriber = tracing_subscriber::registry().with(CaptureLayer {
            lines: lines.clone(),
            events: events_tx,
        });
        LogCapture {
            lines,
            events,
            _installed: tracing::subscriber::set_default(subscriber),
        }
    }

    /// How many lines captured so far contain every one of `needles`.
    pub fn count(&self, needles: &[&str]) -> usize {
        self.lines
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .iter()
            .filter(|l| needles.iter().all(|n| l.contains(n)))
            .count()
    }

    /// Waits until `count` lines contain every one of `needles`; woken by
    /// each new event, and bounded by `WAIT`.
    pub async fn wait_for(&mut self, needles: &[&str], count: usize) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            // Seen before counting: an event logged after the count wakes
            // the wait below.
            self.events.borrow_and_update();
            if self.count(needles) >= count {
                return;
            }
            match tokio::time::timeout_at(deadline, self.events.changed()).await {
                Ok(Ok(())) => {}
                // The sender lives in the subscriber this guard installed.
                Ok(Err(_)) => panic!("the log capture ended"),
                Err(_) => {
                    let lines = self
                        .lines
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                        .join("\n");
                    panic!(
                        "not logged {count} times within {WAIT:?}: {needles:?}; the log:\n{lines}"
                    );
                }
            }
        }
    }
}
