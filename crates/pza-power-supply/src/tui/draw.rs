//! Drawing the [`App`] on a frame: a function of the state alone, so tests
//! render it into ratatui's `TestBackend` and read the buffer.
//!
//! From top to bottom: a title line, the table of power supplies, the
//! selected one's detail (measured values over time, last problem), the log,
//! a notice line and the help bar (or the input field). At 80×24 the table
//! shows 8 supplies at once and scrolls to keep the selection in view.

use ratatui::layout::{Alignment, Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{
    Block, Borders, Clear, Paragraph, Row, Sparkline, SparklineBar, Table, TableState, Wrap,
};
use ratatui::Frame;

use pza_power_supply_client::{InfoReport, Status};

use super::app::{on_off, App, Device, History, Mode, NoticeKind, HISTORY_WINDOW};

/// Rows of the detail pane, borders included.
const DETAIL_HEIGHT: u16 = 6;

/// The log pane's smallest height (its title line and 3 lines).
const LOG_MIN_HEIGHT: u16 = 4;

/// Width from which the table has room for a limits column.
const WIDE_TABLE: u16 = 100;

/// Width of the label before each sparkline (`V  12.34 V`).
const SPARK_LABEL_WIDTH: u16 = 12;

/// Placeholder for a value not published yet.
const UNKNOWN: &str = "—";

/// Draws the whole screen.
pub fn draw(frame: &mut Frame, app: &App) {
    let area = frame.area();
    let table_rows = app.devices.len() as u16;
    // The table takes what it needs (its rows, header and borders) up to
    // what leaves the log its smallest height; the log takes the rest.
    let fixed = 1 + DETAIL_HEIGHT + 1 + 1;
    let room = area.height.saturating_sub(fixed + LOG_MIN_HEIGHT);
    let table_height = (table_rows + 3).clamp(4, room.max(4));
    let [title, table, detail, log, notice, help] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(table_height),
        Constraint::Length(DETAIL_HEIGHT),
        Constraint::Min(0),
        Constraint::Length(1),
        Constraint::Length(1),
    ])
    .areas(area);
    draw_title(frame, app, title);
    draw_table(frame, app, table);
    draw_detail(frame, app, detail);
    draw_log(frame, app, log);
    draw_notice(frame, app, notice);
    draw_help_bar(frame, app, help);
    if app.mode == Mode::Help {
        draw_help(frame, app, area);
    }
}

fn draw_title(frame: &mut Frame, app: &App, area: Rect) {
    let link = if app.connected {
        Span::styled("connected", Style::new().fg(Color::Green))
    } else {
        Span::styled("disconnected: retrying", Style::new().fg(Color::Red))
    };
    let line = Line::from(vec![
        Span::styled(
            " pza-power-supply ",
            Style::new().add_modifier(Modifier::BOLD),
        ),
        Span::raw(format!("· {} · ", app.settings.source)),
        link,
        Span::raw(format!(" · {} supplies", app.devices.len())),
    ]);
    frame.render_widget(Paragraph::new(line), area);
}

/// The colour of a status, and its text (with the countdown of a restart).
pub fn status_cell(device: &Device, now: std::time::Instant) -> (String, Style) {
    let Some(status) = device.snapshot.status else {
        return (UNKNOWN.to_owned(), Style::new().fg(Color::DarkGray));
    };
    let text = match (status, device.restart_in_secs(now)) {
        (Status::Restarting, Some(secs)) => format!("Restart {secs}s"),
        _ => status.to_string(),
    };
    (text, Style::new().fg(status_colour(status)))
}

pub fn status_colour(status: Status) -> Color {
    match status {
        Status::Running => Color::Green,
        Status::Initializing => Color::Cyan,
        Status::Panicking => Color::Magenta,
        Status::Restarting => Color::Yellow,
        Status::Failed => Color::Red,
        Status::Stopped => Color::DarkGray,
    }
}

