//! [`Registry`]: scheduler names to factories.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use crate::config::SchedulerConfig;
use crate::error::SchedulerError;
use crate::framework::Scheduler;
use crate::strategies::{FairShare, Fifo, LongestFirst, PriorityAging, RoundRobin};

/// Builds a scheduler from its configuration.
pub type SchedulerFactory =
    dyn Fn(&SchedulerConfig) -> Result<Box<dyn Scheduler>, SchedulerError> + Send + Sync;

/// Maps scheduler names to factories, so a configuration or a command-line flag can choose
/// one. [`Registry::new`] holds the built-ins; [`register`](Registry::register) adds yours
/// next to them.
///
/// ```
/// use dtf_scheduler::{Registry, Scheduler, SchedulerConfig};
///
/// struct Mine;
/// impl Scheduler for Mine {
///     fn name(&self) -> &str { "mine" }
/// }
///
/// let mut registry = Registry::new();
/// registry.register("mine", |_config| Ok(Box::new(Mine)))?;
/// assert!(registry.names().any(|n| n == "mine"));
/// let scheduler = registry.build(&SchedulerConfig::new("mine"))?;
/// assert_eq!(scheduler.name(), "mine");
///
/// let err = registry.build(&SchedulerConfig::new("nope")).err().map(|e| e.to_string());
/// assert!(err.unwrap_or_default().contains("available: fairness, fifo, longest-first, mine"));
/// # Ok::<(), dtf_scheduler::SchedulerError>(())
/// ```
#[derive(Clone)]
pub struct Registry {
    factories: BTreeMap<String, Arc<SchedulerFactory>>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.factories.keys()).finish()
    }
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl Registry {
    /// The names of the built-in strategies.
    pub const BUILTINS: [&'static str; 5] = [
        "fairness",
        "fifo",
        "longest-first",
        "priority",
        "round-robin",
    ];

    /// A registry holding the built-in strategies (see [`Registry::BUILTINS`]).
    pub fn new() -> Self {
        let mut factories: BTreeMap<String, Arc<SchedulerFactory>> = BTreeMap::new();
        let mut add = |name: &str, f: Arc<SchedulerFactory>| {
            factories.insert(name.to_owned(), f);
        };
        add("fifo", Arc::new(|c| Ok(Box::new(Fifo::from_config(c)))));
        add(
            "priority",
            Arc::new(|c| Ok(Box::new(PriorityAging::from_config(c)?))),
        );
        add(
            "round-robin",
            Arc::new(|c| Ok(Box::new(RoundRobin::from_config(c)))),
        );
        add(
            "fairness",
            Arc::new(|c| Ok(Box::new(FairShare::from_config(c)?))),
        );
        add(
            "longest-first",
            Arc::new(|c| Ok(Box::new(LongestFirst::from_config(c)?))),
        );
        Self { factories }
    }

    /// A registry with no strategy at all.
    pub fn empty() -> Self {
        Self {
            factories: BTreeMap::new(),
        }
    }

    /// Registers `factory` under `name`.
    ///
    /// # Errors
    ///
    /// [`SchedulerError::DuplicateScheduler`] if the name is taken.
    pub fn register<F>(
        &mut self,
        name: impl Into<String>,
        factory: F,
    ) -> Result<&mut Self, SchedulerError>
    where
        F: Fn(&SchedulerConfig) -> Result<Box<dyn Scheduler>, SchedulerError>
            + Send
            + Sync
            + 'static,
    {
        let name = name.into();
        if self.factories.contains_key(&name) {
            return Err(SchedulerError::DuplicateScheduler(name));
        }
        self.factories.insert(name, Arc::new(factory));
        Ok(self)
    }

    /// The registered names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.factories.keys().map(String::as_str)
    }

    /// Validates `config` and builds the strategy it names.
    ///
    /// # Errors
    ///
    /// [`SchedulerError::UnknownScheduler`] listing the available names, or
    /// [`SchedulerError::InvalidConfig`] naming a value out of range.
    pub fn build(&self, config: &SchedulerConfig) -> Result<Box<dyn Scheduler>, SchedulerError> {
        let factory = self.factories.get(&config.scheduler).ok_or_else(|| {
            SchedulerError::UnknownScheduler {
                name: config.scheduler.clone(),
                available: self.names().collect::<Vec<_>>().join(", "),
            }
        })?;
        config.validate()?;
        factory(config)
    }
}
