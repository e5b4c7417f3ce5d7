//! Budget periods and where they start.

use serde::{Deserialize, Serialize};

/// When a budget's spend starts again from zero. Boundaries are in UTC.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    /// From midnight to midnight.
    Day,
    /// From the first of the month to the first of the next.
    #[default]
    Month,
    /// Never: the limit covers all time.
    Total,
}

impl Period {
    pub fn label(self) -> &'static str {
        match self {
            Period::Day => "day",
            Period::Month => "month",
            Period::Total => "total",
        }
    }
}

const DAY: u64 = 86_400;

/// The unix second at which the period holding `now` began (0 for [`Period::Total`]).
pub fn period_start(period: Period, now: u64) -> u64 {
    match period {
        Period::Total => 0,
        Period::Day => now - now % DAY,
        Period::Month => {
            let days = now / DAY;
            let day_of_month = civil_from_days(days).2;
            (days + 1 - u64::from(day_of_month)) * DAY
        }
    }
}

/// Days since 1970-01-01 → (year, month 1..=12, day 1..=31) in the proleptic Gregorian calendar
/// (H. Hinnant's `civil_from_days`, restricted to dates after the epoch).
fn civil_from_days(days: u64) -> (u64, u32, u32) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    // 2026-12-02T15:56:12Z
    const NOW: u64 = 1_796_226_972;

    #[test]
    fn day_starts_at_midnight_utc() {
        assert_eq!(period_start(Period::Day, NOW), 1_796_169_600); // 2026-12-02T00:00:00Z
        assert_eq!(period_start(Period::Day, 1_796_169_600), 1_796_169_600);
        assert_eq!(
            period_start(Period::Day, 1_796_169_599),
            1_796_169_600 - DAY
        );
    }

    #[test]
    fn month_starts_on_the_first() {
        assert_eq!(period_start(Period::Month, NOW), 1_796_083_200); // 2026-12-01T00:00:00Z
        // The last second of November belongs to November.
        assert_eq!(period_start(Period::Month, 1_796_083_199), 1_793_491_200); // 2026-11-01
        // Leap February: 2028-02-29T12:00:00Z → 2028-02-01.
        assert_eq!(period_start(Period::Month, 1_835_438_400), 1_832_976_000);
        // 2028-03-01T00:00:00Z starts March.
        assert_eq!(period_start(Period::Month, 1_835_481_600), 1_835_481_600);
    }

    #[test]
    fn total_never_restarts() {
        assert_eq!(period_start(Period::Total, NOW), 0);
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_789), (2026, 12, 2));
        assert_eq!(civil_from_days(21_243), (2028, 2, 29));
    }
}
