//! The client library against the real server binary and its embedded
//! broker: every method, refusals, timeouts, many commands in flight, a
//! crash seen through `watch`, and a reconnection.

mod served;

use std::collections::HashSet;
use std::time::Duration;

use pza_power_supply_client::{Change, Client, ClientOptions, Error, Status};
use served::{free_port, wait_running, wait_status, Served, WAIT};
use tokio::task::JoinSet;

/// The client library tells its connection state only when asked
/// (`is_connected`, no event): asked this often while waiting for a change,
/// up to the wait's bound.
const CONNECTED_POLL: Duration = Duration::from_millis(10);

const TWO: &str = r#"a: { model: "emulator", measure_period_ms: 0, description: "first" },
                     b: { model: "emulator", measure_period_ms: 0, security_max_voltage: 12 }"#;

#[tokio::test]
async fn every_method_reaches_the_device_and_returns_what_it_read_back() {
    let served = Served::start(TWO);
    let client = served.client().await;
    wait_running(&client, "a").await;
    wait_running(&client, "b").await;
    assert_eq!(client.list().await.unwrap(), ["a", "b"]);

    let psu = client.power_supply("a");
    assert_eq!(psu.name(), "a");
    assert!(!psu.disable_output().await.unwrap());
    assert_eq!(psu.set_current(0.25).await.unwrap(), 0.25);
    // The emulator keeps 2 decimals: the value read back is the device's.
    assert_eq!(psu.set_voltage(5.004).await.unwrap(), 5.0);
    assert!(psu.enable_output().await.unwrap());
    assert!(psu.set_output(true).await.unwrap());
    let m = psu.measure().await.unwrap();
    assert!(m.voltage > 0.0 && m.current > 0.0, "{m:?}");

    let s = psu.snapshot().await.unwrap();
    assert_eq!(s.name, "a");
    assert_eq!(s.status, Some(Status::Running));
    assert_eq!(s.restarts, 0);
    assert_eq!(s.output, Some(true));
    assert_eq!(s.voltage, Some(5.0));
    assert_eq!(s.current, Some(0.25));
    assert_eq!(s.measured_voltage, Some(m.voltage));
    assert_eq!(s.measured_current, Some(m.current));
    let info = s.info.expect("P/info is retained");
    assert_eq!(info.model, "emulator");
    assert!(!info.description.is_empty());
    assert_eq!(info.security_max_voltage, 30.0);
    assert_eq!(info.voltage_decimals, 2);

    let b = client.power_supply("b").snapshot().await.unwrap();
    assert_eq!(b.info.map(|i| i.security_max_voltage), Some(12.0));

    let mut updates = psu.watch();
    psu.restart().await.unwrap();
    let mut seen = Vec::new();
    tokio::time::timeout(WAIT, async {
        while let Some(u) = updates.next().await {
            if let Change::Status(r) = &u.change {
                seen.push(r.status);
                if r.status == Status::Running {
                    break;
                }
            }
        }
    })
    .await
    .expect("back to Running after a restart");
    assert_eq!(seen.first(), Some(&Status::Restarting), "{seen:?}");
    client.close().await.unwrap();
    // The handles made from a closed client say so.
    assert!(matches!(psu.set_current(1.0).await, Err(Error::Closed)));
    assert!(matches!(psu.snapshot().await, Err(Error::Closed)));
}

/// Found by the test above: after `restart/cmd`, a command sent on seeing
/// `Running` must be answered. It was not, when the restarted runner opened a
/// fresh connection and the embedded broker applied the old connection's late
/// disconnect to it; the runner now keeps its connection across the restart.
#[tokio::test]
async fn a_command_sent_on_running_after_a_restart_is_answered() {
    let served = Served::start(TWO);
    let client = served.client().await;
    wait_running(&client, "a").await;
    let psu = client
        .power_supply("a")
        .with_timeout(Duration::from_secs(3));
    const ROUNDS: usize = 30;
    for round in 0..ROUNDS {
        let mut updates = psu.watch();
        psu.restart().await.unwrap();
        tokio::time::timeout(WAIT, async {
            while let Some(u) = updates.next().await {
                if matches!(&u.change, Change::Status(r) if r.status == Status::Running) {
                    break;
                }
            }
        })
        .await
        .expect("back to Running");
        let read = psu.set_current(0.5).await;
        assert!(read.is_ok(), "round {round}: {read:?}");
    }
}

