//! # dtf-plugins-notify (skeleton)
//!
//! Will hold the notification plugin of dtf: a filter → throttle → group → format → deliver
//! pipeline over [`dtf_plugin_core`] events, with channels for Slack, Discord, Telegram, email
//! (SMTP), MS Teams, JIRA and generic webhooks. Nothing is implemented yet; see the project's
//! issue tracker.

#![forbid(unsafe_code)]

#[cfg(feature = "email")]
pub mod email;
