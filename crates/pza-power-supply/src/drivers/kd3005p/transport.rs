//! Bytes to and from a KD3005P over a serial port: opening the port, pacing
//! requests, and framing replies under timeouts.
//!
//! The device has no flow control and no terminator, and it silently drops a
//! request that comes too soon after the previous one. So this layer:
//! - waits [`Timing::pacing`] after the end of each exchange before sending the
//!   next request, and [`Timing::settle_after_set`] more after a set, which
//!   the device never acknowledges;
//! - discards stale input before each request, so that a late reply or a
//!   stray byte cannot be taken for the answer to the next request;
//! - reads fixed-length replies byte-exactly and variable-length ones
//!   (`*IDN?`) until the line goes idle, every read under a timeout.
//!
//! It is generic over the [`Link`], so its timing is unit-tested with paused
//! time on an in-memory pipe; the driver uses a `tokio_serial::SerialStream`.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{sleep_until, timeout, Instant};
use tokio_serial::{
    ClearBuffer, DataBits, FlowControl, Parity, SerialPort, SerialPortType, SerialStream, StopBits,
};

use super::super::{DriverError, ErrorKind};
use super::protocol::Framing;

/// Baud rate of every unit of the family (8N1, no flow control).
pub const BAUD_RATE: u32 = 9600;

/// Time the device needs between two requests. libsigrok's
/// korad-kaxxxxp driver waits this long (`DEVICE_PROCESSING_TIME_MS`); a
/// request sent sooner is lost.
pub const DEFAULT_PACING: Duration = Duration::from_millis(80);

/// Extra time after a set, on top of the pacing: a set is not acknowledged,
/// and some units need longer to apply it before the verifying query.
pub const DEFAULT_SETTLE_AFTER_SET: Duration = Duration::from_millis(50);

/// How long to wait for the first byte of a reply, and for the rest of a
/// fixed-length reply. The device answers within a few milliseconds; this
/// leaves room for a loaded USB bus while staying well under a runner's
/// `command_timeout_ms`.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_millis(500);

/// Silence that ends a reply of variable length (`*IDN?`). At 9600 baud a
/// character takes about 1 ms, and USB adapters deliver in 1 ms frames, so
/// 50 ms of silence means the device has finished.
pub const IDLE_END_OF_REPLY: Duration = Duration::from_millis(50);

/// How long to wait for the stray byte that some firmware sends after
/// `ISET1?`. The wait overlaps the pacing that follows the exchange, so it
/// costs nothing while it is shorter than the pacing.
pub const STRAY_BYTE_WAIT: Duration = Duration::from_millis(15);

/// The timing of one runner's link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub pacing: Duration,
    pub settle_after_set: Duration,
    pub read_timeout: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            pacing: DEFAULT_PACING,
            settle_after_set: DEFAULT_SETTLE_AFTER_SET,
            read_timeout: DEFAULT_READ_TIMEOUT,
        }
    }
}

/// A byte stream to the device.
pub trait Link: AsyncRead + AsyncWrite + Unpin + Send {
    /// Drops whatever the device sent that was not read yet.
    fn discard_input(&mut self) -> io::Result<()>;
}

impl Link for SerialStream {
    fn discard_input(&mut self) -> io::Result<()> {
        // tcflush: a non-blocking syscall, safe on the runtime.
        self.clear(ClearBuffer::Input).map_err(io::Error::from)
    }
}

/// Which serial port to open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortSelector {
    /// A device path such as `/dev/ttyACM0`.
    Name(String),
    /// The USB serial port with this vendor and product id and, when given,
    /// this serial number.
    Usb {
        vid: u16,
        pid: u16,
        serial_number: Option<String>,
    },
}

/// Opens the serial port at 9600 8N1, no flow control. USB enumeration and
/// the `open` syscalls run on the blocking pool, off the async runtime.
pub async fn open_serial(selector: &PortSelector) -> Result<(String, SerialStream), DriverError> {
    open_serial_at(selector, BAUD_RATE).await
}

