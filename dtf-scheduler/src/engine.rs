//! The scheduling engine: the queues, the workers' load and the placement loop.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::fmt;
use std::time::Duration;

use dtf_plugin_core::event::{TaskId, WorkerId};
use dtf_plugin_core::prelude::{Capabilities, Requirements};

use crate::error::SchedulerError;
use crate::framework::{Placement, QueueHead, QueueId, Round, Scheduler, TaskSpec, WorkerView};

/// Queues, workers and the placement loop, driven by a [`Scheduler`] strategy.
///
/// The engine is pure logic on a caller-supplied clock (`now`, a [`Duration`] since any fixed
/// origin, never decreasing): the [`SchedulingCoordinator`](crate::SchedulingCoordinator) feeds
/// it bus events, the [`simulate`](crate::sim::simulate) function a virtual clock. Submitting a
/// task or freeing a slot changes nothing by itself; [`schedule`](Self::schedule) then places
/// what it can.
///
/// # Cost
///
/// Tasks wait in binary heaps, one per (queue, requirement set), so a placement decision costs
/// `O(log n)` in the number of waiting tasks, plus `O(q)` in the number of queues with waiting
/// work and `O(f)` in the number of workers with a free slot — never a scan of the waiting
/// tasks.
pub struct Engine {
    scheduler: Box<dyn Scheduler>,
    tasks: Vec<Option<Task>>,
    vacant: Vec<u32>,
    task_index: HashMap<TaskId, u32>,
    /// Submitted but not yet checked against the known workers.
    fresh: Vec<u32>,
    queues: Vec<Queue>,
    queue_index: HashMap<String, QueueId>,
    shapes: Vec<Shape>,
    shape_index: HashMap<ShapeKey, u32>,
    workers: Vec<Worker>,
    worker_index: HashMap<WorkerId, u32>,
    free: FreeSet,
    arrivals: u64,
    tickets: u64,
    /// Some queued task may have no known worker able to run it any more.
    sweep: bool,
    waiting: usize,
    running: usize,
    // Scratch space reused by every decision, so a decision allocates nothing.
    heads: Vec<QueueHead>,
    head_lanes: Vec<usize>,
    fits: Vec<Fit>,
    /// How long a taken-back task waits for a worker other than its last one
    /// ([`Engine::retry_elsewhere`]).
    retry_elsewhere: Duration,
    /// The earliest time a task held back in the last round for another worker stops
    /// waiting ([`Engine::hold_until`]).
    hold_until: Option<Duration>,
}

struct Task {
    spec: TaskSpec,
    queue: QueueId,
    shape: u32,
    key: i128,
    arrival: u64,
    enqueued_at: Duration,
    attempts: u32,
    /// The worker its last attempt ran on, when that attempt was taken back (a retry or a
    /// lost worker): the next placement prefers any other worker that can take it.
    avoid: Option<u32>,
    /// When that attempt was taken back (engine time).
    taken_back_at: Duration,
    state: State,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Fresh,
    /// Waiting in a lane under this ticket; older tickets of the task are stale.
    Queued(u64),
    /// Taken out of its lane during a round.
    Parked,
    Running {
        worker: u32,
        since: Duration,
    },
}

/// One queue: a lane (heap) per requirement set, so that the head of every lane can be
/// checked against the free workers without looking behind it.
struct Queue {
    lanes: Vec<Lane>,
    waiting: usize,
    running: usize,
}

struct Lane {
    shape: u32,
    heap: BinaryHeap<Reverse<Ticket>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Ticket {
    key: i128,
    arrival: u64,
    ticket: u64,
    task: u32,
}

/// A distinct requirement set.
struct Shape {
    requirements: Requirements,
    /// Whether some worker seen so far (in service or not) could run it.
    ever_fits: bool,
}

type ShapeKey = (u32, u64, Vec<String>);

struct Worker {
    id: WorkerId,
    capabilities: Capabilities,
    running: Vec<u32>,
    up: bool,
}

impl Worker {
    fn view(&self) -> WorkerView<'_> {
        WorkerView {
            id: &self.id,
            capabilities: &self.capabilities,
            running: self.running.len() as u32,
        }
    }

    fn has_room(&self) -> bool {
        self.up && (self.running.len() as u32) < self.capabilities.slots
    }
}

/// Whether a requirement set fits a free worker, cached while the free set only shrinks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fit {
    Unknown,
    Yes,
    No,
}

/// The workers with a free slot: O(1) insert, remove and membership.
#[derive(Default)]
struct FreeSet {
    items: Vec<u32>,
    /// Position + 1 in `items`, 0 when absent.
    pos: Vec<u32>,
}

impl FreeSet {
    /// Adds or removes `w`; true when it was removed.
    fn set(&mut self, w: u32, free: bool) -> bool {
        let wi = w as usize;
        if self.pos.len() <= wi {
            self.pos.resize(wi + 1, 0);
        }
        match (self.pos[wi], free) {
            (0, true) => {
                self.items.push(w);
                self.pos[wi] = self.items.len() as u32;
                false
            }
            (p, false) if p != 0 => {
                let i = (p - 1) as usize;
                self.items.swap_remove(i);
                if let Some(&moved) = self.items.get(i) {
                    self.pos[moved as usize] = p;
                }
                self.pos[wi] = 0;
                true
            }
            _ => false,
        }
    }
}

