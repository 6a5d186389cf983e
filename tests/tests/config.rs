//! Configuration files: the bad-input table, precedence, redaction, and building a manager
//! from a file.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dtf_plugin_core::config::{ConfigLoader, IssueKind, Origin, check};
use dtf_plugin_core::prelude::*;
use dtf_plugin_core::testing::RecordingPlugin;
use dtf_plugin_core::{
    OverflowPolicy, PluginRegistry, PluginStatus, PublishError, RegistryEntry, RestartBudget,
    Secret,
};
use proptest::prelude::*;
use tokio::sync::watch;

mod common;
use common::{Action, Probe};

/// A notifier-like plugin with a typed configuration holding a secret.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[expect(dead_code, reason = "only deserialized")]
struct SlackConfig {
    webhook_url: Secret,
    #[serde(default)]
    channel: String,
    #[serde(default)]
    retries: u32,
    #[serde(default)]
    mention: Vec<String>,
    #[serde(default)]
    api_key: Option<Secret>,
    #[serde(default)]
    token: Option<Secret>,
}

/// Records the settings it started with.
#[derive(Clone, Default)]
struct Slack {
    started_with: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl Plugin for Slack {
    fn metadata(&self) -> PluginMetadata {
        PluginMetadata::new("slack")
            .version("1.0.0")
            .kind(PluginKind::Notification)
            .hooks(Hook::TaskFailed)
    }
    async fn on_start(&mut self, ctx: &mut PluginContext) -> Result<(), PluginError> {
        self.started_with
            .lock()
            .unwrap()
            .push(ctx.raw_config().clone());
        Ok(())
    }
    async fn on_event(&mut self, _: &mut PluginContext, _: &Event) -> Result<(), PluginError> {
        Ok(())
    }
}

fn registry_with(slack: &Slack) -> PluginRegistry {
    let mut r = PluginRegistry::new();
    let s = slack.clone();
    r.register(
        RegistryEntry::new(move || {
            let s = s.clone();
            PluginSpec::new(move || s.clone())
        })
        .built_in("tests")
        .config_type::<SlackConfig>(),
    )
    .unwrap();
    dtf_scheduler::register(&mut r).unwrap();
    r
}

fn registry() -> PluginRegistry {
    registry_with(&Slack::default())
}

struct Case {
    name: &'static str,
    file: &'static str,
    env: &'static [(&'static str, &'static str)],
    cli: &'static [&'static str],
    expected: &'static [&'static str],
}

const fn case(name: &'static str, file: &'static str, expected: &'static [&'static str]) -> Case {
    Case {
        name,
        file,
        env: &[],
        cli: &[],
        expected,
    }
}

const HOOK: &str = "https://hooks.example.invalid/T000/B000/SECRETPART";

