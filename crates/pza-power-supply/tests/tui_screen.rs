//! The terminal UI without a terminal: the pure `App` driven by events, drawn
//! into ratatui's `TestBackend`, and the buffer read back (text and colours).

use std::time::{Duration, Instant};

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use pza_power_supply::tui::app::{Field, Mode, NoticeKind};
use pza_power_supply::tui::{draw, Action, App, Command, Outcome, Settings};
use pza_power_supply_client::{Change, InfoReport, Snapshot, Status, StatusReport, Update};
use ratatui::backend::TestBackend;
use ratatui::buffer::Buffer;
use ratatui::style::{Color, Modifier};
use ratatui::Terminal;

fn info(model: &str, max_v: f64, max_a: f64) -> InfoReport {
    InfoReport {
        model: model.into(),
        description: format!("{model} supply"),
        security_min_voltage: 0.0,
        security_max_voltage: max_v,
        security_min_current: 0.0,
        security_max_current: max_a,
        voltage_decimals: 2,
        current_decimals: 3,
    }
}

fn running(name: &str) -> Snapshot {
    Snapshot {
        name: name.into(),
        status: Some(Status::Running),
        restarts: 0,
        output: Some(false),
        voltage: Some(0.0),
        current: Some(1.0),
        measured_voltage: Some(0.0),
        measured_current: Some(0.0),
        info: Some(info("emulator", 30.0, 5.0)),
        ..Snapshot::default()
    }
}

fn app_with(names: &[&str], now: Instant) -> App {
    let mut app = App::new(
        Settings {
            source: "127.0.0.1:1883".into(),
            ..Settings::default()
        },
        now,
    );
    for name in names {
        app.on_snapshot(running(name), now);
    }
    app
}

/// An update of `name` whose state is its current one with `change` applied
/// as the client would.
fn update(app: &App, name: &str, change: Change) -> Update {
    let mut snapshot = app
        .devices
        .get(name)
        .map(|d| d.snapshot.clone())
        .unwrap_or_else(|| Snapshot {
            name: name.into(),
            ..Snapshot::default()
        });
    match &change {
        Change::Status(r) => {
            snapshot.status = Some(r.status);
            snapshot.restarts = r.restarts;
            snapshot.panic_message = r.panic_message.clone();
            snapshot.next_restart_ms = r.next_restart_ms;
        }
        Change::Output(on) => snapshot.output = Some(*on),
        Change::Voltage(v) => snapshot.voltage = Some(*v),
        Change::Current(a) => snapshot.current = Some(*a),
        Change::MeasuredVoltage(v) => snapshot.measured_voltage = Some(*v),
        Change::MeasuredCurrent(a) => snapshot.measured_current = Some(*a),
        Change::Measured { voltage, current } => {
            snapshot.measured_voltage = Some(*voltage);
            snapshot.measured_current = Some(*current);
        }
        Change::Info(i) => snapshot.info = Some(i.clone()),
        Change::Error(m) => snapshot.last_error = Some(m.clone()),
    }
    Update {
        name: name.into(),
        pza_id: None,
        change,
        snapshot,
    }
}

fn status(status: Status, restarts: u32, panic: Option<&str>, next_ms: Option<u64>) -> Change {
    let mut report = StatusReport::new(status, restarts);
    report.panic_message = panic.map(str::to_owned);
    report.next_restart_ms = next_ms;
    Change::Status(report)
}

fn render(app: &App, width: u16, height: u16) -> Buffer {
    let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
    terminal.draw(|frame| draw(frame, app)).unwrap();
    terminal.backend().buffer().clone()
}

fn lines(buffer: &Buffer) -> Vec<String> {
    let area = buffer.area;
    (0..area.height)
        .map(|y| {
            (0..area.width)
                .map(|x| buffer.cell((x, y)).unwrap().symbol())
                .collect::<String>()
        })
        .collect()
}

fn screen(buffer: &Buffer) -> String {
    lines(buffer).join("\n")
}

/// Where `text` starts on the screen (column counted in cells).
fn find(buffer: &Buffer, text: &str) -> Option<(u16, u16)> {
    let first = text.chars().next()?.to_string();
    let area = buffer.area;
    for y in 0..area.height {
        for x in 0..area.width {
            let matches = text.chars().enumerate().all(|(i, c)| {
                buffer
                    .cell((x + i as u16, y))
                    .is_some_and(|cell| cell.symbol() == c.to_string())
            });
            if matches && buffer.cell((x, y)).unwrap().symbol() == first {
                return Some((x, y));
            }
        }
    }
    None
}

