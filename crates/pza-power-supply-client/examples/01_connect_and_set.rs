//! Connect, set 5 V and 0.5 A in the safe order, read the values back and
//! measure: `cargo run -p pza-power-supply-client --example 01_connect_and_set -- [HOST:PORT] [NAME]`
//! (default `127.0.0.1:1883` and `emulator`, the server's default config).

use pza_power_supply_client::{Client, ClientOptions, Error};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let broker = args.next().unwrap_or_else(|| "127.0.0.1:1883".into());
    let name = args.next().unwrap_or_else(|| "emulator".into());
    let (host, port) = broker.rsplit_once(':').ok_or("the broker is HOST:PORT")?;

    let client = Client::connect(ClientOptions::new(host, port.parse()?)).await?;
    let psu = client.power_supply(name);

    psu.disable_output().await?;
    let amps = psu.set_current(0.5).await?;
    let volts = psu.set_voltage(5.0).await?;
    psu.enable_output().await?;
    println!("setpoints read back: {volts} V, {amps} A; output on");

    let m = psu.measure().await?;
    println!("measured: {} V, {} A", m.voltage, m.current);

    // Out of the security limits: refused by the server, with its reason.
    match psu.set_voltage(1000.0).await {
        Err(Error::Rejected { message }) => println!("1000 V refused: {message}"),
        other => println!("1000 V: {other:?}"),
    }
    client.close().await?;
    Ok(())
}
