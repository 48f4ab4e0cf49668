//! The distribution test: whether the distances between a key's successive requests look like
//! those of benign users (PRADA, Juuti et al., 2019), against a reference calibrated on benign
//! traffic (`distill guard calibrate`).

use serde::Serialize;

/// The benign distribution of [`KeyWindow::novelties`], as quantiles, and the test threshold:
/// a PRADA-style test (Juuti et al., 2019) that asks whether the distances between a key's
/// successive requests look like those of benign users. A templated harvester's are all small,
/// a harvester walking a prompt set's are all large; people mix follow-ups and new questions.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Reference {
    /// Ascending quantiles of benign nearest-neighbour distances.
    pub quantiles: Vec<f64>,
    /// Kolmogorov–Smirnov distances above this are unlike benign traffic: the chosen quantile of
    /// the largest distance each benign calibration key reached.
    pub threshold: f64,
    /// Benign keys and distances the reference was made from.
    pub keys: usize,
    pub samples: usize,
}

impl Reference {
    /// Quantiles (101 points) of benign distances.
    pub fn quantiles_of(mut samples: Vec<f64>) -> Vec<f64> {
        samples.sort_by(f64::total_cmp);
        if samples.is_empty() {
            return Vec::new();
        }
        (0..=100).map(|q| samples[(q * (samples.len() - 1)) / 100]).collect()
    }

    /// The Kolmogorov–Smirnov distance between `sample`'s empirical distribution and the
    /// reference's.
    pub fn ks_distance(quantiles: &[f64], sample: impl Iterator<Item = f64>) -> f64 {
        let mut xs: Vec<f64> = sample.collect();
        if xs.is_empty() || quantiles.is_empty() {
            return 0.0;
        }
        xs.sort_by(f64::total_cmp);
        let reference_cdf = |x: f64| quantiles.partition_point(|q| *q <= x) as f64 / quantiles.len() as f64;
        let sample_cdf = |x: f64| xs.partition_point(|v| *v <= x) as f64 / xs.len() as f64;
        xs.iter()
            .chain(quantiles)
            .map(|&x| {
                // Both CDFs just below and at x: the supremum of a step-function gap is at a step.
                let below = x - 1e-12;
                (sample_cdf(x) - reference_cdf(x)).abs().max((sample_cdf(below) - reference_cdf(below)).abs())
            })
            .fold(0.0, f64::max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ks_distance_is_zero_for_the_same_distribution_and_one_for_disjoint_ones() {
        let samples: Vec<f64> = (0..1000).map(|i| i as f64 / 1000.0).collect();
        let q = Reference::quantiles_of(samples.clone());
        assert!(Reference::ks_distance(&q, samples.iter().copied()) < 0.02);
        assert!(Reference::ks_distance(&q, std::iter::repeat_n(2.0, 50)) > 0.99);
        let low = Reference::ks_distance(&q, (0..100).map(|i| i as f64 / 400.0));
        assert!((low - 0.75).abs() < 0.03, "{low}");
    }
}
