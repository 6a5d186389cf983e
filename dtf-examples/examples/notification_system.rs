//! # Notifications: a burst of failures, grouped, sent to real services
//!
//! Demonstrates the notify plugin (`dtf-plugins-notify`): a realistic burst of events (12
//! tasks failing with `TimeoutError` on worker w3, 3 with `AssertionError` on w1, worker w2
//! lost, its recovery and return) published through a `PluginManager`; the notifier groups
//! them (one message per error type and worker), sends them to the chosen channels with rate
//! limits and retries, and the example prints what was sent per channel.
//!
//! ```text
//! cargo run --example notification_system -- --slack --discord --telegram [--teams --jira --email] [--dry-run]
//! cargo run --example notification_system -- --dry-run      # every channel, nothing sent, no variables needed
//! ```
//!
//! `--dry-run` renders the messages (the exact request bodies) without sending anything and
//! needs no environment variable. Otherwise each chosen channel reads:
//!
//! | flag | variables |
//! |---|---|
//! | `--slack` | `SLACK_WEBHOOK_URL` |
//! | `--discord` | `DISCORD_WEBHOOK_URL` |
//! | `--telegram` | `TELEGRAM_BOT_TOKEN`, `TELEGRAM_CHAT_ID` (comma-separated for several chats) |
//! | `--teams` | `TEAMS_WEBHOOK_URL` (incoming webhook or Workflows URL) |
//! | `--jira` | `JIRA_BASE_URL`, `JIRA_EMAIL`, `JIRA_API_TOKEN`, `JIRA_PROJECT_KEY` |
//! | `--email` | `SMTP_HOST`, `SMTP_FROM`, `SMTP_TO` (comma-separated); optional `SMTP_PORT`, `SMTP_SECURITY` (`starttls` default, `tls`, `plain`), `SMTP_USERNAME`, `SMTP_PASSWORD`, `SMTP_TIMEOUT_MS`, `SMTP_ROOT_CERTIFICATE` |
//!
//! A missing variable for a chosen channel is an error naming it. Secrets are read by the
//! plugin itself (`{"env": "…"}` in its configuration) and never printed.

#![expect(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "an example reports to the terminal"
)]

use std::time::{Duration, SystemTime};

use clap::error::ErrorKind;
use clap::{CommandFactory as _, Parser};
use dtf_plugin_core::EventMeta;
use dtf_plugin_core::prelude::*;
use dtf_plugins_notify::{NotifyConfig, NotifyPlugin, preview};
use serde_json::{Value, json};

const CHANNELS: [&str; 6] = ["slack", "discord", "telegram", "teams", "jira", "email"];

/// Send a burst of failures, grouped, to the chosen channels (or render them with --dry-run).
#[derive(Debug, Parser)]
#[command(
    name = "notification_system",
    version,
    after_help = "Environment (each chosen channel needs its variables; --dry-run needs none):
  --slack     SLACK_WEBHOOK_URL
  --discord   DISCORD_WEBHOOK_URL
  --telegram  TELEGRAM_BOT_TOKEN, TELEGRAM_CHAT_ID (comma-separated for several chats)
  --teams     TEAMS_WEBHOOK_URL
  --jira      JIRA_BASE_URL, JIRA_EMAIL, JIRA_API_TOKEN, JIRA_PROJECT_KEY
  --email     SMTP_HOST, SMTP_FROM, SMTP_TO; optional SMTP_PORT, SMTP_SECURITY, SMTP_USERNAME,
              SMTP_PASSWORD, SMTP_TIMEOUT_MS, SMTP_ROOT_CERTIFICATE
A missing variable exits with code 2 naming it."
)]
struct Cli {
    /// Send to Slack.
    #[arg(long)]
    slack: bool,
    /// Send to Discord.
    #[arg(long)]
    discord: bool,
    /// Send to Telegram.
    #[arg(long)]
    telegram: bool,
    /// Send to Microsoft Teams.
    #[arg(long)]
    teams: bool,
    /// Open JIRA issues.
    #[arg(long)]
    jira: bool,
    /// Send email over SMTP.
    #[arg(long)]
    email: bool,
    /// Render every chosen channel's requests (all channels when none is chosen); send nothing.
    #[arg(long)]
    dry_run: bool,
}

fn fail(message: &str) -> ! {
    eprintln!("error: {message}");
    std::process::exit(2)
}

fn var(name: &str, flag: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v,
        _ => fail(&format!(
            "environment variable {name} is not set (needed by --{flag})"
        )),
    }
}

