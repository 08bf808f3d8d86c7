//! Power supply drivers: the trait, typed values and errors, the model trait
//! (`model`), the factory of models, and the models themselves.

mod driver;
pub mod emulator;
mod error;
pub mod factory;
pub mod kd3005p;
mod manifest;
pub mod model;
pub mod scpi;

pub use driver::PowerSupplyDriver;
pub use error::{DriverError, ErrorKind};
pub use factory::DriverFactory;
pub use manifest::{DriverManifest, Range};
pub use model::{DriverModel, DriverSettings, InstrumentUse, SettingsError};
pub use pza_power_supply_protocol::units::{Amps, Volts};
