//! The same QM application with zenoh 1.x, for comparison: the climate
//! service as a queryable, the vehicle speed as a key expression.
use serde::Deserialize;

#[derive(Deserialize)]
struct Speed {
    kmh: f64,
}

#[tokio::main]
async fn main() -> zenoh::Result<()> {
    let session = zenoh::open(zenoh::Config::default()).await?;
    let request = r#"{"zone": "driver", "celsius": 21.5}"#;
    let replies = session.get("climate/set_temperature").payload(request).await?;
    while let Ok(reply) = replies.recv_async().await {
        match reply.result() {
            Ok(sample) => println!("cabin set: {}", sample.payload().try_to_string()?),
            Err(error) => eprintln!("climate: {}", error.payload().try_to_string()?),
        }
    }
    let speeds = session.declare_subscriber("vehicle/speed").await?;
    while let Ok(sample) = speeds.recv_async().await {
        match serde_json::from_slice::<Speed>(&sample.payload().to_bytes()) {
            Ok(speed) => println!("{} km/h", speed.kmh),
            Err(error) => eprintln!("bad value: {error}"),
        }
    }
    Ok(())
}
