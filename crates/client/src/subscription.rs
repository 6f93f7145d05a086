//! A subscription that outlives its connection. Polling it reads the
//! samples straight from its socket (no task, no channel between the
//! socket and the application); when the gateway goes away it reconnects
//! with backoff, subscribes again, and tells the application what happened
//! in between.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use qm_ipc_proto::Sample;
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::backoff::Backoff;
use crate::connection::{ClientError, Connection};
use crate::session::{fetch_instance, field, Session};

/// Topics whose last seq a subscription remembers, to fill in gaps and
/// drop repeats across reconnects. Beyond it, further topics are passed
/// through as the gateway sends them.
pub const MAX_TRACKED_TOPICS: usize = 16 * 1024;

/// Topics whose origin gateway (`Sample::origin`, for values a bridge
/// relays from another gateway) a subscription remembers, to report that
/// gateway's restarts. Beyond it, the origin of further topics is not
/// followed and their origins' restarts are not reported.
pub const MAX_TRACKED_ORIGINS: usize = 16 * 1024;

/// A stream of samples decoded into `T`, from [`Session::subscribe`].
///
/// It does its work when polled: the first poll connects and subscribes,
/// and each poll reads the next sample from the socket. While the
/// application does not poll, nothing is read, and the gateway keeps only
/// each topic's newest value for it (counted in `dropped`), so a slow
/// reader costs neither side memory.
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
/// - `Err(ClientError::OriginRestarted { topic, .. })`: the gateway a
///   relayed topic comes from (another machine's, through a bridge)
///   restarted: its old values are gone and its seq began again, though
///   this gateway's seq of the topic goes on. Reported once, just before
///   the first sample from the new origin instance.
/// - `Err(ClientError::Remote(e))`: the gateway refused the subscription
///   (access denied, a bad pattern). This ends the stream, except for
///   `LimitExceeded`, which is retried with backoff.
///
/// Dropping it ends the subscription and closes its connection.
pub struct Subscription<T> {
    /// The step being polled, which owns the driver while it runs; kept
    /// here between polls, so dropping a `next()` future loses nothing.
    step: Option<Pin<Box<dyn Future<Output = Stepped<T>> + Send>>>,
    /// The driver between steps (`None` while a step owns it).
    driver: Option<Box<Driver>>,
    /// Items a step produced and the application has not taken yet (a
    /// restart is reported just before the sample that showed it).
    ready: VecDeque<Item<T>>,
}

impl<T> std::fmt::Debug for Subscription<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("patterns", &self.driver.as_ref().map(|d| &d.patterns))
            .field("ready", &self.ready.len())
            .field("ended", &self.driver.as_ref().is_some_and(|d| d.ended))
            .finish()
    }
}

// Nothing in it is ever pinned in place: the step is boxed and the items
// are moved out whole.
impl<T> Unpin for Subscription<T> {}

type Item<T> = Result<Sample<T>, ClientError>;
type Stepped<T> = (Box<Driver>, Vec<Item<T>>);

impl<T: DeserializeOwned + Send + 'static> Subscription<T> {
    pub(crate) fn start(session: Session, patterns: Vec<String>) -> Self {
        let backoff = Backoff::new(session.inner.backoff_base, session.inner.backoff_cap);
        Self {
            step: None,
            driver: Some(Box::new(Driver {
                session,
                patterns,
                continuity: Continuity::default(),
                backoff,
                conn: None,
                subscribed: false,
                wait_first: false,
                outage_reported: false,
                ended: false,
            })),
            ready: VecDeque::new(),
        }
    }

    /// The next item; `None` once the subscription ended. Cancel-safe: the
    /// work in progress stays with the subscription.
    pub async fn next(&mut self) -> Option<Item<T>> {
        std::future::poll_fn(|cx| self.poll_item(cx)).await
    }

    fn poll_item(&mut self, cx: &mut Context<'_>) -> Poll<Option<Item<T>>> {
        loop {
            if let Some(item) = self.ready.pop_front() {
                return Poll::Ready(Some(item));
            }
            if self.step.is_none() {
                let Some(driver) = self.driver.take() else {
                    return Poll::Ready(None);
                };
                if driver.ended {
                    self.driver = Some(driver);
                    return Poll::Ready(None);
                }
                self.step = Some(Box::pin(driver.step::<T>()));
            }
            let Some(step) = self.step.as_mut() else {
                return Poll::Ready(None);
            };
            let (driver, items) = std::task::ready!(step.as_mut().poll(cx));
            self.step = None;
            self.driver = Some(driver);
            self.ready.extend(items);
        }
    }
}

impl<T: DeserializeOwned + Send + 'static> futures_core::Stream for Subscription<T> {
    type Item = Item<T>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_item(cx)
    }
}

