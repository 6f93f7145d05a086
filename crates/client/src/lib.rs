//! Client library for the qm-ipc gateway.
//!
//! - [`Session`]: what an application uses. Cheap to clone, `&self`
//!   methods; connects on first use and again after the gateway went
//!   away; typed [`get`](Session::get), [`publish`](Session::publish),
//!   [`call`](Session::call) (ASIL services behind the gateway) with a
//!   timeout on each; [`subscribe`](Session::subscribe) returns a
//!   [`Subscription`], an `impl Stream` of typed samples that resubscribes
//!   by itself and reports restarts and gaps.
//! - [`service::Service`]: an ASIL service written in Rust, an ordinary
//!   varlink server on its own socket that the gateway serves behind its
//!   policy.
//! - [`GatewayClient`] and [`Connection`]: the protocol itself on one
//!   connection, for tools and tests that want every message as it is.
//! - [`Backoff`]: capped exponential backoff with jitter.
//! - [`UnixConn`]: a Unix stream connection that wakes its task only when
//!   there is something to read (what [`service::Service`] and the
//!   gateway's connections to services use).
//!
//! ```no_run
//! # async fn example() -> Result<(), qm_ipc_client::ClientError> {
//! use qm_ipc_client::Session;
//!
//! #[derive(serde::Deserialize)]
//! struct Speed {
//!     kmh: f64,
//! }
//!
//! let session = Session::from_env();
//! let mut speeds = session.subscribe::<Speed>(["vehicle.speed"])?;
//! while let Some(item) = speeds.next().await {
//!     match item {
//!         Ok(sample) => println!("{} km/h", sample.value.kmh),
//!         Err(event) => eprintln!("{event}"),
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! Every example in these docs is compiled, and run against a real
//! gateway by `crates/cli/tests/client_library.rs`.

/// The full name of a method of the gateway's interface, known when
/// compiling (a call's hot path formats nothing). Defined before the
/// modules, which use it.
macro_rules! gateway {
    ($method:literal) => {
        concat!("io.qmipc.Gateway.", $method)
    };
}

mod backoff;
mod connection;
mod gateway;
pub mod service;
mod session;
mod subscription;

pub use backoff::Backoff;
pub use connection::{ClientError, Connection, DEFAULT_CLIENT_MAX_FRAME};
pub use gateway::{GatewayClient, Subscription as RawSubscription};
pub use qm_ipc_proto::paths;
pub use qm_ipc_proto::{ErrorReply, Info, Sample, Stats, TopicDescription};
pub use qm_ipc_transport::UnixConn;
pub use session::{Session, SessionBuilder, DEFAULT_TIMEOUT};
pub use subscription::{Subscription, MAX_TRACKED_ORIGINS, MAX_TRACKED_TOPICS};

#[cfg(test)]
mod tests {
    use qm_ipc_proto::interface::GATEWAY_INTERFACE;

    #[test]
    fn the_method_names_written_out_are_the_interface_s() {
        assert_eq!(gateway!("Get"), format!("{GATEWAY_INTERFACE}.Get"));
    }
}
