//! Failure isolation, restarts, budgets and backoff, hung handlers, runtime management and
//! bad input on the management side.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "in tests, a failed unwrap is a failed test"
)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{
    Action, POISON, Probe, assert_conserved, dead_numbers, eventually, n, number, plugin_names,
    quiet_poison_panics,
};
use dtf_plugin_core::prelude::*;
use dtf_plugin_core::testing::RecordingPlugin;
use dtf_plugin_core::{Backoff, ManagerError, PluginStatus, RestartBudget};
use serde::Deserialize;
use tokio::sync::watch;

fn forgiving() -> ManagerConfig {
    ManagerConfig::builder()
        .restart_budget(RestartBudget::unlimited())
        .backoff(Backoff::none())
        .dead_letter_capacity(20_000)
        .build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_panicking_on_every_10th_event_harms_nobody_else() {
    quiet_poison_panics();
    let healthy: Vec<Probe> = (0..4)
        .map(|i| Probe::new(&format!("healthy{i}"), Hook::Custom))
        .collect();
    let faulty = Probe::new("faulty", Hook::Custom).behaving(|e| {
        if number(e).is_some_and(|n| n % 10 == 9) {
            Action::Panic
        } else {
            Action::Ok
        }
    });
    let mut builder = PluginManager::builder().config(forgiving());
    for p in &healthy {
        builder = builder.spec(p.spec());
    }
    let manager = builder.spec(faulty.spec()).spawn().await.unwrap();

    const N: u64 = 100_000;
    for i in 0..N {
        manager.publish(n(i)).await.unwrap();
    }
    manager.flush().await;

    let all: Vec<u64> = (0..N).collect();
    for p in &healthy {
        assert_eq!(p.numbers(), all, "{} missed or reordered events", p.name);
        let s = manager.stats(&p.name).await.unwrap();
        assert_eq!((s.delivered, s.restarts, s.dead_lettered), (N, 0, 0));
    }
    let poison: Vec<u64> = (0..N).filter(|n| n % 10 == 9).collect();
    let good: Vec<u64> = (0..N).filter(|n| n % 10 != 9).collect();
    assert_eq!(
        faulty.numbers(),
        good,
        "non-poison events delivered once and in order"
    );
    let s = manager.stats("faulty").await.unwrap();
    assert_eq!(s.restarts as usize, poison.len(), "one restart per panic");
    assert_eq!(s.failures as usize, poison.len());
    assert_eq!(s.dead_lettered as usize, poison.len());
    assert_eq!(s.delivered as usize, good.len());
    let dead = dead_numbers(&manager, "faulty").await;
    assert_eq!(dead, poison, "exactly the poison events are dead-lettered");
    let letter = &manager.dead_letters("faulty").await.unwrap()[0];
    assert!(
        letter.error.contains("panicked") && letter.error.contains(POISON),
        "{}",
        letter.error
    );
    assert_conserved(&manager).await;
    let report = manager.shutdown(ShutdownReason::Completed).await;
    assert!(report.clean, "{report:?}");
}

#[tokio::test(start_paused = true)]
async fn restarts_failed_plugin_with_backoff_until_budget_exhausted() {
    let (monitor, monitor_rec) = RecordingPlugin::spec("monitor", HookSet::PLUGIN);
    let flaky = Probe::new("flaky", Hook::Custom).failing_start();
    let manager = PluginManager::builder()
        .spec(monitor)
        .spec(
            flaky
                .spec()
                .restart_budget(RestartBudget::new(3, Duration::from_secs(60)))
                .backoff(Backoff {
                    jitter: 0.0,
                    ..Backoff::default()
                }),
        )
        .spawn()
        .await
        .unwrap();
    let m = manager.clone();
    let disabled = eventually(Duration::from_secs(5), || {
        monitor_rec.hooks().contains(&Hook::PluginDisabled)
    })
    .await;
    assert!(
        disabled,
        "plugin was never disabled: {:?}",
        monitor_rec.hooks()
    );

    let starts = flaky.starts();
    assert_eq!(starts.len(), 4, "first start plus three restarts");
    let gaps: Vec<u128> = starts
        .windows(2)
        .map(|w| (w[1] - w[0]).as_millis())
        .collect();
    assert_eq!(gaps, vec![100, 200, 400], "backoff doubles from 100 ms");

    let flaky_events: Vec<Hook> = monitor_rec
        .events()
        .iter()
        .filter(|e| plugin_of(e) == Some("flaky"))
        .map(|e| e.hook())
        .collect();
    use Hook::*;
    assert_eq!(
        flaky_events,
        vec![
            PluginStarted,
            PluginFailed,
            PluginRestarted,
            PluginFailed,
            PluginRestarted,
            PluginFailed,
            PluginRestarted,
            PluginFailed,
            PluginDisabled
        ]
    );
    let info = m
        .list()
        .await
        .unwrap()
        .into_iter()
        .find(|p| p.name == "flaky")
        .unwrap();
    assert_eq!(info.status, PluginStatus::Disabled);
    assert_eq!((info.stats.restarts, info.stats.failures), (3, 4));
    assert!(info.last_error.unwrap().contains("fail on start"));
    // A disabled plugin no longer receives (or counts) events.
    manager.publish(n(1)).await.unwrap();
    manager.flush().await;
    assert_eq!(manager.stats("flaky").await.unwrap().published, 0);
    assert_conserved(&manager).await;
    manager.shutdown(ShutdownReason::Completed).await;
}

/// The framework events `rec` recorded about plugin `name`, by hook.
fn lifecycle_of(rec: &dtf_plugin_core::testing::Recording, name: &str) -> Vec<Hook> {
    rec.events()
        .iter()
        .filter(|e| plugin_of(e) == Some(name))
        .map(|e| e.hook())
        .collect()
}

fn plugin_of(e: &Event) -> Option<&str> {
    match &e.kind {
        EventKind::PluginStarted(p) | EventKind::PluginRestarted(p) => Some(&p.plugin),
        EventKind::PluginFailed(p) => Some(&p.plugin),
        EventKind::PluginDisabled(p) => Some(&p.plugin),
        EventKind::PluginRemoved(p) => Some(&p.plugin),
        _ => None,
    }
}

#[tokio::test(start_paused = true)]
async fn restart_policies_transient_and_temporary_disable_instead_of_restarting() {
    quiet_poison_panics();
    let transient = Probe::new("transient", Hook::Custom).failing_start();
    let temporary = Probe::new("temporary", Hook::Custom).behaving(|e| {
        if number(e) == Some(0) {
            Action::Panic
        } else {
            Action::Ok
        }
    });
    let manager = PluginManager::builder()
        .spec(transient.spec().restart_policy(RestartPolicy::Transient))
        .spec(temporary.spec().restart_policy(RestartPolicy::Temporary))
        .spawn()
        .await
        .unwrap();
    manager.publish(n(0)).await.unwrap();
    manager.publish(n(1)).await.unwrap();
    manager.flush().await;
    for name in ["transient", "temporary"] {
        let info = manager
            .list()
            .await
            .unwrap()
            .into_iter()
            .find(|p| p.name == name)
            .unwrap();
        assert_eq!(info.status, PluginStatus::Disabled, "{name}");
        assert_eq!((info.stats.restarts, info.stats.failures), (0, 1), "{name}");
    }
    // The temporary plugin's poison event is dead-lettered; the one behind it stays queued
    // (it would be delivered if the plugin were enabled again).
    let s = manager.stats("temporary").await.unwrap();
    assert_eq!((s.dead_lettered, s.queued), (1, 1));
    assert!(s.is_conserved());
    // Enabling it again delivers what waited in its queue.
    manager.enable("temporary").await.unwrap();
    manager.flush().await;
    assert_eq!(temporary.numbers(), vec![1]);
    let s = manager.stats("temporary").await.unwrap();
    assert_eq!((s.delivered, s.queued, s.restarts), (1, 0, 0));
    assert_conserved(&manager).await;
    manager.shutdown(ShutdownReason::Completed).await;
}

#[tokio::test(start_paused = true)]
async fn a_hung_handler_times_out_and_counts_as_a_failure() {
    let hung = Probe::new("hung", Hook::Custom).behaving(|e| {
        if number(e) == Some(3) {
            Action::Hang
        } else {
            Action::Ok
        }
    });
    let (other, other_rec) = RecordingPlugin::spec("other", Hook::Custom);
    let manager = PluginManager::builder()
        .config(forgiving())
        .spec(hung.spec().handler_timeout(Duration::from_millis(200)))
        .spec(other)
        .spawn()
        .await
        .unwrap();
    for i in 0..10 {
        manager.publish(n(i)).await.unwrap();
    }
    manager.flush().await;
    assert_eq!(hung.numbers(), vec![0, 1, 2, 4, 5, 6, 7, 8, 9]);
    assert_eq!(other_rec.len(), 10);
    let dead = manager.dead_letters("hung").await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(number(&dead[0].event), Some(3));
    assert!(
        dead[0].error.contains("did not finish within 200ms"),
        "{}",
        dead[0].error
    );
    assert_eq!(manager.stats("hung").await.unwrap().restarts, 1);
    assert_conserved(&manager).await;
    manager.shutdown(ShutdownReason::Completed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_plugin_does_not_delay_the_others() {
    // The slow plugin is held at a gate until the fast one has everything: how long that
    // takes on a loaded machine does not decide the outcome.
    let (gate, gate_rx) = watch::channel(false);
    let slow = Probe::new("slow", Hook::Custom).behaving(move |_| Action::Gate(gate_rx.clone()));
    let (fast, fast_rec) = RecordingPlugin::spec("fast", Hook::Custom);
    let manager = PluginManager::builder()
        .spec(slow.spec())
        .spec(fast)
        .spawn()
        .await
        .unwrap();
    for i in 0..10 {
        manager.publish(n(i)).await.unwrap();
    }
    let fast_done = eventually(Duration::from_secs(20), || fast_rec.len() == 10).await;
    assert!(fast_done, "fast plugin got {} of 10", fast_rec.len());
    // The slow one is still on its first event.
    let s = manager.stats("slow").await.unwrap();
    assert!(s.delivered == 0 && s.queued == 10, "{s:?}");
    gate.send_replace(true);
    manager.flush().await;
    assert_eq!(slow.numbers(), (0..10).collect::<Vec<_>>());
    assert_conserved(&manager).await;
    manager.shutdown(ShutdownReason::Completed).await;
}

/// A plugin that applies its configuration in place.
#[derive(Clone, Default)]
struct Scaler {
    factor: u32,
    seen: Arc<Mutex<Vec<u32>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScalerConfig {
    #[serde(default = "one")]
    factor: u32,
}

fn one() -> u32 {
    1
}

impl Plugin for Scaler {
    fn metadata(&self) -> PluginMetadata {
        PluginMetadata::new("scaler").hooks(Hook::Custom)
    }

    async fn on_start(&mut self, ctx: &mut PluginContext) -> Result<(), PluginError> {
        self.factor = ctx.config::<ScalerConfig>()?.factor;
        Ok(())
    }

    async fn on_event(
        &mut self,
        _ctx: &mut PluginContext,
        _event: &Event,
    ) -> Result<(), PluginError> {
        self.seen.lock().unwrap().push(self.factor);
        Ok(())
    }

    async fn on_reconfigure(
        &mut self,
        ctx: &mut PluginContext,
    ) -> Result<Reconfigured, PluginError> {
        let cfg: ScalerConfig = ctx.config()?;
        if cfg.factor == 0 {
            return Err("factor must be at least 1".into());
        }
        self.factor = cfg.factor;
        Ok(Reconfigured::Applied)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_are_added_removed_disabled_enabled_and_reconfigured_while_events_flow() {
    let a = Probe::new("a", Hook::Custom);
    let restarter = Probe::new("restarter", Hook::Custom);
    let scaler = Scaler::default();
    let scaler_seen = Arc::clone(&scaler.seen);
    let manager = PluginManager::builder()
        .config(ManagerConfig::builder().queue_capacity(256).build())
        .spec(a.spec())
        .spec(restarter.spec())
        .spec(PluginSpec::new(move || scaler.clone()))
        .spawn()
        .await
        .unwrap();

    // Events flow until the management calls are done, and 1,000 more after them (however
    // long the calls take on a loaded machine).
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let bus = manager.bus();
    let publishing = Arc::clone(&stop);
    let publisher = tokio::spawn(async move {
        let mut i = 0;
        let mut end = u64::MAX;
        while i < end {
            bus.publish(n(i)).await.unwrap();
            i += 1;
            if end == u64::MAX && publishing.load(std::sync::atomic::Ordering::Relaxed) {
                end = i + 1_000;
            }
            if i % 64 == 0 {
                tokio::task::yield_now().await;
            }
        }
        i
    });
    let started = eventually(Duration::from_secs(10), || a.numbers().len() > 1_000).await;
    assert!(started);

    let (b, b_rec) = RecordingPlugin::spec("b", Hook::Custom);
    manager.add(b).await.unwrap();
    manager.disable("a").await.unwrap();
    assert_eq!(a.shutdowns(), 1, "disable runs on_shutdown");
    manager.enable("a").await.unwrap();
    manager
        .reconfigure("scaler", serde_json::json!({ "factor": 3 }))
        .await
        .unwrap();
    manager
        .reconfigure("restarter", serde_json::json!({ "anything": true }))
        .await
        .unwrap();
    manager.remove("b").await.unwrap();
    assert_eq!(b_rec.shutdowns(), 1, "remove runs on_shutdown");

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let total = publisher.await.unwrap();
    manager.flush().await;

    // `a` missed what was published while it was disabled, and nothing else.
    let got = a.numbers();
    assert!(got.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(got.last(), Some(&(total - 1)));
    assert_eq!(a.starts().len(), 2);
    let gaps = got.windows(2).filter(|w| w[1] != w[0] + 1).count();
    assert!(gaps <= 1, "one gap at most (the disabled period)");
    // The restart-to-reconfigure plugin lost nothing across its restart.
    assert_eq!(restarter.numbers(), (0..total).collect::<Vec<_>>());
    assert_eq!(restarter.starts().len(), 2);
    assert_eq!(
        manager.stats("restarter").await.unwrap().restarts,
        0,
        "not a failure"
    );
    // The scaler switched factor exactly once, in order, and kept every event.
    let factors = scaler_seen.lock().unwrap().clone();
    assert_eq!(factors.len() as u64, total);
    assert!(factors.windows(2).all(|w| w[0] <= w[1]), "factor went back");
    assert_eq!((factors[0], factors[factors.len() - 1]), (1, 3));
    // `b` got a contiguous stretch and is gone.
    let b_nums: Vec<u64> = b_rec.events().iter().filter_map(number).collect();
    assert!(b_nums.windows(2).all(|w| w[1] == w[0] + 1));
    assert!(matches!(
        manager.stats("b").await,
        Err(ManagerError::UnknownPlugin { .. })
    ));
    assert_conserved(&manager).await;
    assert!(manager.shutdown(ShutdownReason::Completed).await.clean);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_management_input_gets_clear_errors() {
    let manager = PluginManager::builder()
        .spec(Probe::new("dup", Hook::Custom).spec())
        .spec(PluginSpec::new(Scaler::default))
        .spawn()
        .await
        .unwrap();
    let err = manager
        .add(Probe::new("dup", Hook::Custom).spec())
        .await
        .unwrap_err();
    assert!(
        matches!(err, ManagerError::DuplicateName(ref n) if n == "dup"),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "add plugin `dup`: a plugin with this name already exists"
    );

    let err = manager
        .add(Probe::new("deaf", HookSet::EMPTY).spec())
        .await
        .unwrap_err();
    assert!(matches!(err, ManagerError::NoHooks(_)), "{err}");

    let err = manager.disable("nope").await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "find plugin `nope`: no such plugin (known: dup, scaler)"
    );

    let err = manager.enable("dup").await.unwrap_err();
    assert_eq!(err.to_string(), "enable plugin `dup`: it is running");

    // A rejected configuration leaves the old one in force and the plugin running.
    let err = manager
        .reconfigure("scaler", serde_json::json!({ "factor": 0 }))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "reconfigure plugin `scaler`: factor must be at least 1"
    );
    let err = manager
        .reconfigure("scaler", serde_json::json!({ "factr": 2 }))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("unknown field `factr`"), "{err}");
    let info = manager.list().await.unwrap();
    assert!(
        info.iter().all(|p| p.status == PluginStatus::Running),
        "{info:?}"
    );
    assert_eq!(manager.stats("scaler").await.unwrap().failures, 0);

    // Duplicate names in a builder fail the whole spawn.
    let err = PluginManager::builder()
        .spec(Probe::new("x", Hook::Custom).spec())
        .spec(Probe::new("x", Hook::Custom).spec())
        .spawn()
        .await
        .unwrap_err();
    assert!(matches!(err, ManagerError::DuplicateName(_)));
    assert_conserved(&manager).await;
    manager.shutdown(ShutdownReason::Completed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_of_the_wrong_type_names_the_key() {
    let manager = PluginManager::builder()
        .spec(
            PluginSpec::new(Scaler::default)
                .config(serde_json::json!({ "factor": "two" }))
                .restart_policy(RestartPolicy::Transient),
        )
        .spawn()
        .await
        .unwrap();
    let m = manager.clone();
    let mut info = None;
    for _ in 0..500 {
        let i = m.list().await.unwrap().remove(0);
        if i.status == PluginStatus::Disabled {
            info = Some(i);
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let info = info.expect("plugin with a bad config should be disabled");
    let err = info.last_error.unwrap();
    assert!(
        err.contains("configuration of plugin `scaler`") && err.contains("factor"),
        "{err}"
    );
    manager.shutdown(ShutdownReason::Completed).await;
}

/// One publisher's events, published one by one and in batches of mixed hooks, with a failing
/// plugin that panics or errors on some of them. A failure can land anywhere: on a single
/// event, at the start, middle or end of a batch, inside a run of cells the plugin took from
/// the log at once; the rest of that batch and that run must still come, once and in order.
mod failures_inside_batches {
    use super::*;
    use proptest::prelude::*;

    /// An event: a numbered custom event (`true`) or a task event the faulty plugin does not
    /// subscribe to (`false`), so batches mix hooks and the plugin filters inside them.
    fn kind(custom: bool, i: u64) -> EventKind {
        if custom {
            n(i)
        } else {
            EventKind::task_created(format!("t{i}"), "x")
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]

        #[test]
        fn the_rest_of_a_batch_and_of_a_run_survive_a_failure(
            customs in prop::collection::vec(prop::bool::weighted(0.7), 1..400),
            batches in prop::collection::vec(1usize..40, 1..40),
            every in 2u64..9,
            panic in any::<bool>(),
        ) {
            quiet_poison_panics();
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let poisoned = move |e: &Event| number(e).is_some_and(|x| x % every == every - 1);
                let faulty = Probe::new("faulty", Hook::Custom).behaving(move |e| {
                    match (poisoned(e), panic) {
                        (false, _) => Action::Ok,
                        (true, true) => Action::Panic,
                        (true, false) => Action::Fail,
                    }
                });
                let all = Probe::new("all", HookSet::TASK.union(Hook::Custom.into()));
                let manager = PluginManager::builder()
                    .config(forgiving())
                    .spec(faulty.spec())
                    .spec(all.spec())
                    .spawn()
                    .await
                    .unwrap();
                let events: Vec<(bool, u64)> =
                    customs.iter().enumerate().map(|(i, c)| (*c, i as u64)).collect();
                // Batch sizes cycle through `batches`; a size of 1 is a single publish.
                let mut rest = &events[..];
                let mut sizes = batches.iter().cycle();
                while !rest.is_empty() {
                    let size = (*sizes.next().unwrap()).min(rest.len());
                    let (now, later) = rest.split_at(size);
                    if size == 1 {
                        manager.publish(kind(now[0].0, now[0].1)).await.unwrap();
                    } else {
                        manager
                            .bus()
                            .publish_batch(now.iter().map(|(c, i)| kind(*c, *i)))
                            .await
                            .unwrap();
                    }
                    rest = later;
                }
                // An event lost by a failure would never be acknowledged: fail, don't hang.
                tokio::time::timeout(Duration::from_secs(10), manager.flush())
                    .await
                    .expect("flush: events were lost");

                let numbered: Vec<u64> =
                    events.iter().filter(|(c, _)| *c).map(|(_, i)| *i).collect();
                let poison: Vec<u64> =
                    numbered.iter().copied().filter(|x| x % every == every - 1).collect();
                let good: Vec<u64> =
                    numbered.iter().copied().filter(|x| x % every != every - 1).collect();
                assert_eq!(faulty.numbers(), good, "delivered once and in order");
                assert_eq!(all.seen().len(), events.len(), "the healthy plugin saw everything");
                let dead = dead_numbers(&manager, "faulty").await;
                assert_eq!(dead, poison, "exactly the failed events are dead-lettered");
                // The last failure's restart may still be on its way when the flush returns
                // (the failed event counts as handled once it is dead-lettered).
                let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
                let mut s = manager.stats("faulty").await.unwrap();
                while (s.restarts as usize) < poison.len() && tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    s = manager.stats("faulty").await.unwrap();
                }
                assert_eq!(s.restarts as usize, poison.len(), "one restart per failure");
                assert_eq!(s.queued, 0);
                assert_conserved(&manager).await;
                manager.shutdown(ShutdownReason::Completed).await;
            });
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enable_returns_the_error_of_a_failing_on_start() {
    let starts_badly = Probe::new("starts-badly", Hook::Custom).failing_start();
    let manager = PluginManager::builder()
        .spec(starts_badly.spec().restart_policy(RestartPolicy::Temporary))
        .spawn()
        .await
        .unwrap();
    // Its first start fails too; a temporary plugin is then disabled.
    let m = manager.clone();
    let mut disabled = false;
    for _ in 0..200 {
        let info = m.list().await.unwrap();
        if info[0].status == PluginStatus::Disabled {
            disabled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(disabled, "the plugin was never disabled");
    let error = manager
        .enable("starts-badly")
        .await
        .expect_err("on_start fails again");
    assert!(
        matches!(&error, ManagerError::StartFailed { name, .. } if name == "starts-badly"),
        "{error:?}"
    );
    assert!(
        error
            .to_string()
            .contains("probe configured to fail on start"),
        "{error}"
    );
    manager.shutdown(ShutdownReason::Completed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_publishes_plugin_removed() {
    let (monitor, monitor_rec) = RecordingPlugin::spec("monitor", HookSet::PLUGIN);
    let leaving = Probe::new("leaving", Hook::Custom);
    let manager = PluginManager::builder()
        .spec(monitor)
        .spec(leaving.spec())
        .spawn()
        .await
        .unwrap();
    manager.remove("leaving").await.unwrap();
    manager.flush().await;
    assert_eq!(
        lifecycle_of(&monitor_rec, "leaving"),
        [Hook::PluginStarted, Hook::PluginRemoved]
    );
    manager.shutdown(ShutdownReason::Completed).await;
}

/// A `disable` that comes while a `remove` waits for the plugin to finish its queue does not
/// undo the removal (found by a review: the plugin stayed listed, disabled, with no
/// `PluginRemoved`, and its name could not be added again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disable_during_a_remove_does_not_undo_it() {
    let (monitor, monitor_rec) = RecordingPlugin::spec("monitor", HookSet::PLUGIN);
    let (gate_tx, gate) = watch::channel(false);
    let leaving = Probe::new("leaving", Hook::Custom).behaving(move |_| Action::Gate(gate.clone()));
    let manager = PluginManager::builder()
        .spec(monitor)
        .spec(leaving.spec())
        .spawn()
        .await
        .unwrap();
    manager.publish(n(0)).await.unwrap();
    let removing = tokio::spawn({
        let m = manager.clone();
        async move { m.remove("leaving").await }
    });
    // The removal begins (the plugin waits at its gate, so it cannot end) before the
    // disable comes.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let disabling = tokio::spawn({
        let m = manager.clone();
        async move { m.disable("leaving").await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    gate_tx.send(true).unwrap();
    removing.await.unwrap().unwrap();
    disabling.await.unwrap().unwrap();
    manager.flush().await;
    assert_eq!(plugin_names(&manager).await, ["monitor"]);
    assert_eq!(
        lifecycle_of(&monitor_rec, "leaving"),
        [Hook::PluginStarted, Hook::PluginRemoved]
    );
    manager.add(leaving.spec()).await.unwrap();
    manager.shutdown(ShutdownReason::Completed).await;
}

/// A plugin that fails while the shutdown's stop drains its queue: the report has the error
/// and counts the failure. The count comes from the failure's supervision event, which ractor
/// sends a moment after the plugin's answer, and the report was read right after the answers:
/// it could miss the failure (the error text was there either way). The race never showed in
/// this test without the fix (0 of 8 runs, a plugin slow to drop included: ractor drops the
/// state after sending the event), so the test checks the count, not the race. The shutdown
/// now waits for the actors that answered to end, which ractor marks after sending the event.
/// As in the test below, the queue is more than one wake-up's work, so the failure comes in
/// the stop's own drain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_in_the_shutdowns_drain_is_counted_in_the_report() {
    quiet_poison_panics();
    const N: u64 = 40_000;
    let (gate_tx, gate) = watch::channel(false);
    let busy = Probe::new("busy", Hook::Custom).behaving(move |e| match number(e) {
        Some(0) => Action::Gate(gate.clone()),
        Some(n) if n == N - 1 => Action::Fail,
        _ => Action::Ok,
    });
    let mut config = forgiving();
    config.shutdown_timeout = Duration::from_secs(1);
    let manager = PluginManager::builder()
        .config(config)
        .spec(busy.spec().queue_capacity(2 * N as usize))
        .spawn()
        .await
        .unwrap();
    for i in 0..N {
        manager.publish(n(i)).await.unwrap();
    }
    let shutting_down = tokio::spawn({
        let m = manager.clone();
        async move { m.shutdown(ShutdownReason::Completed).await }
    });
    // The drain before the stop runs out of its second at the gate; the stop's deadline is a
    // second after that.
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    gate_tx.send(true).unwrap();
    let report = shutting_down.await.unwrap();
    let p = &report.plugins[0];
    assert!(!report.clean);
    let error = p.error.as_deref().unwrap_or_default();
    assert!(error.contains("probe failed"), "{p:?}");
    assert_eq!(p.stats.failures, 1, "{p:?}");
    assert_eq!(p.stats.dead_lettered, 1, "{p:?}");
    assert!(p.stats.is_conserved(), "{p:?}");
    assert_eq!(busy.numbers().len() as u64, N - 1);
}

/// A plugin that fails while it finishes its queue for a restart (or a replace, a disable)
/// has the failure counted and reported with `PluginFailed`. Before, its actor stopped
/// normally and the failure was seen only in the dead letter (found by a review). The new
/// instance starts all the same, even under `Temporary` (a fixed version dropped in must
/// start). The queue is more than one wake-up's work (8 chunks of 4,096 events), so the
/// failure comes in the stop's own drain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_while_finishing_the_queue_for_a_restart_is_accounted() {
    quiet_poison_panics();
    const N: u64 = 40_000;
    let (monitor, monitor_rec) = RecordingPlugin::spec("monitor", HookSet::PLUGIN);
    let (gate_tx, gate) = watch::channel(false);
    let busy = Probe::new("busy", Hook::Custom).behaving(move |e| match number(e) {
        Some(0) => Action::Gate(gate.clone()),
        Some(n) if n == N - 1 => Action::Fail,
        _ => Action::Ok,
    });
    let manager = PluginManager::builder()
        .config(forgiving())
        .spec(monitor)
        .spec(
            busy.spec()
                .queue_capacity(2 * N as usize)
                .restart_policy(RestartPolicy::Temporary),
        )
        .spawn()
        .await
        .unwrap();
    for i in 0..N {
        manager.publish(n(i)).await.unwrap();
    }
    let restarting = tokio::spawn({
        let m = manager.clone();
        async move { m.restart("busy").await }
    });
    // The restart's stop waits behind the wake-up in hand, which waits at the gate.
    tokio::time::sleep(Duration::from_millis(100)).await;
    gate_tx.send(true).unwrap();
    restarting.await.unwrap().unwrap();
    manager.flush().await;
    let info = manager
        .list()
        .await
        .unwrap()
        .into_iter()
        .find(|p| p.name == "busy")
        .unwrap();
    assert_eq!(info.stats.failures, 1, "{info:?}");
    assert!(info.last_error.is_some(), "{info:?}");
    assert_eq!(dead_numbers(&manager, "busy").await, [N - 1]);
    assert_ne!(info.status, PluginStatus::Disabled, "{info:?}");
    // Restarted at once (the restart's answer comes once it is scheduled).
    let mut running = false;
    for _ in 0..500 {
        let list = manager.list().await.unwrap();
        if list
            .iter()
            .any(|p| p.name == "busy" && p.status == PluginStatus::Running)
        {
            running = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(running, "the new instance did not start");
    manager.publish(n(N)).await.unwrap();
    manager.flush().await;
    assert_eq!(busy.numbers().last(), Some(&N));
    assert!(
        monitor_rec
            .events()
            .iter()
            .any(|e| matches!(&e.kind, EventKind::PluginFailed(f) if f.plugin == "busy")),
        "no PluginFailed"
    );
    assert_conserved(&manager).await;
    manager.shutdown(ShutdownReason::Completed).await;
}

/// A `shutdown_timeout` too long to add to the clock (a typo of units in the configuration)
/// waits, it does not panic: before, `restart`, `disable` and `shutdown` panicked adding it,
/// in the caller's task or in the manager's (found by a review).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_timeout_too_long_for_the_clock_does_not_panic() {
    let probe = Probe::new("p", Hook::Custom);
    let manager = PluginManager::builder()
        .config(
            ManagerConfig::builder()
                .shutdown_timeout(Duration::MAX)
                .build(),
        )
        .spec(probe.spec())
        .spawn()
        .await
        .unwrap();
    manager.publish(n(1)).await.unwrap();
    manager.restart("p").await.unwrap();
    manager.disable("p").await.unwrap();
    manager.enable("p").await.unwrap();
    manager.publish(n(2)).await.unwrap();
    let report = manager.shutdown(ShutdownReason::Completed).await;
    assert!(report.clean, "{report:?}");
    assert_eq!(probe.numbers(), [1, 2]);
}

/// A plugin named "slow" whose `on_shutdown` says it has begun, then takes 300 ms.
struct SlowToStop {
    in_shutdown: watch::Sender<bool>,
}

impl Plugin for SlowToStop {
    fn metadata(&self) -> PluginMetadata {
        PluginMetadata::new("slow").hooks(Hook::Custom)
    }
    async fn on_event(&mut self, _: &mut PluginContext, _: &Event) -> Result<(), PluginError> {
        Ok(())
    }
    async fn on_shutdown(&mut self, _: &mut PluginContext) -> Result<(), PluginError> {
        let _ = self.in_shutdown.send(true);
        tokio::time::sleep(Duration::from_millis(300)).await;
        Ok(())
    }
}

/// A shutdown that comes while a restart is stopping the old instance (it is in
/// `on_shutdown`) waits for that stop instead of asking again: the second request was never
/// read, and the plugin was reported "stopped without reporting", the shutdown not clean
/// (found by a review).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_during_a_restart_waits_for_it_and_stays_clean() {
    let (in_shutdown, mut stopping) = watch::channel(false);
    let manager = PluginManager::builder()
        .spec(PluginSpec::new(move || SlowToStop {
            in_shutdown: in_shutdown.clone(),
        }))
        .spawn()
        .await
        .unwrap();
    manager.publish(n(0)).await.unwrap();
    manager.flush().await;
    let restarting = tokio::spawn({
        let m = manager.clone();
        async move { m.restart("slow").await }
    });
    // The old instance is in its `on_shutdown` for the restart.
    stopping.wait_for(|s| *s).await.unwrap();
    let report = manager.shutdown(ShutdownReason::Completed).await;
    assert!(report.clean, "{report:?}");
    assert!(
        report.plugins.iter().all(|p| p.error.is_none()),
        "{report:?}"
    );
    // The restart did not happen: the manager shut down first.
    assert!(matches!(
        restarting.await.unwrap(),
        Err(ManagerError::ShutDown)
    ));
}

/// An `enable` that arrives while the manager is stopping its plugins is refused: the new
/// instance would miss the stop list, never get `on_shutdown`, and be killed with the manager.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enable_while_the_plugins_stop_is_refused() {
    let (in_shutdown, mut stopping) = watch::channel(false);
    let off = Probe::new("off", Hook::Custom);
    let manager = PluginManager::builder()
        .spec(PluginSpec::new(move || SlowToStop {
            in_shutdown: in_shutdown.clone(),
        }))
        .spec(off.spec())
        .spawn()
        .await
        .unwrap();
    manager.disable("off").await.unwrap();
    let shutdown = tokio::spawn({
        let m = manager.clone();
        async move { m.shutdown(ShutdownReason::Completed).await }
    });
    // The plugins are being stopped: "slow" is in its `on_shutdown`.
    stopping.wait_for(|s| *s).await.unwrap();
    assert!(matches!(
        manager.enable("off").await,
        Err(ManagerError::ShutDown)
    ));
    let report = shutdown.await.unwrap();
    assert!(report.clean, "{report:?}");
    assert!(
        report.plugins.iter().all(|p| p.error.is_none()),
        "{report:?}"
    );
    // Started once (at the spawn) and stopped once (by the disable): no second instance.
    assert_eq!(off.starts().len(), 1);
    assert_eq!(off.shutdowns(), 1);
}

#[test]
fn spawn_without_a_time_driver_fails_at_once_with_a_clear_error() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let spawned = runtime.block_on(PluginManager::builder().spawn());
    let error = spawned.expect_err("no timer, no manager");
    assert!(matches!(error, ManagerError::NoTimeDriver), "{error:?}");
    assert!(error.to_string().contains("enable_time()"), "{error}");
}

/// `restart` answers once the new instance has started, with its error when `on_start` fails
/// (before, it answered Ok as soon as the actor existed), and refuses a plugin that is not
/// running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_answers_with_the_new_instances_start() {
    struct Once(Arc<std::sync::atomic::AtomicU32>);
    impl Plugin for Once {
        fn metadata(&self) -> PluginMetadata {
            PluginMetadata::new("once").hooks(Hook::Custom)
        }
        async fn on_start(&mut self, _ctx: &mut PluginContext) -> Result<(), PluginError> {
            match self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst) {
                0 | 1 => Ok(()),
                _ => Err("only twice".into()),
            }
        }
        async fn on_event(&mut self, _: &mut PluginContext, _: &Event) -> Result<(), PluginError> {
            Ok(())
        }
    }
    let starts = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let counter = Arc::clone(&starts);
    let manager = PluginManager::builder()
        .spec(
            PluginSpec::new(move || Once(Arc::clone(&counter)))
                .restart_policy(RestartPolicy::Temporary),
        )
        .spawn()
        .await
        .unwrap();
    manager.restart("once").await.unwrap();
    let error = manager
        .restart("once")
        .await
        .expect_err("the third start fails");
    assert!(
        matches!(&error, ManagerError::StartFailed { name, reason } if name == "once" && reason.contains("only twice")),
        "{error:?}"
    );
    // Temporary: disabled after that failure; a restart of a plugin that is not running is
    // refused (enable it instead).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while manager.list().await.unwrap()[0].status != PluginStatus::Disabled {
        assert!(tokio::time::Instant::now() < deadline, "never disabled");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let error = manager.restart("once").await.expect_err("not running");
    assert!(
        matches!(error, ManagerError::WrongState { .. }),
        "{error:?}"
    );
    manager.shutdown(ShutdownReason::Completed).await;
}

/// `on_shutdown` is told why it is called (`PluginContext::stopping`): a restart on request
/// and a replacement are followed by a new instance (`Replaced`), unlike a disable, a removal
/// or the manager's shutdown. The other hooks see `None`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_shutdown_is_told_whether_a_new_instance_follows() {
    type Seen = Arc<Mutex<Vec<(&'static str, Option<Stopping>)>>>;
    struct Tells(&'static str, Seen);
    impl Plugin for Tells {
        fn metadata(&self) -> PluginMetadata {
            PluginMetadata::new(self.0).hooks(Hook::Custom)
        }
        async fn on_start(&mut self, ctx: &mut PluginContext) -> Result<(), PluginError> {
            self.1.lock().unwrap().push(("start", ctx.stopping()));
            Ok(())
        }
        async fn on_event(
            &mut self,
            ctx: &mut PluginContext,
            _: &Event,
        ) -> Result<(), PluginError> {
            self.1.lock().unwrap().push(("event", ctx.stopping()));
            Ok(())
        }
        async fn on_shutdown(&mut self, ctx: &mut PluginContext) -> Result<(), PluginError> {
            self.1.lock().unwrap().push((self.0, ctx.stopping()));
            Ok(())
        }
    }
    let seen: Seen = Arc::default();
    let spec = |name: &'static str| {
        let seen = Arc::clone(&seen);
        PluginSpec::new(move || Tells(name, Arc::clone(&seen)))
    };
    let manager = PluginManager::builder()
        .spec(spec("a"))
        .spec(spec("b"))
        .spec(spec("c"))
        .spawn()
        .await
        .unwrap();
    manager
        .publish(EventKind::custom("x", serde_json::Value::Null))
        .await
        .unwrap();
    manager.flush().await;
    manager.restart("a").await.unwrap();
    manager.replace(spec("a")).await.unwrap();
    manager.disable("b").await.unwrap();
    manager.remove("c").await.unwrap();
    let shutdowns = |seen: &Seen| -> Vec<(&'static str, Option<Stopping>)> {
        let mut v: Vec<_> = seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(what, _)| !["start", "event"].contains(what))
            .copied()
            .collect();
        v.sort_by_key(|(name, _)| *name);
        v
    };
    assert_eq!(
        shutdowns(&seen),
        [
            ("a", Some(Stopping::Replaced)),
            ("a", Some(Stopping::Replaced)),
            ("b", Some(Stopping::Disabled)),
            ("c", Some(Stopping::Removed)),
        ]
    );
    manager.shutdown(ShutdownReason::Completed).await;
    // Only `a` still runs (`b` is disabled, `c` gone).
    assert_eq!(
        shutdowns(&seen),
        [
            ("a", Some(Stopping::Replaced)),
            ("a", Some(Stopping::Replaced)),
            ("a", Some(Stopping::Manager)),
            ("b", Some(Stopping::Disabled)),
            ("c", Some(Stopping::Removed)),
        ]
    );
    // The other hooks are not told anything.
    let others: Vec<_> = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|(what, _)| ["start", "event"].contains(what))
        .map(|(_, why)| *why)
        .collect();
    // Five starts (three, the restart's, the replacement's) and three events.
    assert_eq!(others.len(), 5 + 3, "{others:?}");
    assert!(others.iter().all(Option::is_none), "{others:?}");
}
