//! The JSON API under `/api/` (documented in `docs/console-openapi.yaml`).

use std::collections::HashMap;
use std::convert::Infallible;

use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use dtf_plugin_core::{Hook, ManagerError, PluginInfo};
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::broadcast::error::RecvError;

use crate::catalog::{AvailablePlugin, InstalledPlugin};
use crate::redact::{redact, restore_masked};
use crate::run::{CONSOLE_PLUGIN, Notice, RunSnapshot, epoch_ms};
use crate::server::AppState;

/// An API error: a status and a JSON body `{"error": message, "code": code}`.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) code: &'static str,
    pub(crate) message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    code: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: &self.message,
            code: self.code,
        };
        let mut resp = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

impl From<ManagerError> for ApiError {
    fn from(e: ManagerError) -> Self {
        let (status, code) = match &e {
            ManagerError::UnknownPlugin { .. } => (StatusCode::NOT_FOUND, "unknown_plugin"),
            ManagerError::WrongState { .. } => (StatusCode::CONFLICT, "wrong_state"),
            ManagerError::DuplicateName(_) => (StatusCode::CONFLICT, "duplicate_name"),
            ManagerError::ConfigRejected { .. } => {
                (StatusCode::UNPROCESSABLE_ENTITY, "config_rejected")
            }
            ManagerError::Config(_) => (StatusCode::UNPROCESSABLE_ENTITY, "config_invalid"),
            ManagerError::ShutDown => (StatusCode::SERVICE_UNAVAILABLE, "shut_down"),
            // The plugin could not start (its settings, or what it needs, are wrong): the
            // reason is the plugin's, not the console's failure.
            ManagerError::StartFailed { .. } | ManagerError::Spawn { .. } => {
                (StatusCode::CONFLICT, "start_failed")
            }
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "manager_error"),
        };
        // ManagerError messages name plugins, keys and reasons, never configuration values
        // (the core redacts values out of serde messages).
        Self::new(status, code, e.to_string())
    }
}

impl From<PathRejection> for ApiError {
    fn from(e: PathRejection) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_path", e.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(e: QueryRejection) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_query", e.body_text())
    }
}

impl From<BytesRejection> for ApiError {
    fn from(e: BytesRejection) -> Self {
        let status = e.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            Self::new(
                status,
                "body_too_large",
                "the request body is larger than the console accepts",
            )
        } else {
            Self::new(status, "bad_body", e.body_text())
        }
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// One plugin as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct PluginRow {
    pub(crate) name: String,
    pub(crate) kind: String,
    pub(crate) version: String,
    pub(crate) state: String,
    pub(crate) hooks: Vec<Hook>,
    pub(crate) restart_policy: Value,
    pub(crate) queue_depth: u64,
    pub(crate) published: u64,
    pub(crate) delivered: u64,
    pub(crate) dropped: u64,
    pub(crate) dead_letters: u64,
    pub(crate) restarts: u32,
    pub(crate) failures: u32,
    pub(crate) last_error: Option<String>,
    /// Whether this is the console's own plugin.
    pub(crate) console: bool,
    /// `local` (in the coordinator's process) or `external`; `None` when the embedding
    /// coordinator did not say.
    pub(crate) source: Option<&'static str>,
}

impl PluginRow {
    /// The row of `p`, its source looked up in `installed`.
    pub(crate) fn new(p: &PluginInfo, installed: &HashMap<String, InstalledPlugin>) -> Self {
        Self {
            name: p.name.clone(),
            kind: p.kind.to_string(),
            version: p.version.clone(),
            state: p.status.to_string(),
            hooks: p.hooks.iter().collect(),
            restart_policy: serde_json::to_value(p.restart_policy).unwrap_or(Value::Null),
            queue_depth: p.stats.queued,
            published: p.stats.published,
            delivered: p.stats.delivered,
            dropped: p.stats.dropped,
            dead_letters: p.stats.dead_lettered,
            restarts: p.stats.restarts,
            failures: p.stats.failures,
            last_error: p.last_error.clone(),
            console: p.name == CONSOLE_PLUGIN,
            source: installed.get(&p.name).map(|i| i.origin.locality()),
        }
    }
}

/// Query of `GET /api/plugins`.
#[derive(Debug, Deserialize)]
pub(crate) struct ListQuery {
    /// Only plugins whose name contains this.
    #[serde(default)]
    pub(crate) q: Option<String>,
    #[serde(default)]
    pub(crate) offset: Option<usize>,
    #[serde(default)]
    pub(crate) limit: Option<usize>,
}

