//! A QM application with qm-ipc-client: sets the cabin temperature through
//! an ASIL service, then prints the vehicle speed as it changes.
use qm_ipc_client::{ClientError, Session};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
struct Speed {
    kmh: f64,
}

#[derive(Serialize)]
struct SetTemperature {
    zone: String,
    celsius: f64,
}

#[derive(Deserialize)]
struct Applied {
    celsius: f64,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), ClientError> {
    let session = Session::from_env();
    let request = SetTemperature {
        zone: "driver".into(),
        celsius: 21.5,
    };
    let applied: Applied = session
        .call("com.example.Climate.SetTemperature", &request)
        .await?;
    println!("cabin set to {} °C", applied.celsius);
    let mut speeds = session.subscribe::<Speed>(["vehicle.speed"])?;
    while let Some(item) = speeds.next().await {
        match item {
            Ok(speed) => println!("{} km/h", speed.value.kmh),
            Err(event) => eprintln!("{event}"), // restart, lost connection, bad value
        }
    }
    Ok(())
}
