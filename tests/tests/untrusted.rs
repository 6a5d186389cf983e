//! Plugin code is untrusted everywhere: one test per place the framework calls into a plugin
//! (its factory, `metadata`, `on_start`, `on_event`, `on_reconfigure`, `on_shutdown`, and the
//! `Display` and `Drop` of the errors of each hook, of its futures and of itself). A panic there is an accounted
//! failure of that plugin only: the other plugin gets every event, `flush` returns, the
//! conservation law holds and shutdown finishes.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "in tests, a failed unwrap is a failed test"
)]

mod common;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use common::{POISON, Probe, assert_conserved, n, quiet_poison_panics};
use dtf_plugin_core::prelude::*;
use dtf_plugin_core::{Backoff, ManagerError, PluginStatus, RestartBudget};

/// What of an error panics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bad {
    Display,
    Drop,
}

/// Where the bomb goes off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Site {
    /// The factory, from its second call on (a restart).
    FactoryOnRestart,
    /// The factory, from its second call on, with `on_event` panicking on `TRIGGER`: the
    /// restart after that failure calls it.
    FactoryOnRestartAfterAFailure,
    Metadata,
    OnStart,
    OnEvent,
    OnReconfigure,
    OnShutdown,
    /// `on_event` returns an error whose `Display` panics.
    ErrorDisplay,
    /// `on_event` returns an error whose `Drop` panics.
    ErrorDrop,
    /// The future `on_event` returns panics when dropped.
    FutureDrop,
    /// The plugin itself panics when dropped (after a failure, and at shutdown).
    PluginDrop,
    /// `on_start` returns an error whose `Display` or `Drop` panics.
    StartError(Bad),
    /// `on_reconfigure` returns an error whose `Display` or `Drop` panics.
    ReconfigureError(Bad),
    /// `on_shutdown` returns an error whose `Display` or `Drop` panics.
    ShutdownError(Bad),
}

/// An error whose `Display` or `Drop` panics.
fn bad(what: Bad) -> PluginError {
    Box::new(BadError {
        panic_in_display: what == Bad::Display,
    })
}

const EVENTS: u64 = 20;
/// The event the bomb goes off on (for the per-event sites).
const TRIGGER: u64 = 7;

/// An error whose `Display` or `Drop` panics.
struct BadError {
    panic_in_display: bool,
}

impl fmt::Debug for BadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BadError")
    }
}

impl fmt::Display for BadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.panic_in_display {
            panic!("{POISON}: Display");
        }
        f.write_str("a bad error")
    }
}

impl std::error::Error for BadError {}

impl Drop for BadError {
    fn drop(&mut self) {
        if !self.panic_in_display && !std::thread::panicking() {
            panic!("{POISON}: error Drop");
        }
    }
}

/// The future `on_event` returns: ready at once with `result`; with `bomb`, it panics when
/// the runner drops it.
struct EventFuture {
    result: Option<Result<(), PluginError>>,
    bomb: bool,
}

impl Future for EventFuture {
    type Output = Result<(), PluginError>;
    fn poll(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Self::Output> {
        Poll::Ready(self.result.take().unwrap_or(Ok(())))
    }
}

impl Drop for EventFuture {
    fn drop(&mut self) {
        if self.bomb && !std::thread::panicking() {
            panic!("{POISON}: future Drop");
        }
    }
}

struct Bomb {
    site: Site,
    /// Set once the bomb went off, so that a restarted instance is healthy (except for the
    /// sites that fire on every instance).
    fired: Arc<AtomicU32>,
}

impl Bomb {
    /// Whether to go off now: on `TRIGGER`, once.
    fn on(&self, site: Site, e: Option<&Event>) -> bool {
        self.site == site
            && e.is_none_or(|e| common::number(e) == Some(TRIGGER))
            && self.fired.fetch_add(1, Ordering::SeqCst) == 0
    }

