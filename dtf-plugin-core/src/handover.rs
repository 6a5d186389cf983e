//! [`Handover`]: state a plugin instance hands to the next one after a restart.

use std::sync::{Arc, Mutex, PoisonError};

/// State that an instance of a plugin hands to the next instance its spec's factory builds,
/// so that a restart (after a panic, on request with [`PluginManager::restart`], or to apply
/// a configuration) does not lose what the plugin had gathered: a reporter's record of the
/// run, a scheduler's queue.
///
/// Make one per spec, outside the factory, and give every instance a clone. An instance puts
/// its state in when it is dropped (the manager drops it after its last call, whatever ended
/// it, and starts the next instance once that drop is over, waiting at most a second), and
/// the next one takes it in
/// [`Plugin::on_start`]. Events published while the plugin restarts stay queued for it and
/// reach the next instance, so together nothing is missed.
///
/// Put only from an instance whose `on_start` took the state: one that failed to start (a
/// bad configuration) would otherwise replace the state with its empty one. After a panic the
/// state is what the panicking call left (part of an update, perhaps): hand over only state
/// that stays usable then, or mark it.
///
/// ```
/// use dtf_plugin_core::prelude::*;
/// use dtf_plugin_core::Handover;
///
/// struct Counter {
///     /// `None` until `on_start` took the previous instance's count.
///     seen: Option<u64>,
///     handover: Handover<u64>,
/// }
///
/// impl Drop for Counter {
///     fn drop(&mut self) {
///         if let Some(seen) = self.seen {
///             self.handover.put(seen);
///         }
///     }
/// }
///
/// impl Plugin for Counter {
///     fn metadata(&self) -> PluginMetadata {
///         PluginMetadata::new("counter").hooks(Hook::TaskCompleted)
///     }
///
///     async fn on_start(&mut self, _ctx: &mut PluginContext) -> Result<(), PluginError> {
///         self.seen = Some(self.handover.take().unwrap_or(0));
///         Ok(())
///     }
///
///     async fn on_event(&mut self, _ctx: &mut PluginContext, _e: &Event) -> Result<(), PluginError> {
///         *self.seen.get_or_insert(0) += 1;
///         Ok(())
///     }
/// }
///
/// let handover = Handover::new();
/// let spec = PluginSpec::new(move || Counter { seen: None, handover: handover.clone() });
/// # drop(spec);
/// ```
///
/// [`PluginManager::restart`]: crate::PluginManager::restart
/// [`Plugin::on_start`]: crate::Plugin::on_start
pub struct Handover<T>(Arc<Mutex<Option<T>>>);

impl<T> Handover<T> {
    /// An empty hand-over.
    pub fn new() -> Self {
        Self(Arc::new(Mutex::new(None)))
    }

    /// Leaves `state` for the next instance (replacing any state left before).
    pub fn put(&self, state: T) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(state);
    }

    /// The state the previous instance left, if any (taken: a second call gets `None`).
    pub fn take(&self) -> Option<T> {
        // A panic while the lock was held (in a `put`) left no half-written state.
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

impl<T> Clone for Handover<T> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

impl<T> Default for Handover<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> std::fmt::Debug for Handover<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The state itself is the plugin's (it may hold anything); only whether there is one.
        let full = self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some();
        f.debug_struct("Handover")
            .field("holds_state", &full)
            .finish()
    }
}
