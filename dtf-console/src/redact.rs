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
pub(crate) fn restore_masked(new: &mut Value, current: &Value) {
    match (new, current) {
        (Value::Object(new), Value::Object(current)) => {
            for (k, v) in new.iter_mut() {
                let Some(old) = current.get(k) else { continue };
                if is_secret_key(k) && v.as_str() == Some(MASK) {
                    *v = old.clone();
                } else {
                    restore_masked(v, old);
                }
            }
        }
        (Value::Array(new), Value::Array(current)) => {
            for (v, old) in new.iter_mut().zip(current) {
                restore_masked(v, old);
            }
        }
        _ => {}
    }
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

    #[test]
    fn masked_values_keep_the_current_secret() {
        let current = json!({"token": "xoxb-1", "smtp": {"password": "p"}, "n": 1});
        let mut edited = json!({"token": "***", "smtp": {"password": "new"}, "n": 2});
        restore_masked(&mut edited, &current);
        assert_eq!(
            edited,
            json!({"token": "xoxb-1", "smtp": {"password": "new"}, "n": 2})
        );
    }
}
