//! ModemManager's SMS timestamps (`Sms.Timestamp`, `Sms.DischargeTimestamp`): strings the
//! SMS centre's clock fills in, through `modem::parse_mm_timestamp`.
//!
//! Invariants: an accepted timestamp is within the years 0000-9999 (give or take the
//! offset) and, written back as UTC with an independent civil-from-days computation,
//! parses to the same instant.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem::modem::parse_mm_timestamp;

const DAY_MS: i64 = 86_400_000;
/// 0000-01-01T00:00:00Z and 10000-01-01T00:00:00Z in ms since the epoch.
const YEAR_0: i64 = -62_167_219_200_000;
const YEAR_10000: i64 = 253_402_300_800_000;

fuzz_target!(|data: &[u8]| {
    // D-Bus strings are UTF-8.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Some(ms) = parse_mm_timestamp(text) else {
        return;
    };
    // A day covers any offset (at most 23:59) and a leap second.
    assert!(
        (YEAR_0 - DAY_MS..YEAR_10000 + DAY_MS).contains(&ms),
        "{text:?} -> {ms}"
    );
    if (YEAR_0..YEAR_10000).contains(&ms) {
        let utc = to_utc(ms);
        assert_eq!(
            parse_mm_timestamp(&utc),
            Some(ms),
            "{text:?} -> {ms} -> {utc:?}"
        );
    }
});

/// `ms` as `YYYY-MM-DDTHH:MM:SS.mmmZ`, for years 0000-9999.
fn to_utc(ms: i64) -> String {
    let days = ms.div_euclid(DAY_MS);
    let in_day = ms.rem_euclid(DAY_MS);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        in_day / 3_600_000,
        in_day / 60_000 % 60,
        in_day / 1000 % 60,
        in_day % 1000
    )
}

/// The date of a day counted from 1970-01-01, by counting years and months one at a
/// time: slow, but independent of the parser's closed formula.
fn civil_from_days(mut days: i64) -> (i64, i64, i64) {
    let leap = |y: i64| (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let year_len = |y: i64| if leap(y) { 366 } else { 365 };
    let mut year = 1970;
    // Whole 400-year cycles first (146,097 days each) to keep this fast.
    year += 400 * days.div_euclid(146_097);
    days = days.rem_euclid(146_097);
    while days >= year_len(year) {
        days -= year_len(year);
        year += 1;
    }
    let month_len = |m: i64| match m {
        2 if leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    let mut month = 1;
    while days >= month_len(month) {
        days -= month_len(month);
        month += 1;
    }
    (year, month, days + 1)
}
