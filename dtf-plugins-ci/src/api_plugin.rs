//! [`CiApiReporter`]: drives the service clients of [`crate::api`] from bus events.

use std::time::Duration;

use dtf_plugin_core::Handover;
use dtf_plugin_core::prelude::*;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::api::http::HttpCore;
use crate::api::{ApiConfig, ApiStats, Client, build_clients};
use crate::detect::{CiInfo, Env, detect, process_env};
use crate::run::RunRecorder;

/// Reports the run to CI services' HTTP APIs while it goes on: creates a check run or
/// pending status at coordinator startup, updates progress at most once per
/// [`ApiConfig::update_interval_ms`] (coalescing whatever changed meanwhile), and sends the
/// final report and verdict at coordinator shutdown.
///
/// The HTTP work happens on a background task that owns the clients and the run record; the
/// plugin's handler only forwards events to it, so a slow service never slows the bus. At
/// `CoordinatorShutdown` (or `on_shutdown`) the handler waits for the final report, bounded
/// by [`ApiConfig::final_timeout_ms`].
///
/// Failures of the services never fail the plugin: each is retried per
/// [`crate::retry`], then logged and counted in [`ApiStats`] ([`CiApiReporter::stats`]).
/// Only a configuration problem fails `on_start`, with a message naming the setting or
/// environment variable to fix — a missing token among them.
///
/// Identifiers (commit, pull request, build URL) come from [`detect`] over the environment
/// given to [`CiApiReporter::with_env`] (the process environment for [`CiApiReporter::new`]).
///
/// Built by [`CiApiReporter::spec`] (as the registry does) or given a [`Handover`] with
/// [`CiApiReporter::with_handover`], an instance that is restarted (after a failure, or with
/// [`PluginManager::restart`](dtf_plugin_core::PluginManager::restart)) hands its background
/// task over to the next instance: the run goes on in the same check run, status and test
/// run, with the whole record, and the final report lists every task. Only new settings
/// (a reconfiguration, which restarts it) start a new background task, with new clients and
/// a new check run; the old one gets no verdict. A reporter built by hand without a
/// hand-over starts anew after any restart.
pub struct CiApiReporter {
    env: Env,
    info: Option<CiInfo>,
    stats: ApiStats,
    config: ApiConfig,
    /// The raw settings the worker was started with, handed over with it.
    settings: serde_json::Value,
    worker: Option<Worker>,
    handover: Handover<ApiRun>,
    /// A hand-over shared with the next instances was given ([`CiApiReporter::with_handover`]):
    /// only then is a replaced instance's run left for the next one rather than finished.
    shared: bool,
}

/// A [`CiApiReporter`]'s run in progress, left for the next instance after a restart (see
/// [`CiApiReporter::with_handover`]): its background task, which owns the service clients (with
/// the check run, status or test run they created) and the record of the run.
pub struct ApiRun {
    settings: serde_json::Value,
    worker: Worker,
}

impl std::fmt::Debug for ApiRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The settings may hold tokens: nothing of them is shown.
        f.debug_struct("ApiRun")
            .field("finished", &self.worker.handle.is_finished())
            .finish_non_exhaustive()
    }
}

struct Worker {
    tx: mpsc::UnboundedSender<Msg>,
    handle: JoinHandle<()>,
}

impl Drop for CiApiReporter {
    fn drop(&mut self) {
        // A worker is only here between `on_start` and the final report: the run goes on
        // without this instance.
        if let Some(worker) = self.worker.take() {
            self.handover.put(ApiRun {
                settings: std::mem::take(&mut self.settings),
                worker,
            });
        }
    }
}

enum Msg {
    Event(Event),
    Finish,
}

impl std::fmt::Debug for CiApiReporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The environment holds tokens: only the configuration (whose tokens are `Secret`s)
        // and the detected CI info are shown.
        f.debug_struct("CiApiReporter")
            .field("config", &self.config)
            .field("info", &self.info)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Default for CiApiReporter {
    fn default() -> Self {
        Self::new()
    }
}

