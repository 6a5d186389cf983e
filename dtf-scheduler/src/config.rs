//! [`SchedulerConfig`]: the settings every built-in strategy reads.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::SchedulerError;
use crate::framework::ScoreWeights;

/// The default half-life of `fairness` usage, in hours: a working day's usage has faded to a
/// quarter by the next morning (Slurm's default is 7 days, for clusters shared over weeks).
pub const DEFAULT_HALF_LIFE_HOURS: f64 = 12.0;

/// The default of [`SchedulerConfig::retry_elsewhere_secs`]: how long a retried task waits
/// for a worker other than the one it failed on.
pub const DEFAULT_RETRY_ELSEWHERE_SECS: f64 = 10.0;

/// Which scheduler to build and how it is tuned. Deserializes from a plugin's configuration
/// (unknown keys are rejected); every field has a default, so `{}` is a valid configuration.
///
/// ```
/// use dtf_scheduler::SchedulerConfig;
///
/// let config = SchedulerConfig::new("fairness")
///     .half_life_hours(6.0)
///     .weight("alice", 2.0)
///     .quota("bob", 10);
/// assert!(config.validate().is_ok());
/// assert!(SchedulerConfig::new("fairness").weight("carol", 0.0).validate().is_err());
/// assert!(SchedulerConfig::new("fifo").retry_elsewhere_secs(-1.0).validate().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct SchedulerConfig {
    /// The registry name of the strategy. Default `fifo`.
    pub scheduler: String,
    /// `fairness`: the half-life of usage, in hours: usage from one half-life ago counts half,
    /// from two a quarter (like Slurm's `PriorityDecayHalfLife`). Default 12 (`None`: the
    /// default, or what `fairness_window_hours` maps to).
    #[serde(deserialize_with = "de::positive_opt")]
    pub half_life_hours: Option<f64>,
    /// `fairness`: the older setting, kept working: a window of `W` hours maps to a half-life
    /// of `W / 2` hours (the default 24 h window is the default 12 h half-life). Setting both
    /// is an error.
    #[serde(deserialize_with = "de::positive_opt")]
    pub fairness_window_hours: Option<f64>,
    /// `fairness`: per-tenant weights (> 0); tenants not listed get `default_weight`.
    #[serde(deserialize_with = "de::positive_map")]
    pub weights: BTreeMap<String, f64>,
    /// `fairness`: the weight of tenants not in `weights`. Default 1.
    #[serde(deserialize_with = "de::positive")]
    pub default_weight: f64,
    /// `fairness`: per-tenant caps (>= 1) on concurrently running tasks. Default none.
    #[serde(deserialize_with = "de::quota_map")]
    pub quotas: BTreeMap<String, u32>,
    /// `priority`, `fairness`: seconds of waiting worth one priority level (aging, so low
    /// priorities are never starved). Default 60.
    #[serde(deserialize_with = "de::positive")]
    pub aging_secs: f64,
    /// `fairness`, `longest-first`: the duration assumed for tasks without an expected
    /// duration, in seconds. Default 60.
    #[serde(deserialize_with = "de::positive")]
    pub default_duration_secs: f64,
    /// Score weights; default: each strategy's own (spread for most, packing for
    /// `longest-first`).
    pub score: Option<ScoreWeights>,
    /// Anti-affinity of retries, in seconds: a task taken back from a worker (a retryable
    /// failure, a lost worker) prefers any other free worker; when its old worker is the only
    /// free one, it waits up to this long for another worker that could run it and is busy,
    /// rather than running there again at once (other tasks use the free worker meanwhile).
    /// `0`: go back at once (strictly work-conserving). Default 10. Applied by the
    /// [`SchedulingCoordinator`](crate::SchedulingCoordinator) (`Engine::retry_elsewhere`).
    #[serde(deserialize_with = "de::non_negative")]
    pub retry_elsewhere_secs: f64,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            scheduler: "fifo".to_owned(),
            half_life_hours: None,
            fairness_window_hours: None,
            weights: BTreeMap::new(),
            default_weight: 1.0,
            quotas: BTreeMap::new(),
            aging_secs: 60.0,
            default_duration_secs: 60.0,
            score: None,
            retry_elsewhere_secs: DEFAULT_RETRY_ELSEWHERE_SECS,
        }
    }
}

impl SchedulerConfig {
    /// The defaults, for the strategy registered as `scheduler`.
    pub fn new(scheduler: impl Into<String>) -> Self {
        Self {
            scheduler: scheduler.into(),
            ..Self::default()
        }
    }

