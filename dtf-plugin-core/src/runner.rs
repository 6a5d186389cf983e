//! The private actor that runs one plugin instance.
//!
//! The actor owns the plugin value and takes its events in chunks from its slot, which reads
//! them from the bus log through the plugin's cursor (see `bus/`). Every call into plugin
//! code goes through [`guarded`], which turns a panic, an `Err` or a hung future into a
//! [`HookFailure`]. A failure dead-letters the event in hand, puts the rest of the chunk back
//! in front of the slot's carry queue, and fails the actor, so that its supervisor (the
//! manager) sees `ActorFailed` and restarts a fresh instance that continues where this one
//! stopped.

use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::marker::PhantomData;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::bus::{Item, ReconfigureReply, Slot};
use crate::event::HookSet;
use crate::plugin::{Plugin, PluginConfig, PluginContext, PluginError, Reconfigured, Stopping};

/// Messages to a plugin actor. Events never travel as actor messages: they wait in the slot.
pub(crate) enum PluginMsg {
    /// The slot has work: drain a few chunks, then yield.
    Drain,
    /// Drain what is queued (until `deadline`), call `on_shutdown`, reply, stop.
    Shutdown {
        deadline: Instant,
        /// What `on_shutdown` is told ([`PluginContext::stopping`]).
        why: Stopping,
        reply: Option<RpcReplyPort<ShutdownOutcome>>,
    },
}

// ractor's `cluster` feature (linked by `dtf-cluster`) drops its blanket `Message` impl; the
// message never leaves the process, so the default (non-serializable) methods are right.
#[cfg(feature = "cluster")]
impl ractor::Message for PluginMsg {}

/// How a plugin's shutdown went.
#[derive(Debug, Clone, Default)]
pub(crate) struct ShutdownOutcome {
    pub(crate) error: Option<String>,
}

/// The reason the manager sees when an actor stopped to pick up a new configuration.
pub(crate) const RESTART_FOR_CONFIG: &str = "dtf:reconfigure";

/// Which hook failed; decides the restart policy's treatment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Start,
    Event,
    Reconfigure,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Start => "on_start",
            Self::Event => "on_event",
            Self::Reconfigure => "on_reconfigure",
        })
    }
}

/// How a call into plugin code failed. Only text: a plugin's error is rendered (and dropped)
/// where it is caught, under `catch_unwind`, so its `Display` or `Drop` can panic without
/// taking anything but that plugin down ([`render_error`]).
#[derive(Debug)]
pub(crate) enum HookFailure {
    Error(String),
    Panicked(String),
    TimedOut(Duration),
}

impl std::fmt::Display for HookFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Error(e) => write!(f, "returned an error: {e}"),
            Self::Panicked(msg) => write!(f, "panicked: {msg}"),
            Self::TimedOut(d) => write!(f, "did not finish within {d:?}"),
        }
    }
}

/// The error a plugin actor fails with; the manager downcasts it to learn the phase.
#[derive(Debug, thiserror::Error)]
#[error("plugin `{plugin}`: {phase} {failure}")]
pub(crate) struct RunnerFailure {
    pub(crate) plugin: String,
    pub(crate) phase: Phase,
    pub(crate) failure: HookFailure,
}

/// The text of a panic, and the payload dropped where a panic in its `Drop` is caught.
pub(crate) fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    let text = if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    };
    drop_caught(payload, "a panic payload");
    text
}

/// Drops a value that plugin code made (an error, a future, a payload, the plugin itself),
/// catching a panic in its `Drop`: plugin code is untrusted everywhere.
pub(crate) fn drop_caught<T>(value: T, what: &str) {
    if catch_unwind(AssertUnwindSafe(move || drop(value))).is_err() {
        tracing::warn!(what, "plugin code panicked while being dropped");
    }
}

/// A plugin's error as text, rendered and dropped under `catch_unwind`: a panic in its
/// `Display` or `Drop` must not escape into the runner or the manager (which would leave a
/// chunk unacknowledged and a flush waiting forever).
pub(crate) fn render_error(e: PluginError) -> String {
    let text = catch_unwind(AssertUnwindSafe(|| e.to_string())).unwrap_or_else(|payload| {
        let msg = panic_message(payload);
        format!("(its error panicked when displayed: {msg})")
    });
    drop_caught(e, "a plugin error");
    text
}

