//! Routing groups: the routed plugins with the same hooks share one count of the events
//! published to them and one flag word for wake-ups, so that a publish costs the same work
//! whatever the number of subscribers (one count per group, one load to learn that no reader
//! needs waking), where it used to cost a count and two flag loads per subscriber.
//!
//! A slot's own queue length is derived: its events are the group's count plus the slot's
//! offset (`Slot::enq`), which the bus sets when it routes the slot and freezes when it unroutes
//! it. A plugin that drops events when full (`OverflowPolicy::DropNewest`) decides per publish,
//! so it gets a group of its own.

use super::*;

/// Plugins with the same hooks (and a queue that never drops): one count of the events
/// published to them, and the word their readers raise when they may need a wake-up.
pub(crate) struct Group {
    pub(super) hooks: HookSet,
    /// Whether the group has one member that decides per publish whether it takes the events.
    pub(super) private: bool,
    /// Events of these hooks published while a member was routed (publishers, under the bus
    /// lock: plain stores).
    pub(super) count: Padded<AtomicU64>,
    /// Raised (`fetch_add`) by a member each time it clears `scheduled` or sets `released`,
    /// before its `SeqCst` fence: a publisher that reads the value it read last time, after its
    /// own fence, knows that every member was still scheduled and holding its segment then.
    pub(super) attention: Padded<AtomicU64>,
}

impl Group {
    pub(super) fn new(hooks: HookSet, private: bool) -> Arc<Self> {
        Arc::new(Group {
            hooks,
            private,
            count: Padded(AtomicU64::new(0)),
            attention: Padded(AtomicU64::new(0)),
        })
    }

    /// A member may need the publisher's attention: it cleared `scheduled` or set `released`
    /// just before (and fences after).
    #[inline]
    pub(super) fn raise(&self) {
        self.attention.fetch_add(1, Ordering::SeqCst);
    }
}

/// No value of [`Group::attention`] seen yet: the next publish looks at every member.
pub(super) const UNSEEN: u64 = u64::MAX;

/// A group with routed members, as the publishers see it (under the bus lock).
pub(super) struct Route {
    pub(super) group: Arc<Group>,
    pub(super) slots: Vec<Arc<Slot>>,
    /// The value of `group.attention` after which every member was scheduled (a wake-up on
    /// its way or draining) and held its segment, or [`UNSEEN`].
    pub(super) settled_at: u64,
}

impl Route {
    /// Counts `count` events at log position `pos` for the members, before the position
    /// becomes readable (a reader must never acknowledge an event not yet counted). A private
    /// group's member may drop them instead, when its queue is full and the publish bounded.
    #[inline]
    pub(super) fn count(&self, count: usize, pos: u64, bounded: bool) {
        if count == 0 {
            return;
        }
        if self.group.private && bounded {
            if let Some(slot) = self.slots.first() {
                if slot.drops(count as u64, pos) {
                    return;
                }
            }
        }
        // Only publishers write the count, under the bus lock: no read-modify-write needed.
        let c = self.group.count.load(Ordering::Relaxed);
        self.group.count.store(c + count as u64, Ordering::Release);
    }

    /// Wakes the members that were idle and leaves a hint for those that let go of the log
    /// (publisher, after the event at `pos` became readable and after its fence). Looks at
    /// the members only when one of them raised `attention` since they were last all settled.
    #[inline]
    pub(super) fn wake(&mut self, tail: &Arc<Segment>, pos: u64) {
        let seen = self.group.attention.load(Ordering::SeqCst);
        if seen == self.settled_at {
            return;
        }
        let mut settled = true;
        for slot in &self.slots {
            slot.wake_for(tail, pos);
            settled &= slot.settled();
        }
        self.settled_at = if settled { seen } else { UNSEEN };
    }
}

/// The routing table: routes by hook, rebuilt whenever a slot is routed or unrouted.
#[derive(Default)]
pub(super) struct Routes {
    pub(super) routes: Vec<Route>,
    /// Indices into `routes`, by hook: the groups a single event of that hook goes to.
    pub(super) by_hook: [Vec<usize>; Hook::COUNT],
    /// Every index into `routes` (the candidates for a batch).
    pub(super) every: Vec<usize>,
}

impl Routes {
    /// Routes built from `slots` (in routing order).
    pub(super) fn build(slots: &[Arc<Slot>]) -> Self {
        let mut routes: Vec<Route> = Vec::new();
        for slot in slots {
            match routes
                .iter_mut()
                .find(|r| Arc::ptr_eq(&r.group, &slot.group))
            {
                Some(r) => r.slots.push(Arc::clone(slot)),
                None => routes.push(Route {
                    group: Arc::clone(&slot.group),
                    slots: vec![Arc::clone(slot)],
                    settled_at: UNSEEN,
                }),
            }
        }
        let mut by_hook: [Vec<usize>; Hook::COUNT] = std::array::from_fn(|_| Vec::new());
        for (i, r) in routes.iter().enumerate() {
            for h in r.group.hooks.iter() {
                by_hook[h.index()].push(i);
            }
        }
        let every = (0..routes.len()).collect();
        Routes {
            routes,
            by_hook,
            every,
        }
    }
}
