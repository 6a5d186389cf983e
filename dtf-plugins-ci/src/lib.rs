//! # dtf-plugins-ci (skeleton)
//!
//! Will hold the CI/CD integration of dtf: CI system detection, JUnit XML and other report
//! formats, live status for TeamCity and Azure DevOps, and API clients for GitHub, GitLab,
//! Azure DevOps, Bitbucket, Jenkins and CircleCI, all driven by [`dtf_plugin_core`] events.
//! Nothing is implemented yet; see the project's issue tracker.

#![forbid(unsafe_code)]