/// Polls a hook's future once, turning a panic or an `Err` into a [`HookFailure`].
#[inline]
fn poll_caught<T, F>(fut: Pin<&mut F>, cx: &mut Context<'_>) -> Poll<Result<T, HookFailure>>
where
    F: Future<Output = Result<T, PluginError>>,
{
    // After a panic no hook of this instance is called again (it is dropped and rebuilt from
    // its factory), so the framework never observes it half-updated: AssertUnwindSafe is
    // sound here. What the instance itself hands to the next one in its `Drop` (`Handover`)
    // is the plugin's choice, documented there.
    match catch_unwind(AssertUnwindSafe(|| fut.poll(cx))) {
        Ok(Poll::Ready(r)) => Poll::Ready(r.map_err(|e| HookFailure::Error(render_error(e)))),
        Ok(Poll::Pending) => Poll::Pending,
        Err(payload) => Poll::Ready(Err(HookFailure::Panicked(panic_message(payload)))),
    }
}

/// The rest of a hook that did not finish on its first poll, bounded by `timeout`.
async fn finish<T, F>(mut fut: Pin<&mut Option<F>>, timeout: Duration) -> Result<T, HookFailure>
where
    F: Future<Output = Result<T, PluginError>>,
{
    let poll = poll_fn(|cx| match fut.as_mut().as_pin_mut() {
        Some(f) => poll_caught(f, cx),
        None => Poll::Ready(Err(HookFailure::Panicked(
            "polled after it finished".to_owned(),
        ))),
    });
    match tokio::time::timeout(timeout, poll).await {
        Ok(r) => r,
        Err(_) => Err(HookFailure::TimedOut(timeout)),
    }
}

/// Drops a hook's future in place, catching a panic in its `Drop` (then the hook failed).
fn drop_future<T, F>(
    mut fut: Pin<&mut Option<F>>,
    result: Result<T, HookFailure>,
) -> Result<T, HookFailure> {
    match catch_unwind(AssertUnwindSafe(|| fut.set(None))) {
        Ok(()) => result,
        Err(payload) => Err(HookFailure::Panicked(format!(
            "its future panicked when dropped: {}",
            panic_message(payload)
        ))),
    }
}

/// Runs a plugin hook, catching panics (in the hook, its error and its future's `Drop`) and
/// bounding its time.
///
/// The future is polled once inline first: a handler that completes without waiting (the
/// common case) costs no timer at all. Only a handler that actually suspends gets a deadline.
///
/// `make` calls the hook; it is run under `catch_unwind` too, since a hook that is not an
/// `async fn` runs code before it returns its future. It returns `None` when there is no
/// plugin instance to call (see [`Runner`]'s `Drop`).
pub(crate) async fn guarded<T, F>(
    make: impl FnOnce() -> Option<F>,
    timeout: Duration,
) -> Result<T, HookFailure>
where
    F: Future<Output = Result<T, PluginError>>,
{
    let fut = catch_unwind(AssertUnwindSafe(make))
        .map_err(|payload| HookFailure::Panicked(panic_message(payload)))?;
    let mut fut = std::pin::pin!(fut);
    let first = match fut.as_mut().as_pin_mut() {
        Some(mut f) => poll_fn(|cx| Poll::Ready(poll_caught(f.as_mut(), cx))).await,
        None => Poll::Ready(Err(HookFailure::Panicked(GONE.to_owned()))),
    };
    let result = match first {
        Poll::Ready(r) => r,
        Poll::Pending => finish(fut.as_mut(), timeout).await,
    };
    drop_future(fut, result)
}

/// What [`poll_event`] found.
const PENDING: u8 = 0;
const HANDLED: u8 = 1;
const FAILED: u8 = 2;

/// Polls an `on_event` future once. Returns one byte ([`PENDING`], [`HANDLED`] or [`FAILED`],
/// with the failure in `failure`): what a caught closure returns travels through memory, and a
/// one-byte answer is read back as it was written, where a wide `Result` stalled the reader on
/// every event.
#[inline(always)]
fn poll_event<F>(fut: Pin<&mut F>, cx: &mut Context<'_>, failure: &mut Option<HookFailure>) -> u8
where
    F: Future<Output = Result<(), PluginError>>,
{
    let caught = catch_unwind(AssertUnwindSafe(|| match fut.poll(cx) {
        Poll::Ready(Ok(())) => HANDLED,
        Poll::Pending => PENDING,
        Poll::Ready(Err(e)) => {
            *failure = Some(HookFailure::Error(render_error(e)));
            FAILED
        }
    }));
    match caught {
        Ok(code) => code,
        Err(payload) => {
            *failure = Some(HookFailure::Panicked(panic_message(payload)));
            FAILED
        }
    }
}

/// [`guarded`] for `on_event`, written out in place: the handler's future is built where it is
/// polled instead of being moved into a wrapper future first, and its first poll answers in one
/// byte. On the hot path the move and a wide answer cost more than a no-op handler itself
/// (`benches/README.md`).
macro_rules! on_event_guarded {
    ($runner:ident, $ev:expr) => {{
        let mut failure = None;
        // Built under `catch_unwind` (a handler that is not an `async fn` runs code before it
        // returns its future), and kept in an `Option` so that it can be dropped in place
        // under `catch_unwind` too.
        // Built where it is polled: constructing it elsewhere and moving it here cost a copy
        // of the future per event.
        let (plugin, ctx) = (&mut $runner.plugin, &mut $runner.ctx);
        let mut fut = std::pin::pin!(None);
        let slot = fut.as_mut();
        let made = catch_unwind(AssertUnwindSafe(move || {
            // Moved out of the closure, so that the future may borrow them past its call.
            let (plugin, ctx, mut slot) = (plugin, ctx, slot);
            if let Some(p) = Option::as_mut(plugin) {
                slot.set(Some(p.on_event(ctx, $ev)));
            }
        }));
        let code = match made {
            Ok(()) => match fut.as_mut().as_pin_mut() {
                Some(mut f) => {
                    poll_fn(|cx| Poll::Ready(poll_event(f.as_mut(), cx, &mut failure))).await
                }
                None => FAILED,
            },
            Err(payload) => {
                failure = Some(HookFailure::Panicked(panic_message(payload)));
                FAILED
            }
        };
        let result = match code {
            HANDLED => Ok(()),
            // Boxed: only a handler that waits gets here, and its timer inline would make
            // every plugin actor's task larger. One allocation per such event (an external
            // plugin waits for its process's acknowledgement on every event: small next to
            // that round trip).
            PENDING => Box::pin(finish(fut.as_mut(), $runner.timeout)).await,
            _ => Err(failure.unwrap_or(HookFailure::Panicked(GONE.to_owned()))),
        };
        drop_future(fut, result)
    }};
}

/// The actor type; generic so plugin calls are static (no boxing per event).
pub(crate) struct PluginActor<P>(PhantomData<fn() -> P>);

impl<P> PluginActor<P> {
    pub(crate) fn new() -> Self {
        Self(PhantomData)
    }
}

/// What the actor starts with.
pub(crate) struct RunnerArgs<P> {
    pub(crate) plugin: P,
    pub(crate) ctx: PluginContext,
    pub(crate) slot: Arc<Slot>,
    pub(crate) handler_timeout: Duration,
    /// Told how `on_start` went (for `PluginManager::enable`, which returns its error).
    pub(crate) started: Option<Started>,
}

/// Where a runner reports how `on_start` went: `Err` with the failure's text.
pub(crate) type Started = tokio::sync::oneshot::Sender<Result<(), String>>;

/// What a hook call without a plugin instance fails with (it cannot happen: the instance is
/// only taken out by `Runner`'s `Drop`).
const GONE: &str = "the plugin instance is gone";

/// The actor's state.
pub(crate) struct Runner<P> {
    /// The instance; an `Option` only so that `Drop` can drop it under `catch_unwind`.
    plugin: Option<P>,
    ctx: PluginContext,
    slot: Arc<Slot>,
    timeout: Duration,
    /// The chunk in hand; swapped with the slot's queue so allocations are reused.
    chunk: VecDeque<Item>,
    /// Events of the previous chunk not yet acknowledged to the slot.
    unacked: usize,
    /// Told how `on_start` went, once.
    started: Option<Started>,
}

impl<P> Drop for Runner<P> {
    fn drop(&mut self) {
        // The plugin's own `Drop` is plugin code too: a panic in it is logged, not propagated
        // into the actor's task.
        if let Some(plugin) = self.plugin.take() {
            drop_caught(plugin, "a plugin instance");
        }
    }
}

/// A chunk's deliveries, counted as they happen. Settled when the chunk ends; if it never
/// ends — the actor killed at a shutdown deadline drops `run_chunk` mid-chunk — its `Drop`
/// counts and acknowledges what was handled, so the report's counters stay exact (what was
/// not handled stays queued).
struct Tally<'a> {
    slot: &'a Slot,
    delivered: usize,
    started: Instant,
    settled: bool,
}

impl Tally<'_> {
    /// Adds the deliveries and handler time to the slot's counters; returns the deliveries,
    /// which the caller acknowledges with its next chunk.
    fn settle(mut self) -> usize {
        self.settled = true;
        self.record();
        self.delivered
    }

    fn record(&self) {
        self.slot
            .counters
            .delivered
            .fetch_add(self.delivered as u64, Ordering::Relaxed);
        self.slot.add_handler_time(self.started.elapsed());
    }
}

