//! Secrets in plugin settings never reach the browser.

use dtf_plugin_core::config::is_secret_key;
use serde_json::Value;

/// What a redacted value is shown as.
pub(crate) const MASK: &str = "***";

/// A copy of `value` where everything under a secret-looking key (the rule of
/// [`is_secret_key`], shared with the configuration printer) is replaced by `"***"`.
pub(crate) fn redact(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let v = if is_secret_key(k) && !v.is_null() {
                        Value::String(MASK.to_owned())
                    } else {
                        redact(v)
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(redact).collect()),
        other => other.clone(),
    }
}

/// Puts the current secrets back where an edited configuration still says `"***"` (the user
/// kept the masked value), so editing a redacted configuration does not erase its secrets.
///
/// An element of a list is matched with the current element it stands for: the one with the
/// same `name` (or `id`) when it has one, else the one at the same position if the list kept
/// its length. A masked value with no such counterpart is refused rather than guessed: a
/// deleted or inserted channel must not hand its neighbour's webhook URL to another channel.
/// So is one whose object now points elsewhere (a changed `base_url`, `host`, `type`…): the
/// secret was given for the old destination, and must not be sent to a new one unasked.
///
/// # Errors
///
/// The first masked value whose secret is unclear, by its path (`channels[0].url`).
pub(crate) fn restore_masked(new: &mut Value, current: &Value) -> Result<(), String> {
    let mut unclear = None;
    restore(new, Some(current), "", &mut unclear);
    match unclear {
        None => Ok(()),
        Some(path) => Err(format!(
            "`{path}` is `{MASK}`, but which secret it stands for is unclear (the list around it \
             changed, the destination next to it changed, or there was none): enter the value \
             again"
        )),
    }
}

/// Whether a key names where a secret is sent (it may be a secret itself, like a webhook's
/// `url` or the task reporter's `endpoint`).
fn is_destination_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    k == "type"
        || [
            "url", "host", "server", "domain", "address", "instance", "site", "endpoint",
        ]
        .iter()
        .any(|d| k.contains(d))
}

/// Whether the edited object `new` points somewhere else than `current`: a destination key
/// added, removed or changed (a masked one, kept, is unchanged).
fn moved(new: &serde_json::Map<String, Value>, current: Option<&Value>) -> bool {
    let Some(current) = current.and_then(Value::as_object) else {
        return false;
    };
    let keys = new.keys().chain(current.keys());
    keys.filter(|k| is_destination_key(k)).any(|k| {
        let kept = is_secret_key(k) && new.get(k).and_then(Value::as_str) == Some(MASK);
        !kept && new.get(k) != current.get(k)
    })
}

fn restore(new: &mut Value, current: Option<&Value>, path: &str, unclear: &mut Option<String>) {
    restore_in(new, current, path, false, unclear);
}

/// [`restore`], where `moved_above` says that an enclosing object points elsewhere now (its
/// secrets, at any depth, were given for the old destination).
fn restore_in(
    new: &mut Value,
    current: Option<&Value>,
    path: &str,
    moved_above: bool,
    unclear: &mut Option<String>,
) {
    match new {
        Value::Object(map) => {
            let moved = moved_above || moved(map, current);
            for (k, v) in map.iter_mut() {
                let here = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                let old = current.and_then(|c| c.get(k));
                if is_secret_key(k) && v.as_str() == Some(MASK) {
                    match old {
                        Some(old) if !moved => *v = old.clone(),
                        _ => {
                            unclear.get_or_insert(here);
                        }
                    }
                } else {
                    restore_in(v, old, &here, moved, unclear);
                }
            }
        }
        Value::Array(items) => {
            let current = current.and_then(Value::as_array);
            let same_length = current.is_some_and(|c| c.len() == items.len());
            for (i, v) in items.iter_mut().enumerate() {
                let old = current.and_then(|c| counterpart(v, c, i, same_length));
                restore_in(v, old, &format!("{path}[{i}]"), moved_above, unclear);
            }
        }
        _ => {}
    }
}

