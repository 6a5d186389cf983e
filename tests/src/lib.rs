//! Tests only: see `tests/`.
//!
//! The Markdown documentation is compiled here as doctests: every Rust snippet of
//! `README.md` and `docs/*.md` builds (and runs, unless marked `no_run`) against the
//! workspace crates, which are this crate's dev-dependencies. A snippet marked `ignore` says
//! why in a comment next to it.

#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
mod readme {}

/// The `docs/` pages, one module each.
#[cfg(doctest)]
mod docs {
    #[doc = include_str!("../../docs/ARCHITECTURE.md")]
    mod architecture {}
    #[doc = include_str!("../../docs/CONTRIBUTING.md")]
    mod contributing {}
    #[doc = include_str!("../../docs/ci.md")]
    mod ci {}
    #[doc = include_str!("../../docs/cluster.md")]
    mod cluster {}
    #[doc = include_str!("../../docs/configuration.md")]
    mod configuration {}
    #[doc = include_str!("../../docs/coordinator.md")]
    mod coordinator {}
    #[doc = include_str!("../../docs/dependencies.md")]
    mod dependencies {}
    #[doc = include_str!("../../docs/design-dispatch.md")]
    mod design_dispatch {}
    #[doc = include_str!("../../docs/event-delivery.md")]
    mod event_delivery {}
    #[doc = include_str!("../../docs/external-plugins.md")]
    mod external_plugins {}
    #[doc = include_str!("../../docs/model-check.md")]
    mod model_check {}
    #[doc = include_str!("../../docs/notify-email.md")]
    mod notify_email {}
    #[doc = include_str!("../../docs/notify.md")]
    mod notify {}
    #[doc = include_str!("../../docs/plugin-index.md")]
    mod plugin_index {}
    #[doc = include_str!("../../docs/publishing-a-plugin.md")]
    mod publishing_a_plugin {}
    #[doc = include_str!("../../docs/scheduler.md")]
    mod scheduler {}
    #[doc = include_str!("../../docs/web-console.md")]
    mod web_console {}
    #[doc = include_str!("../../docs/writing-a-plugin.md")]
    mod writing_a_plugin {}
}