impl Drop for Tally<'_> {
    fn drop(&mut self) {
        if !self.settled {
            self.record();
            self.slot
                .requeue_front(self.delivered, &mut VecDeque::new());
        }
    }
}

/// Chunks handled per `Drain` message before yielding to the mailbox.
const CHUNKS_PER_WAKE: usize = 8;

/// Scheduler turns an idle consumer spends re-checking its queue before it goes idle. Measured
/// in `cargo bench`: 2 beat both 0 and 8 (see `benches/README.md`).
const IDLE_YIELDS: usize = 2;

enum ChunkEnd {
    /// The chunk was handled.
    Done,
    /// The plugin asked to be restarted for a new configuration.
    RestartForConfig,
}

/// After the event `batch[j]` of cell `cell` of an events `item` failed, `seen` of the item's
/// events having been handed to the plugin (that one included): puts the events after it back
/// in front of `chunk`, in order — the rest of its batch, then, in a run, the cells after it.
fn put_back_after(
    item: Item,
    cell: usize,
    j: usize,
    seen: usize,
    hooks: HookSet,
    chunk: &mut VecDeque<Item>,
) {
    match item {
        Item::Events {
            batch,
            count,
            filtered,
            ..
        } => {
            let rest = count - seen;
            if rest > 0 {
                chunk.push_front(Item::Events {
                    batch,
                    start: j + 1,
                    count: rest,
                    filtered,
                });
            }
        }
        Item::Run {
            cells, to, count, ..
        } => {
            let in_cell = cells
                .get(cell)
                .map_or(0, |c| hooks.matching(&c.batch[j + 1..], c.mask));
            let in_run = count.saturating_sub(seen + in_cell);
            if in_run > 0 {
                chunk.push_front(Item::Run {
                    cells: Arc::clone(&cells),
                    from: cell + 1,
                    to,
                    count: in_run,
                });
            }
            if let (Some(c), true) = (cells.get(cell), in_cell > 0) {
                chunk.push_front(Item::Events {
                    batch: Arc::clone(&c.batch),
                    start: j + 1,
                    count: in_cell,
                    filtered: true,
                });
            }
        }
        // Not an events item, so none of it was handed to the plugin: it stays queued (not
        // reached, the runner hands configuration changes to `on_reconfigure` instead).
        reconfigure @ Item::Reconfigure { .. } => chunk.push_front(reconfigure),
    }
}

