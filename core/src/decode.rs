//! Decoding and validation of one ZeroMQ message (topic frame + MessagePack
//! payload) into a borrowed [`Event`].
//!
//! The decoder walks the MessagePack bytes itself (with [`rmp::Marker`] for
//! the marker table) instead of going through serde: every string in the
//! resulting [`Event`] borrows from the frame, nothing is allocated, and an
//! unknown key's value (however nested) is skipped iteratively, so hostile
//! input can neither allocate nor recurse.

use crate::wire::{parse_topic, EventType};
use rmp::Marker;

/// Why a message was dropped. Each variant is one fixed `reason` label of
/// `bid_logger_messages_invalid_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Not exactly two frames.
    #[error("message does not have exactly two frames")]
    Frames,
    /// The topic frame is not `<type>.<dddd>`.
    #[error("topic is not <type>.<dddd>")]
    Topic,
    /// The payload is truncated or not MessagePack.
    #[error("payload is not valid MessagePack")]
    Malformed,
    /// The payload is valid MessagePack but not one map (or has trailing bytes).
    #[error("payload is not one MessagePack map")]
    NotMap,
    /// `txn` or `ts` is missing.
    #[error("a required key is missing")]
    MissingField,
    /// A known key (or a map key) has the wrong MessagePack type.
    #[error("a key has the wrong type")]
    WrongType,
    /// A value is out of its allowed range (length or magnitude).
    #[error("a value is out of range")]
    OutOfRange,
    /// The payload's `type` disagrees with the topic.
    #[error("payload type disagrees with the topic")]
    TypeMismatch,
    /// A string is not valid UTF-8.
    #[error("a string is not valid UTF-8")]
    InvalidUtf8,
    /// The payload is larger than `max-event-size` (checked before decoding).
    #[error("payload is larger than max-event-size")]
    TooLarge,
    /// The topic's partition is not `fnv1a64(txn) mod partition-count`, and
    /// this instance does not take every transaction, so the event cannot
    /// be part of a consistent sample (checked after decoding).
    #[error("topic partition is not fnv1a64(txn) mod partition-count")]
    PartitionMismatch,
}

impl DecodeError {
    /// How many reasons there are.
    pub const COUNT: usize = 11;

    /// Every reason, index = [`DecodeError::index`].
    pub const ALL: [DecodeError; DecodeError::COUNT] = [
        DecodeError::Frames,
        DecodeError::Topic,
        DecodeError::Malformed,
        DecodeError::NotMap,
        DecodeError::MissingField,
        DecodeError::WrongType,
        DecodeError::OutOfRange,
        DecodeError::TypeMismatch,
        DecodeError::InvalidUtf8,
        DecodeError::TooLarge,
        DecodeError::PartitionMismatch,
    ];

    /// The metric label.
    pub const fn reason(self) -> &'static str {
        match self {
            DecodeError::Frames => "frames",
            DecodeError::Topic => "topic",
            DecodeError::Malformed => "malformed",
            DecodeError::NotMap => "not_map",
            DecodeError::MissingField => "missing_field",
            DecodeError::WrongType => "wrong_type",
            DecodeError::OutOfRange => "out_of_range",
            DecodeError::TypeMismatch => "type_mismatch",
            DecodeError::InvalidUtf8 => "invalid_utf8",
            DecodeError::TooLarge => "too_large",
            DecodeError::PartitionMismatch => "partition_mismatch",
        }
    }

    /// Position in [`DecodeError::ALL`], for per-reason counters in arrays.
    pub const fn index(self) -> usize {
        self as usize
    }
}

/// One valid event, borrowing its strings from the received frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event<'a> {
    /// From the topic (and the payload's `type`, which must agree).
    pub event_type: EventType,
    /// From the topic, as the publisher sent it (`0..=9999`; whether it is
    /// `fnv1a64(txn) mod P` is the hot path's check, not the decoder's).
    pub partition: u32,
    /// Transaction id, raw bytes (UTF-8 bytes when sent as a string), 1–64 bytes.
    pub txn: &'a [u8],
    /// Event time, milliseconds since the Unix epoch.
    pub ts_ms: i64,
    /// Publisher id.
    pub publisher: Option<&'a str>,
    /// Per (publisher, topic) sequence number.
    pub seq: Option<u64>,
    /// Country as sent (normalised later).
    pub country: Option<&'a str>,
    /// OS as sent (normalised later).
    pub os: Option<&'a str>,
    /// Campaign id, 0 = none.
    pub campaign: u32,
    /// Advertiser id, 0 = none.
    pub advertiser: u32,
    /// Ad exchange name.
    pub exchange: Option<&'a str>,
    /// Price in micro-USD.
    pub price: Option<i64>,
    /// Revenue in micro-USD.
    pub revenue: Option<i64>,
    /// Attribution flag on conversions.
    pub attributed: Option<bool>,
    /// In-app event name.
    pub name: Option<&'a str>,
}