    /// The error to return from a hook whose error is the bomb (`site` with what of it
    /// panics), once.
    fn error_of(&self, site: fn(Bad) -> Site) -> Option<PluginError> {
        [Bad::Display, Bad::Drop]
            .into_iter()
            .find(|&b| self.on(site(b), None))
            .map(bad)
    }
}

impl Drop for Bomb {
    fn drop(&mut self) {
        if self.site == Site::PluginDrop && !std::thread::panicking() {
            self.fired.fetch_add(1, Ordering::SeqCst);
            panic!("{POISON}: plugin Drop");
        }
    }
}

impl Plugin for Bomb {
    fn metadata(&self) -> PluginMetadata {
        if self.site == Site::Metadata {
            panic!("{POISON}: metadata");
        }
        PluginMetadata::new("bomb").hooks(Hook::Custom)
    }

    async fn on_start(&mut self, _: &mut PluginContext) -> Result<(), PluginError> {
        if self.on(Site::OnStart, None) {
            panic!("{POISON}: on_start");
        }
        self.error_of(Site::StartError).map_or(Ok(()), Err)
    }

    fn on_event(
        &mut self,
        _: &mut PluginContext,
        e: &Event,
    ) -> impl Future<Output = Result<(), PluginError>> + Send {
        let result: Result<(), PluginError> = if self.on(Site::OnEvent, Some(e))
            || self.on(Site::FactoryOnRestartAfterAFailure, Some(e))
        {
            panic!("{POISON}: on_event");
        } else if self.on(Site::ErrorDisplay, Some(e)) {
            Err(Box::new(BadError {
                panic_in_display: true,
            }))
        } else if self.on(Site::ErrorDrop, Some(e)) {
            Err(Box::new(BadError {
                panic_in_display: false,
            }))
        } else {
            Ok(())
        };
        EventFuture {
            result: Some(result),
            bomb: self.on(Site::FutureDrop, Some(e)),
        }
    }

    async fn on_reconfigure(&mut self, _: &mut PluginContext) -> Result<Reconfigured, PluginError> {
        if self.on(Site::OnReconfigure, None) {
            panic!("{POISON}: on_reconfigure");
        }
        self.error_of(Site::ReconfigureError)
            .map_or(Ok(Reconfigured::Applied), Err)
    }

