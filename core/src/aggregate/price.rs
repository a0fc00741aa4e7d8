//! Price buckets: the logarithmic buckets of the price distribution tables.
//!
//! Bucket `i` holds the prices `p` (micro-USD) with `γ^(i−1) < p ≤ γ^i`,
//! where `γ = (1 + α) / (1 − α)` and α = 1 %. Its representative price
//! `2γ^i / (γ + 1)` is within α of every price in it (relative error), so
//! every quantile read from the counts is within α of the true one. The
//! counts add up (a DDSketch that never collapses), which is what lets a
//! distribution ride the rollups' upserts, ledger, sampling scale and tiers
//! unchanged. A row's `price_bucket` is `i + 1`: 0 is no bucket at all (the
//! rows of the tables without the `price` dimension).

/// The relative accuracy α of every price read back from a bucket.
pub const RELATIVE_ACCURACY: f64 = 0.01;

/// The ratio γ between the upper bounds of two neighbouring buckets.
pub const GAMMA: f64 = (1.0 + RELATIVE_ACCURACY) / (1.0 - RELATIVE_ACCURACY);

/// `ln γ` (checked against [`GAMMA`] by a test).
const LN_GAMMA: f64 = 0.020_000_666_706_669_435;

/// The bucket (`i + 1`) of `price`, micro-USD; `None` for a price that is
/// not positive (it has no place on a logarithmic scale: counted in the
/// rollups, not in the distributions).
#[inline]
pub fn price_bucket(price: i64) -> Option<u16> {
    if price <= 0 {
        return None;
    }
    // At most ln(2^63) / ln γ ≈ 2184: fits.
    Some(((price as f64).ln() / LN_GAMMA).ceil() as u16 + 1)
}

/// The bucket of a delay of `ms` milliseconds on the same scale (a timing
/// table's `delay_bucket`): a delay of at most 1 ms, or a negative one (an
/// event stamped before the one it follows: the publishers' clocks differ),
/// is in the bucket of 1 ms.
#[inline]
pub fn delay_bucket(ms: i64) -> u16 {
    // (at least 1: a bucket)
    price_bucket(ms.max(1)).unwrap_or(1)
}

/// The representative price of bucket `bucket` (`i + 1`), micro-USD.
pub fn bucket_price(bucket: u16) -> f64 {
    2.0 * GAMMA.powi(i32::from(bucket) - 1) / (GAMMA + 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ln_gamma_is_the_logarithm_of_gamma() {
        assert!((LN_GAMMA - GAMMA.ln()).abs() < 1e-15);
    }

    #[test]
    fn every_price_is_within_the_relative_accuracy_of_its_buckets_representative() {
        let mut prices: Vec<i64> = (1..20_000).collect();
        prices.extend((0..2000).map(|i| 20_000 + i * 7_919));
        prices.extend([1_250_000, 999_999_999, i64::MAX / 3, i64::MAX]);
        for p in prices {
            let b = price_bucket(p).unwrap();
            let err = (bucket_price(b) - p as f64).abs() / p as f64;
            assert!(err <= RELATIVE_ACCURACY * (1.0 + 1e-9), "{p}: bucket {b}, error {err}");
        }
        assert_eq!(price_bucket(0), None);
        assert_eq!(price_bucket(-5), None);
        assert_eq!(price_bucket(1), Some(1));
        assert_eq!([delay_bucket(-40), delay_bucket(0), delay_bucket(1)], [1, 1, 1]);
        assert_eq!(delay_bucket(1_500), price_bucket(1_500).unwrap());
    }

    #[test]
    fn buckets_grow_with_the_price() {
        let mut last = 0;
        for p in (1..5_000_000).step_by(997) {
            let b = price_bucket(p).unwrap();
            assert!(b >= last, "{p}");
            last = b;
        }
    }
}
