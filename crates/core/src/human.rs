//! Times as people read them: the one place keyraft turns milliseconds since the Unix epoch
//! into UTC times (RFC 3339) and ages. JSON output keeps the raw milliseconds next to these.

/// Milliseconds in a day.
const DAY_MS: u64 = 86_400_000;

/// The UTC time of `ms` milliseconds after the Unix epoch, in RFC 3339 to the second:
/// `2026-11-30T02:14:05Z` (milliseconds dropped: heads are issued seconds apart).
pub fn utc(ms: u64) -> String {
    let days = ms / DAY_MS;
    let seconds_of_day = (ms % DAY_MS) / 1000;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        seconds_of_day / 3600,
        seconds_of_day / 60 % 60,
        seconds_of_day % 60
    )
}

/// The proleptic Gregorian date of the day `days` after 1970-01-01 (Howard Hinnant's
/// `civil_from_days`, for non-negative day counts).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    // Shifted so that eras (400 years) start on 0000-03-01: the leap day ends a year.
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 { month_from_march + 3 } else { month_from_march - 9 };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// How long before `now_ms` the time `ms` was: "3 s ago", "2 min ago", "5 h ago", "4 days ago";
/// a time after `now_ms` (a clock ahead of this machine's) is "3 s ahead".
pub fn age(ms: u64, now_ms: u64) -> String {
    if ms > now_ms {
        return format!("{} ahead", span(ms - now_ms));
    }
    format!("{} ago", span(now_ms - ms))
}

/// A duration in its largest whole unit: "850 ms", "3 s", "2 min", "5 h", "1 day", "4 days".
pub fn span(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms} ms"),
        1_000..60_000 => format!("{} s", ms / 1_000),
        60_000..3_600_000 => format!("{} min", ms / 60_000),
        3_600_000..DAY_MS => format!("{} h", ms / 3_600_000),
        _ if ms < 2 * DAY_MS => "1 day".to_owned(),
        _ => format!("{} days", ms / DAY_MS),
    }
}

/// A duration exactly, in its nonzero units: "850 ms", "1 min 1 s", "2 days 3 h 0.5 s". For
/// messages that compare durations (a head's age against the TTL), where [`span`]'s rounding
/// would make "1 min" look no older than a TTL of "1 min".
pub fn duration(ms: u64) -> String {
    if ms < 1_000 {
        return format!("{ms} ms");
    }
    let (days, hours, minutes) = (ms / DAY_MS, ms / 3_600_000 % 24, ms / 60_000 % 60);
    let (seconds, millis) = (ms / 1_000 % 60, ms % 1_000);
    let mut parts = Vec::new();
    match days {
        0 => {}
        1 => parts.push("1 day".to_owned()),
        n => parts.push(format!("{n} days")),
    }
    if hours > 0 {
        parts.push(format!("{hours} h"));
    }
    if minutes > 0 {
        parts.push(format!("{minutes} min"));
    }
    match (seconds, millis) {
        (0, 0) => {}
        (s, 0) => parts.push(format!("{s} s")),
        (s, m) => parts.push(format!("{}.{} s", s, format!("{m:03}").trim_end_matches('0'))),
    }
    parts.join(" ")
}

/// A time with its age: "2026-11-30T02:14:05Z (3 s ago)".
pub fn time_and_age(ms: u64, now_ms: u64) -> String {
    format!("{} ({})", utc(ms), age(ms, now_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_exact() {
        assert_eq!(duration(0), "0 ms");
        assert_eq!(duration(999), "999 ms");
        assert_eq!(duration(1_000), "1 s");
        assert_eq!(duration(1_500), "1.5 s");
        assert_eq!(duration(60_000), "1 min");
        assert_eq!(duration(61_000), "1 min 1 s");
        assert_eq!(duration(61_020), "1 min 1.02 s");
        assert_eq!(duration(3_600_000), "1 h");
        assert_eq!(duration(DAY_MS + 5_000), "1 day 5 s");
        assert_eq!(duration(3 * DAY_MS + 2 * 3_600_000 + 60_000), "3 days 2 h 1 min");
    }

    #[test]
    fn utc_times_are_rfc3339_across_leap_days_and_centuries() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(999), "1970-01-01T00:00:00Z");
        // 2026-11-30T02:14:05Z, as `date -u -d @1796004845` prints it.
        assert_eq!(utc(1_796_004_845_123), "2026-11-30T02:14:05Z");
        assert_eq!(utc(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(utc(951_868_799_000), "2000-02-29T23:59:59Z");
        assert_eq!(utc(951_868_800_000), "2000-03-01T00:00:00Z");
        assert_eq!(utc(4_107_542_400_000), "2100-03-01T00:00:00Z");
        assert_eq!(utc(4_107_456_000_000), "2100-02-28T00:00:00Z");
        assert_eq!(utc(1_735_689_599_000), "2024-12-31T23:59:59Z");
    }

    #[test]
    fn ages_use_the_largest_whole_unit_and_say_ahead_for_the_future() {
        let now = 10 * DAY_MS;
        assert_eq!(age(now, now), "0 ms ago");
        assert_eq!(age(now - 850, now), "850 ms ago");
        assert_eq!(age(now - 3_400, now), "3 s ago");
        assert_eq!(age(now - 150_000, now), "2 min ago");
        assert_eq!(age(now - 5 * 3_600_000 - 1, now), "5 h ago");
        assert_eq!(age(now - DAY_MS - 5, now), "1 day ago");
        assert_eq!(age(now - 4 * DAY_MS, now), "4 days ago");
        assert_eq!(age(now + 3_000, now), "3 s ahead");
        assert_eq!(time_and_age(1_796_004_845_000, 1_796_004_848_000), "2026-11-30T02:14:05Z (3 s ago)");
    }
}
