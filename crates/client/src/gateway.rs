//! The typed `io.qmipc.Gateway` API.

use std::path::Path;

use qm_ipc_proto::interface::SERVICE_INTERFACE;
use qm_ipc_proto::Sample;
use serde_json::{json, Map, Value};
use tokio::net::UnixStream;

use crate::connection::{ClientError, Connection};
use crate::session::field;

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
                gateway!("Publish"),
                json!({ "topic": topic, "value": value }),
            )
            .await?;
        field(reply, "seq")
    }

    pub async fn get(&mut self, topic: &str) -> Result<Sample, ClientError> {
        let reply = self
            .conn
            .call(gateway!("Get"), json!({ "topic": topic }))
            .await?;
        field(reply, "sample")
    }

    pub async fn stats(&mut self) -> Result<Map<String, Value>, ClientError> {
        self.conn.call(gateway!("Stats"), json!({})).await
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
            .call_more(gateway!("Subscribe"), json!({ "topics": topics }))
            .await?;
        Ok(Subscription {
            conn: self.conn,
            malformed: 0,
        })
    }
}

/// Is this error about one message only, so that the stream can go on
/// with the next (frames are NUL-delimited, so one bad frame loses
/// nothing else)?
fn one_bad_message(error: &ClientError) -> bool {
    matches!(
        error,
        ClientError::Message(_) | ClientError::UnexpectedReply(_)
    )
}

/// The next item of a stream, skipping (and counting) messages that
/// cannot be read: one bad message never ends a subscription.
async fn next_item<T: serde::de::DeserializeOwned>(
    conn: &mut Connection,
    name: &str,
    malformed: &mut u64,
) -> Result<T, ClientError> {
    loop {
        let item = match conn.recv().await {
            Ok(reply) => reply
                .into_result()
                .map_err(ClientError::Remote)
                .and_then(|params| field(params, name)),
            Err(e) => Err(e),
        };
        match item {
            Err(e) if one_bad_message(&e) => *malformed += 1,
            other => return other,
        }
    }
}

/// A running subscription.
#[derive(Debug)]
pub struct Subscription {
    conn: Connection,
    malformed: u64,
}

impl Subscription {
    /// The next sample. Cancel-safe. A message that cannot be read is
    /// skipped and counted in [`malformed`](Self::malformed).
    pub async fn next(&mut self) -> Result<Sample, ClientError> {
        next_item(&mut self.conn, "sample", &mut self.malformed).await
    }

    /// Messages skipped because they could not be read.
    pub fn malformed(&self) -> u64 {
        self.malformed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;

    /// Regression: one message a client cannot read (a value a JSON parser
    /// rejects, a sample of the wrong shape) ended the subscription, and
    /// the demo client then reconnected into the same message for good.
    #[tokio::test]
    async fn a_bad_message_is_skipped_and_counted_not_fatal() {
        let (ours, mut theirs) = tokio::net::UnixStream::pair().unwrap();
        let client = GatewayClient::from_stream(ours);
        let mut sub = tokio::time::timeout(Duration::from_secs(10), async {
            let sub = client.subscribe(&["t"]).await.unwrap();
            theirs
                .write_all(
                    concat!(
                        "{\"parameters\":{\"sample\":{\"topic\":\"t\",\"seq\":1,\"value\":1e999,\"timestamp_us\":0,\"dropped\":0}},\"continues\":true}\0",
                        "{\"parameters\":{\"sample\":{\"seq\":\"one\"}},\"continues\":true}\0",
                        "{\"parameters\":{\"sample\":{\"topic\":\"t\",\"seq\":2,\"value\":{\"ok\":true},\"timestamp_us\":0,\"dropped\":0}},\"continues\":true}\0",
                    )
                    .as_bytes(),
                )
                .await
                .unwrap();
            sub
        })
        .await
        .unwrap();
        let sample = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(sample.seq, 2);
        assert_eq!(sub.malformed(), 2);
    }
}
