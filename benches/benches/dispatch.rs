//! Hook-dispatch throughput and latency of `dtf-plugin-core`, against baselines measured in the
//! same run: tokio `broadcast` fan-out, one tokio `mpsc` per consumer carrying `Arc<Event>`, and
//! raw ractor `cast` to one actor per consumer.
//!
//! Run with `cargo bench` from the workspace root (or `cargo bench -p dtf-benches`). After the
//! criterion groups it prints a summary: deliveries/s (events × subscribed plugins / s) per
//! case, the ratio of dtf to each baseline, the publisher's cost per extra subscriber, the cost
//! of an unsubscribed plugin, p99 publish-to-handler latency against raw mpsc, and the memory of
//! an idle plugin. Results are recorded in `benches/README.md`.
//!
//! What keeps the figures honest:
//! - Every case publishes the same realistic event (`TaskCompleted`: a boxed payload with two
//!   `String` ids, an outcome and a duration), and every consumer, dtf plugin or baseline
//!   receiver alike, reads its outcome and attempt number in its handler.
//! - Every consumer tallies what it handled; after each measured call the tallies are checked
//!   against the exact number of events published, so a lost, duplicated or wrong event fails
//!   the bench instead of speeding it up.
//! - The summary's medians are taken over criterion's measured samples only, not its warm-up.
//! - tokio `broadcast` is bimodal across processes at 8 receivers (a fast and a slow mode). Each
//!   broadcast case is first probed on several fresh channels; the summary prints the probes,
//!   flags a spread, and criterion measures the fastest channel, so dtf is compared with
//!   broadcast at its best.
//! - Memory per idle plugin is an RSS delta, and mimalloc asks for 2 MiB pages, which makes that
//!   delta move in steps of 2 KiB per plugin. It is also measured in a child process with 4 KiB
//!   pages, and both figures are printed (`memory_in_small_pages`).

#![expect(clippy::print_stdout, reason = "a benchmark reports to the terminal")]
#![expect(
    clippy::expect_used,
    reason = "a benchmark that cannot set up should stop loudly"
)]

/// The allocator matters as much as the dispatch design here: every case allocates and frees
/// its events on different threads, and glibc's malloc makes that the bottleneck of dtf and the
/// baselines alike. `--no-default-features` measures with the system allocator instead.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Which allocator this build measures with, for the summary.
const ALLOCATOR: &str = if cfg!(feature = "mimalloc") {
    "mimalloc"
} else {
    "system (glibc malloc)"
};

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use criterion::{BenchmarkId, Criterion, Throughput};
use dtf_plugin_core::prelude::*;
use dtf_plugin_core::{EventMeta, PluginManager};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::runtime::Runtime;
use tokio::sync::{broadcast, mpsc};

/// Events published per measured iteration.
const EVENTS: u64 = 10_000;
/// Events per `publish_batch` call in the batched case.
const BATCH: usize = 1_000;
const PLUGIN_COUNTS: [usize; 3] = [1, 8, 64];
/// Subscriber counts of the publisher-cost case.
const PUBLISHER_COUNTS: [usize; 5] = [1, 2, 4, 8, 16];
/// Criterion samples per case. Set here, after the command line is read, because the summary
/// takes the last `SAMPLES` calls of each case as its measured samples (the calls before them
/// are criterion's warm-up).
const SAMPLES: usize = 20;
/// Fresh broadcast channels probed per receiver count before the broadcast group.
const PROBES: usize = 5;

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// The event every case publishes: a finished task, as a reporter plugin receives it.
fn kind() -> EventKind {
    EventKind::task_completed(
        "suite/test-0042",
        "worker-07",
        TaskOutcome::Passed,
        Duration::from_millis(12),
    )
}

/// The baselines' equivalent of what `Bus::publish` builds: same kind, timestamp, and a
/// shared source name (cloned, not allocated, as the bus does).
fn event(seq: u64) -> Event {
    thread_local! {
        static SOURCE: Arc<str> = Arc::from("bench");
    }
    Event {
        meta: EventMeta {
            seq,
            time: SystemTime::now(),
            source: SOURCE.with(Arc::clone),
        },
        kind: kind(),
    }
}

/// What every consumer's handler does with an event: it reads the payload's outcome and
/// attempt number. Returns 1 for the benchmark's event (a passed first attempt), 0 for
/// anything else, so the tallies count exactly the benchmark's events.
#[inline]
fn touch(ev: &Event) -> u64 {
    match &ev.kind {
        EventKind::TaskCompleted(done) if done.outcome == TaskOutcome::Passed => {
            u64::from(done.attempt)
        }
        _ => 0,
    }
}

/// A consumer's count of handled events. Only its consumer writes it while events flow (a
/// plain load and store, not a locked add); the bench reads and resets it once every consumer
/// has caught up. Each on cache lines of its own: tallies allocated one after another would
/// otherwise share a line, and consumers on different cores would fight over it on every event
/// (for dtf and every baseline alike).
type Tally = Arc<PaddedU64>;

/// An `AtomicU64` alone on its cache lines.
#[derive(Default)]
#[repr(align(128))]
struct PaddedU64(AtomicU64);

impl std::ops::Deref for PaddedU64 {
    type Target = AtomicU64;
    fn deref(&self) -> &AtomicU64 {
        &self.0
    }
}

