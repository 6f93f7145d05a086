//! The typed `io.qmipc.Gateway` API.

use std::path::Path;

use qm_ipc_proto::interface::{GATEWAY_INTERFACE, SERVICE_INTERFACE};
use qm_ipc_proto::{Sample, ServiceRequest};
use serde_json::{json, Map, Value};
use tokio::net::UnixStream;

use crate::connection::{ClientError, Connection};

fn method(name: &str) -> String {
    format!("{GATEWAY_INTERFACE}.{name}")
}

fn field<T: serde::de::DeserializeOwned>(
    mut params: Map<String, Value>,
    name: &str,
) -> Result<T, ClientError> {
    let value = params.remove(name).unwrap_or(Value::Null);
    serde_json::from_value(value)
        .map_err(|e| ClientError::UnexpectedReply(format!("field {name:?}: {e}")))
}

/// A connection speaking `io.qmipc.Gateway`.
#[derive(Debug)]
pub struct GatewayClient {
    conn: Connection,
}

impl GatewayClient {
    pub async fn connect(path: impl AsRef<Path>) -> Result<Self, ClientError> {
        Ok(Self {
            conn: Connection::connect(path).await?,
        })
    }

    pub fn from_stream(stream: UnixStream) -> Self {
        Self {
            conn: Connection::from_stream(stream),
        }
    }

    /// The underlying connection, for raw varlink calls.
    pub fn connection(&mut self) -> &mut Connection {
        &mut self.conn
    }

    /// Publishes a value; returns its sequence number.
    pub async fn publish(&mut self, topic: &str, value: Value) -> Result<u64, ClientError> {
        let reply = self
            .conn
            .call(
                &method("Publish"),
                json!({ "topic": topic, "value": value }),
            )
            .await?;
        field(reply, "seq")
    }

    pub async fn get(&mut self, topic: &str) -> Result<Sample, ClientError> {
        let reply = self
            .conn
            .call(&method("Get"), json!({ "topic": topic }))
            .await?;
        field(reply, "sample")
    }

    /// Calls a service method through the gateway. `timeout_ms` of `None`
    /// uses the gateway's default.
    pub async fn call(
        &mut self,
        service: &str,
        method_name: &str,
        parameters: Value,
        timeout_ms: Option<u64>,
    ) -> Result<Value, ClientError> {
        let reply = self
            .conn
            .call(
                &method("Call"),
                json!({
                    "service": service,
                    "method": method_name,
                    "parameters": parameters,
                    "timeout_ms": timeout_ms,
                }),
            )
            .await?;
        field(reply, "result")
    }

    pub async fn stats(&mut self) -> Result<Map<String, Value>, ClientError> {
        self.conn.call(&method("Stats"), json!({})).await
    }

    /// `org.varlink.service.GetInfo`.
    pub async fn info(&mut self) -> Result<Map<String, Value>, ClientError> {
        self.conn
            .call(&format!("{SERVICE_INTERFACE}.GetInfo"), json!({}))
            .await
    }

    /// `org.varlink.service.GetInterfaceDescription`.
    pub async fn describe(&mut self, interface: &str) -> Result<String, ClientError> {
        let reply = self
            .conn
            .call(
                &format!("{SERVICE_INTERFACE}.GetInterfaceDescription"),
                json!({ "interface": interface }),
            )
            .await?;
        field(reply, "description")
    }

    /// Turns this connection into a subscription. Patterns are topic names
    /// or prefixes such as `vehicle.*`.
    pub async fn subscribe<S: AsRef<str>>(
        mut self,
        topics: &[S],
    ) -> Result<Subscription, ClientError> {
        let topics: Vec<&str> = topics.iter().map(AsRef::as_ref).collect();
        self.conn
            .call_more(&method("Subscribe"), json!({ "topics": topics }))
            .await?;
        Ok(Subscription { conn: self.conn })
    }

    /// Turns this connection into the provider of `services`. Returns once
    /// the gateway confirmed the registration.
    pub async fn register<S: AsRef<str>>(
        mut self,
        services: &[S],
    ) -> Result<Provider, ClientError> {
        let services: Vec<&str> = services.iter().map(AsRef::as_ref).collect();
        self.conn
            .call_more(&method("Register"), json!({ "services": services }))
            .await?;
        let confirmation = self.conn.recv().await?;
        if !confirmation.continues {
            confirmation
                .clone()
                .into_result()
                .map_err(ClientError::Remote)?;
            return Err(ClientError::UnexpectedReply(
                "registration ended without a stream".into(),
            ));
        }
        Ok(Provider { conn: self.conn })
    }
}

/// A running subscription.
#[derive(Debug)]
pub struct Subscription {
    conn: Connection,
}

impl Subscription {
    /// The next sample. Cancel-safe.
    pub async fn next(&mut self) -> Result<Sample, ClientError> {
        let reply = self.conn.recv().await?;
        let params = reply.into_result().map_err(ClientError::Remote)?;
        field(params, "sample")
    }
}

/// A registered provider: receives requests, sends replies.
#[derive(Debug)]
pub struct Provider {
    conn: Connection,
}

impl Provider {
    /// The next request to serve. Cancel-safe.
    pub async fn next_request(&mut self) -> Result<ServiceRequest, ClientError> {
        let reply = self.conn.recv().await?;
        let params = reply.into_result().map_err(ClientError::Remote)?;
        field(params, "request")
    }

    /// Answers request `id` with a result.
    pub async fn reply(&mut self, id: u64, result: Value) -> Result<(), ClientError> {
        self.conn
            .call_oneway(&method("Reply"), json!({ "id": id, "result": result }))
            .await
    }

    /// Answers request `id` with an error of the provider's own.
    pub async fn reply_error(
        &mut self,
        id: u64,
        error: &str,
        parameters: Value,
    ) -> Result<(), ClientError> {
        self.conn
            .call_oneway(
                &method("Reply"),
                json!({ "id": id, "error": error, "error_parameters": parameters }),
            )
            .await
    }
}
