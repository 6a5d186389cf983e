//! Tests of the log: what a slow, stuck, disabled or idle reader keeps alive.

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

/// A manager running one [`Count`] plugin, and its count.
async fn counting_manager() -> (PluginManager, Arc<AtomicU64>) {
    let counted = Arc::new(AtomicU64::new(0));
    let c = Arc::clone(&counted);
    let manager = PluginManager::builder()
        .spec(PluginSpec::new(move || Count(Arc::clone(&c))))
        .spawn()
        .await
        .unwrap();
    (manager, counted)
}

/// A manager with one `Gated` plugin of queue capacity `capacity`, its gate closed: the gate's
/// sender, and the count of events it handled.
async fn gated_manager(capacity: usize) -> (PluginManager, watch::Sender<bool>, Arc<AtomicU64>) {
    let seen = Arc::new(AtomicU64::new(0));
    let s = Arc::clone(&seen);
    let (gate, rx) = watch::channel(false);
    let manager = PluginManager::builder()
        .spec(PluginSpec::new(move || Gated(rx.clone(), Arc::clone(&s))).queue_capacity(capacity))
        .spawn()
        .await
        .unwrap();
    (manager, gate, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn freed_segments_cells_are_reused() {
    let (manager, counted) = counting_manager().await;
    const N: u64 = 100 * SEGMENT as u64;
    for i in 0..N {
        manager
            .publish(EventKind::task_created(format!("t{i}"), "x"))
            .await
            .unwrap();
        if i % 64 == 0 {
            manager.flush().await;
        }
    }
    manager.flush().await;
    assert_eq!(counted.load(Ordering::SeqCst), N);
    // 100 segments went by; a reader that keeps up holds one or two at a time, so after the
    // first few every new segment takes the cells of one the reader let go of.
    let fresh = manager
        .bus()
        .inner()
        .lock()
        .spare
        .fresh
        .load(Ordering::SeqCst);
    assert!(fresh <= 4, "{fresh} cell arrays allocated for 100 segments");
    manager.shutdown(ShutdownReason::Completed).await;
}

/// Events published through `bus` that are still allocated (each holds its handle's source).
fn live_events(bus: &Bus) -> usize {
    Arc::strong_count(&bus.source) - 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handled_events_go_back_to_the_publisher_within_a_bound() {
    let (manager, counted) = counting_manager().await;
    let bus = manager.bus().with_source("test");
    const N: u64 = 100 * SEGMENT as u64;
    let mut kept_for_the_publisher = 0;
    for i in 0..N {
        bus.publish(EventKind::task_created(format!("t{i}"), "x"))
            .await
            .unwrap();
        if i % 64 == 0 {
            manager.flush().await;
            kept_for_the_publisher =
                kept_for_the_publisher.max(bus.inner().lock().spare.grave_events());
        }
    }
    manager.flush().await;
    assert_eq!(counted.load(Ordering::SeqCst), N);
    // Freed segments' events waited for the publisher to drop them; what is still allocated
    // is at most what the pool keeps (the cells in the publisher's hand included) and the
    // segments still in the log.
    assert!(kept_for_the_publisher > 0, "no handled event went back");
    let live = live_events(&bus);
    let bound = GRAVE_EVENTS + 3 * SEGMENT;
    assert!(
        live <= bound,
        "{live} of {N} events still allocated (bound {bound})"
    );
    // Each publish drops one cell's worth, even of an event no plugin takes (which writes no
    // cell, so no segment is freed by these): the pool runs dry.
    let mut publishes = 0;
    while bus.inner().lock().spare.grave_events() > 0 {
        assert!(
            publishes < 2 * GRAVE_EVENTS,
            "the publisher does not drop what it is given back"
        );
        bus.publish(EventKind::custom("untaken", serde_json::Value::Null))
            .await
            .unwrap();
        publishes += 1;
    }
    assert!(bus.inner().lock().grave.is_empty());
    manager.shutdown(ShutdownReason::Completed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_handled_events_kept_stay_within_the_bound_and_go_at_shutdown() {
    let (manager, gate, seen) = gated_manager(4 * GRAVE_EVENTS).await;
    let bus = manager.bus().with_source("test");
    // Twice what the pool keeps, held back by the gated reader, then let go of at once while
    // nothing is published: the pool fills up to its bound and the reader frees the rest.
    const N: u64 = 2 * GRAVE_EVENTS as u64;
    for i in 0..N {
        bus.publish(n(i)).await.unwrap();
    }
    gate.send(true).unwrap();
    manager.flush().await;
    assert_eq!(seen.load(Ordering::SeqCst), N);
    let kept = bus.inner().lock().spare.grave_events();
    assert!(
        (GRAVE_EVENTS / 2..=GRAVE_EVENTS).contains(&kept),
        "{kept} handled events kept"
    );
    let live = live_events(&bus);
    let bound = GRAVE_EVENTS + 3 * SEGMENT;
    assert!(
        live <= bound,
        "{live} of {N} events still allocated (bound {bound})"
    );
    // A shutdown with events kept drops them, and keeps none from segments freed after it.
    manager.shutdown(ShutdownReason::Completed).await;
    assert_eq!(bus.inner().lock().spare.grave_events(), 0);
    let live = live_events(&bus);
    assert!(
        live <= 2 * SEGMENT,
        "{live} events still allocated after the shutdown"
    );
}

/// `n` events for `Count`, for the tests of segments of batches.
fn batch_of(n: usize) -> impl Iterator<Item = EventKind> {
    (0..n).map(|i| EventKind::task_created(format!("t{i}"), "x"))
}

/// How long the tests of segments of batches wait for a flush: failing the test instead of
/// hanging it (a reader stuck at a cell that will never be written would never catch up).
const FLUSH_LIMIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segments_of_batches_end_after_many_events() {
    let (manager, counted) = counting_manager().await;
    let bus = manager.bus().with_source("test");
    // 100-event batches: a segment ends after 41 of its 128 cells (4,100 events).
    const BATCH: usize = 100;
    const CELLS: usize = SEGMENT_EVENTS.div_ceil(BATCH);
    const _: () = assert!(CELLS < SEGMENT && CELLS * BATCH <= GRAVE_EVENTS);
    // The first publish after those cells starts the next segment, and retires the first:
    // every reader has passed it (stepping over its last 87 cells, never written), so its
    // events wait for the publisher.
    for _ in 0..=CELLS {
        bus.publish_batch(batch_of(BATCH)).await.unwrap();
        manager.flush_timeout(FLUSH_LIMIT).await.unwrap();
    }
    assert_eq!(bus.inner().lock().tail.base, CELLS as u64);
    assert_eq!(bus.inner().lock().spare.grave_events(), CELLS * BATCH);
    // Each publish of a batch drops two cells no larger than it: the hand is empty after
    // half as many publishes as filled the segment (the events in hand count until then).
    for _ in 1..CELLS.div_ceil(2) {
        bus.publish_batch(batch_of(BATCH)).await.unwrap();
    }
    assert_eq!(bus.inner().lock().spare.grave_events(), CELLS * BATCH);
    bus.publish_batch(batch_of(BATCH)).await.unwrap();
    assert_eq!(bus.inner().lock().spare.grave_events(), 0);
    manager.flush_timeout(FLUSH_LIMIT).await.unwrap();
    let published = CELLS + 1 + CELLS.div_ceil(2);
    assert_eq!(counted.load(Ordering::SeqCst), (published * BATCH) as u64);
    // Only the second segment, the log's tail, is still allocated.
    let live = live_events(&bus);
    assert_eq!(live, (published - CELLS) * BATCH, "events still allocated");
    manager.shutdown(ShutdownReason::Completed).await;
}

/// More events in one batch than the pool keeps (and than a segment takes before it ends).
const LARGE: usize = GRAVE_EVENTS + 1;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segment_larger_than_the_pool_is_kept_for_the_publisher() {
    let (manager, counted) = counting_manager().await;
    let bus = manager.bus().with_source("test");
    // Each batch has a segment of its own; each publish retires the segment before it
    // (every reader has passed it), after dropping the one kept before.
    for _ in 0..3 {
        bus.publish_batch(batch_of(LARGE)).await.unwrap();
        manager.flush_timeout(FLUSH_LIMIT).await.unwrap();
    }
    assert_eq!(counted.load(Ordering::SeqCst), (3 * LARGE) as u64);
    assert_eq!(bus.inner().lock().spare.grave_events(), LARGE);
    // The one kept and the tail.
    assert_eq!(live_events(&bus), 2 * LARGE);
    manager.shutdown(ShutdownReason::Completed).await;
    assert_eq!(bus.inner().lock().spare.grave_events(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_segment_larger_than_the_pool_is_freed_where_it_is_let_go_of() {
    let (manager, gate, seen) = gated_manager(4 * LARGE).await;
    let bus = manager.bus().with_source("test");
    // Two such segments held back by the gated reader, then let go of one after the other
    // while nothing is published: the first is kept (nothing else is), the second is freed
    // by the reader, or the pool would hold two.
    for _ in 0..3 {
        bus.publish_batch((0..LARGE as u64).map(n)).await.unwrap();
    }
    gate.send(true).unwrap();
    manager.flush_timeout(FLUSH_LIMIT).await.unwrap();
    assert_eq!(seen.load(Ordering::SeqCst), (3 * LARGE) as u64);
    assert_eq!(bus.inner().lock().spare.grave_events(), LARGE);
    assert_eq!(live_events(&bus), 2 * LARGE);
    manager.shutdown(ShutdownReason::Completed).await;
    assert_eq!(bus.inner().lock().spare.grave_events(), 0);
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
    let live = manager.bus().inner().live_segments();
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

/// A plugin's slot for custom events (capacity 16), routed on `bus`, with no actor: the test
/// reads and acknowledges through it.
fn custom_slot(bus: &Bus) -> Arc<Slot> {
    custom_slot_of(bus, 16)
}

/// [`custom_slot`] with a queue of `capacity` events.
fn custom_slot_of(bus: &Bus, capacity: usize) -> Arc<Slot> {
    let hooks: crate::event::HookSet = Hook::Custom.into();
    let slot = Arc::new(Slot::new(
        bus.inner().group(hooks, OverflowPolicy::Backpressure),
        Arc::from("p"),
        hooks,
        capacity,
        OverflowPolicy::Backpressure,
        4,
        Arc::new(serde_json::Value::Null),
    ));
    bus.inner().route(&slot);
    slot
}

/// After the shutdown no publisher drops kept events any more, so a segment let go of later
/// (as by a chunk of a plugin killed at its deadline, dropped with its state) frees its
/// events where it is let go of instead of keeping them for a publisher.
#[tokio::test]
async fn a_segment_let_go_of_after_the_shutdown_frees_its_events_there() {
    let bus = Bus::new("test");
    let slot = custom_slot_of(&bus, 4 * SEGMENT);
    // A whole segment and one event of the next: the first segment's count of events is
    // known, so it could be kept.
    for i in 0..=SEGMENT as u64 {
        bus.try_publish(n(i)).unwrap();
    }
    // The plugin's chunk holds the first segment's cells, as a killed runner's state does.
    let mut chunk = VecDeque::new();
    assert!(slot.take_chunk(0, &mut chunk, false));
    assert!(chunk.iter().any(|i| matches!(i, Item::Run { .. })));
    // The shutdown: the reader lets go of the log, and the pool is closed.
    bus.inner().unroute_all();
    assert_eq!(live_events(&bus), SEGMENT + 1);
    drop(chunk);
    // Freed here: nothing kept, and only the tail's event is left.
    assert_eq!(bus.inner().lock().spare.grave_events(), 0);
    assert_eq!(live_events(&bus), 1);
}

/// The lag bound counts segments as well as positions: segments that batches end early have
/// few positions, down to one each, so 64k positions could be as many segments.
#[tokio::test]
async fn the_lag_bound_counts_segments_as_well_as_positions() {
    let bus = Bus::new("test");
    let slot = custom_slot(&bus);
    // The reader takes its first event (and so its segment, the log's first) and does not
    // come back for the second.
    bus.try_publish(n(1)).unwrap();
    let mut chunk = VecDeque::new();
    assert!(slot.take_chunk(0, &mut chunk, false));
    bus.try_publish(n(2)).unwrap();
    let read = slot.read_pos.load(Ordering::Relaxed);
    assert_eq!(read, 1);
    let end = bus.inner().position();
    // A publisher's check one position behind, the reader in the oldest segment the bound
    // allows (it starts at 0): nothing to do.
    slot.bound_lag(end, 0);
    assert!(slot.reader().carry.is_empty());
    assert!(slot.reader().seg.as_ref().is_some_and(|s| s.base == 0));
    // The oldest segment allowed starting past the reader (as after 513 segments of one
    // 4,096-event batch each), though it is only one position behind: its unread event is
    // copied out of the log, and its cursor is at the end.
    slot.bound_lag(end, read + 1);
    assert_eq!(slot.reader().carry.len(), 1);
    assert_eq!(slot.reader().pos, end);
    assert_eq!(slot.read_pos.load(Ordering::Relaxed), end);
}

/// A configuration change put back after a failure (the chunk failed on an event before it)
/// is answered when the plugin is disabled, like one still queued: its caller (a console's
/// PUT) waited until the plugin was enabled again, forever if it never was.
#[tokio::test]
async fn a_configuration_change_put_back_is_answered_when_the_plugin_is_disabled() {
    let bus = Bus::new("test");
    let slot = custom_slot(&bus);
    bus.try_publish(EventKind::custom("n", serde_json::json!(1)))
        .unwrap();
    let (reply, answer) = oneshot::channel();
    slot.push_control(
        bus.inner().position(),
        Item::Reconfigure {
            config: Arc::new(serde_json::json!({"x": 1})),
            reply,
        },
    );
    // The reader takes the event and the change; the handler fails on the event, and the
    // rest of the chunk (the event and the change) is put back.
    let mut chunk = VecDeque::new();
    assert!(slot.take_chunk(0, &mut chunk, false));
    assert!(chunk.iter().any(|i| matches!(i, Item::Reconfigure { .. })));
    slot.requeue_front(0, &mut chunk);
    // Disabled: unrouted and released, as the manager does.
    bus.inner().unroute(&slot);
    slot.release();
    let answer = tokio::time::timeout(std::time::Duration::from_secs(5), answer)
        .await
        .expect("the change was never answered");
    assert!(matches!(answer, Ok(Err(e)) if e.contains("disabled")));
}