/// What a subscription remembers across reconnects.
#[derive(Debug, Default)]
struct Continuity {
    instance: Option<String>,
    last_seq: HashMap<String, u64>,
    /// Per topic, the origin gateway of its last relayed sample; kept
    /// across this gateway's restarts (that gateway is another one).
    origins: HashMap<String, String>,
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
    /// Takes a sample in: the restarts it shows (a current value from a
    /// new instance of this gateway, a value from a new instance of its
    /// origin gateway; reported before the sample, in that order), and
    /// whether to deliver it (`false` for a repeat).
    fn take<V>(&mut self, sample: &mut Sample<V>) -> (Vec<ClientError>, bool) {
        let mut restarts = Vec::new();
        if let Some(instance) = &sample.instance {
            if self.instance.as_ref() != Some(instance) {
                restarts.extend(self.connected(Some(instance.clone())));
            }
        }
        let deliver = self.admit(sample);
        if deliver {
            restarts.extend(self.origin(sample));
        }
        (restarts, deliver)
    }

    /// Notes the origin gateway of a sample to be delivered; an
    /// `OriginRestarted` event when it is not the one its topic's previous
    /// relayed sample came from. A value published at this gateway (no
    /// origin) leaves the topic's origin as it was.
    fn origin<V>(&mut self, sample: &Sample<V>) -> Option<ClientError> {
        let current = sample.origin.as_ref()?;
        match self.origins.get_mut(&sample.topic) {
            Some(previous) if previous != current => {
                let previous = std::mem::replace(previous, current.clone());
                Some(ClientError::OriginRestarted {
                    topic: sample.topic.clone(),
                    previous,
                    current: current.clone(),
                })
            }
            Some(_) => None,
            None => {
                if self.origins.len() < MAX_TRACKED_ORIGINS {
                    self.origins.insert(sample.topic.clone(), current.clone());
                }
                None
            }
        }
    }
}

/// What a subscription keeps between steps: its connection, if any, and
/// what it remembers across reconnects.
struct Driver {
    session: Session,
    patterns: Vec<String>,
    continuity: Continuity,
    backoff: Backoff,
    conn: Option<Connection>,
    /// The gateway answered the subscription on this connection (it
    /// answers a refusal first): from here a lost connection starts the
    /// backoff afresh.
    subscribed: bool,
    /// The next connection attempt waits its backoff delay first.
    wait_first: bool,
    /// One disconnect item per outage, not one per failed attempt.
    outage_reported: bool,
    /// The gateway refused the subscription for good, or the stream ended.
    ended: bool,
}

impl Driver {
    /// Works until there is something to tell the application: one sample
    /// or more items, or the end.
    async fn step<T: DeserializeOwned>(mut self: Box<Self>) -> Stepped<T> {
        let mut items = Vec::new();
        while items.is_empty() && !self.ended {
            match self.conn.take() {
                Some(conn) => self.read(conn, &mut items).await,
                None => self.reconnect(&mut items).await,
            }
        }
        (self, items)
    }

    async fn reconnect<T>(&mut self, items: &mut Vec<Item<T>>) {
        if self.wait_first {
            tokio::time::sleep(self.backoff.next_delay()).await;
        }
        self.wait_first = true;
        // Connecting and the Instance question are bounded like any call:
        // a gateway that accepts and never answers (hung, or a socket
        // whose service is stuck) is an outage to report and retry, not a
        // subscription that waits silently for ever.
        let timeout = self.session.inner.timeout;
        let opened = match tokio::time::timeout(timeout, open(&self.session, &self.patterns)).await
        {
            Ok(opened) => opened,
            Err(_) => Err(ClientError::Timeout(timeout)),
        };
        match opened {
            Ok((conn, instance)) => {
                self.outage_reported = false;
                self.subscribed = false;
                if let Some(restart) = self.continuity.connected(instance) {
                    items.push(Err(restart));
                }
                self.conn = Some(conn);
            }
            Err(e) => self.lost(e, items),
        }
    }

    fn lost<T>(&mut self, error: ClientError, items: &mut Vec<Item<T>>) {
        if !self.outage_reported {
            self.outage_reported = true;
            items.push(Err(error));
        }
    }

    /// Reads one message of a connected stream.
    async fn read<T: DeserializeOwned>(&mut self, mut conn: Connection, items: &mut Vec<Item<T>>) {
        let (restarts, item) = match conn.recv_typed::<SampleReply<T>>().await {
            Ok(Ok(SampleReply { mut sample })) => {
                let (restarts, deliver) = self.continuity.take(&mut sample);
                (restarts, deliver.then_some(Ok(sample)))
            }
            // Readable as a sample but not as a `T`: taken in, reported.
            Ok(Err(misfit)) => match field::<Sample>(misfit.parameters, "sample") {
                Ok(mut sample) => {
                    let (restarts, deliver) = self.continuity.take(&mut sample);
                    let error = ClientError::Decode {
                        what: format!("{} seq {}", sample.topic, sample.seq),
                        error: misfit.error,
                    };
                    (restarts, deliver.then_some(Err(error)))
                }
                Err(e) => (Vec::new(), Some(Err(e))),
            },
            Err(ClientError::Remote(refusal)) => {
                // The stream ends here; a limit is tried again later.
                if !refusal.name().ends_with(".LimitExceeded") {
                    self.ended = true;
                }
                items.push(Err(ClientError::Remote(refusal)));
                return;
            }
            Err(e) if e.is_disconnect() => return self.lost(e, items),
            Err(e) => (Vec::new(), Some(Err(e))),
        };
        if !self.subscribed {
            self.subscribed = true;
            self.backoff.reset();
        }
        items.extend(restarts.into_iter().map(Err));
        items.extend(item);
        self.conn = Some(conn);
    }
}

