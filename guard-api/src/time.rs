//! The one time format of audit records: RFC 3339 in UTC with exactly three fractional digits
//! (`2026-11-29T23:30:26.123Z`). Fixed width, so records sort as text, and milliseconds, the
//! precision of the server's clock columns.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use time::{format_description::well_known::Rfc3339, OffsetDateTime, UtcOffset};

/// A point in time, carried as Unix milliseconds and written as RFC 3339.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(i64);

impl Timestamp {
    pub fn now() -> Self {
        let nanos = OffsetDateTime::now_utc().unix_timestamp_nanos();
        Timestamp((nanos / 1_000_000) as i64)
    }

    pub fn from_unix_ms(ms: i64) -> Self {
        Timestamp(ms)
    }

    pub fn unix_ms(self) -> i64 {
        self.0
    }

    /// Parses any RFC 3339 time (any offset, any precision); sub-millisecond digits are dropped.
    pub fn parse(text: &str) -> Result<Self, time::error::Parse> {
        let t = OffsetDateTime::parse(text, &Rfc3339)?;
        Ok(Timestamp((t.unix_timestamp_nanos() / 1_000_000) as i64))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.0) * 1_000_000)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH)
            .to_offset(UtcOffset::UTC);
        write!(
            f,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.millisecond()
        )
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Timestamp::parse(&text).map_err(|e| serde::de::Error::custom(format!("bad RFC 3339 time {text:?}: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_width_utc_milliseconds() {
        let t = Timestamp::from_unix_ms(1_796_002_226_007);
        assert_eq!(t.to_string(), "2026-11-30T01:30:26.007Z");
        assert_eq!(Timestamp::parse("2026-11-30T01:30:26.007Z").unwrap(), t);
        assert_eq!(Timestamp::parse("2026-11-30T02:30:26.007999+01:00").unwrap(), t);
        assert_eq!(Timestamp::from_unix_ms(0).to_string(), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn round_trips_through_json() {
        let t = Timestamp::from_unix_ms(1_796_002_226_123);
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(json, "\"2026-11-30T01:30:26.123Z\"");
        assert_eq!(serde_json::from_str::<Timestamp>(&json).unwrap(), t);
        assert!(serde_json::from_str::<Timestamp>("\"yesterday\"").unwrap_err().to_string().contains("yesterday"));
    }
}
