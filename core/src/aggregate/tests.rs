use super::*;
use crate::decode::Event;
use crate::wire::EventType;
use proptest::prelude::*;

const NOW: i64 = 1_764_180_000_000; // 2025-11-26T18:00:00Z

fn ev<'a>(et: EventType, ts: i64, country: Option<&'a str>, os: Option<&'a str>, campaign: u32) -> Event<'a> {
    Event {
        event_type: et,
        partition: 0,
        txn: b"t",
        ts_ms: ts,
        publisher: None,
        seq: None,
        country,
        os,
        campaign,
        advertiser: 7,
        exchange: None,
        price: Some(100),
        revenue: None,
        attributed: Some(true),
        name: None,
    }
}

fn row(d: &Delta, minute: i64, et: EventType, country: &str, os: &str, campaign: i64) -> Option<Counters> {
    d.rows
        .iter()
        .find(|(k, _)| {
            k.minute == minute
                && k.event_type == et
                && k.country_str() == country
                && k.os.as_str() == os
                && k.campaign == campaign
        })
        .map(|(_, c)| *c)
}

#[test]
fn countries_normalise() {
    assert_eq!(&normalise_country(Some("br")), b"BR");
    assert_eq!(&normalise_country(Some("Br")), b"BR");
    assert_eq!(&normalise_country(None), b"--");
    assert_eq!(&normalise_country(Some("BRA")), b"--");
    assert_eq!(&normalise_country(Some("B1")), b"--");
    assert_eq!(&normalise_country(Some("ü")), b"--"); // two bytes, not two letters
    assert_eq!(&normalise_country(Some("")), b"--");
}

#[test]
fn os_normalises() {
    let mut buf = [0u8; 32];
    assert_eq!(normalise_os(Some("Android"), &mut buf), Some("android"));
    assert_eq!(normalise_os(Some("iOS 17"), &mut buf), Some("ios 17"));
    assert_eq!(normalise_os(Some(""), &mut buf), None);
    assert_eq!(normalise_os(None, &mut buf), None);
    assert_eq!(normalise_os(Some("ÄNDROID"), &mut buf), Some("Ändroid"), "only ASCII letters change");
    let long = "A".repeat(40);
    assert_eq!(normalise_os(Some(&long), &mut buf), Some("a".repeat(32).as_str()));
    // 31 ASCII bytes then a 2-byte char: the cut must not split it
    let s = format!("{}é", "x".repeat(31));
    assert_eq!(normalise_os(Some(&s), &mut buf), Some("x".repeat(31).as_str()));
    assert_eq!(normalise_os(Some("O'Brien\"; DROP"), &mut buf), Some("o'brien\"; drop"));
}

#[test]
fn events_land_in_their_minute_and_sum() {
    let mut a = Aggregator::new(AggregateConfig::default());
    let m = NOW / 60_000;
    assert_eq!(a.record(&ev(EventType::Bid, NOW + 1, Some("br"), Some("Android"), 5), NOW), Outcome::Accepted);
    assert_eq!(a.record(&ev(EventType::Bid, NOW + 59_999, Some("BR"), Some("android"), 5), NOW), Outcome::Accepted);
    assert_eq!(a.record(&ev(EventType::Bid, NOW + 60_000, Some("BR"), Some("android"), 5), NOW), Outcome::Accepted);
    // three hours late still lands in its own bucket
    assert_eq!(a.record(&ev(EventType::Install, NOW - 3 * 3_600_000, None, None, 0), NOW), Outcome::Accepted);
    assert_eq!(a.live_keys(), 3);
    let stats = a.take_stats();
    assert_eq!(stats.accepted[EventType::Bid.index()], 3);
    let d = a.drain();
    assert_eq!(d.events, 4);
    let c = row(&d, m, EventType::Bid, "BR", "android", 5).unwrap();
    assert_eq!(c, Counters { events: 2, attributed: 2, price: 200, revenue: 0 });
    assert_eq!(row(&d, m + 1, EventType::Bid, "BR", "android", 5).unwrap().events, 1);
    assert_eq!(row(&d, m - 180, EventType::Install, "--", "unknown", 0).unwrap().events, 1);
    assert!(a.drain().is_empty(), "drain starts afresh");
}

