//! The router, the access rules and the listening server.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use dtf_plugin_core::{OverflowPolicy, PluginManager, PluginSpec};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::api::{self, ApiError};
use crate::catalog::{Catalog, PluginCatalog};
use crate::run::{ConsolePlugin, Shared};
use crate::{AccessToken, ConsoleError, pages};

/// Settings of the console; every default is in the setter's docs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConsoleConfig {
    /// The address to listen on. Default `127.0.0.1:8080`. Reads (GET) need the token too
    /// unless it is a loopback address.
    pub bind: SocketAddr,
    /// The largest request body accepted (a configuration), in bytes. Default 64 KiB.
    pub body_limit: usize,
    /// Plugins per page on the plugins page. Default 100.
    pub page_size: usize,
    /// Capacity of the console plugin's queue (it drops the newest events beyond it, never
    /// slowing the bus). Default 65,536.
    pub queue_capacity: usize,
    /// Notices buffered for the live streams; a slower browser misses updates. Default 4096.
    pub stream_capacity: usize,
    /// Whether reads (GETs of the API) need the token even on loopback. Default `false`: on
    /// loopback they don't; on any other address they always do.
    pub reads_need_token: bool,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 8080)),
            body_limit: 64 * 1024,
            page_size: 100,
            queue_capacity: 65_536,
            stream_capacity: 4096,
            reads_need_token: false,
        }
    }
}

impl ConsoleConfig {
    /// Sets [`bind`](Self::bind).
    pub fn bind(mut self, addr: SocketAddr) -> Self {
        self.bind = addr;
        self
    }

    /// Sets [`body_limit`](Self::body_limit).
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.body_limit = bytes;
        self
    }

    /// Sets [`reads_need_token`](Self::reads_need_token).
    pub fn reads_need_token(mut self, yes: bool) -> Self {
        self.reads_need_token = yes;
        self
    }

    /// Sets [`queue_capacity`](Self::queue_capacity) (at least 1).
    pub fn queue_capacity(mut self, events: usize) -> Self {
        self.queue_capacity = events.max(1);
        self
    }

    /// Sets [`page_size`](Self::page_size) (at least 1).
    pub fn page_size(mut self, rows: usize) -> Self {
        self.page_size = rows.max(1);
        self
    }
}

/// What every handler gets.
#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) manager: PluginManager,
    pub(crate) shared: Arc<Shared>,
    pub(crate) token: Arc<AccessToken>,
    /// Whether GETs are allowed without the token (bound to loopback).
    pub(crate) reads_open: bool,
    pub(crate) page_size: usize,
    /// What the embedding coordinator knows about its plugins.
    pub(crate) catalog: Catalog,
    /// Ends the live streams when the server stops.
    pub(crate) stop: watch::Receiver<bool>,
}

/// A console attached to a plugin manager: mount its [`router`](Self::router) in your own
/// axum server, or [`serve`](Self::serve) it.
pub struct Console {
    manager: PluginManager,
    shared: Arc<Shared>,
    token: Arc<AccessToken>,
    config: ConsoleConfig,
    catalog: Catalog,
    stop_tx: watch::Sender<bool>,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console")
            .field("config", &self.config)
            .field("catalog", &self.catalog.is_known())
            .finish_non_exhaustive()
    }
}

impl Console {
    /// Registers the console's plugin ([`crate::CONSOLE_PLUGIN`], every hook,
    /// [`OverflowPolicy::DropNewest`]) with `manager`.
    ///
    /// # Errors
    ///
    /// [`ConsoleError::Manager`] when the plugin cannot be added (e.g. a console is already
    /// attached).
    pub async fn attach(
        manager: &PluginManager,
        token: AccessToken,
        config: ConsoleConfig,
    ) -> Result<Self, ConsoleError> {
        let shared = Arc::new(Shared::new(config.stream_capacity));
        let for_plugin = Arc::clone(&shared);
        let spec = PluginSpec::new(move || ConsolePlugin {
            shared: Arc::clone(&for_plugin),
        })
        .overflow(OverflowPolicy::DropNewest)
        .queue_capacity(config.queue_capacity);
        manager.add(spec).await?;
        let (stop_tx, _) = watch::channel(false);
        Ok(Self {
            manager: manager.clone(),
            shared,
            token: Arc::new(token),
            config,
            catalog: Catalog::new(None),
            stop_tx,
        })
    }

    /// Hands over what the embedding coordinator knows about its plugins: where each comes
    /// from (the `source` column of the plugins page, the registry page) and what its plugin
    /// indexes offer. Without it, sources are unknown and the registry lists only the
    /// running plugins. Call it before [`router`](Self::router) or [`serve`](Self::serve).
    pub fn catalog(mut self, catalog: impl PluginCatalog) -> Self {
        self.catalog = Catalog::new(Some(Arc::new(catalog)));
        self
    }