async fn open(
    session: &Session,
    patterns: &[String],
) -> Result<(Connection, Option<String>), ClientError> {
    let mut conn = Connection::connect(&session.inner.path).await?;
    let instance = fetch_instance(&mut conn).await?;
    // The session's own view too: `last_instance()` answers from the
    // moment a subscription connected (a bridge names the instance of
    // every sample it sends on, the first ones included).
    session.note_instance(instance.clone());
    #[derive(serde::Serialize)]
    struct Subscribe<'a> {
        topics: &'a [String],
    }
    conn.send_typed(gateway!("Subscribe"), &Subscribe { topics: patterns }, true)
        .await?;
    Ok((conn, instance))
}

/// A subscription reply's parameters.
#[derive(Deserialize)]
struct SampleReply<T> {
    sample: Sample<T>,
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
            origin: None,
        }
    }

    fn relayed(topic: &str, seq: u64, origin: &str) -> Sample {
        Sample {
            origin: Some(origin.into()),
            ..s(topic, seq, 0)
        }
    }

    fn names(events: &[ClientError]) -> Vec<String> {
        events
            .iter()
            .map(|e| match e {
                ClientError::Restarted { previous, current } => {
                    format!("restarted {previous}->{current}")
                }
                ClientError::OriginRestarted {
                    topic,
                    previous,
                    current,
                } => format!("origin of {topic} {previous}->{current}"),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn a_new_origin_instance_is_reported_once_before_its_first_sample() {
        let mut c = Continuity::default();
        c.connected(Some("local".into()));
        // The first relayed sample of a topic: nothing to compare with.
        let (events, deliver) = c.take(&mut relayed("far.speed", 1, "o1"));
        assert!(events.is_empty() && deliver);
        assert!(c.take(&mut relayed("far.speed", 2, "o1")).0.is_empty());
        // The origin gateway restarted; this one did not, so seq goes on.
        let (events, deliver) = c.take(&mut relayed("far.speed", 3, "o2"));
        assert_eq!(names(&events), ["origin of far.speed o1->o2"]);
        assert!(deliver);
        assert!(c.take(&mut relayed("far.speed", 4, "o2")).0.is_empty());
        // A repeat of a delivered value is dropped and reports nothing.
        let (events, deliver) = c.take(&mut relayed("far.speed", 4, "o2"));
        assert!(events.is_empty() && !deliver);
        // Origins are per topic: another topic from o1 knows no o2 yet.
        assert!(c.take(&mut relayed("far.gear", 1, "o1")).0.is_empty());
        // A value published at this gateway has no origin and changes
        // nothing; the topic's next relayed value is compared with o2.
        assert!(c.take(&mut s("far.speed", 5, 0)).0.is_empty());
        assert!(c.take(&mut relayed("far.speed", 6, "o2")).0.is_empty());
    }

    #[test]
    fn the_origin_outlives_a_restart_of_this_gateway() {
        // This gateway restarts and the bridge offers the value again from
        // the same origin: only this gateway's restart is reported. When
        // both restarted, both are, this gateway's first.
        let mut c = Continuity::default();
        c.connected(Some("local1".into()));
        c.take(&mut relayed("far.speed", 7, "o1"));
        let mut again = Sample {
            instance: Some("local2".into()),
            ..relayed("far.speed", 1, "o1")
        };
        let (events, deliver) = c.take(&mut again);
        assert_eq!(names(&events), ["restarted local1->local2"]);
        assert!(deliver);
        let mut both = Sample {
            instance: Some("local3".into()),
            ..relayed("far.speed", 1, "o2")
        };
        let (events, deliver) = c.take(&mut both);
        assert_eq!(
            names(&events),
            ["restarted local2->local3", "origin of far.speed o1->o2"]
        );
        assert!(deliver);
    }

    #[test]
    fn the_origin_memory_is_bounded() {
        let mut c = Continuity::default();
        c.connected(Some("a".into()));
        for i in 0..MAX_TRACKED_ORIGINS + 10 {
            assert!(c.take(&mut relayed(&format!("t{i}"), 1, "o1")).1);
        }
        assert_eq!(c.origins.len(), MAX_TRACKED_ORIGINS);
        // A topic past the bound is passed through, its origin not
        // followed: a new one is not reported (nothing to compare with).
        let past = format!("t{}", MAX_TRACKED_ORIGINS + 5);
        let (events, deliver) = c.take(&mut relayed(&past, 2, "o2"));
        assert!(events.is_empty() && deliver);
        // A tracked topic still reports.
        let (events, _) = c.take(&mut relayed("t0", 2, "o2"));
        assert_eq!(names(&events), ["origin of t0 o1->o2"]);
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
