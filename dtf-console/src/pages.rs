//! Server-rendered pages. The script (`assets/console.js`, vendored, no build step) keeps them
//! live over the event stream and sends the actions to the API.

use std::fmt::Write as _;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderValue, header};
use axum::response::{Html, IntoResponse, Response};
use serde_json::Value;

use crate::api::{self, ApiError, PluginRow};
use crate::redact::redact;
use crate::server::{AppState, OpenReads};

const SCRIPT: &str = include_str!("../assets/console.js");
const STYLE: &str = include_str!("../assets/console.css");

/// Dead letters shown on a plugin's page.
const DEAD_LETTERS_SHOWN: usize = 100;

/// Escapes text for HTML element content and quoted attribute values.
pub(crate) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes a path segment.
fn seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

fn layout(title: &str, active: &str, reads_open: bool, body: &str) -> Html<String> {
    let nav = |href: &str, label: &str| {
        let class = if label == active {
            " class=\"active\""
        } else {
            ""
        };
        format!("<a href=\"{href}\"{class}>{label}</a>")
    };
    let closed = if reads_open {
        ""
    } else {
        "<p class=\"notice\">Reading needs the token here (the console is not reached through a loopback address): enter the token above.</p>"
    };
    Html(format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>{title} · dtf console</title><link rel=\"stylesheet\" href=\"/static/console.css\"></head>\
<body data-reads-open=\"{reads_open}\"><header><strong>dtf console</strong><nav>{} {} {}</nav>\
<form id=\"token-form\" autocomplete=\"off\"><input id=\"token\" type=\"password\" placeholder=\"access token\" aria-label=\"access token\">\
<button type=\"submit\">Use token</button></form><span id=\"live\" class=\"live\">offline</span></header>\
<main>{closed}<div id=\"msg\" role=\"status\"></div>{body}</main>\
<script src=\"/static/console.js\"></script></body></html>",
        nav("/", "Plugins"),
        nav("/run", "Run"),
        nav("/registry", "Registry"),
        title = esc(title),
    ))
}

const COLUMNS: [(&str, &str); 12] = [
    ("name", "Name"),
    ("kind", "Kind"),
    ("version", "Version"),
    ("source", "Source"),
    ("state", "State"),
    ("hooks", "Hooks"),
    ("queue_depth", "Queue"),
    ("delivered", "Delivered"),
    ("dead_letters", "Dead letters"),
    ("restarts", "Restarts"),
    ("last_error", "Last error"),
    ("actions", "Actions"),
];

fn hooks_text(row: &PluginRow) -> String {
    if row.hooks.len() > 4 {
        return format!("{} hooks", row.hooks.len());
    }
    row.hooks
        .iter()
        .filter_map(|h| serde_json::to_value(h).ok())
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect::<Vec<_>>()
        .join(", ")
}

fn action_buttons(name: &str) -> String {
    let n = esc(name);
    ["enable", "disable", "restart", "remove"]
        .iter()
        .map(|a| format!("<button type=\"button\" data-act=\"{a}\" data-name=\"{n}\">{a}</button>"))
        .collect::<Vec<_>>()
        .join("")
}

fn plugin_row(row: &PluginRow) -> String {
    format!(
        "<tr data-name=\"{n}\"><td data-f=\"name\"><a href=\"/plugins/{s}\">{n}</a></td>\
<td data-f=\"kind\">{}</td><td data-f=\"version\">{}</td><td data-f=\"source\">{}</td>\
<td data-f=\"state\" class=\"state state-{st}\">{st}</td><td data-f=\"hooks\">{}</td>\
<td data-f=\"queue_depth\" class=\"num\">{}</td><td data-f=\"delivered\" class=\"num\">{}</td>\
<td data-f=\"dead_letters\" class=\"num\">{}</td><td data-f=\"restarts\" class=\"num\">{}</td>\
<td data-f=\"last_error\" class=\"err\">{}</td><td class=\"actions\">{}</td></tr>",
        esc(&row.kind),
        esc(&row.version),
        row.source.unwrap_or(""),
        esc(&hooks_text(row)),
        row.queue_depth,
        row.delivered,
        row.dead_letters,
        row.restarts,
        esc(row.last_error.as_deref().unwrap_or("")),
        action_buttons(&row.name),
        n = esc(&row.name),
        s = seg(&row.name),
        st = esc(&row.state),
    )
}