/// Opens the serial port at `baud_rate`, 8N1, no flow control (the SCPI
/// models share this with the KD3005P).
pub async fn open_serial_at(
    selector: &PortSelector,
    baud_rate: u32,
) -> Result<(String, SerialStream), DriverError> {
    let selector = selector.clone();
    tokio::task::spawn_blocking(move || {
        let path = match selector {
            PortSelector::Name(name) => name,
            PortSelector::Usb {
                vid,
                pid,
                serial_number,
            } => find_usb_port(vid, pid, serial_number.as_deref())?,
        };
        let builder = tokio_serial::new(&path, baud_rate)
            .data_bits(DataBits::Eight)
            .parity(Parity::None)
            .stop_bits(StopBits::One)
            .flow_control(FlowControl::None);
        let stream = SerialStream::open(&builder)
            .map_err(|e| DriverError::io(format!("cannot open serial port {path}: {e}")))?;
        Ok((path, stream))
    })
    .await
    // serialport's sysfs scan panics when /sys/class/tty is missing; the
    // panic stays on the blocking thread and becomes an error here.
    .map_err(|e| DriverError::io(format!("serial port lookup failed: {e}")))?
}

fn find_usb_port(vid: u16, pid: u16, serial_number: Option<&str>) -> Result<String, DriverError> {
    let wanted = match serial_number {
        Some(s) => format!("USB {vid:04x}:{pid:04x} with serial number {s:?}"),
        None => format!("USB {vid:04x}:{pid:04x}"),
    };
    let ports = tokio_serial::available_ports()
        .map_err(|e| DriverError::io(format!("cannot list serial ports: {e}")))?;
    let matching: Vec<String> = ports
        .into_iter()
        .filter(|port| match &port.port_type {
            SerialPortType::UsbPort(usb) => {
                usb.vid == vid
                    && usb.pid == pid
                    && serial_number.is_none_or(|s| usb.serial_number.as_deref() == Some(s))
            }
            _ => false,
        })
        .map(|port| port.port_name)
        .collect();
    match matching.as_slice() {
        // Unplugged: the runner retries under its restart policy.
        [] => Err(DriverError::new(
            ErrorKind::NotConnected,
            format!("no serial port found for {wanted}"),
        )),
        [one] => Ok(one.clone()),
        several => Err(DriverError::new(
            ErrorKind::Config,
            format!(
                "several serial ports match {wanted} ({}): set serial_port.serial_number or serial_port.name",
                several.join(", ")
            ),
        )),
    }
}

/// Requests and replies over one link, paced.
pub struct Transport<L> {
    link: L,
    port: String,
    timing: Timing,
    /// When the device is ready for the next request.
    ready_at: Option<Instant>,
}

impl<L: Link> Transport<L> {
    /// `port` names the link in error messages.
    pub fn new(link: L, port: impl Into<String>, timing: Timing) -> Self {
        Transport {
            link,
            port: port.into(),
            timing,
            ready_at: None,
        }
    }

    pub fn port(&self) -> &str {
        &self.port
    }

    /// Sends a set command, which the device does not answer.
    pub async fn send(&mut self, command: &[u8]) -> Result<(), DriverError> {
        self.write_request(command).await?;
        self.ready_at = Some(Instant::now() + self.timing.pacing + self.timing.settle_after_set);
        Ok(())
    }

    /// Sends a query and reads its reply as `framing` says. A fixed-length
    /// reply is returned with the stray bytes that came after it.
    pub async fn query(
        &mut self,
        command: &[u8],
        framing: Framing,
    ) -> Result<Vec<u8>, DriverError> {
        self.write_request(command).await?;
        let name = String::from_utf8_lossy(command);
        match framing {
            Framing::Fixed { len, stray } => {
                let mut reply = vec![0; len];
                let read =
                    timeout(self.timing.read_timeout, self.link.read_exact(&mut reply)).await;
                // The device acted on the request once its reply is here,
                // whatever comes next; pacing counts from now.
                self.ready_at = Some(Instant::now() + self.timing.pacing);
                match read {
                    Err(_) => return Err(self.timed_out(&name)),
                    Ok(Err(e)) => return Err(self.io_error(&name, e)),
                    Ok(Ok(_)) => {}
                }
                if stray > 0 {
                    let extra = self.read_until_idle(stray, STRAY_BYTE_WAIT, &name).await?;
                    if !extra.is_empty() {
                        tracing::trace!(port = %self.port, ?extra, "stray bytes after {name}");
                    }
                    reply.extend(extra);
                }
                Ok(reply)
            }
            Framing::UntilIdle { max_len } => {
                let mut first = [0u8; 1];
                let read = timeout(self.timing.read_timeout, self.link.read(&mut first)).await;
                match read {
                    Err(_) => return Err(self.timed_out(&name)),
                    Ok(Err(e)) => return Err(self.io_error(&name, e)),
                    Ok(Ok(0)) => return Err(self.closed(&name)),
                    Ok(Ok(_)) => {}
                }
                let mut reply = first.to_vec();
                let rest = max_len.saturating_sub(1);
                reply.extend(self.read_until_idle(rest, IDLE_END_OF_REPLY, &name).await?);
                self.ready_at = Some(Instant::now() + self.timing.pacing);
                Ok(reply)
            }
        }
    }

