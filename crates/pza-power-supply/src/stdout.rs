//! Results written on stdout without panicking when the reader has gone.
//!
//! `println!` panics when stdout is a pipe whose reader has closed it
//! (`pza-power-supply ctl watch psu | head -3`): Rust ignores `SIGPIPE`, so
//! the write fails with `BrokenPipe`. As in ripgrep, a reader that has gone
//! is not an error: there is nobody left to tell, and the work is done.

use std::io::{self, Write as _};

/// Writes `text` on stdout and flushes it. `Ok(false)` when the reader has
/// gone (nothing more is worth printing); other write errors are returned.
pub fn print(text: &str) -> io::Result<bool> {
    let mut out = io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e),
    }
}

/// [`print`] with a newline.
pub fn line(text: impl std::fmt::Display) -> io::Result<bool> {
    print(&format!("{text}\n"))
}

/// The error for a write on stdout that failed otherwise than by its reader
/// going.
pub fn unwritable(e: io::Error) -> anyhow::Error {
    anyhow::anyhow!("cannot write on stdout: {e}")
}
