//! The MCP tools, each one call on the client library: the tools never touch
//! a runner but through MQTT, so the runner's limits guard is the one gate
//! and a refusal carries the server's own message.
//!
//! One handler serves both kinds of endpoint: [`Scope::All`] (`/mcp`, the
//! tools take a `device`) and [`Scope::One`] (`/power-supply/<name>` and
//! `mcp --stdio --device`, no `device`). The tool list is made per request,
//! so that the descriptions of `set_voltage` and `set_current` carry the
//! limits the server publishes now.

use std::time::Duration;

use pza_power_supply_client::{Change, Client, PowerSupply, Snapshot, Status};
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::tool::ToolCallContext;
use rmcp::handler::server::wrapper::{Json, Parameters};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, Implementation, ListToolsResult,
    PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::{tool, tool_router, ErrorData, RoleServer, ServerHandler};

use crate::args::{CurrentArgs, DeviceArgs, OutputArgs, VoltageArgs};
use crate::results::{
    CurrentSet, Limits, Measurement, OutputSet, PowerSupplyList, PowerSupplySummary, Restarted,
    State, VoltageSet,
};

/// The tools whose descriptions carry the limits.
const LIMITED_TOOLS: [(&str, LimitKind); 2] = [
    ("set_voltage", LimitKind::Voltage),
    ("set_current", LimitKind::Current),
];

/// The argument naming the power supply.
const DEVICE: &str = "device";

/// What the tools serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every power supply on the broker; the tools take a `device`.
    All,
    /// This one power supply; the tools take no `device`.
    One(String),
}

/// The MCP server handler.
#[derive(Clone)]
pub struct PowerSupplyTools {
    client: Client,
    scope: Scope,
    /// How long `restart` waits for the runner to be `Running` again.
    restart_wait: Duration,
    tool_router: ToolRouter<PowerSupplyTools>,
}

/// How long `restart` waits for the runner to be back, by default.
pub const DEFAULT_RESTART_WAIT: Duration = Duration::from_secs(10);

// Each tool returns `Result<Json<T>, String>`, written out: the macro finds
// the output schema in that exact shape (not through an alias), and the
// `String` is the text of a result with `isError: true`.
#[tool_router]
impl PowerSupplyTools {
    /// The tools over `client`, for `scope`.
    pub fn new(client: Client, scope: Scope) -> PowerSupplyTools {
        PowerSupplyTools {
            client,
            scope,
            restart_wait: DEFAULT_RESTART_WAIT,
            tool_router: Self::tool_router(),
        }
    }

    /// Changes how long `restart` waits for the runner to be back.
    pub fn with_restart_wait(mut self, wait: Duration) -> PowerSupplyTools {
        self.restart_wait = wait;
        self
    }

    /// What this handler serves.
    pub fn scope(&self) -> &Scope {
        &self.scope
    }

    #[tool(
        description = "List the power supplies: name, model, description, runner status and security limits (volts, amps).",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn list_power_supplies(&self) -> Result<Json<PowerSupplyList>, String> {
        let snapshots = self.client.snapshots().await.map_err(|e| e.to_string())?;
        let power_supplies = snapshots
            .iter()
            .filter(|s| self.serves(&s.name))
            .map(PowerSupplySummary::from)
            .collect();
        Ok(Json(PowerSupplyList { power_supplies }))
    }

    #[tool(
        description = "The latest known state of a power supply, without asking the device: runner status and restarts, output on/off, voltage setpoint (V), current limit (A), last measured voltage (V) and current (A), security limits, last error.",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn get_state(
        &self,
        Parameters(args): Parameters<DeviceArgs>,
    ) -> Result<Json<State>, String> {
        let psu = self.power_supply(args.device)?;
        let snapshot = psu.snapshot().await.map_err(|e| e.to_string())?;
        Ok(Json(State::from(&snapshot)))
    }

