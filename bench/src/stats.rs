//! Summaries of timed samples (median, p95 by nearest rank, min, mean) and the ratios the
//! reports quote. Ratios are always taken between medians measured in the same run, because
//! under TCG absolute times are distorted but run-to-run ratios hold.

use std::time::Duration;

use serde::Serialize;

/// A summary of one measured variant, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub n: usize,
    pub median_ms: f64,
    pub p95_ms: f64,
    pub min_ms: f64,
    pub mean_ms: f64,
}

/// Nearest-rank percentile `p` (0–100) of an ascending slice; `None` when empty.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// The median (mean of the two middle values for an even count); `None` when empty.
pub fn median(sorted: &[f64]) -> Option<f64> {
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

/// Sorts a copy ascending (NaN-free input: durations and byte counts).
pub fn sorted(values: &[f64]) -> Vec<f64> {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v
}

impl Summary {
    /// Summarises durations; `None` for no samples.
    pub fn of(samples: &[Duration]) -> Option<Summary> {
        let ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        Summary::of_ms(&ms)
    }

    /// Summarises values already in milliseconds.
    pub fn of_ms(ms: &[f64]) -> Option<Summary> {
        let s = sorted(ms);
        Some(Summary {
            n: s.len(),
            median_ms: median(&s)?,
            p95_ms: percentile(&s, 95.0)?,
            min_ms: *s.first()?,
            mean_ms: s.iter().sum::<f64>() / s.len() as f64,
        })
    }
}

/// `a / b` for medians; `None` when `b` is zero.
pub fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0).then(|| a / b)
}

/// Formats milliseconds with sensible precision for tables.
pub fn ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// Formats a ratio (`2.35x`), or `n/a`.
pub fn x(r: Option<f64>) -> String {
    match r {
        Some(r) if r >= 10.0 => format!("{r:.1}x"),
        Some(r) => format!("{r:.2}x"),
        None => "n/a".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles_and_medians() {
        let v: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(percentile(&v, 95.0), Some(19.0));
        assert_eq!(percentile(&v, 100.0), Some(20.0));
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        assert_eq!(median(&v), Some(10.5));
        assert_eq!(median(&[3.0]), Some(3.0));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn summary_of_durations() {
        let d: Vec<Duration> = [5u64, 1, 3]
            .iter()
            .map(|&m| Duration::from_millis(m))
            .collect();
        let s = Summary::of(&d).unwrap();
        assert_eq!(s.n, 3);
        assert!((s.median_ms - 3.0).abs() < 1e-9);
        assert!((s.p95_ms - 5.0).abs() < 1e-9);
        assert!((s.min_ms - 1.0).abs() < 1e-9);
        assert!(Summary::of(&[]).is_none());
    }

    #[test]
    fn ratios_and_formatting() {
        assert_eq!(ratio(6.0, 2.0), Some(3.0));
        assert_eq!(ratio(1.0, 0.0), None);
        assert_eq!(x(Some(12.34)), "12.3x");
        assert_eq!(x(Some(1.234)), "1.23x");
        assert_eq!(x(None), "n/a");
        assert_eq!(ms(123.4), "123");
        assert_eq!(ms(12.34), "12.3");
        assert_eq!(ms(1.234), "1.23");
    }
}
