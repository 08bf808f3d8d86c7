//! Lines to and from one SCPI instrument over a byte stream (a TCP socket or
//! a serial port): pacing, newline framing and timeouts.
//!
//! - Each command is one line; each reply is one line ended by `\n` (a `\r`
//!   before it is dropped).
//! - After an exchange, the next command waits for the profile's pacing:
//!   some instruments drop a command that comes too soon.
//! - A query whose caller gave up (its future was dropped by a timeout)
//!   still has a reply on its way. The transport counts such replies and
//!   reads them off before the next command, so a late reply is never taken
//!   for the answer to a later query; input that no query asked for is
//!   dropped before each command, for the same reason.
//!
//! It is generic over the stream, so its timing is unit-tested with paused
//! time on an in-memory pipe.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{sleep_until, timeout, timeout_at, Instant};

use super::super::DriverError;
use super::protocol::{ProtocolError, MAX_REPLY_LEN};

/// The timing of one instrument's link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Timing {
    /// Time between the end of an exchange and the next command.
    pub pacing: Duration,
    /// How long a reply (or a write) may take.
    pub read_timeout: Duration,
}

/// How long a reply may take by default: LAN instruments answer within a few
/// milliseconds, a measurement within tens; this leaves room while staying
/// under a runner's default `command_timeout_ms` (2000).
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_millis(1000);

/// A byte stream to an instrument.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// Lines over one stream, paced.
pub struct Transport {
    stream: Box<dyn Stream>,
    /// Names the instrument in messages (`tcp 192.168.1.50:5555`).
    name: String,
    timing: Timing,
    terminator: &'static str,
    /// When the instrument is ready for the next command.
    ready_at: Option<Instant>,
    /// Bytes received and not yet returned as a line.
    buffer: Vec<u8>,
    /// Replies owed by the instrument to queries whose caller gave up.
    owed_replies: usize,
}

