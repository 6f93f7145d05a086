//! The running bridge: one gateway session, one Zenoh session, and a task
//! per route.
//!
//! Out: a subscription on the local gateway feeds a conflating queue
//! (newest value per topic, bounded by topics); one sender drains it into
//! Zenoh. A slow or cut network fills the queue, never the gateway: the
//! gateway only sees a subscriber that reads at its own pace.
//!
//! In: Zenoh samples pass the token bucket (else they are dropped and
//! counted) into a second conflating queue; one publisher drains it into
//! the local gateway after the origin tracker has thrown out repeats and
//! noted gaps and restarts.
//!
//! Current values: the out side keeps each topic's newest envelope and
//! answers queries for them; a liveliness token per out route tells far
//! bridges when it (re)joined, and they ask then, so a restart or a
//! restored link brings the current values at once. They go through the
//! same bucket and tracker as live samples.
//!
//! Services: an export is a queryable that calls the local gateway; an
//! import is a varlink service on a local socket whose methods are Zenoh
//! queries, with the caller's deadline.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use qm_ipc_client::service::{MethodError, Service};
use qm_ipc_client::{ClientError, ErrorReply, Session};
use qm_ipc_proto::interface::{check_instance_id, TopicPattern};
use serde_json::{json, Value};
use tokio::sync::{Notify, Semaphore};
use tracing::{debug, info, warn};
use zenoh::qos::CongestionControl;
use zenoh::query::{ConsolidationMode, QueryTarget};
use zenoh::sample::{Locality, SampleKind};

use crate::bounds::{ConflatingQueue, OriginTracker, TokenBucket, Verdict};
use crate::config::{Config, ServiceExport, ServiceImport, TopicIn, TopicOut};
use crate::wire::{CallAnswer, CallRequest, Envelope};

/// Calls from the network served at once; more are refused with
/// `LimitExceeded` rather than queued.
const MAX_CALLS_IN_FLIGHT: usize = 64;
/// Topics whose last origin seq the inbound side remembers, and whose
/// newest value the outbound side keeps for far bridges that (re)join.
const MAX_TRACKED_TOPICS: usize = 16384;
/// The chunk under a route's key where sending bridges hold their
/// liveliness tokens (`@` chunks are never matched by `**`).
const BRIDGE_TOKEN: &str = "@qm-ipc-bridge";

/// The newest envelope of each out key, encoded.
type Cache = Arc<Mutex<std::collections::HashMap<String, Vec<u8>>>>;
/// Takes one sample from the network: its key and its payload.
type Intake = Arc<dyn Fn(&str, &[u8]) + Send + Sync>;
type Queryable = zenoh::query::Queryable<zenoh::handlers::FifoChannelHandler<zenoh::query::Query>>;

/// Counters, logged with every event and on exit.
#[derive(Debug, Default)]
pub struct Counters {
    pub out_sent: AtomicU64,
    pub out_send_failed: AtomicU64,
    pub in_received: AtomicU64,
    pub in_rate_limited: AtomicU64,
    pub in_malformed: AtomicU64,
    pub in_duplicates: AtomicU64,
    pub in_missed: AtomicU64,
    pub in_restarts: AtomicU64,
    pub in_published: AtomicU64,
    pub in_publish_failed: AtomicU64,
    pub calls_served: AtomicU64,
    pub calls_refused: AtomicU64,
    pub calls_forwarded: AtomicU64,
}

