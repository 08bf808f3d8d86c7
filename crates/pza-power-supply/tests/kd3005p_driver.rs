//! The real `kd3005p` driver against the simulated device on a real
//! pseudo-terminal: serial port, pacing, framing, quirks and timeouts.
//!
//! Timing: the simulator drops requests closer than its pacing; the driver
//! paces a little slower than the simulator needs, as one would configure a
//! real unit, so these tests stay fast (20 ms) and still prove pacing.

use std::path::Path;

use pza_power_supply::drivers::{
    Amps, DriverFactory, DriverSettings, ErrorKind, PowerSupplyDriver, Volts,
};
use pza_power_supply::simulator::{Simulator, SimulatorOptions};
use serde_json::json;
use std::time::Duration;

/// Pacing of the simulator in tests where pacing is not the point.
const SIM_PACING: Duration = Duration::from_millis(20);
/// The driver's pacing in those tests, with a margin over the simulator's.
const DRIVER_PACING_MS: u64 = 30;
const DRIVER_SETTLE_MS: u64 = 10;
/// Short, so that the timeout tests are quick.
const READ_TIMEOUT_MS: u64 = 200;

async fn simulator(options: SimulatorOptions) -> Simulator {
    Simulator::start(options).await.unwrap()
}

fn fast_simulator_options() -> SimulatorOptions {
    SimulatorOptions {
        pacing: SIM_PACING,
        load_ohms: 10.0,
        ..SimulatorOptions::default()
    }
}

fn settings(port: &Path, pacing_ms: u64, settle_ms: u64) -> DriverSettings {
    json!({
        "serial_port": { "name": port.to_str().unwrap() },
        "pacing_ms": pacing_ms,
        "settle_ms": settle_ms,
        "read_timeout_ms": READ_TIMEOUT_MS,
    })
    .as_object()
    .unwrap()
    .clone()
}

/// A driver built by the factory, as a runner builds it, by the alias.
fn driver(settings: &DriverSettings) -> Box<dyn PowerSupplyDriver> {
    DriverFactory::with_builtin_models()
        .instantiate("bench", "ka3005p", settings)
        .unwrap()
}

async fn initialized(sim: &Simulator) -> Box<dyn PowerSupplyDriver> {
    let mut d = driver(&settings(sim.path(), DRIVER_PACING_MS, DRIVER_SETTLE_MS));
    d.initialize().await.unwrap();
    d
}

#[tokio::test]
async fn initialize_asks_for_the_identity() {
    let sim = simulator(fast_simulator_options()).await;
    let mut d = initialized(&sim).await;
    assert_eq!(sim.served_requests(), 1, "*IDN? only");
    d.shutdown().await.unwrap();
    let err = d.voltage_setpoint().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotConnected);
    drop(d);
    sim.stop().await.unwrap();
}

#[tokio::test]
async fn a_unit_that_does_not_identify_itself_fails_initialize() {
    let sim = simulator(SimulatorOptions {
        idn: String::new(),
        ..fast_simulator_options()
    })
    .await;
    let mut d = driver(&settings(sim.path(), DRIVER_PACING_MS, DRIVER_SETTLE_MS));
    let err = d.initialize().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert!(err.message().contains("*IDN?"), "{err}");
}

