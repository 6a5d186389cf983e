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
use std::sync::{Arc, OnceLock, PoisonError};
use std::time::{Duration, SystemTime};

use ractor::ActorRef;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, oneshot};

use crate::error::{BatchClosed, PublishError};
use crate::event::{Event, EventKind, EventMeta, Hook, HookSet};
use crate::plugin::PluginConfig;
use crate::runner::PluginMsg;
use crate::sync::{AtomicBool, AtomicU64, Mutex, MutexGuard, fence, switch};

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
    /// The log's last segment and the position of its next cell.
    tail: Arc<Segment>,
    next_pos: u64,
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
                    tail: Segment::new(0),
                    next_pos: 0,
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
        Self::attempt_locked(&mut self.lock(), batch, bound)
    }

    /// [`attempt`](Self::attempt) with the bus lock held by the caller.
    fn attempt_locked(state: &mut BusState, batch: &mut Arc<[Event]>, bound: Bound) -> Attempt {
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
                let wanted = slot.hooks.matching(batch, mask);
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
        if targets.iter().any(|s| s.hooks.intersects(mask)) {
            // Append the batch to the log once, whatever the number of subscribers: take the
            // next cell...
            let pos = state.next_pos;
            if (pos - state.tail.base) as usize == SEGMENT {
                let next = Segment::new(pos);
                switch();
                let _ = state.tail.next.set(Arc::clone(&next));
                state.tail = next;
                // Once per segment: no slow reader may pin an unbounded stretch of the log.
                for slot in &state.all {
                    slot.bound_lag(pos);
                }
            }
            // ...count it for each subscriber before readers can see it (a reader must
            // never acknowledge an event not yet counted)...
            for slot in targets {
                if slot.hooks.intersects(mask) {
                    slot.account(slot.hooks.matching(batch, mask), pos, bounded);
                }
            }
            // ...and make it readable: a written cell is what readers look for (there is no
            // shared end-of-log counter for them to poll, one cache line less per event).
            let cell = Cell {
                batch: Arc::clone(batch),
                mask,
            };
            if let Some(c) = state.tail.cells.0.get((pos - state.tail.base) as usize) {
                switch();
                let _ = c.set(cell);
            }
            state.next_pos = pos + 1;
            // The counts above (plain stores: only publishers write them, under this lock)
            // must be visible before `wake_for` reads each consumer's `scheduled` and
            // `released` flags: the publisher's half of the Dekker handshakes with
            // `take_chunk`. One fence per publish instead of a locked instruction per plugin.
            fence(Ordering::SeqCst);
            // ...and wake the subscribers that were idle.
            for slot in targets {
                if slot.hooks.intersects(mask) {
                    slot.wake_for(&state.tail, pos);
                }
            }
        }
        Attempt::Published(first..first + n as u64)
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
        for h in slot.hooks.iter() {
            state.by_hook[h.index()].push(Arc::clone(slot));
        }
        state.all.push(Arc::clone(slot));
    }

    /// Stops delivering to `slot`; it still reads what was published before. Publishers and
    /// flushes waiting on it are woken to re-check.
    pub(crate) fn unroute(&self, slot: &Arc<Slot>) {
        let mut state = self.lock();
        let was = state.all.iter().any(|s| Arc::ptr_eq(s, slot));
        for list in state.by_hook.iter_mut() {
            list.retain(|s| !Arc::ptr_eq(s, slot));
        }
        state.all.retain(|s| !Arc::ptr_eq(s, slot));
        if was {
            slot.unrouted_at(state.next_pos);
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
    }

    /// Closes the bus after publishing `last`, atomically: `last` is published and the bus
    /// closed in one critical section, so no concurrent publisher gets in after it.
    pub(crate) fn close_with(&self, last: EventKind, source: &Arc<str>) -> Option<u64> {
        let mut batch: Arc<[Event]> = Arc::new([Event {
            meta: EventMeta {
                seq: 0,
                time: SystemTime::now(),
                source: Arc::clone(source),
            },
            kind: last,
        }]);
        let mut state = self.lock();
        let seq = match Self::attempt_locked(&mut state, &mut batch, Bound::Unbounded) {
            Attempt::Published(r) => Some(r.start),
            _ => None,
        };
        state.closed = true;
        seq
    }

    /// For every routed plugin, the number of events routed to it so far: a flush waits until
    /// each has handled that many.
    pub(crate) fn flush_targets(&self) -> Vec<(Arc<Slot>, u64)> {
        let state = self.lock();
        state
            .all
            .iter()
            .map(|slot| (Arc::clone(slot), slot.enqueued.load(Ordering::SeqCst)))
            .collect()
    }

    /// The current end of the log (for tagging control items).
    pub(crate) fn position(&self) -> u64 {
        self.lock().next_pos
    }
}

/// Cells per log segment (4 in the model check, so that its few events cross segments).
const SEGMENT: usize = if cfg!(dtf_shuttle) { 4 } else { 128 };