fn fg_of(buffer: &Buffer, text: &str) -> Color {
    let at = find(buffer, text).unwrap_or_else(|| panic!("{text:?} not on\n{}", screen(buffer)));
    buffer.cell(at).unwrap().fg
}

fn row_of<'a>(lines: &'a [String], name: &str) -> &'a str {
    lines
        .iter()
        .find(|l| l.contains(&format!(" {name} ")))
        .unwrap_or_else(|| panic!("no row for {name} in\n{}", lines.join("\n")))
}

fn key(code: KeyCode) -> KeyEvent {
    KeyEvent::new(code, KeyModifiers::NONE)
}

fn type_text(app: &mut App, text: &str) {
    for c in text.chars() {
        assert_eq!(app.on_key(key(KeyCode::Char(c))), None);
    }
}

#[test]
fn the_table_has_a_row_per_supply_with_values_and_units() {
    let now = Instant::now();
    let mut app = app_with(&["psu-1", "psu-2", "bench-12v"], now);
    for change in [
        Change::Output(true),
        Change::Voltage(5.0),
        Change::Current(0.5),
        Change::Measured {
            voltage: 4.98,
            current: 0.12,
        },
    ] {
        let u = update(&app, "psu-1", change);
        app.on_update(u, now);
    }
    let buffer = render(&app, 80, 24);
    let lines = lines(&buffer);
    let text = lines.join("\n");
    for header in [
        "Name", "Model", "Status", "Rst", "Out", "Set V", "Set A", "Meas V", "Meas A",
    ] {
        assert!(text.contains(header), "{header} missing in\n{text}");
    }
    let row = row_of(&lines, "psu-1");
    for cell in [
        "emulator", "Running", "ON", "5.00 V", "0.500 A", "4.98 V", "0.120 A",
    ] {
        assert!(row.contains(cell), "{cell} missing in {row:?}");
    }
    let row = row_of(&lines, "psu-2");
    for cell in ["OFF", "0.00 V", "1.000 A"] {
        assert!(row.contains(cell), "{cell} missing in {row:?}");
    }
    assert!(text.contains("Power supplies (3)"), "{text}");
    assert!(text.contains("3 supplies") && text.contains("127.0.0.1:1883"));
    // Sorted by name; the first one seen stays selected as others appear.
    assert!(row_of(&lines, "psu-1").contains("▶ psu-1"), "{text}");
    assert!(find(&buffer, "bench-12v").unwrap().1 < find(&buffer, "psu-1").unwrap().1);
    assert_eq!(fg_of(&buffer, "ON "), Color::Green);
}

#[test]
fn statuses_are_coloured_and_a_restart_counts_down() {
    let now = Instant::now();
    let mut app = app_with(
        &[
            "a-run",
            "b-fail",
            "c-restart",
            "d-panic",
            "e-init",
            "f-stop",
        ],
        now,
    );
    for (name, change) in [
        ("b-fail", status(Status::Failed, 3, Some("gave up"), None)),
        (
            "c-restart",
            status(Status::Restarting, 2, Some("boom"), Some(2500)),
        ),
        ("d-panic", status(Status::Panicking, 1, Some("boom"), None)),
        ("e-init", status(Status::Initializing, 0, None, None)),
        ("f-stop", status(Status::Stopped, 0, None, None)),
    ] {
        let u = update(&app, name, change);
        app.on_update(u, now);
    }
    let buffer = render(&app, 80, 24);
    assert_eq!(fg_of(&buffer, "Running"), Color::Green);
    assert_eq!(fg_of(&buffer, "Failed"), Color::Red);
    assert_eq!(fg_of(&buffer, "Restart 3s"), Color::Yellow);
    assert_eq!(fg_of(&buffer, "Panicking"), Color::Magenta);
    assert_eq!(fg_of(&buffer, "Initializing"), Color::Cyan);
    assert_eq!(fg_of(&buffer, "Stopped"), Color::DarkGray);
    let lines = lines(&buffer);
    assert!(
        row_of(&lines, "b-fail").contains("Failed         3 OFF"),
        "{lines:?}"
    );

    app.on_tick(now + Duration::from_millis(1600), true);
    let text = screen(&render(&app, 80, 24));
    assert!(text.contains("Restart 1s"), "{text}");
    app.on_tick(now + Duration::from_millis(2600), true);
    assert!(screen(&render(&app, 80, 24)).contains("Restart 0s"));
}

