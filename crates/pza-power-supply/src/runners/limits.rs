//! The security limits guard: the one place where a requested setpoint is
//! checked against the runner's limits, before any driver call, whatever
//! interface the request came from.

use crate::drivers::{Amps, Range, Volts};
use crate::protocol::Request;

/// Resolved security limits of one runner (the config check fills in the
/// model's bound for any left out).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SecurityLimits {
    pub voltage: Range,
    pub current: Range,
}

impl SecurityLimits {
    /// Lets `request` through, or says which limit it breaks. Values are
    /// rejected, never clamped.
    pub fn check(&self, request: Request) -> Result<Request, String> {
        match request {
            Request::SetOutput(_) => Ok(request),
            Request::SetVoltage(Volts(v)) => check_one("voltage", v, self.voltage).map(|_| request),
            Request::SetCurrent(Amps(a)) => check_one("current", a, self.current).map(|_| request),
        }
    }

    /// The value a setpoint found on the device at start-up is clamped to, when
    /// it lies outside the limits (the one place values are clamped).
    pub fn clamp_voltage(&self, found: Volts) -> Option<Volts> {
        clamp(found.0, self.voltage).map(Volts)
    }

    pub fn clamp_current(&self, found: Amps) -> Option<Amps> {
        clamp(found.0, self.current).map(Amps)
    }
}

fn check_one(quantity: &str, value: f64, range: Range) -> Result<(), String> {
    if !value.is_finite() {
        return Err(format!("{quantity} {value} is not a finite number"));
    }
    if value > range.max {
        return Err(format!(
            "{quantity} {value} exceeds security_max_{quantity} {}",
            range.max
        ));
    }
    if value < range.min {
        return Err(format!(
            "{quantity} {value} is below security_min_{quantity} {}",
            range.min
        ));
    }
    Ok(())
}

fn clamp(value: f64, range: Range) -> Option<f64> {
    if range.contains(value) {
        None
    } else if value.is_nan() {
        Some(range.min)
    } else {
        Some(value.clamp(range.min, range.max))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> SecurityLimits {
        SecurityLimits {
            voltage: Range::new(0.0, 30.0),
            current: Range::new(0.1, 5.0),
        }
    }

    #[test]
    fn inside_passes_outside_is_named() {
        let l = limits();
        assert!(l.check(Request::SetVoltage(Volts(30.0))).is_ok());
        assert_eq!(
            l.check(Request::SetVoltage(Volts(31.0))).unwrap_err(),
            "voltage 31 exceeds security_max_voltage 30"
        );
        assert_eq!(
            l.check(Request::SetCurrent(Amps(0.05))).unwrap_err(),
            "current 0.05 is below security_min_current 0.1"
        );
        assert!(l.check(Request::SetOutput(true)).is_ok());
    }

    #[test]
    fn clamp_only_outside() {
        let l = limits();
        assert_eq!(l.clamp_voltage(Volts(12.0)), None);
        assert_eq!(l.clamp_voltage(Volts(31.5)), Some(Volts(30.0)));
        assert_eq!(l.clamp_current(Amps(0.0)), Some(Amps(0.1)));
    }
}
