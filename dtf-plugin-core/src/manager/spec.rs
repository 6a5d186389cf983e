//! `PluginSpec`: how to build and run one plugin (a factory plus per-plugin settings), and
//! the type-erased factory the manager keeps.

use super::*;

/// How to build and run one plugin: a factory plus per-plugin settings.
///
/// The factory is called once right away (for the metadata; that instance is the one
/// started first) and again for every restart.
pub struct PluginSpec {
    pub(super) meta: PluginMetadata,
    pub(super) config: Result<PluginConfig, ConfigError>,
    pub(super) queue_capacity: Option<usize>,
    pub(super) overflow: Option<OverflowPolicy>,
    pub(super) handler_timeout: Option<Duration>,
    pub(super) restart_policy: Option<RestartPolicy>,
    pub(super) restart_budget: Option<RestartBudget>,
    pub(super) backoff: Option<Backoff>,
    pub(super) factory: Box<dyn ErasedFactory>,
    /// Why the spec cannot be used: its factory or `metadata` panicked when it was built.
    pub(super) broken: Option<String>,
}

impl fmt::Debug for PluginSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PluginSpec")
            .field("meta", &self.meta)
            .finish_non_exhaustive()
    }
}

impl PluginSpec {
    /// A spec whose instances come from `factory`.
    pub fn new<P, F>(factory: F) -> Self
    where
        P: Plugin,
        F: Fn() -> P + Send + Sync + 'static,
    {
        // Plugin code is untrusted from the first call on: a panic in the factory or in
        // `metadata` makes a spec that `add` refuses (with the panic's message), not a panic in
        // the embedding application.
        let short = std::any::type_name::<P>()
            .rsplit("::")
            .next()
            .unwrap_or("plugin");
        let caught = |what: &str, payload| {
            format!("{what} panicked: {}", crate::runner::panic_message(payload))
        };
        let (first, meta, broken) = match catch_unwind(AssertUnwindSafe(&factory)) {
            Err(payload) => (
                None,
                PluginMetadata::new(short.to_owned()),
                Some(caught("the plugin factory", payload)),
            ),
            Ok(first) => match catch_unwind(AssertUnwindSafe(|| first.metadata())) {
                Ok(meta) => (Some(first), meta, None),
                Err(payload) => {
                    crate::runner::drop_caught(first, "a plugin instance");
                    (
                        None,
                        PluginMetadata::new(short.to_owned()),
                        Some(caught("metadata()", payload)),
                    )
                }
            },
        };
        Self {
            broken,
            meta,
            config: Ok(PluginConfig::Null),
            queue_capacity: None,
            overflow: None,
            handler_timeout: None,
            restart_policy: None,
            restart_budget: None,
            backoff: None,
            factory: Box::new(Factory {
                make: Some(factory),
                first: Mutex::new(first),
            }),
        }
    }

    /// The plugin's metadata (with the name override, if any).
    pub fn metadata(&self) -> &PluginMetadata {
        &self.meta
    }

    /// Overrides the name from the metadata (to run two instances of one plugin type).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.meta.name = name.into().into();
        self
    }

    /// Overrides the hooks from the metadata.
    pub fn hooks(mut self, hooks: impl Into<HookSet>) -> Self {
        self.meta.hooks = hooks.into();
        self
    }

    /// The plugin's configuration, from any serializable value (a typed struct or
    /// `serde_json::json!`). The plugin reads it with [`PluginContext::config`].
    pub fn config(mut self, config: impl Serialize) -> Self {
        self.config = crate::plugin::to_config(&self.meta.name, &config);
        self
    }

    /// Overrides [`ManagerConfig::queue_capacity`].
    pub fn queue_capacity(mut self, capacity: usize) -> Self {
        self.queue_capacity = Some(capacity);
        self
    }

    /// Overrides [`ManagerConfig::overflow`].
    pub fn overflow(mut self, policy: OverflowPolicy) -> Self {
        self.overflow = Some(policy);
        self
    }

    /// Overrides [`ManagerConfig::handler_timeout`].
    pub fn handler_timeout(mut self, timeout: Duration) -> Self {
        self.handler_timeout = Some(timeout);
        self
    }

    /// Overrides [`ManagerConfig::restart_policy`].
    pub fn restart_policy(mut self, policy: RestartPolicy) -> Self {
        self.restart_policy = Some(policy);
        self
    }

    /// Overrides [`ManagerConfig::restart_budget`].
    pub fn restart_budget(mut self, budget: RestartBudget) -> Self {
        self.restart_budget = Some(budget);
        self
    }

    /// Overrides [`ManagerConfig::backoff`].
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = Some(backoff);
        self
    }
}

/// The new actor, and its task (which ends once the actor and its plugin instance are gone).
pub(super) type SpawnFuture<'a> = Pin<
    Box<
        dyn Future<Output = Result<(ActorRef<PluginMsg>, tokio::task::JoinHandle<()>), String>>
            + Send
            + 'a,
    >,
>;

/// Erases the plugin type so the manager can keep a heterogeneous table.
pub(super) trait ErasedFactory: Send + Sync {
    fn spawn(
        &self,
        ctx: PluginContext,
        slot: Arc<Slot>,
        handler_timeout: Duration,
        supervisor: ActorCell,
        started: Option<Started>,
    ) -> SpawnFuture<'_>;
}

pub(super) struct Factory<P, F> {
    /// An `Option` only so that `Drop` can drop it under `catch_unwind`.
    pub(super) make: Option<F>,
    pub(super) first: Mutex<Option<P>>,
}

/// A spec is dropped where the manager decides (a refused `add` or `replace`, a `replace` that
/// swaps factories, a removal): on the manager's own task. The instance kept from the
/// factory's first call, and the factory closure's captures, are plugin code, and a panic in
/// their `Drop` would have failed the manager and every plugin with it.
impl<P, F> Drop for Factory<P, F> {
    fn drop(&mut self) {
        let first = self
            .first
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(plugin) = first {
            crate::runner::drop_caught(plugin, "a plugin instance");
        }
        if let Some(make) = self.make.take() {
            crate::runner::drop_caught(make, "a plugin factory");
        }
    }
}

impl<P, F> ErasedFactory for Factory<P, F>
where
    P: Plugin,
    F: Fn() -> P + Send + Sync + 'static,
{
    fn spawn(
        &self,
        ctx: PluginContext,
        slot: Arc<Slot>,
        handler_timeout: Duration,
        supervisor: ActorCell,
        started: Option<Started>,
    ) -> SpawnFuture<'_> {
        Box::pin(async move {
            let first = self
                .first
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            let plugin = match first {
                Some(p) => p,
                None => catch_unwind(AssertUnwindSafe(|| self.make.as_ref().map(|make| make())))
                    .map_err(|payload| {
                        format!(
                            "the plugin factory panicked: {}",
                            crate::runner::panic_message(payload)
                        )
                    })?
                    // Only `Drop` takes the factory, and nothing spawns from it after that.
                    .ok_or_else(|| "the plugin factory is gone".to_owned())?,
            };
            let args = RunnerArgs {
                plugin,
                ctx,
                slot,
                handler_timeout,
                started,
            };
            PluginActor::<P>::spawn_linked(None, PluginActor::new(), args, supervisor)
                .await
                .map_err(|e| e.to_string())
        })
    }
}
