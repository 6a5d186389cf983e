//! The group stage, with Alertmanager's timing: the first event of a new group waits
//! `group_wait` for others to join, then one message goes out; events arriving after that
//! message are collected and sent `group_interval` after it; a group with nothing new for a
//! whole `group_interval` is forgotten (the next event starts a new group and waits
//! `group_wait` again).
//!
//! The key is the event kind plus the configured parts (default: error type, worker and
//! subject) — never the task id unless asked, so "12 tasks failed with `TimeoutError` on
//! worker w3" is one message listing the first few tasks. Memory per group is constant: a
//! counter and the first `max_items` lines.
//!
//! Everything here is pure: the caller passes the time and arms the timer for
//! [`Grouper::next_deadline`].

use std::collections::HashMap;
use std::time::Duration;

use dtf_plugin_core::event::Hook;
use serde::Deserialize;
use tokio::time::Instant;

use crate::message::{EventInfo, Notification, Severity, hook_name, title};
use crate::throttle::Throttle;

/// What, besides the event kind, makes two events one group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum GroupBy {
    /// The error type (`TaskError::kind`, or the normalized error of worker/recovery failures).
    Error,
    /// The worker.
    Worker,
    /// The task (makes every task its own group; off by default).
    Task,
    /// The other subject: recovery id, plugin name, run id, custom event name.
    Subject,
}

/// Timings and limits of the group stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GroupSettings {
    pub(crate) group_wait: Duration,
    pub(crate) group_interval: Duration,
    pub(crate) by: Vec<GroupBy>,
    pub(crate) max_items: usize,
    /// Group by the events' fingerprint instead of `by` ([`crate::Channel::groups_by_fingerprint`]).
    pub(crate) by_fingerprint: bool,
}

#[derive(Debug)]
struct Group {
    first: Option<EventInfo>,
    severity: Severity,
    count: u64,
    /// The distinct tasks (for worker events the workers, for recovery events the
    /// recoveries) of the pending events, at most [`MAX_TASKS_COUNTED`]: a title says "Task t1
    /// failed 3 times", not "3 tasks failed", for a test that failed three times.
    tasks: std::collections::HashSet<String>,
    /// The distinct workers of the pending events (as many at most): a group may span them
    /// (worker and recovery events; every event of a channel grouping by fingerprint), and
    /// then no title or fact names one of them for all.
    workers: std::collections::HashSet<String>,
    items: Vec<String>,
    last_time: std::time::SystemTime,
    /// When the pending events are due; `None` when nothing is pending.
    due: Option<Instant>,
    last_sent: Option<Instant>,
    sequence: u64,
    /// Arrival number of the first pending event: messages due together go out in the order
    /// their first events arrived.
    order: u64,
}

/// How many distinct tasks (workers, recoveries) a group tells apart (beyond, the title
/// counts events only).
const MAX_TASKS_COUNTED: usize = 10_000;

/// Worker and recovery events: grouped across workers ([`Grouper::key`]).
fn is_worker_or_recovery(hook: Hook) -> bool {
    matches!(
        hook,
        Hook::WorkerFailed
            | Hook::WorkerDisconnected
            | Hook::WorkerRecovered
            | Hook::RecoveryStarted
            | Hook::RecoveryCompleted
            | Hook::RecoveryFailed
    )
}

/// The groups of one channel.
#[derive(Debug)]
pub(crate) struct Grouper {
    settings: GroupSettings,
    throttle: Throttle,
    groups: HashMap<String, Group>,
    arrivals: u64,
}

impl Grouper {
    pub(crate) fn new(settings: GroupSettings, throttle: Throttle) -> Self {
        Self {
            settings,
            throttle,
            groups: HashMap::new(),
            arrivals: 0,
        }
    }

    /// The group key of an event.
    ///
    /// Worker and recovery events are grouped by kind and error only: an outage that takes
    /// 20 workers down is one "20 workers failed" message, not 80 (a failure, a disconnection
    /// and a recovery's start and end per worker, each its own group by worker or by the
    /// recovery's id).
    pub(crate) fn key(&self, info: &EventInfo) -> String {
        if self.settings.by_fingerprint {
            return format!("fingerprint/{}", info.fingerprint());
        }
        let mut key = hook_name(info.hook).to_owned();
        let across_workers = is_worker_or_recovery(info.hook);
        for part in &self.settings.by {
            if across_workers && matches!(part, GroupBy::Worker | GroupBy::Subject) {
                continue;
            }
            let v = match part {
                GroupBy::Error => &info.error_type,
                GroupBy::Worker => &info.worker,
                GroupBy::Task => &info.task,
                GroupBy::Subject => &info.subject,
            };
            key.push('/');
            key.push_str(v.as_deref().unwrap_or("-"));
        }
        key
    }

