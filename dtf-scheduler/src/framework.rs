//! The scheduling framework: the [`Scheduler`] trait and the types its extension points see.

use std::borrow::Cow;
use std::time::Duration;

use dtf_plugin_core::event::{Priority, TaskCreated, TaskId, WorkerId};
use dtf_plugin_core::prelude::{Capabilities, Requirements};
use serde::{Deserialize, Serialize};
use typed_builder::TypedBuilder;

/// A task as the scheduler sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, TypedBuilder)]
#[non_exhaustive]
pub struct TaskSpec {
    /// The task.
    #[builder(setter(into))]
    pub id: TaskId,
    /// The tenant that owns it (fair-share schedulers group by it). Default empty.
    #[builder(default, setter(into))]
    #[serde(default)]
    pub owner: String,
    /// Higher runs first. Default 0.
    #[builder(default)]
    #[serde(default)]
    pub priority: Priority,
    /// What a worker must offer to run it. Default: nothing.
    #[builder(default)]
    #[serde(default)]
    pub requirements: Requirements,
    /// Expected run time, if known. Default unknown.
    #[builder(default, setter(strip_option))]
    #[serde(default)]
    pub expected_duration: Option<Duration>,
}

impl From<&TaskCreated> for TaskSpec {
    fn from(t: &TaskCreated) -> Self {
        Self {
            id: t.task.clone(),
            owner: t.owner.clone(),
            priority: t.priority,
            requirements: t.requirements.clone(),
            expected_duration: t.expected_duration,
        }
    }
}

/// A worker as the filter and score extension points see it.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct WorkerView<'a> {
    /// The worker.
    pub id: &'a WorkerId,
    /// What it offers; `capabilities.slots` is its capacity.
    pub capabilities: &'a Capabilities,
    /// How many tasks it runs now.
    pub running: u32,
}

impl WorkerView<'_> {
    /// Slots not in use.
    pub fn free_slots(&self) -> u32 {
        self.capabilities.slots.saturating_sub(self.running)
    }
}

/// Identifies one queue of an [`Engine`](crate::Engine); stable for the engine's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueId(pub u32);

impl QueueId {
    /// The id as an index (queues are numbered from 0 in creation order).
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// The head of one queue that has a task able to run on a free worker now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueHead {
    /// The queue.
    pub queue: QueueId,
    /// The head task's [`Scheduler::sort_key`].
    pub key: i128,
    /// The head task's arrival number (submission order, kept across re-queues).
    pub arrival: u64,
    /// When the head task was submitted.
    pub enqueued_at: Duration,
    /// Tasks waiting in this queue.
    pub waiting: usize,
    /// Tasks of this queue running now.
    pub running: usize,
}

/// The index of the head with the smallest `(key, arrival)`: the default [`Scheduler::pick`].
pub fn earliest(heads: &[QueueHead]) -> Option<usize> {
    (0..heads.len()).min_by_key(|&i| (heads[i].key, heads[i].arrival))
}

/// A scheduling strategy: the extension points of one placement decision, modelled on the
/// Kubernetes scheduling framework and kept small.
///
/// The [`Engine`](crate::Engine) owns the queues and the workers and calls the extension points
/// in this order:
///
/// 1. **queue-sort** — [`queue`](Scheduler::queue) names the queue a task waits in (one shared
///    queue, or one per tenant) and [`sort_key`](Scheduler::sort_key) orders it inside that
///    queue, once, when the task is submitted; [`pick`](Scheduler::pick) chooses which queue's
///    head goes next;
/// 2. **filter** — the engine drops workers that are out of service, full, or lack the task's
///    requirements (cpu, memory, features such as `cuda`, `rocm`, `webgpu`);
///    [`filter`](Scheduler::filter) may drop more;
/// 3. **score** — [`score`](Scheduler::score) ranks the workers left (by default a weighted sum
///    of the built-in scores in [`ScoreWeights`]); the highest wins, ties go to the worker
///    registered first;
/// 4. **bind** — the engine records the placement and calls [`on_bind`](Scheduler::on_bind);
///    when the task leaves the worker it calls [`on_release`](Scheduler::on_release).
///
/// Only [`name`](Scheduler::name) is required; with the defaults a scheduler is FIFO over one
/// shared queue, places on the best worker by [`ScoreWeights::default`], and keeps no state.
/// Implementations must be deterministic for the simulator to be.
///
/// ```
/// use std::time::Duration;
/// use dtf_scheduler::{Scheduler, TaskSpec};
///
/// /// Shortest expected duration first (unknown durations last).
/// struct ShortestFirst;
///
/// impl Scheduler for ShortestFirst {
///     fn name(&self) -> &str {
///         "shortest-first"
///     }
///
///     fn sort_key(&self, task: &TaskSpec, _enqueued_at: Duration) -> i128 {
///         task.expected_duration.map_or(i128::MAX, |d| d.as_millis() as i128)
///     }
/// }
/// ```
pub trait Scheduler: Send {
    /// The strategy's name, for logs and reports.
    fn name(&self) -> &str;

