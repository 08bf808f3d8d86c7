//! The real SCPI driver against each model's simulator over real TCP:
//! dialects, read-back, channels sharing one connection, the Siglent pacing
//! quirk, a dropped connection, a wrong `*IDN?`.

use std::time::Duration;

use pza_power_supply::drivers::scpi::profile::{
    Profile, KEYSIGHT_E36312A, PROFILES, RIGOL_DP832, SIGLENT_SPD3303X,
};
use pza_power_supply::drivers::{
    Amps, DriverFactory, DriverSettings, ErrorKind, PowerSupplyDriver, Volts,
};
use pza_power_supply::simulator::{ScpiPtySimulator, ScpiSimulator, ScpiSimulatorOptions};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The Siglent's drop window in tests where pacing is not the point, and
/// the driver's pacing, a little above it (as one would configure a unit).
const SIM_DROP_WINDOW: Duration = Duration::from_millis(10);
const DRIVER_PACING_MS: u64 = 30;
/// Upper bound for any wait on real I/O: it only turns a hang into a failure.
const WAIT: Duration = Duration::from_secs(10);

/// The simulator gives no notice when it serves new connections again
/// (after the last driver's closed): it is tried this often, up to `WAIT`.
const ACCEPT_POLL: Duration = Duration::from_millis(10);

async fn simulator(profile: &'static Profile) -> ScpiSimulator {
    let mut options = ScpiSimulatorOptions::new(profile);
    if !options.drop_window.is_zero() {
        options.drop_window = SIM_DROP_WINDOW;
    }
    ScpiSimulator::start(options).await.unwrap()
}

fn settings(sim: &ScpiSimulator, channel: u8, extra: serde_json::Value) -> DriverSettings {
    let mut settings = json!({
        "channel": channel,
        "tcp": { "addr": "127.0.0.1", "port": sim.addr().port() },
        "pacing_ms": DRIVER_PACING_MS,
        "read_timeout_ms": 500,
    });
    if let (Some(map), Some(extra)) = (settings.as_object_mut(), extra.as_object()) {
        map.extend(extra.clone());
    }
    settings.as_object().unwrap().clone()
}

fn driver(
    factory: &DriverFactory,
    model: &str,
    settings: &DriverSettings,
) -> Box<dyn PowerSupplyDriver> {
    factory.instantiate("bench", model, settings).unwrap()
}

#[tokio::test]
async fn every_model_sets_reads_back_and_measures_in_its_dialect() {
    for profile in PROFILES {
        let sim = simulator(profile).await;
        let factory = DriverFactory::with_builtin_models();
        // The last channel, so that channel addressing is exercised.
        let channel = profile.channels.len() as u8;
        let mut d = driver(
            &factory,
            profile.aliases[0],
            &settings(&sim, channel, json!({})),
        );
        d.initialize().await.unwrap();

        let spec = profile.channel(channel).unwrap();
        let volts = (spec.voltage.max / 2.0 * 1000.0).round() / 1000.0;
        d.set_current_limit(Amps(0.25)).await.unwrap();
        d.set_voltage_setpoint(Volts(volts)).await.unwrap();
        assert_eq!(
            d.voltage_setpoint().await.unwrap(),
            Volts(volts),
            "{}",
            profile.model
        );
        assert_eq!(d.current_limit().await.unwrap(), Amps(0.25));
        assert!(!d.output_enabled().await.unwrap());
        d.set_output_enabled(true).await.unwrap();
        assert!(d.output_enabled().await.unwrap(), "{}", profile.model);

        // Half the range on 10 Ω wants more than 0.25 A: the limit holds (CC).
        assert_eq!(d.measure_current().await.unwrap(), Amps(0.25));
        assert_eq!(d.measure_voltage().await.unwrap(), Volts(2.5));
        let state = sim.state(channel).unwrap();
        assert_eq!(
            (
                state.output_enabled,
                state.voltage_setpoint,
                state.current_limit
            ),
            (true, volts, 0.25),
            "{}",
            profile.model
        );
        // The other channels were not touched.
        for other in 1..channel {
            assert_eq!(sim.state(other).unwrap().voltage_setpoint, 0.0);
        }
        // Setpoints on the instrument's resolution: 1 mV, 1 mA.
        d.set_voltage_setpoint(Volts(1.2345)).await.unwrap();
        assert_eq!(sim.state(channel).unwrap().voltage_setpoint, 1.235);
        d.set_output_enabled(false).await.unwrap();
        assert_eq!(d.measure_voltage().await.unwrap(), Volts(0.0));
        assert_eq!(sim.dropped_commands(), 0, "{}", profile.model);
        d.shutdown().await.unwrap();
        sim.stop().await.unwrap();
    }
}