impl<P: Plugin> Runner<P> {
    fn fail(&self, phase: Phase, failure: HookFailure) -> ActorProcessingErr {
        Box::new(RunnerFailure {
            plugin: self.slot.name.to_string(),
            phase,
            failure,
        })
    }

    /// Hands a new configuration to `on_reconfigure` and answers the caller. `Ok(true)` when
    /// the plugin asked to be restarted for it; `Ok(false)` when it applied it, or refused it
    /// with an error of its own (answered; the old configuration stays); `Err` with a failure
    /// that fails the actor (a panic or a timeout).
    ///
    /// It takes the runner's fields apart, as `run_chunk` holds the slot borrowed.
    async fn reconfigure(
        (plugin, ctx, slot, timeout): (&mut Option<P>, &mut PluginContext, &Slot, Duration),
        config: Arc<PluginConfig>,
        reply: ReconfigureReply,
    ) -> Result<bool, HookFailure> {
        let old = Arc::clone(ctx.config_arc());
        ctx.set_config(Arc::clone(&config));
        let call = {
            let ctx = &mut *ctx;
            move || Option::as_mut(plugin).map(move |p| p.on_reconfigure(ctx))
        };
        match guarded(call, timeout).await {
            Ok(outcome) => {
                slot.set_config(config);
                let _ = reply.send(Ok(outcome));
                Ok(outcome == Reconfigured::Restart)
            }
            Err(HookFailure::Error(e)) => {
                ctx.set_config(old);
                let _ = reply.send(Err(e));
                Ok(false)
            }
            Err(f) => {
                ctx.set_config(old);
                let _ = reply.send(Err(f.to_string()));
                Err(f)
            }
        }
    }

