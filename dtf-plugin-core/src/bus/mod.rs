//! The bus: sequence numbers, routing by hook, a shared log, and one reader per plugin.
//!
//! Publishing takes one lock (`BusInner::state`), assigns sequence numbers, counts the batch
//! for every plugin subscribed to its hooks (found through a per-hook routing table), and then
//! appends it to an append-only log *once*. Holding that lock across the whole publish is what
//! makes every plugin see events in the same global order, whatever the number of concurrent
//! publishers. Each plugin's actor reads the log through its own cursor without locking it, up
//! to the first cell not yet written (cells are written once); it is woken (one actor message)
//! only when it was idle, and then reads runs of cells in place. Per plugin, `enqueued − acked` is its
//! queue: bounded, with the overflow policy applied at publish time.

use std::collections::VecDeque;
use std::fmt;
use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError, Weak};
use std::time::{Duration, SystemTime};

use ractor::ActorRef;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::error::{BatchClosed, PublishError};
use crate::event::{Event, EventKind, EventMeta, Hook, HookSet};
use crate::plugin::PluginConfig;
use crate::runner::PluginMsg;
use crate::sync::{
    AtomicBool, AtomicU64, MODEL, Mutex, MutexGuard, Notify, OnceLock, fence, switch,
};

mod group;
mod log;
mod read;
mod slot;

pub(crate) use group::Group;
use group::*;
use log::*;
pub(crate) use log::{Item, ReconfigureReply};
use read::*;
pub use slot::DeadLetter;
pub(crate) use slot::Slot;

/// What happens when an event is published to a plugin whose queue is full.
///
/// Control events ([`Hook::is_control`]) are exempt when published from outside the plugins:
/// they are always enqueued, even past the capacity. Events published from inside a plugin
/// ([`crate::PluginContext::publish`]) never wait: under `Backpressure` they may go past the
/// capacity, up to 8 times it, and then fail; under `DropNewest` they are dropped at the
/// capacity. A plugin's control events are no exception.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum OverflowPolicy {
    /// The publisher waits until the queue has room (the default): nothing is lost, and a slow
    /// plugin slows the publishers down. `try_publish` returns [`PublishError::Full`] instead.
    #[default]
    Backpressure,
    /// The event is not enqueued for that plugin and its `dropped` counter goes up; other
    /// plugins still get it. For plugins that must never slow the run (e.g. live dashboards).
    DropNewest,
}

/// A publishing handle: cheap to clone, stamps its own `source` on what it publishes.
#[derive(Clone)]
pub struct Bus {
    inner: Arc<BusInner>,
    source: Arc<str>,
}

impl fmt::Debug for Bus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bus")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

pub(crate) struct BusInner {
    state: Mutex<BusState>,
    /// The same as `state.spare`, for the tests' count of this bus's live segments without
    /// the lock (an extra lock would be explored by the model checkers).
    #[cfg(test)]
    spare: Arc<Spare>,
}

struct BusState {
    /// The last sequence number handed out.
    seq: u64,
    closed: bool,
    /// The log's last segment and the position of its next cell.
    tail: Arc<Segment>,
    next_pos: u64,
    /// The events published into `tail` so far.
    tail_events: usize,
    /// Routed (enabled) slots in groups, by hook.
    routes: Routes,
    /// Every routed slot, in routing order.
    all: Vec<Arc<Slot>>,
    /// The groups plugins share, by hooks (see [`BusInner::group`]).
    groups: Vec<Weak<Group>>,
    /// Events that can be enqueued for any routed backpressured slot without checking its
    /// room: a lower bound of the free capacity of each, as of the last check, less every
    /// event published since (its queue grows only by publishes, which all count here). The
    /// per-slot check runs only when a publish would exceed it, so a publish's room check does
    /// not cost per subscriber. 0 after routing a slot (forces a check).
    room: u64,
    /// Checks left to run without refreshing `room`, after a refresh found it below
    /// [`ROOM_FLOOR`]: while a plugin sits near its capacity the budget buys nothing, and
    /// refreshing it on every publish would add a pass over every plugin to the per-subscriber
    /// check.
    room_backoff: u32,
    /// Emptied cells of freed segments, for the next ones, and their handled batches.
    spare: Arc<Spare>,
    /// Handled cells taken from `spare`, dropped one per publish, two for some batches
    /// ([`BusInner::attempt`]).
    grave: Vec<Cell>,
    /// The segment a publish moved past, let go of after the lock is released (it may be the
    /// last reference, and freeing it moves or frees its cells' contents).
    retired: Option<Arc<Segment>>,
    /// Where the last segments start, the tail's last, at most [`MAX_LAG_SEGMENTS`] + 1 of
    /// them: a reader before the first is more segments behind than the lag bound allows
    /// (`Slot::bound_lag`).
    bases: VecDeque<u64>,
}

