//! # The terminal UI
//!
//! Every power supply of a server on one screen, driven with single keys,
//! through the client library (so the runner's limits guard is the one gate,
//! as for every interface). Used by `pza-power-supply tui [CONNECT]`, and by
//! `run` when stdout is a terminal.
//!
//! ## Layout
//! - [`app`]: the state and how events change it (keys, updates, answers,
//!   log lines, ticks): pure, tested without a terminal.
//! - [`draw()`]: the state on a frame, tested on ratatui's `TestBackend`.
//! - [`log`]: log lines to the pane instead of stderr while the UI runs.
//! - `term`: raw mode and the alternate screen, restored on every exit path.
//! - [`run`] (here): the event loop, which only waits: on keys, updates, the
//!   answers to commands, log lines and a slow tick; it redraws at once
//!   after a key, and after other changes at most every [`FRAME_INTERVAL`].

pub mod app;
pub mod draw;
pub mod log;
mod term;

use std::time::Duration;

use crossterm::event::{Event, EventStream};
use pza_power_supply_client::{Client, PowerSupply};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::StreamExt as _;
use tokio_util::sync::CancellationToken;

pub use app::{Action, App, Command, Outcome, Settings};
pub use draw::draw;

/// The shortest time between two redraws: a burst of updates (100 runners
/// measuring every 200 ms is 1000 a second) costs at most 10 frames a second.
pub const FRAME_INTERVAL: Duration = Duration::from_millis(100);

/// The clock tick: countdowns, the history's time axis and the connection
/// state move on, and the screen is redrawn, once a second.
pub const TICK_INTERVAL: Duration = Duration::from_secs(1);

/// Runs the UI until `q`/Ctrl+C, or until `shutdown` is cancelled; the
/// terminal is restored and logs go back to stderr when it returns. The log
/// lines of `capture` (started by the caller, early enough to catch the
/// server's start-up) fill the log pane.
pub async fn run(
    client: Client,
    settings: Settings,
    shutdown: CancellationToken,
    capture: log::Capture,
) -> anyhow::Result<()> {
    term::InUi(Box::pin(event_loop(client, settings, shutdown, capture))).await
}

async fn event_loop(
    client: Client,
    settings: Settings,
    shutdown: CancellationToken,
    mut capture: log::Capture,
) -> anyhow::Result<()> {
    let mut screen = term::TerminalGuard::enter()
        .map_err(|e| anyhow::anyhow!("cannot set up the terminal: {e}"))?;
    // Watch first, then read the stored state: an update in between is
    // applied twice (harmless: each carries the whole state), none is lost.
    let mut updates = client.watch_all();
    let mut app = App::new(settings, Instant::now().into_std());
    reload(&client, &mut app).await;
    let mut missed = 0;
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let mut keys = EventStream::new();
    let mut ticker = tokio::time::interval(TICK_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut watching = true;
    let mut dirty = true;
    // A key is answered on screen at once; updates wait for the next frame.
    let mut key_pressed = false;
    let mut last_draw: Option<Instant> = None;
    loop {
        if app.should_quit() {
            break;
        }
        let now = Instant::now();
        let next_frame = last_draw.map_or(now, |t| t + FRAME_INTERVAL);
        if dirty && (key_pressed || now >= next_frame) {
            app.now = now.into_std();
            screen
                .terminal
                .draw(|frame| draw(frame, &app))
                .map_err(|e| anyhow::anyhow!("cannot draw on the terminal: {e}"))?;
            dirty = false;
            key_pressed = false;
            last_draw = Some(now);
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            event = keys.next() => match event {
                Some(Ok(Event::Key(key))) => {
                    if let Some(Action::Send { name, command }) = app.on_key(key) {
                        let psu = client.power_supply(name.clone());
                        let done = done_tx.clone();
                        tokio::spawn(async move {
                            let result = execute(&psu, command).await;
                            // The UI may have quit meanwhile: nobody to tell.
                            let _ = done.send((name, command, result));
                        });
                    }
                    dirty = true;
                    key_pressed = true;
                }
                Some(Ok(Event::Resize(..))) => dirty = true,
                Some(Ok(_)) => {}
                Some(Err(e)) => anyhow::bail!("cannot read the terminal's input: {e}"),
                None => break,
            },
            update = updates.next(), if watching => match update {
                Some(update) => {
                    app.on_update(update, Instant::now().into_std());
                    if updates.missed() > missed {
                        // Fell behind (a burst of thousands of updates): the
                        // skipped ones may have been the first status of a
                        // supply, so reload the whole state.
                        app.on_log(format!(
                            "fell {} updates behind: state reloaded",
                            updates.missed() - missed
                        ));
                        missed = updates.missed();
                        reload(&client, &mut app).await;
                    }
                    dirty = true;
                }
                None => {
                    watching = false;
                    app.on_log("the client's connection has stopped".to_owned());
                    dirty = true;
                }
            },
            Some(line) = capture.lines.recv() => {
                app.on_log(line);
                dirty = true;
            }
            Some((name, command, result)) = done_rx.recv() => {
                app.on_done(&name, command, result);
                dirty = true;
            }
            _ = ticker.tick() => {
                app.on_tick(Instant::now().into_std(), client.is_connected());
                dirty = true;
            }
            _ = tokio::time::sleep_until(next_frame), if dirty => {}
        }
    }
    drop(screen);
    Ok(())
}

/// The state of every power supply, from the client's store.
async fn reload(client: &Client, app: &mut App) {
    match client.snapshots().await {
        Ok(snapshots) => {
            let now = Instant::now().into_std();
            for snapshot in snapshots {
                app.on_snapshot(snapshot, now);
            }
        }
        Err(e) => app.on_log(format!("cannot list the power supplies: {e}")),
    }
}

/// Carries out one command; a failure becomes the text shown (for a refusal,
/// the server's own message).
async fn execute(psu: &PowerSupply, command: Command) -> Result<Outcome, String> {
    let result = match command {
        Command::SetOutput(on) => psu.set_output(on).await.map(Outcome::Output),
        Command::SetVoltage(v) => psu.set_voltage(v).await.map(Outcome::Voltage),
        Command::SetCurrent(a) => psu.set_current(a).await.map(Outcome::Current),
        Command::Restart => psu.restart().await.map(|()| Outcome::Restarted),
    };
    result.map_err(|e| e.to_string())
}
