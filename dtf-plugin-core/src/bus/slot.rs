//! One plugin's slot: its counters and queue bound, the publisher side (room, accounting,
//! wake-ups), acknowledgements, attaching and detaching its actor, and its dead letters. How it
//! reads the log is in `read.rs`.

use super::*;

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

/// One plugin's view of the bus: its counters, its place in the log, and the items (requeued
/// events, configuration changes) that do not come from the log.
///
/// Publishers write the producer-side counters (the group's count, `acked_seen`, `dropped`,
/// `skips`), read `scheduled` and `released` (only when the group's `attention` moved), and read
/// `acked` only when the queue may be full; the plugin's actor reads the log through `reader`
/// and writes `acked` and `read_pos`. `acked` and `scheduled` live on cache lines of their own,
/// as do the group's count and `attention`. (Padding `acked_seen` and `read_pos` as well
/// measured no better.)
///
/// Where a publisher and the actor each write one flag and then read the other's (a lost
/// wake-up otherwise), both sides put a `SeqCst` fence between the write and the read: the
/// form of that handshake that the C++20/Rust memory model orders and that loom models. Who
/// waits for `acked` to grow registers in `acked`'s own low bits with a read-modify-write, so
/// that handshake needs no fence at all.
pub(crate) struct Slot {
    pub(crate) name: Arc<str>,
    pub(crate) hooks: HookSet,
    pub(super) capacity: usize,
    pub(super) policy: OverflowPolicy,
    /// The plugins with the same hooks, whose count of published events this slot shares.
    pub(super) group: Arc<Group>,
    /// Events routed to this plugin and not dropped, as [`Slot::enqueued`] derives them: while
    /// routed, the offset (modulo 2^63) to add to the group's count; while not, [`FROZEN`] and
    /// the number itself. Written under the bus lock, when the slot is routed and unrouted.
    pub(super) enq: AtomicU64,
    /// A value `acked` had (it only grows): publishers check room against it and read `acked`
    /// itself, a line the consumer writes, only when that bound says the queue may be full.
    pub(super) acked_seen: AtomicU64,
    /// Events not delivered because the queue was full.
    pub(super) dropped: AtomicU64,
    /// Log positions dropped for this plugin, in order, and whether there are any.
    pub(super) skips: Mutex<VecDeque<u64>>,
    pub(super) has_skips: AtomicBool,
    /// Events handled (delivered or dead-lettered) by the actor, shifted left by
    /// [`ACKED_SHIFT`]; the low bits flag waiters ([`SPACE`], [`PROGRESS`]).
    pub(super) acked: Padded<AtomicU64>,
    /// A wake-up is in the actor's mailbox or the actor is draining.
    pub(super) scheduled: Padded<AtomicBool>,
    pub(super) wake: Mutex<WakeState>,
    pub(super) reader: Mutex<Reader>,
    /// The reader's cursor, published for the publishers' lag check (written per chunk).
    pub(super) read_pos: AtomicU64,
    /// `WakeState::resume` is set (written under the wake lock). A reader with a segment reads
    /// it without the lock, to drop a stale hint; one without a segment always takes the lock.
    pub(super) has_resume: AtomicBool,
    /// The reader let go of its segment (`Reader::seg` is `None`) and needs a resume hint to
    /// find the log again; paired with `enqueued` in a Dekker-style handshake.
    pub(super) released: AtomicBool,
    /// Whether the plugin is routed (a flush stops waiting for an unrouted one).
    pub(super) routed: AtomicBool,
    /// Publishers waiting for room ([`SPACE`] in `acked`).
    pub(super) space: Notify,
    /// Flushes waiting for progress ([`PROGRESS`] in `acked`).
    pub(super) progress: Notify,
    pub(crate) counters: Counters,
    pub(super) dead: Mutex<VecDeque<DeadLetter>>,
    pub(super) dead_capacity: usize,
    pub(super) config: Mutex<Arc<PluginConfig>>,
}

/// `Slot::enq` holds the number of events itself, not an offset to the group's count.
pub(super) const FROZEN: u64 = 1 << 63;