/// A refresh of the room budget that finds less than this many events... (1 in the model
/// check, whose queues hold one or two events, so that both the budget and the backoff are
/// explored)
const ROOM_FLOOR: u64 = if MODEL { 1 } else { 64 };
/// ...is not repeated for this many publishes that need the per-subscriber check.
const ROOM_BACKOFF: u32 = if MODEL { 1 } else { 64 };

/// How a publish treats full queues.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Bound {
    /// Wait for room ([`Bus::publish`]).
    Wait,
    /// Fail at once ([`Bus::try_publish`]).
    Try,
    /// From inside a plugin ([`crate::PluginContext::publish`]): never waits (a handler
    /// waiting on a queue that only plugins drain could deadlock the bus), but fails once a
    /// subscriber is [`REACTION_HEADROOM`] times its capacity behind, so a reaction loop cannot
    /// grow memory without bound.
    Reaction,
    /// The manager's own lifecycle events: never waits, never refused (their rate is bounded
    /// by failures and restart backoff).
    Unbounded,
}

/// How many times its capacity a backpressured plugin's queue may hold through events that
/// plugins publish in reaction, which never wait ([`Bound::Reaction`]).
pub(crate) const REACTION_HEADROOM: u64 = 8;

/// How a publishing attempt went. The batch moves into the log when it is published (no
/// reference count to take and drop again), and comes back otherwise.
enum Attempt {
    Published(Range<u64>),
    Closed(Arc<[Event]>),
    /// A backpressured slot had no room for `wanted` events: wait on it, then try again.
    Full(Arc<Slot>, usize, Arc<[Event]>),
}

impl Bus {
    pub(crate) fn new(source: &str) -> Self {
        let spare = Arc::new(Spare::default());
        Self {
            inner: Arc::new(BusInner {
                state: Mutex::new(BusState {
                    seq: 0,
                    closed: false,
                    tail: Segment::new(0, &spare),
                    bases: VecDeque::from([0]),
                    next_pos: 0,
                    tail_events: 0,
                    routes: Routes::default(),
                    all: Vec::new(),
                    groups: Vec::new(),
                    room: 0,
                    room_backoff: 0,
                    spare: Arc::clone(&spare),
                    grave: Vec::new(),
                    retired: None,
                }),
                #[cfg(test)]
                spare,
            }),
            source: Arc::from(source),
        }
    }

    /// A bus with no plugins, for [`crate::PluginContext::detached`].
    pub(crate) fn detached(source: &str) -> Self {
        Self::new(source)
    }

    /// A handle to the same bus that stamps `source` on the events it publishes.
    pub fn with_source(&self, source: &str) -> Bus {
        Bus {
            inner: Arc::clone(&self.inner),
            source: Arc::from(source),
        }
    }

    /// The source this handle stamps on events.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Publishes one event and returns its sequence number.
    ///
    /// Under [`OverflowPolicy::Backpressure`] this waits while a subscribed plugin's queue is
    /// full; events are enqueued for all subscribers at once, so a waiting publisher never
    /// leaves an event half-delivered.
    ///
    /// # Errors
    ///
    /// [`PublishError::Closed`], with the event, once the manager has shut down.
    pub async fn publish(&self, kind: EventKind) -> Result<u64, PublishError> {
        let mut batch = self.single(kind);
        loop {
            match self.inner.attempt(batch, Bound::Wait) {
                Attempt::Published(r) => return Ok(r.start),
                Attempt::Closed(b) => return Err(PublishError::Closed(take_first(&b))),
                Attempt::Full(slot, wanted, b) => {
                    batch = b;
                    slot.wait_for_space(wanted).await;
                }
            }
        }
    }