#[test]
fn late_and_future_events_are_rejected() {
    let cfg = AggregateConfig { max_lateness_ms: 1000, max_future_skew_ms: 500, ..Default::default() };
    let mut a = Aggregator::new(cfg);
    assert_eq!(a.record(&ev(EventType::Win, NOW - 1000, None, None, 0), NOW), Outcome::Accepted);
    assert_eq!(a.record(&ev(EventType::Win, NOW - 1001, None, None, 0), NOW), Outcome::Late);
    assert_eq!(a.record(&ev(EventType::Win, NOW + 500, None, None, 0), NOW), Outcome::Accepted);
    assert_eq!(a.record(&ev(EventType::Win, NOW + 501, None, None, 0), NOW), Outcome::Future);
    assert_eq!(a.record(&ev(EventType::Win, -5, None, None, 0), 100), Outcome::Late);
    let s = a.take_stats();
    assert_eq!((s.late, s.future), (2, 1));
    assert_eq!(a.drain().events, 2);
}

#[test]
fn key_cap_folds_but_keeps_totals_exact() {
    let cfg = AggregateConfig { max_live_keys: 10, ..Default::default() };
    let mut a = Aggregator::new(cfg);
    for campaign in 1..=1000u32 {
        a.record(&ev(EventType::Click, NOW, Some("US"), Some("ios"), campaign), NOW);
    }
    assert!(a.live_keys() <= 11, "{} keys", a.live_keys());
    assert_eq!(a.take_stats().folded, 990);
    let d = a.drain();
    assert_eq!(d.rows.iter().map(|(_, c)| c.events).sum::<u64>(), 1000);
    assert_eq!(d.rows.iter().map(|(_, c)| c.price).sum::<i64>(), 100_000);
    let folded = row(&d, NOW / 60_000, EventType::Click, "US", "other", -1).unwrap();
    assert_eq!(folded.events, 990);
    assert!(d.rows.iter().all(|(k, _)| k.campaign == -1 || k.advertiser == 7));
}

#[test]
fn os_cap_folds_into_other() {
    let cfg = AggregateConfig { max_os_values: 3, ..Default::default() };
    let mut a = Aggregator::new(cfg);
    let names: Vec<String> = (0..100).map(|i| format!("os-{i}")).collect();
    for n in &names {
        a.record(&ev(EventType::Auction, NOW, None, Some(n), 0), NOW);
    }
    assert_eq!(a.take_stats().folded, 97);
    let d = a.drain();
    assert_eq!(d.rows.len(), 4);
    assert_eq!(row(&d, NOW / 60_000, EventType::Auction, "--", "other", 0).unwrap().events, 97);
    // the table resets at drain: new values get in again
    a.record(&ev(EventType::Auction, NOW, None, Some("fresh"), 0), NOW);
    assert_eq!(a.take_stats().folded, 0);
}

#[test]
fn delta_merge_adds_and_caps() {
    let mut a = Aggregator::new(AggregateConfig::default());
    for c in 0..50 {
        a.record(&ev(EventType::Bid, NOW, Some("DE"), None, c), NOW);
    }
    let d1 = a.drain();
    for c in 25..75 {
        a.record(&ev(EventType::Bid, NOW, Some("DE"), None, c), NOW);
    }
    let d2 = a.drain();
    let mut merged = d1.clone();
    assert_eq!(merged.merge(d2.clone(), 1_000, 10), MergeLoss::default());
    assert_eq!(merged.events, 100);
    assert_eq!(merged.rows.len(), 75);
    let mut capped = d1;
    let loss = capped.merge(d2, 60, 10);
    assert_eq!(loss.folded_events, 15);
    assert_eq!(capped.events, 100);
    assert_eq!(capped.rows.iter().map(|(_, c)| c.events).sum::<u64>(), 100);
    assert_eq!(capped.rows.len(), 61);
}