/// Where a task is, as [`Engine::task`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TaskStatus<'a> {
    /// Waiting for a worker.
    Waiting,
    /// Placed on `worker`, for attempt `attempt`.
    Running {
        /// The worker.
        worker: &'a WorkerId,
        /// The attempt, from 1.
        attempt: u32,
    },
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("scheduler", &self.scheduler.name())
            .field("waiting", &self.waiting())
            .field("running", &self.running)
            .field("workers", &self.workers.len())
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// An engine with no task and no worker, placing with `scheduler`.
    pub fn new(scheduler: Box<dyn Scheduler>) -> Self {
        Self {
            scheduler,
            tasks: Vec::new(),
            vacant: Vec::new(),
            task_index: HashMap::new(),
            fresh: Vec::new(),
            queues: Vec::new(),
            queue_index: HashMap::new(),
            shapes: Vec::new(),
            shape_index: HashMap::new(),
            workers: Vec::new(),
            worker_index: HashMap::new(),
            free: FreeSet::default(),
            arrivals: 0,
            tickets: 0,
            sweep: false,
            waiting: 0,
            running: 0,
            heads: Vec::new(),
            head_lanes: Vec::new(),
            fits: Vec::new(),
            retry_elsewhere: Duration::ZERO,
            hold_until: None,
        }
    }

    /// How long a task taken back from a worker (a retry, a lost worker) may wait for another
    /// worker able to run it, while that worker is busy, instead of going straight back to
    /// the one it left when that one is the only free worker. Default zero: placement is
    /// work-conserving and a retry goes back at once (it still prefers another *free*
    /// worker). With a wait, the task is held only while some other worker in service could
    /// run it, and at most `wait` after it was taken back; other tasks use the free worker
    /// meanwhile. The caller must run a round once [`hold_until`](Self::hold_until) has
    /// passed (the [`SchedulingCoordinator`](crate::SchedulingCoordinator) does).
    pub fn retry_elsewhere(mut self, wait: Duration) -> Self {
        self.retry_elsewhere = wait;
        self
    }

    /// When the earliest task held back by the last [`schedule`](Self::schedule) for another
    /// worker ([`retry_elsewhere`](Self::retry_elsewhere)) stops waiting, if one was held.
    pub fn hold_until(&self) -> Option<Duration> {
        self.hold_until
    }

    /// The strategy's name.
    pub fn scheduler_name(&self) -> &str {
        self.scheduler.name()
    }

    /// Registers a worker, or puts a known one back in service with new capabilities (the
    /// tasks it still runs stay on it). `capabilities.slots` is its capacity. If the new
    /// capabilities leave waiting tasks with no known worker able to run them, the next
    /// [`schedule`](Self::schedule) reports them unschedulable.
    pub fn add_worker(&mut self, id: impl Into<WorkerId>, capabilities: Capabilities) {
        let id = id.into();
        let w = match self.worker_index.get(&id) {
            Some(&w) => {
                let worker = &mut self.workers[w as usize];
                let changed = worker.capabilities != capabilities;
                worker.capabilities = capabilities;
                worker.up = true;
                if changed {
                    // Capabilities may have shrunk: judge every requirement set again.
                    for shape in &mut self.shapes {
                        let fits = self
                            .workers
                            .iter()
                            .any(|w| can_ever_run(&w.capabilities, &shape.requirements));
                        self.sweep |= shape.ever_fits && !fits;
                        shape.ever_fits = fits;
                    }
                }
                w
            }
            None => {
                let w = self.workers.len() as u32;
                for shape in self.shapes.iter_mut().filter(|s| !s.ever_fits) {
                    shape.ever_fits = can_ever_run(&capabilities, &shape.requirements);
                }
                self.worker_index.insert(id.clone(), w);
                self.workers.push(Worker {
                    id,
                    capabilities,
                    running: Vec::new(),
                    up: true,
                });
                w
            }
        };
        self.refresh_free(w);
    }

    /// Takes a worker out of service (it failed or disconnected) and queues its tasks again,
    /// keeping their place in their queues. Returns the re-queued tasks. The worker still
    /// counts when judging whether a task can ever run, since it may recover.
    ///
    /// # Errors
    ///
    /// [`SchedulerError::UnknownWorker`] if no worker has this id.
    pub fn lose_worker(
        &mut self,
        id: &WorkerId,
        now: Duration,
    ) -> Result<Vec<TaskId>, SchedulerError> {
        let w = self.worker_id(id)?;
        self.workers[w as usize].up = false;
        self.refresh_free(w);
        let lost = self.workers[w as usize].running.clone();
        let mut requeued = Vec::with_capacity(lost.len());
        for t in lost {
            self.unbind(t, now);
            self.enqueue(t, now);
            if let Some(task) = &self.tasks[t as usize] {
                requeued.push(task.spec.id.clone());
            }
        }
        Ok(requeued)
    }

    /// Takes a worker out of service without taking its tasks away: it disconnected and may
    /// come back (a remote worker within its reconnect grace, docs/cluster.md). Nothing new
    /// is placed on it until [`recover_worker`](Self::recover_worker); its running tasks stay
    /// bound to it until they finish or [`lose_worker`](Self::lose_worker) re-queues them.
    ///
    /// # Errors
    ///
    /// [`SchedulerError::UnknownWorker`] if no worker has this id.
    pub fn suspend_worker(&mut self, id: &WorkerId) -> Result<(), SchedulerError> {
        let w = self.worker_id(id)?;
        self.workers[w as usize].up = false;
        self.refresh_free(w);
        Ok(())
    }

    /// Puts a lost worker back in service, with the capabilities it had.
    ///
    /// # Errors
    ///
    /// [`SchedulerError::UnknownWorker`] if no worker has this id.
    pub fn recover_worker(&mut self, id: &WorkerId) -> Result<(), SchedulerError> {
        let w = self.worker_id(id)?;
        self.workers[w as usize].up = true;
        self.refresh_free(w);
        Ok(())
    }

    /// Adds a task to its queue. It is checked against the known workers, and placed, by the
    /// next [`schedule`](Self::schedule).
    ///
    /// # Errors
    ///
    /// [`SchedulerError::DuplicateTask`] if a task with this id is waiting or running.
    pub fn submit(&mut self, spec: TaskSpec, now: Duration) -> Result<(), SchedulerError> {
        if self.task_index.contains_key(&spec.id) {
            return Err(SchedulerError::DuplicateTask(spec.id));
        }
        let name = self.scheduler.queue(&spec);
        let name = name.as_ref();
        let queue = match self.queue_index.get(name) {
            Some(&q) => q,
            None => {
                let q = QueueId(self.queues.len() as u32);
                self.queue_index.insert(name.to_owned(), q);
                self.queues.push(Queue {
                    lanes: Vec::new(),
                    waiting: 0,
                    running: 0,
                });
                self.scheduler.on_queue_created(q, name);
                q
            }
        };
        let shape = self.intern_shape(&spec.requirements);
        let task = Task {
            key: self.scheduler.sort_key(&spec, now),
            queue,
            shape,
            arrival: self.arrivals,
            enqueued_at: now,
            attempts: 0,
            avoid: None,
            taken_back_at: Duration::ZERO,
            state: State::Fresh,
            spec,
        };
        self.arrivals += 1;
        let id = task.spec.id.clone();
        let t = match self.vacant.pop() {
            Some(t) => {
                self.tasks[t as usize] = Some(task);
                t
            }
            None => {
                self.tasks.push(Some(task));
                (self.tasks.len() - 1) as u32
            }
        };
        self.task_index.insert(id, t);
        self.fresh.push(t);
        Ok(())
    }

    /// Forgets a task for good — it completed, failed for the last time, or was cancelled —
    /// freeing its slot if it was running. Returns its spec.
    ///
    /// # Errors
    ///
    /// [`SchedulerError::UnknownTask`] if no waiting or running task has this id.
    pub fn finish(&mut self, id: &TaskId, now: Duration) -> Result<TaskSpec, SchedulerError> {
        let t = self.task_id(id)?;
        match self.state(t) {
            Some(State::Running { .. }) => self.unbind(t, now),
            Some(State::Queued(_)) => self.dequeued(t, now),
            Some(State::Fresh) => self.fresh.retain(|&f| f != t),
            _ => {}
        }
        self.remove(t)
            .ok_or_else(|| SchedulerError::UnknownTask(id.clone()))
    }

    /// Queues a running task again for another attempt (a retryable failure), keeping its
    /// place in its queue. A waiting task stays as it is.
    ///
    /// # Errors
    ///
    /// [`SchedulerError::UnknownTask`] if no waiting or running task has this id.
    pub fn retry(&mut self, id: &TaskId, now: Duration) -> Result<(), SchedulerError> {
        let t = self.task_id(id)?;
        if let Some(State::Running { .. }) = self.state(t) {
            self.unbind(t, now);
            self.enqueue(t, now);
        }
        Ok(())
    }

    /// Places waiting tasks on free workers until no waiting task fits a free slot or the
    /// strategy stops, and removes the tasks no known worker can run.
    ///
    /// With a strategy whose [`filter`](Scheduler::filter) accepts every worker and whose
    /// [`pick`](Scheduler::pick) never declines, and with no
    /// [`retry_elsewhere`](Self::retry_elsewhere) wait (the default), it is work-conserving:
    /// afterwards no waiting task fits a free slot.
    pub fn schedule(&mut self, now: Duration) -> Round {
        let mut round = Round::default();
        self.hold_until = None;
        self.admit(&mut round, now);
        self.fits.clear();
        self.fits.resize(self.shapes.len(), Fit::Unknown);
        let mut parked = Vec::new();
        let ranked = self.scheduler.ranks_queues();
        while self.waiting > 0 && !self.free.items.is_empty() {
            let next = if ranked {
                self.next_ranked(now)
            } else {
                self.next_picked(now)
            };
            let Some((q, lane)) = next else {
                break;
            };
            let Some(Reverse(ticket)) = self.queues[q].lanes[lane].heap.pop() else {
                break;
            };
            let t = ticket.task;
            self.dequeued(t, now);
            self.set_state(t, State::Parked);
            match self.best_worker(t, now) {
                Some(w) => self.bind(t, w, now, &mut round),
                None => parked.push(t),
            }
        }
        for t in parked {
            self.enqueue(t, now);
        }
        round
    }

    /// How many tasks wait (including those submitted since the last round).
    pub fn waiting(&self) -> usize {
        self.waiting + self.fresh.len()
    }

    /// How many tasks run.
    pub fn running(&self) -> usize {
        self.running
    }

    /// How many attempts of a waiting or running task were placed so far (0 before its first).
    pub fn attempts(&self, id: &TaskId) -> Option<u32> {
        Some(
            self.tasks[*self.task_index.get(id)? as usize]
                .as_ref()?
                .attempts,
        )
    }

    /// Where a task is, if it is waiting or running.
    pub fn task(&self, id: &TaskId) -> Option<TaskStatus<'_>> {
        let task = self.tasks[*self.task_index.get(id)? as usize].as_ref()?;
        Some(match task.state {
            State::Running { worker, .. } => TaskStatus::Running {
                worker: &self.workers[worker as usize].id,
                attempt: task.attempts,
            },
            _ => TaskStatus::Waiting,
        })
    }

    /// The waiting tasks, in no particular order (a scan: for tests and diagnostics).
    pub fn waiting_tasks(&self) -> impl Iterator<Item = &TaskSpec> {
        self.tasks
            .iter()
            .flatten()
            .filter(|t| !matches!(t.state, State::Running { .. }))
            .map(|t| &t.spec)
    }

    /// The workers in service, in registration order.
    pub fn workers(&self) -> impl Iterator<Item = WorkerView<'_>> {
        self.workers.iter().filter(|w| w.up).map(Worker::view)
    }

    fn worker_id(&self, id: &WorkerId) -> Result<u32, SchedulerError> {
        self.worker_index
            .get(id)
            .copied()
            .ok_or_else(|| SchedulerError::UnknownWorker(id.clone()))
    }

    fn task_id(&self, id: &TaskId) -> Result<u32, SchedulerError> {
        self.task_index
            .get(id)
            .copied()
            .ok_or_else(|| SchedulerError::UnknownTask(id.clone()))
    }

    fn state(&self, t: u32) -> Option<State> {
        self.tasks[t as usize].as_ref().map(|task| task.state)
    }

    fn set_state(&mut self, t: u32, state: State) {
        if let Some(task) = &mut self.tasks[t as usize] {
            task.state = state;
        }
    }

    fn intern_shape(&mut self, req: &Requirements) -> u32 {
        let mut features = req.features.clone();
        features.sort_unstable();
        features.dedup();
        let key = (req.cpu_cores, req.memory_mib, features);
        if let Some(&s) = self.shape_index.get(&key) {
            return s;
        }
        let s = self.shapes.len() as u32;
        self.shapes.push(Shape {
            requirements: req.clone(),
            ever_fits: self
                .workers
                .iter()
                .any(|w| can_ever_run(&w.capabilities, req)),
        });
        self.shape_index.insert(key, s);
        s
    }

    /// Moves fresh tasks into their queues, or out as unschedulable, and takes queued tasks
    /// no known worker can run any more out. Waits for the first worker: with none known,
    /// nothing can be judged.
    fn admit(&mut self, round: &mut Round, now: Duration) {
        if self.workers.is_empty() {
            return;
        }
        if std::mem::take(&mut self.sweep) {
            let mut gone = Vec::new();
            for queue in &mut self.queues {
                for lane in &mut queue.lanes {
                    if !self.shapes[lane.shape as usize].ever_fits {
                        gone.extend(lane.heap.drain().map(|Reverse(t)| t));
                    }
                }
            }
            for ticket in gone {
                let t = ticket.task;
                if self.state(t) == Some(State::Queued(ticket.ticket)) {
                    self.dequeued(t, now);
                    if let Some(spec) = self.remove(t) {
                        round.unschedulable.push(spec);
                    }
                }
            }
        }
        // Reuse the buffer: a decision should not allocate.
        let mut fresh = std::mem::take(&mut self.fresh);
        for &t in &fresh {
            let Some(task) = &self.tasks[t as usize] else {
                continue;
            };
            if task.state != State::Fresh {
                continue;
            }
            if self.shapes[task.shape as usize].ever_fits {
                self.enqueue(t, now);
            } else if let Some(spec) = self.remove(t) {
                tracing::debug!(task = %spec.id, "no known worker can run the task");
                round.unschedulable.push(spec);
            }
        }
        fresh.clear();
        self.fresh = fresh;
    }

    fn enqueue(&mut self, t: u32, now: Duration) {
        let ticket = self.tickets;
        self.tickets += 1;
        let Some(task) = &mut self.tasks[t as usize] else {
            return;
        };
        task.state = State::Queued(ticket);
        // A re-queued task whose requirements no known worker meets any more must be reported.
        self.sweep |= !self.shapes[task.shape as usize].ever_fits;
        let queue = &mut self.queues[task.queue.index()];
        let entry = Reverse(Ticket {
            key: task.key,
            arrival: task.arrival,
            ticket,
            task: t,
        });
        match queue.lanes.iter_mut().find(|l| l.shape == task.shape) {
            Some(lane) => lane.heap.push(entry),
            None => queue.lanes.push(Lane {
                shape: task.shape,
                heap: BinaryHeap::from(vec![entry]),
            }),
        }
        queue.waiting += 1;
        self.waiting += 1;
        if queue.waiting == 1 {
            self.scheduler.on_queue_waiting(task.queue, true, now);
        }
    }

    /// Bookkeeping for a queued task leaving its queue (its heap entry goes stale or was popped).
    fn dequeued(&mut self, t: u32, now: Duration) {
        if let Some(task) = &self.tasks[t as usize] {
            let queue = &mut self.queues[task.queue.index()];
            queue.waiting -= 1;
            self.waiting -= 1;
            if queue.waiting == 0 {
                self.scheduler.on_queue_waiting(task.queue, false, now);
            }
        }
    }

    fn remove(&mut self, t: u32) -> Option<TaskSpec> {
        let task = self.tasks[t as usize].take()?;
        self.vacant.push(t);
        self.task_index.remove(&task.spec.id);
        Some(task.spec)
    }

    /// The queue and lane to place from next, as the strategy's `pick` chooses among the
    /// runnable heads of every queue.
    fn next_picked(&mut self, now: Duration) -> Option<(usize, usize)> {
        self.collect_heads();
        if self.heads.is_empty() {
            return None;
        }
        let i = self.scheduler.pick(&self.heads, now)?;
        let (Some(head), Some(&lane)) = (self.heads.get(i), self.head_lanes.get(i)) else {
            tracing::warn!(
                scheduler = self.scheduler.name(),
                index = i,
                "pick returned an index out of range"
            );
            return None;
        };
        Some((head.queue.index(), lane))
    }

    /// The queue and lane to place from next, as the strategy's own queue order offers them:
    /// only the queues it offers are looked at.
    fn next_ranked(&mut self, now: Duration) -> Option<(usize, usize)> {
        let Self {
            scheduler,
            tasks,
            queues,
            shapes,
            workers,
            free,
            fits,
            ..
        } = self;
        let ctx = HeadContext {
            tasks,
            shapes,
            workers,
            free,
        };
        let mut found = None;
        let picked = scheduler.next_queue(now, &mut |q| {
            let lane = queues
                .get_mut(q.index())
                .and_then(|queue| runnable_head(&ctx, queue, fits))
                .map(|(_, lane)| lane);
            if let Some(lane) = lane {
                found = Some((q.index(), lane));
            }
            lane.is_some()
        })?;
        match found {
            Some((q, lane)) if q == picked.index() => Some((q, lane)),
            _ => {
                let queue = queues.get_mut(picked.index())?;
                let lane = runnable_head(&ctx, queue, fits).map(|(_, lane)| lane);
                if lane.is_none() {
                    tracing::warn!(
                        scheduler = scheduler.name(),
                        queue = picked.0,
                        "next_queue returned a queue with no runnable head"
                    );
                }
                Some((picked.index(), lane?))
            }
        }
    }

    /// Fills `heads` with the best runnable head of each queue, dropping stale heap entries.
    fn collect_heads(&mut self) {
        let Self {
            tasks,
            queues,
            shapes,
            workers,
            free,
            heads,
            head_lanes,
            fits,
            ..
        } = self;
        let ctx = HeadContext {
            tasks,
            shapes,
            workers,
            free,
        };
        heads.clear();
        head_lanes.clear();
        for (q, queue) in queues.iter_mut().enumerate() {
            if let Some((top, lane)) = runnable_head(&ctx, queue, fits) {
                let enqueued_at = ctx.tasks[top.task as usize]
                    .as_ref()
                    .map_or(Duration::ZERO, |t| t.enqueued_at);
                heads.push(QueueHead {
                    queue: QueueId(q as u32),
                    key: top.key,
                    arrival: top.arrival,
                    enqueued_at,
                    waiting: queue.waiting,
                    running: queue.running,
                });
                head_lanes.push(lane);
            }
        }
    }

    /// Filter and score over the free workers; ties go to the worker registered first.
    ///
    /// Anti-affinity: a task taken back from a worker (a retry, a lost worker) goes to another
    /// free worker that passes the filter whenever there is one, whatever the scores; when
    /// none is free it goes back to the same worker, unless another worker in service could
    /// run it and the task has waited less than [`Engine::retry_elsewhere`] since it was
    /// taken back: then it is held for that worker (and `hold_until` records when it stops
    /// waiting).
    fn best_worker(&mut self, t: u32, now: Duration) -> Option<u32> {
        let task = self.tasks[t as usize].as_ref()?;
        let spec = &task.spec;
        let mut best: Option<(i64, u32)> = None;
        let mut same: Option<u32> = None;
        for &w in &self.free.items {
            let worker = &self.workers[w as usize];
            if !worker.capabilities.satisfies(&spec.requirements) {
                continue;
            }
            let view = worker.view();
            if !self.scheduler.filter(spec, &view) {
                continue;
            }
            if task.avoid == Some(w) {
                same = Some(w);
                continue;
            }
            let score = self.scheduler.score(spec, &view);
            if best.is_none_or(|(s, b)| score > s || (score == s && w < b)) {
                best = Some((score, w));
            }
        }
        if best.is_some() {
            return best.map(|(_, w)| w);
        }
        let same = same?;
        let until = task.taken_back_at.saturating_add(self.retry_elsewhere);
        let another = self.workers.iter().enumerate().any(|(u, worker)| {
            u as u32 != same && worker.up && worker.capabilities.satisfies(&spec.requirements)
        });
        if now < until && another {
            self.hold_until = Some(self.hold_until.map_or(until, |h| h.min(until)));
            return None;
        }
        Some(same)
    }

    fn bind(&mut self, t: u32, w: u32, now: Duration, round: &mut Round) {
        let Some(task) = &mut self.tasks[t as usize] else {
            return;
        };
        let worker = &mut self.workers[w as usize];
        task.attempts += 1;
        self.scheduler
            .on_bind(&task.spec, task.queue, &worker.view(), now);
        task.state = State::Running {
            worker: w,
            since: now,
        };
        worker.running.push(t);
        self.queues[task.queue.index()].running += 1;
        self.running += 1;
        round.placements.push(Placement {
            task: task.spec.id.clone(),
            worker: worker.id.clone(),
            attempt: task.attempts,
        });
        self.refresh_free(w);
    }

    /// Takes a running task off its worker; it is left parked.
    fn unbind(&mut self, t: u32, now: Duration) {
        let Some(task) = &mut self.tasks[t as usize] else {
            return;
        };
        let State::Running { worker: w, since } = task.state else {
            return;
        };
        let worker = &mut self.workers[w as usize];
        if let Some(p) = worker.running.iter().position(|&x| x == t) {
            worker.running.swap_remove(p);
        }
        self.queues[task.queue.index()].running -= 1;
        self.running -= 1;
        self.scheduler
            .on_release(&task.spec, task.queue, now.saturating_sub(since), now);
        task.state = State::Parked;
        task.avoid = Some(w);
        task.taken_back_at = now;
        self.refresh_free(w);
    }

    fn refresh_free(&mut self, w: u32) {
        let room = self.workers[w as usize].has_room();
        if self.free.set(w, room) {
            // The free set shrank: a cached "fits" may no longer hold.
            self.fits.fill(Fit::Unknown);
        }
    }
}

