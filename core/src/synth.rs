//! A synthetic bidder-fleet stream, encoded per the wire format: what the
//! simulator publishes, and what the benchmarks, profiles and allocation
//! test feed the hot path.
//!
//! Traffic is whole transaction chains with RTB-like funnel ratios (most
//! auctions get no bid, a fraction of bids win, impressions follow wins,
//! clicks are rare, installs and in-app events come minutes later), skewed
//! country/OS/campaign distributions, micro-USD prices, organic and
//! attributed conversions. Many chains are in flight at once and interleave,
//! so events arrive out of event-time order. Knobs add the hard cases: late
//! chains, invalid messages, an OS cardinality explosion.
//!
//! [`Generator`] is pure (seeded, no I/O) and records the exact expected
//! totals in a [`Truth`]; the tools' simulator publishes what it generates.

use crate::aggregate::{normalise_country, normalise_os};
use crate::wire::{fnv1a64, EventType};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::Write;

/// The shape of the generated traffic.
#[derive(Debug, Clone)]
pub struct Traffic {
    /// Fleet-wide partition count.
    pub partition_count: u32,
    /// Seed of the generator: same seed, same stream (event times aside).
    pub seed: u64,
    /// Fraction of chains that are hours late.
    pub late_fraction: f64,
    /// Fraction of messages that are invalid.
    pub invalid_fraction: f64,
    /// Send a new OS string with every event.
    pub os_explosion: bool,
}

impl Default for Traffic {
    fn default() -> Self {
        Traffic { partition_count: 64, seed: 1, late_fraction: 0.01, invalid_fraction: 0.0, os_explosion: false }
    }
}

/// Totals of one group of events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    /// Events.
    pub events: u64,
    /// Of which `attributed = true`.
    pub attributed: u64,
    /// Sum of `price`.
    pub price_micros: i64,
    /// Sum of `revenue`.
    pub revenue_micros: i64,
}

impl Totals {
    fn add(&mut self, e: &SimEvent) {
        self.events += 1;
        self.attributed += u64::from(e.attributed == Some(true));
        self.price_micros += e.price.unwrap_or(0);
        self.revenue_micros += e.revenue.unwrap_or(0);
    }

    /// Adds `other` into `self`.
    pub fn add_totals(&mut self, other: &Totals) {
        self.events += other.events;
        self.attributed += other.attributed;
        self.price_micros += other.price_micros;
        self.revenue_micros += other.revenue_micros;
    }
}

/// The exact expected content of the warehouse for what was sent.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Truth {
    /// Valid events sent.
    pub events: u64,
    /// Invalid messages sent.
    pub invalid: u64,
    /// Totals per event type.
    pub by_type: BTreeMap<&'static str, Totals>,
    /// Totals per (minute since the epoch, event type).
    pub by_minute: BTreeMap<(i64, &'static str), Totals>,
    /// Totals per normalised (country, os) of wins.
    pub wins_by_country: BTreeMap<String, Totals>,
    /// Totals per (normalised exchange, event type).
    pub by_exchange: BTreeMap<(String, &'static str), Totals>,
}

impl Truth {
    /// As JSON (the minute map as a list of rows).
    pub fn to_json(&self) -> serde_json::Value {
        let by_minute: Vec<_> = self
            .by_minute
            .iter()
            .map(|((m, t), v)| serde_json::json!({"minute": m, "event_type": t, "totals": v}))
            .collect();
        serde_json::json!({
            "events": self.events, "invalid": self.invalid, "by_type": self.by_type,
            "by_minute": by_minute, "wins_by_country": self.wins_by_country,
            "by_exchange": self.by_exchange.iter()
                .map(|((x, t), v)| serde_json::json!({"exchange": x, "event_type": t, "totals": v}))
                .collect::<Vec<_>>(),
        })
    }
}

#[derive(Debug, Clone)]
struct SimEvent {
    event_type: EventType,
    ts: i64,
    country: &'static str,
    os: u32,
    campaign: u32,
    advertiser: u32,
    exchange: &'static str,
    price: Option<i64>,
    revenue: Option<i64>,
    attributed: Option<bool>,
    name: Option<&'static str>,
}

struct Chain {
    txn: String,
    partition: u32,
    events: std::collections::VecDeque<SimEvent>,
}

const COUNTRIES: &[(&str, u32)] = &[
    ("US", 30),
    ("BR", 15),
    ("IN", 12),
    ("DE", 6),
    ("GB", 6),
    ("FR", 5),
    ("JP", 5),
    ("MX", 4),
    ("ID", 4),
    ("RU", 3),
    ("TR", 3),
    ("VN", 2),
    ("PH", 2),
    ("NG", 2),
    ("", 1),
];
const OSES: &[(&str, u32)] = &[("android", 70), ("ios", 27), ("Android", 2), ("", 1)];
const EXCHANGES: &[&str] = &["applovin", "unity", "ironsource", "mopub", "inmobi"];
const EVENT_NAMES: &[&str] = &["purchase", "level_up", "tutorial_complete"];
/// Chains in flight at once; their events interleave.
const IN_FLIGHT: usize = 256;

fn weighted<T: Copy>(rng: &mut SmallRng, table: &[(T, u32)]) -> T {
    let total: u32 = table.iter().map(|(_, w)| w).sum();
    let mut x = rng.gen_range(0..total);
    for &(v, w) in table {
        if x < w {
            return v;
        }
        x -= w;
    }
    table[0].0
}

/// What [`Generator::next`] produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Produced {
    /// A valid event of this type (counted in the truth).
    Valid(EventType),
    /// An invalid message.
    Invalid,
}

