//! Remote workers for the reference coordinator ([`dtf_cluster`]): the coordinator's options
//! (`--listen`, `--min-workers`, TLS, cookie), the job runner of `dtf-worker`, and the
//! forwarding of the executor's jobs to a remote worker. See docs/cluster.md.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use std::path::Path;

use dtf_cluster::{
    Cookie, HostedPlugin, Hub, HubConfig, JobRunner, PluginHost, RemoteJob, Timing, TlsFiles,
    Transport,
};
use dtf_plugin_core::event::{Event, EventKind, TaskError, WorkerId};
use dtf_plugin_core::{PluginManager, ShutdownReason};
use tokio::sync::mpsc;

use crate::error::CoordinatorError;
use crate::executor::{Job, run_job};
use crate::taskfile::TaskDef;

/// The default address of `--listen` when only a port matters: loopback.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7700";

/// How the coordinator accepts remote workers (`--listen` and friends).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClusterOptions {
    /// `--listen ADDR`: where workers connect.
    pub listen: SocketAddr,
    /// `--min-workers N` (default 1): with `--workers 0`, tasks are created once this many
    /// remote workers registered.
    pub min_workers: u32,
    /// `--insecure-cluster`: plain TCP instead of TLS (a warning at every start).
    pub insecure: bool,
    /// `--tls-cert FILE` and `--tls-key FILE`: the coordinator's certificate chain and key.
    pub tls_cert: Option<PathBuf>,
    /// See `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// `--cookie-file FILE`; else `DTF_CLUSTER_COOKIE`.
    pub cookie_file: Option<PathBuf>,
    /// `--heartbeat-timeout SECS` (default 10).
    pub heartbeat_timeout: Duration,
    /// `--reconnect-grace SECS` (default 10).
    pub reconnect_grace: Duration,
    /// `--max-frame BYTES` (default [`dtf_cluster::DEFAULT_MAX_FRAME`]): every node must use
    /// the same.
    pub max_frame: u64,
}

impl ClusterOptions {
    /// Options listening on `listen` with the defaults.
    pub fn new(listen: SocketAddr) -> Self {
        let timing = Timing::default();
        Self {
            listen,
            min_workers: 1,
            insecure: false,
            tls_cert: None,
            tls_key: None,
            cookie_file: None,
            heartbeat_timeout: timing.heartbeat_timeout,
            reconnect_grace: timing.reconnect_grace,
            max_frame: dtf_cluster::DEFAULT_MAX_FRAME,
        }
    }

    /// The hub's configuration: reads the cookie and the certificates.
    ///
    /// # Errors
    ///
    /// [`CoordinatorError::Cluster`] naming what is missing or unreadable.
    pub fn hub_config(&self) -> Result<HubConfig, CoordinatorError> {
        let cookie = Cookie::load(self.cookie_file.as_deref())?;
        let transport = transport(self.insecure, || match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Ok(TlsFiles::server(cert, key)?),
            _ => Err(CoordinatorError::Usage(
                "--listen: TLS needs --tls-cert FILE and --tls-key FILE (or \
                     --insecure-cluster for plain TCP)"
                    .to_owned(),
            )),
        })?;
        let mut config = HubConfig::new(self.listen, cookie, transport);
        config.timing.heartbeat_timeout = self.heartbeat_timeout;
        config.timing.reconnect_grace = self.reconnect_grace;
        config.timing.heartbeat_interval = heartbeat_interval(self.heartbeat_timeout);
        config.max_frame = self.max_frame;
        Ok(config)
    }
}

/// `[cluster]` in `dtf.toml` (docs/cluster.md, "Configuration"): what the command line did
/// not say. There is no cookie key: the cookie comes from `cookie_file` or
/// `DTF_CLUSTER_COOKIE`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClusterFile {
    /// `listen`.
    pub listen: Option<SocketAddr>,
    /// `min_workers`.
    pub min_workers: Option<u32>,
    /// `tls_cert`.
    pub tls_cert: Option<PathBuf>,
    /// `tls_key`.
    pub tls_key: Option<PathBuf>,
    /// `cookie_file`.
    pub cookie_file: Option<PathBuf>,
    /// `insecure`.
    pub insecure: Option<bool>,
}

