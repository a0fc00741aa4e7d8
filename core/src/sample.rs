//! Consistent sampling by transaction id.
//!
//! # The rule (reproducible by an analyst)
//!
//! With `h = fnv1a64(txn)`, the fleet's partition count `P` and the
//! publishers' partition `p = h mod P`:
//!
//! * `rank(p)` orders the partitions by their 16-bit bit-reversed number
//!   (ties, impossible below 65536, by `p`), so that the first `k` ranks are
//!   spread evenly over `0..P` rather than bunched at the start;
//! * `v = mix64(h) / 2^64` where `mix64` is the SplitMix64 finaliser
//!   (`x ^= x >> 30; x *= 0xbf58476d1ce4e5b9; x ^= x >> 27;
//!   x *= 0x94d049bb133111eb; x ^= x >> 31`), a uniform value in `[0, 1)` that
//!   a full-avalanche mix makes independent of `p`;
//! * `u = (rank(p) + v) / P`, uniform in `[0, 1)`;
//! * a transaction is kept at rate `r` when `u < r`.
//!
//! So the decision depends only on `txn` (and the fleet-wide `P`), and samples
//! nest: at `r' <= r` everything kept at `r'` is kept at `r` too. Partitions
//! with `rank(p) < floor(r * P)` are kept whole, at most one partition is
//! refined by `v`, and every other partition is not subscribed to at all: the
//! publishers never send it, which is what makes a low rate cheap.

use crate::wire::{fnv1a64, EventType};
use std::fmt;
use std::str::FromStr;

/// A sampling rate in parts per million (`1_000_000` keeps everything).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rate {
    ppm: u32,
}

/// Parts per million of a full sample.
pub const FULL_PPM: u32 = 1_000_000;

impl Rate {
    /// Every transaction.
    pub const ALL: Rate = Rate { ppm: FULL_PPM };
    /// No transaction.
    pub const NONE: Rate = Rate { ppm: 0 };

    /// A rate of `ppm` parts per million, clamped to a full sample.
    pub fn from_ppm(ppm: u32) -> Rate {
        Rate { ppm: ppm.min(FULL_PPM) }
    }

    /// Parts per million.
    pub fn ppm(self) -> u32 {
        self.ppm
    }

    /// The fraction, in `[0, 1]`.
    pub fn fraction(self) -> f64 {
        f64::from(self.ppm) / f64::from(FULL_PPM)
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.ppm == FULL_PPM {
            f.write_str("1")
        } else if self.ppm > 0 && FULL_PPM.is_multiple_of(self.ppm) {
            write!(f, "1/{}", FULL_PPM / self.ppm)
        } else {
            write!(f, "{}", self.fraction())
        }
    }
}

/// Why a string is not a rate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected a rate between 0 and 1 such as `1`, `1/8` or `0.125`, got `{0}`")]
pub struct RateError(String);

impl FromStr for Rate {
    type Err = RateError;

    fn from_str(s: &str) -> Result<Rate, RateError> {
        let err = || RateError(s.to_string());
        let t = s.trim();
        let value = match t.split_once('/') {
            Some((n, d)) => {
                let n: f64 = n.trim().parse().map_err(|_| err())?;
                let d: f64 = d.trim().parse().map_err(|_| err())?;
                if d <= 0.0 {
                    return Err(err());
                }
                n / d
            }
            None => t.parse::<f64>().map_err(|_| err())?,
        };
        if !(0.0..=1.0).contains(&value) || !value.is_finite() {
            return Err(err());
        }
        let ppm = (value * f64::from(FULL_PPM)).round() as u32;
        if ppm == 0 && value > 0.0 {
            return Err(err()); // below one in a million: would silently keep nothing
        }
        Ok(Rate { ppm })
    }
}

/// Rollup sampling rates per event type: `sample` for every type, and
/// `sample-by-type` for the types that differ (auctions at 1/64 while the
/// rest stay exact, say). Each type is sampled by transaction on its own
/// [`Sampler`]; samplers nest, so a transaction kept at a low rate is kept
/// at every higher one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TypeRates {
    base: Rate,
    by_type: [Rate; EventType::ALL.len()],
}

