//! A subscription that outlives its connection: a task reads the samples,
//! reconnects with backoff when the gateway goes away, subscribes again,
//! and tells the application what happened in between.

use std::collections::HashMap;
use std::pin::Pin;
use std::task::{Context, Poll};

use qm_ipc_proto::interface::GATEWAY_INTERFACE;
use qm_ipc_proto::Sample;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::backoff::Backoff;
use crate::connection::{ClientError, Connection};
use crate::session::{fetch_instance, field, Session};

/// Topics whose last seq a subscription remembers, to fill in gaps and
/// drop repeats across reconnects. Beyond it, further topics are passed
/// through as the gateway sends them.
pub const MAX_TRACKED_TOPICS: usize = 16 * 1024;

/// A stream of samples decoded into `T`, from [`Session::subscribe`].
///
/// Items:
/// - `Ok(sample)`: a value. `sample.dropped` counts the updates of its
///   topic this subscriber missed since its previous sample of the topic,
///   across reconnects too (the gateway keeps only the newest value for a
///   slow reader, and nothing for one that was away).
/// - `Err(ClientError::Decode { .. })` or `UnexpectedReply`: one message
///   that did not fit `T` or was not a sample; the next item follows.
/// - `Err(e)` with `e.is_disconnect()`: the connection was lost, once per
///   outage; the subscription reconnects with backoff and subscribes again.
///   Values it already delivered are not delivered again.
/// - `Err(ClientError::Timeout(_))`: the gateway took a connection but did
///   not answer within the session's timeout (hung, or a socket whose
///   service is stuck): an outage like a lost connection, reported once
///   and retried with backoff.
/// - `Err(ClientError::Restarted { .. })`: it reconnected to a new gateway
///   instance: the old values are gone and seq began again at 1.
/// - `Err(ClientError::Remote(e))`: the gateway refused the subscription
///   (access denied, a bad pattern). This ends the stream, except for
///   `LimitExceeded`, which is retried with backoff.
///
/// Dropping it ends the subscription and closes its connection.
#[derive(Debug)]
pub struct Subscription<T> {
    items: mpsc::Receiver<Result<Sample<T>, ClientError>>,
    task: JoinHandle<()>,
}

impl<T: DeserializeOwned + Send + 'static> Subscription<T> {
    pub(crate) fn start(session: Session, patterns: Vec<String>) -> Self {
        let (tx, items) = mpsc::channel(session.inner.stream_queue);
        let task = tokio::spawn(run(session, patterns, tx));
        Self { items, task }
    }
}

impl<T> Subscription<T> {
    /// The next item; `None` once the subscription ended. Cancel-safe.
    pub async fn next(&mut self) -> Option<Result<Sample<T>, ClientError>> {
        self.items.recv().await
    }
}

impl<T> futures_core::Stream for Subscription<T> {
    type Item = Result<Sample<T>, ClientError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.items.poll_recv(cx)
    }
}

impl<T> Drop for Subscription<T> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What a subscription remembers across reconnects.
#[derive(Debug, Default)]
struct Continuity {
    instance: Option<String>,
    last_seq: HashMap<String, u64>,
}

impl Continuity {
    /// Notes the instance a (re)connection found; a `Restarted` event when
    /// it is not the one seen before.
    fn connected(&mut self, instance: Option<String>) -> Option<ClientError> {
        let instance = instance?;
        let restarted = match &self.instance {
            Some(previous) if *previous != instance => Some(ClientError::Restarted {
                previous: previous.clone(),
                current: instance.clone(),
            }),
            _ => None,
        };
        if restarted.is_some() {
            self.last_seq.clear();
        }
        self.instance = Some(instance);
        restarted
    }

