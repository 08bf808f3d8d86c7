//! The acknowledgement accounting of a runner's MQTT connection, past the
//! packet-id wrap-around (65,535): a flush returns because every publish was
//! acknowledged, never because its timeout expired, however many publishes
//! came before; so a restart after 70,000 commands is as fast as the first.
//!
//! Alone in its test binary: it reads the process-wide count of flushes that
//! timed out.

mod common;

use std::time::Duration;

use common::{running_client, TestServer, WAIT};
use pza_toolkit::mqtt::link::{flush_timeouts, LinkEvent, MqttLink};
use pza_toolkit::mqtt::{client_options, BrokerEndpoint};

/// Past the 16-bit packet-id space, so ids wrap around at least once.
const PUBLISHES: usize = 70_000;

/// Publishes between two checks of the accounting.
const FLUSH_EVERY: usize = 1_000;

/// Commands in flight at once from the test client.
const WINDOW: usize = 64;

fn endpoint(port: u16) -> BrokerEndpoint {
    BrokerEndpoint {
        host: "127.0.0.1".into(),
        port,
        username: None,
        password: None,
        tls: None,
    }
}

/// Both tests in one, as they share the process-wide timeout count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_are_never_lost_past_the_packet_id_wrap_around() {
    let server = TestServer::start(
        r#"p: { model: "emulator", measure_period_ms: 0, faults: { panic_on_voltage: 13 },
                restart: { initial_delay_ms: 0, jitter: 0 } }"#,
    )
    .await;

    // The link alone: every flush is answered by the acks.
    let options = client_options("link-acks", &endpoint(server.port), None);
    let mut link = MqttLink::open(options, vec!["link-acks/in".into()]);
    match tokio::time::timeout(WAIT, link.recv()).await {
        Ok(Some(LinkEvent::Connected { first: true })) => {}
        other => panic!("expected the first connection, got {other:?}"),
    }
    for i in 1..=PUBLISHES {
        link.publish("link-acks/out".into(), false, i.to_string().into_bytes())
            .await
            .expect("publish queued");
        if i % FLUSH_EVERY == 0 {
            assert!(
                link.flush(WAIT).await,
                "flush after {i} publishes returned on its timeout: an ack was lost"
            );
        }
    }
    link.close(Duration::from_secs(1)).await;
    assert_eq!(flush_timeouts(), 0);

    // Through the server: 70,000 commands on one runner, then a panic; the
    // restart flushes (the error answer, the retained state) must all
    // return on their acks.
    let mut c = running_client(&server, "p").await;
    let mut sent = 0usize;
    let mut answered = 0usize;
    while answered < PUBLISHES {
        while sent < PUBLISHES && sent - answered < WINDOW {
            sent += 1;
            let volts = 1 + sent % 10;
            c.publish(
                "power-supply/p/voltage/cmd",
                format!(r#"{{"pza_id":"c{sent}","voltage":{volts}}}"#),
            )
            .await;
        }
        let m = c.next().await;
        if m.topic == "power-supply/p/voltage" {
            answered += 1;
        }
    }
    for round in 0..3 {
        let id = format!("boom{round}");
        c.publish(
            "power-supply/p/voltage/cmd",
            format!(r#"{{"pza_id":"{id}","voltage":13}}"#),
        )
        .await;
        let answer = c.wait_reply(&id).await;
        assert_eq!(answer.topic, "power-supply/p/error");
        c.wait_status("p", "Running").await;
    }
    assert_eq!(
        flush_timeouts(),
        0,
        "a flush waited for its whole timeout: an acknowledgement was lost"
    );
    server.stop().await;
}