/// Longest `txn`, `pub`, `exchange` and `name`, in bytes.
pub const MAX_ID_LEN: usize = 64;

/// Decodes and validates one message made of `topic` and `payload` frames.
pub fn decode<'a>(topic: &[u8], payload: &'a [u8]) -> Result<Event<'a>, DecodeError> {
    let (event_type, partition) = parse_topic(topic).ok_or(DecodeError::Topic)?;
    let mut r = Reader { buf: payload, pos: 0 };
    let entries = match r.value()? {
        Value::Map(n) => n,
        _ => return Err(DecodeError::NotMap),
    };
    let mut ev = Event {
        event_type,
        partition,
        txn: &[],
        ts_ms: 0,
        publisher: None,
        seq: None,
        country: None,
        os: None,
        campaign: 0,
        advertiser: 0,
        exchange: None,
        price: None,
        revenue: None,
        attributed: None,
        name: None,
    };
    let mut have_txn = false;
    let mut have_ts = false;
    for _ in 0..entries {
        let key = match r.value()? {
            Value::Str(k) => k,
            _ => return Err(DecodeError::WrongType),
        };
        // Keys are matched as bytes; an unknown key that is not UTF-8 is
        // still a non-UTF-8 string and therefore invalid.
        match Field::of(key) {
            Field::Txn => {
                ev.txn = match r.value()? {
                    Value::Str(s) => {
                        utf8(s)?;
                        s
                    }
                    Value::Bin(b) => b,
                    _ => return Err(DecodeError::WrongType),
                };
                if ev.txn.is_empty() || ev.txn.len() > MAX_ID_LEN {
                    return Err(DecodeError::OutOfRange);
                }
                have_txn = true;
            }
            Field::Ts => {
                ev.ts_ms = r.value()?.int()?;
                have_ts = true;
            }
            Field::Type => match r.value()? {
                Value::Str(s) => {
                    // Only the topic's own type name is right: compare with it alone.
                    if s != event_type.as_str().as_bytes() {
                        utf8(s)?;
                        return Err(DecodeError::TypeMismatch);
                    }
                }
                Value::Nil => {}
                _ => return Err(DecodeError::WrongType),
            },
            Field::Pub => ev.publisher = r.value()?.opt_str(MAX_ID_LEN)?,
            Field::Seq => ev.seq = r.value()?.opt_uint(u64::MAX)?,
            Field::Country => ev.country = r.value()?.opt_str(usize::MAX)?,
            Field::Os => ev.os = r.value()?.opt_str(usize::MAX)?,
            Field::Campaign => ev.campaign = r.value()?.opt_uint(u64::from(u32::MAX))?.unwrap_or(0) as u32,
            Field::Advertiser => ev.advertiser = r.value()?.opt_uint(u64::from(u32::MAX))?.unwrap_or(0) as u32,
            Field::Exchange => ev.exchange = r.value()?.opt_str(MAX_ID_LEN)?,
            Field::Price => ev.price = r.value()?.opt_int()?,
            Field::Revenue => ev.revenue = r.value()?.opt_int()?,
            Field::Attributed => {
                ev.attributed = match r.value()? {
                    Value::Bool(b) => Some(b),
                    Value::Nil => None,
                    _ => return Err(DecodeError::WrongType),
                }
            }
            Field::Name => ev.name = r.value()?.opt_str(MAX_ID_LEN)?,
            Field::Other => {
                utf8(key)?;
                r.skip_value()?;
            }
        }
    }
    if r.pos != payload.len() {
        return Err(DecodeError::NotMap);
    }
    if !have_txn || !have_ts {
        return Err(DecodeError::MissingField);
    }
    Ok(ev)
}

/// The payload keys the decoder knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Txn,
    Ts,
    Type,
    Pub,
    Seq,
    Country,
    Os,
    Campaign,
    Advertiser,
    Exchange,
    Price,
    Revenue,
    Attributed,
    Name,
    Other,
}