#[tokio::test]
async fn values_outside_the_channel_range_never_reach_the_instrument() {
    let sim = simulator(&KEYSIGHT_E36312A).await;
    let factory = DriverFactory::with_builtin_models();
    let mut d = driver(&factory, "keysight-e36312a", &settings(&sim, 1, json!({})));
    d.initialize().await.unwrap();
    let served = sim.served_commands();
    // Channel 1 is 0-6 V, 0-5 A (channels 2 and 3 go to 25 V, 1 A).
    let err = d.set_voltage_setpoint(Volts(6.5)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::OutOfRange);
    assert!(err.message().contains("0..=6"), "{err}");
    let err = d.set_current_limit(Amps(5.01)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::OutOfRange);
    assert_eq!(sim.served_commands(), served);
    d.set_current_limit(Amps(5.0)).await.unwrap();
    sim.stop().await.unwrap();
}

#[tokio::test]
async fn the_siglent_needs_its_pacing_and_the_default_gives_it() {
    // The unit's own window, and the profile's default pacing.
    let sim = ScpiSimulator::start(ScpiSimulatorOptions::new(&SIGLENT_SPD3303X))
        .await
        .unwrap();
    let factory = DriverFactory::with_builtin_models();
    let default_pacing = json!({
        "channel": 2, "tcp": { "addr": "127.0.0.1", "port": sim.addr().port() },
    });
    let mut d = driver(&factory, "spd3303x", default_pacing.as_object().unwrap());
    d.initialize().await.unwrap();
    d.set_voltage_setpoint(Volts(12.0)).await.unwrap();
    d.set_output_enabled(true).await.unwrap();
    assert!(d.output_enabled().await.unwrap());
    d.measure_voltage().await.unwrap();
    assert_eq!(sim.dropped_commands(), 0);
    d.shutdown().await.unwrap();
    sim.stop().await.unwrap();

    // Without pacing, the set is dropped by the unit and its read-back
    // tells: the set is rejected, not silently lost.
    let sim = ScpiSimulator::start(ScpiSimulatorOptions::new(&SIGLENT_SPD3303X))
        .await
        .unwrap();
    let factory = DriverFactory::with_builtin_models();
    let mut d = driver(
        &factory,
        "spd3303x",
        &settings(&sim, 1, json!({ "pacing_ms": 0, "read_timeout_ms": 300 })),
    );
    d.initialize().await.unwrap();
    let err = d.set_voltage_setpoint(Volts(5.0)).await.unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::Timeout | ErrorKind::Rejected),
        "{err}"
    );
    assert!(sim.dropped_commands() > 0);
    assert_eq!(sim.state(1).unwrap().voltage_setpoint, 0.0);
    sim.stop().await.unwrap();
}

