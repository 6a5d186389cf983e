//! Real-time reporting to an external HTTP endpoint: a background task that batches events
//! and posts them as JSON, retrying per [`dtf_plugin_core::retry`].

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use dtf_plugin_core::prelude::*;
use dtf_plugin_core::retry::{Jitter, RetryPolicy, is_retryable_status};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{ExternalConfig, TaskReporterHandle};

/// What happened to the batches sent to the external endpoint. Never holds the endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ExternalStats {
    /// Batches the endpoint accepted.
    pub batches_sent: u64,
    /// Events in those batches.
    pub events_sent: u64,
    /// Batches given up on after the retries.
    pub batches_failed: u64,
    /// Events in those batches (lost for the endpoint).
    pub events_dropped: u64,
    /// HTTP attempts, retries included.
    pub attempts: u64,
    /// The last error (status and the start of the response, or the transport error).
    pub last_error: Option<String>,
}

pub(super) fn stats_for(handle: &TaskReporterHandle) -> ExternalStats {
    handle
        .external
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
}

/// The plugin's side: a queue to the background task.
#[derive(Debug)]
pub(super) struct Sender {
    tx: mpsc::UnboundedSender<Event>,
    task: JoinHandle<()>,
    /// Events queued so far.
    pushed: u64,
    /// Events this sender's task sent or gave up on (the stats are shared with the senders
    /// of earlier configurations, so they cannot tell what this one left behind).
    done: Arc<std::sync::atomic::AtomicU64>,
    stats: Arc<Mutex<ExternalStats>>,
    final_timeout: Duration,
}

impl Sender {
    /// Starts the background task.
    pub(super) fn start(
        config: &ExternalConfig,
        handle: &TaskReporterHandle,
    ) -> Result<Self, PluginError> {
        if config.batch_size == 0 {
            return Err("external.batch_size: must be at least 1".into());
        }
        let client = reqwest::Client::builder()
            .user_agent(concat!("dtf-plugins-ci/", env!("CARGO_PKG_VERSION")))
            .timeout(Duration::from_millis(config.timeout_ms))
            // Redirects are not followed: reqwest would send the webhook URL (path and query,
            // where the token is) to the new host as `Referer`, secret headers with it, and
            // turn a POST into a GET whose 200 would count as delivered. A 3xx is a failure.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("build the HTTP client: {}", e.without_url()))?;
        let (tx, rx) = mpsc::unbounded_channel();
        let done = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut config = config.clone();
        // A token read from a file ends with a line break, which no header can carry.
        config.token = config
            .token
            .map(|t| dtf_plugin_core::Secret::new(t.expose().trim().to_owned()));
        let worker = Worker {
            client,
            done: Arc::clone(&done),
            config: config.clone(),
            stats: Arc::clone(&handle.external),
            run_id: None,
            jitter: Jitter::default(),
        };
        Ok(Self {
            tx,
            task: tokio::spawn(worker.run(rx)),
            pushed: 0,
            done,
            stats: Arc::clone(&handle.external),
            final_timeout: Duration::from_millis(config.final_timeout_ms),
        })
    }

    /// Queues `event`; never waits.
    pub(super) fn push(&mut self, event: &Event) {
        // The task only ends when the queue closes, so a send error cannot happen while the
        // plugin holds the sender; there is nothing to do if it does.
        if self.tx.send(event.clone()).is_ok() {
            self.pushed += 1;
        }
    }

    /// Closes the queue and waits until what was queued is sent (or given up on), at most
    /// `final_timeout_ms`: past it the sending task is stopped, and what it had not sent is
    /// counted as dropped. Before, an endpoint that did not answer held the reporter's
    /// shutdown past the handler timeout (four tries of `timeout_ms` per batch), and the
    /// events left behind were counted nowhere.
    pub(super) async fn finish(mut self) {
        drop(self.tx);
        match tokio::time::timeout(self.final_timeout, &mut self.task).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "external reporting task ended abnormally"),
            Err(_) => {
                self.task.abort();
                let _ = (&mut self.task).await;
                let done = self.done.load(std::sync::atomic::Ordering::Relaxed);
                let left = self.pushed.saturating_sub(done);
                let mut s = self.stats.lock().unwrap_or_else(PoisonError::into_inner);
                s.batches_failed += 1;
                s.events_dropped += left;
                let message = format!(
                    "the final flush did not finish within final_timeout_ms ({} ms)",
                    self.final_timeout.as_millis()
                );
                tracing::error!(events = left, error = %message, "external reporting: events dropped at shutdown");
                s.last_error = Some(message);
            }
        }
    }
}

