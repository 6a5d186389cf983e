//! The log: append-only segments of write-once cells, and the items a reader hands out.

use super::*;

/// Cells per log segment (4 in the shuttle model check and 2 in the loom one, so that their
/// few events cross segments).
pub(super) const SEGMENT: usize = if cfg!(dtf_loom) {
    2
} else if MODEL {
    4
} else {
    128
};

/// Events after which the publisher moves on to a new segment, though cells are left (readers
/// step over them, `Slot::read_log`). Events are freed only with their segment: a full segment
/// of 1,000-event batches held 128,000, freed in one go by whoever let go of it last, long
/// after they were read. Single events never reach this (a segment has 128 cells). 4,096
/// measured faster than 2,048 and 8,192 (`benches/README.md`, session 18). As many as cells in
/// the model checks, so that single events fill a segment and batches end it early.
pub(super) const SEGMENT_EVENTS: usize = if MODEL { SEGMENT } else { 4 * 1024 };

/// A piece of the append-only log: cells written once by publishers (under the bus lock) and
/// read without locks by every plugin's actor. Segments are freed once no reader holds them;
/// their events may stay a while longer, for the publisher to drop ([`Spare`]).
///
/// Its fields start 128 bytes into its `Arc` ([`ApartFromCounts`]), on cache lines apart from
/// the reference counts: those change whenever a reader takes or lets go of the segment (and a
/// wake-up's resume hint clones it), while the publisher reads `base` on every publish and
/// readers read it on every cell.
#[repr(C)]
pub(crate) struct Segment {
    _apart: ApartFromCounts,
    pub(super) base: u64,
    pub(super) cells: Arc<Cells>,
    pub(super) next: OnceLock<Arc<Segment>>,
}

/// The cells of one segment, in an allocation of their own: a chunk in a plugin's hands holds
/// these (one reference count per run of cells, not one per cell), which keeps this segment's
/// events alive but not the segments linked after it.
///
/// Each cell has a cache line pair of its own, so the publisher writing the next cell does not
/// take the line from readers that are reading the previous one. Its fields are kept apart
/// from its `Arc`'s counts like [`Segment`]'s, for the same reason: every chunk's run clones
/// this `Arc`, and the publisher and every reader load the cells' address from it on every
/// event.
#[repr(C)]
pub(crate) struct Cells {
    _apart: ApartFromCounts,
    /// The cells, each on its own pair of cache lines.
    pub(super) slots: Box<[CellSlot]>,
    /// Where the slots go, emptied, when the last holder lets go of them.
    spare: Arc<Spare>,
    /// The events published into these cells, stored by the publisher when it moves on to the
    /// next segment (`usize::MAX` until then: unknown).
    pub(super) events: std::sync::atomic::AtomicUsize,
}

/// Put first in a `#[repr(C)]` struct, keeps the fields after it 128 bytes from the start of
/// the struct's `Arc` allocation, where the two reference counts are (16 bytes; `ArcInner` is
/// `#[repr(C)]`): never on the same 128-byte pair of cache lines, whatever the allocation's
/// address. Aligning the struct to 128 bytes did the same, and also kept the next allocation
/// off the fields' last line, but glibc serves aligned allocations through `memalign`: with
/// the cell arrays pooled, the two headers' `memalign` still took 2 % of all CPU samples of
/// `dtf/single/8` on glibc. The same padding at the end as well, to keep the next allocation
/// away too, measured slower in an A/B (single/8 17.2–21.3 against 19.3–23.5 M/s, four
/// rounds), so it is not there (`benches/README.md`, session 11).
#[derive(Default)]
struct ApartFromCounts {
    _pad: [u64; 14],
}

// The fields start 128 bytes into the `Arc` allocation (16 bytes of counts, then the padding).
const _: () = assert!(16 + std::mem::size_of::<ApartFromCounts>() == 128);

/// One cell of a segment, on cache lines of its own.
pub(super) type CellSlot = Padded<OnceLock<Cell>>;

impl Cells {
    /// The cell at `index`, if it was written.
    #[inline]
    pub(crate) fn get(&self, index: usize) -> Option<&Cell> {
        switch();
        self.slots.get(index).and_then(|c| c.0.get())
    }
}

