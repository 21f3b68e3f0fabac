//! ModemManager's SMS timestamps (`Timestamp`, `DischargeTimestamp`) to milliseconds since the
//! Unix epoch. Pure: no clock, no I/O, no date crate (a civil-from-days computation suffices).

/// Parses a ModemManager SMS timestamp such as `2024-05-01T12:34:56+02` into milliseconds
/// since the Unix epoch.
///
/// ModemManager writes the SMS centre's time with an offset in whole hours (`+02`); this also
/// accepts `+0530`, `+05:30`, `Z`, no offset at all (taken as UTC), a space instead of the
/// `T`, and fractional seconds (`12:34:56.250+02`, kept to the millisecond). Anything else,
/// including out-of-range fields, gives `None`.
pub fn parse_mm_timestamp(text: &str) -> Option<i64> {
    let text = text.trim();
    let mut cur = Cursor(text.as_bytes());

    let year = cur.digits(4)?;
    cur.expect(b'-')?;
    let month = cur.digits(2)?;
    cur.expect(b'-')?;
    let day = cur.digits(2)?;
    match cur.next()? {
        b'T' | b't' | b' ' => {}
        _ => return None,
    }
    let hour = cur.digits(2)?;
    cur.expect(b':')?;
    let minute = cur.digits(2)?;
    cur.expect(b':')?;
    let second = cur.digits(2)?;

    let mut millis = 0;
    if matches!(cur.peek(), Some(b'.' | b',')) {
        cur.next();
        let digits = cur.take_while(|b| b.is_ascii_digit());
        if digits.is_empty() {
            return None;
        }
        // Keep milliseconds; pad "5" to 500, cut "123456" to 123.
        for i in 0..3 {
            millis = millis * 10 + digits.get(i).map_or(0, |d| i64::from(d - b'0'));
        }
    }

    let offset_minutes = match cur.next() {
        None => 0,
        Some(b'Z' | b'z') => 0,
        Some(sign @ (b'+' | b'-')) => {
            let hours = cur.digits(2)?;
            let minutes = match cur.peek() {
                None => 0,
                Some(b':') => {
                    cur.next();
                    cur.digits(2)?
                }
                Some(_) => cur.digits(2)?,
            };
            if hours > 23 || minutes > 59 {
                return None;
            }
            let total = hours * 60 + minutes;
            if sign == b'-' { -total } else { total }
        }
        Some(_) => return None,
    };
    if !cur.0.is_empty() {
        return None;
    }

    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }

    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset_minutes * 60;
    Some(seconds * 1000 + millis)
}

/// A tiny byte cursor for the parser above.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.0.first().copied()
    }

    fn next(&mut self) -> Option<u8> {
        let (first, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(*first)
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        (self.next()? == byte).then_some(())
    }

    /// Exactly `n` ASCII digits as a number.
    fn digits(&mut self, n: usize) -> Option<i64> {
        let (head, rest) = self.0.split_at_checked(n)?;
        let mut value = 0;
        for &b in head {
            if !b.is_ascii_digit() {
                return None;
            }
            value = value * 10 + i64::from(b - b'0');
        }
        self.0 = rest;
        Some(value)
    }

    fn take_while(&mut self, pred: impl Fn(u8) -> bool) -> &'a [u8] {
        let n = self.0.iter().take_while(|&&b| pred(b)).count();
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head
    }
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400; // [0, 399]
    let mp = (month + 9) % 12; // March = 0
    let doy = (153 * mp + 2) / 5 + day - 1; // [0, 365]
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy; // [0, 146096]
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(input: &str, expected: Option<i64>) {
        assert_eq!(parse_mm_timestamp(input), expected, "input {input:?}");
    }

    // 2024-05-01T12:34:56Z
    const BASE: i64 = 1_714_566_896_000;
    const HOUR: i64 = 3_600_000;
    const MINUTE: i64 = 60_000;

    #[test]
    fn accepted_forms() {
        check("1970-01-01T00:00:00Z", Some(0));
        check("1970-01-01T00:00:00", Some(0));
        check("2024-05-01T12:34:56Z", Some(BASE));
        check("2024-05-01T12:34:56", Some(BASE));
        check("2024-05-01 12:34:56", Some(BASE));
        check("  2024-05-01T12:34:56+00  ", Some(BASE));
        check("2024-05-01T12:34:56+02", Some(BASE - 2 * HOUR));
        check("2024-05-01T12:34:56-03", Some(BASE + 3 * HOUR));
        check(
            "2024-05-01T12:34:56+0530",
            Some(BASE - 5 * HOUR - 30 * MINUTE),
        );
        check(
            "2024-05-01T12:34:56+05:30",
            Some(BASE - 5 * HOUR - 30 * MINUTE),
        );
        check(
            "2024-05-01T12:34:56-09:30",
            Some(BASE + 9 * HOUR + 30 * MINUTE),
        );
        check("2024-05-01T12:34:56.5Z", Some(BASE + 500));
        check("2024-05-01T12:34:56.123+02", Some(BASE + 123 - 2 * HOUR));
        check("2024-05-01T12:34:56,25", Some(BASE + 250));
        check("2024-05-01T12:34:56.123456789Z", Some(BASE + 123));
    }

    #[test]
    fn calendar_edges() {
        check("2000-02-29T00:00:00Z", Some(951_782_400_000));
        check("2024-02-29T23:59:59Z", Some(1_709_251_199_000));
        check("2024-12-31T23:59:59Z", Some(1_735_689_599_000));
        check("1969-12-31T23:59:59Z", Some(-1000));
        // The offset may move the instant across midnight and the year.
        check("2025-01-01T01:00:00+02", Some(1_735_689_600_000 - HOUR));
    }

    #[test]
    fn rejected_forms() {
        for bad in [
            "",
            "garbage",
            "2024-05-01",
            "2024-05-01T12:34",
            "2024-5-01T12:34:56",
            "2024-05-01X12:34:56",
            "2024-13-01T12:34:56",
            "2024-00-01T12:34:56",
            "2023-02-29T12:00:00",
            "2024-04-31T12:00:00",
            "2024-05-01T24:00:00",
            "2024-05-01T12:60:00",
            "2024-05-01T12:34:61",
            "2024-05-01T12:34:56.",
            "2024-05-01T12:34:56+2",
            "2024-05-01T12:34:56+24",
            "2024-05-01T12:34:56+02:3",
            "2024-05-01T12:34:56+02:60",
            "2024-05-01T12:34:56+02junk",
            "2024-05-01T12:34:56Zjunk",
            "2024-05-01T12:34:56 +02",
            "2024-05-01T12:34:5６",
        ] {
            check(bad, None);
        }
    }
}