#[tokio::test]
async fn channels_of_one_instrument_share_one_connection() {
    let sim = simulator(&RIGOL_DP832).await;
    let factory = DriverFactory::with_builtin_models();
    // The Rigol simulator drops nothing: no pacing needed to test sharing.
    let fast = json!({ "pacing_ms": 0 });
    let mut one = driver(&factory, "rigol-dp832", &settings(&sim, 1, fast.clone()));
    let mut two = driver(&factory, "dp832", &settings(&sim, 2, fast.clone()));
    let mut three = driver(&factory, "dp832", &settings(&sim, 3, fast));
    one.initialize().await.unwrap();
    two.initialize().await.unwrap();
    three.initialize().await.unwrap();

    // Driven at once: a Rigol select-then-set is never split by the other
    // channel's command, so every value lands on its own channel.
    for i in 1..=20 {
        let v1 = f64::from(i);
        let v2 = 30.0 - f64::from(i);
        let v3 = f64::from(i) / 5.0;
        let (r1, r2, r3) = tokio::join!(
            one.set_voltage_setpoint(Volts(v1)),
            two.set_voltage_setpoint(Volts(v2)),
            three.set_voltage_setpoint(Volts(v3)),
        );
        r1.unwrap();
        r2.unwrap();
        r3.unwrap();
        assert_eq!(sim.state(1).unwrap().voltage_setpoint, v1);
        assert_eq!(sim.state(2).unwrap().voltage_setpoint, v2);
        assert_eq!(sim.state(3).unwrap().voltage_setpoint, v3);
    }
    assert_eq!(sim.accepted_connections(), 1);
    assert_eq!(sim.refused_connections(), 0);

    // The connection closes with its last driver, not before.
    one.shutdown().await.unwrap();
    two.shutdown().await.unwrap();
    three.measure_voltage().await.unwrap();
    three.shutdown().await.unwrap();
    let mut probe = tokio::time::timeout(WAIT, async {
        loop {
            let mut probe = tokio::net::TcpStream::connect(sim.addr()).await.unwrap();
            probe.write_all(b"*IDN?\n").await.unwrap();
            let mut reply = [0u8; 64];
            if probe.read(&mut reply).await.unwrap_or(0) > 0 {
                return probe;
            }
            // Refused: the simulator has not seen the close yet.
            tokio::time::sleep(ACCEPT_POLL).await;
        }
    })
    .await
    .expect("the simulator serves a new connection once the drivers are gone");
    probe.shutdown().await.unwrap();
    assert_eq!(sim.accepted_connections(), 2);
    sim.stop().await.unwrap();
}

#[tokio::test]
async fn a_lost_connection_fails_every_channel_until_each_initializes_again() {
    let sim = simulator(&SIGLENT_SPD3303X).await;
    let factory = DriverFactory::with_builtin_models();
    let mut one = driver(&factory, "siglent-spd3303x", &settings(&sim, 1, json!({})));
    let mut two = driver(&factory, "siglent-spd3303x", &settings(&sim, 2, json!({})));
    one.initialize().await.unwrap();
    two.initialize().await.unwrap();
    one.set_voltage_setpoint(Volts(3.3)).await.unwrap();

    sim.drop_connection();
    // The first driver to talk finds the connection closed...
    let err = one.measure_voltage().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Io, "{err}");
    assert!(err.kind().is_fatal());
    // ...and the other learns that it was lost, rather than carrying on
    // over a new connection to an instrument that may have been reset.
    let err = two.measure_voltage().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotConnected, "{err}");
    assert!(err.message().contains("lost"), "{err}");

    // Fresh drivers (as the runners' restarts build) reconnect once and
    // share the new connection; the instrument kept its settings.
    let mut one = driver(&factory, "siglent-spd3303x", &settings(&sim, 1, json!({})));
    let mut two = driver(&factory, "siglent-spd3303x", &settings(&sim, 2, json!({})));
    one.initialize().await.unwrap();
    two.initialize().await.unwrap();
    assert_eq!(one.voltage_setpoint().await.unwrap(), Volts(3.3));
    two.set_voltage_setpoint(Volts(7.0)).await.unwrap();
    assert_eq!(sim.accepted_connections(), 2);

    // An instrument that is away fails initialize, until it is back.
    sim.set_online(false);
    let mut again = driver(&factory, "siglent-spd3303x", &settings(&sim, 1, json!({})));
    assert!(one.measure_voltage().await.is_err());
    let err = again.initialize().await.unwrap_err();
    assert!(err.kind().is_fatal(), "{err}");
    sim.set_online(true);
    again.initialize().await.unwrap();
    assert_eq!(again.voltage_setpoint().await.unwrap(), Volts(3.3));
    sim.stop().await.unwrap();
}

