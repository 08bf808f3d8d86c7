//! The README's "Client library (Rust)" example, as written there (a test
//! checks that the two are the same): `cargo run -p pza-power-supply-client
//! --example readme`, against the server on the default config.

use pza_power_supply_client::{Client, ClientOptions, Error};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let client = Client::connect(ClientOptions::new("127.0.0.1", 1883)).await?;
    println!("{:?}", client.list().await?); // ["emulator"]
    let psu = client.power_supply("emulator"); // a handle, no I/O
    psu.disable_output().await?;
    psu.set_current(0.5).await?;
    let volts = psu.set_voltage(5.0).await?; // 5.0: the value read back
    psu.enable_output().await?;
    let m = psu.measure().await?; // m.voltage, m.current: fresh
    let s = psu.snapshot().await?; // status, restarts, setpoints, info…
    println!("{volts} V set; {} V measured; {:?}", m.voltage, s.status);
    match psu.set_voltage(31.0).await {
        Err(Error::Rejected { message }) => eprintln!("refused: {message}"),
        other => println!("{other:?}"),
    }
    let mut updates = psu.watch(); // a Stream of updates
    while let Some(update) = updates.next().await {
        println!("{}: {:?}", update.name, update.change);
    }
    Ok(())
}