    /// Publishes one event without waiting.
    ///
    /// # Errors
    ///
    /// [`PublishError::Full`] when a subscribed plugin with [`OverflowPolicy::Backpressure`]
    /// has a full queue (nothing was enqueued anywhere); [`PublishError::Closed`] after shutdown.
    pub fn try_publish(&self, kind: EventKind) -> Result<u64, PublishError> {
        match self.inner.attempt(self.single(kind), Bound::Try) {
            Attempt::Published(r) => Ok(r.start),
            Attempt::Closed(b) => Err(PublishError::Closed(take_first(&b))),
            Attempt::Full(slot, _, b) => Err(PublishError::Full {
                event: take_first(&b),
                plugin: slot.name.to_string(),
            }),
        }
    }

    /// Publishes many events at once: one lock, one queue entry and at most one wake-up per
    /// plugin for the whole batch, which is much cheaper per event than [`Bus::publish`].
    /// Returns the range of sequence numbers given to the events, in order.
    ///
    /// # Errors
    ///
    /// [`BatchClosed`], with every event, once the manager has shut down.
    pub async fn publish_batch(
        &self,
        kinds: impl IntoIterator<Item = EventKind>,
    ) -> Result<Range<u64>, BatchClosed> {
        let time = SystemTime::now();
        // Collected straight into the shared allocation when the iterator knows its length
        // (no intermediate `Vec` to copy from).
        let mut batch: Arc<[Event]> = kinds
            .into_iter()
            .map(|kind| self.event(kind, time))
            .collect();
        if batch.is_empty() {
            return Ok(0..0);
        }
        loop {
            match self.inner.attempt(batch, Bound::Wait) {
                Attempt::Published(r) => return Ok(r),
                Attempt::Closed(b) => {
                    return Err(BatchClosed(b.iter().map(|e| e.kind.clone()).collect()));
                }
                Attempt::Full(slot, wanted, b) => {
                    batch = b;
                    slot.wait_for_space(wanted).await;
                }
            }
        }
    }

    /// Publishes from inside a plugin: never waits, past a subscriber's capacity up to
    /// [`REACTION_HEADROOM`] times it, then [`PublishError::Full`].
    pub(crate) fn publish_reaction(&self, kind: EventKind) -> Result<u64, PublishError> {
        match self.inner.attempt(self.single(kind), Bound::Reaction) {
            Attempt::Published(r) => Ok(r.start),
            Attempt::Closed(b) => Err(PublishError::Closed(take_first(&b))),
            Attempt::Full(slot, _, b) => Err(PublishError::Full {
                event: take_first(&b),
                plugin: slot.name.to_string(),
            }),
        }
    }

    /// Publishes without waiting and past any capacity (the manager's own lifecycle events;
    /// it must never block on a queue).
    pub(crate) fn publish_unbounded(&self, kind: EventKind) -> Result<u64, PublishError> {
        match self.inner.attempt(self.single(kind), Bound::Unbounded) {
            Attempt::Published(r) => Ok(r.start),
            Attempt::Closed(b) | Attempt::Full(_, _, b) => {
                Err(PublishError::Closed(take_first(&b)))
            }
        }
    }

    /// Whether the bus still accepts events.
    pub fn is_closed(&self) -> bool {
        self.inner.lock().closed
    }

    fn event(&self, kind: EventKind, time: SystemTime) -> Event {
        Event {
            meta: EventMeta {
                seq: 0,
                time,
                source: Arc::clone(&self.source),
            },
            kind,
        }
    }

    fn single(&self, kind: EventKind) -> Arc<[Event]> {
        Arc::new([self.event(kind, SystemTime::now())])
    }

    pub(crate) fn inner(&self) -> &BusInner {
        &self.inner
    }
}