proptest! {
    #[test]
    fn packed_keys_round_trip(minute in 0u32..(1 << 26), t in 0usize..8, a in b'A'..=b'Z', b in b'A'..=b'Z',
                              os in 0u16..4096, x in 0u16..4096, c in any::<u32>(), adv in any::<u32>()) {
        prop_assert!(super::aggregator::key_round_trip(minute, EventType::ALL[t], [a, b], os, x, c, adv));
        prop_assert!(super::aggregator::key_round_trip(minute, EventType::ALL[t], *b"--", os, x, c, adv));
    }

    #[test]
    fn bucket_is_the_minute_containing_ts(offset in 0i64..(7 * 24 * 3_600_000)) {
        let ts = NOW - offset;
        let mut a = Aggregator::new(AggregateConfig::default());
        prop_assert_eq!(a.record(&ev(EventType::Bid, ts, None, None, 0), NOW), Outcome::Accepted);
        let d = a.drain();
        let key = d.rows[0].0;
        prop_assert!(key.minute * 60_000 <= ts && ts < (key.minute + 1) * 60_000);
    }

    #[test]
    fn drain_gives_every_row_once_in_key_order(
        events in prop::collection::vec((0usize..8, 0i64..3000, 0usize..4, 0usize..6, 0u32..5, 0u32..3, -5i64..5, 0usize..6), 1..400)
    ) {
        // OS names interned in an order unlike their name order, literal
        // "other"/"unknown" among them, events over five hours.
        const OSES: [Option<&str>; 6] = [Some("zeta"), Some("alpha"), None, Some("other"), Some("Unknown"), Some("mid")];
        const COUNTRIES: [Option<&str>; 4] = [Some("us"), None, Some("BR"), Some("zz")];
        let mut a = Aggregator::new(AggregateConfig::default());
        let mut model = std::collections::BTreeMap::new();
        for &(t, minute_back, c, os, campaign, advertiser, price, x) in &events {
            let mut e = ev(EventType::ALL[t], NOW - minute_back * 60_000, COUNTRIES[c], OSES[os], campaign);
            e.advertiser = advertiser;
            e.exchange = OSES[(x + 3) % 6];
            e.price = Some(price);
            prop_assert_eq!(a.record(&e, NOW), Outcome::Accepted);
            let mut buf = [0u8; 32];
            let key = RowKey {
                minute: e.ts_ms.div_euclid(60_000),
                event_type: e.event_type,
                country: normalise_country(e.country),
                os: OsName::new(normalise_os(e.os, &mut buf).unwrap_or(OS_UNKNOWN)),
                exchange: OsName::new(normalise_os(e.exchange, &mut buf).unwrap_or(OS_UNKNOWN)),
                campaign: i64::from(campaign),
                advertiser: i64::from(advertiser),
                price_bucket: 0,
                bid_bucket: 0,
                delay_bucket: 0,
            };
            model.entry(key).or_insert_with(Counters::default).add(&Counters { events: 1, attributed: 1, price, revenue: 0 });
        }
        let d = a.drain();
        prop_assert_eq!(d.rows, model.into_iter().collect::<Vec<_>>());
        prop_assert_eq!(d.events, events.len() as u64);
    }

    #[test]
    fn merging_sorted_deltas_equals_adding_rows_up(
        a in prop::collection::vec((0i64..3, 0usize..3, 0i64..20, 1u64..5), 0..60),
        b in prop::collection::vec((0i64..3, 0usize..3, 0i64..20, 1u64..5), 0..60),
        cap in 1usize..80,
    ) {
        let rows = |v: &[(i64, usize, i64, u64)]| -> Vec<Row> {
            v.iter().map(|&(m, os, campaign, events)| {
                let key = RowKey {
                    minute: 29_000_000 + m * 45,
                    event_type: EventType::Bid,
                    country: *b"DE",
                    os: OsName::new(["android", "ios", OS_OTHER][os]),
                    exchange: OsName::new(["unity", OS_OTHER][os % 2]),
                    campaign,
                    advertiser: campaign % 4,
                    price_bucket: 0,
                    bid_bucket: 0,
                    delay_bucket: 0,
                };
                (key, Counters { events, attributed: 0, price: events as i64, revenue: 0 })
            }).collect()
        };
        let (da, db) = (Delta::from_rows(rows(&a), Vec::new()), Delta::from_rows(rows(&b), Vec::new()));
        prop_assert!(da.rows.windows(2).all(|w| w[0].0 < w[1].0), "from_rows sorts and adds up");
        let mut uncapped = da.clone();
        prop_assert_eq!(uncapped.merge(db.clone(), usize::MAX, 0), MergeLoss::default());
        let all: Vec<Row> = rows(&a).into_iter().chain(rows(&b)).collect();
        prop_assert_eq!(&uncapped, &Delta::from_rows(all, Vec::new()));

        let mut capped = da.clone();
        let loss = capped.merge(db.clone(), cap, 0);
        prop_assert!(capped.rows.windows(2).all(|w| w[0].0 < w[1].0), "sorted, each key once");
        prop_assert_eq!(capped.events, uncapped.events);
        prop_assert_eq!(capped.rows.iter().map(|r| r.1.events).sum::<u64>(), uncapped.events);
        // Into an empty delta, the other one moves whole (each ingest
        // thread's delta is bounded by its own key cap already).
        let held = if da.is_empty() { db.rows.len() } else { cap.max(da.rows.len()) };
        let unfolded = capped.rows.iter().filter(|r| r.0.campaign != -1).count();
        prop_assert!(unfolded <= held, "{} keys over the cap {}", unfolded, cap);
        let folded: u64 = capped.rows.iter().filter(|r| r.0.campaign == -1).map(|r| r.1.events).sum();
        prop_assert_eq!(folded, loss.folded_events);
    }

    #[test]
    fn totals_survive_any_cap(cap in 1usize..50, n in 1usize..500) {
        let mut a = Aggregator::new(AggregateConfig { max_live_keys: cap, max_os_values: cap, ..Default::default() });
        let oses: Vec<String> = (0..n).map(|i| format!("o{}", i % 37)).collect();
        for (i, os) in oses.iter().enumerate() {
            a.record(&ev(EventType::ALL[i % 8], NOW - (i as i64 % 5) * 60_000, Some("FR"), Some(os), i as u32 % 13), NOW);
        }
        let d = a.drain();
        prop_assert!(d.rows.windows(2).all(|w| w[0].0 < w[1].0), "sorted, each key once");
        prop_assert_eq!(d.events, n as u64);
        prop_assert_eq!(d.rows.iter().map(|(_, c)| c.events).sum::<u64>(), n as u64);
        for t in EventType::ALL {
            let per_type = d.rows.iter().filter(|(k, _)| k.event_type == t).map(|(_, c)| c.events).sum::<u64>();
            let expected = (0..n).filter(|i| i % 8 == t.index()).count() as u64;
            prop_assert_eq!(per_type, expected);
        }
    }
}

