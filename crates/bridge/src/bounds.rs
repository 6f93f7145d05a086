//! What keeps the bridge bounded, free of I/O and clocks so it is tested
//! on its own: the token bucket for what comes in from the network, the
//! per-topic conflating queue between a fast side and a slow one, and the
//! tracker that turns origin seq numbers into gaps, duplicates and
//! restarts.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

/// A token bucket: `rate` tokens a second, at most `burst` saved up. The
/// time is passed in.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(rate: u32, burst: u32, now: Instant) -> Self {
        Self {
            rate: f64::from(rate.max(1)),
            burst: f64::from(burst.max(1)),
            tokens: f64::from(burst.max(1)),
            last: now,
        }
    }

    /// Takes a token if there is one.
    pub fn try_take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now.max(self.last);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Samples waiting to cross, at most one per topic: a newer sample of a
/// topic replaces the waiting one (the replaced one is counted), and a
/// sample of a new topic when `capacity` topics wait is dropped (counted).
/// Topics leave in the order they first entered. Memory is bounded by the
/// number of topics, whatever the rate.
#[derive(Debug)]
pub struct ConflatingQueue<T> {
    capacity: usize,
    order: VecDeque<String>,
    pending: HashMap<String, T>,
    /// Samples replaced by a newer one of their topic.
    pub conflated: u64,
    /// Samples dropped because `capacity` other topics were waiting.
    pub overflowed: u64,
}

impl<T> ConflatingQueue<T> {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            order: VecDeque::new(),
            pending: HashMap::new(),
            conflated: 0,
            overflowed: 0,
        }
    }

    /// Queues `item` for `topic`; false if it was dropped for overflow.
    pub fn push(&mut self, topic: &str, item: T) -> bool {
        if let Some(waiting) = self.pending.get_mut(topic) {
            *waiting = item;
            self.conflated += 1;
            return true;
        }
        if self.order.len() >= self.capacity {
            self.overflowed += 1;
            return false;
        }
        self.order.push_back(topic.to_owned());
        self.pending.insert(topic.to_owned(), item);
        true
    }

    pub fn pop(&mut self) -> Option<(String, T)> {
        let topic = self.order.pop_front()?;
        let item = self.pending.remove(&topic)?;
        Some((topic, item))
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

/// What the tracker makes of one arriving sample.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Deliver it; `missed` updates of the topic at its origin never
    /// arrived (lost to conflation, the network or the rate limit), and
    /// `restarted` holds the previous origin instance if the origin
    /// gateway restarted since the topic's last sample.
    Deliver {
        missed: u64,
        restarted: Option<String>,
    },
    /// Already delivered (same origin instance, seq not newer): dropped.
    Duplicate,
}

/// The last origin (instance, seq) delivered per topic, as the client
/// library keeps it for a subscription: within one instance seq numbers
/// only grow, so a seq at or below the last is a repeat and a jump is a
/// gap; another instance is a restart and starts over. A sample whose
/// instance is unknown is always delivered and judged by seq only if the
/// instance was never known either.
#[derive(Debug, Default)]
pub struct OriginTracker {
    last: HashMap<String, (Option<String>, u64)>,
    max_topics: usize,
}

impl OriginTracker {
    pub fn new(max_topics: usize) -> Self {
        Self {
            last: HashMap::new(),
            max_topics: max_topics.max(1),
        }
    }

    /// Has a sample of `topic` been judged (and remembered)?
    pub fn knows(&self, topic: &str) -> bool {
        self.last.contains_key(topic)
    }

