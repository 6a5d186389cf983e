//! # dtf-scheduler (skeleton)
//!
//! Will hold the scheduler plugins of dtf: the scheduling-framework extension points
//! (queue-sort, filter, score, bind), a registry of named strategies (`fifo`, `priority`,
//! `round-robin`, `fairness`, ...), a scheduling coordinator that runs as a plugin on the
//! [`dtf_plugin_core`] bus, and a deterministic simulator that reports fairness and wait-time
//! metrics. Nothing is implemented yet; see the project's issue tracker.

#![forbid(unsafe_code)]