impl CiApiReporter {
    /// The plugin's name.
    pub const NAME: &'static str = "ci-api-reporter";

    /// A reporter reading identifiers and tokens from the process environment.
    pub fn new() -> Self {
        Self::with_env(process_env())
    }

    /// A reporter reading identifiers and tokens from `env`.
    pub fn with_env(env: Env) -> Self {
        Self {
            env,
            info: None,
            stats: ApiStats::default(),
            config: ApiConfig::default(),
            settings: serde_json::Value::Null,
            worker: None,
            handover: Handover::new(),
            shared: false,
        }
    }

    /// A spec whose instances hand the run in progress to the next one after a restart
    /// (reading identifiers and tokens from the process environment). The registry's
    /// `ci-api-reporter` is built so.
    pub fn spec() -> PluginSpec {
        let handover = Handover::new();
        PluginSpec::new(move || Self::new().with_handover(handover.clone()))
    }

    /// Takes the run in progress that the previous instance left in `handover` at start (if
    /// it was started with the same settings), and leaves its own there when dropped before
    /// the final report (see [`CiApiReporter::spec`]).
    pub fn with_handover(mut self, handover: Handover<ApiRun>) -> Self {
        self.handover = handover;
        self.shared = true;
        self
    }

    /// Uses `info` instead of detecting the CI system from the environment (e.g. a system
    /// forced by name with [`CiInfo::from_env`]).
    pub fn with_info(mut self, info: CiInfo) -> Self {
        self.info = Some(info);
        self
    }

    /// Counts into `stats` (a shared handle), so the caller can read them after handing the
    /// reporter to a manager.
    pub fn with_stats(mut self, stats: ApiStats) -> Self {
        self.stats = stats;
        self
    }

    /// The per-target statistics (a shared handle).
    pub fn stats(&self) -> ApiStats {
        self.stats.clone()
    }

    /// Waits for the worker to send the final report: at most `final_timeout_ms` and a
    /// second (the worker counts the report's time from the end of the run, a live request
    /// in flight included, and bounds it).
    async fn finish(&mut self, msg: Option<Msg>) {
        let Some(mut worker) = self.worker.take() else {
            return;
        };
        if let Some(msg) = msg {
            let _ = worker.tx.send(msg);
        }
        drop(worker.tx);
        let bound = Duration::from_millis(self.config.final_timeout_ms) + Duration::from_secs(1);
        match tokio::time::timeout(bound, &mut worker.handle).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "the CI API worker stopped abnormally"),
            Err(_) => tracing::error!(
                ?bound,
                "the final CI API report did not finish in time; no longer waited for"
            ),
        }
    }
}

impl Plugin for CiApiReporter {
    fn metadata(&self) -> PluginMetadata {
        PluginMetadata::new(Self::NAME)
            .version(env!("CARGO_PKG_VERSION"))
            .kind(PluginKind::Integration)
            .hooks(
                HookSet::TASK
                    .union(HookSet::WORKER)
                    .union(HookSet::COORDINATOR),
            )
    }