/// Most emptied cell arrays a bus keeps for its next segments: 1 MiB at most, as many as a
/// reader that lags a full default queue (8,192 single events) behind holds. One in the
/// shuttle model check, so that its scenarios reuse arrays (a cell left written in a reused
/// array would be read as a new event); none under loom, where the pool's lock-protected
/// hand-over would only add executions.
const SPARES: usize = if cfg!(dtf_shuttle) {
    1
} else if MODEL {
    0
} else {
    64
};

/// Most handled events a bus keeps for its publishers to drop ([`Spare`]): as many as a full
/// default queue (8,192). Readers let go of segments in bursts (a reader a full queue behind
/// frees up to 64 at once when it catches up), and a pool smaller than a burst runs dry: with
/// four segments' worth (512 events) the gain measured was gone (`benches/README.md`, session
/// 17). So a bus holds at most this many handled events beyond its queues (counting those in
/// the publisher's hand until it has dropped them all), until its publishers publish again
/// (each publish drops one cell's worth, a batch's publish up to two cells) or the manager
/// shuts down. A segment of more events than this (possible when a batch ends it,
/// [`SEGMENT_EVENTS`]) is kept only while nothing else is: at most one such segment, and
/// while it is kept every other freed segment, small ones too, is freed wherever it is let
/// go of. Freed by the reader that let go of it
/// last, it stalled that reader for milliseconds (`benches/README.md`, session 18).
pub(super) const GRAVE_EVENTS: usize = if cfg!(dtf_shuttle) {
    SEGMENT
} else if MODEL {
    0
} else {
    8 * 1024
};

/// What freed segments leave behind, kept by the bus for its publishers: the cell arrays,
/// emptied, for the next segments, and the cells' handled batches, which publishers drop one
/// cell per publish.
///
/// A segment's cells are one 16 KiB allocation aligned to 128 bytes. On glibc each fresh one
/// went through `memalign`, which also merged the allocator's bins of small free chunks every
/// time: `Segment::new` took 4.5 % of all CPU samples of the dispatch bench's `dtf/single/8`.
/// With the arrays pooled (and [`ApartFromCounts`]) single publish at 8 plugins on glibc rose
/// by about 6 % in an A/B (`benches/README.md`, session 11).
///
/// The batches go back to the publishing side for the same reason tokio's broadcast channel
/// drops an old value when its sender overwrites the slot: events are allocated by the
/// publisher's thread, and an allocator serves a thread's next allocations fastest from what
/// that thread freed (glibc's per-thread cache takes the chunks one for one: a publish frees
/// one handled event and the next allocates one of the same sizes). Freed by the readers, every
/// event crossed threads twice, and the publisher's allocations went to the shared arena
/// (`benches/README.md`, session 17). At most [`GRAVE_EVENTS`] wait here, or one segment of
/// more; beyond that they are freed where the segment is let go of, as before.
///
/// Whoever lets go of a segment last (a reader, or the publisher moving past it, after
/// releasing the bus lock) moves its cells' contents out (it owns the whole array then:
/// `&mut`, after the last `Arc<Cells>` is gone) and hands both back here; the publisher takes
/// them under the bus lock and drops the batches after releasing it. So this is a plain
/// hand-over through a lock, not a protocol of its own.
#[derive(Default)]
pub(crate) struct Spare {
    pool: std::sync::Mutex<Pool>,
    /// Whether `pool.graves` has any: read by the publisher on each publish while it has none
    /// in hand, without taking the lock.
    has_graves: std::sync::atomic::AtomicBool,
    /// Cell arrays allocated afresh, for the test that they are reused.
    #[cfg(test)]
    pub(super) fresh: std::sync::atomic::AtomicUsize,
    /// The bus's segments whose cells are alive (every segment holds this `Spare`), for the
    /// tests that a reader does not pin the log. Per bus, so tests can run side by side.
    #[cfg(test)]
    pub(super) live: std::sync::atomic::AtomicUsize,
}

/// What [`Spare`] keeps, under its lock.
#[derive(Default)]
struct Pool {
    arrays: Vec<Box<[CellSlot]>>,
    /// Set at shutdown ([`Spare::take_all_graves`]): no publisher will drop graves any more,
    /// so segments freed later (a killed plugin's chunk) free their events on the spot.
    closed: bool,
    /// The handled cells of freed segments, each with its number of events.
    graves: Vec<(Vec<Cell>, usize)>,
    /// The events in `graves`, and in the publisher's hand ([`Spare::take_grave`]) until it
    /// has dropped them all ([`Spare::emptied_hand`]): what [`GRAVE_EVENTS`] bounds.
    grave_events: usize,
    /// The events of the grave in the publisher's hand.
    in_hand: usize,
}