/// At least 30 bad inputs, each with the exact messages it must produce.
const CASES: &[Case] = &[
    // Unknown keys, at every level.
    case(
        "unknown top-level key",
        "plugin_dir = [\"p\"]\n",
        &["dtf.toml:1:1: plugin_dir: unknown key `plugin_dir` (did you mean `plugin_dirs`?)"],
    ),
    case(
        "unknown manager key",
        "[manager]\nqueue_capacty = 1\n",
        &[
            "dtf.toml:2:1: manager.queue_capacty: unknown key `queue_capacty` (did you mean `queue_capacity`?)",
        ],
    ),
    case(
        "unknown key without a close match lists the valid ones",
        "[manager]\ncolour = \"red\"\n",
        &[
            "dtf.toml:2:1: manager.colour: unknown key `colour` (valid: queue_capacity, overflow, handler_timeout, restart_policy, restart_budget, backoff, shutdown_timeout, dead_letter_capacity, source)",
        ],
    ),
    case(
        "unknown restart budget key",
        "[manager.restart_budget]\nmax_restart = 3\n",
        &[
            "dtf.toml:2:1: manager.restart_budget.max_restart: unknown key `max_restart` (did you mean `max_restarts`?)",
        ],
    ),
    case(
        "unknown backoff key",
        "[manager.backoff]\njiter = 0.1\n",
        &["dtf.toml:2:1: manager.backoff.jiter: unknown key `jiter` (did you mean `jitter`?)"],
    ),
    case(
        "unknown plugin section key",
        "[plugins.slack]\nenable = true\n",
        &["dtf.toml:2:1: plugins.slack.enable: unknown key `enable` (did you mean `enabled`?)"],
    ),
    case(
        "unknown plugin setting (typed configuration)",
        "[plugins.slack.settings]\nwebhook_url = \"https://x.invalid\"\nretires = 3\n",
        &[
            "dtf.toml:3:1: plugins.slack.settings.retires: unknown key `retires` (did you mean `retries`?)",
        ],
    ),
    case(
        "two unknown plugin settings are both reported",
        "[plugins.slack.settings]\nwebhook_url = \"https://x.invalid\"\nchanel = \"#ci\"\nmentions = []\n",
        &[
            "dtf.toml:3:1: plugins.slack.settings.chanel: unknown key `chanel` (did you mean `channel`?)",
            "dtf.toml:4:1: plugins.slack.settings.mentions: unknown key `mentions` (did you mean `mention`?)",
        ],
    ),
    case(
        "unknown plugin",
        "[plugins.slak]\nenabled = true\n",
        &["dtf.toml:1:10: plugins.slak: unknown plugin `slak` (did you mean `slack`?)"],
    ),
    // Wrong types.
    case(
        "queue capacity is a string",
        "[manager]\nqueue_capacity = \"big\"\n",
        &["dtf.toml:2:18: manager.queue_capacity: wrong type: expected an integer, found string"],
    ),
    case(
        "duration given as a bare number",
        "[manager]\nhandler_timeout = 30\n",
        &[
            "dtf.toml:2:19: manager.handler_timeout: wrong type: expected a duration string such as \"30s\" or \"250ms\", found integer",
        ],
    ),
    case(
        "overflow is a number",
        "[manager]\noverflow = 1\n",
        &["dtf.toml:2:12: manager.overflow: wrong type: expected a string, found integer"],
    ),
    case(
        "enabled is a string",
        "[plugins.slack]\nenabled = \"yes\"\n",
        &[
            "dtf.toml:2:11: plugins.slack.enabled: wrong type: expected a boolean (true or false), found string",
        ],
    ),
    case(
        "manager is not a table",
        "manager = 5\n",
        &["dtf.toml:1:11: manager: wrong type: expected a table, found integer"],
    ),
    case(
        "plugin directory is not a string",
        "plugin_dirs = [\"ok\", 1]\n",
        &["dtf.toml:1:22: plugin_dirs[1]: wrong type: expected a string (a path), found integer"],
    ),
    case(
        "settings is not a table",
        "[plugins.slack]\nsettings = \"x\"\n",
        &["dtf.toml:2:12: plugins.slack.settings: wrong type: expected a table, found string"],
    ),
    case(
        "typed setting of the wrong type (value not echoed)",
        "[plugins.slack.settings]\nwebhook_url = \"https://x.invalid\"\nretries = \"three\"\n",
        &[
            "dtf.toml:3:11: plugins.slack.settings.retries: invalid type: string \"…\", expected u32",
        ],
    ),
    case(
        "missing required setting",
        "[plugins.slack.settings]\nchannel = \"#ci\"\n",
        &["dtf.toml:1:1: plugins.slack.settings: missing field `webhook_url`"],
    ),
    // Bad values.
    case(
        "queue capacity zero",
        "[manager]\nqueue_capacity = 0\n",
        &["dtf.toml:2:18: manager.queue_capacity: invalid value 0: must be at least 1"],
    ),
    case(
        "negative dead letter capacity",
        "[manager]\ndead_letter_capacity = -1\n",
        &["dtf.toml:2:24: manager.dead_letter_capacity: invalid value -1: must be at least 0"],
    ),
    case(
        "overflow policy misspelt",
        "[manager]\noverflow = \"drop-newest\"\n",
        &[
            "dtf.toml:2:12: manager.overflow: invalid value: expected one of backpressure, drop_newest (did you mean `drop_newest`?)",
        ],
    ),
    case(
        "unknown restart policy",
        "[manager]\nrestart_policy = \"forever\"\n",
        &[
            "dtf.toml:2:18: manager.restart_policy: invalid value: expected one of permanent, transient, temporary",
        ],
    ),
    case(
        "duration without a known unit",
        "[manager]\nshutdown_timeout = \"30 parsecs\"\n",
        &[
            "dtf.toml:2:20: manager.shutdown_timeout: not a duration: use a number with a unit: ms, s, m or h (e.g. \"30s\")",
        ],
    ),
    case(
        "budget window is not a duration",
        "[manager.restart_budget]\nwindow = \"soon\"\n",
        &[
            "dtf.toml:2:10: manager.restart_budget.window: not a duration: use a number with a unit: ms, s, m or h (e.g. \"30s\")",
        ],
    ),
    case(
        "restart budget past the largest count",
        "[manager.restart_budget]\nmax_restarts = 4294967295\n",
        &[
            "dtf.toml:2:16: manager.restart_budget.max_restarts: invalid value 4294967295: must be at most 4294967294; for no limit write \"unlimited\"",
        ],
    ),
    case(
        "restart budget as a word other than unlimited",
        "[manager.restart_budget]\nmax_restarts = \"many\"\n",
        &[
            "dtf.toml:2:16: manager.restart_budget.max_restarts: wrong type: expected an integer or \"unlimited\", found string",
        ],
    ),
    case(
        "jitter above one",
        "[manager.backoff]\njitter = 1.5\n",
        &["dtf.toml:2:10: manager.backoff.jitter: invalid value 1.5: must be between 0 and 1"],
    ),
    case(
        "backoff factor below one",
        "[manager.backoff]\nfactor = 0.5\n",
        &["dtf.toml:2:10: manager.backoff.factor: invalid value 0.5: must be between 1 and 1000"],
    ),
    case(
        "plugin setting checked beyond serde (scheduler strategy)",
        "[plugins.scheduler.settings]\nscheduler = \"fairnes\"\n",
        &[
            "dtf.toml:1:1: plugins.scheduler.settings: build scheduler `fairnes`: no scheduler has this name (available: fairness, fifo, longest-first, priority, round-robin)",
        ],
    ),
    // Environment variables.
    case(
        "missing environment variable",
        "[plugins.slack.settings]\nwebhook_url = \"${SLACK_HOOK}\"\n",
        &[
            "dtf.toml:2:15: plugins.slack.settings.webhook_url: environment variable `SLACK_HOOK` is not set",
        ],
    ),
    case(
        "unterminated variable reference",
        "[plugins.slack.settings]\nwebhook_url = \"${SLACK_HOOK\"\n",
        &[
            "dtf.toml:2:15: plugins.slack.settings.webhook_url: unterminated `${` (write `$$` for a literal `$`)",
        ],
    ),
    Case {
        name: "environment override of the wrong type",
        file: "",
        env: &[("DTF_MANAGER__QUEUE_CAPACITY", "lots")],
        cli: &[],
        expected: &[
            "environment variable DTF_MANAGER__QUEUE_CAPACITY: manager.queue_capacity: wrong type: expected an integer, found string",
        ],
    },
    Case {
        name: "environment override of an unknown key",
        file: "",
        env: &[("DTF_MANAGER__HANDLER_TIMEOUTS", "1s")],
        cli: &[],
        expected: &[
            "environment variable DTF_MANAGER__HANDLER_TIMEOUTS: manager.handler_timeouts: unknown key `handler_timeouts` (did you mean `handler_timeout`?)",
        ],
    },
    // Command-line overrides.
    Case {
        name: "command-line override of an unknown key",
        file: "",
        env: &[],
        cli: &["manager.queue_capacityy=3"],
        expected: &[
            "command-line override of `manager.queue_capacityy`: manager.queue_capacityy: unknown key `queue_capacityy` (did you mean `queue_capacity`?)",
        ],
    },
    Case {
        name: "command-line override without a value",
        file: "",
        env: &[],
        cli: &["manager.queue_capacity"],
        expected: &[
            "command-line override of `argument 1`: expected `key=value` (the argument is not shown: it could hold a secret)",
        ],
    },
    Case {
        name: "command-line override of an unknown section",
        file: "",
        env: &[],
        cli: &["plugin.slack.enabled=false"],
        expected: &[
            "command-line override of `plugin.slack.enabled`: plugin.slack.enabled: unknown key `plugin` (did you mean `plugins`?)",
        ],
    },
    Case {
        name: "command-line value of the wrong type",
        file: "",
        env: &[],
        cli: &["plugins.slack.enabled=maybe"],
        expected: &[
            "command-line override of `plugins.slack.enabled`: plugins.slack.enabled: wrong type: expected a boolean (true or false), found string",
        ],
    },
    // Duplicates and syntax.
    case(
        "duplicate plugin section",
        "[plugins.slack]\nenabled = true\n[plugins.slack]\nenabled = false\n",
        // The parser recovers and reports the repeated key inside the repeated table too.
        &[
            "dtf.toml:3:10: duplicate key",
            "dtf.toml:4:1: duplicate key",
        ],
    ),
    case(
        "duplicate key",
        "[manager]\nqueue_capacity = 1\nqueue_capacity = 2\n",
        &["dtf.toml:3:1: duplicate key"],
    ),
    case(
        "syntax error",
        "[manager\nqueue_capacity = 1\n",
        &["dtf.toml:1:9: unclosed table, expected `]`"],
    ),
    // Several problems at once: all reported, in file order.
    case(
        "every problem of a file in one run",
        "[manager]\nqueue_capacty = 1\noverflow = \"never\"\n\n[plugins.slack]\nenable = true\n",
        &[
            "dtf.toml:2:1: manager.queue_capacty: unknown key `queue_capacty` (did you mean `queue_capacity`?)",
            "dtf.toml:3:12: manager.overflow: invalid value: expected one of backpressure, drop_newest",
            "dtf.toml:6:1: plugins.slack.enable: unknown key `enable` (did you mean `enabled`?)",
        ],
    ),
];