impl Counters {
    pub fn snapshot(&self) -> Value {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        json!({
            "out_sent": g(&self.out_sent),
            "out_send_failed": g(&self.out_send_failed),
            "in_received": g(&self.in_received),
            "in_rate_limited": g(&self.in_rate_limited),
            "in_malformed": g(&self.in_malformed),
            "in_duplicates": g(&self.in_duplicates),
            "in_missed": g(&self.in_missed),
            "in_restarts": g(&self.in_restarts),
            "in_published": g(&self.in_published),
            "in_publish_failed": g(&self.in_publish_failed),
            "calls_served": g(&self.calls_served),
            "calls_refused": g(&self.calls_refused),
            "calls_forwarded": g(&self.calls_forwarded),
        })
    }
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Takes a token from the inbound bucket, if there is one.
fn admit(bucket: &Mutex<TokenBucket>) -> bool {
    bucket
        .lock()
        .map(|mut b| b.try_take(Instant::now()))
        .unwrap_or(false)
}

async fn declare_queryable(z: &zenoh::Session, selector: &str) -> Result<Queryable, StartError> {
    z.declare_queryable(selector)
        .await
        .map_err(|e| StartError::Declare {
            what: format!("the queryable {selector}"),
            message: e.to_string(),
        })
}

/// A queue with a wake-up for its one consumer.
struct Channel<T> {
    queue: Mutex<ConflatingQueue<T>>,
    ready: Notify,
}

impl<T> Channel<T> {
    fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            queue: Mutex::new(ConflatingQueue::new(capacity)),
            ready: Notify::new(),
        })
    }

    fn push(&self, key: &str, item: T) {
        let pushed = match self.queue.lock() {
            Ok(mut q) => q.push(key, item),
            Err(_) => false,
        };
        if pushed {
            self.ready.notify_one();
        }
    }

    async fn pop(&self) -> (String, T) {
        loop {
            let next = self.queue.lock().ok().and_then(|mut q| q.pop());
            if let Some(next) = next {
                return next;
            }
            self.ready.notified().await;
        }
    }

    fn dropped(&self) -> (u64, u64) {
        self.queue
            .lock()
            .map(|q| (q.conflated, q.overflowed))
            .unwrap_or_default()
    }
}

/// Why the bridge could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{path}: {message} (the Zenoh configuration is Zenoh's own JSON5 file; see Zenoh's DEFAULT_CONFIG.json5)")]
    ZenohConfig { path: String, message: String },
    #[error("cannot open the Zenoh session: {0}")]
    ZenohOpen(String),
    #[error("cannot declare {what} on Zenoh: {message}")]
    Declare { what: String, message: String },
    #[error("cannot serve the imported service {interface} on {path}: {message}")]
    Import {
        interface: String,
        path: String,
        message: String,
    },
}