impl ClusterFile {
    /// Fills `cli` from the file: with no `--listen`, the file's `listen` turns the cluster
    /// on; paths and `insecure` fill what the command line left unset.
    pub fn apply(&self, cli: &mut Option<ClusterOptions>) {
        match cli {
            Some(c) => self.fill(c, false),
            None => {
                if let Some(listen) = self.listen {
                    let mut c = ClusterOptions::new(listen);
                    self.fill(&mut c, true);
                    *cli = Some(c);
                }
            }
        }
    }

    fn fill(&self, c: &mut ClusterOptions, from_file: bool) {
        if from_file {
            if let Some(n) = self.min_workers {
                c.min_workers = n;
            }
        }
        if c.tls_cert.is_none() {
            c.tls_cert.clone_from(&self.tls_cert);
        }
        if c.tls_key.is_none() {
            c.tls_key.clone_from(&self.tls_key);
        }
        if c.cookie_file.is_none() {
            c.cookie_file.clone_from(&self.cookie_file);
        }
        c.insecure = c.insecure || self.insecure.unwrap_or(false);
    }
}

/// A heartbeat every tenth of the timeout, between 50 ms and 1 s.
pub fn heartbeat_interval(timeout: Duration) -> Duration {
    (timeout / 10).clamp(Duration::from_millis(50), Duration::from_secs(1))
}

/// TLS from `tls`, or plain TCP when `insecure`.
pub fn transport(
    insecure: bool,
    tls: impl FnOnce() -> Result<TlsFiles, CoordinatorError>,
) -> Result<Transport, CoordinatorError> {
    if insecure {
        return Ok(Transport::Insecure);
    }
    Ok(Transport::Tls(Arc::new(tls()?)))
}

/// The job of `job` for a remote worker: the task's whole definition travels.
pub fn to_remote(job: &Job) -> RemoteJob {
    RemoteJob {
        task: job.task.id.as_str().into(),
        attempt: job.attempt,
        spec: serde_json::to_value(&*job.task).unwrap_or_default(),
    }
}

/// `dtf-worker`'s job runner: the task runs exactly as on a local worker (own process group,
/// timeout, output limit; [`run_job`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct ShellJobRunner;

impl JobRunner for ShellJobRunner {
    fn run(
        &self,
        worker: &WorkerId,
        job: RemoteJob,
    ) -> Pin<Box<dyn std::future::Future<Output = EventKind> + Send + 'static>> {
        let worker = worker.clone();
        Box::pin(async move {
            let def: TaskDef = match serde_json::from_value(job.spec) {
                Ok(def) => def,
                Err(e) => {
                    return EventKind::task_failed(
                        job.task,
                        TaskError::builder()
                            .kind("BadJob")
                            .message(format!("the worker cannot read the job: {e}"))
                            .build(),
                        false,
                    );
                }
            };
            let local = Job {
                task: Arc::new(def),
                attempt: job.attempt,
            };
            run_job(&local).await.into_event(&local, &worker)
        })
    }
}

/// The plugins a `dtf-worker --plugins NAME…` node hosts for the coordinator: each runs in its
/// own local [`PluginManager`] (guarded and supervised as on the coordinator), configured from
/// the node's `--config` file; each event is published there and flushed before it is
/// acknowledged.
#[derive(Debug)]
pub struct LocalPluginHost {
    plugins: Vec<(HostedPlugin, PluginManager)>,
}

impl LocalPluginHost {
    /// Starts the plugins `names` from the built-in ones and those of `plugin_dirs`.
    ///
    /// # Errors
    ///
    /// An unknown name (with the closest one), a bad configuration, or a plugin that fails
    /// to start.
    pub async fn start(
        names: &[String],
        config_file: Option<&Path>,
        plugin_dirs: &[PathBuf],
    ) -> Result<Self, CoordinatorError> {
        let mut registry = crate::plugin_registry();
        let loaded = crate::coordinator::load_config(
            config_file,
            plugin_dirs,
            &[],
            &mut registry,
            crate::coordinator::Runs::Worker,
        )?;
        // This node's tasks must not see the secrets its plugins read either.
        crate::executor::hide_from_tasks(crate::executor::secret_env_vars(&loaded.config));
        let mut plugins = Vec::new();
        for name in names {
            let plugin_error = |source| CoordinatorError::Plugin {
                flag: "--plugins",
                source,
            };
            let m = registry
                .entry(name)
                .map_err(plugin_error)?
                .metadata()
                .clone();
            let spec = registry
                .spec(name, loaded.config.plugin_settings(name))
                .map_err(plugin_error)?;
            let manager = PluginManager::builder()
                .config(loaded.config.manager_config().clone())
                .spec(loaded.config.with_overrides(name, spec))
                .spawn()
                .await?;
            let hosted = HostedPlugin {
                name: name.clone(),
                version: m.version.to_string(),
                kind: m.kind,
                hooks: m.hooks.iter().collect(),
            };
            plugins.push((hosted, manager));
        }
        Ok(Self { plugins })
    }

