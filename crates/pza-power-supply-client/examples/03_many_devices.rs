//! Drive every power supply on the broker at once, over one connection: each
//! gets its own voltage, all commands in flight together.
//! `cargo run -p pza-power-supply-client --example 03_many_devices -- [HOST:PORT]`

use pza_power_supply_client::{Client, ClientOptions};
use tokio::task::JoinSet;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let broker = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:1883".into());
    let (host, port) = broker.rsplit_once(':').ok_or("the broker is HOST:PORT")?;

    let client = Client::connect(ClientOptions::new(host, port.parse()?)).await?;
    let names = client.list().await?;
    println!("{} power supplies: {}", names.len(), names.join(", "));

    let mut commands = JoinSet::new();
    for (i, name) in names.into_iter().enumerate() {
        let psu = client.power_supply(name);
        // 1.0 V, 1.5 V, 2.0 V…: a different value each, to see them apart.
        let volts = 1.0 + 0.5 * (i % 20) as f64;
        commands.spawn(async move { (psu.name().to_owned(), psu.set_voltage(volts).await) });
    }
    while let Some(joined) = commands.join_next().await {
        match joined? {
            (name, Ok(v)) => println!("{name}: {v} V"),
            (name, Err(e)) => println!("{name}: {e}"),
        }
    }
    Ok(())
}
