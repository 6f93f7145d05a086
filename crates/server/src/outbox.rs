//! A connection's send queue.
//!
//! Two parts, each bounded by `max_queued_bytes`:
//! - `frames`: encoded replies and forwarded requests, in order. They are
//!   never dropped; a peer that lets them pile up past the bound (it is not
//!   reading what it asked for) has its connection closed.
//! - `samples`: subscription updates, encoded only when written. When the
//!   peer reads too slowly and the queue is full (in samples or in bytes), a
//!   new sample replaces the queued one of the same topic (conflation) and
//!   carries the count of updates the subscriber missed in `dropped`. If the
//!   queue is still too big, duplicates of a topic are folded into its
//!   newest sample, and as a last resort (a subscriber to more big topics
//!   than its budget holds) the oldest samples are dropped, their count
//!   carried into the next sample of their topic. A publisher never waits
//!   for a subscriber.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::pi_lock::{PiLock, PiLockGuard};

use qm_ipc_proto::types::EncodedSample;
use tokio::sync::Notify;

/// A published value shared by every subscriber that has it queued.
#[derive(Debug)]
pub struct PublishedValue {
    pub seq: u64,
    pub value_json: Box<str>,
    pub timestamp_us: u64,
    /// The instance of the gateway where a relayed value was first
    /// published (validated as an instance id); `None` for a value
    /// published here.
    pub origin: Option<Box<str>>,
}

/// A topic's name, encoded once as a JSON string.
#[derive(Debug)]
pub struct TopicName {
    pub name: String,
    pub json: String,
}

impl TopicName {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            json: serde_json::Value::String(name.to_owned()).to_string(),
        }
    }
}

#[derive(Debug)]
struct QueuedSample {
    topic: Arc<TopicName>,
    value: Arc<PublishedValue>,
    dropped: u64,
    /// A current value the subscription started with (or what replaced it
    /// in the queue): it carries the gateway instance.
    first: bool,
}

impl QueuedSample {
    fn bytes(&self) -> usize {
        self.value.value_json.len()
    }
}

/// About the bytes a sample's reply adds to its topic and value (the
/// envelope, seq, timestamp, dropped, and the instance on the first), to
/// keep a writer's batch near its budget without encoding under the lock.
const SAMPLE_ENVELOPE: usize = 160;

/// Why an outbox refused more data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// Replies piled up past the bound: the connection must close.
    QueuedBytes,
    /// Refused without harm (forwarded requests): the caller is told.
    Full,
}

#[derive(Debug, Default)]
struct Inner {
    frames: Vec<u8>,
    samples: VecDeque<QueuedSample>,
    sample_bytes: usize,
    /// Drops of samples removed without a newer one of their topic queued,
    /// to be added to that topic's next sample; keyed by the topic's
    /// address (the hub holds one `TopicName` per topic), so shedding many
    /// topics stays linear.
    carried: HashMap<usize, (Arc<TopicName>, u64)>,
    /// Samples this connection missed, in total.
    dropped: u64,
    /// No more data is accepted; the writer flushes what is queued and ends.
    closing: bool,
    overflowed: bool,
    /// The writer holds taken bytes it has not finished writing; nobody
    /// else may write to the socket meanwhile (order).
    writer_busy: bool,
}

/// Counters shared by all outboxes of a gateway.
#[derive(Debug, Default)]
pub struct DeliveryStats {
    pub delivered: AtomicU64,
    pub dropped: AtomicU64,
}

/// What a connection has queued, for `Stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueDepth {
    pub frame_bytes: usize,
    pub samples: usize,
    pub sample_bytes: usize,
    pub dropped: u64,
}

#[derive(Debug)]
pub struct Outbox {
    /// Priority-inheriting, as the hub's lock (see [`crate::hub`]): a
    /// publish on the ASIL thread queues into QM subscribers' outboxes,
    /// whose writers run on the QM and held threads.
    inner: PiLock<Inner>,
    wake: Notify,
    /// Notified when the writer took the queued replies.
    drained: Notify,
    sample_capacity: usize,
    max_queued_bytes: usize,
    stats: Arc<DeliveryStats>,
    /// The gateway instance as a JSON string literal ("" for none).
    instance_json: Arc<str>,
}