impl Spare {
    fn pool(&self) -> std::sync::MutexGuard<'_, Pool> {
        self.pool.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// An emptied array, if one is kept.
    fn take(&self) -> Option<Box<[CellSlot]>> {
        if SPARES == 0 {
            return None;
        }
        self.pool().arrays.pop()
    }

    /// Keeps `slots` (emptied) if there is room, and the handled cells `grave` (of `events`
    /// events) if they fit in [`GRAVE_EVENTS`] or nothing else is kept; returns them if not,
    /// for the caller to drop outside the lock. Called only when [`SPARES`] is not 0.
    fn give(&self, slots: Box<[CellSlot]>, grave: Vec<Cell>, events: usize) -> Vec<Cell> {
        let mut pool = self.pool();
        if pool.arrays.len() < SPARES {
            pool.arrays.push(slots);
        }
        if grave.is_empty() || pool.closed {
            return grave;
        }
        // A segment of more events than the bound (large batches) only while nothing else is
        // kept, so that the pool holds at most the larger of the bound and one segment.
        if pool.grave_events != 0 && pool.grave_events.saturating_add(events) > GRAVE_EVENTS {
            return grave;
        }
        pool.grave_events += events;
        // The model check's invariant for the pool (shuttle): what it holds stays within the
        // bound, or is the one segment it may hold beyond it.
        #[cfg(dtf_shuttle)]
        assert!(
            pool.grave_events <= GRAVE_EVENTS.max(events),
            "the pool holds more handled events than its bound"
        );
        pool.graves.push((grave, events));
        self.has_graves
            .store(true, std::sync::atomic::Ordering::Relaxed);
        Vec::new()
    }

    /// Handled cells for the publisher to drop, if any are kept (called with an empty hand).
    pub(super) fn take_grave(&self) -> Vec<Cell> {
        if !self.has_graves.load(std::sync::atomic::Ordering::Relaxed) {
            return Vec::new();
        }
        let mut pool = self.pool();
        let Some((grave, events)) = pool.graves.pop() else {
            return Vec::new();
        };
        pool.in_hand = events;
        if pool.graves.is_empty() {
            self.has_graves
                .store(false, std::sync::atomic::Ordering::Relaxed);
        }
        grave
    }

    /// The publisher has dropped every cell of the grave it took last.
    pub(super) fn emptied_hand(&self) {
        let mut pool = self.pool();
        pool.grave_events -= std::mem::take(&mut pool.in_hand);
    }

    /// Every kept grave, for dropping, and none kept from now on (after a shutdown: no
    /// publisher will drop them).
    pub(super) fn take_all_graves(&self) -> Vec<(Vec<Cell>, usize)> {
        let mut pool = self.pool();
        pool.closed = true;
        pool.grave_events = 0;
        pool.in_hand = 0;
        self.has_graves
            .store(false, std::sync::atomic::Ordering::Relaxed);
        std::mem::take(&mut pool.graves)
    }

    /// The handled events kept for the publisher, for the tests.
    #[cfg(all(test, not(any(dtf_shuttle, dtf_loom))))]
    pub(super) fn grave_events(&self) -> usize {
        self.pool().grave_events
    }
}

impl Drop for Cells {
    fn drop(&mut self) {
        #[cfg(test)]
        self.spare.live.fetch_sub(1, Ordering::SeqCst);
        let mut slots = std::mem::take(&mut self.slots);
        if slots.len() != SEGMENT || SPARES == 0 {
            return;
        }
        // Emptied here, by the thread that let go of the segment last; the batches go to the
        // publisher to drop, unless their number is unknown (the tail at the end) or the pool
        // is full.
        let events = *self.events.get_mut();
        let keep = events != usize::MAX;
        let mut grave = Vec::with_capacity(if keep { SEGMENT } else { 0 });
        for slot in slots.iter_mut() {
            let cell = std::mem::replace(&mut slot.0, OnceLock::new()).into_inner();
            if let (true, Some(cell)) = (keep, cell) {
                grave.push(cell);
            }
        }
        drop(self.spare.give(slots, grave, events));
    }
}

