//! Typed driver errors: a kind that callers act on, and a message for people.

use std::fmt;

/// What went wrong, in terms a caller can act on.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The link to the device failed (serial port gone, write failed).
    Io,
    /// The device did not answer in time.
    Timeout,
    /// The device answered something that cannot be understood.
    Protocol,
    /// A value outside what the device can do.
    OutOfRange,
    /// The device is not connected (not initialized, or lost).
    NotConnected,
    /// The device understood but did not do what was asked (a set that did
    /// not read back).
    Rejected,
    /// The driver's configuration cannot work.
    Config,
    /// The device ended the session on purpose (it was released): the runner
    /// answers the command, then ends cleanly and is not restarted.
    Closed,
}

impl ErrorKind {
    /// True when the link to the device is in an unknown state after this
    /// error: the runner then answers the command and ends with an error so
    /// that the supervisor restarts it with a fresh driver.
    pub fn is_fatal(self) -> bool {
        matches!(
            self,
            ErrorKind::Io | ErrorKind::Timeout | ErrorKind::NotConnected
        )
    }

    /// True when the runner must end after this error, cleanly or not.
    pub fn ends_session(self) -> bool {
        self.is_fatal() || self == ErrorKind::Closed
    }

    fn label(self) -> &'static str {
        match self {
            ErrorKind::Io => "I/O error",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Protocol => "protocol error",
            ErrorKind::OutOfRange => "out of range",
            ErrorKind::NotConnected => "not connected",
            ErrorKind::Rejected => "rejected by the device",
            ErrorKind::Config => "configuration error",
            ErrorKind::Closed => "session closed by the device",
        }
    }
}

/// An error of a power supply driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverError {
    kind: ErrorKind,
    message: String,
}

impl DriverError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        DriverError {
            kind,
            message: message.into(),
        }
    }

    pub fn io(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Io, message)
    }

    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Timeout, message)
    }

    pub fn protocol(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Protocol, message)
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for DriverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.label(), self.message)
    }
}

impl std::error::Error for DriverError {}