fn value(v: Option<f64>, decimals: usize, unit: &str) -> String {
    v.map_or(UNKNOWN.to_owned(), |v| format!("{v:.decimals$} {unit}"))
}

/// `0–30 V 0–5 A`.
fn limits(info: Option<&InfoReport>) -> String {
    info.map_or(UNKNOWN.to_owned(), |i| {
        format!(
            "{}–{} V {}–{} A",
            i.security_min_voltage,
            i.security_max_voltage,
            i.security_min_current,
            i.security_max_current
        )
    })
}

fn draw_table(frame: &mut Frame, app: &App, area: Rect) {
    let wide = area.width >= WIDE_TABLE;
    let mut header = vec![
        "Name", "Model", "Status", "Rst", "Out", "Set V", "Set A", "Meas V", "Meas A",
    ];
    let mut widths = vec![
        Constraint::Min(6),
        Constraint::Length(9),
        Constraint::Length(12),
        Constraint::Length(3),
        Constraint::Length(3),
        Constraint::Length(7),
        Constraint::Length(7),
        Constraint::Length(7),
        Constraint::Length(7),
    ];
    if wide {
        header.push("Limits");
        widths.push(Constraint::Length(18));
    }
    // Only the rows on screen are built (a server may have a thousand
    // supplies); the selection stays in view, at the bottom when scrolled.
    let visible = usize::from(area.height.saturating_sub(3)).max(1);
    let selected = app.selected_index();
    let offset = selected.map_or(0, |i| (i + 1).saturating_sub(visible));
    let rows = app
        .devices
        .iter()
        .skip(offset)
        .take(visible)
        .map(|(name, device)| {
            let s = &device.snapshot;
            let (vd, cd) = (device.voltage_decimals(), device.current_decimals());
            let (status, status_style) = status_cell(device, app.now);
            let output = match s.output {
                Some(true) => Span::styled(
                    "ON",
                    Style::new().fg(Color::Green).add_modifier(Modifier::BOLD),
                ),
                Some(false) => Span::styled("OFF", Style::new().fg(Color::Gray)),
                None => Span::styled(UNKNOWN, Style::new().fg(Color::DarkGray)),
            };
            let mut cells = vec![
                Line::from(name.clone()),
                Line::from(
                    s.info
                        .as_ref()
                        .map_or(UNKNOWN.to_owned(), |i| i.model.clone()),
                ),
                Line::from(Span::styled(status, status_style)),
                Line::from(s.restarts.to_string()).alignment(Alignment::Right),
                Line::from(output),
                Line::from(value(s.voltage, vd, "V")).alignment(Alignment::Right),
                Line::from(value(s.current, cd, "A")).alignment(Alignment::Right),
                Line::from(value(s.measured_voltage, vd, "V")).alignment(Alignment::Right),
                Line::from(value(s.measured_current, cd, "A")).alignment(Alignment::Right),
            ];
            if wide {
                cells.push(Line::from(limits(s.info.as_ref())));
            }
            Row::new(cells)
        });
    let table = Table::new(rows, widths)
        .header(Row::new(header).style(Style::new().add_modifier(Modifier::BOLD)))
        .block(Block::bordered().title(format!(" Power supplies ({}) ", app.devices.len())))
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED))
        .highlight_symbol("▶ ");
    let mut state = TableState::default().with_selected(selected.map(|i| i - offset));
    frame.render_stateful_widget(table, area, &mut state);
}