/// Starts every route and runs until `stop` resolves.
pub async fn run(
    config: Config,
    stop: impl std::future::Future<Output = ()>,
) -> Result<Arc<Counters>, StartError> {
    let zconfig =
        zenoh::Config::from_file(&config.zenoh_config).map_err(|e| StartError::ZenohConfig {
            path: config.zenoh_config.display().to_string(),
            message: e.to_string(),
        })?;
    let z = zenoh::open(zconfig)
        .await
        .map_err(|e| StartError::ZenohOpen(e.to_string()))?;
    let gateway = Session::builder(&config.gateway_socket)
        .timeout(config.gateway_timeout)
        .reconnect_backoff(Duration::from_millis(50), Duration::from_secs(1))
        .build();
    let counters = Arc::new(Counters::default());
    let bucket = Arc::new(Mutex::new(TokenBucket::new(
        config.limits.inbound_rate,
        config.limits.inbound_burst,
        Instant::now(),
    )));
    let mut tasks = tokio::task::JoinSet::new();
    // Declared entities live as long as these handles.
    let mut keep_subscribers = Vec::new();
    let mut keep_queryables = Vec::new();
    let mut keep_tokens = Vec::new();

    let mut out_queue = None;
    let mut in_queue = None;
    if !config.topics_out.is_empty() {
        let out: Arc<Channel<(String, Vec<u8>)>> = Channel::new(config.limits.queue_topics);
        out_queue = Some(out.clone());
        let cache: Cache = Default::default();
        for route in &config.topics_out {
            let (queryable, token) = current_values(&z, route, cache.clone(), &mut tasks).await?;
            keep_queryables.push(queryable);
            keep_tokens.push(token);
            tasks.spawn(topic_out(
                gateway.clone(),
                route.clone(),
                out.clone(),
                cache.clone(),
            ));
        }
        tasks.spawn(sender(z.clone(), out, counters.clone()));
    }

    if !config.topics_in.is_empty() {
        let inbound: Arc<Channel<Envelope>> = Channel::new(config.limits.queue_topics);
        in_queue = Some(inbound.clone());
        for route in &config.topics_in {
            keep_subscribers.extend(
                topic_in(
                    &z,
                    route,
                    inbound.clone(),
                    bucket.clone(),
                    counters.clone(),
                    config.gateway_timeout,
                )
                .await?,
            );
        }
        tasks.spawn(publisher(
            gateway.clone(),
            inbound,
            config.events_topic.clone(),
            counters.clone(),
        ));
    }

    let calls = Arc::new(Semaphore::new(MAX_CALLS_IN_FLIGHT));
    for route in &config.services_export {
        keep_queryables.push(
            export(
                &z,
                &gateway,
                route,
                bucket.clone(),
                calls.clone(),
                counters.clone(),
                &mut tasks,
            )
            .await?,
        );
    }
    for route in &config.services_import {
        import(&z, route, counters.clone(), &mut tasks).await?;
    }

    info!(
        zid = %z.zid(),
        gateway = %config.gateway_socket.display(),
        side = ?config.side,
        topics_out = config.topics_out.len(),
        topics_in = config.topics_in.len(),
        services_export = config.services_export.len(),
        services_import = config.services_import.len(),
        "bridge ready"
    );
    if config.is_empty() {
        warn!("no route is configured: nothing crosses this bridge");
    }
    stop.await;
    tasks.abort_all();
    drop(keep_subscribers);
    drop(keep_queryables);
    drop(keep_tokens);
    let mut snapshot = counters.snapshot();
    // What the conflating queues replaced or turned away.
    let (out_conflated, out_overflowed) = out_queue.map(|q| q.dropped()).unwrap_or_default();
    let (in_conflated, in_overflowed) = in_queue.map(|q| q.dropped()).unwrap_or_default();
    snapshot["out_conflated"] = out_conflated.into();
    snapshot["out_overflowed"] = out_overflowed.into();
    snapshot["in_conflated"] = in_conflated.into();
    snapshot["in_overflowed"] = in_overflowed.into();
    info!(counters = %snapshot, "bridge stopping");
    let _ = z.close().await;
    Ok(counters)
}

/// The gateway's topics of one route into the outbound queue.
async fn topic_out(
    gateway: Session,
    route: TopicOut,
    out: Arc<Channel<(String, Vec<u8>)>>,
    cache: Cache,
) {
    let mut sub = match gateway.subscribe::<Value>(route.topics.clone()) {
        Ok(sub) => sub,
        Err(e) => {
            warn!(topics = ?route.topics, "cannot subscribe: {e}");
            return;
        }
    };
    let mut instance: Option<String> = None;
    while let Some(item) = sub.next().await {
        match item {
            Ok(sample) => {
                if sample.instance.is_some() {
                    instance = sample.instance.clone();
                }
                let instance = instance.clone().or_else(|| gateway.last_instance());
                let key = format!("{}/{}", route.key, sample.topic);
                let envelope = Envelope {
                    topic: sample.topic,
                    seq: sample.seq,
                    instance,
                    dropped: sample.dropped,
                    timestamp_us: sample.timestamp_us,
                    value: sample.value,
                };
                let Ok(payload) = serde_json::to_vec(&envelope) else {
                    continue;
                };
                if let Ok(mut cache) = cache.lock() {
                    if cache.len() < MAX_TRACKED_TOPICS || cache.contains_key(&key) {
                        cache.insert(key.clone(), payload.clone());
                    }
                }
                out.push(&key.clone(), (key, payload));
            }
            Err(ClientError::Restarted { previous, current }) => {
                info!(%previous, %current, "the local gateway restarted; its samples cross with the new instance");
                instance = Some(current);
                // The old instance's values are gone: never offer them
                // to a late joiner as current.
                let prefix = format!("{}/", route.key);
                if let Ok(mut cache) = cache.lock() {
                    cache.retain(|k, _| !k.starts_with(&prefix));
                }
            }
            Err(e @ ClientError::Remote(_)) => {
                warn!(topics = ?route.topics, "the gateway refused the subscription: {e}");
            }
            Err(e) => debug!("subscription: {e}"),
        }
    }
}

