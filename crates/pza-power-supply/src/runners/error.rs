//! Why a runner ended with an error: typed, carrying the runner's name, and
//! wrapping the driver's error, so that the supervisor and the log read a
//! chain such as `runner 'p': voltage failed: the device did not answer`.

use std::any::Any;

use crate::drivers::{DriverError, ErrorKind};
use pza_toolkit::mqtt::LinkClosed;

/// A runner task's error, with the runner's name.
#[derive(Debug, thiserror::Error)]
#[error("runner '{runner}'")]
pub struct RunnerError {
    pub runner: String,
    #[source]
    pub cause: Cause,
}

/// What ended a runner.
#[derive(Debug, thiserror::Error)]
pub enum Cause {
    /// A driver call failed in a way that leaves the link to the device in
    /// an unknown state (its kind ends the session).
    #[error("{what} failed")]
    Driver {
        what: String,
        #[source]
        source: DriverError,
    },
    #[error("driver initialization failed")]
    Initialization(#[source] DriverError),
    #[error("driver initialization did not finish within {timeout_ms} ms")]
    InitializationTimeout { timeout_ms: u64 },
    /// A panic in a driver call, carried out of the runner's loop so that
    /// the runner answers its pending commands before resuming it.
    #[error(transparent)]
    Panic(DriverPanic),
    #[error(transparent)]
    Publish(#[from] LinkClosed),
    #[error("MQTT connection closed")]
    ConnectionClosed,
    #[error("MQTT connection closed before it was ready")]
    ConnectionClosedBeforeReady,
    #[error("cannot read the setpoints at start-up")]
    SetpointsUnread,
    #[error("cannot clamp the {quantity} setpoint into the security limits")]
    ClampFailed { quantity: &'static str },
}

impl Cause {
    /// True when the device ended the session on purpose.
    pub fn closed_by_device(&self) -> bool {
        match self {
            Cause::Driver { source, .. } | Cause::Initialization(source) => {
                source.kind() == ErrorKind::Closed
            }
            _ => false,
        }
    }
}

/// A panic caught in a driver call.
#[derive(Debug, thiserror::Error)]
#[error("the driver panicked: {text}")]
pub struct DriverPanic {
    pub text: String,
    /// Where it happened (`file:line:column`), when the panic hook saw it.
    pub location: Option<String>,
    /// The original payload. In a mutex only to make the error `Sync`, as
    /// the task monitor's `anyhow` errors must be.
    payload: std::sync::Mutex<Option<Box<dyn Any + Send>>>,
}

impl DriverPanic {
    /// The panic whose payload is `payload`, raised at `location`.
    pub fn new(payload: Box<dyn Any + Send>, location: Option<String>) -> DriverPanic {
        DriverPanic {
            text: panic_text(payload.as_ref()),
            location,
            payload: std::sync::Mutex::new(Some(payload)),
        }
    }

    /// The payload to resume, once: the original one, or, when the location
    /// is known, the text with where it happened (`<text> (at <location>)`),
    /// so that the status's `panic_message` and the supervisor's log of the
    /// crash say where to look.
    pub fn take_payload(&self) -> Option<Box<dyn Any + Send>> {
        let payload = self
            .payload
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()?;
        Some(match &self.location {
            Some(location) => Box::new(format!("{} (at {location})", self.text)),
            None => payload,
        })
    }
}

/// The text of a panic payload (`panic!` gives a `&str` or a `String`),
/// read without consuming the payload, which is resumed afterwards.
fn panic_text(payload: &(dyn Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else if let Some(text) = payload.downcast_ref::<&'static str>() {
        (*text).to_string()
    } else {
        "panic with a non-text payload".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ended(cause: Cause) -> String {
        let error = anyhow::Error::new(RunnerError {
            runner: "p".into(),
            cause,
        });
        // The task monitor reports an error's whole chain, as `{:#}` shows it.
        format!("{error:#}")
    }

    #[test]
    fn the_chain_names_the_runner_the_operation_and_the_device_error() {
        let cause = Cause::Driver {
            what: "voltage".into(),
            source: DriverError::timeout("the device did not answer"),
        };
        assert_eq!(
            ended(cause),
            format!(
                "runner 'p': voltage failed: {}",
                DriverError::timeout("the device did not answer")
            )
        );
    }

    #[test]
    fn a_panic_reads_as_its_text() {
        let panic = DriverPanic::new(Box::new("emulator fault"), None);
        assert_eq!(
            ended(Cause::Panic(panic)),
            "runner 'p': the driver panicked: emulator fault"
        );
    }

    #[test]
    fn only_a_closed_session_is_closed_by_the_device() {
        let closed = DriverError::new(ErrorKind::Closed, "bye");
        assert!(Cause::Initialization(closed).closed_by_device());
        let io = DriverError::io("gone");
        assert!(!Cause::Initialization(io).closed_by_device());
        assert!(!Cause::ConnectionClosed.closed_by_device());
    }

    #[test]
    fn a_panic_payload_is_taken_once() {
        let panic = DriverPanic::new(Box::new(String::from("boom")), None);
        assert_eq!(panic.text, "boom");
        assert!(panic.take_payload().is_some());
        assert!(panic.take_payload().is_none());
    }

    #[test]
    fn a_resumed_panic_says_where_it_happened() {
        let panic = DriverPanic::new(Box::new("boom"), Some("src/x.rs:1:2".into()));
        assert_eq!(panic.to_string(), "the driver panicked: boom");
        let payload = panic.take_payload().expect("a payload");
        assert_eq!(
            payload.downcast_ref::<String>().map(String::as_str),
            Some("boom (at src/x.rs:1:2)")
        );
    }
}