impl Transport {
    pub fn new(
        stream: Box<dyn Stream>,
        name: impl Into<String>,
        timing: Timing,
        terminator: &'static str,
    ) -> Self {
        Transport {
            stream,
            name: name.into(),
            timing,
            terminator,
            ready_at: None,
            buffer: Vec::new(),
            owed_replies: 0,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sends a command that the instrument does not answer.
    pub async fn send(&mut self, line: &str) -> Result<(), DriverError> {
        self.write_line(line).await
    }

    /// Sends a query and returns its reply line, without the terminator.
    pub async fn query(&mut self, line: &str) -> Result<String, DriverError> {
        self.write_line(line).await?;
        self.owed_replies += 1;
        let reply = self.read_line(line).await?;
        self.owed_replies -= 1;
        self.ready_at = Some(Instant::now() + self.timing.pacing);
        Ok(reply)
    }

    /// Reads off the replies owed, waits for the pacing and writes `line`.
    async fn write_line(&mut self, line: &str) -> Result<(), DriverError> {
        while self.owed_replies > 0 {
            let stale = self.read_line("an abandoned query").await?;
            self.owed_replies -= 1;
            tracing::debug!(instrument = %self.name, %stale, "late reply discarded");
            self.ready_at = Some(Instant::now() + self.timing.pacing);
        }
        if let Some(ready_at) = self.ready_at {
            sleep_until(ready_at).await;
        }
        self.discard_stray_input().await?;
        let mut bytes = Vec::with_capacity(line.len() + self.terminator.len());
        bytes.extend_from_slice(line.as_bytes());
        bytes.extend_from_slice(self.terminator.as_bytes());
        let deadline = Instant::now() + self.timing.read_timeout;
        let write = async {
            self.stream.write_all(&bytes).await?;
            self.stream.flush().await
        };
        let written = timeout_at(deadline, write).await;
        // Set before any early return: a caller that gives up while waiting
        // for the reply still leaves the instrument its time.
        self.ready_at = Some(Instant::now() + self.timing.pacing);
        match written {
            Err(_) => Err(self.timed_out(line)),
            Ok(Err(e)) => Err(DriverError::io(format!("{line} on {}: {e}", self.name))),
            Ok(Ok(())) => Ok(()),
        }
    }

    /// Drops input that no query asked for (an instrument answering a
    /// command sent as a set), so it is never read as the reply to the next
    /// query. Takes only what has arrived: it does not wait.
    async fn discard_stray_input(&mut self) -> Result<(), DriverError> {
        let mut stray = std::mem::take(&mut self.buffer);
        let mut chunk = [0u8; 128];
        loop {
            // A zero timeout still polls the read once: what has arrived is
            // taken, and nothing is waited for.
            match timeout(Duration::ZERO, self.stream.read(&mut chunk)).await {
                Err(_) => break,
                Ok(Ok(0)) => {
                    return Err(DriverError::io(format!(
                        "{} closed the connection",
                        self.name
                    )))
                }
                Ok(Ok(n)) => stray.extend_from_slice(&chunk[..n]),
                Ok(Err(e)) => return Err(DriverError::io(format!("{}: {e}", self.name))),
            }
        }
        if !stray.is_empty() {
            tracing::debug!(instrument = %self.name, stray = %String::from_utf8_lossy(&stray), "unasked input discarded");
        }
        Ok(())
    }

    /// Reads one line, under the read timeout.
    async fn read_line(&mut self, request: &str) -> Result<String, DriverError> {
        let deadline = Instant::now() + self.timing.read_timeout;
        loop {
            if let Some(end) = self.buffer.iter().position(|b| *b == b'\n') {
                let mut line: Vec<u8> = self.buffer.drain(..=end).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(String::from_utf8_lossy(&line).into_owned());
            }
            if self.buffer.len() > MAX_REPLY_LEN {
                let reply = String::from_utf8_lossy(&self.buffer).into_owned();
                self.buffer.clear();
                return Err(ProtocolError::BadReply {
                    query: request.to_string(),
                    expected: "a line of at most 256 bytes",
                    reply,
                }
                .into());
            }
            let mut chunk = [0u8; 128];
            match timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => return Err(self.timed_out(request)),
                Ok(Err(e)) => {
                    return Err(DriverError::io(format!(
                        "reading the reply to {request} on {}: {e}",
                        self.name
                    )))
                }
                Ok(Ok(0)) => {
                    return Err(DriverError::io(format!(
                        "{} closed the connection during {request}",
                        self.name
                    )))
                }
                Ok(Ok(n)) => self.buffer.extend_from_slice(&chunk[..n]),
            }
        }
    }

    fn timed_out(&self, request: &str) -> DriverError {
        DriverError::timeout(format!(
            "no reply to {request} from {} within {} ms",
            self.name,
            self.timing.read_timeout.as_millis()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drivers::ErrorKind;
    use tokio::io::{duplex, AsyncBufReadExt, BufReader, DuplexStream};

    const TIMING: Timing = Timing {
        pacing: Duration::from_millis(100),
        read_timeout: Duration::from_millis(500),
    };

    fn pair() -> (Transport, BufReader<DuplexStream>) {
        let (ours, instrument) = duplex(1024);
        (
            Transport::new(Box::new(ours), "pipe", TIMING, "\n"),
            BufReader::new(instrument),
        )
    }

    async fn receive(instrument: &mut BufReader<DuplexStream>) -> (String, Instant) {
        let mut line = String::new();
        instrument.read_line(&mut line).await.unwrap();
        (line, Instant::now())
    }

    #[tokio::test(start_paused = true)]
    async fn commands_are_lines_paced_after_each_exchange() {
        let (mut transport, mut instrument) = pair();
        let device = tokio::spawn(async move {
            let (set, t0) = receive(&mut instrument).await;
            let (query, t1) = receive(&mut instrument).await;
            instrument.get_mut().write_all(b"5.000\r\n").await.unwrap();
            let (next, t2) = receive(&mut instrument).await;
            (set, query, next, t1 - t0, t2 - t1)
        });
        transport.send("CH1:VOLT 5.000").await.unwrap();
        assert_eq!(transport.query("CH1:VOLT?").await.unwrap(), "5.000");
        transport.send("OUTP CH1,ON").await.unwrap();
        let (set, query, next, gap1, gap2) = device.await.unwrap();
        assert_eq!(
            (set.as_str(), query.as_str(), next.as_str()),
            ("CH1:VOLT 5.000\n", "CH1:VOLT?\n", "OUTP CH1,ON\n")
        );
        assert!(gap1 >= TIMING.pacing, "{gap1:?}");
        assert!(gap2 >= TIMING.pacing, "{gap2:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_instrument_times_out() {
        let (mut transport, _instrument) = pair();
        let started = Instant::now();
        let err = transport.query("*IDN?").await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Timeout);
        assert!(err.message().contains("*IDN?"), "{err}");
        assert_eq!(Instant::now() - started, TIMING.read_timeout);
    }

    #[tokio::test(start_paused = true)]
    async fn the_late_reply_of_an_abandoned_query_is_not_taken_for_the_next() {
        let (mut transport, mut instrument) = pair();
        let device = tokio::spawn(async move {
            receive(&mut instrument).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            instrument.get_mut().write_all(b"1.000\n").await.unwrap();
            let (query, _) = receive(&mut instrument).await;
            instrument.get_mut().write_all(b"2.000\n").await.unwrap();
            query
        });
        // The caller gives up before the reply comes.
        let abandoned =
            tokio::time::timeout(Duration::from_millis(10), transport.query("MEAS:VOLT? CH1"))
                .await;
        assert!(abandoned.is_err());
        assert_eq!(transport.query("MEAS:CURR? CH1").await.unwrap(), "2.000");
        assert_eq!(device.await.unwrap(), "MEAS:CURR? CH1\n");
    }

    #[tokio::test(start_paused = true)]
    async fn input_no_query_asked_for_is_not_taken_for_a_reply() {
        let (mut transport, mut instrument) = pair();
        let device = tokio::spawn(async move {
            receive(&mut instrument).await;
            // An answer to the set, which the driver does not expect.
            instrument.get_mut().write_all(b"1\n").await.unwrap();
            receive(&mut instrument).await;
            instrument.get_mut().write_all(b"5.000\n").await.unwrap();
        });
        transport.send("VOLT 5,(@1)").await.unwrap();
        assert_eq!(transport.query("VOLT? (@1)").await.unwrap(), "5.000");
        device.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_closed_connection_is_an_io_error() {
        let (mut transport, instrument) = pair();
        drop(instrument);
        let err = transport.query("*IDN?").await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Io);
    }

    #[tokio::test(start_paused = true)]
    async fn an_endless_line_is_a_protocol_error() {
        let (mut transport, mut instrument) = pair();
        let device = tokio::spawn(async move {
            receive(&mut instrument).await;
            instrument.get_mut().write_all(&[b'x'; 400]).await.unwrap();
            instrument
        });
        let err = transport.query("*IDN?").await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Protocol);
        device.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn serial_terminators() {
        let (ours, instrument) = duplex(1024);
        let mut transport = Transport::new(Box::new(ours), "pipe", TIMING, "\r\n");
        let mut instrument = BufReader::new(instrument);
        transport.send(":OUTP CH1,ON").await.unwrap();
        assert_eq!(receive(&mut instrument).await.0, ":OUTP CH1,ON\r\n");
    }
}