    /// The console's routes. `reads_open`: whether GETs are served without the token (pass
    /// `true` only when the server listens on loopback).
    pub fn router(&self, reads_open: bool) -> Router {
        let state = AppState {
            manager: self.manager.clone(),
            shared: Arc::clone(&self.shared),
            token: Arc::clone(&self.token),
            reads_open,
            page_size: self.config.page_size,
            catalog: self.catalog.clone(),
            stop: self.stop_tx.subscribe(),
        };
        let api = Router::new()
            .route("/plugins", get(api::list_plugins))
            .route("/plugins/{name}", get(api::get_plugin).delete(api::remove))
            .route("/plugins/{name}/enable", post(api::enable))
            .route("/plugins/{name}/disable", post(api::disable))
            .route("/plugins/{name}/restart", post(api::restart))
            .route("/plugins/{name}/remove", post(api::remove))
            .route(
                "/plugins/{name}/config",
                get(api::get_config).put(api::put_config),
            )
            .route("/plugins/{name}/dead-letters", get(api::dead_letters))
            .route("/run", get(api::run))
            .route("/registry", get(api::registry))
            .route("/events", get(api::events))
            .fallback(api::not_found)
            .method_not_allowed_fallback(api::method_not_allowed);
        Router::new()
            .route("/", get(pages::plugins_page))
            .route("/plugins/{name}", get(pages::plugin_page))
            .route("/run", get(pages::run_page))
            .route("/registry", get(pages::registry_page))
            .route("/static/console.js", get(pages::script))
            .route("/static/console.css", get(pages::style))
            .nest("/api", api)
            .fallback(api::not_found)
            .method_not_allowed_fallback(api::method_not_allowed)
            .layer(middleware::from_fn_with_state(state.clone(), access))
            .layer(DefaultBodyLimit::max(self.config.body_limit))
            .with_state(state)
    }

    /// Binds [`ConsoleConfig::bind`] and serves the console until
    /// [`RunningConsole::stop`].
    ///
    /// # Errors
    ///
    /// [`ConsoleError::Bind`] when the address cannot be bound.
    pub async fn serve(self) -> Result<RunningConsole, ConsoleError> {
        let addr = self.config.bind;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ConsoleError::Bind { addr, source })?;
        let local = listener
            .local_addr()
            .map_err(|source| ConsoleError::Bind { addr, source })?;
        let router = self.router(local.ip().is_loopback() && !self.config.reads_need_token);
        let mut stop = self.stop_tx.subscribe();
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    // `RunningConsole` says `true` when stopped or dropped; a sender gone
                    // without a word cannot happen, and would not stop the server either.
                    if stop.wait_for(|s| *s).await.is_err() {
                        std::future::pending::<()>().await;
                    }
                })
                .await;
            if let Err(e) = served {
                tracing::warn!(error = %e, "the web console stopped");
            }
        });
        tracing::info!(%local, "web console listening");
        Ok(RunningConsole {
            addr: local,
            stop_tx: self.stop_tx,
            task: Some(task),
        })
    }
}

/// A console being served; stop it with [`stop`](Self::stop). Dropped (an early return of
/// the program that serves it, say), it stops the console too, without waiting for open
/// requests.
#[derive(Debug)]
#[must_use = "dropping the handle stops the console; keep it for as long as it should serve"]
pub struct RunningConsole {
    addr: SocketAddr,
    stop_tx: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl Drop for RunningConsole {
    fn drop(&mut self) {
        let _ = self.stop_tx.send(true);
    }
}

impl RunningConsole {
    /// The address it listens on (with the port chosen when asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting connections, ends the live streams, and waits for open requests.
    pub async fn stop(mut self) {
        let _ = self.stop_tx.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

/// Whether this request may read without the token (set by [`access`] for the pages).
#[derive(Debug, Clone, Copy)]
pub(crate) struct OpenReads(pub(crate) bool);

/// The access rules: actions (anything but GET/HEAD) always need the token; reads need it
/// unless the console listens on loopback. The page shells and the static files carry no
/// data and are always served (the script then reads through the API with the token).
async fn access(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    // Open reads are for this machine: a page of another site that got its name resolved to
    // 127.0.0.1 (DNS rebinding) sends its own name as `Host`, and reads like a remote client.
    let open = state.reads_open && loopback_host(&req);
    req.extensions_mut().insert(OpenReads(open));
    let read = matches!(*req.method(), Method::GET | Method::HEAD);
    let path = req.uri().path();
    let needs_token = if read {
        !open && path.starts_with("/api/")
    } else {
        true
    };
    if needs_token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        match given {
            None => {
                return ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "token_required",
                    "this request needs the console's token: `Authorization: Bearer <token>`",
                )
                .into_response();
            }
            Some(given) if !state.token.accepts(given) => {
                tracing::warn!(method = %req.method(), path, "web console request with a wrong token refused");
                return ApiError::new(
                    StatusCode::FORBIDDEN,
                    "token_refused",
                    "the token in `Authorization` is not the console's token",
                )
                .into_response();
            }
            Some(_) => {}
        }
    }
    next.run(req).await
}

/// Whether the request's `Host` names this machine (`localhost`, `127.0.0.1`, `[::1]`, with or
/// without a port).
fn loopback_host(req: &Request) -> bool {
    let Some(host) = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
    else {
        // HTTP/1.1 requires it; an HTTP/1.0 client on this machine may leave it out.
        return true;
    };
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or_default()
    } else {
        host.rsplit_once(':').map_or(host, |(name, _)| name)
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}
