//! The manager's configuration and what it reports: plugin status, counters, listings and
//! the shutdown report.

use super::*;

/// Manager-wide defaults; each can be overridden per plugin on its [`PluginSpec`].
#[derive(Debug, Clone, TypedBuilder)]
#[non_exhaustive]
pub struct ManagerConfig {
    /// Events each plugin's queue holds before its overflow policy applies. Default 8192.
    #[builder(default = 8192)]
    pub queue_capacity: usize,
    /// What a full queue does. Default [`OverflowPolicy::Backpressure`].
    #[builder(default)]
    pub overflow: OverflowPolicy,
    /// How long one hook call may take before it counts as a failure. Default 30 s.
    #[builder(default = Duration::from_secs(30))]
    pub handler_timeout: Duration,
    /// What a failure leads to. Default [`RestartPolicy::Permanent`].
    #[builder(default)]
    pub restart_policy: RestartPolicy,
    /// Restarts allowed per window. Default 5 in 30 s.
    #[builder(default)]
    pub restart_budget: RestartBudget,
    /// Delay between restarts. Default 100 ms doubling to 10 s, equal jitter.
    #[builder(default)]
    pub backoff: Backoff,
    /// How long [`PluginManager::shutdown`] waits for queues to drain and plugins to stop.
    /// Default 30 s.
    #[builder(default = Duration::from_secs(30))]
    pub shutdown_timeout: Duration,
    /// Dead letters kept per plugin for inspection (all are counted). Default 1024.
    #[builder(default = 1024)]
    pub dead_letter_capacity: usize,
    /// The source stamped on events published through [`PluginManager::publish`] and
    /// [`PluginManager::bus`]. Default `"coordinator"`.
    #[builder(default = "coordinator".to_owned(), setter(into))]
    pub source: String,
}

impl Default for ManagerConfig {
    fn default() -> Self {
        Self::builder().build()
    }
}

/// The lifecycle state of a plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum PluginStatus {
    /// Its actor is running `on_start`.
    Starting,
    /// Receiving events.
    Running,
    /// Failed; waiting out the backoff before a restart. Events keep queueing.
    Restarting,
    /// Receives no events (restart budget spent, restart policy, or by request).
    Disabled,
    /// Stopped by the manager's shutdown.
    Stopped,
}

impl fmt::Display for PluginStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Restarting => "restarting",
            Self::Disabled => "disabled",
            Self::Stopped => "stopped",
        };
        f.write_str(s)
    }
}

/// Counters of one plugin. At every quiescent point (e.g. after [`PluginManager::flush`]):
/// `published == delivered + dropped + dead_lettered + queued`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[non_exhaustive]
pub struct PluginStats {
    /// Events routed to this plugin (it was subscribed and enabled).
    pub published: u64,
    /// Events its handler returned `Ok` for.
    pub delivered: u64,
    /// Events not enqueued because its queue was full ([`OverflowPolicy::DropNewest`]).
    pub dropped: u64,
    /// Events its handler failed on (panic, error, timeout).
    pub dead_lettered: u64,
    /// Events waiting in its queue (including the chunk being handled).
    pub queued: u64,
    /// Restarts after failures.
    pub restarts: u32,
    /// Failures of any hook.
    pub failures: u32,
    /// Total time spent in its handlers.
    pub handler_time: Duration,
}

impl PluginStats {
    /// Whether the conservation law holds (meaningful at quiescent points).
    pub fn is_conserved(&self) -> bool {
        self.published == self.delivered + self.dropped + self.dead_lettered + self.queued
    }
}

/// What [`PluginManager::list`] says about one plugin.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct PluginInfo {
    /// Its unique name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// Its kind.
    pub kind: PluginKind,
    /// The hooks it subscribes to.
    #[serde(skip)]
    pub hooks: HookSet,
    /// Its status.
    pub status: PluginStatus,
    /// The restart policy in force.
    pub restart_policy: RestartPolicy,
    /// The last failure, if any.
    pub last_error: Option<String>,
    /// Disabled by [`PluginManager::disable`](crate::PluginManager::disable) (a console
    /// button, an operator), not by its failures: hot reload leaves it disabled.
    pub disabled_on_request: bool,
    /// Its counters.
    pub stats: PluginStats,
}

/// What [`PluginManager::shutdown`] reports for one plugin.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct PluginShutdown {
    /// The plugin.
    pub name: String,
    /// Events still queued when it stopped (not delivered).
    pub left_in_queue: u64,
    /// A failure while draining or in `on_shutdown`, or a missed deadline.
    pub error: Option<String>,
    /// Its final counters.
    pub stats: PluginStats,
}

/// What [`PluginManager::shutdown`] returns.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// Per plugin, in reverse start order.
    pub plugins: Vec<PluginShutdown>,
    /// Whether every queue drained and every plugin stopped cleanly within the deadline.
    pub clean: bool,
}