    /// Queue-sort: the name of the queue `task` waits in. Default: one shared queue (`""`).
    /// Fair-share strategies return the owner (`round-robin`: one queue per tenant) or more
    /// (`fairness`: one per tenant and resource pool); a name may be built (`Cow::Owned`).
    fn queue<'t>(&self, task: &'t TaskSpec) -> Cow<'t, str> {
        let _ = task;
        Cow::Borrowed("")
    }

    /// Called once per queue, when the first task names it, before any other call about it.
    fn on_queue_created(&mut self, queue: QueueId, name: &str) {
        let _ = (queue, name);
    }

    /// Queue-sort: the task's order inside its queue, computed once when it is submitted
    /// (a re-queued task keeps its key); lower goes first, ties in arrival order. Default 0:
    /// FIFO.
    fn sort_key(&self, task: &TaskSpec, enqueued_at: Duration) -> i128 {
        let _ = (task, enqueued_at);
        0
    }

    /// Queue-sort: which queue's head is placed next. `heads` holds one entry per queue whose
    /// head task can run on a free worker now, in queue-id order. `None` places nothing more
    /// in this round (e.g. every candidate is over its quota). Default: [`earliest`].
    fn pick(&mut self, heads: &[QueueHead], now: Duration) -> Option<usize> {
        let _ = now;
        earliest(heads)
    }

    /// Queue-sort for many queues: whether the strategy keeps the queues in its own order.
    /// Then the engine asks [`next_queue`](Scheduler::next_queue) instead of
    /// [`pick`](Scheduler::pick) and never lists the heads of every queue, so a decision costs
    /// what the strategy's order costs (`fairness`: `O(log queues)`). Default false.
    fn ranks_queues(&self) -> bool {
        false
    }

    /// A queue now has waiting tasks (`waiting` true) or has none left (false). Called for
    /// every strategy, at the moment of the change; `now` is the engine's clock.
    fn on_queue_waiting(&mut self, queue: QueueId, waiting: bool, now: Duration) {
        let _ = (queue, waiting, now);
    }

    /// Queue-sort, when [`ranks_queues`](Scheduler::ranks_queues): offers queues in the
    /// strategy's order to `runnable`, which answers whether that queue's head task can run on
    /// a free worker now, and returns the queue to place from (one `runnable` accepted).
    /// `None` places nothing more in this round. Default `None`.
    fn next_queue(
        &mut self,
        now: Duration,
        runnable: &mut dyn FnMut(QueueId) -> bool,
    ) -> Option<QueueId> {
        let _ = (now, runnable);
        None
    }

    /// Filter: whether `task` may run on `worker`. The engine has already dropped workers that
    /// are down, full or lack the task's requirements. Default: every such worker.
    fn filter(&self, task: &TaskSpec, worker: &WorkerView<'_>) -> bool {
        let _ = (task, worker);
        true
    }

    /// Score: how good `worker` is for `task`; the highest wins. Default: the weighted sum of
    /// [`ScoreWeights::default`].
    fn score(&self, task: &TaskSpec, worker: &WorkerView<'_>) -> i64 {
        ScoreWeights::default().score(task, worker)
    }

    /// Bind: `task`, from `queue`, was placed on `worker` (its view before the placement).
    fn on_bind(&mut self, task: &TaskSpec, queue: QueueId, worker: &WorkerView<'_>, now: Duration) {
        let _ = (task, queue, worker, now);
    }

    /// A placed task left its worker after `ran_for`: it finished, failed, was cancelled, or
    /// its worker was lost (the task is then queued again).
    fn on_release(&mut self, task: &TaskSpec, queue: QueueId, ran_for: Duration, now: Duration) {
        let _ = (task, queue, ran_for, now);
    }
}