fn draw_detail(frame: &mut Frame, app: &App, area: Rect) {
    let Some(device) = app.selected_device() else {
        let empty = Paragraph::new("No power supply seen on the broker yet.")
            .block(Block::bordered().title(" Detail "));
        frame.render_widget(empty, area);
        return;
    };
    let s = &device.snapshot;
    let title = match s.info.as_ref().map(|i| i.description.as_str()) {
        Some(d) if !d.is_empty() => format!(" {} · {d} ", s.name),
        _ => format!(" {} ", s.name),
    };
    let block = Block::bordered().title(title);
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let [summary, volts, amps, problem] = Layout::vertical([Constraint::Length(1); 4]).areas(inner);

    let (status, status_style) = status_cell(device, app.now);
    let summary_line = Line::from(vec![
        Span::styled(status, status_style),
        Span::raw(format!(
            " · restarts {} · output {} · limits {}",
            s.restarts,
            s.output.map_or(UNKNOWN, on_off),
            limits(s.info.as_ref())
        )),
    ]);
    frame.render_widget(Paragraph::new(summary_line), summary);

    let (vd, cd) = (device.voltage_decimals(), device.current_decimals());
    let v_label = format!("V {}", value(s.measured_voltage, vd, "V"));
    let a_label = format!("I {}", value(s.measured_current, cd, "A"));
    draw_history(
        frame,
        app,
        &device.voltage_history,
        v_label,
        Color::Cyan,
        volts,
    );
    draw_history(
        frame,
        app,
        &device.current_history,
        a_label,
        Color::Yellow,
        amps,
    );

    let problem_line = match (&s.panic_message, &device.last_panic, &s.last_error) {
        (Some(panic), _, _) => Line::from(vec![
            Span::styled(
                "panic: ",
                Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
            ),
            Span::raw(panic.clone()),
        ]),
        (None, _, Some(error)) => Line::from(vec![
            Span::styled("last error: ", Style::new().fg(Color::Red)),
            Span::raw(error.clone()),
        ]),
        (None, Some(panic), None) => Line::from(vec![
            Span::styled("last panic: ", Style::new().fg(Color::Magenta)),
            Span::raw(panic.clone()),
        ]),
        (None, None, None) => Line::styled("no error", Style::new().fg(Color::DarkGray)),
    };
    frame.render_widget(Paragraph::new(problem_line), problem);
}

/// One measured value over [`HISTORY_WINDOW`]: its label, a sparkline from
/// 0 to the highest value seen (a small value against a large limit would
/// leave it flat), and the range seen.
fn draw_history(
    frame: &mut Frame,
    app: &App,
    history: &History,
    label: String,
    colour: Color,
    area: Rect,
) {
    let range = history.range().map_or(String::new(), |(lo, hi)| {
        format!(" {lo:.2}–{hi:.2} ({} min)", HISTORY_WINDOW.as_secs() / 60)
    });
    let [label_area, spark_area, range_area] = Layout::horizontal([
        Constraint::Length(SPARK_LABEL_WIDTH),
        Constraint::Min(8),
        Constraint::Length(range.chars().count() as u16),
    ])
    .areas(area);
    frame.render_widget(Paragraph::new(label), label_area);
    let columns = history.columns(app.now, spark_area.width as usize);
    let full_scale = columns.iter().flatten().fold(0.0_f64, |m, v| m.max(*v));
    // Sparklines take integers: thousandths of the full scale.
    let bars: Vec<SparklineBar> = columns
        .iter()
        .map(|c| {
            SparklineBar::from(c.map(|v| {
                if full_scale > 0.0 {
                    (v.max(0.0) / full_scale * 1000.0).round() as u64
                } else {
                    0
                }
            }))
        })
        .collect();
    let spark = Sparkline::default()
        .data(bars)
        .max(1000)
        .style(Style::new().fg(colour));
    frame.render_widget(spark, spark_area);
    frame.render_widget(
        Paragraph::new(range).style(Style::new().fg(Color::DarkGray)),
        range_area,
    );
}

fn draw_log(frame: &mut Frame, app: &App, area: Rect) {
    let block = Block::new().borders(Borders::TOP).title(" Log ");
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let shown = inner.height as usize;
    let skip = app.log.len().saturating_sub(shown);
    let lines: Vec<Line> = app
        .log
        .iter()
        .skip(skip)
        .map(|line| {
            let text = line.trim_start();
            let style = if text.starts_with("ERROR") || text.contains(" refused: ") {
                Style::new().fg(Color::Red)
            } else if text.starts_with("WARN") {
                Style::new().fg(Color::Yellow)
            } else {
                Style::new()
            };
            Line::styled(line.clone(), style)
        })
        .collect();
    frame.render_widget(Paragraph::new(lines), inner);
}