impl From<Rate> for TypeRates {
    /// One rate for every type.
    fn from(base: Rate) -> TypeRates {
        TypeRates { base, by_type: [base; EventType::ALL.len()] }
    }
}

impl TypeRates {
    /// These rates, with `event_type`'s set to `rate`.
    pub fn with(mut self, event_type: EventType, rate: Rate) -> TypeRates {
        self.by_type[event_type.index()] = rate;
        self
    }

    /// `event_type`'s rate.
    #[inline]
    pub fn of(&self, event_type: EventType) -> Rate {
        self.by_type[event_type.index()]
    }

    /// `sample`: the rate of the types `sample-by-type` leaves alone.
    pub fn base(&self) -> Rate {
        self.base
    }

    /// The types whose rate is not `sample`'s, with their rates.
    pub fn overrides(&self) -> impl Iterator<Item = (EventType, Rate)> + '_ {
        EventType::ALL.into_iter().map(|t| (t, self.of(t))).filter(|&(_, r)| r != self.base)
    }

    /// `sample-by-type` as written: `auction=1/64,loss=1/8` (empty when
    /// every type is at `sample`).
    pub fn overrides_text(&self) -> String {
        self.overrides().map(|(t, r)| format!("{t}={r}")).collect::<Vec<_>>().join(",")
    }

    /// Each type's rate in parts per million, by [`EventType::index`]: the
    /// `sample_ppm` of its rows.
    pub fn ppm_by_type(&self) -> [u32; EventType::ALL.len()] {
        self.by_type.map(Rate::ppm)
    }
}

impl fmt::Display for TypeRates {
    /// `1/8`, or `1 (auction=1/64,loss=1/8)` with overrides.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.base)?;
        let overrides = self.overrides_text();
        if !overrides.is_empty() {
            write!(f, " ({overrides})")?;
        }
        Ok(())
    }
}

/// Parses `sample-by-type` (`auction=1/64,loss=0.125`) over `base`; the
/// error names the entry at fault.
pub fn parse_type_rates(base: Rate, text: &str) -> Result<TypeRates, String> {
    let mut rates = TypeRates::from(base);
    let mut seen = Vec::new();
    for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let Some((name, rate)) = entry.split_once('=') else {
            return Err(format!("expected TYPE=RATE entries such as `auction=1/64`, got `{entry}`"));
        };
        let name = name.trim();
        let event_type = EventType::from_bytes(name.as_bytes()).ok_or_else(|| {
            let known: Vec<&str> = EventType::ALL.iter().map(|t| t.as_str()).collect();
            format!("unknown event type `{name}` (known: {})", known.join(", "))
        })?;
        if seen.contains(&event_type) {
            return Err(format!("`{name}` is given twice"));
        }
        seen.push(event_type);
        let rate: Rate = rate.parse().map_err(|e| format!("`{name}`: {e}"))?;
        if rate == Rate::NONE {
            return Err(format!("`{name}`: a rate of 0 keeps nothing; leave the type out of `event-types` instead"));
        }
        rates = rates.with(event_type, rate);
    }
    Ok(rates)
}

/// SplitMix64's finaliser: a bijective full-avalanche mix of 64 bits.
#[inline]
pub fn mix64(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Per-partition keep decisions for one rate and partition count.
#[derive(Debug, Clone)]
pub struct Sampler {
    rate: Rate,
    partition_count: u32,
    /// Per partition: keep when `mix64(h) < threshold`; `u64::MAX` with
    /// `whole[p]` means keep everything.
    threshold: Vec<u64>,
    whole: Vec<bool>,
}

/// What a partition contributes to the sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartitionShare {
    /// Every transaction of the partition is kept.
    Whole,
    /// Some transactions are kept, chosen by the hash.
    Part,
    /// Nothing is kept: do not even subscribe.
    Nothing,
}

