//! Delta-log payloads, added up before PostgreSQL sees them.
//!
//! A payload is one batch's rows of one coarse table in PostgreSQL's binary
//! `COPY` format (written by `flush::encode_rows`): per row the key fields
//! (`bucket`, `event_type`, the table's dimensions, `sample_ppm`) and the
//! four measures. One consumption takes many payloads (ten at the default
//! intervals for an hour table, sixty for a day table), and most keys are
//! in every one of them. [`Merged`] adds them up per key in the logger, so
//! PostgreSQL parses and upserts each key once instead of grouping every
//! payload's rows itself; [`Merged::project`] coarsens the sums for a table
//! fed from this one (`rollup_day` from `rollup_hour`'s consumption).
//!
//! Keys are compared as their encoded bytes, which are canonical: the same
//! key always encodes the same way.
//!
//! Stored payloads are LZ4-compressed by the logger ([`pack`]): the `COPY`
//! rows shrink about fourfold, and with them PostgreSQL's WAL and TOAST
//! work for the log (measured in `BENCHMARKS.md`). An uncompressed payload
//! (written by 0.x releases before this one) is still read.

use bid_logger_core::aggregate::{Dimension, Shape};
use bytes::{BufMut, Bytes, BytesMut};
use rustc_hash::FxHashMap;

/// The binary COPY header (signature, flags, extension length) and trailer.
pub const COPY_HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";
/// The binary COPY trailer (a field count of -1).
pub const COPY_TRAILER: &[u8] = &[0xff, 0xff];

/// The first bytes of a compressed payload; the uncompressed size (u32,
/// little-endian) and the LZ4 block follow.
const PACKED: &[u8] = b"BLZ4";

/// The largest payload [`unpack`] inflates (a batch's rows are a few MB).
const MAX_UNPACKED: usize = 1 << 30;

/// `copy` (binary `COPY` rows) compressed, as stored in a delta log.
pub fn pack(copy: &[u8]) -> Vec<u8> {
    let mut out = PACKED.to_vec();
    out.extend_from_slice(&lz4_flex::compress_prepend_size(copy));
    out
}

/// The binary `COPY` rows of a stored payload (compressed or not).
pub fn unpack(payload: &[u8]) -> Result<std::borrow::Cow<'_, [u8]>, Malformed> {
    if payload.starts_with(COPY_HEADER) {
        return Ok(std::borrow::Cow::Borrowed(payload));
    }
    let packed = payload.strip_prefix(PACKED).ok_or(Malformed { at: 0, what: "neither COPY rows nor LZ4" })?;
    let size = packed.get(..4).map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize);
    if size.is_none_or(|size| size > MAX_UNPACKED) {
        return Err(Malformed { at: PACKED.len(), what: "LZ4 size missing or over 1 GiB" });
    }
    let copy = lz4_flex::decompress_size_prepended(packed)
        .map_err(|_| Malformed { at: PACKED.len() + 4, what: "LZ4 block corrupt" })?;
    Ok(std::borrow::Cow::Owned(copy))
}

/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01, a UTC
/// midnight, so buckets truncate the same way from either epoch).
pub const PG_EPOCH_US: i64 = 946_684_800_000_000;

/// The measures of a row: events, attributed events, price, revenue.
pub type Measures = [i64; 4];

/// The rows of any number of payloads of one table, added up per key.
#[derive(Debug)]
pub struct Merged {
    dims: usize,
    sums: FxHashMap<Box<[u8]>, Measures>,
    /// Events in every row added.
    pub events: i64,
}

/// Rows of a [`Merged`] as one payload.
#[derive(Debug)]
pub struct Encoded {
    /// Header, rows in key order, trailer.
    pub payload: Bytes,
    /// Rows in it.
    pub rows: i64,
    /// Events in it.
    pub events: i64,
    /// Events left out (bucket before the cut-off).
    pub expired: i64,
    /// The oldest and newest bucket of its rows (µs since 2000-01-01;
    /// `None` when it has none).
    pub buckets: Option<(i64, i64)>,
}

