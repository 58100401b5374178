//! Latency summaries, in the same shape as chatbench's so the two tools' JSON compare directly.

use std::time::Duration;

use serde::Serialize;

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Summary {
    pub n: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p50: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p95: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p99: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mean: Option<f64>,
}

impl Summary {
    /// Sorts `values` in place.
    pub fn of(values: &mut [f64]) -> Summary {
        if values.is_empty() {
            return Summary::default();
        }
        values.sort_by(f64::total_cmp);
        let sum: f64 = values.iter().sum();
        Summary {
            n: values.len(),
            min: Some(round2(values[0])),
            p50: percentile(values, 50.0).map(round2),
            p95: percentile(values, 95.0).map(round2),
            p99: percentile(values, 99.0).map(round2),
            max: Some(round2(values[values.len() - 1])),
            mean: Some(round2(sum / values.len() as f64)),
        }
    }

    /// "p50 1.2 p99 3.4 max 5.6 ms" for the progress log.
    pub fn brief(&self) -> String {
        let f = |x: Option<f64>| x.map_or_else(|| "-".to_string(), |v| format!("{v}"));
        format!(
            "p50 {} p95 {} p99 {} max {} ms (n {})",
            f(self.p50),
            f(self.p95),
            f(self.p99),
            f(self.max),
            self.n
        )
    }
}

/// Linear interpolation between closest ranks (numpy's default, as chatbench uses).
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    match sorted.len() {
        0 => None,
        1 => Some(sorted[0]),
        n => {
            let k = (n - 1) as f64 * p / 100.0;
            let f = k.floor() as usize;
            let c = (f + 1).min(n - 1);
            Some(sorted[f] + (sorted[c] - sorted[f]) * (k - f as f64))
        }
    }
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// `n / secs`, or None for an empty interval.
pub fn rate(n: usize, secs: f64) -> Option<f64> {
    (secs > 0.0).then(|| round2(n as f64 / secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate_like_numpy() {
        let v: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(5.5));
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        assert_eq!(percentile(&v, 100.0), Some(10.0));
        assert!((percentile(&v, 99.0).unwrap() - 9.91).abs() < 1e-9);
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
    }

    #[test]
    fn summary_sorts_and_rounds() {
        let mut v = vec![3.0, 1.0, 2.0];
        let s = Summary::of(&mut v);
        assert_eq!(s.n, 3);
        assert_eq!(s.min, Some(1.0));
        assert_eq!(s.p50, Some(2.0));
        assert_eq!(s.max, Some(3.0));
        assert_eq!(s.mean, Some(2.0));
        assert_eq!(Summary::of(&mut []).n, 0);
    }
}
