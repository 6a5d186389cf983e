//! [`ReportFiles`]: which report files the reporters wrote, and which they could not write,
//! so that the application can name them at the end of a run and fail it when one is missing.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use crate::error::CiError;

/// One report file a reporter tried to write.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReportFile {
    /// The file.
    pub path: PathBuf,
    /// Why it could not be written (`None`: it was written).
    pub error: Option<String>,
}

/// The report files written (or not) by [`crate::CiReporter`] and [`crate::TaskReporter`],
/// shared between the plugin (every restarted instance too) and the application. Cloning
/// shares the record.
///
/// ```
/// let files = dtf_plugins_ci::ReportFiles::new();
/// let reporter = dtf_plugins_ci::CiReporter::new().with_report_files(files.clone());
/// # drop(reporter);
/// // … after the run:
/// for path in files.written() {
///     eprintln!("report written: {}", path.display());
/// }
/// assert!(files.failed().is_empty());
/// ```
#[derive(Debug, Clone, Default)]
pub struct ReportFiles {
    files: Arc<Mutex<Vec<ReportFile>>>,
}

impl ReportFiles {
    /// An empty record.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records the outcome of writing `path` (a later outcome for the same file replaces an
    /// earlier one).
    pub(crate) fn record(&self, path: &Path, result: &Result<(), CiError>) {
        let mut files = self.files.lock().unwrap_or_else(PoisonError::into_inner);
        files.retain(|f| f.path != path);
        files.push(ReportFile {
            path: path.to_owned(),
            error: result.as_ref().err().map(ToString::to_string),
        });
    }

    /// Every file tried, in the order they were written.
    pub fn all(&self) -> Vec<ReportFile> {
        self.files
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The files written.
    pub fn written(&self) -> Vec<PathBuf> {
        self.all()
            .into_iter()
            .filter(|f| f.error.is_none())
            .map(|f| f.path)
            .collect()
    }

    /// The files that could not be written, each with its error.
    pub fn failed(&self) -> Vec<ReportFile> {
        self.all()
            .into_iter()
            .filter(|f| f.error.is_some())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_written_and_failed_files_and_the_last_outcome_wins() {
        let files = ReportFiles::new();
        files.record(Path::new("a.xml"), &Ok(()));
        let err = CiError::Write {
            path: PathBuf::from("b.json"),
            source: std::io::Error::other("disk full"),
        };
        files.record(Path::new("b.json"), &Err(err));
        assert_eq!(files.written(), [PathBuf::from("a.xml")]);
        let failed = files.failed();
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].path, PathBuf::from("b.json"));
        assert_eq!(
            failed[0].error.as_deref(),
            Some("write report `b.json`: disk full")
        );
        files.record(Path::new("b.json"), &Ok(()));
        assert!(files.failed().is_empty());
        assert_eq!(files.all().len(), 2);
    }
}
