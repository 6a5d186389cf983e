//! What every binary of `dtf-examples` shares about user output: when colour is allowed, and
//! the log subscriber (stderr, one CI-safe line per event, colour only on a terminal).

use std::io::IsTerminal as _;

/// Whether colour may be written to a stream that `is_terminal` says is (or is not) a
/// terminal: only to a terminal, and never when `NO_COLOR` is set to a non-empty value
/// (<https://no-color.org>).
pub fn colour(is_terminal: bool) -> bool {
    is_terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Whether colour may be written to stderr ([`colour`] of stderr).
pub fn stderr_colour() -> bool {
    colour(std::io::stderr().is_terminal())
}

/// Installs the log subscriber of a `dtf-examples` binary: to stderr, each line neutralised
/// for CI runners ([`dtf_plugins_ci::CiSafeWriter`]: task names and errors in logs can start
/// no CI command), ANSI colour only when [`stderr_colour`], filtered by `RUST_LOG` or else
/// `default_filter`. A second call does nothing.
pub fn init_logging(default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let _ = tracing_subscriber::fmt()
        .with_writer(|| dtf_plugins_ci::CiSafeWriter::new(std::io::stderr()))
        .with_ansi(stderr_colour())
        .with_env_filter(filter)
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_colour_off_a_terminal() {
        assert!(!colour(false));
    }
}