#[tokio::test]
async fn a_refusal_carries_the_servers_message_and_changes_nothing() {
    let served = Served::start(TWO);
    let client = served.client().await;
    wait_running(&client, "b").await;
    let psu = client.power_supply("b");
    assert_eq!(psu.set_voltage(3.0).await.unwrap(), 3.0);
    match psu.set_voltage(13.0).await {
        Err(Error::Rejected { message }) => {
            assert_eq!(message, "voltage 13 exceeds security_max_voltage 12")
        }
        other => panic!("{other:?}"),
    }
    let s = psu.snapshot().await.unwrap();
    assert_eq!(s.voltage, Some(3.0));
    assert_eq!(
        s.last_error.as_deref(),
        Some("voltage 13 exceeds security_max_voltage 12")
    );
    match psu.set_current(-1.0).await {
        Err(Error::Rejected { message }) => assert!(message.contains("current -1"), "{message}"),
        other => panic!("{other:?}"),
    }
    // Refused before any I/O: no JSON number can carry them.
    for bad in [f64::NAN, f64::INFINITY] {
        match psu.set_voltage(bad).await {
            Err(Error::InvalidArgument { field, .. }) => assert_eq!(field, "voltage"),
            other => panic!("{other:?}"),
        }
    }
    match client.power_supply("a/b").set_voltage(1.0).await {
        Err(Error::InvalidArgument { field, .. }) => assert_eq!(field, "name"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn an_unknown_device_times_out_saying_it_was_never_seen() {
    let served = Served::start(TWO);
    let client = served.client().await;
    let ghost = client
        .power_supply("ghost")
        .with_timeout(Duration::from_millis(300));
    match ghost.set_voltage(1.0).await {
        Err(e @ Error::Timeout { .. }) => {
            let Error::Timeout {
                ref device,
                after,
                last_status,
            } = e
            else {
                unreachable!()
            };
            assert_eq!(device, "ghost");
            assert_eq!(after, Duration::from_millis(300));
            assert_eq!(last_status, None);
            assert!(e.to_string().contains("never seen"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        ghost.snapshot().await,
        Err(Error::UnknownDevice { .. })
    ));
    assert!(matches!(ghost.measure().await, Err(Error::Timeout { .. })));
}

#[tokio::test]
async fn an_unreachable_broker_is_reported_with_its_address() {
    let port = free_port();
    let options = ClientOptions::new("127.0.0.1", port).timeout(Duration::from_millis(400));
    match Client::connect(options).await {
        Err(e @ Error::BrokerUnreachable { .. }) => {
            let text = e.to_string();
            assert!(
                text.starts_with(&format!(
                    "broker 127.0.0.1:{port} did not answer within 400 ms"
                )),
                "{text}"
            );
        }
        other => panic!("{other:?}"),
    }
    let bad = ClientOptions::new("127.0.0.1", port).namespace("a/#");
    assert!(matches!(
        Client::connect(bad).await,
        Err(Error::InvalidArgument {
            field: "namespace",
            ..
        })
    ));
}

#[tokio::test]
async fn a_hundred_commands_in_flight_are_each_answered_with_their_own_value() {
    let served = Served::start(TWO);
    let client = served.client().await;
    wait_running(&client, "a").await;
    wait_running(&client, "b").await;
    const IN_FLIGHT: usize = 100;
    let mut commands = JoinSet::new();
    for i in 0..IN_FLIGHT {
        // Alternate devices; every value distinct on each device (0.01 V
        // steps), so a reply given to the wrong command would show.
        let name = if i % 2 == 0 { "a" } else { "b" };
        let psu = client.power_supply(name);
        let volts = 1.0 + (i / 2) as f64 * 0.01;
        commands.spawn(async move { (volts, psu.set_voltage(volts).await) });
    }
    let mut answered = 0;
    while let Some(joined) = commands.join_next().await {
        let (asked, result) = joined.expect("the command task ends");
        let read = result.unwrap_or_else(|e| panic!("{asked} V: {e}"));
        assert!(
            (read - asked).abs() < 1e-9,
            "asked {asked}, read back {read}"
        );
        answered += 1;
    }
    assert_eq!(answered, IN_FLIGHT);
}

#[tokio::test]
async fn watch_sees_a_runner_crash_and_come_back() {
    let served = Served::start(
        r#"p: { model: "emulator", measure_period_ms: 0, faults: { panic_on_voltage: 13 },
               restart: { initial_delay_ms: 50, jitter: 0 } }"#,
    );
    let client = served.client().await;
    wait_running(&client, "p").await;
    let psu = client.power_supply("p");
    let mut updates = psu.watch();
    let mut everything = client.watch_all();

    match psu.set_voltage(13.0).await {
        Err(Error::Rejected { message }) => assert!(message.contains("panic"), "{message}"),
        other => panic!("a panicking command is answered on P/error: {other:?}"),
    }
    let mut statuses = Vec::new();
    let mut panic_message = None;
    tokio::time::timeout(WAIT, async {
        while let Some(u) = updates.next().await {
            assert_eq!(u.name, "p");
            if let Change::Status(r) = &u.change {
                statuses.push(r.status);
                if r.status == Status::Panicking {
                    panic_message = r.panic_message.clone();
                }
                if r.status == Status::Running {
                    assert_eq!(u.snapshot.restarts, 1);
                    break;
                }
            }
        }
    })
    .await
    .expect("the runner comes back");
    let expected = [
        Status::Panicking,
        Status::Restarting,
        Status::Initializing,
        Status::Running,
    ];
    assert!(
        expected.iter().all(|s| statuses.contains(s)),
        "{statuses:?}"
    );
    assert!(
        panic_message.is_some_and(|m| m.contains("panic_on_voltage")),
        "{statuses:?}"
    );
    let first = everything.next().await.expect("watch_all sees it too");
    assert_eq!(first.name, "p");
    assert_eq!(psu.snapshot().await.unwrap().restarts, 1);
    assert_eq!(psu.set_voltage(2.0).await.unwrap(), 2.0);
}

#[tokio::test]
async fn the_client_reconnects_and_resubscribes_after_the_broker_comes_back() {
    let mut served = Served::start(TWO);
    let client = served.client().await;
    wait_running(&client, "a").await;
    let psu = client.power_supply("a");
    assert_eq!(psu.set_voltage(4.0).await.unwrap(), 4.0);

    served.kill();
    // The client notices the loss on its own (the socket closes).
    tokio::time::timeout(WAIT, async {
        while client.is_connected() {
            tokio::time::sleep(CONNECTED_POLL).await;
        }
    })
    .await
    .expect("the loss is noticed");
    assert!(matches!(
        psu.clone()
            .with_timeout(Duration::from_millis(200))
            .set_voltage(5.0)
            .await,
        Err(Error::BrokerUnreachable { .. })
    ));
    served.launch();
    // Through the outage and the reconnection, within the client's timeout.
    wait_status(&client, "a", Status::Running).await;
    assert_eq!(psu.set_voltage(6.0).await.unwrap(), 6.0);
    assert!(client.is_connected());
}

#[tokio::test]
async fn a_namespace_separates_servers_on_one_broker() {
    let served = Served::start_with(TWO, r#"namespace: "bench-3","#);
    let options = served.options().namespace("bench-3");
    let client = Client::connect(options).await.unwrap();
    wait_running(&client, "a").await;
    assert_eq!(client.namespace(), Some("bench-3"));
    assert_eq!(client.list().await.unwrap(), ["a", "b"]);
    assert_eq!(
        client.power_supply("a").set_current(1.0).await.unwrap(),
        1.0
    );

    let outside = served.client().await;
    assert!(outside.list().await.unwrap().is_empty());
    let unique: HashSet<_> = client.list().await.unwrap().into_iter().collect();
    assert_eq!(unique.len(), 2);
}