#[tokio::test]
async fn every_set_get_and_measurement() {
    let sim = simulator(fast_simulator_options()).await;
    let mut d = initialized(&sim).await;

    d.set_voltage_setpoint(Volts(5.0)).await.unwrap();
    assert_eq!(sim.state().voltage_setpoint, 5.0);
    assert_eq!(d.voltage_setpoint().await.unwrap(), Volts(5.0));

    d.set_current_limit(Amps(1.5)).await.unwrap();
    assert_eq!(sim.state().current_limit, 1.5);
    assert_eq!(d.current_limit().await.unwrap(), Amps(1.5));

    assert!(!d.output_enabled().await.unwrap());
    assert_eq!(d.measure_voltage().await.unwrap(), Volts(0.0));
    assert_eq!(d.measure_current().await.unwrap(), Amps(0.0));

    d.set_output_enabled(true).await.unwrap();
    assert!(sim.state().output_enabled);
    assert!(d.output_enabled().await.unwrap());
    // 5 V on 10 ohms draws 0.5 A, under the 1.5 A limit: CV.
    assert_eq!(d.measure_voltage().await.unwrap(), Volts(5.0));
    assert_eq!(d.measure_current().await.unwrap(), Amps(0.5));

    // A limit of 0.2 A puts it in CC: 0.2 A through 10 ohms is 2 V.
    d.set_current_limit(Amps(0.2)).await.unwrap();
    assert_eq!(d.measure_voltage().await.unwrap(), Volts(2.0));
    assert_eq!(d.measure_current().await.unwrap(), Amps(0.2));

    // Values are rounded to the device resolution, and read back so.
    d.set_voltage_setpoint(Volts(3.3)).await.unwrap();
    assert_eq!(d.voltage_setpoint().await.unwrap(), Volts(3.3));
    d.set_current_limit(Amps(0.1234)).await.unwrap();
    assert_eq!(d.current_limit().await.unwrap(), Amps(0.123));

    d.set_output_enabled(false).await.unwrap();
    assert!(!d.output_enabled().await.unwrap());
    assert_eq!(d.measure_current().await.unwrap(), Amps(0.0));

    let err = d.set_voltage_setpoint(Volts(30.5)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::OutOfRange);
    let err = d.set_current_limit(Amps(-0.1)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::OutOfRange);
    assert_eq!(sim.state().voltage_setpoint, 3.3);

    assert_eq!(sim.dropped_requests(), 0, "the driver paces its requests");
    drop(d);
    sim.stop().await.unwrap();
}

#[tokio::test]
async fn the_stray_byte_after_iset_does_not_shift_later_replies() {
    for stray_iset_byte in [true, false] {
        let sim = simulator(SimulatorOptions {
            stray_iset_byte,
            ..fast_simulator_options()
        })
        .await;
        let mut d = initialized(&sim).await;
        d.set_voltage_setpoint(Volts(12.34)).await.unwrap();
        d.set_current_limit(Amps(2.5)).await.unwrap();
        // Each query right after an ISET1? would read the stray byte first
        // if the driver left it in the buffer.
        for _ in 0..2 {
            assert_eq!(d.current_limit().await.unwrap(), Amps(2.5));
            assert_eq!(d.voltage_setpoint().await.unwrap(), Volts(12.34));
            assert_eq!(d.current_limit().await.unwrap(), Amps(2.5));
            assert!(!d.output_enabled().await.unwrap());
        }
        drop(d);
        sim.stop().await.unwrap();
    }
}