    /// Waits for the pacing, discards stale input and writes `command`.
    async fn write_request(&mut self, command: &[u8]) -> Result<(), DriverError> {
        if let Some(ready_at) = self.ready_at {
            sleep_until(ready_at).await;
        }
        let name = String::from_utf8_lossy(command).into_owned();
        self.link
            .discard_input()
            .map_err(|e| self.io_error(&name, e))?;
        let write = async {
            self.link.write_all(command).await?;
            self.link.flush().await
        };
        let written = timeout(self.timing.read_timeout, write).await;
        // Set before any early return: if this future is dropped while
        // waiting for the reply, the next request still waits for the device.
        self.ready_at = Some(Instant::now() + self.timing.pacing);
        match written {
            Err(_) => Err(self.timed_out(&name)),
            Ok(Err(e)) => Err(self.io_error(&name, e)),
            Ok(Ok(())) => Ok(()),
        }
    }

    /// Reads up to `max` bytes, until none comes for `idle`.
    async fn read_until_idle(
        &mut self,
        max: usize,
        idle: Duration,
        name: &str,
    ) -> Result<Vec<u8>, DriverError> {
        let mut bytes = Vec::new();
        let mut chunk = [0u8; 64];
        while bytes.len() < max {
            let room = (max - bytes.len()).min(chunk.len());
            match timeout(idle, self.link.read(&mut chunk[..room])).await {
                Err(_) | Ok(Ok(0)) => break,
                Ok(Ok(n)) => bytes.extend_from_slice(&chunk[..n]),
                Ok(Err(e)) => return Err(self.io_error(name, e)),
            }
        }
        Ok(bytes)
    }

    fn timed_out(&self, request: &str) -> DriverError {
        DriverError::timeout(format!(
            "no reply to {request} on {} within {} ms",
            self.port,
            self.timing.read_timeout.as_millis()
        ))
    }

    fn io_error(&self, request: &str, e: io::Error) -> DriverError {
        DriverError::io(format!("{request} on {}: {e}", self.port))
    }