/// Answers a far bridge that (re)joined with the newest value of each
/// topic of one out route, so that it need not wait for the next update:
/// a queryable on `key/**` over the cache, and a liveliness token that
/// tells far bridges when to ask.
async fn current_values(
    z: &zenoh::Session,
    route: &TopicOut,
    cache: Cache,
    tasks: &mut tokio::task::JoinSet<()>,
) -> Result<(Queryable, zenoh::liveliness::LivelinessToken), StartError> {
    let selector = format!("{}/**", route.key);
    let queryable = declare_queryable(z, &selector).await?;
    let receiver = queryable.handler().clone();
    let prefix = format!("{}/", route.key);
    tasks.spawn(async move {
        while let Ok(query) = receiver.recv_async().await {
            let entries: Vec<(String, Vec<u8>)> = match cache.lock() {
                Ok(cache) => cache
                    .iter()
                    .filter(|(k, _)| k.starts_with(&prefix))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                Err(_) => continue,
            };
            for (key, payload) in entries {
                let Ok(ke) = zenoh::key_expr::KeyExpr::try_from(key) else {
                    continue;
                };
                if query.key_expr().intersects(&ke) {
                    if let Err(e) = query.reply(ke, payload).await {
                        debug!("current value: {e}");
                    }
                }
            }
        }
    });
    let token_key = format!("{}/{BRIDGE_TOKEN}/{}", route.key, z.zid());
    let token = z
        .liveliness()
        .declare_token(&token_key)
        .await
        .map_err(|e| StartError::Declare {
            what: format!("the liveliness token {token_key}"),
            message: e.to_string(),
        })?;
    Ok((queryable, token))
}

/// Drains the outbound queue into Zenoh.
async fn sender(z: zenoh::Session, out: Arc<Channel<(String, Vec<u8>)>>, counters: Arc<Counters>) {
    loop {
        let (_, (key, payload)) = out.pop().await;
        // Block, not drop: while Zenoh's own queue is full this task
        // waits and the conflating queue in front of it takes the
        // pressure, counted, so no value is lost uncounted.
        match z
            .put(&key, payload)
            .congestion_control(CongestionControl::Block)
            .allowed_destination(Locality::Remote)
            .await
        {
            Ok(()) => bump(&counters.out_sent),
            Err(e) => {
                bump(&counters.out_send_failed);
                debug!(%key, "put: {e}");
            }
        }
    }
}

/// Declares the Zenoh subscriber of one inbound route, and the
/// liveliness subscriber that asks a (re)joining far bridge for its
/// current values.
async fn topic_in(
    z: &zenoh::Session,
    route: &TopicIn,
    inbound: Arc<Channel<Envelope>>,
    bucket: Arc<Mutex<TokenBucket>>,
    counters: Arc<Counters>,
    catch_up_timeout: Duration,
) -> Result<[zenoh::pubsub::Subscriber<()>; 2], StartError> {
    let patterns: Vec<TopicPattern> = route
        .topics
        .iter()
        .filter_map(|p| TopicPattern::parse(p).ok())
        .collect();
    let prefix = format!("{}/", route.key);
    let local_prefix = route.prefix.clone();
    // Every sample from the network, live or current, passes here.
    let intake = Arc::new(move |key: &str, payload: &[u8]| {
        bump(&counters.in_received);
        if !admit(&bucket) {
            // Shows later as a gap in the topic's origin seq.
            bump(&counters.in_rate_limited);
            return;
        }
        let Ok(mut envelope) = serde_json::from_slice::<Envelope>(payload) else {
            bump(&counters.in_malformed);
            return;
        };
        // The key names the topic; a payload that says otherwise, or a
        // topic outside the route, does not cross.
        let fits = key.strip_prefix(prefix.as_str()) == Some(envelope.topic.as_str())
            && patterns.iter().any(|p| p.matches(&envelope.topic));
        let local = format!("{local_prefix}{}", envelope.topic);
        if !fits || qm_ipc_proto::interface::check_name("topic", &local).is_err() {
            bump(&counters.in_malformed);
            return;
        }
        envelope.topic = local.clone();
        inbound.push(&local, envelope);
    });
    let selector = format!("{}/**", route.key);
    let live = intake.clone();
    let subscriber = z
        .declare_subscriber(&selector)
        .allowed_origin(Locality::Remote)
        .callback(move |sample| live(sample.key_expr().as_str(), &sample.payload().to_bytes()))
        .await
        .map_err(|e| StartError::Declare {
            what: format!("the subscriber {selector}"),
            message: e.to_string(),
        })?;
    let tokens = format!("{}/{BRIDGE_TOKEN}/*", route.key);
    let runtime = tokio::runtime::Handle::current();
    let session = z.clone();
    let joined = z
        .liveliness()
        .declare_subscriber(&tokens)
        .history(true)
        .callback(move |token| {
            if token.kind() == SampleKind::Put {
                runtime.spawn(catch_up(
                    session.clone(),
                    selector.clone(),
                    intake.clone(),
                    catch_up_timeout,
                ));
            }
        })
        .await
        .map_err(|e| StartError::Declare {
            what: format!("the liveliness subscriber {tokens}"),
            message: e.to_string(),
        })?;
    Ok([subscriber, joined])
}

