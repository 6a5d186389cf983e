//! The web console in Firefox: headless Firefox (Debian's `firefox-esr`) driven over its
//! Marionette protocol (length-prefixed JSON over TCP on loopback, no geckodriver). On a
//! manager with 1,000 plugins it opens the plugins page, sees the rows and a row the page's
//! script builds for a plugin added while the page is open, disables one with its button and
//! sees its state change, sees another's state change live when it is disabled from outside,
//! fills the registry page from the API, shows the API's error for a bad configuration, sees
//! the task counts advance on the run page, and saves a screenshot.
//!
//! Skipped with a message when no Firefox is installed, unless `CI=true` (then it fails).
//! `DTF_UPDATE_SCREENSHOTS=1` writes the screenshot to `docs/images/` (else to a temporary
//! directory). It prints the page-load and live-update figures (`FIGURE`); nothing is asserted
//! about time.
//!
//! The browser is kept on loopback: a profile whose proxy for everything but loopback is
//! 127.0.0.1:9 (nothing listens there), with Firefox's own background services (remote
//! settings, telemetry, safe browsing, captive-portal checks, updates) switched off.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "in tests, a failed unwrap is a failed test"
)]

mod console_common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use console_common::{PICKY_SECRET, Quiet, TOKEN, start};
use dtf_console::ConsoleConfig;
use dtf_plugin_core::PluginSpec;
use dtf_plugin_core::event::TaskOutcome;
use dtf_plugin_core::prelude::*;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// Finds a Firefox: `DTF_FIREFOX`, else `firefox-esr` or `firefox` on the PATH.
fn find_firefox() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("DTF_FIREFOX") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&path) {
        for name in ["firefox-esr", "firefox"] {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    None
}

/// Preferences of the test profile: Marionette on a port the system picks, and no traffic
/// off this machine.
const PREFS: &str = r#"
user_pref("marionette.port", 0);
user_pref("network.proxy.type", 1);
user_pref("network.proxy.http", "127.0.0.1");
user_pref("network.proxy.http_port", 9);
user_pref("network.proxy.ssl", "127.0.0.1");
user_pref("network.proxy.ssl_port", 9);
user_pref("network.proxy.socks", "127.0.0.1");
user_pref("network.proxy.socks_port", 9);
user_pref("network.proxy.socks_remote_dns", true);
user_pref("network.proxy.allow_hijacking_localhost", false);
user_pref("network.trr.mode", 5);
user_pref("network.dns.disablePrefetch", true);
user_pref("network.prefetch-next", false);
user_pref("network.predictor.enabled", false);
user_pref("network.captive-portal-service.enabled", false);
user_pref("network.connectivity-service.enabled", false);
user_pref("services.settings.server", "http://127.0.0.1:9/v1");
user_pref("app.normandy.enabled", false);
user_pref("app.update.auto", false);
user_pref("messaging-system.rsexperimentloader.enabled", false);
user_pref("datareporting.policy.dataSubmissionEnabled", false);
user_pref("datareporting.healthreport.uploadEnabled", false);
user_pref("toolkit.telemetry.enabled", false);
user_pref("browser.safebrowsing.malware.enabled", false);
user_pref("browser.safebrowsing.phishing.enabled", false);
user_pref("browser.safebrowsing.downloads.enabled", false);
user_pref("extensions.update.enabled", false);
user_pref("extensions.getAddons.cache.enabled", false);
user_pref("browser.shell.checkDefaultBrowser", false);
user_pref("browser.startup.homepage_override.mstone", "ignore");
user_pref("browser.newtabpage.enabled", false);
"#;

/// A headless Firefox and a Marionette session.
struct Firefox {
    child: Child,
    profile: PathBuf,
    conn: TcpStream,
    next_id: u64,
}

impl Firefox {
    async fn launch(binary: &Path) -> Firefox {
        let profile = std::env::temp_dir().join(format!(
            "dtf-console-firefox-{}-{}",
            std::process::id(),
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&profile).unwrap();
        std::fs::write(profile.join("user.js"), PREFS).unwrap();
        let mut child = Command::new(binary)
            .args(["--headless", "--marionette", "--no-remote"])
            .arg("--profile")
            .arg(&profile)
            .args(["--window-size", "1400,900", "about:blank"])
            .env("MOZ_CRASHREPORTER_DISABLE", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("firefox starts");
        // Marionette logs `Listening on port N` on stdout once it listens.
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let port: u16 = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some((_, port)) = line.split_once("Listening on port ") {
                    return port.trim().parse().unwrap();
                }
            }
            panic!("firefox exited without a Marionette port");
        })
        .await
        .expect("firefox says its Marionette port");
        // Keep draining its stdout so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let conn = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let mut ff = Firefox {
            child,
            profile,
            conn,
            next_id: 1,
        };
        let hello = ff.read_frame().await;
        assert_eq!(hello["applicationType"], "gecko", "{hello}");
        assert_eq!(hello["marionetteProtocol"], 3, "{hello}");
        ff.call(
            "WebDriver:NewSession",
            json!({"capabilities": {"alwaysMatch": {"acceptInsecureCerts": false}}}),
        )
        .await;
        ff.call(
            "WebDriver:SetWindowRect",
            json!({"x": 0, "y": 0, "width": 1400, "height": 900}),
        )
        .await;
        ff
    }

    /// One frame: `<byte length>:<JSON>`.
    async fn read_frame(&mut self) -> Value {
        let mut len = Vec::new();
        loop {
            let b = self.conn.read_u8().await.unwrap();
            if b == b':' {
                break;
            }
            assert!(b.is_ascii_digit(), "bad Marionette frame length");
            len.push(b);
        }
        let len: usize = std::str::from_utf8(&len).unwrap().parse().unwrap();
        let mut body = vec![0; len];
        self.conn.read_exact(&mut body).await.unwrap();
        serde_json::from_slice(&body).unwrap()
    }

    /// Sends a command (`[0, id, name, params]`) and returns the result of its response
    /// (`[1, id, error, result]`); panics on an error.
    async fn call(&mut self, name: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let body = json!([0, id, name, params]).to_string();
        let frame = format!("{}:{body}", body.len());
        self.conn.write_all(frame.as_bytes()).await.unwrap();
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(30), self.read_frame())
                .await
                .unwrap_or_else(|_| panic!("{name}: no answer"));
            if msg[0] == 1 && msg[1] == id {
                assert!(msg[2].is_null(), "{name}: {}", msg[2]);
                return msg[3].clone();
            }
        }
    }

    /// Evaluates `expression` in the page and returns its value.
    async fn eval(&mut self, expression: &str) -> Value {
        let r = self
            .call(
                "WebDriver:ExecuteScript",
                json!({"script": format!("return ({expression});"), "args": []}),
            )
            .await;
        r["value"].clone()
    }

    /// Polls `expression` until it is truthy; panics with `what` after 15 s.
    async fn wait_for(&mut self, expression: &str, what: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let v = self.eval(expression).await;
            if !(v.is_null() || v == json!(false) || v == json!("") || v == json!(0)) {
                return v;
            }
            assert!(Instant::now() < deadline, "timed out waiting for: {what}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Navigates (Marionette waits for the load) and waits until the console's script ran.
    async fn open(&mut self, url: &str) {
        self.call("WebDriver:Navigate", json!({"url": url})).await;
        self.wait_for(
            "document.readyState === 'complete' && window.__dtfConsoleReady === true && location.href",
            url,
        )
        .await;
    }

    async fn screenshot(&mut self, path: &Path) {
        let shot = self
            .call(
                "WebDriver:TakeScreenshot",
                json!({"full": false, "hash": false}),
            )
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["value"].as_str().unwrap())
            .unwrap();
        assert_eq!(&png[1..4], b"PNG");
        std::fs::write(path, png).unwrap();
    }

    async fn close(mut self) {
        // Ask it to quit, then make sure.
        let body =
            json!([0, self.next_id, "Marionette:Quit", {"flags": ["eForceQuit"]}]).to_string();
        let _ = self
            .conn
            .write_all(format!("{}:{body}", body.len()).as_bytes())
            .await;
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

/// Publishes `rate` custom events per second for `secs` seconds, in batches every 10 ms.
async fn load(bus: &dtf_plugin_core::Bus, rate: u64, secs: u64) -> u64 {
    let per_tick = rate / 100;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut sent = 0;
    for _ in 0..secs * 100 {
        tick.tick().await;
        for _ in 0..per_tick {
            bus.publish(EventKind::custom("load.tick", json!({"n": sent})))
                .await
                .unwrap();
            sent += 1;
        }
    }
    sent
}

fn state_js(name: &str) -> String {
    format!(
        "(document.querySelector('tr[data-name=\"{name}\"] [data-f=state]') || {{}}).textContent"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_in_headless_firefox() {
    let Some(binary) = find_firefox() else {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("CI=true but no Firefox is installed: the Firefox test cannot be skipped in CI");
        }
        eprintln!(
            "SKIPPED console_in_headless_firefox: no Firefox found (install Debian's `firefox-esr` or set DTF_FIREFOX)"
        );
        return;
    };
    let shots = if std::env::var("DTF_UPDATE_SCREENSHOTS").is_ok_and(|v| v == "1") {
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/images"))
    } else {
        std::env::temp_dir().join(format!("dtf-console-firefox-shots-{}", std::process::id()))
    };
    std::fs::create_dir_all(&shots).unwrap();

    let fx = start(1000, ConsoleConfig::default()).await;
    let mut ff = Firefox::launch(&binary).await;

    // ---- the plugins page
    ff.open(&format!("{}/#token={TOKEN}", fx.base)).await;
    assert_eq!(
        ff.eval("document.querySelectorAll('#plugins tbody tr').length")
            .await,
        100
    );
    assert_eq!(ff.eval(&state_js("picky")).await, "running");
    assert_eq!(
        ff.eval("document.querySelector('tr[data-name=\"picky\"] [data-f=source]').textContent")
            .await,
        "external"
    );
    assert_eq!(
        ff.eval("document.getElementById('range').textContent")
            .await,
        "1–100 of 1006"
    );
    // The token went from the fragment to sessionStorage and out of the address bar.
    assert_eq!(ff.eval("location.hash").await, "");
    ff.wait_for(
        "document.getElementById('live').textContent === 'live'",
        "the live stream",
    )
    .await;
    // The stylesheet applies: the header is a flex row, a running state is green and bold.
    assert_eq!(
        ff.eval("getComputedStyle(document.querySelector('header')).display")
            .await,
        "flex"
    );
    assert_eq!(
        ff.eval("getComputedStyle(document.querySelector('tr[data-name=\"picky\"] [data-f=state]')).fontWeight")
            .await,
        "600"
    );

    // Page load with 1,000 plugins (Navigation Timing, 5 loads).
    let mut loads = Vec::new();
    for _ in 0..5 {
        ff.open(&format!("{}/", fx.base)).await;
        let nav = ff
            .wait_for(
                "(() => { const n = performance.getEntriesByType('navigation')[0]; \
                 return n && n.loadEventEnd > 0 && n.loadEventEnd - n.startTime; })()",
                "navigation timing",
            )
            .await;
        loads.push(nav.as_f64().unwrap());
    }
    loads.sort_by(f64::total_cmp);
    eprintln!(
        "FIGURE firefox: plugins page load, 1,006 plugins (100 per page): median {:.1} ms, max {:.1} ms",
        percentile(&loads, 0.5),
        loads[loads.len() - 1],
    );

    // A row the script builds: a page filtered on a name no plugin has yet, then the plugin
    // is added while the page is open.
    ff.open(&format!("{}/?q=late-", fx.base)).await;
    ff.wait_for(
        "document.getElementById('live').textContent === 'live'",
        "the live stream",
    )
    .await;
    assert_eq!(
        ff.eval("document.querySelectorAll('#plugins tbody tr').length")
            .await,
        0
    );
    fx.manager
        .add(PluginSpec::new(|| Quiet).name("late-comer"))
        .await
        .unwrap();
    ff.wait_for(
        &format!("{} === 'running'", state_js("late-comer")),
        "the added plugin's row, built by the script",
    )
    .await;
    assert_eq!(
        ff.eval("document.querySelector('tr[data-name=\"late-comer\"] a').getAttribute('href')")
            .await,
        "/plugins/late-comer"
    );

    // Disable with the button: the row says so, and the manager agrees.
    ff.open(&format!("{}/", fx.base)).await;
    ff.wait_for(
        "document.getElementById('live').textContent === 'live'",
        "the live stream",
    )
    .await;
    ff.eval(
        "document.querySelector('tr[data-name=\"quiet\"] button[data-act=\"disable\"]').click()",
    )
    .await;
    ff.wait_for(
        &format!("{} === 'disabled'", state_js("quiet")),
        "quiet shown disabled after its button",
    )
    .await;
    let quiet = fx.manager.list().await.unwrap();
    let quiet = quiet.iter().find(|p| p.name == "quiet").unwrap();
    assert_eq!(quiet.status.to_string(), "disabled");

    // Disabled from outside the browser: only the event stream can tell the page.
    fx.manager.disable("victim").await.unwrap();
    ff.wait_for(
        &format!("{} === 'disabled'", state_js("victim")),
        "victim shown disabled live",
    )
    .await;
    ff.screenshot(&shots.join("console-plugins-firefox.png"))
        .await;

    // ---- the registry page, filled by the script from /api/registry
    ff.open(&format!("{}/registry", fx.base)).await;
    ff.wait_for(
        "window.__dtfRegistry && !document.getElementById('available').hidden",
        "the registry tables",
    )
    .await;
    let picky = ff
        .eval("document.querySelector('#installed tr[data-name=\"picky\"]').textContent")
        .await;
    let picky = picky.as_str().unwrap();
    assert!(picky.contains("installed from an index"), "{picky}");
    assert!(picky.contains("external"), "{picky}");
    assert!(picky.contains("running"), "{picky}");
    assert_eq!(
        ff.eval(
            "document.querySelector('#installed tr[data-name=\"quiet\"]').cells[4].textContent"
        )
        .await,
        "disabled"
    );
    assert_eq!(
        ff.eval(
            "document.querySelector('#installed tr[data-name=\"sleepy\"]').cells[4].textContent"
        )
        .await,
        "not running"
    );
    assert_eq!(
        ff.eval("document.querySelectorAll('#available tbody tr').length")
            .await,
        3
    );
    assert_eq!(
        ff.eval(
            "document.querySelector('#available tr[data-name=\"future\"]').cells[2].textContent"
        )
        .await,
        "not by this build"
    );

    // ---- a plugin's page: a bad configuration shows the API's error; the old one stays
    ff.open(&format!("{}/plugins/picky", fx.base)).await;
    let html = ff.eval("document.documentElement.outerHTML").await;
    assert!(!html.as_str().unwrap().contains(PICKY_SECRET));
    ff.eval(
        "(() => { document.getElementById('config').value = JSON.stringify({limit: 1000, token: '***'}, null, 2); \
         document.querySelector('#config-form button[type=submit]').click(); return true; })()",
    )
    .await;
    let shown = ff
        .wait_for(
            "!document.getElementById('config-error').hidden && document.getElementById('config-error').textContent",
            "the configuration error",
        )
        .await;
    assert_eq!(
        shown,
        "HTTP 422 config_rejected: reconfigure plugin `picky`: limit: must be at most 100, got 1000"
    );
    assert_eq!(fx.manager.config("picky").await.unwrap()["limit"], 10);

    // ---- the run page: counts advance, and the event stream at 10,000 events/s
    let bus = fx.manager.bus();
    ff.open(&format!("{}/run", fx.base)).await;
    ff.wait_for(
        "document.getElementById('live').textContent === 'live'",
        "the live stream",
    )
    .await;
    for i in 0..10 {
        bus.publish(EventKind::task_created(
            format!("t{i}"),
            format!("case_{i}"),
        ))
        .await
        .unwrap();
    }
    for i in 0..6 {
        let t = format!("t{i}");
        bus.publish(EventKind::task_started(t.as_str(), "worker-a", 1))
            .await
            .unwrap();
        bus.publish(EventKind::task_completed(
            t.as_str(),
            "worker-a",
            TaskOutcome::Passed,
            Duration::from_millis(5),
        ))
        .await
        .unwrap();
    }
    ff.wait_for(
        "document.querySelector('[data-count=passed]').textContent === '6' && \
         document.getElementById('progress').value === 6 && \
         document.getElementById('progress-text').textContent === '6 / 10 tasks done'",
        "6 of 10 tasks passed",
    )
    .await;
    ff.eval("(() => { window.__dtfLatencies = []; return true; })()")
        .await;
    let sent = load(&bus, 10_000, 3).await;
    fx.manager.flush().await;
    ff.wait_for("window.__dtfLatencies.length > 0", "events in the browser")
        .await;
    tokio::time::sleep(Duration::from_millis(1500)).await; // let the tail of the stream arrive
    let lat = ff.eval("window.__dtfLatencies").await;
    let mut lat: Vec<f64> = lat
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_f64)
        .collect();
    lat.sort_by(f64::total_cmp);
    let dropped = fx
        .manager
        .stats(dtf_console::CONSOLE_PLUGIN)
        .await
        .unwrap()
        .dropped;
    eprintln!(
        "FIGURE firefox: bus event to the browser at 10,000 events/s: {} sent, {} received, console dropped {}, \
         p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        sent,
        lat.len(),
        dropped,
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lat.last().copied().unwrap_or(f64::NAN)
    );
    assert!(!lat.is_empty());

    ff.close().await;
    fx.stop().await;
}
