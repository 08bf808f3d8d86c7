//! [`PowerSupply`]: a handle on one power supply, for commands and its state.

use std::sync::Arc;
use std::time::Duration;

use pza_power_supply_protocol::decode::{Kind, Message};
use pza_power_supply_protocol::{Attribute, Topics};
use serde_json::{Map, Value};
use tokio::time::Instant;

use crate::client::{check_name, Inner};
use crate::error::{Error, Result};
use crate::state::Snapshot;
use crate::watch::Watch;

/// Both values of a measurement asked with [`PowerSupply::measure`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Measurement {
    /// Volts.
    pub voltage: f64,
    /// Amps.
    pub current: f64,
}

/// A handle on one power supply, made by [`Client::power_supply`](crate::Client::power_supply).
/// Cheap to clone; many commands may be in flight at once, from one handle or many.
///
/// Every command carries a `pza_id` of its own and returns when the reply
/// with that id arrives: the value read back from the device, or
/// [`Error::Rejected`] with the server's message. The client is subscribed
/// before anything is published, so no reply is missed.
///
/// ```no_run
/// use pza_power_supply_client::{Client, ClientOptions, Error};
///
/// # async fn demo(client: Client) -> Result<(), Error> {
/// let psu = client.power_supply("psu-1");
/// psu.disable_output().await?;
/// psu.set_current(0.5).await?;
/// let volts = psu.set_voltage(5.0).await?; // what the device took, e.g. 5.0
/// psu.enable_output().await?;
/// let m = psu.measure().await?;
/// println!("{volts} V set, {} V / {} A measured", m.voltage, m.current);
/// match psu.set_voltage(31.0).await {
///     Err(Error::Rejected { message }) => eprintln!("refused: {message}"),
///     other => println!("{other:?}"),
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct PowerSupply {
    inner: Arc<Inner>,
    name: String,
    topics: Topics,
    timeout: Duration,
}

impl std::fmt::Debug for PowerSupply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PowerSupply")
            .field("name", &self.name)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl PowerSupply {
    pub(crate) fn new(inner: Arc<Inner>, name: String) -> PowerSupply {
        let topics = Topics::new(inner.shared.namespace.as_deref(), &name);
        let timeout = inner.timeout;
        PowerSupply {
            inner,
            name,
            topics,
            timeout,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The same handle, with another time allowed for each reply.
    pub fn with_timeout(mut self, timeout: Duration) -> PowerSupply {
        self.timeout = timeout;
        self
    }

    /// Sets the voltage setpoint; returns the setpoint read back from the
    /// device (rounded to its precision). A setpoint is not a measurement.
    pub async fn set_voltage(&self, volts: f64) -> Result<f64> {
        let value = decimal("voltage", volts)?;
        match self.send(Attribute::Voltage, value, Kind::Voltage).await? {
            Message::Voltage(v) => Ok(v),
            other => Err(unexpected(other)),
        }
    }

    /// Sets the current limit; returns the limit read back from the device.
    pub async fn set_current(&self, amps: f64) -> Result<f64> {
        let value = decimal("current", amps)?;
        match self.send(Attribute::Current, value, Kind::Current).await? {
            Message::Current(a) => Ok(a),
            other => Err(unexpected(other)),
        }
    }

    /// Turns the output on (`true`) or off; returns the state read back.
    pub async fn set_output(&self, on: bool) -> Result<bool> {
        let value = Value::String(if on { "ON" } else { "OFF" }.into());
        match self.send(Attribute::State, value, Kind::State).await? {
            Message::State(on) => Ok(on),
            other => Err(unexpected(other)),
        }
    }

    /// Turns the output on; returns the state read back (`true`: on).
    pub async fn enable_output(&self) -> Result<bool> {
        self.set_output(true).await
    }

    /// Turns the output off; returns the state read back (`false`: off).
    pub async fn disable_output(&self) -> Result<bool> {
        self.set_output(false).await
    }

    /// Restarts the runner now (also revives a `Failed` one). Returns once
    /// the server has scheduled it; [`watch`](Self::watch) shows it coming
    /// back to `Running`.
    pub async fn restart(&self) -> Result<()> {
        check_name(&self.name)?;
        self.inner
            .shared
            .command(
                &self.name,
                self.topics.restart_command(),
                Map::new(),
                Kind::Status,
                self.timeout,
            )
            .await
            .map(drop)
    }

    /// Measures now: both values, fresh from the device.
    pub async fn measure(&self) -> Result<Measurement> {
        check_name(&self.name)?;
        let reply = self
            .inner
            .shared
            .command(
                &self.name,
                self.topics.measure_command(),
                Map::new(),
                Kind::Measure,
                self.timeout,
            )
            .await?;
        match reply {
            Message::Measure { voltage, current } => Ok(Measurement { voltage, current }),
            other => Err(unexpected(other)),
        }
    }

    /// The latest known state, from what the client has received (no request
    /// to the device). Fails with [`Error::UnknownDevice`] if the power
    /// supply has never been seen on the broker.
    pub async fn snapshot(&self) -> Result<Snapshot> {
        check_name(&self.name)?;
        self.inner
            .shared
            .wait_ready(Instant::now() + self.timeout, self.timeout)
            .await?;
        self.inner
            .shared
            .with_store(|store| store.get(&self.name).cloned())
            .ok_or_else(|| Error::UnknownDevice {
                name: self.name.clone(),
            })
    }

    /// The updates of this power supply, from now on: statuses, values read
    /// back, measurements and errors, each with the state after it.
    pub fn watch(&self) -> Watch {
        Watch::new(self.inner.clone(), Some(self.name.clone()))
    }

    async fn send(&self, attribute: Attribute, value: Value, expect: Kind) -> Result<Message> {
        check_name(&self.name)?;
        let mut fields = Map::new();
        fields.insert(attribute.name().into(), value);
        self.inner
            .shared
            .command(
                &self.name,
                self.topics.command(attribute),
                fields,
                expect,
                self.timeout,
            )
            .await
    }
}

/// A finite value as a JSON string holding a plain decimal: the form the
/// original Panduza clients use, and one that keeps every digit (`f64`'s
/// `Display` is the shortest exact form, never with an exponent).
fn decimal(field: &'static str, value: f64) -> Result<Value> {
    if !value.is_finite() {
        return Err(Error::InvalidArgument {
            field,
            reason: format!("{value} is not a finite number"),
        });
    }
    // -0.0 == 0.0: sends "0" rather than "-0".
    let value = if value == 0.0 { 0.0 } else { value };
    Ok(Value::String(value.to_string()))
}

/// A reply is awaited on one topic, whose payload decodes to one kind of
/// message; anything else is a bug, reported rather than panicking.
fn unexpected(message: Message) -> Error {
    Error::Protocol(format!("unexpected reply: {message:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_sent_as_plain_decimals() {
        assert_eq!(decimal("voltage", 5.0).unwrap(), Value::String("5".into()));
        assert_eq!(
            decimal("voltage", 0.1).unwrap(),
            Value::String("0.1".into())
        );
        assert_eq!(decimal("voltage", -0.0).unwrap(), Value::String("0".into()));
        assert_eq!(
            decimal("current", 1e-7).unwrap(),
            Value::String("0.0000001".into())
        );
        let err = decimal("current", f64::NAN).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid current: NaN is not a finite number"
        );
        assert!(decimal("voltage", f64::INFINITY).is_err());
    }
}