    #[tool(
        description = "Set the voltage setpoint, in volts (V); returns the value the device read back. Refused (not clamped) outside the supply's security limits.",
        annotations(
            destructive_hint = true,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn set_voltage(
        &self,
        Parameters(args): Parameters<VoltageArgs>,
    ) -> Result<Json<VoltageSet>, String> {
        let psu = self.running(args.device).await?;
        let volts = psu
            .set_voltage(args.volts)
            .await
            .map_err(|e| e.to_string())?;
        Ok(Json(VoltageSet {
            device: psu.name().to_owned(),
            volts,
        }))
    }

    #[tool(
        description = "Set the current limit, in amps (A); returns the value the device read back. Refused (not clamped) outside the supply's security limits.",
        annotations(
            destructive_hint = true,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn set_current(
        &self,
        Parameters(args): Parameters<CurrentArgs>,
    ) -> Result<Json<CurrentSet>, String> {
        let psu = self.running(args.device).await?;
        let amps = psu
            .set_current(args.amps)
            .await
            .map_err(|e| e.to_string())?;
        Ok(Json(CurrentSet {
            device: psu.name().to_owned(),
            amps,
        }))
    }

    #[tool(
        description = "Turn the output on (`on: true`, the load is powered at the setpoints) or off; returns the state the device read back.",
        annotations(
            destructive_hint = true,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn set_output(
        &self,
        Parameters(args): Parameters<OutputArgs>,
    ) -> Result<Json<OutputSet>, String> {
        let psu = self.running(args.device).await?;
        let on = psu.set_output(args.on).await.map_err(|e| e.to_string())?;
        Ok(Json(OutputSet {
            device: psu.name().to_owned(),
            on,
        }))
    }

    #[tool(
        description = "Measure the output now: voltage in volts (V) and current in amps (A), fresh from the device.",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn measure(
        &self,
        Parameters(args): Parameters<DeviceArgs>,
    ) -> Result<Json<Measurement>, String> {
        let psu = self.running(args.device).await?;
        let m = psu.measure().await.map_err(|e| e.to_string())?;
        Ok(Json(Measurement {
            device: psu.name().to_owned(),
            volts: m.voltage,
            amps: m.current,
        }))
    }

    #[tool(
        description = "Restart the power supply's runner (also revives a Failed one) and wait a few seconds for it to be Running again; returns its status then.",
        annotations(
            destructive_hint = true,
            idempotent_hint = false,
            open_world_hint = false
        )
    )]
    async fn restart(
        &self,
        Parameters(args): Parameters<DeviceArgs>,
    ) -> Result<Json<Restarted>, String> {
        let psu = self.power_supply(args.device)?;
        // Known before the command, so that an unknown name is not left to
        // the command's timeout.
        psu.snapshot().await.map_err(|e| e.to_string())?;
        // Watching before the command, so that no status change is missed.
        let mut updates = psu.watch();
        psu.restart().await.map_err(|e| e.to_string())?;
        let back = async {
            let mut went_down = false;
            while let Some(update) = updates.next().await {
                if let Change::Status(report) = &update.change {
                    if report.status != Status::Running {
                        went_down = true;
                    } else if went_down {
                        return;
                    }
                }
            }
        };
        // Still not back after the wait is no failure: the restart was
        // taken, and the status returned says where the runner is.
        let _ = tokio::time::timeout(self.restart_wait, back).await;
        let snapshot = psu.snapshot().await.map_err(|e| e.to_string())?;
        Ok(Json(Restarted {
            device: snapshot.name.clone(),
            status: snapshot.status.map(|s| s.as_str().to_owned()),
            restarts: snapshot.restarts,
        }))
    }
}

impl PowerSupplyTools {
    fn serves(&self, name: &str) -> bool {
        match &self.scope {
            Scope::All => true,
            Scope::One(one) => one == name,
        }
    }

    /// The handle on the power supply a call names.
    fn power_supply(&self, device: Option<String>) -> Result<PowerSupply, String> {
        match (&self.scope, device) {
            (Scope::All, Some(name)) => Ok(self.client.power_supply(name)),
            (Scope::All, None) => Err(format!(
                "missing `{DEVICE}`: the name of a power supply (list_power_supplies gives them)"
            )),
            (Scope::One(one), None) => Ok(self.client.power_supply(one.clone())),
            (Scope::One(one), Some(name)) if name == *one => Ok(self.client.power_supply(name)),
            (Scope::One(one), Some(name)) => Err(format!(
                "`{DEVICE}` \"{name}\": this endpoint serves only `{one}` (the /mcp endpoint serves every power supply)"
            )),
        }
    }

    /// The handle, if its runner takes commands now: a command to a runner
    /// that is not `Running` would only wait for the timeout.
    async fn running(&self, device: Option<String>) -> Result<PowerSupply, String> {
        let psu = self.power_supply(device)?;
        let snapshot = psu.snapshot().await.map_err(|e| e.to_string())?;
        match snapshot.status {
            Some(Status::Running) | None => Ok(psu),
            Some(status) => Err(not_running(&snapshot, status)),
        }
    }

