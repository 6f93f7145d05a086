//! Client library for the qm-ipc gateway.
//!
//! - [`Connection`]: one varlink connection (calls, replies, oneway).
//! - [`GatewayClient`]: the typed `io.qmipc.Gateway` API on a connection;
//!   [`Subscription`] and [`Provider`] are what its streaming calls turn
//!   the connection into.
//! - [`Backoff`]: capped exponential backoff with jitter, for reconnecting.
//!
//! ```no_run
//! # async fn example() -> Result<(), qm_ipc_client::ClientError> {
//! use qm_ipc_client::GatewayClient;
//! let mut gw = GatewayClient::connect("/run/ipc/ipc.socket").await?;
//! let sample = gw.get("vehicle.speed").await?;
//! println!("{} = {}", sample.topic, sample.value);
//! # Ok(()) }
//! ```

mod backoff;
mod connection;
mod gateway;

pub use backoff::Backoff;
pub use connection::{ClientError, Connection, DEFAULT_CLIENT_MAX_FRAME};
pub use gateway::{GatewayClient, Provider, Subscription};
pub use qm_ipc_proto::{ErrorReply, Sample, ServiceRequest};