/// The event of a one-event batch, handed back to the caller of a failed publish.
fn take_first(batch: &Arc<[Event]>) -> EventKind {
    match batch.first() {
        Some(e) => e.kind.clone(),
        // Single-event batches are built with exactly one event.
        None => EventKind::custom("dtf.empty-batch", serde_json::Value::Null),
    }
}

impl BusInner {
    fn lock(&self) -> MutexGuard<'_, BusState> {
        // A panic while holding this lock cannot leave the state inconsistent (every update is
        // a single push or assignment), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// One publishing attempt: under the bus lock, check room, assign sequence numbers,
    /// enqueue everywhere. Either everything is enqueued or nothing is.
    ///
    /// It also drops one handled cell of a freed segment (a batch's publish a second one when
    /// the first was no larger than the batch), after releasing the lock: on the publisher's
    /// thread, whose next events the allocator then serves from what it freed ([`Spare`]).
    fn attempt(&self, batch: Arc<[Event]>, bound: Bound) -> Attempt {
        let n = batch.len();
        let mut state = self.lock();
        let attempt = Self::attempt_locked(&mut state, batch, bound);
        let retired = state.retired.take();
        let mut emptied = None;
        if state.grave.is_empty() {
            let taken = state.spare.take_grave();
            // Its buffer was allocated where the segment was freed: not under the lock.
            emptied = Some(std::mem::replace(&mut state.grave, taken));
        }
        let handled = state.grave.pop();
        // A batch's publish drops a second cell when the first was no larger than the batch:
        // with batches of one size the hand empties in half the publishes that fill a segment,
        // before the next segment is let go of (one of more than `GRAVE_EVENTS` is kept only
        // while nothing else is, `Spare::give`).
        let more = if handled.as_ref().is_some_and(|c| c.batch.len() <= n) && n > 1 {
            state.grave.pop()
        } else {
            None
        };
        if handled.is_some() && state.grave.is_empty() {
            state.spare.emptied_hand();
        }
        drop(state);
        drop(handled);
        drop(more);
        drop(emptied);
        drop(retired);
        attempt
    }