/// `GET /`: the plugins table, one page at a time (`?page=1&q=name`).
pub(crate) async fn plugins_page(
    State(state): State<AppState>,
    Extension(OpenReads(open)): Extension<OpenReads>,
    query: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Html<String>, ApiError> {
    let Query(query) = query?;
    let size = state.page_size;
    let page = query.page.unwrap_or(1).max(1);
    // Saturating: any page number in the query is accepted (past the end, an empty page).
    let offset = (page - 1).saturating_mul(size);
    let q = query.q.clone().unwrap_or_default();
    let mut body = String::with_capacity(64 * 1024);
    let (rows, total) = if open {
        api::plugin_page(&state, Some(&q), offset, size).await?
    } else {
        (Vec::new(), 0)
    };
    let pages = total.div_ceil(size).max(1);
    let first = if total == 0 {
        0
    } else {
        offset.saturating_add(1).min(total)
    };
    let last = offset.saturating_add(rows.len()).min(total);
    let _ = write!(
        body,
        "<h1>Plugins</h1><form class=\"filter\" method=\"get\" action=\"/\">\
<input name=\"q\" value=\"{}\" placeholder=\"filter by name\" aria-label=\"filter by name\">\
<button type=\"submit\">Filter</button></form>\
<p class=\"pager\"><span id=\"range\">{first}–{last} of {total}</span> ",
        esc(&q)
    );
    let link = |p: usize, label: &str| {
        format!(
            "<a href=\"/?page={p}&amp;q={}\" data-page=\"{p}\">{label}</a>",
            seg(&q)
        )
    };
    if page > 1 {
        body.push_str(&link(page - 1, "‹ previous"));
        body.push(' ');
    }
    if page < pages {
        body.push_str(&link(page + 1, "next ›"));
    }
    let _ = write!(
        body,
        "</p><table id=\"plugins\" data-offset=\"{}\" data-limit=\"{size}\" data-q=\"{}\"><thead><tr>",
        offset,
        esc(&q)
    );
    for (_, label) in COLUMNS {
        let _ = write!(body, "<th>{label}</th>");
    }
    body.push_str("</tr></thead><tbody>");
    for row in &rows {
        body.push_str(&plugin_row(row));
    }
    body.push_str("</tbody></table>");
    Ok(layout("Plugins", "Plugins", open, &body))
}

/// Query of the plugins page.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct PageQuery {
    #[serde(default)]
    page: Option<usize>,
    #[serde(default)]
    q: Option<String>,
}