fn add(tally: &AtomicU64, n: u64) {
    tally.store(tally.load(Ordering::Relaxed) + n, Ordering::Relaxed);
}

/// Checks that every consumer handled exactly `expected` events since the last check, and
/// resets the tallies. Called after each measured call, outside the timed region.
fn verify(case: &str, tallies: &[Tally], expected: u64) {
    for (i, t) in tallies.iter().enumerate() {
        let got = t.swap(0, Ordering::AcqRel);
        assert_eq!(
            got, expected,
            "{case}: consumer {i} handled {got} events, expected {expected}"
        );
    }
}

/// A plugin that tallies the events it handles.
struct Counting {
    name: String,
    hooks: HookSet,
    tally: Tally,
}

impl Plugin for Counting {
    fn metadata(&self) -> PluginMetadata {
        PluginMetadata::new(self.name.clone()).hooks(self.hooks)
    }

    async fn on_event(
        &mut self,
        _ctx: &mut PluginContext,
        event: &Event,
    ) -> Result<(), PluginError> {
        add(&self.tally, touch(event));
        Ok(())
    }
}

fn counting(name: String, hooks: HookSet, tally: &Tally) -> PluginSpec {
    let tally = Arc::clone(tally);
    PluginSpec::new(move || Counting {
        name: name.clone(),
        hooks,
        tally: Arc::clone(&tally),
    })
}

fn tallies(n: usize) -> Vec<Tally> {
    (0..n).map(|_| Tally::default()).collect()
}

/// A manager with `subscribed` plugins on `TaskCompleted` and `unsubscribed` plugins on a hook
/// the bench never publishes, with the tallies of each. The subscribed plugins' queues hold
/// `capacity` events (`None`: the default, 8,192, like the mpsc baseline).
struct Setup {
    m: PluginManager,
    subscribed: Vec<Tally>,
    unsubscribed: Vec<Tally>,
}

impl Setup {
    fn verify(&self, case: &str, events: u64) {
        verify(case, &self.subscribed, events);
        verify(case, &self.unsubscribed, 0);
    }
}

async fn manager(subscribed: usize, unsubscribed: usize, capacity: Option<usize>) -> Arc<Setup> {
    let (sub, unsub) = (tallies(subscribed), tallies(unsubscribed));
    let mut b = PluginManager::builder();
    for (i, t) in sub.iter().enumerate() {
        let spec = counting(format!("sub{i}"), Hook::TaskCompleted.into(), t);
        b = b.spec(match capacity {
            Some(c) => spec.queue_capacity(c),
            None => spec,
        });
    }
    for (i, t) in unsub.iter().enumerate() {
        b = b.spec(counting(format!("unsub{i}"), Hook::TaskCreated.into(), t));
    }
    Arc::new(Setup {
        m: b.spawn().await.expect("manager"),
        subscribed: sub,
        unsubscribed: unsub,
    })
}

/// Runs a measured loop as a task on the runtime's workers, as an embedding coordinator
/// would, rather than on a third thread competing with the two workers for the two cores.
fn on_worker(rt: &Runtime, fut: impl Future<Output = Duration> + Send + 'static) -> Duration {
    rt.block_on(rt.spawn(fut)).expect("measured task")
}

/// Per case, the rate of each call criterion made (warm-up calls first, then `SAMPLES`
/// measured ones), and the process's CPU time and units over all its calls.
#[derive(Default)]
struct Rates(
    Mutex<BTreeMap<String, Vec<f64>>>,
    Mutex<BTreeMap<String, (u64, Duration)>>,
);

/// The CPU time (user and system) of this process's threads so far, from `/proc/self/stat`
/// (in clock ticks of 10 ms); `None` where that file does not exist.
fn process_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // After the command name, in parentheses: the state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let ticks: u64 = fields.next()?.parse::<u64>().ok()? + fields.next()?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

impl Rates {
    /// Adds `units` done with `cpu` of the process's CPU time (every thread: the publisher,
    /// the consumers, the runtime) to the case's total.
    fn record_cpu(&self, case: &str, units: u64, cpu: Option<Duration>) {
        if let Some(cpu) = cpu {
            let mut map = self.1.lock().expect("cpu");
            let e = map.entry(case.to_owned()).or_default();
            e.0 += units;
            e.1 += cpu;
        }
    }

    /// CPU nanoseconds per unit over all calls of the case (warm-up included).
    fn cpu_per_unit(&self, case: &str) -> f64 {
        match self.1.lock().expect("cpu").get(case) {
            Some(&(units, cpu)) if units > 0 => cpu.as_nanos() as f64 / units as f64,
            _ => f64::NAN,
        }
    }

    /// Records `units` (deliveries, or publishes) done in `elapsed`.
    fn record(&self, case: &str, units: u64, elapsed: Duration) {
        let rate = units as f64 / elapsed.as_secs_f64();
        self.0
            .lock()
            .expect("rates")
            .entry(case.to_owned())
            .or_default()
            .push(rate);
    }

    /// The median rate over the measured samples (the last `SAMPLES` calls; the calls before
    /// them were criterion's warm-up).
    fn median(&self, case: &str) -> f64 {
        self.quantile(case, 0.5)
    }

    /// The `q` quantile (0 to 1) of the rate over the measured samples.
    fn quantile(&self, case: &str, q: f64) -> f64 {
        let map = self.0.lock().expect("rates");
        let Some(v) = map.get(case) else {
            return f64::NAN;
        };
        let mut v = v[v.len().saturating_sub(SAMPLES)..].to_vec();
        v.sort_by(f64::total_cmp);
        v[((v.len() - 1) as f64 * q).round() as usize]
    }
}