    async fn on_start(&mut self, ctx: &mut PluginContext) -> Result<(), PluginError> {
        self.config = ctx.config::<ApiConfig>()?;
        // Checked here too: a spec built in code (or restarted) does not pass the registry.
        self.config.validate()?;
        let info = self.info.clone().unwrap_or_else(|| detect(&self.env));
        let clients = build_clients(&self.config, &info, &self.env)?;
        self.info = Some(info);
        self.settings = ctx.raw_config().clone();
        if let Some(run) = self.handover.take() {
            if run.settings == self.settings && !run.worker.handle.is_finished() {
                tracing::debug!("the CI API reporter goes on with the previous instance's run");
                self.worker = Some(run.worker);
                return Ok(());
            }
            // Dropped: its worker ends without a verdict, as the run is reported anew.
            tracing::info!(
                "the CI API reporter's settings changed: the run is reported anew (a new check run)"
            );
        }
        if clients.is_empty() {
            return Ok(());
        }
        let http = HttpCore::new(
            Duration::from_millis(self.config.request_timeout_ms),
            self.config.retry,
            self.stats.clone(),
        )?;
        let (tx, rx) = mpsc::unbounded_channel();
        let handle = tokio::spawn(work(
            rx,
            clients,
            http,
            Duration::from_millis(self.config.update_interval_ms),
            Duration::from_millis(self.config.final_timeout_ms),
        ));
        self.worker = Some(Worker { tx, handle });
        Ok(())
    }

    async fn on_reconfigure(
        &mut self,
        _ctx: &mut PluginContext,
    ) -> Result<Reconfigured, PluginError> {
        // New endpoints or tokens need new clients: restart (the default), documented.
        Ok(Reconfigured::Restart)
    }

    async fn on_event(
        &mut self,
        _ctx: &mut PluginContext,
        event: &Event,
    ) -> Result<(), PluginError> {
        let Some(worker) = &self.worker else {
            return Ok(());
        };
        let last = matches!(event.kind, EventKind::CoordinatorShutdown(_));
        // The unbounded queue only fails when the worker is gone; then there is nothing
        // left to report to.
        let _ = worker.tx.send(Msg::Event(event.clone()));
        if last {
            self.finish(None).await;
        }
        Ok(())
    }

    async fn on_shutdown(&mut self, ctx: &mut PluginContext) -> Result<(), PluginError> {
        // A new instance takes over and shares the hand-over: no verdict yet; the worker is
        // handed over when this instance is dropped. Without a shared hand-over the next
        // instance could not take the run: it is finished, or its check run would stay "in
        // progress" for good.
        if !(self.shared && ctx.stopping() == Some(Stopping::Replaced)) {
            self.finish(Some(Msg::Finish)).await;
        }
        Ok(())
    }
}

/// Allows one update per interval and only when something changed: the rate limit and the
/// coalescing of live updates, as pure logic.
#[derive(Debug, Clone)]
pub(crate) struct Throttle {
    interval: Duration,
    next: Instant,
    dirty: bool,
}

impl Throttle {
    pub(crate) fn new(interval: Duration, now: Instant) -> Self {
        Self {
            interval,
            next: now + interval,
            dirty: false,
        }
    }

    /// Something changed.
    pub(crate) fn changed(&mut self) {
        self.dirty = true;
    }

    /// When the next update is due, if one is pending.
    pub(crate) fn due_at(&self) -> Option<Instant> {
        self.dirty.then_some(self.next)
    }

    /// Whether an update is pending and allowed at `now`; if so, takes it.
    pub(crate) fn take(&mut self, now: Instant) -> bool {
        if self.dirty && now >= self.next {
            self.dirty = false;
            self.next = now + self.interval;
            true
        } else {
            false
        }
    }
}

/// One live update of every client, while events go on being recorded. The end of the run
/// (`CoordinatorShutdown`, a finish, the channel closed) stops it after the client being
/// updated (a request cut in flight may still land after the final report, or, for Azure's
/// results, be sent twice) and is returned, with when it came, to be handled at once.
async fn live_update(
    clients: &mut [Client],
    http: &mut HttpCore,
    run: &crate::run::RunResult,
    rx: &mut mpsc::UnboundedReceiver<Msg>,
    recorder: &mut RunRecorder,
    throttle: &mut Throttle,
) -> Option<(Option<Msg>, Instant)> {
    let mut end: Option<(Option<Msg>, Instant)> = None;
    for c in clients.iter_mut() {
        if end.is_some() {
            break;
        }
        let update = c.update(http, run);
        tokio::pin!(update);
        loop {
            tokio::select! {
                () = &mut update => break,
                msg = rx.recv(), if end.is_none() => match msg {
                    Some(Msg::Event(event))
                        if !matches!(event.kind, EventKind::CoordinatorShutdown(_)) =>
                    {
                        recorder.record(&event);
                        if !matches!(event.kind, EventKind::CoordinatorStartup(_)) {
                            throttle.changed();
                        }
                    }
                    other => end = Some((other, Instant::now())),
                },
            }
        }
    }
    end
}

