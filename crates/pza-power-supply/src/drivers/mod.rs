//! Power supply drivers: the trait, typed values and errors, the factory of
//! models, and the models themselves.

mod driver;
pub mod emulator;
mod error;
pub mod factory;
pub mod kd3005p;
mod manifest;
pub mod scpi;

pub use driver::PowerSupplyDriver;
pub use error::{DriverError, ErrorKind};
pub use factory::{DriverFactory, DriverModel, DriverSettings, InstrumentUse, SettingsError};
pub use manifest::{DriverManifest, Range};
pub use pza_power_supply_protocol::units::{Amps, Volts};
