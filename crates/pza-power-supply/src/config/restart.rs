//! Restart policy settings (all optional, merged) and the resolved policy.

use std::time::Duration;

use serde::Deserialize;

/// Restart settings as written in the config: every key optional. The
/// server-wide `restart` is merged over the built-in defaults, and a runner's
/// `restart` over that.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestartSettings {
    pub initial_delay_ms: Option<u64>,
    pub multiplier: Option<f64>,
    pub max_delay_ms: Option<u64>,
    pub jitter: Option<f64>,
    pub max_retries: Option<u32>,
    pub reset_after_ms: Option<u64>,
}

impl RestartSettings {
    /// `self` with the keys set in `over` replaced.
    pub fn merged(&self, over: &RestartSettings) -> RestartSettings {
        RestartSettings {
            initial_delay_ms: over.initial_delay_ms.or(self.initial_delay_ms),
            multiplier: over.multiplier.or(self.multiplier),
            max_delay_ms: over.max_delay_ms.or(self.max_delay_ms),
            jitter: over.jitter.or(self.jitter),
            max_retries: over.max_retries.or(self.max_retries),
            reset_after_ms: over.reset_after_ms.or(self.reset_after_ms),
        }
    }

    /// The policy these settings give over the built-in defaults, or the first
    /// rule they break as `(key, message)`.
    pub fn resolve(&self) -> Result<RestartPolicy, (&'static str, String)> {
        let d = RestartPolicy::default();
        let policy = RestartPolicy {
            initial_delay: self
                .initial_delay_ms
                .map(Duration::from_millis)
                .unwrap_or(d.initial_delay),
            multiplier: self.multiplier.unwrap_or(d.multiplier),
            max_delay: self
                .max_delay_ms
                .map(Duration::from_millis)
                .unwrap_or(d.max_delay),
            jitter: self.jitter.unwrap_or(d.jitter),
            max_retries: self.max_retries.unwrap_or(d.max_retries),
            reset_after: self
                .reset_after_ms
                .map(Duration::from_millis)
                .unwrap_or(d.reset_after),
        };
        if !(policy.multiplier.is_finite() && policy.multiplier >= 1.0) {
            return Err((
                "multiplier",
                format!("must be a finite number >= 1, not {}", policy.multiplier),
            ));
        }
        if !(0.0..=1.0).contains(&policy.jitter) {
            return Err((
                "jitter",
                format!("must lie between 0 and 1, not {}", policy.jitter),
            ));
        }
        if policy.initial_delay > policy.max_delay {
            return Err((
                "initial_delay_ms",
                format!(
                    "{} is greater than max_delay_ms {}",
                    policy.initial_delay.as_millis(),
                    policy.max_delay.as_millis()
                ),
            ));
        }
        Ok(policy)
    }
}

/// When and how often a crashed runner is restarted (SPEC "Restart policy").
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RestartPolicy {
    pub initial_delay: Duration,
    pub multiplier: f64,
    pub max_delay: Duration,
    /// Each delay is reduced by a random fraction of at most this much.
    pub jitter: f64,
    /// Consecutive restarts allowed before the runner is `Failed`.
    pub max_retries: u32,
    /// Healthy running time after which the consecutive count goes back to 0.
    pub reset_after: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            initial_delay: Duration::from_millis(1000),
            multiplier: 2.0,
            max_delay: Duration::from_millis(60_000),
            jitter: 0.2,
            max_retries: 10,
            reset_after: Duration::from_millis(60_000),
        }
    }
}

impl RestartPolicy {
    /// The delay before the `attempt`-th consecutive restart (from 1):
    /// `min(max_delay, initial_delay * multiplier^(attempt-1))`, reduced by
    /// `jitter * random`, where `random` lies in `[0, 1)`.
    pub fn delay(&self, attempt: u32, random: f64) -> Duration {
        let exponent = attempt.saturating_sub(1).min(i32::MAX as u32) as i32;
        let base_ms = self.initial_delay.as_secs_f64() * 1000.0 * self.multiplier.powi(exponent);
        let capped_ms = base_ms.min(self.max_delay.as_secs_f64() * 1000.0);
        let reduced_ms = capped_ms * (1.0 - self.jitter * random.clamp(0.0, 1.0));
        Duration::from_secs_f64(reduced_ms.max(0.0) / 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(initial: u64, multiplier: f64, max: u64) -> RestartPolicy {
        RestartPolicy {
            initial_delay: Duration::from_millis(initial),
            multiplier,
            max_delay: Duration::from_millis(max),
            jitter: 0.0,
            ..RestartPolicy::default()
        }
    }

    #[test]
    fn delays_grow_then_cap() {
        let p = policy(100, 2.0, 1000);
        let delays: Vec<u128> = (1..=6).map(|n| p.delay(n, 0.5).as_millis()).collect();
        assert_eq!(delays, vec![100, 200, 400, 800, 1000, 1000]);
        assert_eq!(p.delay(u32::MAX, 0.0), Duration::from_millis(1000));
    }

    #[test]
    fn jitter_only_shortens() {
        let p = RestartPolicy {
            jitter: 0.2,
            ..policy(1000, 1.0, 1000)
        };
        assert_eq!(p.delay(1, 0.0), Duration::from_millis(1000));
        assert_eq!(p.delay(1, 0.5).as_millis(), 900);
        assert!(p.delay(1, 0.999_999) >= Duration::from_millis(800));
    }

    #[test]
    fn merge_and_resolve() {
        let server = RestartSettings {
            initial_delay_ms: Some(10),
            max_retries: Some(5),
            ..Default::default()
        };
        let runner = RestartSettings {
            max_retries: Some(2),
            ..Default::default()
        };
        let p = server.merged(&runner).resolve().unwrap();
        assert_eq!(p.initial_delay, Duration::from_millis(10));
        assert_eq!(p.max_retries, 2);
        assert_eq!(p.multiplier, 2.0);
    }

    #[test]
    fn rules() {
        let bad = |s: RestartSettings| s.resolve().unwrap_err().0;
        assert_eq!(
            bad(RestartSettings {
                multiplier: Some(0.5),
                ..Default::default()
            }),
            "multiplier"
        );
        assert_eq!(
            bad(RestartSettings {
                multiplier: Some(f64::INFINITY),
                ..Default::default()
            }),
            "multiplier"
        );
        assert_eq!(
            bad(RestartSettings {
                jitter: Some(1.5),
                ..Default::default()
            }),
            "jitter"
        );
        assert_eq!(
            bad(RestartSettings {
                jitter: Some(-0.1),
                ..Default::default()
            }),
            "jitter"
        );
        assert_eq!(
            bad(RestartSettings {
                initial_delay_ms: Some(5000),
                max_delay_ms: Some(100),
                ..Default::default()
            }),
            "initial_delay_ms"
        );
    }
}