    fn closed(&self, request: &str) -> DriverError {
        DriverError::io(format!("{} closed during {request}", self.port))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drivers::kd3005p::protocol::Query;
    use tokio::io::{duplex, DuplexStream};

    /// An in-memory pipe stands in for the serial port.
    impl Link for DuplexStream {
        fn discard_input(&mut self) -> io::Result<()> {
            // Reads whatever is already buffered, without waiting: a read
            // that is not ready at once ends the loop.
            struct Noop;
            impl std::task::Wake for Noop {
                fn wake(self: std::sync::Arc<Self>) {}
            }
            let waker = std::task::Waker::from(std::sync::Arc::new(Noop));
            let mut cx = std::task::Context::from_waker(&waker);
            let mut sink = [0u8; 64];
            loop {
                let mut buf = tokio::io::ReadBuf::new(&mut sink);
                match std::pin::Pin::new(&mut *self).poll_read(&mut cx, &mut buf) {
                    std::task::Poll::Ready(Ok(())) if !buf.filled().is_empty() => continue,
                    std::task::Poll::Ready(Err(e)) => return Err(e),
                    _ => return Ok(()),
                }
            }
        }
    }

    const TIMING: Timing = Timing {
        pacing: Duration::from_millis(80),
        settle_after_set: Duration::from_millis(50),
        read_timeout: Duration::from_millis(500),
    };

    fn pair() -> (Transport<DuplexStream>, DuplexStream) {
        let (ours, device) = duplex(256);
        (Transport::new(ours, "pipe", TIMING), device)
    }

    async fn receive(device: &mut DuplexStream, len: usize) -> (Vec<u8>, Instant) {
        let mut buf = vec![0; len];
        device.read_exact(&mut buf).await.unwrap();
        (buf, Instant::now())
    }

    #[tokio::test(start_paused = true)]
    async fn requests_are_paced_and_sets_settle() {
        let (mut transport, mut device) = pair();
        let device_task = tokio::spawn(async move {
            let (cmd, t0) = receive(&mut device, 6).await;
            assert_eq!(cmd, b"VSET1?");
            device.write_all(b"05.00").await.unwrap();
            let (cmd, t1) = receive(&mut device, 11).await;
            assert_eq!(cmd, b"VSET1:06.00");
            let (cmd, t2) = receive(&mut device, 6).await;
            assert_eq!(cmd, b"VSET1?");
            device.write_all(b"06.00").await.unwrap();
            (t1 - t0, t2 - t1)
        });
        let reply = transport
            .query(
                Query::VoltageSetpoint.command(),
                Query::VoltageSetpoint.framing(),
            )
            .await
            .unwrap();
        assert_eq!(reply, b"05.00");
        transport.send(b"VSET1:06.00").await.unwrap();
        let reply = transport
            .query(
                Query::VoltageSetpoint.command(),
                Query::VoltageSetpoint.framing(),
            )
            .await
            .unwrap();
        assert_eq!(reply, b"06.00");
        let (query_to_set, set_to_query) = device_task.await.unwrap();
        assert!(query_to_set >= TIMING.pacing, "{query_to_set:?}");
        assert!(
            set_to_query >= TIMING.pacing + TIMING.settle_after_set,
            "{set_to_query:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_device_times_out() {
        let (mut transport, _device) = pair();
        let started = Instant::now();
        let err = transport
            .query(Query::Status.command(), Query::Status.framing())
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Timeout);
        assert!(err.message().contains("STATUS?"), "{err}");
        assert_eq!(Instant::now() - started, TIMING.read_timeout);
    }

    #[tokio::test(start_paused = true)]
    async fn a_short_reply_times_out() {
        let (mut transport, mut device) = pair();
        let device_task = tokio::spawn(async move {
            receive(&mut device, 6).await;
            device.write_all(b"05.").await.unwrap();
            device
        });
        let err = transport
            .query(
                Query::OutputVoltage.command(),
                Query::OutputVoltage.framing(),
            )
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Timeout);
        device_task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn stale_input_is_discarded_before_a_request() {
        let (mut transport, mut device) = pair();
        device.write_all(b"junk\x00").await.unwrap();
        let device_task = tokio::spawn(async move {
            receive(&mut device, 7).await;
            device.write_all(&[0x41]).await.unwrap();
        });
        let reply = transport
            .query(Query::Status.command(), Query::Status.framing())
            .await
            .unwrap();
        assert_eq!(reply, [0x41]);
        device_task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn the_stray_byte_after_iset_is_read_with_the_reply() {
        let (mut transport, mut device) = pair();
        let device_task = tokio::spawn(async move {
            receive(&mut device, 6).await;
            device.write_all(b"1.000\x00").await.unwrap();
            receive(&mut device, 6).await;
            device.write_all(b"2.000").await.unwrap();
            device
        });
        let framing = Query::CurrentLimit.framing();
        let with_stray = transport.query(b"ISET1?", framing).await.unwrap();
        assert_eq!(with_stray, b"1.000\x00");
        let without = transport.query(b"ISET1?", framing).await.unwrap();
        assert_eq!(without, b"2.000");
        device_task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn identity_is_framed_by_silence() {
        let (mut transport, mut device) = pair();
        let device_task = tokio::spawn(async move {
            receive(&mut device, 5).await;
            device.write_all(b"KORAD ").await.unwrap();
            tokio::time::sleep(IDLE_END_OF_REPLY / 2).await;
            device.write_all(b"KD3005P V2.0").await.unwrap();
            tokio::time::sleep(IDLE_END_OF_REPLY * 2).await;
            device.write_all(b"late").await.unwrap();
            device
        });
        let reply = transport
            .query(b"*IDN?", Query::Identity.framing())
            .await
            .unwrap();
        assert_eq!(reply, b"KORAD KD3005P V2.0");
        device_task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_closed_link_is_an_io_error() {
        let (mut transport, device) = pair();
        drop(device);
        let err = transport
            .query(
                Query::VoltageSetpoint.command(),
                Query::VoltageSetpoint.framing(),
            )
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Io);
    }
}