#[test]
fn raw_rows_are_kept_up_to_the_cap_and_counted_beyond() {
    let cfg = AggregateConfig { max_raw_rows: 3, ..Default::default() };
    let mut a = Aggregator::new(cfg);
    for i in 0..5 {
        let e = ev(EventType::Click, NOW - i, Some("us"), Some("iOS"), 1);
        assert_eq!(a.admit(e.ts_ms, NOW), Outcome::Accepted);
        a.push_raw(&e, NOW);
    }
    let s = a.take_stats();
    assert_eq!((s.raw, s.raw_dropped), (3, 2));
    let d = a.drain();
    assert_eq!(d.raw.len(), 3);
    assert_eq!(&d.raw[0].country, b"US");
    assert_eq!(d.raw[0].os.as_str(), "ios");
    assert!(d.rows.is_empty(), "raw rows are not rollup rows");
    let mut merged = Delta::default();
    assert_eq!(merged.merge(d.clone(), 10, 4).raw_dropped, 0);
    assert_eq!(merged.merge(d, 10, 4).raw_dropped, 2);
    assert_eq!(merged.raw.len(), 4);
}

#[test]
fn split_off_moves_bounded_parts_and_keeps_totals() {
    let mut a = Aggregator::new(AggregateConfig::default());
    for c in 0..1000 {
        let e = ev(EventType::Bid, NOW, Some("DE"), None, c);
        a.record(&e, NOW);
        a.push_raw(&e, NOW);
    }
    let mut d = a.drain();
    let mut parts = Vec::new();
    while !d.is_empty() {
        parts.push(d.split_off(300, 400));
    }
    assert_eq!(parts.len(), 4);
    assert!(parts.iter().all(|p| p.rows.len() <= 300 && p.raw.len() <= 400));
    assert_eq!(parts.iter().map(|p| p.events).sum::<u64>(), 1000);
    assert!(parts.iter().all(|p| p.events == p.rows.iter().map(|(_, c)| c.events).sum::<u64>()));
    assert_eq!(parts.iter().map(|p| p.raw.len()).sum::<usize>(), 1000);
}