/// The channel configuration for `flag`: secrets by environment variable (read and checked by
/// the plugin at start), placeholders for a dry run.
fn channel(flag: &str, dry_run: bool) -> Value {
    let secret = |var: &str, placeholder: &str| {
        if dry_run {
            json!(placeholder)
        } else {
            json!({ "env": var })
        }
    };
    let plain = |name: &str, placeholder: &str| {
        if dry_run {
            placeholder.to_owned()
        } else {
            var(name, flag)
        }
    };
    match flag {
        "slack" => {
            json!({ "type": "slack", "webhook_url": secret("SLACK_WEBHOOK_URL", "https://hooks.slack.com/services/T000/B000/XXXX") })
        }
        "discord" => {
            json!({ "type": "discord", "webhook_url": secret("DISCORD_WEBHOOK_URL", "https://discord.com/api/webhooks/0/XXXX"), "username": "dtf" })
        }
        "telegram" => {
            let chats: Vec<String> = plain("TELEGRAM_CHAT_ID", "-1001234567890")
                .split(',')
                .map(|c| c.trim().to_owned())
                .collect();
            json!({ "type": "telegram", "bot_token": secret("TELEGRAM_BOT_TOKEN", "123456:XXXX"), "chat_ids": chats })
        }
        "teams" => {
            json!({ "type": "teams", "webhook_url": secret("TEAMS_WEBHOOK_URL", "https://example.webhook.office.com/webhookb2/g@t/IncomingWebhook/i/o") })
        }
        "jira" => json!({
            "type": "jira",
            "base_url": plain("JIRA_BASE_URL", "https://example.atlassian.net"),
            "email": plain("JIRA_EMAIL", "bot@example.com"),
            "api_token": secret("JIRA_API_TOKEN", "XXXX"),
            "project_key": plain("JIRA_PROJECT_KEY", "OPS"),
        }),
        "email" if dry_run => json!({
            "type": "email",
            "smtp": { "host": "smtp.example.com", "from": "dtf <dtf@example.com>", "to": ["oncall@example.com"] },
        }),
        "email" => {
            let to: Vec<String> = var("SMTP_TO", flag)
                .split(',')
                .map(|a| a.trim().to_owned())
                .collect();
            let mut smtp =
                json!({ "host": var("SMTP_HOST", flag), "from": var("SMTP_FROM", flag), "to": to });
            // Optional settings; the password stays in memory (the plugin holds it as a
            // `Secret`) and is never printed.
            for (key, name) in [
                ("port", "SMTP_PORT"),
                ("security", "SMTP_SECURITY"),
                ("username", "SMTP_USERNAME"),
                ("password", "SMTP_PASSWORD"),
                ("timeout_ms", "SMTP_TIMEOUT_MS"),
                ("root_certificate", "SMTP_ROOT_CERTIFICATE"),
            ] {
                let Some(value) = std::env::var(name).ok().filter(|v| !v.trim().is_empty()) else {
                    continue;
                };
                smtp[key] = match key {
                    "port" | "timeout_ms" => match value.trim().parse::<u64>() {
                        Ok(n) => json!(n),
                        Err(_) => fail(&format!("environment variable {name} is not a number")),
                    },
                    _ => json!(value),
                };
            }
            json!({ "type": "email", "smtp": smtp })
        }
        // `flag` comes from CHANNELS, every one of which has an arm above.
        other => fail(&format!("unknown channel {other}")),
    }
}

/// The environment variables a channel flag needs.
fn required(flag: &str) -> &'static [&'static str] {
    match flag {
        "slack" => &["SLACK_WEBHOOK_URL"],
        "discord" => &["DISCORD_WEBHOOK_URL"],
        "telegram" => &["TELEGRAM_BOT_TOKEN", "TELEGRAM_CHAT_ID"],
        "teams" => &["TEAMS_WEBHOOK_URL"],
        "jira" => &[
            "JIRA_BASE_URL",
            "JIRA_EMAIL",
            "JIRA_API_TOKEN",
            "JIRA_PROJECT_KEY",
        ],
        "email" => &["SMTP_HOST", "SMTP_FROM", "SMTP_TO"],
        _ => &[],
    }
}

fn failed(task: &str, kind: &str, message: &str, worker: &str) -> EventKind {
    let mut k = EventKind::task_failed(
        task,
        TaskError::builder().kind(kind).message(message).build(),
        false,
    );
    if let EventKind::TaskFailed(f) = &mut k {
        f.worker = Some(worker.into());
    }
    k
}

/// The burst: what a bad afternoon on a test farm looks like.
fn burst() -> Vec<EventKind> {
    let mut events = vec![EventKind::coordinator_startup("nightly-2026-11-26")];
    for i in 0..12 {
        events.push(failed(
            &format!("suite::net::test_{i:02}"),
            "TimeoutError",
            "timed out after 30s waiting for <service> & retrying",
            "w3",
        ));
    }
    for i in 0..3 {
        events.push(failed(
            &format!("suite::math::prop_{i}"),
            "AssertionError",
            "left == right failed: 3 != 4",
            "w1",
        ));
    }
    events.push(EventKind::worker_disconnected(
        "w2",
        "heartbeat missed for 15 s",
    ));
    events.push(EventKind::recovery_started(
        "rec-1",
        Some("w2".into()),
        vec!["suite::io::a".into(), "suite::io::b".into()],
    ));
    events.push(EventKind::recovery_completed("rec-1", 2));
    events.push(EventKind::worker_recovered("w2"));
    events
}