impl Outbox {
    pub fn new(sample_capacity: usize, max_queued_bytes: usize, stats: Arc<DeliveryStats>) -> Self {
        Self {
            inner: PiLock::new(Inner::default()),
            wake: Notify::new(),
            drained: Notify::new(),
            sample_capacity: sample_capacity.max(1),
            max_queued_bytes,
            stats,
            instance_json: Arc::from(""),
        }
    }

    /// The gateway instance (a JSON string literal) that each topic's first
    /// sample carries.
    pub fn with_instance(mut self, instance_json: Arc<str>) -> Self {
        self.instance_json = instance_json;
        self
    }

    fn lock(&self) -> PiLockGuard<'_, Inner> {
        // Not poisoned by a panic: one while holding this lock cannot leave
        // the queue in a state worse than "some frames missing".
        self.inner.lock()
    }

    /// Queues an encoded reply. Past `max_queued_bytes` the outbox is
    /// marked overflowed and the connection must close.
    pub fn push_frame(&self, encode: impl FnOnce(&mut Vec<u8>)) -> Result<(), Overflow> {
        let result = self.push(encode, true);
        self.wake.notify_one();
        result
    }

    /// Queues a reply without waking the writer: the caller follows with
    /// [`write_now`](Self::write_now), which wakes it for what is left.
    pub fn push_reply(&self, encode: impl FnOnce(&mut Vec<u8>)) -> Result<(), Overflow> {
        self.push(encode, true)
    }

    /// Queues a forwarded request; past `max_queued_bytes` it is refused
    /// and the connection stays as it is.
    pub fn try_push_frame(&self, encode: impl FnOnce(&mut Vec<u8>)) -> Result<(), Overflow> {
        let result = self.push(encode, false);
        if result.is_ok() {
            self.wake.notify_one();
        }
        result
    }

    /// Appends a frame; waking the writer is the caller's choice.
    fn push(&self, encode: impl FnOnce(&mut Vec<u8>), fatal: bool) -> Result<(), Overflow> {
        let mut inner = self.lock();
        if inner.overflowed {
            return Err(Overflow::QueuedBytes);
        }
        if inner.closing {
            return Ok(());
        }
        let before = inner.frames.len();
        encode(&mut inner.frames);
        if inner.frames.len() > self.max_queued_bytes {
            inner.frames.truncate(before);
            if !fatal {
                return Err(Overflow::Full);
            }
            inner.overflowed = true;
            return Err(Overflow::QueuedBytes);
        }
        Ok(())
    }

    /// Queues a subscription sample, conflating when the queue is full.
    pub fn push_sample(&self, topic: &Arc<TopicName>, value: &Arc<PublishedValue>) {
        self.queue_sample(topic, value, false, 0);
    }

    /// Queues an update that comes after `missed` updates lost upstream
    /// (a bridge's gap): they count in this sample's `dropped` as if this
    /// subscriber had missed them, so seq and `dropped` still add up.
    pub fn push_sample_after(
        &self,
        topic: &Arc<TopicName>,
        value: &Arc<PublishedValue>,
        missed: u64,
    ) {
        self.queue_sample(topic, value, false, missed);
    }

    /// Queues a topic's current value at the start of a subscription. The
    /// count of samples may pass the queue's capacity here (one per topic,
    /// so at most `max_topics`, each a shared reference to the stored
    /// value): a subscription to more topics than the queue holds still
    /// gets every current value. The byte bound holds as for updates: past
    /// it the oldest are shed (counted in `dropped` of their topic's next
    /// sample). The queue holds one sample per topic here (a connection
    /// streams one subscription, which starts empty), so there is nothing
    /// to conflate or fold, and each call costs O(1) amortised while the
    /// caller holds the hub (a search or a compaction per current value
    /// made a subscription to many large topics quadratic under it).
    pub fn push_current(&self, topic: &Arc<TopicName>, value: &Arc<PublishedValue>) {
        self.queue_sample(topic, value, true, 0);
    }

    fn queue_sample(
        &self,
        topic: &Arc<TopicName>,
        value: &Arc<PublishedValue>,
        current: bool,
        missed: u64,
    ) {
        let mut inner = self.lock();
        if inner.closing || inner.overflowed {
            return;
        }
        let size = value.value_json.len();
        let capacity = if current {
            usize::MAX
        } else {
            self.sample_capacity
        };
        let full = |inner: &Inner| {
            inner.samples.len() >= capacity || inner.sample_bytes + size > self.max_queued_bytes
        };
        if current && full(&inner) {
            self.shed(&mut inner, size, capacity);
        } else if full(&inner) {
            // Replace the newest queued sample of the same topic.
            if let Some(old) = inner
                .samples
                .iter_mut()
                .rev()
                .find(|s| Arc::ptr_eq(&s.topic, topic))
            {
                let old_size = old.bytes();
                old.dropped += 1 + missed;
                old.value = value.clone();
                inner.sample_bytes = inner.sample_bytes - old_size + size;
                self.count_drops(&mut inner, 1);
                self.shed(&mut inner, 0, capacity);
                return;
            }
            self.compact(&mut inner);
            self.shed(&mut inner, size, capacity);
        }
        let carried = take_carried(&mut inner.carried, topic);
        inner.samples.push_back(QueuedSample {
            topic: topic.clone(),
            value: value.clone(),
            dropped: carried + missed,
            first: current,
        });
        inner.sample_bytes += size;
        drop(inner);
        self.wake.notify_one();
    }

    fn count_drops(&self, inner: &mut Inner, n: u64) {
        inner.dropped += n;
        self.stats.dropped.fetch_add(n, Ordering::Relaxed);
    }

    /// Keeps only the newest queued sample per topic, folding the older
    /// ones into its `dropped`.
    fn compact(&self, inner: &mut Inner) {
        let mut kept: VecDeque<QueuedSample> = VecDeque::with_capacity(inner.samples.len());
        let mut folded = 0;
        while let Some(sample) = inner.samples.pop_back() {
            match kept
                .iter_mut()
                .find(|k| Arc::ptr_eq(&k.topic, &sample.topic))
            {
                Some(newer) => {
                    newer.dropped += sample.dropped + 1;
                    inner.sample_bytes -= sample.bytes();
                    folded += 1;
                }
                None => kept.push_front(sample),
            }
        }
        inner.samples = kept;
        self.count_drops(inner, folded);
    }

    /// Drops the oldest samples until `incoming` more bytes (and one more
    /// sample) fit. Their drops are carried to their topic's next sample.
    fn shed(&self, inner: &mut Inner, incoming: usize, capacity: usize) {
        while !inner.samples.is_empty()
            && (inner.sample_bytes + incoming > self.max_queued_bytes
                || (incoming > 0 && inner.samples.len() >= capacity))
        {
            let Some(oldest) = inner.samples.pop_front() else {
                break;
            };
            inner.sample_bytes -= oldest.bytes();
            let lost = oldest.dropped + 1;
            inner
                .carried
                .entry(Arc::as_ptr(&oldest.topic) as usize)
                .or_insert_with(|| (oldest.topic.clone(), 0))
                .1 += lost;
            self.count_drops(inner, 1);
        }
    }

    /// Moves queued data into `out` (frames first, then samples, up to about
    /// `budget` bytes). Returns false once the outbox is closing and empty,
    /// or overflowed.
    ///
    /// The samples are taken under the lock and encoded after it is
    /// released: the lock is shared with every publisher, and a writer on
    /// the held thread (nice 19) preempted mid-encoding must not keep a
    /// publish on the ASIL thread waiting for it.
    pub fn take(&self, out: &mut Vec<u8>, budget: usize) -> bool {
        let mut taken = Vec::new();
        {
            let mut inner = self.lock();
            // The writer calls take() when it has written all it took before.
            inner.writer_busy = false;
            if inner.overflowed {
                return false;
            }
            if out.is_empty() {
                std::mem::swap(out, &mut inner.frames);
            } else {
                out.append(&mut inner.frames);
            }
            self.drained.notify_waiters();
            let mut estimate = out.len();
            while estimate < budget {
                let Some(sample) = inner.samples.pop_front() else {
                    break;
                };
                inner.sample_bytes -= sample.bytes();
                estimate += sample.bytes() + sample.topic.json.len() + SAMPLE_ENVELOPE;
                taken.push(sample);
            }
            // Set before the lock is released: nobody writes to the socket
            // between this writer's bytes.
            inner.writer_busy = !(out.is_empty() && taken.is_empty());
            if !inner.writer_busy && inner.closing {
                return false;
            }
        }
        for sample in &taken {
            EncodedSample {
                topic_json: &sample.topic.json,
                seq: sample.value.seq,
                value_json: &sample.value.value_json,
                timestamp_us: sample.value.timestamp_us,
                dropped: sample.dropped,
                instance_json: (sample.first && !self.instance_json.is_empty())
                    .then_some(&*self.instance_json),
                origin: sample.value.origin.as_deref(),
            }
            .encode_reply(out, true);
        }
        self.stats
            .delivered
            .fetch_add(taken.len() as u64, Ordering::Relaxed);
        true
    }

    /// Writes queued replies right away with `try_write` (a non-blocking
    /// write), when the writer is idle and only replies are queued: a
    /// request's answer then leaves without waking the writer. Whatever
    /// cannot be written now stays queued for the writer.
    pub fn write_now(&self, mut try_write: impl FnMut(&[u8]) -> std::io::Result<usize>) {
        let mut inner = self.lock();
        if inner.frames.is_empty() {
            return;
        }
        if inner.writer_busy || inner.overflowed || !inner.samples.is_empty() {
            drop(inner);
            self.wake.notify_one();
            return;
        }
        let mut written = 0;
        while written < inner.frames.len() {
            match try_write(&inner.frames[written..]) {
                Ok(0) | Err(_) => break,
                Ok(n) => written += n,
            }
        }
        inner.frames.drain(..written);
        if inner.frames.is_empty() {
            self.drained.notify_waiters();
        } else {
            drop(inner);
            self.wake.notify_one();
        }
    }

    /// Waits until no reply is queued (the writer took them all, or the
    /// outbox closed or overflowed). A relayed stream queues its next reply
    /// only then, so a slow reader holds at most one of them queued.
    pub async fn drained(&self) {
        loop {
            let notified = self.drained.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let inner = self.lock();
                if inner.frames.is_empty() || inner.closing || inner.overflowed {
                    return;
                }
            }
            notified.await;
        }
    }

    /// Counts replies of a relayed stream that were replaced by newer ones
    /// before the reader took them.
    pub fn count_conflated(&self, replies: u64) {
        let mut inner = self.lock();
        inner.dropped += replies;
        self.stats.dropped.fetch_add(replies, Ordering::Relaxed);
    }

    /// Waits until data may be available.
    pub async fn wait(&self) {
        self.wake.notified().await
    }

    /// Accepts nothing more; the writer ends after flushing.
    /// The bound on queued reply bytes.
    pub fn max_queued_bytes(&self) -> usize {
        self.max_queued_bytes
    }

    pub fn close(&self) {
        self.lock().closing = true;
        self.wake.notify_one();
    }

    pub fn overflowed(&self) -> bool {
        self.lock().overflowed
    }

    pub fn depth(&self) -> QueueDepth {
        let inner = self.lock();
        QueueDepth {
            frame_bytes: inner.frames.len(),
            samples: inner.samples.len(),
            sample_bytes: inner.sample_bytes,
            dropped: inner.dropped,
        }
    }
}