/// Whether a feature is a label (`key=value`, e.g. `zone=eu`: where a worker is or what it is
/// for), not hardware such as `cuda`. A remote worker's labels reach the scheduler as such
/// features (`dtf-cluster`). Labels can be required like any feature, but they do not make a
/// worker scarce: a labelled worker is no accelerator for [`ScoreWeights::feature_fit`] or for
/// `fairness`'s pools.
pub fn is_label(feature: &str) -> bool {
    feature.contains('=')
}

/// Weights of the built-in scores, each worth 0 to 100 points per unit of weight.
///
/// - `least_allocated`: the fraction of the worker's slots that are free (spreads load);
/// - `most_allocated`: the fraction in use (packs work onto few workers);
/// - `feature_fit`: 100 when the worker offers no feature the task did not ask for, less the
///   more unrequested features it has (keeps `cuda`/`rocm` workers for tasks that need them);
///   labels ([`is_label`]) do not count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ScoreWeights {
    /// Weight of the spread score. Default 1.
    pub least_allocated: u32,
    /// Weight of the packing score. Default 0.
    pub most_allocated: u32,
    /// Weight of the hardware-affinity score. Default 2.
    pub feature_fit: u32,
}

impl Default for ScoreWeights {
    fn default() -> Self {
        Self {
            least_allocated: 1,
            most_allocated: 0,
            feature_fit: 2,
        }
    }
}

impl ScoreWeights {
    /// Packs work onto few workers: `most_allocated` 1, `least_allocated` 0, `feature_fit` 2.
    pub const PACK: ScoreWeights = ScoreWeights {
        least_allocated: 0,
        most_allocated: 1,
        feature_fit: 2,
    };

    /// Sets the spread weight.
    pub fn least_allocated(mut self, weight: u32) -> Self {
        self.least_allocated = weight;
        self
    }

    /// Sets the packing weight.
    pub fn most_allocated(mut self, weight: u32) -> Self {
        self.most_allocated = weight;
        self
    }

    /// Sets the hardware-affinity weight.
    pub fn feature_fit(mut self, weight: u32) -> Self {
        self.feature_fit = weight;
        self
    }

    /// The weighted score of `worker` for `task`.
    pub fn score(&self, task: &TaskSpec, worker: &WorkerView<'_>) -> i64 {
        let slots = i64::from(worker.capabilities.slots.max(1));
        let free = 100 * i64::from(worker.free_slots()) / slots;
        let extra = worker
            .capabilities
            .features
            .iter()
            .filter(|f| !is_label(f) && !task.requirements.features.contains(f))
            .count();
        let fit = 100 / (1 + extra as i64);
        i64::from(self.least_allocated) * free
            + i64::from(self.most_allocated) * (100 - free)
            + i64::from(self.feature_fit) * fit
    }
}

/// One task bound to one worker.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Placement {
    /// The task.
    pub task: TaskId,
    /// The worker.
    pub worker: WorkerId,
    /// The attempt this placement starts, from 1.
    pub attempt: u32,
}

/// What one [`Engine::schedule`](crate::Engine::schedule) call decided.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct Round {
    /// New placements, in decision order.
    pub placements: Vec<Placement>,
    /// Tasks removed because no worker seen so far can satisfy their requirements.
    pub unschedulable: Vec<TaskSpec>,
}