    /// [`attempt`](Self::attempt) with the bus lock held by the caller.
    fn attempt_locked(state: &mut BusState, mut batch: Arc<[Event]>, bound: Bound) -> Attempt {
        if state.closed {
            return Attempt::Closed(batch);
        }
        let n = batch.len();
        // The union of the batch's hooks decides which slots can be concerned at all.
        let (mask, control) = batch.iter().fold((HookSet::EMPTY, false), |(m, c), e| {
            let h = e.hook();
            (m.with(h), c || h.is_control())
        });
        // Control events go past every capacity, except a plugin's own: a reaction loop of
        // them is as unbounded as any other.
        let bounded = match bound {
            Bound::Unbounded => false,
            Bound::Reaction => true,
            Bound::Wait | Bound::Try => !control,
        };
        let headroom = if bound == Bound::Reaction {
            REACTION_HEADROOM
        } else {
            1
        };
        // A single event: the groups subscribed to its hook, precomputed. A batch: every group
        // whose hooks intersect the batch's.
        let single_hook = (n == 1).then(|| batch[0].hook());
        let Routes {
            routes,
            by_hook,
            every,
        } = &mut state.routes;
        let targets: &[usize] = match single_hook {
            Some(h) => &by_hook[h.index()],
            None => every,
        };
        let concerned = |i: &usize| routes[*i].group.hooks.intersects(mask);

        if bounded && n as u64 > state.room {
            for route in targets.iter().filter(|i| concerned(i)).map(|i| &routes[*i]) {
                let wanted = route.group.hooks.matching(&batch, mask);
                for slot in &route.slots {
                    if slot.policy == OverflowPolicy::Backpressure
                        && !slot.has_room(wanted, bound == Bound::Wait, headroom)
                    {
                        return Attempt::Full(Arc::clone(slot), wanted, batch);
                    }
                }
            }
            if state.room_backoff > 0 {
                state.room_backoff -= 1;
            } else {
                state.room = state
                    .all
                    .iter()
                    .map(|s| s.free_room())
                    .min()
                    .unwrap_or(u64::MAX);
                if state.room < ROOM_FLOOR {
                    state.room_backoff = ROOM_BACKOFF;
                }
            }
        }
        // Every routed slot's queue may grow by up to `n` events now.
        state.room = state.room.saturating_sub(n as u64);

        let first = state.seq + 1;
        state.seq += n as u64;
        // Unique until now: it was created by this publisher and not yet shared.
        for (i, ev) in Arc::make_mut(&mut batch).iter_mut().enumerate() {
            ev.meta.seq = first + i as u64;
        }
        if targets.iter().any(concerned) {
            // Append the batch to the log once, whatever the number of subscribers: take the
            // next cell...
            let pos = state.next_pos;
            if (pos - state.tail.base) as usize == SEGMENT || state.tail_events >= SEGMENT_EVENTS {
                // What the segment holds, for whoever frees it last ([`Spare`]).
                state
                    .tail
                    .cells
                    .events
                    .store(state.tail_events, std::sync::atomic::Ordering::Relaxed);
                state.tail_events = 0;
                let next = Segment::new(pos, &state.spare);
                state.bases.push_back(pos);
                if state.bases.len() > MAX_LAG_SEGMENTS as usize + 1 {
                    state.bases.pop_front();
                }
                let oldest = if state.bases.len() > MAX_LAG_SEGMENTS as usize {
                    state.bases.front().copied().unwrap_or(0)
                } else {
                    0
                };
                switch();
                let _ = state.tail.next.set(Arc::clone(&next));
                let old = std::mem::replace(&mut state.tail, next);
                // Let go of by `attempt` (or `close_with`) after the lock.
                drop(state.retired.replace(old));
                // Once per segment: no slow reader may pin an unbounded stretch of the log.
                for slot in &state.all {
                    slot.bound_lag(pos, oldest);
                }
            }
            // ...count it for each group of subscribers before readers can see it (a reader
            // must never acknowledge an event not yet counted)...
            for route in targets.iter().filter(|i| concerned(i)).map(|i| &routes[*i]) {
                route.count(route.group.hooks.matching(&batch, mask), pos, bounded);
            }
            // The model check's invariant for the room check (shuttle; loom would explore the
            // extra loads too, for a lock-protected rule): a bounded publish leaves no
            // backpressured queue past its bound (only an empty queue takes an oversized batch).
            #[cfg(dtf_shuttle)]
            if bounded {
                for route in targets.iter().filter(|i| concerned(i)).map(|i| &routes[*i]) {
                    let wanted = route.group.hooks.matching(&batch, mask) as u64;
                    for slot in &route.slots {
                        if slot.policy == OverflowPolicy::Backpressure {
                            let limit = (slot.capacity as u64 * headroom).max(wanted);
                            assert!(slot.pending() <= limit, "a queue went past its bound");
                        }
                    }
                }
            }
            // ...and make it readable: a written cell is what readers look for (there is no
            // shared end-of-log counter for them to poll, one cache line less per event).
            let cell = Cell { batch, mask };
            if let Some(c) = state.tail.cells.slots.get((pos - state.tail.base) as usize) {
                switch();
                let _ = c.set(cell);
            }
            state.next_pos = pos + 1;
            state.tail_events += n;
            // The counts above (plain stores: only publishers write them, under this lock)
            // must be visible before `Route::wake` reads each group's `attention` (and then
            // its members' `scheduled` and `released` flags): the publisher's half of the
            // Dekker handshakes with `take_chunk`. One fence per publish instead of a locked
            // instruction per plugin.
            fence(Ordering::SeqCst);
            // ...and wake the subscribers that were idle.
            for &i in targets.iter() {
                let route = &mut routes[i];
                if route.group.hooks.intersects(mask) {
                    route.wake(&state.tail, pos);
                }
            }
        }
        Attempt::Published(first..first + n as u64)
    }

