//! Reconnect delays: capped exponential backoff with full jitter (the delay
//! is drawn uniformly from zero to the current cap), reset once a
//! connection has stayed up long enough. Full jitter spreads thousands of
//! agents that lost the same server over the whole window instead of letting
//! them return in lock-step.

use std::time::Duration;

use rand::Rng;

/// Backoff settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackoffConfig {
    /// Cap of the first retry's delay.
    pub initial: Duration,
    /// Largest cap, reached by doubling.
    pub max: Duration,
    /// A connection that lasted this long resets the backoff.
    pub stable_after: Duration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(30),
            stable_after: Duration::from_secs(60),
        }
    }
}

/// Backoff state across consecutive failures.
#[derive(Debug, Clone)]
pub struct Backoff {
    config: BackoffConfig,
    failures: u32,
}

impl Backoff {
    /// Fresh state.
    pub fn new(config: BackoffConfig) -> Self {
        Self { config, failures: 0 }
    }

    /// The cap for the next delay: `initial * 2^failures`, at most `max`.
    pub fn cap(&self) -> Duration {
        let factor = 1u32.checked_shl(self.failures.min(31)).unwrap_or(u32::MAX);
        self.config.initial.saturating_mul(factor).min(self.config.max)
    }

    /// Records a failure and returns how long to wait before the next attempt.
    pub fn next_delay(&mut self, rng: &mut impl Rng) -> Duration {
        let cap = self.cap();
        self.failures = self.failures.saturating_add(1);
        cap.mul_f64(rng.random::<f64>())
    }

    /// Records how long the last connection lasted; a stable one resets the backoff.
    pub fn connection_lasted(&mut self, lasted: Duration) {
        if lasted >= self.config.stable_after {
            self.failures = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn caps_double_up_to_the_maximum() {
        let mut b = Backoff::new(BackoffConfig {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(10),
            stable_after: Duration::from_secs(60),
        });
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut caps = Vec::new();
        for _ in 0..6 {
            caps.push(b.cap().as_secs());
            assert!(b.next_delay(&mut rng) <= Duration::from_secs(10));
        }
        assert_eq!(caps, [1, 2, 4, 8, 10, 10]);
        b.connection_lasted(Duration::from_secs(5));
        assert_eq!(b.cap().as_secs(), 10);
        b.connection_lasted(Duration::from_secs(60));
        assert_eq!(b.cap().as_secs(), 1);
    }

    #[test]
    fn full_jitter_spreads_agents_over_the_window() {
        let config = BackoffConfig {
            initial: Duration::from_secs(8),
            ..Default::default()
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let delays: Vec<f64> = (0..1000)
            .map(|_| Backoff::new(config.clone()).next_delay(&mut rng).as_secs_f64())
            .collect();
        let below_quarter = delays.iter().filter(|d| **d < 2.0).count();
        let above_three_quarters = delays.iter().filter(|d| **d > 6.0).count();
        // Uniform over [0, 8): about 250 in each outer quarter.
        assert!((150..350).contains(&below_quarter), "{below_quarter}");
        assert!((150..350).contains(&above_three_quarters), "{above_three_quarters}");
    }
}
