//! RFC 3339 timestamps with nanoseconds, to and from unix nanoseconds.
//!
//! The Docker engine prefixes each log line with such a timestamp
//! (`2024-05-01T12:00:00.123456789Z`) and `shoal service logs --timestamps`
//! prints one back, as `docker service logs` does (always UTC, nine fraction
//! digits). Both conversions are a few lines of calendar arithmetic, so no date
//! crate is needed for them.

/// Unix nanoseconds of an RFC 3339 timestamp (`Z` or a `±hh:mm` offset, any
/// number of fraction digits). None when `text` is not one.
pub fn parse_ns(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let s = text.get(range)?;
        if !s.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut rest = &text[19..];
    let mut nanos = 0i64;
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        for (i, c) in fraction[..digits].bytes().enumerate() {
            if i < 9 {
                nanos = nanos * 10 + i64::from(c - b'0');
            }
        }
        nanos *= 10i64.pow(9u32.saturating_sub(digits as u32));
        rest = &fraction[digits..];
    }
    let offset_secs = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && rest.as_bytes()[3] == b':' => {
            let sign = match rest.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let hours: i64 = rest[1..3].parse().ok()?;
            let minutes: i64 = rest[4..6].parse().ok()?;
            sign * (hours * 3600 + minutes * 60)
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_secs;
    secs.checked_mul(1_000_000_000)?.checked_add(nanos)
}

/// `ns` (unix nanoseconds) as `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ`, Docker's fixed-width
/// RFC 3339 form.
pub fn format_ns(ns: i64) -> String {
    let secs = ns.div_euclid(1_000_000_000);
    let nanos = ns.rem_euclid(1_000_000_000);
    let days = secs.div_euclid(86_400);
    let of_day = secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60
    )
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day count since 1970-01-01 (inverse of [`days_from_civil`]).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_docker_log_timestamps() {
        assert_eq!(parse_ns("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_ns("2024-02-29T23:59:59.123456789Z"),
            Some(1_709_251_199_123_456_789)
        );
        // Fewer or more digits than nine.
        assert_eq!(parse_ns("1970-01-01T00:00:01.5Z"), Some(1_500_000_000));
        assert_eq!(
            parse_ns("1970-01-01T00:00:01.1234567891Z"),
            Some(1_123_456_789)
        );
        assert_eq!(parse_ns("1970-01-01T01:00:00+01:00"), Some(0));
        assert_eq!(parse_ns("1969-12-31T23:00:00-01:00"), Some(0));
    }

    #[test]
    fn refuses_what_is_not_a_timestamp() {
        for bad in [
            "",
            "hello world, this is a log line",
            "2024-13-01T00:00:00Z",
            "2024-01-01T00:00:00",
            "2024-01-01T00:00:00.Z",
            "2024-01-01T0a:00:00Z",
            "2024-01-01T00:00:00+0100",
        ] {
            assert_eq!(parse_ns(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn formats_like_docker_and_round_trips() {
        assert_eq!(format_ns(0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(
            format_ns(1_709_251_199_123_456_789),
            "2024-02-29T23:59:59.123456789Z"
        );
        assert_eq!(format_ns(-1), "1969-12-31T23:59:59.999999999Z");
        for ns in [
            0,
            951_782_400_000_000_001,
            4_102_444_800_999_999_999,
            -86_400_000_000_000,
        ] {
            assert_eq!(parse_ns(&format_ns(ns)), Some(ns));
        }
    }
}