/// `Slot::acked` holds the handled count shifted left by this many bits...
pub(super) const ACKED_SHIFT: u32 = 2;
/// ...and this bit when a publisher waits for room...
pub(super) const SPACE: u64 = 1;
/// ...and this one when a flush waits for progress.
pub(super) const PROGRESS: u64 = 2;
const WAITING: u64 = SPACE | PROGRESS;

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
pub(super) struct WakeState {
    /// The live actor, if any (none while restarting or disabled).
    pub(super) actor: Option<Box<dyn Consumer>>,
    /// Where an idle reader should resume: the segment and position of the event that woke it.
    pub(super) resume: Option<(Arc<Segment>, u64)>,
}

impl Slot {
    pub(crate) fn new(
        group: Arc<Group>,
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
            group,
            enq: AtomicU64::new(FROZEN),
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
            space: Notify::new(),
            progress: Notify::new(),
            counters: Counters::default(),
            dead: Mutex::new(VecDeque::new()),
            dead_capacity,
            config: Mutex::new(config),
        }
    }

    pub(super) fn reader(&self) -> MutexGuard<'_, Reader> {
        // Every update is small and leaves the reader valid, so a poisoned lock is usable.
        self.reader.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn wake_state(&self) -> MutexGuard<'_, WakeState> {
        self.wake.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Events handled so far.
    pub(super) fn acked(&self) -> u64 {
        self.acked.load(Ordering::Acquire) >> ACKED_SHIFT
    }

    /// Events routed to this plugin and not dropped, so far.
    ///
    /// Exact under the bus lock. Without it, never less than the value as of the last `enq`
    /// store seen (routing stores it after reading the group's count, which only grows), nor
    /// than the events of the cells read so far (counted before their cells were written); a
    /// group's count that grew meanwhile for the other members of an unrouted slot makes it
    /// more, until `enq` is read again.
    pub(super) fn enqueued(&self) -> u64 {
        let enq = self.enq.load(Ordering::Acquire);
        if enq & FROZEN != 0 {
            enq & !FROZEN
        } else {
            self.group.count.load(Ordering::Acquire).wrapping_add(enq) & !FROZEN
        }
    }

    /// Events routed and not yet handled.
    pub(super) fn pending(&self) -> u64 {
        self.enqueued().saturating_sub(self.acked())
    }

    /// Scheduled (a wake-up on its way or draining) and holding its segment: a publish needs
    /// neither to wake it nor to leave it a hint.
    pub(super) fn settled(&self) -> bool {
        self.scheduled.load(Ordering::SeqCst) && !self.released.load(Ordering::SeqCst)
    }

    /// Clears `scheduled` and tells the publishers to look (before a fence, where there is
    /// one).
    pub(super) fn unschedule(&self) {
        self.scheduled.store(false, Ordering::SeqCst);
        self.group.raise();
    }

    /// Marks the reader as having let go of the log and tells the publishers to look.
    pub(super) fn mark_released(&self) {
        self.released.store(true, Ordering::SeqCst);
        self.group.raise();
    }

    /// Whether `wanted` more events fit in `headroom` times the capacity. An oversized batch
    /// fits an empty queue, so it cannot wait forever. When `register` is set and there is no
    /// room, marks a waiter.
    pub(super) fn has_room(&self, wanted: usize, register: bool, headroom: u64) -> bool {
        let wanted = wanted as u64;
        let cap = self.capacity as u64 * headroom;
        let fits = |pending: u64| pending == 0 || pending + wanted <= cap;
        // An upper bound of the queue, from a value of `acked` seen before: enough when it fits.
        let enqueued = self.enqueued();
        if enqueued.saturating_sub(self.acked_seen.load(Ordering::Relaxed)) + wanted <= cap {
            return true;
        }
        // Concurrent refreshes may store an older value: that only makes the bound looser.
        self.acked_seen.store(self.acked(), Ordering::Relaxed);
        if fits(self.pending()) {
            return true;
        }
        if !register {
            return false;
        }
        // Registering reads `acked` in the same step: either it already counts the consumer's
        // latest acknowledgement, or that acknowledgement comes later in `acked`'s order and
        // sees our flag. No wake-up is lost.
        let acked = self.acked.fetch_or(SPACE, Ordering::AcqRel) >> ACKED_SHIFT;
        fits(self.enqueued().saturating_sub(acked))
    }

    /// How many events fit without going past the capacity, from a fresh `acked` (also
    /// refreshing `acked_seen`); unbounded for a slot that drops instead of waiting. A lower
    /// bound of the room [`has_room`](Self::has_room) finds for as long as no event is
    /// enqueued here (publisher, under the bus lock).
    pub(super) fn free_room(&self) -> u64 {
        if self.policy != OverflowPolicy::Backpressure {
            return u64::MAX;
        }
        let acked = self.acked();
        self.acked_seen.store(acked, Ordering::Relaxed);
        let pending = self.enqueued().saturating_sub(acked);
        (self.capacity as u64).saturating_sub(pending)
    }

    pub(super) async fn wait_for_space(&self, wanted: usize) {
        let notified = self.space.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if self.has_room(wanted, true, 1) {
            return;
        }
        notified.await;
    }

    /// Whether `count` events at log position `pos` are dropped for this plugin, because it
    /// drops when full and its queue is; records them as dropped if so (publisher, under the
    /// bus lock, before the position becomes readable; the slot is its group's only member).
    pub(super) fn drops(&self, count: u64, pos: u64) -> bool {
        if self.policy != OverflowPolicy::DropNewest {
            return false;
        }
        let pending = self.pending();
        if pending == 0 || pending + count <= self.capacity as u64 {
            return false;
        }
        self.dropped.fetch_add(count, Ordering::Relaxed);
        self.skips
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push_back(pos);
        self.has_skips.store(true, Ordering::SeqCst);
        true
    }

    /// Wakes the actor if it was idle, telling it where to resume (publisher, after the event
    /// at `pos` became readable).
    #[inline]
    pub(super) fn wake_for(&self, tail: &Arc<Segment>, pos: u64) {
        // A reader that let go of the log finds it again only through a hint, so one is left
        // whenever it has let go, whether or not a wake-up is already on its way (a
        // configuration change wakes the actor without one). The earliest hint for an unread
        // event is kept: every event from it on is unread.
        //
        // A hint may be for an event the reader reads anyway: `released` may be an old value
        // (under weak memory nothing orders the reader's taking back a segment before our
        // read), or the reader took an earlier hint after we read it. One before the reader's
        // published position is stale: none is left for an event already read as far as we
        // can see, an older one is replaced here, and the reader drops one when it goes idle
        // (`drop_stale_hint`; it publishes its position before taking this lock) or is
        // disabled (`release`). Kept, it would pin its segment until the plugin's next event.
        if self.released.load(Ordering::SeqCst) {
            let mut w = self.wake_state();
            let read = self.read_pos.load(Ordering::Relaxed);
            if read <= pos && w.resume.as_ref().is_none_or(|(_, at)| *at < read) {
                w.resume = Some((Arc::clone(tail), pos));
                self.has_resume.store(true, Ordering::Relaxed);
            }
        }
        if self.scheduled.load(Ordering::SeqCst) || !self.claim() {
            return;
        }
        let w = self.wake_state();
        self.send_drain(&w);
    }

    /// Going idle without a segment at log position `pos`: drops a hint left for an event
    /// before `pos`, already read (a publisher that saw an old `released`), which would pin
    /// its segment until the plugin's next event. A hint at `pos` or later is for unread events.
    pub(super) fn drop_stale_hint(&self, pos: u64) {
        let mut w = self.wake_state();
        if w.resume.as_ref().is_some_and(|(_, at)| *at < pos) {
            w.resume = None;
            self.has_resume.store(false, Ordering::Relaxed);
        }
    }

    /// Sets `scheduled` if it was clear; whether this call did (and so owns the wake-up).
    ///
    /// A compare-exchange, not a swap: a failed claim writes nothing. A swap would write
    /// `true` over `true`, a write that no later clear by the consumer is ordered after, which
    /// loom (whose modification order is built from what each thread has seen) may then let a
    /// publisher read after that clear: a wake-up lost in the model that C11 rules out.
    pub(super) fn claim(&self) -> bool {
        self.scheduled
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    }

    /// Sends `Drain` to the attached actor; `scheduled` is already set and is cleared again
    /// when there is no actor to wake (the next one is woken in `attach`).
    pub(super) fn send_drain(&self, w: &WakeState) {
        match &w.actor {
            Some(actor) if actor.wake() => {}
            _ => self.unschedule(),
        }
    }

    pub(super) fn wake_any(&self) {
        if !self.claim() {
            return;
        }
        let w = self.wake_state();
        self.send_drain(&w);
    }

    /// Queues a configuration change, due once everything published before it was read.
    pub(crate) fn push_control(&self, position: u64, item: Item) {
        self.reader().control.push_back((position, item));
        self.wake_any();
    }

    /// Acknowledges `handled` events and wakes publishers waiting for room and flushes waiting
    /// for progress (nobody waits for an acknowledgement of nothing).
    pub(super) fn ack(&self, handled: usize) {
        if handled == 0 {
            return;
        }
        let before = self
            .acked
            .fetch_add((handled as u64) << ACKED_SHIFT, Ordering::AcqRel);
        if before & WAITING != 0 {
            let waiting = self.acked.fetch_and(!WAITING, Ordering::AcqRel) & WAITING;
            if waiting & SPACE != 0 {
                self.space.notify_waiters();
            }
            if waiting & PROGRESS != 0 {
                self.progress.notify_waiters();
            }
        }
    }

    /// Connects the slot to a (new) actor and wakes it: to take the work waiting, or, with
    /// nothing waiting, to go idle properly and let go of the segment (or the resume hint)
    /// that the failed or restarted instance held, which would otherwise pin the log from
    /// there on until the next event of its hooks.
    pub(crate) fn attach(&self, actor: Box<dyn Consumer>) {
        let mut w = self.wake_state();
        w.actor = Some(actor);
        self.unschedule();
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
        self.unschedule();
    }

    /// Routed at log position `pos` (the bus lock is held): its count goes on from the
    /// group's.
    ///
    /// The reader starts out released, holding no segment: the first event published to it
    /// leaves a hint where to start. Holding the tail instead would pin the log from here on
    /// for as long as no event of its hooks comes (a plugin waiting for failures in a run
    /// without any), since an idle reader is never woken to let go.
    pub(super) fn routed_at(&self, pos: u64) {
        let mut r = self.reader();
        r.seg = None;
        r.pos = pos;
        r.until = None;
        let enqueued = self.enqueued();
        let count = self.group.count.load(Ordering::Relaxed);
        self.enq
            .store(enqueued.wrapping_sub(count) & !FROZEN, Ordering::Release);
        self.mark_released();
        self.read_pos.store(pos, Ordering::Relaxed);
        self.drop_stale_hint(pos);
        self.routed.store(true, Ordering::SeqCst);
    }

    /// Unrouted at log position `pos` (the bus lock is held): its count stops.
    pub(super) fn unrouted_at(&self, pos: u64) {
        self.reader().until = Some(pos);
        self.enq.store(FROZEN | self.enqueued(), Ordering::Release);
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
        // Those put back after a failure too (a chunk that failed before reaching one): left
        // there, their callers would wait for an answer until the plugin is enabled again,
        // forever if it never is (found by a review: a console's PUT that never answered).
        if r.carry
            .iter()
            .any(|i| matches!(i, Item::Reconfigure { .. }))
        {
            let carry = std::mem::take(&mut r.carry);
            for item in carry {
                match item {
                    Item::Reconfigure { reply, .. } => {
                        let _ = reply.send(Err("the plugin was disabled".to_owned()));
                    }
                    other => r.carry.push_back(other),
                }
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
        // Everything unread is in the carry queue now, and routing again starts at the log's
        // end: any hint is stale, and kept it would pin its segment while the plugin is off.
        {
            let mut w = self.wake_state();
            w.resume = None;
            self.has_resume.store(false, Ordering::Relaxed);
        }
        r.seg = None;
        self.mark_released();
        drop(r);
        self.space.notify_waiters();
        self.progress.notify_waiters();
    }

    /// Resolves once `target` events have been handled, or the plugin is unrouted.
    pub(crate) async fn wait_handled(&self, target: u64) {
        let done = |acked: u64| acked >= target || !self.routed.load(Ordering::SeqCst);
        loop {
            let notified = self.progress.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if done(self.acked()) {
                return;
            }
            // Registering reads `acked` in the same step (see `has_room`).
            if done(self.acked.fetch_or(PROGRESS, Ordering::AcqRel) >> ACKED_SHIFT) {
                return;
            }
            notified.await;
        }
    }

    /// `(published, dropped, queued)`.
    pub(crate) fn queue_counts(&self) -> (u64, u64, u64) {
        let dropped = self.dropped.load(Ordering::SeqCst);
        let enqueued = self.enqueued();
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