/// What finding a queue's runnable head reads (split from the engine so that the strategy can
/// be called while it is borrowed).
struct HeadContext<'a> {
    tasks: &'a [Option<Task>],
    shapes: &'a [Shape],
    workers: &'a [Worker],
    free: &'a FreeSet,
}

/// The best head, over the queue's lanes, that some free worker can run, and its lane;
/// drops stale heap entries on the way.
fn runnable_head(
    ctx: &HeadContext<'_>,
    queue: &mut Queue,
    fits: &mut [Fit],
) -> Option<(Ticket, usize)> {
    if queue.waiting == 0 {
        return None;
    }
    let mut best: Option<(Ticket, usize)> = None;
    for (l, lane) in queue.lanes.iter_mut().enumerate() {
        while let Some(Reverse(top)) = lane.heap.peek() {
            let live = ctx.tasks[top.task as usize]
                .as_ref()
                .is_some_and(|task| task.state == State::Queued(top.ticket));
            if live {
                break;
            }
            lane.heap.pop();
        }
        let Some(&Reverse(top)) = lane.heap.peek() else {
            continue;
        };
        if best.is_some_and(|(b, _)| (b.key, b.arrival) <= (top.key, top.arrival)) {
            continue;
        }
        let s = lane.shape as usize;
        if fits[s] == Fit::Unknown {
            let req = &ctx.shapes[s].requirements;
            let yes = ctx
                .free
                .items
                .iter()
                .any(|&w| ctx.workers[w as usize].capabilities.satisfies(req));
            fits[s] = if yes { Fit::Yes } else { Fit::No };
        }
        if fits[s] == Fit::Yes {
            best = Some((top, l));
        }
    }
    best
}

