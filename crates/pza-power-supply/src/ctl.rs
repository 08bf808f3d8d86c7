//! `ctl`: one-shot commands for shells and CI, built on the client library.
//!
//! Exit status: 0 done; 1 usage, config or connection error; 2 refused by
//! the server (its message on stderr); 3 no answer in time, from the broker
//! or from the power supply (the message says which).

use std::collections::BTreeSet;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use pza_power_supply_client::{
    Change, Client, Error, InfoReport as Info, Snapshot, Update, DEFAULT_TIMEOUT,
};
use serde_json::{json, Map, Value};

use crate::connect::{self, ConnectArgs, Environment};
use crate::drivers::DriverFactory;
use crate::stdout;

/// Usage, config or connection error.
pub const EXIT_ERROR: u8 = 1;
/// The server refused a command.
pub const EXIT_REFUSED: u8 = 2;
/// No answer within `--timeout-ms`, from the broker or the power supply.
pub const EXIT_NO_ANSWER: u8 = 3;

/// Decimals shown when the power supply has not published its info.
const DEFAULT_VOLTAGE_DECIMALS: usize = 2;
const DEFAULT_CURRENT_DECIMALS: usize = 3;

#[derive(Debug, Args)]
pub struct CtlArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// The time allowed to connect, and for each reply
    #[arg(long, value_name = "MS", default_value_t = crate::cli::millis(DEFAULT_TIMEOUT), global = true)]
    pub timeout_ms: u64,
    /// Machine-readable output: one JSON object (JSON lines for `watch`)
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: CtlCommand,
}

#[derive(Debug, Subcommand)]
pub enum CtlCommand {
    /// Every power supply seen on the broker: name, model, status.
    List,
    /// The state of one: status, restarts, output, setpoints, measured values, limits.
    Get { name: String },
    /// Set values, in the safe order: output off, current, voltage, output on.
    Set(SetArgs),
    /// One line per update until Ctrl+C.
    Watch {
        /// The power supplies to watch.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        names: Vec<String>,
        /// Watch every power supply.
        #[arg(long)]
        all: bool,
    },
    /// Restart a runner now (also revives a failed one).
    Restart { name: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("values").required(true).multiple(true))]
pub struct SetArgs {
    pub name: String,
    /// Turn the output on (last) or off (first)
    #[arg(long, value_enum, group = "values")]
    pub output: Option<OnOff>,
    /// The current limit, in amps
    #[arg(
        long,
        value_name = "A",
        allow_negative_numbers = true,
        group = "values"
    )]
    pub current: Option<f64>,
    /// The voltage setpoint, in volts
    #[arg(
        long,
        value_name = "V",
        allow_negative_numbers = true,
        group = "values"
    )]
    pub voltage: Option<f64>,
}

/// Runs one `ctl` command; prints its result on stdout, or its error on
/// stderr, and returns the exit status.
pub async fn run(args: CtlArgs, factory: &DriverFactory) -> ExitCode {
    match execute(args, factory).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Setup(e)) => {
            eprintln!("pza-power-supply: {e:#}");
            ExitCode::from(EXIT_ERROR)
        }
        Err(Failure::Client(e)) => {
            eprintln!("pza-power-supply: {e}");
            ExitCode::from(exit_status(&e))
        }
    }
}

/// The exit status for a client error.
pub fn exit_status(error: &Error) -> u8 {
    match error {
        Error::Rejected { .. } => EXIT_REFUSED,
        Error::Timeout { .. }
        | Error::BrokerUnreachable { .. }
        | Error::UnknownDevice { .. }
        | Error::ConnectionLost { .. } => EXIT_NO_ANSWER,
        _ => EXIT_ERROR,
    }
}

enum Failure {
    Setup(anyhow::Error),
    Client(Error),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        Failure::Client(e)
    }
}

