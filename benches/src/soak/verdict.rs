//! When a series of samples "keeps growing".
//!
//! The rule, applied to the samples taken after the warm-up (at least three):
//! split them into thirds (k = n / 3 samples at each end, the rest in the
//! middle); the series keeps growing when **all** of
//!
//! 1. the mean of the last third exceeds the mean of the first third by more
//!    than the tolerance (`relative` × first mean + `absolute`);
//! 2. the mean of the last third exceeds the mean of the middle third by more
//!    than half the tolerance (still rising in the second half);
//! 3. the highest sample lies in the last third (the rise has not levelled off
//!    or come down again).
//!
//! Noise alone rarely passes (1); a rise that then plateaus (a cache filling
//! up, an allocator's arenas reaching their working size) fails (2) or (3); so
//! only a rise that continues to the end of the run is reported.

/// Tolerance of the growth check.
#[derive(Debug, Clone, Copy)]
pub struct Tolerance {
    /// Fraction of the first third's mean.
    pub relative: f64,
    /// Fixed slack in the series' unit.
    pub absolute: f64,
}

/// Why the check judged as it did.
#[derive(Debug, Clone, PartialEq)]
pub enum Growth {
    /// Fewer than three samples after the warm-up.
    TooFewSamples,
    /// Within the tolerance, or levelled off.
    Steady {
        /// Mean of the first third.
        first: f64,
        /// Mean of the last third.
        last: f64,
    },
    /// Still rising at the end, beyond the tolerance.
    KeepsGrowing {
        /// Mean of the first third.
        first: f64,
        /// Mean of the last third.
        last: f64,
    },
}

/// Applies the rule (see the module docs) to `series`, the samples after the warm-up.
pub fn judge(series: &[f64], tolerance: Tolerance) -> Growth {
    let n = series.len();
    if n < 3 {
        return Growth::TooFewSamples;
    }
    let k = n / 3;
    let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len() as f64;
    let (first, middle, last) = (mean(&series[..k]), mean(&series[k..n - k]), mean(&series[n - k..]));
    let grew = last > first * (1.0 + tolerance.relative) + tolerance.absolute;
    let still_rising = last > middle * (1.0 + tolerance.relative / 2.0) + tolerance.absolute / 2.0;
    let peak_before = series[..n - k].iter().copied().fold(f64::MIN, f64::max);
    let peak_last = series[n - k..].iter().copied().fold(f64::MIN, f64::max);
    if grew && still_rising && peak_last > peak_before {
        Growth::KeepsGrowing { first, last }
    } else {
        Growth::Steady { first, last }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOL: Tolerance = Tolerance {
        relative: 0.10,
        absolute: 5.0,
    };

    #[test]
    fn a_steady_rise_keeps_growing() {
        let series: Vec<f64> = (0..30).map(|i| 100.0 + 3.0 * i as f64).collect();
        assert!(matches!(judge(&series, TOL), Growth::KeepsGrowing { .. }));
    }

    #[test]
    fn noise_a_plateau_and_short_runs_pass() {
        let noise: Vec<f64> = (0..30).map(|i| 100.0 + if i % 2 == 0 { 4.0 } else { -4.0 }).collect();
        assert!(matches!(judge(&noise, TOL), Growth::Steady { .. }));
        // A rise levelling off at 220, with noise that puts the highest sample at the very end.
        let plateau: Vec<f64> = (0..30)
            .map(|i| {
                if i < 12 {
                    100.0 + 10.0 * i as f64
                } else {
                    220.0 + (i % 3) as f64
                }
            })
            .collect();
        assert!(matches!(judge(&plateau, TOL), Growth::Steady { .. }));
        assert_eq!(judge(&[1.0, 1000.0], TOL), Growth::TooFewSamples);
    }
}
