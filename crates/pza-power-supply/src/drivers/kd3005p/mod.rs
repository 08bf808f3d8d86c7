//! The `kd3005p` model (alias `ka3005p`): Korad KD3005P / KA3005P and its
//! rebadges (RND 320-KA3005P, Tenma 72-2540/72-2550, Velleman PS3005D) over
//! a USB serial port.
//!
//! # Layout
//!
//! - `protocol`: command strings and reply parsing, pure code over bytes;
//! - `transport`: the serial port, pacing, timeouts and reply framing;
//! - `settings`: the runner's `serial_port` and timing keys;
//! - this file: the model's manifest, and the driver that ties them.
//!
//! The device never acknowledges a set, so every set is read back (`VSET1?`,
//! `ISET1?`, `STATUS?`) and a value that did not take is `Rejected`. The
//! device state lives in the device: a fresh driver after a restart finds the
//! setpoints as they were.

pub mod protocol;
pub mod settings;
pub mod transport;

use async_trait::async_trait;
use tokio_serial::SerialStream;

use super::model::{DriverModel, DriverSettings, SettingsError};
use super::{Amps, DriverError, DriverManifest, ErrorKind, PowerSupplyDriver, Volts};
use protocol::{Query, CURRENT_DECIMALS, CURRENT_RANGE, VOLTAGE_DECIMALS, VOLTAGE_RANGE};
use settings::Kd3005pSettings;
use transport::Transport;

/// USB vendor id of the family's serial interface.
pub const USB_VID: u16 = 0x0416;

/// USB product id of the family's serial interface.
pub const USB_PID: u16 = 0x5011;

const MANIFEST: DriverManifest = DriverManifest {
    model: "kd3005p",
    aliases: &["ka3005p"],
    description: "Korad KD3005P / KA3005P (30 V, 5 A) over USB serial",
    voltage_range: VOLTAGE_RANGE,
    current_range: CURRENT_RANGE,
    voltage_decimals: VOLTAGE_DECIMALS,
    current_decimals: CURRENT_DECIMALS,
    settings: settings::KEYS,
};

/// The `kd3005p` model.
#[derive(Debug, Default)]
pub struct Kd3005pModel;

impl Kd3005pModel {
    pub fn new() -> Self {
        Kd3005pModel
    }
}

impl DriverModel for Kd3005pModel {
    fn manifest(&self) -> &DriverManifest {
        &MANIFEST
    }

    fn check_settings(&self, settings: &DriverSettings) -> Result<(), SettingsError> {
        Kd3005pSettings::parse(settings).map(|_| ())
    }

    fn instantiate(
        &self,
        runner: &str,
        settings: &DriverSettings,
    ) -> Result<Box<dyn PowerSupplyDriver>, DriverError> {
        let settings = Kd3005pSettings::parse(settings)
            .map_err(|e| DriverError::new(ErrorKind::Config, e.to_string()))?;
        Ok(Box::new(Kd3005pDriver::new(runner, settings)))
    }
}

/// A driver for one KD3005P. It opens the port at `initialize`, not before,
/// so that building it does no I/O.
pub struct Kd3005pDriver {
    runner: String,
    settings: Kd3005pSettings,
    link: Option<Transport<SerialStream>>,
    /// What the last set read back from the device, for the get that comes
    /// right after it (the runner reads every value back after a set): one
    /// paced round trip less per command. Any other request clears it.
    verified: Option<Verified>,
}

/// A setting just read back from the device by a set.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Verified {
    Value(Query, f64),
    Output(bool),
}

impl Kd3005pDriver {
    pub fn new(runner: &str, settings: Kd3005pSettings) -> Self {
        Kd3005pDriver {
            runner: runner.to_string(),
            settings,
            link: None,
            verified: None,
        }
    }

    fn link(&mut self) -> Result<&mut Transport<SerialStream>, DriverError> {
        self.link
            .as_mut()
            .ok_or_else(|| DriverError::new(ErrorKind::NotConnected, "kd3005p not initialized"))
    }

    async fn query_value(&mut self, query: Query) -> Result<f64, DriverError> {
        if let Some(Verified::Value(verified, value)) = self.verified.take() {
            if verified == query {
                return Ok(value);
            }
        }
        let reply = self.link()?.query(query.command(), query.framing()).await?;
        Ok(protocol::parse_value(query, &reply)?)
    }

    async fn status(&mut self) -> Result<protocol::Status, DriverError> {
        self.verified = None;
        let query = Query::Status;
        let reply = self.link()?.query(query.command(), query.framing()).await?;
        Ok(protocol::parse_status(&reply)?)
    }

    /// Sends a set, then reads the setting back with `query`.
    async fn set_and_verify(
        &mut self,
        command: Vec<u8>,
        query: Query,
        requested: f64,
        decimals: usize,
    ) -> Result<(), DriverError> {
        self.verified = None;
        self.link()?.send(&command).await?;
        let read_back = self.query_value(query).await?;
        if protocol::same_setting(requested, read_back, decimals) {
            self.verified = Some(Verified::Value(query, read_back));
            Ok(())
        } else {
            Err(DriverError::new(
                ErrorKind::Rejected,
                format!(
                    "{} was not applied: {} reads {read_back:.decimals$}",
                    String::from_utf8_lossy(&command),
                    query.name()
                ),
            ))
        }
    }
}