proptest! {
    #[test]
    fn projecting_fine_rows_equals_aggregating_each_table_directly(
        events in prop::collection::vec(
            (0usize..8, 0i64..4000, 0usize..3, 0usize..3, 0usize..3, 0u32..4, 0u32..3, 0i64..50), 1..300),
        grain in 0usize..3,
        dims in 0u8..32,
        oldest_back in 0i64..4000,
    ) {
        const NAMES: [Option<&str>; 3] = [Some("b"), None, Some("A")];
        const COUNTRIES: [Option<&str>; 3] = [Some("us"), None, Some("BR")];
        let shape = Shape {
            grain: Grain::ALL[grain],
            dims: Dimensions::of(&Dimension::ALL.into_iter().filter(|d| dims & (1 << *d as u8) != 0).collect::<Vec<_>>()),
        };
        let oldest = NOW / 60_000 - oldest_back;
        let mut a = Aggregator::new(AggregateConfig::default());
        let mut direct: std::collections::BTreeMap<RowKey, Counters> = Default::default();
        let mut skipped = 0;
        for &(t, minute_back, c, os, x, campaign, advertiser, price) in &events {
            let mut e = ev(EventType::ALL[t], NOW - minute_back * 60_000, COUNTRIES[c], NAMES[os], campaign);
            e.advertiser = advertiser;
            e.exchange = NAMES[x];
            e.price = Some(price);
            prop_assert_eq!(a.record(&e, NOW), Outcome::Accepted);
            // The table's key computed straight from the event.
            let mut buf = [0u8; 32];
            let name = |v: Option<&str>, buf: &mut [u8; 32]| OsName::new(normalise_os(v, buf).unwrap_or(OS_UNKNOWN));
            let d = shape.dims;
            let minute = e.ts_ms.div_euclid(60_000);
            let bucket = minute - minute.rem_euclid(shape.grain.minutes());
            if bucket < oldest {
                skipped += 1;
                continue;
            }
            let key = RowKey {
                minute: bucket,
                event_type: e.event_type,
                country: if d.has(Dimension::Country) { normalise_country(e.country) } else { *b"--" },
                os: if d.has(Dimension::Os) { name(e.os, &mut buf) } else { OsName::EMPTY },
                exchange: if d.has(Dimension::Exchange) { name(e.exchange, &mut buf) } else { OsName::EMPTY },
                campaign: if d.has(Dimension::Campaign) { i64::from(campaign) } else { 0 },
                advertiser: if d.has(Dimension::Advertiser) { i64::from(advertiser) } else { 0 },
                price_bucket: 0,
                bid_bucket: 0,
                delay_bucket: 0,
            };
            direct.entry(key).or_default().add(&Counters { events: 1, attributed: 1, price, revenue: 0 });
        }
        let (projected, projected_skipped) = shape.project(&a.drain().rows, oldest);
        prop_assert_eq!(projected, direct.into_iter().collect::<Vec<_>>());
        prop_assert_eq!(projected_skipped, skipped);
    }
}

#[test]
fn every_dimension_at_hour_grain_adds_up_rows_the_exchange_put_apart() {
    // (minute 1, exchange b) sorts before (minute 2, exchange a): at hour
    // grain both minutes are one bucket, and the rows of one key must still
    // come out once, in order.
    let mut a = Aggregator::new(AggregateConfig::default());
    let hour_start = NOW - NOW.rem_euclid(3_600_000);
    for (minute, exchange) in [(1, "b"), (2, "a"), (3, "b")] {
        let mut e = ev(EventType::Bid, hour_start + minute * 60_000, Some("US"), Some("ios"), 1);
        e.exchange = Some(exchange);
        a.record(&e, NOW + 3_600_000);
    }
    let shape = Shape { grain: Grain::Hour, dims: Dimensions::ALL };
    let (rows, _) = shape.project(&a.drain().rows, i64::MIN);
    let got: Vec<(&str, u64)> = rows.iter().map(|r| (r.0.exchange.as_str(), r.1.events)).collect();
    assert_eq!(got, [("a", 1), ("b", 2)]);
}

#[test]
fn exchange_values_beyond_the_cap_fold_into_other() {
    let mut a = Aggregator::new(AggregateConfig { max_exchange_values: 2, ..AggregateConfig::default() });
    for x in ["a", "b", "c", "d", "a"] {
        let mut e = ev(EventType::Bid, NOW, Some("US"), Some("ios"), 1);
        e.exchange = Some(x);
        a.record(&e, NOW);
    }
    let stats = a.take_stats();
    assert_eq!(stats.folded, 2, "c and d folded");
    let d = a.drain();
    let names: Vec<&str> = d.rows.iter().map(|r| r.0.exchange.as_str()).collect();
    assert_eq!(names, ["a", "b", "other"]);
    assert_eq!(d.rows[2].1.events, 2);
    assert_eq!(d.rows.iter().map(|r| r.1.events).sum::<u64>(), 5);
}