/// Asks a far bridge that (re)joined for its current values and takes
/// them like live ones: rate-limited, and repeats dropped by the tracker.
async fn catch_up(z: zenoh::Session, selector: String, intake: Intake, timeout: Duration) {
    let replies = match z
        .get(&selector)
        .target(QueryTarget::All)
        .consolidation(ConsolidationMode::None)
        .allowed_destination(Locality::Remote)
        .timeout(timeout)
        .await
    {
        Ok(replies) => replies,
        Err(e) => {
            debug!(%selector, "current values: {e}");
            return;
        }
    };
    while let Ok(reply) = replies.recv_async().await {
        if let Ok(sample) = reply.result() {
            intake(sample.key_expr().as_str(), &sample.payload().to_bytes());
        }
    }
}

/// Drains the inbound queue into the local gateway.
async fn publisher(
    gateway: Session,
    inbound: Arc<Channel<Envelope>>,
    events_topic: Option<String>,
    counters: Arc<Counters>,
) {
    let mut tracker = OriginTracker::new(MAX_TRACKED_TOPICS);
    loop {
        let (topic, envelope) = inbound.pop().await;
        // The first sample of a topic since this bridge started: if the
        // local gateway already holds this very value (this bridge
        // delivered it before it restarted), it is not delivered again.
        // One Get per topic and bridge start.
        let first = !tracker.knows(&topic);
        let verdict = tracker.judge(&topic, envelope.instance.as_deref(), envelope.seq);
        if first {
            if let Ok(held) = gateway.get::<Value>(&topic).await {
                if held.value == envelope.value {
                    bump(&counters.in_duplicates);
                    info!(%topic, seq = envelope.seq, "already held by the local gateway: not delivered again");
                    continue;
                }
            }
        }
        let Verdict::Deliver { missed, restarted } = verdict else {
            // One per topic when a sending bridge restarts: worth a line.
            bump(&counters.in_duplicates);
            info!(%topic, seq = envelope.seq, "repeat dropped: delivered before");
            continue;
        };
        if let Some(previous) = restarted {
            bump(&counters.in_restarts);
            info!(%topic, %previous, current = ?envelope.instance, "the origin gateway restarted");
            event(
                &gateway,
                &events_topic,
                json!({
                    "event": "restarted",
                    "topic": topic,
                    "previous": previous,
                    "current": envelope.instance,
                    "seq": envelope.seq,
                }),
            )
            .await;
        }
        if missed > 0 {
            counters.in_missed.fetch_add(missed, Ordering::Relaxed);
            let (conflated, overflowed) = inbound.dropped();
            info!(%topic, missed, seq = envelope.seq, conflated, overflowed, "updates missed on the way");
            event(
                &gateway,
                &events_topic,
                json!({
                    "event": "missed",
                    "topic": topic,
                    "missed": missed,
                    "seq": envelope.seq,
                    "instance": envelope.instance,
                }),
            )
            .await;
        }
        // The gap goes into the topic's seq at the local gateway too, so a
        // subscriber there counts it in `dropped` as a local one would; and
        // the origin gateway's instance goes with the value, so a
        // subscriber there sees that gateway restart as a restart
        // (`OriginRestarted`), not only on the events topic. An instance
        // that is not one (a far bridge of another make) is left out
        // rather than have the gateway refuse the value.
        let origin = envelope
            .instance
            .as_deref()
            .filter(|i| check_instance_id("origin", i).is_ok());
        match gateway
            .publish_relayed(&topic, &envelope.value, missed, origin)
            .await
        {
            Ok(_) => bump(&counters.in_published),
            Err(e) => {
                bump(&counters.in_publish_failed);
                warn!(%topic, seq = envelope.seq, "cannot publish to the local gateway: {e}");
            }
        }
    }
}