    /// Fills in a sample's gap since the previous sample of its topic;
    /// `false` for one already delivered (a current value sent again after
    /// a reconnect).
    fn admit<V>(&mut self, sample: &mut Sample<V>) -> bool {
        // Seq numbers compare only within one gateway instance: without
        // knowing the instance nothing is dropped as a repeat.
        if self.instance.is_none() {
            return true;
        }
        match self.last_seq.get_mut(&sample.topic) {
            Some(last) if sample.seq <= *last => false,
            Some(last) => {
                sample.dropped = sample.dropped.max(sample.seq - *last - 1);
                *last = sample.seq;
                true
            }
            None => {
                if self.last_seq.len() < MAX_TRACKED_TOPICS {
                    self.last_seq.insert(sample.topic.clone(), sample.seq);
                }
                true
            }
        }
    }
}

impl Continuity {
    /// Takes a sample in: the restart it shows, if any (a current value
    /// from a new instance; reported before the sample), and whether to
    /// deliver it (`false` for a repeat).
    fn take<V>(&mut self, sample: &mut Sample<V>) -> (Option<ClientError>, bool) {
        let restart = match &sample.instance {
            Some(instance) if self.instance.as_ref() != Some(instance) => {
                self.connected(Some(instance.clone()))
            }
            _ => None,
        };
        (restart, self.admit(sample))
    }
}

/// Why a connected stream stopped.
enum Ended {
    /// The application dropped the subscription.
    Unwanted,
    /// The connection is gone: reconnect.
    Lost(ClientError),
    /// The gateway refused: the stream ends.
    Refused,
    /// The gateway refused for now (a limit): try again later.
    Deferred,
}

type Items<T> = mpsc::Sender<Result<Sample<T>, ClientError>>;

async fn run<T: DeserializeOwned>(session: Session, patterns: Vec<String>, tx: Items<T>) {
    let mut backoff = Backoff::new(session.inner.backoff_base, session.inner.backoff_cap);
    let mut continuity = Continuity::default();
    // One disconnect item per outage, not one per failed attempt.
    let mut outage_reported = false;
    loop {
        // Connecting and the Instance question are bounded like any call:
        // a gateway that accepts and never answers (hung, or a socket
        // whose service is stuck) is an outage to report and retry, not a
        // subscription that waits silently for ever.
        let timeout = session.inner.timeout;
        let opened = match tokio::time::timeout(timeout, open(&session, &patterns)).await {
            Ok(opened) => opened,
            Err(_) => Err(ClientError::Timeout(timeout)),
        };
        let ended = match opened {
            Ok((conn, instance)) => {
                outage_reported = false;
                if let Some(restart) = continuity.connected(instance) {
                    if tx.send(Err(restart)).await.is_err() {
                        return;
                    }
                }
                stream(conn, &mut continuity, &tx, &mut backoff).await
            }
            Err(e) => Ended::Lost(e),
        };
        match ended {
            Ended::Unwanted | Ended::Refused => return,
            Ended::Deferred => {}
            Ended::Lost(e) => {
                if !outage_reported {
                    outage_reported = true;
                    if tx.send(Err(e)).await.is_err() {
                        return;
                    }
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff.next_delay()) => {}
            _ = tx.closed() => return,
        }
    }
}

async fn open(
    session: &Session,
    patterns: &[String],
) -> Result<(Connection, Option<String>), ClientError> {
    let mut conn = Connection::connect(&session.inner.path).await?;
    let instance = fetch_instance(&mut conn).await?;
    #[derive(serde::Serialize)]
    struct Subscribe<'a> {
        topics: &'a [String],
    }
    conn.send_typed(
        &format!("{GATEWAY_INTERFACE}.Subscribe"),
        &Subscribe { topics: patterns },
        true,
    )
    .await?;
    Ok((conn, instance))
}

/// A subscription reply's parameters.
#[derive(Deserialize)]
struct SampleReply<T> {
    sample: Sample<T>,
}