/// Where [`Merged::add_chunk`] stands in a binary `COPY` stream.
#[derive(Debug, Default)]
pub struct Streamed {
    /// Bytes of a row not complete yet.
    pending: Vec<u8>,
    /// Bytes taken in before them.
    read: usize,
    started: bool,
    ended: bool,
}

impl Streamed {
    /// Whether the stream ended with its trailer, nothing after it.
    pub fn finish(&self) -> Result<(), Malformed> {
        match self.ended {
            true => Ok(()),
            false => Err(Malformed { at: self.read + self.pending.len(), what: CUT_SHORT }),
        }
    }
}

/// What [`Reader`] says of a payload that ends inside a row.
const CUT_SHORT: &str = "cut short";

/// A payload that is not what the logger writes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed delta-log payload at byte {at}: {what}")]
pub struct Malformed {
    at: usize,
    what: &'static str,
}

impl Merged {
    /// An empty sum for a table of `shape`.
    pub fn new(shape: Shape) -> Merged {
        Merged { dims: shape.dims.iter().count(), sums: FxHashMap::default(), events: 0 }
    }

    /// Key fields per row: bucket, event type, the dimensions, sample rate.
    fn key_fields(&self) -> usize {
        self.dims + 3
    }

    /// Adds every row of a stored `payload` (see [`unpack`]).
    pub fn add(&mut self, payload: &[u8]) -> Result<(), Malformed> {
        let copy = unpack(payload)?;
        self.add_rows(&copy)
    }

    /// Adds every row of `payload` (binary `COPY` rows).
    fn add_rows(&mut self, payload: &[u8]) -> Result<(), Malformed> {
        let mut r = Reader { buf: payload, at: 0 };
        if r.take(COPY_HEADER.len())? != COPY_HEADER {
            return Err(Malformed { at: 0, what: "not a binary COPY header" });
        }
        while self.next_row(&mut r)? {}
        if r.at != payload.len() {
            return Err(Malformed { at: r.at, what: "bytes after the trailer" });
        }
        Ok(())
    }

    /// Adds the next row of `r`; `false` at the trailer. Nothing is added
    /// from a row cut short.
    fn next_row(&mut self, r: &mut Reader<'_>) -> Result<bool, Malformed> {
        let count = i16::from_be_bytes(r.array()?);
        if count == -1 {
            return Ok(false);
        }
        if count != (self.key_fields() + 4) as i16 {
            return Err(Malformed { at: r.at - 2, what: "unexpected field count" });
        }
        let start = r.at;
        for _ in 0..self.key_fields() {
            let len = i32::from_be_bytes(r.array()?);
            let len = usize::try_from(len).map_err(|_| Malformed { at: r.at - 4, what: "NULL key field" })?;
            r.take(len)?;
        }
        let key = &r.buf[start..r.at];
        let mut m = [0i64; 4];
        for v in &mut m {
            if i32::from_be_bytes(r.array()?) != 8 {
                return Err(Malformed { at: r.at - 4, what: "measure not an int8" });
            }
            *v = i64::from_be_bytes(r.array()?);
        }
        self.events += m[0];
        self.add_row(key, &m);
        Ok(true)
    }