/// Publishes `iters` rounds of `EVENTS` single events, waits for every plugin after each, and
/// returns the time taken. `publish_only` stops the clock when the last event of a round is
/// published (the flush is then not timed).
async fn dtf_single(s: &Setup, iters: u64, publish_only: bool) -> Duration {
    let mut timed = Duration::ZERO;
    for _ in 0..iters {
        let start = Instant::now();
        for _ in 0..EVENTS {
            s.m.publish(kind()).await.expect("publish");
        }
        if publish_only {
            timed += start.elapsed();
            s.m.flush().await;
        } else {
            s.m.flush().await;
            timed += start.elapsed();
        }
    }
    timed
}

fn bench_dtf(c: &mut Criterion, rt: &Runtime, rates: &Arc<Rates>) {
    let mut group = c.benchmark_group("dtf");
    for &k in &PLUGIN_COUNTS {
        let s = rt.block_on(manager(k, 0, None));
        group.throughput(Throughput::Elements(EVENTS * k as u64));
        let r = Arc::clone(rates);
        group.bench_with_input(BenchmarkId::new("single", k), &k, |b, &k| {
            b.iter_custom(|iters| {
                let (s, r) = (Arc::clone(&s), Arc::clone(&r));
                on_worker(rt, async move {
                    let cpu = process_cpu();
                    let el = dtf_single(&s, iters, false).await;
                    let cpu = process_cpu().zip(cpu).map(|(b, a)| b.saturating_sub(a));
                    r.record(&format!("single/{k}"), iters * EVENTS * k as u64, el);
                    r.record_cpu(&format!("single/{k}"), iters * EVENTS * k as u64, cpu);
                    s.verify("dtf single", iters * EVENTS);
                    el
                })
            });
        });
        let r = Arc::clone(rates);
        group.bench_with_input(BenchmarkId::new("batched", k), &k, |b, &k| {
            b.iter_custom(|iters| {
                let (s, r) = (Arc::clone(&s), Arc::clone(&r));
                on_worker(rt, async move {
                    let bus = s.m.bus();
                    let cpu = process_cpu();
                    let start = Instant::now();
                    for _ in 0..iters {
                        for _ in 0..(EVENTS as usize / BATCH) {
                            bus.publish_batch((0..BATCH).map(|_| kind()))
                                .await
                                .expect("batch");
                        }
                        s.m.flush().await;
                    }
                    let el = start.elapsed();
                    let cpu = process_cpu().zip(cpu).map(|(b, a)| b.saturating_sub(a));
                    r.record(&format!("batched/{k}"), iters * EVENTS * k as u64, el);
                    r.record_cpu(&format!("batched/{k}"), iters * EVENTS * k as u64, cpu);
                    s.verify("dtf batched", iters * EVENTS);
                    el
                })
            });
        });
        rt.block_on(s.m.shutdown(ShutdownReason::Completed));
    }
    // 8 subscribed plus 56 that are not subscribed to the event: the difference to the
    // plain 8-plugin case is the cost of unsubscribed plugins.
    let s = rt.block_on(manager(8, 56, None));
    group.throughput(Throughput::Elements(EVENTS * 8));
    let r = Arc::clone(rates);
    group.bench_function("single/8+56-unsubscribed", |b| {
        b.iter_custom(|iters| {
            let (s, r) = (Arc::clone(&s), Arc::clone(&r));
            on_worker(rt, async move {
                let el = dtf_single(&s, iters, false).await;
                r.record("single/8+56", iters * EVENTS * 8, el);
                s.verify("dtf single/8+56", iters * EVENTS);
                el
            })
        });
    });
    rt.block_on(s.m.shutdown(ShutdownReason::Completed));
    group.finish();
}

/// The publisher's own cost per single-event publish, by number of subscribers: only the
/// publishing loop is timed (the plugins handle the events on the other worker meanwhile);
/// the flush and the check after it are not. Queues hold two rounds, so the publisher never
/// waits for a plugin to make room: what is timed is publishing, not the readers' pace.
fn bench_publisher(c: &mut Criterion, rt: &Runtime, rates: &Arc<Rates>) {
    let mut group = c.benchmark_group("dtf-publisher");
    group.throughput(Throughput::Elements(EVENTS));
    for &k in &PUBLISHER_COUNTS {
        let s = rt.block_on(manager(k, 0, Some(2 * EVENTS as usize)));
        let r = Arc::clone(rates);
        group.bench_with_input(BenchmarkId::new("publish-only", k), &k, |b, &k| {
            b.iter_custom(|iters| {
                let (s, r) = (Arc::clone(&s), Arc::clone(&r));
                on_worker(rt, async move {
                    let el = dtf_single(&s, iters, true).await;
                    r.record(&format!("publisher/{k}"), iters * EVENTS, el);
                    s.verify("dtf publisher", iters * EVENTS);
                    el
                })
            });
        });
        rt.block_on(s.m.shutdown(ShutdownReason::Completed));
    }
    group.finish();
}

/// Consumers of a baseline report each completed round of `EVENTS` on this channel.
type Done = mpsc::UnboundedSender<()>;

