//! [`NotifyStats`]: what the notifier did, readable from outside the plugin.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;

/// What happened to the deliveries of one target (a channel name, or `name/destination` for
/// channels with several destinations, e.g. `telegram/-100123`): the type the CI API clients
/// use too, from [`dtf_plugin_core::retry`].
pub use dtf_plugin_core::retry::TargetStats;

/// A message that was not delivered, with the reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Undelivered {
    /// The target (channel name).
    pub target: String,
    /// The message's title.
    pub title: String,
    /// Events the message stood for.
    pub events: u64,
    /// Why it was not delivered.
    pub reason: String,
}

/// Counters of the pipeline stages.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct PipelineCounts {
    /// Events the plugin received.
    pub events: u64,
    /// (event, channel) pairs the filter let through.
    pub accepted: u64,
    /// (event, channel) pairs the filter dropped (not wanted on that channel).
    pub filtered: u64,
    /// Messages rendered and queued for delivery.
    pub messages: u64,
}

#[derive(Debug, Default)]
struct Inner {
    targets: BTreeMap<String, TargetStats>,
    undelivered: Vec<Undelivered>,
    counts: PipelineCounts,
    in_flight: BTreeMap<u64, Undelivered>,
    next_id: u64,
}

/// Statistics shared between the notifier and whoever holds a clone (cloning shares, it does
/// not copy). Get one from [`crate::NotifyPlugin::stats_handle`].
#[derive(Debug, Clone, Default)]
pub struct NotifyStats(Arc<Mutex<Inner>>);

impl NotifyStats {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Plain counters stay usable after a panic elsewhere.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The statistics of `target`, if anything was sent to it.
    pub fn get(&self, target: &str) -> Option<TargetStats> {
        self.lock().targets.get(target).cloned()
    }

    /// Every target's statistics.
    pub fn targets(&self) -> BTreeMap<String, TargetStats> {
        self.lock().targets.clone()
    }

    /// Messages that could not be delivered (retries exhausted, permanent errors, or still
    /// pending when the shutdown deadline passed).
    pub fn undelivered(&self) -> Vec<Undelivered> {
        self.lock().undelivered.clone()
    }

    /// Messages queued or being delivered right now.
    pub fn pending(&self) -> usize {
        self.lock().in_flight.len()
    }

    /// The pipeline counters.
    pub fn counts(&self) -> PipelineCounts {
        self.lock().counts.clone()
    }

    pub(crate) fn count(&self, f: impl FnOnce(&mut PipelineCounts)) {
        f(&mut self.lock().counts);
    }

    pub(crate) fn target(&self, target: &str, f: impl FnOnce(&mut TargetStats)) {
        f(self.lock().targets.entry(target.to_owned()).or_default());
    }

    /// Registers a queued message; returns its ticket.
    pub(crate) fn enqueue(&self, target: &str, title: &str, events: u64) -> u64 {
        let mut g = self.lock();
        g.next_id += 1;
        let id = g.next_id;
        g.counts.messages += 1;
        g.in_flight.insert(
            id,
            Undelivered {
                target: target.to_owned(),
                title: title.to_owned(),
                events,
                reason: String::new(),
            },
        );
        id
    }

    /// The message of `ticket` was delivered.
    pub(crate) fn done(&self, ticket: u64) {
        self.lock().in_flight.remove(&ticket);
    }

    /// The message of `ticket` failed for good.
    pub(crate) fn give_up(&self, ticket: u64, reason: &str) {
        let mut g = self.lock();
        if let Some(mut u) = g.in_flight.remove(&ticket) {
            u.reason = reason.to_owned();
            tracing::warn!(target_channel = %u.target, title = %u.title, events = u.events, %reason, "notification not delivered");
            g.undelivered.push(u);
        }
    }

    /// Moves every message still pending to the undelivered list with `reason`; returns how
    /// many there were.
    pub(crate) fn abandon_pending(&self, reason: &str) -> usize {
        let mut g = self.lock();
        let pending = std::mem::take(&mut g.in_flight);
        let n = pending.len();
        for (_, mut u) in pending {
            u.reason = reason.to_owned();
            tracing::warn!(target_channel = %u.target, title = %u.title, events = u.events, %reason, "notification not delivered");
            g.undelivered.push(u);
        }
        n
    }
}