    /// Handles `self.chunk` in order. On failure, puts the unhandled rest back in the slot.
    async fn run_chunk(&mut self) -> Result<ChunkEnd, ActorProcessingErr> {
        let mut tally = Tally {
            slot: &self.slot,
            delivered: 0,
            started: Instant::now(),
            settled: false,
        };
        let hooks = self.slot.hooks;
        let result = loop {
            let Some(item) = self.chunk.pop_front() else {
                break Ok(ChunkEnd::Done);
            };
            let item = match item {
                Item::Reconfigure { config, reply } => {
                    // Boxed: a reconfiguration is rare, and its hook's future inline would
                    // make every plugin actor's task larger (see `reconfigure`).
                    let fields = (&mut self.plugin, &mut self.ctx, &*self.slot, self.timeout);
                    match Box::pin(Self::reconfigure(fields, config, reply)).await {
                        Ok(true) => break Ok(ChunkEnd::RestartForConfig),
                        Ok(false) => {}
                        Err(f) => break Err(self.fail(Phase::Reconfigure, f)),
                    }
                    continue;
                }
                events => events,
            };
            // The one per-event loop, for both kinds of events item: each event is handed to
            // the plugin, counted, or on a failure (error, panic, timeout) dead-lettered.
            let mut seen = 0usize;
            let mut failed = None;
            'stretches: for stretch in item.stretches(hooks) {
                for (j, ev) in stretch.batch.iter().enumerate().skip(stretch.start) {
                    if stretch.filtered && !hooks.contains(ev.hook()) {
                        continue;
                    }
                    seen += 1;
                    match on_event_guarded!(self, ev) {
                        Ok(()) => tally.delivered += 1,
                        Err(f) => {
                            self.slot.dead_letter(ev, f.to_string());
                            failed = Some((stretch.cell, j, f));
                            break 'stretches;
                        }
                    }
                }
            }
            if let Some((cell, j, failure)) = failed {
                put_back_after(item, cell, j, seen, hooks, &mut self.chunk);
                // The poison event is handled (dead-lettered), so it is acknowledged.
                self.unacked += 1;
                break Err(self.fail(Phase::Event, failure));
            }
        };
        self.unacked += tally.settle();
        if !matches!(result, Ok(ChunkEnd::Done)) {
            // Whatever is left goes back in front of newer events for the next instance.
            self.slot.requeue_front(self.unacked, &mut self.chunk);
            self.unacked = 0;
        }
        result
    }

    /// Drains what is queued (until `deadline`), calls `on_shutdown` and replies. `Err` when
    /// the plugin failed while draining: it is in an unknown state, so it is not asked to shut
    /// down, only dropped, and the failure is the manager's to account (counted,
    /// `PluginFailed`, a replace's restart within the budget), as any other: the actor fails
    /// with it.
    async fn shut_down(
        &mut self,
        deadline: Instant,
        why: Stopping,
        reply: Option<RpcReplyPort<ShutdownOutcome>>,
    ) -> Result<(), ActorProcessingErr> {
        let mut outcome = ShutdownOutcome::default();
        let drained = self.drain(usize::MAX, Some(deadline)).await;
        self.slot.detach();
        if let Err(e) = drained {
            outcome.error = Some(e.to_string());
            if let Some(reply) = reply {
                let _ = reply.send(outcome);
            }
            return Err(e);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let budget = left.min(self.timeout).max(Duration::from_millis(1));
        self.ctx.set_stopping(why);
        let (plugin, ctx) = (&mut self.plugin, &mut self.ctx);
        let call = move || Option::as_mut(plugin).map(move |p| p.on_shutdown(ctx));
        if let Err(f) = guarded(call, budget).await {
            let msg = format!("on_shutdown {f}");
            tracing::warn!(plugin = %self.slot.name, error = %msg, "plugin shutdown failed");
            outcome.error = Some(msg);
        }
        if let Some(reply) = reply {
            let _ = reply.send(outcome);
        }
        Ok(())
    }

    /// Drains up to `max_chunks` chunks (or until the deadline). Returns whether work remains.
    async fn drain(
        &mut self,
        max_chunks: usize,
        deadline: Option<Instant>,
    ) -> Result<(bool, ChunkEnd), ActorProcessingErr> {
        for _ in 0..max_chunks {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                self.slot.requeue_front(self.unacked, &mut self.chunk);
                self.unacked = 0;
                return Ok((true, ChunkEnd::Done));
            }
            let handled = std::mem::take(&mut self.unacked);
            if !self.slot.take_chunk(handled, &mut self.chunk, false) {
                // Before going idle, give publishers a few scheduler turns: under a steady
                // stream this catches the next events without a wake-up message (an actor
                // message plus, often, a thread unpark), which costs far more than a yield.
                let mut found = false;
                for _ in 0..IDLE_YIELDS {
                    tokio::task::yield_now().await;
                    if self.slot.take_chunk(0, &mut self.chunk, false) {
                        found = true;
                        break;
                    }
                }
                if !found && !self.slot.take_chunk(0, &mut self.chunk, true) {
                    return Ok((false, ChunkEnd::Done));
                }
            }
            if let ChunkEnd::RestartForConfig = self.run_chunk().await? {
                return Ok((true, ChunkEnd::RestartForConfig));
            }
        }
        // Acknowledge the last chunk now rather than on the next wake-up: if the actor is
        // stopped in between, its events must not stay counted as queued.
        let handled = std::mem::take(&mut self.unacked);
        self.slot.requeue_front(handled, &mut self.chunk);
        Ok((true, ChunkEnd::Done))
    }
}