impl Segment {
    /// A segment starting at log position `base`, with emptied cells from `spare` if it has
    /// any.
    pub(super) fn new(base: u64, spare: &Arc<Spare>) -> Arc<Self> {
        #[cfg(test)]
        spare.live.fetch_add(1, Ordering::SeqCst);
        let slots = spare.take();
        // The model check's invariant for reused arrays (shuttle): every cell was emptied, or
        // a reader would take what it held for a new event.
        #[cfg(dtf_shuttle)]
        if let Some(slots) = &slots {
            assert!(
                slots.iter().all(|c| c.0.get().is_none()),
                "a reused cell array still holds a cell"
            );
        }
        let slots = slots.unwrap_or_else(|| {
            #[cfg(test)]
            spare.fresh.fetch_add(1, Ordering::SeqCst);
            (0..SEGMENT).map(|_| Padded(OnceLock::new())).collect()
        });
        Arc::new(Segment {
            _apart: ApartFromCounts::default(),
            base,
            cells: Arc::new(Cells {
                _apart: ApartFromCounts::default(),
                slots,
                spare: Arc::clone(spare),
                events: std::sync::atomic::AtomicUsize::new(usize::MAX),
            }),
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
    pub(super) fn copy_for(&self, hooks: HookSet) -> Item {
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
        reply: ReconfigureReply,
    },
}

/// Where a configuration change is answered: what the plugin did with it, or why it failed.
pub(crate) type ReconfigureReply = oneshot::Sender<Result<crate::plugin::Reconfigured, String>>;

impl Item {
    /// The same events, holding their batches rather than a segment (a run becomes one item per
    /// matching cell); other items are unchanged.
    pub(super) fn into_copies(self, hooks: HookSet) -> Vec<Item> {
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

impl Item {
    /// The item's events that a plugin with `hooks` is handed, as stretches in order: one for
    /// [`Item::Events`], one per cell whose mask meets `hooks` for [`Item::Run`], none for a
    /// configuration change. The runner's one per-event loop walks these (and the model check
    /// walks the same), so both kinds of item are handed to the plugin by the same code.
    #[inline]
    pub(crate) fn stretches(&self, hooks: HookSet) -> Stretches<'_> {
        match self {
            Item::Events {
                batch,
                start,
                filtered,
                ..
            } => Stretches::One(Some(Stretch {
                cell: 0,
                batch,
                start: *start,
                filtered: *filtered,
            })),
            Item::Run {
                cells, from, to, ..
            } => Stretches::Run {
                cells,
                next: *from,
                to: *to,
                hooks,
            },
            Item::Reconfigure { .. } => Stretches::One(None),
        }
    }
}

/// Consecutive events of one batch: `batch[start..]`, of which only those whose hook the
/// plugin has are its events when `filtered` (otherwise all are).
pub(crate) struct Stretch<'a> {
    /// The index of its cell in an [`Item::Run`] (0 for [`Item::Events`]).
    pub(crate) cell: usize,
    pub(crate) batch: &'a [Event],
    pub(crate) start: usize,
    pub(crate) filtered: bool,
}

/// The stretches of an item ([`Item::stretches`]).
pub(crate) enum Stretches<'a> {
    One(Option<Stretch<'a>>),
    Run {
        cells: &'a Cells,
        next: usize,
        to: usize,
        hooks: HookSet,
    },
}

impl<'a> Iterator for Stretches<'a> {
    type Item = Stretch<'a>;

    #[inline]
    fn next(&mut self) -> Option<Stretch<'a>> {
        match self {
            Self::One(one) => one.take(),
            Self::Run {
                cells,
                next,
                to,
                hooks,
            } => {
                while *next < *to {
                    let i = *next;
                    *next += 1;
                    // Every cell of a run was written before the run was read.
                    let Some(cell) = cells.get(i) else { continue };
                    if hooks.intersects(cell.mask) {
                        return Some(Stretch {
                            cell: i,
                            batch: &cell.batch,
                            start: 0,
                            filtered: !hooks.contains_all(cell.mask),
                        });
                    }
                }
                None
            }
        }
    }
}

/// Keeps a value on its own cache lines, so writes to it don't invalidate its neighbours.
#[repr(align(128))]
pub(super) struct Padded<T>(pub(super) T);

impl<T> std::ops::Deref for Padded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}