#[tokio::main]
async fn main() {
    dtf_examples::output::init_logging("info");
    // A usage error exits with code 2, clap's message on stderr.
    let cli = Cli::parse();
    let dry_run = cli.dry_run;
    let chosen = [
        cli.slack,
        cli.discord,
        cli.telegram,
        cli.teams,
        cli.jira,
        cli.email,
    ];
    let mut flags: Vec<&str> = CHANNELS
        .iter()
        .zip(chosen)
        .filter_map(|(c, on)| on.then_some(*c))
        .collect();
    if flags.is_empty() {
        if !dry_run {
            Cli::command()
                .error(
                    ErrorKind::MissingRequiredArgument,
                    "choose at least one channel (or --dry-run to render every channel)",
                )
                .exit();
        }
        flags = CHANNELS.to_vec();
    }
    if !dry_run {
        // Name every missing variable at once, not one per run.
        let missing: Vec<String> = flags
            .iter()
            .flat_map(|f| required(f).iter().map(move |v| (*f, *v)))
            .filter(|(_, v)| std::env::var(v).map_or(true, |x| x.trim().is_empty()))
            .map(|(f, v)| format!("{v} (needed by --{f})"))
            .collect();
        if !missing.is_empty() {
            fail(&format!(
                "environment variables not set: {}",
                missing.join(", ")
            ));
        }
    }
    let channels: Vec<Value> = flags.iter().map(|f| channel(f, dry_run)).collect();
    let config = json!({
        "channels": channels,
        "group": { "group_wait_ms": 2_000, "group_interval_ms": 30_000, "max_items": 5 },
    });
    let config: NotifyConfig = match serde_json::from_value(config) {
        Ok(c) => c,
        Err(e) => fail(&e.to_string()),
    };

    if dry_run {
        let events: Vec<Event> = burst()
            .into_iter()
            .enumerate()
            .map(|(i, kind)| Event {
                meta: EventMeta {
                    seq: i as u64 + 1,
                    time: SystemTime::now(),
                    source: "example".into(),
                },
                kind,
            })
            .collect();
        let rendered = match preview(&config, &events) {
            Ok(r) => r,
            Err(e) => fail(&e.to_string()),
        };
        println!(
            "dry run: {} events → {} messages (nothing sent)\n",
            events.len(),
            rendered.len()
        );
        for p in rendered {
            println!(
                "── {} ({}) · {}",
                p.channel,
                p.kind,
                p.message.title_plain()
            );
            println!(
                "{}\n",
                serde_json::to_string_pretty(&p.body).unwrap_or_default()
            );
        }
        return;
    }

    if let Err(e) = config.validate() {
        fail(&e.to_string());
    }
    let stats = dtf_plugins_notify::NotifyStats::default();
    let handle = stats.clone();
    let manager = match PluginManager::builder()
        // A restarted plugin gets the same configuration and keeps writing into the same stats.
        .plugin(move || {
            NotifyPlugin::new()
                .with_config(config.clone())
                .with_stats(handle.clone())
        })
        .spawn()
        .await
    {
        Ok(m) => m,
        Err(e) => fail(&e.to_string()),
    };
    for kind in burst() {
        if let Err(e) = manager.publish(kind).await {
            fail(&e.to_string());
        }
    }
    // Let group_wait pass so the grouped messages go out, then shut down (which flushes).
    tokio::time::sleep(Duration::from_secs(3)).await;
    manager.shutdown(ShutdownReason::Completed).await;

    println!("\nwhat was sent:");
    for (target, s) in stats.targets() {
        println!(
            "  {target:<28} ok {:>2}  failed {:>2}  attempts {:>2}  rate-limited {:>2}  last status {}  last latency {}{}",
            s.ok,
            s.failed,
            s.attempts,
            s.rate_limited,
            s.last_status
                .map_or_else(|| "-".to_owned(), |c| c.to_string()),
            dtf_examples::output::maybe_duration(s.last_latency),
            s.last_error
                .map(|e| format!("  last error: {e}"))
                .unwrap_or_default()
        );
    }
    let undelivered = stats.undelivered();
    if !undelivered.is_empty() {
        println!("\nnot delivered:");
        for u in undelivered {
            println!(
                "  {} · {} ({} events): {}",
                u.target, u.title, u.events, u.reason
            );
        }
        std::process::exit(1);
    }
}