    /// Shuts the hosted plugins down (their `on_shutdown` runs).
    pub async fn shutdown(&self) {
        for (_, manager) in &self.plugins {
            manager.shutdown(ShutdownReason::Completed).await;
        }
    }
}

impl LocalPluginHost {
    /// The manager that runs `plugin`.
    fn manager(&self, plugin: &str) -> Option<PluginManager> {
        self.plugins
            .iter()
            .find(|(p, _)| p.name == plugin)
            .map(|(_, m)| m.clone())
    }
}

impl PluginHost for LocalPluginHost {
    fn plugins(&self) -> Vec<HostedPlugin> {
        self.plugins.iter().map(|(p, _)| p.clone()).collect()
    }

    fn handle(
        &self,
        plugin: &str,
        event: Event,
    ) -> Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        let manager = self.manager(plugin);
        Box::pin(async move {
            let Some(manager) = manager else { return };
            if let Err(e) = manager.publish(event.kind).await {
                tracing::warn!(error = %e, "the hosted plugin's bus is closed");
            }
            manager.flush().await;
        })
    }

    fn reconfigure(
        &self,
        plugin: &str,
        settings: serde_json::Value,
    ) -> Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>> {
        let manager = self.manager(plugin);
        let plugin = plugin.to_owned();
        Box::pin(async move {
            let Some(manager) = manager else {
                return Err(format!("this node does not host `{plugin}`"));
            };
            // Its manager waits until the plugin handled what was queued before, checks the
            // settings against the plugin's schema and applies them (or restarts it).
            manager
                .reconfigure(&plugin, settings)
                .await
                .map_err(|e| e.to_string())
        })
    }
}

/// For `--list-plugins` with a cluster: listens, waits until `min_workers` nodes have
/// registered (saying so every 5 s), and returns the plugins they host, by host. The nodes
/// are then told the run is over. No plugin of the coordinator runs meanwhile.
///
/// # Errors
///
/// The cluster cannot start (address, TLS files, cookie), or the manager cannot.
pub async fn hosted_plugins(
    cluster: &ClusterOptions,
) -> Result<Vec<(WorkerId, HostedPlugin)>, CoordinatorError> {
    let manager = PluginManager::builder().spawn().await?;
    let (hub, mut notes) = Hub::start(cluster.hub_config()?, manager.bus()).await?;
    let min = cluster.min_workers as usize;
    tracing::warn!(
        listen = %hub.local_addr(),
        "waiting for {min} node(s) to register, to list the plugins they host"
    );
    let (mut registered, mut hosted) = (0usize, Vec::new());
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.tick().await;
    while registered < min {
        tokio::select! {
            note = notes.recv() => match note {
                Some(dtf_cluster::HubNote::Registered(_)) => registered += 1,
                Some(dtf_cluster::HubNote::Plugins { host, plugins }) => {
                    hosted.extend(plugins.into_iter().map(|p| (host.clone(), p)));
                }
                Some(_) => {}
                None => break,
            },
            _ = tick.tick() => {
                tracing::warn!("waiting for nodes: {registered} of {min} registered");
            }
        }
    }
    hub.shutdown().await;
    let _ = manager.shutdown(ShutdownReason::Completed).await;
    hosted.sort_by(|a, b| (&a.0, &a.1.name).cmp(&(&b.0, &b.1.name)));
    Ok(hosted)
}

/// Forwards the executor's jobs for remote worker `worker` to the hub until the mailbox closes.
pub(crate) fn forward(hub: Arc<Hub>, worker: WorkerId, mut jobs: mpsc::UnboundedReceiver<Job>) {
    tokio::spawn(async move {
        while let Some(job) = jobs.recv().await {
            if hub.post(&worker, to_remote(&job)).is_err() {
                return;
            }
        }
    });
}