    pub fn judge(&mut self, topic: &str, instance: Option<&str>, seq: u64) -> Verdict {
        let verdict = match self.last.get(topic) {
            None => Verdict::Deliver {
                missed: 0,
                restarted: None,
            },
            Some((last_instance, last_seq)) => match (last_instance.as_deref(), instance) {
                (Some(a), Some(b)) if a != b => Verdict::Deliver {
                    missed: 0,
                    restarted: Some(a.to_owned()),
                },
                (Some(_), Some(_)) | (None, None) => {
                    if seq <= *last_seq {
                        return Verdict::Duplicate;
                    }
                    Verdict::Deliver {
                        missed: seq - last_seq - 1,
                        restarted: None,
                    }
                }
                // One side unknown: seq numbers cannot be compared.
                _ => Verdict::Deliver {
                    missed: 0,
                    restarted: None,
                },
            },
        };
        // Bounded like the client library's tracking: past the bound,
        // samples of further topics pass as they come.
        if self.last.len() < self.max_topics || self.last.contains_key(topic) {
            self.last
                .insert(topic.to_owned(), (instance.map(str::to_owned), seq));
        }
        verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bucket_gives_burst_then_rate() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(10, 3, t0);
        assert_eq!((0..5).filter(|_| bucket.try_take(t0)).count(), 3);
        // 10 a second: one more after 100 ms, not before.
        assert!(!bucket.try_take(t0 + Duration::from_millis(50)));
        assert!(bucket.try_take(t0 + Duration::from_millis(110)));
        assert!(!bucket.try_take(t0 + Duration::from_millis(120)));
        // A long pause saves up no more than the burst.
        let later = t0 + Duration::from_secs(60);
        assert_eq!((0..10).filter(|_| bucket.try_take(later)).count(), 3);
    }

    #[test]
    fn bucket_over_one_second_admits_rate_plus_burst() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(100, 10, t0);
        let admitted = (0..10_000)
            .filter(|i| bucket.try_take(t0 + Duration::from_micros(i * 100)))
            .count();
        // 1 s of offers at 10 kHz: the burst plus 100 a second.
        assert!((105..=111).contains(&admitted), "{admitted}");
    }

    #[test]
    fn queue_keeps_newest_per_topic_in_first_entry_order() {
        let mut q = ConflatingQueue::new(8);
        q.push("a", 1);
        q.push("b", 1);
        q.push("a", 2);
        q.push("a", 3);
        assert_eq!(q.len(), 2);
        assert_eq!(q.conflated, 2);
        assert_eq!(q.pop(), Some(("a".into(), 3)));
        assert_eq!(q.pop(), Some(("b".into(), 1)));
        assert_eq!(q.pop(), None);
        assert!(q.is_empty());
    }

    #[test]
    fn queue_drops_new_topics_past_capacity() {
        let mut q = ConflatingQueue::new(2);
        assert!(q.push("a", 1));
        assert!(q.push("b", 1));
        assert!(!q.push("c", 1));
        assert_eq!(q.overflowed, 1);
        // A waiting topic still takes its newer value.
        assert!(q.push("b", 2));
        q.pop();
        assert!(q.push("c", 2));
    }

    #[test]
    fn tracker_counts_gaps_drops_duplicates_and_sees_restarts() {
        let mut t = OriginTracker::new(16);
        let deliver = |missed| Verdict::Deliver {
            missed,
            restarted: None,
        };
        assert!(!t.knows("a"));
        assert_eq!(t.judge("a", Some("i1"), 5), deliver(0));
        assert!(t.knows("a"));
        assert_eq!(t.judge("a", Some("i1"), 6), deliver(0));
        assert_eq!(t.judge("a", Some("i1"), 9), deliver(2));
        assert_eq!(t.judge("a", Some("i1"), 9), Verdict::Duplicate);
        assert_eq!(t.judge("a", Some("i1"), 7), Verdict::Duplicate);
        assert_eq!(
            t.judge("a", Some("i2"), 1),
            Verdict::Deliver {
                missed: 0,
                restarted: Some("i1".into())
            }
        );
        assert_eq!(t.judge("a", Some("i2"), 2), deliver(0));
        // Topics are tracked apart.
        assert_eq!(t.judge("b", Some("i2"), 40), deliver(0));
        // Unknown instance: delivered, never called a repeat.
        assert_eq!(t.judge("a", None, 1), deliver(0));
    }

    #[test]
    fn tracker_is_bounded() {
        let mut t = OriginTracker::new(2);
        t.judge("a", Some("i"), 1);
        t.judge("b", Some("i"), 1);
        t.judge("c", Some("i"), 5);
        // "c" was not remembered: its repeat passes.
        assert_eq!(
            t.judge("c", Some("i"), 5),
            Verdict::Deliver {
                missed: 0,
                restarted: None
            }
        );
        assert_eq!(t.judge("a", Some("i"), 1), Verdict::Duplicate);
    }
}