fn run(case: &Case) -> Result<(), String> {
    let env: Vec<(String, String)> = case
        .env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let loader = ConfigLoader::new()
        .source("dtf.toml", case.file)
        .env_vars(env)
        .env_prefix("DTF_")
        .cli_overrides(case.cli.iter().copied());
    check(&loader, &registry())
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[test]
fn every_bad_input_gives_its_message_with_position() {
    assert!(CASES.len() >= 30, "only {} cases", CASES.len());
    let mut failures = Vec::new();
    for case in CASES {
        match run(case) {
            Ok(()) => failures.push(format!("{}: accepted", case.name)),
            Err(got) => {
                let lines: Vec<&str> = got.lines().collect();
                if lines != case.expected {
                    failures.push(format!(
                        "{}:\n  expected {:?}\n  got      {:?}",
                        case.name, case.expected, lines
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn issues_carry_kind_key_and_position() {
    let err = ConfigLoader::new()
        .source("dtf.toml", "[manager]\nqueue_capacity = \"x\"\n")
        .load()
        .unwrap_err();
    let issue = &err.issues[0];
    assert_eq!(issue.kind, IssueKind::WrongType);
    assert_eq!(issue.key, "manager.queue_capacity");
    assert!(
        matches!(
            &issue.origin,
            Origin::File {
                line: 2,
                column: 18,
                ..
            }
        ),
        "{:?}",
        issue.origin
    );
}

#[test]
fn a_missing_file_is_an_error_naming_it() {
    let err = ConfigLoader::new()
        .file("/nonexistent/dtf.toml")
        .load()
        .unwrap_err();
    assert_eq!(err.issues[0].kind, IssueKind::Io);
    assert!(
        err.to_string()
            .starts_with("/nonexistent/dtf.toml: cannot read the file:"),
        "{err}"
    );
}

#[test]
fn dependency_cycles_and_missing_requirements_name_the_plugins() {
    let mut r = registry();
    r.register(
        RegistryEntry::new(|| PluginSpec::new(Slack::default).name("a"))
            .after("b")
            .enabled_by_default(true),
    )
    .unwrap();
    r.register(
        RegistryEntry::new(|| PluginSpec::new(Slack::default).name("b"))
            .requires("a")
            .enabled_by_default(true),
    )
    .unwrap();
    let config = ConfigLoader::new().source("dtf.toml", "").load().unwrap();
    let err = config.validate(&r).unwrap_err();
    assert_eq!(
        err.to_string(),
        "default: plugins.a: plugins a, b depend on each other in a cycle (a -> b -> a)"
    );
    let config = ConfigLoader::new()
        .source("dtf.toml", "[plugins.a]\nenabled = false\n")
        .load()
        .unwrap();
    let err = config.validate(&r).unwrap_err();
    assert_eq!(
        err.to_string(),
        "default: plugins.b: plugin `b` requires plugin `a`, which is not enabled"
    );
}

const SECRET_FILE: &str = r##"
[plugins.slack]
enabled = true

[plugins.slack.settings]
webhook_url = "${SLACK_HOOK}"
channel = "#ci"
api_key = "literal-api-key-123"
"##;

fn secret_env() -> Vec<(String, String)> {
    vec![
        ("SLACK_HOOK".to_owned(), HOOK.to_owned()),
        (
            "DTF_PLUGINS__SLACK__SETTINGS__TOKEN".to_owned(),
            "xoxb-env-token".to_owned(),
        ),
    ]
}

fn assert_no_secret(text: &str) {
    for secret in ["SECRETPART", "literal-api-key-123", "xoxb-env-token"] {
        assert!(
            !text.contains(secret),
            "secret `{secret}` leaked in:\n{text}"
        );
    }
}

#[test]
fn printed_configuration_redacts_secrets_and_says_where_values_came_from() {
    let config = ConfigLoader::new()
        .source("dtf.toml", SECRET_FILE)
        .env_vars(secret_env())
        .env_prefix("DTF_")
        .cli_override("manager.queue_capacity=64")
        .load()
        .unwrap();
    let printed = config.to_redacted_toml(Some(&registry()));
    assert_no_secret(&printed);
    assert_no_secret(&format!("{config:?}"));
    for line in [
        "queue_capacity = 64  # command-line override of `manager.queue_capacity`",
        "overflow = \"backpressure\"  # default",
        "webhook_url = \"***\"  # dtf.toml:6:15",
        "api_key = \"***\"  # dtf.toml:8:11",
        "token = \"***\"  # environment variable DTF_PLUGINS__SLACK__SETTINGS__TOKEN",
        "channel = \"#ci\"  # dtf.toml:7:11",
        "[plugins.slack.settings]",
        "[plugins.scheduler]\nenabled = false  # default",
    ] {
        assert!(printed.contains(line), "missing `{line}` in:\n{printed}");
    }
    // The printed configuration is valid TOML that loads again.
    let reparsed = ConfigLoader::new()
        .source("printed.toml", printed.as_str())
        .load()
        .unwrap();
    assert_eq!(reparsed.manager_config().queue_capacity, 64);
    // The plugin itself still gets the real values.
    let settings = config.plugin_settings("slack").unwrap();
    assert_eq!(settings["webhook_url"], HOOK);
    assert_eq!(settings["token"], "xoxb-env-token");
}

/// Captures what `tracing` writes on this thread.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "current_thread")]
async fn secrets_never_reach_logs_or_errors() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let slack = Slack::default();
    let registry = registry_with(&slack);
    let config = ConfigLoader::new()
        .source("dtf.toml", SECRET_FILE)
        .env_vars(secret_env())
        .env_prefix("DTF_")
        .load()
        .unwrap();
    let manager = config
        .apply(PluginManager::builder(), &registry)
        .unwrap()
        .spawn()
        .await
        .unwrap();
    manager.flush().await;
    let report = manager.shutdown(ShutdownReason::Completed).await;
    assert!(report.clean);
    assert_eq!(slack.started_with.lock().unwrap()[0]["webhook_url"], HOOK);

    // A secret under a key of the wrong type is not echoed in the error either.
    let err = check(
        &ConfigLoader::new()
            .source(
                "dtf.toml",
                "[plugins.slack.settings]\nwebhook_url = \"x\"\nretries = \"literal-api-key-123\"\n",
            )
            .env_vars([]),
        &registry,
    )
    .unwrap_err();
    assert_no_secret(&err.to_string());
    assert_no_secret(&format!("{err:?}"));

    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("plugin started"), "nothing captured:\n{logs}");
    assert_no_secret(&logs);
}

#[test]
fn an_unlimited_restart_budget_is_written_as_a_word_and_printed_back_so() {
    let config = ConfigLoader::new()
        .source(
            "dtf.toml",
            "[manager]\nrestart_budget = { max_restarts = \"unlimited\", window = \"10s\" }\n",
        )
        .env_vars([])
        .load()
        .unwrap();
    let budget = config.manager_config().restart_budget;
    assert_eq!(budget.max_restarts, RestartBudget::unlimited().max_restarts);
    assert_eq!(budget.window, Duration::from_secs(10));
    let printed = config.to_redacted_toml(None);
    assert!(
        printed.contains("max_restarts = \"unlimited\""),
        "printed:\n{printed}"
    );
}

/// A plugin's own section sets its queue capacity, handler timeout, restart budget and backoff
/// (`Config::with_overrides`, through which `dtf-coordinator` passes its built-in scheduler as
/// well as every configured plugin): each key is seen at work, against the manager's defaults.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugins_section_sets_its_capacity_timeout_budget_and_backoff() {
    let config = ConfigLoader::new()
        .source(
            "dtf.toml",
            r#"
            [plugins.gated]
            queue_capacity = 1
            [plugins.slow]
            handler_timeout = "50ms"
            restart_budget = { max_restarts = 0, window = "1m" }
            [plugins.failing]
            backoff = { initial = "1h", max = "1h" }
            "#,
        )
        .env_vars([])
        .load()
        .unwrap();
    let (gate, rx) = watch::channel(false);
    let gated = Probe::new("gated", Hook::Custom).behaving(move |_| Action::Gate(rx.clone()));
    let slow =
        Probe::new("slow", Hook::TaskCreated).behaving(|_| Action::Sleep(Duration::from_secs(5)));
    let failing = Probe::new("failing", Hook::TaskCreated).behaving(|_| Action::Fail);
    let mut builder = PluginManager::builder().config(config.manager_config().clone());
    for probe in [&gated, &slow, &failing] {
        builder = builder.spec(config.with_overrides(&probe.name, probe.spec()));
    }
    let manager = builder.spawn().await.unwrap();
    let status = |name: &'static str| {
        let manager = &manager;
        async move {
            let list = manager.list().await.unwrap();
            list.into_iter().find(|p| p.name == name).unwrap()
        }
    };

    // Capacity 1: with one event in the gated plugin's hand, the next one finds no room (the
    // default capacity has plenty).
    manager
        .publish(EventKind::custom("first", serde_json::Value::Null))
        .await
        .unwrap();
    let refused = manager
        .bus()
        .try_publish(EventKind::custom("second", serde_json::Value::Null));
    match refused {
        Err(PublishError::Full { plugin, .. }) => assert_eq!(plugin, "gated"),
        other => panic!("capacity 1 not applied: {other:?}"),
    }

    // A 50 ms handler timeout (the default is 30 s) and no restarts (the default is 5): the
    // slow plugin is disabled after its first event. Backoff of an hour (the default starts at
    // 100 ms): the failing plugin is still waiting to restart half a second later.
    manager
        .publish(EventKind::task_created("t1", "x"))
        .await
        .unwrap();
    let mut disabled = false;
    for _ in 0..200 {
        if status("slow").await.status == PluginStatus::Disabled {
            disabled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(disabled, "{:?}", status("slow").await);
    let error = status("slow").await.last_error.unwrap_or_default();
    assert!(error.contains("did not finish within 50ms"), "{error}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let info = status("failing").await;
    assert_eq!(info.status, PluginStatus::Restarting, "{info:?}");
    assert_eq!(info.stats.restarts, 0, "{info:?}");

    gate.send(true).unwrap();
    manager.shutdown(ShutdownReason::Completed).await;
}

#[tokio::test]
async fn a_configuration_builds_the_manager_and_its_plugins() {
    let slack = Slack::default();
    let registry = registry_with(&slack);
    let config = ConfigLoader::new()
        .source(
            "dtf.toml",
            r#"
            [manager]
            queue_capacity = 128
            overflow = "drop_newest"
            handler_timeout = "2s"
            restart_budget = { max_restarts = 2, window = "1m" }

            [plugins.slack]
            handler_timeout = "250ms"
            [plugins.slack.settings]
            webhook_url = "https://hooks.invalid/x"
            retries = 3

            [plugins.scheduler.settings]
            scheduler = "fairness"
            "#,
        )
        .env_vars([])
        .load()
        .unwrap();
    let m = config.manager_config();
    assert_eq!(m.queue_capacity, 128);
    assert_eq!(m.overflow, OverflowPolicy::DropNewest);
    assert_eq!(m.handler_timeout, Duration::from_secs(2));
    assert_eq!(m.restart_budget.max_restarts, 2);
    assert_eq!(m.restart_budget.window, Duration::from_secs(60));
    assert_eq!(
        config.enabled_plugins(&registry).unwrap(),
        ["scheduler", "slack"]
    );
    let (rec, recording) = RecordingPlugin::spec("rec", Hook::PluginStarted);
    let manager = config
        .apply(PluginManager::builder(), &registry)
        .unwrap()
        .spec(rec)
        .spawn()
        .await
        .unwrap();
    manager.settle().await;
    let names: Vec<String> = manager
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(names, ["scheduler", "slack", "rec"]);
    let rows: Vec<String> = registry
        .listing(&manager.list().await.unwrap())
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        rows,
        [
            "rec  0.0.0  monitoring  [PluginStarted]  built-in ()  running",
            "scheduler  0.1.0  scheduler  [TaskCreated, TaskCompleted, TaskFailed, TaskCancelled, WorkerRegistered, WorkerDisconnected, WorkerFailed, WorkerRecovered, Custom]  built-in (dtf-scheduler)  running",
            "slack  1.0.0  notification  [TaskFailed]  built-in (tests)  running",
        ]
    );
    assert_eq!(
        slack.started_with.lock().unwrap()[0],
        serde_json::json!({ "webhook_url": "https://hooks.invalid/x", "retries": 3 })
    );
    assert!(!recording.is_empty());
    assert!(manager.shutdown(ShutdownReason::Completed).await.clean);
}

/// One layer's value for each of three keys (`None`: the layer does not set it).
#[derive(Debug, Clone)]
struct Layer {
    capacity: Option<u32>,
    timeout_ms: Option<u32>,
    source: Option<String>,
}

fn layer() -> impl Strategy<Value = Layer> {
    (
        proptest::option::of(1u32..100_000),
        proptest::option::of(1u32..100_000),
        proptest::option::of("[a-z]{1,8}"),
    )
        .prop_map(|(capacity, timeout_ms, source)| Layer {
            capacity,
            timeout_ms,
            source,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// For every key: command line > environment > file > default, and the origin says so.
    #[test]
    fn precedence_is_cli_then_env_then_file_then_default(
        file in layer(), env in layer(), cli in layer()
    ) {
        let mut text = String::from("[manager]\n");
        if let Some(c) = file.capacity { text.push_str(&format!("queue_capacity = {c}\n")); }
        if let Some(t) = file.timeout_ms { text.push_str(&format!("handler_timeout = \"{t}ms\"\n")); }
        if let Some(s) = &file.source { text.push_str(&format!("source = \"{s}\"\n")); }
        let mut vars = BTreeMap::new();
        if let Some(c) = env.capacity { vars.insert("DTF_MANAGER__QUEUE_CAPACITY".to_owned(), c.to_string()); }
        if let Some(t) = env.timeout_ms { vars.insert("DTF_MANAGER__HANDLER_TIMEOUT".to_owned(), format!("{t}ms")); }
        if let Some(s) = &env.source { vars.insert("DTF_MANAGER__SOURCE".to_owned(), s.clone()); }
        let mut args = Vec::new();
        if let Some(c) = cli.capacity { args.push(format!("manager.queue_capacity={c}")); }
        if let Some(t) = cli.timeout_ms { args.push(format!("manager.handler_timeout={t}ms")); }
        if let Some(s) = &cli.source { args.push(format!("manager.source={s}")); }

        let config = ConfigLoader::new()
            .source("dtf.toml", text)
            .env_vars(vars)
            .env_prefix("DTF_")
            .cli_overrides(args)
            .load()
            .unwrap();
        let m = config.manager_config();
        let defaults = ManagerConfig::default();

        let pick = |f: &Option<u32>, e: &Option<u32>, c: &Option<u32>| c.or(*e).or(*f);
        let expect_capacity = pick(&file.capacity, &env.capacity, &cli.capacity)
            .map_or(defaults.queue_capacity, |c| c as usize);
        prop_assert_eq!(m.queue_capacity, expect_capacity);
        let expect_timeout = pick(&file.timeout_ms, &env.timeout_ms, &cli.timeout_ms)
            .map_or(defaults.handler_timeout, |t| Duration::from_millis(u64::from(t)));
        prop_assert_eq!(m.handler_timeout, expect_timeout);
        let expect_source = cli.source.clone().or(env.source.clone()).or(file.source.clone())
            .unwrap_or(defaults.source.clone());
        prop_assert_eq!(&m.source, &expect_source);

        // The origin names the winning layer.
        let origin = |key: &str, f: bool, e: bool, c: bool, var: &str| {
            let got = config.origin(key).unwrap();
            let ok = if c {
                got == Origin::Cli(key.to_owned())
            } else if e {
                got == Origin::Env(var.to_owned())
            } else if f {
                matches!(got, Origin::File { .. })
            } else {
                got == Origin::Default
            };
            (ok, got)
        };
        let (ok, got) = origin("manager.queue_capacity", file.capacity.is_some(), env.capacity.is_some(), cli.capacity.is_some(), "DTF_MANAGER__QUEUE_CAPACITY");
        prop_assert!(ok, "{:?}", got);
        let (ok, got) = origin("manager.handler_timeout", file.timeout_ms.is_some(), env.timeout_ms.is_some(), cli.timeout_ms.is_some(), "DTF_MANAGER__HANDLER_TIMEOUT");
        prop_assert!(ok, "{:?}", got);
        let (ok, got) = origin("manager.source", file.source.is_some(), env.source.is_some(), cli.source.is_some(), "DTF_MANAGER__SOURCE");
        prop_assert!(ok, "{:?}", got);
    }
}