impl Field {
    /// Which key `key` is: a switch on the length, then one fixed-size
    /// comparison (a register compare, not a `memcmp` call per candidate).
    #[inline]
    fn of(key: &[u8]) -> Field {
        fn is<const N: usize>(key: &[u8], name: &[u8; N]) -> bool {
            <&[u8; N]>::try_from(key).is_ok_and(|k| k == name)
        }
        match key.len() {
            2 if is(key, b"ts") => Field::Ts,
            2 if is(key, b"os") => Field::Os,
            3 if is(key, b"txn") => Field::Txn,
            3 if is(key, b"pub") => Field::Pub,
            3 if is(key, b"seq") => Field::Seq,
            4 if is(key, b"type") => Field::Type,
            4 if is(key, b"name") => Field::Name,
            5 if is(key, b"price") => Field::Price,
            7 if is(key, b"country") => Field::Country,
            7 if is(key, b"revenue") => Field::Revenue,
            8 if is(key, b"campaign") => Field::Campaign,
            8 if is(key, b"exchange") => Field::Exchange,
            10 if is(key, b"advertiser") => Field::Advertiser,
            10 if is(key, b"attributed") => Field::Attributed,
            _ => Field::Other,
        }
    }
}

#[inline]
fn utf8(bytes: &[u8]) -> Result<&str, DecodeError> {
    // Nearly every string on the wire is short ASCII: check that inline
    // (word-at-a-time) before falling back to the full validator.
    if bytes.is_ascii() {
        // SAFETY: ASCII is valid UTF-8.
        return Ok(unsafe { std::str::from_utf8_unchecked(bytes) });
    }
    std::str::from_utf8(bytes).map_err(|_| DecodeError::InvalidUtf8)
}