impl Sampler {
    /// The sampler for `rate` over a fleet of `partition_count` partitions.
    pub fn new(rate: Rate, partition_count: u32) -> Sampler {
        let p_count = partition_count as usize;
        let ranks = ranks(partition_count);
        // Scaled to integers: u < r  <=>  rank + v < r * P.
        let target = rate.fraction() * f64::from(partition_count);
        let full = target.floor() as u32;
        let frac = target - f64::from(full);
        let mut threshold = vec![0u64; p_count];
        let mut whole = vec![false; p_count];
        for p in 0..p_count {
            let rank = ranks[p];
            if rank < full {
                whole[p] = true;
                threshold[p] = u64::MAX;
            } else if rank == full && frac > 0.0 {
                threshold[p] = (frac * 2f64.powi(64)).min(u64::MAX as f64) as u64;
            }
        }
        Sampler { rate, partition_count, threshold, whole }
    }

    /// The configured rate.
    pub fn rate(&self) -> Rate {
        self.rate
    }

    /// How much of partition `p` is kept.
    pub fn share(&self, p: u32) -> PartitionShare {
        let p = p as usize;
        if self.whole[p] {
            PartitionShare::Whole
        } else if self.threshold[p] > 0 {
            PartitionShare::Part
        } else {
            PartitionShare::Nothing
        }
    }

    /// Whether every partition is kept whole (no per-event hashing needed).
    pub fn keeps_everything(&self) -> bool {
        self.whole.iter().all(|&w| w)
    }

    /// Whether the transaction `txn` is in the sample.
    #[inline]
    pub fn keep(&self, txn: &[u8]) -> bool {
        self.keep_hash(fnv1a64(txn))
    }

    /// Like [`Sampler::keep`] for a transaction whose `fnv1a64` is `h`.
    #[inline]
    pub fn keep_hash(&self, h: u64) -> bool {
        self.keep_owned((h % u64::from(self.partition_count)) as u32, h)
    }

    /// Like [`Sampler::keep_hash`] when `p = h mod P` is already known: no
    /// division, and the mix only for the one refined partition.
    #[inline]
    pub fn keep_owned(&self, p: u32, h: u64) -> bool {
        let p = p as usize;
        self.whole[p] || (self.threshold[p] != 0 && mix64(h) < self.threshold[p])
    }

    /// Like [`Sampler::keep`] when the partition is already known to be the
    /// publisher's `p`: partitions kept whole skip the hash entirely.
    #[inline]
    pub fn keep_in(&self, p: u32, txn: &[u8]) -> bool {
        let p = p as usize;
        if self.whole[p] {
            return true;
        }
        if self.threshold[p] == 0 {
            return false;
        }
        self.keep(txn)
    }
}

