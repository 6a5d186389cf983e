//! How a slot's reader takes its chunks: carried items first, then due configuration changes
//! and runs of cells read in place from the log; going idle (and letting go of the log) without
//! losing a wake-up; putting back the rest of a failed chunk; and keeping a lagging reader from
//! pinning the log.

use super::*;

#[derive(Default)]
pub(super) struct Reader {
    /// The segment holding `pos`, while the reader has unread events (released when idle, so
    /// an idle plugin pins no memory).
    pub(super) seg: Option<Arc<Segment>>,
    /// The next log position to read.
    pub(super) pos: u64,
    /// The log position at which the plugin was unrouted, if it is.
    pub(super) until: Option<u64>,
    /// Items to hand out before reading the log: the rest of a failed chunk, or events kept
    /// from the log when the plugin was disabled.
    pub(super) carry: VecDeque<Item>,
    /// Configuration changes, each due once the log has been read up to its position.
    pub(super) control: VecDeque<(u64, Item)>,
}

impl Reader {
    /// Events in the carry queue.
    pub(super) fn carry_events(&self) -> u64 {
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
pub(super) enum Read {
    /// Runs of cells read in place ([`Item::Run`]): the consumer's normal path.
    InPlace,
    /// The matching batches, one reference each ([`Item::Events`]): for events kept out of the
    /// log (a disabled or far-behind plugin), which must not keep whole segments alive.
    Copy,
}

/// How far (in log positions) a reader with pending events may lag behind the log's end
/// before its unread events are copied out of the log (see `Slot::bound_lag`).
pub(super) const MAX_LAG: u64 = if MODEL { 4 } else { 64 * 1024 };

/// The same in segments: as many as [`MAX_LAG`] positions of full segments. Segments that
/// batches end early (`SEGMENT_EVENTS`) have fewer positions, down to one each; without
/// this, a stuck reader could pin a segment (16 KiB of cells) per position.
pub(super) const MAX_LAG_SEGMENTS: u64 = MAX_LAG / SEGMENT as u64;

/// Most events one chunk takes from the log.
pub(super) const CHUNK_EVENTS: usize = if MODEL { 3 } else { 4096 };

/// Most runs of cells (so segments) one chunk holds.
pub(super) const MAX_RUNS: usize = if MODEL { 2 } else { 16 };

impl Slot {
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
            self.unschedule();
            // Publishers count, fence, then check the group's `attention` and `scheduled`; we
            // clear `scheduled`, raise `attention`, fence, then check the count: whichever
            // fence comes second sees the other side's writes, so an event published meanwhile
            // is not left unread.
            fence(Ordering::SeqCst);
            let more = self.pending() > 0 || !self.reader().control.is_empty();
            if more && self.claim() {
                retries += 1;
                if retries < 16 {
                    continue;
                }
                return true;
            }
            if !more {
                let mut r = self.reader();
                if r.carry.is_empty() && r.seg.is_some() {
                    // We mark the release (raising `attention`), fence, then check the count;
                    // publishers count, fence, then check `attention` and the mark: one of us
                    // sees the other, so either we keep the segment or the publisher leaves a
                    // hint.
                    self.mark_released();
                    fence(Ordering::SeqCst);
                    if self.pending() == 0 {
                        r.seg = None;
                        self.drop_stale_hint(r.pos);
                    } else {
                        self.released.store(false, Ordering::SeqCst);
                    }
                }
            }
            return false;
        }
    }

    /// Moves the next chunk into `into`; whether there was any.
    pub(super) fn fill(&self, into: &mut VecDeque<Item>) -> bool {
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
    pub(super) fn read_log(
        &self,
        r: &mut Reader,
        into: &mut VecDeque<Item>,
        max_events: usize,
        how: Read,
    ) {
        // Without a segment the hint is the only way back into the log: look for it under its
        // lock (the flag may not show it yet). With one, a hint is stale: take it even so, or
        // it would keep its segment, and every segment after it, alive.
        if r.seg.is_none() || self.has_resume.load(Ordering::Relaxed) {
            let resume = {
                let mut w = self.wake_state();
                self.has_resume.store(false, Ordering::Relaxed);
                w.resume.take()
            };
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
            let cell = match seg.cells.get(index) {
                Some(cell) => cell,
                // Past the segment's last cell, or at a cell not written. If the publisher has
                // not moved on to the next segment, nothing was published here yet: the end of
                // the log for now. If it has, every cell of this segment is written and seen
                // (the next segment is linked after them, and before any of its own cells is
                // written or counted); so if the cell is still not there, the cursor is past
                // this segment's end: a publisher leaves a segment's last cells unwritten after
                // many events (`SEGMENT_EVENTS`). The cell is looked at again, because it may
                // have been written, and the segment left, between the two loads (the shuttle
                // model check found a reader that skipped it). The cursor may be more than one
                // segment ahead, after a jump: each segment is stepped over in turn.
                None => {
                    switch();
                    let Some(next) = seg.next.get() else { break };
                    match seg.cells.get(index) {
                        Some(cell) => cell,
                        None => {
                            debug_assert!(next.base <= r.pos, "a written cell skipped");
                            r.seg = Some(Arc::clone(next));
                            open = false;
                            continue;
                        }
                    }
                }
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

    /// Keeps a reader that lags far behind the log's end (more than [`MAX_LAG`] positions, or
    /// before `oldest`, where the segment [`MAX_LAG_SEGMENTS`] before the tail starts) from
    /// pinning the log: its unread events are copied into its carry queue (a bounded amount:
    /// at most its queue) and its cursor jumps to the end. Called by publishers, under the bus
    /// lock, once per segment.
    pub(super) fn bound_lag(&self, end: u64, oldest: u64) {
        let read = self.read_pos.load(Ordering::Relaxed);
        let behind = end.saturating_sub(read) > MAX_LAG || read < oldest;
        if !behind || self.pending() == 0 {
            return;
        }
        let mut r = self.reader();
        let mut kept = VecDeque::new();
        self.read_log(&mut r, &mut kept, usize::MAX, Read::Copy);
        r.carry.append(&mut kept);
    }

    /// Whether `pos` was dropped for this plugin (then forgets it).
    pub(super) fn skip(&self, pos: u64) -> bool {
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
}
