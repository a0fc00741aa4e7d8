use super::*;
use proptest::prelude::*;
use serde_json::{json, Value as Json};

fn pack(v: &Json) -> Vec<u8> {
    rmp_serde::to_vec(v).unwrap()
}

fn valid() -> Json {
    json!({"txn": "9b2f6c1e-3a4d-4e5f-8a9b-0c1d2e3f4a5b", "ts": 1764180000123u64,
           "type": "bid", "pub": "bidder-17", "seq": 884213,
           "country": "BR", "os": "android", "campaign": 4021, "advertiser": 77,
           "exchange": "mopub", "price": 1250000})
}

fn with(key: &str, value: Json) -> Vec<u8> {
    let mut v = valid();
    v[key] = value;
    pack(&v)
}

fn without(key: &str) -> Vec<u8> {
    let mut v = valid();
    v.as_object_mut().unwrap().remove(key);
    pack(&v)
}

#[test]
fn the_spec_example_decodes() {
    let payload = pack(&valid());
    let ev = decode(b"bid.0031", &payload).unwrap();
    assert_eq!(ev.event_type, EventType::Bid);
    assert_eq!(ev.partition, 31);
    assert_eq!(ev.txn, b"9b2f6c1e-3a4d-4e5f-8a9b-0c1d2e3f4a5b");
    assert_eq!(ev.ts_ms, 1764180000123);
    assert_eq!(ev.publisher, Some("bidder-17"));
    assert_eq!(ev.seq, Some(884213));
    assert_eq!(ev.country, Some("BR"));
    assert_eq!(ev.os, Some("android"));
    assert_eq!((ev.campaign, ev.advertiser), (4021, 77));
    assert_eq!(ev.exchange, Some("mopub"));
    assert_eq!(ev.price, Some(1250000));
    assert_eq!((ev.revenue, ev.attributed, ev.name), (None, None, None));
}

#[test]
fn minimal_event_and_binary_txn() {
    let mut buf = Vec::new();
    rmp::encode::write_map_len(&mut buf, 2).unwrap();
    rmp::encode::write_str(&mut buf, "ts").unwrap();
    rmp::encode::write_i64(&mut buf, 5).unwrap(); // widest signed form
    rmp::encode::write_str(&mut buf, "txn").unwrap();
    rmp::encode::write_bin(&mut buf, &[0x0f, 0xff, 0x00]).unwrap();
    let ev = decode(b"click.0000", &buf).unwrap();
    assert_eq!(ev.txn, &[0x0f, 0xff, 0x00]);
    assert_eq!(ev.ts_ms, 5);
    assert_eq!(ev.campaign, 0);
}

#[test]
fn unknown_keys_of_any_shape_are_skipped() {
    let payload = with("extra", json!({"nested": [1, -2, 3.5, null, true, {"deep": ["x", {"y": [[[]]]}]}], "s": "ü"}));
    assert!(decode(b"bid.0031", &payload).is_ok());
}

#[test]
fn nil_optional_values_mean_absent() {
    let payload = with("campaign", Json::Null);
    assert_eq!(decode(b"bid.0031", &payload).unwrap().campaign, 0);
    let payload = with("os", Json::Null);
    assert_eq!(decode(b"bid.0031", &payload).unwrap().os, None);
}

fn reason(topic: &[u8], payload: &[u8]) -> DecodeError {
    decode(topic, payload).expect_err("should be invalid")
}

