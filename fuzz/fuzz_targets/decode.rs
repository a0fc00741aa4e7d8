//! The decoder on arbitrary topic and payload frames: it must return an
//! event or an error, never panic, loop or allocate without bound.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // First byte: topic length; then the topic; then the payload.
    let Some((&n, rest)) = data.split_first() else { return };
    let n = usize::from(n % 24).min(rest.len());
    let (topic, payload) = rest.split_at(n);
    if let Ok(ev) = bid_logger_core::decode::decode(topic, payload) {
        assert!(!ev.txn.is_empty() && ev.txn.len() <= 64);
        assert!(ev.partition < 10_000);
    }
});
