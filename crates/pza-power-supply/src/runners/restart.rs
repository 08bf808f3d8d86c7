//! The restart decisions of one runner, as a state machine with no I/O: how
//! many consecutive crashes, how long to wait, when to give up.

use tokio::time::{Duration, Instant};

use crate::config::RestartPolicy;

/// What to do after a crash.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decision {
    /// Restart after `delay`; this is the `attempt`-th consecutive restart.
    Restart { attempt: u32, delay: Duration },
    /// The policy gives up: the runner is `Failed`.
    GiveUp,
}

/// Consecutive crash count of one runner, and since when it runs healthy.
#[derive(Debug, Clone, Default)]
pub struct RestartTracker {
    consecutive: u32,
    running_since: Option<Instant>,
}

impl RestartTracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// The runner reached `Running` at `now`.
    pub fn running(&mut self, now: Instant) {
        self.running_since = Some(now);
    }

    /// The runner crashed at `now`. The consecutive count goes back to 0 only
    /// when the runner had been `Running` for `reset_after` before this crash.
    /// `random` in `[0, 1)` draws the jitter.
    pub fn crashed(&mut self, policy: &RestartPolicy, now: Instant, random: f64) -> Decision {
        if let Some(since) = self.running_since.take() {
            if now.saturating_duration_since(since) >= policy.reset_after {
                self.consecutive = 0;
            }
        }
        if self.consecutive >= policy.max_retries {
            return Decision::GiveUp;
        }
        self.consecutive += 1;
        Decision::Restart {
            attempt: self.consecutive,
            delay: policy.delay(self.consecutive, random),
        }
    }

    /// A restart asked by a user: start again from the first delay.
    pub fn reset(&mut self) {
        self.consecutive = 0;
        self.running_since = None;
    }

    /// Consecutive restarts so far.
    pub fn consecutive(&self) -> u32 {
        self.consecutive
    }
}

/// A policy with round numbers and no jitter, for the tests.
#[cfg(test)]
pub(crate) fn test_policy() -> RestartPolicy {
    RestartPolicy {
        initial_delay: Duration::from_millis(100),
        multiplier: 2.0,
        max_delay: Duration::from_millis(1000),
        jitter: 0.0,
        max_retries: 3,
        reset_after: Duration::from_secs(60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::advance;

    fn policy() -> RestartPolicy {
        test_policy()
    }

    #[tokio::test(start_paused = true)]
    async fn crash_loop_gives_up_after_max_retries() {
        let p = policy();
        let mut t = RestartTracker::new();
        let mut decisions = Vec::new();
        for _ in 0..4 {
            // Each restart reaches Running briefly, then crashes again.
            t.running(Instant::now());
            advance(Duration::from_millis(10)).await;
            decisions.push(t.crashed(&p, Instant::now(), 0.0));
        }
        let ms = |d: u64| Duration::from_millis(d);
        assert_eq!(
            decisions,
            vec![
                Decision::Restart {
                    attempt: 1,
                    delay: ms(100)
                },
                Decision::Restart {
                    attempt: 2,
                    delay: ms(200)
                },
                Decision::Restart {
                    attempt: 3,
                    delay: ms(400)
                },
                Decision::GiveUp,
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn healthy_for_reset_after_starts_from_the_first_delay() {
        let p = policy();
        let mut t = RestartTracker::new();
        t.crashed(&p, Instant::now(), 0.0);
        t.crashed(&p, Instant::now(), 0.0);
        t.running(Instant::now());
        advance(p.reset_after).await;
        assert_eq!(
            t.crashed(&p, Instant::now(), 0.0),
            Decision::Restart {
                attempt: 1,
                delay: p.initial_delay
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_successful_restart_alone_does_not_reset() {
        let p = policy();
        let mut t = RestartTracker::new();
        t.crashed(&p, Instant::now(), 0.0);
        t.running(Instant::now());
        advance(p.reset_after - Duration::from_millis(1)).await;
        assert_eq!(
            t.crashed(&p, Instant::now(), 0.0),
            Decision::Restart {
                attempt: 2,
                delay: Duration::from_millis(200)
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn crashes_before_running_count_up() {
        let p = policy();
        let mut t = RestartTracker::new();
        advance(Duration::from_secs(3600)).await;
        t.crashed(&p, Instant::now(), 0.0);
        advance(Duration::from_secs(3600)).await;
        assert!(matches!(
            t.crashed(&p, Instant::now(), 0.0),
            Decision::Restart { attempt: 2, .. }
        ));
    }

    #[test]
    fn max_retries_zero_never_restarts() {
        let p = RestartPolicy {
            max_retries: 0,
            ..policy()
        };
        assert_eq!(
            RestartTracker::new().crashed(&p, Instant::now(), 0.0),
            Decision::GiveUp
        );
    }

    #[test]
    fn reset_revives() {
        let p = RestartPolicy {
            max_retries: 1,
            ..policy()
        };
        let mut t = RestartTracker::new();
        t.crashed(&p, Instant::now(), 0.0);
        assert_eq!(t.crashed(&p, Instant::now(), 0.0), Decision::GiveUp);
        t.reset();
        assert!(matches!(
            t.crashed(&p, Instant::now(), 0.0),
            Decision::Restart { attempt: 1, .. }
        ));
    }
}