async fn execute(args: CtlArgs, factory: &DriverFactory) -> Result<(), Failure> {
    let timeout = Duration::from_millis(args.timeout_ms);
    if timeout.is_zero() {
        return Err(Failure::Setup(anyhow::anyhow!(
            "--timeout-ms must be more than 0"
        )));
    }
    let options = connect::resolve(&args.connect, &Environment::current(), factory, timeout)
        .map_err(Failure::Setup)?;
    let client = Client::connect(options).await?;
    let json = args.json;
    match args.command {
        CtlCommand::List => list(&client, json).await?,
        CtlCommand::Get { name } => {
            let snapshot = client.power_supply(name).snapshot().await?;
            if json {
                say(snapshot_json(&snapshot))?;
            } else {
                printed(stdout::print(&snapshot_text(&snapshot)))?;
            }
        }
        CtlCommand::Set(set_args) => set(&client, set_args, json).await?,
        CtlCommand::Watch { names, all } => watch(&client, names, all, json).await?,
        CtlCommand::Restart { name } => {
            client.power_supply(&name).restart().await?;
            if json {
                say(json!({"name": name, "restart": "scheduled"}))?;
            } else {
                say(format!("{name}: restart scheduled"))?;
            }
        }
    }
    // Lets the broker see a clean disconnection; the work is done anyway.
    let _ = client.close().await;
    Ok(())
}

async fn list(client: &Client, json: bool) -> Result<(), Failure> {
    let all = client.snapshots().await?;
    if json {
        let items: Vec<Value> = all
            .iter()
            .map(|s| {
                json!({
                    "name": s.name,
                    "model": s.info.as_ref().map(|i| i.model.as_str()),
                    "status": s.status.map(|st| st.as_str()),
                })
            })
            .collect();
        say(json!({ "power_supplies": items }))?;
        return Ok(());
    }
    let rows: Vec<[String; 3]> = all
        .iter()
        .map(|s| {
            [
                s.name.clone(),
                s.info.as_ref().map_or("-".into(), |i| i.model.clone()),
                s.status.map_or("-".into(), |st| st.to_string()),
            ]
        })
        .collect();
    let width = |i: usize| rows.iter().map(|r| r[i].len()).max().unwrap_or(0);
    let (w0, w1) = (width(0), width(1));
    let text: String = rows
        .into_iter()
        .map(|[name, model, status]| format!("{name:w0$}  {model:w1$}  {status}\n"))
        .collect();
    printed(stdout::print(&text))?;
    Ok(())
}

async fn set(client: &Client, args: SetArgs, json: bool) -> Result<(), Failure> {
    let psu = client.power_supply(&args.name);
    let mut done = Map::new();
    done.insert("name".into(), json!(args.name));
    // A value is printed as soon as it is read back; stdout failing does not
    // stop the sequence, whose later steps are sent anyway, and its error is
    // reported once the sequence is done.
    let mut unprinted = None;
    let mut show = |field: &str, text: String| {
        if !json && unprinted.is_none() {
            if let Err(e) = stdout::line(format!("{}: {field} {text}", args.name)) {
                unprinted = Some(e);
            }
        }
    };
    let decimals = psu
        .snapshot()
        .await
        .ok()
        .and_then(|s| s.info)
        .map(|i| (i.voltage_decimals, i.current_decimals))
        .unwrap_or((DEFAULT_VOLTAGE_DECIMALS, DEFAULT_CURRENT_DECIMALS));
    if args.output == Some(OnOff::Off) {
        let on = psu.disable_output().await?;
        show("output", on_off(on).into());
        done.insert("output".into(), json!(on));
    }
    if let Some(amps) = args.current {
        let read = psu.set_current(amps).await?;
        show("current", format!("{read:.*} A", decimals.1));
        done.insert("current".into(), json!(read));
    }
    if let Some(volts) = args.voltage {
        let read = psu.set_voltage(volts).await?;
        show("voltage", format!("{read:.*} V", decimals.0));
        done.insert("voltage".into(), json!(read));
    }
    if args.output == Some(OnOff::On) {
        let on = psu.enable_output().await?;
        show("output", on_off(on).into());
        done.insert("output".into(), json!(on));
    }
    if let Some(e) = unprinted {
        return Err(unprintable(e));
    }
    if json {
        say(Value::Object(done))?;
    }
    Ok(())
}