/// The plugins matching `q`, the page asked for, and how many matched.
pub(crate) async fn plugin_page(
    state: &AppState,
    q: Option<&str>,
    offset: usize,
    limit: usize,
) -> ApiResult<(Vec<PluginRow>, usize)> {
    let list = state.manager.list().await?;
    let q = q.map(str::trim).filter(|q| !q.is_empty());
    let matching: Vec<&PluginInfo> = list
        .iter()
        .filter(|p| q.is_none_or(|q| p.name.contains(q)))
        .collect();
    let total = matching.len();
    let installed = state.catalog.installed();
    let rows = matching
        .into_iter()
        .skip(offset)
        .take(limit)
        .map(|p| PluginRow::new(p, &installed))
        .collect();
    Ok((rows, total))
}

pub(crate) async fn list_plugins(
    State(state): State<AppState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let Query(query) = query?;
    let offset = query.offset.unwrap_or(0);
    let limit = query.limit.unwrap_or(usize::MAX);
    let (rows, total) = plugin_page(&state, query.q.as_deref(), offset, limit).await?;
    let mut resp = Json(rows).into_response();
    resp.headers_mut()
        .insert("x-total-count", HeaderValue::from(total as u64));
    Ok(resp)
}

pub(crate) async fn find_plugin(state: &AppState, name: &str) -> ApiResult<PluginRow> {
    let list = state.manager.list().await?;
    list.iter()
        .find(|p| p.name == name)
        .map(|p| PluginRow::new(p, &state.catalog.installed()))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_plugin",
                format!("find plugin `{name}`: no such plugin"),
            )
        })
}

pub(crate) async fn get_plugin(
    State(state): State<AppState>,
    name: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<PluginRow>> {
    let Path(name) = name?;
    Ok(Json(find_plugin(&state, &name).await?))
}

/// What an action returns.
#[derive(Debug, Serialize)]
pub(crate) struct ActionDone {
    plugin: String,
    action: Action,
    /// The plugin's state afterwards; `null` once removed.
    state: Option<String>,
}

/// What the action endpoints do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Action {
    Enable,
    Disable,
    Restart,
    Remove,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Self::Enable => "enable",
            Self::Disable => "disable",
            Self::Restart => "restart",
            Self::Remove => "remove",
        }
    }
}

async fn act(state: &AppState, name: &str, action: Action) -> ApiResult<Json<ActionDone>> {
    let m = &state.manager;
    match action {
        Action::Enable => m.enable(name).await?,
        Action::Disable => m.disable(name).await?,
        Action::Remove => m.remove(name).await?,
        // The plugin handles what is queued, runs `on_shutdown`, and a new instance from its
        // factory goes on with the next event: nothing published meanwhile is lost (a disable
        // and enable would lose it). A disabled plugin is just enabled.
        Action::Restart => {
            let row = find_plugin(state, name).await?;
            if row.state == "disabled" {
                m.enable(name).await?;
            } else {
                m.restart(name).await?;
            }
        }
    }
    tracing::info!(plugin = %name, action = action.as_str(), "plugin changed from the web console");
    state.shared.plugin_changed(name, action.as_str());
    let after = if action == Action::Remove {
        None
    } else {
        Some(find_plugin(state, name).await?.state)
    };
    Ok(Json(ActionDone {
        plugin: name.to_owned(),
        action,
        state: after,
    }))
}

pub(crate) async fn enable(
    State(state): State<AppState>,
    name: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<ActionDone>> {
    let Path(name) = name?;
    act(&state, &name, Action::Enable).await
}

pub(crate) async fn disable(
    State(state): State<AppState>,
    name: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<ActionDone>> {
    let Path(name) = name?;
    act(&state, &name, Action::Disable).await
}

pub(crate) async fn restart(
    State(state): State<AppState>,
    name: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<ActionDone>> {
    let Path(name) = name?;
    act(&state, &name, Action::Restart).await
}

pub(crate) async fn remove(
    State(state): State<AppState>,
    name: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<ActionDone>> {
    let Path(name) = name?;
    act(&state, &name, Action::Remove).await
}

/// What `GET/PUT /api/plugins/{name}/config` return.
#[derive(Debug, Serialize)]
pub(crate) struct ConfigBody {
    plugin: String,
    /// The configuration in force, secrets shown as `"***"`.
    config: Value,
}

pub(crate) async fn get_config(
    State(state): State<AppState>,
    name: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<ConfigBody>> {
    let Path(name) = name?;
    let config = state.manager.config(&name).await?;
    Ok(Json(ConfigBody {
        plugin: name,
        config: redact(&config),
    }))
}

pub(crate) async fn put_config(
    State(state): State<AppState>,
    name: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<ConfigBody>> {
    let Path(name) = name?;
    let body = body?;
    let mut new: Value = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            format!("the body is not JSON: {e}"),
        )
    })?;
    // A plugin that is not running would only store the settings, unchecked, and fail to
    // start with bad ones at the next enable (losing the good ones): refused instead.
    let row = find_plugin(&state, &name).await?;
    if matches!(row.state.as_str(), "disabled" | "stopped") {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "wrong_state",
            format!(
                "`{name}` is {}: enable it first, so that it checks new settings before they take effect",
                row.state
            ),
        ));
    }
    let current = state.manager.config(&name).await?;
    restore_masked(&mut new, &current)
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "secret_unclear", e))?;
    state.manager.reconfigure(&name, &new).await?;
    tracing::info!(plugin = %name, "plugin reconfigured from the web console");
    state.shared.plugin_changed(&name, "config");
    let config = state.manager.config(&name).await?;
    Ok(Json(ConfigBody {
        plugin: name,
        config: redact(&config),
    }))
}