/// The background task: folds events, calls the clients, ends after the final report.
async fn work(
    mut rx: mpsc::UnboundedReceiver<Msg>,
    mut clients: Vec<Client>,
    mut http: HttpCore,
    interval: Duration,
    final_timeout: Duration,
) {
    let mut recorder = RunRecorder::new();
    let mut throttle = Throttle::new(interval, Instant::now());
    let mut started = false;
    // A message that ended a live update early, handled next, and when it came: the final
    // report's time counts from then.
    let mut stashed: Option<(Option<Msg>, Instant)> = None;
    let mut ended_at = None;
    loop {
        let msg = if let Some((msg, at)) = stashed.take() {
            ended_at = Some(at);
            msg
        } else {
            let due = match throttle.due_at() {
                Some(at) => tokio::select! {
                    msg = rx.recv() => Err(msg),
                    () = tokio::time::sleep_until(at) => Ok(()),
                },
                None => Err(rx.recv().await),
            };
            match due {
                Err(msg) => msg,
                Ok(()) => {
                    if throttle.take(Instant::now()) {
                        let run = recorder.result();
                        stashed = live_update(
                            &mut clients,
                            &mut http,
                            &run,
                            &mut rx,
                            &mut recorder,
                            &mut throttle,
                        )
                        .await;
                    }
                    continue;
                }
            }
        };
        let finish = match msg {
            // Dropped without a finish: the plugin was restarted with other settings (with
            // the same ones, the next instance took this worker over), removed, or the whole
            // manager is gone. No verdict is sent for a run not seen to the end.
            None => return,
            Some(Msg::Finish) => true,
            Some(Msg::Event(event)) => {
                recorder.record(&event);
                if !started {
                    started = true;
                    let run = recorder.result();
                    for c in &mut clients {
                        c.start(&mut http, &run).await;
                    }
                    throttle = Throttle::new(interval, Instant::now());
                }
                match event.kind {
                    EventKind::CoordinatorShutdown(_) => true,
                    EventKind::CoordinatorStartup(_) => false,
                    _ => {
                        throttle.changed();
                        false
                    }
                }
            }
        };
        if finish {
            if started {
                let run = recorder.result();
                let all = async {
                    for c in &mut clients {
                        c.finish(&mut http, &run).await;
                    }
                };
                // What a live request in flight took counts, down to half the time at least.
                let spent = ended_at.map_or(Duration::ZERO, |t| t.elapsed());
                let budget = final_timeout.saturating_sub(spent).max(final_timeout / 2);
                if tokio::time::timeout(budget, all).await.is_err() {
                    tracing::error!(
                        ?final_timeout,
                        "the final CI API report did not finish in time; abandoned"
                    );
                }
            }
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_coalesces_changes_into_one_update_per_interval() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut th = Throttle::new(10 * s, t0);
        assert_eq!(th.due_at(), None, "nothing changed");
        for _ in 0..1000 {
            th.changed();
        }
        assert_eq!(th.due_at(), Some(t0 + 10 * s));
        assert!(!th.take(t0 + 9 * s), "not before the interval");
        assert!(th.take(t0 + 10 * s), "one update for all the changes");
        assert!(!th.take(t0 + 30 * s), "nothing changed since");
        th.changed();
        assert_eq!(th.due_at(), Some(t0 + 20 * s));
        assert!(th.take(t0 + 25 * s));
        assert_eq!(th.due_at(), None);
    }
}
