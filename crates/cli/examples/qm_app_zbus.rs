//! The same QM application with zbus over D-Bus, for comparison: the
//! climate service and the vehicle speed as D-Bus objects.
use futures_util::StreamExt;
use zbus::{proxy, Connection};

#[proxy(
    interface = "com.example.Climate",
    default_service = "com.example.Climate",
    default_path = "/com/example/Climate"
)]
trait Climate {
    fn set_temperature(&self, zone: &str, celsius: f64) -> zbus::Result<f64>;
}

#[proxy(
    interface = "com.example.Vehicle",
    default_service = "com.example.Vehicle",
    default_path = "/com/example/Vehicle"
)]
trait Vehicle {
    #[zbus(property)]
    fn speed(&self) -> zbus::Result<f64>;
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> zbus::Result<()> {
    let connection = Connection::system().await?;
    let climate = ClimateProxy::new(&connection).await?;
    let applied = climate.set_temperature("driver", 21.5).await?;
    println!("cabin set to {applied} °C");
    let vehicle = VehicleProxy::new(&connection).await?;
    let mut speeds = vehicle.receive_speed_changed().await;
    while let Some(change) = speeds.next().await {
        println!("{} km/h", change.get().await?);
    }
    Ok(())
}