#[test]
fn the_detail_pane_shows_the_panic_then_keeps_it_after_recovery() {
    let now = Instant::now();
    let mut app = app_with(&["psu-1"], now);
    let u = update(
        &app,
        "psu-1",
        status(Status::Restarting, 1, Some("injected fault"), Some(1000)),
    );
    app.on_update(u, now);
    let buffer = render(&app, 80, 24);
    let text = screen(&buffer);
    assert!(text.contains("panic: injected fault"), "{text}");
    assert_eq!(fg_of(&buffer, "panic:"), Color::Red);
    assert!(
        text.contains("psu-1: Restarting: injected fault"),
        "log: {text}"
    );

    let u = update(&app, "psu-1", status(Status::Running, 1, None, None));
    app.on_update(u, now + Duration::from_secs(1));
    let text = screen(&render(&app, 80, 24));
    assert!(text.contains("last panic: injected fault"), "{text}");
    assert!(
        text.contains("Running · restarts 1 · output OFF · limits 0–30 V 0–5 A"),
        "{text}"
    );

    let u = update(
        &app,
        "psu-1",
        Change::Error("voltage 31 exceeds security_max_voltage 30".into()),
    );
    app.on_update(u, now + Duration::from_secs(2));
    let text = screen(&render(&app, 80, 24));
    assert!(
        text.contains("last error: voltage 31 exceeds security_max_voltage 30"),
        "{text}"
    );
}

#[test]
fn measured_values_are_drawn_over_the_last_minutes() {
    let now = Instant::now();
    let mut app = app_with(&["psu-1"], now);
    // A ramp over two minutes, one sample every 2 s.
    for i in 0..60u64 {
        let at = now + Duration::from_secs(2 * i);
        let change = Change::Measured {
            voltage: i as f64 / 10.0,
            current: 0.1,
        };
        let u = update(&app, "psu-1", change);
        app.on_update(u, at);
    }
    app.on_tick(now + Duration::from_secs(120), true);
    let buffer = render(&app, 80, 24);
    let lines = lines(&buffer);
    let volts = lines
        .iter()
        .find(|l| l.contains("│V 5.90 V"))
        .unwrap_or_else(|| {
            panic!("no voltage line in\n{}", lines.join("\n"));
        });
    assert!(volts.contains("0.00–5.90 (3 min)"), "{volts}");
    // The ramp: low bars before high ones, and the newest column full.
    let low = volts.find('▁').expect("a low bar");
    let full = volts.rfind('█').expect("a full bar");
    assert!(low < full, "{volts}");
    let amps = lines
        .iter()
        .find(|l| l.contains("│I 0.100 A"))
        .expect("current line");
    // Flat at 0.1 A after the first 0 A sample: full bars.
    assert!(amps.contains("███") && amps.contains("0.00–0.10"), "{amps}");
}

#[test]
fn keys_move_the_selection() {
    let now = Instant::now();
    let mut app = app_with(&["a", "b", "c"], now);
    assert_eq!(app.selected(), Some("a"));
    app.on_key(key(KeyCode::Down));
    app.on_key(key(KeyCode::Char('j')));
    assert_eq!(app.selected(), Some("c"));
    app.on_key(key(KeyCode::Char('j')));
    assert_eq!(app.selected(), Some("c"), "stays on the last");
    app.on_key(key(KeyCode::Up));
    assert_eq!(app.selected(), Some("b"));
    app.on_key(key(KeyCode::Char('k')));
    app.on_key(key(KeyCode::Char('k')));
    assert_eq!(app.selected(), Some("a"));
    app.on_key(key(KeyCode::End));
    let lines = lines(&render(&app, 80, 24));
    assert!(row_of(&lines, "c").contains("▶ c"), "{lines:?}");
}

