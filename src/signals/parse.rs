//! Value parsers shared by the header dialects and the retry hints.
//!
//! Every function here is total: it returns `None` for input it cannot read and never panics,
//! whatever the bytes. Durations are never negative and never above [`MAX_HINT`].

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderValue;
use time::OffsetDateTime;
use time::format_description::well_known::{Rfc2822, Rfc3339};

use super::MAX_HINT;

/// Reset values at or above this many seconds are Unix epoch seconds, not a relative delay
/// (2001-09-09T01:46:40Z: no server means "wait 31 years").
pub(crate) const EPOCH_THRESHOLD: u64 = 1_000_000_000;

/// Emits the debug event for a header that could not be read. Only the name is logged: values
/// are never printed (a misrouted credential must not reach the logs).
pub(crate) fn unreadable(name: &str) {
    tracing::debug!(header = name, "ignoring unreadable header");
}

/// Reads a header with `parse`; logs and returns `None` when the value cannot be read.
pub(crate) fn read<'a, T>(
    name: &str,
    value: &'a HeaderValue,
    parse: impl FnOnce(&'a str) -> Option<T>,
) -> Option<T> {
    // Header values are nearly always visible ASCII: `to_str` checks that without a UTF-8
    // validation, and trimming ASCII whitespace is then the same as `trim`. Anything else goes
    // through the general path.
    let text = match value.to_str() {
        Ok(s) => Some(s.trim_ascii()),
        Err(_) => std::str::from_utf8(value.as_bytes()).ok().map(str::trim),
    };
    let parsed = text.and_then(parse);
    if parsed.is_none() {
        unreadable(name);
    }
    parsed
}

/// A non-negative decimal integer (`+` allowed, no sign otherwise).
pub(crate) fn uint(s: &str) -> Option<u64> {
    s.parse::<u64>().ok()
}

/// Reads an integer header like [`read`] with [`uint`]. The shape nearly every `*-limit` and
/// `*-remaining` value has, 1 to 19 ASCII digits and nothing else, is read straight from the
/// bytes (no UTF-8 or visible-ASCII check, no overflow check: 19 digits fit in a `u64`);
/// anything else takes the general path, with the same result.
#[inline]
pub(crate) fn read_uint(name: &str, value: &HeaderValue) -> Option<u64> {
    digits(value.as_bytes()).or_else(|| read_uint_general(name, value))
}

#[cold]
#[inline(never)]
fn read_uint_general(name: &str, value: &HeaderValue) -> Option<u64> {
    read(name, value, uint)
}

/// 1 to 19 ASCII digits and nothing else, as a number (19 digits cannot overflow a `u64`).
#[inline]
fn digits(b: &[u8]) -> Option<u64> {
    if b.is_empty() || b.len() > 19 {
        return None;
    }
    b.iter().try_fold(0u64, |n, &c| {
        let d = c.wrapping_sub(b'0');
        (d < 10).then(|| n * 10 + u64::from(d))
    })
}

/// A finite, non-negative number of seconds as a duration, clamped to [`MAX_HINT`].
/// Negative, NaN and infinite values are rejected.
pub(crate) fn secs_f64(v: f64) -> Option<Duration> {
    secs_f64_up_to(v, MAX_HINT)
}

/// [`secs_f64`] clamped to `max` instead of [`MAX_HINT`].
pub(crate) fn secs_f64_up_to(v: f64, max: Duration) -> Option<Duration> {
    if !v.is_finite() || v < 0.0 {
        return None;
    }
    // `-0.0` passes the test above; `max` turns it into `0.0`.
    let v = v.max(0.0);
    Some(Duration::try_from_secs_f64(v).unwrap_or(max).min(max))
}

/// A plain decimal number (`12`, `1.5`, `.5`, `+3`): digits and at most one dot, nothing else.
/// Rejects exponents, `inf`, `nan` and signs other than a leading `+`.
pub(crate) fn decimal(s: &str) -> Option<f64> {
    let body = s.strip_prefix('+').unwrap_or(s);
    let mut digits = 0usize;
    let mut dots = 0usize;
    for b in body.bytes() {
        match b {
            b'0'..=b'9' => digits += 1,
            b'.' => dots += 1,
            _ => return None,
        }
    }
    if digits == 0 || dots > 1 {
        return None;
    }
    body.parse::<f64>().ok()
}