    /// Adds the complete rows of `chunk`, the next piece of a binary `COPY`
    /// stream read from PostgreSQL (a row may span pieces: `stream` keeps
    /// the rest for the next). [`Streamed::finish`] says whether it ended.
    pub fn add_chunk(&mut self, stream: &mut Streamed, chunk: &[u8]) -> Result<(), Malformed> {
        if stream.ended {
            return Err(Malformed { at: stream.read, what: "bytes after the trailer" });
        }
        stream.pending.extend_from_slice(chunk);
        let mut r = Reader { buf: &stream.pending, at: 0 };
        if !stream.started {
            if r.buf.len() < COPY_HEADER.len() {
                return Ok(());
            }
            if r.take(COPY_HEADER.len())? != COPY_HEADER {
                return Err(Malformed { at: 0, what: "not a binary COPY header" });
            }
            stream.started = true;
        }
        loop {
            let start = r.at;
            match self.next_row(&mut r) {
                Ok(true) => {}
                Ok(false) => {
                    stream.ended = true;
                    break;
                }
                Err(e) if e.what == CUT_SHORT => {
                    r.at = start;
                    break;
                }
                Err(e) => return Err(Malformed { at: stream.read + e.at, ..e }),
            }
        }
        let used = r.at;
        stream.read += used;
        stream.pending.drain(..used);
        if stream.ended && !stream.pending.is_empty() {
            return Err(Malformed { at: stream.read, what: "bytes after the trailer" });
        }
        Ok(())
    }

    fn add_row(&mut self, key: &[u8], m: &Measures) {
        match self.sums.get_mut(key) {
            Some(sum) => sum.iter_mut().zip(m).for_each(|(s, v)| *s += v),
            None => {
                self.sums.insert(key.into(), *m);
            }
        }
    }

    /// The sums coarsened and narrowed from `from` (this table's shape) to
    /// `to`, whose grain is not finer and whose dimensions are a subset.
    pub fn project(&self, from: Shape, to: Shape) -> Merged {
        debug_assert!(from.grain <= to.grain && from.dims.iter().all(|d| !to.dims.has(d) || from.dims.has(d)));
        let keep: Vec<bool> = from.dims.iter().map(|d: Dimension| to.dims.has(d)).collect();
        let grain_us = to.grain.minutes() * 60_000_000;
        let mut out = Merged::new(to);
        let mut key = Vec::with_capacity(64);
        for (k, m) in &self.sums {
            key.clear();
            let mut r = Reader { buf: k, at: 0 };
            let bucket = i64::from_be_bytes(r.field().try_into().expect("checked key"));
            key.put_i32(8);
            key.put_i64(bucket.div_euclid(grain_us) * grain_us);
            let event_type = r.field();
            put_field(&mut key, event_type);
            for &kept in &keep {
                let value = r.field();
                if kept {
                    put_field(&mut key, value);
                }
            }
            let ppm = r.field();
            put_field(&mut key, ppm);
            out.add_row(&key, m);
        }
        out.events = self.events;
        out
    }

    /// The rows in key order as one payload, leaving out (and counting)
    /// buckets before `oldest_us` (µs since 2000-01-01; `None`: keep all).
    pub fn encode(&self, oldest_us: Option<i64>) -> Encoded {
        let [all, _] = self.encode_split(oldest_us, i64::MAX);
        all
    }

    /// [`Merged::encode`], as two payloads: the buckets before `split_us`
    /// (with the count of events left out), and the others.
    pub fn encode_split(&self, oldest_us: Option<i64>, split_us: i64) -> [Encoded; 2] {
        let mut rows: Vec<(&[u8], &Measures)> = self.sums.iter().map(|(k, m)| (&k[..], m)).collect();
        rows.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let mut out = [Part::new(rows.len()), Part::new(if split_us == i64::MAX { 0 } else { rows.len() })];
        let mut expired = 0;
        let fields = (self.key_fields() + 4) as i16;
        for (key, m) in rows {
            // The bucket is the first field: length 8, then its value.
            let bucket = i64::from_be_bytes(key[4..12].try_into().expect("checked key"));
            if oldest_us.is_some_and(|oldest| bucket < oldest) {
                expired += m[0];
                continue;
            }
            let part = &mut out[usize::from(bucket >= split_us)];
            part.buf.put_i16(fields);
            part.buf.put_slice(key);
            for v in m {
                part.buf.put_i32(8);
                part.buf.put_i64(*v);
            }
            part.rows += 1;
            part.events += m[0];
            part.buckets = Some(part.buckets.map_or((bucket, bucket), |(lo, hi)| (lo.min(bucket), hi.max(bucket))));
        }
        let [before, from] = out.map(|mut part| {
            part.buf.put_slice(COPY_TRAILER);
            Encoded {
                payload: part.buf.freeze(),
                rows: part.rows,
                events: part.events,
                expired: 0,
                buckets: part.buckets,
            }
        });
        [Encoded { expired, ..before }, from]
    }
}

