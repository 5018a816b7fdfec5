//! Summary statistics of timing samples.

use std::time::Duration;

/// Minimum, median and maximum of a set of samples, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Summary {
    /// Number of samples.
    pub runs: usize,
    /// Fastest sample (ms).
    pub min_ms: f64,
    /// Median sample (ms); the mean of the two middle samples for an even count.
    pub median_ms: f64,
    /// Slowest sample (ms).
    pub max_ms: f64,
}

impl Summary {
    /// Summarise `samples`; `None` when there are none.
    pub fn of(samples: &[Duration]) -> Option<Summary> {
        let ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
        Summary::of_ms(&ms)
    }

    /// Summarise samples already in milliseconds; `None` when there are none.
    pub fn of_ms(samples_ms: &[f64]) -> Option<Summary> {
        if samples_ms.is_empty() {
            return None;
        }
        let mut sorted = samples_ms.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = if n % 2 == 1 {
            sorted[n / 2]
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
        };
        Some(Summary {
            runs: n,
            min_ms: sorted[0],
            median_ms: median,
            max_ms: sorted[n - 1],
        })
    }
}

/// Minimum, median and maximum of unit-less values (e.g. KiB).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Spread {
    /// Number of values.
    pub n: usize,
    /// Smallest value.
    pub min: f64,
    /// Median value.
    pub median: f64,
    /// Largest value.
    pub max: f64,
}

impl Spread {
    /// Summarise `values`; `None` when there are none.
    pub fn of(values: &[f64]) -> Option<Spread> {
        Summary::of_ms(values).map(|s| Spread {
            n: s.runs,
            min: s.min_ms,
            median: s.median_ms,
            max: s.max_ms,
        })
    }
}

/// Median of `a` divided by the median of `b` (`None` if `b`'s median is zero).
pub fn median_ratio(a: &Summary, b: &Summary) -> Option<f64> {
    (b.median_ms > 0.0).then(|| a.median_ms / b.median_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_has_no_summary() {
        assert_eq!(Summary::of(&[]), None);
    }

    #[test]
    fn odd_count_median_is_the_middle_sample() {
        let s = Summary::of_ms(&[9.0, 1.0, 5.0]).unwrap();
        assert_eq!(
            (s.runs, s.min_ms, s.median_ms, s.max_ms),
            (3, 1.0, 5.0, 9.0)
        );
    }

    #[test]
    fn even_count_median_is_the_mean_of_the_middle_two() {
        let s = Summary::of_ms(&[4.0, 1.0, 2.0, 10.0]).unwrap();
        assert_eq!(s.median_ms, 3.0);
        assert_eq!(s.min_ms, 1.0);
        assert_eq!(s.max_ms, 10.0);
    }

    #[test]
    fn durations_are_converted_to_milliseconds() {
        let s = Summary::of(&[Duration::from_micros(1500), Duration::from_millis(3)]).unwrap();
        assert!((s.median_ms - 2.25).abs() < 1e-9);
    }

    #[test]
    fn spread_is_min_median_max() {
        let s = Spread::of(&[30.0, 10.0, 20.0]).unwrap();
        assert_eq!((s.n, s.min, s.median, s.max), (3, 10.0, 20.0, 30.0));
        assert_eq!(Spread::of(&[]), None);
    }

    #[test]
    fn ratio_of_medians() {
        let a = Summary::of_ms(&[5.0]).unwrap();
        let b = Summary::of_ms(&[20.0]).unwrap();
        assert_eq!(median_ratio(&a, &b), Some(0.25));
        let zero = Summary::of_ms(&[0.0]).unwrap();
        assert_eq!(median_ratio(&a, &zero), None);
    }
}