/// One MessagePack item as far as the decoder needs it: scalars carry their
/// value, containers only their length (their items follow in the stream).
#[derive(Debug, Clone, Copy)]
enum Value<'a> {
    Nil,
    Bool(bool),
    Uint(u64),
    /// A negative integer (non-negative ones are always `Uint`).
    Neg(i64),
    Float,
    Str(&'a [u8]),
    Bin(&'a [u8]),
    Ext,
    Array(u32),
    Map(u32),
}

impl<'a> Value<'a> {
    #[inline]
    fn int(self) -> Result<i64, DecodeError> {
        match self {
            Value::Uint(u) => i64::try_from(u).map_err(|_| DecodeError::OutOfRange),
            Value::Neg(i) => Ok(i),
            _ => Err(DecodeError::WrongType),
        }
    }

    #[inline]
    fn opt_int(self) -> Result<Option<i64>, DecodeError> {
        match self {
            Value::Nil => Ok(None),
            v => v.int().map(Some),
        }
    }

    #[inline]
    fn opt_uint(self, max: u64) -> Result<Option<u64>, DecodeError> {
        match self {
            Value::Nil => Ok(None),
            Value::Uint(u) if u <= max => Ok(Some(u)),
            Value::Uint(_) | Value::Neg(_) => Err(DecodeError::OutOfRange),
            _ => Err(DecodeError::WrongType),
        }
    }

    #[inline]
    fn opt_str(self, max_len: usize) -> Result<Option<&'a str>, DecodeError> {
        match self {
            Value::Nil => Ok(None),
            Value::Str(s) => {
                let s = utf8(s)?;
                if s.len() > max_len {
                    return Err(DecodeError::OutOfRange);
                }
                Ok(Some(s))
            }
            _ => Err(DecodeError::WrongType),
        }
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    #[inline]
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.pos.checked_add(n).ok_or(DecodeError::Malformed)?;
        let s = self.buf.get(self.pos..end).ok_or(DecodeError::Malformed)?;
        self.pos = end;
        Ok(s)
    }

    #[inline]
    fn be<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    #[inline]
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.be::<1>()?[0])
    }

    #[inline]
    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.be()?))
    }

    #[inline]
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.be()?))
    }

    /// Reads one item header (and a scalar's body).
    #[inline(always)]
    fn value(&mut self) -> Result<Value<'a>, DecodeError> {
        let byte = self.u8()?;
        // Nearly every item on the wire is a short string or a small
        // positive integer: decode those without the full marker table.
        if byte & 0xe0 == 0xa0 {
            return Ok(Value::Str(self.take(usize::from(byte & 0x1f))?));
        }
        if byte < 0x80 {
            return Ok(Value::Uint(u64::from(byte)));
        }
        self.value_slow(byte)
    }

    /// [`Reader::value`] for every other marker (kept out of line, so that
    /// the fast path above inlines into the decoder's loop).
    #[inline(never)]
    fn value_slow(&mut self, byte: u8) -> Result<Value<'a>, DecodeError> {
        let marker = Marker::from_u8(byte);
        Ok(match marker {
            Marker::FixPos(v) => Value::Uint(u64::from(v)),
            Marker::FixNeg(v) => Value::Neg(i64::from(v)),
            Marker::Null => Value::Nil,
            Marker::True => Value::Bool(true),
            Marker::False => Value::Bool(false),
            Marker::U8 => Value::Uint(u64::from(self.u8()?)),
            Marker::U16 => Value::Uint(u64::from(self.u16()?)),
            Marker::U32 => Value::Uint(u64::from(self.u32()?)),
            Marker::U64 => Value::Uint(u64::from_be_bytes(self.be()?)),
            Marker::I8 => int_value(i64::from(i8::from_be_bytes(self.be()?))),
            Marker::I16 => int_value(i64::from(i16::from_be_bytes(self.be()?))),
            Marker::I32 => int_value(i64::from(i32::from_be_bytes(self.be()?))),
            Marker::I64 => int_value(i64::from_be_bytes(self.be()?)),
            Marker::F32 => {
                self.take(4)?;
                Value::Float
            }
            Marker::F64 => {
                self.take(8)?;
                Value::Float
            }
            Marker::FixStr(n) => Value::Str(self.take(usize::from(n))?),
            Marker::Str8 => {
                let n = self.u8()?;
                Value::Str(self.take(usize::from(n))?)
            }
            Marker::Str16 => {
                let n = self.u16()?;
                Value::Str(self.take(usize::from(n))?)
            }
            Marker::Str32 => {
                let n = self.u32()?;
                Value::Str(self.take(n as usize)?)
            }
            Marker::Bin8 => {
                let n = self.u8()?;
                Value::Bin(self.take(usize::from(n))?)
            }
            Marker::Bin16 => {
                let n = self.u16()?;
                Value::Bin(self.take(usize::from(n))?)
            }
            Marker::Bin32 => {
                let n = self.u32()?;
                Value::Bin(self.take(n as usize)?)
            }
            Marker::FixArray(n) => Value::Array(u32::from(n)),
            Marker::Array16 => Value::Array(u32::from(self.u16()?)),
            Marker::Array32 => Value::Array(self.u32()?),
            Marker::FixMap(n) => Value::Map(u32::from(n)),
            Marker::Map16 => Value::Map(u32::from(self.u16()?)),
            Marker::Map32 => Value::Map(self.u32()?),
            Marker::FixExt1 => self.ext(1)?,
            Marker::FixExt2 => self.ext(2)?,
            Marker::FixExt4 => self.ext(4)?,
            Marker::FixExt8 => self.ext(8)?,
            Marker::FixExt16 => self.ext(16)?,
            Marker::Ext8 => {
                let n = self.u8()?;
                self.ext(usize::from(n))?
            }
            Marker::Ext16 => {
                let n = self.u16()?;
                self.ext(usize::from(n))?
            }
            Marker::Ext32 => {
                let n = self.u32()?;
                self.ext(n as usize)?
            }
            Marker::Reserved => return Err(DecodeError::Malformed),
        })
    }

    fn ext(&mut self, len: usize) -> Result<Value<'a>, DecodeError> {
        self.take(1)?; // type tag
        self.take(len)?;
        Ok(Value::Ext)
    }

    /// Skips one complete item, containers included, without recursion: a
    /// counter of items still to skip replaces the call stack, so nesting
    /// depth costs nothing and a lying length runs into the end of the buffer.
    fn skip_value(&mut self) -> Result<(), DecodeError> {
        let mut pending: u64 = 1;
        while pending > 0 {
            pending -= 1;
            match self.value()? {
                Value::Array(n) => pending += u64::from(n),
                Value::Map(n) => pending += 2 * u64::from(n),
                Value::Str(s) => {
                    utf8(s)?;
                }
                _ => {}
            }
        }
        Ok(())
    }
}

#[inline]
fn int_value(v: i64) -> Value<'static> {
    if v >= 0 {
        Value::Uint(v as u64)
    } else {
        Value::Neg(v)
    }
}

#[cfg(test)]
mod tests;