/// One payload being encoded.
struct Part {
    buf: BytesMut,
    rows: i64,
    events: i64,
    buckets: Option<(i64, i64)>,
}

impl Part {
    fn new(rows: usize) -> Part {
        let mut buf = BytesMut::with_capacity(COPY_HEADER.len() + rows * 110 + 2);
        buf.put_slice(COPY_HEADER);
        Part { buf, rows: 0, events: 0, buckets: None }
    }
}

fn put_field(buf: &mut Vec<u8>, value: &[u8]) {
    buf.put_i32(value.len() as i32);
    buf.put_slice(value);
}

/// A cursor over a payload that fails instead of reading past its end.
struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    /// The next field of a key that was checked when it was added.
    fn field(&mut self) -> &'a [u8] {
        let len = i32::from_be_bytes(self.array().expect("checked key")) as usize;
        self.take(len).expect("checked key")
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.buf.len());
        let end = end.ok_or(Malformed { at: self.at, what: CUT_SHORT })?;
        let out = &self.buf[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], Malformed> {
        Ok(self.take(N)?.try_into().expect("N bytes"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::tables::{default_tables, RollupTable};
    use crate::sink::flush::encode_rows;
    use bid_logger_core::aggregate::{AggregateConfig, Aggregator, Outcome, Row};
    use bid_logger_core::decode::Event;
    use bid_logger_core::wire::EventType;
    use std::time::Duration;

    const NOW: i64 = 1_764_180_000_000;
    const PPM: &crate::sink::flush::Ppm = &[250_000; 8];

    /// Fine rows of `n` events from `seed` over thirty hours of minutes.
    fn fine(seed: u32, n: u32) -> Vec<Row> {
        let mut agg = Aggregator::new(AggregateConfig::default());
        for i in seed..seed + n {
            let e = Event {
                event_type: EventType::ALL[(i % 8) as usize],
                partition: 0,
                txn: b"t",
                ts_ms: NOW - i64::from(i * 7 % 1800) * 60_000,
                publisher: None,
                seq: None,
                country: Some(["BR", "US", "IN"][(i % 3) as usize]),
                os: Some(["android", "ios"][(i % 2) as usize]),
                campaign: i % 31,
                advertiser: i % 31 % 7,
                exchange: Some(["unity", "applovin", "mopub", "x"][(i % 4) as usize]),
                price: Some(i64::from(i)),
                revenue: Some(i64::from(i % 5)),
                attributed: Some(i % 3 == 0),
                name: None,
            };
            assert_eq!(agg.record(&e, NOW), Outcome::Accepted);
        }
        agg.drain().rows
    }

    fn table<'a>(tables: &'a [RollupTable], name: &str) -> &'a RollupTable {
        tables.iter().find(|t| t.name == name).unwrap()
    }

    /// `rows` of `table` added up as the logger writes them directly.
    fn direct(table: &RollupTable, rows: &[Row]) -> Merged {
        let (projected, _) = table.shape.project(rows, i64::MIN);
        let mut m = Merged::new(table.shape);
        m.add(&encode_rows(table, &projected, Some(PPM), true, true)).unwrap();
        m
    }

    #[test]
    fn payloads_added_up_and_coarsened_equal_the_tables_projected_from_every_event() {
        let tables = default_tables(Duration::from_secs(1));
        let (hour, day) = (table(&tables, "rollup_hour"), table(&tables, "rollup_day"));
        let batches: Vec<Vec<Row>> = (0..5).map(|b| fine(b * 1000, 3000)).collect();
        let mut merged = Merged::new(hour.shape);
        for (i, rows) in batches.iter().enumerate() {
            let (projected, _) = hour.shape.project(rows, i64::MIN);
            let copy = encode_rows(hour, &projected, Some(PPM), true, true);
            // stored compressed, or plain as before compression
            let payload = if i % 2 == 0 { pack(&copy) } else { copy.to_vec() };
            if i % 2 == 0 {
                assert!(payload.len() * 2 < copy.len(), "compressed {} of {}", payload.len(), copy.len());
            }
            merged.add(&payload).unwrap();
        }
        let all: Vec<Row> = {
            let mut all: Vec<Row> = batches.concat();
            all.sort_by_key(|r| r.0);
            let mut out: Vec<Row> = Vec::new();
            for (k, c) in all {
                match out.last_mut() {
                    Some(last) if last.0 == k => last.1.add(&c),
                    _ => out.push((k, c)),
                }
            }
            out
        };
        assert_eq!(merged.events, 15_000);
        let expected = direct(hour, &all);
        assert_eq!(merged.sums, expected.sums, "hour: the sums of the payloads");
        assert!(merged.sums.len() < batches.iter().map(|b| hour.shape.project(b, i64::MIN).0.len()).sum::<usize>());
        let coarse = merged.project(hour.shape, day.shape);
        assert_eq!(coarse.sums, direct(day, &all).sums, "day: coarsened from the hour sums");
        assert_eq!(coarse.events, 15_000);
        // an encoded sum reads back as itself
        let mut again = Merged::new(day.shape);
        let encoded = coarse.encode(None);
        again.add(&encoded.payload).unwrap();
        assert_eq!((again.sums, encoded.rows, encoded.events), (coarse.sums.clone(), coarse.sums.len() as i64, 15_000));
        // a table without the campaign
        let xh = table(&tables, "rollup_exchange_hour");
        let mut x = Merged::new(xh.shape);
        for rows in &batches {
            let (projected, _) = xh.shape.project(rows, i64::MIN);
            x.add(&encode_rows(xh, &projected, Some(PPM), true, true)).unwrap();
        }
        assert_eq!(x.sums, direct(xh, &all).sums, "exchange hour");
    }

    #[test]
    fn buckets_before_the_cut_off_are_left_out_and_counted() {
        let tables = default_tables(Duration::from_secs(1));
        let hour = table(&tables, "rollup_hour");
        let rows = fine(0, 4000);
        let merged = direct(hour, &rows);
        let oldest_minute = (NOW - 10 * 3_600_000).div_euclid(60_000);
        let oldest_us = oldest_minute * 60_000_000 - PG_EPOCH_US;
        let kept: i64 =
            rows.iter().filter(|r| hour.shape.key(&r.0).minute >= oldest_minute).map(|r| r.1.events as i64).sum();
        let encoded = merged.encode(Some(oldest_us));
        assert!(kept > 0 && kept < 4000);
        assert_eq!((encoded.events, encoded.expired), (kept, 4000 - kept));
    }

    #[test]
    fn a_split_payload_holds_the_buckets_on_each_side_once_and_counts_the_cut_off_in_its_first_part() {
        let tables = default_tables(Duration::from_secs(1));
        let hour = table(&tables, "rollup_hour");
        let rows = fine(0, 4000);
        let merged = direct(hour, &rows);
        let minute_us = |m: i64| m * 60_000_000 - PG_EPOCH_US;
        let (oldest, split) = ((NOW - 20 * 3_600_000).div_euclid(60_000), (NOW - 5 * 3_600_000).div_euclid(60_000));
        let [before, from] = merged.encode_split(Some(minute_us(oldest)), minute_us(split));
        let whole = merged.encode(Some(minute_us(oldest)));
        let events = |keep: &dyn Fn(i64) -> bool| -> i64 {
            rows.iter().filter(|r| keep(hour.shape.key(&r.0).minute)).map(|r| r.1.events as i64).sum()
        };
        assert_eq!(before.events, events(&|m| m >= oldest && m < split));
        assert_eq!(from.events, events(&|m| m >= split));
        assert!(before.events > 0 && from.events > 0, "set-up: rows on both sides");
        assert_eq!((before.expired, from.expired), (whole.expired, 0));
        assert_eq!((before.rows + from.rows, before.events + from.events), (whole.rows, whole.events));
        assert!(before.buckets.unwrap().1 < minute_us(split) && from.buckets.unwrap().0 >= minute_us(split));
        let mut again = Merged::new(hour.shape);
        again.add(&before.payload).unwrap();
        again.add(&from.payload).unwrap();
        let mut kept = Merged::new(hour.shape);
        kept.add(&whole.payload).unwrap();
        assert_eq!(again.sums, kept.sums, "the two parts read back as the whole");
    }

    #[test]
    fn a_stream_read_in_pieces_of_any_size_adds_up_as_the_whole_payload() {
        let tables = default_tables(Duration::from_secs(1));
        let minute = table(&tables, "rollup_minute");
        let (projected, _) = minute.shape.project(&fine(0, 3000), i64::MIN);
        let whole = encode_rows(minute, &projected, Some(PPM), true, true);
        let mut expected = Merged::new(minute.shape);
        expected.add(&whole).unwrap();
        for piece in [1, 2, 7, 19, 64, 1000, whole.len()] {
            let (mut m, mut stream) = (Merged::new(minute.shape), Streamed::default());
            for chunk in whole.chunks(piece) {
                assert!(stream.finish().is_err(), "pieces of {piece}: ended before the trailer");
                m.add_chunk(&mut stream, chunk).unwrap();
            }
            stream.finish().unwrap();
            assert_eq!((m.sums, m.events), (expected.sums.clone(), expected.events), "pieces of {piece}");
        }
        // cut short, bytes after the trailer, another table's rows
        let (mut m, mut stream) = (Merged::new(minute.shape), Streamed::default());
        m.add_chunk(&mut stream, &whole[..whole.len() - 1]).unwrap();
        assert!(stream.finish().is_err(), "cut short");
        let (mut m, mut stream) = (Merged::new(minute.shape), Streamed::default());
        m.add_chunk(&mut stream, &whole).unwrap();
        assert!(m.add_chunk(&mut stream, &[0]).is_err(), "bytes after the trailer");
        let other = table(&tables, "rollup_exchange_minute");
        assert!(Merged::new(other.shape).add_chunk(&mut Streamed::default(), &whole).is_err(), "field count");
    }

    #[test]
    fn a_malformed_payload_is_an_error_not_a_panic() {
        let tables = default_tables(Duration::from_secs(1));
        let hour = table(&tables, "rollup_hour");
        let (projected, _) = hour.shape.project(&fine(0, 500), i64::MIN);
        let good = encode_rows(hour, &projected, Some(PPM), true, true);
        let mut m = Merged::new(hour.shape);
        for cut in [0, 5, 19, 21, 40, good.len() / 2, good.len() - 1] {
            assert!(m.add(&good[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = good.to_vec();
        longer.push(0);
        assert!(m.add(&longer).is_err(), "bytes after the trailer");
        let day = table(&tables, "rollup_exchange_hour");
        assert!(Merged::new(day.shape).add(&good).is_err(), "another table's field count");
        let packed = pack(&good);
        for cut in [0, 3, 6, 10, packed.len() / 2, packed.len() - 1] {
            assert!(m.add(&packed[..cut]).is_err(), "packed, cut at {cut}");
        }
        let mut huge = packed.clone();
        huge[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(m.add(&huge).is_err(), "a claimed size over the bound");
        let mut flipped = packed.clone();
        let mid = flipped.len() / 2;
        flipped[mid] ^= 0xff;
        let _ = m.add(&flipped); // corrupt LZ4: an error or other rows, never a panic
        let mut negative = good.to_vec();
        negative[19 + 2..19 + 6].copy_from_slice(&(-1i32).to_be_bytes());
        assert!(m.add(&negative).is_err(), "a NULL key field");
    }
}