/// A baseline consumer's handler: touch the event, tally it, report a finished round.
fn handle_baseline(ev: &Event, tally: &AtomicU64, done: &Done) {
    add(tally, touch(ev));
    if tally.load(Ordering::Relaxed) % EVENTS == 0 {
        let _ = done.send(());
    }
}

/// `k` broadcast receivers on a fresh channel, each a task tallying what it handles.
struct BroadcastSetup {
    tx: broadcast::Sender<Arc<Event>>,
    done_rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<()>>,
    tallies: Vec<Tally>,
}

impl BroadcastSetup {
    fn new(rt: &Runtime, k: usize) -> Arc<Self> {
        // Capacity above one round, so no receiver ever lags (broadcast would drop for it).
        let (tx, _) = broadcast::channel::<Arc<Event>>(2 * EVENTS as usize);
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let tallies = tallies(k);
        for t in &tallies {
            let mut rx = tx.subscribe();
            let (t, done) = (Arc::clone(t), done_tx.clone());
            rt.spawn(async move {
                loop {
                    match rx.recv().await {
                        Ok(ev) => handle_baseline(&ev, &t, &done),
                        Err(broadcast::error::RecvError::Lagged(l)) => {
                            // A lost event: the check after the round would hang waiting for
                            // this receiver, so stop the whole bench here instead.
                            println!("broadcast receiver lagged by {l} events: aborting");
                            std::process::abort();
                        }
                        Err(broadcast::error::RecvError::Closed) => break,
                    }
                }
            });
        }
        Arc::new(Self {
            tx,
            done_rx: tokio::sync::Mutex::new(done_rx),
            tallies,
        })
    }

    /// `iters` rounds of `EVENTS`, each until every receiver has handled it; checked after.
    async fn run(&self, iters: u64) -> Duration {
        let k = self.tallies.len();
        let mut done_rx = self.done_rx.lock().await;
        let start = Instant::now();
        for _ in 0..iters {
            for seq in 0..EVENTS {
                self.tx.send(Arc::new(event(seq))).expect("send");
            }
            for _ in 0..k {
                done_rx.recv().await.expect("done");
            }
        }
        let el = start.elapsed();
        verify("broadcast", &self.tallies, iters * EVENTS);
        el
    }
}

/// Broadcast deliveries/s of every probe, per receiver count, for the summary.
type Probes = BTreeMap<usize, Vec<f64>>;

fn bench_broadcast(c: &mut Criterion, rt: &Runtime, rates: &Arc<Rates>) -> Probes {
    let mut probes = Probes::new();
    let mut group = c.benchmark_group("baseline-broadcast");
    for &k in &PLUGIN_COUNTS {
        // Probe fresh channels (fresh receiver tasks, fresh allocations) and keep the fastest
        // for criterion: the baseline is measured in its fast mode, and a spread between the
        // probes shows the slow mode was seen in this process.
        let mut best: Option<(f64, Arc<BroadcastSetup>)> = None;
        // About 4 M deliveries per probe (0.2–0.8 s), at least 5 rounds, after 3 of warm-up.
        let rounds = (4_000_000 / (EVENTS * k as u64)).max(5);
        for _ in 0..PROBES {
            let s = BroadcastSetup::new(rt, k);
            let s2 = Arc::clone(&s);
            on_worker(rt, async move { s2.run(3).await });
            let s2 = Arc::clone(&s);
            let el = on_worker(rt, async move { s2.run(rounds).await });
            let rate = (rounds * EVENTS * k as u64) as f64 / el.as_secs_f64();
            probes.entry(k).or_default().push(rate);
            if best.as_ref().is_none_or(|(r, _)| rate > *r) {
                best = Some((rate, s));
            }
        }
        let (_, s) = best.expect("probes");
        group.throughput(Throughput::Elements(EVENTS * k as u64));
        let r = Arc::clone(rates);
        group.bench_with_input(BenchmarkId::from_parameter(k), &k, |b, &k| {
            b.iter_custom(|iters| {
                let (s, r) = (Arc::clone(&s), Arc::clone(&r));
                on_worker(rt, async move {
                    let cpu = process_cpu();
                    let el = s.run(iters).await;
                    let cpu = process_cpu().zip(cpu).map(|(b, a)| b.saturating_sub(a));
                    r.record(&format!("broadcast/{k}"), iters * EVENTS * k as u64, el);
                    r.record_cpu(&format!("broadcast/{k}"), iters * EVENTS * k as u64, cpu);
                    el
                })
            });
        });
    }
    group.finish();
    probes
}

