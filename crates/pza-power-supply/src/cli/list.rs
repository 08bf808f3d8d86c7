//! `list`: the driver models, the configured runners and the MCP servers'
//! URLs.

use clap::Args;

use super::{load_config, ConfigArg};
use crate::drivers::DriverFactory;

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// List the driver models.
    #[arg(long)]
    pub drivers: bool,
    /// List the configured runners.
    #[arg(long)]
    pub runners: bool,
    /// List the MCP servers.
    #[arg(long)]
    pub mcps: bool,
}

/// Prints what `list` asks; all sections when no flag is given.
pub fn list(args: ListArgs, factory: &DriverFactory) -> anyhow::Result<String> {
    let all = !(args.drivers || args.runners || args.mcps);
    let mut out = String::new();
    if all || args.drivers {
        out.push_str("drivers:\n");
        for m in factory.manifests() {
            let aliases = if m.aliases.is_empty() {
                String::new()
            } else {
                format!(" (alias: {})", m.aliases.join(", "))
            };
            out.push_str(&format!(
                "  {}{aliases}: {}; {}..{} V, {}..{} A\n",
                m.model,
                m.description,
                m.voltage_range.min,
                m.voltage_range.max,
                m.current_range.min,
                m.current_range.max
            ));
        }
    }
    if all || args.runners || args.mcps {
        let config = load_config(&args.config, factory)?;
        if all || args.runners {
            out.push_str(&format!("runners ({}):\n", config.source.display()));
            for (name, runner) in &config.runners {
                out.push_str(&format!("  {name}: model {}", runner.model));
                if !runner.description.is_empty() {
                    out.push_str(&format!(", \"{}\"", runner.description));
                }
                out.push('\n');
            }
        }
        if all || args.mcps {
            let mcp = &config.mcp;
            out.push_str("mcps:\n");
            let names: Vec<String> = config.runners.keys().cloned().collect();
            let state = if mcp.enable {
                ""
            } else {
                " (disabled: set mcp.enable)"
            };
            for url in pza_power_supply_mcp::urls(&mcp.host, mcp.port, &names) {
                out.push_str(&format!("  {url}{state}\n"));
            }
        }
    }
    Ok(out)
}
