//! What every binary of `dtf-examples` shares about user output: when colour is allowed, and
//! the log subscriber (stderr, one CI-safe line per event, colour only on a terminal).

use std::io::IsTerminal as _;
use std::time::Duration;

/// Whether colour may be written to a stream that `is_terminal` says is (or is not) a
/// terminal: only to a terminal, and never when `NO_COLOR` is set to a non-empty value
/// (<https://no-color.org>).
pub fn colour(is_terminal: bool) -> bool {
    colour_with(is_terminal, std::env::var_os("NO_COLOR").as_deref())
}

/// [`colour`] with the value of `NO_COLOR` given.
fn colour_with(is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    is_terminal && no_color.is_none_or(|v| v.is_empty())
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

/// The style of every table `dtf-coordinator` prints: no borders and no lines, so that each
/// line of the output is a header or a row (scripts split them on blanks), with two spaces
/// between columns (the padding after each cell).
const TABLE_STYLE: &str = comfy_table::presets::NOTHING;

/// A table with `header`, in the coordinator's style; the columns at `right_aligned`
/// (numbers) are aligned right. Cells must be one line of neutralised text
/// ([`dtf_plugins_ci::neutralize`]) when they come from tasks or plugins; render with
/// [`render_table`].
pub fn table(header: &[&str], right_aligned: &[usize]) -> comfy_table::Table {
    let mut table = comfy_table::Table::new();
    table.load_preset(TABLE_STYLE).set_header(header.to_vec());
    for (i, column) in table.column_iter_mut().enumerate() {
        column.set_padding((0, 2));
        if right_aligned.contains(&i) {
            column.set_cell_alignment(comfy_table::CellAlignment::Right);
        }
    }
    table
}

/// `table` as text, each line without trailing blanks and ending with a newline.
pub fn render_table(table: &comfy_table::Table) -> String {
    let mut out = table.trim_fmt();
    out.push('\n');
    out
}

/// A duration for people: `850 µs`, `27.96 ms`, `1.50 s`, `2m 05s`, `1h 02m` (never Rust's
/// Debug form).
pub fn duration(d: Duration) -> String {
    let secs = d.as_secs();
    if d < Duration::from_millis(1) {
        format!("{} µs", d.as_micros())
    } else if d < Duration::from_secs(1) {
        format!("{:.2} ms", d.as_secs_f64() * 1_000.0)
    } else if secs < 60 {
        format!("{:.2} s", d.as_secs_f64())
    } else if secs < 3_600 {
        format!("{}m {:02}s", secs / 60, secs % 60)
    } else {
        format!("{}h {:02}m", secs / 3_600, secs % 3_600 / 60)
    }
}

/// An optional duration for people: [`duration`], or `-` when there is none.
pub fn maybe_duration(d: Option<Duration>) -> String {
    d.map_or_else(|| "-".to_owned(), duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_have_one_line_per_row_right_aligned_numbers_and_no_trailing_blanks() {
        let mut t = table(&["name", "count"], &[1]);
        t.add_row(vec!["a", "7"]);
        t.add_row(vec!["longer", "1234"]);
        assert_eq!(
            render_table(&t),
            "name    count\na           7\nlonger   1234\n"
        );
    }

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(duration(Duration::from_micros(850)), "850 µs");
        assert_eq!(duration(Duration::from_micros(27_960)), "27.96 ms");
        assert_eq!(duration(Duration::from_millis(1_500)), "1.50 s");
        assert_eq!(duration(Duration::from_secs(125)), "2m 05s");
        assert_eq!(duration(Duration::from_secs(3_720)), "1h 02m");
        assert_eq!(maybe_duration(None), "-");
        assert_eq!(maybe_duration(Some(Duration::from_millis(2))), "2.00 ms");
    }

    #[test]
    fn colour_only_on_a_terminal_and_never_with_no_color() {
        use std::ffi::OsStr;
        assert!(!colour(false));
        assert!(colour_with(true, None));
        assert!(
            colour_with(true, Some(OsStr::new(""))),
            "an empty NO_COLOR is unset"
        );
        assert!(!colour_with(true, Some(OsStr::new("1"))));
        assert!(!colour_with(false, None));
    }
}