fn bench_mpsc(c: &mut Criterion, rt: &Runtime, rates: &Arc<Rates>) {
    let mut group = c.benchmark_group("baseline-mpsc");
    for &k in &PLUGIN_COUNTS {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let done_rx = Arc::new(tokio::sync::Mutex::new(done_rx));
        let tallies = Arc::new(tallies(k));
        let mut txs = Vec::new();
        for t in tallies.iter() {
            // The same capacity as dtf's default per-plugin queue.
            let (tx, mut rx) = mpsc::channel::<Arc<Event>>(8192);
            txs.push(tx);
            let (t, done) = (Arc::clone(t), done_tx.clone());
            rt.spawn(async move {
                while let Some(ev) = rx.recv().await {
                    handle_baseline(&ev, &t, &done);
                }
            });
        }
        group.throughput(Throughput::Elements(EVENTS * k as u64));
        let r = Arc::clone(rates);
        group.bench_with_input(BenchmarkId::from_parameter(k), &k, |b, &k| {
            b.iter_custom(|iters| {
                let (txs, r, done_rx, tallies) = (
                    txs.clone(),
                    Arc::clone(&r),
                    Arc::clone(&done_rx),
                    Arc::clone(&tallies),
                );
                on_worker(rt, async move {
                    let mut done_rx = done_rx.lock().await;
                    let start = Instant::now();
                    for _ in 0..iters {
                        for seq in 0..EVENTS {
                            let ev = Arc::new(event(seq));
                            for tx in &txs {
                                tx.send(Arc::clone(&ev)).await.expect("send");
                            }
                        }
                        for _ in 0..k {
                            done_rx.recv().await.expect("done");
                        }
                    }
                    let el = start.elapsed();
                    r.record(&format!("mpsc/{k}"), iters * EVENTS * k as u64, el);
                    verify("mpsc", &tallies, iters * EVENTS);
                    el
                })
            });
        });
    }
    group.finish();
}

/// A ractor actor that tallies the events cast to it.
struct Counter;

/// The baseline's message: an event. ractor's `cluster` feature is on in this crate's
/// builds (it links `dtf-cluster` for the cluster bench), which drops ractor's blanket
/// `Message` impl; a message type then says itself that it is one (never sent remotely).
struct Cast(Arc<Event>);

impl ractor::Message for Cast {}

impl Actor for Counter {
    type Msg = Cast;
    type State = (Tally, Done);
    type Arguments = (Tally, Done);

    async fn pre_start(
        &self,
        _me: ActorRef<Cast>,
        args: (Tally, Done),
    ) -> Result<(Tally, Done), ActorProcessingErr> {
        Ok(args)
    }

    async fn handle(
        &self,
        _me: ActorRef<Cast>,
        Cast(ev): Cast,
        state: &mut (Tally, Done),
    ) -> Result<(), ActorProcessingErr> {
        handle_baseline(&ev, &state.0, &state.1);
        Ok(())
    }
}

fn bench_ractor(c: &mut Criterion, rt: &Runtime, rates: &Arc<Rates>) {
    let mut group = c.benchmark_group("baseline-ractor-cast");
    for &k in &PLUGIN_COUNTS {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let done_rx = Arc::new(tokio::sync::Mutex::new(done_rx));
        let tallies = Arc::new(tallies(k));
        let actors: Vec<ActorRef<Cast>> = rt.block_on(async {
            let mut v = Vec::new();
            for t in tallies.iter() {
                let (a, _) = Actor::spawn(None, Counter, (Arc::clone(t), done_tx.clone()))
                    .await
                    .expect("spawn");
                v.push(a);
            }
            v
        });
        group.throughput(Throughput::Elements(EVENTS * k as u64));
        let r = Arc::clone(rates);
        group.bench_with_input(BenchmarkId::from_parameter(k), &k, |b, &k| {
            b.iter_custom(|iters| {
                let (actors, r, done_rx, tallies) = (
                    actors.clone(),
                    Arc::clone(&r),
                    Arc::clone(&done_rx),
                    Arc::clone(&tallies),
                );
                on_worker(rt, async move {
                    let mut done_rx = done_rx.lock().await;
                    let start = Instant::now();
                    for _ in 0..iters {
                        for seq in 0..EVENTS {
                            let ev = Arc::new(event(seq));
                            for a in &actors {
                                a.cast(Cast(Arc::clone(&ev))).expect("cast");
                            }
                        }
                        for _ in 0..k {
                            done_rx.recv().await.expect("done");
                        }
                    }
                    let el = start.elapsed();
                    r.record(&format!("ractor/{k}"), iters * EVENTS * k as u64, el);
                    verify("ractor", &tallies, iters * EVENTS);
                    el
                })
            });
        });
        for a in actors {
            a.stop(None);
        }
    }
    group.finish();
}

