//! The `PowerSupplyDriver` trait: what the server needs from one device.

use async_trait::async_trait;

use super::{Amps, DriverError, Volts};

/// One power supply channel.
///
/// Methods take `&mut self`: a driver owns its link and is used by one runner
/// at a time. None of them may block the async runtime; the runner bounds
/// every call with `command_timeout_ms` and drops the future when it is late,
/// so implementations must leave the link usable or report a fatal error
/// ([`ErrorKind::is_fatal`](super::ErrorKind::is_fatal)) next time.
///
/// A setpoint is not a measurement: `voltage_setpoint` is what the device was
/// told to regulate to, `measure_voltage` is what it sees at its terminals.
#[async_trait]
pub trait PowerSupplyDriver: Send {
    /// Opens the link and checks that the device answers.
    async fn initialize(&mut self) -> Result<(), DriverError>;
    /// Closes the link. The output is left as it is.
    async fn shutdown(&mut self) -> Result<(), DriverError>;
    async fn output_enabled(&mut self) -> Result<bool, DriverError>;
    async fn set_output_enabled(&mut self, enabled: bool) -> Result<(), DriverError>;
    async fn voltage_setpoint(&mut self) -> Result<Volts, DriverError>;
    async fn set_voltage_setpoint(&mut self, voltage: Volts) -> Result<(), DriverError>;
    async fn current_limit(&mut self) -> Result<Amps, DriverError>;
    async fn set_current_limit(&mut self, current: Amps) -> Result<(), DriverError>;
    async fn measure_voltage(&mut self) -> Result<Volts, DriverError>;
    async fn measure_current(&mut self) -> Result<Amps, DriverError>;
}