/// `GET /plugins/{name}`: one plugin, its configuration editor and its dead letters.
pub(crate) async fn plugin_page(
    State(state): State<AppState>,
    Extension(OpenReads(open)): Extension<OpenReads>,
    name: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(name) = name?;
    let mut body = String::with_capacity(16 * 1024);
    let (row, config, letters) = if open {
        let row = api::find_plugin(&state, &name).await?;
        let config = redact(&state.manager.config(&name).await?);
        let letters = api::dead_letter_rows(&state, &name, DEAD_LETTERS_SHOWN).await?;
        (Some(row), config, letters)
    } else {
        (None, Value::Null, Vec::new())
    };
    let _ = write!(
        body,
        "<h1>Plugin <code>{n}</code></h1><table id=\"plugin\" data-name=\"{n}\"><thead><tr>",
        n = esc(&name)
    );
    for (_, label) in COLUMNS {
        let _ = write!(body, "<th>{label}</th>");
    }
    body.push_str("</tr></thead><tbody>");
    if let Some(row) = &row {
        body.push_str(&plugin_row(row));
    }
    let pretty = serde_json::to_string_pretty(&config).unwrap_or_default();
    let _ = write!(
        body,
        "</tbody></table><h2>Settings</h2>\
<p class=\"hint\">Secrets are shown as <code>***</code>; leave them so to keep them.</p>\
<form id=\"config-form\" data-name=\"{n}\"><textarea id=\"config\" rows=\"12\" spellcheck=\"false\">{}</textarea>\
<div><button type=\"submit\">Apply settings</button></div></form>\
<pre id=\"config-error\" class=\"error\" hidden></pre>\
<h2>Dead letters <small>(newest first, at most {DEAD_LETTERS_SHOWN})</small></h2>\
<table id=\"dead-letters\"><thead><tr><th>Seq</th><th>When</th><th>Hook</th><th>Error</th><th>Event</th></tr></thead><tbody>",
        esc(&pretty),
        n = esc(&name),
    );
    for d in &letters {
        let event = serde_json::to_string(&d.event.kind).unwrap_or_default();
        let hook = serde_json::to_value(d.hook).unwrap_or(Value::Null);
        let _ = write!(
            body,
            "<tr><td class=\"num\">{}</td><td data-ms=\"{}\" class=\"time\">{}</td><td>{}</td><td class=\"err\">{}</td><td><code>{}</code></td></tr>",
            d.seq,
            d.time_ms,
            d.time_ms,
            esc(hook.as_str().unwrap_or("")),
            esc(&d.error),
            esc(&truncate(&event, 400)),
        );
    }
    body.push_str("</tbody></table>");
    Ok(layout(&name, "", open, &body).into_response())
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// `GET /run`: task counts with a progress bar, workers, failures and the event stream.
pub(crate) async fn run_page(
    State(state): State<AppState>,
    Extension(OpenReads(open)): Extension<OpenReads>,
) -> Html<String> {
    let snap = if open {
        Some(api::run_snapshot(&state).await)
    } else {
        None
    };
    let mut body = String::with_capacity(16 * 1024);
    let (done, total) = snap
        .as_ref()
        .map_or((0, 0), |s| (s.tasks_done, s.tasks_total));
    let _ = write!(
        body,
        "<h1>Run <code id=\"run-id\">{}</code></h1>\
<div class=\"progress\"><progress id=\"progress\" max=\"{}\" value=\"{done}\"></progress>\
<span id=\"progress-text\">{done} / {total} tasks done</span> · elapsed <span id=\"elapsed\">–</span> · ETA <span id=\"eta\">–</span></div>\
<h2>Tasks by state</h2><table id=\"task-counts\"><tbody>",
        esc(snap
            .as_ref()
            .and_then(|s| s.run_id.as_deref())
            .unwrap_or("")),
        total.max(1),
    );
    for s in [
        "queued",
        "assigned",
        "running",
        "passed",
        "failed",
        "skipped",
        "cancelled",
    ] {
        let n = snap
            .as_ref()
            .and_then(|snap| serde_json::to_value(&snap.tasks_by_state).ok())
            .and_then(|v| v.get(s).and_then(Value::as_u64))
            .unwrap_or(0);
        let _ = write!(
            body,
            "<tr><th>{s}</th><td class=\"num\" data-count=\"{s}\">{n}</td></tr>"
        );
    }
    let events = snap.as_ref().map_or(0, |s| s.events_total);
    let _ = write!(
        body,
        "</tbody></table><p>Events seen: <span id=\"events-total\">{events}</span> \
(dropped by the console's own queue: <span id=\"console-dropped\">0</span>)</p>\
<h2>Workers</h2><table id=\"workers\"><thead><tr><th>Worker</th><th>State</th><th>Running</th><th>Passed</th><th>Failed</th></tr></thead><tbody></tbody></table>\
<h2>Failures</h2><table id=\"failures\"><thead><tr><th>Task</th><th>Kind</th><th>Message</th><th>Output tail</th></tr></thead><tbody></tbody></table>\
<h2>Event stream</h2><form id=\"stream-filter\"><label>Hook <select id=\"hook\"><option value=\"\">all hooks</option>"
    );
    for h in dtf_plugin_core::Hook::ALL {
        if let Some(name) = serde_json::to_value(h)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
        {
            let _ = write!(body, "<option>{name}</option>");
        }
    }
    body.push_str(
        "</select></label> <span id=\"stream-count\">0</span> events received</form>\
<ol id=\"stream\" class=\"stream\" reversed></ol>",
    );
    layout("Run", "Run", open, &body)
}

/// `GET /registry`: installed plugins with their source and state in this run, and what the
/// plugin indexes offer. The script fills both tables from `GET /api/registry`.
pub(crate) async fn registry_page(
    Extension(OpenReads(open)): Extension<OpenReads>,
) -> Html<String> {
    let body = "<h1>Plugin registry</h1>\
<h2>Installed <small id=\"installed-count\"></small></h2>\
<p class=\"hint\">Built into the coordinator (runs in its process), found in a plugin directory, or installed from a plugin index (both run in their own process).</p>\
<table id=\"installed\"><thead><tr><th>Name</th><th>Version</th><th>Source</th><th>From</th><th>In this run</th><th>Description</th></tr></thead><tbody></tbody></table>\
<details id=\"unknown-source\" hidden><summary><span id=\"unknown-count\">0</span> more running plugins whose source the coordinator did not name (see the Plugins page)</summary>\
<p id=\"unknown-names\" class=\"hint\"></p></details>\
<h2>Available from the plugin indexes</h2><p id=\"indexes\" class=\"hint\"></p>\
<table id=\"available\" hidden><thead><tr><th>Name</th><th>Newest</th><th>Installable</th><th>Installed</th><th>Index</th><th>Description</th></tr></thead><tbody></tbody></table>";
    layout("Registry", "Registry", open, body)
}

/// `GET /static/console.js`.
pub(crate) async fn script() -> Response {
    static_file(SCRIPT, "text/javascript; charset=utf-8")
}

/// `GET /static/console.css`.
pub(crate) async fn style() -> Response {
    static_file(STYLE, "text/css; charset=utf-8")
}

fn static_file(body: &'static str, mime: &'static str) -> Response {
    let mut resp = body.into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(mime));
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_encodes_segments() {
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        assert_eq!(seg("a b/c"), "a%20b%2Fc");
    }
}
