//! Where log lines go while the terminal UI owns the screen: into its log
//! pane instead of across the table.
//!
//! The process installs two `tracing` layers once, at start-up
//! ([`layers`]): one writes to stderr, the other into the pane's channel;
//! a dynamic filter lets exactly one of them see each event, depending on
//! whether a [`Capture`] is alive. The filter is evaluated per event (never
//! cached per call site), so switching costs one atomic load per event.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use tokio::sync::mpsc;
use tracing_subscriber::filter::dynamic_filter_fn;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// Lines waiting for the UI; more are dropped (and counted) rather than
/// blocking the task that logs.
const CHANNEL_CAPACITY: usize = 1024;

static CAPTURING: AtomicBool = AtomicBool::new(false);
static SINK: Mutex<Option<mpsc::Sender<String>>> = Mutex::new(None);

/// The log lines for the pane while it lives; on drop, logs go to stderr again.
pub struct Capture {
    pub lines: mpsc::Receiver<String>,
}

impl Capture {
    /// Sends the process's log lines here from now on.
    pub fn start() -> Capture {
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        *lock_sink() = Some(tx);
        CAPTURING.store(true, Ordering::SeqCst);
        Capture { lines: rx }
    }
}

impl Capture {
    /// Ends the capture, printing on stderr what nobody showed (when the UI
    /// could not start after all).
    pub fn release(mut self) {
        stop();
        while let Ok(line) = self.lines.try_recv() {
            eprintln!("{line}");
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        stop();
    }
}

/// Logs go to stderr again (also called by the panic hook, so that the panic
/// message is seen once the terminal is restored).
pub fn stop() {
    CAPTURING.store(false, Ordering::SeqCst);
    *lock_sink() = None;
}

pub fn is_capturing() -> bool {
    CAPTURING.load(Ordering::Relaxed)
}

fn lock_sink() -> std::sync::MutexGuard<'static, Option<mpsc::Sender<String>>> {
    // A panic while the lock was held leaves an Option that is still valid.
    SINK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The two layers: `stderr` (built by the caller, with its own format) when
/// nothing captures, the pane's otherwise.
pub fn layers<S, L>(stderr: L) -> impl Layer<S>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    L: Layer<S>,
{
    let to_stderr = stderr.with_filter(dynamic_filter_fn(|_, _| !is_capturing()));
    let to_pane = tracing_subscriber::fmt::layer()
        .with_writer(PaneWriter)
        .with_ansi(false)
        .without_time()
        .with_target(false)
        .with_filter(dynamic_filter_fn(|_, _| is_capturing()));
    to_stderr.and_then(to_pane)
}

/// Makes a [`LineBuffer`] per event.
#[derive(Clone, Copy)]
struct PaneWriter;

impl<'a> MakeWriter<'a> for PaneWriter {
    type Writer = LineBuffer;

    fn make_writer(&'a self) -> LineBuffer {
        LineBuffer(Vec::new())
    }
}

/// One formatted event, sent to the pane when dropped.
struct LineBuffer(Vec<u8>);

impl Write for LineBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LineBuffer {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.0);
        if let Some(tx) = lock_sink().as_ref() {
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                // A full channel means the UI is not keeping up: a lost log
                // line is better than a stalled runner.
                let _ = tx.try_send(line.to_owned());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn lines_go_to_the_pane_only_while_captured() {
        let stderr_lines = std::sync::Arc::new(Mutex::new(Vec::<u8>::new()));
        let sink = stderr_lines.clone();
        let stderr = tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(move || SharedVec(sink.clone()));
        let subscriber = tracing_subscriber::registry().with(layers(stderr));
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!("before");
            let mut capture = Capture::start();
            tracing::warn!("during");
            let line = capture.lines.try_recv().expect("the line reached the pane");
            assert!(line.contains("WARN") && line.ends_with("during"), "{line}");
            assert!(capture.lines.try_recv().is_err());
            drop(capture);
            tracing::info!("after");
        });
        let printed = String::from_utf8(stderr_lines.lock().unwrap().clone()).unwrap();
        assert!(printed.contains("before") && printed.contains("after"));
        assert!(!printed.contains("during"), "{printed}");
    }

    struct SharedVec(std::sync::Arc<Mutex<Vec<u8>>>);

    impl Write for SharedVec {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
}