/// A deterministic stream of encoded messages and its truth.
pub struct Generator {
    rng: SmallRng,
    partition_count: u32,
    late_fraction: f64,
    invalid_fraction: f64,
    os_explosion: bool,
    chains: Vec<Chain>,
    next_txn: u64,
    next_os: u32,
    os_names: Vec<String>,
    /// What has been generated so far.
    pub truth: Truth,
}

impl Generator {
    /// A generator of `config`'s traffic.
    pub fn new(config: &Traffic) -> Generator {
        Generator {
            rng: SmallRng::seed_from_u64(config.seed),
            partition_count: config.partition_count,
            late_fraction: config.late_fraction,
            invalid_fraction: config.invalid_fraction,
            os_explosion: config.os_explosion,
            chains: Vec::with_capacity(IN_FLIGHT),
            next_txn: 0,
            next_os: 0,
            os_names: OSES.iter().map(|(n, _)| n.to_string()).collect(),
            truth: Truth::default(),
        }
    }

    /// Writes the next message into `topic` and `payload` (cleared first),
    /// with event times relative to `now_ms`; returns its partition and kind.
    pub fn next(&mut self, now_ms: i64, topic: &mut Vec<u8>, payload: &mut Vec<u8>) -> (u32, Produced) {
        topic.clear();
        payload.clear();
        if self.invalid_fraction > 0.0 && self.rng.gen_bool(self.invalid_fraction) {
            return (0, self.invalid(topic, payload));
        }
        while self.chains.len() < IN_FLIGHT {
            let chain = self.chain(now_ms);
            self.chains.push(chain);
        }
        let i = self.rng.gen_range(0..self.chains.len());
        let ev = self.chains[i].events.pop_front().expect("chains are never empty here");
        let chain = &self.chains[i];
        let partition = chain.partition;
        write!(topic, "{}.{:04}", ev.event_type.as_str(), partition).expect("Vec write");
        let os_name = os_name(&self.os_names, ev.os);
        encode(payload, &chain.txn, &ev, &os_name);
        self.truth.record(&ev, &os_name);
        if self.chains[i].events.is_empty() {
            self.chains.swap_remove(i);
        }
        (partition, Produced::Valid(ev.event_type))
    }
}

fn os_name(names: &[String], os: u32) -> std::borrow::Cow<'_, str> {
    match names.get(os as usize) {
        Some(n) => n.as_str().into(),
        None => format!("exploded-os-{os}").into(),
    }
}

impl Truth {
    fn record(&mut self, ev: &SimEvent, os: &str) {
        let t = self;
        t.events += 1;
        t.by_type.entry(ev.event_type.as_str()).or_default().add(ev);
        t.by_minute.entry((ev.ts.div_euclid(60_000), ev.event_type.as_str())).or_default().add(ev);
        let mut buf = [0u8; 32];
        let exchange = normalise_os(Some(ev.exchange), &mut buf).unwrap_or("unknown").to_string();
        t.by_exchange.entry((exchange, ev.event_type.as_str())).or_default().add(ev);
        if ev.event_type == EventType::Win {
            let c = normalise_country(Some(ev.country).filter(|c| !c.is_empty()));
            let mut buf = [0u8; 32];
            let os = normalise_os(Some(os), &mut buf).unwrap_or("unknown").to_string();
            let key = format!("{}/{}", String::from_utf8_lossy(&c), os);
            t.wins_by_country.entry(key).or_default().add(ev);
        }
    }
}

