//! The coordinator's errors. Messages are lowercase fragments that read after "failed to …"
//! where they describe an action, and name the flag, file or key at fault.

use std::path::PathBuf;

/// Something that stops the reference coordinator before or while it runs.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CoordinatorError {
    /// A command-line flag is unknown, lacks its value, or has a bad value.
    #[error("{0}")]
    Usage(String),
    /// A task file could not be read or is invalid.
    #[error("load task file `{}`: {message}", path.display())]
    TaskFile {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the line and column or the key.
        message: String,
    },
    /// `--config` names a file that does not exist (or is not a file).
    #[error("--config: `{}` is not a file", path.display())]
    MissingConfig {
        /// The path given.
        path: PathBuf,
    },
    /// A plugin directory (from `--plugin-dirs` or the file's `plugin_dirs`) does not exist.
    #[error("--plugin-dirs: `{}` is not a directory", path.display())]
    MissingPluginDir {
        /// The path given.
        path: PathBuf,
    },
    /// The configuration (file, `DTF_*` environment variables, `--set`) has problems: every
    /// one of them, one per line, each with its key, position and a suggestion.
    #[error("invalid configuration:\n{0}")]
    Config(#[from] dtf_plugin_core::config::ConfigErrors),
    /// A plugin name given to `--enable-plugin`/`--disable-plugin` is not registered.
    #[error("{flag}: {source}")]
    Plugin {
        /// The flag.
        flag: &'static str,
        /// The registry's error (with a did-you-mean suggestion).
        #[source]
        source: dtf_plugin_core::RegistryError,
    },
    /// The scheduler configuration is invalid (e.g. an unknown strategy name).
    #[error("--scheduler: {0}")]
    Scheduler(#[from] dtf_scheduler::SchedulerError),
    /// Nothing to run.
    #[error("no tasks: give --tasks FILE, --task CMD or --simulate-tasks N")]
    NoTasks,
    /// The plugin manager could not start or refused a plugin.
    #[error("plugin manager: {0}")]
    Manager(#[from] dtf_plugin_core::ManagerError),
    /// The web console (`--ui`) could not start.
    #[error("--ui: {0}")]
    Console(#[from] dtf_console::ConsoleError),
    /// The cluster layer (`--listen`, `dtf-worker`): a cookie, certificate or address problem.
    #[error("{0}")]
    Cluster(#[from] dtf_cluster::ClusterError),
    /// The bus closed while the coordinator was publishing.
    #[error("{0}")]
    Publish(#[from] dtf_plugin_core::PublishError),
}