/// One dead letter as the API shows it.
#[derive(Debug, Serialize)]
pub(crate) struct DeadLetterRow {
    pub(crate) seq: u64,
    pub(crate) hook: Hook,
    /// When the event was published (ms since the Unix epoch); the failure came after.
    pub(crate) time_ms: u64,
    pub(crate) error: String,
    pub(crate) event: dtf_plugin_core::Event,
}

/// Query of `GET /api/plugins/{name}/dead-letters`.
#[derive(Debug, Deserialize)]
pub(crate) struct DeadLetterQuery {
    #[serde(default)]
    limit: Option<usize>,
}

/// A plugin's dead letters, newest first, at most `limit`.
pub(crate) async fn dead_letter_rows(
    state: &AppState,
    name: &str,
    limit: usize,
) -> ApiResult<Vec<DeadLetterRow>> {
    let letters = state.manager.dead_letters(name).await?;
    Ok(letters
        .into_iter()
        .rev()
        .take(limit)
        .map(|d| DeadLetterRow {
            seq: d.event.meta.seq,
            hook: d.event.hook(),
            time_ms: epoch_ms(d.event.meta.time),
            error: d.error,
            event: d.event,
        })
        .collect())
}

pub(crate) async fn dead_letters(
    State(state): State<AppState>,
    name: Result<Path<String>, PathRejection>,
    query: Result<Query<DeadLetterQuery>, QueryRejection>,
) -> ApiResult<Json<Vec<DeadLetterRow>>> {
    let Path(name) = name?;
    let Query(query) = query?;
    let rows = dead_letter_rows(&state, &name, query.limit.unwrap_or(usize::MAX)).await?;
    Ok(Json(rows))
}

/// The run snapshot with the console's own drop count filled in.
pub(crate) async fn run_snapshot(state: &AppState) -> RunSnapshot {
    let mut snap = state.shared.snapshot();
    snap.console_dropped = state
        .manager
        .stats(CONSOLE_PLUGIN)
        .await
        .map(|s| s.dropped)
        .unwrap_or(0);
    snap
}

pub(crate) async fn run(State(state): State<AppState>) -> Json<RunSnapshot> {
    Json(run_snapshot(&state).await)
}

/// One installed plugin as `GET /api/registry` shows it.
#[derive(Debug, Serialize)]
pub(crate) struct InstalledRow {
    pub(crate) name: String,
    /// The installed version (the running one when the catalog does not list it).
    pub(crate) version: String,
    pub(crate) description: String,
    /// `built-in`, `directory`, `index`, or `None` when the coordinator did not say.
    pub(crate) source: Option<&'static str>,
    /// `local` or `external`, or `None` when unknown.
    pub(crate) locality: Option<&'static str>,
    /// The crate, the manifest path or the index it came from.
    pub(crate) location: Option<String>,
    /// For a plugin installed from an index: the key that signed it.
    pub(crate) signed_by: Option<String>,
    /// Its state in this run, `None` when it is not running in it.
    pub(crate) state: Option<String>,
    /// The version running in this run, when it runs.
    pub(crate) running_version: Option<String>,
}

/// What `GET /api/registry` returns.
#[derive(Debug, Serialize)]
pub(crate) struct Registry {
    /// Whether the embedding coordinator said where its plugins come from.
    pub(crate) catalog: bool,
    /// Installed plugins (those of the catalog and those running), by name.
    pub(crate) installed: Vec<InstalledRow>,
    /// The plugin indexes configured.
    pub(crate) indexes: Vec<String>,
    /// What they offer; `None` when no index is configured or they could not be read.
    pub(crate) available: Option<Vec<AvailablePlugin>>,
    /// Why the indexes could not be read.
    pub(crate) index_error: Option<String>,
}

/// Where a plugin came from, as the browser may see it (an index without credentials).
fn location(origin: &crate::PluginOrigin) -> String {
    crate::catalog::without_credentials(&origin.location())
}