/// Prints each update until Ctrl+C, or until the reader of stdout has gone.
async fn watch(client: &Client, names: Vec<String>, all: bool, json: bool) -> Result<(), Failure> {
    // Subscribed to the updates before the first lines are printed, so that
    // nothing happens unseen between the two.
    let mut updates = client.watch_all();
    let wanted: BTreeSet<String> = names.into_iter().collect();
    let initial = if all {
        client.snapshots().await?
    } else {
        let mut initial = Vec::new();
        for name in &wanted {
            match client.power_supply(name).snapshot().await {
                Ok(s) => initial.push(s),
                Err(Error::UnknownDevice { .. }) => {
                    eprintln!("pza-power-supply: {name}: not on the broker yet; watching for it")
                }
                Err(e) => return Err(e.into()),
            }
        }
        initial
    };
    for snapshot in &initial {
        let shown = if json {
            let mut line = snapshot_fields(snapshot);
            line.insert("event".into(), json!("snapshot"));
            say(Value::Object(line))?
        } else {
            say(snapshot_line(snapshot))?
        };
        if !shown {
            return Ok(());
        }
    }
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        let update = tokio::select! {
            _ = &mut interrupted => return Ok(()),
            update = updates.next() => match update {
                Some(update) => update,
                None => return Err(Error::Closed.into()),
            },
        };
        if !all && !wanted.contains(&update.name) {
            continue;
        }
        let shown = if json {
            say(update_json(&update))?
        } else {
            say(update_text(&update))?
        };
        if !shown {
            return Ok(());
        }
    }
}

/// Prints one line of a result; `Ok(false)` when the reader has gone.
fn say(text: impl std::fmt::Display) -> Result<bool, Failure> {
    printed(stdout::line(text))
}

/// A write on stdout that failed otherwise than by its reader going is a
/// failure of the command.
fn printed(written: std::io::Result<bool>) -> Result<bool, Failure> {
    written.map_err(unprintable)
}

fn unprintable(e: std::io::Error) -> Failure {
    Failure::Setup(stdout::unwritable(e))
}

fn on_off(on: bool) -> &'static str {
    if on {
        "ON"
    } else {
        "OFF"
    }
}

fn decimals(info: Option<&Info>) -> (usize, usize) {
    info.map_or((DEFAULT_VOLTAGE_DECIMALS, DEFAULT_CURRENT_DECIMALS), |i| {
        (i.voltage_decimals, i.current_decimals)
    })
}

fn volts(value: Option<f64>, info: Option<&Info>) -> String {
    value.map_or("-".into(), |v| format!("{v:.*} V", decimals(info).0))
}

fn amps(value: Option<f64>, info: Option<&Info>) -> String {
    value.map_or("-".into(), |a| format!("{a:.*} A", decimals(info).1))
}

fn status_text(s: &Snapshot) -> String {
    let mut text = format!(
        "{} (restarts {})",
        s.status.map_or("-".into(), |st| st.to_string()),
        s.restarts
    );
    if let Some(ms) = s.next_restart_ms {
        text.push_str(&format!(", next restart in {ms} ms"));
    }
    if let Some(message) = &s.panic_message {
        text.push_str(&format!(": {message}"));
    }
    text
}

/// `ctl get`: one field a line.
fn snapshot_text(s: &Snapshot) -> String {
    let info = s.info.as_ref();
    let mut out = format!("name: {}\n", s.name);
    if let Some(i) = info {
        out.push_str(&format!("model: {}", i.model));
        if !i.description.is_empty() {
            out.push_str(&format!(" ({})", i.description));
        }
        out.push('\n');
    }
    out.push_str(&format!("status: {}\n", status_text(s)));
    out.push_str(&format!("output: {}\n", s.output.map_or("-", on_off)));
    out.push_str(&format!("voltage setpoint: {}\n", volts(s.voltage, info)));
    out.push_str(&format!("current limit: {}\n", amps(s.current, info)));
    out.push_str(&format!(
        "measured: {}, {}\n",
        volts(s.measured_voltage, info),
        amps(s.measured_current, info)
    ));
    if let Some(i) = info {
        let (vd, cd) = decimals(info);
        out.push_str(&format!(
            "limits: {:.vd$}..{:.vd$} V, {:.cd$}..{:.cd$} A\n",
            i.security_min_voltage,
            i.security_max_voltage,
            i.security_min_current,
            i.security_max_current
        ));
    }
    if let Some(e) = &s.last_error {
        out.push_str(&format!("last error: {e}\n"));
    }
    out
}