impl<P: Plugin> Actor for PluginActor<P> {
    type Msg = PluginMsg;
    type State = Runner<P>;
    type Arguments = RunnerArgs<P>;

    async fn pre_start(
        &self,
        _myself: ActorRef<PluginMsg>,
        args: RunnerArgs<P>,
    ) -> Result<Runner<P>, ActorProcessingErr> {
        Ok(Runner {
            plugin: Some(args.plugin),
            ctx: args.ctx,
            slot: args.slot,
            timeout: args.handler_timeout,
            started: args.started,
            chunk: VecDeque::new(),
            unacked: 0,
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<PluginMsg>,
        state: &mut Runner<P>,
    ) -> Result<(), ActorProcessingErr> {
        // `on_start` runs in the actor's own task, so a slow start never blocks the manager.
        let (plugin, ctx) = (&mut state.plugin, &mut state.ctx);
        let call = move || Option::as_mut(plugin).map(move |p| p.on_start(ctx));
        let outcome = guarded(call, state.timeout).await;
        let started = state.started.take();
        if let Err(f) = outcome {
            if let Some(started) = started {
                let _ = started.send(Err(format!("on_start {f}")));
            }
            return Err(state.fail(Phase::Start, f));
        }
        state.slot.attach(Box::new(myself));
        if let Some(started) = started {
            let _ = started.send(Ok(()));
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<PluginMsg>,
        msg: PluginMsg,
        state: &mut Runner<P>,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            PluginMsg::Drain => match state.drain(CHUNKS_PER_WAKE, None).await? {
                (_, ChunkEnd::RestartForConfig) => {
                    state.slot.detach();
                    myself.stop(Some(RESTART_FOR_CONFIG.to_owned()));
                }
                (true, ChunkEnd::Done) => {
                    // More work: yield to the mailbox (so stop signals get through), then go on.
                    if myself.send_message(PluginMsg::Drain).is_err() {
                        state.slot.detach();
                    }
                }
                (false, ChunkEnd::Done) => {}
            },
            PluginMsg::Shutdown {
                deadline,
                why,
                reply,
            } => {
                // Boxed: it runs once per instance, and inline its state (the reply, the
                // deadline, the `on_shutdown` hook's future) would be part of every plugin
                // actor's task.
                Box::pin(state.shut_down(deadline, why, reply)).await?;
                myself.stop(Some("dtf:shutdown".to_owned()));
            }
        }
        Ok(())
    }
}