    async fn on_shutdown(&mut self, _: &mut PluginContext) -> Result<(), PluginError> {
        if self.on(Site::OnShutdown, None) {
            panic!("{POISON}: on_shutdown");
        }
        self.error_of(Site::ShutdownError).map_or(Ok(()), Err)
    }
}

fn spec(site: Site, fired: &Arc<AtomicU32>) -> PluginSpec {
    let calls = Arc::new(AtomicU32::new(0));
    let fired = Arc::clone(fired);
    PluginSpec::new(move || {
        let on_restart = matches!(
            site,
            Site::FactoryOnRestart | Site::FactoryOnRestartAfterAFailure
        );
        if on_restart && calls.fetch_add(1, Ordering::SeqCst) >= 1 {
            panic!("{POISON}: factory");
        }
        Bomb {
            site,
            fired: Arc::clone(&fired),
        }
    })
}

/// What [`survive`] saw of the bomb.
struct Survived {
    failures: u32,
    /// The answer to the reconfiguration in the middle of the run.
    reconfigured: Result<(), ManagerError>,
    /// The error its shutdown reported.
    shutdown_error: Option<String>,
}

/// Runs a manager with the bomb and a healthy plugin through `EVENTS` events (a
/// reconfiguration in the middle) and shutdown.
async fn survive(site: Site) -> Survived {
    quiet_poison_panics();
    let fired = Arc::new(AtomicU32::new(0));
    let healthy = Probe::new("healthy", Hook::Custom);
    let config = ManagerConfig::builder()
        .restart_budget(RestartBudget::unlimited())
        .backoff(Backoff::none())
        .shutdown_timeout(Duration::from_secs(5))
        .build();
    let manager = PluginManager::builder()
        .config(config)
        .spec(healthy.spec())
        .spec(spec(site, &fired).restart_policy(RestartPolicy::Permanent))
        .spawn()
        .await
        .unwrap();
    let mut reconfigured = None;
    for i in 0..EVENTS {
        manager.publish(n(i)).await.unwrap();
        if i == EVENTS / 2 {
            // Refused or applied, it must answer.
            let answered = tokio::time::timeout(
                Duration::from_secs(5),
                manager.reconfigure("bomb", serde_json::json!({"k": 1})),
            )
            .await;
            reconfigured =
                Some(answered.unwrap_or_else(|_| panic!("{site:?}: reconfigure did not answer")));
        }
    }
    let reconfigured = reconfigured.expect("reconfigured in the middle");
    tokio::time::timeout(Duration::from_secs(10), manager.flush())
        .await
        .unwrap_or_else(|_| panic!("{site:?}: flush did not return"));
    assert_eq!(
        healthy.numbers(),
        (0..EVENTS).collect::<Vec<_>>(),
        "{site:?}: the healthy plugin missed events"
    );
    assert_conserved(&manager).await;
    let stats = manager.stats("bomb").await.unwrap();
    assert_eq!(stats.queued, 0, "{site:?}: {stats:?}");
    let report = tokio::time::timeout(
        Duration::from_secs(10),
        manager.shutdown(ShutdownReason::Completed),
    )
    .await
    .unwrap_or_else(|_| panic!("{site:?}: shutdown did not finish"));
    let bomb = report.plugins.iter().find(|p| p.name == "bomb").unwrap();
    assert!(bomb.stats.is_conserved(), "{site:?}: {:?}", bomb.stats);
    let healthy_report = report.plugins.iter().find(|p| p.name == "healthy").unwrap();
    assert!(
        healthy_report.error.is_none(),
        "{site:?}: {healthy_report:?}"
    );
    if site == Site::OnShutdown {
        let error = bomb.error.as_deref().unwrap_or_default();
        assert!(error.contains("panicked"), "{site:?}: {error}");
    }
    // The instance is dropped when its actor's task ends, which may be just after shutdown
    // returns (the plugin's own Drop is where `PluginDrop` goes off).
    let went_off =
        common::eventually(Duration::from_secs(5), || fired.load(Ordering::SeqCst) >= 1).await;
    assert!(went_off, "{site:?}: the bomb never went off");
    Survived {
        failures: stats.failures,
        reconfigured,
        shutdown_error: bomb.error.clone(),
    }
}

/// A manager with `bomb` and a healthy plugin of the same hook, three restarts a minute and no
/// backoff.
async fn with_a_healthy_plugin(bomb: PluginSpec) -> (PluginManager, Probe) {
    let healthy = Probe::new("healthy", Hook::Custom);
    let manager = PluginManager::builder()
        .config(
            ManagerConfig::builder()
                .restart_budget(RestartBudget::new(3, Duration::from_secs(60)))
                .backoff(Backoff::none())
                .build(),
        )
        .spec(healthy.spec())
        .spec(bomb)
        .spawn()
        .await
        .unwrap();
    (manager, healthy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_factory_on_restart_is_a_spawn_error() {
    // The first instance comes from the spec's first factory call; starting it again (enable
    // after disable) calls the factory again, which panics: a spawn error naming the panic.
    quiet_poison_panics();
    let fired = Arc::new(AtomicU32::new(0));
    let (manager, healthy) =
        with_a_healthy_plugin(spec(Site::FactoryOnRestart, &fired).hooks(Hook::Custom)).await;
    manager.disable("bomb").await.unwrap();
    let enabled = manager.enable("bomb").await;
    let error = enabled.expect_err("the factory panicked on the second start");
    assert!(matches!(error, ManagerError::Spawn { .. }), "{error}");
    assert!(error.to_string().contains("factory panicked"), "{error}");
    for i in 0..EVENTS {
        manager.publish(n(i)).await.unwrap();
    }
    tokio::time::timeout(Duration::from_secs(10), manager.flush())
        .await
        .expect("flush returns");
    assert_eq!(healthy.numbers(), (0..EVENTS).collect::<Vec<_>>());
    assert_conserved(&manager).await;
    manager.shutdown(ShutdownReason::Completed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_metadata_is_refused_by_add_with_the_message() {
    quiet_poison_panics();
    let fired = Arc::new(AtomicU32::new(0));
    let manager = PluginManager::builder().spawn().await.unwrap();
    let error = manager
        .add(spec(Site::Metadata, &fired))
        .await
        .expect_err("metadata() panicked");
    assert!(
        error.to_string().contains("metadata() panicked") && error.to_string().contains(POISON),
        "{error}"
    );
    // The manager is unharmed.
    let healthy = Probe::new("healthy", Hook::Custom);
    manager.add(healthy.spec()).await.unwrap();
    manager.publish(n(1)).await.unwrap();
    manager.flush().await;
    assert_eq!(healthy.numbers(), vec![1]);
    manager.shutdown(ShutdownReason::Completed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_on_start_is_a_failure() {
    assert!(survive(Site::OnStart).await.failures >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_on_event_is_a_failure() {
    assert!(survive(Site::OnEvent).await.failures >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_on_reconfigure_is_a_failure() {
    assert!(survive(Site::OnReconfigure).await.failures >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_on_shutdown_is_reported() {
    survive(Site::OnShutdown).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_an_errors_display_is_a_failure() {
    assert!(survive(Site::ErrorDisplay).await.failures >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_an_errors_drop_is_a_failure() {
    assert!(survive(Site::ErrorDrop).await.failures >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_a_futures_drop_is_a_failure() {
    assert!(survive(Site::FutureDrop).await.failures >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_the_plugins_drop_harms_nothing() {
    survive(Site::PluginDrop).await;
}

/// The error of an `on_start` that failed: its `Display` or its `Drop` panics. The start is a
/// failure either way (the next instance starts).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_the_display_of_an_on_start_error_is_a_failure() {
    assert!(survive(Site::StartError(Bad::Display)).await.failures >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_the_drop_of_an_on_start_error_is_a_failure() {
    assert!(survive(Site::StartError(Bad::Drop)).await.failures >= 1);
}

/// An `on_reconfigure` error refuses the change (not a failure); its text says the `Display`
/// panicked, and a panicking `Drop` is caught the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_the_display_of_an_on_reconfigure_error_is_a_refusal_that_says_so() {
    let survived = survive(Site::ReconfigureError(Bad::Display)).await;
    let error = survived.reconfigured.expect_err("the change was refused");
    assert!(
        error.to_string().contains("panicked when displayed"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_the_drop_of_an_on_reconfigure_error_is_caught() {
    let survived = survive(Site::ReconfigureError(Bad::Drop)).await;
    let error = survived.reconfigured.expect_err("the change was refused");
    assert!(error.to_string().contains("a bad error"), "{error}");
}

/// An `on_shutdown` error is reported by the shutdown; its `Display` or `Drop` panicking
/// changes nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_the_display_of_an_on_shutdown_error_is_reported() {
    let survived = survive(Site::ShutdownError(Bad::Display)).await;
    let error = survived.shutdown_error.unwrap_or_default();
    assert!(error.contains("panicked when displayed"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_the_drop_of_an_on_shutdown_error_is_reported() {
    let survived = survive(Site::ShutdownError(Bad::Drop)).await;
    let error = survived.shutdown_error.unwrap_or_default();
    assert!(error.contains("a bad error"), "{error}");
}

/// The factory panics when it is called for the first time: `PluginSpec::new` calls it for
/// `metadata`, so the spec is refused by `add` and by the builder's `spawn`, with the panic's
/// message, and the manager is unharmed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_factory_that_panics_at_once_is_refused_with_the_message() {
    quiet_poison_panics();
    let panicking = || PluginSpec::new(|| -> Bomb { panic!("{POISON}: first factory call") });
    let error = PluginManager::builder()
        .spec(panicking())
        .spawn()
        .await
        .expect_err("the builder refuses the spec");
    assert!(error.to_string().contains(POISON), "{error}");

    let healthy = Probe::new("healthy", Hook::Custom);
    let manager = PluginManager::builder()
        .spec(healthy.spec())
        .spawn()
        .await
        .unwrap();
    let error = manager.add(panicking()).await.expect_err("add refuses it");
    assert!(
        error.to_string().contains("panicked") && error.to_string().contains(POISON),
        "{error}"
    );
    manager.publish(n(1)).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), manager.flush())
        .await
        .expect("the manager is alive");
    assert_eq!(healthy.numbers(), vec![1]);
    assert_eq!(common::plugin_names(&manager).await, ["healthy"]);
    manager.shutdown(ShutdownReason::Completed).await;
}

/// The factory panics when called to restart a plugin that failed (here on its `TRIGGER`
/// event): each respawn is a failure within the restart budget, then the plugin is disabled
/// with the panic's message; the other plugin, `flush` and the counters are unharmed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_factory_that_panics_on_a_restart_after_a_failure_ends_in_disabled() {
    quiet_poison_panics();
    let fired = Arc::new(AtomicU32::new(0));
    let (manager, healthy) = with_a_healthy_plugin(
        spec(Site::FactoryOnRestartAfterAFailure, &fired).restart_policy(RestartPolicy::Permanent),
    )
    .await;
    for i in 0..EVENTS {
        manager.publish(n(i)).await.unwrap();
    }
    let mut disabled = None;
    for _ in 0..1_000 {
        let list = manager.list().await.unwrap();
        let info = list.into_iter().find(|p| p.name == "bomb").unwrap();
        if info.status == PluginStatus::Disabled {
            disabled = Some(info);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let info = disabled.expect("the plugin ends disabled");
    let error = info.last_error.unwrap_or_default();
    assert!(
        error.contains("factory panicked") && error.contains(POISON),
        "{error}"
    );
    assert!(info.stats.failures >= 2, "{:?}", info.stats);
    tokio::time::timeout(Duration::from_secs(10), manager.flush())
        .await
        .expect("flush returns");
    assert_eq!(healthy.numbers(), (0..EVENTS).collect::<Vec<_>>());
    assert_conserved(&manager).await;
    tokio::time::timeout(
        Duration::from_secs(10),
        manager.shutdown(ShutdownReason::Completed),
    )
    .await
    .expect("shutdown finishes");
}

/// A spec the manager refuses (here a second plugin named `bomb`) is dropped on the
/// manager's task, with the instance its factory made first: a panic in that instance's
/// `Drop` failed the manager, and every plugin with it (found by a review).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_the_drop_of_a_refused_specs_instance_harms_nothing() {
    quiet_poison_panics();
    let fired = Arc::new(AtomicU32::new(0));
    let healthy = Probe::new("healthy", Hook::Custom);
    let manager = PluginManager::builder()
        .spec(healthy.spec())
        // Never restarted here, so healthy too.
        .spec(spec(Site::FactoryOnRestart, &Arc::new(AtomicU32::new(0))))
        .spawn()
        .await
        .unwrap();
    let error = manager
        .add(spec(Site::PluginDrop, &fired))
        .await
        .expect_err("a second plugin named bomb");
    assert!(matches!(error, ManagerError::DuplicateName(_)), "{error:?}");
    assert_eq!(
        fired.load(Ordering::SeqCst),
        1,
        "the refused instance was dropped"
    );
    manager.publish(n(1)).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), manager.flush())
        .await
        .expect("the manager is alive");
    assert_eq!(healthy.numbers(), vec![1]);
    assert_eq!(manager.list().await.unwrap().len(), 2);
    manager.shutdown(ShutdownReason::Completed).await;
}

/// The dead letter of an error whose `Display` panicked says so, instead of the text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dead_letter_of_an_undisplayable_error_says_so() {
    quiet_poison_panics();
    let fired = Arc::new(AtomicU32::new(0));
    let manager = PluginManager::builder()
        .config(
            ManagerConfig::builder()
                .restart_budget(RestartBudget::unlimited())
                .backoff(Backoff::none())
                .build(),
        )
        .spec(spec(Site::ErrorDisplay, &fired))
        .spawn()
        .await
        .unwrap();
    for i in 0..EVENTS {
        manager.publish(n(i)).await.unwrap();
    }
    manager.flush().await;
    let dead = manager.dead_letters("bomb").await.unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(
        dead[0].error.contains("panicked when displayed"),
        "{:?}",
        dead[0].error
    );
    manager.shutdown(ShutdownReason::Completed).await;
}
