//! The reference coordinator's web console: `dtf-coordinator --ui 127.0.0.1:8080` mounts the
//! `dtf-console` crate on the run's plugin manager (see `docs/web-console.md`). Off by default.
//!
//! The token comes from `DTF_UI_TOKEN`, else from the file named by `DTF_UI_TOKEN_FILE`; when
//! neither is set a random one is generated and printed once, on stderr, with the console's
//! address. It is never logged.

use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use dtf_console::{AccessToken, Console, ConsoleConfig, RunningConsole, TokenOrigin};
use dtf_plugin_core::PluginManager;

use crate::CoordinatorError;

/// The environment variable naming a file that holds the console's token.
pub const TOKEN_FILE_ENV: &str = "DTF_UI_TOKEN_FILE";

/// Parses the value of `--ui`: `HOST:PORT`, or a bare `PORT` (then on 127.0.0.1).
///
/// # Errors
///
/// [`CoordinatorError::Usage`] naming the flag and the value.
pub fn parse_ui(value: &str) -> Result<SocketAddr, CoordinatorError> {
    if let Ok(port) = value.parse::<u16>() {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    value.parse().map_err(|_| {
        CoordinatorError::Usage(format!(
            "--ui: expected an address like 127.0.0.1:8080 (or a port), got `{value}`"
        ))
    })
}

/// Starts the console on `manager` when `addr` is set, and says where on stderr (with the
/// token when it was generated). The token comes from `DTF_UI_TOKEN`, else the file named by
/// `DTF_UI_TOKEN_FILE`, else `token_file` (`[ui] token_file`), else it is generated.
///
/// # Errors
///
/// [`CoordinatorError::Console`] when the token file cannot be read or the address bound.
pub async fn start(
    manager: &PluginManager,
    addr: Option<SocketAddr>,
    token_file: Option<&Path>,
) -> Result<Option<RunningConsole>, CoordinatorError> {
    let Some(addr) = addr else {
        return Ok(None);
    };
    let file = std::env::var_os(TOKEN_FILE_ENV)
        .map(PathBuf::from)
        .or_else(|| token_file.map(Path::to_owned));
    let token = AccessToken::resolve(file.as_deref())?;
    let generated = *token.origin() == TokenOrigin::Generated;
    // The fragment never reaches the server; the page keeps the token for the tab.
    let link = generated.then(|| format!("#token={}", token.expose()));
    let console = Console::attach(manager, token, ConsoleConfig::default().bind(addr)).await?;
    let running = console.serve().await?;
    let local = running.local_addr();
    let mut err = std::io::stderr();
    let _ = match link {
        Some(link) => writeln!(
            err,
            "web console: http://{local}/ (actions need the token, generated for this run; \
             open http://{local}/{link} or set DTF_UI_TOKEN)"
        ),
        None => writeln!(err, "web console: http://{local}/"),
    };
    Ok(Some(running))
}