impl Generator {
    fn chain(&mut self, now_ms: i64) -> Chain {
        let n = self.next_txn;
        self.next_txn += 1;
        let rng = &mut self.rng;
        let txn = format!("{:016x}-{n:010}", rng.gen::<u64>());
        let partition = (fnv1a64(txn.as_bytes()) % u64::from(self.partition_count)) as u32;
        let country = weighted(rng, COUNTRIES);
        let os = if self.os_explosion {
            self.next_os += 1;
            OSES.len() as u32 + self.next_os
        } else {
            let name = weighted(rng, OSES);
            OSES.iter().position(|(o, _)| *o == name).unwrap_or(0) as u32
        };
        // Log-uniform campaign ids: a few campaigns get most of the traffic.
        let campaign = 1000f64.powf(rng.gen::<f64>()) as u32;
        let advertiser = campaign % 40 + 1;
        let exchange = EXCHANGES[rng.gen_range(0..EXCHANGES.len())];
        let base = SimEvent {
            event_type: EventType::Auction,
            ts: 0,
            country,
            os,
            campaign: 0,
            advertiser: 0,
            exchange,
            price: None,
            revenue: None,
            attributed: None,
            name: None,
        };
        let mut events = std::collections::VecDeque::new();
        let mut t = 0i64;
        events.push_back(base.clone());
        let with = |et: EventType, t: i64| SimEvent { event_type: et, ts: t, campaign, advertiser, ..base.clone() };
        if rng.gen_bool(0.2) {
            t += rng.gen_range(5..50);
            let bid_price = rng.gen_range(500..20_000);
            events.push_back(SimEvent { price: Some(bid_price), ..with(EventType::Bid, t) });
            t += rng.gen_range(50..150);
            if rng.gen_bool(0.15) {
                let clearing = bid_price * rng.gen_range(50..100) / 100;
                events.push_back(SimEvent { price: Some(clearing), ..with(EventType::Win, t) });
                if rng.gen_bool(0.95) {
                    t += rng.gen_range(1_000..5_000);
                    events.push_back(SimEvent { price: Some(clearing), ..with(EventType::Impression, t) });
                    if rng.gen_bool(0.03) {
                        t += rng.gen_range(5_000..60_000);
                        events.push_back(SimEvent { attributed: Some(true), ..with(EventType::Click, t) });
                        if rng.gen_bool(0.15) {
                            t += rng.gen_range(120_000..1_800_000);
                            let attributed = rng.gen_bool(0.8);
                            let revenue = if attributed { rng.gen_range(1_000_000..5_000_000) } else { 0 };
                            events.push_back(SimEvent {
                                attributed: Some(attributed),
                                revenue: Some(revenue),
                                ..with(EventType::Install, t)
                            });
                            for _ in 0..rng.gen_range(0..4) {
                                t += rng.gen_range(60_000..600_000);
                                events.push_back(SimEvent {
                                    attributed: Some(attributed),
                                    revenue: Some(rng.gen_range(990_000..49_990_000)),
                                    name: Some(EVENT_NAMES[rng.gen_range(0..EVENT_NAMES.len())]),
                                    ..with(EventType::Event, t)
                                });
                            }
                        }
                    }
                }
            } else {
                events.push_back(with(EventType::Loss, t));
            }
        }
        // The chain's last event happens about now; hence its auction
        // happened earlier, by as much as the chain spans (late data).
        let mut start = now_ms - t - rng.gen_range(0..1_000);
        if self.late_fraction > 0.0 && rng.gen_bool(self.late_fraction) {
            start -= rng.gen_range(3_600_000..6 * 3_600_000);
        }
        for e in &mut events {
            e.ts += start;
        }
        Chain { txn, partition, events }
    }

    fn invalid(&mut self, topic: &mut Vec<u8>, payload: &mut Vec<u8>) -> Produced {
        self.truth.invalid += 1;
        let p = self.rng.gen_range(0..self.partition_count);
        write!(topic, "bid.{p:04}").expect("Vec write");
        match self.rng.gen_range(0..4) {
            0 => payload.extend((0..self.rng.gen_range(1..64)).map(|_| self.rng.gen::<u8>())),
            1 => {
                // ts as a float
                rmp::encode::write_map_len(payload, 2).expect("Vec write");
                rmp::encode::write_str(payload, "txn").expect("Vec write");
                rmp::encode::write_str(payload, "bad").expect("Vec write");
                rmp::encode::write_str(payload, "ts").expect("Vec write");
                rmp::encode::write_f64(payload, 1.5).expect("Vec write");
            }
            2 => {
                // missing txn
                rmp::encode::write_map_len(payload, 1).expect("Vec write");
                rmp::encode::write_str(payload, "ts").expect("Vec write");
                rmp::encode::write_uint(payload, 1).expect("Vec write");
            }
            _ => {
                // type disagrees with topic
                rmp::encode::write_map_len(payload, 3).expect("Vec write");
                rmp::encode::write_str(payload, "txn").expect("Vec write");
                rmp::encode::write_str(payload, "bad").expect("Vec write");
                rmp::encode::write_str(payload, "ts").expect("Vec write");
                rmp::encode::write_uint(payload, 1).expect("Vec write");
                rmp::encode::write_str(payload, "type").expect("Vec write");
                rmp::encode::write_str(payload, "win").expect("Vec write");
            }
        }
        Produced::Invalid
    }
}

