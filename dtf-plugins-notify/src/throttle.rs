//! The throttle stage: at most one message per key per interval.
//!
//! The key is the group key (event kind + error type + worker …). A message that would come
//! sooner is *deferred*, not dropped: its group keeps collecting events and is sent as soon
//! as the interval has passed, so the message then counts everything that happened meanwhile.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

/// Last send time per key.
#[derive(Debug, Default)]
pub(crate) struct Throttle {
    interval: Duration,
    last: HashMap<String, Instant>,
}

impl Throttle {
    /// A throttle allowing one message per key per `interval` (zero: no throttling).
    pub(crate) fn new(interval: Duration) -> Self {
        Self {
            interval,
            last: HashMap::new(),
        }
    }

    /// The earliest instant a message for `key` may be sent, `at` or later.
    pub(crate) fn earliest(&self, key: &str, at: Instant) -> Instant {
        match self.last.get(key) {
            Some(last) => at.max(*last + self.interval),
            None => at,
        }
    }

    /// Records that a message for `key` was sent at `now`.
    pub(crate) fn record(&mut self, key: &str, now: Instant) {
        if !self.interval.is_zero() {
            self.last.insert(key.to_owned(), now);
        }
    }

    /// Forgets keys whose interval has passed (keeps memory bounded by active keys).
    pub(crate) fn forget_expired(&mut self, now: Instant) {
        let interval = self.interval;
        self.last.retain(|_, t| *t + interval > now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defers_a_second_message_for_the_same_key_until_the_interval_passed() {
        let t0 = Instant::now();
        let mut t = Throttle::new(Duration::from_secs(10));
        assert_eq!(t.earliest("k", t0), t0);
        t.record("k", t0);
        assert_eq!(
            t.earliest("k", t0 + Duration::from_secs(3)),
            t0 + Duration::from_secs(10)
        );
        assert_eq!(t.earliest("other", t0), t0);
        assert_eq!(
            t.earliest("k", t0 + Duration::from_secs(11)),
            t0 + Duration::from_secs(11)
        );
        t.forget_expired(t0 + Duration::from_secs(10));
        assert_eq!(t.earliest("k", t0), t0);
        let mut off = Throttle::new(Duration::ZERO);
        off.record("k", t0);
        assert_eq!(off.earliest("k", t0), t0);
    }
}