#[test]
fn the_toggle_key_switches_the_output_and_is_configurable() {
    let now = Instant::now();
    let mut app = App::new(
        Settings {
            toggle_key: 'o',
            ..Settings::default()
        },
        now,
    );
    app.on_snapshot(running("psu-1"), now);
    assert_eq!(
        app.on_key(key(KeyCode::Char('p'))),
        None,
        "p is not the key"
    );
    assert_eq!(
        app.on_key(key(KeyCode::Char('o'))),
        Some(Action::Send {
            name: "psu-1".into(),
            command: Command::SetOutput(true)
        })
    );
    let text = screen(&render(&app, 80, 24));
    assert!(text.contains("psu-1: switching the output ON…"), "{text}");
    assert!(text.contains("o output"), "help bar names the key: {text}");
    app.on_done("psu-1", Command::SetOutput(true), Ok(Outcome::Output(true)));
    let u = update(&app, "psu-1", Change::Output(true));
    app.on_update(u, now);
    assert_eq!(
        app.on_key(key(KeyCode::Char('o'))),
        Some(Action::Send {
            name: "psu-1".into(),
            command: Command::SetOutput(false)
        })
    );

    // An output not published yet is not guessed.
    let mut unknown = running("psu-2");
    unknown.output = None;
    app.on_snapshot(unknown, now);
    app.on_key(key(KeyCode::Down));
    assert_eq!(app.on_key(key(KeyCode::Char('o'))), None);
    assert!(screen(&render(&app, 80, 24)).contains("psu-2: its output state is not known yet"));
}

