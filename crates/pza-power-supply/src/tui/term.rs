//! The terminal, taken and given back: raw mode and the alternate screen on
//! entry, the original screen restored on every exit path — a return, an
//! error, or a panic of the UI itself.
//!
//! The panic hook has two cases because the server's runners panic too (a
//! driver bug, the emulator's injected faults) on other tokio threads, while
//! the UI runs: their messages go to the log pane instead of across the
//! screen, and only a panic inside the UI's own code (marked by
//! [`InUi`] while it is polled) restores the terminal first.

use std::cell::Cell;
use std::future::Future;
use std::io::{self, Stdout};
use std::pin::Pin;
use std::sync::Once;
use std::task::{Context, Poll};

use crossterm::cursor::{Hide, Show};
use crossterm::execute;
use crossterm::terminal::{
    disable_raw_mode, enable_raw_mode, EnterAlternateScreen, LeaveAlternateScreen,
};
use ratatui::backend::CrosstermBackend;
use ratatui::Terminal;

use super::log;

thread_local! {
    /// True while this thread polls the UI's future.
    static IN_UI: Cell<bool> = const { Cell::new(false) };
}

static HOOK: Once = Once::new();

/// The terminal in raw mode on the alternate screen, restored on drop.
pub struct TerminalGuard {
    pub terminal: Terminal<CrosstermBackend<Stdout>>,
}

impl TerminalGuard {
    pub fn enter() -> io::Result<TerminalGuard> {
        install_panic_hook();
        enable_raw_mode()?;
        if let Err(e) = execute!(io::stdout(), EnterAlternateScreen, Hide) {
            restore();
            return Err(e);
        }
        match Terminal::new(CrosstermBackend::new(io::stdout())) {
            Ok(terminal) => Ok(TerminalGuard { terminal }),
            Err(e) => {
                restore();
                Err(e)
            }
        }
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        restore();
    }
}

/// Gives the terminal back as it was. Each step is tried even if one fails:
/// there is nowhere left to report a failure.
fn restore() {
    let _ = disable_raw_mode();
    let _ = execute!(io::stdout(), LeaveAlternateScreen, Show);
}

fn install_panic_hook() {
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if IN_UI.with(Cell::get) {
                restore();
                log::stop();
                previous(info);
            } else if log::is_capturing() {
                // The supervisor reports the crash (status, log line); the
                // message goes to the pane rather than across the screen.
                let place = info
                    .location()
                    .map(|l| format!(" at {}:{}", l.file(), l.line()))
                    .unwrap_or_default();
                let message = info
                    .payload()
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| info.payload().downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "(no message)".to_owned());
                tracing::error!("panic{place}: {message}");
            } else {
                previous(info);
            }
        }));
    });
}

/// Wraps the UI's future so that a panic while polling it is known to be the
/// UI's own.
pub struct InUi<F>(pub Pin<Box<F>>);

impl<F: Future> Future for InUi<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let _mark = Mark(IN_UI.with(|flag| flag.replace(true)));
        self.0.as_mut().poll(cx)
    }
}

/// Puts the flag back as it was, after the poll or during a panic's unwinding.
struct Mark(bool);

impl Drop for Mark {
    fn drop(&mut self) {
        IN_UI.with(|flag| flag.set(self.0));
    }
}
