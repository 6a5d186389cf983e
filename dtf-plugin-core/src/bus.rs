//! The bus: sequence numbers, routing by hook, and one bounded queue per plugin.
//!
//! Publishing takes one lock (`BusInner::state`), assigns sequence numbers, and pushes an
//! `Arc`-shared batch onto the queue of every plugin subscribed to it. Holding that lock across
//! the whole fan-out is what makes every plugin see events in the same global order, whatever
//! the number of concurrent publishers. A plugin's actor is woken (one actor message) only when
//! its queue goes from idle to non-empty; it then drains the queue in chunks.

use std::collections::VecDeque;
use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use ractor::ActorRef;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, oneshot};

use crate::error::{BatchClosed, PublishError};
use crate::event::{Event, EventKind, EventMeta, Hook, HookSet};
use crate::plugin::PluginConfig;
use crate::runner::PluginMsg;

/// What happens when an event is published to a plugin whose queue is full.
///
/// Control events ([`Hook::is_control`]) and events published from inside a plugin are exempt:
/// they are always enqueued, even past the capacity.
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
}

struct BusState {
    /// The last sequence number handed out.
    seq: u64,
    closed: bool,
    /// Routed (enabled) slots, by hook.
    by_hook: [Vec<Arc<Slot>>; Hook::COUNT],
    /// Every routed slot, in routing order.
    all: Vec<Arc<Slot>>,
}

/// Publishing from inside a plugin (`Unbounded`) never waits; see `PluginContext::bus`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Bound {
    Wait,
    Try,
    Unbounded,
}

enum Attempt {
    Published(Range<u64>),
    Closed,
    /// A backpressured slot had no room for `wanted` events: wait on it, then try again.
    Full(Arc<Slot>, usize),
}

