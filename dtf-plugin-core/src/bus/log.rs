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

/// A piece of the append-only log: cells written once by publishers (under the bus lock) and
/// read without locks by every plugin's actor. Segments are freed once no reader holds them.
///
/// Aligned to 128 bytes so that, inside its `Arc`, its fields sit on cache lines apart from
/// the reference counts: those change whenever a reader takes or lets go of the segment (and a
/// wake-up's resume hint clones it), while the publisher reads `base` on every publish and
/// readers read it on every cell.
#[repr(align(128))]
pub(crate) struct Segment {
    pub(super) base: u64,
    pub(super) cells: Arc<Cells>,
    pub(super) next: OnceLock<Arc<Segment>>,
}

/// The cells of one segment, in an allocation of their own: a chunk in a plugin's hands holds
/// these (one reference count per run of cells, not one per cell), which keeps this segment's
/// events alive but not the segments linked after it.
///
/// Each cell has a cache line pair of its own, so the publisher writing the next cell does not
/// take the line from readers that are reading the previous one. Aligned like [`Segment`], for
/// the same reason: every chunk's run clones this `Arc`, and the publisher and every reader
/// load the cells' address from it on every event.
#[repr(align(128))]
pub(crate) struct Cells(pub(super) Box<[Padded<OnceLock<Cell>>]>);

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
pub(super) static LIVE_SEGMENTS: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(0);

#[cfg(test)]
impl Drop for Cells {
    fn drop(&mut self) {
        LIVE_SEGMENTS.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Segment {
    pub(super) fn new(base: u64) -> Arc<Self> {
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
        reply: oneshot::Sender<Result<crate::plugin::Reconfigured, String>>,
    },
}

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
