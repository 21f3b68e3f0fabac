//! The simulated network's view of SMS text and time: whether a text fits GSM 03.38 7-bit
//! or needs UCS-2, how it is cut into parts, and ModemManager's timestamp format.
//!
//! Pure functions, no I/O. This is the carrier's own small copy of the splitting rules, so
//! the simulator does not depend on the daemon's `sms_text` module that it helps to test.

/// The GSM 03.38 default alphabet (one septet each; the escape code is left out).
const GSM_BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?\
¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";
/// The GSM 03.38 extension table (escape + one septet: two septets each).
const GSM_EXTENSION: &str = "\u{c}^{}\\[~]|€";

/// Septets a single-part GSM 7-bit SMS holds, and each part of a multipart one.
const GSM_SINGLE: usize = 160;
const GSM_PART: usize = 153;
/// UTF-16 code units a single-part UCS-2 SMS holds, and each part of a multipart one.
const UCS2_SINGLE: usize = 70;
const UCS2_PART: usize = 67;

/// Septets `c` takes in GSM 7-bit, or `None` when the text must go as UCS-2.
fn gsm_septets(c: char) -> Option<usize> {
    if GSM_BASIC.contains(c) {
        Some(1)
    } else if GSM_EXTENSION.contains(c) {
        Some(2)
    } else {
        None
    }
}

/// Cuts `text` into the parts a network would carry it in: one part when it fits
/// (GSM 7-bit: 160 septets, UCS-2: 70 units), otherwise parts of at most 153 septets or
/// 67 units, never splitting a character (nor an escape pair, nor a surrogate pair).
pub(super) fn split_parts(text: &str) -> Vec<String> {
    let (costs, single, part) = match text.chars().map(gsm_septets).collect::<Option<Vec<_>>>() {
        Some(septets) => (septets, GSM_SINGLE, GSM_PART),
        None => (
            text.chars().map(char::len_utf16).collect(),
            UCS2_SINGLE,
            UCS2_PART,
        ),
    };
    if costs.iter().sum::<usize>() <= single {
        return vec![text.to_owned()];
    }
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut used = 0;
    for (c, n) in text.chars().zip(costs) {
        if used + n > part {
            parts.push(std::mem::take(&mut current));
            used = 0;
        }
        current.push(c);
        used += n;
    }
    parts.push(current);
    parts
}

/// Cuts `text` into exactly `count` parts of about equal length in characters (the last
/// ones may be empty when the text is shorter than `count`). Used when a test asks for a
/// given number of parts rather than the network's rule.
pub(super) fn split_even(text: &str, count: usize) -> Vec<String> {
    let count = count.max(1);
    let chars: Vec<char> = text.chars().collect();
    let per = chars.len().div_ceil(count).max(1);
    (0..count)
        .map(|i| {
            let start = (i * per).min(chars.len());
            let end = ((i + 1) * per).min(chars.len());
            chars[start..end].iter().collect()
        })
        .collect()
}

/// Formats a Unix time the way ModemManager shows SMS timestamps: ISO 8601 local time of
/// the SMS centre with its UTC offset in whole hours, `2024-05-01T12:34:56+02` (an offset
/// with minutes is written `+05:30`).
pub(super) fn mm_timestamp(unix_secs: i64, offset_minutes: i32) -> String {
    let local = unix_secs + i64::from(offset_minutes) * 60;
    let days = local.div_euclid(86_400);
    let secs = local.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let sign = if offset_minutes < 0 { '-' } else { '+' };
    let off = offset_minutes.unsigned_abs();
    // ModemManager writes UTC as "Z" (g_date_time_format_iso8601), other offsets as
    // "+HH" or "+HH:MM".
    let offset = if off == 0 {
        "Z".to_owned()
    } else if off.is_multiple_of(60) {
        format!("{sign}{:02}", off / 60)
    } else {
        format!("{sign}{:02}:{:02}", off / 60, off % 60)
    };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}{offset}",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// Seconds since the Unix epoch, now.
pub(super) fn now_unix() -> i64 {
    crate::domain::now_ms().div_euclid(1000)
}

/// Year, month, day of a day count since 1970-01-01 (H. Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_split(text: &str, expected_lens: &[usize]) {
        let parts = split_parts(text);
        let lens: Vec<usize> = parts.iter().map(|p| p.chars().count()).collect();
        assert_eq!(lens, expected_lens, "parts of {text:?}");
        assert_eq!(parts.concat(), text);
    }

    #[test]
    fn splits_like_a_network() {
        check_split("", &[0]);
        check_split("hello", &[5]);
        check_split(&"a".repeat(160), &[160]);
        check_split(&"a".repeat(161), &[153, 8]);
        check_split(&"a".repeat(400), &[153, 153, 94]);
        // Extension characters take two septets: 80 of them fill one part exactly.
        check_split(&"€".repeat(80), &[80]);
        check_split(&"€".repeat(81), &[76, 5]);
        // One non-GSM character switches the whole text to UCS-2.
        check_split(&"é".repeat(160), &[160]);
        check_split(&"ж".repeat(70), &[70]);
        check_split(&"ж".repeat(71), &[67, 4]);
        // Surrogate pairs are two units and never cut.
        check_split(&"😀".repeat(35), &[35]);
        check_split(&"😀".repeat(36), &[33, 3]);
    }

    #[test]
    fn splits_evenly_on_request() {
        assert_eq!(split_even("abcdef", 3), vec!["ab", "cd", "ef"]);
        assert_eq!(split_even("abcde", 2), vec!["abc", "de"]);
        assert_eq!(split_even("ab", 3), vec!["a", "b", ""]);
        assert_eq!(split_even("abc", 0), vec!["abc"]);
    }

    #[test]
    fn formats_timestamps_like_modemmanager() {
        for (secs, offset, expected) in [
            (0, 0, "1970-01-01T00:00:00Z"),
            (1_714_559_696, 120, "2024-05-01T12:34:56+02"),
            (1_714_559_696, -300, "2024-05-01T05:34:56-05"),
            (1_714_559_696, 330, "2024-05-01T16:04:56+05:30"),
            (951_825_600, 0, "2000-02-29T12:00:00Z"),
        ] {
            assert_eq!(mm_timestamp(secs, offset), expected);
        }
    }
}