    /// Adds an event that arrived at `now`.
    pub(crate) fn add(&mut self, info: EventInfo, now: Instant) {
        let key = self.key(&info);
        let s = &self.settings;
        let group = self.groups.entry(key.clone()).or_insert_with(|| Group {
            first: None,
            severity: Severity::Routine,
            count: 0,
            tasks: std::collections::HashSet::new(),
            workers: std::collections::HashSet::new(),
            items: Vec::new(),
            last_time: info.time,
            due: None,
            last_sent: None,
            sequence: 0,
            order: 0,
        });
        self.arrivals += 1;
        if group.due.is_none() {
            group.order = self.arrivals;
            let at = match group.last_sent {
                // New group: wait for others to join.
                None => now + s.group_wait,
                // Known group: not before group_interval after its last message.
                Some(sent) => now.max(sent + s.group_interval),
            };
            group.due = Some(self.throttle.earliest(&key, at));
        }
        group.count += 1;
        let who = match info.hook {
            Hook::WorkerFailed | Hook::WorkerDisconnected | Hook::WorkerRecovered => &info.worker,
            Hook::RecoveryStarted | Hook::RecoveryCompleted | Hook::RecoveryFailed => &info.subject,
            _ => &info.task,
        };
        if let Some(who) = who {
            if group.tasks.len() < MAX_TASKS_COUNTED {
                group.tasks.insert(who.clone());
            }
        }
        if let Some(worker) = &info.worker {
            if group.workers.len() < MAX_TASKS_COUNTED {
                group.workers.insert(worker.clone());
            }
        }
        group.severity = group.severity.max(info.severity);
        group.last_time = info.time;
        if group.items.len() < s.max_items {
            group.items.push(info.item.clone());
        }
        if group.first.is_none() {
            group.first = Some(info);
        }
    }