impl Bus {
    pub(crate) fn new(source: &str) -> Self {
        Self {
            inner: Arc::new(BusInner {
                state: Mutex::new(BusState {
                    seq: 0,
                    closed: false,
                    by_hook: std::array::from_fn(|_| Vec::new()),
                    all: Vec::new(),
                }),
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
            match self.inner.attempt(&mut batch, Bound::Wait) {
                Attempt::Published(r) => return Ok(r.start),
                Attempt::Closed => return Err(PublishError::Closed(take_first(&batch))),
                Attempt::Full(slot, wanted) => slot.wait_for_space(wanted).await,
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
        let mut batch = self.single(kind);
        match self.inner.attempt(&mut batch, Bound::Try) {
            Attempt::Published(r) => Ok(r.start),
            Attempt::Closed => Err(PublishError::Closed(take_first(&batch))),
            Attempt::Full(slot, _) => Err(PublishError::Full {
                event: take_first(&batch),
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
        let events: Vec<Event> = kinds
            .into_iter()
            .map(|kind| self.event(kind, time))
            .collect();
        if events.is_empty() {
            return Ok(0..0);
        }
        let mut batch: Arc<[Event]> = Arc::from(events);
        loop {
            match self.inner.attempt(&mut batch, Bound::Wait) {
                Attempt::Published(r) => return Ok(r),
                Attempt::Closed => {
                    return Err(BatchClosed(batch.iter().map(|e| e.kind.clone()).collect()));
                }
                Attempt::Full(slot, wanted) => slot.wait_for_space(wanted).await,
            }
        }
    }

    /// Publishes without waiting and past any capacity (used from inside plugins and by the
    /// manager itself, which must never block on a queue).
    pub(crate) fn publish_unbounded(&self, kind: EventKind) -> Result<u64, PublishError> {
        let mut batch = self.single(kind);
        match self.inner.attempt(&mut batch, Bound::Unbounded) {
            Attempt::Published(r) => Ok(r.start),
            Attempt::Closed | Attempt::Full(..) => Err(PublishError::Closed(take_first(&batch))),
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
    fn attempt(&self, batch: &mut Arc<[Event]>, bound: Bound) -> Attempt {
        let mut state = self.lock();
        if state.closed {
            return Attempt::Closed;
        }
        let n = batch.len();
        // The union of the batch's hooks decides which slots can be concerned at all.
        let (mask, control) = batch.iter().fold((HookSet::EMPTY, false), |(m, c), e| {
            let h = e.hook();
            (m.with(h), c || h.is_control())
        });
        let bounded = bound != Bound::Unbounded && !control;
        // A single event: the slots subscribed to its hook, precomputed. A batch: every slot
        // whose hooks intersect the batch's.
        let single_hook = (n == 1).then(|| batch[0].hook());
        let targets: &[Arc<Slot>] = match single_hook {
            Some(h) => &state.by_hook[h.index()],
            None => &state.all,
        };

        if bounded {
            for slot in targets {
                if slot.policy != OverflowPolicy::Backpressure || !slot.hooks.intersects(mask) {
                    continue;
                }
                let wanted = slot.matching(batch, mask);
                if !slot.has_room(wanted, bound == Bound::Wait) {
                    return Attempt::Full(Arc::clone(slot), wanted);
                }
            }
        }

        let first = state.seq + 1;
        state.seq += n as u64;
        // Unique until now: it was created by this publisher and not yet shared.
        for (i, ev) in Arc::make_mut(batch).iter_mut().enumerate() {
            ev.meta.seq = first + i as u64;
        }
        let targets: &[Arc<Slot>] = match single_hook {
            Some(h) => &state.by_hook[h.index()],
            None => &state.all,
        };
        for slot in targets {
            if !slot.hooks.intersects(mask) {
                continue;
            }
            let wanted = slot.matching(batch, mask);
            slot.push_events(batch, wanted, mask, bounded);
        }
        Attempt::Published(first..first + n as u64)
    }

    /// The last sequence number handed out (0 before the first event).
    pub(crate) fn last_seq(&self) -> u64 {
        self.lock().seq
    }

    /// Starts delivering to `slot`.
    pub(crate) fn route(&self, slot: &Arc<Slot>) {
        let mut state = self.lock();
        if state.all.iter().any(|s| Arc::ptr_eq(s, slot)) {
            return;
        }
        for h in slot.hooks.iter() {
            state.by_hook[h.index()].push(Arc::clone(slot));
        }
        state.all.push(Arc::clone(slot));
    }

    /// Stops delivering to `slot`; publishers waiting on it are woken to re-check.
    pub(crate) fn unroute(&self, slot: &Arc<Slot>) {
        let mut state = self.lock();
        for list in state.by_hook.iter_mut() {
            list.retain(|s| !Arc::ptr_eq(s, slot));
        }
        state.all.retain(|s| !Arc::ptr_eq(s, slot));
        drop(state);
        slot.space.notify_waiters();
    }

    /// Stops delivering to every slot (after shutdown) and releases their flush markers, so a
    /// `flush` after shutdown returns at once instead of waiting for stopped plugins.
    pub(crate) fn unroute_all(&self) {
        let slots = {
            let mut state = self.lock();
            for list in state.by_hook.iter_mut() {
                list.clear();
            }
            std::mem::take(&mut state.all)
        };
        for slot in slots {
            slot.release_markers();
        }
    }

    /// Closes the bus after publishing `last`, atomically: nothing can be published after it.
    pub(crate) fn close_with(&self, last: EventKind, source: &Arc<str>) -> Option<u64> {
        let mut batch: Arc<[Event]> = Arc::new([Event {
            meta: EventMeta {
                seq: 0,
                time: SystemTime::now(),
                source: Arc::clone(source),
            },
            kind: last,
        }]);
        let seq = match self.attempt(&mut batch, Bound::Unbounded) {
            Attempt::Published(r) => Some(r.start),
            _ => None,
        };
        self.lock().closed = true;
        seq
    }

    /// Puts a flush marker behind everything already queued for every routed plugin.
    pub(crate) fn flush_markers(&self) -> Vec<oneshot::Receiver<()>> {
        let state = self.lock();
        state
            .all
            .iter()
            .map(|slot| {
                let (tx, rx) = oneshot::channel();
                slot.push_item(Item::Flush(tx));
                rx
            })
            .collect()
    }
}

impl HookSet {
    #[inline]
    pub(crate) const fn intersects(self, other: HookSet) -> bool {
        !self.intersection(other).is_empty()
    }
}

/// One entry of a plugin's queue.
pub(crate) enum Item {
    /// Events `batch[start..]` of which `count` match the plugin's hooks. `filtered` is false
    /// when all of them match (the common case), so the consumer skips the per-event check.
    Events {
        batch: Arc<[Event]>,
        start: usize,
        count: usize,
        filtered: bool,
    },
    /// Resolves once everything before it was handled.
    Flush(oneshot::Sender<()>),
    /// A new configuration, applied in order with the events.
    Reconfigure {
        config: Arc<PluginConfig>,
        reply: oneshot::Sender<Result<crate::plugin::Reconfigured, String>>,
    },
}

/// Counters the consumer (the plugin's actor) updates, on their own cache line so that
/// publishers never contend with them. `published` and `dropped` live under the queue lock.
#[derive(Default)]
#[repr(align(128))]
pub(crate) struct Counters {
    pub(crate) delivered: AtomicU64,
    pub(crate) dead_lettered: AtomicU64,
    pub(crate) handler_nanos: AtomicU64,
}

/// An event whose handling failed (panic, error or timeout), kept for inspection.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DeadLetter {
    /// The plugin that failed on it.
    pub plugin: String,
    /// The event.
    pub event: Event,
    /// How the handler failed.
    pub error: String,
}

/// Keeps a value on its own cache lines, so writes to it don't invalidate its neighbours.
#[repr(align(128))]
struct Padded<T>(T);

impl<T> std::ops::Deref for Padded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// One plugin's queue, shared by publishers (producers) and its actor (the only consumer).
pub(crate) struct Slot {
    pub(crate) name: Arc<str>,
    pub(crate) hooks: HookSet,
    capacity: usize,
    policy: OverflowPolicy,
    queue: Padded<Mutex<SlotQueue>>,
    /// A lock-free mirror of `SlotQueue::pending`, for the room check. Only publishers holding
    /// the bus lock increase it, so a check-then-push under that lock is race-free without
    /// taking the slot lock twice; the consumer only lowers it, so a stale read is conservative.
    pending: Padded<AtomicUsize>,
    /// A publisher is waiting for room (paired with `pending` in a Dekker-style handshake).
    waiters: AtomicBool,
    /// Whether `SlotQueue::items` may be non-empty: lets an idle consumer peek without taking
    /// the lock (and bouncing its cache line away from publishers).
    has_items: Padded<AtomicBool>,
    space: Notify,
    pub(crate) counters: Counters,
    dead: Mutex<VecDeque<DeadLetter>>,
    dead_capacity: usize,
    config: Mutex<Arc<PluginConfig>>,
}

#[derive(Default)]
struct SlotQueue {
    items: VecDeque<Item>,
    /// Events enqueued and not yet acknowledged by the consumer (includes the chunk in hand).
    pending: usize,
    /// Events routed to this plugin (enqueued or dropped).
    published: u64,
    /// Events not enqueued because the queue was full.
    dropped: u64,
    /// A wake-up is in the actor's mailbox or the actor is draining.
    scheduled: bool,
    /// The live actor, if any (none while restarting or disabled).
    actor: Option<ActorRef<PluginMsg>>,
}

impl Slot {
    pub(crate) fn new(
        name: Arc<str>,
        hooks: HookSet,
        capacity: usize,
        policy: OverflowPolicy,
        dead_capacity: usize,
        config: Arc<PluginConfig>,
    ) -> Self {
        Self {
            name,
            hooks,
            capacity: capacity.max(1),
            policy,
            queue: Padded(Mutex::new(SlotQueue::default())),
            pending: Padded(AtomicUsize::new(0)),
            waiters: AtomicBool::new(false),
            has_items: Padded(AtomicBool::new(false)),
            space: Notify::new(),
            counters: Counters::default(),
            dead: Mutex::new(VecDeque::new()),
            dead_capacity,
            config: Mutex::new(config),
        }
    }

    fn lock(&self) -> MutexGuard<'_, SlotQueue> {
        // Same reasoning as `BusInner::lock`: every update is small and leaves the queue valid.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    #[inline]
    fn matching(&self, batch: &[Event], mask: HookSet) -> usize {
        if self.hooks.contains_all(mask) {
            batch.len()
        } else {
            batch
                .iter()
                .filter(|e| self.hooks.contains(e.hook()))
                .count()
        }
    }

    /// Whether `wanted` more events fit. An oversized batch fits an empty queue, so it cannot
    /// wait forever. When `register` is set and there is no room, marks a waiter.
    fn has_room(&self, wanted: usize, register: bool) -> bool {
        let fits = |pending: usize| pending == 0 || pending + wanted <= self.capacity;
        if fits(self.pending.load(Ordering::SeqCst)) {
            return true;
        }
        if !register {
            return false;
        }
        self.waiters.store(true, Ordering::SeqCst);
        // The consumer lowers `pending` and then reads `waiters`; we set `waiters` and then read
        // `pending`. With SeqCst at least one of us sees the other's write, so no wake-up is lost.
        fits(self.pending.load(Ordering::SeqCst))
    }

    async fn wait_for_space(&self, wanted: usize) {
        let notified = self.space.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        // Re-check after registering: the consumer may have made room (and notified) between
        // our failed attempt and `enable`.
        if self.has_room(wanted, true) {
            return;
        }
        notified.await;
    }

    fn push_events(&self, batch: &Arc<[Event]>, count: usize, mask: HookSet, bounded: bool) {
        if count == 0 {
            return;
        }
        let mut q = self.lock();
        q.published += count as u64;
        if bounded
            && self.policy == OverflowPolicy::DropNewest
            && q.pending != 0
            && q.pending + count > self.capacity
        {
            q.dropped += count as u64;
            return;
        }
        q.pending += count;
        // Publishers are serialized by the bus lock, so a plain store is enough here.
        self.pending.store(q.pending, Ordering::Relaxed);
        q.items.push_back(Item::Events {
            batch: Arc::clone(batch),
            start: 0,
            count,
            filtered: !self.hooks.contains_all(mask),
        });
        self.mark_items();
        Self::wake(&mut q);
    }

    /// Acknowledges `handled` events (under the queue lock) and wakes publishers waiting for
    /// room.
    fn ack(&self, q: &mut SlotQueue, handled: usize) {
        if handled > 0 {
            q.pending -= handled.min(q.pending);
            self.pending.store(q.pending, Ordering::SeqCst);
        }
        if self.waiters.load(Ordering::SeqCst) && self.waiters.swap(false, Ordering::SeqCst) {
            self.space.notify_waiters();
        }
    }

    pub(crate) fn push_item(&self, item: Item) {
        let mut q = self.lock();
        q.items.push_back(item);
        self.mark_items();
        Self::wake(&mut q);
    }

    /// Sets `has_items`, writing only when it changes: an unconditional store would take the
    /// cache line away from a consumer peeking at it on every publish.
    #[inline]
    fn mark_items(&self) {
        if !self.has_items.load(Ordering::Relaxed) {
            self.has_items.store(true, Ordering::Release);
        }
    }

    #[inline]
    fn wake(q: &mut SlotQueue) {
        if !q.scheduled {
            if let Some(actor) = &q.actor {
                q.scheduled = true;
                // A failed send means the actor is stopping; the manager re-attaches a new one
                // and that one is woken in `attach`.
                if actor.send_message(PluginMsg::Drain).is_err() {
                    q.scheduled = false;
                }
            }
        }
    }

    /// Acknowledges `handled` events of the previous chunk and takes the next chunk (everything
    /// queued) into `into`. When nothing is left it returns false and, if `go_idle`, marks the
    /// consumer idle (the next publish wakes it); without `go_idle` the consumer is only peeking
    /// and stays scheduled, so publishers need not wake it.
    pub(crate) fn take_chunk(
        &self,
        handled: usize,
        into: &mut VecDeque<Item>,
        go_idle: bool,
    ) -> bool {
        if handled == 0 && !go_idle && !self.has_items.load(Ordering::Acquire) {
            return false;
        }
        let mut q = self.lock();
        self.ack(&mut q, handled);
        if q.items.is_empty() {
            if go_idle {
                q.scheduled = false;
            }
            return false;
        }
        std::mem::swap(&mut q.items, into);
        self.has_items.store(false, Ordering::Relaxed);
        true
    }

    /// Acknowledges `handled` events and puts `rest` back at the front of the queue, in order
    /// (after a failure, so the next instance sees them).
    pub(crate) fn requeue_front(&self, handled: usize, rest: &mut VecDeque<Item>) {
        let mut q = self.lock();
        while let Some(item) = rest.pop_back() {
            q.items.push_front(item);
        }
        if !q.items.is_empty() {
            self.has_items.store(true, Ordering::Release);
        }
        self.ack(&mut q, handled);
    }

    /// Connects the slot to a (new) actor and wakes it if work is waiting.
    pub(crate) fn attach(&self, actor: ActorRef<PluginMsg>) {
        let mut q = self.lock();
        q.actor = Some(actor);
        q.scheduled = false;
        if !q.items.is_empty() {
            Self::wake(&mut q);
        }
    }

    /// Whether a started actor is attached (its `on_start` succeeded).
    pub(crate) fn is_attached(&self) -> bool {
        self.lock().actor.is_some()
    }

    /// Disconnects the slot from its (failed or stopped) actor.
    pub(crate) fn detach(&self) {
        let mut q = self.lock();
        q.actor = None;
        q.scheduled = false;
    }

    /// After a disable: flush markers resolve (the plugin will not get further), pending
    /// reconfigurations are rejected, and waiting publishers re-check. Events stay queued and
    /// are delivered if the plugin is enabled again.
    pub(crate) fn release_markers(&self) {
        let mut q = self.lock();
        let items = std::mem::take(&mut q.items);
        for item in items {
            match item {
                Item::Flush(tx) => drop(tx),
                Item::Reconfigure { reply, .. } => {
                    let _ = reply.send(Err("the plugin was disabled".to_owned()));
                }
                ev @ Item::Events { .. } => q.items.push_back(ev),
            }
        }
        drop(q);
        self.space.notify_waiters();
    }

    /// `(published, dropped, queued)`, read together under the queue lock.
    pub(crate) fn queue_counts(&self) -> (u64, u64, u64) {
        let q = self.lock();
        (q.published, q.dropped, q.pending as u64)
    }

    pub(crate) fn dead_letter(&self, event: &Event, error: String) {
        self.counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
        let mut dead = self.dead.lock().unwrap_or_else(PoisonError::into_inner);
        if self.dead_capacity == 0 {
            return;
        }
        if dead.len() == self.dead_capacity {
            dead.pop_front();
        }
        dead.push_back(DeadLetter {
            plugin: self.name.to_string(),
            event: event.clone(),
            error,
        });
    }

    pub(crate) fn dead_letters(&self) -> Vec<DeadLetter> {
        self.dead
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .cloned()
            .collect()
    }

    pub(crate) fn config(&self) -> Arc<PluginConfig> {
        Arc::clone(&self.config.lock().unwrap_or_else(PoisonError::into_inner))
    }

    pub(crate) fn set_config(&self, config: Arc<PluginConfig>) {
        *self.config.lock().unwrap_or_else(PoisonError::into_inner) = config;
    }

    pub(crate) fn add_handler_time(&self, d: Duration) {
        self.counters.handler_nanos.fetch_add(
            u64::try_from(d.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }
}