fn can_ever_run(capabilities: &Capabilities, req: &Requirements) -> bool {
    capabilities.slots > 0 && capabilities.satisfies(req)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framework::QueueHead;
    use crate::strategies::Fifo;

    fn fifo() -> Engine {
        Engine::new(Box::new(Fifo::default()))
    }

    fn caps(features: &[&str], slots: u32) -> Capabilities {
        Capabilities::builder()
            .cpu_cores(4)
            .features(features.iter().map(|f| (*f).to_owned()).collect())
            .slots(slots)
            .build()
    }

    fn spec(id: &str, features: &[&str]) -> TaskSpec {
        let req = Requirements::builder()
            .features(features.iter().map(|f| (*f).to_owned()).collect())
            .build();
        TaskSpec::builder().id(id).requirements(req).build()
    }

    fn placed(round: &Round) -> Vec<(&str, &str)> {
        round
            .placements
            .iter()
            .map(|p| (p.task.as_str(), p.worker.as_str()))
            .collect()
    }

    const T0: Duration = Duration::ZERO;

    #[test]
    fn free_set_tracks_membership_through_swap_removes() {
        let mut f = FreeSet::default();
        for w in [3, 1, 2] {
            assert!(!f.set(w, true));
        }
        assert!(f.set(3, false));
        assert!(!f.set(3, false), "already out");
        assert!(!f.set(1, true), "already in");
        let mut items = f.items.clone();
        items.sort_unstable();
        assert_eq!(items, [1, 2]);
        assert!(f.set(2, false) && f.set(1, false));
        assert!(f.items.is_empty());
    }

    #[test]
    fn cancelled_waiting_tasks_leave_no_trace_even_when_their_slot_is_reused() {
        let mut e = fifo();
        e.add_worker("w", caps(&[], 1));
        for id in ["a", "b", "c"] {
            e.submit(spec(id, &[]), T0).unwrap();
        }
        assert_eq!(placed(&e.schedule(T0)), [("a", "w")]);
        e.finish(&"b".into(), T0).unwrap();
        // "d" takes b's storage slot; b's stale heap entry must not place d early or twice.
        e.submit(spec("d", &[]), T0).unwrap();
        assert_eq!(e.waiting(), 2);
        e.finish(&"a".into(), T0).unwrap();
        assert_eq!(placed(&e.schedule(T0)), [("c", "w")]);
        e.finish(&"c".into(), T0).unwrap();
        assert_eq!(placed(&e.schedule(T0)), [("d", "w")]);
        e.finish(&"d".into(), T0).unwrap();
        assert!(e.schedule(T0).placements.is_empty());
        assert_eq!((e.waiting(), e.running()), (0, 0));
    }

    #[test]
    fn a_lost_workers_tasks_keep_their_place_and_count_a_new_attempt() {
        let mut e = fifo();
        e.add_worker("w1", caps(&[], 1));
        for id in ["a", "b"] {
            e.submit(spec(id, &[]), T0).unwrap();
        }
        assert_eq!(placed(&e.schedule(T0)), [("a", "w1")]);
        assert_eq!(
            e.lose_worker(&"w1".into(), T0).unwrap(),
            [TaskId::from("a")]
        );
        e.add_worker("w2", caps(&[], 1));
        let round = e.schedule(T0);
        assert_eq!(placed(&round), [("a", "w2")], "a arrived first");
        assert_eq!(round.placements[0].attempt, 2);
        e.recover_worker(&"w1".into()).unwrap();
        assert_eq!(placed(&e.schedule(T0)), [("b", "w1")]);
        assert!(e.lose_worker(&"nope".into(), T0).is_err());
    }

    #[test]
    fn retry_requeues_a_running_task_for_another_attempt() {
        let mut e = fifo();
        e.add_worker("w", caps(&[], 1));
        e.submit(spec("a", &[]), T0).unwrap();
        e.schedule(T0);
        e.retry(&"a".into(), T0).unwrap();
        assert_eq!(e.task(&"a".into()), Some(TaskStatus::Waiting));
        let round = e.schedule(T0);
        assert_eq!(round.placements[0].attempt, 2);
        assert!(e.retry(&"zz".into(), T0).is_err());
    }

    #[test]
    fn a_retried_task_prefers_another_worker_when_one_can_take_it() {
        let mut e = fifo();
        for w in ["w1", "w2"] {
            e.add_worker(w, caps(&[], 1));
        }
        e.submit(spec("a", &[]), T0).unwrap();
        // Registered first and tied on score: w1 takes it.
        assert_eq!(placed(&e.schedule(T0)), [("a", "w1")]);
        // It fails on w1 and is retried: w2 is free too, so it goes there even though w1
        // wins the tie-break.
        e.retry(&"a".into(), T0).unwrap();
        assert_eq!(placed(&e.schedule(T0)), [("a", "w2")]);
        // Fails on w2 now: back to w1, the other worker.
        e.retry(&"a".into(), T0).unwrap();
        let round = e.schedule(T0);
        assert_eq!(placed(&round), [("a", "w1")]);
        assert_eq!(round.placements[0].attempt, 3);
    }

    #[test]
    fn a_retried_task_goes_back_to_its_worker_when_no_other_can_take_it() {
        let mut e = fifo();
        e.add_worker("gpu", caps(&["cuda"], 1));
        e.add_worker("cpu", caps(&[], 1));
        e.submit(spec("a", &["cuda"]), T0).unwrap();
        assert_eq!(placed(&e.schedule(T0)), [("a", "gpu")]);
        // Only the gpu worker satisfies it: the preference never leaves it waiting.
        e.retry(&"a".into(), T0).unwrap();
        assert_eq!(placed(&e.schedule(T0)), [("a", "gpu")]);
        // Likewise when the other worker is busy: work-conserving, not strict.
        let mut e = fifo();
        e.add_worker("w1", caps(&[], 1));
        e.add_worker("w2", caps(&[], 1));
        e.submit(spec("a", &[]), T0).unwrap();
        e.submit(spec("b", &[]), T0).unwrap();
        assert_eq!(placed(&e.schedule(T0)), [("a", "w1"), ("b", "w2")]);
        e.retry(&"a".into(), T0).unwrap();
        assert_eq!(placed(&e.schedule(T0)), [("a", "w1")]);
    }

    #[test]
    fn a_retried_task_waits_for_another_busy_worker_up_to_retry_elsewhere() {
        let wait = Duration::from_secs(10);
        let two = || {
            let mut e = fifo().retry_elsewhere(wait);
            e.add_worker("w1", caps(&[], 1));
            e.add_worker("w2", caps(&[], 1));
            e.submit(spec("a", &[]), T0).unwrap();
            e.submit(spec("b", &[]), T0).unwrap();
            assert_eq!(placed(&e.schedule(T0)), [("a", "w1"), ("b", "w2")]);
            e
        };
        // w1 is free again but w2 could run `a`: `a` waits for it, and a task behind it uses
        // w1 meanwhile.
        let mut e = two();
        e.retry(&"a".into(), T0).unwrap();
        e.submit(spec("c", &[]), T0).unwrap();
        assert_eq!(placed(&e.schedule(T0)), [("c", "w1")]);
        assert_eq!(e.hold_until(), Some(T0 + wait));
        // w2 frees up: `a` runs there, attempt 2.
        let t1 = T0 + Duration::from_secs(1);
        e.finish(&"b".into(), t1).unwrap();
        let round = e.schedule(t1);
        assert_eq!(placed(&round), [("a", "w2")]);
        assert_eq!(round.placements[0].attempt, 2);
        assert_eq!(e.hold_until(), None);

        // w2 stays busy: once the wait is over, `a` goes back to w1 (never stranded).
        let mut e = two();
        e.retry(&"a".into(), T0).unwrap();
        assert!(e.schedule(T0 + wait / 2).placements.is_empty());
        assert_eq!(placed(&e.schedule(T0 + wait)), [("a", "w1")]);

        // No other worker could ever run it: no wait at all.
        let mut e = fifo().retry_elsewhere(wait);
        e.add_worker("gpu", caps(&["cuda"], 1));
        e.add_worker("cpu", caps(&[], 1));
        e.submit(spec("a", &["cuda"]), T0).unwrap();
        assert_eq!(placed(&e.schedule(T0)), [("a", "gpu")]);
        e.retry(&"a".into(), T0).unwrap();
        assert_eq!(placed(&e.schedule(T0)), [("a", "gpu")]);
        assert_eq!(e.hold_until(), None);
    }

    #[test]
    fn a_task_of_a_lost_worker_prefers_another_worker_after_the_recovery() {
        let mut e = fifo();
        e.add_worker("w1", caps(&[], 1));
        e.add_worker("w2", caps(&[], 1));
        e.submit(spec("a", &[]), T0).unwrap();
        e.submit(spec("b", &[]), T0).unwrap();
        assert_eq!(placed(&e.schedule(T0)), [("a", "w1"), ("b", "w2")]);
        e.lose_worker(&"w1".into(), T0).unwrap();
        assert!(e.schedule(T0).placements.is_empty(), "w2 is busy");
        // w1 recovers before w2 frees up: w1 is the only worker that can take `a`, so it does.
        e.recover_worker(&"w1".into()).unwrap();
        assert_eq!(placed(&e.schedule(T0)), [("a", "w1")]);
        // The other order: w2 frees up first, then w1 recovers: `a` goes to w2.
        let mut e = fifo();
        e.add_worker("w1", caps(&[], 1));
        e.add_worker("w2", caps(&[], 1));
        e.submit(spec("a", &[]), T0).unwrap();
        e.submit(spec("b", &[]), T0).unwrap();
        e.schedule(T0);
        e.lose_worker(&"w1".into(), T0).unwrap();
        e.recover_worker(&"w1".into()).unwrap();
        e.finish(&"b".into(), T0).unwrap();
        assert_eq!(placed(&e.schedule(T0)), [("a", "w2")], "not back on w1");
    }

    #[test]
    fn shrinking_capabilities_make_waiting_tasks_unschedulable() {
        let mut e = fifo();
        e.add_worker("gpu", caps(&["cuda"], 1));
        e.submit(spec("first", &["cuda"]), T0).unwrap();
        e.submit(spec("second", &["cuda"]), T0).unwrap();
        assert_eq!(placed(&e.schedule(T0)), [("first", "gpu")]);
        // The worker comes back without its accelerator: "second" can never run now; "first"
        // keeps running, but once retried it is reported too.
        e.add_worker("gpu", caps(&[], 1));
        let round = e.schedule(T0);
        let ids: Vec<&str> = round.unschedulable.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["second"]);
        e.retry(&"first".into(), T0).unwrap();
        assert_eq!(e.schedule(T0).unschedulable[0].id.as_str(), "first");
        assert_eq!((e.waiting(), e.running()), (0, 0));
    }

    /// Ranks its queues itself: the newest queue first; records what the engine told it.
    #[derive(Default)]
    struct NewestFirst {
        waiting: Vec<bool>,
    }

    impl Scheduler for NewestFirst {
        fn name(&self) -> &str {
            "newest-first"
        }

        fn queue<'t>(&self, task: &'t TaskSpec) -> std::borrow::Cow<'t, str> {
            std::borrow::Cow::Borrowed(&task.owner)
        }

        fn ranks_queues(&self) -> bool {
            true
        }

        fn on_queue_waiting(&mut self, queue: QueueId, waiting: bool, _now: Duration) {
            if self.waiting.len() <= queue.index() {
                self.waiting.resize(queue.index() + 1, false);
            }
            self.waiting[queue.index()] = waiting;
        }

        fn next_queue(
            &mut self,
            _now: Duration,
            runnable: &mut dyn FnMut(QueueId) -> bool,
        ) -> Option<QueueId> {
            for q in (0..self.waiting.len() as u32).rev() {
                if self.waiting[q as usize] && runnable(QueueId(q)) {
                    return Some(QueueId(q));
                }
            }
            None
        }
    }

    #[test]
    fn a_ranking_strategy_orders_the_queues_and_heads_that_cannot_run_are_skipped() {
        let mut e = Engine::new(Box::new(NewestFirst::default()));
        e.add_worker("cpu", caps(&[], 2));
        e.add_worker("gpu", caps(&["cuda"], 1));
        let owned = |id: &str, owner: &str, features: &[&str]| TaskSpec {
            owner: owner.to_owned(),
            ..spec(id, features)
        };
        e.submit(owned("a1", "a", &[]), T0).unwrap();
        e.submit(owned("b1", "b", &["cuda"]), T0).unwrap();
        e.submit(owned("c1", "c", &[]), T0).unwrap();
        e.submit(owned("c2", "c", &[]), T0).unwrap();
        // Newest queue first: c, c (c is then empty), b's cuda task, a's.
        assert_eq!(
            placed(&e.schedule(T0)),
            [("c1", "cpu"), ("c2", "cpu"), ("b1", "gpu")]
        );
        e.submit(owned("b2", "b", &["cuda"]), T0).unwrap();
        e.finish(&"c1".into(), T0).unwrap();
        // Only a cpu slot is free: b (newest with work) is offered first, but its cuda task
        // cannot run, so a's task takes the slot and b's waits.
        assert_eq!(placed(&e.schedule(T0)), [("a1", "cpu")]);
        assert_eq!(e.task(&"b2".into()), Some(TaskStatus::Waiting));
        e.finish(&"b1".into(), T0).unwrap();
        assert_eq!(placed(&e.schedule(T0)), [("b2", "gpu")]);
        assert_eq!((e.waiting(), e.running()), (0, 3));
    }

    /// Declines everything, or returns a bad index, or filters out every worker.
    struct Awkward(u8);

    impl Scheduler for Awkward {
        fn name(&self) -> &str {
            "awkward"
        }

        fn pick(&mut self, heads: &[QueueHead], _now: Duration) -> Option<usize> {
            match self.0 {
                0 => None,
                1 => Some(heads.len()),
                _ => Some(0),
            }
        }

        fn filter(&self, task: &TaskSpec, _worker: &WorkerView<'_>) -> bool {
            task.id.as_str() != "picky"
        }
    }

    #[test]
    fn strategies_may_decline_or_filter_without_losing_tasks() {
        for mode in [0, 1] {
            let mut e = Engine::new(Box::new(Awkward(mode)));
            e.add_worker("w", caps(&[], 1));
            e.submit(spec("a", &[]), T0).unwrap();
            assert!(e.schedule(T0).placements.is_empty());
            assert_eq!(e.waiting(), 1);
        }
        let mut e = Engine::new(Box::new(Awkward(2)));
        e.add_worker("w", caps(&[], 2));
        e.submit(spec("picky", &[]), T0).unwrap();
        e.submit(spec("easy", &[]), T0).unwrap();
        assert_eq!(placed(&e.schedule(T0)), [("easy", "w")]);
        assert_eq!(e.task(&"picky".into()), Some(TaskStatus::Waiting));
        assert_eq!(e.waiting_tasks().count(), 1);
    }
}