/// The first line of `ctl watch` for a power supply.
fn snapshot_line(s: &Snapshot) -> String {
    let info = s.info.as_ref();
    format!(
        "{} {}, output {}, {} / {}, measured {} / {}",
        s.name,
        status_text(s),
        s.output.map_or("-", on_off),
        volts(s.voltage, info),
        amps(s.current, info),
        volts(s.measured_voltage, info),
        amps(s.measured_current, info)
    )
}

fn info_json(i: &Info) -> Value {
    json!({
        "model": i.model,
        "description": i.description,
        "security_min_voltage": i.security_min_voltage,
        "security_max_voltage": i.security_max_voltage,
        "security_min_current": i.security_min_current,
        "security_max_current": i.security_max_current,
        "voltage_decimals": i.voltage_decimals,
        "current_decimals": i.current_decimals,
    })
}

fn snapshot_fields(s: &Snapshot) -> Map<String, Value> {
    let value = json!({
        "name": s.name,
        "status": s.status.map(|st| st.as_str()),
        "restarts": s.restarts,
        "panic_message": s.panic_message,
        "next_restart_ms": s.next_restart_ms,
        "output": s.output,
        "voltage": s.voltage,
        "current": s.current,
        "measured_voltage": s.measured_voltage,
        "measured_current": s.measured_current,
        "info": s.info.as_ref().map(info_json),
        "last_error": s.last_error,
    });
    match value {
        Value::Object(map) => map,
        // json!({...}) is always an object.
        _ => Map::new(),
    }
}

fn snapshot_json(s: &Snapshot) -> Value {
    Value::Object(snapshot_fields(s))
}

/// `ctl watch --json`: one object a line, `event` naming what changed.
fn update_json(u: &Update) -> Value {
    let mut line = Map::new();
    line.insert("name".into(), json!(u.name));
    line.insert("pza_id".into(), json!(u.pza_id));
    let (event, fields) = match &u.change {
        Change::Status(r) => (
            "status",
            json!({
                "status": r.status.as_str(),
                "restarts": r.restarts,
                "panic_message": r.panic_message,
                "next_restart_ms": r.next_restart_ms,
            }),
        ),
        Change::Output(on) => ("output", json!({ "output": on })),
        Change::Voltage(v) => ("voltage", json!({ "voltage": v })),
        Change::Current(a) => ("current", json!({ "current": a })),
        Change::MeasuredVoltage(v) => ("measured_voltage", json!({ "measured_voltage": v })),
        Change::MeasuredCurrent(a) => ("measured_current", json!({ "measured_current": a })),
        Change::Measured { voltage, current } => (
            "measured",
            json!({ "measured_voltage": voltage, "measured_current": current }),
        ),
        Change::Info(i) => ("info", json!({ "info": info_json(i) })),
        Change::Error(message) => ("error", json!({ "message": message })),
    };
    line.insert("event".into(), json!(event));
    if let Value::Object(fields) = fields {
        line.extend(fields);
    }
    Value::Object(line)
}

/// `ctl watch`: one line an update.
fn update_text(u: &Update) -> String {
    let info = u.snapshot.info.as_ref();
    let what = match &u.change {
        Change::Status(_) => format!("status {}", status_text(&u.snapshot)),
        Change::Output(on) => format!("output {}", on_off(*on)),
        Change::Voltage(v) => format!("voltage setpoint {}", volts(Some(*v), info)),
        Change::Current(a) => format!("current limit {}", amps(Some(*a), info)),
        Change::MeasuredVoltage(v) => format!("measured voltage {}", volts(Some(*v), info)),
        Change::MeasuredCurrent(a) => format!("measured current {}", amps(Some(*a), info)),
        Change::Measured { voltage, current } => format!(
            "measured {}, {}",
            volts(Some(*voltage), info),
            amps(Some(*current), info)
        ),
        Change::Info(i) => format!(
            "info model {}, limits {}..{} V, {}..{} A",
            i.model,
            i.security_min_voltage,
            i.security_max_voltage,
            i.security_min_current,
            i.security_max_current
        ),
        Change::Error(message) => format!("error: {message}"),
    };
    format!("{} {what}", u.name)
}
