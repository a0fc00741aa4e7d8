//! Raw events for `events_sample`: every event of a consistently sampled
//! transaction, as received (dimensions normalised as in the rollups).

use super::delta::OsName;
use super::normalise::{normalise_country, normalise_os, OS_MAX_LEN, OS_UNKNOWN};
use crate::decode::Event;
use crate::wire::EventType;

/// One row of `events_sample`. Owned: raw rows are rare (the raw sample is
/// typically 1/1000), so their allocations stay off the common path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawRow {
    /// Event time, ms since the epoch.
    pub ts_ms: i64,
    /// When the logger received it, ms since the epoch.
    pub received_ms: i64,
    /// Event type.
    pub event_type: EventType,
    /// Transaction id bytes.
    pub txn: Vec<u8>,
    /// Partition from the topic.
    pub partition: u32,
    /// Publisher id.
    pub publisher: Option<String>,
    /// Sequence number.
    pub seq: Option<u64>,
    /// Normalised country.
    pub country: [u8; 2],
    /// Normalised OS.
    pub os: OsName,
    /// Campaign id (0 = none).
    pub campaign: u32,
    /// Advertiser id (0 = none).
    pub advertiser: u32,
    /// Exchange.
    pub exchange: Option<String>,
    /// In-app event name.
    pub name: Option<String>,
    /// Price, micro-USD.
    pub price: Option<i64>,
    /// Revenue, micro-USD.
    pub revenue: Option<i64>,
    /// Attribution flag.
    pub attributed: Option<bool>,
}

impl RawRow {
    /// Copies an event out of its frames.
    pub fn from_event(ev: &Event<'_>, received_ms: i64) -> RawRow {
        let mut buf = [0u8; OS_MAX_LEN];
        let os = normalise_os(ev.os, &mut buf).unwrap_or(OS_UNKNOWN);
        RawRow {
            ts_ms: ev.ts_ms,
            received_ms,
            event_type: ev.event_type,
            txn: ev.txn.to_vec(),
            partition: ev.partition,
            publisher: ev.publisher.map(str::to_string),
            seq: ev.seq,
            country: normalise_country(ev.country),
            os: OsName::new(os),
            campaign: ev.campaign,
            advertiser: ev.advertiser,
            exchange: ev.exchange.map(str::to_string),
            name: ev.name.map(str::to_string),
            price: ev.price,
            revenue: ev.revenue,
            attributed: ev.attributed,
        }
    }

    /// The UTC day (days since the epoch) of the event time: its partition.
    pub fn day(&self) -> i64 {
        self.ts_ms.div_euclid(86_400_000)
    }
}
