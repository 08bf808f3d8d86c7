//! Print every update of one power supply (or of all, with `--all`) until
//! Ctrl+C: `cargo run -p pza-power-supply-client --example 02_watch -- [HOST:PORT] [NAME|--all]`.

use pza_power_supply_client::{Change, Client, ClientOptions};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let broker = args.next().unwrap_or_else(|| "127.0.0.1:1883".into());
    let name = args.next().unwrap_or_else(|| "emulator".into());
    let (host, port) = broker.rsplit_once(':').ok_or("the broker is HOST:PORT")?;

    let client = Client::connect(ClientOptions::new(host, port.parse()?)).await?;
    let mut updates = if name == "--all" {
        client.watch_all()
    } else {
        let psu = client.power_supply(&name);
        let s = psu.snapshot().await?;
        println!(
            "{name}: {:?}, output {:?}, {:?} V",
            s.status, s.output, s.voltage
        );
        psu.watch()
    };
    while let Some(update) = updates.next().await {
        match update.change {
            Change::Status(report) => println!(
                "{}: {} (restarts {}){}",
                update.name,
                report.status,
                report.restarts,
                report
                    .panic_message
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default()
            ),
            other => println!("{}: {other:?}", update.name),
        }
    }
    Ok(())
}