fn draw_notice(frame: &mut Frame, app: &App, area: Rect) {
    let input_error = match &app.mode {
        Mode::Input(input) => input.error.as_ref(),
        _ => None,
    };
    let line = match (input_error, &app.notice) {
        (Some(error), _) => Line::styled(error.clone(), Style::new().fg(Color::Red)),
        (None, Some(notice)) => {
            let style = match notice.kind {
                NoticeKind::Info => Style::new().fg(Color::Green),
                NoticeKind::Pending => Style::new().fg(Color::Yellow),
                NoticeKind::Error => Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
            };
            Line::styled(notice.text.clone(), style)
        }
        (None, None) => Line::default(),
    };
    frame.render_widget(Paragraph::new(line), area);
}

fn key(text: &str) -> Span<'_> {
    Span::styled(text, Style::new().add_modifier(Modifier::REVERSED))
}

fn draw_help_bar(frame: &mut Frame, app: &App, area: Rect) {
    let toggle = app.settings.toggle_key.to_string();
    let line = if let Mode::Input(input) = &app.mode {
        Line::from(vec![
            Span::styled(
                format!(
                    "{} {} ({}): ",
                    input.name,
                    input.field.label(),
                    input.field.unit()
                ),
                Style::new().add_modifier(Modifier::BOLD),
            ),
            Span::raw(input.text.clone()),
            Span::styled("█", Style::new().add_modifier(Modifier::SLOW_BLINK)),
            Span::raw("  "),
            key("Enter"),
            Span::raw(" send "),
            key("Esc"),
            Span::raw(" cancel"),
        ])
    } else {
        let quit = if app.settings.embedded {
            " quit (stops the server) "
        } else {
            " quit "
        };
        Line::from(vec![
            key("↑↓"),
            Span::raw(" select "),
            key(&toggle),
            Span::raw(" output "),
            key("v"),
            Span::raw(" volts "),
            key("c"),
            Span::raw(" amps "),
            key("r"),
            Span::raw(" restart "),
            key("?"),
            Span::raw(" help "),
            key("q"),
            Span::raw(quit),
        ])
    };
    frame.render_widget(Paragraph::new(line), area);
}

/// Every key, in a box over the screen.
fn draw_help(frame: &mut Frame, app: &App, area: Rect) {
    let toggle = app.settings.toggle_key;
    let quit = if app.settings.embedded {
        "quit: stops the server gracefully"
    } else {
        "quit (the server keeps running)"
    };
    let rows = [
        ("↑ ↓  j k".to_owned(), "select a power supply"),
        ("Home End".to_owned(), "first / last"),
        (toggle.to_string(), "switch the output on / off"),
        ("v".to_owned(), "type a voltage setpoint"),
        ("c".to_owned(), "type a current limit"),
        ("Enter / Esc".to_owned(), "send the value / cancel"),
        ("r".to_owned(), "restart the runner (revives a Failed one)"),
        ("Esc".to_owned(), "clear the message line"),
        ("?".to_owned(), "this help (any key closes it)"),
        ("q  Ctrl+C".to_owned(), quit),
    ];
    let lines: Vec<Line> = rows
        .iter()
        .map(|(k, what)| {
            Line::from(vec![
                Span::styled(
                    format!("{k:>12}  "),
                    Style::new().add_modifier(Modifier::BOLD),
                ),
                Span::raw(*what),
            ])
        })
        .collect();
    let width = area.width.min(64);
    let height = area.height.min(lines.len() as u16 + 2);
    let popup = Rect {
        x: area.x + (area.width - width) / 2,
        y: area.y + (area.height - height) / 2,
        width,
        height,
    };
    frame.render_widget(Clear, popup);
    frame.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: false })
            .block(Block::bordered().title(" Keys ")),
        popup,
    );
}
