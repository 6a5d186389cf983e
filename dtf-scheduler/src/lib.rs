//! # dtf-scheduler
//!
//! Scheduler plugins for dtf: which task runs on which worker. A small scheduling framework
//! modelled on Kubernetes' (queue-sort, filter, score, bind), five built-in strategies chosen
//! by name, a coordinator that runs them as a plugin on the [`dtf_plugin_core`] bus, and a
//! deterministic simulator that measures fairness and wait times.
//!
//! ## Main types
//!
//! - [`Scheduler`]: the strategy trait, one method per extension point, all but `name`
//!   optional; [`TaskSpec`] (owner, priority, requirements, expected duration) and
//!   [`WorkerView`] (capabilities, slots, load) are what it sees.
//! - [`Engine`]: the queues (per-queue heaps, never scanned), the workers' load and the
//!   placement loop; pure logic on a caller's clock.
//! - [`Registry`]: names to factories — `fifo`, `priority`, `round-robin`, `fairness`,
//!   `longest-first` ([`strategies`]) and yours — built from a [`SchedulerConfig`].
//! - [`SchedulingCoordinator`]: the engine as a bus plugin: hears tasks and workers, publishes
//!   `TaskAssigned`, recovery events, and `Unschedulable` failures.
//! - [`sim`]: workloads (generated, recorded or hand-written), [`sim::simulate`] and its
//!   [`sim::Report`] (Jain's index, also over sliding windows, shares against weights and
//!   over time, wait percentiles, the longest gap a tenant with waiting work went without a
//!   placement, makespan, utilisation).
//!
//! ## Example
//!
//! ```
//! use std::time::Duration;
//! use dtf_plugin_core::prelude::*;
//! use dtf_scheduler::{Engine, Registry, SchedulerConfig, TaskSpec};
//!
//! let config = SchedulerConfig::new("fairness").weight("alice", 2.0);
//! let mut engine = Engine::new(Registry::new().build(&config)?);
//! engine.add_worker("gpu-1", Capabilities::builder().features(vec!["cuda".into()]).slots(2).build());
//! engine.add_worker("cpu-1", Capabilities::builder().cpu_cores(8).slots(2).build());
//!
//! let cuda = Requirements::builder().features(vec!["cuda".into()]).build();
//! let now = Duration::ZERO;
//! engine.submit(TaskSpec::builder().id("train").owner("alice").requirements(cuda).build(), now)?;
//! engine.submit(TaskSpec::builder().id("lint").owner("bob").build(), now)?;
//! let too_big = Requirements::builder().memory_mib(1 << 30).build();
//! engine.submit(TaskSpec::builder().id("huge").owner("bob").requirements(too_big).build(), now)?;
//!
//! let round = engine.schedule(now);
//! let placed: Vec<_> = round.placements.iter().map(|p| (p.task.as_str(), p.worker.as_str())).collect();
//! assert_eq!(placed, [("train", "gpu-1"), ("lint", "cpu-1")]); // hardware affinity
//! assert_eq!(round.unschedulable[0].id.as_str(), "huge");
//!
//! // Completing a task frees its slot for the next round.
//! engine.finish(&"lint".into(), Duration::from_secs(5))?;
//! assert_eq!(engine.running(), 1);
//! # Ok::<(), dtf_scheduler::SchedulerError>(())
//! ```
//!
//! ## Feature flags
//!
//! None. The crate depends on `dtf-plugin-core` and small utility crates only.
//!
//! ## Guarantees
//!
//! - **Safety.** A task is never placed twice at once, never on a worker lacking its
//!   requirements, never on a worker without a free slot, never on a worker out of service.
//! - **Nothing is dropped silently.** Every submitted task ends placed, finished, or reported
//!   unschedulable (no worker seen so far can ever run it).
//! - **Work-conserving.** After [`Engine::schedule`], no waiting task fits a free slot, unless
//!   the strategy holds it back on purpose (`fairness` quotas, a custom filter).
//! - **Determinism.** Same events, same decisions: ties break by arrival and worker
//!   registration order; the simulator's randomness is seeded.
//! - **Cost.** A placement decision is `O(log n)` in waiting tasks plus `O(queues + free
//!   workers)`; `O(log queues + free workers)` for a strategy that ranks its queues itself
//!   ([`Scheduler::ranks_queues`], as `fairness` does).
//!
//! The strategies' own guarantees (fair share, no starvation, with their bounds) and the
//! measured figures are in `docs/scheduler.md`.

#![forbid(unsafe_code)]
// On docs.rs (`--cfg docsrs`, nightly), items gated by a feature show a badge naming it.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod config;
mod coordinator;
mod engine;
mod error;
mod framework;
mod registry;
mod rng;
pub mod sim;
pub mod strategies;

pub use config::{
    DEFAULT_HALF_LIFE_HOURS, DEFAULT_RETRY_ELSEWHERE_SECS, SchedulerConfig, parse_weights,
};
pub use coordinator::SchedulingCoordinator;
pub use engine::{Engine, TaskStatus};
pub use error::SchedulerError;
pub use framework::{
    Placement, QueueHead, QueueId, Round, Scheduler, ScoreWeights, TaskSpec, WorkerView, earliest,
    is_label,
};
pub use registry::{Registry, SchedulerFactory};

/// Adds the scheduling coordinator to a plugin registry as `scheduler` (built in, disabled
/// unless configured). Its settings are a [`SchedulerConfig`], checked before start: an
/// unknown strategy or a bad value is reported with its position in the configuration file.
///
/// ```
/// use dtf_plugin_core::PluginRegistry;
/// let mut plugins = PluginRegistry::new();
/// dtf_scheduler::register(&mut plugins)?;
/// let entry = plugins.entry("scheduler")?;
/// assert!(entry.validate(&serde_json::json!({ "scheduler": "fairness" })).is_empty());
/// assert!(!entry.validate(&serde_json::json!({ "scheduler": "nope" })).is_empty());
/// # Ok::<(), dtf_plugin_core::RegistryError>(())
/// ```
///
/// # Errors
///
/// [`dtf_plugin_core::RegistryError::Duplicate`] when a plugin named `scheduler` is
/// already registered.
pub fn register(
    registry: &mut dtf_plugin_core::PluginRegistry,
) -> Result<(), dtf_plugin_core::RegistryError> {
    use std::sync::Arc;

    use dtf_plugin_core::{PluginSpec, RegistryEntry, RestartPolicy};

    let strategies = Arc::new(Registry::new());
    let check = Arc::clone(&strategies);
    registry.register(
        RegistryEntry::new(move || {
            // One hand-over per spec: a restarted instance goes on with the queue.
            PluginSpec::new(SchedulingCoordinator::factory(Arc::clone(&strategies)))
                .restart_policy(RestartPolicy::Transient)
        })
        .built_in("dtf-scheduler")
        .description("places tasks on workers with the configured strategy")
        .config_check::<SchedulerConfig>(move |config| {
            check.build(config).map(|_| ()).map_err(|e| e.to_string())
        }),
    )
}
