//! The channels: where messages go.
//!
//! A channel is one destination implementing [`Channel`]: it renders a [`Notification`] in
//! its service's format (within the service's size limits) and delivers it through the shared
//! [`Deliverer`], which applies the destination's gate, the retries and the stats.
//!
//! **Adding a channel** (e.g. email): one module here with
//! - a config struct (`serde`, `deny_unknown_fields`, fields `name: Option<String>` and
//!   `filter: FilterConfig` plus its own) implementing [`ChannelBuilder`], which validates
//!   everything and builds the channel(s);
//! - a type implementing [`Channel`];
//!
//! then one variant in [`crate::ChannelConfig`] and one arm in its `build`, behind the
//! module's cargo feature.

use crate::deliver::{Deliverer, DeliveryError, GateSpec};
use crate::error::NotifyError;
use crate::filter::Filter;
use crate::message::{Notification, Severity};
use crate::transport::BoxFuture;

#[cfg(feature = "discord")]
pub mod discord;
#[cfg(feature = "jira")]
pub mod jira;
#[cfg(feature = "slack")]
pub mod slack;
#[cfg(feature = "teams")]
pub mod teams;
#[cfg(feature = "telegram")]
pub mod telegram;
#[cfg(feature = "webhook")]
pub mod webhook;

/// One destination of messages.
pub trait Channel: Send + Sync + 'static {
    /// The unique name: the stats target and the name in logs.
    fn name(&self) -> &str;

    /// The channel type (`"slack"`).
    fn kind(&self) -> &'static str;

    /// Which events it wants.
    fn filter(&self) -> &Filter;

    /// The gate its requests pass (rate limit, not-before).
    fn gate(&self) -> &GateSpec;

    /// The message as this channel would send it (the request body; for multi-request
    /// channels such as JIRA, each body by name). Holds no secret: used by dry runs.
    fn render(&self, message: &Notification) -> serde_json::Value;

    /// Delivers `message`, every request through `deliverer` with [`Channel::gate`].
    fn deliver<'a>(
        &'a self,
        message: &'a Notification,
        deliverer: &'a Deliverer,
    ) -> BoxFuture<'a, Result<(), DeliveryError>>;
}

/// A channel's configuration: validates itself and builds its channel(s).
pub trait ChannelBuilder {
    /// Validates and builds; `key` is the config path (`channels[2]`), for errors.
    ///
    /// # Errors
    ///
    /// [`NotifyError::Config`] naming the key of the first bad value.
    fn build(&self, key: &str) -> Result<Vec<Box<dyn Channel>>, NotifyError>;
}

/// An emoji for the severity, for channels that show one.
pub(crate) fn emoji(s: Severity) -> &'static str {
    match s {
        Severity::Routine => "⚪",
        Severity::Info => "🔵",
        Severity::Warning => "🟠",
        Severity::Error => "🔴",
        Severity::Critical => "🚨",
    }
}

pub(crate) fn default_true() -> bool {
    true
}