/// The registry: installed plugins (with their state in this run) and available ones.
pub(crate) async fn registry_view(state: &AppState) -> ApiResult<Registry> {
    let running = state.manager.list().await?;
    let mut installed = state.catalog.installed();
    let mut rows: Vec<InstalledRow> = Vec::with_capacity(installed.len() + running.len());
    for p in &running {
        let known = installed.remove(&p.name);
        rows.push(InstalledRow {
            name: p.name.clone(),
            version: known
                .as_ref()
                .map_or_else(|| p.version.clone(), |k| k.version.clone()),
            description: known
                .as_ref()
                .map(|k| k.description.clone())
                .unwrap_or_default(),
            source: known.as_ref().map(|k| k.origin.as_str()),
            locality: known.as_ref().map(|k| k.origin.locality()),
            location: known.as_ref().map(|k| location(&k.origin)),
            signed_by: known.as_ref().and_then(|k| match &k.origin {
                crate::PluginOrigin::Index { signed_by, .. } => Some(signed_by.clone()),
                _ => None,
            }),
            state: Some(p.status.to_string()),
            running_version: Some(p.version.clone()),
        });
    }
    for k in installed.into_values() {
        rows.push(InstalledRow {
            signed_by: match &k.origin {
                crate::PluginOrigin::Index { signed_by, .. } => Some(signed_by.clone()),
                _ => None,
            },
            source: Some(k.origin.as_str()),
            locality: Some(k.origin.locality()),
            location: Some(location(&k.origin)),
            name: k.name,
            version: k.version,
            description: k.description,
            state: None,
            running_version: None,
        });
    }
    rows.sort_by(|a, b| a.name.cmp(&b.name));
    let (available, index_error) = match state.catalog.available().await {
        None => (None, None),
        Some(Ok(list)) => (Some(list), None),
        Some(Err(e)) => (None, Some(e)),
    };
    Ok(Registry {
        catalog: state.catalog.is_known(),
        installed: rows,
        indexes: state.catalog.indexes(),
        available,
        index_error,
    })
}

pub(crate) async fn registry(State(state): State<AppState>) -> ApiResult<Json<Registry>> {
    Ok(Json(registry_view(&state).await?))
}

/// Query of `GET /api/events`.
#[derive(Debug, Deserialize)]
pub(crate) struct EventsQuery {
    /// Comma-separated hook names (`task_completed,task_failed`); all hooks when absent.
    #[serde(default)]
    hook: Option<String>,
}

/// Parses a comma-separated list of hook names.
pub(crate) fn parse_hooks(list: &str) -> ApiResult<Vec<Hook>> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            serde_json::from_value::<Hook>(Value::String(s.to_owned())).map_err(|_| {
                let known = Hook::ALL
                    .iter()
                    .filter_map(|h| serde_json::to_value(h).ok())
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect::<Vec<_>>()
                    .join(", ");
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "unknown_hook",
                    format!("no hook `{s}` (known: {known})"),
                )
            })
        })
        .collect()
}

/// How often the live stream sends the run counts.
const RUN_TICK: Duration = Duration::from_secs(1);

pub(crate) async fn events(
    State(state): State<AppState>,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> ApiResult<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>> {
    let Query(query) = query?;
    let hooks = match query.hook.as_deref() {
        Some(list) => Some(parse_hooks(list)?),
        None => None,
    };
    let rx = state.shared.tx.subscribe();
    let stop = state.stop.clone();
    let mut tick = tokio::time::interval(RUN_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let init = (rx, tick, stop, hooks, state);
    let stream = futures_util::stream::unfold(
        init,
        |(mut rx, mut tick, mut stop, hooks, state)| async move {
            loop {
                let event = tokio::select! {
                    biased;
                    // Only a stop ends the stream: once the `Console` (or `RunningConsole`)
                    // handle is dropped, `changed` fails, and a router kept without its
                    // console (`Console::attach(..).await?.router(..)`) must stay live.
                    Ok(()) = stop.changed() => return None,
                    got = rx.recv() => match got {
                        Ok(Notice::Event { hook, json }) => {
                            if hooks.as_ref().is_some_and(|hs| !hs.contains(&hook)) {
                                continue;
                            }
                            SseEvent::default().event("bus").data(&*json)
                        }
                        Ok(Notice::Plugin { json }) => SseEvent::default().event("plugin").data(&*json),
                        Err(RecvError::Lagged(n)) => SseEvent::default()
                            .event("lagged")
                            .data(format!("{{\"missed\":{n}}}")),
                        Err(RecvError::Closed) => return None,
                    },
                    _ = tick.tick() => {
                        let snap = run_snapshot(&state).await;
                        match serde_json::to_string(&snap) {
                            Ok(json) => SseEvent::default().event("run").data(json),
                            Err(_) => continue,
                        }
                    }
                };
                return Some((Ok(event), (rx, tick, stop, hooks, state)));
            }
        },
    );
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

pub(crate) async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such page or API endpoint",
    )
}

pub(crate) async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this method is not allowed here (actions are POST, PUT or DELETE; reads are GET)",
    )
}