    /// Sets the half-life of usage, in hours (default 12).
    pub fn half_life_hours(mut self, hours: f64) -> Self {
        self.half_life_hours = Some(hours);
        self
    }

    /// Sets the fairness window, in hours: a half-life of `hours / 2` (see
    /// [`fairness_window_hours`](Self::fairness_window_hours)).
    pub fn fairness_window_hours(mut self, hours: f64) -> Self {
        self.fairness_window_hours = Some(hours);
        self
    }

    /// Sets the weight of `tenant` (default `default_weight`).
    pub fn weight(mut self, tenant: impl Into<String>, weight: f64) -> Self {
        self.weights.insert(tenant.into(), weight);
        self
    }

    /// Replaces all per-tenant weights.
    pub fn weights(mut self, weights: BTreeMap<String, f64>) -> Self {
        self.weights = weights;
        self
    }

    /// Caps how many tasks of `tenant` run at once (default: no cap).
    pub fn quota(mut self, tenant: impl Into<String>, max_running: u32) -> Self {
        self.quotas.insert(tenant.into(), max_running);
        self
    }

    /// Sets the seconds of waiting worth one priority level (default 60).
    pub fn aging_secs(mut self, secs: f64) -> Self {
        self.aging_secs = secs;
        self
    }

    /// Sets the duration assumed for tasks without an expected one (default 60 s).
    pub fn default_duration_secs(mut self, secs: f64) -> Self {
        self.default_duration_secs = secs;
        self
    }

    /// Sets the score weights (default: the strategy's own).
    pub fn score(mut self, weights: ScoreWeights) -> Self {
        self.score = Some(weights);
        self
    }

    /// The weight of `tenant`.
    pub fn weight_of(&self, tenant: &str) -> f64 {
        self.weights
            .get(tenant)
            .copied()
            .unwrap_or(self.default_weight)
    }

    /// Checks every value's range.
    ///
    /// # Errors
    ///
    /// [`SchedulerError::InvalidConfig`] naming the first bad key: a weight, the default
    /// weight, the half-life or window (or both set), the aging or the default duration that is not a positive finite
    /// number, or a quota of 0.
    pub fn validate(&self) -> Result<(), SchedulerError> {
        self.retry_elsewhere()?;
        self.half_life()?;
        self.aging()?;
        self.default_duration()?;
        positive("default_weight", self.default_weight)?;
        for (tenant, &w) in &self.weights {
            positive(&format!("weights.{tenant}"), w)?;
        }
        for (tenant, &q) in &self.quotas {
            if q == 0 {
                return Err(SchedulerError::invalid(
                    format!("quotas.{tenant}"),
                    "must be at least 1 (got 0)",
                ));
            }
        }
        Ok(())
    }

    /// [`retry_elsewhere_secs`](Self::retry_elsewhere_secs) as a duration.
    ///
    /// # Errors
    ///
    /// [`SchedulerError::InvalidConfig`] if it is negative, not finite, or above a day.
    pub fn retry_elsewhere(&self) -> Result<Duration, SchedulerError> {
        let secs = self.retry_elsewhere_secs;
        if secs.is_finite() && (0.0..=86_400.0).contains(&secs) {
            Ok(Duration::from_secs_f64(secs))
        } else {
            Err(SchedulerError::invalid(
                "retry_elsewhere_secs",
                "must be from 0 to 86400 seconds",
            ))
        }
    }

    /// Sets [`retry_elsewhere_secs`](Self::retry_elsewhere_secs) (default 10; 0: a retry goes
    /// back to its worker at once when that one is the only free worker).
    pub fn retry_elsewhere_secs(mut self, secs: f64) -> Self {
        self.retry_elsewhere_secs = secs;
        self
    }

    /// The half-life of usage, from `half_life_hours` or `fairness_window_hours` (default
    /// 12 h).
    ///
    /// # Errors
    ///
    /// [`SchedulerError::InvalidConfig`] if the value is not a positive number, or if both
    /// keys are set.
    pub fn half_life(&self) -> Result<Duration, SchedulerError> {
        let hours = match (self.half_life_hours, self.fairness_window_hours) {
            (Some(_), Some(_)) => {
                return Err(SchedulerError::invalid(
                    "fairness_window_hours",
                    "cannot be set together with `half_life_hours` (a window of W hours is a half-life of W/2)",
                ));
            }
            (Some(h), None) => positive("half_life_hours", h)?,
            (None, Some(w)) => positive("fairness_window_hours", w)? / 2.0,
            (None, None) => DEFAULT_HALF_LIFE_HOURS,
        };
        let key = if self.half_life_hours.is_some() {
            "half_life_hours"
        } else {
            "fairness_window_hours"
        };
        duration(key, hours * 3600.0)
    }