#[test]
fn the_input_field_sends_a_setpoint_on_enter() {
    let now = Instant::now();
    let mut app = app_with(&["psu-1"], now);
    assert_eq!(app.on_key(key(KeyCode::Char('v'))), None);
    type_text(&mut app, "5.5");
    let buffer = render(&app, 80, 24);
    let bottom = lines(&buffer).pop().unwrap();
    assert!(bottom.starts_with("psu-1 voltage (V): 5.5█"), "{bottom}");
    assert!(bottom.contains("Enter send") && bottom.contains("Esc cancel"));
    assert_eq!(
        app.on_key(key(KeyCode::Enter)),
        Some(Action::Send {
            name: "psu-1".into(),
            command: Command::SetVoltage(5.5)
        })
    );
    assert_eq!(app.mode, Mode::Normal);

    app.on_key(key(KeyCode::Char('c')));
    type_text(&mut app, "0.25 A");
    assert_eq!(
        app.on_key(key(KeyCode::Enter)),
        Some(Action::Send {
            name: "psu-1".into(),
            command: Command::SetCurrent(0.25)
        })
    );

    // Esc cancels; Backspace edits.
    app.on_key(key(KeyCode::Char('v')));
    type_text(&mut app, "12");
    app.on_key(key(KeyCode::Backspace));
    match &app.mode {
        Mode::Input(input) => {
            assert_eq!((input.field, input.text.as_str()), (Field::Voltage, "1"))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(app.on_key(key(KeyCode::Esc)), None);
    assert_eq!(app.mode, Mode::Normal);
    assert!(screen(&render(&app, 80, 24)).contains("psu-1: voltage unchanged"));
}

#[test]
fn invalid_text_is_refused_in_the_field() {
    let now = Instant::now();
    let mut app = app_with(&["psu-1"], now);
    for (text, reason) in [
        ("abc", "\"abc\" is not a number of volts"),
        ("5V5", "\"5V5\" is not a number of volts"),
        ("inf", "\"inf\" is not a number of volts"),
        ("1e3", "\"1e3\" is not a number of volts"),
        ("", "type the voltage in volts, or Esc to cancel"),
    ] {
        app.on_key(key(KeyCode::Char('v')));
        type_text(&mut app, text);
        assert_eq!(app.on_key(key(KeyCode::Enter)), None, "{text:?} was sent");
        let buffer = render(&app, 80, 24);
        let notice = &lines(&buffer)[22];
        assert!(notice.starts_with(reason), "{text:?}: {notice:?}");
        assert_eq!(fg_of(&buffer, reason), Color::Red);
        assert!(matches!(app.mode, Mode::Input(_)), "the field stays open");
        app.on_key(key(KeyCode::Esc));
    }
    // The field takes any character, so `q` is text there, not quit.
    app.on_key(key(KeyCode::Char('v')));
    type_text(&mut app, "q");
    assert!(!app.should_quit());
}

#[test]
fn a_refusal_by_the_server_shows_its_message() {
    let now = Instant::now();
    let mut app = app_with(&["psu-1"], now);
    let message = "voltage 31 exceeds security_max_voltage 30";
    // The P/error update arrives before the command's answer.
    let u = update(&app, "psu-1", Change::Error(message.into()));
    app.on_update(u, now);
    app.on_done("psu-1", Command::SetVoltage(31.0), Err(message.into()));
    let buffer = render(&app, 80, 24);
    let refused = format!("psu-1: voltage 31 V refused: {message}");
    assert!(
        lines(&buffer)[22].starts_with(&refused),
        "{}",
        screen(&buffer)
    );
    // The notice line (the log has the same text, without bold).
    let cell = buffer.cell((0, 22)).unwrap();
    assert_eq!(cell.fg, Color::Red);
    assert!(cell.modifier.contains(Modifier::BOLD));
    assert_eq!(app.notice.as_ref().unwrap().kind, NoticeKind::Error);
    // Logged once, not once per channel it came by, in either order.
    let logged: Vec<_> = app.log.iter().filter(|l| l.contains(message)).collect();
    assert_eq!(logged, [&refused], "{:?}", app.log);
    app.on_done("psu-1", Command::SetVoltage(31.0), Err(message.into()));
    let u = update(&app, "psu-1", Change::Error(message.into()));
    app.on_update(u, now);
    let logged = app.log.iter().filter(|l| l.contains(message)).count();
    assert_eq!(logged, 2, "{:?}", app.log);

    app.on_done("psu-1", Command::SetVoltage(5.0), Ok(Outcome::Voltage(5.0)));
    let buffer = render(&app, 80, 24);
    assert!(lines(&buffer)[22].starts_with("psu-1: voltage set to 5.00 V"));
    assert_eq!(buffer.cell((0, 22)).unwrap().fg, Color::Green);
}

#[test]
fn every_pane_fits_at_80_by_24_and_the_table_scrolls() {
    let now = Instant::now();
    let names: Vec<String> = (0..12).map(|i| format!("psu-{i:02}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut app = app_with(&refs, now);
    app.on_log("INFO a log line".into());
    app.on_key(key(KeyCode::End));
    let buffer = render(&app, 80, 24);
    let lines = lines(&buffer);
    let text = lines.join("\n");
    assert!(lines[0].contains("pza-power-supply"), "{text}");
    assert!(lines[1].contains("Power supplies (12)"), "{text}");
    assert!(
        lines.iter().any(|l| l.contains("psu-11 · emulator supply")),
        "detail: {text}"
    );
    assert!(lines.iter().any(|l| l.contains("Log")), "{text}");
    assert!(text.contains("INFO a log line"), "{text}");
    assert!(lines[23].starts_with("↑↓ select p output v volts c amps r restart ? help q quit"));
    // The selection, the last row, is visible; the first rows scrolled away.
    assert!(row_of(&lines, "psu-11").contains("▶ psu-11"), "{text}");
    assert!(!text.contains(" psu-00 "), "{text}");
    // Not wide enough for the limits column; 120 columns are.
    assert!(!lines[2].contains("Limits"));
    let wide = render(&app, 120, 30);
    let wide_lines = self::lines(&wide);
    assert!(
        wide_lines[2].contains("Limits"),
        "{}",
        wide_lines.join("\n")
    );
    assert!(row_of(&wide_lines, "psu-11").contains("0–30 V 0–5 A"));
    // Tiny terminals do not crash.
    for (w, h) in [(20, 5), (1, 1), (80, 10)] {
        render(&app, w, h);
    }
}

#[test]
fn the_log_pane_shows_the_newest_lines() {
    let now = Instant::now();
    let mut app = app_with(&["psu-1"], now);
    for i in 0..50 {
        app.on_log(format!("line {i:02}"));
    }
    let text = screen(&render(&app, 80, 24));
    assert!(
        text.contains("line 49") && !text.contains("line 10"),
        "{text}"
    );
    for i in 0..2000 {
        app.on_log(format!("more {i}"));
    }
    assert_eq!(app.log.len(), pza_power_supply::tui::app::LOG_CAPACITY);
}

#[test]
fn help_lists_every_key_and_any_key_closes_it() {
    let now = Instant::now();
    let mut app = App::new(
        Settings {
            toggle_key: 'o',
            embedded: true,
            ..Settings::default()
        },
        now,
    );
    app.on_snapshot(running("psu-1"), now);
    app.on_key(key(KeyCode::Char('?')));
    let text = screen(&render(&app, 80, 24));
    for entry in [
        "Keys",
        "select a power supply",
        "o  switch the output on / off",
        "v  type a voltage setpoint",
        "c  type a current limit",
        "send the value / cancel",
        "r  restart the runner",
        "q  Ctrl+C  quit: stops the server gracefully",
    ] {
        assert!(text.contains(entry), "{entry} missing in\n{text}");
    }
    assert_eq!(app.on_key(key(KeyCode::Char('x'))), None);
    assert_eq!(app.mode, Mode::Normal);
    assert!(!screen(&render(&app, 80, 24)).contains("select a power supply"));
    assert!(screen(&render(&app, 80, 24)).contains("q quit (stops the server)"));
}

#[test]
fn q_and_ctrl_c_quit_and_r_restarts() {
    let now = Instant::now();
    let mut app = app_with(&["psu-1"], now);
    assert_eq!(
        app.on_key(key(KeyCode::Char('r'))),
        Some(Action::Send {
            name: "psu-1".into(),
            command: Command::Restart
        })
    );
    assert_eq!(app.on_key(key(KeyCode::Char('q'))), Some(Action::Quit));
    assert!(app.should_quit());

    let mut app = app_with(&["psu-1"], now);
    app.on_key(key(KeyCode::Char('v')));
    let ctrl_c = KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL);
    assert_eq!(app.on_key(ctrl_c), Some(Action::Quit), "even in the field");
    assert!(app.should_quit());

    // Without any supply, acting keys say so.
    let mut empty = app_with(&[], now);
    assert_eq!(empty.on_key(key(KeyCode::Char('r'))), None);
    let text = screen(&render(&empty, 80, 24));
    assert!(text.contains("no power supply to act on"), "{text}");
    assert!(
        text.contains("No power supply seen on the broker yet."),
        "{text}"
    );
}

#[test]
fn a_lost_connection_is_shown() {
    let now = Instant::now();
    let mut app = app_with(&["psu-1"], now);
    app.on_tick(now, false);
    let buffer = render(&app, 80, 24);
    assert_eq!(fg_of(&buffer, "disconnected: retrying"), Color::Red);
    app.on_tick(now, true);
    let text = screen(&render(&app, 80, 24));
    assert!(text.contains("connection to the broker restored"), "{text}");
}

#[test]
fn a_stray_error_for_an_unknown_name_adds_no_row() {
    let now = Instant::now();
    let mut app = app_with(&["psu-1"], now);
    let u = update(&app, "ghost", Change::Error("x".into()));
    app.on_update(u, now);
    assert_eq!(app.devices.len(), 1);
    let u = update(&app, "late", status(Status::Initializing, 0, None, None));
    app.on_update(u, now);
    assert_eq!(app.devices.len(), 2);
}

#[test]
fn a_reload_from_the_store_keeps_a_running_countdown() {
    let now = Instant::now();
    let mut app = app_with(&["psu-1"], now);
    let u = update(
        &app,
        "psu-1",
        status(Status::Restarting, 1, Some("boom"), Some(5000)),
    );
    app.on_update(u, now);
    // The UI fell behind and reloads the state 3 s later: the store still
    // says 5000 ms, but the restart is 2 s away, not 5.
    let stored = app.devices["psu-1"].snapshot.clone();
    app.on_snapshot(stored, now + Duration::from_secs(3));
    assert!(screen(&render(&app, 80, 24)).contains("Restart 2s"));
    // A new restart (one more in the count) starts a new countdown.
    let mut next = app.devices["psu-1"].snapshot.clone();
    next.restarts = 2;
    app.on_snapshot(next, now + Duration::from_secs(3));
    assert!(screen(&render(&app, 80, 24)).contains("Restart 5s"));
    // Running again: no countdown.
    let mut up = app.devices["psu-1"].snapshot.clone();
    up.status = Some(Status::Running);
    app.on_snapshot(up, now + Duration::from_secs(4));
    assert_eq!(app.devices["psu-1"].restart_at, None);
}