#[tokio::test]
async fn another_model_answering_is_refused_naming_both() {
    let sim = simulator(&SIGLENT_SPD3303X).await;
    let factory = DriverFactory::with_builtin_models();
    let mut d = driver(&factory, "rigol-dp832", &settings(&sim, 1, json!({})));
    let err = d.initialize().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    let message = err.message();
    assert!(
        message.contains("Siglent Technologies SPD3303X"),
        "{message}"
    );
    assert!(message.contains("Rigol DP832"), "{message}");
    assert!(message.contains("rigol-dp832"), "{message}");
    assert!(message.contains(&sim.addr().to_string()), "{message}");
    // No connection is kept to the wrong instrument.
    let err = d.measure_voltage().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotConnected);
    sim.stop().await.unwrap();
}

#[tokio::test]
async fn the_simulator_takes_one_connection_at_a_time() {
    let sim = simulator(&KEYSIGHT_E36312A).await;
    let mut first = tokio::net::TcpStream::connect(sim.addr()).await.unwrap();
    first.write_all(b"*IDN?\n").await.unwrap();
    let mut reply = [0u8; 128];
    let n = first.read(&mut reply).await.unwrap();
    assert!(String::from_utf8_lossy(&reply[..n]).starts_with("Keysight Technologies,E36312A,"));
    let mut second = tokio::net::TcpStream::connect(sim.addr()).await.unwrap();
    let _ = second.write_all(b"*IDN?\n").await;
    let closed = tokio::time::timeout(WAIT, second.read(&mut reply))
        .await
        .expect("closed at once");
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
    assert_eq!(sim.refused_connections(), 1);
    sim.stop().await.unwrap();
}

#[tokio::test]
async fn the_rigol_over_its_serial_port_with_two_channels_on_one_port() {
    let sim = ScpiPtySimulator::start(ScpiSimulatorOptions::new(&RIGOL_DP832))
        .await
        .unwrap();
    let factory = DriverFactory::with_builtin_models();
    let serial = |channel: u8| {
        json!({
            "channel": channel,
            "serial_port": { "name": sim.path().to_str().unwrap() },
            "baud_rate": 115200,
            "read_timeout_ms": 500,
        })
        .as_object()
        .unwrap()
        .clone()
    };
    // Opened once: a second open of the port would fail (it is exclusive).
    let mut one = driver(&factory, "dp832", &serial(1));
    let mut three = driver(&factory, "dp832", &serial(3));
    one.initialize().await.unwrap();
    three.initialize().await.unwrap();
    let (a, b) = tokio::join!(
        one.set_voltage_setpoint(Volts(24.0)),
        three.set_voltage_setpoint(Volts(3.3)),
    );
    a.unwrap();
    b.unwrap();
    three.set_output_enabled(true).await.unwrap();
    assert_eq!(three.measure_voltage().await.unwrap(), Volts(3.3));
    assert_eq!(one.voltage_setpoint().await.unwrap(), Volts(24.0));
    assert_eq!(sim.state(1).unwrap().voltage_setpoint, 24.0);
    let state = sim.state(3).unwrap();
    assert_eq!((state.output_enabled, state.voltage_setpoint), (true, 3.3));
    one.shutdown().await.unwrap();
    three.shutdown().await.unwrap();
    sim.stop().await.unwrap();
}