/// p99 publish-to-handler latency at a moderate, paced load (one event about every 50 µs),
/// for dtf with 8 plugins and for 8 raw tokio mpsc consumers. Both sides touch the event and
/// every delivery is checked.
fn latency(rt: &Runtime) -> (Duration, Duration) {
    const N: usize = 10_000;
    const K: usize = 8;
    let pace = Duration::from_micros(50);

    // dtf: the publisher stores each event's publish instant under its sequence number; the
    // plugins look it up when they handle it.
    let base = Instant::now();
    let published: Arc<Vec<AtomicU64>> = Arc::new((0..N + 64).map(|_| AtomicU64::new(0)).collect());
    let samples: Arc<Mutex<Vec<u64>>> = Arc::default();
    struct Timed {
        name: String,
        base: Instant,
        published: Arc<Vec<AtomicU64>>,
        local: Vec<u64>,
        samples: Arc<Mutex<Vec<u64>>>,
    }
    impl Plugin for Timed {
        fn metadata(&self) -> PluginMetadata {
            PluginMetadata::new(self.name.clone()).hooks(Hook::TaskCompleted)
        }
        async fn on_event(
            &mut self,
            _ctx: &mut PluginContext,
            e: &Event,
        ) -> Result<(), PluginError> {
            let now = self.base.elapsed().as_nanos() as u64;
            std::hint::black_box(touch(e));
            // The warm-up event has no stamp and is not a sample.
            let stamp = self
                .published
                .get(e.meta.seq as usize)
                .map_or(0, |t| t.load(Ordering::Acquire));
            if stamp != 0 {
                self.local.push(now.saturating_sub(stamp));
            }
            Ok(())
        }
        async fn on_shutdown(&mut self, _ctx: &mut PluginContext) -> Result<(), PluginError> {
            self.samples
                .lock()
                .expect("samples")
                .append(&mut self.local);
            Ok(())
        }
    }
    let m = rt.block_on(async {
        let mut b = PluginManager::builder();
        for i in 0..K {
            let (published, samples) = (Arc::clone(&published), Arc::clone(&samples));
            b = b.spec(PluginSpec::new(move || Timed {
                name: format!("timed{i}"),
                base,
                published: Arc::clone(&published),
                local: Vec::with_capacity(N),
                samples: Arc::clone(&samples),
            }));
        }
        b.spawn().await.expect("manager")
    });
    let bus = m.bus();
    let p = Arc::clone(&published);
    std::thread::spawn(move || {
        // Only this thread publishes now, so the next sequence number is known in advance:
        // stamp it *before* publishing, so a handler can never run before its stamp exists.
        let first = bus.try_publish(kind()).expect("warm-up publish") + 1;
        for next in first..first + N as u64 {
            if let Some(slot) = p.get(next as usize) {
                slot.store(base.elapsed().as_nanos() as u64, Ordering::Release);
            }
            let seq = loop {
                match bus.try_publish(kind()) {
                    Ok(seq) => break seq,
                    Err(_) => std::thread::yield_now(),
                }
            };
            assert_eq!(seq, next, "another publisher interleaved");
            std::thread::sleep(pace);
        }
    })
    .join()
    .expect("publisher");
    rt.block_on(m.shutdown(ShutdownReason::Completed));
    let mut dtf_samples = samples.lock().expect("samples");
    assert_eq!(dtf_samples.len(), K * N, "dtf latency: lost deliveries");
    let dtf_p99 = p99(&mut dtf_samples);

    // Baseline: 8 mpsc consumers, the publish instant travels with the event.
    let samples: Arc<Mutex<Vec<u64>>> = Arc::default();
    let mut txs = Vec::new();
    let mut joins = Vec::new();
    for _ in 0..K {
        let (tx, mut rx) = mpsc::channel::<(Instant, Arc<Event>)>(8192);
        txs.push(tx);
        let s = Arc::clone(&samples);
        joins.push(rt.spawn(async move {
            let mut local = Vec::with_capacity(N);
            while let Some((t, ev)) = rx.recv().await {
                let latency = t.elapsed().as_nanos() as u64;
                std::hint::black_box(touch(&ev));
                local.push(latency);
            }
            s.lock().expect("samples").append(&mut local);
        }));
    }
    std::thread::spawn(move || {
        for seq in 0..N as u64 {
            let t = Instant::now();
            let ev = Arc::new(event(seq));
            for tx in &txs {
                tx.blocking_send((t, Arc::clone(&ev))).expect("send");
            }
            std::thread::sleep(pace);
        }
    })
    .join()
    .expect("publisher");
    rt.block_on(async {
        for j in joins {
            j.await.expect("consumer");
        }
    });
    let mut mpsc_samples = samples.lock().expect("samples");
    assert_eq!(mpsc_samples.len(), K * N, "mpsc latency: lost deliveries");
    let mpsc_p99 = p99(&mut mpsc_samples);
    (dtf_p99, mpsc_p99)
}

fn p99(v: &mut [u64]) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort_unstable();
    Duration::from_nanos(v[(v.len() * 99 / 100).min(v.len() - 1)])
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<u64>().ok())
        })
        .map_or(0, |pages| pages * 4096)
}

/// The number of idle plugins the memory is measured over: 1,000, or
/// `DTF_BENCH_MEMORY_PLUGINS`.
fn memory_plugins() -> usize {
    match std::env::var("DTF_BENCH_MEMORY_PLUGINS") {
        Err(_) => 1_000,
        Ok(v) => v
            .parse::<usize>()
            .ok()
            .filter(|&k| k > 0)
            .unwrap_or_else(|| {
                panic!("DTF_BENCH_MEMORY_PLUGINS must be a number of plugins above 0, not {v:?}")
            }),
    }
}

/// Resident memory per idle plugin, measured over [`memory_plugins`] plugins.
fn memory_per_plugin(rt: &Runtime) -> u64 {
    let k = memory_plugins();
    rt.block_on(async {
        let m = PluginManager::builder().spawn().await.expect("manager");
        let hook: HookSet = Hook::TaskCompleted.into();
        // Warm up allocator pools with a few plugins first, so they are not charged to the
        // measured ones.
        let warm = tallies(16);
        for (i, t) in warm.iter().enumerate() {
            m.add(counting(format!("warm{i}"), hook, t))
                .await
                .expect("add");
        }
        // The bench's own tallies are allocated before the first reading: not charged to dtf.
        let idle = tallies(k);
        let before = rss_bytes();
        for (i, t) in idle.iter().enumerate() {
            m.add(counting(format!("idle{i}"), hook, t))
                .await
                .expect("add");
        }
        // Every plugin has started and handled one event: it is idle, not just spawned.
        m.publish(kind()).await.expect("publish");
        m.flush().await;
        let after = rss_bytes();
        verify("memory", &idle, 1);
        m.shutdown(ShutdownReason::Completed).await;
        after.saturating_sub(before) / k as u64
    })
}