/// `rank[p]` for every partition: the position of `p` when partitions are
/// sorted by their 16-bit bit-reversed number.
fn ranks(partition_count: u32) -> Vec<u32> {
    let mut order: Vec<u32> = (0..partition_count).collect();
    order.sort_by_key(|&p| ((p as u16).reverse_bits(), p));
    let mut rank = vec![0u32; partition_count as usize];
    for (i, &p) in order.iter().enumerate() {
        rank[p as usize] = i as u32;
    }
    rank
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn txn(i: u64) -> Vec<u8> {
        format!("txn-{i:08}").into_bytes()
    }

    #[test]
    fn rates_parse() {
        assert_eq!("1".parse::<Rate>().unwrap().ppm(), 1_000_000);
        assert_eq!("1/8".parse::<Rate>().unwrap().ppm(), 125_000);
        assert_eq!("0.125".parse::<Rate>().unwrap().ppm(), 125_000);
        assert_eq!("0".parse::<Rate>().unwrap().ppm(), 0);
        assert_eq!("1/1000".parse::<Rate>().unwrap().ppm(), 1_000);
        for bad in ["", "2", "-0.1", "1/0", "abc", "1/8/2", "NaN", "1e-9"] {
            assert!(bad.parse::<Rate>().is_err(), "{bad}");
        }
        assert_eq!(Rate::from_ppm(125_000).to_string(), "1/8");
        assert_eq!(Rate::ALL.to_string(), "1");
    }

    #[test]
    fn rates_by_type_parse_print_and_refuse_what_cannot_be_meant() {
        let half: Rate = "1/2".parse().unwrap();
        let r = parse_type_rates(half, "auction=1/64, loss = 0.125").unwrap();
        assert_eq!(r.of(EventType::Auction).ppm(), 15_625);
        assert_eq!(r.of(EventType::Loss).ppm(), 125_000);
        assert_eq!(r.of(EventType::Bid), half);
        assert_eq!(r.base(), half);
        assert_eq!(r.overrides_text(), "auction=1/64,loss=1/8");
        assert_eq!(r.to_string(), "1/2 (auction=1/64,loss=1/8)");
        assert_eq!(r.ppm_by_type()[EventType::Bid.index()], 500_000);
        // an override equal to the base is no override
        let same = parse_type_rates(Rate::ALL, "bid=1").unwrap();
        assert_eq!((same.overrides_text(), same.to_string()), (String::new(), "1".to_string()));
        assert_eq!(parse_type_rates(Rate::ALL, "").unwrap(), TypeRates::from(Rate::ALL));
        for (bad, says) in [
            ("auction", "TYPE=RATE"),
            ("bids=1/2", "unknown event type `bids`"),
            ("bid=2", "`bid`: expected a rate"),
            ("bid=0", "keeps nothing"),
            ("bid=1/2,bid=1/4", "given twice"),
        ] {
            let err = parse_type_rates(Rate::ALL, bad).unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn one_eighth_of_64_partitions_keeps_8_whole_partitions_spread_out() {
        let s = Sampler::new("1/8".parse().unwrap(), 64);
        let whole: Vec<u32> = (0..64).filter(|&p| s.share(p) == PartitionShare::Whole).collect();
        assert_eq!(whole, vec![0, 8, 16, 24, 32, 40, 48, 56]);
        assert!((0..64).all(|p| s.share(p) != PartitionShare::Part));
    }

    #[test]
    fn full_rate_keeps_all_and_zero_keeps_none() {
        let all = Sampler::new(Rate::ALL, 64);
        let none = Sampler::new(Rate::NONE, 64);
        assert!(all.keeps_everything());
        for i in 0..1000 {
            assert!(all.keep(&txn(i)));
            assert!(!none.keep(&txn(i)));
        }
    }

    #[test]
    fn observed_rate_is_within_tolerance() {
        for (rate, p_count) in [("0.1", 64), ("1/8", 64), ("0.3", 100), ("0.01", 256), ("0.5", 7)] {
            let s = Sampler::new(rate.parse().unwrap(), p_count);
            let n = 200_000u64;
            let kept = (0..n).filter(|&i| s.keep(&txn(i))).count() as f64;
            let r = s.rate().fraction();
            let sd = (n as f64 * r * (1.0 - r)).sqrt();
            assert!((kept - n as f64 * r).abs() < 5.0 * sd + 1.0, "rate {rate} over P={p_count}: kept {kept} of {n}");
        }
    }

    #[test]
    fn keep_in_agrees_with_keep() {
        let s = Sampler::new("0.37".parse().unwrap(), 64);
        for i in 0..20_000 {
            let t = txn(i);
            let p = crate::wire::partition_of(&t, 64);
            assert_eq!(s.keep_in(p, &t), s.keep(&t));
        }
    }

    proptest! {
        #[test]
        fn samples_nest(lo in 0u32..=1_000_000, hi in 0u32..=1_000_000, p_count in 1u32..300,
                        t in proptest::collection::vec(any::<u8>(), 1..64)) {
            let (lo, hi) = (lo.min(hi), lo.max(hi));
            let small = Sampler::new(Rate::from_ppm(lo), p_count);
            let big = Sampler::new(Rate::from_ppm(hi), p_count);
            prop_assert!(!small.keep(&t) || big.keep(&t));
        }

        #[test]
        fn decision_depends_only_on_txn(ppm in 0u32..=1_000_000, p_count in 1u32..300,
                                        t in proptest::collection::vec(any::<u8>(), 1..64)) {
            let a = Sampler::new(Rate::from_ppm(ppm), p_count);
            let b = Sampler::new(Rate::from_ppm(ppm), p_count);
            prop_assert_eq!(a.keep(&t), b.keep(&t));
            // a partition that is not subscribed never holds a kept transaction
            let p = crate::wire::partition_of(&t, p_count);
            if a.share(p) == PartitionShare::Nothing {
                prop_assert!(!a.keep(&t));
            }
        }
    }
}