#[test]
fn priced_events_also_count_under_their_price_bucket_without_counting_twice() {
    let dims = Dimensions::of(&[Dimension::Exchange, Dimension::Price]);
    let config = AggregateConfig { price_dims: Some(dims), max_live_keys: 4, ..AggregateConfig::default() };
    let mut a = Aggregator::new(config);
    let mut priced = |price: Option<i64>, campaign: u32| {
        let mut e = ev(EventType::Win, NOW, Some("US"), Some("ios"), campaign);
        e.price = price;
        e.exchange = Some("x");
        a.record(&e, NOW);
    };
    priced(Some(1_000_000), 1);
    priced(Some(1_000_000), 2); // same bucket, another campaign: one price row
    priced(Some(1_010_000), 1); // within 1 %: the same bucket or the next
    priced(Some(0), 1); // no bucket
    priced(None, 1);
    for p in 1..10 {
        priced(Some(p * 3_000_000), 1); // beyond the key cap: folded, bucket kept
    }
    let d = a.drain();
    assert_eq!(d.events, 14, "each event counted once");
    let prices: Vec<&Row> = d.rows.iter().filter(|r| r.0.price_bucket != 0).collect();
    let priced_events: u64 = prices.iter().map(|r| r.1.events).sum();
    assert_eq!(priced_events, 12, "the events with a positive price");
    assert!(d.rows.windows(2).all(|w| w[0].0 < w[1].0), "rows in order, each once");
    let shape = Shape { grain: Grain::Hour, dims };
    let (rows, _) = shape.project(&d.rows, i64::MIN);
    assert_eq!(rows.iter().map(|r| r.1.events).sum::<u64>(), 12, "a price table takes the price rows alone");
    let bucket = price::price_bucket(1_000_000).unwrap();
    let first = rows.iter().find(|r| r.0.price_bucket == bucket).unwrap();
    assert!(first.1.events >= 2 && first.0.campaign == 0 && first.0.exchange.as_str() == "x");
    let buckets: std::collections::BTreeSet<u16> = rows.iter().map(|r| r.0.price_bucket).collect();
    let expected: std::collections::BTreeSet<u16> = [1_000_000, 1_010_000]
        .into_iter()
        .chain((1..10).map(|p| p * 3_000_000))
        .map(|p| price::price_bucket(p).unwrap())
        .collect();
    assert_eq!(buckets, expected, "folding keeps the price bucket");
    let rollup = Shape { grain: Grain::Hour, dims: Dimensions::ALL };
    let (rows, _) = rollup.project(&d.rows, i64::MIN);
    assert_eq!(rows.iter().map(|r| r.1.events).sum::<u64>(), 14, "a rollup takes the rollup rows alone");
}

#[test]
fn price_rows_beyond_the_pending_cap_fold_to_one_per_minute_type_and_bucket_and_count_no_loss() {
    let dims = Dimensions::of(&[Dimension::Country, Dimension::Price]);
    let config = AggregateConfig { price_dims: Some(dims), ..AggregateConfig::default() };
    let delta = |countries: &[&'static str]| {
        let mut a = Aggregator::new(config.clone());
        for c in countries {
            let mut e = ev(EventType::Bid, NOW, Some(c), Some("ios"), 1);
            e.price = Some(1_000_000);
            a.record(&e, NOW);
        }
        a.drain()
    };
    let mut held = delta(&["US"]);
    let loss = held.merge(delta(&["BR", "DE", "FR"]), 2, 0);
    assert_eq!(loss.folded_events, 3, "the rollup rows beyond the cap are counted; the price rows are not");
    let prices: Vec<&Row> = held.rows.iter().filter(|r| r.0.kind() == 1).collect();
    let folded: Vec<&&Row> = prices.iter().filter(|r| r.0.campaign == -1).collect();
    assert_eq!(folded.len(), 1, "one folded price row for the three countries: {prices:?}");
    assert_eq!((folded[0].0.country, folded[0].1.events), (*b"--", 3));
    assert_eq!(folded[0].0.price_bucket, price::price_bucket(1_000_000).unwrap());
    assert_eq!(held.events, 4);
}