    pub(crate) fn aging(&self) -> Result<Duration, SchedulerError> {
        duration("aging_secs", positive("aging_secs", self.aging_secs)?)
    }

    pub(crate) fn default_duration(&self) -> Result<Duration, SchedulerError> {
        let secs = positive("default_duration_secs", self.default_duration_secs)?;
        duration("default_duration_secs", secs)
    }
}

/// Parses per-tenant weights written `alice=2,bob=1` (as on a command line); each weight must
/// be a positive number.
///
/// # Errors
///
/// [`SchedulerError::InvalidConfig`] naming the bad entry.
///
/// ```
/// let weights = dtf_scheduler::parse_weights("a=3, b=2,c=1").unwrap();
/// assert_eq!(weights["a"], 3.0);
/// assert!(dtf_scheduler::parse_weights("a=-1").is_err());
/// ```
pub fn parse_weights(text: &str) -> Result<BTreeMap<String, f64>, SchedulerError> {
    let mut weights = BTreeMap::new();
    for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let bad = || {
            SchedulerError::invalid("weights", format!("entry `{entry}` is not `tenant=weight`"))
        };
        let (tenant, weight) = entry.split_once('=').ok_or_else(bad)?;
        let weight: f64 = weight.trim().parse().map_err(|_| bad())?;
        let tenant = tenant.trim();
        positive(&format!("weights.{tenant}"), weight)?;
        weights.insert(tenant.to_owned(), weight);
    }
    Ok(weights)
}

fn positive(key: &str, value: f64) -> Result<f64, SchedulerError> {
    if value.is_finite() && value > 0.0 {
        Ok(value)
    } else {
        Err(SchedulerError::invalid(
            key,
            format!("must be a positive number (got {value})"),
        ))
    }
}

fn duration(key: &str, secs: f64) -> Result<Duration, SchedulerError> {
    Duration::try_from_secs_f64(secs)
        .map_err(|_| SchedulerError::invalid(key, format!("is too large (got {secs} s)")))
}

/// Range checks run while deserializing, so that a configuration file's error names the
/// exact key (`weights.alice`) and its position, not just the settings table.
mod de {
    use std::collections::BTreeMap;

    use serde::Deserialize;
    use serde::de::{Deserializer, Error};

    /// A number that must be positive and finite.
    struct Positive(f64);

    impl<'de> Deserialize<'de> for Positive {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            let v = f64::deserialize(d)?;
            if v.is_finite() && v > 0.0 {
                Ok(Self(v))
            } else {
                Err(D::Error::custom(format!(
                    "must be a positive number (got {v})"
                )))
            }
        }
    }

    /// A number that must be finite and not negative.
    struct NonNegative(f64);

    impl<'de> Deserialize<'de> for NonNegative {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            let v = f64::deserialize(d)?;
            if v.is_finite() && v >= 0.0 {
                Ok(Self(v))
            } else {
                Err(D::Error::custom("must be a number, 0 or more"))
            }
        }
    }

    pub(super) fn non_negative<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        NonNegative::deserialize(d).map(|p| p.0)
    }

    /// A quota: at least 1.
    struct Quota(u32);

    impl<'de> Deserialize<'de> for Quota {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            match u32::deserialize(d)? {
                0 => Err(D::Error::custom("must be at least 1 (got 0)")),
                q => Ok(Self(q)),
            }
        }
    }

    pub(super) fn positive<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Positive::deserialize(d).map(|p| p.0)
    }

    pub(super) fn positive_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        Option::<Positive>::deserialize(d).map(|p| p.map(|p| p.0))
    }

    pub(super) fn positive_map<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<String, f64>, D::Error> {
        let map = BTreeMap::<String, Positive>::deserialize(d)?;
        Ok(map.into_iter().map(|(k, v)| (k, v.0)).collect())
    }

    pub(super) fn quota_map<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<String, u32>, D::Error> {
        let map = BTreeMap::<String, Quota>::deserialize(d)?;
        Ok(map.into_iter().map(|(k, v)| (k, v.0)).collect())
    }
}