/// A Go-style duration (`6m0s`, `1s`, `12ms`, `0.5s`, `1h30m`, `2m59.56s`, `1µs`, `1us`,
/// `3ns`); a bare `0` is zero, as in Go. Negative durations are rejected.
pub(crate) fn go_duration(s: &str) -> Option<Duration> {
    let mut rest = s.strip_prefix('+').unwrap_or(s);
    if rest == "0" {
        return Some(Duration::ZERO);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total = 0.0f64;
    while !rest.is_empty() {
        let end = rest
            .bytes()
            .position(|b| !(b.is_ascii_digit() || b == b'.'))
            .unwrap_or(rest.len());
        let number = decimal(&rest[..end])?;
        rest = &rest[end..];
        let (scale, len) = unit(rest)?;
        rest = &rest[len..];
        total += number * scale;
    }
    secs_f64(total)
}

/// The unit at the start of `s` and its length in bytes, as seconds per unit.
fn unit(s: &str) -> Option<(f64, usize)> {
    const UNITS: [(&str, f64); 8] = [
        ("ns", 1e-9),
        ("us", 1e-6),
        ("\u{b5}s", 1e-6),  // micro sign
        ("\u{3bc}s", 1e-6), // Greek small letter mu
        ("ms", 1e-3),
        ("s", 1.0),
        ("m", 60.0),
        ("h", 3600.0),
    ];
    UNITS
        .iter()
        .find(|(u, _)| s.starts_with(u))
        .map(|&(u, scale)| (scale, u.len()))
}

/// A relative reset: delay-seconds (integer or decimal), or a Go-style duration; an integer at or
/// above [`EPOCH_THRESHOLD`] is read as Unix epoch seconds and measured from `reference`.
pub(crate) fn relative_or_epoch(s: &str, reference: SystemTime) -> Option<Duration> {
    if let Some(n) = uint(s) {
        if n >= EPOCH_THRESHOLD {
            return Some(until_unix_nanos(i128::from(n) * 1_000_000_000, reference));
        }
        return secs_f64(n as f64);
    }
    if let Some(v) = decimal(s) {
        return secs_f64(v);
    }
    go_duration(s)
}

/// An RFC 3339 timestamp measured from `reference` (zero when it is in the past).
pub(crate) fn rfc3339_from(s: &str, reference: SystemTime) -> Option<Duration> {
    let nanos = match rfc3339_utc_seconds(s.as_bytes()) {
        Some(secs) => i128::from(secs) * 1_000_000_000,
        None => OffsetDateTime::parse(s, &Rfc3339)
            .ok()?
            .unix_timestamp_nanos(),
    };
    Some(until_unix_nanos(nanos, reference))
}

/// The shape every Anthropic reset has, `YYYY-MM-DDTHH:MM:SSZ`, read without the general RFC 3339
/// parser: Unix seconds, or `None` for anything else (fractions, offsets, a leap second, an
/// invalid date), which the general parser then reads or rejects. Same result as the general
/// parser for every string it accepts.
pub(crate) fn rfc3339_utc_seconds(s: &[u8]) -> Option<i64> {
    let b: &[u8; 20] = s.try_into().ok()?;
    if b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    if b[19] != b'Z' {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<u16> {
        b[range].iter().try_fold(0u16, |n, &c| {
            c.is_ascii_digit().then(|| n * 10 + u16::from(c - b'0'))
        })
    };
    let year = num(0..4)?;
    let month = time::Month::try_from(u8::try_from(num(5..7)?).ok()?).ok()?;
    let day = u8::try_from(num(8..10)?).ok()?;
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if second > 59 {
        return None;
    }
    let date = time::Date::from_calendar_date(i32::from(year), month, day).ok()?;
    let time = time::Time::from_hms(
        u8::try_from(hour).ok()?,
        u8::try_from(minute).ok()?,
        u8::try_from(second).ok()?,
    )
    .ok()?;
    Some(date.with_time(time).assume_utc().unix_timestamp())
}

/// An HTTP-date (IMF-fixdate, RFC 850, asctime — through `httpdate`) or, as a lenient fallback,
/// an RFC 2822 date with a numeric zone (`Sun, 06 Nov 1994 08:49:37 +0000`) or a wrong weekday.
pub(crate) fn http_date(s: &str) -> Option<SystemTime> {
    if let Ok(t) = httpdate::parse_http_date(s) {
        return Some(t);
    }
    let at = OffsetDateTime::parse(s, &Rfc2822).ok()?;
    let nanos = at.unix_timestamp_nanos();
    let magnitude = Duration::from_nanos(u64::try_from(nanos.unsigned_abs()).ok()?);
    if nanos >= 0 {
        UNIX_EPOCH.checked_add(magnitude)
    } else {
        UNIX_EPOCH.checked_sub(magnitude)
    }
}

/// Nanoseconds since the Unix epoch of `t` (negative before it).
fn unix_nanos(t: SystemTime) -> i128 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i128,
        Err(e) => -(e.duration().as_nanos() as i128),
    }
}