#[test]
fn landscape_halves_pair_in_either_order_and_leave_counted_once_the_window_passed() {
    let landscape = PairingConfig {
        landscape: Some(Dimensions::of(&[Dimension::BidPrice])),
        timing: None,
        window_ms: 1_000,
        max_pending: 3,
    };
    let mut a = Aggregator::new(AggregateConfig { pairing: Some(landscape), ..AggregateConfig::default() });
    let send = |et: EventType, txn: &'static [u8], at: i64, a: &mut Aggregator| {
        let mut e = ev(et, NOW, Some("US"), Some("ios"), 1);
        e.txn = txn;
        a.expire_waiting(at); // (the pairings' clock: the ingest loop's)
        a.record(&e, at);
    };
    send(EventType::Bid, b"paired", NOW, &mut a);
    send(EventType::Win, b"paired", NOW + 10, &mut a);
    send(EventType::Loss, b"reversed", NOW + 20, &mut a);
    send(EventType::Bid, b"reversed", NOW + 30, &mut a);
    send(EventType::Bid, b"alone", NOW + 40, &mut a);
    send(EventType::Win, b"orphan", NOW + 600, &mut a);
    send(EventType::Bid, b"late", NOW + 700, &mut a);
    send(EventType::Bid, b"full", NOW + 700, &mut a); // a fourth half waiting: not kept
    assert_eq!(a.waiting(), 3);
    a.expire_waiting(NOW + 1_100); // the bid alone waited past the window
    assert_eq!(a.waiting(), 2);
    a.expire_waiting(NOW + 1_650); // the orphan too; the late bid not yet
    assert_eq!(a.waiting(), 1);
    let s = a.take_stats();
    assert_eq!((s.paired, s.unpaired), (2, [1, 1, 1, 0]));
    let d = a.drain();
    let outcomes: u64 =
        d.rows.iter().filter(|r| r.0.kind() == 2 && r.0.event_type != EventType::Bid).map(|r| r.1.events).sum();
    assert_eq!(outcomes, 2, "the win and the loss, under their bids' buckets");
}

#[test]
fn halves_of_a_partition_handed_over_leave_counted_once_as_handover() {
    let landscape = PairingConfig {
        landscape: Some(Dimensions::of(&[Dimension::BidPrice])),
        timing: None,
        window_ms: 1_000,
        max_pending: 100,
    };
    let mut a = Aggregator::new(AggregateConfig { pairing: Some(landscape), ..AggregateConfig::default() });
    a.expire_waiting(NOW);
    let txns: Vec<String> = (0..40).map(|i| format!("txn-{i}")).collect();
    for (i, txn) in txns.iter().enumerate() {
        let mut e = ev(if i % 2 == 0 { EventType::Bid } else { EventType::Win }, NOW, Some("US"), Some("ios"), 1);
        e.txn = txn.as_bytes();
        // the topic it came on, whatever its transaction's hash says (kept
        // mismatching events: publishers with another partition count)
        e.partition = (i % 16) as u32;
        a.record(&e, NOW);
    }
    assert_eq!(a.waiting(), 40);
    // partition 3 of 16 handed over: the halves that came on its topic leave
    let expected = (0..40).filter(|i| i % 16 == 3).count() as u64;
    assert_eq!(a.release_waiting(|p| p == 3), expected);
    assert_eq!(a.waiting(), 40 - expected as usize);
    // the rest leave with the window, each counted once: none twice
    a.expire_waiting(NOW + 2_000);
    let s = a.take_stats();
    assert_eq!(s.unpaired[Unpaired::Handover as usize], expected);
    assert_eq!(s.unpaired.iter().sum::<u64>(), 40);
}

/// A timing table's pairing: (event type, delay bucket) → events of the drain.
fn timing_rows(d: &Delta) -> Vec<(EventType, u16, String, u64)> {
    let mut rows: Vec<_> = d
        .rows
        .iter()
        .filter(|r| r.0.kind() == 3)
        .map(|r| (r.0.event_type, r.0.delay_bucket, r.0.exchange.as_str().to_string(), r.1.events))
        .collect();
    rows.sort();
    rows
}

fn timing(max_pending: usize) -> Aggregator {
    let pairing = PairingConfig {
        landscape: None,
        timing: Some(Dimensions::of(&[Dimension::Exchange, Dimension::Delay])),
        window_ms: 1_000,
        max_pending,
    };
    Aggregator::new(AggregateConfig { pairing: Some(pairing), ..AggregateConfig::default() })
}

/// Sends `et` of `txn` stamped `ts`, arriving at `at`, from `exchange`.
fn send(a: &mut Aggregator, et: EventType, txn: &'static [u8], ts: i64, at: i64, exchange: Option<&'static str>) {
    let mut e = ev(et, ts, Some("US"), Some("ios"), 1);
    e.txn = txn;
    e.exchange = exchange;
    a.expire_waiting(at);
    a.record(&e, at);
}