/// A piece of the append-only log: cells written once by publishers (under the bus lock) and
/// read without locks by every plugin's actor. Segments are freed once no reader holds them.
pub(crate) struct Segment {
    base: u64,
    cells: Arc<Cells>,
    next: OnceLock<Arc<Segment>>,
}

/// The cells of one segment, in an allocation of their own: a chunk in a plugin's hands holds
/// these (one reference count per run of cells, not one per cell), which keeps this segment's
/// events alive but not the segments linked after it.
///
/// Each cell has a cache line pair of its own, so the publisher writing the next cell does not
/// take the line from readers that are reading the previous one.
pub(crate) struct Cells(Box<[Padded<OnceLock<Cell>>]>);

impl Cells {
    /// The cell at `index`, if it was written.
    #[inline]
    pub(crate) fn get(&self, index: usize) -> Option<&Cell> {
        switch();
        self.0.get(index).and_then(|c| c.0.get())
    }
}

/// Segments whose cells are alive, for the test that a slow reader does not pin the log.
#[cfg(test)]
static LIVE_SEGMENTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

#[cfg(test)]
impl Drop for Cells {
    fn drop(&mut self) {
        LIVE_SEGMENTS.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Segment {
    fn new(base: u64) -> Arc<Self> {
        #[cfg(test)]
        LIVE_SEGMENTS.fetch_add(1, Ordering::SeqCst);
        Arc::new(Segment {
            base,
            cells: Arc::new(Cells(
                (0..SEGMENT).map(|_| Padded(OnceLock::new())).collect(),
            )),
            next: OnceLock::new(),
        })
    }
}

/// One published batch (usually one event) and the union of its hooks.
pub(crate) struct Cell {
    pub(crate) batch: Arc<[Event]>,
    pub(crate) mask: HookSet,
}

impl HookSet {
    #[inline]
    pub(crate) const fn intersects(self, other: HookSet) -> bool {
        !self.intersection(other).is_empty()
    }

    /// How many events of `batch`, whose hooks are all in `mask`, are in this set.
    #[inline]
    pub(crate) fn matching(self, batch: &[Event], mask: HookSet) -> usize {
        if self.contains_all(mask) {
            batch.len()
        } else {
            batch.iter().filter(|e| self.contains(e.hook())).count()
        }
    }
}

impl Cell {
    /// The cell's events for a plugin with `hooks`, holding the batch, not the segment.
    fn copy_for(&self, hooks: HookSet) -> Item {
        Item::Events {
            batch: Arc::clone(&self.batch),
            start: 0,
            count: hooks.matching(&self.batch, self.mask),
            filtered: !hooks.contains_all(self.mask),
        }
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
    /// Cells `from..to` of one segment, read in place: the events of the cells whose mask meets
    /// the plugin's hooks, `count` of them (cells of other hooks in between are stepped over).
    /// What a reader normally takes from the log: one reference count per run, not per cell.
    Run {
        cells: Arc<Cells>,
        from: usize,
        to: usize,
        count: usize,
    },
    /// A new configuration, applied in order with the events.
    Reconfigure {
        config: Arc<PluginConfig>,
        reply: oneshot::Sender<Result<crate::plugin::Reconfigured, String>>,
    },
}

impl Item {
    /// The same events, holding their batches rather than a segment (a run becomes one item per
    /// matching cell); other items are unchanged.
    fn into_copies(self, hooks: HookSet) -> Vec<Item> {
        let Item::Run {
            cells, from, to, ..
        } = self
        else {
            return vec![self];
        };
        (from..to)
            .filter_map(|i| cells.get(i))
            .filter(|cell| hooks.intersects(cell.mask))
            .map(|cell| cell.copy_for(hooks))
            .collect()
    }
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

/// One plugin's view of the bus: its counters, its place in the log, and the items (requeued
/// events, configuration changes) that do not come from the log.
///
/// Publishers write the producer-side counters (`enqueued`, `acked_seen`, `dropped`, `skips`),
/// read `scheduled` and `released`, and read `acked` only when the queue may be full; the
/// plugin's actor reads the log through `reader` and writes `acked` and `read_pos`. `enqueued`,
/// `acked` and `scheduled` live on cache lines of their own. (Padding `acked_seen` and
/// `read_pos` as well measured no better.)
pub(crate) struct Slot {
    pub(crate) name: Arc<str>,
    pub(crate) hooks: HookSet,
    capacity: usize,
    policy: OverflowPolicy,
    /// Events routed to this plugin and not dropped (publishers, under the bus lock).
    enqueued: Padded<AtomicU64>,
    /// A value `acked` had (it only grows): publishers check room against it and read `acked`
    /// itself, a line the consumer writes, only when that bound says the queue may be full.
    acked_seen: AtomicU64,
    /// Events not delivered because the queue was full.
    dropped: AtomicU64,
    /// Log positions dropped for this plugin, in order, and whether there are any.
    skips: Mutex<VecDeque<u64>>,
    has_skips: AtomicBool,
    /// Events handled (delivered or dead-lettered) by the actor.
    acked: Padded<AtomicU64>,
    /// A wake-up is in the actor's mailbox or the actor is draining.
    scheduled: Padded<AtomicBool>,
    wake: Mutex<WakeState>,
    reader: Mutex<Reader>,
    /// The reader's cursor, published for the publishers' lag check (written per chunk).
    read_pos: AtomicU64,
    /// `WakeState::resume` is set.
    has_resume: AtomicBool,
    /// The reader let go of its segment (`Reader::seg` is `None`) and needs a resume hint to
    /// find the log again; paired with `enqueued` in a Dekker-style handshake.
    released: AtomicBool,
    /// Whether the plugin is routed (a flush stops waiting for an unrouted one).
    routed: AtomicBool,
    /// A publisher is waiting for room (paired with `acked` in a Dekker-style handshake).
    waiters: AtomicBool,
    space: Notify,
    /// A flush is waiting for progress.
    flush_waiters: AtomicBool,
    progress: Notify,
    pub(crate) counters: Counters,
    dead: Mutex<VecDeque<DeadLetter>>,
    dead_capacity: usize,
    config: Mutex<Arc<PluginConfig>>,
}

/// Where a slot's wake-ups go: the plugin's actor, or a consumer of the model check.
pub(crate) trait Consumer: Send + Sync {
    /// Asks the consumer to take its work; false when it is gone.
    fn wake(&self) -> bool;
}

impl Consumer for ActorRef<PluginMsg> {
    fn wake(&self) -> bool {
        self.send_message(PluginMsg::Drain).is_ok()
    }
}

#[derive(Default)]
struct WakeState {
    /// The live actor, if any (none while restarting or disabled).
    actor: Option<Box<dyn Consumer>>,
    /// Where an idle reader should resume: the segment and position of the event that woke it.
    resume: Option<(Arc<Segment>, u64)>,
}

#[derive(Default)]
struct Reader {
    /// The segment holding `pos`, while the reader has unread events (released when idle, so
    /// an idle plugin pins no memory).
    seg: Option<Arc<Segment>>,
    /// The next log position to read.
    pos: u64,
    /// The log position at which the plugin was unrouted, if it is.
    until: Option<u64>,
    /// Items to hand out before reading the log: the rest of a failed chunk, or events kept
    /// from the log when the plugin was disabled.
    carry: VecDeque<Item>,
    /// Configuration changes, each due once the log has been read up to its position.
    control: VecDeque<(u64, Item)>,
}

impl Reader {
    /// Events in the carry queue.
    fn carry_events(&self) -> u64 {
        self.carry
            .iter()
            .map(|i| match i {
                Item::Events { count, .. } | Item::Run { count, .. } => *count as u64,
                _ => 0,
            })
            .sum()
    }
}

/// How `Slot::read_log` hands out what it reads.
#[derive(Clone, Copy)]
enum Read {
    /// Runs of cells read in place ([`Item::Run`]): the consumer's normal path.
    InPlace,
    /// The matching batches, one reference each ([`Item::Events`]): for events kept out of the
    /// log (a disabled or far-behind plugin), which must not keep whole segments alive.
    Copy,
}

/// How far (in log positions) a reader with pending events may lag behind the log's end
/// before its unread events are copied out of the log (see `Slot::bound_lag`).
const MAX_LAG: u64 = if cfg!(dtf_shuttle) { 4 } else { 64 * 1024 };

/// Most events one chunk takes from the log.
const CHUNK_EVENTS: usize = if cfg!(dtf_shuttle) { 3 } else { 4096 };

/// Most runs of cells (so segments) one chunk holds.
const MAX_RUNS: usize = if cfg!(dtf_shuttle) { 2 } else { 16 };

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
            enqueued: Padded(AtomicU64::new(0)),
            acked_seen: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            skips: Mutex::new(VecDeque::new()),
            has_skips: AtomicBool::new(false),
            acked: Padded(AtomicU64::new(0)),
            scheduled: Padded(AtomicBool::new(false)),
            wake: Mutex::new(WakeState::default()),
            reader: Mutex::new(Reader::default()),
            read_pos: AtomicU64::new(0),
            has_resume: AtomicBool::new(false),
            released: AtomicBool::new(false),
            routed: AtomicBool::new(false),
            waiters: AtomicBool::new(false),
            space: Notify::new(),
            flush_waiters: AtomicBool::new(false),
            progress: Notify::new(),
            counters: Counters::default(),
            dead: Mutex::new(VecDeque::new()),
            dead_capacity,
            config: Mutex::new(config),
        }
    }

    fn reader(&self) -> MutexGuard<'_, Reader> {
        // Every update is small and leaves the reader valid, so a poisoned lock is usable.
        self.reader.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wake_state(&self) -> MutexGuard<'_, WakeState> {
        self.wake.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Events routed and not yet handled.
    fn pending(&self) -> u64 {
        let enqueued = self.enqueued.load(Ordering::SeqCst);
        enqueued.saturating_sub(self.acked.load(Ordering::SeqCst))
    }

    /// Whether `wanted` more events fit. An oversized batch fits an empty queue, so it cannot
    /// wait forever. When `register` is set and there is no room, marks a waiter.
    fn has_room(&self, wanted: usize, register: bool) -> bool {
        let wanted = wanted as u64;
        let cap = self.capacity as u64;
        let fits = |pending: u64| pending == 0 || pending + wanted <= cap;
        // An upper bound of the queue, from a value of `acked` seen before: enough when it fits.
        let enqueued = self.enqueued.load(Ordering::Relaxed);
        if enqueued.saturating_sub(self.acked_seen.load(Ordering::Relaxed)) + wanted <= cap {
            return true;
        }
        // Concurrent refreshes may store an older value: that only makes the bound looser.
        self.acked_seen
            .store(self.acked.load(Ordering::SeqCst), Ordering::Relaxed);
        if fits(self.pending()) {
            return true;
        }
        if !register {
            return false;
        }
        self.waiters.store(true, Ordering::SeqCst);
        // The consumer raises `acked` and then reads `waiters`; we set `waiters` and then read
        // `acked`. With SeqCst at least one of us sees the other's write: no wake-up is lost.
        fits(self.pending())
    }

    async fn wait_for_space(&self, wanted: usize) {
        let notified = self.space.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if self.has_room(wanted, true) {
            return;
        }
        notified.await;
    }

    /// Counts `count` events at log position `pos` for this plugin, or drops them (publisher,
    /// under the bus lock, before the position becomes readable).
    fn account(&self, count: usize, pos: u64, bounded: bool) {
        if count == 0 {
            return;
        }
        let count = count as u64;
        if bounded && self.policy == OverflowPolicy::DropNewest {
            let pending = self.pending();
            if pending != 0 && pending + count > self.capacity as u64 {
                self.dropped.fetch_add(count, Ordering::Relaxed);
                self.skips
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push_back(pos);
                self.has_skips.store(true, Ordering::SeqCst);
                return;
            }
        }
        // Only publishers write `enqueued`, under the bus lock: no read-modify-write needed.
        let enqueued = self.enqueued.load(Ordering::Relaxed);
        self.enqueued.store(enqueued + count, Ordering::Release);
    }

    /// Wakes the actor if it was idle, telling it where to resume (publisher, after the event
    /// at `pos` became readable).
    #[inline]
    fn wake_for(&self, tail: &Arc<Segment>, pos: u64) {
        // A reader that let go of the log finds it again only through a hint, so one is left
        // whenever it has let go, whether or not a wake-up is already on its way (a
        // configuration change wakes the actor without one). The earliest hint is kept: every
        // event from it on is unread.
        if self.released.load(Ordering::SeqCst) {
            let mut w = self.wake_state();
            if w.resume.is_none() {
                w.resume = Some((Arc::clone(tail), pos));
            }
            self.has_resume.store(true, Ordering::SeqCst);
        }
        if self.scheduled.load(Ordering::SeqCst) || self.scheduled.swap(true, Ordering::SeqCst) {
            return;
        }
        let w = self.wake_state();
        Self::send_drain(&self.scheduled, &w);
    }

    /// Sends `Drain` to the attached actor; `scheduled` is already set and is cleared again
    /// when there is no actor to wake (the next one is woken in `attach`).
    fn send_drain(scheduled: &AtomicBool, w: &WakeState) {
        match &w.actor {
            Some(actor) if actor.wake() => {}
            _ => scheduled.store(false, Ordering::SeqCst),
        }
    }

    fn wake_any(&self) {
        if self.scheduled.swap(true, Ordering::SeqCst) {
            return;
        }
        let w = self.wake_state();
        Self::send_drain(&self.scheduled, &w);
    }

    /// Queues a configuration change, due once everything published before it was read.
    pub(crate) fn push_control(&self, position: u64, item: Item) {
        self.reader().control.push_back((position, item));
        self.wake_any();
    }

    /// Acknowledges `handled` events and wakes publishers waiting for room and flushes waiting
    /// for progress.
    fn ack(&self, handled: usize) {
        if handled > 0 {
            self.acked.fetch_add(handled as u64, Ordering::SeqCst);
        }
        if self.waiters.load(Ordering::SeqCst) && self.waiters.swap(false, Ordering::SeqCst) {
            self.space.notify_waiters();
        }
        if self.flush_waiters.load(Ordering::SeqCst)
            && self.flush_waiters.swap(false, Ordering::SeqCst)
        {
            self.progress.notify_waiters();
        }
    }

    /// Acknowledges `handled` events of the previous chunk and takes the next chunk into
    /// `into`: carried items first, then due configuration changes and events read from the
    /// log. When nothing is left it returns false and, if `go_idle`, marks the consumer idle
    /// (the next publish wakes it) and lets go of the log.
    ///
    /// It may also return true with `into` empty: events are counted but not readable yet (a
    /// publisher between counting them and writing their cell). The caller comes back after
    /// handing control to the runtime, so a publisher stalled there cannot make it spin.
    pub(crate) fn take_chunk(
        &self,
        handled: usize,
        into: &mut VecDeque<Item>,
        go_idle: bool,
    ) -> bool {
        self.ack(handled);
        let mut retries = 0;
        loop {
            if self.fill(into) {
                return true;
            }
            if !go_idle {
                return false;
            }
            self.scheduled.store(false, Ordering::SeqCst);
            // Publishers count, then check `scheduled`; we cleared it, then check the count:
            // one of us sees the other, so an event published meanwhile is not left unread.
            let more = self.pending() > 0 || !self.reader().control.is_empty();
            if more && !self.scheduled.swap(true, Ordering::SeqCst) {
                retries += 1;
                if retries < 16 {
                    continue;
                }
                return true;
            }
            if !more {
                let mut r = self.reader();
                if r.carry.is_empty() && r.seg.is_some() {
                    // We mark the release, then check the count; publishers count, then check
                    // the mark: with SeqCst one of us sees the other, so either we keep the
                    // segment or the publisher leaves a hint.
                    self.released.store(true, Ordering::SeqCst);
                    if self.pending() == 0 {
                        r.seg = None;
                    } else {
                        self.released.store(false, Ordering::SeqCst);
                    }
                }
            }
            return false;
        }
    }

    /// Moves the next chunk into `into`; whether there was any.
    fn fill(&self, into: &mut VecDeque<Item>) -> bool {
        let mut r = self.reader();
        if !r.carry.is_empty() {
            std::mem::swap(&mut r.carry, into);
            return true;
        }
        self.read_log(&mut r, into, CHUNK_EVENTS, Read::InPlace);
        !into.is_empty()
    }

    /// Reads up to `max_events` events (and the configuration changes due among them) from
    /// the log into `into`, advancing the cursor.
    fn read_log(&self, r: &mut Reader, into: &mut VecDeque<Item>, max_events: usize, how: Read) {
        if self.has_resume.load(Ordering::SeqCst) {
            // Take the hint even when it is not needed: a stale hint would keep its segment,
            // and every segment after it, alive.
            self.has_resume.store(false, Ordering::SeqCst);
            let resume = self.wake_state().resume.take();
            if let (None, Some((seg, pos))) = (&r.seg, resume) {
                // Never move backwards: a stale hint must not replay what was read.
                let pos = pos.max(r.pos);
                r.seg = Some(seg);
                r.pos = pos;
                self.released.store(false, Ordering::SeqCst);
            }
        }
        // Readers read up to the first cell not yet written (or where the plugin was unrouted).
        let end = r.until.unwrap_or(u64::MAX);
        let mut events = 0usize;
        // Whether the last item in `into` is a run on the current segment that ends at
        // `r.pos`'s cell and can be extended over it.
        let mut open = false;
        // Runs opened, each holding one segment's cells: bounded, so that a chunk in the hands
        // of a handler that hangs pins a bounded part of the log.
        let mut runs = 0usize;
        while events < max_events {
            if let Some((due, _)) = r.control.front() {
                if *due <= r.pos || self.pending() == 0 {
                    if let Some((_, item)) = r.control.pop_front() {
                        into.push_back(item);
                    }
                    open = false;
                    continue;
                }
            }
            if r.pos >= end {
                break;
            }
            // Borrowed, not cloned: a reference count touched per cell is a cache line that
            // every reader and the publisher fight over.
            let Some(seg) = r.seg.as_ref() else { break };
            let index = (r.pos - seg.base) as usize;
            if index >= SEGMENT {
                // Linked before any of its cells is written.
                switch();
                let Some(next) = seg.next.get() else { break };
                r.seg = Some(Arc::clone(next));
                open = false;
                continue;
            }
            let Some(cell) = seg.cells.get(index) else {
                // Not published yet: the end of the log for now.
                break;
            };
            let pos = r.pos;
            r.pos += 1;
            if !self.hooks.intersects(cell.mask) {
                continue;
            }
            if self.has_skips.load(Ordering::SeqCst) && self.skip(pos) {
                // A dropped position must not end up inside a run.
                open = false;
                continue;
            }
            let count = self.hooks.matching(&cell.batch, cell.mask);
            if count == 0 {
                continue;
            }
            if matches!(how, Read::InPlace) && !open && runs == MAX_RUNS {
                // The next chunk starts here.
                r.pos = pos;
                break;
            }
            events += count;
            match how {
                Read::InPlace => {
                    if open {
                        if let Some(Item::Run { to, count: c, .. }) = into.back_mut() {
                            *to = index + 1;
                            *c += count;
                            continue;
                        }
                    }
                    into.push_back(Item::Run {
                        cells: Arc::clone(&seg.cells),
                        from: index,
                        to: index + 1,
                        count,
                    });
                    open = true;
                    runs += 1;
                }
                Read::Copy => into.push_back(cell.copy_for(self.hooks)),
            }
        }
        self.read_pos.store(r.pos, Ordering::Relaxed);
    }

    /// Keeps a reader that lags far behind the log's end from pinning the log: its unread
    /// events are copied into its carry queue (a bounded amount: at most its queue) and its
    /// cursor jumps to the end. Called by publishers, under the bus lock, once per segment.
    fn bound_lag(&self, end: u64) {
        if end.saturating_sub(self.read_pos.load(Ordering::Relaxed)) <= MAX_LAG
            || self.pending() == 0
        {
            return;
        }
        let mut r = self.reader();
        let mut kept = VecDeque::new();
        self.read_log(&mut r, &mut kept, usize::MAX, Read::Copy);
        r.carry.append(&mut kept);
    }

    /// Whether `pos` was dropped for this plugin (then forgets it).
    fn skip(&self, pos: u64) -> bool {
        let mut skips = self.skips.lock().unwrap_or_else(PoisonError::into_inner);
        while skips.front().is_some_and(|p| *p < pos) {
            skips.pop_front();
        }
        let hit = skips.front() == Some(&pos);
        if hit {
            skips.pop_front();
        }
        if skips.is_empty() {
            self.has_skips.store(false, Ordering::SeqCst);
        }
        hit
    }

    /// Acknowledges `handled` events and puts `rest` back in front of everything else, in
    /// order (after a failure, so the next instance sees them).
    pub(crate) fn requeue_front(&self, handled: usize, rest: &mut VecDeque<Item>) {
        {
            let mut r = self.reader();
            while let Some(item) = rest.pop_back() {
                r.carry.push_front(item);
            }
        }
        self.ack(handled);
    }

    /// Connects the slot to a (new) actor and wakes it: to take the work waiting, or, with
    /// nothing waiting, to go idle properly and let go of the segment (or the resume hint)
    /// that the failed or restarted instance held, which would otherwise pin the log from
    /// there on until the next event of its hooks.
    pub(crate) fn attach(&self, actor: Box<dyn Consumer>) {
        let mut w = self.wake_state();
        w.actor = Some(actor);
        self.scheduled.store(false, Ordering::SeqCst);
        drop(w);
        self.wake_any();
    }

    /// Whether a started actor is attached (its `on_start` succeeded).
    pub(crate) fn is_attached(&self) -> bool {
        self.wake_state().actor.is_some()
    }

    /// Disconnects the slot from its (failed or stopped) actor.
    pub(crate) fn detach(&self) {
        self.wake_state().actor = None;
        self.scheduled.store(false, Ordering::SeqCst);
    }

    /// Routed at log position `pos` (the bus lock is held).
    ///
    /// The reader starts out released, holding no segment: the first event published to it
    /// leaves a hint where to start. Holding the tail instead would pin the log from here on
    /// for as long as no event of its hooks comes (a plugin waiting for failures in a run
    /// without any), since an idle reader is never woken to let go.
    fn routed_at(&self, pos: u64) {
        let mut r = self.reader();
        r.seg = None;
        r.pos = pos;
        r.until = None;
        self.released.store(true, Ordering::SeqCst);
        self.read_pos.store(pos, Ordering::Relaxed);
        self.routed.store(true, Ordering::SeqCst);
    }

    /// Unrouted at log position `pos` (the bus lock is held).
    fn unrouted_at(&self, pos: u64) {
        self.reader().until = Some(pos);
        self.routed.store(false, Ordering::SeqCst);
    }

    /// After a disable: pending configuration changes are rejected and waiting publishers and
    /// flushes re-check. Events still unread are copied out of the log (so a disabled plugin
    /// pins none of it) and delivered if the plugin is enabled again.
    pub(crate) fn release(&self) {
        let mut r = self.reader();
        for (_, item) in std::mem::take(&mut r.control) {
            if let Item::Reconfigure { reply, .. } = item {
                let _ = reply.send(Err("the plugin was disabled".to_owned()));
            }
        }
        // Runs put back after a failure hold their segments: keep their events, not the log.
        if r.carry.iter().any(|i| matches!(i, Item::Run { .. })) {
            let carry = std::mem::take(&mut r.carry);
            r.carry = carry
                .into_iter()
                .flat_map(|item| item.into_copies(self.hooks))
                .collect();
        }
        if self.pending() > r.carry_events() {
            // Copy the rest of the routed log into the carry queue.
            let mut kept = VecDeque::new();
            self.read_log(&mut r, &mut kept, usize::MAX, Read::Copy);
            r.carry.append(&mut kept);
        }
        r.seg = None;
        self.released.store(true, Ordering::SeqCst);
        drop(r);
        self.space.notify_waiters();
        self.progress.notify_waiters();
    }

    /// Resolves once `target` events have been handled, or the plugin is unrouted.
    pub(crate) async fn wait_handled(&self, target: u64) {
        loop {
            let notified = self.progress.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            self.flush_waiters.store(true, Ordering::SeqCst);
            if self.acked.load(Ordering::SeqCst) >= target || !self.routed.load(Ordering::SeqCst) {
                return;
            }
            notified.await;
        }
    }

    /// `(published, dropped, queued)`.
    pub(crate) fn queue_counts(&self) -> (u64, u64, u64) {
        let dropped = self.dropped.load(Ordering::SeqCst);
        let enqueued = self.enqueued.load(Ordering::SeqCst);
        (enqueued + dropped, dropped, self.pending())
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

#[cfg(test)]
#[cfg(dtf_shuttle)]
#[path = "bus_model.rs"]
mod model;

// The tests below run on tokio and ractor, which the model check's build does not model.
#[cfg(test)]
#[cfg(not(dtf_shuttle))]
mod tests {
    use super::*;
    use crate::event::Hook;
    use crate::plugin::{Plugin, PluginContext, PluginError, PluginMetadata};
    use crate::{PluginManager, PluginSpec, ShutdownReason};
    use tokio::sync::watch;

    /// Blocks on its first event until the gate opens.
    struct Gated(watch::Receiver<bool>, Arc<AtomicU64>);

    impl Plugin for Gated {
        fn metadata(&self) -> PluginMetadata {
            PluginMetadata::new("gated").hooks(Hook::Custom)
        }
        async fn on_event(&mut self, _: &mut PluginContext, _: &Event) -> Result<(), PluginError> {
            while !*self.0.borrow_and_update() {
                self.0.changed().await?;
            }
            self.1.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    struct Count(Arc<AtomicU64>);

    impl Plugin for Count {
        fn metadata(&self) -> PluginMetadata {
            PluginMetadata::new("count").hooks(Hook::TaskCreated)
        }
        async fn on_event(&mut self, _: &mut PluginContext, _: &Event) -> Result<(), PluginError> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    /// Records the numbers of the `n` custom events it handles; fails on `fail_on`, and
    /// waits for the gate to open before handling `wait_on`.
    struct Picky {
        seen: Arc<std::sync::Mutex<Vec<u64>>>,
        fail_on: u64,
        wait_on: u64,
        gate: watch::Receiver<bool>,
        /// Notified when it starts waiting on `wait_on`.
        waiting: Arc<tokio::sync::Notify>,
    }

    impl Plugin for Picky {
        fn metadata(&self) -> PluginMetadata {
            PluginMetadata::new("picky").hooks(Hook::Custom)
        }
        async fn on_event(&mut self, _: &mut PluginContext, e: &Event) -> Result<(), PluginError> {
            let EventKind::Custom(c) = &e.kind else {
                return Ok(());
            };
            let n = c.payload.as_u64().unwrap_or(u64::MAX);
            if n == self.wait_on {
                self.waiting.notify_one();
                while !*self.gate.borrow_and_update() {
                    self.gate.changed().await?;
                }
            }
            if n == self.fail_on {
                return Err("picky".into());
            }
            self.seen
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(n);
            Ok(())
        }
    }

    fn n(i: u64) -> EventKind {
        EventKind::custom("n", serde_json::json!(i))
    }

    async fn status(manager: &PluginManager, name: &str) -> crate::PluginStatus {
        let list = manager.list().await.unwrap();
        list.into_iter().find(|p| p.name == name).unwrap().status
    }

    async fn filler(manager: &PluginManager, count: u64) {
        for i in 0..count {
            manager
                .publish(EventKind::task_created(format!("t{i}"), "x"))
                .await
                .unwrap();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_plugin_restarted_after_its_last_event_does_not_pin_the_log() {
        let (_gate, rx) = watch::channel(true);
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (s, counted) = (Arc::clone(&seen), Arc::new(AtomicU64::new(0)));
        let c = Arc::clone(&counted);
        let manager = PluginManager::builder()
            .config(
                crate::ManagerConfig::builder()
                    .backoff(crate::Backoff::none())
                    .build(),
            )
            .spec(PluginSpec::new(move || Picky {
                seen: Arc::clone(&s),
                fail_on: 0,
                wait_on: u64::MAX,
                gate: rx.clone(),
                waiting: Arc::default(),
            }))
            .spec(PluginSpec::new(move || Count(Arc::clone(&c))))
            .spawn()
            .await
            .unwrap();
        // Its only event fails; the restarted instance has nothing to do, and no event of
        // its hooks comes again.
        manager.publish(n(0)).await.unwrap();
        manager.flush().await;
        let first = Arc::downgrade(&manager.bus().inner().lock().tail);
        let mut waited = 0;
        while manager.stats("picky").await.unwrap().restarts < 1 {
            assert!(waited < 1000, "not restarted");
            waited += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        filler(&manager, 300_000).await;
        manager.flush().await;
        assert!(
            first.upgrade().is_none(),
            "the restarted plugin pins the log"
        );
        manager.shutdown(ShutdownReason::Completed).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_plugin_disabled_mid_chunk_keeps_its_events_but_not_the_log() {
        let (gate, rx) = watch::channel(false);
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (s, counted) = (Arc::clone(&seen), Arc::new(AtomicU64::new(0)));
        let c = Arc::clone(&counted);
        let waiting = Arc::new(tokio::sync::Notify::new());
        let w = Arc::clone(&waiting);
        let manager = PluginManager::builder()
            .spec(
                PluginSpec::new(move || Picky {
                    seen: Arc::clone(&s),
                    fail_on: 1,
                    wait_on: 0,
                    gate: rx.clone(),
                    waiting: Arc::clone(&w),
                })
                .restart_policy(crate::RestartPolicy::Temporary),
            )
            .spec(PluginSpec::new(move || Count(Arc::clone(&c))))
            .spawn()
            .await
            .unwrap();
        // Event 0 blocks the plugin; events 1..=20 wait for it, one per segment, so its next
        // chunk is a run per segment.
        manager.publish(n(0)).await.unwrap();
        // It takes event 0 alone and blocks on it before the others come.
        waiting.notified().await;
        let mut segments = Vec::new();
        for i in 1..=20 {
            manager.publish(n(i)).await.unwrap();
            segments.push(Arc::downgrade(&manager.bus().inner().lock().tail.cells));
            filler(&manager, SEGMENT as u64).await;
        }
        // It handles 0, fails on 1 (the start of a chunk of runs) and is disabled.
        gate.send(true).unwrap();
        manager.flush().await;
        let mut waited = 0;
        while status(&manager, "picky").await != crate::PluginStatus::Disabled {
            assert!(waited < 1000, "not disabled");
            waited += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Everyone else moves on: the disabled plugin keeps its events, not their segments.
        filler(&manager, 4 * SEGMENT as u64).await;
        manager.flush().await;
        let pinned = segments.iter().filter(|w| w.upgrade().is_some()).count();
        assert_eq!(pinned, 0, "segments pinned by the disabled plugin");
        // Enabled again, it gets 2..=20, once and in order.
        manager.enable("picky").await.unwrap();
        manager.flush().await;
        let want: Vec<u64> = std::iter::once(0).chain(2..=20).collect();
        assert_eq!(*seen.lock().unwrap(), want);
        manager.shutdown(ShutdownReason::Completed).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_plugin_whose_hooks_never_fire_does_not_pin_the_log() {
        let counted = Arc::new(AtomicU64::new(0));
        let (seen, c) = (Arc::new(AtomicU64::new(0)), Arc::clone(&counted));
        let s = Arc::clone(&seen);
        // `Gated` waits for `Custom` events, and none come; the gate is open anyway.
        let (_gate, rx) = watch::channel(true);
        let manager = PluginManager::builder()
            .spec(PluginSpec::new(move || Gated(rx.clone(), Arc::clone(&s))))
            .spec(PluginSpec::new(move || Count(Arc::clone(&c))))
            .spawn()
            .await
            .unwrap();
        // The segment the log starts with: both plugins were routed while it was the tail.
        let first = Arc::downgrade(&manager.bus().inner().lock().tail);
        const N: u64 = 300_000;
        for i in 0..N {
            manager
                .publish(EventKind::task_created(format!("t{i}"), "x"))
                .await
                .unwrap();
        }
        manager.flush().await;
        // 300,000 events are about 2,350 segments; the reader of `TaskCreated` lets go of
        // each as it passes, and the plugin that never got an event holds none: the start of
        // the log (and everything linked after it) is freed.
        assert!(
            first.upgrade().is_none(),
            "the first segment is still pinned"
        );
        assert_eq!(counted.load(Ordering::SeqCst), N);
        // Its first event still reaches it.
        manager
            .publish(EventKind::custom("late", serde_json::Value::Null))
            .await
            .unwrap();
        manager.flush().await;
        assert_eq!(seen.load(Ordering::SeqCst), 1);
        manager.shutdown(ShutdownReason::Completed).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stuck_reader_does_not_pin_the_log() {
        let (gate, rx) = watch::channel(false);
        let (gated_seen, counted) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (g, c) = (Arc::clone(&gated_seen), Arc::clone(&counted));
        let manager = PluginManager::builder()
            .spec(PluginSpec::new(move || Gated(rx.clone(), Arc::clone(&g))))
            .spec(PluginSpec::new(move || Count(Arc::clone(&c))))
            .spawn()
            .await
            .unwrap();
        // The gated plugin takes its event and blocks; one more waits behind it.
        manager
            .publish(EventKind::custom("first", serde_json::Value::Null))
            .await
            .unwrap();
        manager
            .publish(EventKind::custom("second", serde_json::Value::Null))
            .await
            .unwrap();
        // 300,000 events of another hook flow past it: 2,300+ segments without a bound.
        const N: u64 = 300_000;
        for i in 0..N {
            manager
                .publish(EventKind::task_created(format!("t{i}"), "x"))
                .await
                .unwrap();
        }
        // Without the bound the stuck reader pins all ~2,350 segments; with it, about
        // MAX_LAG / SEGMENT = 512 plus the stretch since the last check.
        let bound = 1_024;
        assert!((MAX_LAG as usize / SEGMENT) + 64 < bound);
        let live = LIVE_SEGMENTS.load(Ordering::SeqCst);
        assert!(live <= bound, "{live} segments alive, bound {bound}");
        // Nothing was lost or reordered by copying the stuck reader's events out of the log.
        gate.send(true).unwrap();
        manager.flush().await;
        assert_eq!(gated_seen.load(Ordering::SeqCst), 2);
        assert_eq!(counted.load(Ordering::SeqCst), N);
        for info in manager.list().await.unwrap() {
            assert!(info.stats.is_conserved(), "{info:?}");
            assert_eq!(info.stats.queued, 0);
        }
        manager.shutdown(ShutdownReason::Completed).await;
    }
}