async fn event(gateway: &Session, topic: &Option<String>, value: Value) {
    if let Some(topic) = topic {
        if let Err(e) = gateway.publish(topic, &value).await {
            debug!(%topic, "cannot publish the event: {e}");
        }
    }
}

/// Answers calls from the network with calls to the local gateway.
async fn export(
    z: &zenoh::Session,
    gateway: &Session,
    route: &ServiceExport,
    bucket: Arc<Mutex<TokenBucket>>,
    calls: Arc<Semaphore>,
    counters: Arc<Counters>,
    tasks: &mut tokio::task::JoinSet<()>,
) -> Result<Queryable, StartError> {
    let selector = format!("{}/{}/*", route.key, route.interface);
    let queryable = declare_queryable(z, &selector).await?;
    let receiver = queryable.handler().clone();
    let gateway = gateway.clone();
    let route = route.clone();
    tasks.spawn(async move {
        while let Ok(query) = receiver.recv_async().await {
            let interface = route.interface.clone();
            let refuse = |error: ErrorReply| CallAnswer {
                error: Some(error.name()),
                parameters: error.parameters(),
            };
            let admitted = admit(&bucket);
            let permit = calls.clone().try_acquire_owned().ok();
            let (true, Some(permit)) = (admitted, permit) else {
                bump(&counters.calls_refused);
                let answer = refuse(ErrorReply::LimitExceeded {
                    limit: "bridge inbound calls".into(),
                    max: MAX_CALLS_IN_FLIGHT as u64,
                });
                reply(&query, &answer).await;
                continue;
            };
            let gateway = gateway.clone();
            let counters = counters.clone();
            let max_timeout = route.max_timeout;
            tokio::spawn(async move {
                let method = query
                    .key_expr()
                    .as_str()
                    .rsplit('/')
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                let request = query
                    .payload()
                    .map(|p| serde_json::from_slice::<CallRequest>(&p.to_bytes()));
                let answer = match request {
                    Some(Ok(request)) if !method.is_empty() && method != "*" => {
                        let timeout = Duration::from_millis(request.timeout_ms).min(max_timeout);
                        let full = format!("{interface}.{method}");
                        bump(&counters.calls_served);
                        match gateway
                            .call_within::<Value>(&full, &request.parameters, timeout)
                            .await
                        {
                            Ok(parameters) => CallAnswer {
                                error: None,
                                parameters,
                            },
                            Err(ClientError::Remote(e)) => refuse(e),
                            Err(ClientError::Timeout(_)) => refuse(ErrorReply::Timeout {
                                service: interface.clone(),
                                timeout_ms: timeout.as_millis() as u64,
                            }),
                            Err(e) => {
                                debug!(%full, "call: {e}");
                                refuse(ErrorReply::ServiceUnavailable {
                                    service: interface.clone(),
                                })
                            }
                        }
                    }
                    _ => refuse(ErrorReply::VarlinkInvalidParameter {
                        parameter: "the bridge's call request".into(),
                    }),
                };
                reply(&query, &answer).await;
                drop(permit);
            });
        }
    });
    Ok(queryable)
}