#[tokio::test]
async fn a_driver_that_does_not_pace_fails_against_a_slow_unit() {
    let sim = simulator(SimulatorOptions {
        pacing: Duration::from_millis(80),
        ..SimulatorOptions::default()
    })
    .await;

    let mut hasty = driver(&settings(sim.path(), 0, 0));
    hasty.initialize().await.unwrap();
    // The set and its read-back follow *IDN? and each other too closely:
    // the unit drops them and the read-back gets no answer.
    let err = hasty.set_voltage_setpoint(Volts(5.0)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert!(sim.dropped_requests() > 0);
    drop(hasty);

    // The same unit with the default pacing (80 ms, 50 ms settle) works.
    let dropped = sim.dropped_requests();
    let defaults = json!({ "serial_port": { "name": sim.path().to_str().unwrap() } });
    let mut paced = driver(defaults.as_object().unwrap());
    paced.initialize().await.unwrap();
    paced.set_voltage_setpoint(Volts(5.0)).await.unwrap();
    assert_eq!(paced.voltage_setpoint().await.unwrap(), Volts(5.0));
    assert_eq!(sim.dropped_requests(), dropped);
    drop(paced);
    sim.stop().await.unwrap();
}

#[tokio::test]
async fn an_unresponsive_unit_times_out_and_a_fresh_driver_recovers() {
    let sim = simulator(fast_simulator_options()).await;
    let mut d = initialized(&sim).await;
    d.set_voltage_setpoint(Volts(7.0)).await.unwrap();
    // The get right after a set is the set's own read-back; the next one
    // asks the device.
    assert_eq!(d.voltage_setpoint().await.unwrap(), Volts(7.0));

    sim.set_responsive(false);
    let err = d.voltage_setpoint().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert!(err.kind().is_fatal(), "the runner restarts the driver");
    let mut other = driver(&settings(sim.path(), DRIVER_PACING_MS, DRIVER_SETTLE_MS));
    drop(d);
    assert_eq!(
        other.initialize().await.unwrap_err().kind(),
        ErrorKind::Timeout
    );
    drop(other);

    // Back on the same path, with its setpoint kept, like a real unit.
    sim.set_responsive(true);
    let mut fresh = initialized(&sim).await;
    assert_eq!(fresh.voltage_setpoint().await.unwrap(), Volts(7.0));
    drop(fresh);
    sim.stop().await.unwrap();
}

#[tokio::test]
async fn a_get_right_after_a_set_reuses_the_verified_read_back() {
    let sim = simulator(fast_simulator_options()).await;
    let mut d = initialized(&sim).await;
    d.set_voltage_setpoint(Volts(4.2)).await.unwrap();
    let after_set = sim.served_requests();
    assert_eq!(d.voltage_setpoint().await.unwrap(), Volts(4.2));
    assert_eq!(
        sim.served_requests(),
        after_set,
        "answered from the set's read-back"
    );
    assert_eq!(d.voltage_setpoint().await.unwrap(), Volts(4.2));
    assert_eq!(
        sim.served_requests(),
        after_set + 1,
        "asked the device again"
    );

    d.set_output_enabled(true).await.unwrap();
    let after_set = sim.served_requests();
    assert!(d.output_enabled().await.unwrap());
    assert_eq!(sim.served_requests(), after_set);
    // Any other request in between drops the kept value.
    d.set_current_limit(Amps(1.5)).await.unwrap();
    d.measure_voltage().await.unwrap();
    let before = sim.served_requests();
    assert_eq!(d.current_limit().await.unwrap(), Amps(1.5));
    assert_eq!(sim.served_requests(), before + 1);
    drop(d);
    sim.stop().await.unwrap();
}

#[tokio::test]
async fn a_stopped_simulator_is_an_io_error_or_timeout() {
    let sim = simulator(fast_simulator_options()).await;
    let path = sim.path().to_path_buf();
    let mut d = initialized(&sim).await;
    sim.stop().await.unwrap();
    let err = d.voltage_setpoint().await.unwrap_err();
    assert!(err.kind().is_fatal(), "{err}");
    drop(d);
    let mut again = driver(&settings(&path, DRIVER_PACING_MS, DRIVER_SETTLE_MS));
    assert!(again.initialize().await.unwrap_err().kind().is_fatal());
}

#[tokio::test]
async fn the_link_gives_a_stable_path_and_is_removed_at_stop() {
    let dir = pza_toolkit::temp::TempDir::new("kd3005p-link").expect("a temp folder");
    let link = dir.join("kd3005p");
    let sim = simulator(SimulatorOptions {
        link: Some(link.clone()),
        ..fast_simulator_options()
    })
    .await;
    assert_eq!(sim.link(), Some(link.as_path()));
    let mut d = driver(&settings(&link, DRIVER_PACING_MS, DRIVER_SETTLE_MS));
    d.initialize().await.unwrap();
    drop(d);
    sim.stop().await.unwrap();
    assert!(std::fs::symlink_metadata(&link).is_err(), "link removed");
    // Only the link was in the folder, and it is gone.
    let left: Vec<_> = std::fs::read_dir(&dir).expect("the folder").collect();
    assert!(left.is_empty(), "{left:?}");
}
