//! RFC 3339 timestamps (`2026-11-26T05:00:00Z`), as `attached_at` and the events' `time` carry
//! them, parsed without a date crate: the tests need only to check the format and compare the
//! instant with others (to the nanosecond: fractions are kept).
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Parses an RFC 3339 timestamp (`2026-11-26T05:00:00Z`, fractions and offsets allowed).
pub fn parse(text: &str) -> Option<SystemTime> {
    let b = text.as_bytes();
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let s = text.get(range)?;
        s.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| s.parse().ok())?
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    if !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
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
    let mut nanos = 0u32;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        // Nanoseconds: the first nine digits, padded; finer ones are dropped.
        for i in 0..9 {
            let digit = frac
                .as_bytes()
                .get(i)
                .filter(|_| i < digits)
                .map_or(0, |d| d - b'0');
            nanos = nanos * 10 + u32::from(digit);
        }
        rest = &frac[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6
            && (rest.starts_with('+') || rest.starts_with('-'))
            && &rest[3..4] == ":" =>
        {
            let minutes = rest[1..3].parse::<i64>().ok()? * 60 + rest[4..6].parse::<i64>().ok()?;
            if rest.starts_with('-') {
                -minutes
            } else {
                minutes
            }
        }
        _ => return None,
    };
    // Days since 1970-01-01 (Howard Hinnant's days_from_civil).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset * 60;
    Some(UNIX_EPOCH + Duration::new(u64::try_from(secs).ok()?, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rfc3339() {
        let at = |s| parse(s).map(|t| t.duration_since(UNIX_EPOCH).unwrap().as_secs());
        assert_eq!(at("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(at("2000-03-01T00:00:00Z"), Some(951_868_800));
        assert_eq!(at("2026-11-26T05:00:00.123456+01:00"), Some(1_795_665_600));
        assert_eq!(at("2026-11-26 05:00:00z"), at("2026-11-26T05:00:00Z"));
        let nanos = |s| parse(s).map(|t| t.duration_since(UNIX_EPOCH).unwrap().subsec_nanos());
        assert_eq!(nanos("2026-11-26T05:45:25.371666706Z"), Some(371_666_706));
        assert_eq!(nanos("2026-11-26T05:45:25.5Z"), Some(500_000_000));
        assert_eq!(nanos("2026-11-26T05:45:25.1234567891Z"), Some(123_456_789));
        for bad in [
            "",
            "2026-11-26",
            "2026-13-01T00:00:00Z",
            "2026-11-26T05:00:00",
            "2026-11-26T05:00:00.Z",
        ] {
            assert_eq!(at(bad), None, "{bad}");
        }
    }
}