/// Set in the child process that measures memory with 4 KiB pages (see [`memory_in_small_pages`]).
const MEMORY_CHILD: &str = "DTF_BENCH_MEMORY_CHILD";
/// How that child reports its figure.
const MEMORY_LINE: &str = "dtf-bench memory per idle plugin, bytes: ";

/// [`memory_per_plugin`] again, in a child process (this binary) in which mimalloc does not
/// ask for transparent huge pages (`MIMALLOC_ALLOW_THP=0`; it is read when the allocator starts,
/// so it cannot be changed in this process).
///
/// mimalloc v3 asks the kernel for 2 MiB pages for its arenas (`madvise`), so its RSS grows in
/// steps of 2 MiB: over 1,000 plugins a step is 2 KiB per plugin, and the delta counts huge
/// pages that are only partly used (4-7 MiB of them in `benches/README.md`, session 19). With
/// 4 KiB pages the delta counts what the plugins touch. glibc's malloc does not ask for huge pages, so there both figures agree. `Err` with
/// what went wrong if the child could not run or measure.
fn memory_in_small_pages() -> Result<u64, String> {
    let exe = std::env::current_exe().map_err(|e| format!("find this binary: {e}"))?;
    let out = std::process::Command::new(exe)
        .env(MEMORY_CHILD, "1")
        .env("MIMALLOC_ALLOW_THP", "0")
        .output()
        .map_err(|e| format!("start the child process: {e}"))?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix(MEMORY_LINE))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
            format!(
                "the child process ({}) printed no figure; its stderr ends: {}",
                out.status,
                tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
            )
        })
}