fn take_carried(
    carried: &mut HashMap<usize, (Arc<TopicName>, u64)>,
    topic: &Arc<TopicName>,
) -> u64 {
    carried
        .remove(&(Arc::as_ptr(topic) as usize))
        .map_or(0, |(_, n)| n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use qm_ipc_proto::{Reply, Sample};

    fn value(seq: u64, size: usize) -> Arc<PublishedValue> {
        let text = format!("\"{}\"", "x".repeat(size.saturating_sub(2)));
        Arc::new(PublishedValue {
            seq,
            value_json: text.into(),
            timestamp_us: 0,
            origin: None,
        })
    }

    fn drain(outbox: &Outbox) -> Vec<Sample> {
        let mut out = Vec::new();
        outbox.take(&mut out, usize::MAX);
        out.split(|b| *b == 0)
            .filter(|f| !f.is_empty())
            .map(|f| {
                let reply = Reply::parse(f).unwrap();
                serde_json::from_value(reply.parameters["sample"].clone()).unwrap()
            })
            .collect()
    }

    /// Regression: current values past the byte budget were searched and
    /// compacted one by one (quadratic, under the hub's lock). Now the
    /// oldest are shed, each counted in its topic's next sample.
    #[test]
    fn current_values_past_the_byte_budget_shed_the_oldest_and_count_them() {
        let outbox = Outbox::new(4, 10 * 1000, Arc::default());
        let topics: Vec<_> = (0..2000)
            .map(|i| Arc::new(TopicName::new(&format!("t{i}"))))
            .collect();
        for topic in &topics {
            outbox.push_current(topic, &value(1, 1000));
        }
        let first = drain(&outbox);
        assert_eq!(first.len(), 10, "as many as the byte budget holds");
        assert_eq!(first[0].topic, "t1990", "the newest are kept");
        // The next update of a shed topic says what was missed.
        outbox.push_sample(&topics[0], &value(2, 10));
        let next = drain(&outbox);
        assert_eq!((next[0].seq, next[0].dropped), (2, 1));
    }

    /// For each topic, every gap in seq is accounted for in dropped.
    fn assert_gaps_accounted(samples: &[Sample], last: &[(&str, u64)]) {
        for (topic, last_seq) in last {
            let mut prev = 0;
            for s in samples.iter().filter(|s| s.topic == *topic) {
                assert_eq!(
                    s.seq - prev - 1,
                    s.dropped,
                    "gap before {topic} seq {}",
                    s.seq
                );
                prev = s.seq;
            }
            assert_eq!(prev, *last_seq, "{topic}: the newest value is delivered");
        }
    }

    #[test]
    fn full_queue_keeps_the_newest_value_and_counts_the_rest() {
        let outbox = Outbox::new(4, 1 << 20, Arc::default());
        let a = Arc::new(TopicName::new("a"));
        let b = Arc::new(TopicName::new("b"));
        outbox.push_sample(&b, &value(1, 4));
        for seq in 1..=100 {
            outbox.push_sample(&a, &value(seq, 4));
        }
        assert!(outbox.depth().samples <= 4);
        let samples = drain(&outbox);
        assert_eq!(samples[0].topic, "b");
        assert_gaps_accounted(&samples, &[("a", 100), ("b", 1)]);
        assert_eq!(
            outbox.depth().dropped,
            100 - samples.iter().filter(|s| s.topic == "a").count() as u64
        );
    }

    #[test]
    fn compaction_makes_room_for_a_new_topic() {
        let outbox = Outbox::new(2, 1 << 20, Arc::default());
        let a = Arc::new(TopicName::new("a"));
        let b = Arc::new(TopicName::new("b"));
        outbox.push_sample(&a, &value(1, 4));
        outbox.push_sample(&a, &value(2, 4));
        outbox.push_sample(&b, &value(1, 4));
        let samples = drain(&outbox);
        assert_eq!(samples.len(), 2);
        assert_eq!((samples[0].seq, samples[0].dropped), (2, 1));
        assert_eq!(samples[1].topic, "b");
    }

    #[test]
    fn byte_budget_bounds_big_values_and_carries_drops() {
        let outbox = Outbox::new(64, 1000, Arc::default());
        let topics: Vec<_> = (0..10)
            .map(|i| Arc::new(TopicName::new(&format!("t{i}"))))
            .collect();
        for seq in 1..=20 {
            for t in &topics {
                outbox.push_sample(t, &value(seq, 300));
                assert!(outbox.depth().sample_bytes <= 1000, "the byte budget holds");
            }
        }
        let samples = drain(&outbox);
        assert!(samples.len() <= 3);
        // A later update of every topic reports all that was missed.
        for t in &topics {
            outbox.push_sample(t, &value(21, 10));
        }
        let later = drain(&outbox);
        for t in &topics {
            let mut seen: Vec<Sample> = samples
                .iter()
                .filter(|s| s.topic == t.name)
                .cloned()
                .collect();
            seen.extend(later.iter().filter(|s| s.topic == t.name).cloned());
            assert_gaps_accounted(&seen, &[(t.name.as_str(), 21)]);
        }
    }

    #[test]
    fn reply_frames_past_the_byte_limit_overflow() {
        let outbox = Outbox::new(1, 8, Arc::default());
        assert!(outbox
            .push_frame(|b| b.extend_from_slice(b"1234\0"))
            .is_ok());
        assert_eq!(
            outbox.try_push_frame(|b| b.extend_from_slice(b"5678\0")),
            Err(Overflow::Full),
            "a forwarded request is refused without closing"
        );
        assert!(!outbox.overflowed());
        assert_eq!(
            outbox.push_frame(|b| b.extend_from_slice(b"5678\0")),
            Err(Overflow::QueuedBytes)
        );
        assert!(outbox.overflowed());
        let mut out = Vec::new();
        assert!(!outbox.take(&mut out, 100));
    }

    #[test]
    fn direct_writes_keep_order_with_the_writer() {
        let outbox = Outbox::new(4, 1024, Arc::default());
        let mut wire = Vec::new();
        // Idle writer: the reply goes out at once.
        outbox.push_frame(|b| b.extend_from_slice(b"a\0")).unwrap();
        outbox.write_now(|bytes| {
            wire.extend_from_slice(bytes);
            Ok(bytes.len())
        });
        assert_eq!(wire, b"a\0");
        // The writer holds unwritten bytes: no direct write may overtake.
        outbox.push_frame(|b| b.extend_from_slice(b"b\0")).unwrap();
        let mut taken = Vec::new();
        assert!(outbox.take(&mut taken, 100));
        outbox.push_frame(|b| b.extend_from_slice(b"c\0")).unwrap();
        outbox.write_now(|_| panic!("must not write while the writer is busy"));
        wire.extend_from_slice(&taken);
        taken.clear();
        assert!(outbox.take(&mut taken, 100));
        wire.extend_from_slice(&taken);
        assert_eq!(wire, b"a\0b\0c\0");
        // A partial direct write leaves the rest queued, in order.
        taken.clear();
        assert!(outbox.take(&mut taken, 100));
        outbox.push_frame(|b| b.extend_from_slice(b"dd\0")).unwrap();
        // The socket takes one byte, then would block.
        let mut room = 1;
        outbox.write_now(|bytes| match room {
            0 => Err(std::io::ErrorKind::WouldBlock.into()),
            _ => {
                room -= 1;
                Ok(bytes.len().min(1))
            }
        });
        taken.clear();
        assert!(outbox.take(&mut taken, 100));
        assert_eq!(taken, b"d\0");
    }

    #[test]
    fn closing_outbox_flushes_then_ends() {
        let outbox = Outbox::new(1, 64, Arc::default());
        outbox.push_frame(|b| b.extend_from_slice(b"x\0")).unwrap();
        outbox.close();
        let mut out = Vec::new();
        assert!(outbox.take(&mut out, 100));
        assert_eq!(out, b"x\0");
        out.clear();
        assert!(!outbox.take(&mut out, 100));
    }
}
