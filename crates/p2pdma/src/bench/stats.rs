//! Spread over repetitions and latency percentiles (pure).

use serde::Serialize;

/// Min, median and max of a figure over the measured runs; nothing is left out.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Spread {
    /// Smallest.
    pub min: f64,
    /// Median (the mean of the two middle values for an even count).
    pub median: f64,
    /// Largest.
    pub max: f64,
}

impl Spread {
    /// The spread of `values`; `None` if there are none (or one is NaN).
    pub fn of(values: impl IntoIterator<Item = f64>) -> Option<Spread> {
        let mut v: Vec<f64> = values.into_iter().collect();
        if v.is_empty() || v.iter().any(|x| x.is_nan()) {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Spread {
            min: v[0],
            median,
            max: v[n - 1],
        })
    }
}

/// The percentiles reported, as fio names them in `clat_ns.percentile`.
pub const PERCENTILES: [(f64, &str); 4] = [
    (50.0, "50.000000"),
    (90.0, "90.000000"),
    (99.0, "99.000000"),
    (99.9, "99.900000"),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_keep_every_value() {
        let s = Spread::of([3.0, 1.0, 100.0]).unwrap();
        assert_eq!((s.min, s.median, s.max), (1.0, 3.0, 100.0));
        let s = Spread::of([4.0, 1.0, 2.0, 3.0]).unwrap();
        assert_eq!((s.min, s.median, s.max), (1.0, 2.5, 4.0));
        assert_eq!(Spread::of([]), None);
        assert_eq!(Spread::of([1.0, f64::NAN]), None);
    }
}