/// MessagePack-encodes one event (pub/seq are appended by the sender).
fn encode(buf: &mut Vec<u8>, txn: &str, e: &SimEvent, os: &str) {
    use rmp::encode::*;
    let fields = 6 // txn ts type exchange + pub seq (added by the sender)
        + usize::from(!e.country.is_empty())
        + usize::from(!os.is_empty())
        + usize::from(e.campaign != 0) * 2
        + usize::from(e.price.is_some())
        + usize::from(e.revenue.is_some())
        + usize::from(e.attributed.is_some())
        + usize::from(e.name.is_some());
    let w = |r: Result<(), ValueWriteError>| r.expect("Vec write");
    w(write_map_len(buf, fields as u32).map(|_| ()));
    w(write_str(buf, "txn"));
    w(write_str(buf, txn));
    w(write_str(buf, "ts"));
    w(write_sint(buf, e.ts).map(|_| ()));
    w(write_str(buf, "type"));
    w(write_str(buf, e.event_type.as_str()));
    w(write_str(buf, "exchange"));
    w(write_str(buf, e.exchange));
    if !e.country.is_empty() {
        w(write_str(buf, "country"));
        w(write_str(buf, e.country));
    }
    if !os.is_empty() {
        w(write_str(buf, "os"));
        w(write_str(buf, os));
    }
    if e.campaign != 0 {
        w(write_str(buf, "campaign"));
        w(write_uint(buf, u64::from(e.campaign)).map(|_| ()));
        w(write_str(buf, "advertiser"));
        w(write_uint(buf, u64::from(e.advertiser)).map(|_| ()));
    }
    if let Some(p) = e.price {
        w(write_str(buf, "price"));
        w(write_sint(buf, p).map(|_| ()));
    }
    if let Some(r) = e.revenue {
        w(write_str(buf, "revenue"));
        w(write_sint(buf, r).map(|_| ()));
    }
    if let Some(a) = e.attributed {
        w(write_str(buf, "attributed"));
        write_bool(buf, a).expect("Vec write");
    }
    if let Some(n) = e.name {
        w(write_str(buf, "name"));
        w(write_str(buf, n));
    }
}

/// Appends `pub` and `seq` to a payload written by [`Generator::next`].
pub fn append_pub_seq(payload: &mut Vec<u8>, publisher: &str, seq: u64) {
    rmp::encode::write_str(payload, "pub").expect("Vec write");
    rmp::encode::write_str(payload, publisher).expect("Vec write");
    rmp::encode::write_str(payload, "seq").expect("Vec write");
    rmp::encode::write_uint(payload, seq).expect("Vec write");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::decode;

    #[test]
    fn every_generated_message_decodes_or_is_meant_to_be_invalid() {
        let config = Traffic { invalid_fraction: 0.05, late_fraction: 0.1, ..Default::default() };
        let mut gen = Generator::new(&config);
        let (mut topic, mut payload) = (Vec::new(), Vec::new());
        let mut counts = [0u64; 8];
        for _ in 0..50_000 {
            let (partition, produced) = gen.next(1_764_180_000_000, &mut topic, &mut payload);
            match produced {
                Produced::Valid(et) => {
                    append_pub_seq(&mut payload, "b", 1);
                    let ev = decode(&topic, &payload).expect("valid");
                    assert_eq!(ev.event_type, et);
                    assert_eq!(ev.partition, partition);
                    assert_eq!(crate::wire::partition_of(ev.txn, 64), partition);
                    counts[et.index()] += 1;
                }
                Produced::Invalid => assert!(decode(&topic, &payload).is_err()),
            }
        }
        let t = &gen.truth;
        assert_eq!(t.events, counts.iter().sum::<u64>());
        assert_eq!(t.events + t.invalid, 50_000);
        // funnel shape: most auctions get no bid, few bids win
        let n = |et: EventType| counts[et.index()] as f64;
        assert!(n(EventType::Auction) > 3.0 * n(EventType::Bid));
        assert!(n(EventType::Bid) > 3.0 * n(EventType::Win));
        assert!(n(EventType::Win) >= n(EventType::Impression));
        assert!(n(EventType::Impression) > n(EventType::Click));
    }

    #[test]
    fn same_seed_same_stream() {
        let config = Traffic::default();
        let (mut a, mut b) = (Generator::new(&config), Generator::new(&config));
        let (mut t1, mut p1, mut t2, mut p2) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..1000 {
            a.next(1_000_000_000_000, &mut t1, &mut p1);
            b.next(1_000_000_000_000, &mut t2, &mut p2);
            assert_eq!((&t1, &p1), (&t2, &p2));
        }
    }
}