    /// This bus's segments whose cells are alive (for the tests that no reader pins the log).
    #[cfg(test)]
    pub(crate) fn live_segments(&self) -> usize {
        self.spare.live.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The last sequence number handed out (0 before the first event).
    pub(crate) fn last_seq(&self) -> u64 {
        self.lock().seq
    }

    /// Starts delivering to `slot`: it reads the log from the current end on.
    pub(crate) fn route(&self, slot: &Arc<Slot>) {
        let mut state = self.lock();
        if state.all.iter().any(|s| Arc::ptr_eq(s, slot)) {
            return;
        }
        slot.routed_at(state.next_pos);
        state.room = 0;
        state.room_backoff = 0;
        state.all.push(Arc::clone(slot));
        state.routes = Routes::build(&state.all);
    }

    /// The group for a new plugin's slot with `hooks`: shared with the other plugins that have
    /// the same hooks, unless the plugin drops events when full (it decides per publish).
    pub(crate) fn group(&self, hooks: HookSet, policy: OverflowPolicy) -> Arc<Group> {
        let private = policy == OverflowPolicy::DropNewest;
        let mut state = self.lock();
        state.groups.retain(|g| g.strong_count() > 0);
        if !private {
            let shared = state
                .groups
                .iter()
                .filter_map(Weak::upgrade)
                .find(|g| !g.private && g.hooks == hooks);
            if let Some(g) = shared {
                return g;
            }
        }
        let group = Group::new(hooks, private);
        state.groups.push(Arc::downgrade(&group));
        group
    }

    /// Stops delivering to `slot`; it still reads what was published before. Publishers and
    /// flushes waiting on it are woken to re-check.
    pub(crate) fn unroute(&self, slot: &Arc<Slot>) {
        let mut state = self.lock();
        let was = state.all.iter().any(|s| Arc::ptr_eq(s, slot));
        state.all.retain(|s| !Arc::ptr_eq(s, slot));
        if was {
            slot.unrouted_at(state.next_pos);
            state.routes = Routes::build(&state.all);
        }
        drop(state);
        slot.space.notify_waiters();
        slot.progress.notify_waiters();
    }

    /// Stops delivering to every slot (after shutdown), so a `flush` after shutdown returns at
    /// once instead of waiting for stopped plugins, and lets go of the log.
    pub(crate) fn unroute_all(&self) {
        let slots = self.lock().all.clone();
        for slot in slots {
            self.unroute(&slot);
            slot.release();
        }
        // Handled events kept for publishers to drop: none will come.
        let dropped = {
            let mut state = self.lock();
            (
                std::mem::take(&mut state.grave),
                state.spare.take_all_graves(),
            )
        };
        drop(dropped);
    }

    /// Closes the bus after publishing `last`, atomically: `last` is published and the bus
    /// closed in one critical section, so no concurrent publisher gets in after it.
    pub(crate) fn close_with(&self, last: EventKind, source: &Arc<str>) -> Option<u64> {
        let batch: Arc<[Event]> = Arc::new([Event {
            meta: EventMeta {
                seq: 0,
                time: SystemTime::now(),
                source: Arc::clone(source),
            },
            kind: last,
        }]);
        let mut state = self.lock();
        let seq = match Self::attempt_locked(&mut state, batch, Bound::Unbounded) {
            Attempt::Published(r) => Some(r.start),
            _ => None,
        };
        state.closed = true;
        // The segment this publish moved past, if it did: no later publish will let go of it.
        let retired = state.retired.take();
        drop(state);
        drop(retired);
        seq
    }

    /// For every routed plugin, the number of events routed to it so far: a flush waits until
    /// each has handled that many.
    pub(crate) fn flush_targets(&self) -> Vec<(Arc<Slot>, u64)> {
        let state = self.lock();
        state
            .all
            .iter()
            .map(|slot| (Arc::clone(slot), slot.enqueued()))
            .collect()
    }

    /// The current end of the log (for tagging control items).
    pub(crate) fn position(&self) -> u64 {
        self.lock().next_pos
    }
}

#[cfg(test)]
#[cfg(any(dtf_shuttle, dtf_loom))]
mod model;

// The tests below run on tokio and ractor, which the model check's build does not model.
#[cfg(test)]
#[cfg(not(any(dtf_shuttle, dtf_loom)))]
mod tests;