#[test]
fn a_timing_table_counts_each_win_loss_and_click_under_its_delay_in_either_order() {
    use price::delay_bucket;
    let mut a = timing(100);
    let x = Some("adx");
    // bid → win 120 ms, the win without an exchange (it takes its bid's)
    send(&mut a, EventType::Bid, b"t1", NOW, NOW, x);
    send(&mut a, EventType::Win, b"t1", NOW + 120, NOW + 5, None);
    // a loss before its bid: 3 s after it by event time
    send(&mut a, EventType::Loss, b"t2", NOW + 3_000, NOW + 10, x);
    send(&mut a, EventType::Bid, b"t2", NOW, NOW + 20, x);
    // an impression clicked twice (4 s and 40 s after it), and a click
    // before its impression, stamped 10 ms before it (clocks differ)
    send(&mut a, EventType::Impression, b"t3", NOW, NOW + 30, x);
    send(&mut a, EventType::Click, b"t3", NOW + 4_000, NOW + 40, x);
    send(&mut a, EventType::Click, b"t3", NOW + 40_000, NOW + 50, x);
    send(&mut a, EventType::Click, b"t4", NOW - 10, NOW + 60, None);
    send(&mut a, EventType::Impression, b"t4", NOW, NOW + 70, x);
    // a bid without a price: its win is timed all the same
    let mut bid = ev(EventType::Bid, NOW, Some("US"), Some("ios"), 1);
    (bid.txn, bid.price, bid.exchange) = (b"t5", None, x);
    a.record(&bid, NOW + 80);
    send(&mut a, EventType::Win, b"t5", NOW + 250, NOW + 90, None);
    let s = a.take_stats();
    assert_eq!((s.paired, s.clicks_paired, s.clicks_unpaired), (3, 3, [0, 0, 0]));
    assert_eq!(a.waiting(), 0, "every bid paired");
    assert_eq!(a.clicks_waiting(), 2, "the impressions wait for more clicks");
    let adx = || "adx".to_string();
    let mut expected = vec![
        (EventType::Win, delay_bucket(120), adx(), 1),
        (EventType::Win, delay_bucket(250), adx(), 1),
        (EventType::Loss, delay_bucket(3_000), adx(), 1),
        (EventType::Click, delay_bucket(4_000), adx(), 1),
        (EventType::Click, delay_bucket(40_000), adx(), 1),
        (EventType::Click, 1, adx(), 1),
    ];
    expected.sort();
    assert_eq!(timing_rows(&a.drain()), expected);
}

#[test]
fn clicks_without_an_impression_leave_counted_and_unclicked_impressions_do_not() {
    let mut a = timing(3);
    send(&mut a, EventType::Impression, b"unclicked", NOW, NOW, None);
    send(&mut a, EventType::Click, b"orphan", NOW, NOW + 100, None);
    send(&mut a, EventType::Click, b"orphan", NOW, NOW + 110, None); // a second click before any impression
    send(&mut a, EventType::Bid, b"bid", NOW, NOW + 120, None); // (not in this pairing: no landscape needed)
    let mut moved = ev(EventType::Click, NOW, Some("US"), Some("ios"), 1);
    (moved.txn, moved.partition) = (b"moved", 5);
    a.expire_waiting(NOW + 200);
    a.record(&moved, NOW + 200);
    send(&mut a, EventType::Impression, b"full", NOW, NOW + 300, None); // a fourth: not kept
    assert_eq!(a.clicks_waiting(), 3);
    assert_eq!(a.clicks_unpaired_now(), 2);
    a.release_waiting(|p| p == 5);
    a.expire_waiting(NOW + 2_000);
    let s = a.take_stats();
    assert_eq!(s.clicks_unpaired, [2, 0, 1], "the orphan's two clicks, the click handed over");
    assert_eq!(s.impressions_unkept, 1);
    assert_eq!(s.clicks_paired, 0);
    assert_eq!((a.clicks_waiting(), a.waiting()), (0, 0));
    assert!(timing_rows(&a.drain()).is_empty());
}

#[test]
fn a_step_of_the_wall_clock_expires_no_waiting_half() {
    let mut a = timing(100);
    let mono = 5_000; // the ingest loop's monotonic clock
    a.expire_waiting(mono);
    let mut e = ev(EventType::Bid, NOW, Some("US"), Some("ios"), 1);
    e.txn = b"waits";
    a.record(&e, NOW);
    // the wall clock steps an hour forward: events are admitted against it
    let mut e = ev(EventType::Bid, NOW + 3_600_000, Some("US"), Some("ios"), 1);
    e.txn = b"after the step";
    assert_eq!(a.record(&e, NOW + 3_600_000), Outcome::Accepted);
    a.expire_waiting(mono + 100);
    assert_eq!(a.waiting(), 2, "the window is measured on the monotonic clock");
    a.expire_waiting(mono + 1_001);
    assert_eq!(a.waiting(), 0);
    assert_eq!(a.take_stats().unpaired[Unpaired::NoOutcome as usize], 2);
}