/// The load average, recorded with each run (the machine is shared).
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg").map_or_else(
        |_| "unknown".to_owned(),
        |s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
    )
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn main() {
    let rt = runtime();
    if std::env::var_os(MEMORY_CHILD).is_some() {
        println!("{MEMORY_LINE}{}", memory_per_plugin(&rt));
        return;
    }
    let benching = std::env::args().any(|a| a == "--bench");
    if benching {
        println!(
            "allocator: {ALLOCATOR}; load average at start: {}",
            load_average()
        );
    }
    // Memory and latency first, in a fresh process: after the throughput runs the allocator
    // holds freed memory that new plugins would reuse, and the RSS delta would read near zero.
    // `DTF_BENCH_THROUGHPUT_ONLY=1` skips them (for profiling the throughput cases alone).
    let extras = std::env::var_os("DTF_BENCH_THROUGHPUT_ONLY").is_none();
    let mut mem = None;
    let mut latency_ratios = Vec::new();
    if extras && benching {
        let m = memory_per_plugin(&rt);
        println!(
            "memory per idle plugin ({} plugins, RSS delta): {:.1} KiB",
            memory_plugins(),
            m as f64 / 1024.0
        );
        let small = match memory_in_small_pages() {
            Ok(s) => {
                println!(
                    "memory per idle plugin with 4 KiB pages (a child process, MIMALLOC_ALLOW_THP=0): {:.1} KiB",
                    s as f64 / 1024.0
                );
                Some(s)
            }
            Err(why) => {
                println!("memory per idle plugin with 4 KiB pages: not measured: {why}");
                None
            }
        };
        mem = Some((m, small));
        // Three rounds: a p99 over 80,000 samples still moves with what else the machine does.
        for round in 1..=3 {
            let (dtf_p99, mpsc_p99) = latency(&rt);
            let ratio = dtf_p99.as_secs_f64() / mpsc_p99.as_secs_f64().max(1e-9);
            latency_ratios.push(ratio);
            println!(
                "p99 publish-to-handler latency (round {round}), 8 plugins, ~50 µs pacing: dtf {dtf_p99:?}, raw mpsc {mpsc_p99:?}, ratio {ratio:.2}x"
            );
        }
    }

    let rates = Arc::new(Rates::default());
    // Sample size after the command line: the summary relies on it (see `SAMPLES`).
    let mut c = Criterion::default()
        .configure_from_args()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(SAMPLES);
    bench_dtf(&mut c, &rt, &rates);
    bench_publisher(&mut c, &rt, &rates);
    let probes = bench_broadcast(&mut c, &rt, &rates);
    bench_mpsc(&mut c, &rt, &rates);
    bench_ractor(&mut c, &rt, &rates);
    c.final_summary();
    if !benching {
        return;
    }

    // `cargo bench -- <filter>` may skip cases; the summary covers what ran.
    let fmt = |r: f64| {
        if r.is_nan() {
            "-".to_owned()
        } else {
            format!("{:.2} M/s", r / 1e6)
        }
    };
    let ratio = |a: f64, b: f64| {
        if a.is_nan() || b.is_nan() {
            "-".to_owned()
        } else {
            format!("{:.2}x", a / b)
        }
    };
    println!(
        "\n== dtf hook dispatch: deliveries/s (median of criterion's measured samples), allocator: {ALLOCATOR}, load average now: {} ==",
        load_average()
    );
    println!(
        "{:<8} {:>14} {:>14} {:>14} {:>14} {:>14} {:>10} {:>10} {:>10} {:>10}",
        "plugins",
        "dtf single",
        "dtf batched",
        "broadcast",
        "mpsc",
        "ractor",
        "vs bcast",
        "batch/bc",
        "vs mpsc",
        "vs ractor"
    );
    for &k in &PLUGIN_COUNTS {
        let single = rates.median(&format!("single/{k}"));
        let batched = rates.median(&format!("batched/{k}"));
        let bc = rates.median(&format!("broadcast/{k}"));
        let mp = rates.median(&format!("mpsc/{k}"));
        let ra = rates.median(&format!("ractor/{k}"));
        println!(
            "{:<8} {:>14} {:>14} {:>14} {:>14} {:>14} {:>10} {:>10} {:>10} {:>10}",
            k,
            fmt(single),
            fmt(batched),
            fmt(bc),
            fmt(mp),
            fmt(ra),
            ratio(single, bc),
            ratio(batched, bc),
            ratio(single, mp),
            ratio(single, ra)
        );
    }
    // Less sensitive to where the runtime placed the tasks than the rates: what the work cost.
    println!("CPU time per delivery, all calls of each case (warm-up included), every thread:");
    for &k in &PLUGIN_COUNTS {
        let cpu = |case: &str| {
            let ns = rates.cpu_per_unit(&format!("{case}/{k}"));
            if ns.is_nan() {
                "-".to_owned()
            } else {
                format!("{ns:.1} ns")
            }
        };
        if ["single", "batched", "broadcast"]
            .iter()
            .any(|c| !rates.cpu_per_unit(&format!("{c}/{k}")).is_nan())
        {
            println!(
                "  {k} plugins: dtf single {}, dtf batched {}, broadcast {}",
                cpu("single"),
                cpu("batched"),
                cpu("broadcast")
            );
        }
    }

    for (k, p) in &probes {
        let (lo, hi) = p.iter().fold((f64::INFINITY, 0.0_f64), |(lo, hi), &r| {
            (lo.min(r), hi.max(r))
        });
        let list: Vec<String> = p.iter().map(|r| format!("{:.2}", r / 1e6)).collect();
        let case = format!("broadcast/{k}");
        let (measured, low, high) = (
            rates.median(&case),
            rates.quantile(&case, 0.0),
            rates.quantile(&case, 1.0),
        );
        println!(
            "broadcast/{k} probes on fresh channels (M/s): {}; spread {:.2}x{}; measured on the fastest: median {} (samples {} to {}){}",
            list.join(", "),
            hi / lo,
            if hi / lo > 1.25 {
                " (SLOW MODE SEEN in this process)"
            } else {
                ""
            },
            fmt(measured),
            fmt(low),
            fmt(high),
            if measured < 0.8 * hi {
                " (BELOW the best probe by over 20 %: broadcast fell into its slow mode, rerun)"
            } else {
                ""
            }
        );
        // The fast mode: the upper quartile of criterion's samples, or the best probe if
        // higher. The ratio against it is the one that cannot flatter dtf.
        let fast = rates.quantile(&case, 0.75).max(hi);
        let single = rates.median(&format!("single/{k}"));
        println!(
            "  dtf single/{k} {} vs broadcast median {}, vs broadcast fast mode ({}) {}",
            fmt(single),
            ratio(single, measured),
            fmt(fast),
            ratio(single, fast)
        );
    }

    let publisher: Vec<(f64, f64)> = PUBLISHER_COUNTS
        .iter()
        .map(|&k| (k as f64, 1e9 / rates.median(&format!("publisher/{k}"))))
        .filter(|(_, ns)| ns.is_finite())
        .collect();
    if publisher.len() >= 2 {
        let list: Vec<String> = publisher
            .iter()
            .map(|(k, ns)| format!("{k}: {ns:.1} ns"))
            .collect();
        // Least-squares slope of publisher time against the number of subscribers.
        let n = publisher.len() as f64;
        let (sx, sy) = publisher
            .iter()
            .fold((0.0, 0.0), |(sx, sy), (x, y)| (sx + x, sy + y));
        let (mx, my) = (sx / n, sy / n);
        let (num, den) = publisher.iter().fold((0.0, 0.0), |(num, den), (x, y)| {
            (num + (x - mx) * (y - my), den + (x - mx) * (x - mx))
        });
        println!(
            "publisher time per single-event publish, by subscribers: {}; slope {:.1} ns per extra subscriber",
            list.join(", "),
            num / den
        );
    }

    let plain = rates.median("single/8");
    let with_unsub = rates.median("single/8+56");
    if !plain.is_nan() && !with_unsub.is_nan() {
        // Per event: 8 deliveries. Extra time per event, spread over the 56 idle plugins.
        let per_event = |rate: f64| 8.0 / rate * 1e9;
        let extra = (per_event(with_unsub) - per_event(plain)) / 56.0;
        println!(
            "unsubscribed plugin cost: {extra:.2} ns per event per plugin (8 subscribed + 56 unsubscribed vs 8)"
        );
    }
    if !latency_ratios.is_empty() {
        println!(
            "p99 latency vs raw mpsc: median of {} rounds {:.2}x",
            latency_ratios.len(),
            median(&latency_ratios)
        );
    }
    if let Some((m, small)) = mem {
        let small = small.map_or_else(|| "-".to_owned(), |s| format!("{:.1}", s as f64 / 1024.0));
        println!(
            "memory per idle plugin ({} plugins): {:.1} KiB ({small} KiB with 4 KiB pages)",
            memory_plugins(),
            m as f64 / 1024.0
        );
    }
}