/// Reads one connection's samples until it ends.
async fn stream<T: DeserializeOwned>(
    mut conn: Connection,
    continuity: &mut Continuity,
    tx: &Items<T>,
    backoff: &mut Backoff,
) -> Ended {
    let mut first = true;
    loop {
        // Dropping the subscription aborts this task, so the read needs no
        // watch on the receiver (a select here costs every sample).
        let reply = conn.recv_typed::<SampleReply<T>>().await;
        let (restart, item) = match reply {
            Ok(Ok(SampleReply { mut sample })) => {
                let (restart, deliver) = continuity.take(&mut sample);
                (restart, deliver.then_some(Ok(sample)))
            }
            // Readable as a sample but not as a `T`: taken in, reported.
            Ok(Err(misfit)) => match field::<Sample>(misfit.parameters, "sample") {
                Ok(mut sample) => {
                    let (restart, deliver) = continuity.take(&mut sample);
                    let error = ClientError::Decode {
                        what: format!("{} seq {}", sample.topic, sample.seq),
                        error: misfit.error,
                    };
                    (restart, deliver.then_some(Err(error)))
                }
                Err(e) => (None, Some(Err(e))),
            },
            Err(ClientError::Remote(refusal)) => {
                let deferred = refusal.name().ends_with(".LimitExceeded");
                // Unwanted or not, the stream ends here.
                let _ = tx.send(Err(ClientError::Remote(refusal))).await;
                return match deferred {
                    true => Ended::Deferred,
                    false => Ended::Refused,
                };
            }
            Err(e) if e.is_disconnect() => return Ended::Lost(e),
            Err(e) => (None, Some(Err(e))),
        };
        if first {
            // Subscribed (the gateway answers a refusal first): from here
            // a lost connection starts the backoff afresh.
            first = false;
            backoff.reset();
        }
        for item in [restart.map(Err), item].into_iter().flatten() {
            if tx.send(item).await.is_err() {
                return Ended::Unwanted;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn s(topic: &str, seq: u64, dropped: u64) -> Sample {
        Sample {
            topic: topic.into(),
            seq,
            value: json!({}),
            timestamp_us: 0,
            dropped,
            instance: None,
        }
    }

    #[test]
    fn gaps_are_filled_in_and_repeats_dropped_within_an_instance() {
        let mut c = Continuity::default();
        assert!(c.connected(Some("a".into())).is_none());
        let mut first = s("t", 5, 0);
        assert!(c.admit(&mut first));
        // The current value again after a reconnect: a repeat.
        assert!(!c.admit(&mut s("t", 5, 0)));
        // Three updates missed while away; the gateway's count says 0.
        let mut next = s("t", 9, 0);
        assert!(c.admit(&mut next));
        assert_eq!(next.dropped, 3);
        // The gateway's own count stands when it is larger (it cannot be,
        // but the larger of the two is never wrong).
        let mut other = s("u", 1, 2);
        assert!(c.admit(&mut other));
        assert_eq!(other.dropped, 2);
    }

    #[test]
    fn a_new_instance_is_a_restart_and_seq_starts_again() {
        let mut c = Continuity::default();
        c.connected(Some("a".into()));
        assert!(c.admit(&mut s("t", 7, 0)));
        match c.connected(Some("b".into())) {
            Some(ClientError::Restarted { previous, current }) => {
                assert_eq!((previous.as_str(), current.as_str()), ("a", "b"));
            }
            other => panic!("{other:?}"),
        }
        let mut again = s("t", 1, 0);
        assert!(c.admit(&mut again), "seq 1 of the new instance is new");
        assert_eq!(again.dropped, 0);
        assert!(c.connected(Some("b".into())).is_none());
    }

    #[test]
    fn without_an_instance_nothing_is_taken_for_a_repeat() {
        let mut c = Continuity::default();
        c.connected(None);
        assert!(c.admit(&mut s("t", 3, 0)));
        assert!(c.admit(&mut s("t", 1, 0)));
    }

    #[test]
    fn the_seq_memory_is_bounded() {
        let mut c = Continuity::default();
        c.connected(Some("a".into()));
        for i in 0..MAX_TRACKED_TOPICS + 10 {
            assert!(c.admit(&mut s(&format!("t{i}"), 1, 0)));
        }
        assert_eq!(c.last_seq.len(), MAX_TRACKED_TOPICS);
    }
}