/// The current element that the edited list element `new`, at `i`, stands for.
fn counterpart<'a>(
    new: &Value,
    current: &'a [Value],
    i: usize,
    same_length: bool,
) -> Option<&'a Value> {
    for key in ["name", "id"] {
        if let Some(id) = new.get(key).filter(|v| !v.is_null()) {
            let mut same = current.iter().filter(|c| c.get(key) == Some(id));
            return match (same.next(), same.next()) {
                (Some(one), None) => Some(one),
                _ => None,
            };
        }
    }
    if same_length { current.get(i) } else { None }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn masks_secret_keys_at_any_depth() {
        let v = json!({"channel": "#ci", "token": "xoxb-1", "smtp": {"password": "p", "port": 25},
                       "hooks": [{"url": "https://h/T0K"}], "api_key": null});
        let r = redact(&v);
        assert_eq!(
            r,
            json!({"channel": "#ci", "token": "***", "smtp": {"password": "***", "port": 25},
                             "hooks": [{"url": "***"}], "api_key": null})
        );
        assert!(!r.to_string().contains("xoxb"));
    }

    /// A webhook's extra headers are credentials whatever their names (found by a review:
    /// `X-Functions-Key` and `Cookie` were shown in full), and keeping them masked keeps them.
    #[test]
    fn a_webhooks_headers_are_masked_and_kept() {
        let current = json!({"channels": [{"type": "webhook", "name": "fn",
            "headers": {"X-Functions-Key": "fk-123", "Cookie": "session=abc"}}]});
        let shown = redact(&current);
        assert_eq!(shown["channels"][0]["headers"], MASK);
        let text = shown.to_string();
        assert!(
            !text.contains("fk-123") && !text.contains("session=abc"),
            "{text}"
        );
        let mut edited = shown.clone();
        edited["channels"][0]["name"] = json!("fn");
        restore_masked(&mut edited, &current).unwrap();
        assert_eq!(edited, current);
    }

    #[test]
    fn masked_values_keep_the_current_secret() {
        let current = json!({"token": "xoxb-1", "smtp": {"password": "p"}, "n": 1});
        let mut edited = json!({"token": "***", "smtp": {"password": "new"}, "n": 2});
        restore_masked(&mut edited, &current).unwrap();
        assert_eq!(
            edited,
            json!({"token": "xoxb-1", "smtp": {"password": "new"}, "n": 2})
        );
    }

    /// A list element keeps its own secret, never its neighbour's: matched by name when it
    /// has one (before, by position only: deleting the first channel gave the second the
    /// first one's webhook URL).
    #[test]
    fn a_list_element_keeps_its_own_secret() {
        let current = json!({"channels": [{"name": "team-a", "url": "https://hooks/A"},
                                          {"name": "team-b", "url": "https://hooks/B"}]});
        let mut deleted = json!({"channels": [{"name": "team-b", "url": "***"}]});
        restore_masked(&mut deleted, &current).unwrap();
        assert_eq!(deleted["channels"][0]["url"], "https://hooks/B");

        let mut inserted = json!({"channels": [{"name": "new", "url": "https://hooks/N"},
                                               {"name": "team-a", "url": "***"},
                                               {"name": "team-b", "url": "***"}]});
        restore_masked(&mut inserted, &current).unwrap();
        assert_eq!(inserted["channels"][1]["url"], "https://hooks/A");
        assert_eq!(inserted["channels"][2]["url"], "https://hooks/B");

        // Without names: by position while the length stays; otherwise refused, not guessed.
        let current = json!({"hooks": [{"url": "https://hooks/A"}, {"url": "https://hooks/B"}]});
        // A kept secret whose destination changed is not sent there unasked (found by a
        // review: a token holder could point `base_url` at their own server).
        let slack_now = json!({"channels": [{"type": "slack", "base_url": "https://slack.com/api",
                                           "token": "xoxb-secret"}]});
        let mut elsewhere = json!({"channels": [{"type": "slack", "base_url": "https://evil.example",
                                                 "token": "***"}]});
        let err = restore_masked(&mut elsewhere, &slack_now).unwrap_err();
        assert!(
            err.contains("channels[0].token") && !err.contains("xoxb"),
            "{err}"
        );
        assert!(!elsewhere.to_string().contains("xoxb"));
        // The destination may be a secret itself, and the secret may sit deeper.
        let reporter_now = json!({"external": {"endpoint": "https://ours.example/ingest",
                                               "token": "tok-secret"}});
        let mut reporter = json!({"external": {"endpoint": "https://evil.example/",
                                               "token": "***"}});
        assert!(restore_masked(&mut reporter, &reporter_now).is_err());
        let hook_now = json!({"url": "https://hooks.example/a",
                              "headers": {"Authorization": "Bearer secret"}});
        let mut hook = json!({"url": "https://evil.example/",
                              "headers": {"Authorization": "***"}});
        assert!(restore_masked(&mut hook, &hook_now).is_err());
        let mut hook_kept = json!({"url": "***", "headers": {"Authorization": "***"}});
        restore_masked(&mut hook_kept, &hook_now).unwrap();
        assert_eq!(hook_kept["headers"]["Authorization"], "Bearer secret");
        let mut other_type = json!({"channels": [{"type": "discord", "token": "***"}]});
        let current_type = json!({"channels": [{"type": "slack", "token": "xoxb-secret"}]});
        assert!(restore_masked(&mut other_type, &current_type).is_err());
        let mut unchanged = json!({"channels": [{"type": "slack", "base_url": "https://slack.com/api",
                                                 "token": "***", "channel": "#new"}]});
        restore_masked(&mut unchanged, &slack_now).unwrap();
        assert_eq!(unchanged["channels"][0]["token"], "xoxb-secret");
        let mut same = json!({"hooks": [{"url": "***"}, {"url": "https://hooks/C"}]});
        restore_masked(&mut same, &current).unwrap();
        assert_eq!(same["hooks"][0]["url"], "https://hooks/A");
        let mut shorter = json!({"hooks": [{"url": "***"}]});
        let err = restore_masked(&mut shorter, &current).unwrap_err();
        assert!(err.contains("`hooks[0].url` is `***`"), "{err}");
        assert!(!err.contains("https://hooks"), "{err}");

        // A renamed channel, or a new one typed as `***`: refused.
        let mut renamed = json!({"channels": [{"name": "team-c", "url": "***"}]});
        let current = json!({"channels": [{"name": "team-b", "url": "https://hooks/B"}]});
        assert!(restore_masked(&mut renamed, &current).is_err());
        let mut new_key = json!({"token": "***"});
        assert!(restore_masked(&mut new_key, &json!({})).is_err());
    }
}
