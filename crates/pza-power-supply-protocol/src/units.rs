//! Volts and amps as distinct types, so a current is never passed as a voltage.

use std::fmt;

/// An electric potential in volts.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Default)]
pub struct Volts(pub f64);

/// An electric current in amperes.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Default)]
pub struct Amps(pub f64);

impl fmt::Display for Volts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} V", self.0)
    }
}

impl fmt::Display for Amps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} A", self.0)
    }
}
