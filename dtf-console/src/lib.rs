//! A web console for dtf: watch a run and manage its plugins from a browser.
//!
//! Any coordinator that has a [`dtf_plugin_core::PluginManager`] can mount it. It serves:
//!
//! - a JSON API under `/api/` (plugins with their state and counters; enable, disable,
//!   restart, remove, reconfigure; dead letters; the run's counts; a live event stream over
//!   server-sent events), described in `docs/console-openapi.yaml`;
//! - server-rendered pages (plugins, one plugin with its settings editor and dead letters, the
//!   run, the plugin registry) that one small vendored script keeps live; no CDN, no build
//!   step, works offline.
//!
//! # Main types
//!
//! - [`Console`]: attaches to a manager ([`Console::attach`]), gives a [`Router`](axum::Router)
//!   to mount or [serves](Console::serve) it.
//! - [`AccessToken`]: the bearer token every action needs ([`AccessToken::resolve`] reads
//!   [`TOKEN_ENV`] or a file, or generates one).
//! - [`ConsoleConfig`]: address, body limit, page size, queue sizes.
//! - [`PluginCatalog`] (or the plain-data [`StaticCatalog`]): what the embedding coordinator
//!   knows about its plugins (built in, from a plugin directory, installed from an index, and
//!   what its indexes offer), handed over with [`Console::catalog`] for the registry page.
//!
//! # Example
//!
//! ```no_run
//! use dtf_console::{AccessToken, Console, ConsoleConfig};
//! use dtf_plugin_core::PluginManager;
//!
//! # async fn run(manager: PluginManager) -> Result<(), Box<dyn std::error::Error>> {
//! let token = AccessToken::resolve(None)?;
//! let console = Console::attach(&manager, token, ConsoleConfig::default()).await?;
//! let running = console.serve().await?;
//! tracing::info!(addr = %running.local_addr(), "console up");
//! // ... the run ...
//! running.stop().await;
//! # Ok(())
//! # }
//! ```
//!
//! # Guarantees
//!
//! - **It never slows the bus.** The console watches the run through a plugin of its own
//!   ([`CONSOLE_PLUGIN`]) with [`OverflowPolicy::DropNewest`](dtf_plugin_core::OverflowPolicy):
//!   when it falls behind, events are dropped for the console only (its `dropped` counter,
//!   shown on the run page). Browsers that read too slowly miss live updates and are told so
//!   (a `lagged` stream event).
//! - **Actions need the token.** Every request other than GET/HEAD needs
//!   `Authorization: Bearer <token>`; GETs of the API need it too unless the console listens
//!   on loopback. No GET changes anything, and the token travels in a header, never in a URL
//!   or a cookie, so another site cannot make a browser act (CSRF).
//! - **Secrets stay on the server.** Values under secret-looking keys of plugin settings
//!   (`token`, `password`, `url`, … see [`dtf_plugin_core::config::is_secret_key`]) are sent
//!   as `"***"`; a `"***"` sent back keeps the current value. Plugin index URLs of the
//!   registry are shown without user name, password, query and fragment.
//! - **Bad input is a 4xx with a JSON message** (`{"error": …, "code": …}`): unknown plugin
//!   404, malformed JSON 400, body over [`ConsoleConfig::body_limit`] 413, rejected
//!   configuration 422 (the old one stays), wrong state 409, missing/wrong token 401/403.

#![forbid(unsafe_code)]

mod api;
mod auth;
mod catalog;
mod error;
mod pages;
mod redact;
mod run;
mod server;

pub use auth::{AccessToken, TOKEN_ENV, TokenOrigin};
pub use catalog::{
    AVAILABLE_TTL, AvailablePlugin, CatalogFuture, InstalledPlugin, PluginCatalog, PluginOrigin,
    StaticCatalog,
};
pub use error::ConsoleError;
pub use run::CONSOLE_PLUGIN;
pub use server::{Console, ConsoleConfig, RunningConsole};
