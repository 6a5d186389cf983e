//! The template plugin on a real manager: it counts failures and publishes the running total.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use dtf_plugin_core::prelude::*;
use dtf_plugin_core::testing::RecordingPlugin;
use dtf_plugin_core::{PluginRegistry, event::TaskError};

#[tokio::test]
async fn counts_failed_tasks_and_publishes_the_running_total() {
    let mut registry = PluginRegistry::new();
    dtf_plugin_template::register(&mut registry).unwrap();
    let spec = registry.spec(dtf_plugin_template::NAME, None).unwrap();
    let (rec, recording) = RecordingPlugin::spec("rec", Hook::Custom);
    let manager = PluginManager::builder()
        .spec(spec)
        .spec(rec)
        .spawn()
        .await
        .unwrap();
    for i in 0..3 {
        let error = TaskError::builder()
            .kind("ExitCode(1)")
            .message("boom")
            .build();
        manager
            .publish(EventKind::task_failed(format!("t{i}"), error, false))
            .await
            .unwrap();
    }
    manager
        .publish(EventKind::task_created("t9", "fine"))
        .await
        .unwrap();
    manager.settle().await;
    let totals: Vec<serde_json::Value> = recording
        .events()
        .into_iter()
        .filter_map(|e| match e.kind {
            EventKind::Custom(c) if c.name == "failure-count.total" => Some(c.payload.clone()),
            _ => None,
        })
        .collect();
    let expected: Vec<serde_json::Value> = (1..=3)
        .map(|n| serde_json::json!({ "failed": n }))
        .collect();
    assert_eq!(totals, expected);
    assert!(manager.shutdown(ShutdownReason::Completed).await.clean);
}

#[test]
fn settings_typos_are_caught_before_start() {
    let mut registry = PluginRegistry::new();
    dtf_plugin_template::register(&mut registry).unwrap();
    let config = dtf_plugin_core::config::ConfigLoader::new()
        .source("dtf.toml", "[plugins.failure-count]\nenabled = true\n[plugins.failure-count.settings]\nwarn_fro = 2\n")
        .load()
        .unwrap();
    let err = config.validate(&registry).unwrap_err().to_string();
    assert!(err.contains("warn_fro"), "{err}");
}