#[test]
fn every_invalid_rule_has_its_reason() {
    let ok = pack(&valid());
    // topic
    assert_eq!(reason(b"bid.31", &ok), DecodeError::Topic);
    assert_eq!(reason(b"bids.0031", &ok), DecodeError::Topic);
    // any four-digit partition decodes: whether it is fnv1a64(txn) mod P is the hot path's check
    assert_eq!(decode(b"bid.9999", &ok).unwrap().partition, 9999);
    // payload not a map / trailing bytes / not msgpack
    assert_eq!(reason(b"bid.0031", &pack(&json!([1, 2]))), DecodeError::NotMap);
    assert_eq!(reason(b"bid.0031", &pack(&json!("txn"))), DecodeError::NotMap);
    let mut trailing = ok.clone();
    trailing.push(0xc0);
    assert_eq!(reason(b"bid.0031", &trailing), DecodeError::NotMap);
    assert_eq!(reason(b"bid.0031", &ok[..ok.len() - 3]), DecodeError::Malformed);
    assert_eq!(reason(b"bid.0031", &[]), DecodeError::Malformed);
    assert_eq!(reason(b"bid.0031", &[0xc1]), DecodeError::Malformed);
    assert_eq!(reason(b"bid.0031", b"{\"json\": 1}"), DecodeError::NotMap, "JSON starts with a fixint");
    // a map claiming 2^32-1 entries with none present
    assert_eq!(reason(b"bid.0031", &[0xdf, 0xff, 0xff, 0xff, 0xff]), DecodeError::Malformed);
    // required keys
    assert_eq!(reason(b"bid.0031", &without("txn")), DecodeError::MissingField);
    assert_eq!(reason(b"bid.0031", &without("ts")), DecodeError::MissingField);
    // wrong types
    assert_eq!(reason(b"bid.0031", &with("ts", json!(1.5))), DecodeError::WrongType);
    assert_eq!(reason(b"bid.0031", &with("ts", json!("1764180000123"))), DecodeError::WrongType);
    assert_eq!(reason(b"bid.0031", &with("txn", json!(17))), DecodeError::WrongType);
    assert_eq!(reason(b"bid.0031", &with("price", json!(1.25))), DecodeError::WrongType);
    assert_eq!(reason(b"bid.0031", &with("campaign", json!("4021"))), DecodeError::WrongType);
    assert_eq!(reason(b"bid.0031", &with("attributed", json!(1))), DecodeError::WrongType);
    assert_eq!(reason(b"bid.0031", &with("country", json!(55))), DecodeError::WrongType);
    assert_eq!(reason(b"bid.0031", &with("type", json!(1))), DecodeError::WrongType);
    let mut int_key = Vec::new();
    rmp::encode::write_map_len(&mut int_key, 1).unwrap();
    rmp::encode::write_uint(&mut int_key, 1).unwrap();
    rmp::encode::write_uint(&mut int_key, 1).unwrap();
    assert_eq!(reason(b"bid.0031", &int_key), DecodeError::WrongType);
    // out of range
    assert_eq!(reason(b"bid.0031", &with("txn", json!(""))), DecodeError::OutOfRange);
    assert_eq!(reason(b"bid.0031", &with("txn", json!("x".repeat(65)))), DecodeError::OutOfRange);
    assert_eq!(reason(b"bid.0031", &with("pub", json!("p".repeat(65)))), DecodeError::OutOfRange);
    assert_eq!(reason(b"bid.0031", &with("campaign", json!(4294967296u64))), DecodeError::OutOfRange);
    assert_eq!(reason(b"bid.0031", &with("advertiser", json!(-1))), DecodeError::OutOfRange);
    assert_eq!(reason(b"bid.0031", &with("seq", json!(-5))), DecodeError::OutOfRange);
    assert_eq!(reason(b"bid.0031", &with("ts", json!(u64::MAX))), DecodeError::OutOfRange);
    assert_eq!(reason(b"bid.0031", &with("name", json!("n".repeat(65)))), DecodeError::OutOfRange);
    // 64-byte ids are fine
    assert!(decode(b"bid.0031", &with("txn", json!("x".repeat(64)))).is_ok());
    // type mismatch
    assert_eq!(reason(b"bid.0031", &with("type", json!("win"))), DecodeError::TypeMismatch);
    assert_eq!(reason(b"bid.0031", &with("type", json!("nonsense"))), DecodeError::TypeMismatch);
    // invalid UTF-8, in a known value, an unknown value and a key
    for (k, bad) in [("os", true), ("zzz", true)] {
        let mut buf = Vec::new();
        rmp::encode::write_map_len(&mut buf, 3).unwrap();
        rmp::encode::write_str(&mut buf, "txn").unwrap();
        rmp::encode::write_str(&mut buf, "t1").unwrap();
        rmp::encode::write_str(&mut buf, "ts").unwrap();
        rmp::encode::write_uint(&mut buf, 1).unwrap();
        rmp::encode::write_str(&mut buf, k).unwrap();
        rmp::encode::write_str_len(&mut buf, 2).unwrap();
        buf.extend_from_slice(&[0xc3, 0x28]);
        assert_eq!(bad, reason(b"bid.0031", &buf) == DecodeError::InvalidUtf8, "{k}");
    }
    let mut bad_key = Vec::new();
    rmp::encode::write_map_len(&mut bad_key, 1).unwrap();
    rmp::encode::write_str_len(&mut bad_key, 1).unwrap();
    bad_key.push(0xff);
    rmp::encode::write_uint(&mut bad_key, 1).unwrap();
    assert_eq!(reason(b"bid.0031", &bad_key), DecodeError::InvalidUtf8);
}

#[test]
fn reasons_are_distinct_labels() {
    let mut labels: Vec<_> = DecodeError::ALL.iter().map(|r| r.reason()).collect();
    labels.sort();
    labels.dedup();
    assert_eq!(labels.len(), DecodeError::ALL.len());
    for (i, r) in DecodeError::ALL.iter().enumerate() {
        assert_eq!(r.index(), i);
    }
}

proptest! {
    #[test]
    fn any_bytes_never_panic(topic in proptest::collection::vec(any::<u8>(), 0..16),
                             payload in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = decode(&topic, &payload);
    }

    #[test]
    fn encoded_events_round_trip(txn in "[a-z0-9-]{1,64}", ts in 0i64..i64::MAX,
                                 campaign in any::<u32>(), price in any::<i64>(),
                                 os in proptest::option::of("\\PC{0,40}"),
                                 attributed in proptest::option::of(any::<bool>()),
                                 partition in 0u32..256) {
        let mut v = json!({"txn": txn, "ts": ts, "campaign": campaign, "price": price});
        if let Some(os) = &os { v["os"] = json!(os); }
        if let Some(a) = attributed { v["attributed"] = json!(a); }
        let payload = pack(&v);
        let topic = crate::wire::topic(EventType::Install, partition);
        let ev = decode(topic.as_bytes(), &payload).unwrap();
        prop_assert_eq!(ev.txn, txn.as_bytes());
        prop_assert_eq!(ev.ts_ms, ts);
        prop_assert_eq!(ev.campaign, campaign);
        prop_assert_eq!(ev.price, Some(price));
        prop_assert_eq!(ev.os, os.as_deref());
        prop_assert_eq!(ev.attributed, attributed);
        prop_assert_eq!(ev.partition, partition);
    }

    #[test]
    fn truncations_of_a_valid_payload_are_invalid_not_panics(cut in 0usize..200) {
        let payload = pack(&valid());
        let cut = cut.min(payload.len() - 1);
        prop_assert!(decode(b"bid.0031", &payload[..cut]).is_err());
    }
}