#[async_trait]
impl PowerSupplyDriver for Kd3005pDriver {
    async fn initialize(&mut self) -> Result<(), DriverError> {
        // Closes the port first, if it was open: it is opened exclusively.
        self.link = None;
        self.verified = None;
        let (port, stream) = transport::open_serial(&self.settings.port).await?;
        let mut link = Transport::new(stream, port, self.settings.timing);
        let query = Query::Identity;
        let reply = link.query(query.command(), query.framing()).await?;
        let identity = protocol::parse_identity(&reply)?;
        tracing::info!(runner = %self.runner, port = %link.port(), %identity, "kd3005p identified");
        self.link = Some(link);
        Ok(())
    }

    async fn shutdown(&mut self) -> Result<(), DriverError> {
        // Dropping the stream closes the port and clears its exclusive
        // access (serialport does TIOCNXCL on close).
        self.link = None;
        Ok(())
    }

    async fn output_enabled(&mut self) -> Result<bool, DriverError> {
        if let Some(Verified::Output(enabled)) = self.verified {
            self.verified = None;
            return Ok(enabled);
        }
        Ok(self.status().await?.output_enabled())
    }

    async fn set_output_enabled(&mut self, enabled: bool) -> Result<(), DriverError> {
        let command = protocol::set_output(enabled);
        self.verified = None;
        self.link()?.send(command).await?;
        if self.status().await?.output_enabled() == enabled {
            self.verified = Some(Verified::Output(enabled));
            Ok(())
        } else {
            Err(DriverError::new(
                ErrorKind::Rejected,
                format!(
                    "{} was not applied: STATUS? reads the output {}",
                    String::from_utf8_lossy(command),
                    if enabled { "off" } else { "on" }
                ),
            ))
        }
    }

    async fn voltage_setpoint(&mut self) -> Result<Volts, DriverError> {
        self.query_value(Query::VoltageSetpoint).await.map(Volts)
    }

    async fn set_voltage_setpoint(&mut self, voltage: Volts) -> Result<(), DriverError> {
        let command = protocol::set_voltage(voltage)?;
        self.set_and_verify(command, Query::VoltageSetpoint, voltage.0, VOLTAGE_DECIMALS)
            .await
    }

    async fn current_limit(&mut self) -> Result<Amps, DriverError> {
        self.query_value(Query::CurrentLimit).await.map(Amps)
    }

    async fn set_current_limit(&mut self, current: Amps) -> Result<(), DriverError> {
        let command = protocol::set_current(current)?;
        self.set_and_verify(command, Query::CurrentLimit, current.0, CURRENT_DECIMALS)
            .await
    }

    async fn measure_voltage(&mut self) -> Result<Volts, DriverError> {
        self.query_value(Query::OutputVoltage).await.map(Volts)
    }

    async fn measure_current(&mut self) -> Result<Amps, DriverError> {
        self.query_value(Query::OutputCurrent).await.map(Amps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drivers::DriverFactory;
    use serde_json::json;

    #[test]
    fn registered_under_its_name_and_alias() {
        let factory = DriverFactory::with_builtin_models();
        for name in ["kd3005p", "ka3005p"] {
            let model = factory.model(name).unwrap();
            assert_eq!(model.manifest().model, "kd3005p");
        }
        let manifest = Kd3005pModel::new().manifest().clone();
        assert_eq!(manifest.voltage_range, VOLTAGE_RANGE);
        assert_eq!(
            (manifest.voltage_range.min, manifest.voltage_range.max),
            (0.0, 30.0)
        );
        assert_eq!(
            (manifest.current_range.min, manifest.current_range.max),
            (0.0, 5.0)
        );
        assert_eq!(
            (manifest.voltage_decimals, manifest.current_decimals),
            (2, 3)
        );
    }

    #[tokio::test]
    async fn calls_before_initialize_are_not_connected() {
        let settings = json!({"serial_port": {"name": "/dev/null-kd3005p"}});
        let mut driver = Kd3005pModel::new()
            .instantiate("r", settings.as_object().unwrap())
            .unwrap();
        let err = driver.voltage_setpoint().await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotConnected);
    }

    #[tokio::test]
    async fn a_missing_port_is_an_io_error() {
        let settings = json!({"serial_port": {"name": "/dev/does-not-exist-kd3005p"}});
        let mut driver = Kd3005pModel::new()
            .instantiate("r", settings.as_object().unwrap())
            .unwrap();
        let err = driver.initialize().await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Io);
        assert!(
            err.message().contains("/dev/does-not-exist-kd3005p"),
            "{err}"
        );
    }

    #[test]
    fn bad_settings_are_config_errors() {
        let model = Kd3005pModel::new();
        let settings = json!({"serial_port": {}});
        assert_eq!(
            model
                .check_settings(settings.as_object().unwrap())
                .unwrap_err()
                .key,
            "serial_port"
        );
        let err = model
            .instantiate("r", settings.as_object().unwrap())
            .err()
            .unwrap();
        assert_eq!(err.kind(), ErrorKind::Config);
    }
}