struct Worker {
    client: reqwest::Client,
    /// Events sent or given up on by this worker.
    done: Arc<std::sync::atomic::AtomicU64>,
    config: ExternalConfig,
    stats: Arc<Mutex<ExternalStats>>,
    run_id: Option<String>,
    jitter: Jitter,
}

impl Worker {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Event>) {
        let interval = Duration::from_millis(self.config.flush_interval_ms);
        let mut batch: Vec<Event> = Vec::new();
        loop {
            // Wait for the first event of a batch without a deadline, then for the rest until
            // the batch is full or the interval since the first one has passed.
            let Some(first) = rx.recv().await else { break };
            self.note(&first);
            batch.push(first);
            let deadline = tokio::time::Instant::now() + interval;
            let mut closed = false;
            while batch.len() < self.config.batch_size {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(e)) => {
                        self.note(&e);
                        batch.push(e);
                    }
                    Ok(None) => {
                        closed = true;
                        break;
                    }
                    Err(_) => break,
                }
            }
            self.send(std::mem::take(&mut batch)).await;
            if closed {
                break;
            }
        }
    }

    fn note(&mut self, event: &Event) {
        if let EventKind::CoordinatorStartup(s) = &event.kind {
            self.run_id = Some(s.run_id.clone());
        }
    }

    fn update(&self, f: impl FnOnce(&mut ExternalStats)) {
        f(&mut self.stats.lock().unwrap_or_else(PoisonError::into_inner));
    }

    async fn send(&mut self, events: Vec<Event>) {
        let n = events.len() as u64;
        let body = serde_json::json!({ "run_id": self.run_id, "events": events });
        let policy: RetryPolicy = self.config.retry;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut req = self.client.post(self.config.endpoint.expose()).json(&body);
            if let Some(token) = &self.config.token {
                req = req.bearer_auth(token.expose());
            }
            let result = req.send().await;
            self.update(|s| s.attempts += 1);
            let (retry_after, message) = match result {
                Ok(resp) if resp.status().is_success() => {
                    self.update(|s| {
                        s.batches_sent += 1;
                        s.events_sent += n;
                    });
                    self.done.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                    tracing::debug!(events = n, attempt, "events sent to the external endpoint");
                    return;
                }
                Ok(resp) => {
                    let status = resp.status();
                    let (retry_after, message) = crate::api::http::failed_answer(resp).await;
                    if !is_retryable_status(status.as_u16()) {
                        return self.give_up(n, message);
                    }
                    (retry_after, message)
                }
                // The error's text would carry the endpoint, which may hold a key.
                Err(e) => {
                    let e = e.without_url();
                    if e.is_builder() {
                        return self.give_up(n, format!("build the request: {e}"));
                    }
                    (None, e.to_string())
                }
            };
            if !policy.allows_another(attempt) {
                return self.give_up(n, message);
            }
            let delay = policy.delay(attempt - 1, retry_after, self.jitter.unit());
            tracing::warn!(attempt, ?delay, error = %message, "external reporting failed; retrying");
            tokio::time::sleep(delay).await;
        }
    }

    fn give_up(&self, events: u64, message: String) {
        tracing::error!(events, error = %message, "external reporting failed; events dropped, the run goes on");
        self.done
            .fetch_add(events, std::sync::atomic::Ordering::Relaxed);
        self.update(|s| {
            s.batches_failed += 1;
            s.events_dropped += events;
            s.last_error = Some(message);
        });
    }
}