async fn reply(query: &zenoh::query::Query, answer: &CallAnswer) {
    let Ok(payload) = serde_json::to_vec(answer) else {
        return;
    };
    if let Err(e) = query.reply(query.key_expr().clone(), payload).await {
        debug!("reply: {e}");
    }
}

/// Serves a remote interface on a local socket, each call a Zenoh query.
async fn import(
    z: &zenoh::Session,
    route: &ServiceImport,
    counters: Arc<Counters>,
    tasks: &mut tokio::task::JoinSet<()>,
) -> Result<(), StartError> {
    let failed = |message: String| StartError::Import {
        interface: route.interface.clone(),
        path: route.socket.display().to_string(),
        message,
    };
    let mut service = Service::new(&route.idl).map_err(|e| failed(e.to_string()))?;
    let interface =
        qm_ipc_proto::idl::Interface::parse(&route.idl).map_err(|e| failed(e.to_string()))?;
    for method in interface.methods.keys() {
        let z = z.clone();
        let key = format!("{}/{}/{}", route.key, route.interface, method);
        let name = route.interface.clone();
        let timeout = route.timeout;
        let counters = counters.clone();
        service = service.method(method, move |parameters: serde_json::Map<String, Value>| {
            let z = z.clone();
            let key = key.clone();
            let name = name.clone();
            let counters = counters.clone();
            async move {
                bump(&counters.calls_forwarded);
                forward(&z, &key, &name, parameters, timeout).await
            }
        });
    }
    let _ = std::fs::remove_file(&route.socket);
    if let Some(dir) = route.socket.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let listener =
        tokio::net::UnixListener::bind(&route.socket).map_err(|e| failed(e.to_string()))?;
    let interface = route.interface.clone();
    tasks.spawn(async move {
        if let Err(e) = service.serve(listener).await {
            warn!(%interface, "imported service stopped: {e}");
        }
    });
    Ok(())
}

/// One call across: the first answer within `timeout`. No answer at all
/// before the deadline means no bridge exports the interface now
/// (`ServiceUnavailable`); none by the deadline is `Timeout`, as the
/// gateway says of a local service.
async fn forward(
    z: &zenoh::Session,
    key: &str,
    interface: &str,
    parameters: serde_json::Map<String, Value>,
    timeout: Duration,
) -> Result<Value, MethodError> {
    let unavailable = || {
        MethodError::new(
            "io.qmipc.Gateway.ServiceUnavailable",
            json!({ "service": interface }),
        )
    };
    let timed_out = || {
        MethodError::new(
            "io.qmipc.Gateway.Timeout",
            json!({ "service": interface, "timeout_ms": timeout.as_millis() as u64 }),
        )
    };
    // The far side gets a little less, so that its own Timeout (from its
    // gateway or service) comes back before this side gives up.
    let request = CallRequest {
        parameters,
        timeout_ms: (timeout.as_millis() as u64 * 9 / 10).max(1),
    };
    let Ok(payload) = serde_json::to_vec(&request) else {
        return Err(unavailable());
    };
    let started = Instant::now();
    let replies = z
        .get(key)
        .payload(payload)
        .target(QueryTarget::BestMatching)
        .consolidation(ConsolidationMode::None)
        .timeout(timeout)
        .await
        .map_err(|_| unavailable())?;
    let first = tokio::time::timeout(timeout + Duration::from_millis(100), replies.recv_async())
        .await
        .ok()
        .and_then(Result::ok);
    let Some(reply) = first else {
        return Err(match started.elapsed() + timeout / 20 >= timeout {
            true => timed_out(),
            false => unavailable(),
        });
    };
    let Ok(sample) = reply.into_result() else {
        return Err(unavailable());
    };
    let answer: CallAnswer =
        serde_json::from_slice(&sample.payload().to_bytes()).map_err(|_| unavailable())?;
    match answer.error {
        None => Ok(answer.parameters),
        Some(name) => Err(MethodError::new(&name, answer.parameters)),
    }
}