    /// The tools as this endpoint lists them now.
    async fn scoped_tools(&self) -> Vec<Tool> {
        // Without the broker the limits are unknown; the tools are still listed.
        let snapshots: Vec<Snapshot> = match self.client.snapshots().await {
            Ok(all) => all.into_iter().filter(|s| self.serves(&s.name)).collect(),
            Err(e) => {
                tracing::debug!("tools listed without limits: {e}");
                Vec::new()
            }
        };
        self.tool_router
            .list_all()
            .into_iter()
            .map(|tool| scoped(tool, &self.scope, &snapshots))
            .collect()
    }
}

fn not_running(snapshot: &Snapshot, status: Status) -> String {
    let why = snapshot
        .panic_message
        .as_deref()
        .map(|m| format!(" (last crash: {m})"))
        .unwrap_or_default();
    format!(
        "power supply `{}` is {status}, not Running{why}: it takes no commands now; wait for its restart or call restart",
        snapshot.name
    )
}

#[derive(Debug, Clone, Copy)]
enum LimitKind {
    Voltage,
    Current,
}

impl LimitKind {
    fn range(self, limits: &Limits) -> String {
        match self {
            LimitKind::Voltage => format!("{}..{} V", limits.min_volts, limits.max_volts),
            LimitKind::Current => format!("{}..{} A", limits.min_amps, limits.max_amps),
        }
    }
}

/// `tool` as `scope` lists it: `device` required on `/mcp` and absent on a
/// one-supply endpoint, and the limits in the setpoint tools' descriptions.
fn scoped(mut tool: Tool, scope: &Scope, snapshots: &[Snapshot]) -> Tool {
    let mut schema = (*tool.input_schema).clone();
    let has_device = schema
        .get("properties")
        .and_then(|p| p.get(DEVICE))
        .is_some();
    if has_device {
        match scope {
            Scope::All => {
                let required = schema
                    .entry("required")
                    .or_insert_with(|| serde_json::Value::Array(Vec::new()));
                if let Some(list) = required.as_array_mut() {
                    list.push(DEVICE.into());
                }
                // Optional only in the Rust type: here it is a plain string.
                if let Some(p) = schema
                    .get_mut("properties")
                    .and_then(|p| p.get_mut(DEVICE))
                    .and_then(|d| d.as_object_mut())
                {
                    p.insert("type".into(), "string".into());
                }
            }
            Scope::One(_) => {
                if let Some(p) = schema.get_mut("properties").and_then(|p| p.as_object_mut()) {
                    p.remove(DEVICE);
                }
            }
        }
        tool.input_schema = std::sync::Arc::new(schema);
    }
    if let Some((_, kind)) = LIMITED_TOOLS.iter().find(|(name, _)| *name == tool.name) {
        let known: Vec<String> = snapshots
            .iter()
            .filter_map(|s| {
                let limits = Limits::from(s.info.as_ref()?);
                Some(match scope {
                    Scope::All => format!("{}: {}", s.name, kind.range(&limits)),
                    Scope::One(_) => kind.range(&limits),
                })
            })
            .collect();
        if !known.is_empty() {
            let base = tool.description.as_deref().unwrap_or_default();
            tool.description =
                Some(format!("{base} Security limits: {}.", known.join("; ")).into());
        }
    }
    tool
}

impl ServerHandler for PowerSupplyTools {
    fn get_info(&self) -> ServerConfig {
        let instructions = match &self.scope {
            Scope::All => "Bench power supplies of a pza-power-supply server. Call list_power_supplies first; every other tool takes the `device` name it gives. Setpoints outside a supply's security limits are refused by the server.".to_owned(),
            Scope::One(name) => format!("The bench power supply `{name}` of a pza-power-supply server. Setpoints outside its security limits are refused by the server."),
        };
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new(
                "pza-power-supply",
                env!("CARGO_PKG_VERSION"),
            ))
            .with_instructions(instructions)
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(self.scoped_tools().await))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let call = ToolCallContext::new(self, request, context);
        self.tool_router.call(call).await
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        let tool = self.tool_router.get(name)?.clone();
        Some(scoped(tool, &self.scope, &[]))
    }
}