/// The time from `reference` until the instant `nanos` after the epoch: zero when it is in the
/// past, at most [`MAX_HINT`].
pub(crate) fn until_unix_nanos(nanos: i128, reference: SystemTime) -> Duration {
    until(nanos.saturating_sub(unix_nanos(reference)))
}

/// The time from `reference` until `t`: zero when `t` is in the past, at most `max`.
pub(crate) fn until_time_up_to(t: SystemTime, reference: SystemTime, max: Duration) -> Duration {
    until_up_to(unix_nanos(t).saturating_sub(unix_nanos(reference)), max)
}

fn until(delta_nanos: i128) -> Duration {
    until_up_to(delta_nanos, MAX_HINT)
}

fn until_up_to(delta_nanos: i128, max: Duration) -> Duration {
    if delta_nanos <= 0 {
        Duration::ZERO
    } else if delta_nanos >= max.as_nanos() as i128 {
        max
    } else {
        // Below `max` (at most a few hundred years of nanoseconds): fits in a u64.
        Duration::from_nanos(delta_nanos as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        let ms = Duration::from_millis;
        for (s, want) in [
            ("6m0s", Some(ms(360_000))),
            ("1s", Some(ms(1000))),
            ("12ms", Some(ms(12))),
            ("0.5s", Some(ms(500))),
            ("1h30m", Some(ms(5_400_000))),
            ("2m59.56s", Some(ms(179_560))),
            ("1\u{b5}s", Some(Duration::from_micros(1))),
            ("1\u{3bc}s", Some(Duration::from_micros(1))),
            ("1us", Some(Duration::from_micros(1))),
            ("7ns", Some(Duration::from_nanos(7))),
            ("0", Some(Duration::ZERO)),
            ("0s", Some(Duration::ZERO)),
            ("+1s", Some(ms(1000))),
            ("-1s", None),
            ("-1", None),
            ("1", None),
            ("", None),
            ("s", None),
            ("1.2.3s", None),
            ("1x", None),
            ("1e3s", None),
            ("1000000h", Some(MAX_HINT)),
        ] {
            let got = go_duration(s);
            match (got, want) {
                (Some(g), Some(w)) => {
                    assert!(
                        g.abs_diff(w) < Duration::from_micros(1),
                        "{s}: {g:?} vs {w:?}"
                    )
                }
                _ => assert_eq!(got, want, "{s}"),
            }
        }
    }

    #[test]
    fn numbers() {
        assert_eq!(decimal("1.5"), Some(1.5));
        assert_eq!(decimal(".5"), Some(0.5));
        assert_eq!(decimal("inf"), None);
        assert_eq!(decimal("NaN"), None);
        assert_eq!(decimal("-1"), None);
        assert_eq!(decimal("."), None);
        assert_eq!(secs_f64(-0.0), Some(Duration::ZERO));
        assert_eq!(secs_f64(f64::MAX), Some(MAX_HINT));
        assert_eq!(secs_f64(f64::NAN), None);
    }

    #[test]
    fn rfc3339_fast_path_agrees_with_the_parser() {
        let reference = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let general = |s: &str| {
            OffsetDateTime::parse(s, &Rfc3339)
                .ok()
                .map(|at| until_unix_nanos(at.unix_timestamp_nanos(), reference))
        };
        let mut rng = fastrand::Rng::with_seed(3);
        let mut fast = 0;
        for i in 0..20_000 {
            let s = if i % 2 == 0 {
                format!(
                    "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
                    if rng.bool() {
                        rng.u16(1990..2100)
                    } else {
                        rng.u16(0..10_000)
                    },
                    rng.u8(0..14),
                    rng.u8(0..33),
                    rng.u8(0..26),
                    rng.u8(0..62),
                    rng.u8(0..62)
                )
            } else {
                // Mutations of a valid timestamp: other separators, case, offsets, fractions.
                let mut b = b"2023-11-14T22:13:21Z".to_vec();
                let at = rng.usize(..b.len());
                b[at] = b"0123456789-T:Ztz+. "[rng.usize(..19)];
                String::from_utf8(b).unwrap()
            };
            fast += usize::from(rfc3339_utc_seconds(s.as_bytes()).is_some());
            assert_eq!(rfc3339_from(&s, reference), general(&s), "{s}");
        }
        assert!(fast > 5_000, "{fast}");
        for s in [
            "2024-02-29T00:00:00Z",
            "2023-02-29T00:00:00Z",
            "2023-12-31T23:59:60Z",
            "2000-02-29T12:00:00Z",
            "2100-02-29T12:00:00Z",
            "1900-02-29T12:00:00Z",
            "1900-03-01T00:00:00Z",
            "1969-12-31T23:59:59Z",
            "0000-02-29T00:00:00Z",
            "0000-03-01T00:00:00Z",
            "0001-01-01T00:00:00Z",
            "9999-12-31T23:59:59Z",
            "2023-04-31T00:00:00Z",
            "2023-00-10T00:00:00Z",
            "2023-01-00T00:00:00Z",
        ] {
            assert_eq!(rfc3339_from(s, reference), general(s), "{s}");
        }
    }

    #[test]
    fn the_server_date_and_resets_are_read_each_time() {
        assert_eq!(
            http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(UNIX_EPOCH + Duration::from_secs(784_111_777))
        );
        assert_eq!(
            rfc3339_utc_seconds(b"1994-11-06T08:49:37Z"),
            Some(784_111_777)
        );
        assert_eq!(
            rfc3339_utc_seconds(b"1994-11-06T08:49:39Z"),
            Some(784_111_779)
        );
    }

    #[test]
    fn integer_fast_path_agrees_with_the_parser() {
        let name = "x-test";
        for s in [
            "0",
            "7",
            "0042",
            "1000000000000",
            "9999999999999999999",
            "18446744073709551615",
            "18446744073709551616",
            "99999999999999999999",
            "+5",
            " 5",
            "5 ",
            "-1",
            "1.0",
            "",
            "1_000",
            "\u{663}",
        ] {
            let Ok(value) = HeaderValue::from_str(s) else {
                continue;
            };
            assert_eq!(read_uint(name, &value), read(name, &value, uint), "{s}");
        }
        let mut rng = fastrand::Rng::with_seed(4);
        for _ in 0..20_000 {
            // Digits only, every length up to 22; now and then one byte next to a digit.
            let mut b: Vec<u8> = (0..rng.usize(1..23)).map(|_| rng.u8(b'0'..=b'9')).collect();
            if rng.bool() {
                let at = rng.usize(..b.len());
                b[at] = b"/:+ 0a\t"[rng.usize(..7)];
            }
            let s = String::from_utf8(b).unwrap();
            let value = HeaderValue::from_str(&s).unwrap();
            assert_eq!(read_uint(name, &value), read(name, &value, uint), "{s}");
        }
        for _ in 0..20_000 {
            let s: String = (0..rng.usize(..22))
                .map(|_| b"0123456789+- .x"[rng.usize(..15)] as char)
                .collect();
            let value = HeaderValue::from_str(&s).unwrap();
            assert_eq!(read_uint(name, &value), read(name, &value, uint), "{s}");
        }
    }

    #[test]
    fn epoch_and_dates() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        assert_eq!(
            relative_or_epoch("1800000030", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(relative_or_epoch("1700000000", now), Some(Duration::ZERO));
        assert_eq!(relative_or_epoch("30", now), Some(Duration::from_secs(30)));
        assert_eq!(relative_or_epoch("1m", now), Some(Duration::from_secs(60)));
        assert_eq!(
            http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            http_date("Sunday, 06-Nov-94 08:49:37 GMT")
        );
        assert_eq!(
            http_date("Sun Nov  6 08:49:37 1994"),
            http_date("Sun, 06 Nov 1994 08:49:37 +0000")
        );
        assert!(http_date("Sun, 06 Nov 1994 08:49:37 GMT").is_some());
        assert!(http_date("yesterday").is_none());
    }
}