    /// The earliest instant a group is due, if any is pending.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.groups.values().filter_map(|g| g.due).min()
    }

    /// The messages of every group due at `now`; forgets idle groups.
    #[cfg(test)]
    pub(crate) fn due(&mut self, now: Instant) -> Vec<Notification> {
        self.due_at_most(now, usize::MAX)
    }

    /// The messages of at most `max` of the groups due at `now`, the earliest first; the
    /// others stay due, and keep gathering events until taken. Forgets idle groups.
    pub(crate) fn due_at_most(&mut self, now: Instant, max: usize) -> Vec<Notification> {
        let interval = self.settings.group_interval;
        let mut keys = self.pending_keys(|g| g.due.is_some_and(|d| d <= now));
        keys.truncate(max);
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            if let Some(n) = self.take(&key, now) {
                out.push(n);
            }
        }
        self.groups
            .retain(|_, g| g.due.is_some() || g.last_sent.is_some_and(|t| t + interval > now));
        self.throttle.forget_expired(now);
        out
    }

    /// The messages of every pending group, due or not (shutdown).
    pub(crate) fn flush_all(&mut self, now: Instant) -> Vec<Notification> {
        let keys = self.pending_keys(|g| g.due.is_some());
        keys.iter().filter_map(|k| self.take(k, now)).collect()
    }

    /// Keys of the groups matching `f`, in the order their first pending events arrived.
    fn pending_keys(&self, f: impl Fn(&Group) -> bool) -> Vec<String> {
        let mut keys: Vec<(u64, &String)> = self
            .groups
            .iter()
            .filter(|(_, g)| f(g))
            .map(|(k, g)| (g.order, k))
            .collect();
        keys.sort_unstable();
        keys.into_iter().map(|(_, k)| k.clone()).collect()
    }

    fn take(&mut self, key: &str, now: Instant) -> Option<Notification> {
        let g = self.groups.get_mut(key)?;
        let first = g.first.take()?;
        let count = std::mem::take(&mut g.count);
        let items = std::mem::take(&mut g.items);
        let tasks = std::mem::take(&mut g.tasks);
        let workers = std::mem::take(&mut g.workers).len() as u64;
        // Past the cap the distinct tasks are not known: the title counts events then.
        let tasks = if tasks.len() < MAX_TASKS_COUNTED {
            tasks.len() as u64
        } else {
            count
        };
        g.due = None;
        g.last_sent = Some(now);
        g.sequence += 1;
        let severity = std::mem::replace(&mut g.severity, Severity::Routine);
        self.throttle.record(key, now);
        let mut facts = vec![("Events".to_owned(), count.to_string())];
        // An empty value is no fact (and Discord refuses a field without a value: the whole
        // message would be lost).
        let given = |v: &Option<String>| v.clone().filter(|v| !v.trim().is_empty());
        if let Some(e) = given(&first.error_type) {
            facts.push(("Error type".to_owned(), e));
        }
        // A group may span workers: the first one's worker is then not the group's.
        if let Some(w) = given(&first.worker).filter(|_| workers == 1) {
            facts.push(("Worker".to_owned(), w));
        }
        facts.push(("Severity".to_owned(), severity.as_str().to_owned()));
        let more = count.saturating_sub(items.len() as u64);
        Some(Notification {
            kind: first.hook,
            severity,
            group_key: key.to_owned(),
            fingerprint: first.fingerprint(),
            title: title(&first, count, tasks, workers),
            count,
            items,
            more,
            facts,
            detail: first.detail.clone(),
            first_seen: first.time,
            last_seen: g.last_time,
            sequence: g.sequence,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dtf_plugin_core::event::{Event, EventKind, EventMeta, TaskError};
    use std::time::SystemTime;

    fn failed(task: &str, kind: &str, worker: &str) -> EventInfo {
        let mut k = EventKind::task_failed(
            task,
            TaskError::builder().kind(kind).message("m").build(),
            false,
        );
        if let EventKind::TaskFailed(f) = &mut k {
            f.worker = Some(worker.into());
        }
        EventInfo::of(&Event {
            meta: EventMeta {
                seq: 1,
                time: SystemTime::UNIX_EPOCH,
                source: "t".into(),
            },
            kind: k,
        })
    }

    fn grouper(throttle: Duration) -> Grouper {
        Grouper::new(
            GroupSettings {
                group_wait: Duration::from_secs(10),
                group_interval: Duration::from_secs(60),
                by: vec![GroupBy::Error, GroupBy::Worker, GroupBy::Subject],
                max_items: 3,
                by_fingerprint: false,
            },
            Throttle::new(throttle),
        )
    }

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn first_message_after_group_wait_lists_the_first_few_and_counts_all() {
        let t0 = Instant::now();
        let mut g = grouper(Duration::ZERO);
        for i in 0..12 {
            g.add(
                failed(&format!("t{i}"), "TimeoutError", "w3"),
                t0 + S * i / 2,
            );
        }
        g.add(failed("x", "OtherError", "w3"), t0 + S);
        assert_eq!(g.next_deadline(), Some(t0 + 10 * S));
        assert!(g.due(t0 + 9 * S).is_empty());
        let mut out = g.due(t0 + 11 * S);
        out.sort_by_key(|n| n.count);
        assert_eq!(out.len(), 2);
        let n = &out[1];
        assert_eq!(n.count, 12);
        assert_eq!(
            n.title_plain(),
            "12 tasks failed with `TimeoutError` on worker w3"
        );
        assert_eq!(n.items.len(), 3);
        assert_eq!(n.more, 9);
        assert_eq!(n.group_key, "task_failed/TimeoutError/w3/-");
        assert_eq!(n.sequence, 1);
        assert_eq!(out[0].count, 1);
    }

    #[test]
    fn later_events_wait_for_group_interval_after_the_last_message() {
        let t0 = Instant::now();
        let mut g = grouper(Duration::ZERO);
        g.add(failed("a", "E", "w"), t0);
        assert_eq!(g.due(t0 + 10 * S).len(), 1);
        g.add(failed("b", "E", "w"), t0 + 20 * S);
        g.add(failed("c", "E", "w"), t0 + 30 * S);
        assert_eq!(g.next_deadline(), Some(t0 + 70 * S));
        assert!(g.due(t0 + 69 * S).is_empty());
        let out = g.due(t0 + 70 * S);
        assert_eq!((out.len(), out[0].count, out[0].sequence), (1, 2, 2));
        // Idle for a whole interval: forgotten, so the next event waits group_wait again.
        assert!(g.due(t0 + 130 * S).is_empty());
        g.add(failed("d", "E", "w"), t0 + 200 * S);
        assert_eq!(g.next_deadline(), Some(t0 + 210 * S));
    }

    #[test]
    fn throttle_defers_but_never_drops_and_flush_all_sends_everything_pending() {
        let t0 = Instant::now();
        let mut g = grouper(Duration::from_secs(300));
        g.add(failed("a", "E", "w"), t0);
        assert_eq!(g.due(t0 + 10 * S).len(), 1);
        g.add(failed("b", "E", "w"), t0 + 11 * S);
        // group_interval says 70 s, the throttle 310 s.
        assert_eq!(g.next_deadline(), Some(t0 + 310 * S));
        g.add(failed("c", "F", "w"), t0 + 12 * S);
        let all = g.flush_all(t0 + 13 * S);
        assert_eq!(all.iter().map(|n| n.count).sum::<u64>(), 2);
        // In arrival order.
        assert_eq!(all[0].group_key, "task_failed/E/w/-");
        assert_eq!(all[1].group_key, "task_failed/F/w/-");
        assert_eq!(g.next_deadline(), None);
    }
}
